"""The object ``miras.compile`` returns: a generated module plus the functional API.

The generated module (rendered from ``templates/torch/module.py.jinja``) holds everything
spec-specific: the derived inner-loss gradient, feature map, activations, retention maps,
the recurrence recipe and the hyper-parameter slots. This class only wires tensors to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import torch
from torch import Tensor

from miras.runtime import attention, features
from miras.runtime import memory as mem
from miras.runtime.engine import State, initial_state, run_chunked, run_reference

Backend = Literal["reference", "chunk"]


@dataclass(frozen=True)
class GateInfo:
    """A data-dependent value the spec needs, passed to ``functional`` by its role."""

    role: str
    channel: bool
    act: str
    rank: int
    init: float | None
    scale: float
    per: str

    def shape(self) -> str:
        return "[B, T, H, D]" if self.channel else "[B, T, H]"


@dataclass(frozen=True)
class ParamInfo:
    """A trained (or fixed) tensor of the spec: learned constants, feature parameters,
    initial memory weights. ``shape`` is per layer, for ``heads`` and ``head_dim``."""

    name: str
    shape: tuple[int, ...]
    init: Tensor
    trainable: bool


class Compiled:
    """A compiled spec. ``functional`` runs the memory; ``layer`` builds an ``nn.Module``."""

    def __init__(self, module: ModuleType, path: str) -> None:
        self.module = module
        self.path = path
        self.name: str = module.MODEL_NAME
        self.hash: str = module.SPEC_HASH
        self.source: str = module.SPEC_TEXT
        self.nonparametric: dict[str, Any] | None = getattr(module, "NONPARAMETRIC", None)
        self.slots: list[dict[str, Any]] = list(module.SLOTS)
        self._hybrid: Any = None

    def __repr__(self) -> str:
        return f"Compiled({self.name!r}, hash={self.hash[:12]}, module={self.path!r})"

    # ---- what the spec needs ------------------------------------------------------------

    @property
    def gates(self) -> dict[str, GateInfo]:
        """Data-dependent values by role, with their shapes (``functional``'s keywords)."""
        out = {}
        for s in self.slots:
            if s["source"] == "gate":
                g = s["gate"]
                out[s["name"]] = GateInfo(s["name"], s["channel"], g["act"], g["rank"],
                                          g["init"], g["scale"], g["per"])
        return out

    def feature_dim(self, head_dim: int) -> int:
        f = self.module.FEATURE
        if f["kind"] == "user":
            return head_dim
        return features.out_dim(f["kind"], head_dim, degree=f["degree"], order=f["order"],
                                dim=f["dim"])

    def params(self, heads: int, head_dim: int) -> dict[str, ParamInfo]:
        """Every tensor the layer trains (learned values, feature maps, memory init)."""
        out: dict[str, ParamInfo] = {}
        for s in self.slots:
            if s["source"] == "learned":
                shape = (heads, head_dim) if s["channel"] else (heads,)
                out[f"slot.{s['name']}"] = ParamInfo(
                    f"slot.{s['name']}", shape, torch.full(shape, float(s["value"])), True)
        f = self.module.FEATURE
        if f["kind"] != "user":
            for n, t in features.init_params(
                    f["kind"], head_dim, degree=f["degree"], order=f["order"], dim=f["dim"],
                    learned=f["learned"]).items():
                trainable = (f["kind"] == "poly" and f["learnable"]) or n.startswith("L")
                out[f"feature.{n}"] = ParamInfo(f"feature.{n}", tuple(t.shape), t, trainable)
        if self.nonparametric is None:
            shape = self.module.MEMORY
            w = mem.init_weights(shape, self.feature_dim(head_dim), head_dim, heads)
            for n, t in w.items():
                # a memory that starts at zero is the usual linear-attention convention;
                # any other start is meta-learned by the outer loop (Titans)
                out[f"memory.{n}"] = ParamInfo(f"memory.{n}", tuple(t.shape), t,
                                               shape.init != "zeros")
        return out

    @property
    def hybrid(self) -> Any:
        """The spec's ``hybrid`` (an IR node: ``kind`` none, mac, mag, mal or samba)."""
        if self._hybrid is None:
            from miras import load

            # the generated module keeps the canonical spec text, not the IR
            self._hybrid = load(self.source, self.name).hybrid
        return self._hybrid

    def layer(self, d_model: int, heads: int | None = None, head_dim: int | None = None,
              **kwargs: Any) -> torch.nn.Module:
        """The sequence-mixing layer: the spec's hybrid (``MACLayer``, ``MAGLayer``,
        ``MALLayer``) or the memory layer alone (``MirasLayer``; also for ``samba``, whose
        attention layers :class:`miras.models.LM` interleaves). See ``miras.runtime.hybrid``."""
        from miras.runtime.hybrid import build_layer

        return build_layer(self, d_model, heads, head_dim, **kwargs)

    # ---- running ------------------------------------------------------------------------

    def _values(self, q: Tensor, gates: dict[str, Tensor], params: dict[str, Tensor]
                ) -> dict[str, Tensor]:
        """Every slot as ``[B, H, T, 1|D]``."""
        B, T, H, D = q.shape
        vals: dict[str, Tensor] = {}
        for s in self.slots:
            name = s["name"]
            if s["source"] == "gate":
                if name not in gates:
                    need = ", ".join(f"{g}={i.shape()}" for g, i in self.gates.items())
                    raise TypeError(f"{self.name}: missing gate '{name}' (needs {need})")
                g = gates[name].to(q.dtype)
                if g.dim() == 3:
                    g = g.unsqueeze(-1)
                if g.shape[:3] != (B, T, H) or g.shape[-1] not in (1, D):
                    raise ValueError(f"gate '{name}' has shape {tuple(g.shape)}; expected "
                                     f"[B, T, H] or [B, T, H, D] = {(B, T, H, D)}")
                vals[name] = g.transpose(1, 2)
                continue
            if s["source"] == "const":
                t = torch.full((1, H, 1, 1), float(s["value"]), dtype=q.dtype, device=q.device)
            elif s["source"] == "learned":
                p = params.get(f"slot.{name}")
                if p is None:
                    p = torch.full((H, D) if s["channel"] else (H,), float(s["value"]))
                p = p.to(q.dtype).to(q.device)
                t = p.view(1, H, 1, D) if s["channel"] else p.view(1, H, 1, 1)
            else:  # per_head schedule
                h = torch.arange(H, dtype=torch.float64)
                t = self.module.per_head(name, h).to(q.dtype).to(q.device).view(1, H, 1, 1)
            vals[name] = t.expand(B, H, T, t.shape[-1])
        unknown = set(gates) - set(vals)
        if unknown:
            raise TypeError(f"{self.name}: unexpected gate(s) {sorted(unknown)}; this spec takes "
                            f"{sorted(self.gates) or 'none'}")
        return vals

    def initial_state(self, batch: int, heads: int, head_dim: int, *,
                      params: dict[str, Tensor] | None = None, dtype: torch.dtype =
                      torch.float32, device: torch.device | str = "cpu") -> State:
        """The state before the first token (memory weights from ``params`` or the init)."""
        params = params or {}
        infos = self.params(heads, head_dim)
        w = {}
        for n in self.module.MEMORY.names():
            t = params.get(f"memory.{n}")
            if t is None:
                t = infos[f"memory.{n}"].init
            w[n] = t.to(dtype=dtype, device=device).unsqueeze(0).expand(
                batch, *t.shape).clone()
        return initial_state(self.module.RECIPE, w)

    def functional(self, q: Tensor, k: Tensor, v: Tensor, *,
                   initial_state: State | None = None, output_final_state: bool = True,
                   backend: Backend | None = None, params: dict[str, Tensor] | None = None,
                   chunk_size: int | None = None, **gates: Tensor
                   ) -> tuple[Tensor, State | None]:
        """Run the memory over ``q, k, v`` ``[B, T, H, D]``; gates by role name.

        Returns ``(o [B, T, H, D], final_state)``. ``backend="reference"`` is the
        token-by-token recurrence (chunk-anchored when the spec says ``chunk(size)``);
        ``"chunk"`` is the chunk-parallel form (the default); both compute the same values.
        ``chunk_size`` overrides the spec's chunk length (1: the exact per-token recurrence).
        """
        params = params or {}
        B, _T, H, D = q.shape
        if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
            raise ValueError(f"q, k, v must be [B, T, H, D]; got {tuple(q.shape)}, "
                             f"{tuple(k.shape)}, {tuple(v.shape)}")
        vals = self._values(q, gates, params)
        qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
        if self.nonparametric is not None:
            np_ = self.nonparametric
            o = attention.attend(qh, kh, vh, kernel=np_["kernel"], scale=np_["scale"],
                                 degree=np_["degree"], normalize=np_["normalize"],
                                 window=np_["window"])
            return o.transpose(1, 2), None
        fns = self.module.make_fns(params, D)
        state = initial_state if initial_state is not None else self.initial_state(
            B, H, D, params=params, dtype=q.dtype, device=q.device)
        chunk = int(chunk_size or self.module.CHUNK)
        run = run_reference if (backend or "chunk") == "reference" else run_chunked
        o, final = run(self.module.RECIPE, fns, qh, kh, vh, vals, state, chunk)
        return o.transpose(1, 2), (final if output_final_state else None)


def inverse_act(act: str, y: float) -> float:
    """The pre-activation that gives ``y`` (for gate bias initialisation)."""
    y = float(y)
    if act == "sigmoid":
        y = min(max(y, 1e-6), 1 - 1e-6)
        return math.log(y / (1 - y))
    if act == "softplus":
        return math.log(math.expm1(max(y, 1e-6)))
    if act == "exp":
        return math.log(max(y, 1e-12))
    if act == "tanh":
        return math.atanh(min(max(y, -0.999999), 0.999999))
    return y

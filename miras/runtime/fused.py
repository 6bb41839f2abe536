"""Running a generated Triton kernel module from :meth:`Compiled.functional`.

Every generated kernel module (``templates/triton/kernels.py.jinja``) exposes one entry
point with one contract, whatever its family::

    run(q, k, v, gates, state, chunk, output_final_state) -> (o, final_state)

* ``q, k`` ``[B, H, T, K]`` after the feature map φ (applied here, in PyTorch, so autograd
  reaches the feature coefficients); ``v`` ``[B, H, T, V]``; any float dtype;
* ``gates``: ``lr`` ``[B, H, T]`` or ``[B, H, T, V]``; ``decay``, ``momentum``, ``gamma``,
  ``threshold`` (a soft-threshold retention's γ) ``[B, H, T]`` — only those the spec has
  (implicit GD's Longhorn step is folded into ``lr`` here); and, for a module that declares
  ``BIAS_PARAMS`` (slot names: the bias's gates and learned values, the ``mlp`` family),
  those ``[B, H, T]`` too;
* ``state``: fp32 tensors named as :meth:`State.tensors` (``weights.W``, ``momentum.W``,
  ``accum.W``, ...);
* returns ``o`` ``[B, H, T, V]`` in the input dtype and the final state (same names, fp32)
  or ``None``. Differentiable in q, k, v, every gate and the initial state.

A module that declares ``TAKES_RAW = True`` also takes ``raw=(q, k)``, the keys and queries
before φ as the caller passed them (an MLP memory's residual path adds them to the output of
the layers fed φ(k)); it makes them contiguous itself if it needs to.

A module may also expose ``unsupported(K, V) -> str | None``: a reason its kernels cannot
run these dims on this device (the PyTorch chunk path then runs, with one warning line).

Layout: :meth:`Compiled.functional` passes ``[B, H, T, ·]`` *views* of the caller's
``[B, T, H, ·]`` tensors. A module that declares ``STRIDED = True`` takes them (and the gates)
with any strides, as they are; for any other module, :func:`run` makes them contiguous first.
A strided module should also return ``o`` (and its gradients) as ``[B, H, T, ·]`` views of
``[B, T, H, ·]`` memory, so that the transpose back is free.
"""

from __future__ import annotations

import warnings
from types import ModuleType

from torch import Tensor

from miras.runtime.engine import Fns, Recipe, State, _window_tail, run_chunked
from miras.runtime.triton_support import interpreted

#: Gates a fused kernel reads (slot names of the plan).
GATES = ("lr", "decay", "momentum", "gamma", "threshold")


class FallbackWarning(UserWarning):
    """``backend="triton"`` was asked for a spec outside the fused families."""


def fallback(name: str, reason: str) -> None:
    """Say in one line why the PyTorch chunk path runs instead of the fused kernels."""
    warnings.warn(f"miras: model '{name}' is not fused ({reason}); running the PyTorch chunk "
                  "path", FallbackWarning, stacklevel=3)


def can_run(q: Tensor) -> str | None:
    """``None`` when the kernels can run on ``q``'s device, else why not."""
    if q.is_cuda or interpreted():
        return None
    return ("backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 to run the kernels "
            "on the CPU interpreter)")


def run(module: ModuleType, recipe: Recipe, fns: Fns, q: Tensor, k: Tensor, v: Tensor,
        vals: dict[str, Tensor], state: State, chunk: int, output_final_state: bool
        ) -> tuple[Tensor, State | None]:
    """The fused forward: ``q, k, v`` ``[B, H, T, D]`` and ``vals`` as the engine takes them."""
    qf, kf = fns.feature(q), fns.feature(k)
    limit = getattr(module, "unsupported", None)
    if limit is not None and (why := limit(kf.shape[-1], v.shape[-1])) is not None:
        fallback(module.MODEL_NAME, why)
        o, final = run_chunked(recipe, fns, q, k, v, vals, state, chunk)
        return o, (final if output_final_state else None)
    raw_vals, vals = vals, dict(vals)
    if recipe.algorithm == "implicit_gd" and "lr" in vals:  # Longhorn: η/(1 + η‖φ(k)‖²)
        lr = vals["lr"]
        vals["lr"] = lr / (1 + lr * kf.pow(2).sum(-1, keepdim=True))
    gates: dict[str, Tensor] = {}
    for name in (*GATES, *getattr(module, "BIAS_PARAMS", ())):
        g = vals.get(name)
        if g is None or (name == "decay" and recipe.retention == "none"):
            continue
        gates[name] = g.squeeze(-1) if g.shape[-1] == 1 else g  # a view both ways
    if not getattr(module, "STRIDED", False):
        qf, kf, v = (x.contiguous() for x in (qf, kf, v))
        gates = {n: g.contiguous() for n, g in gates.items()}
    extra = {"raw": (q, k)} if getattr(module, "TAKES_RAW", False) else {}
    o, final = module.run(qf, kf, v, gates, state.tensors(), chunk, output_final_state,
                          **extra)
    if final is None:
        return o, None
    weights = {n.split(".", 1)[1]: t for n, t in final.items() if n.startswith("weights.")}
    mom = {n.split(".", 1)[1]: t for n, t in final.items() if n.startswith("momentum.")}
    accum = {n.split(".", 1)[1]: t for n, t in final.items() if n.startswith("accum.")}
    # the next call's Omega window re-reads the last c − 1 tokens (see engine._window_tail)
    return o, State(weights, mom or None, accum or None,
                    _window_tail(recipe.window, kf, k, v, raw_vals))

"""The memory recurrence: the token-by-token reference and the chunk-parallel form.

Both implement one definition, written straight from the papers' formulas. For a chunk of
tokens starting from the state ``(Θ₀, S₀, A₀)``:

1. every inner gradient is taken at the chunk's anchor: ``Θ₀`` (``decay(at=prev)``) or the
   decayed ``β_t Θ₀`` (``decay(at=decayed)``), ``β_t = Π_{chunk start < i ≤ t} α_i``;
   with a window of ``c`` tokens, ``g_t = Σ_{i=t−c+1}^{t} γ_i ∇ℓ(anchor; φ(k_i), v_i)``;
2. the algorithm turns ``g_t`` into an update ``U_t``: GD ``−η g``; momentum
   ``S_t = β S_{t−1} − η g``, ``U = S``; Muon ``S_t = β S_{t−1} + g``, ``U = −η NS(S_t)``;
   implicit GD (Longhorn) ``−η/(1 + η‖φ(k)‖²) g``;
3. the updates accumulate linearly, ``U^acc_t = α_t U^acc_{t−1} + U_t``, and token ``t``
   holds the memory ``Θ_t = R(Θ₀, β_t, U^acc_t)`` where ``R`` is the retention map applied
   once from the chunk start (decay: ``β Θ₀ + U``; ℓq: ``normalise(β A₀ + U)``; KL:
   ``c·softmax(β log Θ₀ + U)``; Bregman: ``(F′)⁻¹(β F′(Θ₀) + U)``; elastic net:
   ``S_γ(β Θ₀ + U)``; ...);
4. token ``t`` reads ``y_t = M(Θ_t; φ(q_t))`` (or ``Θ_{t−1}`` with ``read = before_write``).

With chunks of one token this is exactly the per-token recurrence of the papers; with longer
chunks it is the chunk-anchored approximation of [T] Eq 16, [M] Eq 28 and [A] Eq 16, with
nonlinear retention applied from the chunk start ([M] §5.4: Moneta's normalisation and
Memora's softmax at chunk boundaries; for KL the first token of each chunk is a chunk of its
own — Memora's lag token, [M] Eq 30).

Chunks are counted from the start of the sequence, not of a call: a state records where its
call stopped in the chunk grid (``State.pos``) and the anchor and running terms of an
unfinished chunk (``State.partial``), and the next call continues that chunk. So splitting
a sequence anywhere (a prompt, then one token per call: decoding) gives the same outputs
as one call over all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from miras.runtime import memory as mem
from miras.runtime import ops
from miras.runtime.memory import MemoryShape, Weights

BiasGrad = Callable[[Tensor, Tensor, Tensor, dict[str, Tensor]], Tensor]
Map = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Recipe:
    """Plain-data description of one memory recurrence (the runtime view of the plan)."""

    memory: MemoryShape
    retention: str = "none"  # none decay lq kl elastic_net soft_threshold fdiv bregman user
    decay_at: str = "prev"
    lq_r: float = 2.0
    mass: float = 1.0
    softmax_axis: str = "row"
    elastic_form: str = "retaining"
    threshold_smooth: bool = False
    algorithm: str = "gd"  # gd momentum muon implicit_gd
    gd_steps: int = 1
    ns_steps: int = 5
    window: int = 1
    read_before: bool = False
    lag_token: bool = False
    #: ``parallel = exact``: chunks compute the per-token recurrence exactly; ``affine`` is
    #: ``(a, b)`` when ``∂ℓ/∂y = a·y − b·v`` (then the WY/UT chunk form applies)
    exact: bool = False
    affine: tuple[float, float] | None = None

    @property
    def uses_accumulator(self) -> bool:
        """Whether the state carries an accumulator ``A`` besides the weights."""
        return self.retention == "lq" or (self.retention == "elastic_net"
                                          and self.elastic_form == "ftrl")

    @property
    def uses_momentum(self) -> bool:
        return self.algorithm in ("momentum", "muon")


@dataclass(frozen=True)
class Fns:
    """The spec-specific math, generated from the symbolic derivation."""

    bias_grad: BiasGrad
    feature: Map = field(default=lambda x: x)
    act: Map = field(default=torch.nn.functional.gelu)
    act_grad: Map | None = None
    mirror: Map | None = None  # F′, the mirror map of a Bregman / user retention
    mirror_inv: Map | None = None  # (F′)⁻¹
    reg_grad: Map | None = None  # G′, the gradient of a user regulariser


Window = tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]


@dataclass
class Partial:
    """An unfinished chunk: what its remaining tokens need (module doc, steps 1-3)."""

    start: Weights  # Θ₀, where the chunk's inner gradients are taken
    base: Weights  # the retention base: Θ₀, or A₀ for accumulator retentions
    beta: Tensor  # β so far, [B, H, 1|D]
    acc: Weights  # U^acc so far


@dataclass
class State:
    """The recurrent state, per ``[B, ...]``: memory weights, momentum, accumulator, and
    where the next token falls in the chunk grid.

    A call that ends inside a chunk leaves ``pos`` (tokens of that chunk already seen, per
    batch row) and ``partial`` (the chunk's anchor and running terms), so that the next call
    (or :func:`run_reference` on one token: decoding) continues that chunk exactly as one
    call over the whole sequence would. ``partial`` is ``None`` when the next token starts
    a chunk (or Memora's lag token). The chunk size must stay the same across calls.
    """

    weights: Weights
    momentum: Weights | None = None
    accum: Weights | None = None
    # the window's previous tokens: (φ(k), k, v, {slot: value}) of the last c − 1 tokens
    window: Window | None = None
    pos: Tensor | None = None  # [B] int64; None: every row at a chunk start
    partial: Partial | None = None

    def tensors(self) -> dict[str, Tensor]:
        out = {f"weights.{n}": t for n, t in self.weights.items()}
        for prefix, w in (("momentum", self.momentum), ("accum", self.accum)):
            if w is not None:
                out.update({f"{prefix}.{n}": t for n, t in w.items()})
        return out

    @property
    def batch(self) -> int:
        return next(iter(self.weights.values())).shape[0]

    def select(self, idx: Tensor | slice) -> State:
        """The rows ``idx`` of the batch (a state for those sequences only)."""
        p = self.partial
        return State(
            _take(self.weights, idx),
            None if self.momentum is None else _take(self.momentum, idx),
            None if self.accum is None else _take(self.accum, idx),
            None if self.window is None else (*(t[idx] for t in self.window[:3]),
                                              _take(self.window[3], idx)),
            None if self.pos is None else self.pos[idx],
            None if p is None else Partial(_take(p.start, idx), _take(p.base, idx),
                                           p.beta[idx], _take(p.acc, idx)))


def _take(w: dict[str, Tensor], idx: Tensor | slice) -> dict[str, Tensor]:
    return {n: t[idx] for n, t in w.items()}


def _join(ws: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {n: torch.cat([w[n] for w in ws]) for n in ws[0]}


def initial_state(recipe: Recipe, weights: Weights) -> State:
    """A fresh state from initial weights ``{name: [B, H, ...]}``."""
    zeros = ops.zeros_like(weights)
    accum = None
    if recipe.uses_accumulator:
        # A is the pre-image of W: for ℓq the initial accumulator equals the weights.
        accum = dict(weights)
    return State(weights, zeros if recipe.uses_momentum else None, accum)


def _fresh(s: State) -> Partial:
    """The running terms of a chunk that starts at ``s``: continuing them starts anew."""
    base = s.accum if s.accum is not None else s.weights
    some = next(iter(s.weights.values()))
    return Partial(s.weights, base, some.new_ones(s.batch, some.shape[1], 1),
                   ops.zeros_like(base))


def cat_states(states: list[State]) -> State:
    """States of separate sequences as one batch (rows in order).

    Rows may sit at different chunk positions (their ``pos`` differ; :func:`run_reference`
    and :func:`run_chunked` then run each position group separately) and hold windows of
    different lengths: shorter ones are padded in front with tokens of window weight
    ``γ = 0``, which add nothing to any gradient.
    """
    part = None
    if any(s.partial is not None for s in states):
        ps = [s.partial or _fresh(s) for s in states]
        width = max(p.beta.shape[-1] for p in ps)  # per-head and channel-wise β
        part = Partial(_join([p.start for p in ps]), _join([p.base for p in ps]),
                       torch.cat([p.beta.expand(*p.beta.shape[:-1], width) for p in ps]),
                       _join([p.acc for p in ps]))
    wins = [s.window for s in states]
    window = None
    if any(w is not None for w in wins):
        like = next(w for w in wins if w is not None)
        length = max(w[0].shape[2] for w in wins if w is not None)
        padded = [_pad_window(w, like, length, s.batch) for w, s in zip(wins, states, strict=True)]
        window = (*(torch.cat([w[i] for w in padded]) for i in range(3)),
                  _join([w[3] for w in padded]))
    pos = None
    if any(s.pos is not None for s in states):
        pos = torch.cat([s.pos if s.pos is not None else torch.zeros(
            s.batch, dtype=torch.long, device=_device(s)) for s in states])
    mom = [s.momentum for s in states if s.momentum is not None]
    acc = [s.accum for s in states if s.accum is not None]
    return State(_join([s.weights for s in states]), _join(mom) if mom else None,
                 _join(acc) if acc else None, window, pos, part)


def _device(s: State) -> torch.device:
    return next(iter(s.weights.values())).device


def _pad_window(w: Window | None, like: Window, length: int, batch: int) -> Window:
    """Pad a window in front to ``length`` tokens that carry ``γ = 0`` (no gradient)."""
    if w is None:
        w = (*(t.new_zeros(batch, t.shape[1], 0, *t.shape[3:]) for t in like[:3]),
             {n: t.new_zeros(batch, t.shape[1], 0, t.shape[3]) for n, t in like[3].items()})
    kf, k, v, vals = w
    n_tok = kf.shape[2]
    vals = dict(vals)
    if "gamma" not in vals:  # γ = 1 unless the spec weights its window
        vals["gamma"] = kf.new_ones(batch, kf.shape[1], n_tok, 1)
    extra = length - n_tok
    if extra == 0:
        return kf, k, v, vals

    def pad(t: Tensor, value: float) -> Tensor:
        return torch.cat([t.new_full((t.shape[0], t.shape[1], extra, *t.shape[3:]), value), t],
                         2)

    # pad values of 1 (not 0) keep divisions in a bias gradient finite; γ = 0 zeroes them
    out = {n: pad(t, 0.0 if n == "gamma" else 1.0) for n, t in vals.items()}
    return pad(kf, 0.0), pad(k, 0.0), pad(v, 0.0), out


def _at(vals: dict[str, Tensor], name: str, sl: slice, like: Tensor, default: float) -> Tensor:
    """Values of one slot for a token range: ``[B, H, n, 1|D]``."""
    v = vals.get(name)
    if v is None:
        return torch.full((*like.shape[:2], sl.stop - sl.start, 1), default,
                          dtype=like.dtype, device=like.device)
    return v[:, :, sl]


class _Runner:
    def __init__(self, recipe: Recipe, fns: Fns) -> None:
        self.r, self.f = recipe, fns
        self.act_grad = fns.act_grad or _autograd_derivative(fns.act)

    # ---- pieces -------------------------------------------------------------------------

    def position(self, state: State, chunk: int) -> tuple[int, Partial | None]:
        """Where the first token falls in the chunk grid (the same for every row), and the
        unfinished chunk it continues (``None``: it starts one)."""
        if state.pos is None or state.pos.numel() == 0:
            return 0, None
        p = int(state.pos[0])
        if p >= chunk:
            raise ValueError(f"the state is {p} tokens into a chunk, but the chunk size is "
                             f"{chunk}: continue with the chunk size that produced it")
        if _starts_group(p, chunk, self.r.lag_token):
            return p, None
        return p, state.partial

    def final(self, state: State, p0: int, T: int, chunk: int, part: Partial | None
              ) -> State:
        """``state`` with the chunk position after ``T`` more tokens (and the running terms
        of the last chunk when it is unfinished)."""
        p = (p0 + T) % chunk
        some = next(iter(state.weights.values()))
        state.pos = torch.full((some.shape[0],), p, dtype=torch.long, device=some.device)
        state.partial = None if _starts_group(p, chunk, self.r.lag_token) else part
        return state

    def alpha(self, vals: dict[str, Tensor], sl: slice, like: Tensor) -> Tensor:
        """Retention factors ``α`` of a token range (1 where the retention has none)."""
        a = _at(vals, "decay", sl, like, 1.0)
        return a if self.r.retention in _DECAYING else torch.ones_like(a)

    def lr(self, vals: dict[str, Tensor], sl: slice, kf: Tensor) -> Tensor:
        """Step sizes of a token range; implicit GD's ``η/(1 + η‖φ(k)‖²)`` (Longhorn)."""
        lr = _at(vals, "lr", sl, kf, 1.0)
        if self.r.algorithm == "implicit_gd":
            lr = lr / (1 + lr * kf[:, :, sl].pow(2).sum(-1, keepdim=True))
        return lr

    def read(self, w: Weights, qf: Tensor, qr: Tensor) -> Tensor:
        y, _ = mem.forward(self.r.memory, w, qf, qr, self.f.act)
        return y

    def grad(self, anchor: Weights, kf: Tensor, kr: Tensor, v: Tensor,
             vals: dict[str, Tensor], scale_dy: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Factored inner gradients of every token of a group at one anchor."""
        y, trace = mem.forward(self.r.memory, anchor, kf, kr, self.f.act)
        dy = self.f.bias_grad(y, v, kr, vals) * scale_dy
        return mem.backward(self.r.memory, anchor, trace, dy, self.act_grad)

    def retain(self, base: Weights, beta: Tensor, acc: Weights, thr: Tensor) -> Weights:
        """``R(Θ₀, β, U)``: the retention map from the chunk start (see the module doc)."""
        r, shape = self.r, self.r.memory
        kind = r.retention
        if kind in ("none", "decay"):
            return ops.add(ops.scale(shape, base, beta), acc)
        if kind == "lq":
            a = ops.add(ops.scale(shape, base, beta), acc)
            return {n: ops.pnorm_normalize(t, r.lq_r, shape.kind) for n, t in a.items()}
        if kind == "kl":
            logw = {n: torch.log(t.clamp_min(1e-30)) for n, t in base.items()}
            z = ops.add(ops.scale(shape, logw, beta), acc)
            return {n: ops.slice_softmax(t, r.softmax_axis, shape.kind, r.mass)
                    for n, t in z.items()}
        if kind == "fdiv":  # f = τ log τ: W ⊙ exp(U), normalised (ζ in closed form)
            return {n: ops.slice_normalize(base[n] * torch.exp(acc[n]), r.softmax_axis,
                                           shape.kind, r.mass) for n in base}
        if kind in ("bregman", "user"):
            assert self.f.mirror is not None and self.f.mirror_inv is not None
            fp = {n: self.f.mirror(t) for n, t in base.items()}
            z = ops.add(ops.scale(shape, fp, beta), acc)
            return {n: self.f.mirror_inv(t) for n, t in z.items()}
        if kind in ("elastic_net", "soft_threshold"):
            z = ops.add(ops.scale(shape, base, beta), acc)
            g = thr if shape.kind == "vector" else thr.unsqueeze(-1)
            return {n: ops.soft_threshold(t, g, r.threshold_smooth) for n, t in z.items()}
        raise ValueError(f"unknown retention {kind!r}")  # pragma: no cover

    # ---- the reference ------------------------------------------------------------------

    def reference(self, q: Tensor, k: Tensor, v: Tensor, vals: dict[str, Tensor],
                  state: State, chunk: int) -> tuple[Tensor, State]:
        r, shape = self.r, self.r.memory
        qf, kf = self.f.feature(q), self.f.feature(k)
        T = q.shape[2]
        c = r.window
        kf_all, kr_all, v_all, vals_all, off = _extend(state, kf, k, v, vals)
        theta, mom, acc_state = state.weights, state.momentum, state.accum
        p0, part = self.position(state, chunk)
        outs = []
        for t0, t1 in _groups(T, chunk, r.lag_token, p0):
            if t0 > 0 or part is None:
                part = _fresh(State(theta, None, acc_state))
            start, base, beta, acc = part.start, part.base, part.beta, part.acc
            prev = theta
            for t in range(t0, t1):
                sl = slice(t, t + 1)
                alpha = self.alpha(vals, sl, q)[:, :, 0]
                beta = beta * alpha
                anchor = ops.scale(shape, start, beta) if r.decay_at == "decayed" else start
                lo = max(0, t + off - c + 1)
                wsl = slice(lo, t + off + 1)
                lr = self.lr(vals, sl, kf)  # [B, H, 1, 1|D]
                gamma = _at(vals_all, "gamma", wsl, q, 1.0)
                scale_dy = gamma if r.algorithm == "muon" else gamma * lr
                factors = self.grad(anchor, kf_all[:, :, wsl], kr_all[:, :, wsl],
                                    v_all[:, :, wsl], {n: x[:, :, wsl] for n, x in
                                                       vals_all.items()}, scale_dy)
                g = mem.contract(shape, factors, torch.ones_like(gamma[..., 0]))
                if r.retention == "user" and self.f.reg_grad is not None:
                    reg = {n: self.f.reg_grad(x) for n, x in anchor.items()}
                else:
                    reg = None
                if r.algorithm in ("gd", "implicit_gd"):
                    u = {n: -x for n, x in g.items()}
                elif r.algorithm == "momentum":
                    assert mom is not None
                    bm = _at(vals, "momentum", sl, q, 0.9)[:, :, 0]
                    mom = {n: ops.channel_scale(shape, n, mom[n], bm) - g[n] for n in g}
                    u = dict(mom)
                else:  # muon
                    assert mom is not None
                    bm = _at(vals, "momentum", sl, q, 0.9)[:, :, 0]
                    mom = {n: ops.channel_scale(shape, n, mom[n], bm) + g[n] for n in g}
                    lr0 = lr[:, :, 0]
                    u = {n: ops.channel_scale(shape, n, ops.newton_schulz(x, r.ns_steps), -lr0)
                         for n, x in mom.items()}
                if reg is not None:
                    u = {n: u[n] - reg[n] for n in u}
                acc = ops.add(ops.scale(shape, acc, alpha), u)
                thr = _at(vals, "threshold", sl, q, 0.0)[:, :, 0]
                cur = self.retain(base, beta, acc, thr)
                a_t = ops.add(ops.scale(shape, base, beta), acc) if r.uses_accumulator else None
                for _ in range(r.gd_steps - 1):  # MGD: more steps on the same token
                    f2 = self.grad(cur, kf[:, :, sl], k[:, :, sl], v[:, :, sl],
                                   {n: x[:, :, sl] for n, x in vals.items()}, lr)
                    g2 = mem.contract(shape, f2, torch.ones_like(lr[..., 0]))
                    cur = {n: cur[n] - g2[n] for n in cur}
                read_w = prev if r.read_before else cur
                outs.append(self.read(read_w, qf[:, :, sl], q[:, :, sl]))
                prev = cur
            theta = cur
            if a_t is not None:
                acc_state = a_t
            part = Partial(start, base, beta, acc)
        o = torch.cat(outs, 2)
        new_window = _window_tail(c, kf_all, kr_all, v_all, vals_all)
        return o, self.final(State(theta, mom, acc_state, new_window), p0, T, chunk, part)


    # ---- the exact chunk form (WY / UT transform) ------------------------------------------

    def exact_ok(self, vals: dict[str, Tensor]) -> bool:
        r = self.r
        return (r.exact and r.affine is not None and r.memory.kind == "matrix"
                and r.retention in ("none", "decay") and r.algorithm in ("gd", "implicit_gd")
                and r.window == 1 and r.gd_steps == 1
                and ("decay" not in vals or vals["decay"].shape[-1] == 1))

    def exact_chunk(self, q: Tensor, k: Tensor, v: Tensor, vals: dict[str, Tensor],
                    state: State, chunk: int) -> tuple[Tensor, State]:
        """The per-token recurrence of an affine update, evaluated chunk by chunk exactly.

        With ``∂ℓ/∂y = a·y − b·v`` and matrix memory, every token writes a rank-one term:
        ``W_t = α_t W_{t−1} + u_t k_tᵀ`` with ``u_t = η_t (b v_t − a Ŵ_t k_t)`` where ``Ŵ_t``
        is the gradient's anchor (``W_{t−1}`` or ``α_t W_{t−1}``). Within a chunk
        ``W_t = γ_t W₀ + Σ_{i≤t} (γ_t/γ_i) u_i k_iᵀ`` (``γ`` the cumulative decay), so the
        ``u`` solve one unit lower-triangular system ``(I + a·diag(η)·L) U = diag(η)(b V − a
        diag(g) K W₀ᵀ)`` with ``L_ti = (g_t/γ_i) k_tᵀk_i`` for ``i < t`` (``g`` = ``γ`` or
        ``γ/α``): the UT transform of DeltaNet / Gated DeltaNet.
        """
        r = self.r
        a, b = r.affine or (1.0, 1.0)
        qf, kf = self.f.feature(q), self.f.feature(k)
        T = q.shape[2]
        w = state.weights["W"]
        outs = []
        for t0 in range(0, T, chunk):
            t1 = min(T, t0 + chunk)
            n = t1 - t0
            sl = slice(t0, t1)
            kc, qc, vc = kf[:, :, sl], qf[:, :, sl], v[:, :, sl]
            alpha = self.alpha(vals, sl, q)[..., 0]
            lr = self.lr(vals, sl, kf)  # [B, H, n, 1|D]
            cum = torch.cumsum(torch.log(alpha.clamp_min(1e-30)), -1)
            gam = torch.exp(cum)  # γ_t
            anchor = gam if r.decay_at == "decayed" else torch.exp(cum - torch.log(
                alpha.clamp_min(1e-30)))  # γ_t or γ_{t−1}
            strict = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)
            ratio = torch.exp((torch.log(anchor).unsqueeze(-1) - cum.unsqueeze(-2))
                              .masked_fill(~strict, 0.0)) * strict
            lmat = ratio * (kc @ kc.transpose(-1, -2))  # [B, H, n, n]
            rhs = b * vc - a * anchor.unsqueeze(-1) * (kc @ w.transpose(-1, -2))  # [B, H, n, D]
            eye = torch.eye(n, dtype=q.dtype, device=q.device)
            if lr.shape[-1] == 1:
                system = eye + a * lr * lmat
                u = torch.linalg.solve_triangular(system, lr * rhs, upper=False,
                                                  unitriangular=True)
            else:  # channel-wise step: one system per value channel
                lr_c = lr.transpose(-1, -2).unsqueeze(-1)  # [B, H, D, n, 1]
                system = eye + a * lr_c * lmat.unsqueeze(2)
                u = torch.linalg.solve_triangular(
                    system, (lr * rhs).transpose(-1, -2).unsqueeze(-1), upper=False,
                    unitriangular=True)[..., 0].transpose(-1, -2)
            causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
            decay = torch.exp((cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~causal, 0.0)
                              ) * causal
            read_scale = gam
            scores = decay * (qc @ kc.transpose(-1, -2))
            if r.read_before:  # token t reads W_{t−1}
                shift = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)
                scores = torch.exp((cum.unsqueeze(-1) - torch.log(alpha.clamp_min(1e-30))
                                    .unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~shift, 0.0)
                                   ) * shift * (qc @ kc.transpose(-1, -2))
                read_scale = anchor if r.decay_at != "decayed" else gam / alpha
            outs.append(read_scale.unsqueeze(-1) * (qc @ w.transpose(-1, -2)) + scores @ u)
            tail = torch.exp(cum[..., -1:] - cum)  # γ_n/γ_i
            w = gam[..., -1:].unsqueeze(-1) * w + (u * tail.unsqueeze(-1)).transpose(-1, -2) @ kc
        return torch.cat(outs, 2), self.final(State({"W": w}), 0, T, 1, None)

    # ---- the dual (matmul) form -----------------------------------------------------------

    def dual_ok(self, vals: dict[str, Tensor]) -> bool:
        """Whether the chunk form can skip per-token weights (linear retention, scalar decays).

        Then ``Θ_t = β_t Θ₀ + s_t S₀ + Σ_m C_tm δ_m a_mᵀ`` with a ``[n, m]`` coefficient
        matrix ``C`` built from the decay, momentum, learning-rate and window structure, and
        ``Θ_t h = β_t Θ₀ h + s_t S₀ h + (C ⊙ (H Aᵀ)) Δ`` is a few matmuls (the TTT/Titans
        "dual form", [T] Eq 16-18, [A] Eq 16).
        """
        r = self.r
        scalar = all(vals[n].shape[-1] == 1 for n in ("decay", "momentum") if n in vals)
        lr_ok = "lr" not in vals or vals["lr"].shape[-1] == 1 or r.window == 1
        return (r.retention in ("none", "decay") and r.algorithm in ("gd", "momentum",
                                                                     "implicit_gd")
                and r.decay_at == "prev" and r.gd_steps == 1 and scalar and lr_ok)

    def dual(self, q: Tensor, k: Tensor, v: Tensor, vals: dict[str, Tensor], state: State,
             chunk: int) -> tuple[Tensor, State]:
        r, shape = self.r, self.r.memory
        qf, kf = self.f.feature(q), self.f.feature(k)
        T = q.shape[2]
        c = r.window
        kf_all, kr_all, v_all, vals_all, off = _extend(state, kf, k, v, vals)
        # Linear retention: Θ_t = (Π α) Θ_p + (the chunk's new terms), so the running weights
        # Θ_p carry an unfinished chunk; only the gradients need its start Θ₀.
        theta, mom = state.weights, state.momentum
        p0, part = self.position(state, chunk)
        outs = []
        for t0, t1 in _groups(T, chunk, False, p0):
            if t0 > 0 or part is None:
                part = _fresh(State(theta))
            start = part.start
            n = t1 - t0
            sl = slice(t0, t1)
            g0, g1 = max(0, t0 + off - (c - 1)), t1 + off
            gsl = slice(g0, g1)
            m = g1 - g0
            alpha = self.alpha(vals, sl, q)[..., 0]  # [B, H, n]
            lr = self.lr(vals, sl, kf)  # [B, H, n, 1|D]
            scale_dy = _at(vals_all, "gamma", gsl, q, 1.0)  # [B, H, m, 1]
            if lr.shape[-1] != 1:  # channel-wise lr (window of one: token i is gradient i)
                scale_dy = scale_dy * lr
                lr_s = torch.ones_like(alpha)
            else:
                lr_s = lr[..., 0]
            y0, trace = mem.forward(shape, start, kf_all[:, :, gsl], kr_all[:, :, gsl],
                                    self.f.act)
            dy = self.f.bias_grad(y0, v_all[:, :, gsl], kr_all[:, :, gsl],
                                  {nm: x[:, :, gsl] for nm, x in vals_all.items()}) * scale_dy
            factors = mem.backward(shape, start, trace, dy, self.act_grad)
            # coefficients (log space for the decay products)
            tri = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
            cum = torch.cumsum(torch.log(alpha.clamp_min(1e-30)), -1)
            beta = torch.exp(cum)
            d1 = torch.where(tri, torch.exp((cum.unsqueeze(-1) - cum.unsqueeze(-2))
                                            .masked_fill(~tri, 0.0)), torch.zeros(()))
            pos = torch.arange(n, device=q.device) + (t0 + off - g0)
            j = torch.arange(m, device=q.device)
            band = ((j.unsqueeze(0) <= pos.unsqueeze(1))
                    & (j.unsqueeze(0) > pos.unsqueeze(1) - c)).to(q.dtype)  # [n, m]
            if mom is not None:
                mu = _at(vals, "momentum", sl, q, 0.9)[..., 0]
                cm = torch.cumsum(torch.log(mu.clamp_min(1e-30)), -1)
                d2 = torch.where(tri, torch.exp((cm.unsqueeze(-1) - cm.unsqueeze(-2))
                                                .masked_fill(~tri, 0.0)), torch.zeros(()))
                mat = d1 @ d2
                s_coef = (d1 @ torch.exp(cm).unsqueeze(-1))[..., 0]  # [B, H, n]
            else:
                mat, s_coef = d1, None
            coef = -(mat * lr_s.unsqueeze(-2)) @ band  # [B, H, n, m]
            if r.read_before:
                c_r = torch.cat([torch.zeros_like(coef[:, :, :1]), coef[:, :, :-1]], 2)
                b_r = torch.cat([torch.ones_like(beta[:, :, :1]), beta[:, :, :-1]], 2)
                s_r = None if s_coef is None else torch.cat(
                    [torch.zeros_like(s_coef[:, :, :1]), s_coef[:, :, :-1]], 2)
            else:
                c_r, b_r, s_r = coef, beta, s_coef

            def lin(name: str, h: Tensor, c_r: Tensor = c_r, b_r: Tensor = b_r,
                    s_r: Tensor | None = s_r, factors: dict = factors,
                    theta: Weights = theta, mom: Weights | None = mom) -> Tensor:
                delta, a = factors[name]
                if shape.kind == "vector":
                    out = b_r.unsqueeze(-1) * h * theta[name].unsqueeze(-2)
                    if s_r is not None and mom is not None:
                        out = out + s_r.unsqueeze(-1) * h * mom[name].unsqueeze(-2)
                    return out + (c_r @ (delta * a)) * h
                out = b_r.unsqueeze(-1) * (h @ theta[name].transpose(-1, -2))
                if s_r is not None and mom is not None:
                    out = out + s_r.unsqueeze(-1) * (h @ mom[name].transpose(-1, -2))
                return out + (c_r * (h @ a.transpose(-1, -2))) @ delta

            y, _ = mem.forward_with(shape, lin, qf[:, :, sl], q[:, :, sl], self.f.act)
            outs.append(y)
            last = coef[:, :, -1]  # [B, H, m]
            upd = mem.contract(shape, factors, last)
            b_last = beta[:, :, -1:]
            new = {nm: ops.channel_scale(shape, nm, theta[nm], b_last) + upd[nm] for nm in theta}
            # U^acc of the chunk so far (β_rel U^acc_p + this group's terms), for a later call
            acc = {nm: ops.channel_scale(shape, nm, part.acc[nm], b_last) + upd[nm]
                   for nm in theta}
            if mom is not None and s_coef is not None:
                s_last = s_coef[:, :, -1:]
                new = {nm: new[nm] + ops.channel_scale(shape, nm, mom[nm], s_last)
                       for nm in new}
                acc = {nm: acc[nm] + ops.channel_scale(shape, nm, mom[nm], s_last)
                       for nm in acc}
                e = -(d2[:, :, -1] * lr_s) @ band  # [B, H, m]
                mupd = mem.contract(shape, factors, e)
                mom = {nm: ops.channel_scale(shape, nm, mom[nm], torch.exp(cm[:, :, -1:]))
                       + mupd[nm] for nm in mom}
            theta = new
            part = Partial(start, start, part.beta * b_last, acc)
        o = torch.cat(outs, 2)
        new_window = _window_tail(c, kf_all, kr_all, v_all, vals_all)
        return o, self.final(State(theta, mom, state.accum, new_window), p0, T, chunk, part)

    # ---- the chunk-parallel form ---------------------------------------------------------

    def chunked(self, q: Tensor, k: Tensor, v: Tensor, vals: dict[str, Tensor],
                state: State, chunk: int) -> tuple[Tensor, State]:
        """The same definition as :meth:`reference`, vectorised over the tokens of a chunk.

        Per chunk: the inner gradients of all tokens at the anchor in one batched pass (one
        pass per window offset), the momentum and accumulation scans in closed form, the
        retention map and the reads batched over tokens with per-token weights
        ``[B, H, n, ...]``. Linear cases take the matmul form of :meth:`dual` instead.
        """
        if self.dual_ok(vals):
            return self.dual(q, k, v, vals, state, chunk)
        r, shape = self.r, self.r.memory
        qf, kf = self.f.feature(q), self.f.feature(k)
        _B, _H, T, _ = q.shape
        c = r.window
        kf_all, kr_all, v_all, vals_all, off = _extend(state, kf, k, v, vals)
        theta, mom, acc_state = state.weights, state.momentum, state.accum
        p0, part = self.position(state, chunk)
        outs = []
        for t0, t1 in _groups(T, chunk, r.lag_token, p0):
            n = t1 - t0
            sl = slice(t0, t1)
            if t0 > 0 or part is None:
                part = _fresh(State(theta, None, acc_state))
            base = part.base
            alpha = self.alpha(vals, sl, q)  # [B, H, n, 1|D]
            beta = part.beta.unsqueeze(2) * _cumprod(alpha)
            lr = self.lr(vals, sl, kf)
            # anchor per token: [B, H, n, ...] when decayed, else the chunk start
            tok = {nm: x.unsqueeze(2) for nm, x in part.start.items()}
            anchor = ops.scale(shape, tok, beta) if r.decay_at == "decayed" else tok
            g = None
            once = c > 1 and r.decay_at == "prev" and (r.algorithm == "muon"
                                                       or lr.shape[-1] == 1)
            if once:
                # every token's gradient at the shared anchor once, then the window sums
                # g_t = η_t Σ_{m ∈ window(t)} γ_m ∇ℓ_m as one [n, m] contraction
                g0, g1 = max(0, t0 + off - (c - 1)), t1 + off
                gsl = slice(g0, g1)
                xs = kf_all[:, :, gsl].unsqueeze(-2)
                rs = kr_all[:, :, gsl].unsqueeze(-2)
                y, trace = mem.forward(shape, anchor, xs, rs, self.f.act)
                dy = self.f.bias_grad(y, v_all[:, :, gsl].unsqueeze(-2), rs,
                                      {nm: x[:, :, gsl].unsqueeze(-2)
                                       for nm, x in vals_all.items()})
                dy = dy * _at(vals_all, "gamma", gsl, q, 1.0).unsqueeze(-2)
                factors = mem.backward(shape, anchor, trace, dy, self.act_grad)
                per_token = mem.contract(shape, factors, torch.ones_like(dy[..., 0]))
                pos = torch.arange(n, device=q.device) + (t0 + off - g0)
                j = torch.arange(g1 - g0, device=q.device)
                band = ((j.unsqueeze(0) <= pos.unsqueeze(1))
                        & (j.unsqueeze(0) > pos.unsqueeze(1) - c)).to(q.dtype)
                weight = band if r.algorithm == "muon" else band * lr[..., 0].unsqueeze(-1)
                g = {nm: torch.matmul(weight, x.flatten(3)).reshape(*x.shape[:2], n,
                                                                     *x.shape[3:])
                     for nm, x in per_token.items()}
            for o in range(0 if once else c):
                idx = torch.arange(t0 + off - o, t1 + off - o)
                ok = idx >= 0
                if not bool(ok.any()):
                    continue
                idx = idx.clamp_min(0)
                gamma = _at(vals_all, "gamma", slice(0, kf_all.shape[2]), q, 1.0)[:, :, idx]
                gamma = gamma * ok.to(q.dtype).view(1, 1, n, 1)
                scale_dy = gamma if r.algorithm == "muon" else gamma * lr
                xs = kf_all[:, :, idx].unsqueeze(-2)
                rs = kr_all[:, :, idx].unsqueeze(-2)
                y, trace = mem.forward(shape, anchor, xs, rs, self.f.act)
                dy = self.f.bias_grad(y, v_all[:, :, idx].unsqueeze(-2), rs,
                                      {nm: x[:, :, idx].unsqueeze(-2)
                                       for nm, x in vals_all.items()})
                dy = dy * scale_dy.unsqueeze(-2)
                factors = mem.backward(shape, anchor, trace, dy, self.act_grad)
                term = mem.contract(shape, factors, torch.ones_like(dy[..., 0]))
                g = term if g is None else ops.add(g, term)
            assert g is not None
            if r.algorithm in ("gd", "implicit_gd"):
                u = {nm: -x for nm, x in g.items()}
            else:
                assert mom is not None
                bm = _at(vals, "momentum", sl, q, 0.9)
                sign = -1.0 if r.algorithm == "momentum" else 1.0
                s_all = {nm: _scan(shape, nm, sign * g[nm], bm, mom[nm]) for nm in g}
                mom = {nm: x[:, :, -1] for nm, x in s_all.items()}
                if r.algorithm == "momentum":
                    u = s_all
                else:
                    u = {nm: ops.channel_scale(shape, nm, ops.newton_schulz(x, r.ns_steps),
                                               -lr) for nm, x in s_all.items()}
            if r.retention == "user" and self.f.reg_grad is not None:
                u = {nm: u[nm] - self.f.reg_grad(anchor[nm]).expand_as(u[nm]) for nm in u}
            acc = {nm: _scan(shape, nm, x, alpha, part.acc[nm]) for nm, x in u.items()}
            thr = _at(vals, "threshold", sl, q, 0.0)
            base_tok = {nm: x.unsqueeze(2) for nm, x in base.items()}
            cur = self.retain(base_tok, beta, acc, thr)
            if r.read_before:
                read_w = {nm: torch.cat([theta[nm].unsqueeze(2), x[:, :, :-1]], 2)
                          for nm, x in cur.items()}
            else:
                read_w = cur
            y = self.read(read_w, qf[:, :, sl].unsqueeze(-2), q[:, :, sl].unsqueeze(-2))
            outs.append(y.squeeze(-2))
            theta = {nm: x[:, :, -1] for nm, x in cur.items()}
            if r.uses_accumulator:
                acc_state = {nm: ops.channel_scale(shape, nm, base[nm], beta[:, :, -1])
                             + acc[nm][:, :, -1] for nm in base}
            part = Partial(part.start, base, beta[:, :, -1],
                           {nm: x[:, :, -1] for nm, x in acc.items()})
        o = torch.cat(outs, 2)
        new_window = _window_tail(c, kf_all, kr_all, v_all, vals_all)
        return o, self.final(State(theta, mom, acc_state, new_window), p0, T, chunk, part)


def _cumprod(a: Tensor) -> Tensor:
    """``β_t = Π_{i ≤ t} a_i`` along the token axis (dim 2)."""
    return torch.cumprod(a, dim=2)


def _scan(shape: MemoryShape, name: str, x: Tensor, a: Tensor, h0: Tensor | None) -> Tensor:
    """``h_t = a_t h_{t−1} + x_t`` over the token axis of ``x`` ``[B, H, n, ...]``.

    One-per-head decays use the closed form ``h_t = Σ_{i ≤ t} (β_t/β_i) x_i (+ β_t h₀)`` as
    one contraction with a lower-triangular ``[n, n]`` matrix (in log space); channel-wise
    decays scan token by token.
    """
    n = x.shape[2]
    if a.shape[-1] == 1:
        la = torch.log(a[..., 0].clamp_min(1e-30))  # [B, H, n]
        cum = torch.cumsum(la, dim=2)
        diff = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # [B, H, t, i]
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        L = torch.where(mask, torch.exp(diff.masked_fill(~mask, 0.0)), torch.zeros_like(diff))
        flat = x.reshape(*x.shape[:3], -1)
        h = torch.matmul(L, flat).reshape(x.shape)
        if h0 is not None:
            beta = torch.exp(cum).reshape(*cum.shape, *([1] * (x.dim() - 3)))
            h = h + beta * h0.unsqueeze(2)
        return h
    outs = []
    prev = h0
    for t in range(n):
        cur = x[:, :, t]
        if prev is not None:
            cur = ops.channel_scale(shape, name, prev, a[:, :, t]) + cur
        outs.append(cur)
        prev = cur
    return torch.stack(outs, 2)


def _extend(state: State, kf: Tensor, k: Tensor, v: Tensor, vals: dict[str, Tensor]
            ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor], int]:
    """Prepend the window's previous tokens (carried in the state across calls)."""
    if state.window is None:
        return kf, k, v, vals, 0
    pk, pr, pv, pvals = state.window
    new = dict(vals)
    if "gamma" in pvals and "gamma" not in new:  # a padded window (see cat_states)
        new["gamma"] = kf.new_ones(*kf.shape[:3], 1)
    return (torch.cat([pk, kf], 2), torch.cat([pr, k], 2), torch.cat([pv, v], 2),
            {n: torch.cat([pvals[n], t], 2) for n, t in new.items()}, pk.shape[2])


def _window_tail(c: int, kf: Tensor, k: Tensor, v: Tensor, vals: dict[str, Tensor]
                 ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]] | None:
    """The last ``c − 1`` tokens, which the next call's window needs."""
    if c <= 1:
        return None
    keep = c - 1
    return (kf[:, :, -keep:], k[:, :, -keep:], v[:, :, -keep:],
            {n: x[:, :, -keep:] for n, x in vals.items()})


#: Retentions whose update multiplies the previous state by ``alpha``.
_DECAYING = frozenset({"decay", "lq", "kl", "bregman", "elastic_net"})


def _starts_group(p: int, size: int, lag: bool) -> bool:
    """Whether the token at chunk position ``p`` starts a new anchor (a chunk, or the rest of
    one after Memora's lag token)."""
    return p == 0 or (lag and size > 1 and p == 1)


def _groups(T: int, size: int, lag: bool, pos: int = 0) -> list[tuple[int, int]]:
    """Token ranges sharing one anchor, for ``T`` tokens whose first sits at chunk
    position ``pos``: the chunk grid, with the lag token of each chunk on its own."""
    out = []
    t = 0
    while t < T:
        p = (pos + t) % size
        end = t + 1 if lag and size > 1 and p == 0 else t + size - p
        out.append((t, min(end, T)))
        t = out[-1][1]
    return out


def _autograd_derivative(f: Map) -> Map:
    def d(x: Tensor) -> Tensor:
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True) if not x.requires_grad else x
            y = f(xx)
            (g,) = torch.autograd.grad(y.sum(), xx, create_graph=x.requires_grad)
        return g

    return d


def run_reference(recipe: Recipe, fns: Fns, q: Tensor, k: Tensor, v: Tensor,
                  vals: dict[str, Tensor], state: State, chunk: int = 1
                  ) -> tuple[Tensor, State]:
    """Token-by-token recurrence; ``chunk > 1`` anchors gradients at chunk starts.

    ``q, k, v`` are ``[B, H, T, D]``; ``vals`` maps slot names (``lr``, ``decay``,
    ``momentum``, ``gamma``, ``delta``, ``threshold``, user parameters) to ``[B, H, T, 1|D]``.
    A ``state`` left inside a chunk by an earlier call is continued (see :class:`State`);
    on one token this is recurrent decoding.
    """
    runner = _Runner(recipe, fns)
    return _by_position(runner.reference, q, k, v, vals, state, 1 if recipe.exact else chunk)


def run_chunked(recipe: Recipe, fns: Fns, q: Tensor, k: Tensor, v: Tensor,
                vals: dict[str, Tensor], state: State, chunk: int = 64
                ) -> tuple[Tensor, State]:
    """The chunk-parallel form; equals :func:`run_reference` with the same ``chunk``.

    For ``exact`` recipes it equals the per-token recurrence (UT transform where it applies,
    else the recurrence itself).
    """
    runner = _Runner(recipe, fns)
    if recipe.exact:
        if runner.exact_ok(vals):
            return runner.exact_chunk(q, k, v, vals, state, chunk)
        return _by_position(runner.reference, q, k, v, vals, state, 1)
    return _by_position(runner.chunked, q, k, v, vals, state, chunk)


Run = Callable[[Tensor, Tensor, Tensor, dict[str, Tensor], State, int], tuple[Tensor, State]]


def _by_position(run: Run, q: Tensor, k: Tensor, v: Tensor, vals: dict[str, Tensor],
                 state: State, chunk: int) -> tuple[Tensor, State]:
    """``run`` once per group of rows at the same chunk position (rows of states that
    :func:`cat_states` joined may differ), then the rows back in order."""
    pos = state.pos
    if pos is None or pos.numel() == 0 or bool((pos == pos[0]).all()):
        return run(q, k, v, vals, state, chunk)
    outs, states, rows = [], [], []
    for p in torch.unique(pos).tolist():
        idx = (pos == p).nonzero()[:, 0]
        o, s = run(q[idx], k[idx], v[idx], {n: x[idx] for n, x in vals.items()},
                   state.select(idx), chunk)
        outs.append(o)
        states.append(s)
        rows.append(idx)
    back = torch.argsort(torch.cat(rows))
    return torch.cat(outs)[back], cat_states(states).select(back)

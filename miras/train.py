"""Quick experiments: train a small LM with a compiled spec on a synthetic task.

>>> import miras
>>> c = miras.compile("model m { memory = matrix  bias = l2  retention = none  algorithm = gd }")
>>> r = train(c, task="mqar", steps=2, batch=4, seq_len=16, vocab=32, d_model=16)
>>> sorted(r)[:2], len(r["losses"])
(['accuracy', 'chance'], 2)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from miras import tasks
from miras.models import LM, accuracy, loss_fn
from miras.runtime.compiled import Compiled


def train(compiled: Compiled, *, task: str = "mqar", steps: int = 200, batch: int = 32,
          seq_len: int = 64, vocab: int = 64, d_model: int = 64, layers: int = 2,
          heads: int | None = None, lr: float = 3e-3, seed: int = 0, backend: str | None = None,
          eval_batches: int = 4, progress: Callable[[int, float], None] | None = None
          ) -> dict[str, Any]:
    """Train on ``task`` for ``steps`` steps (AdamW, cosine decay); evaluate on fresh data.

    Returns ``{"losses", "accuracy", "chance", "tokens_per_s", ...}``; deterministic for a
    given seed on one machine.
    """
    torch.manual_seed(seed)
    info = tasks.info(task, vocab, seq_len)
    model = LM(compiled, vocab, d_model=d_model, layers=layers, heads=heads, backend=backend)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10))
        * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / max(1, steps))).item()))
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        x, y = tasks.make_batch(task, batch=batch, seq_len=seq_len, vocab=vocab, generator=gen)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    elapsed = time.perf_counter() - start
    model.eval()
    eval_gen = torch.Generator().manual_seed(seed + 10_000)
    accs = []
    with torch.no_grad():
        for _ in range(eval_batches):
            x, y = tasks.make_batch(task, batch=batch, seq_len=seq_len, vocab=vocab,
                                    generator=eval_gen)
            accs.append(accuracy(model(x), y))
    return {"model": compiled.name, "task": task, "steps": steps, "losses": losses,
            "final_loss": losses[-1] if losses else float("nan"),
            "accuracy": sum(accs) / len(accs), "chance": info.chance,
            "tokens_per_s": steps * batch * seq_len / max(elapsed, 1e-9),
            "parameters": sum(p.numel() for p in model.parameters())}

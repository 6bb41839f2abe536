"""Quick experiments: train a small LM with a compiled spec on a synthetic task.

>>> import miras
>>> c = miras.compile("model m { memory = matrix  bias = l2  retention = none  algorithm = gd }")
>>> r = train(c, task="mqar", steps=2, batch=4, seq_len=16, vocab=32, d_model=16)
>>> sorted(r)[:2], len(r["losses"])
(['accuracy', 'accuracy_by_length'], 2)

Under ``torch.distributed`` (``miras train --nproc N``, or any process group the caller
has initialised) the model is wrapped in DDP and each rank trains on its shard of every
batch: all ranks draw the same global batch from the shared seed and keep their own rows,
and the loss is normalised by the number of scored positions of the *global* batch, so
that the averaged gradient equals single-process training on the whole batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from miras import tasks
from miras.models import LM, accuracy
from miras.runtime.compiled import Compiled


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(t: Tensor, rank: int, size: int) -> Tensor:
    """The rows of a global batch that belong to ``rank`` (contiguous, equal shares)."""
    if t.shape[0] % size:
        raise ValueError(f"the batch ({t.shape[0]}) must divide among {size} processes")
    n = t.shape[0] // size
    return t[rank * n:(rank + 1) * n]


def shard_loss(logits: Tensor, labels: Tensor, scored: int, size: int) -> Tensor:
    """Cross-entropy summed over the shard, over the global count of scored positions.

    Times ``size`` because DDP and FSDP average gradients over ranks: the average of the
    ranks' gradients is then that of the global mean loss, whatever each shard's count.
    """
    total = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                        ignore_index=tasks.IGNORE, reduction="sum")
    return total * size / max(scored, 1)


def train(compiled: Compiled, *, task: str = "mqar", steps: int = 200, batch: int = 32,
          seq_len: int = 64, vocab: int = 64, d_model: int = 64, layers: int = 2,
          heads: int | None = None, lr: float = 3e-3, seed: int = 0, backend: str | None = None,
          eval_batches: int = 4, progress: Callable[[int, float], None] | None = None,
          noise: float = 0.25, eval_lengths: tuple[int, ...] = (),
          device: str | torch.device | None = None) -> dict[str, Any]:
    """Train on ``task`` for ``steps`` steps (AdamW, cosine decay); evaluate on fresh data.

    Returns ``{"losses", "accuracy", "accuracy_by_length", "chance", "tokens_per_s", ...}``:
    ``accuracy`` is measured at ``seq_len``, ``accuracy_by_length`` at ``seq_len`` and every
    length of ``eval_lengths``. Deterministic for a given seed on one machine. ``batch`` is
    the global batch: under ``torch.distributed`` each of the N ranks trains on batch/N rows.
    ``device`` (default: the CPU) is where the model and its batches live.
    """
    rank, size = world()
    torch.manual_seed(seed)
    info = tasks.info(task, vocab, seq_len)
    dev = torch.device(device or "cpu")
    model = LM(compiled, vocab, d_model=d_model, layers=layers, heads=heads,
               backend=backend).to(dev)
    net: nn.Module = model
    if size > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Replicas start equal (same seed); DDP broadcasts rank 0's weights all the same.
        net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10))
        * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / max(1, steps))).item()))
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        x, y = tasks.make_batch(task, batch=batch, seq_len=seq_len, vocab=vocab, generator=gen,
                                noise=noise)
        scored = int((y != tasks.IGNORE).sum())
        x, y = shard(x, rank, size).to(dev), shard(y, rank, size).to(dev)
        loss = shard_loss(net(x), y, scored, size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        shown = loss.detach() / size
        if size > 1:
            import torch.distributed as dist

            dist.all_reduce(shown)  # the global mean loss, for every rank's log
        losses.append(float(shown))
        if progress is not None:
            progress(step, losses[-1])
    elapsed = time.perf_counter() - start
    model.eval()
    by_length = {length: evaluate(model, task, batch=batch, seq_len=length, vocab=vocab,
                                  seed=seed, batches=eval_batches, noise=noise)
                 for length in dict.fromkeys((seq_len, *eval_lengths))}
    return {"model": compiled.name, "task": task, "steps": steps, "losses": losses,
            "final_loss": losses[-1] if losses else float("nan"),
            "accuracy": by_length[seq_len], "accuracy_by_length": by_length,
            "chance": info.chance,
            "tokens_per_s": steps * batch * seq_len / max(elapsed, 1e-9),
            "parameters": sum(p.numel() for p in model.parameters()), "processes": size}


def evaluate(model: nn.Module, task: str, *, batch: int, seq_len: int, vocab: int, seed: int,
             batches: int = 4, noise: float = 0.25) -> float:
    """Mean accuracy over ``batches`` fresh batches (a generator of its own: never trained on)."""
    gen = torch.Generator().manual_seed(seed + 10_000)
    accs = []
    with torch.no_grad():
        for _ in range(batches):
            x, y = tasks.make_batch(task, batch=batch, seq_len=seq_len, vocab=vocab,
                                    generator=gen, noise=noise)
            dev = next(model.parameters()).device
            accs.append(accuracy(model(x.to(dev)), y.to(dev)))
    return sum(accs) / len(accs)

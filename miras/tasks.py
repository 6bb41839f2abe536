"""Synthetic tasks for quick comparisons of specs (generated on the fly, no downloads).

Each task yields ``(inputs, labels)`` of shape ``[B, T]`` (int64); labels are ``-100``
where no prediction is scored. Chance accuracy is ``1 / n_answers``.

- ``mqar``: multi-query associative recall (Zoology): key-value pairs, then queries of some
  of the keys, each followed by its value;
- ``copy``: a random string, a separator, then the string again;
- ``niah``: needle in a haystack: filler tokens with one key-value pair hidden inside, and
  the key asked at the end;
- ``noisy_mqar``: recall with noisy values: every key is written three times, and with
  probability ``noise`` one of its three writes carries a wrong value (an outlier); the
  queries ask for the true value, which is always the majority. A memory whose inner loss is
  robust to outliers (Huber, [M] §3) should suffer less from the corrupted writes.

>>> x, y = make_batch("mqar", batch=2, seq_len=32, vocab=64, seed=0)
>>> x.shape, y.shape, int((y != -100).sum(1)[0]) > 0
(torch.Size([2, 32]), torch.Size([2, 32]), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TASKS = ("mqar", "copy", "niah", "noisy_mqar")
#: Writes per key in ``noisy_mqar`` (at most one of them is corrupted: the truth is the majority).
NOISY_REPEATS = 3
IGNORE = -100


@dataclass(frozen=True)
class TaskInfo:
    name: str
    chance: float


def info(task: str, vocab: int, seq_len: int) -> TaskInfo:
    """Chance accuracy of ``task`` (answers are drawn uniformly)."""
    if task == "mqar":
        return TaskInfo(task, 1.0 / (vocab // 2 - 1))
    if task == "copy":
        return TaskInfo(task, 1.0 / (vocab - 2))
    if task == "niah":
        return TaskInfo(task, 1.0 / (vocab // 4))
    if task == "noisy_mqar":
        return TaskInfo(task, 1.0 / (vocab - vocab // 2))
    raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


def make_batch(task: str, *, batch: int, seq_len: int, vocab: int, seed: int | None = None,
               generator: torch.Generator | None = None, noise: float = 0.25
               ) -> tuple[Tensor, Tensor]:
    """One batch of ``task``; deterministic for a given ``seed`` (or generator state).

    ``noise`` is the probability that a key of ``noisy_mqar`` has one corrupted write.
    """
    gen = generator or torch.Generator().manual_seed(0 if seed is None else seed)
    if vocab < 16:
        raise ValueError("vocab must be at least 16")
    if task == "mqar":
        return _mqar(batch, seq_len, vocab, gen)
    if task == "copy":
        return _copy(batch, seq_len, vocab, gen)
    if task == "niah":
        return _niah(batch, seq_len, vocab, gen)
    if task == "noisy_mqar":
        return _noisy_mqar(batch, seq_len, vocab, gen, noise)
    raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


def _mqar(batch: int, seq_len: int, vocab: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    # keys in [1, V/2), values in [V/2, V); n pairs then n queries: 4n tokens
    half = vocab // 2
    n = max(1, min(seq_len // 4, half - 1))  # distinct keys: at most V/2 - 1 of them
    x = torch.zeros(batch, seq_len, dtype=torch.long)
    y = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    for b in range(batch):
        keys = torch.randperm(half - 1, generator=gen)[:n] + 1
        values = torch.randint(half, vocab, (n,), generator=gen)
        pairs = torch.stack([keys, values], 1).flatten()
        order = torch.randperm(n, generator=gen)
        queries = torch.stack([keys[order], values[order]], 1).flatten()
        seq = torch.cat([pairs, queries])[:seq_len]
        x[b, : seq.numel()] = seq
        ans = torch.arange(2 * n + 1, min(4 * n, seq_len), 2)
        y[b, ans - 1] = x[b, ans]  # predict the value from the query key's position
    return x, y


def _copy(batch: int, seq_len: int, vocab: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    n = (seq_len - 1) // 2
    sep = vocab - 1
    x = torch.zeros(batch, seq_len, dtype=torch.long)
    y = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    s = torch.randint(1, vocab - 1, (batch, n), generator=gen)
    x[:, :n] = s
    x[:, n] = sep
    x[:, n + 1: 2 * n + 1] = s
    y[:, n: 2 * n] = s  # after the separator, each position predicts the next copied token
    return x, y


def _niah(batch: int, seq_len: int, vocab: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    # filler from [V/2, V); the key from [1, V/4), its value from [V/4, V/2)
    q = vocab // 4
    x = torch.randint(2 * q, vocab, (batch, seq_len), generator=gen)
    y = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    keys = torch.randint(1, q, (batch,), generator=gen)
    values = torch.randint(q, 2 * q, (batch,), generator=gen)
    pos = torch.randint(0, max(1, seq_len - 3), (batch,), generator=gen)
    for b in range(batch):
        x[b, pos[b]] = keys[b]
        x[b, pos[b] + 1] = values[b]
        x[b, -1] = keys[b]
        y[b, -1] = values[b]
    return x, y


def _noisy_mqar(batch: int, seq_len: int, vocab: int, gen: torch.Generator,
                noise: float) -> tuple[Tensor, Tensor]:
    # keys in [1, V/2), values in [V/2, V); n keys written NOISY_REPEATS times each in a
    # shuffled order (2·r·n tokens), then the n keys queried once each (2n tokens).
    if not 0.0 <= noise < 1.0:
        raise ValueError("noise must be in [0, 1)")
    r = NOISY_REPEATS
    n = max(1, min(seq_len // (2 * r + 2), vocab // 2 - 1))
    half = vocab // 2
    x = torch.zeros(batch, seq_len, dtype=torch.long)
    y = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    for b in range(batch):
        keys = torch.randperm(half - 1, generator=gen)[:n] + 1
        values = torch.randint(half, vocab, (n,), generator=gen)
        written = values.repeat(r, 1)  # [r, n]: every write of every key
        corrupt = torch.rand(n, generator=gen) < noise
        which = torch.randint(0, r, (n,), generator=gen)
        # a wrong value: shift the true one by 1..(V/2 - 1) within the value range
        shift = torch.randint(1, vocab - half, (n,), generator=gen)
        wrong = (values - half + shift) % (vocab - half) + half
        cols = torch.nonzero(corrupt).flatten()
        written[which[cols], cols] = wrong[cols]
        order = torch.randperm(r * n, generator=gen)
        ks, vs = keys.repeat(r)[order], written.flatten()[order]
        pairs = torch.stack([ks, vs], 1).flatten()
        q = torch.randperm(n, generator=gen)
        queries = torch.stack([keys[q], values[q]], 1).flatten()
        seq = torch.cat([pairs, queries])[:seq_len]
        x[b, : seq.numel()] = seq
        start = 2 * r * n
        ans = torch.arange(start + 1, min(start + 2 * n, seq_len), 2)
        y[b, ans - 1] = x[b, ans]  # predict the true value from the query key's position
    return x, y

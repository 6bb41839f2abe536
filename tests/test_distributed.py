"""The LM under torch.distributed (DDP, FSDP2) and torch.compile, on the CPU.

Two processes on the gloo backend each take half of a batch; their averaged gradients must
equal those of one process on the whole batch (fp64, so the only difference is the order
of the reduction).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import miras
from miras import tasks
from miras.models import LM, loss_fn
from miras.train import shard, shard_loss

SPEC = """model m {
    memory = mlp(depth=2, expansion=2)
    bias = l2
    retention = decay(alpha=gate())
    algorithm = momentum(lr=gate(scale=0.1), beta=gate())
    parallel = chunk(size=8)
}
"""
WORLD = 2
ROOT = Path(__file__).parent.parent


def _model() -> LM:
    torch.manual_seed(0)
    return LM(miras.compile(SPEC), vocab=32, d_model=16, layers=2, heads=2).double()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    # 4 rows of MQAR: every row has the same number of scored positions, 2 rows per rank
    return tasks.make_batch("mqar", batch=4, seq_len=24, vocab=32, seed=1)


def _reference() -> dict[str, torch.Tensor]:
    """Single-process gradients of the mean loss over the whole batch."""
    model = _model()
    x, y = _batch()
    loss_fn(model(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, mode: str, rdv: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=WORLD)
    try:
        model = _model()
        x, y = _batch()
        scored = int((y != tasks.IGNORE).sum())
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            net: torch.nn.Module = DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            net = fully_shard(model)
        loss = shard_loss(net(shard(x, rank, WORLD)), shard(y, rank, WORLD), scored, WORLD)
        loss.backward()
        grads = {}
        for name, p in model.named_parameters():
            g = p.grad
            if hasattr(g, "full_tensor"):  # FSDP2: a sharded DTensor; gather it (collective)
                g = g.full_tensor()
            grads[name.replace("_checkpoint_wrapped_module.", "")] = g.detach().clone()
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_distributed_gradients_equal_single_process(mode: str, tmp_path: Path) -> None:
    ref = _reference()  # also compiles the spec into the module cache for the workers
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(mode, str(tmp_path / "rdv"), str(out)), nprocs=WORLD, join=True)
    got = torch.load(out)
    assert set(got) == set(ref)
    for name, g in ref.items():
        assert torch.allclose(got[name], g, rtol=1e-10, atol=1e-12), name
    assert sum(float(g.abs().sum()) for g in ref.values()) > 0  # a real, non-zero gradient


def test_shard_loss_is_the_global_mean_over_ranks() -> None:
    x, y = _batch()
    model = _model()
    logits = model(x)
    scored = int((y != tasks.IGNORE).sum())
    parts = [shard_loss(shard(logits, r, WORLD), shard(y, r, WORLD), scored, WORLD)
             for r in range(WORLD)]
    assert torch.allclose(sum(parts) / WORLD, loss_fn(logits, y), rtol=1e-12)
    with pytest.raises(ValueError, match="must divide"):
        shard(x, 0, 3)


def _train(nproc: int) -> dict[str, object]:
    spec = ROOT / "examples" / "gated_deltanet.miras"
    cmd = [sys.executable, "-m", "miras", "train", str(spec), "--steps", "3", "--batch", "4",
           "--seq-len", "16", "--vocab", "32", "--d-model", "16", "--layers", "1", "--json",
           "--nproc", str(nproc)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, res.stdout  # rank 0 prints, the other ranks do not
    return json.loads(lines[0])


def test_cli_train_nproc_2_matches_one_process() -> None:
    two, one = _train(2), _train(1)
    assert (two["processes"], one["processes"]) == (2, 1)
    # the same global batches and the averaged gradient: the same training, up to fp32
    # rounding of the reduction order
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    assert two["accuracy"] == one["accuracy"]


#: A matrix memory keeps the compiled graph small: inductor's C++ build of the deep-memory
#: LM above took 17 minutes on a loaded 2-core machine (it passes too).
LINEAR = """model lin {
    memory = matrix
    bias = l2
    retention = decay(alpha=gate())
    algorithm = gd(lr=gate())
    parallel = chunk(size=8)
}
"""


@pytest.mark.slow  # inductor compiles C++ for the CPU: a minute or more on 2 busy cores
def test_torch_compile_matches_eager() -> None:
    torch.manual_seed(0)
    c = miras.compile(LINEAR)
    model = LM(c, vocab=32, d_model=16, layers=1, heads=2)
    twin = LM(c, vocab=32, d_model=16, layers=1, heads=2)
    twin.load_state_dict(model.state_dict())
    compiled = torch.compile(twin)
    x, y = _batch()
    eager_loss = loss_fn(model(x), y)
    eager_loss.backward()
    loss = loss_fn(compiled(x), y)
    loss.backward()
    assert torch.allclose(loss, eager_loss, rtol=1e-5, atol=1e-6)
    eager = dict(model.named_parameters())
    for name, p in compiled.named_parameters():
        ref = eager[name.removeprefix("_orig_mod.")].grad
        assert torch.allclose(p.grad, ref, rtol=1e-4, atol=1e-5), name

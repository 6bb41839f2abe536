"""Does a robust inner loss (Huber) recall better than l2 when some writes are wrong?

A small, notebook-style reproduction of a qualitative claim of the Miras paper ([M] §3,
"Yaad"): an attentional bias with a bounded gradient (Huber) lets one outlier move the
memory less than the l2 bias does, so recall should degrade less when the context contains
corrupted key→value writes.

Run it from the repository root (4 runs of about 2 minutes each on an idle 2-core CPU; the
same sweep as ``miras explore examples/sweeps/robust_recall.miras -o runs/robust_recall``):

    python examples/explore_recall.py [OUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import miras
from miras.explorer import load_sweep

HERE = Path(__file__).parent

# %% The sweep: a Gated-DeltaNet-like matrix memory (decay gate, per-token learning rate),
# with the l2 bias (the delta rule) or Huber with a data-dependent threshold. Both train on
# noisy recall (every key written three times; for half of the keys one write carries a
# wrong value) and, as a control, on clean MQAR. Everything else is held fixed: budget,
# seed, model size.
sweep = load_sweep(HERE / "sweeps" / "robust_recall.miras")
print(f"base: {sweep.base.name}; varied: "
      + ", ".join(f"{f} in {len(v)} values" for f, v in sweep.vary.items()))

# %% Train every variant on every task, evaluate at every length. With an output folder the
# sweep resumes if interrupted, and writes results.csv/json and the two plots there.
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/robust_recall")
results = miras.explore(sweep, out=out, progress=True, echo=print)

# %% The table (accuracy at each context length; chance is 1/8 for both tasks here).
print(miras.format_table(results, markdown=True))

# %% The claim, measured: how much accuracy each bias keeps on noisy recall relative to clean
# recall, at the trained length.
length = sweep.settings.train_length
for bias in ("l2", "huber"):
    acc = {r.task: r.accuracy[length] for r in results if r.fields["bias"].startswith(bias)}
    print(f"{bias:>5}: clean {acc['mqar']:.3f}  noisy {acc['noisy_mqar']:.3f}  "
          f"(noisy - clean {acc['noisy_mqar'] - acc['mqar']:+.3f})")
print(f"plots: {out / 'accuracy_vs_length.png'}, {out / 'loss_curves.png'}")

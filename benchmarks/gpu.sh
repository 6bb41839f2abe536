#!/usr/bin/env bash
# The prepared GPU check, one call of the device tool (see benchmarks/RESULTS.md):
#   carry _device (wheels: lark, pydantic, interegular, flash-linear-attention) and run
#   bash benchmarks/gpu.sh
# It installs the wheels into /tmp/site, runs the fused-kernel tests on the GPU, then the
# benchmark; everything is also written under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site _device/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MIRAS_CACHE_DIR=/tmp/miras-cache
# one autotune config per kernel unless asked: a device call is short, compiles are not
export MIRAS_AUTOTUNE=${MIRAS_AUTOTUNE:-0}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$OUT/gpu.txt"
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -x -p no:cacheprovider \
    tests/runtime/test_fused.py $(ls tests/runtime/test_kernels_*.py 2>/dev/null) 2>&1 \
    | tail -n 30 | tee "$OUT/tests.txt"
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/kernels.py ${BENCH_ARGS:---lengths 2048,4096,8192 --reps 3} 2>&1 \
    | tee "$OUT/bench.txt"

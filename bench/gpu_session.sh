#!/usr/bin/env bash
# One device session's worth of GPU measurements (about 10 minutes on an H100/H200), results under $OUT (or
# bench/results). Run from the repository root:  OUT=/some/dir bash bench/gpu_session.sh
set -u
export PYTHONPATH=.
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee "$OUT/gpu-session.log"
# 1. fused vs XLA: on-device identity check, block/warp tuning at 16384 replicas, then 4096 and 32768
timeout 420 python bench/bench_fused.py --replicas 16384 4096 32768 --budget-s 240 \
    --out "$OUT/fused-gpu.json" 2>&1 | tee -a "$OUT/gpu-session.log"
# 2. the XLA engine vs the plain-Python reference (the engine issue's GPU targets)
timeout 150 python bench/bench_engine.py --replicas 8192 32768 --ref-steps 4000 \
    --out "$OUT/engine-gpu.json" 2>&1 | tee -a "$OUT/gpu-session.log"

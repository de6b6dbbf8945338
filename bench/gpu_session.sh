#!/usr/bin/env bash
# One device session's GPU measurements, under 10 minutes on an H100/H200; JSON and logs under $OUT
# (default bench/results/gpu-<date>). Run from the repository root, before anything else on the device:
#     OUT=/some/dir bash bench/gpu_session.sh
# 1. `lqs bench` at 4,096, 16,384 and 32,768 trials: XLA and the fused Triton kernel from the same keys, on-device
#    bit-identity of the final states, trial-steps/s, slot-steps/s, requests/s, compile time (JSON per size);
#    the records land in $OUT/cache/bench.json (LQS_CACHE_DIR), which is what path="auto" reads.
# 2. A full-size phase diagram (`lqs study phase`, paper sizes) with path="auto" (reading those records), timed.
# Each step has its own timeout; the summary (device, versions, every row) is $OUT/gpu-session.json.
# Dry run of the script itself on a CPU (tiny sizes, no phase diagram):
#     SIZES="8" STEPS=64 PHASE=0 OUT=/tmp/gpu-dry bash bench/gpu_session.sh
set -u
SIZES=${SIZES:-"4096 16384 32768"}
STEPS=${STEPS:-4096}
PHASE=${PHASE:-1}
export PYTHONPATH=.
OUT=${OUT:-bench/results/gpu-$(date +%Y%m%d-%H%M)}
mkdir -p "$OUT/cache"
export LQS_CACHE_DIR="$OUT/cache"
LOG="$OUT/gpu-session.log"
start=$SECONDS
python -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" 2>&1 | tee "$LOG"

# 1. identity + speed of both paths at three sizes (about 1 min each: two compiles, a warm-up and a timed call)
for n in $SIZES; do
  echo "== lqs bench --trials $n (t = $((SECONDS - start)) s)" | tee -a "$LOG"
  timeout 150 python -m lqs bench --trials "$n" --steps "$STEPS" --json > "$OUT/bench-$n.json" 2>> "$LOG" \
    || echo "lqs bench --trials $n failed or timed out (rc $?)" | tee -a "$LOG"
  python -c "import json,sys; rows=json.load(open(sys.argv[1])); [print(f\"  {r['path']:16s} identical={r['identical']} {r['trial_steps_per_s'] or 0:,.0f} trial-steps/s, compile {r['compile_s'] or 0:.1f} s {r['error'] or ''}\") for r in rows]" \
    "$OUT/bench-$n.json" 2>> "$LOG" | tee -a "$LOG"
done

# 2. a full-size phase diagram on the path auto picks from the records above
echo "== lqs study phase (full size, path auto) (t = $((SECONDS - start)) s)" | tee -a "$LOG"
t0=$SECONDS
rc=-1
if [ "$PHASE" = 1 ]; then
  timeout 240 python -m lqs --path auto study phase --out "$OUT/phase" >> "$LOG" 2>&1
  rc=$?
fi
echo "phase diagram: rc $rc, $((SECONDS - t0)) s wall" | tee -a "$LOG"

python - "$OUT" "$rc" "$((SECONDS - t0))" <<'EOF' 2>&1 | tee -a "$LOG"
import glob, json, os, sys
import jax, jaxlib
out, rc, wall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = []
for p in sorted(glob.glob(os.path.join(out, "bench-*.json"))):
    try:
        rows += json.load(open(p))
    except (OSError, ValueError):
        pass
d = jax.devices()[0]
summary = dict(device=str(d), device_kind=getattr(d, "device_kind", d.platform), jax=jax.__version__,
               jaxlib=jaxlib.__version__, bench=rows, phase=dict(rc=rc, wall_s=wall, out=os.path.join(out, "phase")),
               targets="XLA >= 2e8 trial-steps/s; fused >= 3x XLA in the same run")
json.dump(summary, open(os.path.join(out, "gpu-session.json"), "w"), indent=2)
for r in rows:
    print(r["path"], r["trials"], r["identical"], r["trial_steps_per_s"])
print("saved", os.path.join(out, "gpu-session.json"))
EOF
echo "total $((SECONDS - start)) s" | tee -a "$LOG"

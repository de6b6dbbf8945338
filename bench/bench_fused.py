"""The fused Pallas step loop vs. the XLA engine: same workload, same run, same device.

For each trial count R: build one batch of initial states, run one chunk (4,096 steps) on each path from those
same states and compare the results (the correctness check: on a CPU the fused kernel runs in interpret mode and
must match bit for bit; on a GPU Triton's exp/log may differ from XLA's in the last bit, which shifts a trajectory
only when a uniform lands within an ulp of a threshold, so the check reports the fraction of trials whose final
state is bit-identical and compares completions), then time ``--chunks`` further chunks on each path. The fused
kernel is timed for every (trials per program, warps) in ``--rb × --warps`` and the best is reported: the
lowering parameters are chosen by measurement.

Reports trial-steps/s, slot-steps/s (× K) and simulated completed requests/s, the fused/XLA ratio, and the
device's integer-throughput ceiling: (int32 lanes × clock) / (element operations per trial-step, counted from
the step's jaxpr).

    PYTHONPATH=. python bench/bench_fused.py --quick                       # CPU: interpret mode, a smoke run
    PYTHONPATH=. python bench/bench_fused.py --trials 4096 16384 32768   # GPU
Results go to bench/results/fused-<backend>-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# int32 lanes per SM per clock and boost clock of known GPUs (Hopper/Ampere SMs have 64 INT32 lanes)
KNOWN_GPUS = {"H200": (132, 64, 1.98e9), "H100": (132, 64, 1.98e9), "A100": (108, 64, 1.41e9),
              "L40S": (142, 64, 2.52e9)}


def int_ops_per_s():
    """(int32 operations per second of device 0, how it was obtained) or (None, why)."""
    import jax

    d = jax.devices()[0]
    kind = getattr(d, "device_kind", "") or ""
    for name, (sms, lanes, clk) in KNOWN_GPUS.items():
        if name in kind:
            sms = getattr(d, "core_count", None) or sms
            return sms * lanes * clk, f"{kind}: {sms} SMs × {lanes} int32 lanes × {clk / 1e9:.2f} GHz"
    if d.platform == "cpu":
        n = os.cpu_count() or 1
        return n * 16 * 3.0e9, f"CPU: {n} cores × 16 int32 lanes (2 AVX2 ports) × 3 GHz (rough)"
    return None, f"unknown device kind {kind!r}"


def ops_per_trial_step(cfg, params1, state1):
    """Element operations of one trial-step: Σ over the step's jaxpr equations of their output sizes (a lower
    bound of the work: bench/fused_resources.py counts the compiled SASS of the fused loop instead)."""
    import jax
    import numpy as np

    from lqs.kernels import batched as E

    jaxpr = jax.make_jaxpr(lambda s, p: __import__('lqs.kernels.step', fromlist=['step']).step(s, p, cfg))(state1, params1)
    try:
        from jax.extend.core import jaxprs_in_params
    except ImportError:  # pragma: no cover - older jax
        from jax.core import jaxprs_in_params
    total = 0

    def walk(jx):  # leaf primitives only: a nested jit/pjit is walked, not counted
        nonlocal total
        for eqn in jx.eqns:
            subs = list(jaxprs_in_params(eqn.params))
            if subs:
                for sub in subs:
                    walk(sub)
                continue
            if eqn.primitive.name == "broadcast_in_dim":  # folded into its consumer, not an operation
                continue
            for v in eqn.outvars:
                total += int(np.prod(getattr(v.aval, "shape", ()) or (1,)))

    walk(jaxpr.jaxpr)
    return total


def setup(R, seed, policy="swap", K=None, compact_every=64):
    import jax

    import lqs
    from lqs.engine import paths as P
    from lqs.engine import prepare

    w = lqs.preset("pd-1:1")
    srv = lqs.Server(M=131000, prefill_chunk=512, b=0.0372, policy=policy)
    cap = lqs.capacity(w, srv)
    mc = lqs.MonteCarlo(trials=R, warmup=4096, K=K, compact_every=compact_every, max_points=10**6, path="xla")
    cfg, sizing, grid, params = prepare(w, srv, [1.5 * cap.mu_rps], mc, 4096 * 4)
    keys = jax.random.split(jax.random.key(seed), R)
    return cfg, params, P.init_jit(keys, params, cfg)


def runner(cfg, path, rb=1, warps=None):
    import jax

    from lqs.kernels import batched as E
    from lqs.kernels import fused as F

    if path == "xla":
        return jax.jit(lambda s, p: E.run_call_batched(s, p, cfg))
    interp = jax.default_backend() == "cpu"
    return jax.jit(lambda s, p: F.run_call_batched(s, p, cfg, rb=rb, interpret=interp, num_warps=warps))


def time_path(fn, st, params, chunks):
    import jax
    import numpy as np

    t0 = time.perf_counter()
    st, _ = fn(st, params)  # compile + one chunk
    jax.block_until_ready(st)
    t_first = time.perf_counter() - t0
    c0 = int(np.asarray(st.counters.completions).sum())
    t1 = time.perf_counter()
    for _ in range(chunks):
        st, _ = fn(st, params)
    jax.block_until_ready(st)
    wall = time.perf_counter() - t1
    return st, wall, int(np.asarray(st.counters.completions).sum()) - c0, t_first


def compare(a, b):
    """Fraction of trials whose whole final state is bit-identical, and leaves that differ anywhere."""
    import jax
    import numpy as np

    la = jax.tree_util.tree_leaves_with_path(a)
    lb = jax.tree_util.tree_leaves(b)
    N = np.asarray(a.step).shape[0]
    same = np.ones(N, bool)
    bad = []
    for (p, x), y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        eq = (x == y) | (np.isnan(x) & np.isnan(y)) if x.dtype.kind == "f" else (x == y)
        eq = eq.reshape(N, -1).all(axis=1)
        if not eq.all():
            bad.append(jax.tree_util.keystr(p))
        same &= eq
    return float(same.mean()), bad


def save(a, m, ceil_ops, ceil_how, rows):
    """Write what is measured so far (a run cut short still leaves its rows)."""
    res = dict(machine=m, workload="pd-1:1", M=131000, chunk=512, b_s=0.0372, lam="1.5 mu", ceiling_ops_per_s=ceil_ops,
               ceiling_how=ceil_how, command="PYTHONPATH=. python " + " ".join(sys.argv), rows=rows,
               when=time.strftime("%Y-%m-%d %H:%M:%S"))
    out = a.out or os.path.join(os.environ.get("OUT") or os.path.join(HERE, "results"),
                                f"fused-{m['backend']}-{m['host']}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(res, fh, indent=2, default=float)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, nargs="+", default=None)
    ap.add_argument("--chunks", type=int, default=2, help="timed chunks of 4096 steps per path and size")
    ap.add_argument("--rb", type=int, nargs="+", default=None, help="trials per fused program to try")
    ap.add_argument("--warps", type=int, nargs="+", default=None, help="Triton warps per program to try")
    ap.add_argument("--policy", default="swap")
    ap.add_argument("--tune-at", type=int, default=None,
                    help="trial count at which every (rb, warps) is tried (default: the first); the others use "
                         "the best one found there")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop trying new (rb, warps) after this long")
    ap.add_argument("--compact-every", type=int, default=64, help="steps per fused launch (and per compaction)")
    ap.add_argument("--K", type=int, default=None, help="slots per trial (default: 512 on a GPU, sized on a CPU)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import jax
    import numpy as np

    from bench_engine import machine
    from lqs.kernels import fused as F

    gpu = jax.default_backend() != "cpu"
    R_list = a.trials or ([64, 256] if (a.quick or not gpu) else [4096, 16384, 32768])
    m = machine()
    ceil_ops, ceil_how = int_ops_per_s()
    print("machine:", json.dumps(m))
    rows = []
    t_start = time.perf_counter()
    tune_at = a.tune_at or R_list[0]
    R_list = [tune_at] + [R for R in R_list if R != tune_at]
    chosen = None
    for R in R_list:
        cfg, params, st0 = setup(R, seed=R, policy=a.policy, K=a.K,  # sized: 288, run unpadded under Triton
                                 compact_every=a.compact_every)
        p1 = jax.tree_util.tree_map(lambda x: x[0], params)
        s1 = jax.tree_util.tree_map(lambda x: x[0], st0)
        ops = ops_per_trial_step(cfg, p1, s1)
        ceiling = ceil_ops / ops if ceil_ops else None
        # correctness on this device: one chunk from the same states on both paths
        copy = lambda t: jax.tree_util.tree_map(lambda x: x.copy(), t)  # noqa: E731
        rb0 = F.default_trials_per_program(cfg.K)
        a_st, _ = runner(cfg, "xla")(copy(st0), params)
        try:
            b_st, _ = runner(cfg, "fused", rb0)(copy(st0), params)
            frac, bad = compare(jax.device_get(a_st), jax.device_get(b_st))
            cb, viol = int(np.asarray(b_st.counters.completions).sum()), int(np.asarray(b_st.limits.violations).sum())
        except Exception as e:  # noqa: BLE001 - reported, then the other blocks are still tried
            frac, bad, cb, viol = None, [f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"], None, None
        ca = int(np.asarray(a_st.counters.completions).sum())
        print(f"R={R} K={cfg.K}: identical trials {frac}, completions xla {ca} fused {cb}, "
              f"fused violations {viol}, differing leaves {bad[:6]}", flush=True)
        # timing
        _, wall, done, first = time_path(runner(cfg, "xla"), copy(st0), params, a.chunks)
        steps = a.chunks * cfg.steps_per_call
        x = dict(path="xla", trial_steps_per_s=R * steps / wall, slot_steps_per_s=R * steps * cfg.K / wall,
                 requests_per_s=done / wall, compile_and_first_chunk_s=first, wall_s=wall)
        print(f"  xla:   {x['trial_steps_per_s']:,.0f} trial-steps/s, {x['slot_steps_per_s']:,.0f} slot-steps/s, "
              f"{x['requests_per_s']:,.0f} requests/s")
        tried = []
        rbs = a.rb or (sorted({max(1, rb0 // 2), rb0, 2 * rb0}) if gpu else [rb0])

        def warps_for(rb):  # around the register-derived default (bench/fused_resources.py)
            dw = F.default_warps(cfg.K, rb)
            return a.warps or (sorted({max(1, dw // 2), dw, min(16, 2 * dw)}) if gpu else [dw])

        combos = [(rb, wp) for rb in rbs for wp in warps_for(rb)] if chosen is None else [chosen]
        for rb, wp in combos:
            if tried and time.perf_counter() - t_start > a.budget_s:
                print(f"  fused rb={rb} warps={wp}: skipped (time budget)")
                continue
            try:
                _, wall, done, first = time_path(runner(cfg, "fused", rb, wp), copy(st0), params, a.chunks)
            except Exception as e:  # noqa: BLE001 - a lowering/compile failure is a result too
                msg = " ".join(str(e).split())[:200]
                print(f"  fused rb={rb} warps={wp}: FAILED {type(e).__name__}: {msg}", flush=True)
                tried.append(dict(rb=rb, warps=wp, error=f"{type(e).__name__}: {msg}"))
                continue
            f = dict(rb=rb, warps=wp, trial_steps_per_s=R * steps / wall, slot_steps_per_s=R * steps * cfg.K / wall,
                     requests_per_s=done / wall, compile_and_first_chunk_s=first, wall_s=wall)
            f["speedup_vs_xla"] = f["trial_steps_per_s"] / x["trial_steps_per_s"]
            tried.append(f)
            print(f"  fused rb={rb:3d} warps={wp}: {f['trial_steps_per_s']:,.0f} trial-steps/s "
                  f"({f['speedup_vs_xla']:.2f}× xla), {f['requests_per_s']:,.0f} requests/s", flush=True)
        ok = [t for t in tried if "error" not in t]
        best = max(ok, key=lambda t: t["trial_steps_per_s"]) if ok else None
        if best and chosen is None:
            chosen = (best["rb"], best["warps"])
        row = dict(trials=R, K=cfg.K, compact_every=cfg.compact_every, policy=a.policy, ops_per_trial_step=ops, ceiling_trial_steps_per_s=ceiling,
                   identical_trial_fraction=frac, differing_leaves=bad, completions_xla=ca, completions_fused=cb,
                   fused_violations=viol, xla=x, fused_tried=tried, fused_best=best,
                   fused_mode="triton" if gpu else "interpret (not a performance path)")
        if best:
            print(f"  best fused: rb={best['rb']} warps={best['warps']}: {best['speedup_vs_xla']:.2f}× xla"
                  + (f"; ceiling {ceiling:,.0f} trial-steps/s ({ops} element ops per trial-step), "
                     f"fused at {best['trial_steps_per_s'] / ceiling:.1%} of it" if ceiling else ""))
        rows.append(row)
        out = save(a, m, ceil_ops, ceil_how, rows)
    print("saved", out)


if __name__ == "__main__":
    main()

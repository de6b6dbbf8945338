"""Engine vs. the plain-Python reference (tests/reference_sim.py), same workload, same run, same machine.

Prints and saves trial-steps/s and simulated completed requests per wall second for both, on pd-1:1 at
M = 131,000 (ŝ = 512, b̄ = 0.0372 s) in saturation (λ = 1.5 μ), policy fcfs, invariant checks on.

    PYTHONPATH=. python bench/bench_engine.py                      # CPU: trials 64, 256, 1024
    PYTHONPATH=. python bench/bench_engine.py --trials 8192 16384 32768   # GPU
    PYTHONPATH=. python bench/bench_engine.py --base /tmp/lqs-base --trials 256 --repeats 5
        # this tree vs another checkout (e.g. `git worktree add /tmp/lqs-base <commit>`): each repeat times both
        # trees one after the other, in fresh subprocesses, alternating which goes first; medians and the
        # per-repeat ratios are reported (on a shared machine only ratios from the same run mean anything)
Results go to bench/results/engine-<backend>-<host>.json (engine-ab-<backend>-<host>.json with --base).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def machine() -> dict:
    import jax

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(host=platform.node(), cpu=cpu, cores=os.cpu_count(), python=platform.python_version(),
                jax=jax.__version__, backend=jax.default_backend(), devices=[str(d) for d in jax.devices()])


def bench_reference(steps: int, warm: int, seed: int = 0) -> dict:
    """Plain-Python reference, saturated: time the steps after `warm` (per-step wall clock via batch_time)."""
    from reference_sim import reference_run

    rnd = random.Random(seed)
    lens: dict[int, tuple[int, int]] = {}

    def lengths(i):
        if i not in lens:
            lens[i] = (rnd.randint(10, 1600), rnd.randint(10, 1600))
        return lens[i]

    mu = 3.2632
    lam = 1.5 * mu

    def arrivals(n, b):  # Poisson(λ b) by multiplication of uniforms
        L, k, p = math.exp(-lam * b), 0, 1.0
        while True:
            p *= rnd.random()
            if p < L:
                return k
            k += 1

    stamps = []

    def batch_time(n, *a):
        stamps.append(time.perf_counter())
        return 0.0372

    out = reference_run(M=131000, chunk=512, policy="swap", steps=steps, arrivals=arrivals, lengths=lengths,
                        batch_time=batch_time)
    wall = stamps[-1] - stamps[warm]
    n_steps = steps - 1 - warm
    done = sum(out["completions"][warm:steps - 1])
    return dict(steps_timed=n_steps, wall_s=wall, trial_steps_per_s=n_steps / wall, requests_per_s=done / wall,
                completions=done, mean_scheduled=sum(out["n_scheduled"][warm:]) / (steps - warm))


def bench_engine(trials: int, chunks: int, seed: int = 0) -> dict:
    import jax
    import numpy as np

    import lqs
    from lqs.engine import paths as P
    from lqs.engine import prepare

    w = lqs.preset("pd-1:1")
    srv = lqs.Server(M=131000, prefill_chunk=512, b=0.0372)
    cap = lqs.capacity(w, srv)
    mc = lqs.MonteCarlo(trials=trials, warmup=4096, max_points=10**6, path="xla")
    cfg, sizing, grid, params = prepare(w, srv, [1.5 * cap.mu_rps], mc, 4096 * (chunks + 2))
    keys = jax.random.split(jax.random.key(seed), trials)
    t0 = time.perf_counter()
    st = P.init_jit(keys, params, cfg)
    st, rec = P.run_call_jit(st, params, cfg)  # compile + first call (warm-up)
    st, rec = P.run_call_jit(st, params, cfg)
    jax.block_until_ready(st)
    t_compile_warm = time.perf_counter() - t0
    c0 = int(np.asarray(st.counters.completions).sum())
    t1 = time.perf_counter()
    for _ in range(chunks):
        st, rec = P.run_call_jit(st, params, cfg)
    jax.block_until_ready(st)
    wall = time.perf_counter() - t1
    c1 = int(np.asarray(st.counters.completions).sum())
    steps = chunks * cfg.steps_per_call
    nbytes = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(st))
    return dict(trials=trials, K=cfg.K, a_max=cfg.a_max, check_work=cfg.check_work, steps_timed=steps,
                wall_s=wall, trial_steps_per_s=trials * steps / wall, slot_steps_per_s=trials * steps * cfg.K / wall,
                requests_per_s=(c1 - c0) / wall, compile_and_warm_s=t_compile_warm,
                violations=int(np.asarray(st.limits.violations).sum()), starved=int(np.asarray(st.limits.starved).sum()),
                state_bytes_per_trial=nbytes / trials,
                state_gib_for_32768=nbytes / trials * 32768 / 2**30)


def _one_engine_run(tree: str, trials: int, chunks: int) -> dict:
    """bench_engine in a fresh subprocess with ``tree`` first on the import path (lqs and kernels from there)."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    code = (f"import sys, json; sys.path.insert(0, {os.path.abspath(tree)!r}); sys.path.insert(1, {HERE!r}); "
            f"import bench_engine as b, lqs; r = b.bench_engine({trials}, {chunks}); r['lqs_file'] = lqs.__file__; "
            "print('@@' + json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.abspath(tree))
    line = [x for x in out.stdout.splitlines() if x.startswith("@@")][-1]
    return json.loads(line[2:])


def compare_trees(base: str, trials: list[int], chunks: int, repeats: int) -> dict:
    import statistics

    here = os.path.dirname(HERE)
    rows = []
    for R in trials:
        runs = {"base": [], "this": []}
        for rep in range(repeats):
            order = ("base", "this") if rep % 2 == 0 else ("this", "base")
            for which in order:
                r = _one_engine_run(base if which == "base" else here, R, chunks)
                runs[which].append(r)
                print(f"  R={R} repeat {rep} {which:4s}: {r['trial_steps_per_s']:,.0f} trial-steps/s "
                      f"(completions {r['requests_per_s'] * r['wall_s']:.0f}, violations {r['violations']})",
                      flush=True)
        ratios = [t["trial_steps_per_s"] / b["trial_steps_per_s"] for t, b in zip(runs["this"], runs["base"])]
        med = {k: statistics.median(x["trial_steps_per_s"] for x in v) for k, v in runs.items()}
        row = dict(trials=R, K=runs["this"][0]["K"], median_base=med["base"], median_this=med["this"],
                   ratio_of_medians=med["this"] / med["base"], ratios=ratios, median_ratio=statistics.median(ratios),
                   same_completions=all(abs(t["requests_per_s"] * t["wall_s"] - b["requests_per_s"] * b["wall_s"]) < 0.5
                                        for t, b in zip(runs["this"], runs["base"])),
                   runs=runs)
        print(f"R={R}: base {med['base']:,.0f}, this {med['this']:,.0f} trial-steps/s; median ratio "
              f"{row['median_ratio']:.2f}× (per repeat {', '.join(f'{x:.2f}' for x in ratios)}); "
              f"same completions: {row['same_completions']}")
        rows.append(row)
    return dict(rows=rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--chunks", type=int, default=2, help="timed chunks of 4096 steps per size")
    ap.add_argument("--ref-steps", type=int, default=8000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--base", default=None, help="another checkout to time against, alternating, in subprocesses")
    ap.add_argument("--repeats", type=int, default=5, help="with --base: repeats (each times both trees)")
    a = ap.parse_args()
    m = machine()
    print("machine:", json.dumps(m))
    if a.base:
        import subprocess

        def rev(tree):
            try:
                return subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True, text=True,
                                      check=True).stdout.strip()
            except (OSError, subprocess.CalledProcessError):
                return None

        res = compare_trees(a.base, a.trials, a.chunks, a.repeats)
        res.update(machine=m, workload="pd-1:1", M=131000, chunk=512, b_s=0.0372, lam="1.5 mu", policy="swap",
                   base=os.path.abspath(a.base), base_commit=rev(a.base), this_commit=rev(os.path.dirname(HERE)),
                   command="PYTHONPATH=. python " + " ".join(sys.argv), when=time.strftime("%Y-%m-%d %H:%M:%S"))
        out = a.out or os.path.join(HERE, "results", f"engine-ab-{m['backend']}-{m['host']}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as fh:
            json.dump(res, fh, indent=2)
        print("saved", out)
        return
    ref = bench_reference(a.ref_steps, warm=a.ref_steps // 2)
    print(f"reference (plain Python): {ref['trial_steps_per_s']:,.0f} steps/s, {ref['requests_per_s']:,.0f} "
          f"completed requests/s (mean {ref['mean_scheduled']:.0f} scheduled per step)")
    rows = []
    for R in a.trials:
        e = bench_engine(R, a.chunks)
        e["speedup_requests"] = e["requests_per_s"] / ref["requests_per_s"]
        e["speedup_steps"] = e["trial_steps_per_s"] / ref["trial_steps_per_s"]
        rows.append(e)
        print(f"engine R={R:6d} K={e['K']}: {e['trial_steps_per_s']:,.0f} trial-steps/s, "
              f"{e['requests_per_s']:,.0f} requests/s = {e['speedup_requests']:.1f}× reference "
              f"(steps {e['speedup_steps']:.1f}×), compile+warm {e['compile_and_warm_s']:.1f} s, "
              f"state {e['state_bytes_per_trial'] / 1024:.1f} KiB/trial "
              f"({e['state_gib_for_32768']:.2f} GiB for 32768), violations {e['violations']}")
    res = dict(machine=m, workload="pd-1:1", M=131000, chunk=512, b_s=0.0372, lam="1.5 mu", policy="swap",
               command="PYTHONPATH=. python " + " ".join(sys.argv), reference=ref, engine=rows,
               when=time.strftime("%Y-%m-%d %H:%M:%S"))
    out = a.out or os.path.join(HERE, "results", f"engine-{m['backend']}-{m['host']}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(res, fh, indent=2)
    print("saved", out)


if __name__ == "__main__":
    main()

"""Replay speed: 1,000 requests × 64 trials of an open-loop Poisson run (the bundled azure-conv lengths, constant
b̄, a vLLM-like server), against an open-loop lqs.simulate of the same trials and the same number of steps, timed
in the same process. Prints the numbers and saves them (bench/results/replay-<label>.json).

    PYTHONPATH=. python bench/bench_replay.py [--label cpu-vm] [--requests 1000] [--trials 64]
    PYTHONPATH=. python bench/bench_replay.py --chunk 2048 --budget 2048 --tag=-saturated
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

import lqs
from lqs._batch import ConstantBatch
from lqs.replay import Arrivals, _core


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="cpu-vm")
    ap.add_argument("--tag", default="", help="suffix of the results file name (e.g. -saturated)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--load", type=float, default=0.7, help="offered load as a fraction of μ_exact")
    ap.add_argument("--chunk", type=int, default=512, help="prefill chunk ŝ (tokens)")
    ap.add_argument("--budget", type=int, default=8192,
                    help="token budget per step; --chunk 2048 --budget 2048 is a server that runs a prompt's chunk "
                         "only alone (whole chunks that fit: docs/model.md), saturated at this load")
    a = ap.parse_args()

    tr = lqs.load_trace("azure-conv")
    n = a.requests
    s = np.minimum(tr.s[:n], 4096).astype(np.int32)
    o = np.minimum(tr.o[:n], 1024).astype(np.int32)
    b, M, chunk, budget = 0.03, 262_144, a.chunk, a.budget
    srv = lqs.Server(M=M, prefill_chunk=chunk, b=b, policy="recompute", token_budget=budget)
    wl = lqs.Pairs(s, o)
    lam = a.load * lqs.capacity(wl, srv).mu_exact_rps
    key = jax.random.key(0)
    t_arr = Arrivals("poisson", rate_rps=lam).instants(n, a.trials, key)
    kw = dict(M=M, chunk=chunk, budget=budget, batch=ConstantBatch(b), policy="recompute", key=key)

    t0 = time.perf_counter()
    _core.run(s[:64], o[:64], t_arr[:2, :64], **kw)  # a small shape first (not timed)
    t_compile_small = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = _core.run(s, o, t_arr, **kw)
    t_first = time.perf_counter() - t0  # includes this shape's compilation
    t0 = time.perf_counter()
    raw = _core.run(s, o, t_arr, **kw)
    t_replay = time.perf_counter() - t0
    steps = int(raw.steps.max())
    calls = -(-steps // 256) * 256

    mc = lqs.MonteCarlo(trials=a.trials, steps=calls, warmup=min(1000, calls // 4), seed=0)
    t0 = time.perf_counter()
    lqs.simulate(wl, srv, lam, mc, verdict=False)
    t_sim_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    sim = lqs.simulate(wl, srv, lam, mc, verdict=False)
    t_sim = time.perf_counter() - t0

    out = {"label": a.label, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "jax": jax.__version__, "backend": jax.default_backend(), "requests": n, "trials": a.trials,
           "lam_rps": lam, "chunk_tokens": chunk, "budget_tokens": budget,
           "replay_throughput_rps": float(np.mean([r["throughput_rps"] for r in _core.metrics(raw, o)])),
           "replay_peak_in_server": int(raw.peak.max()), "replay_steps_max": steps, "replay_steps_run": calls, "all_finished": bool(raw.finished.all()),
           "replay_wall_s": t_replay, "replay_first_call_wall_s": t_first, "simulate_steps": int(sim.summary.iloc[0]["steps"]),
           "simulate_wall_s": t_sim, "simulate_first_call_wall_s": t_sim_first,
           "replay_over_simulate": t_replay / t_sim,
           "replay_trial_steps_per_s": a.trials * calls / t_replay, "simulate_trial_steps_per_s": a.trials * calls / t_sim,
           "compile_small_s": t_compile_small}
    print(json.dumps(out, indent=1))
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", f"replay-{a.label}{a.tag}.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()

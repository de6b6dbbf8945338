"""Replay speed of this tree against another checkout of lqs (e.g. the commit before a change), in one run:
each round times lqs.replay._core.run (1,000 requests × 64 trials, the same server as bench_replay.py) in a fresh
process per tree, alternating the trees, so both see the same machine state. Prints the per-round times and the
ratio of medians, and saves them (bench/results/replay-ab-<label><tag>.json).

    git worktree add /tmp/lqs-prev <commit>
    python bench/bench_replay_ab.py --other /tmp/lqs-prev [--rounds 3] [--chunk 2048 --budget 2048 --tag=-saturated]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import json, sys, time
import jax, numpy as np
import lqs
from lqs._batch import ConstantBatch
from lqs.replay import Arrivals, _core
n, trials, chunk, budget = (int(x) for x in sys.argv[1:5])
frontend = tuple(float(x) for x in sys.argv[5].split(","))
tr = lqs.load_trace("azure-conv")
s = np.minimum(tr.s[:n], 4096).astype(np.int32)
o = np.minimum(tr.o[:n], 1024).astype(np.int32)
b, M = 0.03, 262_144
srv = lqs.Server(M=M, prefill_chunk=chunk, b=b, policy="recompute", token_budget=budget)
lam = 0.7 * lqs.capacity(lqs.Pairs(s, o), srv).mu_exact_rps
key = jax.random.key(0)
t_arr = Arrivals("poisson", rate_rps=lam).instants(n, trials, key)
kw = dict(M=M, chunk=chunk, budget=budget, batch=ConstantBatch(b), policy="recompute", key=key, frontend=frontend)
t0 = time.perf_counter(); raw = _core.run(s, o, t_arr, **kw); first = time.perf_counter() - t0
t0 = time.perf_counter(); raw = _core.run(s, o, t_arr, **kw); wall = time.perf_counter() - t0
print(json.dumps({"first_s": first, "wall_s": wall, "steps": int(np.asarray(raw.steps).max()),
                  "finished": bool(np.asarray(raw.finished).all())}))
"""


def once(tree, a):
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", CHILD, str(a.requests), str(a.trials), str(a.chunk), str(a.budget),
                          a.frontend],
                         env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", required=True, help="the other checkout (a git worktree)")
    ap.add_argument("--label", default="cpu-vm")
    ap.add_argument("--tag", default="")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--budget", type=int, default=8192)
    ap.add_argument("--frontend", default="0,0", help="the replay's front end F0,F1[,F2[,F3]] (default none)")
    a = ap.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    other = os.path.abspath(a.other)
    rev = lambda t: subprocess.run(["git", "-C", t, "rev-parse", "--short", "HEAD"], capture_output=True,
                                   text=True).stdout.strip()
    rows = []
    for r in range(a.rounds):
        for name, tree in (("this", here), ("other", other)):
            res = once(tree, a)
            res.update(round=r, tree=name)
            rows.append(res)
            print(json.dumps(res), flush=True)
    med = lambda name: sorted(x["wall_s"] for x in rows if x["tree"] == name)[a.rounds // 2]
    out = {"label": a.label, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "requests": a.requests, "trials": a.trials, "chunk_tokens": a.chunk, "budget_tokens": a.budget,
           "frontend": a.frontend,
           "this_commit": rev(here), "other_commit": rev(other), "rounds": rows,
           "this_median_wall_s": med("this"), "other_median_wall_s": med("other"),
           "other_over_this": med("other") / med("this")}
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}, indent=1))
    os.makedirs(os.path.join(here, "bench", "results"), exist_ok=True)
    with open(os.path.join(here, "bench", "results", f"replay-ab-{a.label}{a.tag}.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()

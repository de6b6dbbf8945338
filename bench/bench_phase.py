"""Phase diagram speed: `lqs study phase --quick --axis ratio` of this tree against another checkout, in one run.

The other checkout (``--base DIR``, e.g. ``git worktree add /tmp/lqs-base <commit>``) runs its own quick diagram
(before lqs 0.2: 3 rows × 8 rates, one simulate call per row); this tree runs the boundary-curve diagram
(32 rows, every row's saturation run in one program). Each is a fresh process (compile included), run
alternately ``--repeats`` times; the figure of merit is rows per wall second, and the ratio of the medians.

    git worktree add /tmp/lqs-base <commit> && PYTHONPATH=. python bench/bench_phase.py --base /tmp/lqs-base
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CODE = r"""
import json, sys, time
t0 = time.perf_counter()
from lqs.cli import main
from click.testing import CliRunner
r = CliRunner().invoke(main, ["study", "phase", "--quick", "--axis", "ratio", "--out", sys.argv[1]],
                       catch_exceptions=False)
assert r.exit_code == 0, r.output
wall = time.perf_counter() - t0
import pandas as pd
df = pd.read_csv(sys.argv[1] + "/phase_ratio.csv")
rows = df["value"].nunique()
print(json.dumps(dict(wall_s=wall, rows=int(rows), cells=len(df))))
"""


def run(tree: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    with tempfile.TemporaryDirectory() as out:
        p = subprocess.run([sys.executable, "-c", CODE, out], env=env, cwd=tree, capture_output=True, text=True,
                           timeout=1800)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="checkout of the code to compare against")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--save", default=os.path.join(HERE, "bench", "results", "phase-cpu-vm.json"))
    a = ap.parse_args()
    base, new = [], []
    for i in range(a.repeats):
        base.append(run(a.base))
        new.append(run(HERE))
        print(f"repeat {i + 1}: base {base[-1]['rows']} rows in {base[-1]['wall_s']:.1f} s; "
              f"this tree {new[-1]['rows']} rows in {new[-1]['wall_s']:.1f} s", flush=True)
    mb = statistics.median(x["wall_s"] for x in base)
    mn = statistics.median(x["wall_s"] for x in new)
    rps_b, rps_n = base[0]["rows"] / mb, new[0]["rows"] / mn
    res = dict(machine=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                            python=platform.python_version()),
               command="lqs study phase --quick --axis ratio (fresh process, compile included)",
               base=dict(tree=a.base, runs=base, median_wall_s=mb, rows=base[0]["rows"], rows_per_s=rps_b),
               new=dict(tree=HERE, runs=new, median_wall_s=mn, rows=new[0]["rows"], rows_per_s=rps_n),
               rows_per_s_ratio=rps_n / rps_b, wall_ratio=mn / mb, date=time.strftime("%Y-%m-%d"))
    print(f"base: {base[0]['rows']} rows, median {mb:.1f} s ({rps_b:.3f} rows/s); this tree: {new[0]['rows']} rows, "
          f"median {mn:.1f} s ({rps_n:.3f} rows/s); rows/s ratio {rps_n / rps_b:.1f}×, wall ratio {mn / mb:.2f}")
    os.makedirs(os.path.dirname(a.save), exist_ok=True)
    with open(a.save, "w") as fh:
        json.dump(res, fh, indent=2)
    print(f"saved {a.save}")


if __name__ == "__main__":
    main()

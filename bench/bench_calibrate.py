"""Calibration on a ladder of measured runs, over several seeds: the time it takes and every run's error
(measured / predicted), fitted or predicted, for the likelihood-weighted ensemble prediction, the best fit alone and
the ensemble's range. Prints the numbers and saves them (bench/results/calibrate-<label>.json).

    PYTHONPATH=. python bench/bench_calibrate.py RESULT... --M 3944182 [--seeds 0,1,2] [--label vllm-ladder-cpu-vm]
    PYTHONPATH=. python bench/bench_calibrate.py --from runs/cal-s0/calibration.json runs/cal-s1/calibration.json ...

The second form summarises calibration.json files written by `lqs calibrate --seed S --out DIR` (same numbers,
no recomputation). The result files are not part of the repository (shared/real-results holds the ones README
quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

METRICS = ("throughput_rps", "ttft_p50_s", "e2e_p50_s")


def summarise(report: dict, seed, wall_s=None) -> dict:
    runs = []
    for r in report["runs"]:
        row = {"run": os.path.basename(r["source"]), "role": r["role"]}
        for m in METRICS:
            meas = r["measured_" + m]
            row[m] = {"measured": meas, "error": r["error_" + m], "best_error": r["best_error_" + m],
                      "range_error": [r[f"replay_{m}_lo"] / meas - 1, r[f"replay_{m}_hi"] / meas - 1]}
        row["ttft_determined"] = r.get("ttft_determined")
        row["beyond_fitted_batch"] = r.get("beyond_fitted_batch")
        runs.append(row)
    pred = [r for r in runs if r["role"] == "predicted"]
    worst = {m: max(abs(r[m]["error"]) for r in pred) for m in METRICS} if pred else {}
    worst_best = {m: max(abs(r[m]["best_error"]) for r in pred) for m in METRICS} if pred else {}
    return {"seed": seed, "wall_s": wall_s, "b_model": report["b_model"], "frontend": report["frontend"],
            "loss": report["loss"], "ensemble_size": report["ensemble"]["size"],
            "decode_steps": report.get("decode_steps"),
            "worst_predicted_error": worst, "worst_predicted_best_error": worst_best, "runs": runs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="*")
    ap.add_argument("--M", type=int, default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--from", dest="reports", nargs="*", default=None, help="calibration.json files to summarise")
    ap.add_argument("--label", default="vllm-ladder-cpu-vm")
    args = ap.parse_args()
    out = {"label": args.label, "machine": platform.machine(), "cpus": os.cpu_count(), "seeds": []}
    if args.reports:
        for p in args.reports:
            with open(p, encoding="utf-8") as fh:
                rep = json.load(fh)
            out["seeds"].append(summarise(rep, seed=p))
    else:
        import jax

        from lqs.replay import calibrate

        out["jax"], out["backend"] = jax.__version__, jax.default_backend()
        for sd in (int(x) for x in args.seeds.split(",")):
            t0 = time.perf_counter()
            res = calibrate(args.results, M=args.M, seed=sd)
            out["seeds"].append(summarise(res.report, seed=sd, wall_s=time.perf_counter() - t0))
    for s in out["seeds"]:
        print(f"seed {s['seed']}: loss {s['loss']:.4g}, {s['ensemble_size']} members"
              + (f", {s['wall_s']:.0f} s" if s["wall_s"] else ""))
        for r in s["runs"]:
            print(f"  {r['run'][:60]:60s} {r['role']:9s} " + "  ".join(
                f"{m.split('_')[0]} {100 * r[m]['error']:+.1f}% (best {100 * r[m]['best_error']:+.1f}%, "
                f"[{100 * r[m]['range_error'][0]:+.0f}, {100 * r[m]['range_error'][1]:+.0f}])" for m in METRICS))
    path = os.path.join(os.path.dirname(__file__), "results", f"calibrate-{args.label}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()

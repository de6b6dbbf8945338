"""The P:D split table of G = 8 GPUs at M = 131,000 (ŝ = 512, b̄ = 0.0372 s on both pools, swap), closed form,
per-station saturation runs and the coupled network's latency at one λ for every split (beside G colocated
servers'), cold in this process (compilation included). Prints the numbers and saves them
(bench/results/disagg-<label>.json).

    PYTHONPATH=. python bench/bench_disagg.py [--label cpu-vm] [--workload pd-1:1|azure-conv] [--decode-b 0.0372]

Target (issue): the split table in under 2 minutes on the 2-core CPU. The per-station runs are one engine call for
a prefill server, a decode server and a colocated server, whatever the number of splits; each pool's λ* is N
times its server's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import pandas as pd

import lqs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="cpu-vm")
    ap.add_argument("--workload", default="pd-1:1")
    ap.add_argument("--decode-b", type=float, default=0.0372)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--lam", type=float, default=None,
                    help="λ of the coupled latency (default 0.6 × the colocated μ_exact of the G GPUs)")
    a = ap.parse_args()
    if a.workload in lqs.PRESETS:
        wl = lqs.preset(a.workload)
    else:
        tr = lqs.load_trace(a.workload)
        wl = lqs.Pairs(tr.s, tr.o)
    srv = lqs.Server(M=131_000, prefill_chunk=512, b=0.0372)
    dep = lqs.Disaggregated(srv, srv.replace(b=a.decode_b))
    lam = a.lam if a.lam is not None else 0.6 * lqs.capacity(wl, srv.replace(servers=a.gpus)).mu_exact_rps
    t0 = time.perf_counter()
    df = lqs.split_table(wl, dep, a.gpus, simulate=True, lam=lam)
    wall = time.perf_counter() - t0
    c1 = lqs.capacity(wl, dep)
    inside = []
    for _, r in df[df.binding != "colocated"].iterrows():
        c = lqs.capacity(wl, dep.split(int(r.n_prefill), int(r.n_decode)))
        lo = min(c.mu_prefill_rps * (1 - c.delta_prefill), c.mu_decode_rps * (1 - c.delta_decode))
        inside.append(bool(r.lam_star_hi_rps >= lo and r.lam_star_lo_rps <= c.mu_pd_rps))
    pd.set_option("display.width", 200)
    cols = ["layout", "mu_prefill_rps", "mu_decode_rps", "mu_pd_rps", "mu_pd_stable_rps", "lam_star_prefill_rps",
            "lam_star_decode_rps", "lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps", "binding", "binding_sim",
            "best_split", "verdict", "net_throughput_rps", "net_observed_drift_rps", "net_ttft_p50_s",
            "net_ttft_p99_s", "net_tpot_p50_s", "net_e2e_p50_s", "net_e2e_p99_s", "net_transfer_p50_s", "net_reliable"]
    # above λ*_PD the coupled network runs saturated: its throughput is its own saturation throughput, to compare
    # with the per-station rule min(λ*_P, λ*_D)
    over = df[(df.binding != "colocated") & (df.verdict == "unstable")]
    sat_agree = [dict(layout=r.layout, net_throughput_rps=float(r.net_throughput_rps),
                      lam_star_pd_rps=float(r.lam_star_rps),
                      rel_diff=float(r.net_throughput_rps / r.lam_star_rps - 1)) for _, r in over.iterrows()]
    print(df[cols].to_string(index=False))
    best = df[df.best_split].iloc[0]
    colo = df[df.binding == "colocated"].iloc[0]
    rec = dict(label=a.label, workload=a.workload, gpus=a.gpus, decode_b_s=a.decode_b, lam_rps=lam, wall_s=wall,
               stages_s=df.attrs.get("timing"), coupled_saturation_vs_station_rule=sat_agree,
               network=dict((k, v) for k, v in df.attrs.get("network_config", {}).items() if k in
                            ("horizon_s", "warmup_s", "latency_window_end_s", "sizing", "monte_carlo")),
               target_s=120.0,
               met=wall < 120.0, lam_star_inside_band_all_splits=all(inside), best_split=best.layout,
               best_lam_star_rps=float(best.lam_star_rps), best_mu_pd_rps=float(best.mu_pd_rps),
               colocated_lam_star_rps=float(colo.lam_star_rps), colocated_mu_exact_rps=float(colo.mu_pd_rps),
               delta_prefill=c1.delta_prefill, delta_decode=c1.delta_decode,
               rows=json.loads(df[cols].to_json(orient="records")),
               machine=dict(platform=platform.platform(), python=platform.python_version(), jax=jax.__version__,
                            backend=jax.default_backend(), cpus=os.cpu_count()))
    print(json.dumps({k: v for k, v in rec.items() if k != "rows"}, indent=2))
    tag = a.workload.replace(":", "") + ("" if a.decode_b == 0.0372 else f"-decode-b{a.decode_b:g}")
    path = os.path.join(os.path.dirname(__file__), "results", f"disagg-{tag}-{a.label}.json")
    with open(path, "w") as fh:
        json.dump(rec, fh, indent=2)
    print("saved", path)


if __name__ == "__main__":
    main()

"""The cluster study: G servers in lock-step behind a router; how the routing rule changes λ* and the
waiting-time percentiles (docs/model.md, "Clusters")."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import check_float, check_int
from .._server import ROUTINGS
from .common import PAPER_CLUSTER, StudyResult, key, label, settings, setup, write


def cluster_study(workload=None, server=None, mc=None, *, quick: bool = False, seed: int = 0, out=None,
                  progress: bool = False, servers: int | None = None, routings=ROUTINGS, rhos=None,
                  saturation: bool = True, total_hi=None) -> StudyResult:
    """G servers in lock-step behind a router: how the routing rule changes λ* and the waiting-time percentiles.

    G is ``servers``, else ``server.servers`` of a given server, else 8 (the paper's Table 3 case: P/D 1:1, round
    robin, μ_theory 25.808, measured 26.710 requests/s); ``server.routing`` is replaced by each of ``routings``.
    For each routing: one simulate call over λ = ρ·μ (``rhos``; μ = G·M/(b̄·E[g]) is the whole cluster's rate,
    docs/model.md) for the latency percentiles and, with ``saturation``, the long-run verdict of each ρ from the
    cluster's saturation throughput λ* under that routing.
    """
    from .._theory import capacity
    from ..engine import Verdict, simulate

    given = server is not None
    workload, server, mc, _ = setup(workload, server, mc, quick, total_hi)
    G = check_int("servers", servers, 1, 4096) if servers is not None else (server.servers if given else 8)
    server = server.replace(servers=G).require_scalar("cluster_study")
    routings = [server.replace(routing=rt).routing for rt in routings]
    rhos = rhos if rhos is not None else ((0.5, 0.8, 0.9, 0.95) if quick else (0.5, 0.7, 0.8, 0.85, 0.9, 0.95))
    rhos = np.asarray([check_float("rho", x, 0.0, lo_open=True) for x in np.atleast_1d(rhos)])
    cap = capacity(workload, server)  # the whole cluster: G·μ
    rows, sat = [], {}
    for i, rt in enumerate(routings):
        srv = server.replace(routing=rt)
        res = simulate(workload, srv, rhos * cap.mu_rps, mc, key=key(seed, i), progress=progress,
                       verdict=Verdict(key=key(seed, 100 + i)) if saturation else False)
        if saturation:
            r0 = res.summary.iloc[0]
            sat[rt] = (float(r0.lam_star_rps), float(r0.lam_star_hi_rps - r0.lam_star_rps) / 1.96)
        ls, se = sat.get(rt, (np.nan, np.nan))
        for rho, (_, r) in zip(rhos, res.summary.iterrows()):
            rows.append(dict(routing=rt, servers=G, rho=float(rho), lam_rps=float(r.lam_rps),
                             mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps,
                             verdict=r.verdict if saturation else "n/a",
                             p_backlog_grows=float(r.p_backlog_grows), throughput_rps=float(r.throughput_rps),
                             wait_mean_s=float(r.wait_mean_s), wait_p50_s=float(r.wait_p50_s),
                             wait_p90_s=float(r.wait_p90_s), wait_p99_s=float(r.wait_p99_s),
                             ttft_p99_s=float(r.ttft_p99_s), e2e_p99_s=float(r.e2e_p99_s), lam_star_rps=ls,
                             lam_star_se_rps=se, lam_star_over_mu_exact=ls / cap.mu_exact_rps,
                             trials=int(r.trials), steps=int(r.steps), reliable=bool(r.reliable),
                             latency_reliable=bool(r.latency_reliable)))
    df = pd.DataFrame(rows)
    meta = dict(study="cluster", workload=label(workload), servers=G, routings=routings, rhos=rhos.tolist(),
                mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps, mu_stable_rps=cap.mu_stable_rps,
                lam_star_rps={k: v[0] for k, v in sat.items()}, lam_star_se_rps={k: v[1] for k, v in sat.items()},
                paper_table3=PAPER_CLUSTER, reliable=bool(df.reliable.all()), **settings(server, mc, quick))
    from .plots import plot_cluster

    return write("cluster", df, meta, plot_cluster, out)

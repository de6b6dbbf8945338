"""The latency study: waiting-time and TTFT percentiles against utilisation ρ = λ/μ (docs/model.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import check_float
from .common import StudyResult, key, label, settings, setup, write

LATENCY_COLUMNS = tuple(f"{m}_{q}_s" for m in ("wait", "ttft", "e2e") for q in ("mean", "p50", "p90", "p99"))


def latency_study(workload=None, server=None, mc=None, *, quick: bool = False, seed: int = 0, out=None,
                  progress: bool = False, rhos=None, total_hi=None) -> StudyResult:
    """Waiting time and TTFT percentiles (p50, p90, p99) against utilisation ρ = λ/μ, μ the closed-form rate of
    the whole deployment (one simulate call over λ = ρ·μ)."""
    from .._theory import capacity
    from ..engine import simulate

    workload, server, mc, _ = setup(workload, server, mc, quick, total_hi)
    server.require_scalar("latency_study")
    rhos = np.linspace(0.3, 0.95, 8 if quick else 14) if rhos is None else rhos
    rhos = np.asarray([check_float("rho", x, 0.0, lo_open=True) for x in np.atleast_1d(rhos)])
    cap = capacity(workload, server)
    res = simulate(workload, server, rhos * cap.mu_rps, mc, key=key(seed), progress=progress)
    rows = []
    for rho, (_, r) in zip(rhos, res.summary.iterrows()):
        rows.append(dict(rho=float(rho), lam_rps=float(r.lam_rps),
                         lam_over_mu_exact=float(r.lam_rps) / cap.mu_exact_rps,
                         mu_rps=cap.mu_rps, mu_stable_rps=cap.mu_stable_rps, verdict=r.verdict,
                         lam_star_rps=float(r.lam_star_rps), p_backlog_grows=float(r.p_backlog_grows),
                         throughput_rps=float(r.throughput_rps), mem_util=float(r.mem_util),
                         **{c: float(r[c]) for c in LATENCY_COLUMNS}, policy=server.policy, trials=int(r.trials),
                         steps=int(r.steps), reliable=bool(r.reliable), latency_reliable=bool(r.latency_reliable)))
    df = pd.DataFrame(rows)
    meta = dict(study="latency", workload=label(workload), mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps,
                delta=cap.delta, **settings(server, mc, quick))
    from .plots import plot_latency

    return write("latency", df, meta, plot_latency, out)

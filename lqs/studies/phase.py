"""Phase diagrams: P(unstable) over λ and one design axis (P/D ratio, M or b̄), with μ and μ(1−δ) on top."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import LqsError, check_float, check_int
from .common import StudyResult, crossing, key, label, settings, setup, write

AXES = ("ratio", "M", "b")
_VALUES = {"ratio": ((0.25, 1.0, 4.0), (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)),
           "M": ((8192, 16_384, 32_768), (32_768, 65_536, 131_000, 262_144)),
           "b": ((0.02, 0.0372, 0.06), (0.02, 0.03, 0.0372, 0.05, 0.07))}


def _row(axis, v, workload, server, total_hi):
    """(workload, server) of one row of the diagram."""
    from .._workload import pd_ratio

    if axis == "ratio":
        return pd_ratio(v, total_hi=total_hi), server
    if axis == "M":
        return workload, server.replace(M=check_int("M", v, 1))
    return workload, server.replace(b=check_float("b", v, 0.0, lo_open=True))


def phase_diagram(workload=None, server=None, mc=None, *, quick: bool = False, seed: int = 0, out=None,
                  progress: bool = False, axis: str = "ratio", values=None, total_hi=None, lam_range=(0.6, 1.3),
                  n_lam=None) -> StudyResult:
    """P(unstable) over λ and one design axis, with the theory curves λ = μ and λ = μ(1−δ) on top.

    ``axis``: ``"ratio"`` (rows are ``lqs.pd_ratio(r, total_hi)`` workloads, ``values`` = P/D ratios; ``workload``
    is not used), ``"M"`` (rows are KV capacities in tokens, replacing ``server.M``) or ``"b"`` (rows are batch
    times b̄ in seconds, replacing ``server.b``); the rest is ``workload`` (default P/D 1:1 with s + o ≤
    ``total_hi``) on ``server`` (default :func:`default_server`, its policy included) simulated with ``mc``
    (default :func:`default_mc`). Each row gets its own λ grid, ``n_lam`` points from ``lam_range[0]``·μ(1−δ) to
    ``lam_range[1]``·μ of that row, so every row resolves its boundary; one simulate call (one vmapped program over
    the λ grid) per row. The table has one row per (row value, λ) cell (``rho`` = λ/μ, docs/model.md);
    ``meta['rows']`` the simulated crossing P(unstable) = ½ per row.
    """
    from .._theory import capacity
    from ..engine import simulate

    if axis not in AXES:
        raise LqsError("axis", axis, "must be one of ratio, M, b")
    workload, server, mc, total_hi = setup(workload, server, mc, quick, total_hi, default_workload=axis != "ratio")
    server.require_scalar("phase_diagram")
    n_lam = check_int("n_lam", n_lam if n_lam is not None else (8 if quick else 15), 2, 1000)
    lo_f, hi_f = (check_float("lam_range", x, 0.0, lo_open=True) for x in lam_range)
    values = _VALUES[axis][0 if quick else 1] if values is None else values
    values = sorted(float(v) for v in np.atleast_1d(values))
    rows, crossings = [], []
    for i, v in enumerate(values):
        w, srv = _row(axis, v, workload, server, total_hi)
        cap = capacity(w, srv)
        lams = np.linspace(lo_f * cap.mu_stable_rps, hi_f * cap.mu_rps, n_lam)
        s = simulate(w, srv, lams, mc, key=key(seed, i), progress=progress).summary
        cross = crossing(s["lam_rps"], s["p_unstable"])
        crossings.append(dict(value=v, mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps,
                              mu_stable_rps=cap.mu_stable_rps, delta=cap.delta, lam_cross_rps=cross,
                              lam_cross_over_mu=cross / cap.mu_rps))
        for _, r in s.iterrows():
            rows.append(dict(axis=axis, value=v, workload=label(w), M_tokens=srv.M,
                             prefill_chunk_tokens=srv.prefill_chunk, b_s=cap.b_s, lam_rps=float(r.lam_rps),
                             rho=float(r.lam_rps) / cap.mu_rps, lam_over_mu_stable=float(r.lam_rps) / cap.mu_stable_rps,
                             p_unstable=float(r.p_unstable), p_unstable_lo=float(r.p_unstable_lo),
                             p_unstable_hi=float(r.p_unstable_hi), mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps,
                             mu_stable_rps=cap.mu_stable_rps, delta=cap.delta,
                             throughput_cv_rps=float(r.throughput_cv_rps), wait_p99_s=float(r.wait_p99_s),
                             policy=srv.policy, trials=int(r.trials), steps=int(r.steps), reliable=bool(r.reliable)))
    df = pd.DataFrame(rows)
    meta = dict(study="phase_diagram", axis=axis, values=values, lam_range=[lo_f, hi_f], n_lam=n_lam,
                workload=label(workload) if workload is not None else "P/D ratio rows", total_hi=total_hi,
                rows=crossings, reliable=bool(df.reliable.all()), **settings(server, mc, quick))
    from .plots import plot_phase

    return write(f"phase_{axis}", df, meta, plot_phase, out)

"""The δ study: where λ* falls in [μ_exact(1−δ), μ_exact] as the largest request grows against M, per policy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._errors import check_float
from .._server import POLICIES, normalise_policy
from .common import StudyResult, key, label, saturation, settings, setup, write


def delta_study(workload=None, server=None, mc=None, *, quick: bool = False, seed: int = 0, out=None,
                progress: bool = False, deltas=None, policies=POLICIES, overload: float = 1.3,
                total_hi=None) -> StudyResult:
    """λ* (saturation throughput) against [μ_exact(1−δ), μ_exact] as the largest request grows against M.

    The workload is fixed (default P/D 1:1 with s, o ~ U{10..200}, so max(s+o) = 400; ``total_hi`` resizes it)
    and M = ⌈max(s+o)/δ⌉ shrinks: ``server.M`` and ``server.policy`` are replaced by the study's M grid and each
    of ``policies`` (``fcfs`` is accepted for ``swap``). One simulate call per policy covers every M (M is
    vmapped) at λ = ``overload``·μ of the largest M, which saturates all of them.
    """
    from .._theory import capacity
    from ..engine import auto_steps, simulate

    workload, server, mc, _ = setup(workload, server, mc, quick, 400 if total_hi is None else total_hi)
    policies = [normalise_policy(p, "policies") for p in policies]
    if deltas is None:
        deltas = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5) if quick else (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    deltas = [check_float("delta", x, 0.0, 1.0, lo_open=True) for x in np.atleast_1d(deltas)]
    mt = int(workload.max_total)
    Ms = sorted({int(math.ceil(mt / x)) for x in deltas}, reverse=True)
    caps = {m: capacity(workload, server.replace(M=m)) for m in Ms}
    lam = check_float("overload", overload, 1.0, lo_open=True) * max(c.mu_rps for c in caps.values())
    grid = server.replace(M=Ms)
    if mc.steps is None:
        mc = mc.replace(steps=auto_steps(workload, grid, mc.warmup))
    rows = []
    for pi, pol in enumerate(policies):
        res = simulate(workload, grid.replace(policy=pol), lam, mc, key=key(seed, pi), progress=progress,
                       verdict=False)  # these runs are the saturation runs
        for _, r in res.summary.iterrows():
            c = caps[int(r.M_tokens)]
            ls, se = saturation(r)
            rows.append(dict(policy=pol, M_tokens=int(r.M_tokens), delta=c.delta, max_total_tokens=mt,
                             mu_rps=c.mu_rps, mu_exact_rps=c.mu_exact_rps, mu_exact_stable_rps=c.mu_exact_stable_rps,
                             lam_star_rps=ls, lam_star_se_rps=se, lam_star_over_mu_exact=ls / c.mu_exact_rps,
                             band_lo_over_mu_exact=1 - c.delta,
                             in_band=bool(c.mu_exact_stable_rps - 4 * se <= ls <= c.mu_exact_rps + 4 * se),
                             mem_util=float(r.mem_util), swaps_per_s=float(r.swaps_per_s),
                             saturated=float(r.waiting_final_mean) > 0, trials=int(r.trials), steps=int(r.steps),
                             reliable=bool(r.reliable)))
    df = pd.DataFrame(rows).sort_values(["policy", "delta"]).reset_index(drop=True)
    if "swap" in policies:
        f = df[df.policy == "swap"].set_index("M_tokens")
        df["lam_star_over_swap"] = [r.lam_star_rps / f.loc[r.M_tokens, "lam_star_rps"] for r in df.itertuples()]
    meta = dict(study="delta", workload=label(workload), max_total_tokens=mt, deltas=deltas, M_tokens=Ms,
                lam_saturation_rps=lam, policies=policies,
                swap_all_in_band=bool(df[df.policy == "swap"].in_band.all()) if "swap" in policies else None,
                reliable=bool(df.reliable.all()), **settings(server, mc, quick))
    from .plots import plot_delta

    return write("delta", df, meta, plot_delta, out)

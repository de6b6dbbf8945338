"""The critical rate λ*: the saturation throughput of a Server, next to the closed-form bounds, and the
finite-horizon backlog test over a grid of λ around it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np

from .._errors import check_int
from .._server import as_server, resolve_mc
from .._theory import capacity
from .results import SimResult
from .run import simulate
from .sizing import auto_steps, check_workload


@dataclass
class CriticalResult:
    """λ* with its confidence interval, the saturation throughput μ_sim and the theory bounds."""

    summary: dict
    saturation: SimResult
    grid: SimResult | None

    def to_dict(self) -> dict:
        return dict(self.summary)


def critical(workload, server, mc=None, *, key=None, grid_points: int = 9, grid_trials: int | None = None,
             overload: float = 1.3, progress: bool = False, **mc_fields) -> CriticalResult:
    """Estimate the critical arrival rate λ* of ``server`` (one configuration; a cluster counts as one).

    λ* is the saturation throughput: the rate at which the server completes requests with an unbounded backlog
    (λ = ``overload``·μ, the paper's way of measuring μ_gpu), estimated over ``mc.trials`` independent trials after
    the warm-up, with the control variate (memory-work completed per second / E[g_exact]); its confidence interval
    is ±1.96 standard errors across trials (docs/model.md, "What is measured"). A grid of ``grid_points`` arrival
    rates around it (0.8·μ_exact(1−δ) to 1.2·μ_exact, widened to include λ*), ``grid_trials`` trials each, gives
    the finite-horizon backlog test at each λ. ``mc``/``**mc_fields`` as in :func:`lqs.simulate`.
    """
    server = as_server(server).require_scalar("critical")
    mc = resolve_mc(mc, mc_fields)
    grid_points = check_int("grid_points", grid_points, 0, 1000)
    grid_trials = mc.trials if grid_trials is None else check_int("grid_trials", grid_trials, 1, 2**24)
    check_workload(workload, server)
    cap = capacity(workload, server)
    if mc.steps is None:
        mc = mc.replace(steps=auto_steps(workload, server, mc.warmup))
    if key is None:
        key = jax.random.key(mc.seed)
    key_sat, key_grid = jax.random.split(key)
    lam_sat = overload * cap.mu_rps
    sat = simulate(workload, server, lam_sat, mc, key=key_sat, progress=progress)
    s = sat.summary.iloc[0]
    use_cv = bool(np.isfinite(s["throughput_cv_rps"]))
    lam_star = float(s["throughput_cv_rps"] if use_cv else s["throughput_rps"])
    se = float(s["throughput_cv_se_rps"] if use_cv else s["throughput_se_rps"])
    saturated = float(sat.trials["waiting_final"].min())
    summary = dict(lam_star_rps=lam_star, lam_star_lo_rps=lam_star - 1.96 * se, lam_star_hi_rps=lam_star + 1.96 * se,
                   lam_star_se_rps=se, lam_star_method="saturation throughput" + (" (control variate)" if use_cv else ""),
                   mu_sim_rps=float(s["throughput_rps"]), mu_sim_se_rps=float(s["throughput_se_rps"]),
                   mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps, mu_stable_rps=cap.mu_stable_rps,
                   mu_exact_stable_rps=cap.mu_exact_stable_rps, delta=cap.delta, b_s=cap.b_s,
                   M_tokens=server.M, prefill_chunk_tokens=server.prefill_chunk, policy=server.policy,
                   token_budget=server.token_budget, servers=server.servers, routing=server.routing,
                   trials=mc.trials, steps=int(s["steps"]), warmup_steps=mc.warmup, lam_saturation_rps=lam_sat,
                   saturation_min_waiting=saturated, lam_star_over_mu_exact=lam_star / cap.mu_exact_rps,
                   in_theory_band=bool(cap.mu_exact_stable_rps - 1.96 * se <= lam_star <= cap.mu_exact_rps + 1.96 * se))
    reliable = bool(sat.reliable) and saturated > 0
    grid = None
    if grid_points > 0:
        lo = min(0.8 * cap.mu_exact_stable_rps, 0.9 * lam_star)
        hi = max(1.2 * cap.mu_exact_rps, 1.1 * lam_star)
        lams = np.linspace(lo, hi, grid_points)
        grid = simulate(workload, server, lams, mc.replace(trials=grid_trials), key=key_grid, progress=progress)
        g = grid.summary
        summary["grid_lam_rps"] = [float(x) for x in g["lam_rps"]]
        summary["grid_p_unstable"] = [float(x) for x in g["p_unstable"]]
        summary["lam_star_grid_rps"] = crossing(g["lam_rps"].to_numpy(), g["p_unstable"].to_numpy())
        reliable = reliable and bool(grid.reliable)
    summary["reliable"] = reliable
    if not reliable:
        summary["unreliable_reason"] = _why(sat, grid, saturated)
    return CriticalResult(summary=summary, saturation=sat, grid=grid)


def crossing(x, p):
    """x where p first crosses 0.5 (linear interpolation); NaN when it never does."""
    for i in range(1, len(x)):
        if p[i - 1] < 0.5 <= p[i]:
            return float(x[i - 1] + (0.5 - p[i - 1]) * (x[i] - x[i - 1]) / (p[i] - p[i - 1]))
    return math.nan


def _why(sat, grid, saturated):
    out = []
    if saturated <= 0:
        out.append("the saturation run did not keep a backlog in every trial (raise --steps or the overload)")
    for name, r in (("saturation", sat), ("grid", grid)):
        if r is None:
            continue
        s = r.summary
        for col, what in (("starved_steps", "slot capacity K limited the schedule (raise --K)"),
                          ("arrival_cap_hits", "the per-step arrival cap was hit"),
                          ("violations", "invariant violations")):
            n = int(s[col].sum())
            if n:
                out.append(f"{name}: {what}: {n}")
    return "; ".join(out)

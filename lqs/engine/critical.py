"""The critical rate λ*: the saturation throughput of a Server, next to the closed-form bounds, and the verdicts
over a grid of λ around it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np

from .._arrivals import as_arrivals
from .._errors import check_float, check_int
from .._server import as_server, resolve_mc
from .._theory import capacity
from .results import SimResult
from .simulate import simulate
from .paths import select_path
from .sizing import _limits, auto_steps, check_workload
from .verdict import Verdict, saturation


@dataclass
class CriticalResult:
    """λ* with its confidence interval, the saturation throughput μ_sim and the theory bounds."""

    summary: dict
    saturation: SimResult
    grid: SimResult | None

    def to_dict(self) -> dict:
        return dict(self.summary)


def critical(workload, server, mc=None, *, key=None, grid_points: int = 9, grid_trials: int | None = None,
             progress: bool = False, arrivals=None, **mc_fields) -> CriticalResult:
    """Estimate the critical arrival rate λ* of ``server`` (one configuration; a cluster counts as one).

    λ* is the saturation throughput: the rate at which the server completes requests with an unbounded backlog
    (λ far above capacity, the paper's way of measuring μ_gpu), estimated over ``mc.trials`` independent trials after
    the warm-up, with the control variate (memory-work completed per second / E[g_exact]); its confidence interval
    is ±1.96 standard errors across trials (docs/model.md, "What is measured"). It decides the long-run verdict of
    every λ (stable below the interval, unstable above it). A grid of ``grid_points`` arrival rates around it
    (0.8·μ_exact(1−δ) to 1.2·μ_exact, widened to include λ*), ``grid_trials`` trials each, shows those verdicts
    next to what the finite runs observed (``p_backlog_grows``). ``mc``/``**mc_fields`` as in :func:`lqs.simulate`.

    A disaggregated deployment (:class:`lqs.Disaggregated`) gets λ*_PD = min(N_P·λ*_P, N_D·λ*_D), the saturation
    rule per station (one engine call for a prefill and a decode server), beside μ_PD and the stable bound; its grid
    runs the coupled network (``grid`` is then a NetworkResult).

    ``arrivals`` (an :class:`lqs.Arrivals` without a rate, default Poisson) is the grid's arrival process: λ* is
    a saturation throughput (a permanent backlog, whatever the arrivals), so it does not change; the grid's
    finite runs, and where their backlogs visibly grow, do.
    """
    from .._disagg import Disaggregated

    if isinstance(server, Disaggregated):
        return _critical_disagg(workload, server, resolve_mc(mc, mc_fields), key=key, grid_points=grid_points,
                                grid_trials=grid_trials, progress=progress, arrivals=arrivals)
    server = as_server(server).require_scalar("critical")
    mc = resolve_mc(mc, mc_fields)
    grid_points = check_int("grid_points", grid_points, 0, 1000)
    grid_trials = mc.trials if grid_trials is None else check_int("grid_trials", grid_trials, 1, 2**24)
    check_workload(workload, server)
    arrivals = as_arrivals(arrivals, server.servers)
    if arrivals is not None and grid_points > 0:  # the grid's path must take them: say so before any run
        select_path(mc.path, server.servers, False, _limits(server), arrivals.engine_kind)
    cap = capacity(workload, server)
    if mc.steps is None:
        mc = mc.replace(steps=auto_steps(workload, server, mc.warmup))
    if key is None:
        key = jax.random.key(mc.seed)
    key_sat, key_grid = jax.random.split(key)
    cache: dict = {}
    (row,), sat = saturation([(workload, server.replace(b=server.bs[0]))], mc, key_sat, cache=cache,
                             progress=progress)
    se = row["lam_star_se_rps"]
    lam_star = row["lam_star_rps"]
    summary = dict(lam_star_rps=lam_star, lam_star_lo_rps=row["lam_star_lo_rps"],
                   lam_star_hi_rps=row["lam_star_hi_rps"], lam_star_se_rps=se, lam_star_method=row["method"],
                   mu_sim_rps=row["mu_sim_rps"], mu_sim_se_rps=row["mu_sim_se_rps"],
                   mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps, mu_stable_rps=cap.mu_stable_rps,
                   mu_exact_stable_rps=cap.mu_exact_stable_rps, delta=cap.delta, b_s=cap.b_s,
                   M_tokens=server.M, prefill_chunk_tokens=server.prefill_chunk, policy=server.policy,
                   token_budget=server.token_budget, max_running=server.max_running,
                   block_size_tokens=server.block_size, mu_block_rps=cap.mu_block_rps,
                   servers=server.servers, routing=server.routing,
                   arrivals="Poisson" if arrivals is None else arrivals.describe(),
                   trials=mc.trials, steps=row["steps"], warmup_steps=mc.warmup,
                   lam_saturation_rps=row["lam_saturation_rps"], saturation_min_waiting=row["saturation_min_waiting"],
                   lam_star_over_mu_exact=lam_star / cap.mu_exact_rps,
                   in_theory_band=bool(cap.mu_exact_stable_rps - 1.96 * se <= lam_star <= cap.mu_exact_rps + 1.96 * se))
    reliable = row["reliable"]
    reasons = [f"saturation: {row['unreliable_reason']}"] if not reliable else []
    grid = None
    if grid_points > 0:
        lo = min(0.8 * cap.mu_exact_stable_rps, 0.9 * lam_star)
        hi = max(1.2 * cap.mu_exact_rps, 1.1 * lam_star)
        lams = np.linspace(lo, hi, grid_points)
        grid = simulate(workload, server, lams, mc.replace(trials=grid_trials), key=key_grid, progress=progress,
                        verdict=Verdict(key=key_sat, mc=mc, cache=cache), arrivals=arrivals)
        g = grid.summary
        summary["grid_lam_rps"] = [float(x) for x in g["lam_rps"]]
        summary["grid_verdict"] = [str(x) for x in g["verdict"]]
        summary["grid_p_backlog_grows"] = [float(x) for x in g["p_backlog_grows"]]
        summary["lam_backlog_grows_half_rps"] = crossing(g["lam_rps"].to_numpy(), g["p_backlog_grows"].to_numpy())
        if not grid.reliable:
            reasons.append("grid: " + "; ".join(f"{c}: {int(g[c].sum())}" for c in
                                                ("starved_steps", "arrival_cap_hits", "violations") if g[c].sum()))
        reliable = reliable and bool(grid.reliable)
    summary["reliable"] = reliable
    if not reliable:
        summary["unreliable_reason"] = "; ".join(reasons)
    return CriticalResult(summary=summary, saturation=sat, grid=grid)


def verdict_at(result: CriticalResult, lam) -> str:
    """The long-run verdict at rate(s) ``lam`` from a critical result."""
    from .verdict import verdict_of

    row = dict(lam_star_lo_rps=result.summary["lam_star_lo_rps"], lam_star_hi_rps=result.summary["lam_star_hi_rps"],
               reliable=result.summary["reliable"])
    return verdict_of(check_float("lam", lam, 0.0), row)


def crossing(x, p):
    """x where p first crosses 0.5 (linear interpolation); NaN when it never does."""
    for i in range(1, len(x)):
        if p[i - 1] < 0.5 <= p[i]:
            return float(x[i - 1] + (0.5 - p[i - 1]) * (x[i] - x[i - 1]) / (p[i] - p[i - 1]))
    return math.nan


def _critical_disagg(workload, dep, mc, *, key, grid_points, grid_trials, progress, arrivals) -> CriticalResult:
    """lqs.critical of a Disaggregated deployment."""
    from .._disagg import capacity_disagg
    from .stations import station_saturation
    from .stations import simulate_disagg

    grid_points = check_int("grid_points", grid_points, 0, 1000)
    grid_trials = mc.trials if grid_trials is None else check_int("grid_trials", grid_trials, 1, 2**24)
    cap = capacity_disagg(workload, dep)
    if mc.steps is None:
        mc = mc.replace(steps=auto_steps(workload, dep.decode, mc.warmup))
    cache: dict = {}
    sat = station_saturation(workload, dep, mc, seed=mc.seed, progress=progress, cache=cache)
    st = {name: {k: n * sat[name][k] for k in ("lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps",
                                               "lam_star_se_rps")}
          for name, n in (("prefill", dep.n_prefill), ("decode", dep.n_decode))}
    b = min(st, key=lambda k: st[k]["lam_star_rps"])
    lam_star, se = st[b]["lam_star_rps"], st[b]["lam_star_se_rps"]
    summary = dict(**st[b], lam_star_method="saturation rule per station: min(N_P·λ*_P, N_D·λ*_D)",
                   lam_star_prefill_rps=st["prefill"]["lam_star_rps"], lam_star_decode_rps=st["decode"]["lam_star_rps"],
                   binding_sim=b, binding=cap.binding, mu_prefill_rps=cap.mu_prefill_rps,
                   mu_decode_rps=cap.mu_decode_rps, mu_pd_rps=cap.mu_pd_rps, mu_pd_stable_rps=cap.mu_pd_stable_rps,
                   delta_prefill=cap.delta_prefill, delta_decode=cap.delta_decode, n_prefill=dep.n_prefill,
                   n_decode=dep.n_decode, trials=mc.trials, steps=sat["decode"]["steps"],
                   lam_star_over_mu_pd=lam_star / cap.mu_pd_rps,
                   in_theory_band=bool(cap.mu_pd_stable_rps - 1.96 * se <= lam_star <= cap.mu_pd_rps + 1.96 * se),
                   deployment=dep.describe())
    reliable = bool(sat["prefill"]["reliable"] and sat["decode"]["reliable"])
    reasons = [r for r in (sat["prefill"]["unreliable_reason"], sat["decode"]["unreliable_reason"]) if r]
    grid = None
    if grid_points > 0:
        lo = min(0.8 * cap.mu_pd_stable_rps, 0.9 * lam_star)
        hi = max(1.2 * cap.mu_pd_rps, 1.1 * lam_star)
        grid = simulate_disagg(workload, dep, list(np.linspace(lo, hi, grid_points)), mc.replace(trials=grid_trials),
                                key=key, progress=progress, arrivals=arrivals, verdict=mc, cache=cache)
        g = grid.summary
        summary["grid_lam_rps"] = [float(x) for x in g["lam_rps"]]
        summary["grid_verdict"] = [str(x) for x in g["verdict"]]
        summary["grid_observed_drift_rps"] = [float(x) for x in g["observed_drift_rps"]]
    summary["reliable"] = reliable
    if not reliable:
        summary["unreliable_reason"] = "; ".join(reasons)
    return CriticalResult(summary=summary, saturation=None, grid=grid)

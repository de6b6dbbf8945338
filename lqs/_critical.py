"""The critical rate λ*: saturation throughput and P(unstable) over a grid of λ, next to the theory bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._batch import BatchTime, ConstantBatch
from ._engine import SimResult, simulate
from ._errors import LqsError, check_int
from ._theory import capacity


@dataclass
class CriticalResult:
    """λ* with its confidence interval, the saturation throughput μ_sim and the theory bounds."""

    summary: dict
    saturation: SimResult
    grid: SimResult | None

    def to_dict(self) -> dict:
        return dict(self.summary)


def critical(workload, *, M: int, chunk: int, b, policy: str = "fcfs", replicas: int = 64, steps: int | None = None,
             warmup: int = 4_000, key=None, seed: int = 0, grid_points: int = 9, grid_replicas: int | None = None,
             token_budget: int | None = None, K: int | None = None, progress: bool = False,
             b_theory: float | None = None, overload: float = 1.3, servers: int = 1,
             routing: str = "round_robin", engine: str | None = None) -> CriticalResult:
    """Estimate the critical arrival rate λ* of one server.

    λ* is the saturation throughput: the rate at which a server with an unbounded backlog completes requests
    (λ far above capacity, the paper's way of measuring μ_gpu), estimated over ``replicas`` independent servers
    after ``warmup`` steps, with the control variate throughput × E[g_exact] / (mean g_exact of the completions);
    its confidence interval is ±1.96 standard errors across replicas. A grid of ``grid_points`` arrival rates
    around it (from 0.8·μ_exact(1−δ) to 1.2·μ_exact, widened to include λ*) gives P(unstable) at each λ.
    """
    import jax

    grid_points = check_int("grid_points", grid_points, 0, 1000)
    grid_replicas = replicas if grid_replicas is None else check_int("grid_replicas", grid_replicas, 1)
    bt = b if isinstance(b, BatchTime) else ConstantBatch(b)
    if b_theory is None:
        try:
            b_theory = bt.mean_s
        except LqsError:
            raise LqsError("b_theory", None, "an affine batch-time model needs b_theory (the b̄ used by the "
                           "closed form)") from None
    cap = capacity(workload, M, chunk, b_theory)
    G = check_int("servers", servers, 1, 4096)
    if G > 1:
        from dataclasses import replace

        cap = replace(cap, mu_rps=G * cap.mu_rps, mu_exact_rps=G * cap.mu_exact_rps,
                      mu_stable_rps=G * cap.mu_stable_rps, mu_exact_stable_rps=G * cap.mu_exact_stable_rps)
    if steps is None:
        from ._engine import auto_steps

        steps = auto_steps(workload, M, chunk, bt, warmup, b_theory)
    if key is None:
        key = jax.random.key(check_int("seed", seed, 0, 2**63 - 1))
    key_sat, key_grid = jax.random.split(key)
    lam_sat = overload * cap.mu_rps
    sat = simulate(workload, M=M, chunk=chunk, lam=lam_sat, b=bt, policy=policy, replicas=replicas, steps=steps,
                   warmup=warmup, key=key_sat, token_budget=token_budget, K=K, progress=progress,
                   b_theory=b_theory, servers=G, routing=routing, engine=engine)
    s = sat.summary.iloc[0]
    use_cv = bool(np.isfinite(s["throughput_cv_rps"]))
    lam_star = float(s["throughput_cv_rps"] if use_cv else s["throughput_rps"])
    se = float(s["throughput_cv_se_rps"] if use_cv else s["throughput_se_rps"])
    saturated = float(sat.replicas["waiting_final"].min())
    summary = dict(lam_star_rps=lam_star, lam_star_lo_rps=lam_star - 1.96 * se, lam_star_hi_rps=lam_star + 1.96 * se,
                   lam_star_se_rps=se, lam_star_method="saturation throughput" + (" (control variate)" if use_cv else ""),
                   mu_sim_rps=float(s["throughput_rps"]), mu_sim_se_rps=float(s["throughput_se_rps"]),
                   mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps, mu_stable_rps=cap.mu_stable_rps,
                   mu_exact_stable_rps=cap.mu_exact_stable_rps, delta=cap.delta, b_s=b_theory, M_tokens=M,
                   chunk_tokens=chunk, policy=policy, replicas=replicas, steps=int(s["steps"]),
                   warmup_steps=warmup, lam_saturation_rps=lam_sat, servers=G, routing=routing, saturation_min_waiting=saturated,
                   lam_star_over_mu_exact=lam_star / cap.mu_exact_rps,
                   in_theory_band=bool(cap.mu_exact_stable_rps - 1.96 * se <= lam_star <= cap.mu_exact_rps + 1.96 * se))
    reliable = bool(sat.reliable) and saturated > 0
    grid = None
    if grid_points > 0:
        lo = min(0.8 * cap.mu_exact_stable_rps, 0.9 * lam_star)
        hi = max(1.2 * cap.mu_exact_rps, 1.1 * lam_star)
        lams = np.linspace(lo, hi, grid_points)
        grid = simulate(workload, M=M, chunk=chunk, lam=lams, b=bt, policy=policy, replicas=grid_replicas,
                        steps=steps, warmup=warmup, key=key_grid, token_budget=token_budget, K=K,
                        progress=progress, b_theory=b_theory, servers=G, routing=routing, engine=engine)
        g = grid.summary
        summary["grid_lam_rps"] = [float(x) for x in g["lam_rps"]]
        summary["grid_p_unstable"] = [float(x) for x in g["p_unstable"]]
        summary["lam_star_grid_rps"] = _crossing(g["lam_rps"].to_numpy(), g["p_unstable"].to_numpy())
        reliable = reliable and bool(grid.reliable)
    summary["reliable"] = reliable
    if not reliable:
        summary["unreliable_reason"] = _why(sat, grid, saturated)
    return CriticalResult(summary=summary, saturation=sat, grid=grid)


def _crossing(lams, p):
    """λ where P(unstable) first crosses 0.5 (linear interpolation); NaN when it never does."""
    for i in range(1, len(lams)):
        if p[i - 1] < 0.5 <= p[i]:
            return float(lams[i - 1] + (0.5 - p[i - 1]) * (lams[i] - lams[i - 1]) / (p[i] - p[i - 1]))
    return math.nan


def _why(sat, grid, saturated):
    out = []
    if saturated <= 0:
        out.append("the saturation run did not keep a backlog in every replica (raise --steps or the overload)")
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

"""The SLO study: the fewest serving instances that keep a latency percentile under a target, next to the
stability-only counts ⌈λ/μ⌉ and ⌈λ/(μρ)⌉ (docs/model.md)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._errors import LqsError, check_float, check_int
from .common import StudyResult, key, label, settings, setup, write
from .latency import LATENCY_COLUMNS


def slo_servers(workload=None, server=None, mc=None, *, quick: bool = False, seed: int = 0, out=None,
                progress: bool = False, lam=None, target_s: float = 1.0, metric: str = "ttft_p99_s",
                rho: float = 0.9, max_servers=None, total_hi=None) -> StudyResult:
    """The fewest serving instances G (each receiving λ/G) that keep ``metric`` (default p99 TTFT) ≤ ``target_s``
    at total rate ``lam`` (default 3.5·μ of one server), next to the stability-only counts ⌈λ/μ⌉ and ⌈λ/(μρ)⌉
    (the paper's rule, lqs.servers_needed; μ of one ``server``, whose ``servers`` field is not used).

    One simulate call over λ/G for G = max(1, ⌊λ/μ⌋) … ``max_servers`` (default ⌈λ/(μ·0.5)⌉ + 1); the ``rho``
    column is the deployment's utilisation λ/(G·μ) (docs/model.md). A G qualifies when each instance is stable in
    the long run (λ/G below the saturation throughput λ*'s interval, one saturation run for all G), its percentile
    meets the target, and so does every larger G (robust to simulation noise).
    ``meta['servers_slo']`` is the answer (None when no G up to max_servers qualifies).
    """
    from .._theory import capacity, servers_needed
    from ..engine import simulate

    workload, server, mc, _ = setup(workload, server, mc, quick, total_hi)
    server = server.replace(servers=1).require_scalar("slo_servers")
    cap = capacity(workload, server)  # one serving instance
    lam = 3.5 * cap.mu_rps if lam is None else check_float("lam", lam, 0.0, lo_open=True)
    target_s = check_float("target_s", target_s, 0.0, lo_open=True)
    if metric not in LATENCY_COLUMNS:
        raise LqsError("metric", metric, "must be one of " + ", ".join(LATENCY_COLUMNS))
    G_stab = servers_needed(lam, cap.mu_rps, 1.0)
    G_rho = servers_needed(lam, cap.mu_rps, rho)
    G_lo = max(1, int(math.floor(lam / cap.mu_rps)))
    G_hi = (check_int("max_servers", max_servers, G_lo) if max_servers is not None
            else max(G_rho, int(math.ceil(lam / (0.5 * cap.mu_rps)))) + 1)
    Gs = np.arange(G_lo, G_hi + 1)
    s = simulate(workload, server, lam / Gs, mc, key=key(seed), progress=progress).summary
    meets = ((s.verdict == "stable") & (s[metric] <= target_s)).to_numpy()
    ok_from = np.logical_and.accumulate(meets[::-1])[::-1]  # this G and every larger one meet it
    G_slo = int(Gs[np.argmax(ok_from)]) if ok_from.any() else None
    df = pd.DataFrame(dict(servers=Gs, lam_total_rps=lam, lam_per_server_rps=lam / Gs, rho=lam / (Gs * cap.mu_rps),
                           verdict=s.verdict.to_numpy(), lam_star_rps=s.lam_star_rps.to_numpy(),
                           p_backlog_grows=s.p_backlog_grows.to_numpy(), metric=metric, value_s=s[metric].to_numpy(),
                           target_s=target_s, meets_target=meets, qualifies=ok_from,
                           wait_p99_s=s.wait_p99_s.to_numpy(), ttft_p99_s=s.ttft_p99_s.to_numpy(),
                           ttft_p90_s=s.ttft_p90_s.to_numpy(), e2e_p99_s=s.e2e_p99_s.to_numpy(),
                           servers_slo=G_slo if G_slo is not None else -1, servers_stability=G_stab,
                           servers_rho=G_rho, rho_target=rho, reliable=s.reliable.to_numpy(),
                           latency_reliable=s.latency_reliable.to_numpy()))
    meta = dict(study="slo", workload=label(workload), lam_rps=lam, target_s=target_s, metric=metric,
                servers_slo=G_slo, servers_stability=G_stab, servers_rho=G_rho,
                rho_target=rho, mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps,
                **settings(server, mc, quick))
    from .plots import plot_slo

    return write("slo", df, meta, plot_slo, out)


#: the name before lqs 0.2 (serving instances are "servers"; "replicas" were ambiguous with Monte Carlo trials)
slo_replicas = slo_servers

"""A capacity plan's verification: the whole day simulated with the planned server counts (docs/model.md,
"Capacity plans"). The day's arrivals are drawn once, routed round robin to the servers that accept requests at
each arrival, and every server runs as its own configuration of the engine with its arrival instants given; its
latencies are kept per window of arrival."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np
import pandas as pd

from .._server import MonteCarlo


@dataclass
class Verification:
    windows: pd.DataFrame
    totals: dict
    results: list  # the SimResult of each run (no provisioning ahead, then ahead)


def day_instants(curve, lam, kind: str, burstiness: float, rate_scale: float, key) -> np.ndarray:
    """Sorted arrival instants over the day at window rates ``lam``: Poisson or gamma renewal (time-changed by the
    piecewise-constant rate), or the trace's own instants of each window at ``rate_scale`` (copy j of a window's
    instants x lands at (x + j·window)/F, the ones inside the window kept)."""
    Wd = curve.window_s
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint64).tolist())
    if kind == "replayed":
        out = []
        F = rate_scale
        for w, x in enumerate(curve.instants):
            parts = [(x + j * Wd) / F for j in range(int(math.ceil(F)))]
            t = np.sort(np.concatenate(parts)) if parts else np.zeros(0)
            out.append(curve.start_s[w] + t[t < Wd])
        return np.concatenate(out)
    edges = np.append(curve.start_s, curve.start_s[-1] + Wd)
    cum = np.concatenate([[0.0], np.cumsum(lam * Wd)])  # expected arrivals by each window edge
    total = cum[-1]
    if total <= 0:
        return np.zeros(0)
    k = 1.0 if kind == "poisson" else burstiness
    n = int(total + 10 * math.sqrt(total / min(k, 1.0)) + 20)
    ops = np.cumsum(rng.gamma(k, 1.0 / k, n))  # operational time: mean-1 gaps
    while ops[-1] < total:
        ops = np.concatenate([ops, ops[-1] + np.cumsum(rng.gamma(k, 1.0 / k, n))])
    ops = ops[ops < total]
    keep = np.diff(cum) > 0  # the inverse of the cumulative rate, over windows that have arrivals
    x = np.stack([cum[:-1][keep], cum[1:][keep]], 1).ravel()  # each window with arrivals maps its own span
    y = np.stack([edges[:-1][keep], edges[1:][keep]], 1).ravel()
    return np.interp(ops, x, y)


def schedule(planned, ahead: int, delay: float, Wd: float):
    """Per server k: the intervals [start, end) in which it accepts requests. The plan asks in window w for
    max(planned[w .. w+ahead]) servers; an added server accepts requests ``delay`` after it is asked for (those of
    window 0 from t = 0); a removed one stops at once (and drains)."""
    W = len(planned)
    req = np.asarray([max(planned[w:w + ahead + 1]) for w in range(W)], np.int64)
    out = []
    for k in range(int(req.max())):
        on = req > k
        iv = []
        w = 0
        while w < W:
            if on[w]:
                e = w
                while e < W and on[e]:
                    e += 1
                s = w * Wd + (0.0 if w == 0 else delay)
                if s < e * Wd:
                    iv.append((s, e * Wd))
                w = e
            else:
                w += 1
        out.append(iv)
    return req, out


def route(t, intervals):
    """Server of each arrival: round robin (arrival i to the (i mod A)-th of the A servers accepting at its
    instant; they are always servers 0..A−1). Returns (server index per arrival, A per arrival)."""
    active = np.zeros((len(intervals), t.size), bool)
    for k, iv in enumerate(intervals):
        for s, e in iv:
            active[k] |= (t >= s) & (t < e)
    A = active.sum(0)
    A = np.maximum(A, 1)  # at least one server is up (the first window's are up from t = 0)
    return np.arange(t.size) % A, A


def verify_plan(curve, lam, planned, workload, server, slo, sats, kind, burstiness, rate_scale, delay, trials,
                seed, progress, window_workloads=None) -> Verification:
    """``sats``: each window's saturation row (λ*); ``window_workloads``: each window's lengths (a phased run whose
    phases are the windows), or None for ``workload`` all day."""
    from .._arrivals import GivenInstants
    from ..engine.run import run_configs
    from ..engine.sizing import product
    from ..engine.stats import hist_quantiles
    from ..engine.verdict import verdict_of
    from ..studies.common import key as study_key
    from ._plan import _LAT_INDEX, _Q, step_s

    Wd, W = curve.window_s, curve.n_windows
    T = W * Wd
    t = day_instants(curve, lam, kind, burstiness, rate_scale, study_key(seed, 7))
    aheads = [0] + ([int(math.ceil(delay / Wd))] if delay > 0 else [])
    steps = int(math.ceil(T / step_s(workload, server) * (1.01 if server.bs[0].kind == "constant"
                                                                        else 1.05))) + 1
    configs, owners, reqs = [], [], []
    for ai, a in enumerate(aheads):
        req, iv = schedule(planned, a, delay, Wd)
        srv_of, A = route(t, iv)
        reqs.append((req, A))
        for k in range(len(iv)):
            mine = t[srv_of == k]
            configs += product(workload, server, [max(mine.size / T, 1e-9)], GivenInstants(mine, T))
            owners.append((ai, k))
    ends = np.append(curve.start_s[1:], np.inf)
    mc = MonteCarlo(trials=trials, steps=max(steps, 2), warmup=0, seed=seed, path="xla")
    phased = None
    if window_workloads is not None:  # lengths by window of arrival: the windows as phases (rates: the instants)
        from .._workload import Phased

        lam_c = max(c.lam for c in configs)  # one rate for the program (a phased run's rule); the instants rule
        configs = [c._replace(workload=window_workloads[0], lam=lam_c) for c in configs]
        phased = (Phased(window_workloads), ends.astype(np.float32), np.asarray(lam, np.float32))
    # slots: the engine sizes K for a saturated server; the plan's servers run below λ*, so the day first runs with
    # half of that, and again at the full size if any limit was hit (counted, so nothing is lost either way)
    from ..engine.sizing import group_sizing

    K_full = group_sizing(configs, mc, phased).K
    K_try = max(64, 32 * math.ceil(K_full / 2 / 32))
    res = None
    for K in ([K_try] if K_try < K_full else []) + [K_full]:
        res = run_configs(configs, mc.replace(K=K), key=study_key(seed, 8), progress=progress,
                          latency_windows=ends, phased=phased)
        s = res.summary
        if bool(s.reliable.all()) and int(s.starved_steps.sum()) == 0 and int(s.latency_lost.sum()) == 0:
            break
    k_used, k_retried = int(res.config["sizing"]["K"]), int(res.config["sizing"]["K"]) != K_try
    cfg = res.engine_config
    lam_star = np.asarray([x["lam_star_rps"] for x in sats])
    metric = None if slo.metric == "rho" else slo.metric
    win = np.minimum((t // Wd).astype(np.int64), W - 1)
    arrivals_w = np.bincount(win, minlength=W)
    cols, tot = {}, {}
    for ai, a in enumerate(aheads):
        sfx = "" if ai == 0 else "_ahead"
        idx = [i for i, (x, _) in enumerate(owners) if x == ai]
        ph = res.phase_hist[idx].sum(axis=(0, 1))  # [W, N_LAT, bins]: pooled over servers and trials
        req, A = reqs[ai]
        a_min = np.asarray([A[win == w].min() if np.any(win == w) else 0 for w in range(W)])
        # backlog (waiting requests, all servers, mean over trials) at each window's end: the last series point
        ts, ws = res.series_t[idx], res.series_waiting[idx].astype(np.float64)
        back = np.zeros(W)
        for w in range(W):
            e = (w + 1) * Wd
            j = np.maximum((ts <= e).sum(-1) - 1, 0)  # [servers, trials]
            back[w] = np.take_along_axis(ws, j[..., None], -1)[..., 0].mean(1).sum()
        if metric is not None:
            q = _Q[metric.split("_")[1]]
            v = hist_quantiles(ph[:, _LAT_INDEX[metric.split("_")[0]]], (q,), cfg)[:, 0]
            met = np.where(arrivals_w > 0, v <= slo.target, True)
            clear_s = slo.target
        else:
            v = lam / np.maximum(a_min, 1) / lam_star
            met = v <= slo.target
            clear_s = 1.0
        # a backlog built: the waiting requests take longer than the SLO's target to clear at λ* per active server
        built = back > np.maximum(a_min, 1) * lam_star * clear_s
        lagged = a_min < np.asarray(planned)
        cols[f"verify_servers_min{sfx}"] = a_min
        cols[f"verify_backlog_end{sfx}"] = back
        cols[f"verify_{slo.metric}{sfx}"] = v
        cols[f"verify_slo_met{sfx}"] = met
        cols[f"verify_verdict{sfx}"] = [verdict_of(x / max(g, 1), st) for x, g, st in zip(lam, a_min, sats)]
        cols[f"verify_lag_backlog{sfx}"] = lagged & (built | ~met)
        tot[f"verify_slo_met_fraction{sfx}"] = float(np.mean(met))
        tot[f"verify_lag_windows{sfx}"] = [int(i) for i in np.flatnonzero(lagged & (built | ~met))]
        sub = res.summary.iloc[idx]
        trials_df = res.trials[res.trials.config.isin(idx)]
        tot[f"verify_arrivals{sfx}"] = int(t.size)
        tot[f"verify_conserved{sfx}"] = bool((trials_df.arrivals == trials_df.completions
                                              + trials_df.in_system_final).all()
                                             and (trials_df.groupby("trial").arrivals.sum() == t.size).all())
        tot[f"verify_reliable{sfx}"] = bool(sub.reliable.all() and (sub.latency_lost == 0).all()
                                            and float(sub.horizon_s.min()) >= T * (1 - 1e-3))
        tot[f"verify_violations{sfx}"] = int(sub.violations.sum())
        tot[f"verify_latency_lost{sfx}"] = int(sub.latency_lost.sum())
    if delay > 0:
        tot["provision_ahead_windows"] = aheads[1]
        tot["provision_ahead_s"] = aheads[1] * Wd
        tot["provision_ahead_removes_lag"] = not tot["verify_lag_windows_ahead"]
    cols["verify_arrivals"] = arrivals_w
    tot["verify_wall_s"] = float(res.config["timing"]["wall_s"])
    tot["verify_trials"] = trials
    tot["verify_K"] = k_used  # slots per server (the full engine sizing only when the half-size run hit a limit)
    tot["verify_K_retried"] = k_retried
    tot["verify_steps"] = int(res.config["steps_run"])
    return Verification(windows=pd.DataFrame(cols), totals=tot, results=[res])

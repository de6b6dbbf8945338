"""The saturation rule per station of a disaggregated deployment (docs/model.md, "Disaggregated prefill and
decode"): one prefill and one decode server's λ*, measured alone by the engine (no transfer time) or by the coupled
network with a permanent backlog (a transfer that takes time), and the verdicts of a network run from them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._disagg import DecodeStation, Disaggregated, PrefillStation
from .network import simulate_network


def one_server(w, srv):
    """(workload, one server with b as a BatchTime): what the engine's saturation items hold."""
    from .._server import as_server
    from .sizing import product

    return w, product(w, as_server(srv).replace(servers=1), [0.0])[0].server


def network_station_saturation(workload, dep: Disaggregated, mc, *, seed: int = 0, progress: bool = False,
                               cache: dict | None = None) -> dict:
    """λ* of one prefill and one decode server with the transfer's hold and reservation (what the per-station
    engine runs leave out), from the coupled network with a permanent backlog on the station measured: a prefill
    server whose free slots are refilled at every step, and a decode server whose free slots are refilled with new
    transfers. λ*_P is the prefill server's completions per second, λ*_D the decode server's; ±1.96 standard
    errors over ``mc.trials``. Rows as :func:`station_saturation` gives them."""
    from .network import typical_b
    from .sizing import size_engine

    ck = ("network-stations", repr(dep.split(1, 1).describe()), id(workload), mc.trials, mc.steps, mc.warmup, seed)
    if cache is not None and ck in cache:
        return dict(cache[ck])
    # two configurations of one server per pool: the prefill server with a permanent backlog (its slots refilled
    # every step; the decode server beside it overflows, which does not touch the prefill server), and the decode
    # server with one (its free slots refilled with new transfers, each reserved for its τ(s)). Feeding the decode
    # server from saturated prefill servers and dropping what finds it full would keep the first prefill
    # completions of each step, the oldest and longest prompts: a biased mix
    deps = [dep.split(1, 1), dep.split(1, 1)]
    b_ref = max(typical_b(workload, dep.prefill), typical_b(workload, dep.decode))
    steps = mc.steps or 20_000
    K = 0
    for st, srv in ((PrefillStation(workload), dep.prefill), (DecodeStation(workload), dep.decode)):
        w, s = one_server(st, srv)
        K = max(K, size_engine(w, s.M, s.prefill_chunk, 1.0, s.b, 1).K)
    K = int(32 * math.ceil(1.25 * K / 32))
    res = simulate_network(workload, deps, [1.0, 1.0], mc.replace(steps=steps), zip_lams=True,
                           saturated=["prefill", "decode"], horizon_s=steps * b_ref, warmup_s=mc.warmup * b_ref,
                           drain_s=0.0, K=K, progress=progress, retries=0)
    tr = res.trials
    rows = {}
    for name, cfg_i, col, n in (("prefill", 0, "prefill_throughput_rps", 1), ("decode", 1, "throughput_rps", 1)):
        x = tr[tr.config == cfg_i][col].to_numpy(np.float64) / n
        lam = float(x.mean())
        se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")
        sub = tr[tr.config == cfg_i]
        starved = int(sub[f"starved_{name}"].sum())
        # the decode server beside the saturated prefill server overflows: only the measured station's limits count
        viol = int(sub.violations.sum()) + (int(sub.reserve_over.sum()) if name == "decode" else 0)
        reasons = []
        if starved:
            reasons.append(f"slot capacity K = {K} limited the {name} schedule ({starved} steps)")
        if viol:
            reasons.append(f"invariant violations ({viol})")
        if not math.isfinite(se):
            reasons.append("λ* needs at least 2 trials for its interval")
        rows[name] = dict(lam_star_rps=lam, lam_star_se_rps=se, lam_star_lo_rps=lam - 1.96 * se,
                          lam_star_hi_rps=lam + 1.96 * se, lam_saturation_rps=float("inf"), mu_sim_rps=lam,
                          mu_sim_se_rps=se, method="saturation throughput of the coupled network (transfer held "
                          "and reserved)", saturation_min_waiting=-1, reliable=not reasons,
                          unreliable_reason="; ".join(reasons), trials=mc.trials, steps=steps)
    if cache is not None:
        cache[ck] = dict(rows)
    return rows


def station_saturation(workload, dep: Disaggregated, mc=None, *, seed: int = 0, colocated=None,
                       progress: bool = False, cache: dict | None = None) -> dict:
    """One server's saturation throughput λ* in each pool, each measured alone (docs/model.md: the decode pool fed
    with prefilled requests), and a colocated server's, in one call of the engine: {"prefill": row, "decode": row,
    "colocated": row} (rows as lqs.engine.verdict.saturation gives them). A pool of N servers behind its router
    saturates at N times its server's λ* (every server saturated). With a transfer that takes time (τ0 > 0 or a
    finite rate), the stations' λ* come from the coupled network instead (:func:`network_station_saturation`), so
    that the prefill server's hold and the decode server's reservation are in them."""
    import jax

    from .._server import MonteCarlo
    from .verdict import saturation

    mc = MonteCarlo(trials=16, steps=20_000, warmup=4_000, seed=seed) if mc is None else mc
    if dep.transfer.latency_s > 0 or math.isfinite(dep.transfer.tokens_per_s):
        out = network_station_saturation(workload, dep, mc, seed=seed, progress=progress, cache=cache)
        if colocated is not None:
            out["colocated"] = saturation([one_server(workload, colocated)], mc, jax.random.key(seed),
                                          progress=progress, cache=cache)[0][0]
        return out

    one = one_server

    # a prefill server completes many short requests per step: Poisson draws of that many per step are beyond the
    # engine's float32 draws, so it is fed evenly spaced arrivals (a saturation run's λ* does not depend on them)
    from .._arrivals import Arrivals

    even = Arrivals("replayed", instants_s=np.arange(4096, dtype=np.float64))
    items = [one(PrefillStation(workload), dep.prefill) + (even,), one(DecodeStation(workload), dep.decode)]
    if colocated is not None:
        items.append(one(workload, colocated))
    rows = saturation(items, mc, jax.random.key(seed), progress=progress, cache=cache)[0]
    return dict(zip(("prefill", "decode", "colocated"), rows))


def attach_network_verdicts(out, workload, configs, vmc, seed, cache, progress):
    from .verdict import verdict_of

    rows = []
    cache = {} if cache is None else cache  # one saturation run per distinct pool pair, whatever the split and λ
    for d, lam in configs:
        sat = station_saturation(workload, d, vmc, seed=seed, progress=progress, cache=cache)
        st = {name: {k: n * sat[name][k] for k in ("lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps")}
              for name, n in (("prefill", d.n_prefill), ("decode", d.n_decode))}
        b = min(st, key=lambda k: st[k]["lam_star_rps"])
        ok = bool(sat["prefill"]["reliable"] and sat["decode"]["reliable"])
        row = dict(st[b], reliable=ok)
        rows.append(dict(lam_star_prefill_rps=st["prefill"]["lam_star_rps"],
                         lam_star_decode_rps=st["decode"]["lam_star_rps"], binding_sim=b,
                         lam_star_rps=row["lam_star_rps"], lam_star_lo_rps=row["lam_star_lo_rps"],
                         lam_star_hi_rps=row["lam_star_hi_rps"], verdict=verdict_of(lam, row),
                         verdict_basis="saturation rule per station: λ*_PD = min(N_P·λ*_P, N_D·λ*_D)"))
    extra = pd.DataFrame(rows)
    for c in extra.columns:
        out.summary[c] = extra[c].to_numpy()


def simulate_disagg(workload, deployments, lam, mc=None, *, verdict=True, cache: dict | None = None, progress=False,
                    **kw):
    """:func:`lqs.engine.network.simulate_network` with the long-run verdict of every row from the saturation rule
    per station (λ*_PD = min(N_P·λ*_P, N_D·λ*_D); ``verdict``: True, False, or the :class:`lqs.MonteCarlo` of the
    saturation runs; ``cache`` reuses them across calls)."""
    from .._server import MonteCarlo

    out = simulate_network(workload, deployments, lam, mc, progress=progress, **kw)
    if verdict is not False and verdict is not None:
        vmc = verdict if isinstance(verdict, MonteCarlo) else None
        attach_network_verdicts(out, workload, out.configs, vmc, out.config["monte_carlo"]["seed"], cache, progress)
    return out

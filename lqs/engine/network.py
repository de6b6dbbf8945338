"""The coupled disaggregated network (kernels/network.py) run from a :class:`lqs.Disaggregated`: one program for a
grid of (deployment, λ) configurations × trials, its latencies (TTFT, TPOT, E2E, the transfer, both queueing
waits) and throughput, with every capacity limit counted and the long-run verdict from the saturation rule per
station (λ*_PD = min(λ*_P, λ*_D))."""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .. import _jsonio
from .._errors import LqsError, check_float, check_int
from .._server import MonteCarlo, resolve_mc
from .._workload import as_workload
from ..kernels.network import NET_LAT, NetConfig, NetParams, in_system, init_net, run_events, unfinished
from ..kernels.state import EngineConfig
from .sizing import build_params, product, saturated_service, size_engine, step_times
from .stats import hist_quantiles

LAT_Q = (0.5, 0.9, 0.99)
#: default horizon and warm-up, in steps of the slower pool's typical batch time (MonteCarlo.steps / warmup
#: override them)
NET_STEPS, NET_WARMUP = 12_000, 3_000
_PROGRAMS: dict = {}


@dataclass
class NetworkResult:
    """What :func:`simulate_network` returns: per-trial rows, the per-configuration summary, the latency
    histograms [configs, trials, 6, n_bins] (rows in ``NET_LAT`` order) and the resolved configuration."""

    trials: pd.DataFrame
    summary: pd.DataFrame
    hist: np.ndarray
    config: dict
    net_config: NetConfig = field(repr=False)
    records: np.ndarray | None = None  # [configs·trials, 8, R] per-request instants (record > 0)
    trace: dict | None = None  # every event's row (trace=True)
    configs: list | None = field(default=None, repr=False)  # the (Disaggregated, λ) of each summary row

    @property
    def reliable(self) -> bool:
        return bool(self.summary["reliable"].all())

    def save(self, out_dir) -> list[str]:
        os.makedirs(out_dir, exist_ok=True)
        written = []
        for name, df in (("network_trials", self.trials), ("network_summary", self.summary)):
            p = os.path.join(out_dir, f"{name}.csv")
            df.to_csv(p, index=False)
            written.append(p)
        p = os.path.join(out_dir, "network_config.json")
        with open(p, "w") as fh:
            _jsonio.dump({k: v for k, v in self.config.items() if k != "timing"}, fh, indent=2)
        written.append(p)
        p = os.path.join(out_dir, "network_hist.npz")
        np.savez_compressed(p, hist=self.hist, bin_edges_s=self.net_config.bin_edges, rows=np.asarray(NET_LAT))
        written.append(p)
        return written


def _pool_engine(server, K: int) -> EngineConfig:
    return EngineConfig(K=K, policy=server.policy, token_budget=server.token_budget is not None,
                        running_cap=server.max_running is not None, blocks=server.block_size > 1)


def _static(server) -> tuple:
    return (server.policy, server.token_budget is not None, server.max_running is not None, server.block_size > 1)


def _bt(workload, server):
    """``server`` with b as a BatchTime (what the engine's configurations hold)."""
    return product(workload, server, [0.0])[0].server


def typical_b(workload, server) -> float:
    """A pool's typical step time (its mean; an affine model's at its saturated batch)."""
    srv = _bt(workload, server)
    m = workload.expected_g(srv.prefill_chunk)
    n_serv = saturated_service(m, srv.M, srv.prefill_chunk)[1]
    typ, far, _ = step_times(srv.b, srv.M, srv.prefill_chunk, n_serv)
    return float(far if typ is None else typ)


def _pool_K(station, server, lam_server: float, K_user, residence_s: float) -> int:
    """Slots per server: three times Little's count at the server's share of λ with a residence of
    ``residence_s`` (its steps at the typical batch time, the transfer), plus 64; at most what a saturated server
    holds (lqs.engine.sizing.size_engine, compaction every event). A run that still finds them full is repeated
    with twice as many."""
    if K_user is not None:
        return int(K_user)
    srv = _bt(station, server)
    z = size_engine(station, srv.M, srv.prefill_chunk, max(lam_server, 1e-9), srv.b, 1)
    little = 3.0 * lam_server * residence_s + 64
    return int(32 * math.ceil(min(z.K, little) / 32))


def _program(cfg: NetConfig):
    if cfg not in _PROGRAMS:
        init = jax.jit(jax.vmap(lambda k, p: init_net(k, p, cfg)))
        step = jax.jit(jax.vmap(lambda s, p: run_events(s, p, cfg)))
        count = jax.jit(jax.vmap(lambda s, p: (in_system(s), unfinished(s, p.t_warm, p.t_lat_end))))
        _PROGRAMS[cfg] = (init, step, count)
    return _PROGRAMS[cfg]


def simulate_network(workload, deployments, lam, mc: MonteCarlo | None = None, *, key=None, horizon_s=None,
                     warmup_s=None, drain_s=None, arrivals=None, K=None, progress: bool = False, record: int = 0,
                     trace: bool = False,
                     retries: int = 2, zip_lams: bool = False, saturated: bool = False,
                     **mc_fields) -> NetworkResult:
    """The coupled network of each deployment (a :class:`lqs.Disaggregated`, or a list of them: the P:D splits
    of one G, or pools with other parameters) at each rate of ``lam``, ``mc.trials`` trials each, as one jitted,
    vmapped program (kernels/network.py: both pools on one clock, each server with its own batch time, a request
    entering the decode pool when its transfer ends).

    Horizon ``horizon_s`` and warm-up ``warmup_s`` in seconds (default: ``mc.steps`` / ``mc.warmup``, or 12,000 /
    3,000, steps of the slower pool's typical batch time). Latencies are those of the requests that arrive in
    [warm-up, horizon − ``drain_s``) (default drain: 1.5 × the longest request's life), and a request of that
    window still unfinished at the horizon is counted (``censored``) and marks the row unreliable. ``arrivals``: None (Poisson) or an :class:`lqs.Arrivals` (gamma,
    replayed), fed to the prefill pool's router. ``K``: slots per server (default sized from each pool's M and
    load); a request that finds them full is counted in ``lost`` and marks the row unreliable, and the run is
    repeated with twice the slots up to ``retries`` times.

    The long-run verdict of each row (the saturation rule per station) is
    :func:`lqs.engine.stations.simulate_disagg`'s; what the finite run saw is ``observed_drift_rps`` (window
    arrivals − completions per second), never called a verdict.

    ``zip_lams``: ``lam`` holds one rate per deployment (configurations are the pairs, not the product).
    ``saturated`` (False, "prefill" or "decode", or one per configuration): no external arrivals; every prefill
    server's free slots are refilled at each of its step boundaries ("prefill", True), or every decode server's
    with new transfers ("decode"): a permanent backlog, what the saturation rule measures."""
    from .._arrivals import as_arrivals
    from .._disagg import Disaggregated, capacity_disagg, check_fits
    from .sizing import rates

    workload = as_workload(workload)
    deps = [deployments] if isinstance(deployments, Disaggregated) else list(deployments)
    if not deps or not all(isinstance(d, Disaggregated) for d in deps):
        raise LqsError("deployments", deployments, "must be an lqs.Disaggregated or a non-empty list of them")
    lams = rates(lam)
    if any(x <= 0 for x in lams):
        raise LqsError("lam", lam, "must be > 0 requests/s for the coupled network")
    if zip_lams and len(lams) != len(deps):
        raise LqsError("lam", lam, f"with zip_lams, one rate per deployment ({len(deps)})")
    mc = resolve_mc(mc, mc_fields)
    record = check_int("record", record, 0, 1_000_000)
    retries = check_int("retries", retries, 0, 8)
    for d in deps:
        check_fits(workload, d)
        for pool, srv in (("prefill", d.prefill), ("decode", d.decode)):
            if _static(srv) != _static(getattr(deps[0], pool)):
                raise LqsError(f"{pool} policy", srv.policy, "must be the same in every deployment of one call (with "
                               "the same token budget, running cap and block options)")
    arrivals = as_arrivals(arrivals)
    kind = "poisson" if arrivals is None else arrivals.engine_kind
    b_ref = max(max(typical_b(workload, d.prefill), typical_b(workload, d.decode)) for d in deps)
    t_stop = (check_float("horizon_s", horizon_s, 0.0, lo_open=True) if horizon_s is not None
              else (mc.steps or NET_STEPS) * b_ref)
    t_warm = (check_float("warmup_s", warmup_s, 0.0) if warmup_s is not None
              else (mc.warmup if mc.steps else NET_WARMUP) * b_ref)
    # the latency window closes one drain time before the horizon, so that its requests can finish: the longest
    # request's steps on both pools (its prefill chunks, then its output tokens) at the slower typical batch time,
    # and its transfer
    from .._disagg import _max_s

    drain = (check_float("drain_s", drain_s, 0.0) if drain_s is not None else
             1.5 * ((-(-_max_s(workload) // min(d.prefill.prefill_chunk for d in deps)) + _max_s(workload, "o") + 4)
                    * b_ref + max(float(d.transfer.time_s(workload.max_total)) for d in deps)))
    t_lat_end = t_stop - drain
    if t_warm >= t_lat_end:
        raise LqsError("horizon_s", t_stop, f"must exceed the warm-up ({t_warm:.4g} s) plus the drain time "
                       f"({drain:.4g} s: the longest request's life), so that the latency window is not empty")
    configs = list(zip(deps, lams)) if zip_lams else [(d, x) for d in deps for x in lams]
    sat_list = [int({"prefill": 1, "decode": 2}.get(x, x)) for x in
                (saturated if isinstance(saturated, (list, tuple)) else [saturated] * len(configs))]
    if len(sat_list) != len(configs):
        raise LqsError("saturated", saturated, f"must be a bool or one per configuration ({len(configs)})")
    if key is None:
        key = jax.random.key(mc.seed)

    caps = [capacity_disagg(workload, d) for d, _ in configs]
    GP, GD = max(d.n_prefill for d in deps), max(d.n_decode for d in deps)

    def sizes(scale):
        from .._disagg import DecodeStation, PrefillStation

        m = workload.expected_g(1)
        kp = max(_pool_K(PrefillStation(workload), d.prefill, x / d.n_prefill, K,
                         (m.mean_prompt_tokens / d.prefill.prefill_chunk + 3) * typical_b(workload, d.prefill)
                         + float(d.transfer.time_s(workload.max_total)))
                 for d, x in configs)
        kd = max(_pool_K(DecodeStation(workload), d.decode, x / d.n_decode, K,
                         (m.mean_output_tokens + 3) * typical_b(workload, d.decode)
                         + float(d.transfer.time_s(workload.max_total)))
                 for d, x in configs)
        return kp * scale, kd * scale

    t0 = time.perf_counter()
    scale = 1
    while True:
        KP, KD = sizes(scale)
        res = _run(workload, configs, caps, mc, key, GP, GD, KP, KD, kind, arrivals, t_warm, t_stop, t_lat_end, record,
                   trace, progress, sat_list)
        lost = res["tot"]["lost"].reshape(len(configs), -1).sum(axis=1)
        # a configuration above μ_PD is unstable: its backlog fills any buffer, so only the others are retried
        if scale >= 2**retries or K is not None or not any(n and x < c.mu_pd_rps for n, (_, x), c in
                                                            zip(lost, configs, caps)):
            break
        scale *= 2
    wall = time.perf_counter() - t0
    out = _collect(workload, configs, caps, mc, res, t_warm, t_stop, t_lat_end, wall, arrivals)
    out.configs = configs
    return out


def _run(workload, configs, caps, mc, key, GP, GD, KP, KD, kind, arrivals, t_warm, t_stop, t_lat_end, record, trace,
         progress, sat_list=None):
    R = mc.trials
    n = len(configs)
    pcfgs = [product(workload, d.prefill, [x])[0] for d, x in configs]
    dcfgs = [product(workload, d.decode, [x])[0] for d, x in configs]
    pP, pD = build_params(pcfgs, mc), build_params(dcfgs, mc)

    def rep(v, dt):
        return jnp.asarray(np.repeat(np.asarray(v, dt), R))

    keys = jax.random.split(key, n * R)
    arr_t = None
    if kind == "instants":
        L = int(max(x for _, x in configs) * t_stop * 1.25 + 10 * math.sqrt(max(x for _, x in configs) * t_stop)
                + 64)
        tk = keys.reshape(n, R)
        arr_t = jnp.asarray(np.concatenate([arrivals.engine_instants(x, L, tk[i]) for i, (_, x) in
                                            enumerate(configs)], axis=0))
    inv = [0.0 if math.isinf(d.transfer.tokens_per_s) else 1.0 / d.transfer.tokens_per_s for d, _ in configs]
    prm = NetParams(lam=rep([x for _, x in configs], np.float32), P=pP, D=pD,
                    n_p=rep([d.n_prefill for d, _ in configs], np.int32),
                    n_d=rep([d.n_decode for d, _ in configs], np.int32),
                    tau0=rep([d.transfer.latency_s for d, _ in configs], np.float32),
                    inv_rate=rep(inv, np.float32), t_warm=rep([t_warm] * n, np.float32),
                    t_stop=rep([t_stop] * n, np.float32), t_lat_end=rep([t_lat_end] * n, np.float32),
                    workload=pP.workload, arr_t=arr_t, sat=rep(sat_list or [False] * n, np.int32))
    d0 = configs[0][0]
    cfg = NetConfig(GP=GP, GD=GD, prefill=_pool_engine(d0.prefill, KP), decode=_pool_engine(d0.decode, KD),
                    arrivals=kind, record=record, trace=trace, saturated=bool(sat_list and any(sat_list)))
    init, step, count = _program(cfg)
    st = init(keys, prm)
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=round(t_stop), unit="sim-s", desc="coupled network")
    calls = 0
    while True:
        st, tr = step(st, prm)
        calls += 1
        if trace:
            rows.append(jax.tree_util.tree_map(np.asarray, tr))
        t_now = np.asarray(st.tot.t_now)
        if bar is not None:
            bar.n = round(min(float(t_now.min()), t_stop))
            bar.refresh()
        if bool(np.all(t_now >= t_stop)):
            break
    if bar is not None:
        bar.close()
    tot = {f: np.asarray(getattr(st.tot, f)) for f in st.tot._fields}
    n_sys, n_cens = count(st, prm)
    tot["in_system"], tot["censored"] = np.asarray(n_sys), np.asarray(n_cens)
    tot["conserved"] = tot["arrivals"] == tot["completions"] + tot["lost"] + tot["in_system"]
    out = dict(tot=tot, hist=np.asarray(st.hist), lat_sum=np.asarray(st.lat_sum), n_lat=np.asarray(st.n_lat),
               cfg=cfg, calls=calls, state=st,
               steps_p=np.asarray(st.PP.steps), steps_d=np.asarray(st.DP.steps))
    if record:
        out["records"] = np.asarray(st.rec)
    if trace:
        out["trace"] = {k: np.concatenate([r[k] for r in rows], axis=1) for k in rows[0]}
    return out


def _collect(workload, configs, caps, mc, res, t_warm, t_stop, t_lat_end, wall, arrivals) -> NetworkResult:
    R = mc.trials
    n = len(configs)
    cfg = res["cfg"]
    tot = {k: v.reshape(n, R) for k, v in res["tot"].items()}
    hist = res["hist"].reshape(n, R, len(NET_LAT), -1)
    lat_sum = res["lat_sum"].reshape(n, R, len(NET_LAT))
    n_lat = res["n_lat"].reshape(n, R)
    win = t_stop - t_warm
    trows, srows = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, ((d, lam), cap) in enumerate(zip(configs, caps)):
            base = dict(config=i, layout=f"{d.n_prefill}P:{d.n_decode}D", n_prefill=d.n_prefill,
                        n_decode=d.n_decode, lam_rps=lam)
            q_tr = hist_quantiles(hist[i], LAT_Q, cfg.prefill)  # [R, 6, 3]
            no_transfer = d.transfer.latency_s == 0 and math.isinf(d.transfer.tokens_per_s)
            if no_transfer:  # every transfer took 0 s: bin 0 ([0, lat_lo)) would interpolate to lat_lo / 2
                q_tr[:, NET_LAT.index("transfer")] = 0.0
            for r in range(R):
                row = dict(base, trial=r, throughput_rps=tot["completions_w"][i, r] / win,
                           prefill_throughput_rps=tot["prefills_w"][i, r] / win,
                           arrival_rate_rps=tot["arrivals_w"][i, r] / win,
                           observed_drift_rps=(tot["arrivals_w"][i, r] - tot["completions_w"][i, r]) / win,
                           requests=int(n_lat[i, r]), arrivals=int(tot["arrivals"][i, r]),
                           completions=int(tot["completions"][i, r]), in_system_final=int(tot["in_system"][i, r]),
                           lost=int(tot["lost"][i, r]), lat_lost=int(tot["lat_lost"][i, r]),
                           censored=int(tot["censored"][i, r]), starved_prefill=int(tot["starved_p"][i, r]),
                           starved_decode=int(tot["starved_d"][i, r]),
                           reserve_over=int(tot["reserve_over"][i, r]), violations=int(tot["violations"][i, r]),
                           conserved=bool(tot["conserved"][i, r]), mem_max_prefill=int(tot["mem_max_p"][i, r]),
                           mem_max_decode=int(tot["mem_max_d"][i, r]), transit_max=int(tot["transit_max"][i, r]),
                           held_max_tokens=int(tot["held_max"][i, r]), swaps_prefill=int(tot["swaps_p"][i, r]),
                           swaps_decode=int(tot["swaps_d"][i, r]))
                for m, name in enumerate(NET_LAT):
                    row[f"{name}_mean_s"] = lat_sum[i, r, m] / n_lat[i, r] if n_lat[i, r] else np.nan
                    for qi, q in enumerate(LAT_Q):
                        row[f"{name}_p{round(q * 100)}_s"] = q_tr[r, m, qi]
                trows.append(row)
            h = hist[i].sum(axis=0)
            q_all = hist_quantiles(h, LAT_Q, cfg.prefill)
            if no_transfer:
                q_all[NET_LAT.index("transfer")] = 0.0
            thr = tot["completions_w"][i] / win
            reasons = []
            if tot["lost"][i].sum():
                reasons.append(f"{int(tot['lost'][i].sum())} requests found a server's slots full (K = "
                               f"{cfg.KP} prefill, {cfg.KD} decode)")
            if tot["reserve_over"][i].sum():
                reasons.append(f"{int(tot['reserve_over'][i].sum())} decode steps whose transfer reservations alone "
                               "exceeded M")
            if tot["censored"][i].sum():
                reasons.append(f"{int(tot['censored'][i].sum())} requests of the latency window unfinished at the "
                               "horizon (censored: a longer horizon, or the configuration is overloaded)")
            if tot["lat_lost"][i].sum():
                reasons.append(f"{int(tot['lat_lost'][i].sum())} finished requests beyond {cfg.lat_per_event} at one "
                               "decode step boundary were not binned")
            if tot["ran_out"][i].sum():
                reasons.append("the given arrival instants ran out before the horizon")
            if tot["violations"][i].sum():
                reasons.append(f"{int(tot['violations'][i].sum())} steps with memory above M")
            if not tot["conserved"][i].all():
                reasons.append("conservation broken (arrivals ≠ completions + lost + in system)")
            srow = dict(base, trials=R, horizon_s=t_stop, warmup_s=t_warm, latency_window_end_s=t_lat_end,
                        censored=int(tot["censored"][i].sum()), throughput_rps=float(thr.mean()),
                        throughput_se_rps=float(thr.std(ddof=1) / math.sqrt(R)) if R > 1 else np.nan,
                        observed_drift_rps=float(((tot["arrivals_w"][i] - tot["completions_w"][i]) / win).mean()),
                        requests=int(n_lat[i].sum()), lost=int(tot["lost"][i].sum()),
                        violations=int(tot["violations"][i].sum()), conserved=bool(tot["conserved"][i].all()),
                        mem_max_prefill=int(tot["mem_max_p"][i].max()), mem_max_decode=int(tot["mem_max_d"][i].max()),
                        transit_max=int(tot["transit_max"][i].max()),
                        mu_prefill_rps=cap.mu_prefill_rps, mu_decode_rps=cap.mu_decode_rps, mu_pd_rps=cap.mu_pd_rps,
                        mu_pd_stable_rps=cap.mu_pd_stable_rps, binding=cap.binding,
                        reliable=not reasons, unreliable_reason="; ".join(reasons))
            for m, name in enumerate(NET_LAT):
                srow[f"{name}_mean_s"] = float(lat_sum[i, :, m].sum() / max(n_lat[i].sum(), 1)) if n_lat[i].sum() \
                    else np.nan
                for qi, q in enumerate(LAT_Q):
                    srow[f"{name}_p{round(q * 100)}_s"] = q_all[m, qi]
            srows.append(srow)
    config = dict(model="coupled disaggregated network (kernels/network.py)",
                  deployments=[d.describe() for d, _ in configs], lams_rps=[x for _, x in configs],
                  monte_carlo=dict(trials=R, seed=mc.seed), horizon_s=t_stop, warmup_s=t_warm,
                  latency_window_end_s=t_lat_end,
                  arrivals="Poisson" if arrivals is None else arrivals.describe(),
                  sizing=dict(K_prefill=cfg.KP, K_decode=cfg.KD, servers_prefill=cfg.GP, servers_decode=cfg.GD,
                              events_per_call=cfg.events_per_call, calls=res["calls"],
                              events=int(res["tot"]["events"].sum())),
                  latency_rows=list(NET_LAT), timing=dict(wall_s=wall))
    return NetworkResult(trials=pd.DataFrame(trows), summary=pd.DataFrame(srows), hist=hist, config=config,
                         net_config=cfg, records=res.get("records"), trace=res.get("trace"))

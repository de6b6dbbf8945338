"""The coupled disaggregated network on one clock (docs/model.md, "Disaggregated prefill and decode"): a pool of
prefill servers and a pool of decode servers, each server stepping with its own batch time, a request entering
the decode pool when its KV transfer ends. XLA path only (the fused kernel runs one colocated server per trial).

The network is simulated event by event. An event is one of, in this order at equal instants:

0. **a prefill server's step boundary** (the end of its step n, the start of its step n+1): the requests whose last
   prefill chunk ran in step n get their first token (TTFT) and start their transfer (their s KV tokens stay held
   on the server until it ends, and wait to be routed); finished slots are squeezed out; step n+1 is scheduled by
   the colocated step's own scheduler (kernels/step.serve) under M minus the held tokens, and its batch time drawn;
1. **a decode server's step boundary**: the requests that finished in step n complete (their latencies are binned);
   the transfers that ended before the boundary join the server's arrival order (in the order they ended); step
   n+1 is scheduled under M minus the tokens reserved for the transfers still running;
2. **a routing**: one request whose prefill ended at this instant is sent to a decode server chosen by the decode
   pool's routing, where its s tokens are reserved until its transfer ends at T + τ(s), τ(s) = τ0 + s/r;
3. **an arrival** to the network, routed on arrival to a prefill server by the prefill pool's routing.

A request that arrives, or whose transfer ends, exactly at a step boundary joins at the end of the following step
(the colocated rule: arrivals during [t, t + b) join at t + b). Each iteration of the scan handles the earliest
event of one trial: it reads one prefill server and one decode server (a gather), updates them, and writes them
back, so an iteration costs O(K) whatever the pool sizes. Servers beyond n_prefill / n_decode (a traced count:
every P:D split of G GPUs shares one program) never step and are never routed to.

Every capacity limit is counted: ``lost`` counts requests that found a server's slots full (the result is then
unreliable), ``violations`` memory above M on a server at a step (transfer holds and reservations included) and
broken conservation (checked on the host after every call).
"""


from __future__ import annotations

import jax
import jax.numpy as jnp

from . import rng
from .compact import _bin_index
from .netserver import (_decode_boundary, _insert, _latencies, _pick, _prefill_boundary, _put, _route, _take,
                        _take_slots)
from .netstate import (EV_ARRIVAL, EV_DECODE, EV_NONE, EV_PREFILL, EV_ROUTE, F_PDONE, NET_LAT,  # noqa: F401
                       NetConfig, NetParams, NetState, NetTotals, PSlots, init_net)  # init_net: re-exported
from .state import draw_lengths
from .step import kahan_add


def net_event(st: NetState, prm: NetParams, cfg: NetConfig):
    """The earliest event of one trial (module docstring). Returns the new state and the event's trace row."""
    inf = jnp.float32(jnp.inf)
    GP, GD = cfg.GP, cfg.GD
    PP, DP = st.PP, st.DP
    act_p = jnp.arange(GP) < prm.n_p
    tP = jnp.where(act_p, PP.t_end, inf)
    tD = jnp.where(jnp.arange(GD) < prm.n_d, DP.t_end, inf)
    tR = jnp.where(act_p & (PP.n_aux > 0), PP.t, inf)
    mP, mD, mR, tA = jnp.min(tP), jnp.min(tD), jnp.min(tR), st.t_next
    t_star = jnp.minimum(jnp.minimum(mP, mD), jnp.minimum(mR, tA))
    run = t_star < prm.t_stop
    isP = run & (mP == t_star)
    isD = run & ~isP & (mD == t_star)
    isR = run & ~isP & ~isD & (mR == t_star)
    isA = run & ~isP & ~isD & ~isR
    T = t_star
    tot = st.tot

    # the arrival's prefill server
    rid_a = tot.arrivals
    u_rp = rng.uniform(st.keys[2], rid_a, 0)
    g_arr, rr_p_a = _route(prm.P.routing, prm.n_p, PP.n_in, PP.mem + prm.P.prefill_chunk * PP.joined, st.rr_p, u_rp)
    gp = jnp.select([isP, isR], [jnp.argmin(tP).astype(jnp.int32), jnp.argmin(tR).astype(jnp.int32)], g_arr)
    sp0, pl0 = _take(st.P, gp), _take(PP, gp)

    # event 0: the prefill boundary
    sp_b, pl_b, info_p = _prefill_boundary(sp0, pl0, gp, T, prm, cfg, st.keys, tot.arrivals)

    # event 2: the routing of the first request awaiting it on gp
    KP = cfg.KP
    iota_p = jnp.arange(KP, dtype=jnp.int32)
    pend = (iota_p < pl0.n_used) & (sp0.pend != 0)
    j = jnp.argmax(pend).astype(jnp.int32)
    rid_r = sp0.rid[j]
    u_rd = rng.uniform(st.keys[2], rid_r, 1)
    g_dst, rr_d_r = _route(prm.D.routing, prm.n_d, DP.n_in, DP.mem + DP.joined, st.rr_d, u_rd)
    sp_r = sp0._replace(pend=sp0.pend.at[j].set(0))
    pl_r = pl0._replace(n_aux=pl0.n_aux - 1)
    new = dict(s=sp0.s[j], o=sp0.o[j], rid=rid_r, t_arr=sp0.t_arr[j], t_first_p=sp0.t_first[j], t_ttft=sp0.t_ttft[j],
               t_enter=sp0.t_rel[j])

    # event 3: the arrival appended to gp
    s_a, o_a, k_a = draw_lengths(prm.workload, st.keys[1], rid_a, prm.P.prefill_chunk)
    fits_a = pl0.n_used < KP
    at = (iota_p == pl0.n_used) & fits_a
    vals = dict(s=s_a, k=k_a, u=0, flags=0, t_first=0.0, o=o_a, rid=rid_a, t_arr=T, t_ttft=0.0, t_rel=jnp.inf, pend=0)
    sp_a = PSlots(**{f: jnp.where(at, jnp.asarray(vals[f], getattr(sp0, f).dtype), getattr(sp0, f))
                     for f in PSlots._fields})
    fa = fits_a.astype(jnp.int32)
    pl_a = pl0._replace(n_used=pl0.n_used + fa, n_in=pl0.n_in + fa, joined=pl0.joined + fa)

    sp1 = _pick(isP, sp_b, _pick(isR, sp_r, _pick(isA, sp_a, sp0)))
    pl1 = _pick(isP, pl_b, _pick(isR, pl_r, _pick(isA, pl_a, pl0)))
    P_new, PP_new = _put(st.P, gp, sp1), _put(PP, gp, pl1)

    # the decode server: its boundary (event 1), or the routed request's destination (event 2)
    gd = jnp.where(isD, jnp.argmin(tD).astype(jnp.int32), g_dst)
    sd0, dl0 = _take(st.D, gd), _take(DP, gd)
    sd_b, dl_b, info_d, done, fin = _decode_boundary(sd0, dl0, gd, T, prm, cfg, st.keys, tot.arrivals)
    sd_r, dl_r, fits_r = _insert(sd0, dl0, new, cfg)
    sd1 = _pick(isD, sd_b, _pick(isR, sd_r, sd0))
    dl1 = _pick(isD, dl_b, _pick(isR, dl_r, dl0))
    D_new, DP_new = _put(st.D, gd, sd1), _put(DP, gd, dl1)

    # latencies of the requests that finished at the decode boundary (those that arrived in the window): the first
    # cfg.lat_per_event of them gathered (binning every slot would cost K logarithms an event), the rest counted
    count = done & isD & (fin.t_arr >= prm.t_warm) & (fin.t_arr < prm.t_lat_end)
    F = cfg.lat_per_event
    csum = jnp.cumsum(count.astype(jnp.int32))
    n_count = csum[-1]
    pick = jnp.minimum(jnp.searchsorted(csum, jnp.arange(1, F + 1, dtype=jnp.int32)), cfg.KD - 1)
    ok = jnp.arange(F) < n_count
    lat = _latencies(_take_slots(fin, pick), T)  # [6, F]
    bins = _bin_index(lat, cfg.prefill)
    rows = jnp.broadcast_to(jnp.arange(len(NET_LAT))[:, None], bins.shape)
    hist = st.hist.at[rows, bins].add(jnp.broadcast_to(ok, bins.shape).astype(jnp.int32))
    lat_sum = st.lat_sum + jnp.sum(jnp.where(ok, lat, 0.0), axis=1)
    n_lat = st.n_lat + jnp.minimum(n_count, F)
    lat_lost = jnp.maximum(n_count - F, 0)

    # the next arrival
    if cfg.arrivals == "instants":
        L = prm.arr_t.shape[-1]
        nxt = prm.arr_t[jnp.minimum(rid_a + 1, L - 1)]
        ran_out = isA & (rid_a + 1 >= L - 1)
        t_next, t_next_c = jnp.where(ran_out, inf, nxt), st.t_next_c
    else:
        gap = -jnp.log(rng.uniform(st.keys[0], rid_a + 1, 0)) / prm.lam
        t_next, t_next_c = kahan_add(st.t_next, st.t_next_c, gap)
        ran_out = jnp.bool_(False)
    t_next = jnp.where(isA, t_next, st.t_next)
    t_next_c = jnp.where(isA, t_next_c, st.t_next_c)

    i32 = lambda x: x.astype(jnp.int32)  # noqa: E731
    in_w = T >= prm.t_warm
    n_fin = info_d["n_done"] * i32(isD)
    n_new = info_p["n_new"] * i32(isP) + info_d["n_new"] * i32(isD)  # saturated runs: the slots' refills
    tot = NetTotals(
        arrivals=tot.arrivals + i32(isA) + n_new, arrivals_w=tot.arrivals_w + i32(isA & in_w) + n_new * i32(in_w),
        completions=tot.completions + n_fin, completions_w=tot.completions_w + n_fin * i32(in_w),
        prefills=tot.prefills + info_p["pdone"] * i32(isP), prefills_w=tot.prefills_w + info_p["pdone"] * i32(isP & in_w),
        routed=tot.routed + i32(isR & fits_r),
        lost=tot.lost + i32(isA & ~fits_a) + i32(isR & ~fits_r), ran_out=tot.ran_out + i32(ran_out),
        lat_lost=tot.lat_lost + lat_lost,
        starved_p=tot.starved_p + info_p["starved"] * i32(isP), starved_d=tot.starved_d + info_d["starved"] * i32(isD),
        reserve_over=tot.reserve_over + info_d["over"] * i32(isD),
        violations=tot.violations + info_p["viol"] * i32(isP) + info_d["viol"] * i32(isD),
        swaps_p=tot.swaps_p + info_p["swaps"] * i32(isP), swaps_d=tot.swaps_d + info_d["swaps"] * i32(isD),
        mem_max_p=jnp.maximum(tot.mem_max_p, info_p["mem"] * i32(isP)),
        mem_max_d=jnp.maximum(tot.mem_max_d, info_d["mem"] * i32(isD)),
        transit_max=jnp.maximum(tot.transit_max, jnp.where(isR, dl1.n_aux, 0)),
        held_max=jnp.maximum(tot.held_max, info_p["held"] * i32(isP)),
        events=tot.events + i32(run), t_now=jnp.where(run, T, t_star))
    rec = st.rec
    if cfg.record:
        R = cfg.record

        def put(rec, row, idx, v, c):
            return rec.at[row, jnp.where(c & (idx < R), idx, R)].set(jnp.asarray(v, jnp.float32), mode="drop")

        rec = put(rec, 0, rid_a, T, isA & fits_a)
        rec = put(rec, 6, rid_a, gp, isA & fits_a)
        rec = put(rec, 1, rid_r, new["t_first_p"], isR)
        rec = put(rec, 2, rid_r, new["t_ttft"], isR)
        rec = put(rec, 3, rid_r, new["t_enter"], isR)
        rec = put(rec, 7, rid_r, g_dst, isR & fits_r)
        KD = cfg.KD
        for row, v in ((4, fin.t_first), (5, jnp.full((KD,), T))):
            idx = jnp.where(done & isD & (fin.rid < R), fin.rid, R)
            rec = rec.at[row, idx].set(v, mode="drop")
    new_st = NetState(P=P_new, D=D_new, PP=PP_new, DP=DP_new, t_next=t_next, t_next_c=t_next_c,
                      rr_p=jnp.where(isA, rr_p_a, st.rr_p), rr_d=jnp.where(isR, rr_d_r, st.rr_d), keys=st.keys,
                      tot=tot, hist=hist, lat_sum=lat_sum, n_lat=n_lat, rec=rec)
    etype = jnp.select([isP, isD, isR, isA], [EV_PREFILL, EV_DECODE, EV_ROUTE, EV_ARRIVAL], EV_NONE)
    row = dict(type=etype, server=jnp.select([isD], [gd], gp), t=T,
               mem=jnp.where(isP, info_p["mem"], jnp.where(isD, info_d["mem"], 0)),
               n_sched=jnp.where(isP, info_p["n_sched"], jnp.where(isD, info_d["n_sched"], 0)),
               b=jnp.where(isP, info_p["b"], jnp.where(isD, info_d["b"], 0.0)),
               target=jnp.where(isR, g_dst, jnp.where(isA, g_arr, -1)),
               rid=jnp.where(isR, rid_r, jnp.where(isA, rid_a, -1)))
    return new_st, row


def run_events(st: NetState, prm: NetParams, cfg: NetConfig, n: int | None = None):
    """cfg.events_per_call events (or n) of one trial; with cfg.trace every event's row."""
    def body(s, _):
        s, row = net_event(s, prm, cfg)
        return s, (row if cfg.trace else None)

    return jax.lax.scan(body, st, None, length=cfg.events_per_call if n is None else n)


def unfinished(st: NetState, t0, t1) -> jax.Array:
    """Requests of one trial still in the network that arrived in [t0, t1) (the latency window: censored)."""
    P, D, PP, DP = st.P, st.D, st.PP, st.DP
    KP, KD = P.s.shape[-1], D.s.shape[-1]
    occ_p = jnp.arange(KP) < PP.n_used[:, None]
    at_p = occ_p & ((P.u < P.k) | ((P.flags & F_PDONE) != 0) | (P.pend != 0))
    reg_d = jnp.arange(KD) < (DP.n_used + DP.n_aux)[:, None]
    return (jnp.sum((at_p & (P.t_arr >= t0) & (P.t_arr < t1)).astype(jnp.int32))
            + jnp.sum((reg_d & (D.t_arr >= t0) & (D.t_arr < t1)).astype(jnp.int32)))


def in_system(st: NetState) -> jax.Array:
    """Requests in the network of one trial (its leaves without the trial axis): waiting or prefilling, awaiting
    routing, in transfer to a decode server, waiting or decoding there."""
    P, PP, DP = st.P, st.PP, st.DP
    KP = P.s.shape[-1]
    occ_p = jnp.arange(KP) < PP.n_used[:, None]
    at_p = jnp.sum((occ_p & ((P.u < P.k) | ((P.flags & F_PDONE) != 0) | (P.pend != 0))).astype(jnp.int32))
    # a decode slot whose last step is running completes (is counted) at the server's next boundary
    return at_p + jnp.sum(DP.n_used + DP.n_aux)

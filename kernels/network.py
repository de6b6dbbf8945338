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

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import rng
from .compact import _bin_index
from .state import F_SCHED, EngineConfig, Params, Slots, State, draw_lengths, empty, replace_paths
from .step import kahan_add, serve

#: the network's latency histograms, in row order: the prefill queueing wait, TTFT (end of the last prefill
#: step), E2E (transfer included), TPOT ((E2E − TTFT)/(o − 1)), the transfer (prefill end → decode arrival order)
#: and the decode queueing wait (transfer end → first decode step)
NET_LAT = ("wait", "ttft", "e2e", "tpot", "transfer", "decode_wait")
F_PDONE = 8  # the request's last prefill chunk ran in this step (prefill pool)
F_DONE = 16  # the request's last decode step ran in this step (decode pool)
EV_PREFILL, EV_DECODE, EV_ROUTE, EV_ARRIVAL, EV_NONE = 0, 1, 2, 3, -1
_BIG = np.int32(2**30)
STREAM_NET_ARR = 0x452821E7  # the network's inter-arrival gaps (counter = request index)
STREAM_NET_ROUTE = 0x38D01377  # the random routers (counter = request index; sub 0 prefill, 1 decode)
STREAM_NET_BATCH_P = 0xBE5466CF  # prefill server g's batch time at its step n (counter = n, sub = 2g, 2g + 1)
STREAM_NET_BATCH_D = 0x34E90C6D  # decode server g's


@dataclass(frozen=True)
class NetConfig:
    """Static configuration of a network program (hashable; changing it recompiles)."""

    GP: int  # prefill servers per trial (array size: the split's n_prefill ≤ GP are active)
    GD: int  # decode servers per trial
    prefill: EngineConfig  # the prefill pool's scheduler options (K = slots per server, policy, budget, ...)
    decode: EngineConfig
    events_per_call: int = 8192
    arrivals: str = "poisson"  # "poisson", or "instants" (NetParams.arr_t)
    lat_per_event: int = 16  # finished requests binned per decode boundary (more: counted in lat_lost)
    record: int = 0  # per-request instants of the first `record` requests (tests)
    trace: bool = False  # return every event's (type, server, instant, memory, scheduled, b, target)
    saturated: bool = False  # configurations with NetParams.sat = 1 have no external arrivals: every prefill
    #                          server's free slots are refilled at each of its step boundaries (a permanent backlog)

    @property
    def KP(self) -> int:
        return self.prefill.K

    @property
    def KD(self) -> int:
        return self.decode.K

    @property
    def bin_edges(self) -> np.ndarray:
        return self.prefill.bin_edges


class NetParams(NamedTuple):
    """Dynamic parameters of one (configuration, trial): vmapped, so a grid of λ, splits and pool parameters is one
    program."""

    lam: jax.Array  # float32[] arrivals per second (Poisson)
    P: Params  # the prefill pool's server parameters (M, prefill_chunk, budget, batch, routing, ...)
    D: Params  # the decode pool's
    n_p: jax.Array  # int32[] active prefill servers
    n_d: jax.Array  # int32[] active decode servers
    tau0: jax.Array  # float32[] transfer latency τ0 (s)
    inv_rate: jax.Array  # float32[] 1 / r (s per token)
    t_warm: jax.Array  # float32[] the measurement window opens (requests arriving after it are binned)
    t_stop: jax.Array  # float32[] horizon: no event at or after it is run
    t_lat_end: jax.Array  # float32[] the latency window: requests arriving in [t_warm, t_lat_end)
    workload: object  # the network's lengths (lqs.Workload pytree)
    arr_t: jax.Array = None  # float32[L] given arrival instants (cfg.arrivals == "instants"), +inf padded
    sat: jax.Array = None  # int32[] 1: this configuration's prefill servers refill their slots (cfg.saturated)


class PSlots(NamedTuple):
    """A prefill pool's slots, [GP, KP] per trial, in arrival order."""

    s: jax.Array
    k: jax.Array  # ⌈s/ŝ_P⌉
    u: jax.Array  # steps served (the request's o is 0 on the prefill server: it ends with its prefill)
    flags: jax.Array
    t_first: jax.Array  # first scheduled
    o: jax.Array  # the request's output tokens (carried to the decode server)
    rid: jax.Array
    t_arr: jax.Array
    t_ttft: jax.Array
    t_rel: jax.Array  # transfer end: its KV is held here until then (+inf before the prefill ends)
    pend: jax.Array  # int32 0/1: prefill ended, not yet routed


class DSlots(NamedTuple):
    """A decode pool's slots, [GD, KD] per trial: the arrival order (n_used), then the transfers still running,
    sorted by their end (n_transit)."""

    s: jax.Array
    o: jax.Array
    k: jax.Array  # 0 (prefilled); ⌈s/ŝ_D⌉ once recompute preempts it (its prefill is redone here)
    u: jax.Array
    flags: jax.Array
    t_first: jax.Array  # first decode step
    rid: jax.Array
    t_arr: jax.Array
    t_first_p: jax.Array  # first prefill step
    t_ttft: jax.Array
    t_enter: jax.Array  # transfer end


class Pool(NamedTuple):
    """Per-server scalars, [G] per trial."""

    n_used: jax.Array  # int32 slots in use (prefill: every occupied slot; decode: the arrival order only)
    n_aux: jax.Array  # int32 prefill: requests awaiting routing; decode: transfers running
    n_in: jax.Array  # int32 requests in system at the server (routing's jsq): waiting or in service, transfers to it
    t: jax.Array  # float32 start of the current step (compensated: t_c)
    t_c: jax.Array
    t_end: jax.Array  # float32 its end (compensated: t_end_c)
    t_end_c: jax.Array
    steps: jax.Array  # int32 steps run
    mem: jax.Array  # int32 memory in use in the current step (holds / reservations included)
    joined: jax.Array  # int32 since the step began: arrivals (prefill), tokens reserved (decode) (least_kv)


class NetTotals(NamedTuple):
    arrivals: jax.Array
    arrivals_w: jax.Array  # arrivals in the window
    completions: jax.Array
    completions_w: jax.Array  # completions at instants in the window
    prefills: jax.Array  # prefills ended
    prefills_w: jax.Array
    routed: jax.Array
    lost: jax.Array  # requests that found a server's slots full (dropped: the result is unreliable)
    ran_out: jax.Array  # given instants ran out before the horizon
    lat_lost: jax.Array  # finished requests beyond cfg.lat_per_event at one decode boundary (not binned)
    starved_p: jax.Array  # saturated runs: prefill steps whose schedule reached every slot with memory to spare
    starved_d: jax.Array  # the same on the decode servers (meaningful where the decode pool is the saturated one)
    reserve_over: jax.Array  # decode steps whose transfer reservations alone exceeded M (not in violations)
    violations: jax.Array  # memory above M on a server at a step
    swaps_p: jax.Array
    swaps_d: jax.Array
    mem_max_p: jax.Array
    mem_max_d: jax.Array
    transit_max: jax.Array  # most transfers running to one decode server
    held_max: jax.Array  # most KV tokens held on one prefill server for transfers
    events: jax.Array
    t_now: jax.Array  # instant of the last event run (or of the next one, once frozen at the horizon)


class NetState(NamedTuple):
    P: PSlots
    D: DSlots
    PP: Pool
    DP: Pool
    t_next: jax.Array  # next arrival instant (compensated: t_next_c)
    t_next_c: jax.Array
    rr_p: jax.Array
    rr_d: jax.Array
    keys: jax.Array  # uint32[6]: arrivals, lengths, routing, prefill batch, decode batch, spare
    tot: NetTotals
    hist: jax.Array  # int32[6, n_bins]
    lat_sum: jax.Array  # float32[6]
    n_lat: jax.Array  # int32[]
    rec: jax.Array  # float32[8, R]: t_arr, t_first, t_ttft, t_enter, t_first_d, t_done, prefill server, decode server


def _keys(key):
    kd = jax.random.key_data(key).astype(jnp.uint32).reshape(-1)
    k0, k1 = kd[0], kd[-1]
    streams = (STREAM_NET_ARR, rng.STREAM_LENGTHS, STREAM_NET_ROUTE, STREAM_NET_BATCH_P, STREAM_NET_BATCH_D,
               rng.STREAM_OFFSET)
    return jnp.stack([rng.stream_key(k0, k1, s) for s in streams])


def tau_of(s, prm: NetParams):
    """τ(s) = τ0 + s/r in float32, the product unfused (the same bits on every backend)."""
    return prm.tau0 + rng.unfused_mul(prm.inv_rate, s.astype(jnp.float32), s)


def first_gap(keys, prm: NetParams, cfg: NetConfig):
    if cfg.saturated:
        return jnp.where(prm.sat != 0, jnp.inf, -jnp.log(rng.uniform(keys[0], jnp.int32(0), 0)) / prm.lam)
    if cfg.arrivals == "instants":
        return prm.arr_t[0]
    return -jnp.log(rng.uniform(keys[0], jnp.int32(0), 0)) / prm.lam


def init_net(key, prm: NetParams, cfg: NetConfig) -> NetState:
    GP, GD, KP, KD = cfg.GP, cfg.GD, cfg.KP, cfg.KD
    zi = lambda g, k: jnp.zeros((g, k), jnp.int32)  # noqa: E731
    zf = lambda g, k: jnp.zeros((g, k), jnp.float32)  # noqa: E731
    P = PSlots(zi(GP, KP), zi(GP, KP), zi(GP, KP), zi(GP, KP), zf(GP, KP), zi(GP, KP), zi(GP, KP), zf(GP, KP),
               zf(GP, KP), jnp.full((GP, KP), jnp.inf, jnp.float32), zi(GP, KP))
    D = DSlots(*(zi(GD, KD) for _ in range(5)), zf(GD, KD), zi(GD, KD), *(zf(GD, KD) for _ in range(4)))

    def pool(G, n):
        z = jnp.zeros((G,), jnp.int32)
        zf1 = jnp.zeros((G,), jnp.float32)
        # every active server starts a step at t = 0 (the boundary at 0 schedules its first, empty, step)
        t_end = jnp.where(jnp.arange(G) < n, 0.0, jnp.inf).astype(jnp.float32)
        return Pool(z, z, z, zf1, zf1, t_end, zf1, z, z, z)

    keys = _keys(key)
    i0 = jnp.int32(0)
    tot = NetTotals(*([i0] * 21), t_now=jnp.float32(0.0))
    R = max(cfg.record, 1)
    rec = jnp.full((8, R), jnp.nan, jnp.float32)
    return NetState(P=P, D=D, PP=pool(GP, prm.n_p), DP=pool(GD, prm.n_d), t_next=first_gap(keys, prm, cfg),
                    t_next_c=jnp.float32(0.0), rr_p=i0, rr_d=i0, keys=keys, tot=tot,
                    hist=jnp.zeros((len(NET_LAT), cfg.prefill.n_bins), jnp.int32),
                    lat_sum=jnp.zeros((len(NET_LAT),), jnp.float32), n_lat=i0, rec=rec)


def _take(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def _put(tree, i, sub):
    return jax.tree_util.tree_map(lambda x, y: x.at[i].set(y), tree, sub)


def _pick(c, a, b):
    """where(c, a, b) over two trees of one structure."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)


def _compact(tree, keep, K):
    """The slots of ``tree`` (leaves [K]) with ``keep``, squeezed to the front in order; the rest zero."""
    pos = jnp.where(keep, jnp.cumsum(keep.astype(jnp.int32)) - 1, K)
    return jax.tree_util.tree_map(lambda x: jnp.zeros_like(x).at[pos].set(x, mode="drop"), tree)


def _serve(s, o, k, u, flags, t_first, n_used, T, M_eff, p: Params, ecfg: EngineConfig, backlog: bool = False):
    """kernels/step.serve on one server's slots, under M_eff (``backlog``: requests wait beyond the slots, so a
    schedule that reaches every slot with memory to spare counts as starved)."""
    st = replace_paths(empty(State), {
        "slots": Slots(s=s, o=o, k=k, u=u, flags=flags, t_arr=None, t_first=t_first, t_ttft=None, t_done=None,
                       work=None, u_off=None, uu=None),
        "queue.n_used": n_used, "queue.overflow": jnp.asarray(backlog).astype(jnp.int32), "clock.t": T})
    return serve(st, p._replace(M=M_eff), ecfg)


def _draw_b(p: Params, skey, step_n, g, sv):
    ub1 = rng.uniform(skey, step_n, 2 * g)
    ub2 = rng.uniform(skey, step_n, 2 * g + 1)
    return p.batch.draw(ub1, ub2, sv.n_pre_tok, sv.n_dec_tok, sv.mem).astype(jnp.float32)


def _route(rule, n, n_in, score, rr, u):
    """The routing rule's server among the first n (round_robin, random, jsq, least_kv; ties to the lowest index)."""
    G = n_in.shape[0]
    act = jnp.arange(G) < n
    g_rr = rr % n
    g_random = jnp.minimum((u * n.astype(jnp.float32)).astype(jnp.int32), n - 1)
    g_jsq = jnp.argmin(jnp.where(act, n_in, _BIG)).astype(jnp.int32)
    g_kv = jnp.argmin(jnp.where(act, score, _BIG)).astype(jnp.int32)
    return jnp.select([rule == 0, rule == 1, rule == 2], [g_rr, g_random, g_jsq], g_kv), rr + (rule == 0).astype(jnp.int32)


def _prefill_boundary(sp: PSlots, pl: Pool, g, T, prm: NetParams, cfg: NetConfig, keys, rid0):
    """Prefill server g's step boundary at T (module docstring, event 0). With cfg.saturated the free slots are
    then filled with the next requests (indices rid0, rid0 + 1, ...), arriving at T."""
    KP = cfg.KP
    iota = jnp.arange(KP, dtype=jnp.int32)
    occ = iota < pl.n_used
    pdone = occ & ((sp.flags & F_PDONE) != 0)
    t_ttft = jnp.where(pdone, T, sp.t_ttft)
    t_rel = jnp.where(pdone, T + tau_of(sp.s, prm), sp.t_rel)
    pend = sp.pend | pdone.astype(jnp.int32)
    keep = occ & ((sp.u < sp.k) | (pend != 0) | (t_rel > T))
    sp = _compact(sp._replace(t_ttft=t_ttft, t_rel=t_rel, pend=pend), keep, KP)
    n_used = jnp.sum(keep.astype(jnp.int32))
    n_new = jnp.int32(0)
    if cfg.saturated:
        n_new = (KP - n_used) * (prm.sat == 1).astype(jnp.int32)
        new = (iota >= n_used) & (prm.sat == 1)
        rid = rid0 + iota - n_used
        s_n, o_n, k_n = draw_lengths(prm.workload, keys[1], rid, prm.P.prefill_chunk)
        z = jnp.zeros_like(iota)
        vals = dict(s=s_n, k=k_n, u=z, flags=z, t_first=jnp.zeros((KP,), jnp.float32), o=o_n, rid=rid,
                    t_arr=jnp.full((KP,), T), t_ttft=jnp.zeros((KP,), jnp.float32),
                    t_rel=jnp.full((KP,), jnp.inf, jnp.float32), pend=z)
        sp = PSlots(**{f: jnp.where(new, vals[f].astype(getattr(sp, f).dtype), getattr(sp, f))
                       for f in PSlots._fields})
        n_used = n_used + n_new
    occ = iota < n_used
    held = jnp.sum(jnp.where(occ & (sp.u >= sp.k) & (sp.t_rel > T), sp.s, 0))
    zero_o = jnp.zeros_like(sp.s)
    sv = _serve(sp.s, zero_o, sp.k, sp.u, sp.flags, sp.t_first, n_used, T, prm.P.M - held, prm.P, cfg.prefill,
                (prm.sat == 1) if cfg.saturated else False)
    b = _draw_b(prm.P, keys[3], pl.steps, g, sv)
    flags = sv.slots.flags | jnp.where(sv.prefill_done, F_PDONE, 0)
    sp = sp._replace(u=sv.slots.u, flags=flags, t_first=sv.slots.t_first)
    t_end, t_end_c = kahan_add(T, pl.t_end_c, b)
    mem = sv.mem + held
    n_in = jnp.sum((occ & ((sp.u < sp.k) | ((flags & F_PDONE) != 0))).astype(jnp.int32))  # not yet prefilled
    pl = pl._replace(n_used=n_used, n_aux=pl.n_aux + jnp.sum(pdone.astype(jnp.int32)), n_in=n_in, t=T,
                     t_c=pl.t_end_c, t_end=t_end, t_end_c=t_end_c, steps=pl.steps + 1, mem=mem,
                     joined=jnp.int32(0))
    info = dict(pdone=jnp.sum(pdone.astype(jnp.int32)), mem=mem, held=held, n_sched=sv.n_sched, b=b,
                swaps=sv.n_swap, viol=(mem > prm.P.M).astype(jnp.int32), n_new=n_new,
                starved=sv.starved.astype(jnp.int32))
    return sp, pl, info


def _decode_boundary(sd: DSlots, pl: Pool, g, T, prm: NetParams, cfg: NetConfig, keys, rid0):
    """Decode server g's step boundary at T (event 1). Returns the slots, the pool scalars, what the step did and
    the finished requests' mask and latencies. With cfg.saturated and NetParams.sat = 2 the server runs a closed
    loop with a permanent backlog (new requests rid0, rid0 + 1, ... whose prefill ended at T: see below)."""
    KD = cfg.KD
    iota = jnp.arange(KD, dtype=jnp.int32)
    arr_order = iota < pl.n_used
    done = arr_order & ((sd.flags & F_DONE) != 0)
    region = iota < pl.n_used + pl.n_aux
    keep = region & ~done
    admit = region & ~arr_order & (sd.t_enter < T)
    n_admit = jnp.sum(admit.astype(jnp.int32))
    n_done = jnp.sum(done.astype(jnp.int32))
    finished = sd  # latencies read from the slots before compaction
    sd = _compact(sd, keep, KD)
    n_used = pl.n_used - n_done + n_admit
    n_aux = pl.n_aux - n_admit
    n_new = jnp.int32(0)
    if cfg.saturated:
        # a closed loop at the decode server's own throughput: its first boundary fills three quarters of the
        # slots with requests already transferred (a waiting backlog); every later boundary starts one new
        # transfer per request completed (reserved for its τ(s)), so the reservations are those of requests
        # arriving at λ*_D, the edge of stability
        on = prm.sat == 2
        first = on & (pl.steps == 0)
        n_init = jnp.where(first, (3 * KD) // 4, 0)
        n_new = jnp.where(on, n_init + jnp.where(first, 0, n_done), 0).astype(jnp.int32)
        new = (iota >= n_used + n_aux) & (iota < n_used + n_aux + n_new)
        rid = rid0 + iota - (n_used + n_aux)
        s_n, o_n, _ = draw_lengths(prm.workload, keys[1], rid, prm.P.prefill_chunk)
        tf = jnp.full((KD,), T)
        z = jnp.zeros_like(iota)
        vals = dict(s=s_n, o=o_n, k=z, u=z, flags=z, t_first=jnp.zeros((KD,), jnp.float32), rid=rid, t_arr=tf,
                    t_first_p=tf, t_ttft=tf, t_enter=jnp.where(first, T, T + tau_of(s_n, prm)))
        sd = DSlots(**{f: jnp.where(new, vals[f].astype(getattr(sd, f).dtype), getattr(sd, f))
                       for f in DSlots._fields})
        n_used = n_used + n_init  # the initial backlog has entered: it waits in the arrival order
        n_aux = n_aux + n_new - n_init
        # the transfers stay sorted by their end (a stable sort: the arrival order first, ties in slot order)
        key_ = jnp.where(iota < n_used, -jnp.inf, jnp.where(iota < n_used + n_aux, sd.t_enter, jnp.inf))
        order = jnp.argsort(key_, stable=True)
        sd = _take_slots(sd, order)
    transit = (iota >= n_used) & (iota < n_used + n_aux)
    reserved = jnp.sum(jnp.where(transit & (sd.t_enter > T), sd.s, 0))
    over = reserved > prm.D.M  # the reservations alone exceed M: a capacity limit of its own
    sv = _serve(sd.s, sd.o, sd.k, sd.u, sd.flags, sd.t_first, n_used, T, prm.D.M - reserved, prm.D, cfg.decode,
                (prm.sat == 2) if cfg.saturated else False)
    b = _draw_b(prm.D, keys[4], pl.steps, g, sv)
    flags = sv.slots.flags | jnp.where(sv.done, F_DONE, 0)
    k_new = sv.slots.k
    sd = sd._replace(u=sv.slots.u, flags=flags, t_first=sv.slots.t_first, k=k_new)
    t_end, t_end_c = kahan_add(T, pl.t_end_c, b)
    mem = sv.mem + reserved
    pl = pl._replace(n_used=n_used, n_aux=n_aux, n_in=n_used + n_aux, t=T, t_c=pl.t_end_c, t_end=t_end,
                     t_end_c=t_end_c, steps=pl.steps + 1, mem=mem, joined=jnp.int32(0))
    info = dict(mem=mem, n_sched=sv.n_sched, b=b, swaps=sv.n_swap, viol=((mem > prm.D.M) & ~over).astype(jnp.int32),
                n_done=n_done, n_transit=n_aux, starved=sv.starved.astype(jnp.int32), n_new=n_new,
                over=over.astype(jnp.int32))
    return sd, pl, info, done, finished


def _take_slots(f: DSlots, idx):
    return DSlots(*(x[idx] for x in f))


def _latencies(f: DSlots, T):
    """[6, KD] latencies of the decode slots ``f`` finishing at T, rows in NET_LAT order."""
    o1 = jnp.maximum(f.o - 1, 1).astype(jnp.float32)
    return jnp.stack([f.t_first_p - f.t_arr, f.t_ttft - f.t_arr, T - f.t_arr, (T - f.t_ttft) / o1,
                      f.t_enter - f.t_ttft, f.t_first - f.t_enter])


def _insert(sd: DSlots, pl: Pool, new: dict, cfg: NetConfig):
    """A transfer into decode server slots, at its place among the running transfers (sorted by their end; ties
    after)."""
    KD = cfg.KD
    iota = jnp.arange(KD, dtype=jnp.int32)
    transit = (iota >= pl.n_used) & (iota < pl.n_used + pl.n_aux)
    pos = pl.n_used + jnp.sum((transit & (sd.t_enter <= new["t_enter"])).astype(jnp.int32))
    fits = pl.n_used + pl.n_aux < KD

    def shift(x, v):
        prev = jnp.roll(x, 1)
        y = jnp.where(iota < pos, x, jnp.where(iota == pos, v, prev))
        return jnp.where(fits, y, x)

    vals = dict(s=new["s"], o=new["o"], k=jnp.int32(0), u=jnp.int32(0), flags=jnp.int32(0),
                t_first=jnp.float32(0.0), rid=new["rid"], t_arr=new["t_arr"], t_first_p=new["t_first_p"],
                t_ttft=new["t_ttft"], t_enter=new["t_enter"])
    sd = DSlots(**{f: shift(getattr(sd, f), jnp.asarray(vals[f], getattr(sd, f).dtype)) for f in DSlots._fields})
    fi = fits.astype(jnp.int32)
    pl = pl._replace(n_aux=pl.n_aux + fi, n_in=pl.n_in + fi, joined=pl.joined + fi * new["s"])
    return sd, pl, fits


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
    P, D, PP, DP = st.P, st.D, st.PP, st.DP
    KP, KD = P.s.shape[-1], D.s.shape[-1]
    occ_p = jnp.arange(KP) < PP.n_used[:, None]
    at_p = jnp.sum((occ_p & ((P.u < P.k) | ((P.flags & F_PDONE) != 0) | (P.pend != 0))).astype(jnp.int32))
    # a decode slot whose last step is running completes (is counted) at the server's next boundary
    return at_p + jnp.sum(DP.n_used + DP.n_aux)

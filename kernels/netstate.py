"""The coupled disaggregated network's state (kernels/network.py): static configuration, per-trial parameters,
both pools' slots and per-server scalars, the totals, and the initial state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import rng
from .state import EngineConfig, Params

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

"""Periodic compaction of one server's slots: latencies of finished requests into the histograms, finished slots
squeezed out in order, free slots filled from the overflow queue and pre-filled with the next arrivals; and the
initial state (empty slots filled the same way)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import rng
from .state import (N_LAT, Clock, Counters, EngineConfig, Latency, Limits, Params, Queue, Slots, State, StepLog,
                    Window, count_slots, draw_lengths, g_exact_i32, length_uniforms, prefix_sum, slot_iota,
                    trial_keys)


def init_state(key, params: Params, cfg: EngineConfig) -> State:
    K = cfg.K
    zi = jnp.zeros((K,), jnp.int32)
    zf = jnp.zeros((K,), jnp.float32)
    slots = Slots(zi, zi, zi, zi, zi, zf, zf, zf, zf, zi, zf, jnp.zeros((K, cfg.n_u), jnp.float32))
    i0 = jnp.int32(0)
    f0 = jnp.float32(0.0)
    L = cfg.log_len
    state = State(slots=slots, keys=trial_keys(key), clock=Clock(step=i0, t=f0, t_c=f0, t_w0=jnp.float32(jnp.inf)),
                  queue=Queue(n_used=i0, overflow=i0, next_ovf=i0),
                  counters=Counters(arrivals=i0, completions=i0, swaps=i0, mem_max=i0, started_max=i0,
                                    waiting_max=i0),
                  window=Window(arrivals=i0, completions=i0, gsum=f0, mem_sum=f0, steps=i0, busy=f0, mem_c=f0, busy_c=f0),
                  limits=Limits(starved=i0, arr_trunc=i0, lat_lost=i0, violations=i0),
                  latency=Latency(hist=jnp.zeros((N_LAT * (1 + cfg.phase_hist), cfg.n_bins), jnp.int32),
                                  total=jnp.zeros((N_LAT,), jnp.float32), n=i0),
                  log=StepLog(t=jnp.zeros((L,), jnp.float32), b=jnp.zeros((L,), jnp.float32),
                              n_used=jnp.full((L,), np.iinfo(np.int32).max, jnp.int32)))
    return _fill_free(state, i0, params, cfg)


def _bin_index(x, cfg: EngineConfig):
    """Log-spaced bin of latencies x ≥ 0: bin 0 is [0, lo), bin i ≥ 1 is [lo·r^(i−1), lo·r^i), last is open."""
    lo, hi, nb = cfg.lat_lo_s, cfg.lat_hi_s, cfg.n_bins
    per = (nb - 2) / np.log(hi / lo)
    i = 1 + jnp.floor(jnp.log(jnp.maximum(x, lo) / lo) * per).astype(jnp.int32)
    return jnp.where(x < lo, 0, jnp.clip(i, 1, nb - 1))


def _window_of(t_arr, ends, cfg: EngineConfig):
    """Index of the latency window (``ends``: increasing end instants along the last axis, the last inf) that
    holds each arrival instant; ``t_arr`` has a trailing axis of 1."""
    w = jnp.sum((t_arr >= ends[..., :-1]).astype(jnp.int32), axis=-1)
    return jnp.clip(w, 0, cfg.phase_hist - 1)


def compact(state: State, params: Params, cfg: EngineConfig) -> State:
    """Account finished requests (latency histograms, memory-work), squeeze finished slots out (order kept), then
    fill the free slots: first from the overflow queue, then pre-filled with the requests that will arrive next.

    Slot fields have the slot axis first: [K] for one trial, or [K, N] slot-major (kernels/batched.py; keys and
    per-trial scalars [N], hist [N, N_LAT, n_bins]): the same operations either way."""
    sl = _stamp_arrivals(state, cfg)
    iota = slot_iota(sl.s)
    occupied = iota < state.queue.n_used
    live = occupied & (sl.u < sl.k + sl.o)
    fin = occupied & ~live
    chunk = params.prefill_chunk
    t_w0 = state.clock.t_w0
    g = g_exact_i32(sl.s, sl.o, sl.k, chunk)
    violations = state.limits.violations
    if cfg.check_work and cfg.policy == "swap":
        violations = violations + count_slots(fin & (sl.work != g))
    gsum = state.window.gsum + _fixed_order_sum_slots(jnp.where(fin & (sl.t_done > t_w0), g.astype(jnp.float32),
                                                                0.0))
    # latencies of requests that arrived inside the window (t_arr ≥ t_w0) and whose arrival instant is known
    counted = fin & (sl.t_arr >= t_w0) & (sl.t_arr >= 0)
    tpot = (sl.t_done - sl.t_ttft) / jnp.maximum(sl.o - 1, 1).astype(jnp.float32)  # 0 for a single output token
    lats = jnp.stack([sl.t_first - sl.t_arr, sl.t_ttft - sl.t_arr, sl.t_done - sl.t_arr, tpot], axis=-1)  # [K, .., 4]
    lats = jnp.maximum(lats, 0.0)
    bins = _bin_index(lats, cfg)
    add = counted.astype(jnp.int32)
    lat = state.latency
    hist = lat.hist
    if add.ndim == 1:
        for m in range(N_LAT):
            hist = hist.at[m, bins[:, m]].add(add)
        if cfg.phase_hist:  # by latency window of arrival
            row = N_LAT * (1 + _window_of(sl.t_arr[:, None], params.phase_end[None, :], cfg))
            for m in range(N_LAT):
                hist = hist.at[row + m, bins[:, m]].add(add)
    else:  # slot-major: hist is [N, N_LAT·(1 + phase_hist), n_bins]
        trial = jnp.arange(add.shape[1], dtype=jnp.int32)[None, :]
        for m in range(N_LAT):
            hist = hist.at[trial, m, bins[..., m]].add(add)
        if cfg.phase_hist:
            row = N_LAT * (1 + _window_of(sl.t_arr[..., None], params.phase_end[None, :, :], cfg))
            for m in range(N_LAT):
                hist = hist.at[trial, row + m, bins[..., m]].add(add)
    latency = Latency(hist=hist, total=lat.total + _fixed_order_sum_slots(jnp.where(counted[..., None], lats, 0.0)),
                      n=lat.n + count_slots(add))

    # stable compaction of live slots to the front
    n_live = count_slots(live)
    slots = Slots(*squeeze(live, tuple(sl)))
    state = state._replace(slots=slots, latency=latency, window=state.window._replace(gsum=gsum),
                           limits=state.limits._replace(violations=violations))
    return _fill_free(state, n_live, params, cfg)


def _stamp_arrivals(state: State, cfg: EngineConfig) -> Slots:
    """Arrival instants of the requests that arrived during the block (t_arr still NaN, below n_used): request in
    slot i arrived in the first step whose n_used after it exceeds i (the step log), at t + b_n·u_off of that step
    (the same float operations the step would have made). Given instants: u_off is the instant."""
    sl = state.slots
    if cfg.arrivals == "instants":
        pending = jnp.isnan(sl.t_arr) & (slot_iota(sl.s) < state.queue.n_used)
        return sl._replace(t_arr=jnp.where(pending, sl.u_off, sl.t_arr))
    log = state.log
    iota = slot_iota(sl.s)
    n_used = state.queue.n_used
    pending = jnp.isnan(sl.t_arr) & (iota < n_used)
    j = jnp.sum((log.n_used[None] <= iota[..., None]).astype(jnp.int32), axis=-1)  # [K] or [K, N]
    j = jnp.minimum(j, log.n_used.shape[-1] - 1)
    t, b = _take_per_trial(log.t, j), _take_per_trial(log.b, j)
    t_arr = t + rng.unfused_mul(b, sl.u_off, n_used)
    return sl._replace(t_arr=jnp.where(pending, t_arr, sl.t_arr))


def _take_per_trial(table, j):
    """``table[j]`` of each trial: table [L] and j [K] for one trial, or table [N, L] and j [K, N] slot-major."""
    if j.ndim == 1:
        return table[j]
    return table[jnp.arange(j.shape[1], dtype=jnp.int32)[None, :], j]


def _fixed_order_sum(x):
    """Float sum over the last axis in a fixed pairwise order (halves added elementwise, zero-padded to a power of
    two). ``jnp.sum`` leaves the association to the compiler, which may vectorise it differently from one program
    to another: the XLA and fused paths must give the same bits."""
    n = x.shape[-1]
    m = 1 << max(0, n - 1).bit_length()
    if m != n:
        x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (m - n,), x.dtype)], axis=-1)
    while x.shape[-1] > 1:
        h = x.shape[-1] // 2
        x = x[..., :h] + x[..., h:]
    return x[..., 0]


def _fixed_order_sum_slots(x):
    """:func:`_fixed_order_sum` over the slot axis (axis 0): the same association, so the same bits."""
    n = x.shape[0]
    m = 1 << max(0, n - 1).bit_length()
    if m != n:
        x = jnp.concatenate([x, jnp.zeros((m - n,) + x.shape[1:], x.dtype)], axis=0)
    while x.shape[0] > 1:
        h = x.shape[0] // 2
        x = x[:h] + x[h:]
    return x[0]


def squeeze(keep, arrays):
    """Move the kept entries to the front, in order, zeros behind (the slot axis is axis 0: ``keep`` [K] or [K, N];
    arrays may have more trailing axes).

    A gather: output slot j takes the (j+1)-th kept entry, found by binary search in the running count of kept
    entries. Values are copied, never combined, so the result is the same bits as any other stable compaction; the
    program is a dozen gathers, where a log-step shift network (tried before) was ~70 % of the compiled step loop
    and of its compile time."""
    K = keep.shape[0]
    c = prefix_sum(keep.astype(jnp.int32))  # kept entries up to and including i
    j = jnp.broadcast_to(slot_iota(keep), keep.shape)  # output slot index
    if keep.ndim == 1:
        src = jnp.searchsorted(c, j, side="right", method="scan")
    else:
        src = jax.vmap(lambda cc, jj: jnp.searchsorted(cc, jj, side="right", method="scan"),
                       in_axes=1, out_axes=1)(c, j)
    valid = j < c[-1]
    src = jnp.minimum(src, K - 1).astype(jnp.int32)

    def take(x):
        idx = jnp.broadcast_to(src.reshape(src.shape + (1,) * (x.ndim - src.ndim)), src.shape + x.shape[src.ndim:])
        return jnp.where(_col(valid, x), jnp.take_along_axis(x, idx, axis=0), jnp.zeros_like(x))

    return tuple(take(x) for x in arrays)


def _col(mask, x):
    """Broadcast a [K, ...] mask against an array with more trailing axes."""
    return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


def _fill_free(state: State, n_live, params: Params, cfg: EngineConfig) -> State:
    """Slots n_live.. : overflow requests (already arrived, instant unknown), then the next arrivals (pre-filled)."""
    sl, q, keys = state.slots, state.queue, state.keys
    K = sl.s.shape[0]
    r = slot_iota(sl.s) - n_live
    free = r >= 0
    n_fill = jnp.minimum(q.overflow, K - n_live)
    from_ovf = free & (r < q.overflow)
    idx = jnp.where(from_ovf, q.next_ovf + r, state.counters.arrivals + (r - q.overflow))
    if cfg.arrivals == "instants":  # the request's own instant (u_off: see Slots)
        off = _take_per_trial(params.arr_t, jnp.minimum(idx, params.arr_t.shape[-1] - 1))
    else:
        off = rng.uniform(keys.offsets, idx, 0)
    if cfg.phased:
        # lengths are drawn when a request arrives (its phase); overflow requests already arrived: their arrival
        # instant is lost, so they take the phase of this instant (counted in lat_lost like every overflow request)
        uu = length_uniforms(cfg.n_u, keys.lengths, idx)
        phase = jnp.sum((state.clock.t >= params.phase_end[:-1]).astype(jnp.int32))
        s_p, o_p = params.workload.sample_phase(uu, phase)
        s_f = jnp.where(from_ovf, s_p.astype(jnp.int32), 0)
        o_f = jnp.where(from_ovf, o_p.astype(jnp.int32), 0)
        k_f = (s_f + params.prefill_chunk - 1) // params.prefill_chunk
        sl = sl._replace(uu=jnp.where(free[..., None], uu, sl.uu))
    else:
        s_f, o_f, k_f = _draw_lengths_slots(params.workload, keys.lengths, idx, params.prefill_chunk)
    slots = sl._replace(s=jnp.where(free, s_f, sl.s), o=jnp.where(free, o_f, sl.o), k=jnp.where(free, k_f, sl.k),
                        u_off=jnp.where(free, off, sl.u_off),
                        t_arr=jnp.where(from_ovf, -1.0, jnp.where(free, jnp.nan, sl.t_arr)))
    return state._replace(slots=slots, queue=Queue(n_used=n_live + n_fill, overflow=q.overflow - n_fill,
                                                   next_ovf=q.next_ovf + n_fill),
                          limits=state.limits._replace(lat_lost=state.limits.lat_lost + n_fill))


def _draw_lengths_slots(workload, skey, idx, chunk):
    """draw_lengths for [K] indices of one trial, or [K, N] slot-major ones (the workload is per trial: vmapped)."""
    if idx.ndim == 1:
        return draw_lengths(workload, skey, idx, chunk)
    return jax.vmap(draw_lengths, in_axes=(0, 0, 1, 0), out_axes=1)(workload, skey, idx, chunk)

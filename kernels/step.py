"""The step: one simulated server (one Monte Carlo trial) as a pure ``step(state, params, cfg)`` over fixed-shape
arrays (docs/model.md, "The simulated step").

Layout of one trial (kernels/state.py gives every field its dtype and shape):

* K **slots** hold requests in arrival order: the started ones, then the first waiting ones; slots
  ``0 .. n_used-1`` are occupied. Per slot: ``s, o, k = ⌈s/ŝ⌉``, progress ``u = c + d`` (c = min(u, k) chunks
  done, d = max(u − k, 0) tokens decoded), ``flags`` (F_SCHED: scheduled in the previous step; under recompute also
  F_STARTED and F_TTFT, as progress restarts there; elsewhere started ⇔ u > 0) and the float32 instants
  ``t_arr, t_first, t_ttft, t_done``. A finished request keeps its slot with weight 0 (it changes no prefix) until
  the compaction at the end of the record period squeezes it out and bins its latencies (kernels/compact.py).
* Free slots are **pre-filled** at each compaction with the lengths of the requests that will arrive next
  (request i's lengths depend only on i), so an arrival only moves ``n_used``: the step has no per-arrival writes.
* Requests that arrive while the slots are full wait in an **overflow queue** kept only as a count: their lengths
  are a pure function of the request index (counter-based RNG), so nothing is stored and nothing is lost. Their
  arrival instants are not kept: when they reach a slot their latencies are counted in ``limits.lat_lost``.
* ``limits`` makes every capacity limit visible: ``starved`` counts steps where the schedule could have reached past
  the slots, ``arr_trunc`` Poisson draws beyond the static arrival cap, ``violations`` broken invariants (memory
  above M, conservation, memory-work).

The step is branch-free: a cumulative sum of the slot weights gives the longest FCFS prefix under M (and under
the token budget), everything else is elementwise arithmetic on 0/1 masks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import rng
from .state import (F_SCHED, F_STARTED, F_TTFT, EngineConfig, Params, Slots, State, count_slots, prefix_sum,
                    slot_iota, sum_slots)


class StepOut(NamedTuple):
    """What one step did (scan outputs; unused ones are dead code in long runs). int32[] unless noted."""

    mem: jax.Array  # KV memory in use (tokens)
    n_sched: jax.Array  # requests scheduled
    prefill_tokens: jax.Array
    decode_tokens: jax.Array
    b: jax.Array  # float32[] the step's duration b_n
    arrivals: jax.Array
    completions: jax.Array
    swaps: jax.Array
    waiting: jax.Array  # at the start of the step


class Served(NamedTuple):
    """A server after scheduling and advancing (docs/model.md steps 1–4), before the step's duration is known."""

    slots: Slots
    prefill_done: jax.Array  # bool[K]
    done: jax.Array  # bool[K]
    mem: jax.Array  # int32[] memory of the scheduled requests' next footprints
    n_pre_tok: jax.Array  # int32[] prefill tokens processed
    n_dec_tok: jax.Array  # int32[] decode tokens processed
    n_sched: jax.Array  # int32[]
    n_done: jax.Array  # int32[]
    n_live: jax.Array  # int32[]
    n_started: jax.Array  # int32[]
    n_swap: jax.Array  # int32[]
    starved: jax.Array  # bool[]


def started_mask(sl: Slots, cfg: EngineConfig):
    """Slots whose request has been scheduled at least once: progress u > 0 unless preemption resets it
    (recompute: flag bit F_STARTED)."""
    if cfg.policy == "recompute":
        return (sl.flags & F_STARTED) != 0
    return sl.u > 0


def serve(state: State, params: Params, cfg: EngineConfig) -> Served:
    """docs/model.md steps 1–4 for one server: footprints, the longest FCFS prefix under M (and B), advance, preempt."""
    sl = state.slots
    s, o, k, u, fl = sl.s, sl.o, sl.k, sl.u, sl.flags
    chunk, M = params.prefill_chunk, params.M
    iota = slot_iota(s)

    # 1. next footprint of every live request
    live = (iota < state.queue.n_used) & (u < k + o)
    pre = u < k
    live_i = live.astype(jnp.int32)  # masks enter sums and products as 0/1: a multiply where a select would be
    f = jnp.where(pre, jnp.minimum((u + 1) * chunk, s), s + (u - k) + 1) * live_i  # 0 unless live
    peak = s + o
    if cfg.blocks:  # memory is held in whole blocks of β tokens
        blk = params.block
        f = ((f + blk - 1) // blk) * blk
        peak = ((peak + blk - 1) // blk) * blk
    # 2. longest FCFS prefix under M (and the token budget, and the running-request cap)
    w = peak * live_i if cfg.policy == "reserve" else f
    cw = prefix_sum(w)
    sched = live & (cw <= M)
    if cfg.running_cap:
        sched = sched & (prefix_sum(live_i) <= params.max_running)
    tok = jnp.where(pre, jnp.minimum(chunk, s - u * chunk), 1)
    if cfg.token_budget:
        tok = tok * live_i
        sched = sched & (prefix_sum(tok) <= params.budget)
    sched_i = sched.astype(jnp.int32)
    f_sched = f * sched_i  # = where(sched, f, 0): a multiply, no select
    mem = sum_slots(f_sched)
    n_pre_tok = sum_slots(jnp.where(sched & pre, tok, 0))
    n_sched = count_slots(sched)
    n_pre = count_slots(sched & pre)

    started = started_mask(sl, cfg)
    was_sched = (fl & F_SCHED) != 0
    # swapped out: scheduled in the previous step, still live, not scheduled now. Under swap and reserve a slot
    # scheduled in the previous step has u > 0, so it has started; under recompute the flags say so
    if cfg.policy == "recompute":
        preempted = live & started & ~sched  # its progress restarts
        swapped = preempted & was_sched
    else:
        swapped = live & was_sched & ~sched
    new_start = sched & ~started

    # the schedule could have reached past the slots while requests wait in the overflow queue: capacity limit.
    # Every live request is scheduled ⇔ the whole prefix fits (room ≥ 0: weights are ≥ 0, so the last live
    # slot's prefix sum is the total) and, with a token budget, all their tokens fit (implied by the test below)
    room = M - sum_slots(w)  # = cw[-1] (exact integers; a reduction lowers to every backend, a slice does not)
    starved = (state.queue.overflow > 0) & (room >= jnp.maximum(params.min_w, 0))
    if cfg.running_cap:
        starved = starved & (count_slots(live) + 1 <= params.max_running)
    if cfg.token_budget:
        starved = starved & (sum_slots(tok) + 1 <= params.budget)
    n_live = count_slots(live)

    # 3. advance; 4. preempt (recompute)
    u1 = u + 1
    prefill_done = sched & (u1 == k)  # u + 1 = k implies u < k: a prefill chunk
    done = sched & (u1 == k + o)
    u_new = u + sched_i  # = where(sched, u + 1, u)
    if cfg.policy == "recompute":  # progress restarts: the flags remember the start and the first token
        ttft_seen = (fl & F_TTFT) != 0
        prefill_done = prefill_done & ~ttft_seen
        u_new = jnp.where(preempted, 0, u_new)
        # a request that arrived prefilled (k = 0: a decode server's, lqs.Disaggregated) redoes its prefill here
        k = jnp.where(preempted & (k == 0), (s + chunk - 1) // chunk, k)
        i32 = jnp.int32
        fl_new = ((started | sched).astype(i32) * F_STARTED + sched_i * F_SCHED
                  + (prefill_done | ttft_seen).astype(i32) * F_TTFT)  # the bits, without selects
    else:  # progress never goes back: started ⇔ u > 0, the prefill ends once; only "scheduled last step" is kept
        fl_new = sched_i * F_SCHED
    work = sl.work + f_sched if cfg.check_work else sl.work
    slots = sl._replace(u=u_new, k=k, flags=fl_new, work=work,
                        t_first=jnp.where(new_start, state.clock.t, sl.t_first))
    return Served(slots=slots, prefill_done=prefill_done, done=done, mem=mem, n_pre_tok=n_pre_tok,
                  n_dec_tok=n_sched - n_pre, n_sched=n_sched, n_done=count_slots(done),
                  n_live=n_live, n_started=count_slots(live & started), n_swap=count_slots(swapped), starved=starved)


def phase_rate(t, params: Params, cfg: EngineConfig):
    """(arrival rate, phase index) at instant t."""
    if cfg.phased:
        phase = jnp.sum((t >= params.phase_end[:-1]).astype(jnp.int32))
        return params.phase_lam[phase], phase
    return params.lam, jnp.int32(0)


def _arrive_phased(sl: Slots, q, fits, phase, params: Params) -> Slots:
    """The arriving requests (pre-filled slots n_used .. n_used+fits-1) take the lengths of their phase."""
    iota = slot_iota(sl.s)
    arrived = (iota >= q.n_used) & (iota < q.n_used + fits)
    s_p, o_p = params.workload.sample_phase(sl.uu, phase)
    s_p = s_p.astype(jnp.int32)
    o_p = o_p.astype(jnp.int32)
    k_p = (s_p + params.prefill_chunk - 1) // params.prefill_chunk
    return sl._replace(s=jnp.where(arrived, s_p, sl.s), o=jnp.where(arrived, o_p, sl.o),
                       k=jnp.where(arrived, k_p, sl.k))


def kahan_add(total, comp, x):
    """(total + x, its new compensation): Kahan's compensated sum, so that float32 totals over millions of steps
    (the clock, the window's Σ b_n and Σ memory) keep float32's relative precision instead of drifting."""
    y = x - comp
    new = total + y
    return new, (new - total) - y


def finish(state: State, sv: Served, b_n, n_arr, trunc, phase, params: Params, cfg: EngineConfig):
    """docs/model.md steps 5–6 for one server: the step lasts b_n; n_arr requests arrive (they take the pre-filled
    slots n_used .. n_used+fits-1); counters and invariant checks."""
    sl = sv.slots  # served: progress advanced
    q, c, clk, win, lim, log = state.queue, state.counters, state.clock, state.window, state.limits, state.log
    t = clk.t
    t_end, t_c = kahan_add(t, clk.t_c, b_n)
    in_window = clk.step >= params.warmup
    iw = in_window.astype(jnp.int32)
    K = sl.s.shape[0]
    fits = jnp.where(q.overflow == 0, jnp.minimum(n_arr, K - q.n_used), 0)
    n_ovf = n_arr - fits
    if cfg.phased:
        sl = _arrive_phased(sl, q, fits, phase, params)
    slots = sl._replace(t_ttft=jnp.where(sv.prefill_done, t_end, sl.t_ttft),
                        t_done=jnp.where(sv.done, t_end, sl.t_done))
    queue = q._replace(n_used=q.n_used + fits, overflow=q.overflow + n_ovf,
                       next_ovf=jnp.where((q.overflow == 0) & (n_ovf > 0), c.arrivals + fits, q.next_ovf))
    waiting = sv.n_live - sv.n_started + q.overflow  # at the start of the step
    counters = c._replace(arrivals=c.arrivals + n_arr, completions=c.completions + sv.n_done,
                          swaps=c.swaps + sv.n_swap, mem_max=jnp.maximum(c.mem_max, sv.mem),
                          started_max=jnp.maximum(c.started_max, sv.n_started),
                          waiting_max=jnp.maximum(c.waiting_max, waiting))
    mem_sum, mem_c = kahan_add(win.mem_sum, win.mem_c, jnp.where(in_window, sv.mem.astype(jnp.float32), 0.0))
    busy, busy_c = kahan_add(win.busy, win.busy_c, jnp.where(in_window, b_n, 0.0))
    window = win._replace(arrivals=win.arrivals + iw * n_arr, completions=win.completions + iw * sv.n_done,
                          mem_sum=mem_sum, mem_c=mem_c, steps=win.steps + iw, busy=busy, busy_c=busy_c)
    clock = clk._replace(step=clk.step + 1, t=t_end, t_c=t_c, t_w0=jnp.where(in_window & jnp.isinf(clk.t_w0), t, clk.t_w0))
    # invariants: memory ≤ M; conservation arrivals = completions + in system, checked on the slot contents
    violations = (lim.violations + (sv.mem > params.M).astype(jnp.int32)
                  + (c.arrivals != c.completions + sv.n_live + q.overflow).astype(jnp.int32))
    limits = lim._replace(starved=lim.starved + sv.starved.astype(jnp.int32),
                          arr_trunc=lim.arr_trunc + trunc.astype(jnp.int32), violations=violations)
    # arrivals only move n_used: their instants are stamped at compaction from the step log
    at = jnp.arange(log.n_used.shape[-1], dtype=jnp.int32) == (clk.step % cfg.compact_every)[..., None]
    log = log._replace(t=jnp.where(at, t[..., None], log.t), b=jnp.where(at, b_n[..., None], log.b),
                       n_used=jnp.where(at, queue.n_used[..., None], log.n_used))
    new_state = state._replace(slots=slots, clock=clock, queue=queue, counters=counters, window=window,
                               limits=limits, log=log)
    out = StepOut(mem=sv.mem, n_sched=sv.n_sched, prefill_tokens=sv.n_pre_tok, decode_tokens=sv.n_dec_tok, b=b_n,
                  arrivals=n_arr, completions=sv.n_done, swaps=sv.n_swap, waiting=waiting)
    return new_state, out


def step(state: State, params: Params, cfg: EngineConfig) -> tuple[State, StepOut]:
    """One batch iteration of one server (docs/model.md steps 1–6). Returns the new state and what the step did."""
    return step_with(state, params, cfg, params.batch.draw, serve_fn=serve, finish_fn=finish)


def draw_step(keys, step_n, t, sv, draw_b, params: Params, cfg: EngineConfig, n_arrived=None, t_c=None):
    """(b_n, n_arr, trunc, phase) of step ``step_n`` at instant t: the batch time (from the served batch ``sv``)
    and the arrival count, from the trial's (or cluster's) batch and arrival streams. With given instants
    (``cfg.arrivals == "instants"``) the count is that of the instants in [t, t + b_n), ``n_arrived`` the arrivals
    so far."""
    ub1 = rng.uniform(keys.batch, step_n, 0)
    ub2 = rng.uniform(keys.batch, step_n, 1)
    b_n = draw_b(ub1, ub2, sv.n_pre_tok, sv.n_dec_tok, sv.mem).astype(jnp.float32)
    lam, phase = phase_rate(t, params, cfg)
    if cfg.arrivals == "instants":
        n_arr, trunc = count_instants(params.arr_t, n_arrived, kahan_add(t, 0.0 if t_c is None else t_c, b_n)[0],
                                     cfg.a_max)
    else:
        n_arr, trunc = rng.poisson_inverse(rng.uniform(keys.arrivals, step_n, 0), lam * b_n, cfg.a_max)
    return b_n, n_arr, trunc, phase


def count_instants(arr_t, n_arrived, t_end, a_max: int):
    """(n_arr, truncated): how many of the given instants after the first ``n_arrived`` lie before ``t_end``,
    looking at most a_max ahead (``arr_t``: [L] or [N, L] slot-major, ``n_arrived`` [] or [N]). ``truncated``:
    more than a_max fell in the step, or the instants ran out (the last one, +inf padding aside, was reached)."""
    L = arr_t.shape[-1]
    idx = n_arrived[..., None] + jnp.arange(a_max + 1, dtype=jnp.int32)
    ahead = jnp.take_along_axis(arr_t, jnp.minimum(idx, L - 1), axis=-1)
    before = (ahead < t_end[..., None]) & (idx < L)
    n_arr = jnp.sum(before[..., :a_max].astype(jnp.int32), axis=-1)
    ran_out = n_arrived + n_arr >= L - 1
    return n_arr, before[..., a_max] | ran_out


def step_with(state, params, cfg: EngineConfig, draw_b, serve_fn, finish_fn, pre_drawn=None):
    """The step with its batch-time draw and its per-server halves passed in: ``step`` uses the plain functions on
    one trial; the fused kernel (kernels/fused/) passes them vmapped over the trials of a kernel program, with the
    affine draw on kernel operands. Both paths therefore run the same operations in the same order.

    ``pre_drawn = (b_n, n_arr, trunc)`` replaces the draws when they do not depend on the state (i.i.d. batch
    times, no phases): :func:`draw_arrivals` computes them for a record period ahead of time."""
    sv = serve_fn(state, params, cfg)
    if pre_drawn is not None:
        b_n, n_arr, trunc = pre_drawn
        phase = jnp.int32(0)
    else:
        b_n, n_arr, trunc, phase = draw_step(state.keys, state.clock.step, state.clock.t, sv, draw_b, params, cfg,
                                             state.counters.arrivals, t_c=state.clock.t_c)
    return finish_fn(state, sv, b_n, n_arr, trunc, phase, params, cfg)


def draw_arrivals(keys, step_n, params: Params, cfg: EngineConfig):
    """(b_n, n_arr, trunc) of step ``step_n`` of one unphased trial whose batch time does not depend on the batch
    (i.i.d. models): exactly what :func:`step_with` draws, computed without the state."""
    z = jnp.int32(0)
    sv = Served(*([None] * 3), mem=z, n_pre_tok=z, n_dec_tok=z, **{f: None for f in Served._fields[6:]})
    b_n, n_arr, trunc, _ = draw_step(keys, step_n, None, sv, params.batch.draw, params, cfg)
    return b_n, n_arr, trunc

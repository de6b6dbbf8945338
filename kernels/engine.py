"""The XLA engine: one simulated server (one Monte Carlo trial) as a pure ``step(state, params)`` over fixed-shape arrays (docs/model.md).

Layout of one trial (all int32 unless noted):

* K **slots** hold requests in arrival order: the started ones, then the first waiting ones; slots
  ``0 .. n_used-1`` are occupied. Per slot: ``s, o, k = ⌈s/ŝ⌉``, progress ``u = c + d`` (c = min(u, k) chunks
  done, d = max(u − k, 0) tokens decoded), ``flags`` (bit 1 scheduled in the previous step; under recompute also
  bit 0 started and bit 2 first token emitted, as progress restarts there; elsewhere started ⇔ u > 0) and the float32 instants ``t_arr, t_first, t_ttft, t_done``. A finished request keeps its
  slot with weight 0 (it changes no prefix) until the periodic compaction squeezes it out and bins its latencies.
* Free slots are **pre-filled** at each compaction with the lengths of the requests that will arrive next
  (request k's lengths depend only on k), so an arrival only moves ``n_used`` and stamps its arrival instant:
  the step has no per-arrival writes at all.
* Requests that arrive while the slots are full wait in an **overflow queue** kept only as a count: their lengths
  are a pure function of the request index (counter-based RNG), so nothing is stored and nothing is lost. Their
  arrival instants are not kept: when they reach a slot their latencies are counted in ``lat_lost``.
* Counters make every capacity limit visible: ``starved`` counts steps where the schedule could have reached past
  the slots (the run no longer follows docs/model.md exactly: unreliable), ``arr_trunc`` counts Poisson draws beyond
  the static arrival cap, ``violations`` counts broken invariants (memory above M, conservation, memory-work).

The step is branch-free: a cumulative sum of the slot weights gives the longest FCFS prefix under M (and under
the token budget), everything else is elementwise selects.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import rng
from .compact import _fixed_order_sum, compact, init_state, squeeze  # noqa: F401 (re-exported)
from .state import (  # noqa: F401 (re-exported: the engine's whole vocabulary in one module)
    POLICIES,
    ROUTINGS,
    N_LAT,
    LAT_NAMES,
    F_STARTED,
    F_SCHED,
    F_TTFT,
    EngineConfig,
    Params,
    Slots,
    State,
    trial_keys,
    length_uniforms,
    draw_lengths,
    g_exact_i32,
    affine_time,
    slot_iota,
    prefix_sum,
)
from .state import count_slots as _count, sum_slots as _sum

class StepOut(NamedTuple):
    """What one step did (scan outputs; unused ones are dead code in long runs)."""

    mem: jax.Array
    n_sched: jax.Array
    prefill_tokens: jax.Array
    decode_tokens: jax.Array
    b: jax.Array
    arrivals: jax.Array
    completions: jax.Array
    swaps: jax.Array
    waiting: jax.Array  # at the start of the step


class Served(NamedTuple):
    """A server's state after scheduling and advancing (docs/model.md steps 1–4), before the step's duration is known."""

    slots: Slots
    prefill_done: jax.Array
    done: jax.Array
    mem: jax.Array
    n_pre_tok: jax.Array
    n_dec_tok: jax.Array
    n_sched: jax.Array
    n_done: jax.Array
    n_live: jax.Array
    n_started: jax.Array
    n_swap: jax.Array
    starved: jax.Array


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
    live = (iota < state.n_used) & (u < k + o)
    pre = u < k
    live_i = live.astype(jnp.int32)  # masks enter sums and products as 0/1: a multiply where a select would be
    f = jnp.where(pre, jnp.minimum((u + 1) * chunk, s), s + (u - k) + 1) * live_i  # 0 unless live
    # 2. longest FCFS prefix under M (and the token budget)
    w = (s + o) * live_i if cfg.policy == "reserve" else f
    cw = prefix_sum(w)
    sched = live & (cw <= M)
    tok = jnp.where(pre, jnp.minimum(chunk, s - u * chunk), 1)
    if cfg.token_budget:
        tok = tok * live_i
        sched = sched & (prefix_sum(tok) <= params.budget)
    sched_i = sched.astype(jnp.int32)
    f_sched = f * sched_i  # = where(sched, f, 0): a multiply, no select
    mem = _sum(f_sched)
    n_pre_tok = _sum(jnp.where(sched & pre, tok, 0))
    n_sched = _count(sched)
    n_pre = _count(sched & pre)

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
    room = M - _sum(w)  # = cw[-1] (exact integers; a reduction lowers to every backend, a slice does not)
    starved = (state.overflow > 0) & (room >= jnp.maximum(params.min_w, 0))
    if cfg.token_budget:
        starved = starved & (_sum(tok) + 1 <= params.budget)
    n_live = _count(live)

    # 3. advance; 4. preempt (recompute)
    u1 = u + 1
    prefill_done = sched & (u1 == k)  # u + 1 = k implies u < k: a prefill chunk
    done = sched & (u1 == k + o)
    u_new = u + sched_i  # = where(sched, u + 1, u)
    if cfg.policy == "recompute":  # progress restarts: the flags remember the start and the first token
        ttft_seen = (fl & F_TTFT) != 0
        prefill_done = prefill_done & ~ttft_seen
        u_new = jnp.where(preempted, 0, u_new)
        i32 = jnp.int32
        fl_new = ((started | sched).astype(i32) * F_STARTED + sched_i * F_SCHED
                  + (prefill_done | ttft_seen).astype(i32) * F_TTFT)  # the bits, without selects
    else:  # progress never goes back: started ⇔ u > 0, the prefill ends once; only "scheduled last step" is kept
        fl_new = sched_i * F_SCHED
    work = sl.work + f_sched if cfg.check_work else sl.work
    slots = sl._replace(u=u_new, flags=fl_new, work=work, t_first=jnp.where(new_start, state.t, sl.t_first))
    return Served(slots=slots, prefill_done=prefill_done, done=done, mem=mem, n_pre_tok=n_pre_tok,
                  n_dec_tok=n_sched - n_pre, n_sched=n_sched, n_done=_count(done),
                  n_live=n_live, n_started=_count(live & started), n_swap=_count(swapped), starved=starved)


def phase_rate(t, params: Params, cfg: EngineConfig):
    """(arrival rate, phase index) at instant t."""
    if cfg.phased:
        phase = jnp.sum((t >= params.phase_end[:-1]).astype(jnp.int32))
        return params.phase_lam[phase], phase
    return params.lam, jnp.int32(0)


def finish(state: State, sv: Served, b_n, n_arr, trunc, phase, params: Params, cfg: EngineConfig):
    """docs/model.md steps 5–6 for one server: the step lasts b_n; n_arr requests arrive (they take the pre-filled slots
    n_used .. n_used+fits-1); counters and invariant checks."""
    sl = sv.slots
    t = state.t
    t_end = t + b_n
    M, chunk = params.M, params.prefill_chunk
    in_window = state.step >= params.warmup
    K = sl.s.shape[0]
    iota = slot_iota(sl.s)
    fits = jnp.where(state.overflow == 0, jnp.minimum(n_arr, K - state.n_used), 0)
    n_ovf = n_arr - fits
    if cfg.phased:  # the arriving requests take the lengths of the phase they arrive in
        arrived = (iota >= state.n_used) & (iota < state.n_used + fits)
        s_p, o_p = params.workload.sample_phase(sl.uu, phase)
        s_p = s_p.astype(jnp.int32)
        o_p = o_p.astype(jnp.int32)
        sl = sl._replace(s=jnp.where(arrived, s_p, sl.s), o=jnp.where(arrived, o_p, sl.o),
                         k=jnp.where(arrived, (s_p + chunk - 1) // chunk, sl.k))
    # arrivals only move n_used: their instants are stamped at compaction from the step log (blk_*)
    lane = jnp.arange(state.blk_n.shape[-1], dtype=jnp.int32)
    at = lane == (state.step % cfg.compact_every)[..., None]
    slots = sl._replace(t_ttft=jnp.where(sv.prefill_done, t_end, sl.t_ttft),
                        t_done=jnp.where(sv.done, t_end, sl.t_done))
    overflow = state.overflow + n_ovf
    next_ovf = jnp.where((state.overflow == 0) & (n_ovf > 0), state.arrivals + fits, state.next_ovf)
    waiting = sv.n_live - sv.n_started + state.overflow  # at the start of the step
    # invariants: memory ≤ M; conservation arrivals = completions + in system, checked on the slot contents
    violations = state.violations + (sv.mem > M).astype(jnp.int32)
    violations = violations + (state.arrivals != state.completions + sv.n_live + state.overflow).astype(jnp.int32)
    iw = in_window.astype(jnp.int32)
    new_state = state._replace(
        slots=slots, step=state.step + 1, t=t_end, n_used=state.n_used + fits, overflow=overflow,
        next_ovf=next_ovf, arrivals=state.arrivals + n_arr, completions=state.completions + sv.n_done,
        swaps=state.swaps + sv.n_swap, t_w0=jnp.where(in_window & jnp.isinf(state.t_w0), t, state.t_w0),
        arrivals_w=state.arrivals_w + iw * n_arr, completions_w=state.completions_w + iw * sv.n_done,
        mem_sum_w=state.mem_sum_w + jnp.where(in_window, sv.mem.astype(jnp.float32), 0.0),
        steps_w=state.steps_w + iw, busy_w=state.busy_w + jnp.where(in_window, b_n, 0.0),
        mem_max=jnp.maximum(state.mem_max, sv.mem), started_max=jnp.maximum(state.started_max, sv.n_started),
        waiting_max=jnp.maximum(state.waiting_max, waiting),
        starved=state.starved + sv.starved.astype(jnp.int32),
        arr_trunc=state.arr_trunc + trunc.astype(jnp.int32), violations=violations,
        blk_t=jnp.where(at, t[..., None], state.blk_t), blk_b=jnp.where(at, b_n[..., None], state.blk_b),
        blk_n=jnp.where(at, (state.n_used + fits)[..., None], state.blk_n))
    out = StepOut(mem=sv.mem, n_sched=sv.n_sched, prefill_tokens=sv.n_pre_tok, decode_tokens=sv.n_dec_tok, b=b_n,
                  arrivals=n_arr, completions=sv.n_done, swaps=sv.n_swap, waiting=waiting)
    return new_state, out


def step(state: State, params: Params, cfg: EngineConfig) -> tuple[State, StepOut]:
    """One batch iteration of one server (docs/model.md steps 1–6). Returns the new state and what the step did."""
    return step_with(state, params, cfg, params.batch.draw, serve_fn=serve, finish_fn=finish)


def step_with(state, params, cfg: EngineConfig, draw_b, serve_fn, finish_fn, pre_drawn=None):
    """The step with its batch-time draw and its per-server halves passed in: ``step`` uses the plain functions on
    one trial; the fused kernel (kernels/fused.py) passes them vmapped over a block of trials, with the affine
    draw on kernel operands. Both paths therefore run the same operations in the same order.

    ``pre_drawn = (b_n, n_arr, trunc)`` replaces the draws when they do not depend on the state (i.i.d. batch
    times, no phases): :func:`draw_arrivals` computes them for a block of steps ahead of time."""
    sv = serve_fn(state, params, cfg)
    if pre_drawn is not None:
        b_n, n_arr, trunc = pre_drawn
        phase = jnp.int32(0)
    else:
        ub1 = rng.uniform(state.keys[1], state.step, 0)
        ub2 = rng.uniform(state.keys[1], state.step, 1)
        b_n = draw_b(ub1, ub2, sv.n_pre_tok, sv.n_dec_tok, sv.mem).astype(jnp.float32)
        lam, phase = phase_rate(state.t, params, cfg)
        n_arr, trunc = rng.poisson_inverse(rng.uniform(state.keys[0], state.step, 0), lam * b_n, cfg.a_max)
    return finish_fn(state, sv, b_n, n_arr, trunc, phase, params, cfg)


def draw_arrivals(keys, step, params: Params, cfg: EngineConfig):
    """(b_n, n_arr, trunc) of step ``step`` of one unphased trial whose batch time does not depend on the
    batch (i.i.d. models): exactly what :func:`step_with` draws, computed without the state."""
    ub1 = rng.uniform(keys[1], step, 0)
    ub2 = rng.uniform(keys[1], step, 1)
    z = jnp.int32(0)
    b_n = params.batch.draw(ub1, ub2, z, z, z).astype(jnp.float32)
    n_arr, trunc = rng.poisson_inverse(rng.uniform(keys[0], step, 0), params.lam * b_n, cfg.a_max)
    return b_n, n_arr, trunc


# ----------------------------------------------------------------------------------------------- clusters


class Cluster(NamedTuple):
    """G servers of one trial in lock-step (every State leaf has a leading [G] axis) and the router."""

    servers: State
    keys: jax.Array  # uint32[4] cluster streams (arrivals, batch, routing, -)
    rr: jax.Array  # round-robin pointer


def init_cluster(key, params: Params, cfg: EngineConfig) -> Cluster:
    ks = jax.random.split(key, cfg.servers + 1)
    servers = jax.vmap(lambda k: init_state(k, params, cfg))(ks[:-1])
    return Cluster(servers=servers, keys=trial_keys(ks[-1]), rr=jnp.int32(0))


def cluster_step(cl: Cluster, params: Params, cfg: EngineConfig) -> tuple[Cluster, StepOut]:
    """One lock-step batch iteration of G servers: the step lasts as long as the slowest server's batch; each
    arrival is routed on arrival (round_robin, random, jsq = fewest requests in system, least_kv = least memory
    in use; ties to the lowest index)."""
    G = cfg.servers
    srv = cl.servers
    svs = jax.vmap(lambda st: serve(st, params, cfg))(srv)
    step_n, t = srv.step[0], srv.t[0]
    ub1 = rng.uniform(cl.keys[1], step_n, 0)
    ub2 = rng.uniform(cl.keys[1], step_n, 1)
    b_g = jax.vmap(lambda a, b_, c: params.batch.draw(ub1, ub2, a, b_, c))(svs.n_pre_tok, svs.n_dec_tok, svs.mem)
    b_n = jnp.max(b_g).astype(jnp.float32)
    lam, phase = phase_rate(t, params, cfg)
    n_arr, trunc = rng.poisson_inverse(rng.uniform(cl.keys[0], step_n, 0), lam * b_n, cfg.a_max)
    # route the arrivals one by one
    gi = jnp.arange(G, dtype=jnp.int32)
    in_sys = svs.n_live - svs.n_done + srv.overflow
    routed = jnp.zeros((G,), jnp.int32)
    rr = cl.rr
    first = jnp.sum(srv.arrivals)
    rule = params.routing  # traced: every rule is evaluated, one is taken (a few operations on G servers)
    for j in range(cfg.a_max):
        active = j < n_arr
        g_rr = rr % G
        g_random = jnp.minimum((rng.uniform(cl.keys[2], first + j, 0) * G).astype(jnp.int32), G - 1)
        g_jsq = jnp.argmin(in_sys + routed).astype(jnp.int32)
        g_kv = jnp.argmin(svs.mem + routed * params.prefill_chunk).astype(jnp.int32)  # least_kv
        g = jnp.select([rule == 0, rule == 1, rule == 2], [g_rr, g_random, g_jsq], g_kv)
        rr = rr + (active & (rule == 0)).astype(jnp.int32)
        routed = routed + ((gi == g) & active).astype(jnp.int32)
    trunc_g = trunc & (gi == 0)  # counted once per cluster
    new_srv, outs = jax.vmap(lambda st, sv, m, tr: finish(st, sv, b_n, m, tr, phase, params, cfg))(
        srv, svs, routed, trunc_g)
    out = StepOut(mem=jnp.sum(outs.mem), n_sched=jnp.sum(outs.n_sched), prefill_tokens=jnp.sum(outs.prefill_tokens),
                  decode_tokens=jnp.sum(outs.decode_tokens), b=b_n, arrivals=n_arr,
                  completions=jnp.sum(outs.completions), swaps=jnp.sum(outs.swaps), waiting=jnp.sum(outs.waiting))
    return Cluster(servers=new_srv, keys=cl.keys, rr=rr), out


class Record(NamedTuple):
    """One time-series point (taken at the end of a record period)."""

    t: jax.Array
    waiting: jax.Array
    started: jax.Array


def _record(state: State, cfg: EngineConfig) -> Record:
    sl = state.slots
    live = (slot_iota(sl.s) < state.n_used) & (sl.u < sl.k + sl.o)
    started = live & started_mask(sl, cfg)
    n_started = _count(started)
    in_sys = state.arrivals - state.completions
    return Record(t=state.t, waiting=in_sys - n_started, started=n_started)


def records_scan(one_block, record, state, cfg: EngineConfig, n_records=None):
    """The call's loop over record periods: each runs cfg.blocks_per_record blocks (``one_block``: a scan body) and
    takes ``record(state)``. With ``n_records`` (a traced int32 scalar, the same for every trial) only the first
    n_records periods run; the rest leave the state as it is (their records repeat the last one and are dropped by
    the host), so the horizon is not part of the compiled program. Shared by every path's step loop."""

    def period(st):
        st, _ = jax.lax.scan(one_block, st, None, length=cfg.blocks_per_record)
        return st, record(st)

    if n_records is None:
        return jax.lax.scan(lambda st, _: period(st), state, None, length=cfg.records_per_call)

    def guarded(st, i):
        return jax.lax.cond(i < n_records, period, lambda x: (x, record(x)), st)

    return jax.lax.scan(guarded, state, jnp.arange(cfg.records_per_call, dtype=jnp.int32))


def run_call(state, params: Params, cfg: EngineConfig, n_records=None):
    """cfg.steps_per_call steps of one trial (a server, or a Cluster when cfg.servers > 1):
    scan(records) ∘ scan(blocks) ∘ scan(steps) + compaction; ``n_records``: see :func:`records_scan`."""
    clustered = cfg.servers > 1

    def one_step(st, _):
        st, _out = cluster_step(st, params, cfg) if clustered else step(st, params, cfg)
        return st, None

    def one_block(st, _):
        st, _ = jax.lax.scan(one_step, st, None, length=cfg.compact_every)
        if clustered:
            st = st._replace(servers=jax.vmap(lambda s: compact(s, params, cfg))(st.servers))
        else:
            st = compact(st, params, cfg)
        return st, None

    def record(st):
        if clustered:
            r = jax.vmap(lambda x: _record(x, cfg))(st.servers)
            return Record(t=r.t[0], waiting=jnp.sum(r.waiting), started=jnp.sum(r.started))
        return _record(st, cfg)

    return records_scan(one_block, record, state, cfg, n_records)


def run_call_batched(states: State, params: Params, cfg: EngineConfig, n_records=None):
    """run_call vmapped over the leading (configuration × trial) axis of states and params (single-server unphased
    trials run slot-major: kernels/batched.py, same results)."""
    from . import batched

    if batched.supports(cfg):
        return batched.run_call(states, params, cfg, n_records=n_records)
    return jax.vmap(lambda st, p: run_call(st, p, cfg, n_records))(states, params)


def trace_steps(state: State, params: Params, cfg: EngineConfig, n_blocks: int) -> tuple[State, StepOut]:
    """n_blocks·compact_every steps of one trial, returning every step's StepOut (for tests and debugging)."""

    def one_block(st, _):
        if cfg.servers > 1:
            st, outs = jax.lax.scan(lambda s_, _: cluster_step(s_, params, cfg), st, None, length=cfg.compact_every)
            return st._replace(servers=jax.vmap(lambda s: compact(s, params, cfg))(st.servers)), outs
        st, outs = jax.lax.scan(lambda s_, _: step(s_, params, cfg), st, None, length=cfg.compact_every)
        return compact(st, params, cfg), outs

    st, outs = jax.lax.scan(one_block, state, None, length=n_blocks)
    return st, jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), outs)

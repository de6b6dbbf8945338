"""The XLA engine: one simulated server (one Monte Carlo trial) as a pure ``step(state, params)`` over fixed-shape arrays (docs/model.md).

Layout of one trial (all int32 unless noted):

* K **slots** hold requests in arrival order: the started ones, then the first waiting ones; slots
  ``0 .. n_used-1`` are occupied. Per slot: ``s, o, k = ⌈s/ŝ⌉``, progress ``u = c + d`` (c = min(u, k) chunks
  done, d = max(u − k, 0) tokens decoded), ``flags`` (bit 0 started, bit 1 scheduled in the previous step, bit 2
  first token emitted) and the float32 instants ``t_arr, t_first, t_ttft, t_done``. A finished request keeps its
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

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import rng

POLICIES = ("swap", "recompute", "reserve")
N_LAT = 3  # wait, ttft, e2e
LAT_NAMES = ("wait", "ttft", "e2e")

F_STARTED = 1
F_SCHED = 2
F_TTFT = 4


@dataclass(frozen=True)
class EngineConfig:
    """Static (hashable) configuration: changing it recompiles; everything else is a traced array."""

    K: int  # slots per trial
    policy: str = "swap"
    a_max: int = 8  # static cap on arrivals per step (Poisson inversion terms)
    token_budget: bool = False
    servers: int = 1  # G servers per trial in lock-step (a cluster); 1: a single server
    routing: str = "round_robin"
    phased: bool = False  # piecewise-constant (duration, λ, workload) schedule: lengths drawn on arrival
    n_u: int = 0  # uniforms stored per slot when phased
    check_work: bool = False  # accumulate per-request memory-work and compare with g_exact (int32-safe sizes)
    compact_every: int = 64  # steps per block; compaction + latency binning once per block
    blocks_per_record: int = 1  # one time-series point every this many blocks
    records_per_call: int = 16  # one host round trip every this many records
    n_bins: int = 256  # log-spaced latency histogram bins
    lat_lo_s: float = 1e-3
    lat_hi_s: float = 1e5

    @property
    def steps_per_call(self) -> int:
        return self.compact_every * self.blocks_per_record * self.records_per_call

    @property
    def bin_edges(self) -> np.ndarray:
        """Upper edges of bins 0..n_bins-2 (bin 0 is [0, lat_lo), the last bin is [lat_hi, inf))."""
        return np.geomspace(self.lat_lo_s, self.lat_hi_s, self.n_bins - 1)


class Params(NamedTuple):
    """Dynamic per-trial parameters (arrays: vmap over a grid of them without recompiling)."""

    lam: jax.Array  # float32 arrivals per second
    M: jax.Array  # int32 KV budget (tokens)
    prefill_chunk: jax.Array  # int32 prefill chunk ŝ
    budget: jax.Array  # int32 token budget B per step (ignored unless cfg.token_budget)
    warmup: jax.Array  # int32 steps before the measurement window
    min_w: jax.Array  # int32 lower bound of any waiting request's weight (starvation check)
    workload: object  # lqs.Workload pytree (lqs.Phased when cfg.phased)
    batch: object  # lqs BatchTime pytree
    phase_end: jax.Array  # float32 [P] end instants of the phases (last = inf); used when cfg.phased
    phase_lam: jax.Array  # float32 [P] arrival rate of each phase


class Slots(NamedTuple):
    s: jax.Array
    o: jax.Array
    k: jax.Array
    u: jax.Array
    flags: jax.Array
    t_arr: jax.Array
    t_first: jax.Array
    t_ttft: jax.Array
    t_done: jax.Array
    work: jax.Array  # memory-work so far (only maintained when cfg.check_work)
    u_off: jax.Array  # float32 arrival instant inside its step, as a fraction of the step (pre-drawn)
    uu: jax.Array  # float32 [K, n_u] the request's length uniforms (phased runs: lengths drawn on arrival)


class State(NamedTuple):
    slots: Slots
    keys: jax.Array  # uint32[4]: stream keys (arrivals, batch, lengths, offsets)
    step: jax.Array
    t: jax.Array  # float32 seconds
    n_used: jax.Array  # slots in use (live or finished-not-compacted)
    overflow: jax.Array  # waiting requests beyond the slots
    next_ovf: jax.Array  # request index of the first overflow request
    arrivals: jax.Array  # total arrivals (= next request index)
    completions: jax.Array
    swaps: jax.Array
    # measurement window (steps ≥ warmup)
    t_w0: jax.Array  # float32 instant the window opened (inf before)
    arrivals_w: jax.Array
    completions_w: jax.Array
    gsum_w: jax.Array  # float32 Σ g_exact of completions in the window
    mem_sum_w: jax.Array  # float32 Σ memory used over window steps
    steps_w: jax.Array
    busy_w: jax.Array  # float32 Σ b_n over window steps
    mem_max: jax.Array
    started_max: jax.Array
    waiting_max: jax.Array
    # capacity and invariant counters
    starved: jax.Array
    arr_trunc: jax.Array
    lat_lost: jax.Array
    violations: jax.Array
    # latency histograms and sums over requests that arrived in the window and finished
    hist: jax.Array  # int32 [N_LAT, n_bins]
    lat_sum: jax.Array  # float32 [N_LAT]
    lat_n: jax.Array  # int32


def trial_keys(key) -> jax.Array:
    """uint32[4] stream keys of one trial from a typed JAX PRNG key."""
    kd = jax.random.key_data(key).astype(jnp.uint32).reshape(-1)
    k0, k1 = kd[0], kd[-1]
    return jnp.stack([rng.stream_key(k0, k1, s) for s in rng.STREAMS])


def init_state(key, params: Params, cfg: EngineConfig) -> State:
    K = cfg.K
    zi = jnp.zeros((K,), jnp.int32)
    zf = jnp.zeros((K,), jnp.float32)
    slots = Slots(zi, zi, zi, zi, zi, zf, zf, zf, zf, zi, zf, jnp.zeros((K, cfg.n_u), jnp.float32))
    i0 = jnp.int32(0)
    f0 = jnp.float32(0.0)
    state = State(slots=slots, keys=trial_keys(key), step=i0, t=f0, n_used=i0, overflow=i0, next_ovf=i0,
                 arrivals=i0, completions=i0, swaps=i0, t_w0=jnp.float32(jnp.inf), arrivals_w=i0,
                 completions_w=i0, gsum_w=f0, mem_sum_w=f0, steps_w=i0, busy_w=f0, mem_max=i0, started_max=i0,
                 waiting_max=i0, starved=i0, arr_trunc=i0, lat_lost=i0, violations=i0,
                 hist=jnp.zeros((N_LAT, cfg.n_bins), jnp.int32), lat_sum=jnp.zeros((N_LAT,), jnp.float32),
                 lat_n=i0)
    return _fill_free(state, i0, params, cfg)


def length_uniforms(n_u, skey, index):
    return jnp.stack([rng.uniform(skey, index, j) for j in range(n_u)], axis=-1)


def draw_lengths(workload, skey, index, chunk, phase=None):
    """(s, o, k) of the requests with the given indices, from the counter-based stream."""
    u = length_uniforms(workload.n_uniforms, skey, index)
    s, o = workload.sample_from_uniforms(u) if phase is None else workload.sample_phase(u, phase)
    s = s.astype(jnp.int32)
    o = o.astype(jnp.int32)
    return s, o, (s + chunk - 1) // chunk


def g_exact_i32(s, o, k, chunk):
    """g_exact in int32 (exact while it stays below 2^31); products of consecutive integers are even."""
    return chunk * ((k * (k - 1)) >> 1) + s + o * s + ((o * (o + 1)) >> 1)


def affine_time(a0, a1, a2, a3, prefill_tokens, decode_tokens, mem_used):
    """a0 + a1·prefill + a2·decode + a3·mem, every product rounded on its own (no fused multiply-add), so the XLA
    engine and the fused kernel (kernels/fused.py, which calls this too) give the same bits."""
    f32 = jnp.float32
    m = rng.unfused_mul
    return (a0 + m(a1, prefill_tokens.astype(f32), prefill_tokens) + m(a2, decode_tokens.astype(f32), decode_tokens)
            + m(a3, mem_used.astype(f32), mem_used))


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


def serve(state: State, params: Params, cfg: EngineConfig) -> Served:
    """docs/model.md steps 1–4 for one server: footprints, the longest FCFS prefix under M (and B), advance, preempt."""
    sl = state.slots
    s, o, k, u, fl = sl.s, sl.o, sl.k, sl.u, sl.flags
    chunk, M = params.prefill_chunk, params.M
    iota = jnp.arange(s.shape[0], dtype=jnp.int32)

    # 1. next footprint of every live request
    live = (iota < state.n_used) & (u < k + o)
    pre = u < k
    f = jnp.where(pre, jnp.minimum((u + 1) * chunk, s), s + (u - k) + 1)
    f = jnp.where(live, f, 0)
    # 2. longest FCFS prefix under M (and the token budget)
    w = jnp.where(live, s + o, 0) if cfg.policy == "reserve" else f
    cw = jnp.cumsum(w)
    sched = live & (cw <= M)
    tok = jnp.where(pre, jnp.minimum(chunk, s - u * chunk), 1)
    if cfg.token_budget:
        tok = jnp.where(live, tok, 0)
        sched = sched & (jnp.cumsum(tok) <= params.budget)
    mem = jnp.sum(jnp.where(sched, f, 0))
    n_pre_tok = jnp.sum(jnp.where(sched & pre, tok, 0))
    n_sched = jnp.sum(sched.astype(jnp.int32))
    n_pre = jnp.sum((sched & pre).astype(jnp.int32))

    started = (fl & F_STARTED) != 0
    was_sched = (fl & F_SCHED) != 0
    swapped = live & started & was_sched & ~sched
    new_start = sched & ~started

    # the schedule could have reached past the slots while requests wait in the overflow queue: capacity limit
    n_live = jnp.sum(live.astype(jnp.int32))
    room = M - jnp.sum(w)  # = cw[-1] (exact integers; a reduction lowers to every backend, a slice does not)
    starved = (n_sched == n_live) & (state.overflow > 0) & (room >= params.min_w)
    if cfg.token_budget:
        starved = starved & (jnp.sum(tok) + 1 <= params.budget)

    # 3. advance; 4. preempt (recompute)
    u1 = u + 1
    ttft_seen = (fl & F_TTFT) != 0
    prefill_done = sched & pre & (u1 == k) & ~ttft_seen
    done = sched & (u1 == k + o)
    u_new = jnp.where(sched, u1, u)
    if cfg.policy == "recompute":
        u_new = jnp.where(live & started & ~sched, 0, u_new)
    fl_new = (jnp.where(started | sched, F_STARTED, 0) | jnp.where(sched, F_SCHED, 0)
              | jnp.where(prefill_done | ttft_seen, F_TTFT, 0))
    work = jnp.where(sched, sl.work + f, sl.work) if cfg.check_work else sl.work
    slots = sl._replace(u=u_new, flags=fl_new, work=work, t_first=jnp.where(new_start, state.t, sl.t_first))
    return Served(slots=slots, prefill_done=prefill_done, done=done, mem=mem, n_pre_tok=n_pre_tok,
                  n_dec_tok=n_sched - n_pre, n_sched=n_sched, n_done=jnp.sum(done.astype(jnp.int32)),
                  n_live=n_live, n_started=jnp.sum((live & started).astype(jnp.int32)),
                  n_swap=jnp.sum(swapped.astype(jnp.int32)), starved=starved)


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
    iota = jnp.arange(K, dtype=jnp.int32)
    fits = jnp.where(state.overflow == 0, jnp.minimum(n_arr, K - state.n_used), 0)
    n_ovf = n_arr - fits
    arrived = (iota >= state.n_used) & (iota < state.n_used + fits)
    if cfg.phased:  # the arriving requests take the lengths of the phase they arrive in
        s_p, o_p = params.workload.sample_phase(sl.uu, phase)
        s_p = s_p.astype(jnp.int32)
        o_p = o_p.astype(jnp.int32)
        sl = sl._replace(s=jnp.where(arrived, s_p, sl.s), o=jnp.where(arrived, o_p, sl.o),
                         k=jnp.where(arrived, (s_p + chunk - 1) // chunk, sl.k))
    slots = sl._replace(t_arr=jnp.where(arrived, t + rng.unfused_mul(b_n, sl.u_off, state.n_used), sl.t_arr),
                        t_ttft=jnp.where(sv.prefill_done, t_end, sl.t_ttft),
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
        arr_trunc=state.arr_trunc + trunc.astype(jnp.int32), violations=violations)
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
ROUTINGS = ("round_robin", "random", "jsq", "least_kv")


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
    for j in range(cfg.a_max):
        active = j < n_arr
        if cfg.routing == "round_robin":
            g = rr % G
            rr = rr + active.astype(jnp.int32)
        elif cfg.routing == "random":
            g = jnp.minimum((rng.uniform(cl.keys[2], first + j, 0) * G).astype(jnp.int32), G - 1)
        elif cfg.routing == "jsq":
            g = jnp.argmin(in_sys + routed).astype(jnp.int32)
        else:  # least_kv
            g = jnp.argmin(svs.mem + routed * params.prefill_chunk).astype(jnp.int32)
        routed = routed + ((gi == g) & active).astype(jnp.int32)
    trunc_g = trunc & (gi == 0)  # counted once per cluster
    new_srv, outs = jax.vmap(lambda st, sv, m, tr: finish(st, sv, b_n, m, tr, phase, params, cfg))(
        srv, svs, routed, trunc_g)
    out = StepOut(mem=jnp.sum(outs.mem), n_sched=jnp.sum(outs.n_sched), prefill_tokens=jnp.sum(outs.prefill_tokens),
                  decode_tokens=jnp.sum(outs.decode_tokens), b=b_n, arrivals=n_arr,
                  completions=jnp.sum(outs.completions), swaps=jnp.sum(outs.swaps), waiting=jnp.sum(outs.waiting))
    return Cluster(servers=new_srv, keys=cl.keys, rr=rr), out


def _bin_index(x, cfg: EngineConfig):
    """Log-spaced bin of latencies x ≥ 0: bin 0 is [0, lo), bin i ≥ 1 is [lo·r^(i−1), lo·r^i), last is open."""
    lo, hi, nb = cfg.lat_lo_s, cfg.lat_hi_s, cfg.n_bins
    per = (nb - 2) / np.log(hi / lo)
    i = 1 + jnp.floor(jnp.log(jnp.maximum(x, lo) / lo) * per).astype(jnp.int32)
    return jnp.where(x < lo, 0, jnp.clip(i, 1, nb - 1))


def compact(state: State, params: Params, cfg: EngineConfig) -> State:
    """Account finished requests (latency histograms, memory-work), squeeze finished slots out (order kept), then
    fill the free slots: first from the overflow queue, then pre-filled with the requests that will arrive next."""
    sl = state.slots
    K = sl.s.shape[0]
    iota = jnp.arange(K, dtype=jnp.int32)
    occupied = iota < state.n_used
    live = occupied & (sl.u < sl.k + sl.o)
    fin = occupied & ~live
    chunk = params.prefill_chunk
    g = g_exact_i32(sl.s, sl.o, sl.k, chunk)
    violations = state.violations
    if cfg.check_work and cfg.policy == "swap":
        violations = violations + jnp.sum((fin & (sl.work != g)).astype(jnp.int32))
    gsum_w = state.gsum_w + _fixed_order_sum(jnp.where(fin & (sl.t_done > state.t_w0), g.astype(jnp.float32), 0.0))
    # latencies of requests that arrived inside the window (t_arr ≥ t_w0) and whose arrival instant is known
    counted = fin & (sl.t_arr >= state.t_w0) & (sl.t_arr >= 0)
    lats = jnp.stack([sl.t_first - sl.t_arr, sl.t_ttft - sl.t_arr, sl.t_done - sl.t_arr])  # [3, K]
    lats = jnp.maximum(lats, 0.0)
    bins = _bin_index(lats, cfg)
    add = counted.astype(jnp.int32)
    hist = state.hist
    for m in range(N_LAT):
        hist = hist.at[m, bins[m]].add(add)
    lat_sum = state.lat_sum + _fixed_order_sum(jnp.where(counted, lats, 0.0))
    lat_n = state.lat_n + jnp.sum(add)

    # stable compaction of live slots to the front
    n_live = jnp.sum(live.astype(jnp.int32))
    slots = Slots(*squeeze(live, tuple(sl)))
    state = state._replace(hist=hist, lat_sum=lat_sum, lat_n=lat_n, gsum_w=gsum_w,
                           violations=violations)
    return _fill_free(state._replace(slots=slots), n_live, params, cfg)


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


def squeeze(keep, arrays):
    """Move the kept entries to the front, in order, zeros behind: a log-step shift network (no scatter).

    Entry i moves left by d_i = (number of dropped entries before it); d is non-decreasing over kept entries, so
    moving by the bits of d from the lowest up never makes two kept entries collide.
    """
    K = keep.shape[0]
    d = jnp.cumsum((~keep).astype(jnp.int32))  # dropped entries up to and including i (= before i when kept)
    valid = keep
    arrays = tuple(jnp.where(_col(keep, x), x, jnp.zeros_like(x)) for x in arrays)
    sh = 1
    while sh < K:
        def fwd(x):  # y[p] = x[p + sh], zero past the end
            return jnp.concatenate([x[sh:], jnp.zeros((sh,) + x.shape[1:], x.dtype)])

        d_in, v_in = fwd(d), fwd(valid)
        move_in = v_in & ((d_in & sh) != 0)
        stay = valid & ((d & sh) == 0)
        arrays = tuple(jnp.where(_col(move_in, x), fwd(x), jnp.where(_col(stay, x), x, jnp.zeros_like(x)))
                       for x in arrays)
        d = jnp.where(move_in, d_in, jnp.where(stay, d, 0))
        valid = move_in | stay
        sh *= 2
    return arrays


def _col(mask, x):
    """Broadcast a [K] mask against a [K, ...] array."""
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


def _fill_free(state: State, n_live, params: Params, cfg: EngineConfig) -> State:
    """Slots n_live.. : overflow requests (already arrived, instant unknown), then the next arrivals (pre-filled)."""
    sl = state.slots
    K = sl.s.shape[0]
    r = jnp.arange(K, dtype=jnp.int32) - n_live
    free = r >= 0
    n_fill = jnp.minimum(state.overflow, K - n_live)
    from_ovf = free & (r < state.overflow)
    idx = jnp.where(from_ovf, state.next_ovf + r, state.arrivals + (r - state.overflow))
    off = rng.uniform(state.keys[3], idx, 0)
    if cfg.phased:
        # lengths are drawn when a request arrives (its phase); overflow requests already arrived: their arrival
        # instant is lost, so they take the phase of this instant (counted in lat_lost like every overflow request)
        uu = length_uniforms(cfg.n_u, state.keys[2], idx)
        phase = jnp.sum((state.t >= params.phase_end[:-1]).astype(jnp.int32))
        s_p, o_p = params.workload.sample_phase(uu, phase)
        s_f = jnp.where(from_ovf, s_p.astype(jnp.int32), 0)
        o_f = jnp.where(from_ovf, o_p.astype(jnp.int32), 0)
        k_f = (s_f + params.prefill_chunk - 1) // params.prefill_chunk
        sl = sl._replace(uu=jnp.where(free[:, None], uu, sl.uu))
    else:
        s_f, o_f, k_f = draw_lengths(params.workload, state.keys[2], idx, params.prefill_chunk)
    slots = sl._replace(s=jnp.where(free, s_f, sl.s), o=jnp.where(free, o_f, sl.o), k=jnp.where(free, k_f, sl.k),
                        u_off=jnp.where(free, off, sl.u_off), t_arr=jnp.where(from_ovf, -1.0, sl.t_arr))
    return state._replace(slots=slots, n_used=n_live + n_fill, overflow=state.overflow - n_fill,
                          next_ovf=state.next_ovf + n_fill, lat_lost=state.lat_lost + n_fill)


class Record(NamedTuple):
    """One time-series point (taken at the end of a record period)."""

    t: jax.Array
    waiting: jax.Array
    started: jax.Array


def _record(state: State) -> Record:
    sl = state.slots
    live = (jnp.arange(sl.s.shape[0]) < state.n_used) & (sl.u < sl.k + sl.o)
    started = live & ((sl.flags & F_STARTED) != 0)
    n_started = jnp.sum(started.astype(jnp.int32))
    in_sys = state.arrivals - state.completions
    return Record(t=state.t, waiting=in_sys - n_started, started=n_started)


def run_call(state, params: Params, cfg: EngineConfig):
    """cfg.steps_per_call steps of one trial (a server, or a Cluster when cfg.servers > 1):
    scan(records) ∘ scan(blocks) ∘ scan(steps) + compaction."""
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

    def one_record(st, _):
        st, _ = jax.lax.scan(one_block, st, None, length=cfg.blocks_per_record)
        if clustered:
            r = jax.vmap(_record)(st.servers)
            rec = Record(t=r.t[0], waiting=jnp.sum(r.waiting), started=jnp.sum(r.started))
        else:
            rec = _record(st)
        return st, rec

    return jax.lax.scan(one_record, state, None, length=cfg.records_per_call)


def run_call_batched(states: State, params: Params, cfg: EngineConfig):
    """run_call vmapped over the leading (configuration × trial) axis of states and params."""
    return jax.vmap(lambda st, p: run_call(st, p, cfg))(states, params)


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

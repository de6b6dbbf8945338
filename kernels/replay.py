"""Replay of a finite experiment (docs/model.md, "Replaying a benchmark"): N given requests pass through a
client's concurrency cap into one server with the real engine's limits and run until the last one completes.

Unlike the long-run engine (kernels/step.py: K slots recycled by compaction, an overflow queue, a measurement
window), a replay holds every request of the run in its own slot, in file order, for the whole run: N is a few
hundred to a few thousand, and each request's instants (entry, first token, completion) are the output.

One step of T trials is a pure ``replay_step(state, inputs, params, cfg)``: the trials (arrival draws, batch-time
draws, and the candidate parameter sets of a calibration) are the last axis of every request array ([N, T],
slot-major as on the long-run engine's XLA path) and the axis of every per-trial value ([T]).

Per step, at instant t:

1. A request i may enter the server once it has reached the client (``t_arr[i]``) and fewer than C requests are in
   the server: the (i−C+1)-th completion frees its place (``t_free``). It enters at max(t_arr, t_free). The
   server's front end takes the entering requests one at a time, in entry order, f2 seconds each (a queue, the
   HTTP server's event loop: the i-th is through at d_i = max(d_{i−1}, t_enter_i) + f2); then a tokeniser takes
   them one at a time, f3·s seconds each (a second queue in tandem, s the prompt tokens: the i-th is through at
   e_i = max(e_{i−1}, d_i) + f3·s_i), and a request can be scheduled f0 + f1·n seconds after that, n the requests
   in the server when it entered. The event loop also streams the outputs: a first token or a completion produced
   at T reaches the client once the event loop has taken every request that entered before T (at max(T, d_last));
   the tokeniser runs beside it and holds up no output. With nothing schedulable the server is idle and
   the clock jumps to the next instant a request enters or can be scheduled.
2. The scheduled set is the longest prefix, in file order, of the schedulable requests whose block-rounded
   footprints fit in M, whose count fits the running-request cap and whose tokens fit the token budget.
3. Scheduled requests advance; started ones left out are preempted (recompute: progress restarts) or keep their
   progress (swap); ``reserve`` weighs the peak s + o.
4. The step lasts b_n (the batch-time model on the step's prefill tokens, decode tokens and memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import rng
from .state import F_SCHED, F_STARTED, F_TTFT, count_slots, prefix_max, prefix_sum, slot_iota, sum_slots

INT_BIG = 2**30  # "no limit" for the integer limits
F_TOKEN = 8  # the request has produced a token (a later token's gap is an ITL sample)


@dataclass(frozen=True)
class ReplayConfig:
    """Static configuration of a replay program (hashable: changing it recompiles)."""

    N: int  # requests of the run
    policy: str = "recompute"
    chunking: str = "fixed"  # "fixed": chunks of ŝ that fit whole (docs/model.md); "budget": vLLM V1 / SGLang, a
    #                          prompt takes min(ŝ, what is left of it, what the token budget leaves) tokens
    running_cap: bool = True  # some trial caps the running requests (False: the cap is not computed)
    budget_cap: bool = True  # some trial has a token budget (chunking "fixed"; "budget" always has one)
    serial_frontend: bool = False  # some trial's front end queues the entering requests (f2 > 0 or f3 > 0)
    steps_per_call: int = 256  # steps per jitted call between host checks
    n_bins: int = 240  # log-spaced ITL histogram bins
    itl_lo_s: float = 1e-5
    itl_hi_s: float = 1e3

    @property
    def log_edges(self):
        return np.log(self.itl_lo_s), (np.log(self.itl_hi_s) - np.log(self.itl_lo_s)) / (self.n_bins - 2)

    @property
    def bin_edges(self) -> np.ndarray:
        """Upper edges of bins 0..n_bins-2 (bin 0 is [0, lo), the last bin [hi, inf))."""
        return np.geomspace(self.itl_lo_s, self.itl_hi_s, self.n_bins - 1)


class ReplayParams(NamedTuple):
    """Per-trial parameters (leading axis = trials when batched)."""

    M: jax.Array  # int32 KV capacity (tokens)
    chunk: jax.Array  # int32 prefill chunk ŝ
    budget: jax.Array  # int32 token budget B per step (INT_BIG: none)
    max_running: jax.Array  # int32 running-request cap (INT_BIG: none)
    block: jax.Array  # int32 KV block size β (1: tokens)
    concurrency: jax.Array  # int32 client concurrency C (≥ N: none)
    frontend: jax.Array  # float32[4] (f0 s, f1 s per request in the server, f2 s per entering request in turn,
    #                      f3 s per prompt token, each request's tokens in turn)
    batch: object  # lqs BatchTime pytree


class ReplayInputs(NamedTuple):
    s: jax.Array  # int32[N]
    o: jax.Array  # int32[N]
    t_arr: jax.Array  # float32[N] instant request i reaches the client (sorted)
    key_batch: jax.Array  # uint32[] batch-time stream of the trial
    s_cum: jax.Array  # int32[N] s_0 + … + s_i, wrapped to int32 (differences below 2^31 are exact)


class ReplayState(NamedTuple):
    u: jax.Array  # int32[N] steps served (c = min(u, k) chunks, then u − k tokens decoded)
    flags: jax.Array  # int32[N] F_SCHED | F_STARTED | F_TTFT | F_TOKEN
    t_free: jax.Array  # float32[N] instant request i's place in the server frees (inf: not yet)
    t_avail: jax.Array  # float32[N] instant request i can be scheduled (inf: not entered yet)
    t_ttft: jax.Array  # float32[N] end of the step that finished the first prefill
    t_done: jax.Array  # float32[N] completion (inf: not yet)
    t_last: jax.Array  # float32[N] instant of the request's latest token
    itl_hist: jax.Array  # int32[n_bins] inter-token gaps
    itl_lo: jax.Array  # float32[n_bins] the smallest gap in each bin (inf: empty)
    itl_hi: jax.Array  # float32[n_bins] the largest gap in each bin (−inf: empty)
    t: jax.Array  # float32[] clock
    fe_free: jax.Array  # float32[] the event loop has taken every entered request by then (f2 > 0)
    tok_free: jax.Array  # float32[] the tokeniser has taken every entered request by then (f3 > 0)
    step: jax.Array  # int32[] steps run (idle jumps are not steps)
    n_done: jax.Array  # int32[]
    peak: jax.Array  # int32[] most requests in the server at a step's start
    preempted: jax.Array  # int32[] preemptions (a started request scheduled in step n−1 and not in step n)
    mem_max: jax.Array  # int32[] most KV memory in use (tokens, block-rounded)
    violations: jax.Array  # int32[] steps with memory above M


def init_state(N: int, cfg: ReplayConfig, concurrency) -> ReplayState:
    """The empty server of T trials (``concurrency``: int32[T]), slot-major: request arrays [N, T]."""
    T = concurrency.shape[0]
    i = jnp.arange(N, dtype=jnp.int32)[:, None]
    inf = jnp.float32(jnp.inf)
    z = jnp.zeros(T, jnp.int32)
    full = lambda v: jnp.full((N, T), v, jnp.float32)  # noqa: E731
    return ReplayState(u=jnp.zeros((N, T), jnp.int32), flags=jnp.zeros((N, T), jnp.int32),
                       t_free=jnp.where(i < concurrency[None, :], jnp.float32(0), inf), t_avail=full(inf),
                       t_ttft=full(inf), t_done=full(inf), t_last=full(inf),
                       itl_hist=jnp.zeros((T, cfg.n_bins), jnp.int32), itl_lo=jnp.full((T, cfg.n_bins), inf),
                       itl_hi=jnp.full((T, cfg.n_bins), -inf), t=jnp.zeros(T, jnp.float32),
                       fe_free=jnp.zeros(T, jnp.float32), tok_free=jnp.zeros(T, jnp.float32), step=z, n_done=z,
                       peak=z, preempted=z, mem_max=z, violations=z)


def _blocks(x, block):
    return ((x + block - 1) // block) * block


def _prefix_sums(*xs):
    """Inclusive prefix sums over requests of the given [N, T] arrays (None: skipped, returned as None), stacked
    into one state.prefix_sum."""
    live = [x for x in xs if x is not None]
    cum = prefix_sum(jnp.stack(live, 1)) if len(live) > 1 else prefix_sum(live[0])[:, None]
    out, j = [], 0
    for x in xs:
        out.append(None if x is None else cum[:, j])
        j += x is not None
    return tuple(out)


def _bin(gap, cfg: ReplayConfig):
    """The histogram bin of an inter-token gap: 0 below ``itl_lo_s``, then log-spaced, the last one open."""
    lo, dlog = cfg.log_edges
    return jnp.where(gap < cfg.itl_lo_s, 0,
                     jnp.clip(1 + jnp.floor((jnp.log(jnp.maximum(gap, 1e-30)) - lo) / dlog).astype(jnp.int32),
                              1, cfg.n_bins - 1))


def replay_step(state: ReplayState, inp: ReplayInputs, p: ReplayParams, cfg: ReplayConfig) -> ReplayState:
    """One step of T trials. Slot-major like the long-run engine's XLA path (kernels/batched.py): request arrays
    are [N, T] and every prefix sum over requests is a run of whole-vector adds over the trials (state.prefix_sum);
    per-trial values are [T] and broadcast over the requests."""
    s, o = inp.s, inp.o  # int32[N, 1]
    u, fl = state.u, state.flags
    i32 = jnp.int32
    k = s if cfg.chunking == "budget" else (s + p.chunk - 1) // p.chunk
    pending = u < k + o
    t = state.t
    t_enter = jnp.maximum(inp.t_arr, state.t_free)
    entered = pending & (t_enter <= t)
    in_server = count_slots(entered)
    new = entered & jnp.isinf(state.t_avail)
    fe_free, tok_free = state.fe_free, state.tok_free
    through = t_enter
    if cfg.serial_frontend:  # a queue with service c_i over this step's entries, in entry order, is through at
        # d_i = max(d_{i-1}, x_i) + c_i = S_i + max(free, max_{j≤i} (x_j − S_{j−1})), S_i = c_a + … + c_i.
        # t_enter is non-decreasing in i (sorted t_arr, places freed in completion order), so the requests that
        # entered form a prefix and this step's entries are i = a .. : the event loop's S_i = (i − a + 1)·f2, the
        # tokeniser's f3·(s_a + … + s_i), an exact integer difference of the running sums
        f2, f3 = p.frontend[:, 2], p.frontend[:, 3]
        a = count_slots(jnp.isfinite(state.t_avail))
        rf = (slot_iota(u) - a + 1).astype(jnp.float32)
        lead = prefix_max(jnp.where(new, t_enter - (rf - 1.0) * f2, -jnp.inf))
        d = rf * f2 + jnp.maximum(fe_free, lead)
        fe_free = jnp.max(jnp.where(new, d, fe_free), axis=0)
        before = jnp.where(a > 0, inp.s_cum[jnp.maximum(a - 1, 0), 0], 0)  # s_0 + … + s_{a−1}, per trial
        s_cum = inp.s_cum - before
        lead = prefix_max(jnp.where(new, d - f3 * (s_cum - s).astype(jnp.float32), -jnp.inf))
        through = f3 * s_cum.astype(jnp.float32) + jnp.maximum(tok_free, lead)
        tok_free = jnp.max(jnp.where(new, through, tok_free), axis=0)
    delay = p.frontend[:, 0] + p.frontend[:, 1] * in_server.astype(jnp.float32)
    t_avail = jnp.where(new, through + delay, state.t_avail)
    live = pending & (t_avail <= t)
    any_live = jnp.any(live, axis=0)
    all_done = ~jnp.any(pending, axis=0)
    # idle: the next instant something happens (a request can be scheduled, or one enters)
    t_next = jnp.min(jnp.where(pending, jnp.where(jnp.isinf(t_avail), t_enter, t_avail), jnp.inf), axis=0)

    live_i = live.astype(i32)
    # the prefix sums over requests (the costliest part of a step) run stacked, one program for several sums;
    # a limit that no trial sets is left out at compile time
    if cfg.chunking == "budget":  # u counts tokens: prompt tokens prefilled, then tokens decoded (k = s)
        pre = u < s
        want = jnp.where(pre, jnp.minimum(p.chunk, s - u), 1) * live_i
        cum_want, cum_live = _prefix_sums(want, live_i if cfg.running_cap else None)
        left = p.budget - (cum_want - want)  # budget left for request i after the older ones
        tok = jnp.where(pre, jnp.minimum(want, jnp.maximum(left, 0)), want) * live_i
        fit = left >= 1
        f = _blocks(u + tok, p.block)  # KV after the step: prompt so far, or s + d + 1
        w = _blocks(s + o, p.block) if cfg.policy == "reserve" else f
        (cum_w,) = _prefix_sums(w * live_i)
    else:
        pre = u < k
        tok = jnp.where(pre, jnp.minimum(p.chunk, s - u * p.chunk), 1) * live_i
        f = _blocks(jnp.where(pre, jnp.minimum((u + 1) * p.chunk, s), s + (u - k) + 1), p.block)
        w = _blocks(s + o, p.block) if cfg.policy == "reserve" else f
        cum_w, cum_live, cum_tok = _prefix_sums(w * live_i, live_i if cfg.running_cap else None,
                                                tok if cfg.budget_cap else None)
        fit = True if cum_tok is None else cum_tok <= p.budget
    sched = live & (cum_w <= p.M) & fit
    if cum_live is not None:
        sched = sched & (cum_live <= p.max_running)
    sched_i = sched.astype(i32)
    mem = sum_slots(f * sched_i)
    n_pre_tok = sum_slots(jnp.where(sched & pre, tok, 0))
    n_dec_tok = count_slots(sched & ~pre)

    started = (fl & F_STARTED) != 0 if cfg.policy == "recompute" else u > 0
    was_sched = (fl & F_SCHED) != 0
    left_out = live & started & ~sched
    n_preempt = count_slots(left_out & was_sched)

    key = inp.key_batch
    b = jax.vmap(lambda bt, u1, u2, a, d, m: bt.draw(u1, u2, a, d, m))(
        p.batch, rng.uniform(key, state.step, 0), rng.uniform(key, state.step, 1), n_pre_tok, n_dec_tok, mem)
    b = jnp.where(any_live, jnp.asarray(b, jnp.float32), 0.0)
    t_end = jnp.where(any_live | all_done, t + b, jnp.maximum(t, t_next))

    u1 = u + (tok if cfg.chunking == "budget" else 1)
    ttft_seen = (fl & F_TTFT) != 0
    first_tok = sched & pre & (u1 == k) & ~ttft_seen
    dec_tok = sched & ~pre
    done = sched & (u1 == k + o)
    u_new = jnp.where(sched, u1, u)
    t_out = jnp.maximum(t_end, fe_free) if cfg.serial_frontend else t_end  # what the client sees, and when
    if cfg.policy == "recompute":
        u_new = jnp.where(left_out, 0, u_new)
    had_tok = (fl & F_TOKEN) != 0
    gap_mask = dec_tok & had_tok
    # A gap from the previous step's end (the request decoded then: t_last = t) is this step's duration, one value
    # per trial: its samples are counted per trial. The others (a request left out of some steps) are rare and
    # go through a scatter only in the steps that have one.
    regular = gap_mask & (state.t_last == t)
    gap_reg = t_end - t
    idx_reg = _bin(gap_reg, cfg)
    trial = jnp.arange(t.shape[0], dtype=i32)
    n_reg = count_slots(regular)
    hist = state.itl_hist.at[trial, idx_reg].add(n_reg)
    h_lo = state.itl_lo.at[trial, idx_reg].min(jnp.where(n_reg > 0, gap_reg, jnp.inf))
    h_hi = state.itl_hi.at[trial, idx_reg].max(jnp.where(n_reg > 0, gap_reg, -jnp.inf))
    irregular = gap_mask & ~regular

    def scatter_irregular(h):
        hist, h_lo, h_hi = h
        gap = t_end - state.t_last
        idx = _bin(gap, cfg)
        tr = jnp.broadcast_to(trial[None, :], idx.shape)
        return (hist.at[tr, idx].add(irregular.astype(i32)), h_lo.at[tr, idx].min(jnp.where(irregular, gap, jnp.inf)),
                h_hi.at[tr, idx].max(jnp.where(irregular, gap, -jnp.inf)))

    hist, h_lo, h_hi = jax.lax.cond(jnp.any(irregular), scatter_irregular, lambda h: h, (hist, h_lo, h_hi))
    tok_now = first_tok | dec_tok
    fl_new = ((started | sched).astype(i32) * F_STARTED + sched_i * F_SCHED
              + (first_tok | ttft_seen).astype(i32) * F_TTFT + (tok_now | had_tok).astype(i32) * F_TOKEN)
    n_done = state.n_done + count_slots(done)
    # the (i−C+1)-th completion frees request i's place: i in [n_done_old + C, n_done_new + C)
    iota = slot_iota(u)
    freed = (iota >= state.n_done + p.concurrency) & (iota < n_done + p.concurrency)
    return ReplayState(
        u=u_new, flags=fl_new, t_free=jnp.where(freed, t_out, state.t_free), t_avail=t_avail,
        t_ttft=jnp.where(first_tok, t_out, state.t_ttft), t_done=jnp.where(done, t_out, state.t_done),
        t_last=jnp.where(tok_now, t_end, state.t_last), itl_hist=hist, itl_lo=h_lo, itl_hi=h_hi, t=t_end,
        fe_free=fe_free, tok_free=tok_free,
        step=state.step + any_live.astype(i32), n_done=n_done, peak=jnp.maximum(state.peak, in_server),
        preempted=state.preempted + n_preempt, mem_max=jnp.maximum(state.mem_max, mem),
        violations=state.violations + (mem > p.M).astype(i32))


def replay_call(state, inputs, params, cfg: ReplayConfig):
    """``cfg.steps_per_call`` steps of every trial (slot-major state; trials on the last axis)."""

    def body(c, _):
        return replay_step(c, inputs, params, cfg), None

    return jax.lax.scan(body, state, None, length=cfg.steps_per_call)[0]


replay_call_jit = jax.jit(replay_call, static_argnames=("cfg",))

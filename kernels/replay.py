"""Replay of a finite experiment (docs/model.md, "Replaying a benchmark"): N given requests pass through a
client's concurrency cap into one server with the real engine's limits and run until the last one completes.

Unlike the long-run engine (kernels/step.py: K slots recycled by compaction, an overflow queue, a measurement
window), a replay holds every request of the run in its own slot, in file order, for the whole run: N is a few
hundred to a few thousand, and each request's instants (entry, first token, completion) are the output.

One trial is a pure ``replay_step(state, inputs, params, cfg)``; trials (arrival draws, batch-time draws, and the
candidate parameter sets of a calibration) are vmapped over a leading axis of ``inputs`` and ``params``.

Per step, at instant t:

1. A request i may enter the server once it has reached the client (``t_arr[i]``) and fewer than C requests are in
   the server: the (i−C+1)-th completion frees its place (``t_free``). It enters at max(t_arr, t_free) and can be
   scheduled f0 + f1·n seconds later, n the requests in the server when it entered (the server's front end:
   HTTP, tokenisation, and the streaming of the other requests' tokens). With nothing schedulable the server is
   idle and the clock jumps to the next instant a request enters or can be scheduled.
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
from .state import F_SCHED, F_STARTED, F_TTFT

INT_BIG = 2**30  # "no limit" for the integer limits
F_TOKEN = 8  # the request has produced a token (a later token's gap is an ITL sample)


@dataclass(frozen=True)
class ReplayConfig:
    """Static configuration of a replay program (hashable: changing it recompiles)."""

    N: int  # requests of the run
    policy: str = "recompute"
    chunking: str = "fixed"  # "fixed": chunks of ŝ that fit whole (docs/model.md); "budget": vLLM V1 / SGLang, a
    #                          prompt takes min(ŝ, what is left of it, what the token budget leaves) tokens
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
    frontend: jax.Array  # float32[2] (f0 s, f1 s per request in the server): entry → schedulable delay
    batch: object  # lqs BatchTime pytree


class ReplayInputs(NamedTuple):
    s: jax.Array  # int32[N]
    o: jax.Array  # int32[N]
    t_arr: jax.Array  # float32[N] instant request i reaches the client (sorted)
    key_batch: jax.Array  # uint32[] batch-time stream of the trial


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
    step: jax.Array  # int32[] steps run (idle jumps are not steps)
    n_done: jax.Array  # int32[]
    peak: jax.Array  # int32[] most requests in the server at a step's start
    preempted: jax.Array  # int32[] preemptions (a started request scheduled in step n−1 and not in step n)
    mem_max: jax.Array  # int32[] most KV memory in use (tokens, block-rounded)
    violations: jax.Array  # int32[] steps with memory above M


def init_state(N: int, cfg: ReplayConfig, concurrency) -> ReplayState:
    i = jnp.arange(N, dtype=jnp.int32)
    inf = jnp.float32(jnp.inf)
    z = jnp.int32(0)
    return ReplayState(u=jnp.zeros(N, jnp.int32), flags=jnp.zeros(N, jnp.int32),
                       t_free=jnp.where(i < concurrency, jnp.float32(0), inf), t_avail=jnp.full(N, inf),
                       t_ttft=jnp.full(N, inf),
                       t_done=jnp.full(N, inf), t_last=jnp.full(N, inf),
                       itl_hist=jnp.zeros(cfg.n_bins, jnp.int32), itl_lo=jnp.full(cfg.n_bins, inf),
                       itl_hi=jnp.full(cfg.n_bins, -inf),
                       t=jnp.float32(0), step=z, n_done=z, peak=z,
                       preempted=z, mem_max=z, violations=z)


def _blocks(x, block):
    return ((x + block - 1) // block) * block


def replay_step(state: ReplayState, inp: ReplayInputs, p: ReplayParams, cfg: ReplayConfig) -> ReplayState:
    s, o = inp.s, inp.o
    u, fl = state.u, state.flags
    i32 = jnp.int32
    k = s if cfg.chunking == "budget" else (s + p.chunk - 1) // p.chunk
    pending = u < k + o
    t = state.t
    t_enter = jnp.maximum(inp.t_arr, state.t_free)
    entered = pending & (t_enter <= t)
    in_server = count(entered)
    t_avail = jnp.where(entered & jnp.isinf(state.t_avail),
                        t_enter + p.frontend[0] + p.frontend[1] * in_server.astype(jnp.float32), state.t_avail)
    live = pending & (t_avail <= t)
    any_live = jnp.any(live)
    all_done = ~jnp.any(pending)
    # idle: the next instant something happens (a request can be scheduled, or one enters)
    t_next = jnp.min(jnp.where(pending, jnp.where(jnp.isinf(t_avail), t_enter, t_avail), jnp.inf))

    live_i = live.astype(i32)
    if cfg.chunking == "budget":  # u counts tokens: prompt tokens prefilled, then tokens decoded
        k = s  # the prefill ends when u reaches s
        pre = u < s
        want = jnp.where(pre, jnp.minimum(p.chunk, s - u), 1) * live_i
        left = p.budget - (jnp.cumsum(want) - want)  # budget left for request i after the older ones
        tok = jnp.where(pre, jnp.minimum(want, jnp.maximum(left, 0)), want) * live_i
        fit_budget = left >= 1
        f = _blocks(u + tok, p.block)  # KV after the step: prompt so far, or s + d + 1
    else:
        pre = u < k
        tok = jnp.where(pre, jnp.minimum(p.chunk, s - u * p.chunk), 1) * live_i
        fit_budget = jnp.cumsum(tok) <= p.budget
        f = _blocks(jnp.where(pre, jnp.minimum((u + 1) * p.chunk, s), s + (u - k) + 1), p.block)
    w = _blocks(s + o, p.block) if cfg.policy == "reserve" else f
    sched = live & (jnp.cumsum(w * live_i) <= p.M) & (jnp.cumsum(live_i) <= p.max_running) & fit_budget
    sched_i = sched.astype(i32)
    mem = jnp.sum(f * sched_i)
    n_pre_tok = jnp.sum(jnp.where(sched & pre, tok, 0))
    n_dec_tok = count(sched & ~pre)

    started = (fl & F_STARTED) != 0 if cfg.policy == "recompute" else u > 0
    was_sched = (fl & F_SCHED) != 0
    left_out = live & started & ~sched
    n_preempt = count(left_out & was_sched)

    key = inp.key_batch
    b = p.batch.draw(rng.uniform(key, state.step, 0), rng.uniform(key, state.step, 1), n_pre_tok, n_dec_tok, mem)
    b = jnp.where(any_live, jnp.asarray(b, jnp.float32), 0.0)
    t_end = jnp.where(any_live | all_done, t + b, jnp.maximum(t, t_next))

    u1 = u + (tok if cfg.chunking == "budget" else 1)
    ttft_seen = (fl & F_TTFT) != 0
    first_tok = sched & pre & (u1 == k) & ~ttft_seen
    dec_tok = sched & ~pre
    done = sched & (u1 == k + o)
    u_new = jnp.where(sched, u1, u)
    if cfg.policy == "recompute":
        u_new = jnp.where(left_out, 0, u_new)
    had_tok = (fl & F_TOKEN) != 0
    gap_mask = dec_tok & had_tok
    lo, dlog = cfg.log_edges
    gap = t_end - state.t_last
    idx = jnp.where(gap < cfg.itl_lo_s, 0,
                    jnp.clip(1 + jnp.floor((jnp.log(jnp.maximum(gap, 1e-30)) - lo) / dlog).astype(i32),
                             1, cfg.n_bins - 1))
    hist = state.itl_hist.at[idx].add(gap_mask.astype(i32))
    h_lo = state.itl_lo.at[idx].min(jnp.where(gap_mask, gap, jnp.inf))
    h_hi = state.itl_hi.at[idx].max(jnp.where(gap_mask, gap, -jnp.inf))
    tok_now = first_tok | dec_tok
    fl_new = ((started | sched).astype(i32) * F_STARTED + sched_i * F_SCHED
              + (first_tok | ttft_seen).astype(i32) * F_TTFT + (tok_now | had_tok).astype(i32) * F_TOKEN)
    n_done = state.n_done + count(done)
    # the (i−C+1)-th completion frees request i's place: i in [n_done_old + C, n_done_new + C)
    iota = jnp.arange(s.shape[0], dtype=i32)
    freed = (iota >= state.n_done + p.concurrency) & (iota < n_done + p.concurrency)
    return ReplayState(
        u=u_new, flags=fl_new, t_free=jnp.where(freed, t_end, state.t_free), t_avail=t_avail,
        t_ttft=jnp.where(first_tok, t_end, state.t_ttft), t_done=jnp.where(done, t_end, state.t_done),
        t_last=jnp.where(tok_now, t_end, state.t_last), itl_hist=hist, itl_lo=h_lo, itl_hi=h_hi, t=t_end,
        step=state.step + any_live.astype(i32), n_done=n_done, peak=jnp.maximum(state.peak, in_server),
        preempted=state.preempted + n_preempt, mem_max=jnp.maximum(state.mem_max, mem),
        violations=state.violations + (mem > p.M).astype(i32))


def count(mask):
    return jnp.sum(mask.astype(jnp.int32))


def replay_call(state, inputs, params, cfg: ReplayConfig):
    """``cfg.steps_per_call`` steps of every trial (leading axis of state, inputs and params)."""

    def one(st, inp, p):
        def body(c, _):
            return replay_step(c, inp, p, cfg), None

        return jax.lax.scan(body, st, None, length=cfg.steps_per_call)[0]

    return jax.vmap(one)(state, inputs, params)


replay_call_jit = jax.jit(replay_call, static_argnames=("cfg",))

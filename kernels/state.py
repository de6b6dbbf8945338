"""State of one simulated server (one Monte Carlo trial): static configuration, per-trial parameters, the slot
layout and the typed state (every field with its dtype and shape for one trial), and the counter-based draws of
request lengths. The step is kernels/step.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import rng

POLICIES = ("swap", "recompute", "reserve")
N_LAT = 4  # wait, ttft, e2e, tpot
LAT_NAMES = ("wait", "ttft", "e2e", "tpot")  # tpot: (E2E − TTFT)/(o − 1), the time per output token after the first

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
    servers: int = 1  # G servers per trial in lock-step (a cluster); 1: a single server (routing: Params.routing)
    phased: bool = False  # piecewise-constant (duration, λ, workload) schedule: lengths drawn on arrival
    n_u: int = 0  # uniforms stored per slot when phased
    phase_hist: int = 0  # also one latency histogram per window of arrival (Params.phase_end; unphased runs)
    check_work: bool = False  # accumulate per-request memory-work and compare with g_exact (int32-safe sizes)
    running_cap: bool = False  # at most Params.max_running requests scheduled per step (vLLM max_num_seqs)
    blocks: bool = False  # KV held in whole blocks of Params.block tokens (vLLM block_size)
    arrivals: str = "poisson"  # "poisson": Poisson(λ·b_n) per step; "instants": given instants (Params.arr_t)
    compact_every: int = 64  # steps per record period: compaction, latency binning and the step log once a period
    periods_per_point: int = 1  # one time-series point every this many record periods
    points_per_call: int = 16  # one host round trip every this many time-series points
    n_bins: int = 256  # log-spaced latency histogram bins
    lat_lo_s: float = 1e-3
    lat_hi_s: float = 1e5

    @property
    def steps_per_call(self) -> int:
        return self.compact_every * self.periods_per_point * self.points_per_call

    @property
    def steps_per_point(self) -> int:
        return self.compact_every * self.periods_per_point

    @property
    def log_len(self) -> int:
        """Entries of the record period's step log (compact_every rounded up to a power of two: Triton block shapes)."""
        return 1 << max(0, self.compact_every - 1).bit_length()

    @property
    def bin_edges(self) -> np.ndarray:
        """Upper edges of bins 0..n_bins-2 (bin 0 is [0, lat_lo), the last bin is [lat_hi, inf))."""
        return np.geomspace(self.lat_lo_s, self.lat_hi_s, self.n_bins - 1)


#: a cluster's routing rules, in the order of Params.routing's index
ROUTINGS = ("round_robin", "random", "jsq", "least_kv")


class Params(NamedTuple):
    """Dynamic per-trial parameters (arrays: vmap over a grid of them without recompiling)."""

    lam: jax.Array  # float32[] arrivals per second
    M: jax.Array  # int32[] KV budget (tokens)
    prefill_chunk: jax.Array  # int32[] prefill chunk ŝ (tokens)
    budget: jax.Array  # int32[] token budget B per step (ignored unless cfg.token_budget)
    warmup: jax.Array  # int32[] steps before the measurement window
    min_w: jax.Array  # int32[] lower bound of any waiting request's weight (starvation check)
    workload: object  # lqs.Workload pytree (lqs.Phased when cfg.phased)
    batch: object  # lqs BatchTime pytree
    phase_end: jax.Array  # float32[P] end instants of the phases (last = inf); used when cfg.phased, and as the
    #                       latency windows when cfg.phase_hist
    phase_lam: jax.Array  # float32[P] arrival rate of each phase
    routing: jax.Array = None  # int32[] index into ROUTINGS: a cluster's routing rule (traced: one program)
    max_running: jax.Array = None  # int32[] running-request cap (used when cfg.running_cap)
    block: jax.Array = None  # int32[] KV block size β in tokens (used when cfg.blocks)
    arr_t: jax.Array = None  # float32[L] sorted arrival instants, +inf behind the last (cfg.arrivals == "instants")


class Keys(NamedTuple):
    """A trial's counter-based stream keys (kernels/rng.py): one uint32 word per stream, [] for one trial or [N]
    for a batch of trials. A draw is a hash of (stream key, counter, sub-index)."""

    arrivals: jax.Array  # uint32[]: Poisson arrival count of step n (counter = step)
    batch: jax.Array  # uint32[]: batch time of step n (counter = step)
    lengths: jax.Array  # uint32[]: (s, o) of request i (counter = request index)
    offsets: jax.Array  # uint32[]: arrival instant of request i inside its step (counter = request index)


class Slots(NamedTuple):
    """K request slots of one server in arrival order (the slot axis first: [K] for one trial, [K, N] slot-major on
    the XLA path, [N, K] trial-major between calls)."""

    # the request
    s: jax.Array  # int32[K] prompt tokens
    o: jax.Array  # int32[K] output tokens
    k: jax.Array  # int32[K] prefill steps ⌈s/ŝ⌉
    # its progress
    u: jax.Array  # int32[K] steps served: c = min(u, k) chunks, then u − k tokens decoded
    flags: jax.Array  # int32[K] F_SCHED (scheduled in the previous step); recompute also F_STARTED, F_TTFT
    # its instants, float32 seconds
    t_arr: jax.Array  # float32[K] arrival; NaN while pre-filled (and once arrived, until compaction stamps it)
    t_first: jax.Array  # float32[K] first scheduled
    t_ttft: jax.Array  # float32[K] end of the step that finished the prefill (first token)
    t_done: jax.Array  # float32[K] end of the last decode step
    # bookkeeping
    work: jax.Array  # int32[K] memory-work so far (token·steps; maintained only when cfg.check_work)
    u_off: jax.Array  # float32[K] arrival instant inside its step, as a fraction of the step (pre-drawn); with
    #                   given instants (cfg.arrivals == "instants") the arrival instant itself
    uu: jax.Array  # float32[K, n_u] the request's length uniforms (phased runs draw lengths on arrival)


class Clock(NamedTuple):
    step: jax.Array  # int32[] steps run
    t: jax.Array  # float32[] simulated seconds (compensated sum of the b_n: t_c holds what float32 dropped)
    t_c: jax.Array  # float32[] Kahan compensation of t (a day of 2·10⁶ steps drifts 3 % without it)
    t_w0: jax.Array  # float32[] instant the measurement window opened (inf before step == warmup)


class Queue(NamedTuple):
    """Where the requests in the system are: slots 0 .. n_used-1, then the overflow queue (a count)."""

    n_used: jax.Array  # int32[] slots in use (live, or finished until the next compaction)
    overflow: jax.Array  # int32[] arrived requests waiting beyond the K slots
    next_ovf: jax.Array  # int32[] request index of the first overflow request


class Counters(NamedTuple):
    """Totals since the start (request counts and maxima)."""

    arrivals: jax.Array  # int32[] total arrivals (= index of the next request)
    completions: jax.Array  # int32[]
    swaps: jax.Array  # int32[] requests swapped out / preempted
    mem_max: jax.Array  # int32[] most KV memory in use in a step (tokens)
    started_max: jax.Array  # int32[] most started requests in a step
    waiting_max: jax.Array  # int32[] most waiting requests at the start of a step


class Window(NamedTuple):
    """Sums over the measurement window (steps ≥ warmup)."""

    arrivals: jax.Array  # int32[]
    completions: jax.Array  # int32[]
    gsum: jax.Array  # float32[] Σ g_exact of the completions (token·steps)
    mem_sum: jax.Array  # float32[] Σ memory in use over the steps (token·steps)
    steps: jax.Array  # int32[]
    busy: jax.Array  # float32[] Σ b_n over the steps (seconds)
    mem_c: jax.Array  # float32[] Kahan compensations of mem_sum and busy
    busy_c: jax.Array


class Limits(NamedTuple):
    """Capacity and invariant counters: zero in a run that followed the model exactly."""

    starved: jax.Array  # int32[] steps whose schedule could have reached past the K slots
    arr_trunc: jax.Array  # int32[] steps whose Poisson draw exceeded the static arrival cap (given instants: more
    #                       than a_max in one step, or the instants ran out)
    lat_lost: jax.Array  # int32[] requests that waited in the overflow queue (arrival instant unknown)
    violations: jax.Array  # int32[] broken invariants (memory > M, conservation, memory-work ≠ g_exact)


class Latency(NamedTuple):
    """Latencies of the requests that arrived in the window and finished (wait, ttft, e2e)."""

    hist: jax.Array  # int32[N_LAT·(1 + cfg.phase_hist), n_bins] log-spaced histograms: the measurement window's,
    #                  then one per latency window of arrival (rows N_LAT·(1 + p) + m) when cfg.phase_hist
    total: jax.Array  # float32[N_LAT] sums (seconds)
    n: jax.Array  # int32[] requests counted


class StepLog(NamedTuple):
    """The record period's step log (entry = step mod compact_every), read by compaction to stamp the arrival
    instants of the period's arrivals: a step writes three numbers per trial and nothing per slot."""

    t: jax.Array  # float32[log_len] instant the step started
    b: jax.Array  # float32[log_len] its duration b_n
    n_used: jax.Array  # int32[log_len] slots in use after it; INT32_MAX in entries no step wrote


class State(NamedTuple):
    """One server of one trial (the leading axes [N] or [G] of batches and clusters come before every leaf)."""

    slots: Slots
    keys: Keys
    clock: Clock
    queue: Queue
    counters: Counters
    window: Window
    limits: Limits
    latency: Latency
    log: StepLog


def get_path(tree, path: str):
    """``tree.a.b`` for ``path = "a.b"``."""
    for name in path.split("."):
        tree = getattr(tree, name)
    return tree


def replace_paths(tree, values: dict):
    """A copy of a tree of NamedTuples with the leaves named by dotted paths replaced."""
    here, deeper = {}, {}
    for path, v in values.items():
        head, _, rest = path.partition(".")
        if rest:
            deeper.setdefault(head, {})[rest] = v
        else:
            here[head] = v
    for head, sub in deeper.items():
        here[head] = replace_paths(getattr(tree, head), sub)
    return tree._replace(**here)


def empty(cls):
    """A NamedTuple (nested for State) with every leaf None: a skeleton to fill with :func:`replace_paths`."""
    kids = {State: dict(slots=Slots, keys=Keys, clock=Clock, queue=Queue, counters=Counters, window=Window,
                        limits=Limits, latency=Latency, log=StepLog)}.get(cls, {})
    return cls(**{f: empty(kids[f]) if f in kids else None for f in cls._fields})


def trial_keys(key) -> Keys:
    """The stream keys of one trial from a typed JAX PRNG key."""
    kd = jax.random.key_data(key).astype(jnp.uint32).reshape(-1)
    k0, k1 = kd[0], kd[-1]
    return Keys(*(rng.stream_key(k0, k1, s) for s in rng.STREAMS))


def length_uniforms(n_u, skey, index):
    return jnp.stack([rng.uniform(skey, index, j) for j in range(n_u)], axis=-1)


def draw_lengths(workload, skey, index, chunk, phase=None):
    """(s, o, k) of the requests with the given indices, from the counter-based stream."""
    u = length_uniforms(workload.n_uniforms, skey, index)
    s, o = workload.sample_from_uniforms(u) if phase is None else workload.sample_phase(u, phase)
    s = s.astype(jnp.int32)
    o = o.astype(jnp.int32)
    if getattr(workload, "prefilled", False):  # a decode server's requests arrive prefilled (lqs.Disaggregated)
        return s, o, jnp.zeros_like(s)
    return s, o, (s + chunk - 1) // chunk


def g_exact_i32(s, o, k, chunk):
    """g_exact in int32 (exact while it stays below 2^31); products of consecutive integers are even. A request
    that arrives prefilled (k = 0: a decode server's) has no prefill term."""
    return chunk * ((k * (k - 1)) >> 1) + s * jnp.minimum(k, 1) + o * s + ((o * (o + 1)) >> 1)


def affine_time(a0, a1, a2, a3, prefill_tokens, decode_tokens, mem_used):
    """a0 + a1·prefill + a2·decode + a3·mem, every product rounded on its own (no fused multiply-add), so the XLA
    engine and the fused kernel (kernels/fused.py, which calls this too) give the same bits."""
    f32 = jnp.float32
    m = rng.unfused_mul
    return (a0 + m(a1, prefill_tokens.astype(f32), prefill_tokens) + m(a2, decode_tokens.astype(f32), decode_tokens)
            + m(a3, mem_used.astype(f32), mem_used))


# ------------------------------------------------------------------ slot-axis helpers
# The step's slot arrays have the slot axis first and any batch axes after it: [K] for one trial (the fused kernel,
# clusters, traces vmap over that), [K, N] on the XLA path, which runs a block of trials slot-major
# (kernels/batched.py) so that every prefix sum and reduction over slots is a run of whole-vector adds.
def slot_iota(like):
    """Slot index, shaped [K, 1, ...] to broadcast against a [K, *batch] slot array."""
    return jnp.arange(like.shape[0], dtype=jnp.int32).reshape((like.shape[0],) + (1,) * (like.ndim - 1))


def sum_slots(x):
    return jnp.sum(x, axis=0)


def count_slots(mask):
    return jnp.sum(mask.astype(jnp.int32), axis=0)


PREFIX_GROUP = 16  # slots summed row by row in each group of the slot-major prefix sum


def prefix_sum(x):
    """Inclusive prefix sum over the slot axis (axis 0), exact in int32.

    One trial ([K]): ``jnp.cumsum`` (what every backend, Triton included, lowers). Slot-major [K, N]: groups of
    PREFIX_GROUP slots summed row by row (whole-vector adds over the trials), then the group totals by log-step
    shifts, which on a CPU is much faster than XLA's cumsum (a reduce-window per element; bench/results/README.md).
    Integer adds in any order give the same bits."""
    if x.ndim == 1:
        return jnp.cumsum(x)
    rows, tot, incl = _grouped_scan(x, jnp.add, 0)
    out = jnp.stack(rows, 1) + (incl - tot)[:, None]
    return out.reshape((-1,) + x.shape[1:])[:x.shape[0]]


def prefix_max(x):
    """Inclusive running maximum over the slot axis (axis 0), by the same grouped scan as :func:`prefix_sum`
    (a maximum in any order gives the same bits)."""
    if x.ndim == 1:
        return jax.lax.cummax(x, axis=0)
    rows, _, incl = _grouped_scan(x, jnp.maximum, -jnp.inf)
    tail = ((0, 0),) * (x.ndim - 1)
    before = jnp.pad(incl[:-1], ((1, 0),) + tail, constant_values=-jnp.inf)  # the groups before each group
    out = jnp.maximum(jnp.stack(rows, 1), before[:, None])
    return out.reshape((-1,) + x.shape[1:])[:x.shape[0]]


def _grouped_scan(x, op, identity):
    """The grouped scan of the associative ``op`` over axis 0 of a slot-major [K, N] array: PREFIX_GROUP slots
    combined row by row (padding with ``identity``), then the group totals by log-step shifts. Returns (rows: the
    running value inside each group, one [groups, N] array per position; tot: each group's total; incl: the
    inclusive scan of the totals)."""
    n, b = x.shape[0], PREFIX_GROUP
    m = -(-n // b) * b
    tail = ((0, 0),) * (x.ndim - 1)
    xp = jnp.pad(x, ((0, m - n),) + tail, constant_values=identity).reshape((m // b, b) + x.shape[1:])
    rows = [xp[:, 0]]
    for j in range(1, b):
        rows.append(op(rows[-1], xp[:, j]))
    tot = rows[-1]
    incl, sh = tot, 1
    while sh < tot.shape[0]:
        incl = op(incl, jnp.pad(incl[:-sh], ((sh, 0),) + tail, constant_values=identity))
        sh *= 2
    return rows, tot, incl

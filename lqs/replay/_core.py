"""The replay program and its metrics: every trial (arrival draw × batch-time draw × candidate parameter set) of
one run in one vmapped JAX program (kernels/replay.py), then the benchmark clients' own metrics per trial."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import LqsError
from ..kernels.replay import INT_BIG, ReplayConfig, ReplayInputs, ReplayParams, init_state, replay_call_jit
from ..kernels.state import trial_keys

#: quantiles every report gives
QUANTILES = (0.5, 0.9, 0.99)
METRICS = ("ttft", "tpot", "itl", "e2e")


@dataclass(frozen=True, eq=False)
class RawReplay:
    """Per-trial arrays of one replay (leading axis = trials)."""

    t_enter: np.ndarray  # float64[T, N] entry into the server
    t_ttft: np.ndarray  # float64[T, N] first token
    t_done: np.ndarray  # float64[T, N] completion
    itl_hist: np.ndarray  # int64[T, n_bins]
    itl_lo: np.ndarray  # float64[T, n_bins] smallest gap in each bin
    itl_hi: np.ndarray  # float64[T, n_bins] largest gap in each bin
    steps: np.ndarray  # int64[T]
    peak: np.ndarray  # int64[T] most requests in the server
    preempted: np.ndarray  # int64[T]
    mem_max: np.ndarray  # int64[T]
    violations: np.ndarray  # int64[T]
    finished: np.ndarray  # bool[T] every request completed within the step limit
    cfg: ReplayConfig


def _stack(models, T):
    """A batch-time model pytree with a leading trial axis: one model broadcast, or a list of T models of one kind."""
    if not isinstance(models, (list, tuple)):
        return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (T,) + np.shape(x)).copy(), models)
    if len(models) != T:
        raise LqsError("batch", f"{len(models)} models", f"must give one model per trial ({T})")
    return jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *models)


def _frontend(f, T):
    """float32[T, 4] (f0, f1, f2, f3) from (f0, f1[, f2[, f3]]) or one row per trial (a missing f2 or f3 is 0)."""
    a = np.asarray(f, np.float32)
    a = np.broadcast_to(a, (T, a.shape[-1])) if a.ndim == 1 else a
    return np.concatenate([a, np.zeros((T, 4 - a.shape[1]), np.float32)], axis=1) if a.shape[1] < 4 else a.copy()


def _per_trial(x, T, dtype):
    a = np.asarray(x, dtype)
    return np.broadcast_to(a, (T,)).copy() if a.ndim == 0 else a


def run(s, o, t_arr, *, M, chunk, budget=None, max_running=None, block=1, concurrency=None, frontend=(0.0, 0.0),
        batch, policy: str, key, chunking: str = "fixed", max_steps: int | None = None, progress=None,
        steps_per_call: int = 256) -> RawReplay:
    """Replay N requests (s, o in issue order) arriving at ``t_arr`` (float[T, N]) for T trials. Every server
    parameter may be a scalar or one value per trial (``frontend``: (f0, f1[, f2[, f3]]) or float[T, 2 to 4]); ``batch`` one
    BatchTime or a list of T. ``progress``: a
    callable(done_requests, total) or None."""
    s = np.asarray(s, np.int32)
    o = np.asarray(o, np.int32)
    t_arr = np.asarray(t_arr, np.float32)
    T, N = t_arr.shape
    if s.shape != (N,) or o.shape != (N,):
        raise LqsError("requests", f"{s.size} lengths", f"must give one (s, o) per arrival ({N})")
    big = lambda v: INT_BIG if v is None else v  # noqa: E731
    capped = lambda v: bool(np.any(np.asarray(big(v)) < INT_BIG))  # noqa: E731
    fe = _frontend(frontend, T)
    cfg = ReplayConfig(N=N, policy=policy, chunking=chunking, running_cap=capped(max_running),
                       budget_cap=capped(budget), serial_frontend=bool(np.any(fe[:, 2:] > 0)),
                       steps_per_call=steps_per_call)
    params = ReplayParams(M=_per_trial(M, T, np.int32), chunk=_per_trial(chunk, T, np.int32),
                          budget=_per_trial(big(budget), T, np.int32),
                          max_running=_per_trial(big(max_running), T, np.int32),
                          block=_per_trial(block, T, np.int32),
                          concurrency=_per_trial(min(big(concurrency), INT_BIG) if np.ndim(concurrency) == 0
                                                 else concurrency, T, np.int32),
                          frontend=fe, batch=_stack(batch, T))
    keys = jax.vmap(trial_keys)(jax.random.split(key, T))
    # prompt tokens of requests 0..i, wrapped to int32: a difference of two is exact while below 2^31
    s_cum = (np.cumsum(s, dtype=np.int64) % 2**32).astype(np.uint32).view(np.int32)
    inputs = ReplayInputs(s=jnp.asarray(s)[:, None], o=jnp.asarray(o)[:, None], t_arr=jnp.asarray(t_arr.T),
                          key_batch=keys.batch, s_cum=jnp.asarray(s_cum)[:, None])
    state = init_state(N, cfg, jnp.asarray(params.concurrency))
    k = s if chunking == "budget" else -(-s // np.maximum(np.asarray(chunk).max(initial=1), 1))
    if max_steps is None:  # every non-idle step advances a request (recompute may redo work: 8× room)
        max_steps = int(8 * (np.sum(k.astype(np.int64) + o) + N) + 4 * steps_per_call)
    done_steps = 0
    while True:
        state = replay_call_jit(state, inputs, params, cfg)
        done_steps += steps_per_call
        n_done = np.asarray(state.n_done)
        if progress is not None:
            progress(int(n_done.sum()), T * N)
        if np.all(n_done >= N) or done_steps >= max_steps:
            break
    st = jax.device_get(state)
    t_arr64 = t_arr.astype(np.float64)
    return RawReplay(t_enter=np.maximum(t_arr64, np.asarray(st.t_free, np.float64).T),
                     t_ttft=np.asarray(st.t_ttft, np.float64).T, t_done=np.asarray(st.t_done, np.float64).T,
                     itl_hist=np.asarray(st.itl_hist, np.int64), itl_lo=np.asarray(st.itl_lo, np.float64),
                     itl_hi=np.asarray(st.itl_hi, np.float64),
                     steps=np.asarray(st.step, np.int64),
                     peak=np.asarray(st.peak, np.int64), preempted=np.asarray(st.preempted, np.int64),
                     mem_max=np.asarray(st.mem_max, np.int64), violations=np.asarray(st.violations, np.int64),
                     finished=np.asarray(st.n_done) >= N, cfg=cfg)


def unqueued(t_enter, ttft) -> np.ndarray:
    """Which requests entered while no request that entered before them was still waiting for its first token:
    their TTFT is the front end's delay and their own prefill, not a wait behind other prompts. ``t_enter`` and
    ``ttft`` in seconds, one per request, in any order (ties: the earlier index entered first; a NaN TTFT, never
    served, waits for ever)."""
    e = np.asarray(t_enter, np.float64)
    first = e + np.asarray(ttft, np.float64)
    if e.size == 0:
        return np.zeros(0, bool)
    order = np.argsort(e, kind="stable")
    f = np.where(np.isfinite(first[order]), first[order], np.inf)
    before = np.concatenate([[-np.inf], np.maximum.accumulate(f)[:-1]])  # latest first token of the earlier ones
    out = np.zeros(e.size, bool)
    out[order] = before <= e[order]
    return out


def unqueued_ttft(t_enter, ttft, min_count: int = 5) -> float:
    """Median TTFT of the requests :func:`unqueued` selects (NaN with fewer than ``min_count`` of them)."""
    m = unqueued(t_enter, ttft)
    x = np.asarray(ttft, np.float64)[m]
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size >= min_count else math.nan


def hist_quantile(hist, lo, hi, q):
    """The q-quantile of a log-binned sample, interpolated between the smallest and largest value of the bin that
    holds it (exact when the bin holds one value, as with a constant batch time)."""
    h = np.asarray(hist, np.float64)
    tot = h.sum()
    if tot <= 0:
        return math.nan
    c = np.cumsum(h) / tot
    j = min(int(np.searchsorted(c, q)), h.size - 1)
    prev = 0.0 if j == 0 else c[j - 1]
    frac = 0.0 if c[j] == prev else (q - prev) / (c[j] - prev)
    return float(lo[j] + frac * (hi[j] - lo[j]))


def metrics(raw: RawReplay, o) -> list[dict]:
    """The benchmark clients' metrics of every trial (docs/model.md, "Replaying a benchmark")."""
    o = np.asarray(o, np.float64)
    rows = []
    for j in range(raw.t_enter.shape[0]):
        te, tt, td = raw.t_enter[j], raw.t_ttft[j], raw.t_done[j]
        ok = np.isfinite(td)
        ttft, e2e = tt - te, td - te
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = np.where(o >= 2, (e2e - ttft) / np.maximum(o - 1, 1), np.nan)
        dur = float(np.max(td[ok]) - np.min(te)) if ok.any() else math.nan
        row = dict(trial=j, duration_s=dur, throughput_rps=(ok.sum() / dur) if dur > 0 else math.nan,
                   completed=int(ok.sum()), peak_concurrency=int(raw.peak[j]), steps=int(raw.steps[j]),
                   preemptions=int(raw.preempted[j]), mem_max_tokens=int(raw.mem_max[j]),
                   finished=bool(raw.finished[j]))
        for name, x in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
            x = x[ok & np.isfinite(x)]
            for q in QUANTILES:
                row[f"{name}_p{round(q * 100)}_s"] = float(np.quantile(x, q)) if x.size else math.nan
            row[f"{name}_mean_s"] = float(x.mean()) if x.size else math.nan
        row["ttft_unqueued_p50_s"] = unqueued_ttft(te, ttft)
        for q in QUANTILES:
            row[f"itl_p{round(q * 100)}_s"] = hist_quantile(raw.itl_hist[j], raw.itl_lo[j], raw.itl_hi[j], q)
        rows.append(row)
    return rows

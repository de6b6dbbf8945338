"""Running the engine: :func:`run_configs` (every configuration × trial of a shape as one jitted, vmapped program, a
host round trip every few thousand steps) and :func:`step_log` (one trial, step by step). :func:`lqs.simulate`
(lqs/engine/simulate.py) orchestrates these runs and the long-run verdict."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._errors import LqsError, check_float, check_int
from .._server import as_server
from .._workload import Mixture, Phased, Workload
from ..kernels import cluster as _cluster
from ..kernels import compact as _compact
from ..kernels import loop as _loop
from ..kernels.state import State
from .paths import init_jit, run_call_jit
from .results import SimResult, collect, merge
from .._arrivals import as_arrivals
from .sizing import attach_instants, call_plan, groups, prepare, prepare_configs, product, rates


def config_keys(key, n: int):
    """One key per configuration: a configuration's trials draw from ``jax.random.split(its key, trials)``."""
    return jax.random.split(key, n)


def run_configs(configs, mc, *, key=None, keys=None, phased=None, progress: bool = False, devices=None,
                latency_windows=None) -> SimResult:
    """Run a list of :class:`Config` (any mix: those that share a program shape run as one jitted, vmapped program
    each) and return one SimResult with a summary row per configuration, in order. Configuration i's trials draw
    from ``keys[i]`` (default ``config_keys(key, len(configs))``), whatever else runs beside it. With
    ``latency_windows`` (increasing end instants, the last inf; unphased runs on the XLA path) the latency histograms
    are also kept per window of arrival (``SimResult.phase_hist``)."""
    if not configs:
        raise LqsError("configs", [], "must not be empty")
    if mc.steps is None:
        raise LqsError("steps", None, "run_configs needs an explicit horizon (MonteCarlo(steps=...))")
    if keys is None:
        keys = config_keys(jax.random.key(mc.seed) if key is None else key, len(configs))
    programs = []
    for idx in groups(configs, phased):
        sub = [configs[i] for i in idx]
        cfg, sizing, params = prepare_configs(sub, mc, mc.steps, phased,  # every group validated before any runs
                                              latency_windows=latency_windows)
        programs.append((idx, sub, cfg, sizing, params))
    results = []
    for gi, (idx, sub, cfg, sizing, params) in enumerate(programs):
        desc = f"simulating {len(sub)} config × {mc.trials} trials" + (f" (program {gi + 1}/{len(programs)})"
                                                                          if len(programs) > 1 else "")
        trial_keys = jax.vmap(lambda k: jax.random.split(k, mc.trials))(keys[np.asarray(idx)])
        if cfg.arrivals == "instants":
            params = attach_instants(params, sub, mc, mc.steps, trial_keys)
        run = _execute(cfg, sizing, params, trial_keys.reshape(-1), mc, devices, progress, desc)
        results.append((idx, collect(sub, mc, cfg, run["sizing"], run["st"], run["points"], run["steps_run"],
                                     mc.steps, run["wall"], run["stopped_early"], keys[np.asarray(idx)])))
    return merge(results, len(configs))


def _execute(cfg, sizing, params, keys, mc, devices, progress, desc) -> dict:
    """The host loop of one program: init, a jitted call per ≈4096 steps, early stop, gather."""
    N = keys.shape[0]
    spc = cfg.steps_per_call
    plan = call_plan(mc.steps, cfg)
    n_calls = len(plan)
    keys, params, n_pad, mesh = _shard(keys, params, devices, block=sizing.fused_trials)
    states = init_jit(keys, params, cfg)
    points = []
    t_start = time.perf_counter()
    bar = _progress(n_calls, progress, desc)
    stopped_early = False
    steps_run = 0
    for c, n_pts in enumerate(plan):
        n_arr = np.int32(n_pts)
        try:
            states, pts = run_call_jit(states, params, cfg, sizing.path, sizing.fused_trials, mesh, n_arr)
        except Exception as e:  # noqa: BLE001 - only the first launch of an automatically chosen fused kernel
            if c > 0 or sizing.path != "fused" or not sizing.path_reason.startswith("auto"):
                raise
            why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            warnings.warn(f"lqs: the fused kernel failed to compile, running the XLA path instead ({why}); it was "
                          f"chosen because {sizing.path_reason}")
            sizing = replace(sizing, path="xla", path_reason=f"auto: fused kernel failed ({why})", fused_trials=0)
            states, pts = run_call_jit(states, params, cfg, "xla", 0, mesh, n_arr)
        points.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:, :n_pts], jax.device_get(pts)))
        steps_run += n_pts * cfg.steps_per_point
        if bar is not None:
            bar.update(1)
        if mc.stop_when_settled and (c + 1) * spc >= mc.warmup + 8 * spc and c + 1 < n_calls:
            if _all_settled(points):
                stopped_early = True
                break
    if bar is not None:
        bar.close()
    jax.block_until_ready(states)
    wall = time.perf_counter() - t_start
    st = jax.device_get(states)
    if n_pad:
        st = jax.tree_util.tree_map(lambda x: np.asarray(x)[:N], st)
        points = [jax.tree_util.tree_map(lambda x: np.asarray(x)[:N], r) for r in points]
    if cfg.servers > 1:
        st = _reduce_cluster(st)
    return dict(st=st, points=points, steps_run=steps_run, wall=wall, stopped_early=stopped_early, sizing=sizing)


def _phases(phases, workload, lam):
    """Validate a (duration_s, lam, workload) schedule → (theory workload, mean λ, (Phased, ends, lams))."""
    if workload is not None or lam is not None:
        raise LqsError("phases", "with workload/lam", "give either phases or workload and lam, not both")
    try:
        items = [tuple(p) for p in phases]
    except TypeError:
        raise LqsError("phases", phases, "must be a list of (duration_s, lam, workload)") from None
    if not items or any(len(p) != 3 for p in items):
        raise LqsError("phases", phases, "must be a non-empty list of (duration_s, lam, workload)")
    durs = [check_float("phase duration_s", p[0], 0.0, lo_open=True) for p in items]
    lams = [check_float("phase lam", p[1], 0.0) for p in items]
    loads = [p[2] for p in items]
    if not all(isinstance(w, Workload) for w in loads):
        raise LqsError("phases", loads, "every phase needs an lqs Workload")
    weights = np.asarray(lams) * np.asarray(durs)
    if weights.sum() <= 0:
        weights = np.asarray(durs)
    theory = loads[0] if len(loads) == 1 else Mixture(loads, weights)
    ends = np.cumsum(durs).astype(np.float32)
    ends[-1] = np.inf
    mean_lam = float(np.sum(np.asarray(lams) * np.asarray(durs)) / np.sum(durs))
    return theory, mean_lam, (Phased(loads), ends, np.asarray(lams, np.float32))


def _shard(keys, params, devices, block: int = 1):
    """Place the flattened (configuration × trial) axis across devices, padding it with copies of the last entry
    (dropped again after the run) so that every device holds a multiple of ``block`` trials (the fused kernel's
    trials per program; padding once here spares a copy of the state per call). Returns
    (keys, params, n_pad, mesh): mesh is None on one device."""
    devs = list(jax.local_devices() if devices is None else devices)
    n_dev = len(devs)
    N = keys.shape[0]
    n_pad = (-N) % (n_dev * max(1, block))

    def pad(x):
        x = jnp.asarray(x)
        if n_pad:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], n_pad, axis=0)])
        return x

    if n_dev <= 1:
        return pad(keys), jax.tree_util.tree_map(pad, params), n_pad, None
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(devs), ("r",))
    sh = NamedSharding(mesh, PartitionSpec("r"))
    keys = jax.device_put(pad(keys), sh)
    params = jax.tree_util.tree_map(lambda x: jax.device_put(pad(x), sh), params)
    return keys, params, n_pad, mesh


def _reduce_cluster(cl):
    """A cluster's per-server counters folded into one trial's: sums, maxima for the maxima, server 0's clock, keys
    and slots (every leaf of ``cl.servers`` has axes [N, G, ...])."""
    st = cl.servers
    first = lambda x: np.asarray(x)[:, 0]
    total = lambda x: np.asarray(x).sum(axis=1)
    c = st.counters
    counters = c._replace(arrivals=total(c.arrivals), completions=total(c.completions), swaps=total(c.swaps),
                          mem_max=np.asarray(c.mem_max).max(axis=1), started_max=np.asarray(c.started_max).max(axis=1),
                          waiting_max=np.asarray(c.waiting_max).max(axis=1))
    w = st.window
    window = w._replace(arrivals=total(w.arrivals), completions=total(w.completions), gsum=total(w.gsum),
                        mem_sum=total(w.mem_sum), steps=first(w.steps), busy=first(w.busy),
                        mem_c=total(w.mem_c), busy_c=first(w.busy_c))
    tm = jax.tree_util.tree_map
    return State(slots=tm(first, st.slots), keys=tm(first, st.keys), clock=tm(first, st.clock),
                 queue=tm(total, st.queue), counters=counters, window=window, limits=tm(total, st.limits),
                 latency=tm(total, st.latency), log=tm(first, st.log))


def _progress(total, enabled, desc):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="call", leave=False)
    except Exception:  # pragma: no cover
        return None


def _all_settled(points) -> bool:
    """True when every trial's backlog is large and rising steadily in the last calls."""
    w = np.concatenate([np.asarray(r.waiting) for r in points[-8:]], axis=1)  # [N, P]
    if w.shape[1] < 8:
        return False
    q = w.shape[1] // 4
    first, last = w[:, :q].mean(1), w[:, -q:].mean(1)
    return bool(np.all((last - first > 50) & (w.min(1) > 0)))


def _trace_one(state, params, cfg, n_periods):
    return _loop.trace_steps(state, params, cfg, n_periods)


_trace_jit = jax.jit(_trace_one, static_argnums=(2, 3))


def step_log(workload, server, lam=None, *, steps: int = 256, key=None, seed: int = 0, K: int | None = None,
             compact_every: int = 64, phases=None, arrivals=None) -> tuple[pd.DataFrame, object, object]:
    """Step-by-step log of one trial: (DataFrame with one row per step, final engine state, EngineConfig).

    For debugging and for the tests that compare the engine with the plain-Python reference of docs/model.md.
    Runs ``steps`` rounded up to a multiple of ``compact_every``; no warm-up.
    """
    from .._server import MonteCarlo

    server = as_server(server).require_scalar("step_log")
    phased = None
    if phases is not None:
        workload, lam, phased = _phases(phases, workload, lam)
    steps = check_int("steps", steps, 1, 2**31 - 2**20)
    mc = MonteCarlo(trials=1, steps=None, warmup=0, seed=seed, K=K, compact_every=compact_every, path="xla")
    arrivals = as_arrivals(arrivals)
    cfg, sizing, grid, params = prepare(workload, server, rates(lam), mc, steps, phased, max_points=10**9,
                                        arrivals=arrivals)
    if key is None:
        key = jax.random.key(mc.seed)
    key_trial = jax.random.split(key, 1)
    if cfg.arrivals == "instants":
        params = attach_instants(params, product(workload, server, rates(lam), arrivals), mc, steps, key_trial[None])
    p1 = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[0], params)
    init = _cluster.init_cluster if cfg.servers > 1 else _compact.init_state
    state = init(key_trial[0], p1, cfg)
    n_periods = math.ceil(steps / cfg.compact_every)
    st, outs = _trace_jit(state, p1, cfg, n_periods)
    df = pd.DataFrame({f: np.asarray(getattr(outs, f)) for f in outs._fields})
    df.insert(0, "step", np.arange(len(df)))
    df["t_start_s"] = np.concatenate([[0.0], np.cumsum(df["b"].to_numpy(np.float64))[:-1]])
    return df, jax.device_get(st), cfg

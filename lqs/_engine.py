"""User-facing Monte Carlo engine: replicated KV-constrained serving queues as one jitted, vmapped JAX program."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ._batch import AffineBatch, BatchTime, ConstantBatch
from ._errors import LqsError, check_choice, check_float, check_int
from ._jsonio import json_default as _json_default
from ._theory import capacity as _capacity
from ._workload import Workload
from .kernels import engine as _k
from .kernels import fused as _fused
from .kernels import rng as _rng

POLICIES = _k.POLICIES
_INT32_MAX = 2**31 - 1

# number of times the batched chunk function has been traced (tests use it to prove "jit once")
TRACE_COUNT = {"run_chunk": 0}


def _traced_run_chunk(states, params, cfg, path="xla", rb=1, mesh=None):
    TRACE_COUNT["run_chunk"] += 1
    if path == "xla":  # XLA partitions the vmapped program over a sharded replica axis by itself
        return _k.run_chunk_batched(states, params, cfg)

    def run(st, p):
        return _fused.run_chunk_batched(st, p, cfg, rb=rb, interpret=path == "fused-interpret")

    if mesh is None:
        return run(states, params)
    # a Pallas call is not partitioned automatically: each device runs the kernel on its own replicas
    from jax.sharding import PartitionSpec as P

    return jax.shard_map(run, mesh=mesh, in_specs=(P("r"), P("r")), out_specs=(P("r"), P("r")),
                         check_vma=False)(states, params)


_run_chunk_jit = jax.jit(_traced_run_chunk, static_argnums=(2, 3, 4, 5), donate_argnums=0)

# ----------------------------------------------------------------------------------------------- engine paths
ENGINES = ("auto", "xla", "fused")
_ENGINE = {"default": None}


def set_engine(engine: str | None) -> None:
    """Process-wide default engine path for :func:`simulate` (and everything built on it): ``"auto"`` (the fused
    Pallas kernel on a GPU, the XLA path elsewhere), ``"xla"`` or ``"fused"`` (on a CPU the fused kernel runs in
    Pallas interpret mode: exact but slow, for verification). ``None`` restores the default, which is the
    ``LQS_ENGINE`` environment variable, else ``"auto"``."""
    _ENGINE["default"] = None if engine is None else check_choice("engine", engine, ENGINES)


def default_engine() -> str:
    if _ENGINE["default"] is not None:
        return _ENGINE["default"]
    env = os.environ.get("LQS_ENGINE")
    return check_choice("LQS_ENGINE", env, ENGINES) if env else "auto"


def _on_gpu() -> bool:
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def _select_path(engine, servers: int, phased: bool) -> tuple[str, str]:
    """(path, reason): path is "xla", "fused" (Triton on a GPU) or "fused-interpret" (Pallas interpret mode)."""
    engine = default_engine() if engine is None else check_choice("engine", engine, ENGINES)
    why = _fused.unsupported(servers, phased)
    if engine == "xla":
        return "xla", "asked for"
    if engine == "fused":
        if why:
            raise LqsError("engine", "fused", f"the fused kernel does not run this configuration: {why}; "
                                              "use engine='xla' or 'auto'")
        return ("fused", "asked for") if _on_gpu() else ("fused-interpret", "asked for; no GPU: interpret mode")
    if why:
        return "xla", why
    if _on_gpu():
        return "fused", "auto: GPU"
    return "xla", f"auto: backend {jax.default_backend()} (the fused kernel is for GPUs)"


def _init_states(keys, params, cfg):
    init = _k.init_cluster if cfg.servers > 1 else _k.init_state
    return jax.vmap(lambda k, p: init(k, p, cfg))(keys, params)


_init_jit = jax.jit(_init_states, static_argnums=2)


# ----------------------------------------------------------------------------------------------- sizing
@dataclass(frozen=True)
class Sizing:
    K: int
    a_max: int
    n_service_est: float  # mean number of requests in service at saturation, estimated
    check_work: bool
    engine: str = "xla"  # the path that ran: xla, fused (Pallas/Triton) or fused-interpret
    engine_reason: str = ""
    fused_rb: int = 0  # replicas per fused-kernel program (0: XLA path)


def size_engine(workload: Workload, M_max: int, chunk: int, lam_max: float, batch: BatchTime, policy: str,
                compact_every: int, K: int | None = None, servers: int = 1) -> Sizing:
    """Default capacities from the workload and M: K slots and the per-step arrival cap."""
    m = workload.expected_g(chunk)
    mean_k = m.mean_s / chunk + 0.5
    life = mean_k + m.mean_o  # scheduled steps per request
    n_serv = M_max * life / m.g_exact
    b_typ = _nominal_b(batch, default=None)
    if b_typ is None and isinstance(batch, AffineBatch):  # typical saturated step: one chunk, n_serv decodes, full M
        a = np.asarray(batch.a, np.float64)
        b_typ = float(a[0] + a[1] * chunk + a[2] * n_serv + a[3] * M_max)
    b_max = batch.max_s(M_max, 4096, chunk)
    rate_steps = max(lam_max / servers * (b_typ or b_max), n_serv / life)  # arrivals or completions per step
    if K is None:
        # started requests peak near 2× the mean number in service (SPEC.md: ≈ 230 for pd-1:2, n ≈ 105), plus
        # room for waiting requests and for the finished ones that wait for the next compaction
        k_est = 2.0 * n_serv + 48 + 2.0 * compact_every * rate_steps
        K = int(max(64, 32 * math.ceil(k_est / 32)))
    else:
        K = check_int("K", K, 8)
    b_cap = b_max if b_typ is None or not isinstance(batch, AffineBatch) else min(b_max, 4.0 * b_typ)
    a_max = 4 * math.ceil(_rng.poisson_cap(lam_max * b_cap) / 4)  # (a hit is counted and flags the run)  # rounded so nearby λ share a compilation
    check = (workload.max_total + 1) ** 2 < 2**30
    return Sizing(K=K, a_max=a_max, n_service_est=n_serv, check_work=check)


def _nominal_b(batch: BatchTime, default=np.nan):
    try:
        return batch.mean_s
    except LqsError:
        return default


def _as_batch(b) -> BatchTime:
    if isinstance(b, BatchTime):
        return b
    return ConstantBatch(check_float("b", b, 0.0, lo_open=True))


def auto_steps(workload, M, chunk, b, warmup, b_theory=None) -> int:
    """Default horizon: warm-up + max(16,000 steps, the steps that 2,000 completions take at μ_exact).

    The stability verdict needs the backlog drift to stand out of the queue's random-walk noise, which depends on
    the number of requests in the window, not on the number of steps: a small M serves few requests per step.
    """
    warmup = check_int("warmup", warmup, 0)
    Ms = _grid_values("M", M, lambda n, x: check_int(n, x, 1, 2**30))
    bt = _as_batch(b) if not isinstance(b, (list, tuple, np.ndarray)) else ConstantBatch(min(b))
    b_nom = b_theory if b_theory is not None else _nominal_b(bt, default=None)
    if b_nom is None:
        b_nom = bt.max_s(max(Ms), 64, chunk)
    m = workload.expected_g(check_int("chunk", chunk, 1))
    per_step = min(Ms) / m.g_exact  # completions per step at μ_exact
    window = max(16_000, math.ceil(2000 / per_step))
    return int(1000 * math.ceil((warmup + window) / 1000))


def _grid_values(name, v, check):
    arr = np.atleast_1d(np.asarray(v))
    if arr.ndim != 1 or arr.size == 0:
        raise LqsError(name, v, "must be a number or a non-empty 1-D list of numbers")
    return [check(name, x) for x in arr.tolist()]


# ----------------------------------------------------------------------------------------------- verdict
def stability_verdict(t, waiting, arrivals_w, warm_t0, n_batches: int = 10):
    """Per-replica verdict from the waiting-count series after warm-up (vectorised over replicas).

    The window is cut into ``n_batches`` batches; the slope of the batch means of the waiting count against time,
    divided by its standard error, is the growth statistic. A replica is unstable when the growth is large
    against its noise (t > 3) **and** the waiting count rose by more than max(3, 1 % of the window's arrivals).
    Windows too short for batch means fall back to: rise > max(3, 1 %) + 3·sqrt(arrivals).
    Returns (unstable bool[R], t_stat float[R], drift_rps float[R], rise float[R]).
    """
    t = np.asarray(t, np.float64)
    W = np.asarray(waiting, np.float64)
    A = np.asarray(arrivals_w, np.float64)
    R, P = W.shape
    n_w = (t >= np.asarray(warm_t0, np.float64)[:, None]).sum(1)  # records are taken at the same steps everywhere
    if R and not np.all(n_w == n_w[0]):
        out = [stability_verdict(t[r:r + 1], W[r:r + 1], A[r:r + 1], np.asarray(warm_t0)[r:r + 1], n_batches)
               for r in range(R)]
        return tuple(np.concatenate([o[i] for o in out]) for i in range(4))
    n = int(n_w[0]) if R else 0
    floor = np.maximum(3.0, 0.01 * A)
    if n < 2 * n_batches:
        rise = W[:, -1] - W[:, -n] if n >= 2 else np.zeros(R)
        span = t[:, -1] - t[:, -n] if n >= 2 else np.ones(R)
        unstable = rise > floor + 3.0 * np.sqrt(np.maximum(A, 1.0))
        return unstable, np.where(unstable, np.inf, 0.0), rise / np.maximum(span, 1e-12), rise
    cut = (n // n_batches) * n_batches
    tb = t[:, -cut:].reshape(R, n_batches, -1).mean(2)
    wb = W[:, -cut:].reshape(R, n_batches, -1).mean(2)
    tc = tb - tb.mean(1, keepdims=True)
    wc = wb - wb.mean(1, keepdims=True)
    sxx = np.maximum((tc * tc).sum(1), 1e-300)
    beta = (tc * wc).sum(1) / sxx
    resid = wc - beta[:, None] * tc
    se = np.sqrt(np.maximum((resid * resid).sum(1) / (n_batches - 2), 0.0) / sxx)
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = np.where(se > 0, beta / np.where(se > 0, se, 1.0), np.sign(beta) * np.inf)
    tstat = np.nan_to_num(tstat, nan=0.0, posinf=np.inf, neginf=-np.inf)
    rise = wb[:, -1] - wb[:, 0]
    unstable = (tstat > 3.0) & (rise > floor)
    return unstable, tstat, beta, rise


# ----------------------------------------------------------------------------------------------- histograms
def hist_quantiles(hist, qs, cfg: _k.EngineConfig):
    """Quantiles from log-spaced histograms (geometric interpolation inside a bin). hist [..., n_bins]."""
    hist = np.asarray(hist, np.float64)
    edges = cfg.bin_edges  # n_bins-1 upper edges
    lower = np.concatenate([[0.0], edges])
    upper = np.concatenate([edges, [edges[-1] * (edges[1] / edges[0])]])
    cum = np.cumsum(hist, axis=-1)
    tot = cum[..., -1:]
    out = np.full(hist.shape[:-1] + (len(qs),), np.nan)
    for i, q in enumerate(qs):
        target = q * tot
        j = np.argmax(cum >= np.maximum(target, 1e-300), axis=-1)
        cprev = np.take_along_axis(cum, np.maximum(j - 1, 0)[..., None], -1)[..., 0]
        cprev = np.where(j == 0, 0.0, cprev)
        cnt = np.take_along_axis(hist, j[..., None], -1)[..., 0]
        frac = np.clip((target[..., 0] - cprev) / np.maximum(cnt, 1e-300), 0.0, 1.0)
        lo, hi = lower[j], upper[j]
        val = np.where(j == 0, hi * frac, lo * (hi / np.maximum(lo, 1e-300)) ** frac)
        out[..., i] = np.where(tot[..., 0] > 0, val, np.nan)
    return out


# ----------------------------------------------------------------------------------------------- result
@dataclass
class SimResult:
    """What a run returns: per-replica rows, per-configuration summary, time series, histograms, config."""

    replicas: pd.DataFrame
    summary: pd.DataFrame
    series_t: np.ndarray  # [n_cfg, R, P] seconds
    series_waiting: np.ndarray  # [n_cfg, R, P]
    series_started: np.ndarray
    hist: np.ndarray  # [n_cfg, R, 3, n_bins]
    config: dict
    engine_config: _k.EngineConfig = field(repr=False)

    @property
    def reliable(self) -> bool:
        return bool(self.summary["reliable"].all())

    def save(self, out_dir, plot: bool = True) -> list[str]:
        """Write replicas/summary tables (parquet + CSV), the resolved configuration (JSON) and, optionally,
        a PNG of the waiting count over time."""
        os.makedirs(out_dir, exist_ok=True)
        written = []
        for name, df in (("replicas", self.replicas), ("summary", self.summary)):
            p = os.path.join(out_dir, f"{name}.csv")
            df.to_csv(p, index=False)
            written.append(p)
            try:
                pq = os.path.join(out_dir, f"{name}.parquet")
                df.to_parquet(pq, index=False)
                written.append(pq)
            except Exception:  # pragma: no cover - pyarrow missing
                pass
        p = os.path.join(out_dir, "config.json")
        with open(p, "w") as fh:
            json.dump(self.config, fh, indent=2, default=_json_default)
        written.append(p)
        p = os.path.join(out_dir, "series.npz")
        np.savez_compressed(p, t_s=self.series_t, waiting=self.series_waiting, started=self.series_started,
                            hist=self.hist, bin_edges_s=self.engine_config.bin_edges)
        written.append(p)
        if plot:
            from ._plots import plot_waiting

            p = os.path.join(out_dir, "waiting.png")
            plot_waiting(self, p)
            written.append(p)
        return written


# ----------------------------------------------------------------------------------------------- simulate
def simulate(workload: Workload, *, M, chunk: int, lam, b, policy: str = "fcfs", replicas: int = 64,
             steps: int | None = None, warmup: int = 4_000, key=None, seed: int = 0, token_budget: int | None = None,
             K: int | None = None, compact_every: int = 64, max_points: int = 1000, progress: bool = False,
             stop_when_settled: bool = False, b_theory: float | None = None, phases=None, servers: int = 1,
             routing: str = "round_robin", devices=None, engine: str | None = None,
             fused_rb: int | None = None) -> SimResult:
    """Simulate ``replicas`` independent servers for every λ (and M, b̄) of a grid.

    ``lam``, ``M`` and ``b`` may be scalars or 1-D lists; the grid is their product. ``steps=None`` picks the
    default horizon (:func:`auto_steps`): warm-up plus a window of at least 16,000 steps and 2,000 completions. ``b`` may also be a
    BatchTime model (iid or affine). Randomness flows from ``key`` (a typed JAX key; default ``jax.random.key(seed)``).
    Every input is checked before anything is compiled.

    ``phases=[(duration_s, lam, workload), ...]`` runs a non-stationary, piecewise-constant schedule instead of
    ``lam`` (pass ``workload=None`` and ``lam=None``): requests arriving in a phase take that phase's lengths, the
    last phase lasts until the end, and the theory columns use the request-weighted mixture (weights λ·duration).

    ``devices`` (default: all local devices) shards the (configuration × replica) axis across devices with
    ``jax.sharding``; replicas are independent, so the partitioned program needs no communication.

    ``servers=G`` makes every replica a cluster of G identical servers stepping in lock-step (the step lasts as long
    as the slowest server's batch); ``lam`` is then the cluster's total rate, each arrival is routed on arrival by
    ``routing`` (round_robin, random, jsq, least_kv), and the theory columns are G·μ.

    ``engine`` picks the step loop: ``"auto"`` (default, see :func:`set_engine`) runs the fused Pallas kernel
    (kernels/fused.py) on a GPU and the XLA path elsewhere; ``"xla"`` and ``"fused"`` force one (fused on a CPU
    runs in Pallas interpret mode). Both give identical trajectories from the same key. Clusters and phased
    schedules always run on the XLA path. On the fused GPU path K is rounded up to a power of two (Triton block
    shapes). ``fused_rb`` sets the replicas per kernel program (a power of two; default about 1024/K).
    The path that ran is ``result.config["sizing"]["engine"]``.
    """
    phased = None
    if phases is not None:
        workload, lam, phased = _phases(phases, workload, lam)
    if steps is None:
        steps = auto_steps(workload, M, chunk, b, warmup, b_theory)
    cfg, sizing, grid, params = _prepare(workload, M=M, chunk=chunk, lam=lam, b=b, policy=policy, replicas=replicas,
                                         steps=steps, warmup=warmup, token_budget=token_budget, K=K,
                                         compact_every=compact_every, max_points=max_points, phased=phased,
                                         servers=servers, routing=routing, engine=engine, fused_rb=fused_rb)
    if b_theory is not None:
        b_theory = check_float("b_theory", b_theory, 0.0, lo_open=True)
    if key is None:
        key = jax.random.key(check_int("seed", seed, 0, 2**63 - 1))
    n_cfg = len(grid)
    N = n_cfg * replicas
    spc = cfg.steps_per_chunk
    n_chunks = math.ceil(steps / spc)
    keys = jax.random.split(key, N)
    keys, params, n_pad, mesh = _shard(keys, params, devices, block=sizing.fused_rb)
    states = _init_jit(keys, params, cfg)

    recs = []
    t_start = time.perf_counter()
    bar = _progress(n_chunks, progress, f"simulating {n_cfg} config × {replicas} replicas")
    done_chunks = 0
    stopped_early = False
    for c in range(n_chunks):
        try:
            states, rec = _run_chunk_jit(states, params, cfg, sizing.engine, sizing.fused_rb, mesh)
        except Exception as e:  # noqa: BLE001 - only the first launch of an automatically chosen fused kernel
            if c > 0 or sizing.engine != "fused" or not sizing.engine_reason.startswith("auto"):
                raise
            why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            warnings.warn(f"lqs: the fused kernel failed to compile, running the XLA path instead ({why})")
            sizing = replace(sizing, engine="xla", engine_reason=f"auto: fused kernel failed ({why})", fused_rb=0)
            states, rec = _run_chunk_jit(states, params, cfg, "xla", 0, mesh)
        recs.append(jax.device_get(rec))
        done_chunks += 1
        if bar is not None:
            bar.update(1)
        if stop_when_settled and (c + 1) * spc >= warmup + 8 * spc and c + 1 < n_chunks:
            if _all_settled(recs, states):
                stopped_early = True
                break
    if bar is not None:
        bar.close()
    jax.block_until_ready(states)
    wall = time.perf_counter() - t_start
    st = jax.device_get(states)
    if n_pad:
        st = jax.tree_util.tree_map(lambda x: np.asarray(x)[:N], st)
        recs = [jax.tree_util.tree_map(lambda x: np.asarray(x)[:N], r) for r in recs]
    if cfg.servers > 1:
        st = _reduce_cluster(st)
    steps_run = done_chunks * spc

    return _collect(workload, grid, replicas, cfg, sizing, st, recs, steps_run, steps, warmup, chunk, policy,
                    token_budget, wall, stopped_early, b_theory, key)


def _phases(phases, workload, lam):
    """Validate a (duration_s, lam, workload) schedule → (theory workload, mean λ, (Phased, ends, lams))."""
    from ._workload import Mixture, Phased

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
    parts = [p[2] for p in items]
    if not all(isinstance(w, Workload) for w in parts):
        raise LqsError("phases", parts, "every phase needs an lqs Workload")
    weights = np.asarray(lams) * np.asarray(durs)
    if weights.sum() <= 0:
        weights = np.asarray(durs)
    theory = parts[0] if len(parts) == 1 else Mixture(parts, weights)
    ends = np.cumsum(durs).astype(np.float32)
    ends[-1] = np.inf
    mean_lam = float(np.sum(np.asarray(lams) * np.asarray(durs)) / np.sum(durs))
    return theory, mean_lam, (Phased(parts), ends, np.asarray(lams, np.float32))


def _shard(keys, params, devices, block: int = 1):
    """Place the flattened (configuration × replica) axis across devices, padding it with copies of the last entry
    (dropped again after the run) so that every device holds a multiple of ``block`` replicas (the fused kernel's
    replicas per program; padding once here spares a copy of the state per chunk). Returns
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
    """A cluster's per-server counters folded into one replica's (sums; maxima for the maxima; clock of server 0)."""
    st = cl.servers
    first = ("slots", "keys", "step", "t", "t_w0", "steps_w", "busy_w")
    maxed = ("mem_max", "started_max", "waiting_max", "lat_max")
    out = {}
    for name in _k.State._fields:
        x = np.asarray(getattr(st, name)) if name != "slots" else None
        if name in first:
            out[name] = jax.tree_util.tree_map(lambda v: np.asarray(v)[:, 0], getattr(st, name))
        elif name in maxed:
            out[name] = x.max(axis=1)
        else:
            out[name] = x.sum(axis=1)
    return _k.State(**out)


def _prepare(workload, *, M, chunk, lam, b, policy, replicas, steps, warmup, token_budget, K, compact_every,
             max_points, phased=None, servers=1, routing="round_robin", engine=None, fused_rb=None):
    """Validate every input (before anything compiles), size the engine, build the static config and the
    flattened (configuration × replica) parameter arrays."""
    if not isinstance(workload, Workload):
        raise LqsError("workload", type(workload).__name__, "must be an lqs Workload (see lqs.preset)")
    policy = check_choice("policy", policy, POLICIES)
    servers = check_int("servers", servers, 1, 4096)
    routing = check_choice("routing", routing, _k.ROUTINGS)
    chunk = check_int("chunk", chunk, 1, 2**20)
    lams = _grid_values("lam", lam, lambda n, x: check_float(n, x, 0.0))
    Ms = _grid_values("M", M, lambda n, x: check_int(n, x, 1, 2**30))
    if isinstance(b, BatchTime):
        batches = [b]
    else:
        batches = [ConstantBatch(x) for x in _grid_values("b", b, lambda n, x: check_float(n, x, 0.0, lo_open=True))]
    replicas = check_int("replicas", replicas, 1, 2**24)
    steps = check_int("steps", steps, 1, 2**31 - 2**20)
    warmup = check_int("warmup", warmup, 0, steps - 1)
    compact_every = check_int("compact_every", compact_every, 1, 4096)
    max_points = check_int("max_points", max_points, 10)
    if token_budget is not None:
        token_budget = check_int("token_budget", token_budget, chunk)  # B < ŝ would deadlock
    for m in Ms:
        workload.validate(m)
    M_max = max(Ms)
    lam_b = max(lams) * max(bt.max_s(M_max, 64, chunk) for bt in batches)
    if lam_b > 1000:
        raise LqsError("lam", max(lams), f"λ·b gives {lam_b:.3g} arrivals per step; at most 1000 are supported "
                                          "(a rate this far above any capacity is unstable anyway)")
    lam_max = max(lams) if phased is None else max(max(lams), float(np.max(phased[2])))
    if phased is not None:
        for m in Ms:
            phased[0].validate(m)
        if len(lams) != 1:
            raise LqsError("lam", lams, "a phased run has its rates in phases, not a λ grid")
    ref_batch = batches[0] if len(batches) == 1 else ConstantBatch(max(bt.mean_s for bt in batches))
    sizing = size_engine(workload, M_max, chunk, lam_max, ref_batch, policy, compact_every, K, servers=servers)
    Kc = sizing.K
    if fused_rb is not None:
        fused_rb = check_int("fused_rb", fused_rb, 1, 1024)
        if fused_rb & (fused_rb - 1):
            raise LqsError("fused_rb", fused_rb, "must be a power of two in [1, 1024] (Triton block shapes)")
    path, reason = _select_path(engine, servers, phased is not None)
    if path == "fused" and Kc & (Kc - 1):
        Kc = _fused.next_pow2(Kc)  # Triton block shapes are powers of two (extra slots only lift capacity limits)
    rb = 0 if path == "xla" else (fused_rb or _fused.default_block(Kc))
    sizing = replace(sizing, K=Kc, engine=path, engine_reason=reason, fused_rb=rb)
    if Kc * (M_max + 1) >= _INT32_MAX:
        raise LqsError("M", M_max, f"K·(M+1) must stay below 2^31 for int32 accounting (K={Kc}); "
                       "use a smaller M or K")
    # ≤ max_points records; chunks of about 4096 steps between host round trips (progress, early stop)
    total_blocks = math.ceil(steps / compact_every)
    bpr = max(1, math.ceil(total_blocks / max_points))
    total_records = math.ceil(total_blocks / bpr)
    n_chunks = max(1, round(total_records * compact_every * bpr / 4096))
    rpc = math.ceil(total_records / n_chunks)  # chunks of ≈ 4096 steps that add up to just ≥ steps
    cfg = _k.EngineConfig(K=Kc, policy=policy, a_max=sizing.a_max, token_budget=token_budget is not None,
                          servers=servers, routing=routing,
                          phased=phased is not None, n_u=0 if phased is None else phased[0].n_uniforms,
                          check_work=sizing.check_work, compact_every=compact_every, blocks_per_record=bpr,
                          records_per_chunk=rpc)
    grid = [(lm, m, bt) for bt in batches for m in Ms for lm in lams]
    N = len(grid) * replicas
    sim_w = workload if phased is None else phased[0]
    min_w = (sim_w.min_s + 1) if policy == "reserve" else min(chunk, sim_w.min_s)
    lam_arr = np.repeat(np.asarray([g[0] for g in grid], np.float32), replicas)
    M_arr = np.repeat(np.asarray([g[1] for g in grid], np.int32), replicas)
    batch_stacked = jax.tree_util.tree_map(lambda *xs: np.repeat(np.stack([np.asarray(x) for x in xs]), replicas,
                                                                 axis=0), *[g[2] for g in grid])
    workload_b = jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (N,) + np.shape(x)), sim_w)
    if phased is None:
        ends = np.full((N, 1), np.inf, np.float32)
        plams = lam_arr[:, None]
    else:
        ends = np.broadcast_to(phased[1], (N, phased[1].size))
        plams = np.broadcast_to(phased[2], (N, phased[2].size))
    params = _k.Params(lam=jnp.asarray(lam_arr), M=jnp.asarray(M_arr), chunk=jnp.full((N,), chunk, jnp.int32),
                       budget=jnp.full((N,), token_budget or _INT32_MAX, jnp.int32),
                       warmup=jnp.full((N,), warmup, jnp.int32), min_w=jnp.full((N,), min_w, jnp.int32),
                       workload=workload_b, batch=batch_stacked, phase_end=jnp.asarray(ends),
                       phase_lam=jnp.asarray(plams))
    return cfg, sizing, grid, params


def _trace_one(state, params, cfg, n_blocks):
    return _k.trace_steps(state, params, cfg, n_blocks)


_trace_jit = jax.jit(_trace_one, static_argnums=(2, 3))


def simulate_trace(workload: Workload, *, M: int, chunk: int, lam: float, b, policy: str = "fcfs", steps: int = 256,
                   key=None, seed: int = 0, token_budget: int | None = None, K: int | None = None,
                   compact_every: int = 64, phases=None, servers: int = 1, routing: str = "round_robin"):
    """Step-by-step record of one replica (a DataFrame, one row per step) and its final engine state.

    For debugging and for the tests that compare the engine with the plain-Python reference of SPEC.md.
    Runs ``steps`` rounded up to a multiple of ``compact_every``; warm-up is 0.
    """
    phased = None
    if phases is not None:
        workload, lam, phased = _phases(phases, workload, lam)
    cfg, sizing, grid, params = _prepare(workload, M=M, chunk=chunk, lam=lam, b=b, policy=policy, replicas=1,
                                         steps=steps, warmup=0, token_budget=token_budget, K=K,
                                         compact_every=compact_every, max_points=10**9, phased=phased,
                                         servers=servers, routing=routing)
    if key is None:
        key = jax.random.key(check_int("seed", seed, 0, 2**63 - 1))
    p1 = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[0], params)
    init = _k.init_cluster if cfg.servers > 1 else _k.init_state
    state = init(jax.random.split(key, 1)[0], p1, cfg)
    n_blocks = math.ceil(steps / cfg.compact_every)
    st, outs = _trace_jit(state, p1, cfg, n_blocks)
    df = pd.DataFrame({f: np.asarray(getattr(outs, f)) for f in outs._fields})
    df.insert(0, "step", np.arange(len(df)))
    df["t_start_s"] = np.concatenate([[0.0], np.cumsum(df["b"].to_numpy(np.float64))[:-1]])
    return df, jax.device_get(st), cfg


def _progress(total, enabled, desc):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="chunk", leave=False)
    except Exception:  # pragma: no cover
        return None


def _all_settled(recs, states) -> bool:
    """True when every replica is clearly unstable: waiting count large and rising steadily in the last chunks."""
    w = np.concatenate([np.asarray(r.waiting) for r in recs[-8:]], axis=1)  # [N, P]
    if w.shape[1] < 8:
        return False
    q = w.shape[1] // 4
    first, last = w[:, :q].mean(1), w[:, -q:].mean(1)
    return bool(np.all((last - first > 50) & (w.min(1) > 0)))


def _collect(workload, grid, R, cfg, sizing, st, recs, steps_run, steps_asked, warmup, chunk, policy,
             token_budget, wall, stopped_early, b_theory, key):
    n_cfg = len(grid)
    N = n_cfg * R

    def a(x):
        return np.asarray(x).reshape((n_cfg, R) + np.shape(x)[1:])

    t_ser = np.concatenate([np.asarray(r.t) for r in recs], axis=1).reshape(n_cfg, R, -1)
    w_ser = np.concatenate([np.asarray(r.waiting) for r in recs], axis=1).reshape(n_cfg, R, -1)
    s_ser = np.concatenate([np.asarray(r.started) for r in recs], axis=1).reshape(n_cfg, R, -1)
    hist = a(st.hist)

    rows = []
    sums = []
    mom = workload.expected_g(chunk)
    lat_q = (0.5, 0.9, 0.99)
    for ci, (lam, M, bt) in enumerate(grid):
        b_nom = b_theory if b_theory is not None else _nominal_b(bt)
        cap = _capacity(workload, M, chunk, b_nom) if np.isfinite(b_nom) else None
        G = cfg.servers
        if cap is not None and G > 1:
            from dataclasses import replace as _dc_replace

            cap = _dc_replace(cap, mu_rps=G * cap.mu_rps, mu_exact_rps=G * cap.mu_exact_rps,
                              mu_stable_rps=G * cap.mu_stable_rps, mu_exact_stable_rps=G * cap.mu_exact_stable_rps)
        arrivals = a(st.arrivals)[ci]
        comp = a(st.completions)[ci]
        arr_w = a(st.arrivals_w)[ci]
        comp_w = a(st.completions_w)[ci]
        busy = a(st.busy_w)[ci].astype(np.float64)
        T_w = np.maximum(busy, 1e-12)
        thr = comp_w / T_w
        g_mean_done = a(st.gsum_w)[ci].astype(np.float64) / np.maximum(comp_w, 1)
        # control variate: memory-work completed per second / E[g_exact]. (SPEC.md writes the ratio the other
        # way up, throughput × E[g]/mean g, which doubles the noise instead of removing it: see README.)
        thr_cv = np.where(comp_w > 0, thr * g_mean_done / mom.g_exact, np.nan)
        import warnings

        warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message="Degrees of freedom", category=RuntimeWarning)
        t_w0 = a(st.t_w0)[ci].astype(np.float64)
        unstable, tstat, drift, rise = stability_verdict(t_ser[ci], w_ser[ci], arr_w, t_w0)
        overflow = a(st.overflow)[ci]
        in_sys = arrivals - comp
        n_started_final = s_ser[ci][:, -1]
        lat_n = a(st.lat_n)[ci]
        lat_sum = a(st.lat_sum)[ci]
        qs = hist_quantiles(hist[ci], lat_q, cfg)  # [R, 3, 3]
        starved = a(st.starved)[ci]
        trunc = a(st.arr_trunc)[ci]
        viol = a(st.violations)[ci]
        lost = a(st.lat_lost)[ci]
        reliable = (starved == 0) & (trunc == 0) & (viol == 0)
        steps_w = np.maximum(a(st.steps_w)[ci], 1)
        cols = dict(config=np.full(R, ci), replica=np.arange(R), lam_rps=np.full(R, lam), M_tokens=np.full(R, M),
                    chunk_tokens=np.full(R, chunk), b_s=np.full(R, b_nom), batch_model=[bt.kind] * R,
                    policy=[policy] * R, token_budget=np.full(R, token_budget or 0), steps=np.full(R, steps_run),
                    warmup_steps=np.full(R, warmup), window_s=busy, arrivals=arrivals.astype(np.int64),
                    completions=comp.astype(np.int64), in_system_final=in_sys.astype(np.int64),
                    waiting_final=(in_sys - n_started_final).astype(np.int64), throughput_rps=thr,
                    throughput_cv_rps=thr_cv, mem_mean_tokens=a(st.mem_sum_w)[ci] / steps_w,
                    mem_max_tokens=a(st.mem_max)[ci].astype(np.int64), swaps=a(st.swaps)[ci].astype(np.int64),
                    started_max=a(st.started_max)[ci].astype(np.int64),
                    waiting_max=a(st.waiting_max)[ci].astype(np.int64), unstable=unstable, growth_tstat=tstat,
                    drift_rps=drift, waiting_rise=rise, latency_n=lat_n.astype(np.int64))
        cols["mem_util"] = cols["mem_mean_tokens"] / (M * G)
        cols["servers"] = np.full(R, G)
        cols["routing"] = [cfg.routing] * R
        with np.errstate(divide="ignore", invalid="ignore"):
            for mi, name in enumerate(_k.LAT_NAMES):
                cols[f"{name}_mean_s"] = np.where(lat_n > 0, lat_sum[:, mi] / np.maximum(lat_n, 1), np.nan)
                for qi, q in enumerate(lat_q):
                    cols[f"{name}_p{int(q * 100)}_s"] = qs[:, mi, qi]
        cols.update(starved_steps=starved.astype(np.int64), arrival_cap_hits=trunc.astype(np.int64),
                    overflow_final=overflow.astype(np.int64), latency_lost=lost.astype(np.int64),
                    violations=viol.astype(np.int64), reliable=reliable, latency_reliable=lost == 0)
        rows.append(pd.DataFrame(cols))
        # pooled over replicas
        pooled = hist[ci].sum(0)  # [3, n_bins]
        pq = hist_quantiles(pooled, lat_q, cfg)
        p_un = float(unstable.mean())
        lo, hi = _wilson(int(unstable.sum()), R)
        se = float(thr.std(ddof=1) / math.sqrt(R)) if R > 1 else np.nan
        se_cv = float(np.nanstd(thr_cv, ddof=1) / math.sqrt(R)) if R > 1 else np.nan
        srow = dict(config=ci, lam_rps=lam, M_tokens=M, chunk_tokens=chunk, b_s=b_nom, batch_model=bt.kind,
                    policy=policy, token_budget=token_budget or 0, replicas=R, steps=steps_run, warmup_steps=warmup,
                    mu_rps=cap.mu_rps if cap else np.nan, mu_exact_rps=cap.mu_exact_rps if cap else np.nan,
                    mu_stable_rps=cap.mu_stable_rps if cap else np.nan,
                    mu_exact_stable_rps=cap.mu_exact_stable_rps if cap else np.nan,
                    delta=workload.max_total / M, rho=lam / cap.mu_exact_rps if cap else np.nan,
                    throughput_rps=float(thr.mean()), throughput_se_rps=se,
                    throughput_ci_lo_rps=float(thr.mean() - 1.96 * se), throughput_ci_hi_rps=float(thr.mean() + 1.96 * se),
                    throughput_cv_rps=float(np.nanmean(thr_cv)), throughput_cv_se_rps=se_cv,
                    p_unstable=p_un, p_unstable_lo=lo, p_unstable_hi=hi,
                    mem_util=float(np.mean(a(st.mem_sum_w)[ci] / steps_w / (M * G))), servers=G, routing=cfg.routing,
                    swaps_per_s=float(np.mean(a(st.swaps)[ci] / np.maximum(a(st.t)[ci], 1e-12))),
                    started_max=int(a(st.started_max)[ci].max()),
                    waiting_final_mean=float(np.mean(in_sys - n_started_final)), latency_n=int(lat_n.sum()))
        for mi, name in enumerate(_k.LAT_NAMES):
            srow[f"{name}_mean_s"] = float(lat_sum[:, mi].sum() / lat_n.sum()) if lat_n.sum() > 0 else np.nan
            for qi, q in enumerate(lat_q):
                srow[f"{name}_p{int(q * 100)}_s"] = pq[mi, qi]
        srow.update(starved_steps=int(starved.sum()), arrival_cap_hits=int(trunc.sum()),
                    latency_lost=int(lost.sum()), violations=int(viol.sum()), reliable=bool(reliable.all()),
                    latency_reliable=bool((lost == 0).all()))
        sums.append(srow)

    config = dict(workload=_describe(workload), M_tokens=[g[1] for g in grid], chunk_tokens=chunk,
                  lam_rps=[g[0] for g in grid], batch=[_describe(g[2]) for g in grid], policy=policy,
                  token_budget=token_budget, replicas=R, steps_requested=steps_asked, steps_run=steps_run,
                  warmup_steps=warmup, stopped_early=stopped_early,
                  key=np.asarray(jax.random.key_data(key)).tolist(), engine=asdict(cfg),
                  sizing=asdict(sizing), devices=[str(d) for d in jax.local_devices()], wall_s=wall, backend=jax.default_backend(), jax_version=jax.__version__,
                  replica_steps_per_s=N * steps_run / max(wall, 1e-9))
    return SimResult(replicas=pd.concat(rows, ignore_index=True), summary=pd.DataFrame(sums), series_t=t_ser, series_waiting=w_ser,
                     series_started=s_ser, hist=hist, config=config, engine_config=cfg)


def _wilson(k, n, z=1.96):
    if n == 0:
        return (np.nan, np.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def _describe(obj):
    """A readable, JSON-able description of a workload or batch model: its class and fields, recursively;
    arrays of more than 16 numbers are summarised (n, min, mean, max)."""
    import dataclasses

    if isinstance(obj, (list, tuple)):
        return [_describe(x) for x in obj]
    if dataclasses.is_dataclass(obj):
        out = {"type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            out[f.name] = _describe(getattr(obj, f.name))
        if hasattr(obj, "max_total"):
            out["max_total_tokens"] = int(obj.max_total)
        return out
    if isinstance(obj, (np.ndarray, jnp.ndarray, np.generic)):
        x = np.asarray(obj)
        if x.size <= 16:
            return x.tolist()
        return {"n": int(x.size), "min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())}
    return obj

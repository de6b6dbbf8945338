"""From (workload, Server, rates, MonteCarlo) to what the device runs: validation (all of it before anything
compiles), buffer sizes (slots K, the per-step arrival cap), the default horizon, the static EngineConfig and the
flattened (configuration × trial) parameter arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._arrivals import as_arrivals
from .._batch import AffineBatch, BatchTime
from .._errors import LqsError, check_float, check_int
from .._server import MonteCarlo, Server
from .._workload import Workload, as_workload
from ..kernels import fused as _fused
from ..kernels import rng as _rng
from ..kernels.state import ROUTINGS, EngineConfig, Params
from .paths import select_path, settle as settle_path

_INT32_MAX = 2**31 - 1
#: largest expected number of arrivals in one step, λ·b: the float32 Poisson inversion starts from e^(−λ·b),
#: which loses precision below e^(−87) (float32's smallest normal number) and is 0 below e^(−104)
MAX_ARRIVALS_PER_STEP = 80.0
#: steps of one host round trip (one jitted call), at most: progress and early stopping happen between calls
CALL_STEPS = 4096


@dataclass(frozen=True)
class Sizing:
    K: int
    a_max: int
    n_service_est: float  # mean number of requests in service at saturation, estimated
    check_work: bool
    path: str = "xla"  # the path that ran: xla, fused (Pallas/Triton) or fused-interpret
    path_reason: str = ""
    fused_trials: int = 0  # trials per fused-kernel program (0: XLA path)


def nominal_b(batch: BatchTime, default=np.nan):
    """The model's mean step time, or ``default`` where it has none (an affine model's depends on the load)."""
    try:
        return batch.mean_s
    except LqsError:
        return default


def saturated_service(moments, M: int, prefill_chunk: int) -> tuple[float, float]:
    """(scheduled steps per request, mean number of requests in service) of a saturated server: each request is
    scheduled ⌈s/ŝ⌉ + o steps (≈ E[s]/ŝ + ½ + E[o]), and M/E[g_exact] token·steps of memory-work per step."""
    life = moments.mean_prompt_tokens / prefill_chunk + 0.5 + moments.mean_output_tokens
    return life, M * life / moments.g_exact


def step_times(batch: BatchTime, M: int, prefill_chunk: int, n_serv: float) -> tuple:
    """(typical, far, cap) step time in seconds for sizing the static buffers: the model's mean (an affine model's
    typical step with ``n_serv`` requests in service; None when it has neither), its far quantile, and the cap the
    buffers are sized for (the far quantile, or at most 4× an affine model's typical step)."""
    b_typ = nominal_b(batch, default=None)
    if b_typ is None and isinstance(batch, AffineBatch):
        b_typ = batch.typical_s(M, prefill_chunk, n_serv)
    b_max = batch.max_s(M, 4096, prefill_chunk)
    b_cap = b_max if b_typ is None or not isinstance(batch, AffineBatch) else min(b_max, 4.0 * b_typ)
    return b_typ, b_max, b_cap


def size_engine(workload: Workload, M_max: int, prefill_chunk: int, lam_max: float, batch: BatchTime,
                compact_every: int, K: int | None = None, servers: int = 1, moments=None,
                lam_slots: float | None = None) -> Sizing:
    """Default capacities from the workload and M: K slots and the per-step arrival cap. ``moments``: the
    workload's ``expected_g(prefill_chunk)`` when already known. ``lam_max`` bounds the arrivals in one step (the
    arrival cap), ``lam_slots`` (default ``lam_max``) those over a compaction period (the slots): a replayed
    pattern's densest step is far denser than its densest period."""
    m = workload.expected_g(prefill_chunk) if moments is None else moments
    life, n_serv = saturated_service(m, M_max, prefill_chunk)
    b_typ, b_max, b_cap = step_times(batch, M_max, prefill_chunk, n_serv)
    lam_k = lam_max if lam_slots is None else lam_slots
    rate_steps = max(lam_k / servers * (b_typ or b_max), n_serv / life)  # arrivals or completions per step
    if K is None:
        # started requests peak near 2× the mean number in service (docs/model.md: ≈ 230 for pd-1:2, n ≈ 105),
        # plus room for waiting requests and for the finished ones that wait for the next compaction
        k_est = 2.0 * n_serv + 48 + 2.0 * compact_every * rate_steps
        K = int(max(64, 32 * math.ceil(k_est / 32)))
    else:
        K = int(K)  # validated by MonteCarlo (≥ MIN_K)
    # a hit is counted and flags the run. Rounded up to a multiple of 8, at least 16, so that nearby λ share a
    # compilation: the cap costs a few scalar operations per term and trial-step, nothing per slot
    a_max = max(16, 8 * math.ceil(_rng.poisson_cap(lam_max * b_cap) / 8))
    check = (workload.max_total + 1) ** 2 < 2**30
    return Sizing(K=K, a_max=a_max, n_service_est=n_serv, check_work=check)


def call_plan(steps: int, cfg) -> list[int]:
    """Time-series points run by each host call of a ``steps``-step run (every call but the last runs
    cfg.points_per_call of them): the run covers ``steps`` rounded up to whole points (record periods when
    cfg.periods_per_point is 1)."""
    total = math.ceil(math.ceil(steps / cfg.compact_every) / cfg.periods_per_point)
    ppc = cfg.points_per_call
    return [min(ppc, total - c * ppc) for c in range(math.ceil(total / ppc))]


def check_workload(workload, server: Server) -> None:
    as_workload(workload)
    for m in server.Ms:
        workload.validate(m)


def auto_steps(workload, server: Server, warmup: int = 4000) -> int:
    """Default horizon: warm-up + max(16,000 steps, the steps that 2,000 completions take at μ_exact).

    Measured in steps, not seconds, so b̄ plays no part: what decides whether a backlog's drift stands out of its
    noise is the number of requests in the window, and a small M serves few requests per step.
    """
    warmup = check_int("warmup", warmup, 0)
    check_workload(workload, server)
    m = workload.expected_g(server.prefill_chunk)
    per_step = min(server.Ms) / m.g_exact  # completions per step at μ_exact
    window = max(16_000, math.ceil(2000 / per_step))
    return int(1000 * math.ceil((warmup + window) / 1000))


def rates(lam) -> list[float]:
    arr = np.atleast_1d(np.asarray(lam, dtype=object))
    if lam is None or arr.ndim != 1 or arr.size == 0:
        raise LqsError("lam", lam, "must be an arrival rate in requests/s (≥ 0) or a non-empty 1-D list of them")
    return [check_float("lam", x, 0.0) for x in arr.tolist()]


class Config(NamedTuple):
    """One simulated configuration: a workload, a one-configuration Server (``b`` a BatchTime) and a rate."""

    workload: Workload
    server: Server
    lam: float
    arrivals: object = None  # lqs.Arrivals (None: Poisson)

    @property
    def arrival_kind(self) -> str:
        """EngineConfig.arrivals of this configuration."""
        return "poisson" if self.arrivals is None else self.arrivals.engine_kind

    @property
    def batch(self) -> BatchTime:
        return self.server.b

    @property
    def M(self) -> int:
        return self.server.M


def product(workload, server: Server, lams, arrivals=None) -> list[Config]:
    """The configurations of ``server``'s grid (b̄ slowest, then M, λ fastest) at each rate of ``lams``."""
    return [Config(workload, server.replace(M=m, b=bt), lm, arrivals)
            for bt in server.bs for m in server.Ms for lm in lams]


def shape_key(c: Config, phased=None) -> tuple:
    """What must agree for configurations to share one compiled program: everything static in EngineConfig and the
    tree structure and leaf shapes of the workload and the batch-time model."""
    s = c.server
    w_def = jax.tree_util.tree_structure(c.workload)
    w_shapes = tuple(np.shape(x) for x in jax.tree_util.tree_leaves(c.workload))
    b_def = jax.tree_util.tree_structure(s.b)
    b_shapes = tuple(np.shape(x) for x in jax.tree_util.tree_leaves(s.b))
    return (s.policy, s.servers, s.token_budget is not None, phased is not None, w_def, w_shapes, b_def, b_shapes,
            s.max_running is not None, s.block_size > 1, c.arrival_kind)


def groups(configs: list[Config], phased=None) -> list[list[int]]:
    """Indices of ``configs`` grouped by :func:`shape_key`, in order of first appearance."""
    out: dict = {}
    for i, c in enumerate(configs):
        out.setdefault(shape_key(c, phased), []).append(i)
    return list(out.values())


def prepare(workload, server: Server, lams: list[float], mc: MonteCarlo, steps: int, phased=None,
            max_points: int | None = None, arrivals=None):
    """:func:`prepare_configs` for one workload and one Server grid. Returns (cfg, sizing, grid, params) with
    ``grid`` listing (λ, M, BatchTime) per configuration, λ fastest (``params.arr_t`` still unset: see
    :func:`attach_instants`)."""
    check_workload(workload, server)
    configs = product(workload, server, lams, arrivals)
    cfg, sizing, params = prepare_configs(configs, mc, steps, phased, max_points)
    return cfg, sizing, [(c.lam, c.M, c.batch) for c in configs], params


def prepare_configs(configs: list[Config], mc: MonteCarlo, steps: int, phased=None, max_points: int | None = None,
                    latency_windows=None):
    """Validate, size the engine and build the static config and the flattened (configuration × trial) parameters
    of configurations that share one program (:func:`shape_key`). Returns (cfg, sizing, params)."""
    steps = validate_group(configs, mc, steps, phased)
    sizing = choose_path(group_sizing(configs, mc, phased), mc, configs, phased)
    cfg = engine_config(configs[0].server, sizing, mc, steps, phased, max_points, configs[0].arrival_kind)
    params = build_params(configs, mc, phased)
    if latency_windows is not None:  # latency histograms per window of arrival (an unphased run's phase_end)
        ends = np.asarray(latency_windows, np.float32)
        same_as_phases = phased is not None and np.array_equal(ends, np.asarray(phased[1], np.float32))
        if (phased is not None and not same_as_phases) or ends.ndim != 1 or ends.size < 1 \
                or not np.isinf(ends[-1]) or np.any(np.diff(ends) <= 0):
            raise LqsError("latency_windows", None, "must be increasing window ends ending in inf, on an unphased run "
                           "(or the phases' own ends)")
        if sizing.path != "xla":
            raise LqsError("path", sizing.path, "latency per window runs on the XLA path (MonteCarlo(path='xla'))")
        cfg = replace(cfg, phase_hist=int(ends.size))
        params = params._replace(phase_end=jnp.asarray(np.broadcast_to(ends, (params.lam.shape[0], ends.size))))
    return cfg, sizing, params


#: most bytes of given arrival instants one program may hold (configurations × trials × instants × 4)
MAX_INSTANT_BYTES = 2 << 30


def instants_length(configs: list[Config], steps: int) -> int:
    """Instants per trial that a program of ``steps`` steps needs, with room: λ·steps·b (b the sizing's cap on a
    step: the constant, a far quantile, or 4× an affine model's typical step at saturation) plus 8 standard
    deviations and one +inf sentinel. Running out anyway is counted (limits.arr_trunc) and flags the run."""
    n = 0.0
    for c in configs:
        if c.arrivals.kind == "given":
            n = max(n, c.arrivals.length - 2)
            continue
        chunk = c.server.prefill_chunk
        n_serv = saturated_service(c.workload.expected_g(chunk), c.M, chunk)[1]
        mean = c.lam * steps * step_times(c.batch, c.M, chunk, n_serv)[2]
        n = max(n, mean + 8.0 * math.sqrt(mean) * (1.0 if c.arrivals.kind == "replayed" else
                                                    1.0 / math.sqrt(max(c.arrivals.burstiness, 1e-3))))
    return int(math.ceil(n)) + 2


def attach_instants(params: Params, configs: list[Config], mc: MonteCarlo, steps: int, trial_keys) -> Params:
    """``params`` with the arrival instants of every (configuration × trial): configuration i's process at its λ,
    drawn from its trials' keys (``trial_keys``: [configurations, trials] typed keys)."""
    L = instants_length(configs, steps)
    nbytes = 4 * L * len(configs) * mc.trials
    if nbytes > MAX_INSTANT_BYTES:
        raise LqsError("arrivals", configs[0].arrivals.describe(),
                       f"{len(configs)} configurations × {mc.trials} trials × {L} instants need {nbytes / 2**30:.1f} "
                       f"GiB of arrival instants; at most {MAX_INSTANT_BYTES / 2**30:.0f} GiB: fewer steps, trials or "
                       "configurations per call")
    rows = [c.arrivals.engine_instants(c.lam, L, trial_keys[i]) for i, c in enumerate(configs)]
    return params._replace(arr_t=jnp.asarray(np.concatenate(rows, axis=0)))


def validate_group(configs: list[Config], mc: MonteCarlo, steps: int, phased=None) -> int:
    """Every check of a program's configurations that needs more than one field (each field was checked when its
    Server or MonteCarlo was built). Returns the horizon in steps."""
    keys = {shape_key(c, phased) for c in configs}
    if len(keys) != 1:
        raise LqsError("configs", len(keys), "configurations of one program must agree in policy, servers, "
                       "token budget, running cap and KV blocks (set or not), arrival kind and workload/batch-model "
                       "structure")
    steps = check_int("steps", steps, 1, 2**31 - 2**20)
    if mc.warmup >= steps:
        raise LqsError("warmup", mc.warmup, f"must be below the horizon of {steps} steps")
    for c in configs:
        check_workload(c.workload, c.server)
        if c.arrivals is not None:
            as_arrivals(c.arrivals, c.server.servers, phased is not None)
        blk = c.server.block_size
        if blk > 1 and blk * -(-c.workload.max_total // blk) > c.M:
            raise LqsError("block_size", blk, f"the largest request (s+o = {c.workload.max_total}) rounded up to "
                           f"whole blocks of {blk} tokens must fit in M = {c.M}")
        b_max = c.batch.max_s(c.M, 64, c.server.prefill_chunk)
        if c.lam * b_max > MAX_ARRIVALS_PER_STEP and c.arrival_kind != "instants":  # instants: no Poisson draw
            what = ("" if c.batch.kind == "constant" else f" (b = {b_max:.3g} s, the far quantile of the "
                    f"{c.batch.kind} batch-time model: a heavy tail can cause this as well as the rate)")
            raise LqsError("lam", c.lam, f"λ·b gives {c.lam * b_max:.3g} expected arrivals per step{what}; at most "
                           f"{MAX_ARRIVALS_PER_STEP:g} are supported (float32 Poisson draws); a rate this far above "
                           "any capacity is unstable anyway")
    if phased is not None:
        for c in configs:
            phased[0].validate(c.M)
        if len({c.lam for c in configs}) != 1:
            raise LqsError("lam", [c.lam for c in configs], "a phased run has its rates in phases, not a grid")
    return steps


def group_sizing(configs: list[Config], mc: MonteCarlo, phased=None) -> Sizing:
    """One sizing for a program: the largest buffers any of its configurations needs."""
    sizes, moments = [], {}
    for c in configs:
        lam_max = c.lam if phased is None else max(c.lam, float(np.max(phased[2])))
        lam_slots = None
        if c.arrival_kind == "instants":  # burstier arrivals: more per step at the same mean rate
            b_far = c.batch.max_s(c.M, 4096, c.server.prefill_chunk)
            lam_max = c.arrivals.peak_rate_rps(c.lam, b_far)
            lam_slots = c.arrivals.peak_rate_rps(c.lam, b_far * mc.compact_every)  # densest compaction period
        mk = (id(c.workload), c.server.prefill_chunk)
        if mk not in moments:
            moments[mk] = c.workload.expected_g(c.server.prefill_chunk)
        sizes.append(size_engine(c.workload, c.M, c.server.prefill_chunk, lam_max, c.batch, mc.compact_every, mc.K,
                                 servers=c.server.servers, moments=moments[mk], lam_slots=lam_slots))
    sizing = max(sizes, key=lambda z: (z.K, z.a_max))
    sizing = replace(sizing, K=max(z.K for z in sizes), a_max=max(z.a_max for z in sizes),
                     check_work=all(z.check_work for z in sizes))
    return sizing


def _limits(server: Server) -> bool:
    return server.max_running is not None or server.block_size > 1


def choose_path(sizing: Sizing, mc: MonteCarlo, configs: list[Config], phased=None) -> Sizing:
    """The step-loop path of a program (lqs/engine/paths.py; ``auto`` consults the bench records) and the K and
    trials per kernel program it runs with."""
    c0 = configs[0]
    path, reason = select_path(mc.path, c0.server.servers, phased is not None, _limits(c0.server), c0.arrival_kind)
    path, reason, K = settle_path(path, reason, sizing.K, c0.server.policy, c0.batch.kind)
    rb = 0 if path == "xla" else (mc.fused_trials or _fused.default_trials_per_program(K))
    M_max = max(c.M for c in configs)
    if K * (M_max + 1) >= _INT32_MAX:
        raise LqsError("M", M_max, f"K·(M+1) must stay below 2^31 for int32 accounting (K={K}); "
                       "use a smaller M or K")
    return replace(sizing, K=K, path=path, path_reason=reason, fused_trials=rb)


def engine_config(s0: Server, sizing: Sizing, mc: MonteCarlo, steps: int, phased=None,
                  max_points: int | None = None, arrivals: str = "poisson") -> EngineConfig:
    """The static configuration of a program. At most ``max_points`` time-series points; host calls of about
    CALL_STEPS steps (progress, early stop). The points per call are fixed (the last call runs only the points it
    needs: run_call's n_points), so runs of different lengths share one program unless they differ in record
    periods per point (over max_points)."""
    max_points = mc.max_points if max_points is None else max_points
    total_periods = math.ceil(steps / mc.compact_every)
    ppp = max(1, math.ceil(total_periods / max_points))
    ppc = max(1, round(CALL_STEPS / (mc.compact_every * ppp)))
    return EngineConfig(K=sizing.K, policy=s0.policy, a_max=sizing.a_max, token_budget=s0.token_budget is not None,
                        servers=s0.servers, phased=phased is not None,
                        n_u=0 if phased is None else phased[0].n_uniforms,
                        check_work=sizing.check_work and s0.block_size == 1,
                        running_cap=s0.max_running is not None, blocks=s0.block_size > 1,
                        arrivals=arrivals,
                        compact_every=mc.compact_every, periods_per_point=ppp, points_per_call=ppc)


def build_params(configs: list[Config], mc: MonteCarlo, phased=None) -> Params:
    """The flattened (configuration × trial) parameters: configuration i's values repeated for its trials."""
    trials = mc.trials
    N = len(configs) * trials

    def per_trial(values, dtype):
        return jnp.asarray(np.repeat(np.asarray(values, dtype), trials))

    def stacked(trees):
        return jax.tree_util.tree_map(lambda *xs: np.repeat(np.stack([np.asarray(x) for x in xs]), trials, axis=0),
                                      *trees)

    sim_ws = [c.workload for c in configs] if phased is None else [phased[0]] * len(configs)
    min_w = [(w.min_s + 1) if c.server.policy == "reserve" else min(c.server.prefill_chunk, w.min_s)
             for w, c in zip(sim_ws, configs)]
    lam_arr = np.repeat(np.asarray([c.lam for c in configs], np.float32), trials)
    if phased is None:
        ends = np.full((N, 1), np.inf, np.float32)
        plams = lam_arr[:, None]
    else:
        ends = np.broadcast_to(phased[1], (N, phased[1].size))
        plams = np.broadcast_to(phased[2], (N, phased[2].size))
    params = Params(lam=jnp.asarray(lam_arr), M=per_trial([c.M for c in configs], np.int32),
                       prefill_chunk=per_trial([c.server.prefill_chunk for c in configs], np.int32),
                       budget=per_trial([c.server.token_budget or _INT32_MAX for c in configs], np.int32),
                       warmup=jnp.full((N,), mc.warmup, jnp.int32), min_w=per_trial(min_w, np.int32),
                       workload=stacked(sim_ws), batch=stacked([c.batch for c in configs]),
                       phase_end=jnp.asarray(ends), phase_lam=jnp.asarray(plams),
                       routing=per_trial([ROUTINGS.index(c.server.routing) for c in configs], np.int32),
                       max_running=per_trial([c.server.max_running or _INT32_MAX for c in configs], np.int32),
                       block=per_trial([c.server.block_size for c in configs], np.int32))
    return params

"""From (workload, Server, rates, MonteCarlo) to what the device runs: validation (all of it before anything
compiles), buffer sizes (slots K, the per-step arrival cap), the default horizon, the static EngineConfig and the
flattened (configuration × trial) parameter arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from .._batch import AffineBatch, BatchTime, ConstantBatch
from .._errors import LqsError, check_float, check_int
from .._server import MonteCarlo, Server
from .._workload import Workload
from ..kernels import engine as _k
from ..kernels import fused as _fused
from ..kernels import rng as _rng
from .paths import select_path, settle as settle_path

_INT32_MAX = 2**31 - 1
#: largest expected number of arrivals in one step, λ·b: the float32 Poisson inversion starts from e^(−λ·b),
#: which loses precision below e^(−87) (float32's smallest normal number) and is 0 below e^(−104)
MAX_ARRIVALS_PER_STEP = 80.0


@dataclass(frozen=True)
class Sizing:
    K: int
    a_max: int
    n_service_est: float  # mean number of requests in service at saturation, estimated
    check_work: bool
    engine: str = "xla"  # the path that ran: xla, fused (Pallas/Triton) or fused-interpret
    engine_reason: str = ""
    fused_rb: int = 0  # trials per fused-kernel program (0: XLA path)


def nominal_b(batch: BatchTime, default=np.nan):
    """The model's mean step time, or ``default`` where it has none (an affine model's depends on the load)."""
    try:
        return batch.mean_s
    except LqsError:
        return default


def size_engine(workload: Workload, M_max: int, prefill_chunk: int, lam_max: float, batch: BatchTime,
                compact_every: int, K: int | None = None, servers: int = 1) -> Sizing:
    """Default capacities from the workload and M: K slots and the per-step arrival cap."""
    m = workload.expected_g(prefill_chunk)
    mean_k = m.mean_prompt_tokens / prefill_chunk + 0.5
    life = mean_k + m.mean_output_tokens  # scheduled steps per request
    n_serv = M_max * life / m.g_exact
    b_typ = nominal_b(batch, default=None)
    if b_typ is None and isinstance(batch, AffineBatch):  # typical saturated step: one chunk, n_serv decodes, full M
        a = np.asarray(batch.a, np.float64)
        b_typ = float(a[0] + a[1] * prefill_chunk + a[2] * n_serv + a[3] * M_max)
    b_max = batch.max_s(M_max, 4096, prefill_chunk)
    rate_steps = max(lam_max / servers * (b_typ or b_max), n_serv / life)  # arrivals or completions per step
    if K is None:
        # started requests peak near 2× the mean number in service (docs/model.md: ≈ 230 for pd-1:2, n ≈ 105),
        # plus room for waiting requests and for the finished ones that wait for the next compaction
        k_est = 2.0 * n_serv + 48 + 2.0 * compact_every * rate_steps
        K = int(max(64, 32 * math.ceil(k_est / 32)))
    else:
        K = check_int("K", K, 8)
    b_cap = b_max if b_typ is None or not isinstance(batch, AffineBatch) else min(b_max, 4.0 * b_typ)
    # a hit is counted and flags the run; rounded so that nearby λ share a compilation
    a_max = 4 * math.ceil(_rng.poisson_cap(lam_max * b_cap) / 4)
    check = (workload.max_total + 1) ** 2 < 2**30
    return Sizing(K=K, a_max=a_max, n_service_est=n_serv, check_work=check)


def check_workload(workload, server: Server) -> None:
    if not isinstance(workload, Workload):
        raise LqsError("workload", type(workload).__name__, "must be an lqs Workload (see lqs.preset; a name such "
                                                           "as 'pd-1:1' must go through lqs.preset first)")
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


def prepare(workload, server: Server, lams: list[float], mc: MonteCarlo, steps: int, phased=None,
            max_points: int | None = None):
    """Validate, size the engine, build the static config and the flattened (configuration × trial) parameters.

    Returns (cfg, sizing, grid, params); ``grid`` lists (λ, M, BatchTime) per configuration, λ fastest."""
    check_workload(workload, server)
    steps = check_int("steps", steps, 1, 2**31 - 2**20)
    warmup = check_int("warmup", mc.warmup, 0, steps - 1)
    compact_every = mc.compact_every
    max_points = mc.max_points if max_points is None else max_points
    trials = mc.trials
    Ms, batches, chunk = server.Ms, server.bs, server.prefill_chunk
    M_max = max(Ms)
    lam_b = max(lams) * max(bt.max_s(M_max, 64, chunk) for bt in batches)
    if lam_b > MAX_ARRIVALS_PER_STEP:
        raise LqsError("lam", max(lams), f"λ·b gives {lam_b:.3g} expected arrivals per step; at most "
                       f"{MAX_ARRIVALS_PER_STEP:g} are supported (float32 Poisson draws); a rate this far above "
                       "any capacity is unstable anyway")
    lam_max = max(lams) if phased is None else max(max(lams), float(np.max(phased[2])))
    if phased is not None:
        for m in Ms:
            phased[0].validate(m)
        if len(lams) != 1:
            raise LqsError("lam", lams, "a phased run has its rates in phases, not a λ grid")
    ref_batch = batches[0] if len(batches) == 1 else ConstantBatch(max(bt.mean_s for bt in batches))
    sizing = size_engine(workload, M_max, chunk, lam_max, ref_batch, compact_every, mc.K, servers=server.servers)
    Kc = sizing.K
    path, reason = select_path(mc.engine, server.servers, phased is not None)
    path, reason, Kc = settle_path(path, reason, Kc, server.policy, ref_batch.kind)  # auto: measured; fused K
    rb = 0 if path == "xla" else (mc.fused_rb or _fused.default_block(Kc))
    sizing = replace(sizing, K=Kc, engine=path, engine_reason=reason, fused_rb=rb)
    if Kc * (M_max + 1) >= _INT32_MAX:
        raise LqsError("M", M_max, f"K·(M+1) must stay below 2^31 for int32 accounting (K={Kc}); "
                       "use a smaller M or K")
    # ≤ max_points records; calls of about 4096 steps between host round trips (progress, early stop)
    total_blocks = math.ceil(steps / compact_every)
    bpr = max(1, math.ceil(total_blocks / max_points))
    total_records = math.ceil(total_blocks / bpr)
    n_calls = max(1, round(total_records * compact_every * bpr / 4096))
    rpc = math.ceil(total_records / n_calls)  # calls of ≈ 4096 steps that add up to just ≥ steps
    cfg = _k.EngineConfig(K=Kc, policy=server.policy, a_max=sizing.a_max, token_budget=server.token_budget is not None,
                          servers=server.servers, routing=server.routing,
                          phased=phased is not None, n_u=0 if phased is None else phased[0].n_uniforms,
                          check_work=sizing.check_work, compact_every=compact_every, blocks_per_record=bpr,
                          records_per_call=rpc)
    grid = [(lm, m, bt) for bt in batches for m in Ms for lm in lams]
    N = len(grid) * trials
    sim_w = workload if phased is None else phased[0]
    min_w = (sim_w.min_s + 1) if server.policy == "reserve" else min(chunk, sim_w.min_s)
    lam_arr = np.repeat(np.asarray([g[0] for g in grid], np.float32), trials)
    M_arr = np.repeat(np.asarray([g[1] for g in grid], np.int32), trials)
    batch_stacked = jax.tree_util.tree_map(lambda *xs: np.repeat(np.stack([np.asarray(x) for x in xs]), trials,
                                                                 axis=0), *[g[2] for g in grid])
    workload_b = jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (N,) + np.shape(x)), sim_w)
    if phased is None:
        ends = np.full((N, 1), np.inf, np.float32)
        plams = lam_arr[:, None]
    else:
        ends = np.broadcast_to(phased[1], (N, phased[1].size))
        plams = np.broadcast_to(phased[2], (N, phased[2].size))
    params = _k.Params(lam=jnp.asarray(lam_arr), M=jnp.asarray(M_arr), prefill_chunk=jnp.full((N,), chunk, jnp.int32),
                       budget=jnp.full((N,), server.token_budget or _INT32_MAX, jnp.int32),
                       warmup=jnp.full((N,), warmup, jnp.int32), min_w=jnp.full((N,), min_w, jnp.int32),
                       workload=workload_b, batch=batch_stacked, phase_end=jnp.asarray(ends),
                       phase_lam=jnp.asarray(plams))
    return cfg, sizing, grid, params

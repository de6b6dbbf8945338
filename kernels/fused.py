"""The fused step loop: one Pallas kernel runs a whole block of steps for a block of trials on chip.

The XLA engine (kernels/engine.py) runs one ``lax.scan`` iteration per step: every step reads and writes every
trial's slots through GPU memory and launches its kernels again. Here one ``pallas_call`` launch runs
``cfg.compact_every`` steps; each program of its grid loads the slots of ``rb`` trials (``rb × K`` per field)
once, keeps them in registers / on-chip memory through the ``fori_loop`` over steps, and writes them back once.
Compaction, latency binning and the time-series record stay in XLA between launches (once per block of steps).

Identity with the XLA path is by construction, not by a second implementation: the kernel body is
``engine.step_with`` with ``engine.serve`` and ``engine.finish`` vmapped over the block, so the scheduling rule,
the counters (overflow, admission cap, starvation, invariant checks) and the counter-based random numbers
(kernels/rng.py, keyed by (trial, step) and (trial, request index)) are the same code. When the batch time
does not depend on the batch (constant and i.i.d. models) the block's (b_n, arrivals, truncation) are drawn ahead
in XLA by ``engine.draw_arrivals`` (the step's own draw, gathers and normal quantile included) and the kernel reads
them: every thread of a program would otherwise repeat that per-trial work (measured with in-kernel draws: the
step loop was 532 SASS instructions per thread for constant b̄ and 1,127 for a lognormal b; drawn ahead, 439).
The affine model depends on the batch, so it is drawn in the kernel (``engine.affine_time``). Products that feed
an addition go through ``rng.unfused_mul`` so that no compiler contracts them into a fused multiply-add in one
path and not in the other. tests/test_fused.py checks bit-identity in interpret mode.

Lowering: Triton (``jax.experimental.pallas.triton``). Mosaic GPU, in jax 0.10.x, has no lowering for the
prefix sum (``cumsum``) the FCFS admission needs; Triton lowers every primitive of the step (checked on any
machine by :func:`lower_for_gpu`, which lowers the kernel for CUDA without a GPU). Triton needs power-of-two
block shapes. K and ``rb`` are powers of two on a GPU.

Not fused (the XLA path runs them): clusters (``servers > 1``) and phased schedules.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import engine as E

# State fields the step reads or writes (the rest are compaction's): per-trial scalars and [K] slot fields
SCALARS = ("step", "t", "n_used", "overflow", "next_ovf", "arrivals", "completions", "swaps", "t_w0",
           "arrivals_w", "completions_w", "mem_sum_w", "steps_w", "busy_w", "mem_max", "started_max",
           "waiting_max", "starved", "arr_trunc", "violations")
SLOTS = ("s", "o", "k", "u", "flags", "t_first", "t_ttft", "t_done", "work")  # t_arr, u_off: compaction's
LOGS = ("blk_t", "blk_b", "blk_n")  # the block's step log [cfg.log_len] per trial
PARAMS = ("lam", "M", "prefill_chunk", "budget", "warmup", "min_w")


def unsupported(servers: int, phased: bool) -> str | None:
    """Why a configuration with these servers per trial and phasing cannot run fused (None when it can)."""
    if servers > 1:
        return "clusters (servers > 1) run on the XLA path"
    if phased:
        return "phased schedules run on the XLA path"
    return None


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def triton_K(K: int) -> int:
    """Slots per trial the Triton kernel runs for a sized K: Pallas' Triton lowering needs every in-kernel array
    to have a power-of-two size, so K is rounded up to one (extra slots only lift capacity limits)."""
    return next_pow2(K)


SLOTS_PER_THREAD = 4  # slots of each field per GPU thread; see default_block


def default_block(K: int) -> int:
    """Replicas per kernel program: about 1024 slots per field (a power of two, 1..64).

    Measured for sm_90 by bench/fused_resources.py (Triton → PTX → ptxas, no GPU needed): the step keeps about
    ten slot fields live, so registers grow with the slots each thread holds: at 4 per thread (K = 512, two
    trials, 8 warps: the default) 166 registers and no spills; at 8 per thread 255 registers; at 16 per thread
    it spills (~900 B per thread). bench/results/fused-resources-sm90.json has the grid."""
    return int(min(64, 1 << (max(1, 1024 // K).bit_length() - 1)))


def default_warps(K: int, rb: int) -> int:
    """Warps per program so that each thread holds at most SLOTS_PER_THREAD slots of each field (1..32)."""
    return int(min(32, next_pow2(-(-(rb * K) // (32 * SLOTS_PER_THREAD)))))


# --------------------------------------------------------------------------------- batch times
STATE_FREE = ("constant", "iid-empirical", "iid-lognormal")  # b_n independent of the batch: drawn ahead
IN_KERNEL = ("affine",)  # b_n depends on the batch: drawn in the kernel


def _affine_operands(batch):
    """The stacked affine coefficients [N, 4] as four [N] kernel operands."""
    a = jnp.asarray(batch.a, jnp.float32)
    return [a[:, j] for j in range(4)]


# --------------------------------------------------------------------------------- the kernel
def _kernel(cfg: E.EngineConfig, rb, n_ops, n_pre, *refs):
    n_in = len(SCALARS) + len(SLOTS) + len(LOGS) + 2 + len(PARAMS) + n_ops + n_pre
    ins, outs = refs[:n_in], refs[n_in:]
    it = iter(ins)
    sc = {f: next(it)[...] for f in SCALARS}
    sl = {f: next(it)[...] for f in SLOTS}
    lg = {f: next(it)[...] for f in LOGS}
    k0, k1 = next(it)[...], next(it)[...]
    pv = {f: next(it)[...] for f in PARAMS}
    ops = [next(it)[...] for _ in range(n_ops)]  # affine coefficients a0..a3
    pre = [next(it) for _ in range(n_pre)]  # Refs [rb, steps]: (b_n, n_arr, trunc) drawn ahead of the block

    slots = E.Slots(**sl, t_arr=None, u_off=None, uu=None)
    none = dict(gsum_w=None, lat_lost=None, hist=None, lat_sum=None, lat_n=None)
    st = E.State(slots=slots, keys=(k0, k1, None, None), **sc, **lg, **none)
    p = E.Params(**pv, workload=None, batch=None, phase_end=None, phase_lam=None)
    draw = None if n_pre else (lambda u1, u2, pre_tok, dec, mem: E.affine_time(*ops, pre_tok, dec, mem))
    serve_v = jax.vmap(lambda s_, p_, c_: E.serve(s_, p_, c_), in_axes=(0, 0, None))
    finish_v = jax.vmap(lambda s_, sv, b, n, tr, ph, p_, c_: E.finish(s_, sv, b, n, tr, ph, p_, c_),
                        in_axes=(0, 0, 0, 0, 0, None, 0, None))

    def body(i, carry):
        st_, _mem = carry
        drawn = (pre[0][:, i], pre[1][:, i], pre[2][:, i] != 0) if n_pre else None
        st_, out = E.step_with(st_, p, cfg, draw, serve_fn=lambda a, b_, c: serve_v(a, b_, c),
                               finish_fn=lambda a, sv, b_, n, tr, ph, p_, c: finish_v(a, sv, b_, n, tr, ph, p_, c),
                               pre_drawn=drawn)
        return st_, out.mem

    st, mem = jax.lax.fori_loop(0, cfg.compact_every, body, (st, jnp.zeros((rb,), jnp.int32)))
    o = iter(outs)
    for f in SCALARS:
        next(o)[...] = getattr(st, f)
    for f in SLOTS:
        next(o)[...] = getattr(st.slots, f)
    for f in LOGS:
        next(o)[...] = getattr(st, f)
    next(o)[...] = mem


def pre_draw(states: E.State, params: E.Params, cfg: E.EngineConfig):
    """(b_n, n_arr, trunc) of the block's steps for every trial, [N, steps padded to a power of two], computed
    in XLA with the engine's own draw: the kernel then spends no instruction on hashing, the normal quantile or
    the Poisson inversion (which every thread of a program would repeat)."""
    n = next_pow2(cfg.compact_every)
    steps = states.step[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]

    def one(keys, row, p):
        return jax.vmap(lambda m: E.draw_arrivals(keys, m, p, cfg))(row)

    b, n_arr, trunc = jax.vmap(one)(states.keys, steps, params)
    return [b, n_arr, trunc.astype(jnp.int32)]


def fused_block(states: E.State, params: E.Params, cfg: E.EngineConfig, *, rb: int, interpret: bool,
                num_warps: int | None = None, num_stages: int = 1):
    """``cfg.compact_every`` steps of every trial (leading axis N, a multiple of rb) in one kernel launch.

    Returns (states, mem of the last step [N])."""
    from jax.experimental import pallas as pl

    N, K = states.slots.s.shape
    L = states.blk_n.shape[1]
    if N % rb:
        raise ValueError(f"N={N} is not a multiple of the block rb={rb}")
    kind = params.batch.kind
    if kind in STATE_FREE:
        ops, pre = [], pre_draw(states, params, cfg)
    elif kind in IN_KERNEL:
        ops, pre = _affine_operands(params.batch), []
    else:
        raise ValueError(f"batch kind {kind!r} has no fused draw")
    args = ([getattr(states, f) for f in SCALARS] + [getattr(states.slots, f) for f in SLOTS]
            + [getattr(states, f) for f in LOGS] + [states.keys[:, 0], states.keys[:, 1]] + [getattr(params, f) for f in PARAMS] + ops + pre)
    args = [jnp.asarray(a) for a in args]

    def spec(a):
        if a.ndim == 1:
            return pl.BlockSpec((rb,), lambda i: (i,))
        return pl.BlockSpec((rb, a.shape[1]), lambda i: (i, 0))

    out_shape = ([jax.ShapeDtypeStruct((N,), getattr(states, f).dtype) for f in SCALARS]
                 + [jax.ShapeDtypeStruct((N, K), getattr(states.slots, f).dtype) for f in SLOTS]
                 + [jax.ShapeDtypeStruct((N, L), getattr(states, f).dtype) for f in LOGS]
                 + [jax.ShapeDtypeStruct((N,), jnp.int32)])
    out_specs = [pl.BlockSpec((rb,), lambda i: (i,)) for _ in SCALARS] + \
                [pl.BlockSpec((rb, K), lambda i: (i, 0)) for _ in SLOTS] + \
                [pl.BlockSpec((rb, L), lambda i: (i, 0)) for _ in LOGS] + [pl.BlockSpec((rb,), lambda i: (i,))]
    n_state = len(SCALARS) + len(SLOTS) + len(LOGS)
    kw = {}
    if not interpret:
        from jax.experimental.pallas import triton as plt

        kw["compiler_params"] = plt.CompilerParams(num_warps=num_warps or default_warps(K, rb), num_stages=num_stages)
    call = pl.pallas_call(
        functools.partial(_kernel, cfg, rb, len(ops), len(pre)),
        out_shape=out_shape, grid=(N // rb,), in_specs=[spec(a) for a in args], out_specs=out_specs,
        input_output_aliases={i: i for i in range(n_state)}, interpret=interpret, name="lqs_step_loop", **kw)
    res = call(*args)
    sc = dict(zip(SCALARS, res[:len(SCALARS)]))
    sl = dict(zip(SLOTS, res[len(SCALARS):len(SCALARS) + len(SLOTS)]))
    lg = dict(zip(LOGS, res[len(SCALARS) + len(SLOTS):n_state]))
    states = states._replace(slots=states.slots._replace(**sl), **sc, **lg)
    return states, res[n_state]


def run_call_batched(states: E.State, params: E.Params, cfg: E.EngineConfig, *, rb: int, interpret: bool,
                      num_warps: int | None = None, num_stages: int = 1):
    """Same contract and results as ``engine.run_call_batched``: the step blocks run as fused kernel launches,
    compaction and records as vmapped XLA between them. N need not be a multiple of rb (padded here)."""
    why = unsupported(cfg.servers, cfg.phased)
    if why:
        raise ValueError(why)
    N = states.slots.s.shape[0]
    n_pad = (-N) % rb

    def pad(x):
        x = jnp.asarray(x)
        return jnp.concatenate([x, jnp.repeat(x[-1:], n_pad, axis=0)]) if n_pad else x

    def unpad(x):
        return x[:N] if n_pad else x

    st0 = jax.tree_util.tree_map(pad, states)
    p0 = jax.tree_util.tree_map(pad, params)
    compact_v = jax.vmap(lambda s, p: E.compact(s, p, cfg))

    def one_block(st, _):
        st, _mem = fused_block(st, p0, cfg, rb=rb, interpret=interpret, num_warps=num_warps, num_stages=num_stages)
        return compact_v(st, p0), None

    def one_record(st, _):
        st, _ = jax.lax.scan(one_block, st, None, length=cfg.blocks_per_record)
        return st, jax.vmap(lambda x: E._record(x, cfg))(st)

    st, recs = jax.lax.scan(one_record, st0, None, length=cfg.records_per_call)
    recs = jax.tree_util.tree_map(lambda x: unpad(jnp.swapaxes(x, 0, 1)), recs)
    return jax.tree_util.tree_map(unpad, st), recs


def lower_for_gpu(states: E.State, params: E.Params, cfg: E.EngineConfig, *, rb: int, num_warps: int | None = None):
    """Lower one fused block for CUDA through Triton without a GPU (jax.export); returns the StableHLO text.

    Raises if any primitive of the step has no Triton lowering or a block shape is not a power of two."""
    from jax import export

    fn = jax.jit(lambda s, p: fused_block(s, p, cfg, rb=rb, interpret=False, num_warps=num_warps))
    spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype), (states, params))
    exp = export.export(fn, platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*spec)
    return exp.mlir_module()

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
machine by :func:`lower_for_gpu`, which lowers the kernel for CUDA without a GPU). The kernel body is the jaxpr of
``engine.step_with`` re-evaluated by :class:`_Eval` with two changes of representation that keep every value,
hence every bit: slot fields as power-of-two pieces (Triton needs power-of-two arrays; :func:`kernel_pieces`,
:func:`triton_K`): with one warp per trial (K ≤ 320) the K = 32·P slots are interleaved, each lane holding P
consecutive slots (pd-1:1's K = 288: 9 parts of 32 lanes, not 512 slots), so the prefix sum is each lane's running
sum plus one warp scan; above, contiguous pieces (640 = 512 + 128) with the prefix sum carried from piece to piece;
integer sums combined either way; and boolean slot arrays as int32 0/1, which the sm_90 compiler keeps in ordinary
registers instead of packing predicate bits. Interpret mode runs them when asked (``triton_layout``: the identity
tests at K = 160 and 288 do), else the step on [rb, K] arrays as they are.

Not fused (the XLA path runs them): clusters (``servers > 1``) and phased schedules.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

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


def slot_pieces(K: int, max_piece: int | None = None) -> tuple[int, ...]:
    """K as a sum of powers of two, one per set bit, largest first, those above ``max_piece`` cut into pieces of
    ``max_piece`` (288 → (256, 32); with max_piece 128: (128, 128, 32))."""
    K = int(K)
    bits = [1 << b for b in reversed(range(K.bit_length())) if K >> b & 1]
    if not max_piece:
        return tuple(bits)
    return tuple(x for n in bits for x in ((max_piece,) * (n // max_piece) if n > max_piece else (n,)))


def kernel_pieces(K: int, rb: int, warps: int) -> tuple[int, ...]:
    """The kernel's slot layout: each slot field of a program ([rb, K]) is loaded as [rb, n] pieces, n in this tuple.

    Pallas' Triton lowering needs every in-kernel array to have a power-of-two size, so a K that is not one is
    held as power-of-two pieces and the step runs on the pieces (:class:`_Eval`: the step's jaxpr evaluated piece
    by piece). With at most one warp per trial (warps ≤ rb) a trial's slots stay in one warp, so no sum over slots
    goes through shared memory: K a multiple of 32 is held as K/32 interleaved parts of 32 (:func:`interleaved`:
    part e holds slots e, e + P, …, so each lane holds P consecutive slots), any other K as contiguous pieces of at
    most MAX_PIECE slots, the share of one warp in Triton's layout (the prefix sum carried across pieces). With more
    warps per trial: contiguous pieces, one per set bit of K."""
    if interleaved(K, rb, warps):
        return (LANES,) * (K // LANES)
    return slot_pieces(K, MAX_PIECE if warps <= rb else None)


LANES = 32  # threads of a warp


def interleaved(K: int, rb: int, warps: int) -> bool:
    """Whether the kernel holds a trial's K = 32·P slots interleaved (one warp per trial, K a multiple of 32): part e
    of P holds slots e, P + e, 2P + e, … (lane j: slot j·P + e), so each thread holds P consecutive slots. The
    prefix sum is then a running sum over the thread's own slots plus one warp scan of the threads' totals, and
    every sum over slots one warp reduction, whatever P. Against contiguous pieces (128 + 128 + 32 for K = 288: three
    warp scans, and two reductions per sum) that is 546 → 489 SASS instructions per thread and step (sm_90, two
    trials on two warps; bench/fused_resources.py)."""
    return warps <= rb and K > LANES and K % LANES == 0


MAX_PIECES = 2  # pieces per slot field under Triton: each one adds a block-wide reduction per sum over slots
MIN_PIECE = 32  # smallest piece under Triton (one warp's lanes)


def triton_K(K: int) -> int:
    """Slots per trial the Triton kernel runs for a sized K: up to ONE_WARP_MAX_K (one warp per trial, slots
    interleaved) the next multiple of 32 (288 stays 288, 200 → 224, 300 → 320); above it the smallest K' ≥ K that
    is a power of two or a sum of at most MAX_PIECES powers of two ≥ MIN_PIECE (480 → 512, 600 → 640). The extra
    slots, if any, only lift capacity limits."""
    K = int(K)
    if K <= MIN_PIECE or K & (K - 1) == 0:
        return next_pow2(K)
    k = -(-K // MIN_PIECE) * MIN_PIECE
    if k <= ONE_WARP_MAX_K:
        return k
    while bin(k).count("1") > MAX_PIECES:
        k += MIN_PIECE
    return k


ONE_WARP_MAX_K = 320  # up to this K a trial's slots sit in one warp (≤ 10 slots per thread); see default_warps
SLOTS_PER_THREAD = 4  # slots of each field per GPU thread for a larger K that is a power of two
PIECED_SLOTS_PER_THREAD = 10  # at most this many (all pieces together) for a larger K in pieces


def default_block(K: int) -> int:
    """Replicas per kernel program. 32 < K ≤ ONE_WARP_MAX_K: one (a program is one warp: its slots interleaved, 8–10
    of each field per thread, 206–233 registers on sm_90, no spills; a program of two or four such trials costs ~35
    more instructions per thread and step). Otherwise about 1024 slots per field (a power of two, 1..64): K = 512 runs
    two trials on 8 warps, 4 slots per thread. bench/results/README.md, "the fused step's instruction count", has the
    measured grid (bench/fused_resources.py: Triton → PTX → ptxas, no GPU)."""
    if LANES < K <= ONE_WARP_MAX_K:
        return 1
    return int(min(64, 1 << (max(1, 1024 // K).bit_length() - 1)))


def default_warps(K: int, rb: int) -> int:
    """Warps per program (1..32, a power of two).

    K ≤ ONE_WARP_MAX_K: one warp per trial (K/32 slots of each field per thread, interleaved: every sum and prefix
    sum over a trial's slots stays in its warp). Larger K: each thread holds at most SLOTS_PER_THREAD slots (K a
    power of two) or PIECED_SLOTS_PER_THREAD (K in pieces, e.g. 640 = 512 + 128). Measured for sm_90
    (bench/fused_resources.py, lane-instructions per slot-step, bench/results/README.md): pd-1:1's K = 288 runs at
    50 with one trial on one warp, 54 with two trials on two warps, against 109–164 with 2–4 warps per trial."""
    if K <= ONE_WARP_MAX_K:
        return int(min(32, rb))
    if K & (K - 1) == 0:
        return int(min(32, next_pow2(-(-(rb * K) // (32 * SLOTS_PER_THREAD)))))
    return int(min(32, next_pow2(-(-(rb * K) // (32 * PIECED_SLOTS_PER_THREAD)))))


# --------------------------------------------------------------------------------- batch times
STATE_FREE = ("constant", "iid-empirical", "iid-lognormal")  # b_n independent of the batch: drawn ahead
IN_KERNEL = ("affine",)  # b_n depends on the batch: drawn in the kernel


def _affine_operands(batch):
    """The stacked affine coefficients [N, 4] as four [N] kernel operands."""
    a = jnp.asarray(batch.a, jnp.float32)
    return [a[:, j] for j in range(4)]


# --------------------------------------------------------------------------------- the kernel
def _step_fn(cfg: E.EngineConfig, n_pre):
    """One step of a block of trials as a pure function of (scalars, slot fields, logs, keys, params, affine
    operands, pre-drawn (b_n, n_arr, trunc)) → (scalars, slot fields, logs, mem): ``engine.step_with`` with
    ``engine.serve`` and ``engine.finish`` vmapped over the block."""
    serve_v = jax.vmap(lambda s_, p_, c_: E.serve(s_, p_, c_), in_axes=(0, 0, None))
    finish_v = jax.vmap(lambda s_, sv, b, n, tr, ph, p_, c_: E.finish(s_, sv, b, n, tr, ph, p_, c_),
                        in_axes=(0, 0, 0, 0, 0, None, 0, None))
    none = dict(gsum_w=None, lat_lost=None, hist=None, lat_sum=None, lat_n=None)

    def step(sc, sl, lg, k0, k1, pv, ops, drawn):
        slots = E.Slots(**sl, t_arr=None, u_off=None, uu=None)
        st = E.State(slots=slots, keys=(k0, k1, None, None), **sc, **lg, **none)
        p = E.Params(**pv, workload=None, batch=None, phase_end=None, phase_lam=None)
        draw = None if n_pre else (lambda u1, u2, pre_tok, dec, mem: E.affine_time(*ops, pre_tok, dec, mem))
        st, out = E.step_with(st, p, cfg, draw, serve_fn=lambda a, b_, c: serve_v(a, b_, c),
                              finish_fn=lambda a, sv, b_, n, tr, ph, p_, c: finish_v(a, sv, b_, n, tr, ph, p_, c),
                              pre_drawn=drawn if n_pre else None)
        return ({f: getattr(st, f) for f in SCALARS}, {f: getattr(st.slots, f) for f in SLOTS},
                {f: getattr(st, f) for f in LOGS}, out.mem)

    return step


def _slot_index(pieces, inter):
    """The indexer of each piece of a [rb, K] slot field: contiguous slices, or the P strided parts of the
    interleaved layout (part e: slots e, e + P, e + 2P, …)."""
    if inter:
        from jax.experimental import pallas as pl

        return [(slice(None), pl.ds(e, n, stride=len(pieces))) for e, n in enumerate(pieces)]
    offs = np.cumsum((0,) + tuple(pieces))
    return [(slice(None), slice(int(a), int(b))) for a, b in zip(offs[:-1], offs[1:])]


def _kernel(cfg: E.EngineConfig, rb, n_ops, n_pre, pieces, inter, bits, *refs):
    n_in = len(SCALARS) + len(SLOTS) + len(LOGS) + 2 + len(PARAMS) + n_ops + n_pre
    ins, outs = refs[:n_in], refs[n_in:]
    it = iter(ins)
    index = _slot_index(pieces, inter)
    sc = {f: next(it)[...] for f in SCALARS}
    # slot fields: one [rb, n] power-of-two piece of the block's slots per entry n of ``pieces`` (kernel_pieces),
    # contiguous or interleaved
    sl = {f: (r[...],) if len(pieces) == 1 else tuple(r[ix] for ix in index)
          for f, r in zip(SLOTS, [next(it) for _ in SLOTS])}
    lg = {f: next(it)[...] for f in LOGS}
    k0, k1 = next(it)[...], next(it)[...]
    pv = {f: next(it)[...] for f in PARAMS}
    ops = [next(it)[...] for _ in range(n_ops)]  # affine coefficients a0..a3
    pre = [next(it) for _ in range(n_pre)]  # Refs [rb, steps]: (b_n, n_arr, trunc) drawn ahead of the block
    step = _step_fn(cfg, n_pre)

    def drawn_at(i):
        return (pre[0][:, i], pre[1][:, i], pre[2][:, i] != 0) if n_pre else None

    K = int(sum(pieces))
    if len(pieces) == 1 and not bits:  # the step as written, on [rb, K] arrays
        def body(i, carry):
            sc_, sl_, lg_, _mem = carry
            sc_, sl_, lg_, mem_ = step(sc_, {f: v[0] for f, v in sl_.items()}, lg_, k0, k1, pv, ops, drawn_at(i))
            return sc_, {f: (v,) for f, v in sl_.items()}, lg_, mem_

        return _loop_and_store(cfg, rb, body, sc, sl, lg, index, outs)
    whole = lambda x: jax.ShapeDtypeStruct((rb, K), x[0].dtype)
    args0 = (sc, {f: whole(v) for f, v in sl.items()}, lg, k0, k1, pv, ops, drawn_at(0))
    spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args0)
    closed = jax.make_jaxpr(step)(*spec)
    out_tree = jax.tree_util.tree_structure(jax.eval_shape(step, *spec))
    # an int32 1 per trial that no compiler can prove to be 1 (M >= 0, so M >> 31 is 0): see _Eval
    ev = _Eval(pieces, rb, 1 + (pv["M"] >> 31) if bits else None, inter)

    def body(i, carry):
        sc_, sl_, lg_, _mem = carry
        held = {f: ev.hold(v) for f, v in sl_.items()}
        leaves = jax.tree_util.tree_leaves((sc_, held, lg_, k0, k1, pv, ops, drawn_at(i)), is_leaf=_is_held)
        res = jax.tree_util.tree_unflatten(out_tree, ev.run(closed.jaxpr, closed.consts, leaves))
        return res[0], {f: ev.parts(v) for f, v in res[1].items()}, res[2], res[3]

    return _loop_and_store(cfg, rb, body, sc, sl, lg, index, outs)


def _loop_and_store(cfg, rb, body, sc, sl, lg, index, outs):
    carry = (sc, sl, lg, jnp.zeros((rb,), jnp.int32))
    sc, sl, lg, mem = jax.lax.fori_loop(0, cfg.compact_every, body, carry)
    o = iter(outs)
    for f in SCALARS:
        next(o)[...] = sc[f]
    for f in SLOTS:
        r = next(o)
        if len(sl[f]) == 1:
            r[...] = sl[f][0]
        else:
            for ix, v in zip(index, sl[f]):
                r[ix] = v
    for f in LOGS:
        next(o)[...] = lg[f]
    next(o)[...] = mem


# ------------------------------------------------------------------------- the step, re-evaluated for Triton
# The kernel body is the jaxpr of engine.step_with (vmapped over the block), evaluated by _Eval with two changes of
# representation that give the same values, and so the same bits:
#  * slot fields of K slots as power-of-two pieces (Pallas' Triton lowering needs power-of-two arrays): interleaved
#    parts of 32 with one warp per trial (each lane holds consecutive slots: one warp scan per prefix sum, one warp
#    reduction per sum), else contiguous pieces, of at most MAX_PIECE slots with one warp per trial, so sums over
#    slots need no shared memory;
#  * boolean slot arrays as int32 0/1 (BITS): compiled for sm_90, a step keeps a dozen masks per slot, more than
#    the 7 predicate registers hold; LLVM then packs them into bit vectors (insert/extract per bit) and counts them
#    through popcounts of packed bytes. Held as integers built from a 1 the compiler cannot see through, they stay
#    in ordinary registers: and/or/not are integer ops, a count is a plain sum.
MAX_PIECE = 128  # 32 lanes × 4 slots: one warp's share of a row in Triton's layout of a [rb, n] block
BITS = True


class _Split(NamedTuple):
    """A value whose slot axis ``axis`` is held as power-of-two pieces (in slot order, or interleaved: _Eval)."""

    parts: tuple
    axis: int


class _Bits(NamedTuple):
    """A boolean held as int32 0/1 (a plain array or a _Split)."""

    v: object


def _is_held(x):
    return isinstance(x, (_Split, _Bits))


def _map(fn, *xs):
    """fn applied piece by piece when any operand is a _Split (other operands broadcast as they are)."""
    sp = [x for x in xs if isinstance(x, _Split)]
    if not sp:
        return fn(*xs)
    return _Split(tuple(fn(*[x.parts[j] if isinstance(x, _Split) else x for x in xs])
                        for j in range(len(sp[0].parts))), sp[0].axis)


# primitives that act slot by slot: evaluated on each piece
_ELEMENTWISE = frozenset("""add sub mul div rem max min and or not xor eq ne lt le gt ge select_n
    convert_element_type neg abs sign floor ceil round exp exp2 log log1p expm1 sqrt rsqrt pow integer_pow is_finite
    shift_left shift_right_logical shift_right_arithmetic clamp nextafter population_count square tanh logistic
    erf erf_inv erfc copy""".split())
_COMBINE = {"reduce_sum": jax.lax.add, "reduce_max": jax.lax.max, "reduce_min": jax.lax.min,
            "reduce_or": jax.lax.bitwise_or, "reduce_and": jax.lax.bitwise_and}
_CMP = frozenset("eq ne lt le gt ge".split())
_CALLS = ("jit", "pjit", "closed_call", "core_call")


class _Eval:
    """Evaluates the step's jaxpr on [rb, K] slot fields held as ``pieces`` (and booleans as bits when ``one``, an
    int32 [rb] of ones, is given).

    Pieces: elementwise operations run on every piece, reductions over the slot axis reduce each piece and combine
    the results, the prefix sum runs on each piece and adds the totals of the pieces before it, slot indices
    (iota) are offset by the slots before the piece. Integer sums in any order give the same bits; anything else
    on the slot axis (a float sum, a slice, a gather) raises. With several pieces a value is on the slot axis if
    one of its dimensions is K (not a power of two, or larger than any other dimension of the kernel's arrays).

    Interleaved (``inter``, pieces of one size n = K/P): piece e holds slots e, P + e, …; slot indices are then
    i·P + e, and the prefix sum is the running sum over the pieces (each thread's own P slots) plus the exclusive
    scan over the n lanes of its total."""

    def __init__(self, pieces, rb, one=None, inter=False):
        self.sizes, self.K, self.rb, self.one = tuple(pieces), int(sum(pieces)), rb, one
        self.inter = bool(inter) and len(self.sizes) > 1

    # -- representation
    def hold(self, parts):
        return _Split(tuple(parts), 1) if len(self.sizes) > 1 else parts[0]

    def parts(self, x):
        x = self.to_bool(x)
        return x.parts if isinstance(x, _Split) else (x,)

    def ones(self, shape):
        if len(shape) >= 1 and shape[0] == self.rb:
            return jax.lax.broadcast_in_dim(self.one, shape, (0,))
        return jnp.ones(shape, jnp.int32)

    def to_int(self, x):
        if isinstance(x, _Bits):
            return x.v
        return _map(lambda p: jax.lax.select(p, self.ones(p.shape), jnp.zeros(p.shape, jnp.int32)), x)

    def to_bool(self, x):
        if isinstance(x, _Bits):
            return _map(lambda p: jax.lax.ne(p, jnp.zeros(p.shape, jnp.int32)), x.v)
        return x

    # -- evaluation
    def run(self, jaxpr, consts, args):
        from jax._src import core

        env = {}
        read = lambda v: v.val if isinstance(v, core.Literal) else env[v]
        for v, x in zip(jaxpr.constvars, consts):
            env[v] = self.split_const(x)
        for v, x in zip(jaxpr.invars, args):
            env[v] = x
        for eqn in jaxpr.eqns:
            res = self.apply(eqn, [read(v) for v in eqn.invars])
            for v, x in zip(eqn.outvars, res if eqn.primitive.multiple_results else [res]):
                env[v] = x
        return [self.split_const(read(v)) for v in jaxpr.outvars]

    def split_const(self, x):
        if len(self.sizes) == 1 or _is_held(x):
            return x
        dims = [d for d, n in enumerate(np.shape(x)) if n == self.K]
        if not dims:
            return x
        if self.inter:
            P = len(self.sizes)
            return _Split(tuple(jax.lax.slice_in_dim(jnp.asarray(x), e, self.K, stride=P, axis=dims[0])
                                for e in range(P)), dims[0])
        offs = np.cumsum((0,) + self.sizes)
        return _Split(tuple(jax.lax.slice_in_dim(jnp.asarray(x), int(a), int(b), axis=dims[0])
                            for a, b in zip(offs[:-1], offs[1:])), dims[0])

    def apply(self, eqn, ins):
        if eqn.primitive.name in _CALLS:
            cj = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
            res = self.run(cj.jaxpr, cj.consts, ins)
            return res if eqn.primitive.multiple_results else res[0]
        if self.one is not None:
            r = self._bits(eqn, ins)
            if r is not None:
                return r
            ins = [self.to_bool(x) for x in ins]
        return self._plain(eqn, ins)

    def _plain(self, eqn, ins):
        outs = [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        if len(self.sizes) == 1 or (not any(isinstance(x, _Split) for x in ins) and not any(self.K in s for s in outs)):
            return eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
        return _piece_rule(eqn, ins, self.sizes, self.inter)

    def _bits(self, eqn, ins):
        name, prm = eqn.primitive.name, eqn.params
        if name == "convert_element_type" and isinstance(ins[0], _Bits):
            return ins[0].v if jnp.dtype(prm["new_dtype"]) == jnp.int32 else None
        out = eqn.outvars[0].aval
        shape = tuple(getattr(out, "shape", ()))
        if len(shape) < 2 or shape[0] != self.rb or out.dtype != jnp.bool_:
            return None
        params = eqn.primitive.get_bind_params(prm)
        if name in _CMP and not any(isinstance(x, _Bits) for x in ins):
            return _Bits(self.to_int(self._plain(eqn, ins)))
        if name in ("and", "or", "xor"):
            return _Bits(_map(lambda *p: eqn.primitive.bind(*p, **params), *[self.to_int(x) for x in ins]))
        if name == "not":
            return _Bits(_map(lambda p: jax.lax.bitwise_xor(p, self.ones(p.shape)), self.to_int(ins[0])))
        if name == "select_n":
            return _Bits(_map(lambda *p: jax.lax.select_n(*p), self.to_bool(ins[0]),
                              *[self.to_int(x) for x in ins[1:]]))
        return None


def _piece_rule(eqn, ins, sizes, inter=False):
    """One operation of the step on values held as pieces of ``sizes`` slots, contiguous or interleaved (see
    _Eval)."""
    name, prm = eqn.primitive.name, dict(eqn.params)
    K = sum(sizes)
    split = [x for x in ins if isinstance(x, _Split)]
    out_shape = tuple(eqn.outvars[0].aval.shape)

    def with_k(shape, ax, n):
        return tuple(n if d == ax else s for d, s in enumerate(shape))

    if name in _ELEMENTWISE:
        ax = split[0].axis
        if any(x.axis != ax for x in split) or any(not isinstance(x, _Split) and np.ndim(x)
                                                    and np.shape(x)[ax] != 1 for x in ins):
            raise NotImplementedError(f"{name}: operands on different slot axes")
        params = eqn.primitive.get_bind_params(eqn.params)
        return _Split(tuple(eqn.primitive.bind(*[x.parts[j] if isinstance(x, _Split) else x for x in ins], **params)
                            for j in range(len(sizes))), ax)
    if name == "broadcast_in_dim":
        x, = ins
        dims = prm["broadcast_dimensions"]
        if isinstance(x, _Split):
            ax = dims[x.axis]
            return _Split(tuple(jax.lax.broadcast_in_dim(p, with_k(out_shape, ax, n), dims)
                                for p, n in zip(x.parts, sizes)), ax)
        new = [d for d, n in enumerate(out_shape) if n == K and d not in dims]
        if len(new) != 1:
            raise NotImplementedError(f"broadcast_in_dim to {out_shape}: no single new slot axis")
        ax = new[0]
        return _Split(tuple(jax.lax.broadcast_in_dim(x, with_k(out_shape, ax, n), dims) for n in sizes), ax)
    if name == "iota":
        axes = [d for d, n in enumerate(out_shape) if n == K]
        if len(axes) != 1:
            raise NotImplementedError(f"iota of shape {out_shape}")
        ax, dt, dim = axes[0], prm["dtype"], prm["dimension"]
        if inter and dim == ax:  # piece e: slots e, P + e, 2P + e, …
            P = len(sizes)
            return _Split(tuple(jax.lax.broadcasted_iota(dt, with_k(out_shape, ax, n), dim) * jnp.asarray(P, dt)
                                + jnp.asarray(e, dt) for e, n in enumerate(sizes)), ax)
        parts, off = [], 0
        for n in sizes:
            p = jax.lax.broadcasted_iota(dt, with_k(out_shape, ax, n), dim)
            parts.append(p + jnp.asarray(off, dt) if (dim == ax and off) else p)
            off += n
        return _Split(tuple(parts), ax)
    if name in _COMBINE or name == "cumsum":
        x, = ins
        if not isinstance(x, _Split) or (name in ("reduce_sum", "cumsum")
                                         and not jnp.issubdtype(x.parts[0].dtype, jnp.integer)):
            raise NotImplementedError(f"{name} over the slot axis of a non-integer value")
        if name == "cumsum":
            if prm["axis"] != x.axis or prm["reverse"]:
                raise NotImplementedError("cumsum other than forward along the slot axis")
            if inter:  # running sum over each lane's own slots, plus the exclusive scan of the lanes' totals
                run = [x.parts[0]]
                for p in x.parts[1:]:
                    run.append(run[-1] + p)
                tot = run[-1]
                before = jax.lax.cumsum(tot, axis=x.axis) - tot
                return _Split(tuple(r + before for r in run), x.axis)
            out, carry = [], None
            keep = tuple(d for d in range(x.parts[0].ndim) if d != x.axis)
            for j, p in enumerate(x.parts):
                c = jax.lax.cumsum(p, axis=x.axis)
                if carry is not None:
                    c = c + jax.lax.broadcast_in_dim(carry, p.shape, keep)
                out.append(c)
                if j + 1 < len(x.parts):
                    tot = jnp.sum(p, axis=x.axis)
                    carry = tot if carry is None else carry + tot
            return _Split(tuple(out), x.axis)
        axes = tuple(prm["axes"])
        params = eqn.primitive.get_bind_params(eqn.params)
        if x.axis not in axes:
            return _Split(tuple(eqn.primitive.bind(p, **params) for p in x.parts),
                          x.axis - sum(a < x.axis for a in axes))
        # pieces of one shape are combined slot by slot first: one reduction across threads per shape
        groups = {}
        for p in x.parts:
            groups[p.shape] = _COMBINE[name](groups[p.shape], p) if p.shape in groups else p
        red = [eqn.primitive.bind(p, **params) for p in groups.values()]
        acc = red[0]
        for r in red[1:]:
            acc = _COMBINE[name](acc, r)
        return acc
    if name == "squeeze":
        x, = ins
        dims = prm["dimensions"]
        if x.axis in dims:
            raise NotImplementedError("squeeze of the slot axis")
        return _Split(tuple(jax.lax.squeeze(p, dims) for p in x.parts), x.axis - sum(d < x.axis for d in dims))
    raise NotImplementedError(f"the fused kernel cannot split the slot axis through {name!r}")


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
                num_warps: int | None = None, num_stages: int = 1, triton_layout: bool | None = None):
    """``cfg.compact_every`` steps of every trial (leading axis N, a multiple of rb) in one kernel launch.

    ``triton_layout``: slot fields in pieces (kernel_pieces) and boolean slot arrays as bits, as Triton needs
    (default: when not in interpret mode; interpret mode otherwise runs the step on [rb, K] arrays as they are,
    which is cheaper to compile; tests/test_fused.py forces the Triton layout in interpret mode too).
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
    warps = num_warps or default_warps(K, rb)
    tl = (not interpret) if triton_layout is None else bool(triton_layout)
    if not tl and K & (K - 1) and not interpret:
        raise ValueError(f"K={K} needs the Triton layout (slot fields in power-of-two pieces) under Triton")
    if not interpret:
        from jax.experimental.pallas import triton as plt

        kw["compiler_params"] = plt.CompilerParams(num_warps=warps, num_stages=num_stages)
    call = pl.pallas_call(
        functools.partial(_kernel, cfg, rb, len(ops), len(pre), kernel_pieces(K, rb, warps) if tl else (K,),
                          tl and interleaved(K, rb, warps), tl and BITS),
        out_shape=out_shape, grid=(N // rb,), in_specs=[spec(a) for a in args], out_specs=out_specs,
        input_output_aliases={i: i for i in range(n_state)}, interpret=interpret, name="lqs_step_loop", **kw)
    res = call(*args)
    sc = dict(zip(SCALARS, res[:len(SCALARS)]))
    sl = dict(zip(SLOTS, res[len(SCALARS):len(SCALARS) + len(SLOTS)]))
    lg = dict(zip(LOGS, res[len(SCALARS) + len(SLOTS):n_state]))
    states = states._replace(slots=states.slots._replace(**sl), **sc, **lg)
    return states, res[n_state]


def run_call_batched(states: E.State, params: E.Params, cfg: E.EngineConfig, *, rb: int, interpret: bool,
                      num_warps: int | None = None, num_stages: int = 1, n_records=None,
                      triton_layout: bool | None = None):
    """Same contract and results as ``engine.run_call_batched`` (``n_records``: see ``engine.records_scan``): the
    step blocks run as fused kernel launches, compaction and records as vmapped XLA between them. N need not be a
    multiple of rb (padded here)."""
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
        st, _mem = fused_block(st, p0, cfg, rb=rb, interpret=interpret, num_warps=num_warps, num_stages=num_stages,
                               triton_layout=triton_layout)
        return compact_v(st, p0), None

    st, recs = E.records_scan(one_block, jax.vmap(lambda x: E._record(x, cfg)), st0, cfg, n_records)
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

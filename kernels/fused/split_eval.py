"""The fused kernel's step body for Triton: the jaxpr of ``step.step_with`` re-evaluated with two changes of
representation that give the same values, and so the same bits.

Why a jaxpr interpreter: Pallas' Triton lowering needs every in-kernel array to have a power-of-two size, and the
sm_90 compiler packs a dozen boolean masks per slot into predicate bit vectors. The step is written once, for
[K] slot arrays (kernels/step.py); rather than a second, hand-split copy of it, :class:`Eval` runs its jaxpr
equation by equation on the representation Triton wants. No public JAX API evaluates a jaxpr with custom rules
per primitive, so this module reads ``jax._src.core`` (``Literal`` and the equations' ``primitive.bind`` /
``get_bind_params``): the one place lqs touches private JAX. Checked on jax 0.10.2 (the CPU machines: interpret
mode, and ``jax.export`` lowering for CUDA); not yet run on the GPU machine's jax 0.11.2 (bench/gpu_session.sh
does, first). tests/test_fused.py runs it in interpret mode, and lowers it for CUDA, on whichever jax is
installed.

The two representations:
 * slot fields of K slots as power-of-two pieces: interleaved parts of 32 with one warp per trial (each lane holds
   consecutive slots: one warp scan per prefix sum, one warp reduction per sum), else contiguous pieces, of at most
   MAX_PIECE slots with one warp per trial, so sums over slots need no shared memory;
 * boolean slot arrays as int32 0/1 (BITS): compiled for sm_90, a step keeps a dozen masks per slot, more than
   the 7 predicate registers hold; LLVM then packs them into bit vectors (insert/extract per bit) and counts them
   through popcounts of packed bytes. Held as integers built from a 1 the compiler cannot see through, they stay
   in ordinary registers: and/or/not are integer ops, a count is a plain sum.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BITS = True


class _Split(NamedTuple):
    """A value whose slot axis ``axis`` is held as power-of-two pieces (in slot order, or interleaved: Eval)."""

    parts: tuple
    axis: int


class _Bits(NamedTuple):
    """A boolean held as int32 0/1 (a plain array or a _Split)."""

    v: object


def is_held(x):
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


class Eval:
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
        if len(self.sizes) == 1 or is_held(x):
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
    Eval)."""
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



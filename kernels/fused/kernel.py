"""The Pallas kernel: one launch runs a record period (``cfg.compact_every`` steps) of every trial; each program of
its grid holds the slots of ``rb`` trials on chip through the ``fori_loop`` over the steps.

The body is ``step.step_with`` with ``step.serve`` and ``step.finish`` vmapped over the program's trials (under
Triton, re-evaluated by split_eval.Eval on the kernel's slot layout). When the batch time does not depend on the
batch (constant and i.i.d. models) the period's (b_n, arrivals, truncation) are drawn ahead in XLA
(:func:`pre_draw`) and the kernel reads them; the affine model is drawn in the kernel (``state.affine_time``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .. import step as S
from ..state import EngineConfig, Params, State, affine_time, empty, get_path, replace_paths
from .layout import default_warps, interleaved, kernel_pieces, next_pow2
from .split_eval import BITS, Eval, is_held

# State fields the step reads or writes (the rest are compaction's), as paths into State: per-trial scalars,
# [K] slot fields and the record period's step log [cfg.log_len]
SCALARS = ("clock.step", "clock.t", "clock.t_c", "queue.n_used", "queue.overflow", "queue.next_ovf", "counters.arrivals",
           "counters.completions", "counters.swaps", "clock.t_w0", "window.arrivals", "window.completions",
           "window.mem_sum", "window.steps", "window.busy", "window.mem_c", "window.busy_c", "counters.mem_max", "counters.started_max",
           "counters.waiting_max", "limits.starved", "limits.arr_trunc", "limits.violations")
SLOTS = ("s", "o", "k", "u", "flags", "t_first", "t_ttft", "t_done", "work")  # t_arr, u_off: compaction's
LOGS = ("log.t", "log.b", "log.n_used")
PARAMS = ("lam", "M", "prefill_chunk", "budget", "warmup", "min_w")

STATE_FREE = ("constant", "empirical", "lognormal")  # batch-time kinds whose b_n does not depend on the batch
IN_KERNEL = ("affine",)  # b_n depends on the batch: drawn in the kernel


def _affine_operands(batch):
    """The stacked affine coefficients [N, 4] as four [N] kernel operands."""
    a = jnp.asarray(batch.a, jnp.float32)
    return [a[:, j] for j in range(4)]


def _step_fn(cfg: EngineConfig, n_pre):
    """One step of a program's trials as a pure function of (scalars, slot fields, logs, keys, params, affine
    operands, pre-drawn (b_n, n_arr, trunc)) → (scalars, slot fields, logs, mem): ``step.step_with`` with
    ``step.serve`` and ``step.finish`` vmapped over the trials."""
    serve_v = jax.vmap(lambda s_, p_, c_: S.serve(s_, p_, c_), in_axes=(0, 0, None))
    finish_v = jax.vmap(lambda s_, sv, b, n, tr, ph, p_, c_: S.finish(s_, sv, b, n, tr, ph, p_, c_),
                        in_axes=(0, 0, 0, 0, 0, None, 0, None))
    skeleton = empty(State)

    def step(sc, sl, lg, k0, k1, pv, ops, drawn):
        st = replace_paths(skeleton, {**sc, **lg, **{"slots." + f: v for f, v in sl.items()},
                                      "keys.arrivals": k0, "keys.batch": k1})
        p = Params(**pv, workload=None, batch=None, phase_end=None, phase_lam=None)
        draw = None if n_pre else (lambda u1, u2, pre_tok, dec, mem: affine_time(*ops, pre_tok, dec, mem))
        st, out = S.step_with(st, p, cfg, draw, serve_fn=lambda a, b_, c: serve_v(a, b_, c),
                              finish_fn=lambda a, sv, b_, n, tr, ph, p_, c: finish_v(a, sv, b_, n, tr, ph, p_, c),
                              pre_drawn=drawn if n_pre else None)
        return ({f: get_path(st, f) for f in SCALARS}, {f: getattr(st.slots, f) for f in SLOTS},
                {f: get_path(st, f) for f in LOGS}, out.mem)

    return step


def _slot_index(pieces, inter):
    """The indexer of each piece of a [rb, K] slot field: contiguous slices, or the P strided parts of the
    interleaved layout (part e: slots e, e + P, e + 2P, …)."""
    if inter:
        from jax.experimental import pallas as pl

        return [(slice(None), pl.ds(e, n, stride=len(pieces))) for e, n in enumerate(pieces)]
    offs = np.cumsum((0,) + tuple(pieces))
    return [(slice(None), slice(int(a), int(b))) for a, b in zip(offs[:-1], offs[1:])]


def _kernel(cfg: EngineConfig, rb, n_ops, n_pre, pieces, inter, bits, *refs):
    n_in = len(SCALARS) + len(SLOTS) + len(LOGS) + 2 + len(PARAMS) + n_ops + n_pre
    ins, outs = refs[:n_in], refs[n_in:]
    it = iter(ins)
    index = _slot_index(pieces, inter)
    sc = {f: next(it)[...] for f in SCALARS}
    # slot fields: one [rb, n] power-of-two piece of the program's slots per entry n of ``pieces``
    # (layout.kernel_pieces), contiguous or interleaved
    sl = {f: (r[...],) if len(pieces) == 1 else tuple(r[ix] for ix in index)
          for f, r in zip(SLOTS, [next(it) for _ in SLOTS])}
    lg = {f: next(it)[...] for f in LOGS}
    k0, k1 = next(it)[...], next(it)[...]
    pv = {f: next(it)[...] for f in PARAMS}
    ops = [next(it)[...] for _ in range(n_ops)]  # affine coefficients a0..a3
    pre = [next(it) for _ in range(n_pre)]  # Refs [rb, steps]: (b_n, n_arr, trunc) drawn ahead of the period
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
    # an int32 1 per trial that no compiler can prove to be 1 (M >= 0, so M >> 31 is 0): see split_eval.Eval
    ev = Eval(pieces, rb, 1 + (pv["M"] >> 31) if bits else None, inter)

    def body(i, carry):
        sc_, sl_, lg_, _mem = carry
        held = {f: ev.hold(v) for f, v in sl_.items()}
        leaves = jax.tree_util.tree_leaves((sc_, held, lg_, k0, k1, pv, ops, drawn_at(i)), is_leaf=is_held)
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


def pre_draw(states: State, params: Params, cfg: EngineConfig):
    """(b_n, n_arr, trunc) of the record period's steps for every trial, [N, steps padded to a power of two],
    computed in XLA with the step's own draw: the kernel then spends no instruction on hashing, the normal quantile
    or the Poisson inversion (which every thread of a program would repeat)."""
    n = next_pow2(cfg.compact_every)
    steps = states.clock.step[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]

    def one(keys, row, p):
        return jax.vmap(lambda m: S.draw_arrivals(keys, m, p, cfg))(row)

    b, n_arr, trunc = jax.vmap(one)(states.keys, steps, params)
    return [b, n_arr, trunc.astype(jnp.int32)]


def fused_period(states: State, params: Params, cfg: EngineConfig, *, rb: int, interpret: bool,
                 num_warps: int | None = None, num_stages: int = 1, triton_layout: bool | None = None):
    """One record period (``cfg.compact_every`` steps) of every trial (leading axis N, a multiple of rb) in one
    kernel launch.

    ``triton_layout``: slot fields in pieces (layout.kernel_pieces) and boolean slot arrays as bits, as Triton needs
    (default: when not in interpret mode; interpret mode otherwise runs the step on [rb, K] arrays as they are,
    which is cheaper to compile; tests/test_fused.py forces the Triton layout in interpret mode too).
    Returns (states, mem of the last step [N])."""
    from jax.experimental import pallas as pl

    N, K = states.slots.s.shape
    L = states.log.n_used.shape[1]
    if N % rb:
        raise ValueError(f"N={N} is not a multiple of the trials per program rb={rb}")
    kind = params.batch.kind
    if kind in STATE_FREE:
        ops, pre = [], pre_draw(states, params, cfg)
    elif kind in IN_KERNEL:
        ops, pre = _affine_operands(params.batch), []
    else:
        raise ValueError(f"batch kind {kind!r} has no fused draw")
    args = ([get_path(states, f) for f in SCALARS] + [getattr(states.slots, f) for f in SLOTS]
            + [get_path(states, f) for f in LOGS] + [states.keys.arrivals, states.keys.batch]
            + [getattr(params, f) for f in PARAMS] + ops + list(pre))
    args = [jnp.asarray(a) for a in args]

    def spec(a):
        if a.ndim == 1:
            return pl.BlockSpec((rb,), lambda i: (i,))
        return pl.BlockSpec((rb, a.shape[1]), lambda i: (i, 0))

    out_shape = ([jax.ShapeDtypeStruct((N,), get_path(states, f).dtype) for f in SCALARS]
                 + [jax.ShapeDtypeStruct((N, K), getattr(states.slots, f).dtype) for f in SLOTS]
                 + [jax.ShapeDtypeStruct((N, L), get_path(states, f).dtype) for f in LOGS]
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
    new = dict(zip(SCALARS, res[:len(SCALARS)]))
    new.update(("slots." + f, v) for f, v in zip(SLOTS, res[len(SCALARS):len(SCALARS) + len(SLOTS)]))
    new.update(zip(LOGS, res[len(SCALARS) + len(SLOTS):n_state]))
    return replace_paths(states, new), res[n_state]

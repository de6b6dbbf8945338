"""The XLA path over a batch of trials (:func:`run_call_batched`): single-server, unphased trials run slot-major.

``loop.run_call`` vmapped over trials lays every slot field out as [trials, K]: the FCFS prefix sum and the
per-step reductions then run along the minor axis, which XLA on a CPU lowers to a reduce-window per element
(the prefix sum alone was about a third of the step). Here the slot fields are transposed once per call to
[K, trials] and the very same ``step.serve`` / ``step.finish`` run on them unvmapped (they are written for a
slot axis first and any batch axes after it): every prefix sum and reduction over slots becomes a sequence of
whole-vector adds over the trials, and compaction's gathers move whole rows. Same operations on the same values:
the states are bit-identical to ``loop.run_call``'s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import loop
from .compact import compact
from .state import EngineConfig, Params, Slots, State
from .step import finish, serve, step_with


def supports(cfg: EngineConfig) -> bool:
    return cfg.servers == 1 and not cfg.phased


def run_call_batched(states, params: Params, cfg: EngineConfig, n_points=None):
    """``loop.run_call`` of every trial of a batch (leading axis N of states and params): slot-major
    (:func:`run_call`) where supported, else vmapped; the same results either way."""
    if supports(cfg):
        return run_call(states, params, cfg, n_points=n_points)
    return jax.vmap(lambda st, p: loop.run_call(st, p, cfg, n_points))(states, params)


def to_slot_major(st: State) -> State:
    return st._replace(slots=Slots(*(jnp.moveaxis(x, 0, 1) for x in st.slots)))


def to_trial_major(st: State) -> State:
    return st._replace(slots=Slots(*(jnp.moveaxis(x, 1, 0) for x in st.slots)))


def step(st: State, params: Params, cfg: EngineConfig):
    """One step of every trial of a slot-major state (slots [K, N], keys and scalars [N])."""

    def draw(u1, u2, pre, dec, mem):  # the batch-time model's draw is per trial (tables, gathers): vmapped
        return jax.vmap(lambda bt, *a: bt.draw(*a))(params.batch, u1, u2, pre, dec, mem)

    return step_with(st, params, cfg, draw, serve_fn=serve, finish_fn=finish)


#: On a CPU the trials run in sequential groups of about this many slots (trials × K), so that a group's slot
#: fields stay in a core's L2 cache through the step loop (bench/results/README.md). Elsewhere (GPUs) all trials
#: run at once.
CPU_GROUP_SLOTS = 20_000


def trial_group(N: int, K: int) -> int:
    """Trials per sequential group: N on accelerators, about CPU_GROUP_SLOTS / K on a CPU."""
    if jax.default_backend() != "cpu":
        return N
    n_groups = max(1, round(N * K / CPU_GROUP_SLOTS))
    return -(-N // n_groups)


def run_call(states: State, params: Params, cfg: EngineConfig, group: int | None = None, n_points=None):
    """Same contract and results as ``jax.vmap(loop.run_call)`` over a trial-major batch of states (trials
    independent: running them in sequential groups changes no bit)."""
    N = states.slots.s.shape[0]
    nb = trial_group(N, cfg.K) if group is None else group
    if nb >= N:
        return _run_call(states, params, cfg, n_points)
    n_blk = -(-N // nb)
    pad = n_blk * nb - N

    def split(x):
        x = jnp.asarray(x)
        if pad:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        return x.reshape((n_blk, nb) + x.shape[1:])

    st, recs = jax.lax.map(lambda a: _run_call(a[0], a[1], cfg, n_points),
                           (jax.tree_util.tree_map(split, states), jax.tree_util.tree_map(split, params)))
    join = lambda x: x.reshape((n_blk * nb,) + x.shape[2:])[:N]
    return jax.tree_util.tree_map(join, st), jax.tree_util.tree_map(join, recs)


def _run_call(states, params, cfg, n_points=None):
    def one_step(st, _):
        st, _out = step(st, params, cfg)
        return st, None

    def one_period(st, _):
        st, _ = jax.lax.scan(one_step, st, None, length=cfg.compact_every)
        return compact(st, params, cfg), None

    st, recs = loop.points_scan(one_period, lambda x: loop.point(x, cfg), to_slot_major(states), cfg, n_points)
    return to_trial_major(st), jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), recs)

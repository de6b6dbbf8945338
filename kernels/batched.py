"""The XLA path's step loop for a block of single-server, unphased trials, run slot-major.

``engine.run_call`` vmapped over trials lays every slot field out as [trials, K]: the FCFS prefix sum and the
per-step reductions then run along the minor axis, which XLA on a CPU lowers to a reduce-window per element
(the prefix sum alone was about a third of the step). Here the slot fields are transposed once per call to
[K, trials] and the very same ``engine.serve`` / ``engine.finish`` run on them unvmapped (they are written for a
slot axis first and any batch axes after it): every prefix sum and reduction over slots becomes a sequence of
whole-vector adds over the trials, and compaction's shift network moves whole rows. Same operations on the same
values: the states are bit-identical to ``engine.run_call``'s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import engine as E


def supports(cfg: E.EngineConfig) -> bool:
    return cfg.servers == 1 and not cfg.phased


def to_slot_major(st: E.State) -> E.State:
    return st._replace(slots=E.Slots(*(jnp.moveaxis(x, 0, 1) for x in st.slots)), keys=st.keys.T)


def to_trial_major(st: E.State) -> E.State:
    return st._replace(slots=E.Slots(*(jnp.moveaxis(x, 1, 0) for x in st.slots)), keys=st.keys.T)


def step(st: E.State, params: E.Params, cfg: E.EngineConfig):
    """One step of every trial of a slot-major state (slots [K, N], keys [4, N], scalars [N])."""

    def draw(u1, u2, pre, dec, mem):  # the batch-time model's draw is per trial (tables, gathers): vmapped
        return jax.vmap(lambda bt, *a: bt.draw(*a))(params.batch, u1, u2, pre, dec, mem)

    return E.step_with(st, params, cfg, draw, serve_fn=E.serve, finish_fn=E.finish)


#: On a CPU the trials run in sequential blocks of about this many slots (trials × K), so that a block's slot
#: fields stay in a core's L2 cache through the step loop (measured at K = 288: blocks of 64 trials run 1.2× faster
#: than all 256 at once). Elsewhere (GPUs) all trials run at once.
CPU_BLOCK_SLOTS = 20_000


def trial_block(N: int, K: int) -> int:
    """Trials per sequential block: N on accelerators, about CPU_BLOCK_SLOTS / K on a CPU."""
    if jax.default_backend() != "cpu":
        return N
    n_blocks = max(1, round(N * K / CPU_BLOCK_SLOTS))
    return -(-N // n_blocks)


def run_call(states: E.State, params: E.Params, cfg: E.EngineConfig, block: int | None = None, n_records=None):
    """Same contract and results as ``jax.vmap(engine.run_call)`` over a trial-major batch of states (trials
    independent: blocking them changes no bit)."""
    N = states.slots.s.shape[0]
    nb = trial_block(N, cfg.K) if block is None else block
    if nb >= N:
        return _run_call(states, params, cfg, n_records)
    n_blk = -(-N // nb)
    pad = n_blk * nb - N

    def split(x):
        x = jnp.asarray(x)
        if pad:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        return x.reshape((n_blk, nb) + x.shape[1:])

    st, recs = jax.lax.map(lambda a: _run_call(a[0], a[1], cfg, n_records),
                           (jax.tree_util.tree_map(split, states), jax.tree_util.tree_map(split, params)))
    join = lambda x: x.reshape((n_blk * nb,) + x.shape[2:])[:N]
    return jax.tree_util.tree_map(join, st), jax.tree_util.tree_map(join, recs)


def _run_call(states, params, cfg, n_records=None):
    def one_step(st, _):
        st, _out = step(st, params, cfg)
        return st, None

    def one_block(st, _):
        st, _ = jax.lax.scan(one_step, st, None, length=cfg.compact_every)
        return E.compact(st, params, cfg), None

    st, recs = E.records_scan(one_block, lambda x: E._record(x, cfg), to_slot_major(states), cfg, n_records)
    return to_trial_major(st), jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), recs)

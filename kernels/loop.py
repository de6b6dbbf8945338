"""The step loop of one trial on the XLA path: ``lax.scan`` over the steps of a record period (then compaction),
over the record periods of a time-series point, and over the points of one host call."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .cluster import cluster_step
from .compact import compact
from .state import EngineConfig, Params, State, count_slots, slot_iota
from .step import StepOut, started_mask, step


class Point(NamedTuple):
    """One time-series point (taken every cfg.periods_per_point record periods)."""

    t: jax.Array  # float32[] instant
    waiting: jax.Array  # int32[] requests in system not yet started
    started: jax.Array  # int32[] started requests in the slots


def point(state: State, cfg: EngineConfig) -> Point:
    sl = state.slots
    live = (slot_iota(sl.s) < state.queue.n_used) & (sl.u < sl.k + sl.o)
    n_started = count_slots(live & started_mask(sl, cfg))
    in_sys = state.counters.arrivals - state.counters.completions
    return Point(t=state.clock.t, waiting=in_sys - n_started, started=n_started)


def points_scan(one_period, take_point, state, cfg: EngineConfig, n_points=None):
    """A host call's loop over time-series points: each runs cfg.periods_per_point record periods (``one_period``: a
    scan body) and takes ``take_point(state)``. With ``n_points`` (a traced int32 scalar, the same for every trial)
    only the first n_points points run; the rest leave the state as it is (their points repeat the last one and are
    dropped by the host), so the horizon is not part of the compiled program. Shared by every path's step loop."""

    def one_point(st):
        st, _ = jax.lax.scan(one_period, st, None, length=cfg.periods_per_point)
        return st, take_point(st)

    if n_points is None:
        return jax.lax.scan(lambda st, _: one_point(st), state, None, length=cfg.points_per_call)

    def guarded(st, i):
        return jax.lax.cond(i < n_points, one_point, lambda x: (x, take_point(x)), st)

    return jax.lax.scan(guarded, state, jnp.arange(cfg.points_per_call, dtype=jnp.int32))


def _step_and_compact(params: Params, cfg: EngineConfig, with_outputs: bool):
    """The scan body of one record period: cfg.compact_every steps, then compaction (every server of a cluster)."""
    clustered = cfg.servers > 1

    def one_step(st, _):
        st, out = cluster_step(st, params, cfg) if clustered else step(st, params, cfg)
        return st, out if with_outputs else None

    def one_period(st, _):
        st, outs = jax.lax.scan(one_step, st, None, length=cfg.compact_every)
        if clustered:
            st = st._replace(servers=jax.vmap(lambda s: compact(s, params, cfg))(st.servers))
        else:
            st = compact(st, params, cfg)
        return st, outs

    return one_period


def run_call(state, params: Params, cfg: EngineConfig, n_points=None):
    """cfg.steps_per_call steps of one trial (a server, or a Cluster when cfg.servers > 1):
    scan(points) ∘ scan(record periods) ∘ scan(steps) + compaction; ``n_points``: see :func:`points_scan`."""

    def take_point(st):
        if cfg.servers > 1:
            r = jax.vmap(lambda x: point(x, cfg))(st.servers)
            return Point(t=r.t[0], waiting=jnp.sum(r.waiting), started=jnp.sum(r.started))
        return point(st, cfg)

    return points_scan(_step_and_compact(params, cfg, False), take_point, state, cfg, n_points)


def trace_steps(state, params: Params, cfg: EngineConfig, n_periods: int) -> tuple[State, StepOut]:
    """n_periods·compact_every steps of one trial, returning every step's StepOut (for tests and debugging)."""
    st, outs = jax.lax.scan(_step_and_compact(params, cfg, True), state, None, length=n_periods)
    return st, jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), outs)

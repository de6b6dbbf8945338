"""The fused path's step loop: each record period one kernel launch (kernel.fused_period), then compaction and the
time-series point as vmapped XLA, in the loop that every path shares (kernels/loop.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import loop
from ..compact import compact
from ..state import EngineConfig, Params, State
from .kernel import fused_period


def unsupported(servers: int, phased: bool, limits: bool = False, arrivals: str = "poisson") -> str | None:
    """Why a configuration with these servers per trial and phasing cannot run fused (None when it can).
    ``limits``: a running-request cap or KV blocks; ``arrivals``: EngineConfig.arrivals."""
    if arrivals != "poisson":
        return "gamma and replayed arrival instants run on the XLA path"
    if limits:
        return "a running-request cap or KV blocks run on the XLA path"
    if servers > 1:
        return "clusters (servers > 1) run on the XLA path"
    if phased:
        return "phased schedules run on the XLA path"
    return None


def run_call_batched(states: State, params: Params, cfg: EngineConfig, *, rb: int, interpret: bool,
                     num_warps: int | None = None, num_stages: int = 1, n_points=None,
                     triton_layout: bool | None = None):
    """Same contract and results as ``batched.run_call_batched`` (``n_points``: see ``loop.points_scan``). N need
    not be a multiple of rb (padded here)."""
    why = unsupported(cfg.servers, cfg.phased, cfg.running_cap or cfg.blocks)
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
    compact_v = jax.vmap(lambda s, p: compact(s, p, cfg))

    def one_period(st, _):
        st, _mem = fused_period(st, p0, cfg, rb=rb, interpret=interpret, num_warps=num_warps,
                                num_stages=num_stages, triton_layout=triton_layout)
        return compact_v(st, p0), None

    st, pts = loop.points_scan(one_period, jax.vmap(lambda x: loop.point(x, cfg)), st0, cfg, n_points)
    pts = jax.tree_util.tree_map(lambda x: unpad(jnp.swapaxes(x, 0, 1)), pts)
    return jax.tree_util.tree_map(unpad, st), pts

"""Lowering the fused kernel for CUDA on a machine without a GPU (``jax.export``): proves that every primitive of the
step has a Triton lowering and every block shape is a power of two."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..state import EngineConfig, Params, State
from .kernel import fused_period


def lower_for_gpu(states: State, params: Params, cfg: EngineConfig, *, rb: int, num_warps: int | None = None):
    """Lower one fused record period for CUDA through Triton without a GPU; returns the StableHLO text.

    Raises if any primitive of the step has no Triton lowering or a block shape is not a power of two."""
    from jax import export

    fn = jax.jit(lambda s, p: fused_period(s, p, cfg, rb=rb, interpret=False, num_warps=num_warps))
    spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype), (states, params))
    exp = export.export(fn, platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*spec)
    return exp.mlir_module()

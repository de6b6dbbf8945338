"""The step-loop paths (XLA, or the fused Pallas kernel of kernels/fused.py), the one jitted program per path, and
the process-wide default path."""

from __future__ import annotations

import os

import jax

from .._errors import LqsError, check_choice
from ..kernels import engine as _k
from ..kernels import fused as _fused

ENGINES = ("auto", "xla", "fused")
_ENGINE = {"default": None}

# number of times the batched step-loop program has been traced (tests use it to prove "jit once")
TRACE_COUNT = {"run_call": 0}


def _traced_run_call(states, params, cfg, path="xla", rb=1, mesh=None):
    TRACE_COUNT["run_call"] += 1
    if path == "xla":  # XLA partitions the vmapped program over a sharded trial axis by itself
        return _k.run_call_batched(states, params, cfg)

    def run(st, p):
        return _fused.run_call_batched(st, p, cfg, rb=rb, interpret=path == "fused-interpret")

    if mesh is None:
        return run(states, params)
    # a Pallas call is not partitioned automatically: each device runs the kernel on its own trials
    from jax.sharding import PartitionSpec as P

    return jax.shard_map(run, mesh=mesh, in_specs=(P("r"), P("r")), out_specs=(P("r"), P("r")),
                         check_vma=False)(states, params)


#: one host round trip: ``cfg.steps_per_call`` steps of every (configuration × trial), states donated
run_call_jit = jax.jit(_traced_run_call, static_argnums=(2, 3, 4, 5), donate_argnums=0)


def _init_states(keys, params, cfg):
    init = _k.init_cluster if cfg.servers > 1 else _k.init_state
    return jax.vmap(lambda k, p: init(k, p, cfg))(keys, params)


init_jit = jax.jit(_init_states, static_argnums=2)


def set_engine(engine: str | None) -> None:
    """Process-wide default engine path for :func:`lqs.simulate` (and everything built on it): ``"auto"`` (the fused
    Pallas kernel on a GPU, the XLA path elsewhere), ``"xla"`` or ``"fused"`` (on a CPU the fused kernel runs in
    Pallas interpret mode: exact but slow, for verification). ``None`` restores the default, which is the
    ``LQS_ENGINE`` environment variable, else ``"auto"``."""
    _ENGINE["default"] = None if engine is None else check_choice("engine", engine, ENGINES)


def default_engine() -> str:
    if _ENGINE["default"] is not None:
        return _ENGINE["default"]
    env = os.environ.get("LQS_ENGINE")
    return check_choice("LQS_ENGINE", env, ENGINES) if env else "auto"


def on_gpu() -> bool:
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def select_path(engine, servers: int, phased: bool) -> tuple[str, str]:
    """(path, reason): path is "xla", "fused" (Triton on a GPU) or "fused-interpret" (Pallas interpret mode)."""
    engine = default_engine() if engine is None else check_choice("engine", engine, ENGINES)
    why = _fused.unsupported(servers, phased)
    if engine == "xla":
        return "xla", "asked for"
    if engine == "fused":
        if why:
            raise LqsError("engine", "fused", f"the fused kernel does not run this configuration: {why}; "
                                              "use engine='xla' or 'auto'")
        return ("fused", "asked for") if on_gpu() else ("fused-interpret", "asked for; no GPU: interpret mode")
    if why:
        return "xla", why
    if on_gpu():
        return "fused", "auto: GPU"
    return "xla", f"auto: backend {jax.default_backend()} (the fused kernel is for GPUs)"

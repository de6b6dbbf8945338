"""The step-loop paths (XLA, or the fused Pallas kernel of kernels/fused.py), the one jitted program per path, and
the process-wide default path."""

from __future__ import annotations

import logging
import os
import warnings

import jax

from .._errors import LqsError, check_choice
from ..kernels import engine as _k
from ..kernels import fused as _fused

ENGINES = ("auto", "xla", "fused")
_ENGINE = {"default": None}

# number of times the batched step-loop program has been traced (tests use it to prove "jit once")
TRACE_COUNT = {"run_call": 0}


def _traced_run_call(states, params, cfg, path="xla", rb=1, mesh=None, n_records=None):
    TRACE_COUNT["run_call"] += 1
    if path == "xla":  # XLA partitions the vmapped program over a sharded trial axis by itself
        return _k.run_call_batched(states, params, cfg, n_records)

    def run(st, p, n):
        return _fused.run_call_batched(st, p, cfg, rb=rb, interpret=path == "fused-interpret", n_records=n)

    if mesh is None:
        return run(states, params, n_records)
    # a Pallas call is not partitioned automatically: each device runs the kernel on its own trials
    from jax.sharding import PartitionSpec as P

    return jax.shard_map(run, mesh=mesh, in_specs=(P("r"), P("r"), P()), out_specs=(P("r"), P("r")),
                         check_vma=False)(states, params, n_records)


#: one host round trip: up to ``cfg.steps_per_call`` steps of every (configuration × trial), states donated;
#: ``n_records`` (an int32 scalar, traced) says how many of the call's record periods run, so that the horizon
#: is not part of the program
run_call_jit = jax.jit(_traced_run_call, static_argnums=(2, 3, 4, 5), donate_argnums=0)


def _init_states(keys, params, cfg):
    init = _k.init_cluster if cfg.servers > 1 else _k.init_state
    return jax.vmap(lambda k, p: init(k, p, cfg))(keys, params)


init_jit = jax.jit(_init_states, static_argnums=2)


def set_engine(engine: str | None) -> None:
    """Process-wide default engine path for :func:`lqs.simulate` (and everything built on it): ``"auto"`` (the
    fastest path that ``lqs bench`` measured bit-identical on this device; the XLA path when nothing was measured),
    ``"xla"`` or ``"fused"`` (on a CPU the fused kernel runs in Pallas interpret mode: exact but slow, for
    verification). ``None`` restores the default, which is the ``LQS_ENGINE`` environment variable, else
    ``"auto"``."""
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
    return "xla", AUTO_PENDING


# ------------------------------------------------------------------------------- auto: measured paths only
AUTO_PENDING = "auto: no measurement consulted"
_SAID: set = set()  # notes and warnings already given in this process


def _once(tag, msg, warn: bool):
    if tag in _SAID:
        return
    _SAID.add(tag)
    if warn:
        warnings.warn(msg, stacklevel=4)
    else:
        logging.getLogger("lqs").info(msg)


def auto_path(policy: str, batch_kind: str, K: int) -> tuple[str, str]:
    """(path, reason) for ``engine="auto"``: the fastest path that ``lqs bench`` recorded bit-identical to the XLA
    path on this device (same jax/jaxlib, policy, batch-time model kind and K bucket: lqs/engine/bench.py); the XLA
    path when there is no record (said once per process: a warning on a GPU, where the choice matters, an INFO
    log line elsewhere), when the record is stale, or when it records a mismatch or a failed compile (a warning
    naming the record)."""
    from . import bench as B

    key, rec, stale = B.lookup(policy, batch_kind, K)
    if rec is None:
        what = f"stale record ({stale!r}: other jax/jaxlib or engine revision)" if stale else "no lqs bench record"
        _once(("none", key), f"lqs: engine='auto' runs the XLA path: {what} for {key!r} in {B.cache_file()}; "
                             "measure this device's paths with `lqs bench` (or lqs.bench())", warn=on_gpu())
        return "xla", f"auto: {what} for this device; run `lqs bench` to measure the paths"
    best = B.fastest(rec)
    bad = {p: r for p, r in rec.get("paths", {}).items() if p != "xla" and not (r.get("compiled", True)
                                                                                   and r.get("identical"))}
    if best is None or best == "xla":
        if bad:
            p, r = next(iter(bad.items()))
            why = "failed to compile" if not r.get("compiled", True) else "did not end bit-identical to xla"
            _once(("bad", key), f"lqs: engine='auto' runs the XLA path: the {p} path {why} in the lqs bench record "
                                f"{key!r} ({B.cache_file()})", warn=True)
            return "xla", f"auto: {p} {why} in the lqs bench record {key!r}"
        return "xla", f"auto: xla fastest in the lqs bench record {key!r}"
    if best in ("fused", "fused-interpret") and best != ("fused" if on_gpu() else "fused-interpret"):
        return "xla", f"auto: the record's fastest path {best} does not run on this backend ({key!r})"
    x = rec["paths"].get("xla", {}).get("replica_steps_per_s")
    gain = f" ({rec['paths'][best]['replica_steps_per_s'] / x:.2f}× xla)" if x else ""
    return best, f"auto: {best} fastest and bit-identical in the lqs bench record {key!r}{gain}"


def fused_K(K: int) -> int:
    """Slots of the fused path on a GPU (Triton block shapes): kernels/fused.py ``triton_K``."""
    return _fused.triton_K(K)


def settle(path: str, reason: str, K: int, policy: str, batch_kind: str) -> tuple[str, str, int]:
    """(path, reason, K) after the ``auto`` rule (:func:`auto_path`) and the fused path's slot rounding."""
    if reason == AUTO_PENDING:
        path, reason = auto_path(policy, batch_kind, K)
    if path == "fused":
        K = fused_K(K)
    return path, reason, K

"""The step-loop paths (``xla``, or the fused Pallas kernel of kernels/fused/), the one jitted program per path, and
the rule of ``path="auto"`` (the fastest path that ``lqs bench`` measured bit-identical on this device).

The path of a run is ``MonteCarlo.path``; None means ``$LQS_PATH`` if set, else ``auto``. Nothing in the library
switches it process-wide: the CLI's ``--path`` sets it on the MonteCarlo value it builds."""

from __future__ import annotations

import logging
import os
import warnings

import jax

from .._errors import LqsError, check_choice
from ..kernels import batched as _batched
from ..kernels import cluster as _cluster
from ..kernels import compact as _compact
from ..kernels import fused as _fused
from . import records as R

PATHS = ("auto", "xla", "fused")

# number of times the batched step-loop program has been traced (tests use it to prove "jit once")
TRACE_COUNT = {"run_call": 0}


def _traced_run_call(states, params, cfg, path="xla", rb=1, mesh=None, n_points=None):
    TRACE_COUNT["run_call"] += 1
    if path == "xla":  # XLA partitions the vmapped program over a sharded trial axis by itself
        return _batched.run_call_batched(states, params, cfg, n_points)

    def run(st, p, n):
        return _fused.run_call_batched(st, p, cfg, rb=rb, interpret=path == "fused-interpret", n_points=n)

    if mesh is None:
        return run(states, params, n_points)
    # a Pallas call is not partitioned automatically: each device runs the kernel on its own trials
    from jax.sharding import PartitionSpec as P

    return jax.shard_map(run, mesh=mesh, in_specs=(P("r"), P("r"), P()), out_specs=(P("r"), P("r")),
                         check_vma=False)(states, params, n_points)


#: one host round trip: up to ``cfg.steps_per_call`` steps of every (configuration × trial), states donated;
#: ``n_points`` (an int32 scalar, traced) says how many of the call's time-series points run, so that the horizon
#: is not part of the program
run_call_jit = jax.jit(_traced_run_call, static_argnums=(2, 3, 4, 5), donate_argnums=0)


def _init_states(keys, params, cfg):
    init = _cluster.init_cluster if cfg.servers > 1 else _compact.init_state
    return jax.vmap(lambda k, p: init(k, p, cfg))(keys, params)


init_jit = jax.jit(_init_states, static_argnums=2)


def default_path() -> str:
    """The path of a MonteCarlo whose ``path`` is None: ``$LQS_PATH`` (``$LQS_ENGINE``, its old name), else auto."""
    for var in ("LQS_PATH", "LQS_ENGINE"):
        env = os.environ.get(var)
        if env:
            return check_choice(var, env.strip().lower(), PATHS)
    return "auto"


def on_gpu() -> bool:
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def select_path(path, servers: int, phased: bool, limits: bool = False, arrivals: str = "poisson") -> tuple[str, str]:
    """(path, reason): path is "xla", "fused" (Triton on a GPU) or "fused-interpret" (Pallas interpret mode).
    ``limits``: the server has a running-request cap or KV blocks; ``arrivals``: EngineConfig.arrivals."""
    path = default_path() if path is None else check_choice("path", path, PATHS)
    why = _fused.unsupported(servers, phased, limits, arrivals)
    if path == "xla":
        return "xla", "asked for"
    if path == "fused":
        if why:
            raise LqsError("path", "fused", f"the fused kernel does not run this configuration: {why}; "
                                            "use path='xla' or 'auto'")
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
    """(path, reason) for ``path="auto"``: the fastest path that ``lqs bench`` recorded bit-identical to the XLA
    path on this device (same jax/jaxlib, policy, batch-time model kind and K bucket: lqs/engine/records.py); the
    XLA path when there is no record (said once per process: a warning on a GPU, where the choice matters, an INFO
    log line elsewhere), when the record is stale, or when it records a mismatch or a failed compile (a warning
    naming the record)."""
    key, rec, stale = R.lookup(policy, batch_kind, K)
    if rec is None:
        what = f"stale record ({stale!r}: other jax/jaxlib or engine revision)" if stale else "no lqs bench record"
        _once(("none", key), f"lqs: path='auto' runs the XLA path: {what} for {key!r} in {R.cache_file()}; "
                             "measure this device's paths with `lqs bench` (or lqs.bench())", warn=on_gpu())
        return "xla", f"auto: {what} for this device; run `lqs bench` to measure the paths"
    best = R.fastest(rec)
    bad = {p: r for p, r in rec.get("paths", {}).items() if p != "xla" and not (r.get("compiled", True)
                                                                                   and r.get("identical"))}
    if best is None or best == "xla":
        if bad:
            p, r = next(iter(bad.items()))
            why = "failed to compile" if not r.get("compiled", True) else "did not end bit-identical to xla"
            _once(("bad", key), f"lqs: path='auto' runs the XLA path: the {p} path {why} in the lqs bench record "
                                f"{key!r} ({R.cache_file()})", warn=True)
            return "xla", f"auto: {p} {why} in the lqs bench record {key!r}"
        return "xla", f"auto: xla fastest in the lqs bench record {key!r}"
    if best in ("fused", "fused-interpret") and best != ("fused" if on_gpu() else "fused-interpret"):
        return "xla", f"auto: the record's fastest path {best} does not run on this backend ({key!r})"
    x = rec["paths"].get("xla", {}).get(R.SPEED)
    gain = f" ({rec['paths'][best][R.SPEED] / x:.2f}× xla)" if x else ""
    return best, f"auto: {best} fastest and bit-identical in the lqs bench record {key!r}{gain}"


def settle(path: str, reason: str, K: int, policy: str, batch_kind: str) -> tuple[str, str, int]:
    """(path, reason, K) after the ``auto`` rule (:func:`auto_path`) and the fused path's slot rounding
    (kernels/fused/layout.py ``triton_K``)."""
    if reason == AUTO_PENDING:
        path, reason = auto_path(policy, batch_kind, K)
    if path == "fused":
        K = _fused.triton_K(K)
    return path, reason, K

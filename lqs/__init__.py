"""lqs — LLM queueing stability.

Closed-form KV-memory capacity theory (Nie, Si & Zhou, arXiv 2605.04595) and a JAX Monte Carlo engine of
replicated serving queues (chunked prefill, continuous batching, KV budget M, FCFS admission).
"""

from __future__ import annotations

import importlib.util as _ilu
import os as _os
import sys as _sys


def _expose_kernels():
    """Make the top-level source folder ``kernels/`` importable as ``lqs.kernels`` when running from a checkout.

    An installed wheel ships it as the real subpackage ``lqs.kernels`` (see pyproject.toml); from a source tree
    (``PYTHONPATH=.``) there is no ``lqs/kernels`` folder, so we load ``../kernels`` under that name. Nothing is
    ever importable as a top-level ``kernels`` package.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    if _os.path.isdir(_os.path.join(here, "kernels")) or "lqs.kernels" in _sys.modules:
        return
    src = _os.path.join(_os.path.dirname(here), "kernels")
    init = _os.path.join(src, "__init__.py")
    if not _os.path.isfile(init):
        return  # editable installs map lqs.kernels through the import system instead
    spec = _ilu.spec_from_file_location("lqs.kernels", init, submodule_search_locations=[src])
    mod = _ilu.module_from_spec(spec)
    _sys.modules["lqs.kernels"] = mod
    spec.loader.exec_module(mod)
    globals()["kernels"] = mod


_expose_kernels()

from ._errors import LqsError  # noqa: E402
from ._theory import (  # noqa: E402
    Capacity,
    capacity,
    delta,
    estimate_b,
    g_exact,
    g_paper,
    mu_mix,
    prefill_steps,
    servers_needed,
    service_rate,
    trimmed_mean,
)
from ._marginals import Constant, Empirical, IntUniform, LogNormal, Marginal  # noqa: E402
from ._workload import (  # noqa: E402
    PAPER_B,
    PRESETS,
    GMoments,
    Independent,
    Mixture,
    Pairs,
    Phased,
    Workload,
    pd_ratio,
    preset,
)
from ._batch import (  # noqa: E402
    AffineBatch,
    BatchTime,
    ConstantBatch,
    EmpiricalBatch,
    LogNormalBatch,
    parse_batch_spec,
)
from ._server import MonteCarlo, Server  # noqa: E402
from ._disagg import DisaggCapacity, Disaggregated, Transfer, capacity_disagg  # noqa: E402
from ._splits import split_table  # noqa: E402
from .traces import (  # noqa: E402
    BenchmarkResult,
    Trace,
    kv_tokens_from_log,
    load_b_samples,
    load_benchmark_result,
    load_trace,
)
from .engine import (  # noqa: E402
    CriticalResult,
    SimResult,
    auto_steps,
    backlog_grows,
    critical,
    default_path,
    simulate,
    step_log,
)

# studies, fits and check load on first use (``lqs.phase_diagram``, ``lqs.fit_lengths``, ...): ``import lqs`` stays
# light (no optax, no matplotlib)
_LAZY = {
    "StudyResult": "studies", "phase_diagram": "studies", "b_error": "studies", "default_b_models": "studies",
    "default_affine": "studies", "delta_study": "studies", "mixture_study": "studies", "cluster_study": "studies",
    "latency_study": "studies", "slo_servers": "studies", "slo_replicas": "studies", "reproduce_paper": "studies",
    "default_server": "studies", "default_mc": "studies",
    # fitted models (optax) and the measured-run check
    "fit_lengths": "fit", "fit_batch": "fit", "LengthFit": "fit", "BatchFit": "fit", "LengthModel": "fit",
    "load_length_model": "fit", "check": "measured", "CheckResult": "measured",
}


#: names renamed in 0.3: the old ones resolve for one release, with a DeprecationWarning
_DEPRECATED = {"BenchResult": "BenchmarkResult", "load_bench_result": "load_benchmark_result",
               "LogNormalMixBatch": "LogNormalBatch", "default_engine": "default_path"}


def set_engine(engine=None):
    """Removed in 0.3: the step-loop path is ``MonteCarlo(path=...)`` (``simulate(..., path=...)``), or
    ``$LQS_PATH``; nothing switches it process-wide."""
    from ._errors import LqsError

    raise LqsError("set_engine", engine, "was removed: pass path= to MonteCarlo / simulate (or set $LQS_PATH)")


def __getattr__(name):
    if name in _DEPRECATED:
        import warnings

        new = _DEPRECATED[name]
        warnings.warn(f"lqs.{name} is deprecated: use lqs.{new}", DeprecationWarning, stacklevel=2)
        return globals()[new]
    sub = _LAZY.get(name)
    if sub is None:
        raise AttributeError(f"module 'lqs' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{sub}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


# eager (11 ms): the package lqs.sweep shares the function's name, and a lazy lqs.sweep turned into the package
# after any `from lqs.sweep import ...`
from .sweep import SweepSpec, load_sweep, sweep  # noqa: E402
from .engine.bench import bench  # noqa: E402  (lqs bench: the measured paths of path="auto")
# eager for the same reason as sweep: lqs.replay is the function, lqs.replay.* (the package) holds calibrate
from .replay import Arrivals, CalibrationResult, ReplayResult, calibrate, replay  # noqa: E402
from .planning import LoadCurve, PlanResult, Slo, load_curve, plan  # noqa: E402
from ._version import __version__  # noqa: E402

#: old name of :func:`servers_needed` (kept for scripts written against lqs 0.1)
replicas_needed = servers_needed

__all__ = [
    # errors
    "LqsError",
    # closed form
    "Capacity", "capacity", "delta", "estimate_b", "g_exact", "g_paper", "mu_mix", "prefill_steps", "servers_needed",
    "replicas_needed", "service_rate", "trimmed_mean",
    # workloads and traces
    "Constant", "Empirical", "IntUniform", "LogNormal", "Marginal", "PAPER_B", "PRESETS", "GMoments", "Independent",
    "Mixture", "Pairs", "Phased", "Workload", "pd_ratio", "preset", "Trace", "load_b_samples", "load_trace",
    "BenchmarkResult", "load_benchmark_result", "kv_tokens_from_log", "bench",
    # server
    "AffineBatch", "BatchTime", "ConstantBatch", "EmpiricalBatch", "LogNormalBatch", "parse_batch_spec",
    "MonteCarlo", "Server",
    # disaggregated prefill and decode
    "DisaggCapacity", "Disaggregated", "Transfer", "capacity_disagg", "split_table",
    # engine and results
    "CriticalResult", "SimResult", "auto_steps", "backlog_grows", "critical", "default_path", "simulate",
    "step_log",
    # sweeps, studies, fitted models and the measured-run check (loaded on first use: see _LAZY)
    "SweepSpec", "load_sweep", "sweep", *_LAZY,
    # replay and calibration of measured runs
    "Arrivals", "CalibrationResult", "ReplayResult", "calibrate", "replay",
    # capacity plans over a load curve
    "LoadCurve", "PlanResult", "Slo", "load_curve", "plan",
]

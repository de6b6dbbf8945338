"""The Monte Carlo engine (user side): sizing and validation, running the jitted step loop of kernels/, and the
result tables. The model it simulates is docs/model.md.

Layers, each importing only those below it (tests/test_layers.py): ``simulate`` and ``critical`` orchestrate;
``verdict`` decides the long-run verdict from saturation runs; ``run`` runs programs; ``results`` and ``stats``
make the tables; ``sizing`` validates and sizes; ``paths`` picks the step-loop path (reading ``records``, the
``lqs bench`` store that ``bench`` writes)."""

from .critical import CriticalResult, critical, crossing, verdict_at
from .paths import PATHS, TRACE_COUNT, default_path
from .results import SimResult
from .run import config_keys, run_configs, step_log
from .simulate import simulate
from .sizing import MAX_ARRIVALS_PER_STEP, Config, Sizing, auto_steps, groups, prepare, prepare_configs, product, size_engine
from .stats import backlog_grows, hist_quantiles, wilson
from .verdict import Verdict, attach_verdicts, saturation, verdict_of

__all__ = ["Config", "CriticalResult", "MAX_ARRIVALS_PER_STEP", "PATHS", "SimResult", "Sizing", "TRACE_COUNT",
           "Verdict", "attach_verdicts", "auto_steps", "backlog_grows", "config_keys", "critical", "crossing",
           "default_path", "groups", "hist_quantiles", "prepare", "prepare_configs", "product", "run_configs",
           "saturation", "simulate", "size_engine", "step_log", "verdict_at", "verdict_of", "wilson"]


def __getattr__(name):
    """The 0.2 names of this package (deprecated): ENGINES, default_engine."""
    old = {"ENGINES": "PATHS", "default_engine": "default_path"}
    if name in old:
        import warnings

        warnings.warn(f"lqs.engine.{name} is deprecated: use lqs.engine.{old[name]}", DeprecationWarning, stacklevel=2)
        return globals()[old[name]]
    raise AttributeError(f"module 'lqs.engine' has no attribute {name!r}")

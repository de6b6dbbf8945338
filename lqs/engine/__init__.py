"""The Monte Carlo engine (user side): sizing and validation, running the jitted step loop of kernels/, and the
result tables. The model it simulates is docs/model.md."""

from .critical import CriticalResult, critical, crossing
from .paths import ENGINES, TRACE_COUNT, default_engine, set_engine
from .results import SimResult
from .run import simulate, step_log
from .sizing import MAX_ARRIVALS_PER_STEP, Sizing, auto_steps, prepare, size_engine
from .stats import backlog_grows, hist_quantiles, wilson

__all__ = ["CriticalResult", "ENGINES", "MAX_ARRIVALS_PER_STEP", "SimResult", "Sizing", "TRACE_COUNT", "auto_steps",
           "backlog_grows", "critical", "crossing", "default_engine", "hist_quantiles", "prepare", "set_engine",
           "simulate", "size_engine", "step_log", "wilson"]

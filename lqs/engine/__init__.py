"""The Monte Carlo engine (user side): sizing and validation, running the jitted step loop of kernels/, and the
result tables. The model it simulates is docs/model.md."""

from .critical import CriticalResult, critical, crossing, verdict_at
from .paths import ENGINES, TRACE_COUNT, default_engine, set_engine
from .results import SimResult
from .run import config_keys, run_configs, simulate, step_log
from .sizing import MAX_ARRIVALS_PER_STEP, Config, Sizing, auto_steps, groups, prepare, prepare_configs, product, size_engine
from .stats import backlog_grows, hist_quantiles, wilson
from .verdict import attach_verdicts, saturation, verdict_of

__all__ = ["Config", "CriticalResult", "ENGINES", "MAX_ARRIVALS_PER_STEP", "SimResult", "Sizing", "TRACE_COUNT",
           "attach_verdicts", "auto_steps", "backlog_grows", "config_keys", "critical", "crossing", "default_engine",
           "groups", "hist_quantiles", "prepare", "prepare_configs", "product", "run_configs", "saturation",
           "set_engine", "simulate", "size_engine", "step_log", "verdict_at", "verdict_of", "wilson"]

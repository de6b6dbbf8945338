"""Deprecated module name (lqs 0.2): the reader is :mod:`lqs.traces.benchmark_results`."""

import warnings

from .benchmark_results import *  # noqa: F401,F403
from .benchmark_results import BenchmarkResult as BenchResult  # noqa: F401
from .benchmark_results import load_benchmark_result as load_bench_result  # noqa: F401
from .benchmark_results import looks_like_benchmark_result as looks_like_bench_result  # noqa: F401

warnings.warn("lqs.traces.bench_results is deprecated: use lqs.traces.benchmark_results", DeprecationWarning,
              stacklevel=2)

"""Request traces: load (prompt, output) lengths and arrival times from CSV, JSONL or Parquet files.

Column conventions recognised automatically (names matched case-insensitively, first match wins):

==================  ======================  =====================  =====================================
convention          prompt s                output o               arrival time (optional)
==================  ======================  =====================  =====================================
Vidur / Splitwise   ``num_prefill_tokens``  ``num_decode_tokens``  ``arrived_at`` (seconds)
Azure LLM trace     ``ContextTokens``       ``GeneratedTokens``    ``TIMESTAMP`` (datetime string or s)
LLMServingSim JSONL ``input_toks``          ``output_toks``        ``arrival_time_ns`` (nanoseconds)
BurstGPT            ``Request tokens``      ``Response tokens``    ``Timestamp`` (seconds)
Mooncake            ``input_length``        ``output_length``      ``timestamp`` (milliseconds)
==================  ======================  =====================  =====================================

Any other layout: name the columns with ``s_col`` / ``o_col`` (and ``t_col``). The unit of a numeric time
column is taken from its name's suffix (``_ns``, ``_us``, ``_ms``, ``_s``; seconds otherwise) unless ``t_unit``
says; a column of datetime values or datetime strings is converted to seconds. Arrival times are always
returned in seconds from the first arrival, and a trace with arrival times is held in arrival order (a stable
sort; ``Trace.row`` keeps each request's 0-based data row in the file).

The two traces shipped with the package are addressable by name: ``azure-conv`` and ``azure-code``
(see ``lqs/data/README.md`` for their attribution).
"""

from .benchmark_results import BenchmarkResult, load_benchmark_result, looks_like_benchmark_result
from .bsamples import load_b_samples
from .load import load_trace
from .server_log import kv_tokens_from_log
from .read import BUNDLED, CONVENTIONS, FORMATS
from .trace import Trace

__all__ = ["BUNDLED", "CONVENTIONS", "FORMATS", "BenchmarkResult", "Trace", "kv_tokens_from_log", "load_b_samples",
           "load_benchmark_result", "load_trace", "looks_like_benchmark_result"]

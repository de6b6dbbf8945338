"""Measured inputs of the commands that take a workload: a vLLM/SGLang benchmark result given as ``--trace``
(its requests are the workload, its inter-token gaps b̄), ``--server-log`` (M), a fitted length model given as
``--workload FILE`` and ``--prompt-scale``/``--output-scale`` (docs/model.md, "Workload" and "Batch
time")."""

from __future__ import annotations

import os

import numpy as np

from .._errors import LqsError
from .options import parse_float, parse_int

_BENCH_CACHE: dict = {}


def bench_of(opts: dict):
    """The :class:`lqs.BenchmarkResult` named by ``--trace`` (with ``--run``, ``--b-estimator``), or None when the
    trace is not a vLLM/SGLang benchmark result. Read once per command (cached by path, size and time)."""
    from ..traces import load_benchmark_result, looks_like_benchmark_result

    path = opts.get("trace")
    if path is None or any(opts.get(k) is not None for k in ("s_col", "o_col")) or not looks_like_benchmark_result(path):
        return None
    run = None if opts.get("run") is None else parse_int("run", opts["run"], 0)
    est = opts.get("b_estimator") or "median"
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, run, est)
    if key not in _BENCH_CACHE:
        _BENCH_CACHE.clear()
        _BENCH_CACHE[key] = load_benchmark_result(path, run, b_estimator=est)
    return _BENCH_CACHE[key]


def resolve_M(opts: dict):
    """(M text or None, source): --M, or the KV-cache size stated in --server-log (not both)."""
    M, log = opts.get("M"), opts.get("server_log")
    if log is None:
        return M, (None if M is None else "given")
    if M is not None:
        raise LqsError("server_log", log, "give only one of --M TOKENS or --server-log FILE", "both were given")
    from ..traces import kv_tokens_from_log

    return kv_tokens_from_log(log), f"KV-cache size in {log}"


def scales(opts: dict):
    f = [None if opts.get(k) is None else parse_float(k, opts[k], 0.0, lo_open=True)
         for k in ("prompt_scale", "output_scale")]
    return None if f == [None, None] else (f[0] or 1.0, f[1] or 1.0)


def scaled_trace(tr, sc):
    """A trace with prompt and output lengths multiplied by ``sc`` (rounded, ≥ 1)."""
    from ..traces import Trace

    s = np.maximum(np.rint(tr.s * sc[0]), 1)
    o = np.maximum(np.rint(tr.o * sc[1]), 1)
    return Trace(s, o, tr.arrival_s, tr.source, f"{tr.name}×({sc[0]:g},{sc[1]:g})", tr.row, tr.failed)


def workload_from_name(workload: str, opts: dict):
    """(workload, label) of ``--workload``: a preset name, or a length model file (scaled when asked)."""
    from .._workload import preset
    from ..fit import is_length_model, load_length_model

    sc = scales(opts)
    if os.path.isfile(workload) and is_length_model(workload):
        w, label = load_length_model(workload), os.path.basename(workload)
        if sc is not None:
            w, label = w.scaled(*sc), f"{label}×({sc[0]:g},{sc[1]:g})"
        return w, label
    if sc is not None:
        k = "prompt_scale" if opts.get("prompt_scale") is not None else "output_scale"
        raise LqsError(k, opts[k], "applies to a trace or a fitted length model (--workload FILE), not to a preset")
    if os.path.isfile(workload):
        raise LqsError("workload", workload, "a file given to --workload must be a length model written by lqs fit "
                                             "lengths (a trace or a benchmark result goes to --trace)")
    return preset(workload), workload

"""Benchmark results as input: vLLM ``vllm bench serve --save-result`` (and the older ``benchmark_serving.py``)
JSON saved with ``--save-detailed`` (``--append-result`` gives one run per line), and SGLang
``python -m sglang.bench_serving --output-details`` JSONL.

Both tools write one object per run with per-request lists of equal length: ``input_lens`` and ``output_lens``
(tokens), ``ttfts`` (seconds), ``itls`` (a list per request of the gaps between streamed tokens, seconds) and
``errors`` (empty text when the request succeeded), and, in recent vLLM, ``start_times`` (seconds, any origin).
Run-level keys: ``request_rate`` (requests per second; ``"inf"`` or Infinity for a saturated run),
``duration`` (s), ``completed``, ``request_throughput`` (req/s). A file holds one JSON object, or one object
per line (SGLang appends a line per run): ``run`` picks one (0-based).

From a run: the successful requests give the trace (lengths, and arrival times from ``start_times``); failed
requests (non-empty error, or an output length of 0) are left out and counted; the inter-token gaps give
batch-time samples, whose median (or another estimator) is b̄ (docs/model.md, "Batch time").
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from .._errors import LqsError
from .._theory import estimate_b
from ._steps import decode_steps
from .benchmark_meta import _format, _meta, _number, _rate, _summary
from .trace import Trace

REQUIRED = ("input_lens", "output_lens")
_E2E_KEYS = ("e2els", "latencies", "e2e_latencies")


@dataclass(frozen=True, eq=False)
class BenchmarkResult:
    """One benchmark run: the successful requests as a Trace, their latencies (seconds) and the run's totals.

    ``b_samples`` are inter-token gaps (seconds, > 0) of the successful requests, or None without ``itls``;
    ``b`` is b̄ from them by ``b_estimator`` and ``b_source`` says so. ``request_rate`` is the offered rate
    (inf for a saturated run, None if the file does not say); ``failed`` counts the excluded requests.
    """

    trace: Trace
    b_samples: np.ndarray | None
    b: float | None
    b_source: str | None
    ttfts: np.ndarray | None
    e2e: np.ndarray | None
    itl_median: float | None
    request_rate: float | None
    duration: float | None
    completed: int
    failed: int
    request_throughput: float | None
    source_format: str
    run: int
    n_runs: int
    max_concurrency: int | None = None  # the client's cap on requests in flight (None: no cap)
    burstiness: float | None = None  # gamma shape of the client's inter-arrival times (1: Poisson)
    tpots: np.ndarray | None = None  # per-request (E2E − TTFT)/(o − 1), seconds (o ≥ 2; NaN otherwise)
    itl_gaps: np.ndarray | None = None  # every stated inter-token gap of the successful requests (seconds)
    server: dict | None = None  # server fields the file states: {field: (value, source)}
    summary: dict | None = None  # the run's own summary statistics (seconds), e.g. {"ttft_p50_s": ...}
    summary_only: bool = False  # no per-request arrays: the lengths come from the totals (fixed-length run)
    notes: tuple = ()  # what the reader assumed or left out, one sentence each
    #: decode-only step times read off the per-request timelines: rows (n decoding, KV tokens, median gap s,
    #: gaps), most gaps first (lqs/traces/_steps.py); None without start times, TTFTs and per-request gaps
    decode_steps: np.ndarray | None = None

    @property
    def saturated(self) -> bool:
        """True when the run offered requests as fast as possible (request_rate = inf)."""
        return self.request_rate is not None and math.isinf(self.request_rate)

    @property
    def run_kind(self) -> str:
        """``open`` (requests issued at a rate, no client cap), ``closed`` (at most ``max_concurrency`` in flight,
        with or without a rate) or ``burst`` (rate inf and no cap: every request at t = 0)."""
        n = len(self.trace)
        capped = self.max_concurrency is not None and self.max_concurrency < n
        if capped:
            return "closed"
        if self.saturated:
            return "burst"
        return "open"

    def describe_kind(self) -> str:
        kind = self.run_kind
        if kind == "closed":
            rate = "no rate limit" if self.request_rate is None or self.saturated else \
                f"issued at {self.request_rate:g} req/s"
            return f"closed loop: at most {self.max_concurrency} requests in flight, {rate}"
        if kind == "burst":
            return "burst: every request sent at t = 0 (request_rate inf, no concurrency cap)"
        if self.request_rate is not None:
            k = self.burstiness if self.burstiness is not None else 1.0
            proc = "Poisson" if k == 1.0 else f"gamma, burstiness {k:g}"
            return f"open loop: {self.request_rate:g} req/s ({proc})"
        return "open loop: arrivals at the recorded start times"

    def to_dict(self) -> dict:
        def q(x, p):
            return None if x is None or x.size == 0 else float(np.quantile(x, p))

        return {"source": self.trace.source, "source_format": self.source_format, "run": self.run,
                "n_runs": self.n_runs, "completed": self.completed, "failed": self.failed,
                "n_requests": len(self.trace), "request_rate_rps": self.request_rate,
                "duration_s": self.duration, "request_throughput_rps": self.request_throughput,
                "mean_prompt_tokens": float(self.trace.s.mean()), "mean_output_tokens": float(self.trace.o.mean()),
                "mean_arrival_rate_rps": self.trace.mean_rate_rps, "b_s": self.b, "b_source": self.b_source,
                "n_b_samples": None if self.b_samples is None else int(self.b_samples.size),
                "itl_median_s": self.itl_median, "ttft_p50_s": q(self.ttfts, 0.5), "ttft_p99_s": q(self.ttfts, 0.99),
                "e2e_p50_s": q(self.e2e, 0.5), "e2e_p99_s": q(self.e2e, 0.99)}


# ----------------------------------------------------------------------------------------------- reading
def _runs(path: str) -> list[dict]:
    """The run objects of a result file (one JSON object, a JSON array of objects, or JSON lines)."""
    from .read import _open_text

    try:
        with _open_text(path) as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise LqsError("trace", path, "must be a readable benchmark result file", type(e).__name__) from None
    stripped = text.strip()
    if not stripped:
        raise LqsError("trace", path, "must hold at least one benchmark run", "the file is empty")
    try:
        obj = json.loads(stripped)
        runs = obj if isinstance(obj, list) else [obj]
    except json.JSONDecodeError:
        runs = []
        for lineno, line in enumerate(stripped.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LqsError("trace", path, "must be JSON or JSON lines", f"line {lineno}: {e.msg}") from None
    if not runs or not all(isinstance(r, dict) for r in runs):
        raise LqsError("trace", path, "must hold JSON objects, one per benchmark run")
    real = [r for r in runs if str(r.get("type", "")).strip().lower() != "warmup"]
    if not real:
        raise LqsError("trace", path, "must hold a benchmark run besides warm-up lines", f"{len(runs)} warm-up line(s)")
    return real


def looks_like_benchmark_result(path) -> bool:
    """True if ``path`` is a .json/.jsonl file (optionally compressed) in the benchmark-result layout: its start
    holds ``input_lens``, or is an object with ``request_throughput`` and ``completed`` (a result saved without
    per-request details). Cheap: reads the first 64 kB."""
    from .read import _COMPRESSION, _open_text

    p = os.fspath(path)
    base = p.lower()
    for c in _COMPRESSION:
        if base.endswith(c):
            base = base[: -len(c)]
    if not base.endswith((".json", ".jsonl", ".ndjson")) or not os.path.isfile(p):
        return False
    try:
        with _open_text(p) as fh:
            head = fh.read(65536)
    except (OSError, UnicodeDecodeError, EOFError):
        return False
    if '"input_lens"' in head:
        return True
    # a result saved without per-request details: recognised so that loading it says what is missing
    return head.lstrip().startswith("{") and '"request_throughput"' in head and '"completed"' in head


def _per_request(run: dict, key: str, n: int, label: str, *, required: bool = False):
    if key not in run or run[key] is None:
        if required:
            raise LqsError(key, None, "is missing: a benchmark result needs per-request input_lens and output_lens",
                           f"in {label}; vllm bench serve writes them with --save-detailed, "
                           "sglang.bench_serving with --output-details")
        return None
    v = run[key]
    if not isinstance(v, list):
        raise LqsError(key, type(v).__name__, "must be a list with one entry per request", f"in {label}")
    if n >= 0 and len(v) != n:
        raise LqsError(key, f"{len(v)} entries", f"must have one entry per request ({n}, as input_lens)",
                       f"in {label}")
    return v


def _float_array(vals, key: str, label: str) -> np.ndarray:
    try:
        a = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
    except (TypeError, ValueError):
        raise LqsError(key, "non-numeric entry", "must hold numbers of seconds", f"in {label}") from None
    bad = np.isfinite(a) & (a < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise LqsError(key, float(a[i]), "every time must be ≥ 0 seconds", f"entry {i} in {label}")
    return a


def _lengths(vals, key: str, label: str) -> np.ndarray:
    try:
        a = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
    except (TypeError, ValueError):
        raise LqsError(key, "non-numeric entry", "every length must be an integer ≥ 0", f"in {label}") from None
    bad = ~np.isfinite(a) | (a < 0) | (a != np.round(a)) | (a > 2**30)
    if bad.any():
        i = int(np.argmax(bad))
        raise LqsError(key, vals[i], "every length must be an integer ≥ 0 tokens", f"entry {i} in {label}")
    return a.astype(np.int64)


def load_benchmark_result(path, run: int | None = None, *, b_estimator: str = "median") -> BenchmarkResult:
    """Read one run of a vLLM or SGLang benchmark result file (see the module docstring).

    ``run`` (0-based) picks a run from a file of several; without it the file must hold exactly one. Every bad
    file raises a one-line :class:`lqs.LqsError` naming the file and the key.
    """
    label = os.fspath(path)
    if not os.path.isfile(label):
        raise LqsError("trace", label, "must be an existing benchmark result file", "no such file")
    runs = _runs(label)
    if run is None:
        if len(runs) > 1:
            raise LqsError("run", None, f"must pick one of the {len(runs)} runs in {label} (0 … {len(runs) - 1})")
        run = 0
    if isinstance(run, bool) or not isinstance(run, (int, np.integer)) or not 0 <= run < len(runs):
        raise LqsError("run", run, f"must be an integer in [0, {len(runs) - 1}]: {label} holds {len(runs)} run(s)")
    run = int(run)
    r = runs[run]
    where = label if len(runs) == 1 else f"run {run} of {label}"
    if r.get("input_lens") is None and r.get("output_lens") is None:
        return _summary_only(r, label, where, run, len(runs))
    s_all = _lengths(_per_request(r, "input_lens", -1, where, required=True), "input_lens", where)
    n = s_all.size
    if n == 0:
        raise LqsError("input_lens", "[]", "must list at least one request", f"in {where}")
    o_all = _lengths(_per_request(r, "output_lens", n, where, required=True), "output_lens", where)
    errors = _per_request(r, "errors", n, where)
    success = _per_request(r, "success", n, where)
    ok = o_all >= 1
    if errors is not None:
        ok &= np.array([e is None or (isinstance(e, str) and not e.strip()) for e in errors])
    if success is not None:
        ok &= np.array([bool(x) for x in success])
    if not ok.any():
        raise LqsError("errors", f"{n} failed", "the run must hold at least one successful request", f"in {where}")
    bad_s = ok & (s_all < 1)
    if bad_s.any():
        i = int(np.argmax(bad_s))
        raise LqsError("input_lens", int(s_all[i]), "a successful request needs a prompt of ≥ 1 token",
                       f"entry {i} in {where}")
    ttfts = _per_request(r, "ttfts", n, where)
    ttft = None if ttfts is None else _float_array(ttfts, "ttfts", where)
    itls = _per_request(r, "itls", n, where)
    starts = _per_request(r, "start_times", n, where)
    t = None if starts is None else _float_array(starts, "start_times", where)
    e2e = None
    for k in _E2E_KEYS:
        if k in r:
            e2e = _float_array(_per_request(r, k, n, where), k, where)
            break

    idx = np.flatnonzero(ok)
    gaps, raw_gaps, per_req, itl_sum = [], [], [], np.full(n, np.nan)
    if itls is not None:
        for i in idx:
            g = itls[i]
            if not isinstance(g, list):
                raise LqsError("itls", type(g).__name__, "must hold one list of inter-token gaps per request",
                               f"entry {int(i)} in {where}")
            a = _float_array(g, "itls", where)
            itl_sum[i] = float(np.nansum(a))
            per_req.append(a)
            raw_gaps.append(a[np.isfinite(a)])
            if a.size == o_all[i] - 1:
                gaps.append(a[a > 0])
            elif a.size > 0 and o_all[i] > 1:  # streamed in chunks: spread each request's total over its tokens
                gaps.append(np.full(int(o_all[i] - 1), itl_sum[i] / (o_all[i] - 1)))
    b_samples = np.concatenate(gaps) if gaps else None
    if b_samples is not None:
        b_samples = b_samples[np.isfinite(b_samples) & (b_samples > 0)]
        if b_samples.size == 0:
            b_samples = None
    if e2e is None and ttft is not None and itls is not None:
        e2e = ttft + np.nan_to_num(itl_sum)
    tpot_all = None
    if e2e is not None and ttft is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot_all = np.where(o_all >= 2, (e2e - ttft) / np.maximum(o_all - 1, 1), np.nan)
    ttft_ok = None if ttft is None else ttft[idx]
    e2e_ok = None if e2e is None else e2e[idx]
    tpot_ok = None if tpot_all is None else tpot_all[idx]

    arrival = None
    if t is not None:
        tt = t[idx]
        if not np.all(np.isfinite(tt)):
            raise LqsError("start_times", None, "every successful request needs a start time", f"in {where}")
        arrival = tt - tt.min()
    name = os.path.splitext(os.path.basename(label))[0] + ("" if len(runs) == 1 else f"[run {run}]")
    s_ok, o_ok, rows = s_all[idx], o_all[idx], idx.astype(np.int64)
    if arrival is not None and np.any(np.diff(arrival) < 0):
        order = np.argsort(arrival, kind="stable")
        s_ok, o_ok, arrival, rows = s_ok[order], o_ok[order], arrival[order], rows[order]
        ttft_ok = None if ttft_ok is None else ttft_ok[order]
        e2e_ok = None if e2e_ok is None else e2e_ok[order]
        tpot_ok = None if tpot_ok is None else tpot_ok[order]
    trace = Trace(s=s_ok, o=o_ok, arrival_s=arrival, source=label, name=name, row=rows, failed=int(n - idx.size))
    b, b_src = _b_bar(b_samples, tpot_ok, b_estimator, where)
    completed = _number(r, "completed", where)
    raw = np.concatenate(raw_gaps) if raw_gaps else None
    steps = None
    if t is not None and ttft is not None and itls is not None:
        steps = decode_steps(t[idx], ttft[idx], per_req, s_all[idx], o_all[idx])
    return BenchmarkResult(trace=trace, b_samples=b_samples, b=b, b_source=b_src, ttfts=ttft_ok, e2e=e2e_ok,
                           itl_median=None if raw is None or raw.size == 0 else float(np.median(raw)),
                           request_rate=_rate(r, where), duration=_number(r, "duration", where),
                           completed=int(completed) if completed is not None else int(idx.size),
                           failed=int(n - idx.size), request_throughput=_number(r, "request_throughput", where),
                           source_format=_format(r), run=run, n_runs=len(runs), **_meta(r, where),
                           tpots=tpot_ok, itl_gaps=raw, decode_steps=steps)


#: b̄ estimators on per-request TPOT (default) or on the inter-token gaps (docs/model.md, "b̄ from a benchmark")
def _b_bar(b_samples, tpots, estimator: str, where: str):
    """(b̄, its source): the estimator over the per-request TPOTs when the file has them (robust to stream chunks
    that carry several tokens), else over the inter-token gaps."""
    tp = None if tpots is None else tpots[np.isfinite(tpots) & (tpots > 0)]
    if tp is not None and tp.size:
        return estimate_b(tp, estimator), f"{estimator} of {tp.size} per-request TPOTs in {where}"
    if b_samples is not None:
        return estimate_b(b_samples, estimator), f"{estimator} of {b_samples.size} inter-token gaps in {where}"
    return None, None


def _summary_only(r: dict, label: str, where: str, run: int, n_runs: int) -> BenchmarkResult:
    """A result saved without per-request arrays: usable only when every request had the same lengths (vLLM's
    random dataset with random_range_ratio 0: total tokens / completed); rejected otherwise."""
    completed = _number(r, "completed", where)
    tin, tout = _number(r, "total_input_tokens", where), _number(r, "total_output_tokens", where)
    fixed = (str(r.get("dataset_name", "")).lower() == "random" and _format(r) == "vllm"
             and r.get("random_range_ratio") is not None and float(r.get("random_range_ratio")) == 0.0)
    if not (completed and tin and tout and fixed):
        raise LqsError("input_lens", None, "is missing: without per-request input_lens and output_lens a result is "
                       "usable only for fixed lengths (vLLM random dataset, random_range_ratio 0, with completed "
                       "and total_input/output_tokens)", f"in {where}; save it with --save-detailed")
    n = int(completed)
    s, o = int(round(tin / n)), int(round(tout / n))
    if s < 1 or o < 1:
        raise LqsError("total_input_tokens", tin, "must give ≥ 1 token per completed request", f"in {where}")
    name = os.path.splitext(os.path.basename(label))[0] + ("" if n_runs == 1 else f"[run {run}]")
    trace = Trace(s=np.full(n, s), o=np.full(n, o), arrival_s=None, source=label, name=name)
    summ = _summary(r, where)
    b = summ.get("tpot_p50_s")
    return BenchmarkResult(trace=trace, b_samples=None, b=b, b_source=None if b is None else
                           f"median TPOT of the summary in {where}", ttfts=None, e2e=None,
                           itl_median=summ.get("itl_p50_s"), request_rate=_rate(r, where),
                           duration=_number(r, "duration", where), completed=n, failed=0,
                           request_throughput=_number(r, "request_throughput", where), source_format=_format(r),
                           run=run, n_runs=n_runs, **_meta(r, where), summary_only=True,
                           notes=(f"summary-only result: every request taken as s = {s}, o = {o} tokens "
                                  "(total tokens / completed, a fixed-length random dataset)",))

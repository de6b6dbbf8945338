"""replay: a measured benchmark run simulated as it ran (docs/model.md, "Replaying a benchmark").

The file's requests, in file order, are issued as its client issued them (the run kind: open loop at the stated
rate and burstiness or at the recorded start times, closed loop through ``max_concurrency``, or a burst) into
the server the file and the log state (engine defaults for the rest), until every request completes. Trials
differ in arrival draws and batch-time draws. Measured and replayed metrics are set side by side, each replayed
figure with its spread across trials.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .._errors import LqsError, check_float, check_int
from . import _core
from ._arrivals import Arrivals
from ._sources import resolve_server

ARRIVAL_CHOICES = ("auto", "recorded", "poisson", "gamma", "burst")
QUEUE_GROWTH = 2.0  # the last quarter's median TTFT above this multiple of the first quarter's: the queue grew


def run_arrivals(bench, choice: str = "auto") -> Arrivals:
    """The arrival process of a run: its stated rate and burstiness (open or closed loop with a rate), a burst for
    rate inf, or its start times (``recorded``, open loop only: in a capped run they are admission times)."""
    if choice not in ARRIVAL_CHOICES:
        raise LqsError("arrivals", choice, "must be one of " + ", ".join(ARRIVAL_CHOICES))
    rate, k = bench.request_rate, bench.burstiness if bench.burstiness is not None else 1.0
    kind = bench.run_kind
    if choice == "recorded" or (choice == "auto" and rate is None):
        if kind == "closed":
            raise LqsError("arrivals", "recorded", f"{bench.trace.source} is a closed-loop run (max_concurrency "
                           f"{bench.max_concurrency}): its start_times are admission times, not arrivals")
        if bench.trace.arrival_s is None:
            raise LqsError("start_times", None, f"{bench.trace.source} states neither start_times nor request_rate: "
                           "the arrival process is unknown (give arrivals='burst' or a rate)")
        return Arrivals("replayed", instants_s=bench.trace.arrival_s)
    if choice == "burst" or (choice == "auto" and math.isinf(rate)):
        return Arrivals("burst")
    if rate is None or math.isinf(rate):
        raise LqsError("arrivals", choice, f"needs a finite request_rate; {bench.trace.source} states {rate}")
    if choice == "poisson":
        return Arrivals("poisson", rate_rps=rate)
    return Arrivals("gamma" if (choice == "gamma" or k != 1.0) else "poisson", rate_rps=rate, burstiness=k)


def queue_grew(ttft) -> bool | None:
    """True when a run's TTFT rose across it (last quarter's median > QUEUE_GROWTH × the first quarter's, by
    request index): the server's queue grew. None with fewer than 8 TTFTs."""
    x = None if ttft is None else np.asarray(ttft, np.float64)
    if x is None or np.isfinite(x).sum() < 8:
        return None
    q = max(x.size // 4, 2)
    first, last = np.nanmedian(x[:q]), np.nanmedian(x[-q:])
    return bool(last > QUEUE_GROWTH * first)


def measured_metrics(bench) -> dict:
    """The measured run's figures (seconds, req/s): per-request arrays where the file has them, else its summary."""
    out = {"duration_s": bench.duration, "throughput_rps": bench.request_throughput}
    if out["throughput_rps"] is None and bench.duration:
        out["throughput_rps"] = bench.completed / bench.duration
    arrays = {"ttft": bench.ttfts, "tpot": bench.tpots, "e2e": bench.e2e, "itl": bench.itl_gaps}
    summ = bench.summary or {}
    for name, x in arrays.items():
        x = None if x is None else np.asarray(x, np.float64)
        x = None if x is None else x[np.isfinite(x)]
        for q in _core.QUANTILES:
            key = f"{name}_p{round(q * 100)}_s"
            out[key] = float(np.quantile(x, q)) if x is not None and x.size else summ.get(key)
    # TTFT of the requests that entered while none before them awaited a first token: the front end and one prefill
    u = (_core.unqueued_ttft(bench.trace.arrival_s, bench.ttfts)
         if bench.ttfts is not None and bench.trace.arrival_s is not None else math.nan)
    out["ttft_unqueued_p50_s"] = u if np.isfinite(u) else None
    return out


@dataclass(frozen=True, eq=False)
class ReplayResult:
    """What :func:`replay` returns: the flat report, one row per trial, the measured run and the resolved server."""

    report: dict
    trials: object  # pandas DataFrame, one row per trial
    measured: object  # lqs.BenchmarkResult
    server: object  # lqs.Server
    sources: dict
    raw: _core.RawReplay = field(repr=False)

    def to_dict(self) -> dict:
        return dict(self.report)

    def save(self, out_dir) -> dict:
        """Write replay.json (report), replay_trials.csv (per trial) and replay.png (per-request TTFT and E2E)."""
        from .. import _jsonio
        from ._plot import plot_replay

        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths = {k: os.path.join(out_dir, f) for k, f in (("report", "replay.json"), ("trials", "replay_trials.csv"),
                                                          ("plot", "replay.png"))}
        with open(paths["report"], "w", encoding="utf-8") as fh:
            _jsonio.dump(self.report, fh, indent=1, ensure_ascii=False)
        self.trials.to_csv(paths["trials"], index=False)
        plot_replay(self, paths["plot"])
        return paths


def replay(result, server=None, *, run: int | None = None, trials: int = 16, key=None, seed: int = 0,
           arrivals="auto", concurrency="file", frontend=(0.0, 0.0), chunking: str = "auto",
           b_estimator: str = "median",
           progress: bool = False, **server_fields) -> ReplayResult:
    """Replay a benchmark run (module docstring).

    ``result``: a vLLM or SGLang result file or an :class:`lqs.BenchmarkResult`. The server is ``server`` (an
    :class:`lqs.Server`) or resolved from ``server_fields`` (``M``, ``server_log``, ``prefill_chunk``,
    ``token_budget``, ``max_running``, ``block_size``, ``policy``, ``b``, ``b_model``), the file and the
    engine's defaults (:func:`lqs.replay.resolve_server`). ``arrivals``: ``auto`` (as the file states), or
    ``recorded``, ``poisson``, ``gamma``, ``burst``, or an :class:`lqs.replay.Arrivals`. ``concurrency``:
    ``file`` (the client's max_concurrency), None (no cap) or an integer. ``frontend``: (f0, f1[, f2[, f3]]): the
    server's event loop takes entering requests one at a time, f2 seconds each, then its tokeniser, f3·s seconds
    each (s the prompt tokens); a request can be scheduled f0 + f1·n seconds after that (n the requests in the
    server when it entered), and a first token or completion reaches the client once the event loop is through
    with the requests that entered before it (kernels/replay.py; :func:`lqs.replay.calibrate` fits it); a number
    is f0. ``chunking``: ``budget`` (a prompt takes what the
    token budget leaves, vLLM V1 and SGLang), ``fixed`` (whole chunks of ŝ) or ``auto`` (budget for a server
    resolved from a vLLM or SGLang run, fixed for a given Server)."""
    import jax
    import pandas as pd

    from ..traces import BenchmarkResult, load_benchmark_result

    bench = result if isinstance(result, BenchmarkResult) else load_benchmark_result(result, run, b_estimator=b_estimator)
    trials = check_int("trials", trials, 1, 4096)
    frontend = parse_frontend(frontend)
    srv, sources = resolve_server(bench, server, **server_fields)
    sources["chunking"] = "given" if chunking != "auto" else (
        "server" if server is not None else "vLLM V1 / SGLang: a prompt takes what the token budget leaves")
    chunking = resolve_chunking(chunking, server)
    arr = arrivals if isinstance(arrivals, Arrivals) else run_arrivals(bench, arrivals)
    C = bench.max_concurrency if concurrency == "file" else (None if concurrency is None else
                                                             check_int("concurrency", concurrency, 1, 2**30))
    tr = bench.trace
    tr.validate(srv.M)
    random_b = srv.b.kind not in ("constant", "affine") if hasattr(srv.b, "kind") else False
    if not arr.random and not random_b:
        trials = 1  # every trial would be identical
    key = jax.random.key(seed) if key is None else key
    key_arrivals, key_batch = jax.random.split(key)
    t_arr = arr.instants(len(tr), trials, key_arrivals)
    bar = _progress(progress)
    raw = _core.run(tr.s, tr.o, t_arr, M=srv.M, chunk=srv.prefill_chunk, budget=srv.token_budget,
                    max_running=srv.max_running, block=srv.block_size, concurrency=C, frontend=frontend,
                    batch=srv.bs[0], policy=srv.policy, key=key_batch, chunking=chunking, progress=bar)
    rows = _core.metrics(raw, tr.o)
    df = pd.DataFrame(rows)
    report = _report(bench, srv, sources, arr, C, frontend, df, raw)
    report["chunking"] = chunking
    return ReplayResult(report=report, trials=df, measured=bench, server=srv, sources=sources, raw=raw)


def _progress(on: bool):
    if not on:
        return None
    import sys

    def show(done, total):
        print(f"\rreplay: {done:,}/{total:,} requests completed", end="" if done < total else "\n", file=sys.stderr)

    return show


CHUNKINGS = ("auto", "budget", "fixed")


def resolve_chunking(chunking: str, server) -> str:
    from .._errors import check_choice

    chunking = check_choice("chunking", chunking, CHUNKINGS)
    if chunking == "auto":
        return "fixed" if server is not None else "budget"
    return chunking


def parse_frontend(f) -> tuple[float, float, float, float]:
    """(f0, f1, f2, f3) from a tuple, a number (f0) or the text "F0", "F0,F1", "F0,F1,F2" or "F0,F1,F2,F3"; f0, f1
    and f2 in [0, 60] seconds, f3 in [0, 0.01] seconds per prompt token (a missing f1, f2 or f3 is 0)."""
    from .._errors import parse_number

    if isinstance(f, str):
        parts = [x for x in f.split(",") if x.strip()]
        if not 1 <= len(parts) <= 4:
            raise LqsError("frontend", f, "must be F0, F0,F1, F0,F1,F2 or F0,F1,F2,F3 (seconds; seconds per request "
                                          "in the server; seconds per entering request, one at a time; seconds per "
                                          "prompt token)")
        f = [parse_number("frontend", x) for x in parts]
    if isinstance(f, (int, float, np.integer, np.floating)):
        f = (f,)
    f = tuple(f)
    if not 1 <= len(f) <= 4:
        raise LqsError("frontend", f, "must be (f0, f1, f2, f3)")
    f = f + (0.0,) * (4 - len(f))
    return tuple(check_float("frontend", x, 0.0, 60.0) for x in f[:3]) + (check_float("frontend", f[3], 0.0, 0.01),)


def _fe_text(frontend) -> str:
    """The --frontend text of (f0, f1, f2, f3): F0,F1, then ,F2 and ,F3 as far as the last one above 0."""
    f = parse_frontend(frontend)
    n = 4 if f[3] > 0 else 3 if f[2] > 0 else 2
    return ",".join(f"{x:.6g}" for x in f[:n])


def _report(bench, srv, sources, arr, C, frontend, df, raw) -> dict:
    meas = measured_metrics(bench)
    rep = {"source": bench.trace.source, "source_format": bench.source_format, "run": bench.run,
           "run_kind": bench.run_kind, "run_kind_text": bench.describe_kind(), "arrivals": arr.describe(),
           "concurrency": C, "n_requests": len(bench.trace), "trials": int(len(df)),
           "M_tokens": srv.M, "prefill_chunk_tokens": srv.prefill_chunk, "token_budget": srv.token_budget,
           "max_running": srv.max_running, "block_size_tokens": srv.block_size, "policy": srv.policy,
           "b_model": _b_spec(srv.bs[0]), "frontend": _fe_text(frontend),
           "sources": dict(sources)}
    if bench.run_kind == "open" and bench.request_rate is not None and math.isfinite(bench.request_rate):
        rep["request_rate_rps"] = bench.request_rate
    for name in ["duration_s", "throughput_rps"] + [f"{m}_p{round(q * 100)}_s" for m in _core.METRICS
                                                   for q in _core.QUANTILES]:
        x = df[name].to_numpy(np.float64) if name in df else np.array([np.nan])
        rep["measured_" + name] = meas.get(name)
        rep["replay_" + name] = float(np.nanmean(x)) if np.isfinite(x).any() else None
        sd_key = name[:-2] + "_sd_s" if name.endswith("_s") else name + "_sd"
        rep["replay_" + sd_key] = float(np.nanstd(x)) if np.isfinite(x).sum() > 1 else 0.0
    rep_u = df["ttft_unqueued_p50_s"].to_numpy(np.float64)
    rep["measured_ttft_unqueued_p50_s"] = meas["ttft_unqueued_p50_s"]
    rep["replay_ttft_unqueued_p50_s"] = float(np.nanmean(rep_u)) if np.isfinite(rep_u).any() else None
    rep["replay_peak_concurrency"] = int(df["peak_concurrency"].max())
    rep["replay_preemptions"] = float(df["preemptions"].mean())
    rep["replay_mem_max_tokens"] = int(df["mem_max_tokens"].max())
    rep["measured_queue_grew"] = queue_grew(bench.ttfts) if bench.run_kind == "open" else None
    ttft_rep = raw.t_ttft - raw.t_enter
    grew = [queue_grew(ttft_rep[j]) for j in range(ttft_rep.shape[0])]
    rep["replay_queue_grew"] = (float(np.mean([bool(g) for g in grew])) if bench.run_kind == "open" else None)
    rep["reliable"] = bool(df["finished"].all() and not raw.violations.any())
    rep["notes"] = list(bench.notes) + ([] if rep["reliable"] else
                                        ["a trial did not complete every request within the step limit"])
    return rep


def _b_spec(b) -> str:
    """The --b-model text form of a batch-time model."""
    if not hasattr(b, "kind"):
        return f"constant:{float(b):.6g}"
    kind = b.kind
    if kind == "constant":
        return f"constant:{float(np.asarray(b.b)):.6g}"
    if kind == "affine":
        return "affine:" + ",".join(f"{float(x):.6g}" for x in np.asarray(b.a))
    return kind

"""check: a measured benchmark run beside the closed form, its replay and the long-run verdict.

From one run of ``vllm bench serve`` / ``sglang.bench_serving`` (:func:`lqs.traces.load_benchmark_result`) and the
server (M given, or read from its start-up log or the file's server_info; the engine's defaults for the rest),
:func:`check` puts side by side

- the closed form of docs/model.md for the measured request lengths and b̄: μ, μ_exact, δ, ρ = λ/μ;
- what kind of run it was: open loop (rate, burstiness), closed loop (the client's cap C) or a burst (rate inf,
  no cap). An arrival rate λ is reported for open-loop runs only (the offered ``request_rate``, else from
  ``start_times``: (n−1)/(t_last − t_first) with the standard error λ/√(n−1) of a Poisson process);
- the measured run against its replay (:func:`lqs.replay`): the finite experiment simulated as it ran, with its
  requests in file order, issued as its client issued them, until every request completes;
- the long-run verdict at the measured λ from λ*, the saturation throughput of the same server
  (:func:`lqs.critical`): stable below its confidence interval, unstable above, undecided inside. A closed loop
  gets no verdict (its client caps the load), a burst is unstable by construction;
- "saturated" only when the queue visibly grew: TTFT rising across the run, or the replay at the offered load
  saturating (never because a short run's completed / duration fell below λ).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ._errors import LqsError

QUEUE_GROWTH_TEXT = "2×"  # lqs.replay.QUEUE_GROWTH, as the report words it
B_QUANTILES = 8192  # the i.i.d. batch-time model draws from this many quantiles of the gaps (one array shape for
#                    every run, so checks of different files share compiled programs)
BATCH_MODELS = ("empirical", "constant")


@dataclass(frozen=True, eq=False)
class CheckResult:
    """What :func:`check` returns: the flat report (``to_dict``), the measured run, the simulation and λ*."""

    report: dict
    measured: object  # lqs.BenchmarkResult
    sim: object  # lqs.SimResult: at the measured λ, or the saturation run of a saturated benchmark
    critical: object  # lqs.CriticalResult

    def to_dict(self) -> dict:
        return dict(self.report)

    def save(self, out_dir) -> dict:
        """Write ``check.json`` (the report) and ``latency_cdf.png`` (measured vs simulated TTFT and E2E)."""
        from . import _jsonio

        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths = {"report": os.path.join(out_dir, "check.json"), "plot": os.path.join(out_dir, "latency_cdf.png")}
        with open(paths["report"], "w", encoding="utf-8") as fh:
            _jsonio.dump(self.report, fh, indent=1, ensure_ascii=False)
        plot_latency_cdfs(self, paths["plot"])
        return paths


def _q(x, p):
    """The p-quantile of the finite values of x (None when there are none: no NaN warning, no NaN)."""
    x = None if x is None else np.asarray(x, np.float64)
    x = None if x is None else x[np.isfinite(x)]
    return None if x is None or x.size == 0 else float(np.quantile(x, p))


def _missing(x) -> int:
    """Successful requests whose latency the file does not state (null / NaN): left out of the percentiles."""
    return 0 if x is None else int(np.count_nonzero(~np.isfinite(np.asarray(x, np.float64))))


def _build_server(bench, server, M, server_log, prefill_chunk, b, batch, policy, token_budget):
    """(Server, sources, batch description, chunking): a given Server as it is, else resolved from the run, its
    log and the engine's defaults (lqs.replay.resolve_server: recompute, the engine's budget, cap and blocks)."""
    from ._server import Server
    from .replay import resolve_server

    if server is not None:
        given = {k: v for k, v in (("M", M), ("server_log", server_log), ("prefill_chunk", prefill_chunk), ("b", b),
                                   ("batch", batch), ("policy", policy), ("token_budget", token_budget))
                 if v is not None}
        if not isinstance(server, Server):
            raise LqsError("server", type(server).__name__, "must be an lqs.Server (or None: built from M=, ...)")
        if given:
            k = next(iter(given))
            raise LqsError(k, given[k], "give the server's fields either as server=Server(...) or as keywords, "
                                        "not both")
        kind = "constant b̄" if isinstance(server.b, (int, float)) else type(server.b).__name__
        return server, {"M": "server", "b": "server"}, f"as given by the server ({kind})", "fixed"
    if M is not None and server_log is not None:
        raise LqsError("server_log", server_log, "give only one of M (tokens, --M) or server_log (--server-log)",
                       "both were given")
    if M is None and server_log is None and not (bench.server or {}).get("M"):
        raise LqsError("M", None, "give M (tokens, --M) or server_log (a vLLM/SGLang log stating it, --server-log)")
    batch = ("empirical" if b is None and bench.b_samples is not None else "constant") if batch is None else batch
    if not isinstance(batch, str) or not batch.strip():
        raise LqsError("batch", batch, "must be " + ", ".join(BATCH_MODELS) + " or a batch-time spec such as "
                       "affine:A0,A1,A2,A3 (lqs calibrate prints one)")
    if batch == "empirical" and bench.b_samples is None:
        raise LqsError("batch", batch, f"needs inter-token gaps (itls) in {bench.trace.source}; use constant")
    srv, sources = resolve_server(bench, None, M=M, server_log=server_log, prefill_chunk=prefill_chunk,
                                  token_budget=token_budget, policy=policy, b=b, b_model=batch)
    if batch == "empirical":
        x = np.asarray(srv.b.samples, np.float64)
        srv = srv.replace(b_theory=float(b if b is not None else bench.b))
        desc = (f"empirical: i.i.d. draws from the distribution of the {bench.b_samples.size} inter-token gaps "
                f"(mean {x.mean():.6g} s)")
    elif batch.partition(":")[0] == "constant":
        desc = f"constant: b̄ = {srv.b_mean_s:.6g} s every step"
    else:
        desc = f"{batch} (b̄ = {srv.b_mean_s:.6g} s for the closed form)"
    return srv, sources, desc, "budget"


def check(result, server=None, mc=None, *, run: int | None = None, M=None, server_log=None, prefill_chunk=None,
          b=None, b_estimator: str = "median", batch: str | None = None, policy: str | None = None,
          token_budget=None, frontend=None, key=None, progress: bool = False, **mc_fields) -> CheckResult:
    """A measured benchmark run beside the closed form, its replay and the long-run verdict (module docstring).

    ``result``: a benchmark result file (vLLM or SGLang, ``run`` picks one of several) or an
    :class:`lqs.BenchmarkResult`. The server is ``server`` (an :class:`lqs.Server`, used as given) or resolved
    from ``M`` (tokens), ``server_log`` or the file, ``prefill_chunk``, ``token_budget`` and ``policy`` (defaults:
    the engine's, recompute), b̄ (``b``, default: the ``b_estimator`` of the per-request TPOTs), ``batch``
    ('empirical': i.i.d. draws of the inter-token gaps, the default when the run has them; 'constant': b̄ every
    step; or a spec such as the ``affine:…`` that :func:`lqs.calibrate` prints), ``frontend`` the replay's
    front end (f0, f1[, f2[, f3]]) (default none; calibrate prints it too). ``mc``/``**mc_fields`` as in :func:`lqs.simulate`: they serve the λ* run; the replay runs
    ``min(trials, 16)`` trials.
    """
    import jax

    from ._server import resolve_mc
    from ._theory import capacity
    from .engine import critical
    from .replay import queue_grew, replay
    from .traces import BenchmarkResult, load_benchmark_result

    bench = result if isinstance(result, BenchmarkResult) else load_benchmark_result(result, run, b_estimator=b_estimator)
    mc = resolve_mc(mc, mc_fields)
    server, sources, batch_desc, chunking = _build_server(bench, server, M, server_log, prefill_chunk, b, batch,
                                                          policy, token_budget)
    server = server.require_scalar("check")
    tr = bench.trace
    tr.validate(server.M)
    wl = tr.workload()
    cap = capacity(wl, server)

    n = len(tr)
    kind = bench.run_kind
    lam = lam_source = lam_se = None
    if kind == "open":
        lam, lam_source = tr.mean_rate_rps, "start_times"
        if lam is None and bench.request_rate is not None and math.isfinite(bench.request_rate):
            lam, lam_source = bench.request_rate, "request_rate"
            if lam <= 0:
                raise LqsError("request_rate", lam, f"must be > 0 (or inf): {tr.source} completed {n} requests, so "
                                                    "they were offered at a positive rate")
        if lam is None:
            raise LqsError("start_times", None, f"{tr.source} states neither start_times nor a finite request_rate: "
                                                "the arrival rate is unknown")
        if lam_source == "start_times":
            lam_se = lam / math.sqrt(max(n - 1, 1))
    thr = bench.request_throughput
    if thr is None and bench.duration:
        thr = bench.completed / bench.duration

    key = jax.random.key(mc.seed) if key is None else key
    k_crit, k_sim = jax.random.split(key)
    try:
        cr = critical(wl, server, mc, key=k_crit, grid_points=0, progress=progress)
        lo, hi, lam_star = cr.summary["lam_star_lo_rps"], cr.summary["lam_star_hi_rps"], cr.summary["lam_star_rps"]
        star_note, band = None, "λ* ∈ [{lo:.4g}, {hi:.4g}] req/s"
    except LqsError as e:  # the engine cannot hold this server (a KV cache of millions of tokens, steps of
        # thousands of arrivals): the long-run half falls back on the theorems' band, the replay still runs
        cr, lam_star = None, None
        lo, hi = cap.mu_exact_stable_rps, cap.mu_exact_rps
        star_note = f"λ* not simulated: {e}"
        band = "the closed form's band for λ*, [μ_exact(1−δ), μ_exact] = [{lo:.4g}, {hi:.4g}] req/s"
    band = band.format(lo=lo, hi=hi)
    rp = replay(bench, server, trials=min(mc.trials, 16), key=k_sim, chunking=chunking, progress=progress,
                frontend=(0.0, 0.0) if frontend is None else frontend)
    r = rp.report
    grew = queue_grew(bench.ttfts)
    sat_reason = None
    if kind == "burst":
        sat_reason = "request_rate is infinite: every request sent at t = 0 (a burst, no concurrency cap)"
        verdict, vtext = "unstable", "unstable: the run offered requests without limit (λ = ∞ > λ*)"
    elif kind == "closed":
        verdict = "capped"
        vtext = (f"no long-run verdict: a closed loop (at most {bench.max_concurrency} requests in flight) cannot "
                 f"grow its queue; an open arrival stream is stable below {band}")
    else:
        if grew:
            sat_reason = "the backlog grew: TTFT rose across the run (last quarter's median above " \
                         f"{QUEUE_GROWTH_TEXT} the first quarter's)"
        elif (r.get("replay_queue_grew") or 0) > 0.5:
            sat_reason = "the backlog grew in the replay at the offered load (TTFT rising in most trials)"
        if lam > hi:
            verdict, vtext = "unstable", f"unstable: λ = {lam:.4g} > {band} (the queue grows)"
        elif lam < lo:
            verdict, vtext = "stable", f"stable: λ = {lam:.4g} < {band}"
        else:
            verdict, vtext = "undecided", f"undecided: λ = {lam:.4g} inside {band}"
    offered = math.inf if kind == "burst" else lam
    sim_itl = r["replay_itl_p50_s"]
    rep = {"source": tr.source, "source_format": bench.source_format, "run": bench.run, "n_runs": bench.n_runs,
           "n_requests": n, "failed_requests": bench.failed, "run_kind": kind, "run_kind_text": bench.describe_kind(),
           "max_concurrency": bench.max_concurrency, "burstiness": bench.burstiness,
           "M_tokens": server.M, "M_source": sources.get("M"), "prefill_chunk_tokens": server.prefill_chunk,
           "token_budget": server.token_budget, "max_running": server.max_running,
           "block_size_tokens": server.block_size, "policy": server.policy, "sources": sources,
           "b_s": server.b_mean_s, "b_source": sources.get("b"), "batch": batch_desc,
           "frontend": rp.report.get("frontend"),
           "lam_rps": lam, "lam_se_rps": lam_se, "lam_source": lam_source,
           "request_rate_rps": bench.request_rate, "mu_rps": cap.mu_rps, "mu_exact_rps": cap.mu_exact_rps,
           "mu_block_rps": cap.mu_block_rps, "mu_stable_rps": cap.mu_stable_rps, "delta": cap.delta,
           "rho": (offered / cap.mu_rps) if offered is not None else None,
           "lam_star_rps": lam_star, "lam_star_lo_rps": lo, "lam_star_hi_rps": hi,
           "verdict": verdict, "verdict_text": vtext, "saturated": sat_reason is not None,
           "saturated_reason": sat_reason, "measured_queue_grew": grew,
           "simulated": f"replay of the run ({r['arrivals']}; {r['trials']} trial(s))", "trials": r["trials"],
           "sim_reliable": bool(r["reliable"]),
           "critical_reliable": cr is None or bool(cr.summary.get("reliable", True)), "lam_star_note": star_note,
           "lam_star_basis": "closed form (theorems' band)" if cr is None else "saturation run",
           "measured_throughput_rps": thr, "sim_throughput_rps": r["replay_throughput_rps"],
           "measured_duration_s": bench.duration, "sim_duration_s": r["replay_duration_s"],
           "measured_ttft_missing": _missing(bench.ttfts), "measured_e2e_missing": _missing(bench.e2e),
           "measured_itl_median_s": bench.itl_median, "sim_itl_median_s": sim_itl,
           "sim_p_backlog_grows": r.get("replay_queue_grew") or 0.0, "notes": list(bench.notes)}
    for k in ("ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s", "tpot_p50_s"):
        rep["measured_" + k] = r["measured_" + k]
        rep["sim_" + k] = r["replay_" + k]
    if sat_reason is not None and thr is not None:  # the paper's Table 1: measured saturation throughput vs theory
        rep.update(throughput_over_mu=thr / cap.mu_rps, throughput_over_mu_exact=thr / cap.mu_exact_rps,
                   throughput_over_lam_star=None if lam_star is None else thr / lam_star)
    return CheckResult(report=rep, measured=bench, sim=rp, critical=cr)


def sim_latency_cdf(sim, which: int):
    """(x seconds, CDF) of the replayed latencies pooled over trials; ``which``: 1 TTFT, 2 E2E."""
    raw = sim.raw
    x = (raw.t_ttft if which == 1 else raw.t_done) - raw.t_enter
    x = np.sort(x[np.isfinite(x)].ravel())
    return x, (np.arange(1, x.size + 1) / x.size if x.size else np.full(0, np.nan))


def plot_latency_cdfs(res: CheckResult, path: str) -> str:
    """PNG of measured vs simulated TTFT and E2E CDFs (log time axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (name, which, x) in zip(axes, (("TTFT", 1, res.measured.ttfts), ("E2E", 2, res.measured.e2e))):
        lo, hi = [], []
        if x is not None and np.isfinite(x).any():
            xs = np.sort(np.maximum(x[np.isfinite(x)], 1e-4))
            ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label=f"measured ({xs.size} requests)")
            lo.append(xs[0])
            hi.append(xs[-1])
        sx, sy = sim_latency_cdf(res.sim, which)
        ax.step(sx, sy, where="post", label=f"replayed ({res.report['trials']} trial(s))")
        if np.isfinite(sy).any():
            lo.append(max(sx[0], 1e-4))
            hi.append(sx[-1])
        if lo:
            ax.set_xlim(0.5 * min(lo), 2.0 * max(hi))
        ax.set_xscale("log")
        ax.set_xlabel(f"{name} (s)")
        ax.set_ylabel("CDF")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    r = res.report
    fig.suptitle(f"{os.path.basename(r['source'])}: λ = {r['lam_rps'] if r['lam_rps'] is not None else math.inf:.4g}"
                 f" req/s, M = {r['M_tokens']:,}, ŝ = {r['prefill_chunk_tokens']}, b̄ = {r['b_s']:.4g} s — "
                 f"{r['verdict']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["CheckResult", "check", "plot_latency_cdfs", "sim_latency_cdf"]

"""check: a measured benchmark run beside the closed form and a simulation of the same server.

From one run of ``vllm bench serve`` / ``sglang.bench_serving`` (:func:`lqs.traces.load_benchmark_result`) and the
server's KV capacity M (given, or read from its start-up log), :func:`check` puts side by side

- the closed form of docs/model.md for the measured request lengths and b̄: μ, μ_exact, δ, ρ = λ/μ;
- the measured run: arrival rate λ (from ``start_times``: (n−1)/(t_last − t_first), with the standard error
  λ/√(n−1) of a Poisson process; else the offered ``request_rate``), throughput, TTFT and E2E p50/p99, the median
  inter-token gap;
- a simulation of the same server at the measured λ with the measured lengths (the run's (s, o) pairs,
  resampled) and the measured batch times (i.i.d. draws of the inter-token gaps, or b̄ every step);
- the long-run verdict at the measured λ from λ*, the saturation throughput of the same server
  (:func:`lqs.critical`): stable below its confidence interval, unstable above, undecided inside;
- for a saturated run (``request_rate`` infinite, or a backlog that grew: measured throughput below 0.9 × the
  arrival rate) the measured throughput against μ and λ*, the paper's Table 1 comparison. The simulated side
  is then the saturation run of :func:`lqs.critical`.

A benchmark is a finite run that starts empty; the simulation is the long run after a warm-up, so latencies
agree only where the run was long against its latencies.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ._errors import LqsError

SATURATION_FRACTION = 0.9  # measured throughput below this fraction of the arrival rate: the backlog grew
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
    """(Server, b_source, M_source, batch description)."""
    from ._batch import EmpiricalBatch
    from ._server import Server

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
        return server, "server", "server", f"as given by the server ({kind})"
    if M is not None and server_log is not None:
        raise LqsError("server_log", server_log, "give only one of M (tokens, --M) or server_log (--server-log)",
                       "both were given")
    if M is None and server_log is None:
        raise LqsError("M", None, "give M (tokens, --M) or server_log (a vLLM/SGLang log stating it, --server-log)")
    if server_log is not None:
        from .traces import kv_tokens_from_log

        M, M_source = kv_tokens_from_log(server_log), f"KV-cache size in {server_log}"
    else:
        M_source = "given"
    batch = ("empirical" if b is None and bench.b_samples is not None else "constant") if batch is None else batch
    if batch not in BATCH_MODELS:
        raise LqsError("batch", batch, "must be one of " + ", ".join(BATCH_MODELS))
    if b is None:
        if bench.b is None:
            raise LqsError("b", None, f"give b (seconds): {bench.trace.source} has no inter-token gaps (itls)")
        b, b_source = bench.b, bench.b_source
    else:
        b_source = "given"
    kw = dict(M=M, prefill_chunk=512 if prefill_chunk is None else prefill_chunk, policy=policy or "swap",
              token_budget=token_budget)
    if batch == "empirical":
        if bench.b_samples is None:
            raise LqsError("batch", batch, f"needs inter-token gaps (itls) in {bench.trace.source}; use constant")
        x = np.quantile(bench.b_samples, (np.arange(B_QUANTILES) + 0.5) / B_QUANTILES)
        srv = Server(b=EmpiricalBatch(x), b_theory=float(b), **kw)
        desc = (f"empirical: i.i.d. draws from the distribution of the {bench.b_samples.size} inter-token gaps "
                f"(mean {x.mean():.6g} s)")
    else:
        srv = Server(b=float(b), **kw)
        desc = f"constant: b̄ = {float(b):.6g} s every step"
    return srv, b_source, M_source, desc


def check(result, server=None, mc=None, *, run: int | None = None, M=None, server_log=None, prefill_chunk=None,
          b=None, b_estimator: str = "median", batch: str | None = None, policy: str | None = None,
          token_budget=None, key=None, progress: bool = False, **mc_fields) -> CheckResult:
    """A measured benchmark run beside the closed form and a simulation of the same server (module docstring).

    ``result``: a benchmark result file (vLLM or SGLang, ``run`` picks one of several) or an
    :class:`lqs.BenchmarkResult`. The server is ``server`` (an :class:`lqs.Server`, used as given) or built from
    ``M`` (tokens) or ``server_log``, ``prefill_chunk`` (default 512), b̄ (``b``, default: the ``b_estimator`` of
    the inter-token gaps), ``batch`` ('empirical': the simulated steps draw the gaps i.i.d., the default when
    the run has them; 'constant': b̄ every step), ``policy`` and ``token_budget``. ``mc``/``**mc_fields`` as in
    :func:`lqs.simulate`; the same Monte Carlo settings serve the simulation at λ and the λ* run.
    """
    import jax

    from ._server import resolve_mc
    from ._theory import capacity
    from .engine import critical, simulate
    from .traces import BenchmarkResult, load_benchmark_result

    bench = result if isinstance(result, BenchmarkResult) else load_benchmark_result(result, run, b_estimator=b_estimator)
    mc = resolve_mc(mc, mc_fields)
    server, b_source, M_source, batch_desc = _build_server(bench, server, M, server_log, prefill_chunk, b, batch,
                                                           policy, token_budget)
    server = server.require_scalar("check")
    tr = bench.trace
    tr.validate(server.M)
    wl = tr.workload()
    cap = capacity(wl, server)

    n = len(tr)
    lam, lam_source = tr.mean_rate_rps, "start_times"
    if lam is None and bench.request_rate is not None and math.isfinite(bench.request_rate):
        lam, lam_source = bench.request_rate, "request_rate"
        if lam <= 0:
            raise LqsError("request_rate", lam, f"must be > 0 (or inf): {tr.source} completed {n} requests, so they "
                                                "were offered at a positive rate; the file states no start_times "
                                                "to measure it from")
    if lam is None and not bench.saturated:
        raise LqsError("start_times", None, f"{tr.source} states neither start_times nor a finite request_rate: "
                                            "the arrival rate is unknown")
    lam_se = None if lam is None or lam_source != "start_times" else lam / math.sqrt(max(n - 1, 1))
    thr = bench.request_throughput
    if thr is None and bench.duration:
        thr = bench.completed / bench.duration
    offered = math.inf if bench.saturated else lam
    sat_reason = None
    if bench.saturated:
        sat_reason = "request_rate is infinite (all requests sent at once)"
    elif thr is not None and thr < SATURATION_FRACTION * lam:
        sat_reason = (f"the backlog grew: measured throughput {thr:.4g} req/s < {SATURATION_FRACTION:g} × the "
                      f"arrival rate {lam:.4g} req/s")

    key = jax.random.key(mc.seed) if key is None else key
    k_crit, k_sim = jax.random.split(key)
    cr = critical(wl, server, mc, key=k_crit, grid_points=0, progress=progress)
    lo, hi, lam_star = cr.summary["lam_star_lo_rps"], cr.summary["lam_star_hi_rps"], cr.summary["lam_star_rps"]
    if bench.saturated:
        verdict, vtext = "unstable", "unstable: the run offered requests without limit (λ = ∞ > λ*)"
    elif lam > hi:
        verdict, vtext = "unstable", f"unstable: λ = {lam:.4g} > λ* ∈ [{lo:.4g}, {hi:.4g}] req/s (the queue grows)"
    elif lam < lo:
        verdict, vtext = "stable", f"stable: λ = {lam:.4g} < λ* ∈ [{lo:.4g}, {hi:.4g}] req/s"
    else:
        verdict, vtext = "undecided", f"undecided: λ = {lam:.4g} inside λ*'s interval [{lo:.4g}, {hi:.4g}] req/s"

    if bench.saturated:
        sim, sim_source = cr.saturation, f"the saturation run of λ* (λ = {cr.summary['lam_saturation_rps']:.4g})"
    else:
        sim, sim_source = (simulate(wl, server, lam, mc, key=k_sim, progress=progress, verdict=False),
                           f"simulate at λ = {lam:.4g}")
    s = sim.summary.iloc[0]
    b_model = server.b
    sim_itl = float(np.median(np.asarray(b_model.samples, np.float64))) if hasattr(b_model, "samples") \
        else float(server.b_mean_s)

    rep = {"source": tr.source, "source_format": bench.source_format, "run": bench.run, "n_runs": bench.n_runs,
           "n_requests": n, "failed_requests": bench.failed,
           "M_tokens": server.M, "M_source": M_source, "prefill_chunk_tokens": server.prefill_chunk,
           "policy": server.policy, "b_s": server.b_mean_s, "b_source": b_source, "batch": batch_desc,
           "lam_rps": lam, "lam_se_rps": lam_se, "lam_source": lam_source if lam is not None else None,
           "request_rate_rps": bench.request_rate, "mu_rps": cap.mu_rps, "mu_exact_rps": cap.mu_exact_rps,
           "mu_stable_rps": cap.mu_stable_rps, "delta": cap.delta,
           "rho": (offered / cap.mu_rps) if offered is not None else None,
           "lam_star_rps": lam_star, "lam_star_lo_rps": lo, "lam_star_hi_rps": hi,
           "verdict": verdict, "verdict_text": vtext, "saturated": sat_reason is not None,
           "saturated_reason": sat_reason, "simulated": sim_source, "trials": int(s["trials"]),
           "steps": int(s["steps"]), "sim_reliable": bool(sim.reliable),
           "measured_throughput_rps": thr, "sim_throughput_rps": float(s["throughput_rps"]),
           "measured_ttft_p50_s": _q(bench.ttfts, 0.5), "sim_ttft_p50_s": float(s["ttft_p50_s"]),
           "measured_ttft_p99_s": _q(bench.ttfts, 0.99), "sim_ttft_p99_s": float(s["ttft_p99_s"]),
           "measured_e2e_p50_s": _q(bench.e2e, 0.5), "sim_e2e_p50_s": float(s["e2e_p50_s"]),
           "measured_e2e_p99_s": _q(bench.e2e, 0.99), "sim_e2e_p99_s": float(s["e2e_p99_s"]),
           "measured_ttft_missing": _missing(bench.ttfts), "measured_e2e_missing": _missing(bench.e2e),
           "measured_itl_median_s": bench.itl_median, "sim_itl_median_s": sim_itl,
           "sim_p_backlog_grows": float(s["p_backlog_grows"])}
    if sat_reason is not None and thr is not None:  # the paper's Table 1: measured saturation throughput vs theory
        rep.update(throughput_over_mu=thr / cap.mu_rps, throughput_over_mu_exact=thr / cap.mu_exact_rps,
                   throughput_over_lam_star=thr / lam_star)
    return CheckResult(report=rep, measured=bench, sim=sim, critical=cr)


def sim_latency_cdf(sim, which: int):
    """(x seconds, CDF) of the simulated latencies pooled over trials; ``which``: 0 wait, 1 TTFT, 2 E2E."""
    h = np.asarray(sim.hist, np.float64)[0, :, which, :].sum(0)
    edges = np.asarray(sim.engine_config.bin_edges, np.float64)
    upper = np.concatenate([edges, [edges[-1] * (edges[1] / edges[0])]])
    tot = h.sum()
    return upper, (np.cumsum(h) / tot if tot > 0 else np.full(upper.size, np.nan))


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
        ax.plot(sx, sy, label=f"simulated ({res.report['trials']} trials)")
        if np.isfinite(sy).any():
            lo.append(sx[np.argmax(sy >= 0.001)])
            hi.append(sx[np.argmax(sy >= 0.999)])
        else:  # every simulated request waited in the overflow queue: the backlog grew past the slots
            ax.text(0.03, 0.95, "no simulated latencies: the backlog grew\n(requests passed the overflow queue)",
                    transform=ax.transAxes, va="top", fontsize=9)
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

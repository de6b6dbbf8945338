"""``lqs check RESULT``: a vLLM/SGLang benchmark run beside the closed form and a simulation of the same server
at the measured rate, with the long-run verdict from λ* (:func:`lqs.measured.check`, docs/model.md)."""

from __future__ import annotations

import math
import os

import click

from .options import build_mc, console, echo_json, mc_options, output_options, parse_int, show_progress


@click.command("check")
@click.argument("result", metavar="RESULT")
@click.option("--M", "M", metavar="TOKENS", default=None,
              help="KV-cache capacity M in tokens (default: the file's server_info, or --server-log).")
@click.option("--server-log", "server_log", metavar="FILE", default=None,
              help="vLLM or SGLang server log: M is the KV-cache size it states.")
@click.option("--prefill-chunk", "--chunk", "prefill_chunk", metavar="TOKENS", default=None,
              help="Prefill chunk ŝ in tokens (default: as the file or log states, else the engine's default: "
                   "vLLM V1's is its token budget); --chunk is an alias.")
@click.option("--run", "run", metavar="N", default=None, help="Run (0-based) of a result file holding several.")
@click.option("--b", "b", metavar="SECONDS", default=None,
              help="Batch time b̄ (default: the --b-estimator of the run's per-request TPOTs).")
@click.option("--b-estimator", "b_estimator", metavar="mean|median|trimmed:ALPHA", default="median",
              show_default=True, help="How b̄ is estimated from the per-request TPOTs.")
@click.option("--batch", "--b-model", "batch", metavar="empirical|constant|SPEC", default=None,
              help="Simulated step times: i.i.d. draws of the inter-token gaps (empirical, the default when the "
                   "run has them), b̄ every step (constant), or a model spec such as the affine:A0,A1,A2,A3 that "
                   "lqs calibrate prints.")
@click.option("--frontend", "frontend", metavar="F0[,F1[,F2[,F3]]]", default=None,
              help="The replay's front end (lqs replay --frontend; lqs calibrate prints it). Default none.")
@click.option("--policy", "policy", metavar="swap|recompute|reserve", default=None,
              help="Preemption policy (default recompute, what vLLM V1 and SGLang do).")
@click.option("--token-budget", "token_budget", metavar="TOKENS", default=None,
              help="At most this many tokens per step (vLLM max_num_batched_tokens).")
@mc_options(K=True)
@output_options(out_help="Write check.json (the report) and latency_cdf.png (measured vs simulated TTFT and E2E "
                         "CDFs) here.")
def check_cmd(result, M, server_log, prefill_chunk, run, b, b_estimator, batch, frontend, policy, token_budget,
              progress, as_json, out, **opts):
    """A measured benchmark run (vllm bench serve --save-result --save-detailed, or sglang.bench_serving
    --output-details) beside the closed form (μ, μ_exact, δ, ρ) and a simulation of the same server at the
    measured arrival rate with the measured lengths and batch times; the long-run verdict at that rate from λ*;
    for a saturated run, measured throughput against μ and λ*.

    \b
    Examples:
      lqs check result.json --M 131072 --prefill-chunk 512
      lqs check result.jsonl --run 2 --server-log vllm_server.log --trials 32 --out runs/check
    """
    from .._errors import LqsError, parse_number
    from ..measured import check

    mc = build_mc(opts)
    from ..replay._replay import parse_frontend

    kw = dict(M=None if M is None else parse_number("M", M), server_log=server_log,
              prefill_chunk=None if prefill_chunk is None else parse_number("prefill_chunk", prefill_chunk),
              frontend=None if frontend is None else parse_frontend(frontend),
              b=None if b is None else parse_number("b", b), b_estimator=b_estimator, batch=batch, policy=policy,
              token_budget=None if token_budget is None else parse_number("token_budget", token_budget))
    res = check(result, mc=mc, run=None if run is None else parse_int("run", run, 0), progress=show_progress(progress),
                **kw)
    paths = res.save(out) if out else None
    if as_json:
        echo_json(res.to_dict())
        return
    _print(res.report, paths)


def _f(x, nd=4, unit=""):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{nd}g}{unit}"


def _print(r: dict, paths):
    from rich.markup import escape
    from rich.table import Table

    con = console()
    lam = "—" if r["lam_rps"] is None else f"{r['lam_rps']:.4f}" + (
        f" ± {1.96 * r['lam_se_rps']:.4f}" if r["lam_se_rps"] else "")
    con.print(f"lqs check — {escape(r['source'])}" + (f" (run {r['run']} of {r['n_runs']})" if r["n_runs"] > 1 else "")
              + f": {r['source_format']}, {r['n_requests']:,} requests"
              + (f" ({r['failed_requests']:,} failed, left out)" if r["failed_requests"] else ""))
    con.print(f"run kind: {escape(r['run_kind_text'])}")
    con.print(f"server: M = {r['M_tokens']:,} tokens ({escape(str(r['M_source']))}), ŝ = {r['prefill_chunk_tokens']}, "
              f"budget = {r['token_budget']}, running cap = {r['max_running']}, block = {r['block_size_tokens']}, "
              f"b̄ = {r['b_s']:.6g} s ({escape(str(r['b_source']))}), {r['policy']}")
    con.print(f"replayed step times: {escape(r['batch'])}; front end f0,f1[,f2[,f3]] = {r.get('frontend') or '0,0'}")
    t = Table(title="measured vs replayed", title_justify="left")
    for c in ("quantity", "measured", "replayed"):
        t.add_column(c, justify="left" if c == "quantity" else "right")
    if r["run_kind"] == "open":
        t.add_row("arrival rate λ (req/s)", lam, lam)
    t.add_row("duration (s)", _f(r["measured_duration_s"]), _f(r["sim_duration_s"]))
    t.add_row("throughput (req/s)", _f(r["measured_throughput_rps"]), _f(r["sim_throughput_rps"]))
    grows = r["sim_p_backlog_grows"] > 0.5
    for k, name in (("ttft_p50_s", "TTFT p50 (s)"), ("ttft_p99_s", "TTFT p99 (s)"), ("e2e_p50_s", "E2E p50 (s)"),
                    ("e2e_p99_s", "E2E p99 (s)")):
        t.add_row(name, _f(r["measured_" + k]), _f(r["sim_" + k]) + (" (grows)" if grows else ""))
    t.add_row("median inter-token gap (s)", _f(r["measured_itl_median_s"]), _f(r["sim_itl_median_s"]))
    con.print(t)
    th = Table(title="theory and λ* of this server", title_justify="left")
    th.add_column("quantity")
    th.add_column("req/s", justify="right")
    th.add_row("μ (paper closed form)", f"{r['mu_rps']:.4f}")
    th.add_row("μ_exact", f"{r['mu_exact_rps']:.4f}")
    th.add_row("μ(1−δ) guaranteed stable below", f"{r['mu_stable_rps']:.4f}   (δ = {r['delta']:.4f})")
    if r["lam_star_rps"] is not None:
        th.add_row("λ* (simulated saturation throughput)",
                   f"{r['lam_star_rps']:.4f}  [{r['lam_star_lo_rps']:.4f}, {r['lam_star_hi_rps']:.4f}]")
    else:
        th.add_row("λ* (not simulated: the closed form's band)",
                   f"[{r['lam_star_lo_rps']:.4f}, {r['lam_star_hi_rps']:.4f}]")
    th.add_row("ρ = λ/μ", _f(r["rho"]))
    con.print(th)
    style = {"stable": "green", "undecided": "yellow", "unstable": "bold red"}.get(r["verdict"], "cyan")
    con.print(f"verdict at the measured rate: [{style}]{escape(r['verdict_text'])}[/]")
    if r.get("lam_star_note"):
        con.print(f"[yellow]{escape(r['lam_star_note'])}[/]")
    if r["saturated"]:
        con.print(f"saturated run: {escape(r['saturated_reason'])}")
        if "throughput_over_mu" in r:
            con.print(f"  measured throughput {r['measured_throughput_rps']:.4f} req/s = "
                      f"{r['throughput_over_mu']:.4f} μ = {r['throughput_over_mu_exact']:.4f} μ_exact = "
                      + (f"{r['throughput_over_lam_star']:.4f} λ*" if r.get("throughput_over_lam_star") is not None
                         else "(λ* not simulated)") + "  (the paper's Table 1 comparison)")
    con.print(f"replayed: {escape(r['simulated'])}"
              + ("" if r["sim_reliable"] else " — [bold red]UNRELIABLE[/] (a trial did not finish)"))
    if not r.get("critical_reliable", True):
        con.print("[bold red]λ* UNRELIABLE[/]: a capacity limit was hit in the λ* run (raise --K)")
    for k, what in (("measured_ttft_missing", "TTFT"), ("measured_e2e_missing", "E2E latency")):
        if r.get(k):
            con.print(f"note: {r[k]} successful request(s) state no {what} (null / NaN); the measured {what} "
                      "percentiles leave them out")
    if paths:
        con.print(f"wrote {os.path.abspath(paths['report'])}, {os.path.abspath(paths['plot'])}")

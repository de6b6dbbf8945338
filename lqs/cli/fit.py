"""``lqs fit lengths TRACE`` and ``lqs fit batch STEPLOG``: models fitted to measurements with optax
(:func:`lqs.fit_lengths`, :func:`lqs.fit_batch`; docs/model.md, "Workload" and "Batch time")."""

from __future__ import annotations

import os

import click

from .options import console, echo_json, output_options, parse_int


@click.group("fit")
def fit_group():
    """Fit models to measurements: a length model (a workload every command accepts) or an affine batch time.

    \b
    Examples:
      lqs fit lengths azure-conv --prefill-chunk 512 --out fits/conv     # then: --workload fits/conv/length_model.json
      lqs fit batch steps.csv --out fits/batch                           # prints the --b-model affine:... spec
    """


@fit_group.command("lengths")
@click.argument("trace", metavar="TRACE")
@click.option("--prefill-chunk", "--chunk", "prefill_chunk", metavar="TOKENS", default="512", show_default=True,
              help="Prefill chunk ŝ for E[g] (the model matches E[g] and E[g_exact] at this ŝ); --chunk is an alias.")
@click.option("--components", metavar="K", default="10", show_default=True,
              help="Bivariate log-normal components of the mixture.")
@click.option("--M", "M", metavar="TOKENS", default=None, help="KV-cache capacity M: the report adds δ = max(s+o)/M.")
@click.option("--quantiles", metavar="N", default="19", show_default=True,
              help="Quantiles of each marginal whose CDF the model matches exactly (0: moments only).")
@click.option("--steps", metavar="N", default="2000", show_default=True, help="Adam steps of the likelihood fit.")
@click.option("--seed", metavar="INT", default="0", show_default=True, help="Seed of the start and dequantisation.")
@click.option("--s-col", "s_col", metavar="COL", default=None, help="Trace column of prompt lengths s.")
@click.option("--o-col", "o_col", metavar="COL", default=None, help="Trace column of output lengths o.")
@click.option("--run", "run", metavar="N", default=None, help="Run (0-based) of a benchmark result file.")
@output_options(out_help="Write length_model.json (accepted by --workload FILE everywhere), length_fit.json (this "
                         "report) and length_fit.png (fitted vs observed marginals and joint) here.")
def lengths_cmd(trace, prefill_chunk, components, M, quantiles, steps, seed, s_col, o_col, run, as_json, out):
    """Fit a mixture of bivariate log-normals to a trace's (prompt, output) lengths, under the constraint that
    E[s], E[o], E[g], E[g_exact] (at ŝ) and max s+o equal the trace's; report the per-marginal
    Kolmogorov–Smirnov distances and the E[g] error.

    TRACE is a trace file (CSV, JSONL, Parquet), a vLLM/SGLang benchmark result, or azure-conv / azure-code.
    """
    from ..fit import fit_lengths
    from ..traces import load_trace

    tr = load_trace(trace, s_col=s_col, o_col=o_col, run=None if run is None else parse_int("run", run, 0))
    fit = fit_lengths(tr, parse_int("prefill_chunk", prefill_chunk, 1), parse_int("components", components, 1, 64),
                      M=None if M is None else parse_int("M", M, 1), quantiles=parse_int("quantiles", quantiles, 0, 200),
                      steps=parse_int("steps", steps, 1), seed=parse_int("seed", seed, 0))
    rep = _saved_report(fit, out)
    if as_json:
        echo_json(rep)
        return
    from rich.table import Table

    from rich.markup import escape

    con = console()
    con.print(f"lqs fit lengths — {escape(rep['trace'])} ({rep['n_requests']:,} requests), ŝ = "
              f"{rep['prefill_chunk_tokens']}")
    t = Table()
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("components", str(rep["components"]))
    t.add_row(escape("E[g] trace (tokens²)"), f"{rep['mean_g_trace_tokens2']:,.1f}")
    t.add_row(escape("E[g] model (tokens²)"), f"{rep['mean_g_model_tokens2']:,.1f}")
    t.add_row(escape("E[g] relative error"), f"{100 * rep['mean_g_rel_err']:.2g} %")
    t.add_row("KS distance, prompt s", f"{rep['ks_s']:.4f}")
    t.add_row("KS distance, output o", f"{rep['ks_o']:.4f}")
    t.add_row("max s+o (tokens)", f"{rep['max_total_tokens']:,}")
    if rep["delta"] is not None:
        t.add_row(f"δ = max(s+o)/M (M = {rep['M_tokens']:,})", f"{rep['delta']:.4f}")
    t.add_row("log-likelihood per request", f"{rep['loglik_per_request']:.4f}")
    t.add_row("tilt KL (nats)", f"{rep['tilt_kl']:.4g}")
    t.add_row("support points", f"{rep['support_points']:,}")
    t.add_row("fit time (s)", f"{rep['fit_s']:.1f}")
    con.print(t)
    if "files" in rep:
        con.print(f"wrote {os.path.abspath(out)}/ (length_model.json, length_fit.json, length_fit.png)")
        con.print(f"use it as a workload: --workload {rep['files']['model']}  (scale with --prompt-scale/--output-scale)")


@fit_group.command("batch")
@click.argument("steplog", metavar="STEPLOG")
@click.option("--time-col", "time_col", metavar="COL", default=None,
              help="Step-time column (seconds; a _ms/_us/_ns suffix gives the unit). Default: found by name.")
@click.option("--prefill-col", "prefill_col", metavar="COL", default=None, help="Prefill tokens of the step.")
@click.option("--decode-col", "decode_col", metavar="COL", default=None, help="Decode tokens of the step.")
@click.option("--mem-col", "mem_col", metavar="COL", default=None,
              help="KV memory in use (tokens); optional (a3 = 0 without it).")
@click.option("--huber-delta", "huber_delta", metavar="SECONDS", default=None,
              help="Huber loss threshold (default: 1.345 robust standard deviations of a least-squares start).")
@click.option("--steps", metavar="N", default="3000", show_default=True, help="Adam steps.")
@output_options(out_help="Write batch_fit.json (this report) and batch_fit.png (measured vs fitted step times) here.")
def batch_cmd(steplog, time_col, prefill_col, decode_col, mem_col, huber_delta, steps, as_json, out):
    """Fit the affine batch time b = a0 + a1·prefill tokens + a2·decode tokens + a3·memory in use (robust Huber
    loss, coefficients ≥ 0) to a step log (CSV, JSONL or Parquet, one row per engine step), and print the
    --b-model spec to use."""
    from .._errors import parse_number
    from ..fit import fit_batch

    fit = fit_batch(steplog, time_col=time_col, prefill_col=prefill_col, decode_col=decode_col, mem_col=mem_col,
                    steps=parse_int("steps", steps, 1),
                    huber_delta=None if huber_delta is None else float(parse_number("huber_delta", huber_delta)))
    rep = _saved_report(fit, out)
    if as_json:
        echo_json(rep)
        return
    from rich.table import Table

    t = Table(title=f"lqs fit batch — {rep['source']} ({rep['n_steps']:,} steps)", title_justify="left")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("a0 (s)", f"{rep['a0_s']:.6g}")
    t.add_row("a1 (s per prefill token)", f"{rep['a1_s_per_prefill_token']:.6g}")
    t.add_row("a2 (s per decode token)", f"{rep['a2_s_per_decode_token']:.6g}")
    t.add_row("a3 (s per token of memory)", f"{rep['a3_s_per_memory_token']:.6g}")
    t.add_row("R²", f"{rep['r2']:.4f}")
    for q, v in rep["residual_quantiles_s"].items():
        t.add_row(f"residual {q} (s)", f"{v:.4g}")
    t.add_row("columns", ", ".join(f"{k}={v}" for k, v in rep["columns"].items() if v is not None))
    t.add_row("fit time (s)", f"{rep['fit_s']:.1f}")
    con = console()
    con.print(t)
    con.print(f"use it: --b-model {rep['spec']}")
    if "files" in rep:
        con.print(f"wrote {os.path.abspath(out)}/ (batch_fit.json, batch_fit.png)")


def _saved_report(fit, out) -> dict:
    """The fit's report, with the files written when ``out`` is given."""
    paths = fit.save(out) if out else None
    rep = fit.to_dict()
    if paths:
        rep["files"] = paths
    return rep

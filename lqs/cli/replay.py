"""``lqs replay RESULT`` (a benchmark run simulated as it ran) and ``lqs calibrate RESULT...`` (the batch-time
model that makes replays reproduce measured runs): :mod:`lqs.replay`, docs/model.md "Replaying a benchmark"."""

from __future__ import annotations

import math
import os

import click

from .options import console, echo_json, output_options, parse_int, show_progress


def real_server_options(f):
    """The server of a measured run: every field optional (the file, the log and the engine's defaults)."""
    opts = [
        click.option("--M", "M", metavar="TOKENS", default=None, help="KV-cache capacity M in tokens (default: the "
                     "file's server_info or --server-log)."),
        click.option("--server-log", "server_log", metavar="FILE", default=None,
                     help="vLLM (0.6–0.18) or SGLang server log: M, token budget, running-request cap, block size."),
        click.option("--prefill-chunk", "--chunk", "prefill_chunk", metavar="TOKENS", default=None,
                     help="Prefill chunk ŝ (default: as stated, else the engine's default)."),
        click.option("--token-budget", "token_budget", metavar="TOKENS", default=None,
                     help="Tokens per step (vLLM max_num_batched_tokens)."),
        click.option("--max-running", "max_running", metavar="N", default=None,
                     help="Running-request cap (vLLM max_num_seqs, SGLang max_running_requests)."),
        click.option("--block-size", "block_size", metavar="TOKENS", default=None,
                     help="KV block size (vLLM block_size, SGLang page_size)."),
        click.option("--policy", "policy", metavar="swap|recompute|reserve", default=None,
                     help="Preemption policy (default for vLLM and SGLang sources: recompute)."),
        click.option("--chunking", "chunking", metavar="auto|budget|fixed", default="auto", show_default=True,
                     help="budget: a prompt takes what the token budget leaves (vLLM V1, SGLang); fixed: whole "
                          "chunks of ŝ."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _server_kw(opts: dict) -> dict:
    return {k: opts.pop(k) for k in ("M", "server_log", "prefill_chunk", "token_budget", "max_running",
                                     "block_size", "policy") if opts.get(k) is not None}


@click.command("replay")
@click.argument("result", metavar="RESULT")
@click.option("--run", "run", metavar="N", default=None, help="Run (0-based) of a file holding several.")
@real_server_options
@click.option("--b", "b", metavar="SECONDS", default=None, help="b̄ (default: the median per-request TPOT).")
@click.option("--b-model", "b_model", metavar="SPEC", default=None,
              help="Batch-time model: constant, constant:B, affine:A0,A1,A2,A3 (lqs calibrate prints one), "
                   "lognormal:CV or empirical.")
@click.option("--frontend", "frontend", metavar="F0[,F1[,F2[,F3]]]", default="0",
              help="Front end: an event loop takes entering requests one at a time, F2 s each, then a tokeniser, "
                   "F3·s s each (s its prompt tokens); a request can be scheduled F0 + F1·n s after that (n in the "
                   "server); outputs reach the client once the event loop is through.")
@click.option("--arrivals", "arrivals", metavar="auto|recorded|poisson|gamma|burst", default="auto",
              show_default=True, help="How the client issued the requests (auto: as the file states).")
@click.option("--concurrency", "concurrency", metavar="C|file|none", default="file", show_default=True,
              help="Client cap on requests in flight (file: its max_concurrency).")
@click.option("--trials", "trials", metavar="N", default="16", show_default=True,
              help="Trials (arrival and batch-time draws; 1 when both are deterministic).")
@click.option("--seed", "seed", metavar="N", default="0", show_default=True)
@click.option("--progress/--no-progress", "progress", default=None)
@output_options(out_help="Write replay.json, replay_trials.csv and replay.png (per-request TTFT and E2E) here.")
def replay_cmd(result, run, b, b_model, frontend, arrivals, concurrency, trials, seed, chunking, progress, as_json,
               out, **opts):
    """A benchmark run (vllm bench serve --save-result [--save-detailed], sglang.bench_serving) simulated as it
    ran: its requests in file order, issued as its client issued them (open loop, closed loop through
    --max-concurrency, or a burst), into the server it states, until every request completes.

    \b
    Examples:
      lqs replay result.json --M 418784
      lqs replay result.jsonl --server-log vllm.log --b-model affine:0.003,7e-6,3e-5,7e-9 --out runs/replay
    """
    from ..replay import replay

    conc = concurrency.strip().lower()
    conc = "file" if conc == "file" else (None if conc == "none" else parse_int("concurrency", conc, 1))
    res = replay(result, run=None if run is None else parse_int("run", run, 0), trials=parse_int("trials", trials, 1),
                 seed=parse_int("seed", seed, 0), arrivals=arrivals, concurrency=conc, frontend=frontend,
                 chunking=chunking, b=b, b_model=b_model, progress=show_progress(progress), **_server_kw(opts))
    paths = res.save(out) if out else None
    if as_json:
        echo_json(res.to_dict())
        return
    print_replay(res.report, paths)


def _f(x, nd=4):
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}g}"


def print_replay(r: dict, paths=None):
    from rich.markup import escape
    from rich.table import Table

    con = console()
    con.print(f"lqs replay — {escape(r['source'])}: {r['source_format']}, {r['n_requests']:,} requests")
    con.print(f"run kind: {escape(r['run_kind_text'])}; replayed arrivals: {escape(r['arrivals'])}")
    con.print(f"server: M = {r['M_tokens']:,}, ŝ = {r['prefill_chunk_tokens']}, budget = {r['token_budget']}, "
              f"running cap = {r['max_running']}, block = {r['block_size_tokens']}, {r['policy']}, chunking "
              f"{r['chunking']}; batch time {escape(r['b_model'])}; front end {r['frontend']}")
    for k, v in r["sources"].items():
        con.print(f"  {k}: {escape(str(v))}", style="dim")
    t = Table(title=f"measured vs replayed ({r['trials']} trial(s); ± one standard deviation across trials)",
              title_justify="left")
    for c in ("quantity", "measured", "replayed"):
        t.add_column(c, justify="left" if c == "quantity" else "right")
    t.add_row("duration (s)", _f(r["measured_duration_s"]), _f(r["replay_duration_s"]) + _sd(r["replay_duration_sd_s"]))
    t.add_row("throughput (req/s)", _f(r["measured_throughput_rps"]),
              _f(r["replay_throughput_rps"]) + _sd(r["replay_throughput_rps_sd"]))
    for m in ("ttft", "tpot", "itl", "e2e"):
        for q in (50, 90, 99):
            k = f"{m}_p{q}_s"
            t.add_row(f"{m.upper()} p{q} (s)", _f(r["measured_" + k]),
                      _f(r["replay_" + k]) + _sd(r["replay_" + k[:-2] + "_sd_s"]))
    if r.get("measured_ttft_unqueued_p50_s") is not None or r.get("replay_ttft_unqueued_p50_s") is not None:
        t.add_row("TTFT p50, not queued behind a prompt (s)", _f(r["measured_ttft_unqueued_p50_s"]),
                  _f(r["replay_ttft_unqueued_p50_s"]))
    t.add_row("peak requests in the server", "", str(r["replay_peak_concurrency"]))
    con.print(t)
    if r.get("measured_queue_grew") is not None:
        con.print("measured: " + ("the queue grew (TTFT rose across the run)" if r["measured_queue_grew"]
                                  else "no queue growth (TTFT flat across the run)"))
    for n in r["notes"]:
        con.print(f"note: {escape(n)}")
    if not r["reliable"]:
        con.print("[bold red]UNRELIABLE[/]: a trial did not finish or broke an invariant")
    if paths:
        con.print("wrote " + ", ".join(os.path.abspath(p) for p in paths.values()))


def _sd(x):
    return "" if not x else f" ± {x:.2g}"


@click.command("calibrate")
@click.argument("results", metavar="RESULT...", nargs=-1, required=True)
@real_server_options
@click.option("--model", "model", metavar="affine|constant", default="affine", show_default=True)
@click.option("--no-frontend", "no_frontend", is_flag=True, help="Do not fit a front-end delay.")
@click.option("--fit", "fit", metavar="I,J,...", default=None,
              help="0-based indices of the runs to fit (default: the lowest-load third of each ladder).")
@click.option("--iterations", "iterations", metavar="N", default="14", show_default=True)
@click.option("--population", "population", metavar="N", default="48", show_default=True,
              help="Candidate parameter sets per iteration (replayed together in one vmapped program).")
@click.option("--seed", "seed", metavar="N", default="0", show_default=True)
@click.option("--progress/--no-progress", "progress", default=None)
@output_options(out_help="Write calibration.json and runs.csv here.")
def calibrate_cmd(results, model, no_frontend, fit, iterations, population, seed, chunking, progress, as_json, out,
                  **opts):
    """Fit the batch-time model (constant b̄, or affine a0..a3 ≥ 0) and a front-end delay so that replays of the
    given runs reproduce their measured TTFT and TPOT quantiles and throughput; predict the runs not fitted.

    \b
    Example:
      lqs calibrate runs/c10.json runs/c25.json runs/c50.json runs/c200.json --M 418784
    """
    from ..replay import calibrate

    idx = None if fit is None else [parse_int("fit", x, 0) for x in fit.split(",") if x.strip()]
    res = calibrate(list(results), fit=idx, model=model, frontend=not no_frontend,
                    iterations=parse_int("iterations", iterations, 1), population=parse_int("population", population, 8),
                    seed=parse_int("seed", seed, 0), chunking=chunking, progress=show_progress(progress),
                    **_server_kw(opts))
    paths = res.save(out) if out else None
    if as_json:
        echo_json(res.to_dict())
        return
    from rich.markup import escape
    from rich.table import Table

    con = console()
    ens = res.report["ensemble"]
    con.print(f"lqs calibrate — {len(results)} run(s); loss {res.loss:.4g} (Σ squared log ratios)")
    con.print(f"use: --b-model {res.b_model} --frontend {res.frontend}  (the best fit)")
    con.print(f"predictions: the likelihood-weighted geometric mean over the {ens['size']} parameter set(s) the fitted runs allow (loss ≤ "
              f"{ens['loss_threshold']:.4g}, the {100 * ens['confidence']:.0f} % joint region), with their range")
    for st in res.report["decode_steps"]:
        fitted = "" if st["fitted_s"] is None else f", best fit {1e3 * st['fitted_s']:.2f} ms"
        con.print(f"decode-only steps of run {st['run']}: n = {st['n']:.0f}, KV {st['kv_tokens']:,.0f} tokens: "
                  f"measured {1e3 * st['measured_s']:.2f} ms{fitted}"
                  + ("" if not st["kept_up"] else " (one token per streamed chunk: n·f1 ≤ the step)"))
    t = Table(title="measured / lqs (error), and [the range over the parameter sets]", title_justify="left")
    for c in ("run", "role", "throughput (req/s)", "TTFT p50 (s)", "TPOT p50 (s)", "E2E p50 (s)"):
        t.add_column(c, justify="left" if c in ("run", "role") else "right")
    undetermined = []
    for row in res.runs.to_dict(orient="records"):
        cells = []
        for m in ("throughput_rps", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s"):
            e = row["error_" + m]
            cells.append(f"{_f(row['measured_' + m], 3)} / {_f(row['replay_' + m], 3)}"
                         + ("" if e is None else f" ({100 * e:+.0f} %)")
                         + f"\n[{_f(row['replay_' + m + '_lo'], 3)}, {_f(row['replay_' + m + '_hi'], 3)}]")
        t.add_row(escape(os.path.basename(row["source"])), row["role"], *cells)
        if row["predicted"] and not row["ttft_determined"]:
            undetermined.append(os.path.basename(row["source"]))
    con.print(t)
    if undetermined:
        con.print("note: the fitted runs leave the TTFT of " + escape(", ".join(undetermined)) + " open (its range "
                  "spans more than a factor 1.5, or its decode batches exceed the fitted ones more than 2× and a "
                  "decode time over 3× the TTFT moves it): fit a run at that load to pin it down")
    if paths:
        con.print("wrote " + ", ".join(os.path.abspath(p) for p in paths.values()))

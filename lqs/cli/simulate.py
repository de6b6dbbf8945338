"""``lqs simulate``: the Monte Carlo engine at one λ or a grid of λ (docs/model.md, "What is measured")."""

from __future__ import annotations

import os

import click
import numpy as np

from .arrivals import arrival_options, build_arrivals
from .options import (build_mc, build_server, console, echo_json, mc_options, output_options, parse_lams,
                      resolve_workload, server_options, show_progress, workload_options)


@click.command("simulate")
@workload_options
@server_options()
@arrival_options()
@click.option("--lam", "lam", metavar="RATE|R1,R2,..|LO:HI:N", default=None,
              help="Arrival rate(s) of the whole deployment, requests per second.")
@mc_options()
@click.option("--verdict/--no-verdict", "verdict", default=True, show_default=True,
              help="Decide each λ in the long run against the saturation throughput λ* of the same configuration "
                   "(one extra saturation run per configuration).")
@output_options(out_help="Write trials and summary (parquet + CSV), config.json (server, Monte Carlo settings, "
                         "engine sizing), series.npz and waiting.png here.")
def simulate_cmd(lam, progress, as_json, out, verdict, **opts):
    """Monte Carlo of the serving queue: --trials independent repetitions at each λ of a grid.

    \b
    Examples:
      lqs simulate --workload pd-1:1 --M 131000 --prefill-chunk 512 --b 0.0372 --lam 3.0
      lqs simulate --workload pd-1:1 --M 131000 --prefill-chunk 512 --b 0.0372 --lam 2.5:4:7 --out runs/pd11
      lqs simulate --trace azure-conv --M 131000 --prefill-chunk 512 --b 0.0372 --lam 5 --policy recompute
    """
    from .. import simulate

    server, bb = build_server(opts)
    mc = build_mc(opts)
    wl = resolve_workload(**{**opts, "M": server.M})
    lams = parse_lams(lam)
    arrivals = build_arrivals(opts)
    res = simulate(wl.workload, server, lams, mc, progress=show_progress(progress), verdict=verdict,
                   arrivals=arrivals)
    res.config["workload_label"] = wl.label
    res.config["seed"] = mc.seed
    if out:
        res.save(out)
    if as_json:
        echo_json(dict(workload=wl.label, b_source=bb.source, M_source=bb.M_source, reliable=res.reliable,
                       server=server.describe(), arrivals=res.config["arrivals"],
                       monte_carlo=mc.describe(), summary=res.summary.to_dict(orient="records")))
        return
    _print_sim(res, wl.label, out)
    if bb.source != "given" or bb.M_source != "given":
        console().print(f"b̄ = {bb.b_s:.6g} s ({bb.source}); M = {server.M:,} tokens ({bb.M_source})")


_STYLE = {"stable": "green", "unstable": "bold red", "undecided": "yellow", "n/a": "dim"}


def _print_sim(res, label, out_dir):
    from rich.table import Table

    con = console()
    s = res.summary
    r0 = s.iloc[0]
    has_verdict = "verdict" in s.columns
    t = Table(title=f"lqs simulate — {label}, M={r0.M_tokens}, ŝ={r0.prefill_chunk_tokens}, b̄={r0.b_s:.4g} s, "
                    f"{r0.policy}, {r0.trials} trials × {r0.steps} steps"
                    + (f", {r0.servers} servers ({r0.routing})" if r0.get("servers", 1) > 1 else "")
                    + (f", {res.config['arrivals']} arrivals" if res.config.get("arrivals", "Poisson") != "Poisson"
                       else ""))
    cols = ["λ (req/s)", "ρ = λ/μ"] + (["verdict", "λ* (req/s)"] if has_verdict else []) + [
        "backlog grew", "throughput (req/s)", "KV util", "wait p50 (s)", "wait p99 (s)", "TTFT p99 (s)",
        "E2E p99 (s)", "reliable"]
    for col in cols:
        t.add_column(col, justify="right")
    for _, r in s.iterrows():
        unstable = r.verdict == "unstable" if has_verdict else r.p_backlog_grows > 0.5
        row = [f"{r.lam_rps:.4g}", _f(r.rho, "{:.3f}")]
        if has_verdict:
            row += [f"[{_STYLE.get(r.verdict, '')}]{r.verdict}[/]",
                    "—" if not np.isfinite(r.lam_star_rps) else
                    f"{r.lam_star_rps:.4g} ± {(r.lam_star_hi_rps - r.lam_star_lo_rps) / 2:.2g}"]
        row += [f"{r.p_backlog_grows:.0%}", f"{r.throughput_rps:.4f} ± {1.96 * r.throughput_se_rps:.2g}",
                f"{r.mem_util:.3f}",
                *((_f(r.wait_p50_s), _f(r.wait_p99_s), _f(r.ttft_p99_s), _f(r.e2e_p99_s)) if not unstable
                  else ("[red]grows[/]",) * 4),
                "yes" if r.reliable else "[bold red]NO[/]"]
        t.add_row(*row)
    con.print(t)
    con.print(f"theory: μ = {r0.mu_rps:.4f}, μ_exact = {r0.mu_exact_rps:.4f}, stable below μ(1−δ) = "
              f"{r0.mu_stable_rps:.4f} req/s, δ = {r0.delta:.4f}")
    if has_verdict:
        bad = s.lam_rps[s.verdict == "unstable"]
        if len(bad):
            con.print(f"[bold red]UNSTABLE[/] at λ = {', '.join(f'{x:.4g}' for x in bad)} req/s: above the "
                      "saturation throughput λ* of this configuration, the queue grows without bound (latency "
                      "percentiles there only describe the horizon simulated, so they are not shown).")
        if (s.verdict == "undecided").any():
            con.print("[yellow]undecided[/]: λ lies inside λ*'s confidence interval (or the saturation run was "
                      "unreliable); more --trials narrow it.")
        con.print("verdict: the long run, λ against λ* of the same configuration (docs/model.md); backlog grew: "
                  "share of trials whose queue visibly grew within the simulated horizon (not a verdict).")
    else:
        con.print("no long-run verdict (--no-verdict); backlog grew: share of trials whose queue visibly grew "
                  "within the simulated horizon.")
    if not res.reliable:
        con.print("[bold red]UNRELIABLE:[/] a capacity limit was hit (see starved_steps / arrival_cap_hits / "
                  "violations in the tables); raise --K.")
    if not bool(s.latency_reliable.all()):
        con.print("note: some requests passed through the overflow queue, so their latencies are not in the "
                  "percentiles (latency_lost).")
    if out_dir:
        con.print(f"wrote {os.path.abspath(out_dir)}/ (trials, summary, config.json, series.npz, waiting.png)")


def _f(x, fmt="{:.3g}"):
    return "—" if x is None or not np.isfinite(x) else fmt.format(x)

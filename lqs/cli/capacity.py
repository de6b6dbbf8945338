"""``lqs capacity``: the closed form (μ, μ_exact, E[g], δ, the stable and unstable ranges) and, with --lam, the
closed-form verdict and the servers needed for a target utilisation; with --simulate, the simulated critical rate
λ* (saturation throughput, 95 % interval) beside it and the long-run verdict at λ."""

from __future__ import annotations

import math

import click

from .options import build_server, echo_json, output_options, parse_float, resolve_workload, server_options, \
    workload_options

VERDICT_STABLE = "stable (guaranteed, λ < μ(1−δ))"
VERDICT_BAND = "in the uncertain band μ(1−δ) ≤ λ ≤ μ — simulate it (--simulate)"
VERDICT_UNSTABLE = "UNSTABLE (λ > μ): the queue grows without bound"


def verdict(lam: float, mu: float, mu_stable: float) -> tuple[str, str]:
    """(code, text) of the closed-form verdict: 'stable' if λ < μ(1−δ), 'unstable' if λ > μ, else 'uncertain'."""
    if lam < mu_stable:
        return "stable", VERDICT_STABLE
    if lam > mu:
        return "unstable", VERDICT_UNSTABLE
    return "uncertain", VERDICT_BAND


def simulated_report(crit, lam=None) -> dict:
    """λ* of ``lqs.critical`` and, with ``lam``, the long-run verdict there (docs/model.md)."""
    from ..engine import verdict_at

    s = crit.summary
    out = dict(lam_star_rps=s["lam_star_rps"], lam_star_lo_rps=s["lam_star_lo_rps"],
               lam_star_hi_rps=s["lam_star_hi_rps"], lam_star_over_mu_exact=s["lam_star_over_mu_exact"],
               lam_star_method=s["lam_star_method"], sim_trials=s["trials"], sim_steps=s["steps"],
               sim_reliable=s["reliable"], sim_wall_s=crit.saturation.config["timing"]["wall_s"])
    if lam is not None:
        out["sim_verdict"] = verdict_at(crit, lam)
        out["sim_verdict_basis"] = (f"saturation rule: λ = {lam:g} against λ* of this server "
                                    f"({s['trials']} trials × {s['steps']:,} steps)")
    return out


def capacity_report(wl, cap, bb, lam=None, rho_target=0.9) -> dict:
    """The JSON object of ``lqs capacity`` (snake_case keys, units in the names). Rates are the whole
    deployment's (``servers`` instances); ``rho`` = λ/μ; ``servers_needed`` = ⌈λ/(μ₁·ρ_target)⌉ with
    μ₁ = μ/servers the rate of one instance."""
    from .._theory import servers_needed

    out = {"workload": wl.label}
    out.update(cap.to_dict())
    out["b_source"] = bb.source
    if bb.M_source is not None:
        out["M_source"] = bb.M_source
    if bb.estimator is not None:
        out["b_estimator"] = bb.estimator
        out["b_samples_n"] = bb.n_samples
    if wl.trace is not None:
        out["trace_requests"] = len(wl.trace)
        out["trace_mean_rate_rps"] = wl.trace.mean_rate_rps
        out["trace_failed_requests"] = wl.trace.failed
    if lam is not None:
        code, text = verdict(lam, cap.mu_rps, cap.mu_stable_rps)
        out.update(lam_rps=lam, rho=lam / cap.mu_rps, rho_target=rho_target, verdict=text, verdict_code=code,
                   servers_needed=servers_needed(lam, cap.mu_rps / cap.servers, rho_target))
    return out


def _fmt(x, nd=4):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:,.{nd}f}"


def _print_table(rep: dict):
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"lqs capacity — {rep['workload']}", box=box.SIMPLE_HEAVY, show_header=True,
              title_justify="left")
    t.add_column("quantity", style="bold")
    t.add_column("value", overflow="fold")
    add = t.add_row
    t.add_row = lambda k, v, style=None: add(escape(k), escape(v) if style is None else f"[{style}]{escape(v)}[/]")
    t.add_row("KV capacity M", f"{rep['M_tokens']:,} tokens" + (" per server" if rep["servers"] > 1 else "")
              + (f"  ({rep['M_source']})" if rep.get("M_source", "given") != "given" else ""))
    if rep["servers"] > 1:
        t.add_row("servers G", f"{rep['servers']}  (rates below are the whole deployment's)")
    t.add_row("prefill chunk ŝ", f"{rep['prefill_chunk_tokens']:,} tokens")
    b_txt = f"{rep['b_s']:.6g} s"
    if "inter-token gaps" in rep["b_source"]:
        b_txt += f"  ({rep['b_source']})"
    elif "b_estimator" in rep:
        b_txt += f"  ({rep['b_estimator']} of {rep['b_samples_n']:,} samples)"
    t.add_row("batch time b̄", b_txt)
    if "trace_requests" in rep:
        rate = rep["trace_mean_rate_rps"]
        t.add_row("trace", f"{rep['trace_requests']:,} requests"
                  + (f", mean arrival rate {rate:.4f} req/s" if rate is not None else "")
                  + (f" ({rep['trace_failed_requests']:,} failed, left out)" if rep.get("trace_failed_requests")
                     else ""))
    se = rep["mean_g_se_tokens2"]
    t.add_row("E[g] (paper)", f"{rep['mean_g_tokens2']:,.1f} tokens²" + (f" ± {se:,.1f}" if se else ""))
    t.add_row("E[g_exact]", f"{rep['mean_g_exact_tokens2']:,.1f} tokens²" + (f" ± {se:,.1f}" if se else ""))
    t.add_row("max s+o", f"{rep['max_total_tokens']:,} tokens")
    t.add_row("δ = max(s+o)/M", f"{rep['delta']:.4f}")
    t.add_row("μ (paper)", f"{_fmt(rep['mu_rps'])} req/s")
    t.add_row("μ_exact", f"{_fmt(rep['mu_exact_rps'])} req/s")
    t.add_row("stable range", f"λ < μ(1−δ) = {_fmt(rep['mu_stable_rps'])} req/s"
              f"  (exact: {_fmt(rep['mu_exact_stable_rps'])})")
    t.add_row("unstable range", f"λ > μ = {_fmt(rep['mu_rps'])} req/s")
    if "lam_star_rps" in rep:
        t.add_row("simulated λ* (95 %)", f"{_fmt(rep['lam_star_rps'])} req/s  [{_fmt(rep['lam_star_lo_rps'])}, "
                  f"{_fmt(rep['lam_star_hi_rps'])}]  = {rep['lam_star_over_mu_exact']:.4f}·μ_exact"
                  f"  ({rep['sim_trials']} trials × {rep['sim_steps']:,} steps, {rep['sim_wall_s']:.1f} s)")
    if "lam_rps" in rep:
        t.add_row("arrival rate λ", f"{_fmt(rep['lam_rps'])} req/s")
        t.add_row("utilisation ρ = λ/μ", f"{rep['rho']:.4f}")
        style = {"stable": "green", "uncertain": "yellow", "unstable": "bold red"}[rep["verdict_code"]]
        t.add_row("closed-form verdict", rep["verdict"], style=style)
        if "sim_verdict" in rep:
            sv = rep["sim_verdict"]
            txt = {"stable": "stable: λ < λ* (the queue stays bounded in the long run)",
                   "unstable": "UNSTABLE: λ > λ* (the queue grows without bound)",
                   "undecided": "undecided: λ is inside λ*'s interval (more --trials narrow it)"}[sv]
            t.add_row("simulated verdict", txt, style={"stable": "green", "unstable": "bold red"}.get(sv, "yellow"))
        t.add_row(f"servers for ρ = {rep['rho_target']:g}", f"{rep['servers_needed']}  (⌈λ/(μ₁·ρ)⌉)")
    if "lam_star_rps" in rep and not rep["sim_reliable"]:
        t.add_row("warning", "the simulation hit a capacity limit: raise --K", style="bold red")
    con = Console(highlight=False)
    if not con.is_terminal:  # piped or captured: don't wrap at rich's default of 80 columns
        con = Console(highlight=False, width=100)
    con.print(t)


@click.command("capacity")
@workload_options
@server_options(simulation=False)
@click.option("--lam", "lam", metavar="RPS", default=None, help="Arrival rate λ in requests per second.")
@click.option("--rho", "rho", metavar="RHO", default="0.9", show_default=True,
              help="Target utilisation ρ = λ/μ in (0, 1] for the servers needed, ⌈λ/(μ₁·ρ)⌉ "
                   "(μ₁: one server's rate).")
@click.option("--simulate", "simulate_", is_flag=True,
              help="Also simulate the saturation throughput λ* (with its 95 % interval) and give the long-run "
                   "verdict at --lam (a few seconds to a minute on a CPU).")
@click.option("--trials", "trials", metavar="N", default="32", show_default=True,
              help="Monte Carlo trials of the --simulate saturation run.")
@output_options(out=None)
def capacity_cmd(as_json, lam, rho, simulate_, trials, **opts):
    """Closed-form capacity: μ, μ_exact, E[g], δ, the stable and unstable ranges and, with --lam, the verdict and
    the servers needed for a target utilisation.

    \b
    Examples:
      lqs capacity --workload pd-1:1 --M 131000 --prefill-chunk 512 --b 0.0372
      lqs capacity --workload pd-1:1 --M 131000 --prefill-chunk 512 --b 0.0372 --lam 3.2 --simulate
      lqs capacity --trace azure-conv --M 131000 --prefill-chunk 512 --b 0.0372 --lam 20 --rho 0.9
      lqs capacity --trace my_log.csv --M 131000 --prefill-chunk 512 --b-samples batch_times.csv \\
                   --b-estimator trimmed:0.05 --json
    """
    from .._theory import capacity

    server, bb = build_server(opts)
    lam_v = None if lam is None else parse_float("lam", lam, 0.0)
    rho_v = parse_float("rho", rho, 0.0, 1.0, lo_open=True)
    wl = resolve_workload(**{**opts, "M": server.M})
    rep = capacity_report(wl, capacity(wl.workload, server), bb, lam_v, rho_v)
    if simulate_:
        from .. import MonteCarlo, critical
        from .options import parse_int

        from . import cli_path

        mc = MonteCarlo(trials=parse_int("trials", trials, 2, 2**24), path=cli_path())
        rep.update(simulated_report(critical(wl.workload, server, mc, grid_points=0), lam_v))
    if as_json:  # the wall time stays out: the same inputs and seed give the same bytes
        echo_json({k: v for k, v in rep.items() if k != "sim_wall_s"})
    else:
        _print_table(rep)

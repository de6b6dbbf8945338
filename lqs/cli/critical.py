"""``lqs critical``: the simulated critical rate λ* (saturation throughput) next to the closed form."""

from __future__ import annotations

import os

import click

from .. import _jsonio
from .arrivals import arrival_options, build_arrivals
from .options import (build_mc, build_server, console, echo_json, mc_options, output_options, parse_int,
                      renamed_options, resolve_workload, server_options, show_progress, workload_options)


@click.command("critical")
@workload_options
@server_options()
@arrival_options()
@mc_options()
@click.option("--grid-points", default="9", show_default=True, metavar="N",
              help="λ values of the verdict grid around λ* (0 to skip).")
@click.option("--grid-trials", default="32", show_default=True, metavar="N", help="Trials per grid λ.")
@renamed_options("grid_replicas")
@output_options(out_help="Write critical.json (λ*, the closed form, server and Monte Carlo settings) and the "
                         "saturation and grid runs (saturation/, grid/: tables and config.json) here.")
def critical_cmd(grid_points, grid_trials, progress, as_json, out, **opts):
    """The critical rate λ* (saturation throughput, with a 95 % interval), μ_sim, and the theory bounds.

    \b
    Example:
      lqs critical --workload pd-1:1 --M 131000 --prefill-chunk 512 --b 0.0372
    """
    from .. import critical

    server, bb = build_server(opts)
    mc = build_mc(opts)
    wl = resolve_workload(**{**opts, "M": server.M})
    arrivals = build_arrivals(opts)
    res = critical(wl.workload, server, mc, grid_points=parse_int("grid_points", grid_points, 0, 1000),
                   grid_trials=parse_int("grid_trials", grid_trials, 1, 2**24), progress=show_progress(progress),
                   arrivals=arrivals)
    out_d = dict(workload=wl.label, b_source=bb.source, M_source=bb.M_source, **res.summary)
    doc = dict(out_d, server=server.describe(), monte_carlo=mc.describe())
    if out:
        _save(res, doc, out)
    if as_json:
        echo_json(doc)
        return
    _print_critical(out_d, out)


def _save(res, doc, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "critical.json"), "w") as fh:
        _jsonio.dump(doc, fh, indent=2, ensure_ascii=False)
    res.saturation.save(os.path.join(out, "saturation"), plot=False)
    if res.grid is not None:
        res.grid.save(os.path.join(out, "grid"), plot=False)


def _print_critical(out, out_dir):
    from rich.table import Table

    con = console()
    t = Table(title=f"lqs critical — {out['workload']}, M={out['M_tokens']}, ŝ={out['prefill_chunk_tokens']}, "
                    f"b̄={out['b_s']:.4g} s, {out['policy']}"
                    + (f", {out['servers']} servers ({out['routing']})" if out.get("servers", 1) > 1 else ""))
    t.add_column("quantity")
    t.add_column("req/s", justify="right")
    t.add_row("λ* (simulated critical rate)", f"{out['lam_star_rps']:.4f}  [{out['lam_star_lo_rps']:.4f}, "
                                              f"{out['lam_star_hi_rps']:.4f}]")
    t.add_row("μ_sim (saturation throughput)", f"{out['mu_sim_rps']:.4f} ± {1.96 * out['mu_sim_se_rps']:.4f}")
    t.add_row("μ (paper closed form)", f"{out['mu_rps']:.4f}")
    t.add_row("μ_exact", f"{out['mu_exact_rps']:.4f}")
    t.add_row("μ(1−δ) guaranteed stable below", f"{out['mu_stable_rps']:.4f}")
    t.add_row("δ", f"{out['delta']:.4f}")
    con.print(t)
    if "grid_lam_rps" in out:
        g = Table(title="long-run verdict over λ (and what the finite runs saw)")
        g.add_column("λ (req/s)", justify="right")
        g.add_column("verdict", justify="right")
        g.add_column("backlog grew", justify="right")
        for lm, v, p in zip(out["grid_lam_rps"], out["grid_verdict"], out["grid_p_backlog_grows"]):
            g.add_row(f"{lm:.4f}", v, f"{p:.0%}")
        con.print(g)
    con.print(f"λ*/μ_exact = {out['lam_star_over_mu_exact']:.4f}; inside [μ_exact(1−δ), μ_exact]: "
              f"{'yes' if out['in_theory_band'] else 'no'}")
    if not out["reliable"]:
        con.print(f"[bold red]UNRELIABLE:[/] {out.get('unreliable_reason', '')}")
    if out["b_source"] != "given" or out["M_source"] != "given":
        con.print(f"b̄ = {out['b_s']:.6g} s ({out['b_source']}); M = {out['M_tokens']:,} tokens ({out['M_source']})")
    if out_dir:
        con.print(f"wrote {os.path.abspath(out_dir)}/ (critical.json, saturation/, grid/)")

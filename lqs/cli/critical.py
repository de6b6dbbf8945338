"""``lqs critical``: the simulated critical rate λ* (saturation throughput) next to the closed form."""

from __future__ import annotations

import json

import click

from .options import (_common, _console, _json_clean, _show_progress, _sim_options, parse_int, server_options,
                      workload_options)


@click.command("critical")
@workload_options
@server_options
@_sim_options
@click.option("--grid-points", default="9", show_default=True, metavar="N",
              help="λ values of the P(unstable) grid (0 to skip).")
@click.option("--grid-replicas", default="32", show_default=True, metavar="N", help="Replicas per grid λ.")
def critical_cmd(workload, trace, s_col, o_col, t_col, split, M, chunk, b, b_samples, b_estimator, b_col, policy,
                 replicas, steps, warmup, seed, token_budget, K, b_model, servers, routing, progress, as_json,
                 grid_points,
                 grid_replicas):
    """The critical rate λ* (saturation throughput, with a 95 % interval), μ_sim, and the theory bounds.

    \b
    Example:
      lqs critical --workload pd-1:1 --M 131000 --chunk 512 --b 0.0372
    """
    import jax

    from .._critical import critical

    c = _common(workload, trace, s_col, o_col, t_col, split, M, chunk, b, b_samples, b_estimator, b_col, policy,
                replicas, steps, warmup, seed, token_budget, K, b_model, servers, routing)
    res = critical(c["wl"].workload, M=c["M"], chunk=c["chunk"], b=c["batch"], policy=c["policy"],
                   replicas=c["replicas"], steps=c["steps"], warmup=c["warmup"], key=jax.random.key(c["seed"]),
                   grid_points=parse_int("grid_points", grid_points, 0, 1000),
                   grid_replicas=parse_int("grid_replicas", grid_replicas, 1), token_budget=c["token_budget"],
                   K=c["K"], progress=_show_progress(progress), b_theory=c["bb"].b_s, servers=c["servers"],
                   routing=c["routing"])
    out = dict(workload=c["wl"].label, **res.summary)
    if as_json:
        click.echo(json.dumps(_json_clean(out)))
        return
    from rich.table import Table

    con = _console()
    t = Table(title=f"lqs critical — {out['workload']}, M={out['M_tokens']}, ŝ={out['chunk_tokens']}, "
                    f"b̄={out['b_s']:.4g} s, {out['policy']}")
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
        g = Table(title="P(unstable) over λ")
        g.add_column("λ (req/s)", justify="right")
        g.add_column("P(unstable)", justify="right")
        for lm, p in zip(out["grid_lam_rps"], out["grid_p_unstable"]):
            g.add_row(f"{lm:.4f}", f"{p:.2f}")
        con.print(g)
    con.print(f"λ*/μ_exact = {out['lam_star_over_mu_exact']:.4f}; inside [μ_exact(1−δ), μ_exact]: "
              f"{'yes' if out['in_theory_band'] else 'no'}")
    if not out["reliable"]:
        con.print(f"[bold red]UNRELIABLE:[/] {out.get('unreliable_reason', '')}")

"""``lqs plan LOAD``: servers per window of a load curve, SLO-aware, verified by simulating the day."""

from __future__ import annotations

import click

from .options import build_server, echo_json, output_options, parse_float, parse_int, server_options


@click.command("plan")
@click.argument("load", metavar="LOAD")
@click.option("--window", "window", metavar="SECONDS", default=None,
              help="Window length: bins a trace's arrivals, or re-bins a (time, rate) curve (default: its spacing).")
@server_options()
@click.option("--workload", "workload", metavar="PRESET", default=None,
              help="Request lengths (a preset such as pd-1:1); default: the trace's own lengths.")
@click.option("--slo", "slo", metavar="METRIC<=TARGET", default="ttft_p99_s<=2", show_default=True,
              help="p50/p90/p99 of wait, ttft, e2e or tpot at most TARGET seconds, or rho<=x.")
@click.option("--arrivals", "arrivals", metavar="poisson|gamma|replayed", default="poisson", show_default=True)
@click.option("--burstiness", "burstiness", metavar="K", default="1", show_default=True)
@click.option("--headroom", "headroom", metavar="H", default="1", show_default=True)
@click.option("--rate-scale", "rate_scale", metavar="F", default="1", show_default=True)
@click.option("--rho", "rho", metavar="RHO", default="0.9", show_default=True,
              help="Utilisation of the closed-form count ⌈λ/(μρ)⌉.")
@click.option("--scale-up-delay", "delay", metavar="SECONDS", default="0", show_default=True)
@click.option("--static", "static", metavar="N", default=None, help="A static size to check against every window.")
@click.option("--trials", "trials", metavar="N", default="8", show_default=True)
@click.option("--steps", "steps", metavar="N", default="4000", show_default=True)
@click.option("--warmup", "warmup", metavar="N", default="1000", show_default=True)
@click.option("--verify/--no-verify", "verify", default=True, show_default=True)
@click.option("--verify-trials", "verify_trials", metavar="N", default="2", show_default=True)
@click.option("--window-lengths/--trace-lengths", "window_lengths", default=False, show_default=True,
              help="Each window's own request lengths (a trace as LOAD), or the whole trace's in every window.")
@click.option("--candidates", "candidates", metavar="N", default="2", show_default=True,
              help="Server counts per window simulated per round, from the first stable one.")
@click.option("--seed", "seed", metavar="N", default="0", show_default=True)
@click.option("--progress/--no-progress", "progress", default=False)
@output_options(out_help="Write windows.csv/.parquet, totals.json, config.json and plan.png here.")
def plan_cmd(load, window, workload, slo, arrivals, burstiness, headroom, rate_scale, rho, delay, static, trials,
             steps, warmup, verify, verify_trials, window_lengths, candidates, seed, progress, as_json, out, **opts):
    """Servers per window of LOAD (a CSV/Parquet of time, rate, or a trace such as azure-conv)."""
    import lqs

    server, _ = build_server(opts)
    mc = lqs.MonteCarlo(trials=parse_int("trials", trials), steps=parse_int("steps", steps),
                        warmup=parse_int("warmup", warmup), seed=parse_int("seed", seed))
    res = lqs.plan(load, server, slo, workload=None if workload is None else lqs.preset(workload),
                   window_s=None if window is None else parse_float("window", window), arrivals=arrivals,
                   burstiness=parse_float("burstiness", burstiness), headroom=parse_float("headroom", headroom),
                   rate_scale=parse_float("rate_scale", rate_scale), rho=parse_float("rho", rho),
                   scale_up_delay_s=parse_float("scale_up_delay", delay),
                   static_servers=None if static is None else parse_int("static", static), mc=mc, verify=verify,
                   verify_trials=parse_int("verify_trials", verify_trials),
                   candidates=parse_int("candidates", candidates), window_lengths=window_lengths, seed=parse_int("seed", seed),
                   progress=progress, out=out)
    if as_json:
        echo_json(dict(totals=res.totals, windows=res.windows.to_dict(orient="records"), config=res.config))
        return
    cols = [c for c in ("window", "lam_rps", "servers_closed_form", "servers_sim", "verdict",
                        "verify_backlog_end", "verify_slo_met", "verify_lag_backlog") if c in res.windows]
    click.echo(res.windows[cols].to_string(index=False))
    t = res.totals
    click.echo(f"peak {t['servers_peak']} servers; GPU-hours {t['gpu_hours_scaled']:.4g} scaled vs "
               f"{t['gpu_hours_static']:.4g} static (closed form {t['gpu_hours_closed_form_scaled']:.4g} vs "
               f"{t['gpu_hours_closed_form_static']:.4g})")
    if "verify_slo_met_fraction" in t:
        click.echo(f"verification: SLO met in {100 * t['verify_slo_met_fraction']:.1f} % of windows; lagged windows "
                   f"{t['verify_lag_windows'] or 'none'}")

"""``lqs simulate``: the Monte Carlo engine at one λ or a grid of λ."""

from __future__ import annotations

import json
import os

import click
import numpy as np

from .options import _common, _console, _json_clean, _parse_lams, _show_progress, _sim_options, server_options, workload_options


@click.command("simulate")
@workload_options
@server_options
@click.option("--lam", "lam", metavar="RATE|R1,R2,..|LO:HI:N", default=None,
              help="Arrival rate(s), requests per second.")
@_sim_options
@click.option("--out", "out_dir", default=None, metavar="DIR",
              help="Write replicas/summary (parquet + CSV), config.json, series.npz and waiting.png here.")
def simulate_cmd(workload, trace, s_col, o_col, t_col, split, M, chunk, b, b_samples, b_estimator, b_col, lam,
                 policy, replicas, steps, warmup, seed, token_budget, K, b_model, servers, routing, progress, as_json,
                 out_dir):
    """Monte Carlo of replicated serving queues at one λ or a grid of λ.

    \b
    Examples:
      lqs simulate --workload pd-1:1 --M 131000 --chunk 512 --b 0.0372 --lam 3.0
      lqs simulate --workload pd-1:1 --M 131000 --chunk 512 --b 0.0372 --lam 2.5:4:7 --out runs/pd11
      lqs simulate --trace azure-conv --M 131000 --chunk 512 --b 0.0372 --lam 5 --policy recompute
    """
    import jax

    from .._engine import simulate

    c = _common(workload, trace, s_col, o_col, t_col, split, M, chunk, b, b_samples, b_estimator, b_col, policy,
                replicas, steps, warmup, seed, token_budget, K, b_model, servers, routing)
    lams = _parse_lams(lam)
    res = simulate(c["wl"].workload, M=c["M"], chunk=c["chunk"], lam=lams, b=c["batch"], policy=c["policy"],
                   replicas=c["replicas"], steps=c["steps"], warmup=c["warmup"], key=jax.random.key(c["seed"]),
                   token_budget=c["token_budget"], K=c["K"], progress=_show_progress(progress), b_theory=c["bb"].b_s,
                   servers=c["servers"], routing=c["routing"])
    res.config["workload_label"] = c["wl"].label
    res.config["seed"] = c["seed"]
    if out_dir:
        res.save(out_dir)
    if as_json:
        click.echo(json.dumps(_json_clean(dict(workload=c["wl"].label, reliable=res.reliable,
                                               summary=res.summary.to_dict(orient="records"),
                                               wall_s=res.config["wall_s"]))))
        return
    _print_sim(res, c["wl"].label, out_dir)


def _print_sim(res, label, out_dir):
    from rich.table import Table

    con = _console()
    s = res.summary
    r0 = s.iloc[0]
    t = Table(title=f"lqs simulate — {label}, M={r0.M_tokens}, ŝ={r0.chunk_tokens}, b̄={r0.b_s:.4g} s, "
                    f"{r0.policy}, {r0.replicas} replicas × {r0.steps} steps"
                    + (f", clusters of {r0.servers} servers ({r0.routing})" if r0.get("servers", 1) > 1 else ""))
    for col in ("λ (req/s)", "λ/μ_exact", "P(unstable)", "throughput (req/s)", "KV util", "wait p50 (s)",
                "wait p99 (s)", "TTFT p99 (s)", "E2E p99 (s)", "reliable"):
        t.add_column(col, justify="right")
    for _, r in s.iterrows():
        t.add_row(f"{r.lam_rps:.4g}", f"{r.rho:.3f}", f"{r.p_unstable:.2f}",
                  f"{r.throughput_rps:.4f} ± {1.96 * r.throughput_se_rps:.4f}", f"{r.mem_util:.3f}",
                  *((_f(r.wait_p50_s), _f(r.wait_p99_s), _f(r.ttft_p99_s), _f(r.e2e_p99_s)) if r.p_unstable <= 0.5
                    else ("[red]grows[/]",) * 4),
                  "yes" if r.reliable else "[bold red]NO[/]")
    con.print(t)
    con.print(f"theory: μ = {r0.mu_rps:.4f}, μ_exact = {r0.mu_exact_rps:.4f}, stable below μ(1−δ) = "
              f"{r0.mu_stable_rps:.4f} req/s, δ = {r0.delta:.4f}")
    if (s.p_unstable > 0.5).any():
        bad = ", ".join(f"{x:.4g}" for x in s.lam_rps[s.p_unstable > 0.5])
        con.print(f"[bold red]UNSTABLE[/] at λ = {bad} req/s: the waiting queue grows without bound (latency "
                  "percentiles there only describe the horizon simulated, so they are not shown).")
    if not res.reliable:
        con.print("[bold red]UNRELIABLE:[/] a capacity limit was hit (see starved_steps / arrival_cap_hits / "
                  "violations in the tables); raise --K.")
    if not bool(s.latency_reliable.all()):
        con.print("note: some requests passed through the overflow queue, so their latencies are not in the "
                  "percentiles (latency_lost).")
    if out_dir:
        con.print(f"wrote {os.path.abspath(out_dir)}/ (replicas, summary, config.json, series.npz, waiting.png)")


def _f(x):
    return "—" if x is None or not np.isfinite(x) else f"{x:.3g}"

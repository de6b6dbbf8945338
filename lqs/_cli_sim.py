"""``lqs simulate`` and ``lqs critical``: the Monte Carlo engine from the command line."""

from __future__ import annotations

import json
import math
import os
import sys

import click
import numpy as np

from ._cli_common import (parse_float, parse_int, resolve_b, resolve_server, resolve_workload, server_options,
                          workload_options)
from ._errors import LqsError


def _sim_options(f):
    opts = [
        click.option("--policy", default="fcfs", show_default=True, metavar="fcfs|recompute|reserve",
                     help="Scheduling policy (SPEC.md)."),
        click.option("--replicas", default="64", show_default=True, metavar="N", help="Independent servers."),
        click.option("--steps", default="auto", show_default=True, metavar="N|auto",
                     help="Steps per replica; auto: warm-up + max(16000, steps for 2000 completions at μ)."),
        click.option("--warmup", default="4000", show_default=True, metavar="N", help="Warm-up steps (not measured)."),
        click.option("--seed", default="0", show_default=True, metavar="INT", help="Seed of the one PRNG key."),
        click.option("--token-budget", default=None, metavar="TOKENS",
                     help="Per-step token budget B (vLLM max_num_batched_tokens); must be ≥ chunk."),
        click.option("--K", "K", default=None, metavar="SLOTS", help="Slots per replica (default: sized from M)."),
        click.option("--b-model", default="constant", show_default=True,
                     metavar="constant|empirical|lognormal:CV|two-speed:RATIO:FRAC|affine:A0,A1,A2,A3",
                     help="Batch-time model: b̄ constant; i.i.d. from --b-samples; lognormal with mean b̄; "
                          "a fraction FRAC of batches RATIO× slower (mean b̄); or affine in the step's prefill "
                          "tokens, decode tokens and memory (b̄ then only feeds the theory columns)."),
        click.option("--servers", default="1", show_default=True, metavar="G",
                     help="Servers per replica (a cluster in lock-step); λ is the cluster's total rate."),
        click.option("--routing", default="round_robin", show_default=True, metavar="round_robin|random|jsq|least_kv",
                     help="How a cluster routes each arrival."),
        click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a TTY)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _parse_lams(text) -> list[float]:
    """'3.0' | '2.5,3,3.5' | 'lo:hi:n' (n evenly spaced values)."""
    if text is None:
        raise LqsError("lam", None, "give --lam RATE, a list R1,R2,... or a range LO:HI:N")
    t = str(text).strip()
    if ":" in t:
        parts = t.split(":")
        if len(parts) != 3:
            raise LqsError("lam", text, "a range is LO:HI:N, e.g. 2.5:4:7")
        lo = parse_float("lam", parts[0], 0.0)
        hi = parse_float("lam", parts[1], lo)
        n = parse_int("lam", parts[2], 1, 10_000)
        return [float(x) for x in np.linspace(lo, hi, n)]
    lams = [parse_float("lam", x, 0.0) for x in t.split(",") if x.strip() != ""]
    if not lams:
        raise LqsError("lam", text, "give --lam RATE, a list R1,R2,... or a range LO:HI:N")
    return lams


def _batch_model(spec: str, b_s: float, b_samples_file, b_col):
    from ._batch import AffineBatch, ConstantBatch, EmpiricalBatch, LogNormalMixBatch

    spec = (spec or "constant").strip()
    name, _, arg = spec.partition(":")
    if name in ("constant", "empirical") and arg:
        raise LqsError("b_model", spec, f"{name} takes no argument (b̄ comes from --b / --b-samples)")
    if name == "constant":
        return ConstantBatch(b_s)
    if name == "empirical":
        if b_samples_file is None:
            raise LqsError("b_model", spec, "empirical needs --b-samples FILE")
        from .traces import load_b_samples

        return EmpiricalBatch(load_b_samples(b_samples_file, col=b_col))
    if name == "lognormal":
        cv = parse_float("b_model", arg or "0.5", 0.0)
        return LogNormalMixBatch.from_mean_cv(b_s, cv)
    if name == "two-speed":
        try:
            r_s, f_s = arg.split(",") if "," in arg else arg.split(":")
        except ValueError:
            raise LqsError("b_model", spec, "two-speed:RATIO:FRAC, e.g. two-speed:3:0.3") from None
        ratio = parse_float("b_model", r_s, 1.0)
        frac = parse_float("b_model", f_s, 0.0, 1.0)
        fast = b_s / (1 - frac + frac * ratio)  # mean b̄ (σ = 0.1 adds < 1 %, corrected below)
        m = LogNormalMixBatch.two_speed(fast, fast * ratio, frac)
        return LogNormalMixBatch.two_speed(fast * b_s / m.mean_s, fast * ratio * b_s / m.mean_s, frac)
    if name == "affine":
        try:
            a = [float(x) for x in arg.split(",")]
        except ValueError:
            a = []
        if len(a) != 4:
            raise LqsError("b_model", spec, "affine:A0,A1,A2,A3 with four numbers (seconds, s/token, s/token, "
                                            "s/token)")
        try:
            return AffineBatch(*a)
        except LqsError as e:
            raise LqsError("b_model", spec, "affine:A0,A1,A2,A3 needs A0 > 0 and A1, A2, A3 ≥ 0",
                           f"{e.param}={e.value}") from None
    raise LqsError("b_model", spec, "must be constant, empirical, lognormal:CV, two-speed:RATIO:FRAC or "
                                    "affine:A0,A1,A2,A3")


def _common(workload, trace, s_col, o_col, t_col, split, M, chunk, b, b_samples, b_estimator, b_col, policy,
            replicas, steps, warmup, seed, token_budget, K, b_model, servers="1", routing="round_robin"):
    from ._engine import POLICIES

    M, chunk = resolve_server(M, chunk)
    wl = resolve_workload(workload=workload, trace=trace, s_col=s_col, o_col=o_col, t_col=t_col, split=split, M=M)
    if b is None and b_samples is not None and (b_model or "").startswith("empirical"):
        bb = resolve_b(b_samples=b_samples, b_estimator=b_estimator or "mean", b_col=b_col)
    else:
        bb = resolve_b(b=b, b_samples=b_samples, b_estimator=b_estimator, b_col=b_col)
    if policy not in POLICIES:
        raise LqsError("policy", policy, "must be one of " + ", ".join(POLICIES))
    out = dict(M=M, chunk=chunk, wl=wl, bb=bb, policy=policy, replicas=parse_int("replicas", replicas, 1, 2**24),
               warmup=parse_int("warmup", warmup, 0), seed=parse_int("seed", seed, 0, 2**63 - 1),
               token_budget=None if token_budget is None else parse_int("token_budget", token_budget, chunk),
               K=None if K is None else parse_int("K", K, 8, 2**20))
    out["steps"] = None if str(steps).strip().lower() == "auto" else parse_int("steps", steps, 2)
    if out["steps"] is not None and out["steps"] <= out["warmup"]:
        raise LqsError("steps", out["steps"], f"must exceed --warmup ({out['warmup']})")
    out["batch"] = _batch_model(b_model, bb.b_s, b_samples, b_col)
    out["servers"] = parse_int("servers", servers, 1, 4096)
    from .kernels.engine import ROUTINGS

    if routing not in ROUTINGS:
        raise LqsError("routing", routing, "must be one of " + ", ".join(ROUTINGS))
    out["routing"] = routing
    return out


def _console():
    """A rich console; piped or captured output gets a fixed wide width so that no table cell is cut to '…'."""
    from rich.console import Console

    con = Console(highlight=False)
    return con if con.is_terminal else Console(highlight=False, width=160)


def _show_progress(flag):
    return sys.stderr.isatty() if flag is None else bool(flag)


def _json_clean(x):
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


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

    from ._engine import simulate

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

    from ._critical import critical

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


COMMANDS = [simulate_cmd, critical_cmd]


@click.group("reproduce")
def reproduce_group():
    """Regenerate published results in simulation."""


@reproduce_group.command("paper")
@click.option("--out", "out_dir", default="lqs-paper", show_default=True, metavar="DIR")
@click.option("--quick", is_flag=True, help="Few replicas: a few minutes on a 2-core CPU (full mode is for a GPU).")
@click.option("--seed", default="0", show_default=True, metavar="INT")
@click.option("--progress/--no-progress", default=True)
def reproduce_paper_cmd(out_dir, quick, seed, progress):
    """Tables 1–4 and Figures 2, 4, 6 of Nie, Si & Zhou (arXiv 2605.04595): report.md, CSVs and PNGs in DIR."""
    from ._reproduce import reproduce_paper

    res = reproduce_paper(out_dir, quick=quick, seed=parse_int("seed", seed, 0, 2**63 - 1), progress=progress)
    click.echo(f"wrote {res['report']} ({res['wall_s']:.0f} s)")


COMMANDS.append(reproduce_group)

"""``lqs study NAME --out DIR [--quick]``: the planner's studies of lqs._studies from the command line.

Each sub-command runs one study, writes ``DIR/<name>.csv``, ``DIR/<name>.json`` (headline numbers) and
``DIR/<name>.png``, and prints the headline numbers. ``--quick`` runs a reduced size (minutes on a CPU); without it
the sizes are the paper's (M = 131,000 tokens: meant for an accelerator).
"""

from __future__ import annotations

import json
import os

import click

from .options import parse_float, parse_int
from .._errors import LqsError
from .._jsonio import json_default as _jd


def _common(f):
    opts = [
        click.option("--out", "out", metavar="DIR", default="lqs-study", show_default=True,
                     help="Output folder for the CSV, JSON and PNG."),
        click.option("--quick", is_flag=True, help="Reduced size (smaller M and requests, fewer replicas and steps)."),
        click.option("--M", "M", metavar="TOKENS", default=None, help="KV-cache capacity M (default: by mode)."),
        click.option("--chunk", "chunk", metavar="TOKENS", default=None, help="Prefill chunk ŝ (default 512)."),
        click.option("--b", "b", metavar="SECONDS", default=None, help="Batch time b̄ (default 0.0372)."),
        click.option("--replicas", metavar="N", default=None, help="Independent replicas per cell (default: by mode)."),
        click.option("--steps", metavar="N", default=None, help="Steps per replica (default: by mode / auto)."),
        click.option("--warmup", metavar="N", default=None, help="Warm-up steps (default: by mode)."),
        click.option("--seed", metavar="INT", default="0", show_default=True, help="Seed of the PRNG key."),
        click.option("--progress/--no-progress", default=False, help="Progress bars."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _sizes(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress) -> dict:
    return dict(M=None if M is None else parse_int("M", M, 1),
                chunk=None if chunk is None else parse_int("chunk", chunk, 1),
                b=None if b is None else parse_float("b", b, 0.0, lo_open=True),
                replicas=None if replicas is None else parse_int("replicas", replicas, 1),
                steps=None if steps is None else parse_int("steps", steps, 1),
                warmup=None if warmup is None else parse_int("warmup", warmup, 0),
                seed=parse_int("seed", seed, 0), quick=bool(quick), out=out, progress=bool(progress))


def _no_M(kw):
    if kw.pop("M") is not None:
        raise LqsError("M", "given", "this study chooses M itself (from δ); leave --M out")
    return kw


def _report(res, cols=None, headline=None):
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        df = res.data if cols is None else res.data[[c for c in cols if c in res.data.columns]]
        click.echo(df.to_string(index=False))
    if headline:
        click.echo(json.dumps(headline, indent=1, default=_jd, ensure_ascii=False))
    for p in (res.csv, res.png):
        if p:
            click.echo(f"wrote {os.path.abspath(p)}")


@click.group("study")
def study():
    """Planner's studies: phase diagrams, b̄ error, δ, mixtures, clusters, latency, SLO replicas.

    \b
    Example:
      lqs study phase --axis ratio --quick --out figs/
    """


@study.command("phase")
@_common
@click.option("--axis", default="all", show_default=True, type=click.Choice(["ratio", "M", "b", "all"]),
              help="Design axis of the diagram: P/D ratio, KV capacity M, batch time b̄ (or all three).")
@click.option("--points", metavar="N", default=None, help="λ points per row (default 8 quick, 15 full).")
@click.option("--policy", default="fcfs", show_default=True, type=click.Choice(["fcfs", "recompute", "reserve"]))
def phase_cmd(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress, axis, points, policy):
    """P(unstable) over (λ, P/D ratio), (λ, M) and (λ, b̄) with the curves μ and μ(1−δ) on top."""
    from .._studies import phase_diagram

    kw = _sizes(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress)
    n = None if points is None else parse_int("points", points, 2, 1000)
    for ax in (("ratio", "M", "b") if axis == "all" else (axis,)):
        k = dict(kw)
        if ax == "M":
            k.pop("M")
        if ax == "b":
            k.pop("b")
        _report_phase(phase_diagram(ax, n_lam=n, policy=policy, **k))


def _report_phase(res):
    import pandas as pd

    r = pd.DataFrame(res.meta["rows"])
    click.echo(f"phase diagram over λ and {res.meta['axis']}: simulated P(unstable) = ½ crossing per row")
    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        click.echo(r.to_string(index=False))
    for p in (res.csv, res.png):
        if p:
            click.echo(f"wrote {os.path.abspath(p)}")


@study.command("b-error")
@_common
@click.option("--samples", metavar="N", default="1000000", show_default=True,
              help="Batch times drawn from each model to compute mean/median/trimmed means.")
@click.option("--parts", default="closed_form,iid,affine", show_default=True, metavar="LIST",
              help="Which parts: closed_form, iid, affine (comma-separated).")
def b_error_cmd(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress, samples, parts):
    """How b̄'s estimator (mean, median, trimmed means) moves μ against simulated λ* (i.i.d. and affine b)."""
    from .._studies import b_error

    kw = _sizes(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress)
    ps = tuple(p.strip() for p in parts.split(",") if p.strip())
    res = b_error(n_samples=parse_int("samples", samples, 10), parts=ps, **kw)
    d = res.data[res.data.part != "closed_form"]
    res2 = type(res)(name=res.name, data=d, png=res.png, csv=res.csv, meta=res.meta)
    _report(res2, cols=["part", "case", "estimator", "b_hat_s", "mu_exact_hat_rps", "lam_star_rps", "lam_star_se_rps",
                        "rel_miss", "rel_miss_vs_const"])


@study.command("delta")
@_common
@click.option("--policies", default="fcfs,recompute,reserve", show_default=True, metavar="LIST")
def delta_cmd(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress, policies):
    """Where λ* falls in [μ_exact(1−δ), μ_exact] as δ = max(s+o)/M grows (M shrinks), per policy."""
    from .._studies import delta_study

    kw = _no_M(_sizes(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress))
    pol = tuple(p.strip() for p in policies.split(",") if p.strip())
    res = delta_study(policies=pol, **kw)
    _report(res, cols=["policy", "delta", "M_tokens", "mu_exact_rps", "lam_star_rps", "lam_star_se_rps",
                       "lam_star_over_mu_exact", "band_lo_over_mu_exact", "in_band", "lam_star_over_fcfs"])


@study.command("mixture")
@_common
@click.option("--lam-ratio", default="1,1", show_default=True, metavar="R1,R2",
              help="Relative arrival rates of the P/D 2:1 and 1:2 phases.")
@click.option("--cycles", default="24", show_default=True, metavar="N", help="2:1 → 1:2 cycles in the horizon.")
def mixture_cmd(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress, lam_ratio, cycles):
    """The paper's piecewise-stationary P/D 2:1 → 1:2 schedule against μ_mix (count and time weights)."""
    from .._studies import mixture_study

    kw = _sizes(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress)
    lr = [parse_float("lam_ratio", x, 0.0, lo_open=True) for x in lam_ratio.split(",")]
    res = mixture_study(lam_ratio=lr, cycles=parse_int("cycles", cycles, 1), **kw)
    m = res.meta
    _report(res, cols=["kind", "load_factor", "lam_mean_rps", "p_unstable", "lam_star_rps", "lam_star_se_rps"],
            headline={k: m[k] for k in ("lam_star_grid_rps", "lam_star_from_phase_saturation_rps",
                                        "mu_exact_mix_count_rps", "mu_exact_mix_time_rps", "mu_exact_time_avg_rps",
                                        "mu_mix_count_rps", "q_count", "q_time")})


@study.command("cluster")
@_common
@click.option("--servers", default="8", show_default=True, metavar="G", help="Servers per cluster.")
@click.option("--routings", default="round_robin,random,jsq,least_kv", show_default=True, metavar="LIST")
@click.option("--saturation/--no-saturation", default=True, help="Also estimate each routing's λ*.")
def cluster_cmd(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress, servers, routings, saturation):
    """G servers behind a router (round_robin, random, jsq, least_kv): λ* and waiting-time percentiles."""
    from .._studies import cluster_study

    kw = _sizes(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress)
    rts = tuple(r.strip() for r in routings.split(",") if r.strip())
    res = cluster_study(servers=parse_int("servers", servers, 1, 4096), routings=rts, saturation=saturation, **kw)
    _report(res, cols=["routing", "rho", "lam_rps", "p_unstable", "wait_mean_s", "wait_p50_s", "wait_p99_s",
                       "ttft_p99_s", "lam_star_rps", "lam_star_over_mu_exact"],
            headline={"mu_cluster_rps": res.meta["mu_cluster_rps"], "lam_star_rps": res.meta["lam_star_rps"],
                      "paper_table3": res.meta["paper_table3"]})


@study.command("latency")
@_common
@click.option("--policy", default="fcfs", show_default=True, type=click.Choice(["fcfs", "recompute", "reserve"]))
def latency_cmd(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress, policy):
    """Waiting time and TTFT percentiles (p50, p90, p99) against utilisation ρ = λ/μ."""
    from .._studies import latency_study

    kw = _sizes(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress)
    res = latency_study(policy=policy, **kw)
    _report(res, cols=["rho", "lam_rps", "p_unstable", "wait_p50_s", "wait_p90_s", "wait_p99_s", "ttft_p50_s",
                       "ttft_p90_s", "ttft_p99_s"])


@study.command("slo")
@_common
@click.option("--lam", metavar="RATE", default=None, help="Total arrival rate, requests/s (default: 3.5·μ).")
@click.option("--target", metavar="SECONDS", default="1.0", show_default=True, help="Latency target.")
@click.option("--metric", default="ttft_p99_s", show_default=True, metavar="NAME",
              help="Latency column held to the target: {wait,ttft,e2e}_{mean,p50,p90,p99}_s.")
@click.option("--rho", metavar="RHO", default="0.9", show_default=True, help="ρ of the paper's rule ⌈λ/(μρ)⌉.")
def slo_cmd(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress, lam, target, metric, rho):
    """The fewest replicas that keep p99 TTFT under a target, next to ⌈λ/μ⌉ and ⌈λ/(μρ)⌉."""
    from .._studies import _defaults, _fast_1to1, slo_replicas
    from .._theory import capacity

    kw = _sizes(M, chunk, b, replicas, steps, warmup, seed, quick, out, progress)
    if lam is None:
        d = _defaults(kw["quick"], M=kw["M"], chunk=kw["chunk"], b=kw["b"], total_hi=None)
        lam_v = 3.5 * capacity(_fast_1to1(d["total_hi"]), d["M"], d["chunk"], d["b"]).mu_rps
    else:
        lam_v = parse_float("lam", lam, 0.0, lo_open=True)
    res = slo_replicas(lam_v, parse_float("target", target, 0.0, lo_open=True), metric=metric,
                       rho=parse_float("rho", rho, 0.0, 1.0, lo_open=True), **kw)
    m = res.meta
    _report(res, cols=["G", "lam_per_server_rps", "rho", "p_unstable", "value_s", "meets_target", "qualifies"],
            headline={k: m[k] for k in ("lam_rps", "metric", "target_s", "G_slo", "G_stability", "G_rho", "rho")})




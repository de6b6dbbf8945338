"""``lqs study NAME --out DIR [--quick]``: the planner's studies of :mod:`lqs.studies` from the command line.

Each sub-command runs one study, writes ``DIR/<name>.csv``, ``DIR/<name>.json`` (headline numbers) and
``DIR/<name>.png``, and prints the headline numbers. ``--quick`` runs a reduced size (minutes on a CPU); without it
the sizes are the paper's (M = 131,000 tokens: meant for an accelerator). The server and Monte Carlo flags given
replace fields of the mode's defaults (:func:`lqs.studies.default_server`, :func:`lqs.studies.default_mc`).
"""

from __future__ import annotations

import os

import click

from .. import _jsonio
from .._errors import LqsError
from .disagg import parse_transfer, transfer_options
from .options import (build_mc, build_server, mc_options, output_options, parse_float, parse_int, renamed_options,
                      server_options, split_list)

_SERVER_FLAGS = ("M", "prefill_chunk", "b", "b_samples", "b_model", "policy", "token_budget", "servers", "routing")


def _common(f):
    """--quick, --out and the shared server and Monte Carlo options (all defaulting to the mode's)."""
    for deco in reversed([
        click.option("--quick", is_flag=True, help="Reduced size (smaller M and requests, fewer trials and steps)."),
        output_options(json=False, out="lqs-study", out_help="Output folder for the CSV, JSON and PNG."),
        server_options(required=False),
        mc_options(defaults=False),
    ]):
        f = deco(f)
    return f


def _inputs(opts: dict, *, drop=()) -> dict:
    """The keyword arguments every study takes: server and mc (the mode's defaults with the flags given
    replacing fields; None when no flag of that kind was given), quick, seed, out, progress."""
    from ..studies import default_mc, default_server

    quick = bool(opts["quick"])
    o = {k: (None if k in drop else v) for k, v in opts.items()}
    server = None
    if any(o.get(k) is not None for k in _SERVER_FLAGS):
        server, _ = build_server(o, base=default_server(quick))
    mc = None
    if any(o.get(k) is not None for k in ("trials", "steps", "warmup", "seed", "K")):
        mc = build_mc(o, base=default_mc(quick))
    seed = parse_int("seed", o["seed"], 0, 2**63 - 1) if o.get("seed") is not None else 0
    return dict(server=server, mc=mc, quick=quick, seed=seed, out=o["out"], progress=bool(o.get("progress")))


def _not_with(opts: dict, name: str, why: str):
    if opts.get(name) is not None:
        raise LqsError(name, opts[name], why)


def _report(res, cols=None, headline=None):
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        df = res.data if cols is None else res.data[[c for c in cols if c in res.data.columns]]
        click.echo(df.to_string(index=False))
    if headline:
        click.echo(_jsonio.dumps(headline, indent=1, ensure_ascii=False))
    for p in (res.csv, res.png):
        if p:
            click.echo(f"wrote {os.path.abspath(p)}")


def _head(meta, keys):
    return {k: meta.get(k) for k in keys}


def _deployment(opts, decode_M, decode_b, transfer):
    """The pd_split axis's deployment: the study's server on both pools (the decode pool's M and b̄ replaced when
    given) and the transfer."""
    from .._disagg import Disaggregated
    from ..studies import default_server

    quick = bool(opts["quick"])
    srv = _inputs(opts)["server"] or default_server(quick)
    kw = {}
    if decode_M is not None:
        kw["M"] = parse_int("decode_M", decode_M, 1)
    if decode_b is not None:
        kw["b"] = parse_float("decode_b", decode_b, 0.0, lo_open=True)
    return Disaggregated(srv, srv.replace(**kw), transfer=transfer)


@click.group("study")
def study():
    """Planner's studies: phase diagrams, b̄ error, δ, mixtures, clusters, latency, servers for an SLO.

    \b
    Example:
      lqs study phase --axis ratio --quick --out figs/
    """


PHASE_AXES = ("ratio", "M", "b", "prefill_chunk", "token_budget", "length_scale", "policy", "pd_split", "all")
LATENCY_COLUMNS = ("ttft_p99_s", "wait_p99_s", "e2e_p99_s", "ttft_p50_s", "wait_p50_s")


@study.command("phase")
@_common
@click.option("--axis", default="ratio", show_default=True,
              metavar="ratio|M|b|prefill_chunk|token_budget|length_scale|policy|all",
              help="Design axis: P/D ratio, KV capacity M, batch time b̄, prefill chunk ŝ, token budget, length scale "
                   "of the workload, policy (all: ratio, M and b̄).")
@click.option("--points", metavar="N", default=None, help="Values along the axis (default 32 quick, 128 full).")
@click.option("--latency", default=None, metavar="|".join(LATENCY_COLUMNS),
              help="Colour the stable region by this latency percentile (per-cell runs, one program).")
@click.option("--lam-points", metavar="N", default=None, help="Rates per row of the latency layer (8 quick, 16 full).")
@click.option("--gpus", metavar="G", default="8", show_default=True,
              help="--axis pd_split: the GPUs split into N_P prefill + N_D decode servers (every split a row).")
@click.option("--decode-M", "decode_M", metavar="TOKENS", default=None,
              help="--axis pd_split: the decode pool's M (default the server's).")
@click.option("--decode-b", "decode_b", metavar="SECONDS", default=None,
              help="--axis pd_split: the decode pool's b̄ (default the server's).")
@transfer_options("--axis pd_split: ")
def phase_cmd(axis, points, latency, lam_points, gpus, decode_M, decode_b, tau0, rate, kv_bytes, bandwidth, **opts):
    """The long-run stability boundary λ*(x) along a design axis, with μ and μ(1−δ): every row's saturation run in
    one vmapped program; stable left of the boundary band, unstable right of it."""
    import pandas as pd

    from ..studies import phase_diagram

    from .._errors import check_choice

    check_choice("--axis", axis, PHASE_AXES)
    if latency is not None:
        check_choice("--latency", latency, LATENCY_COLUMNS)
    n = None if points is None else parse_int("points", points, 1, 100_000)
    nl = None if lam_points is None else parse_int("lam_points", lam_points, 1, 1000)
    for ax in (("ratio", "M", "b") if axis == "all" else (axis,)):
        drop = {"M": ("M",), "b": ("b", "b_samples", "b_model"), "prefill_chunk": ("prefill_chunk",),
                "token_budget": ("token_budget",), "policy": ("policy",)}.get(ax, ())  # the axis replaces them
        extra = {}
        if ax == "pd_split":
            extra = dict(gpus=parse_int("gpus", gpus, 2, 4096),
                         disagg=_deployment(opts, decode_M, decode_b,
                                            parse_transfer(tau0, rate, kv_bytes, bandwidth)))
        elif any(v is not None for v in (decode_M, decode_b, rate, kv_bytes, bandwidth)):
            raise LqsError("axis", ax, "--decode-M, --decode-b and --transfer-* go with --axis pd_split")
        res = phase_diagram(axis=ax, n_values=n, latency=latency, n_lam=nl, **_inputs(opts, drop=drop), **extra)
        click.echo(f"phase diagram along {res.meta['axis']}: the long-run boundary λ* per row "
                   f"({len(res.data)} rows); stable below lam_star_lo_rps, unstable above lam_star_hi_rps")
        cols = ["value", "layout", "lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps", "mu_rps", "mu_exact_rps",
                "mu_stable_rps", "binding_sim", "reliable"]
        with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
            click.echo(res.data[[c for c in cols if c in res.data.columns]].to_string(index=False))
        for p in (res.csv, res.png):
            if p:
                click.echo(f"wrote {os.path.abspath(p)}")


@study.command("b-error")
@_common
@click.option("--samples", metavar="N", default="1000000", show_default=True,
              help="Batch times drawn from each model to compute mean/median/trimmed means.")
@click.option("--sections", default="closed_form,iid,affine", show_default=True, metavar="LIST",
              help="Which sections: closed_form, iid, affine (comma-separated).")
@renamed_options("parts")
def b_error_cmd(samples, sections, **opts):
    """How b̄'s estimator (mean, median, trimmed means) moves μ against simulated λ* (i.i.d. and affine b)."""
    from ..studies import b_error

    res = b_error(n_samples=parse_int("samples", samples, 10), sections=tuple(split_list(sections)),
                  **_inputs(opts))
    sim = res.data[res.data.section != "closed_form"]
    if len(sim):  # the simulated sections; the closed form (μ ∝ 1/b̄) alone otherwise
        res = type(res)(name=res.name, data=sim, png=res.png, csv=res.csv, meta=res.meta)
        _report(res, cols=["section", "case", "estimator", "b_hat_s", "mu_exact_hat_rps", "lam_star_rps",
                           "lam_star_se_rps", "rel_miss", "rel_miss_vs_const"])
    else:
        _report(res, cols=["section", "estimator", "b_hat_s", "mu_hat_rps", "mu_exact_hat_rps", "rel_miss"])


@study.command("delta")
@_common
@click.option("--policies", default="swap,recompute,reserve", show_default=True, metavar="LIST",
              help="Policies to compare (comma-separated; fcfs = swap).")
def delta_cmd(policies, **opts):
    """Where λ* falls in [μ_exact(1−δ), μ_exact] as δ = max(s+o)/M grows (M shrinks), per policy."""
    from ..studies import delta_study

    _not_with(opts, "M", "this study chooses M itself (from δ); leave --M out")
    _not_with(opts, "policy", "this study runs every policy of --policies; use --policies")
    res = delta_study(policies=tuple(split_list(policies)), **_inputs(opts))
    _report(res, cols=["policy", "delta", "M_tokens", "mu_exact_rps", "lam_star_rps", "lam_star_se_rps",
                       "lam_star_over_mu_exact", "band_lo_over_mu_exact", "in_band", "lam_star_over_swap"])


@study.command("mixture")
@_common
@click.option("--lam-ratio", default="1,1", show_default=True, metavar="R1,R2",
              help="Relative arrival rates of the P/D 2:1 and 1:2 phases.")
@click.option("--cycles", default="24", show_default=True, metavar="N", help="2:1 → 1:2 cycles in the horizon.")
def mixture_cmd(lam_ratio, cycles, **opts):
    """The paper's piecewise-stationary P/D 2:1 → 1:2 schedule against μ_mix (count and time weights)."""
    from ..studies import mixture_study

    lr = [parse_float("lam_ratio", x, 0.0, lo_open=True) for x in split_list(lam_ratio)]
    res = mixture_study(lam_ratio=lr, cycles=parse_int("cycles", cycles, 1), **_inputs(opts))
    _report(res, cols=["kind", "load_factor", "lam_mean_rps", "p_backlog_grows", "lam_star_rps", "lam_star_se_rps"],
            headline=_head(res.meta, ("lam_backlog_half_rps", "lam_star_from_phase_saturation_rps",
                                      "mu_exact_mix_count_rps", "mu_exact_mix_time_rps", "mu_exact_time_avg_rps",
                                      "mu_mix_count_rps", "q_count", "q_time")))


@study.command("cluster")
@_common
@click.option("--routings", default="round_robin,random,jsq,least_kv", show_default=True, metavar="LIST",
              help="Routing rules to compare (comma-separated).")
@click.option("--saturation/--no-saturation", default=True, help="Also estimate each routing's λ*.")
def cluster_cmd(routings, saturation, **opts):
    """G servers behind a router (round_robin, random, jsq, least_kv): λ* and waiting-time percentiles
    (--servers G, default 8: the paper's Table 3)."""
    from ..studies import cluster_study

    _not_with(opts, "routing", "this study runs every rule of --routings; use --routings")
    G = parse_int("servers", opts["servers"], 1, 4096) if opts.get("servers") is not None else 8
    res = cluster_study(servers=G, routings=tuple(split_list(routings)), saturation=saturation,
                        **_inputs(opts))
    _report(res, cols=["routing", "rho", "lam_rps", "verdict", "p_backlog_grows", "wait_mean_s", "wait_p50_s", "wait_p99_s",
                       "ttft_p99_s", "lam_star_rps", "lam_star_over_mu_exact"],
            headline=_head(res.meta, ("servers", "mu_rps", "lam_star_rps", "paper_table3")))


@study.command("latency")
@_common
def latency_cmd(**opts):
    """Waiting time and TTFT percentiles (p50, p90, p99) against utilisation ρ = λ/μ."""
    from ..studies import latency_study

    res = latency_study(**_inputs(opts))
    _report(res, cols=["rho", "lam_rps", "verdict", "p_backlog_grows", "wait_p50_s", "wait_p90_s", "wait_p99_s", "ttft_p50_s",
                       "ttft_p90_s", "ttft_p99_s"])


@study.command("slo")
@_common
@click.option("--lam", metavar="RATE", default=None, help="Total arrival rate, requests/s (default: 3.5·μ).")
@click.option("--target", metavar="SECONDS", default="1.0", show_default=True, help="Latency target.")
@click.option("--metric", default="ttft_p99_s", show_default=True, metavar="NAME",
              help="Latency column held to the target: {wait,ttft,e2e}_{mean,p50,p90,p99}_s.")
@click.option("--rho", metavar="RHO", default="0.9", show_default=True,
              help="Target utilisation ρ of the paper's rule ⌈λ/(μρ)⌉.")
def slo_cmd(lam, target, metric, rho, **opts):
    """The fewest servers that keep p99 TTFT under a target, next to ⌈λ/μ⌉ and ⌈λ/(μρ)⌉."""
    from ..studies import slo_servers

    _not_with(opts, "servers", "this study searches the number of servers itself; leave --servers out")
    res = slo_servers(lam=None if lam is None else parse_float("lam", lam, 0.0, lo_open=True),
                      target_s=parse_float("target", target, 0.0, lo_open=True), metric=metric,
                      rho=parse_float("rho", rho, 0.0, 1.0, lo_open=True), **_inputs(opts))
    _report(res, cols=["servers", "lam_per_server_rps", "rho", "verdict", "value_s", "meets_target",
                       "qualifies"],
            headline=_head(res.meta, ("lam_rps", "metric", "target_s", "servers_slo", "servers_stability",
                                      "servers_rho", "rho_target")))

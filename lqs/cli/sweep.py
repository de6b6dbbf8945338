"""``lqs sweep``: a resumable sweep (:func:`lqs.sweep`) from a YAML config, or a quick grid from flags."""

from __future__ import annotations

import os

import click

from .._errors import LqsError, parse_number
from .options import mc_options, output_options, renamed_options, server_options, show_progress, split_list

_LIST_AXES = ("workload", "rho", "M", "prefill_chunk", "b", "policy", "token_budget", "servers", "routing")


@click.command("sweep")
@click.argument("config", required=False, metavar="[CONFIG.yaml]")
@output_options(json=False, out="required",
                out_help="Output directory: part files, spec.json, cells.parquet and cells.csv. Re-running into "
                         "the same DIR resumes the sweep.")
@click.option("--workload", default=None, metavar="W1,W2,..",
              help="Quick grid: presets (pd-1:1, ...), trace:NAME_OR_PATH, pd_ratio:R[:TOTAL_HI] or a fitted "
                   "length model model:FILE.json[@PROMPTxOUTPUT].")
@click.option("--lam", default=None, metavar="LO:HI:N|R1,R2,..", help="Quick grid: arrival rates, req/s.")
@click.option("--rho", default=None, metavar="R1,R2,..",
              help="Quick grid: utilisations ρ = λ/μ (λ = ρ·μ per cell, μ of the whole deployment).")
@server_options(required=False, grid=True)
@mc_options(defaults=False)
@click.option("--cells-per-part", "cells_per_part", default=None, metavar="N",
              help="Cells per part file (overrides the config; default 64).")
@click.option("--per-trial/--no-per-trial", "per_trial", default=None,
              help="Also keep one row per cell × trial (trials.parquet / trials.csv).")
@renamed_options("per_replica", "cells_per_chunk")
@click.option("--burstiness", "burstiness", default=None, metavar="K[,K...]",
              help="Gamma arrivals with shape K (inter-arrival CV 1/√K; 1 = Poisson); an axis.")
@click.option("--arrival-times", "arrival_times", default=None, metavar="FILE",
              help="Every cell replays this trace's arrival pattern, time-scaled to its λ.")
@click.option("--overwrite", is_flag=True, help="Replace a different sweep already in DIR.")
def sweep_cmd(config, out, overwrite, progress, **opts):
    """Run (or resume) a sweep over λ or ρ, workload, M, ŝ, b̄ / batch-time model, policy, token budget, servers
    and routing; write one row per cell to DIR/cells.parquet and DIR/cells.csv.

    \b
    Examples:
      lqs sweep examples/sweep_pd_ratio.yaml --out runs/pd_ratio
      lqs sweep --out runs/quick --workload pd-1:1,pd-2:1 --lam 2:4:5 --M 131000 --prefill-chunk 512 --b 0.0372
      lqs sweep --out runs/rho --workload pd-1:1 --rho 0.5,0.9,1.1 --M 65536,131000 --prefill-chunk 512 \\
                --b 0.0372
    """
    from ..sweep import SweepSpec, run_sweep

    from . import cli_path

    spec = spec_from_options(config, opts, SweepSpec)
    if cli_path() is not None:  # where it runs: the cells' numbers are the same on every path
        spec.options = {**spec.options, "path": cli_path()}
    df, info = run_sweep(spec, out, overwrite=overwrite, progress=show_progress(progress))
    _report(df, info, spec)


def spec_from_options(config, opts: dict, SweepSpec):
    """The SweepSpec of a YAML config (run settings overridden by the flags given) or of the quick-grid flags."""
    grid = {k: opts.get(k) for k in (*_LIST_AXES, "lam")}
    grid["batch"] = list(opts.get("b_model") or ()) or None
    given = {k: v for k, v in grid.items() if v is not None}
    overrides = {k: parse_number(k, opts[k]) for k in ("trials", "steps", "warmup", "seed", "cells_per_part")
                 if opts.get(k) is not None and not (k == "steps" and str(opts[k]).strip().lower() == "auto")}
    if opts.get("burstiness") is not None:  # an axis: K or K1,K2,...
        overrides["burstiness"] = [parse_number("burstiness", x) for x in str(opts["burstiness"]).split(",")]
    if str(opts.get("steps")).strip().lower() == "auto":
        overrides["steps"] = None
    if opts.get("per_trial") is not None:
        overrides["per_trial"] = opts["per_trial"]
    if opts.get("arrival_times") is not None:
        overrides["arrival_times"] = opts["arrival_times"]
    if opts.get("K") is not None:
        overrides["options"] = {"K": parse_number("K", opts["K"])}
    if config is not None:
        if given:
            k = next(iter(given))
            raise LqsError(k, given[k], "the quick-grid flags apply only without CONFIG.yaml (put the axis in the "
                                        "config)")
        spec = SweepSpec.from_yaml(config)
        if "options" in overrides:
            overrides["options"] = {**(spec.options or {}), **overrides["options"]}
        return spec.replace(**overrides) if overrides else spec
    if not given:
        raise LqsError("config", None, "give CONFIG.yaml or the quick-grid flags (--workload --lam|--rho --M "
                                       "--prefill-chunk --b ...)")
    d = {}
    for k, v in given.items():
        d[k] = v if k == "batch" or (k == "lam" and ":" in v) else split_list(v)  # lam LO:HI:N stays a string
    return SweepSpec.from_dict({**d, **overrides})


def _report(df, info, spec):
    click.echo(f"sweep: {info.n_cells} cells in {info.n_parts} parts ({info.n_groups} groups): {info.computed} parts "
               f"computed, {info.reused} reused, {info.wall_s:.1f} s")
    if df is None:  # another host merges the table
        click.echo(f"wrote this host's parts to {os.path.join(os.path.abspath(info.out), 'parts', '')}")
        return
    if spec.per_trial:
        df = df.groupby("cell", sort=True).first().reset_index()
    cols = [c for c in ("cell", "workload", "batch", "policy", "servers", "lam_rps", "rho", "M_tokens",
                        "prefill_chunk_tokens", "b_s", "mu_exact_rps", "mu_stable_rps", "lam_star_rps",
                        "verdict", "throughput_rps", "p_backlog_grows", "reliable")
            if c in df.columns]
    if spec.per_trial:
        cols = [c for c in cols if c not in ("throughput_rps", "p_backlog_grows", "reliable")]
    if len(df) <= 40:
        click.echo(df[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    names = "cells.parquet, cells.csv" + (", trials.parquet, trials.csv" if spec.per_trial else "")
    click.echo(f"wrote {os.path.join(os.path.abspath(info.out), '')} ({names}, spec.json, parts/)")

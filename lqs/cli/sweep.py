"""``lqs sweep``: a resumable sweep from a YAML config, or a quick grid from flags."""

from __future__ import annotations

import os
import sys

import click

from .._errors import LqsError

_GRID_FLAGS = ("workload", "lam", "rho", "M", "chunk", "b", "batch", "policy", "token_budget", "servers", "routing")


def _split(text):
    return [t.strip() for t in str(text).split(",") if t.strip() != ""]


@click.command("sweep")
@click.argument("config", required=False, metavar="[CONFIG.yaml]")
@click.option("--out", "out", required=True, metavar="DIR",
              help="Output directory: chunk files, spec.json, cells.parquet and cells.csv. Re-running into the "
                   "same DIR resumes the sweep.")
@click.option("--workload", default=None, metavar="W1,W2,..",
              help="Quick grid: presets (pd-1:1, ...), trace:NAME_OR_PATH or pd_ratio:R[:TOTAL_HI].")
@click.option("--lam", default=None, metavar="LO:HI:N|R1,R2,..", help="Quick grid: arrival rates, req/s.")
@click.option("--rho", default=None, metavar="R1,R2,..",
              help="Quick grid: utilisations, λ = ρ·G·μ_exact per cell.")
@click.option("--M", "M", default=None, metavar="M1,M2,..", help="Quick grid: KV capacities, tokens.")
@click.option("--chunk", default=None, metavar="C1,C2,..", help="Quick grid: prefill chunk sizes, tokens.")
@click.option("--b", "b", default=None, metavar="B1,B2,..", help="Quick grid: batch times b̄, seconds.")
@click.option("--batch", "batch", multiple=True, metavar="MODEL",
              help="Quick grid: batch-time model (repeat the flag for several): constant, lognormal:CV, "
                   "two-speed:RATIO:FRAC, affine:A0,A1,A2,A3.")
@click.option("--policy", default=None, metavar="P1,P2,..", help="Quick grid: fcfs, recompute, reserve.")
@click.option("--token-budget", "token_budget", default=None, metavar="B1,B2,..|none",
              help="Quick grid: per-step token budgets (none = no budget).")
@click.option("--servers", default=None, metavar="G1,G2,..", help="Quick grid: servers per replica (a cluster).")
@click.option("--routing", default=None, metavar="R1,R2,..", help="Quick grid: round_robin, random, jsq, least_kv.")
@click.option("--replicas", default=None, metavar="N", help="Replicas per cell (overrides the config).")
@click.option("--steps", default=None, metavar="N|auto", help="Steps per replica (overrides the config).")
@click.option("--warmup", default=None, metavar="N", help="Warm-up steps (overrides the config).")
@click.option("--seed", default=None, metavar="INT", help="Sweep seed (overrides the config).")
@click.option("--cells-per-chunk", "cells_per_chunk", default=None, metavar="N",
              help="Cells per chunk file (overrides the config; default 64).")
@click.option("--per-replica/--no-per-replica", "per_replica", default=None,
              help="Also keep one row per cell × replica (replicas.parquet / replicas.csv).")
@click.option("--overwrite", is_flag=True, help="Replace a different sweep already in DIR.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a TTY).")
def sweep_cmd(config, out, workload, lam, rho, M, chunk, b, batch, policy, token_budget, servers, routing, replicas,
              steps, warmup, seed, cells_per_chunk, per_replica, overwrite, progress):
    """Run (or resume) a sweep over λ or ρ, workload, M, ŝ, b̄ / batch model, policy, token budget and cluster
    size; write one row per cell to DIR/cells.parquet and DIR/cells.csv.

    \b
    Examples:
      lqs sweep examples/sweep_pd_ratio.yaml --out runs/pd_ratio
      lqs sweep --out runs/quick --workload pd-1:1,pd-2:1 --lam 2:4:5 --M 131000 --chunk 512 --b 0.0372
      lqs sweep --out runs/rho --workload pd-1:1 --rho 0.5,0.9,1.1 --M 65536,131000 --chunk 512 --b 0.0372
    """
    from ..sweep import SweepSpec, run_sweep

    grid = dict(workload=workload, lam=lam, rho=rho, M=M, chunk=chunk, b=b, batch=list(batch) or None,
                policy=policy, token_budget=token_budget, servers=servers, routing=routing)
    given = {k: v for k, v in grid.items() if v is not None}
    if config is not None and given:
        raise LqsError(next(iter(given)), next(iter(given.values())),
                       "the quick-grid flags apply only without CONFIG.yaml (put the axis in the config)")
    run = dict(replicas=replicas, steps=steps, warmup=warmup, seed=seed, cells_per_chunk=cells_per_chunk,
               per_replica=per_replica)
    overrides = {k: v for k, v in run.items() if v is not None}
    if config is not None:
        spec = SweepSpec.from_yaml(config)
        if overrides:
            spec = spec.replace(**overrides)
    else:
        if not given:
            raise LqsError("config", None, "give CONFIG.yaml or the quick-grid flags (--workload --lam|--rho --M "
                                           "--chunk --b ...)")
        d = {}
        for k, v in given.items():
            if k == "batch":
                d[k] = v
            elif k == "lam" and ":" in v:
                d[k] = v  # LO:HI:N
            else:
                d[k] = _split(v)
        spec = SweepSpec.from_dict({**d, **overrides})
    show = sys.stderr.isatty() if progress is None else bool(progress)
    df, info = run_sweep(spec, out, overwrite=overwrite, progress=show)
    _report(df, info, spec)


def _report(df, info, spec):
    msg = (f"sweep: {info.n_cells} cells in {info.n_chunks} chunks ({info.n_groups} groups): {info.computed} chunks "
           f"computed, {info.reused} reused, {info.wall_s:.1f} s")
    click.echo(msg)
    if spec.per_replica:
        df = df.groupby("cell", sort=True).first().reset_index()
    cols = [c for c in ("cell", "workload", "batch", "policy", "servers", "lam_rps", "M_tokens", "chunk_tokens",
                        "b_s", "mu_exact_rps", "mu_stable_rps", "throughput_rps", "p_unstable", "reliable")
            if c in df.columns]
    if spec.per_replica:
        cols = [c for c in cols if c not in ("throughput_rps", "p_unstable", "reliable")]
    if len(df) <= 40:
        click.echo(df[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    names = "cells.parquet, cells.csv" + (", replicas.parquet, replicas.csv" if spec.per_replica else "")
    click.echo(f"wrote {os.path.join(os.path.abspath(info.out), '')} ({names}, spec.json, chunks/)")




"""``lqs bench``: time each step-loop path on this device, check bit-identity, record it for ``path="auto"``."""

from __future__ import annotations

import click

from .options import echo_json, parse_int


@click.command("bench")
@click.option("--quick", is_flag=True, help="A short run (a few seconds per path on a CPU).")
@click.option("--trials", default=None, metavar="N", help="Trials (default: 64 on a CPU, 16384 on a GPU; --quick: "
                                                          "16 / 4096).")
@click.option("--steps", default=None, metavar="N", help="Steps of the timed call (default 4096; --quick: 128 on a "
                                                         "CPU, 1024 on a GPU).")
@click.option("--paths", default="xla,fused", show_default=True, metavar="LIST",
              help="Paths to time: xla, fused (Pallas interpret mode off a GPU). xla is always run (the reference).")
@click.option("--engines", default=None, hidden=True, help="Deprecated name of --paths.")
@click.option("--policy", default="swap", show_default=True, metavar="swap|recompute|reserve",
              help="Preemption policy of the run (records are per policy).")
@click.option("--batch", "batch", default="constant", show_default=True, metavar="SPEC",
              help="Batch-time model (constant, lognormal:CV, two-speed:R:F, affine:A0,A1,A2,A3); records are per "
                   "model kind.")
@click.option("--no-record", is_flag=True, help="Do not write the result to the user cache.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list on stdout: one object per path.")
def bench_cmd(quick, trials, steps, paths, engines, policy, batch, no_record, as_json):
    """Measure this device's step-loop paths (pd-1:1 saturated, same keys), check their final states are
    bit-identical, and record the result: path='auto' then runs the fastest identical path measured here.

    \b
    Records: $LQS_CACHE_DIR/bench.json (default: the platform's user cache dir, e.g. ~/.cache/lqs/bench.json).
    Example:
      lqs bench --quick
    """
    from ..engine.bench import bench, table

    from .._batch import check_batch_spec
    from .._server import normalise_policy

    check_batch_spec(batch)
    if engines is not None:
        click.echo("lqs bench: --engines is deprecated, use --paths", err=True)
        paths = engines
    rows = bench(trials=None if trials is None else parse_int("trials", trials, 1, 1 << 24),
                 steps=None if steps is None else parse_int("steps", steps, 64, 1 << 20), quick=quick,
                 paths=[e.strip() for e in paths.split(",") if e.strip()], policy=normalise_policy(policy),
                 batch=batch,
                 record=not no_record, progress=None if as_json else (lambda m: click.echo(m, err=True)))
    if as_json:
        echo_json(rows)
        return
    click.echo(table(rows))

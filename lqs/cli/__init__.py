"""The ``lqs`` command line (console script ``lqs``, also ``python -m lqs``).

One module per command (``capacity``, ``simulate``, ``critical``, ``sweep``, ``study``, ``reproduce``, ``fit``,
``check``, ``replay``, ``calibrate``); the options they share (workload, server, Monte Carlo, output) are defined once in
:mod:`lqs.cli.options`, the measured inputs (benchmark results, server logs, length models) in :mod:`lqs.cli.inputs`.

Every :class:`lqs.LqsError` raised by any command is printed as one line ``error: <message>`` on stderr and the
process exits with status 2 (click's own usage errors exit with 2 as well). The library never imports this package.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from .._errors import LqsError


def report_error(err: Exception, ctx: click.Context | None = None):
    """Print ``error: <message>`` on one line to stderr and exit with status 2."""
    msg = " ".join(str(err).split())
    click.echo(f"error: {msg}", err=True)
    if ctx is not None:
        ctx.exit(2)
    sys.exit(2)


class LqsGroup(click.Group):
    """A click group whose sub-commands turn LqsError into a one-line message and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LqsError as e:
            report_error(e, ctx)


def cli_path():
    """The ``--path`` given to ``lqs`` (None when not given, or outside a command)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj.get("path") if isinstance(obj, dict) else None


@click.group(cls=LqsGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lqs")
@click.option("--path", "path", default=None, metavar="auto|xla|fused",
              help="Monte Carlo step-loop path: auto (the fastest path `lqs bench` recorded bit-identical on this "
                   "device, else XLA; default, or $LQS_PATH), xla, or fused (interpret mode on a CPU: exact but "
                   "slow).")
@click.option("--engine", "engine", default=None, hidden=True, help="Deprecated name of --path.")
def main(path=None, engine=None):
    """lqs — LLM queueing stability: is a KV-cache-limited LLM server stable at a given arrival rate?"""
    from .._errors import check_choice

    if engine is not None:
        click.echo("lqs: --engine is deprecated, use --path", err=True)
        path = engine if path is None else path
    if path is not None:
        path = check_choice("--path", path.strip().lower(), ("auto", "xla", "fused"))
    # the path travels on the MonteCarlo values the commands build (options.build_mc), never as a global
    click.get_current_context().obj = {"path": path}


def _register():
    from .bench import bench_cmd
    from .capacity import capacity_cmd
    from .check import check_cmd
    from .critical import critical_cmd
    from .disagg import disagg_cmd
    from .fit import fit_group
    from .plan import plan_cmd
    from .replay import calibrate_cmd, replay_cmd
    from .reproduce import reproduce_group
    from .simulate import simulate_cmd
    from .study import study
    from .sweep import sweep_cmd

    for cmd in (capacity_cmd, simulate_cmd, critical_cmd, check_cmd, replay_cmd, calibrate_cmd, fit_group, sweep_cmd,
                study, reproduce_group, bench_cmd, plan_cmd, disagg_cmd):
        main.add_command(cmd)


_register()

from .capacity import VERDICT_BAND, VERDICT_STABLE, VERDICT_UNSTABLE  # noqa: E402  (re-exported for callers)

__all__ = ["main", "LqsGroup", "report_error", "VERDICT_STABLE", "VERDICT_BAND", "VERDICT_UNSTABLE"]

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="lqs")

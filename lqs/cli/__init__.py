"""The ``lqs`` command line (console script ``lqs``, also ``python -m lqs``).

One module per command (``capacity``, ``simulate``, ``critical``, ``sweep``, ``study``, ``reproduce``, ``fit``,
``check``); the options they share (workload, server, Monte Carlo, output) are defined once in
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


@click.group(cls=LqsGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lqs")
@click.option("--engine", "engine", type=click.Choice(["auto", "xla", "fused"]), default=None,
              help="Monte Carlo step loop: auto (the fastest path `lqs bench` recorded bit-identical on this device, "
                   "else XLA; default, or $LQS_ENGINE), xla, or fused (interpret mode on a CPU: exact but slow).")
def main(engine=None):
    """lqs — LLM queueing stability: is a KV-cache-limited LLM server stable at a given arrival rate?"""
    from .. import set_engine

    set_engine(engine)  # None: $LQS_ENGINE or auto
    click.get_current_context().call_on_close(lambda: set_engine(None))  # nothing leaks into a later call


def _register():
    from .bench import bench_cmd
    from .capacity import capacity_cmd
    from .check import check_cmd
    from .critical import critical_cmd
    from .fit import fit_group
    from .reproduce import reproduce_group
    from .simulate import simulate_cmd
    from .study import study
    from .sweep import sweep_cmd

    for cmd in (capacity_cmd, simulate_cmd, critical_cmd, check_cmd, fit_group, sweep_cmd, study, reproduce_group,
                bench_cmd):
        main.add_command(cmd)


_register()

from .capacity import VERDICT_BAND, VERDICT_STABLE, VERDICT_UNSTABLE  # noqa: E402  (re-exported for callers)

__all__ = ["main", "LqsGroup", "report_error", "VERDICT_STABLE", "VERDICT_BAND", "VERDICT_UNSTABLE"]

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="lqs")

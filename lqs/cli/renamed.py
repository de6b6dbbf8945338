"""Options that were renamed: hidden flags under their old names that fail with a one-line "was renamed" error
(re-exported by lqs.cli.options)."""

from __future__ import annotations

import click

from .._errors import LqsError


def _compose(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


# old flag → the one-line error that replaces it
RENAMED = {
    "replicas": "--replicas was renamed --trials (Monte Carlo repetitions); serving instances are --servers",
    "grid_replicas": "--grid-replicas was renamed --grid-trials (Monte Carlo repetitions per grid λ)",
    "per_replica": "--per-replica was renamed --per-trial (one row per cell × trial)",
    "cells_per_chunk": "--cells-per-chunk was renamed --cells-per-part (cells per part file)",
    "parts": "--parts was renamed --sections (closed_form, iid, affine)",
}


class RenamedOption(LqsError):
    """A flag that no longer exists under its old name: the message says what it is called now."""

    def __init__(self, name: str, value):
        super().__init__(name, value, RENAMED[name])
        self.args = (RENAMED[name],)



def _renamed_cb(ctx, param, value):
    if value is not None and not ctx.resilient_parsing:
        raise RenamedOption(param.name, value)
    return value


def renamed_options(*names):
    """Hidden options under old names that fail with a one-line 'was renamed' error (see :data:`RENAMED`)."""
    flags = {"replicas": "--replicas", "grid_replicas": "--grid-replicas",
             "per_replica": "--per-replica/--no-per-replica", "cells_per_chunk": "--cells-per-chunk",
             "parts": "--parts"}
    return _compose(*(click.option(flags[n], n, hidden=True, default=None, expose_value=False, is_eager=True,
                                   callback=_renamed_cb) for n in names))

"""The arrival process of the Monte Carlo commands (``simulate``, ``critical``): ``--burstiness K`` and
``--arrival-times FILE`` (docs/model.md, "Arrival processes")."""

from __future__ import annotations

import click

from .._errors import LqsError
from .options import _compose, parse_float


def arrival_options():
    """--burstiness K and --arrival-times FILE: the arrival process of the Monte Carlo (default Poisson)."""
    return _compose(
        click.option("--burstiness", "burstiness", metavar="K", default=None,
                     help="Gamma arrivals with shape K (inter-arrival CV 1/√K; the --burstiness of vLLM and SGLang's "
                          "benchmark clients; 1 = Poisson). No phases."),
        click.option("--arrival-times", "arrival_times", metavar="FILE", default=None,
                     help="Replay this trace's or open-loop benchmark's arrival pattern (its instants, time-scaled "
                          "to each λ and repeated). No phases."),
    )


def build_arrivals(opts: dict):
    """The :class:`lqs.Arrivals` of --burstiness / --arrival-times (None: Poisson); checked before any run."""
    from .._arrivals import Arrivals

    k, path = opts.get("burstiness"), opts.get("arrival_times")
    if k is not None and path is not None:
        raise LqsError("burstiness", k, "give --burstiness or --arrival-times, not both")
    if path is not None:
        from ..traces import load_trace

        tr = load_trace(path)
        if tr.arrival_s is None:
            raise LqsError("arrival_times", path, "has no arrival times (a timestamp column, or a benchmark "
                                                  "result's start_times)")
        return Arrivals("replayed", instants_s=tr.arrival_s)
    if k is not None:
        k = parse_float("burstiness", k, 0.0, 1e6, lo_open=True)
        return None if k == 1.0 else Arrivals("gamma", burstiness=k)
    return None

"""What every study shares: the result type, the default Server and MonteCarlo by mode, keys, labels, the
crossing of ½ by the share of trials whose backlog grew and the writing of the CSV, JSON and PNG.

Units: tokens, seconds, requests per second (docs/model.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import _jsonio
from .._errors import LqsError, check_int
from .._server import MonteCarlo, Server, as_server, resolve_mc

PAPER_M, PAPER_CHUNK, PAPER_B1 = 131_000, 512, 0.0372
# paper Table 3: 8 serving instances, P/D 1:1, round robin
PAPER_CLUSTER = dict(servers=8, mu_theory_rps=25.808, mu_measured_rps=26.710)


@dataclass
class StudyResult:
    """A study's tidy table (``data``), the PNG written (``png``, None without ``out``), the CSV and headline
    numbers (``meta``). Unpacks as ``df, png = result``."""

    name: str
    data: pd.DataFrame
    png: str | None = None
    csv: str | None = None
    meta: dict = field(default_factory=dict)

    def __iter__(self):
        yield self.data
        yield self.png


# ----------------------------------------------------------------------------------------------- defaults by mode
def default_server(quick: bool = False) -> Server:
    """The studies' default Server: the paper's M = 131,000 tokens, ŝ = 512, b̄ = 0.0372 s (meant for an
    accelerator), or M = 16,384 in ``quick`` mode (minutes on a laptop CPU)."""
    return Server(M=16_384 if quick else PAPER_M, prefill_chunk=PAPER_CHUNK, b=PAPER_B1)


def default_mc(quick: bool = False) -> MonteCarlo:
    """The studies' default MonteCarlo: 64 trials, the automatic horizon and 4,000 warm-up steps, or in ``quick``
    mode 16 trials of 10,000 steps with 2,500 warm-up steps."""
    if quick:
        return MonteCarlo(trials=16, steps=10_000, warmup=2_500)
    return MonteCarlo(trials=64, steps=None, warmup=4000)


def default_total_hi(quick: bool = False) -> int:
    """Largest s + o of the default P/D workloads (``lqs.pd_ratio(r, total_hi)``)."""
    return 800 if quick else 3200


def setup(workload, server, mc, quick, total_hi=None, *, default_workload=True):
    """Resolve a study's (workload, server, mc, total_hi): None → the defaults of the mode; checked types."""
    total_hi = default_total_hi(quick) if total_hi is None else check_int("total_hi", total_hi, 2)
    server = default_server(quick) if server is None else as_server(server)
    mc = default_mc(quick) if mc is None else resolve_mc(mc, {})
    if workload is None and default_workload:
        workload = pd_1to1(total_hi)
    if workload is not None:
        from .._workload import Workload

        if not isinstance(workload, Workload):
            raise LqsError("workload", type(workload).__name__, "must be an lqs Workload (a name such as 'pd-1:1' "
                                                               "goes through lqs.preset first) or None")
    return workload, server, mc, total_hi


def pd_1to1(total_hi):
    from .._workload import pd_ratio

    return pd_ratio(1.0, total_hi=total_hi)


def settings(server: Server, mc: MonteCarlo, quick: bool) -> dict:
    """The run settings every study's meta records: the server and Monte Carlo descriptions, the mode and the
    closed form's b̄ (``b_s``, NaN where the server has none)."""
    try:
        b_s = server.b_mean_s
    except Exception:  # noqa: BLE001 - a b̄ grid or an affine model without b_theory
        b_s = float("nan")
    return dict(server=server.describe(), monte_carlo=mc.describe(), quick=bool(quick), b_s=b_s)


def key(seed, i=None):
    """The study's PRNG key (``seed``), folded with ``i`` for the i-th run."""
    import jax

    k = jax.random.key(check_int("seed", seed, 0, 2**63 - 1))
    return k if i is None else jax.random.fold_in(k, i)


# ----------------------------------------------------------------------------------------------- labels
def label(w) -> str:
    """Short description of a workload for titles."""
    from .._marginals import IntUniform
    from .._workload import Independent, Mixture

    if isinstance(w, Independent) and isinstance(w.s, IntUniform) and isinstance(w.o, IntUniform):
        return f"s~U{{{int(w.s.low)}..{int(w.s.high)}}}, o~U{{{int(w.o.low)}..{int(w.o.high)}}}"
    if isinstance(w, Mixture):
        return "mixture of " + ", ".join(f"{q:.2g}×[{label(p)}]" for q, p in w.components())
    return type(w).__name__


def ratio_label(r) -> str:
    r = float(r)
    if r >= 1:
        return f"{r:g}:1"
    return f"1:{1 / r:g}"


# ----------------------------------------------------------------------------------------------- numbers
def saturation(row) -> tuple[float, float]:
    """(λ*, se) of a saturated summary row: the control-variate saturation throughput (as lqs.critical)."""
    if np.isfinite(row["throughput_cv_rps"]):
        return float(row["throughput_cv_rps"]), float(row["throughput_cv_se_rps"])
    return float(row["throughput_rps"]), float(row["throughput_se_rps"])


def crossing(x, p) -> float:
    """The λ where a share of trials (p_backlog_grows) first crosses ½ (linear interpolation; NaN when it never does)."""
    from ..engine import crossing as c

    return c(np.asarray(x, np.float64), np.asarray(p, np.float64))


def mean_step_s(trials: pd.DataFrame) -> float:
    """Mean batch time over the measurement windows of a result's trials (seconds per step)."""
    return float((trials.window_s / (trials.steps - trials.warmup_steps)).mean())


# ----------------------------------------------------------------------------------------------- writing
def write(name, df, meta, plot, out) -> StudyResult:
    """The study's result; with ``out``, also ``out/<name>.csv``, ``.json`` (headline numbers, strict JSON) and
    ``.png`` (``plot(df, meta)`` returns the figure; it is drawn only when there is somewhere to save it)."""
    res = StudyResult(name=name, data=df, meta=meta)
    if out is None:
        return res
    os.makedirs(out, exist_ok=True)
    res.csv = os.path.join(out, f"{name}.csv")
    df.to_csv(res.csv, index=False)
    with open(os.path.join(out, f"{name}.json"), "w") as fh:
        _jsonio.dump(meta, fh, indent=2)
    if plot is not None:
        from .plots import save

        res.png = save(plot(df, meta), os.path.join(out, f"{name}.png"))
    return res

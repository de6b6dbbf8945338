"""Click options and input resolution shared by the ``lqs`` commands (capacity, simulate, critical, sweep).

Numbers arrive as text and are validated here, so every bad value becomes one :class:`lqs.LqsError` naming the
parameter (the CLI prints it on one line and exits with status 2) rather than a multi-line click usage error.

Usage in a command::

    @main.command()
    @workload_options
    @server_options
    def simulate(workload, trace, s_col, o_col, t_col, split, M, chunk, b, b_samples, b_estimator, b_col):
        M, chunk = resolve_server(M, chunk)
        wl = resolve_workload(workload=workload, trace=trace, s_col=s_col, o_col=o_col, t_col=t_col,
                              split=split, M=M)
        bb = resolve_b(b=b, b_samples=b_samples, b_estimator=b_estimator, b_col=b_col)
        ... wl.workload, wl.label, wl.trace, bb.b_s ...
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from ._errors import LqsError, check_float, check_int, parse_number

SPLITS = ("all", "train", "test")
TRAIN_FRAC = 0.8
SPLIT_SEED = 0


# ----------------------------------------------------------------------------------------------- numbers
def parse_int(param: str, text, lo: int | None = None, hi: int | None = None) -> int:
    """Text → int in [lo, hi]; accepts '131000', '131_000' and '1.31e5' (an integral value)."""
    return check_int(param, parse_number(param, text), lo, hi)


def parse_float(param: str, text, lo=None, hi=None, *, lo_open=False, hi_open=False) -> float:
    return check_float(param, parse_number(param, text), lo, hi, lo_open=lo_open, hi_open=hi_open)


# ----------------------------------------------------------------------------------------------- options
def _compose(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def workload_options(f):
    """--workload PRESET | --trace PATH_OR_NAME [--s-col --o-col --t-col] [--split all|train|test]."""
    return _compose(
        click.option("--workload", "workload", metavar="PRESET", default=None,
                     help="Paper workload: pd-1:1, pd-2:1, pd-1:2, pd-8:1 or mix-2:1/1:2. "
                          "Give exactly one of --workload / --trace."),
        click.option("--trace", "trace", metavar="PATH_OR_NAME", default=None,
                     help="Request trace (.csv, .jsonl/.ndjson, .parquet) or a bundled one: azure-conv, azure-code."),
        click.option("--s-col", "s_col", metavar="COL", default=None, help="Trace column of prompt lengths s."),
        click.option("--o-col", "o_col", metavar="COL", default=None, help="Trace column of output lengths o."),
        click.option("--t-col", "t_col", metavar="COL", default=None,
                     help="Trace column of arrival times (unit from a _ns/_us/_ms/_s suffix, else seconds)."),
        click.option("--split", "split", metavar="all|train|test", default="all", show_default=True,
                     help="Use the whole trace, or the paper's 80% train / 20% test part (chronological when "
                          "arrival times are known, else a fixed-seed permutation)."),
    )(f)


def server_options(f):
    """--M TOKENS --chunk TOKENS and --b SECONDS | --b-samples FILE [--b-estimator] [--b-col]."""
    return _compose(
        click.option("--M", "M", metavar="TOKENS", required=True, help="KV-cache capacity M in tokens."),
        click.option("--chunk", "chunk", metavar="TOKENS", required=True, help="Prefill chunk size ŝ in tokens."),
        click.option("--b", "b", metavar="SECONDS", default=None,
                     help="Batch (step) time b̄ in seconds. Give exactly one of --b / --b-samples."),
        click.option("--b-samples", "b_samples", metavar="FILE", default=None,
                     help="File of observed batch times in seconds (CSV, JSONL, Parquet or one number per line)."),
        click.option("--b-estimator", "b_estimator", metavar="mean|median|trimmed:ALPHA", default=None,
                     help="How to estimate b̄ from --b-samples (default: median, as the paper)."),
        click.option("--b-col", "b_col", metavar="COL", default=None, help="Column of --b-samples to use."),
    )(f)


# ----------------------------------------------------------------------------------------------- resolution
@dataclass(frozen=True, eq=False)
class ResolvedWorkload:
    """What a command needs to know about the chosen workload."""

    workload: object  # an lqs.Workload
    label: str  # e.g. 'pd-1:1' or 'azure-conv' or 'azure-conv[test]'
    trace: object | None = None  # the lqs.Trace (after the split) when --trace was given


@dataclass(frozen=True)
class ResolvedB:
    """The batch time b̄ and where it came from."""

    b_s: float
    source: str  # 'given' or the samples file
    estimator: str | None = None
    n_samples: int | None = None


def resolve_server(M, chunk) -> tuple[int, int]:
    """(M, chunk) as validated integers ≥ 1."""
    return parse_int("M", M, 1), parse_int("chunk", chunk, 1)


def resolve_workload(workload=None, trace=None, s_col=None, o_col=None, t_col=None, split="all", M=None,
                     **_ignored) -> ResolvedWorkload:
    """Exactly one of a preset name or a trace → a validated workload (checked against M when M is given)."""
    from ._workload import preset

    if (workload is None) == (trace is None):
        raise LqsError("workload", workload if workload is not None else None,
                       "give exactly one of --workload PRESET or --trace PATH_OR_NAME",
                       "both were given" if workload is not None else "neither was given")
    if split not in SPLITS:
        raise LqsError("split", split, "must be one of " + ", ".join(SPLITS))
    if workload is not None:
        for opt, v in (("s_col", s_col), ("o_col", o_col), ("t_col", t_col)):
            if v is not None:
                raise LqsError(opt, v, "only applies with --trace")
        if split != "all":
            raise LqsError("split", split, "only applies with --trace (use all with --workload)")
        w = preset(workload)
        if M is not None:
            w.validate(M)
        return ResolvedWorkload(workload=w, label=workload, trace=None)

    from .traces import load_trace

    tr = load_trace(trace, s_col=s_col, o_col=o_col, t_col=t_col)
    if split != "all":
        train, test = tr.split(TRAIN_FRAC, SPLIT_SEED)
        tr = train if split == "train" else test
    if M is not None:
        tr.validate(M)
    return ResolvedWorkload(workload=tr.workload(), label=tr.name, trace=tr)


def resolve_b(b=None, b_samples=None, b_estimator=None, b_col=None, **_ignored) -> ResolvedB:
    """Exactly one of a batch time or a file of samples (+ estimator, default median) → b̄ in seconds."""
    from ._theory import estimate_b, parse_estimator

    if (b is None) == (b_samples is None):
        raise LqsError("b", b, "give exactly one of --b SECONDS or --b-samples FILE",
                       "both were given" if b is not None else "neither was given")
    if b is not None:
        if b_estimator is not None:
            raise LqsError("b_estimator", b_estimator, "only applies with --b-samples")
        if b_col is not None:
            raise LqsError("b_col", b_col, "only applies with --b-samples")
        return ResolvedB(b_s=parse_float("b", b, 0.0, lo_open=True), source="given")

    from .traces import load_b_samples

    est = "median" if b_estimator is None else b_estimator
    parse_estimator(est)  # validate the name before reading the file
    x = load_b_samples(b_samples, col=b_col)
    return ResolvedB(b_s=estimate_b(x, est), source=str(b_samples), estimator=est, n_samples=int(x.size))


def resolve_rate(lam=None, rho=0.9) -> tuple[float | None, float]:
    """(λ or None, ρ): λ ≥ 0 requests/s, target utilisation ρ in (0, 1]."""
    lam_v = None if lam is None else parse_float("lam", lam, 0.0)
    rho_v = parse_float("rho", rho, 0.0, 1.0, lo_open=True)
    return lam_v, rho_v

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

import math
import sys
from dataclasses import dataclass

import click
import numpy as np

from .._errors import LqsError, check_float, check_int, parse_number

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
    from .._workload import preset

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

    from ..traces import load_trace

    tr = load_trace(trace, s_col=s_col, o_col=o_col, t_col=t_col)
    if split != "all":
        train, test = tr.split(TRAIN_FRAC, SPLIT_SEED)
        tr = train if split == "train" else test
    if M is not None:
        tr.validate(M)
    return ResolvedWorkload(workload=tr.workload(), label=tr.name, trace=tr)


def resolve_b(b=None, b_samples=None, b_estimator=None, b_col=None, **_ignored) -> ResolvedB:
    """Exactly one of a batch time or a file of samples (+ estimator, default median) → b̄ in seconds."""
    from .._theory import estimate_b, parse_estimator

    if (b is None) == (b_samples is None):
        raise LqsError("b", b, "give exactly one of --b SECONDS or --b-samples FILE",
                       "both were given" if b is not None else "neither was given")
    if b is not None:
        if b_estimator is not None:
            raise LqsError("b_estimator", b_estimator, "only applies with --b-samples")
        if b_col is not None:
            raise LqsError("b_col", b_col, "only applies with --b-samples")
        return ResolvedB(b_s=parse_float("b", b, 0.0, lo_open=True), source="given")

    from ..traces import load_b_samples

    est = "median" if b_estimator is None else b_estimator
    parse_estimator(est)  # validate the name before reading the file
    x = load_b_samples(b_samples, col=b_col)
    return ResolvedB(b_s=estimate_b(x, est), source=str(b_samples), estimator=est, n_samples=int(x.size))


def resolve_rate(lam=None, rho=0.9) -> tuple[float | None, float]:
    """(λ or None, ρ): λ ≥ 0 requests/s, target utilisation ρ in (0, 1]."""
    lam_v = None if lam is None else parse_float("lam", lam, 0.0)
    rho_v = parse_float("rho", rho, 0.0, 1.0, lo_open=True)
    return lam_v, rho_v


# ----------------------------------------------------------------------------------------------- simulation
def _sim_options(f):
    opts = [
        click.option("--policy", default="fcfs", show_default=True, metavar="fcfs|recompute|reserve",
                     help="Scheduling policy (SPEC.md)."),
        click.option("--replicas", default="64", show_default=True, metavar="N", help="Independent servers."),
        click.option("--steps", default="auto", show_default=True, metavar="N|auto",
                     help="Steps per replica; auto: warm-up + max(16000, steps for 2000 completions at μ)."),
        click.option("--warmup", default="4000", show_default=True, metavar="N", help="Warm-up steps (not measured)."),
        click.option("--seed", default="0", show_default=True, metavar="INT", help="Seed of the one PRNG key."),
        click.option("--token-budget", default=None, metavar="TOKENS",
                     help="Per-step token budget B (vLLM max_num_batched_tokens); must be ≥ chunk."),
        click.option("--K", "K", default=None, metavar="SLOTS", help="Slots per replica (default: sized from M)."),
        click.option("--b-model", default="constant", show_default=True,
                     metavar="constant|empirical|lognormal:CV|two-speed:RATIO:FRAC|affine:A0,A1,A2,A3",
                     help="Batch-time model: b̄ constant; i.i.d. from --b-samples; lognormal with mean b̄; "
                          "a fraction FRAC of batches RATIO× slower (mean b̄); or affine in the step's prefill "
                          "tokens, decode tokens and memory (b̄ then only feeds the theory columns)."),
        click.option("--servers", default="1", show_default=True, metavar="G",
                     help="Servers per replica (a cluster in lock-step); λ is the cluster's total rate."),
        click.option("--routing", default="round_robin", show_default=True, metavar="round_robin|random|jsq|least_kv",
                     help="How a cluster routes each arrival."),
        click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a TTY)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _parse_lams(text) -> list[float]:
    """'3.0' | '2.5,3,3.5' | 'lo:hi:n' (n evenly spaced values)."""
    if text is None:
        raise LqsError("lam", None, "give --lam RATE, a list R1,R2,... or a range LO:HI:N")
    t = str(text).strip()
    if ":" in t:
        parts = t.split(":")
        if len(parts) != 3:
            raise LqsError("lam", text, "a range is LO:HI:N, e.g. 2.5:4:7")
        lo = parse_float("lam", parts[0], 0.0)
        hi = parse_float("lam", parts[1], lo)
        n = parse_int("lam", parts[2], 1, 10_000)
        return [float(x) for x in np.linspace(lo, hi, n)]
    lams = [parse_float("lam", x, 0.0) for x in t.split(",") if x.strip() != ""]
    if not lams:
        raise LqsError("lam", text, "give --lam RATE, a list R1,R2,... or a range LO:HI:N")
    return lams


def _batch_model(spec: str, b_s: float, b_samples_file, b_col):
    from .._batch import AffineBatch, ConstantBatch, EmpiricalBatch, LogNormalMixBatch

    spec = (spec or "constant").strip()
    name, _, arg = spec.partition(":")
    if name in ("constant", "empirical") and arg:
        raise LqsError("b_model", spec, f"{name} takes no argument (b̄ comes from --b / --b-samples)")
    if name == "constant":
        return ConstantBatch(b_s)
    if name == "empirical":
        if b_samples_file is None:
            raise LqsError("b_model", spec, "empirical needs --b-samples FILE")
        from ..traces import load_b_samples

        return EmpiricalBatch(load_b_samples(b_samples_file, col=b_col))
    if name == "lognormal":
        cv = parse_float("b_model", arg or "0.5", 0.0)
        return LogNormalMixBatch.from_mean_cv(b_s, cv)
    if name == "two-speed":
        try:
            r_s, f_s = arg.split(",") if "," in arg else arg.split(":")
        except ValueError:
            raise LqsError("b_model", spec, "two-speed:RATIO:FRAC, e.g. two-speed:3:0.3") from None
        ratio = parse_float("b_model", r_s, 1.0)
        frac = parse_float("b_model", f_s, 0.0, 1.0)
        fast = b_s / (1 - frac + frac * ratio)  # mean b̄ (σ = 0.1 adds < 1 %, corrected below)
        m = LogNormalMixBatch.two_speed(fast, fast * ratio, frac)
        return LogNormalMixBatch.two_speed(fast * b_s / m.mean_s, fast * ratio * b_s / m.mean_s, frac)
    if name == "affine":
        try:
            a = [float(x) for x in arg.split(",")]
        except ValueError:
            a = []
        if len(a) != 4:
            raise LqsError("b_model", spec, "affine:A0,A1,A2,A3 with four numbers (seconds, s/token, s/token, "
                                            "s/token)")
        try:
            return AffineBatch(*a)
        except LqsError as e:
            raise LqsError("b_model", spec, "affine:A0,A1,A2,A3 needs A0 > 0 and A1, A2, A3 ≥ 0",
                           f"{e.param}={e.value}") from None
    raise LqsError("b_model", spec, "must be constant, empirical, lognormal:CV, two-speed:RATIO:FRAC or "
                                    "affine:A0,A1,A2,A3")


def _common(workload, trace, s_col, o_col, t_col, split, M, chunk, b, b_samples, b_estimator, b_col, policy,
            replicas, steps, warmup, seed, token_budget, K, b_model, servers="1", routing="round_robin"):
    from .._engine import POLICIES

    M, chunk = resolve_server(M, chunk)
    wl = resolve_workload(workload=workload, trace=trace, s_col=s_col, o_col=o_col, t_col=t_col, split=split, M=M)
    if b is None and b_samples is not None and (b_model or "").startswith("empirical"):
        bb = resolve_b(b_samples=b_samples, b_estimator=b_estimator or "mean", b_col=b_col)
    else:
        bb = resolve_b(b=b, b_samples=b_samples, b_estimator=b_estimator, b_col=b_col)
    if policy not in POLICIES:
        raise LqsError("policy", policy, "must be one of " + ", ".join(POLICIES))
    out = dict(M=M, chunk=chunk, wl=wl, bb=bb, policy=policy, replicas=parse_int("replicas", replicas, 1, 2**24),
               warmup=parse_int("warmup", warmup, 0), seed=parse_int("seed", seed, 0, 2**63 - 1),
               token_budget=None if token_budget is None else parse_int("token_budget", token_budget, chunk),
               K=None if K is None else parse_int("K", K, 8, 2**20))
    out["steps"] = None if str(steps).strip().lower() == "auto" else parse_int("steps", steps, 2)
    if out["steps"] is not None and out["steps"] <= out["warmup"]:
        raise LqsError("steps", out["steps"], f"must exceed --warmup ({out['warmup']})")
    out["batch"] = _batch_model(b_model, bb.b_s, b_samples, b_col)
    out["servers"] = parse_int("servers", servers, 1, 4096)
    from ..kernels.engine import ROUTINGS

    if routing not in ROUTINGS:
        raise LqsError("routing", routing, "must be one of " + ", ".join(ROUTINGS))
    out["routing"] = routing
    return out


def _console():
    """A rich console; piped or captured output gets a fixed wide width so that no table cell is cut to '…'."""
    from rich.console import Console

    con = Console(highlight=False)
    return con if con.is_terminal else Console(highlight=False, width=160)


def _show_progress(flag):
    return sys.stderr.isatty() if flag is None else bool(flag)


def _json_clean(x):
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x

"""The options the ``lqs`` commands share, defined once, and the two helpers that turn them into the library's
values: :func:`build_server` (one :class:`lqs.Server`) and :func:`build_mc` (one :class:`lqs.MonteCarlo`).

Option groups (decorators): :func:`workload_options` (``--workload`` | ``--trace`` …), :func:`server_options`
(``--M --prefill-chunk/--chunk --b --b-samples --b-estimator --b-col --servers`` and, for the Monte Carlo
commands, ``--b-model --policy --token-budget --routing``), :func:`mc_options` (``--trials --steps --warmup --seed
--K --progress``) and :func:`output_options` (``--json --out``). Words follow README's Vocabulary table.
Numbers arrive as text and are validated by the library values themselves (``Server``, ``MonteCarlo``), so every
bad value is one :class:`lqs.LqsError` naming the parameter: the CLI prints it on one line and exits with status 2,
as it does for an option that was renamed (``--replicas`` → ``--trials``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import click
import numpy as np

from .. import _jsonio
from .._errors import LqsError, check_float, check_int, parse_number

SPLITS = ("all", "train", "test")
TRAIN_FRAC = 0.8
SPLIT_SEED = 0

from .renamed import RENAMED, RenamedOption, _compose, renamed_options  # noqa: E402,F401 - re-exported

# ----------------------------------------------------------------------------------------------- numbers
def parse_int(param: str, text, lo: int | None = None, hi: int | None = None) -> int:
    """Text → int in [lo, hi]; accepts '131000', '131_000' and '1.31e5' (an integral value)."""
    return check_int(param, parse_number(param, text), lo, hi)


def parse_float(param: str, text, lo=None, hi=None, *, lo_open=False, hi_open=False) -> float:
    return check_float(param, parse_number(param, text), lo, hi, lo_open=lo_open, hi_open=hi_open)


def parse_lams(text) -> list[float]:
    """``--lam``: '3.0' | '2.5,3,3.5' | 'LO:HI:N' (N evenly spaced values), requests per second."""
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


def split_list(text) -> list[str]:
    """'a,b, c' → ['a', 'b', 'c']."""
    return [t.strip() for t in str(text).split(",") if t.strip() != ""]


# ----------------------------------------------------------------------------------------------- option groups
def workload_options(f):
    """--workload PRESET | --trace PATH_OR_NAME [--s-col --o-col --t-col] [--split all|train|test]."""
    return _compose(
        click.option("--workload", "workload", metavar="PRESET|FILE", default=None,
                     help="Paper workload: pd-1:1, pd-2:1, pd-1:2, pd-8:1 or mix-2:1/1:2, or a length model file "
                          "written by lqs fit lengths. Give exactly one of --workload / --trace."),
        click.option("--trace", "trace", metavar="PATH_OR_NAME", default=None,
                     help="Request trace (.csv, .jsonl/.ndjson, .parquet), a vLLM/SGLang benchmark result (.json/"
                          ".jsonl; its inter-token gaps give b̄ when --b is not given) or a bundled trace: "
                          "azure-conv, azure-code."),
        click.option("--s-col", "s_col", metavar="COL", default=None, help="Trace column of prompt lengths s."),
        click.option("--o-col", "o_col", metavar="COL", default=None, help="Trace column of output lengths o."),
        click.option("--t-col", "t_col", metavar="COL", default=None,
                     help="Trace column of arrival times (unit from a _ns/_us/_ms/_s suffix, else seconds)."),
        click.option("--split", "split", metavar="all|train|test", default="all", show_default=True,
                     help="Use the whole trace, or the paper's 80% train / 20% test part (chronological when "
                          "arrival times are known, else a fixed-seed permutation)."),
        click.option("--run", "run", metavar="N", default=None,
                     help="Run (0-based) of a benchmark result file holding several (--trace)."),
        click.option("--prompt-scale", "prompt_scale", metavar="F", default=None,
                     help="Multiply every prompt length by F (a trace or a fitted length model)."),
        click.option("--output-scale", "output_scale", metavar="F", default=None,
                     help="Multiply every output length by F (a trace or a fitted length model)."),
    )(f)


def server_options(*, simulation: bool = True, required: bool = True, grid: bool = False):
    """The Server's options. ``required``: --M, --prefill-chunk and a b̄ must be given (else they default to the
    command's own, e.g. a study's per-mode server); ``simulation`` adds --b-model --policy --token-budget
    --routing; ``grid`` (``lqs sweep``) takes comma-separated lists, each an axis of the sweep."""
    many = " (comma-separated list: one sweep axis)" if grid else ""
    dflt = "" if required or grid else " (default: the command's own)"
    req = {"required": True} if required else {"default": None}  # (click ≥ 8.3: a default None satisfies required)
    log = required and not grid  # --server-log gives M: then --M is checked by build_server, not by click
    opts = [
        click.option("--M", "M", metavar="TOKENS", **({"default": None} if log else req),
                     help=f"KV-cache capacity M in tokens{many}{dflt}"
                          + (" (or --server-log)." if log else ".")),
        click.option("--prefill-chunk", "--chunk", "prefill_chunk", metavar="TOKENS", **req,
                     help=f"Prefill chunk ŝ in tokens{many}{dflt}; --chunk is an alias."),
        click.option("--b", "b", metavar="SECONDS", default=None,
                     help=f"Batch (step) time b̄ in seconds{many}{dflt}."
                          + ("" if grid else " Give exactly one of --b / --b-samples.")),
    ]
    if log:
        opts.append(click.option("--server-log", "server_log", metavar="FILE", default=None,
                                 help="vLLM or SGLang server log: M is its KV-cache size (when --M is not given)."))
    if not grid:
        opts += [
            click.option("--b-samples", "b_samples", metavar="FILE", default=None,
                         help="File of observed batch times in seconds (CSV, JSONL, Parquet or one number per line)."),
            click.option("--b-estimator", "b_estimator", metavar="mean|median|trimmed:ALPHA", default=None,
                         help="How to estimate b̄ from --b-samples (default: median, as the paper)."),
            click.option("--b-col", "b_col", metavar="COL", default=None, help="Column of --b-samples to use."),
        ]
    opts.append(click.option("--servers", "servers", metavar="G", default=None,
                             help=f"Identical serving instances behind one router{many} (default 1); λ and μ are "
                                  "the whole deployment's."))
    if simulation:
        bm = "constant|empirical|lognormal:CV|two-speed:RATIO:FRAC|affine:A0,A1,A2,A3"
        opts += [
            click.option("--b-model", "--batch", "b_model", metavar=bm, default=None, multiple=grid,
                         help="Batch-time model (repeat the flag for several)" if grid else
                         "Batch-time model (default constant): b̄ every step; i.i.d. from --b-samples; lognormal "
                         "with mean b̄; a fraction FRAC of steps RATIO× slower (mean b̄); or affine in the step's "
                         "prefill tokens, decode tokens and memory (b̄ then only feeds the closed form)."),
            click.option("--policy", "policy", metavar="swap|recompute|reserve", default=None,
                         help=f"What happens to a preempted request{many} (default swap): swapped out and resumed, "
                              "recomputed from scratch, or never preempted (admission reserves peak memory). "
                              "fcfs is an alias of swap."),
            click.option("--token-budget", "token_budget", metavar="TOKENS", default=None,
                         help=f"At most this many tokens per step (vLLM max_num_batched_tokens; ≥ ŝ){many}"
                              + (" (none = no budget)." if grid else ".")),
            click.option("--routing", "routing", metavar="round_robin|random|jsq|least_kv", default=None,
                         help=f"How the router sends each arrival to a server{many} (default round_robin)."),
        ]
    if not grid:
        opts += [
            click.option("--max-running", "max_running", metavar="N", default=None,
                         help="At most N requests scheduled per step (vLLM max_num_seqs, SGLang "
                              "max_running_requests; default none)."),
            click.option("--block-size", "block_size", metavar="TOKENS", default=None,
                         help="KV memory held in whole blocks of this many tokens (vLLM block_size, SGLang "
                              "page_size; default 1: tokens)."),
        ]
    return _compose(*opts)


def mc_options(*, defaults: bool = True, K: bool = True):
    """Monte Carlo options. ``defaults=False``: every option defaults to None (the command's own, e.g. a study's
    per-mode settings or a sweep config's)."""
    d = (lambda v: v) if defaults else (lambda v: None)
    opts = [
        click.option("--trials", "trials", metavar="N", default=d("64"), show_default=defaults,
                     help="Independent Monte Carlo repetitions of every configuration."),
        click.option("--steps", "steps", metavar="N|auto", default=d("auto"), show_default=defaults,
                     help="Steps per trial, warm-up included; auto: warm-up + max(16000, the steps that 2000 "
                          "completions take at μ)."),
        click.option("--warmup", "warmup", metavar="N", default=d("4000"), show_default=defaults,
                     help="Warm-up steps (not measured)."),
        click.option("--seed", "seed", metavar="INT", default=d("0"), show_default=defaults,
                     help="Seed of the one PRNG key."),
    ]
    if K:
        opts.append(click.option("--K", "K", metavar="SLOTS", default=None,
                                 help="Request slots per server (default: sized from M)."))
    opts += [
        click.option("--progress/--no-progress", "progress", default=None,
                     help="Progress bar (default: when stderr is a terminal)."),
        renamed_options("replicas"),
    ]
    return _compose(*opts)


def output_options(*, json: bool = True, out: str | None = "optional", out_help: str = "Write the result here."):
    """--json (print JSON on stdout instead of a table) and --out DIR (``out``: 'optional', 'required' or a
    default directory)."""
    opts = []
    if json:
        opts.append(click.option("--json", "as_json", is_flag=True,
                                 help="Print JSON on stdout instead of a table (missing numbers are null)."))
    if out is not None:
        kw = {"required": True} if out == "required" else {"default": None if out == "optional" else out,
                                                           "show_default": out != "optional"}
        opts.append(click.option("--out", "out", metavar="DIR", help=out_help, **kw))
    return _compose(*opts)


# ----------------------------------------------------------------------------------------------- resolution
@dataclass(frozen=True, eq=False)
class ResolvedWorkload:
    """What a command needs to know about the chosen workload."""

    workload: object  # an lqs.Workload
    label: str  # e.g. 'pd-1:1' or 'azure-conv' or 'azure-conv[test]'
    trace: object | None = None  # the lqs.Trace (after the split) when --trace was given
    bench: object | None = None  # the lqs.BenchmarkResult when --trace is a benchmark result


@dataclass(frozen=True)
class ResolvedB:
    """The batch time b̄ and where it came from."""

    b_s: float
    source: str  # 'given' or the samples file
    estimator: str | None = None
    n_samples: int | None = None
    samples: object = None  # the samples (numpy array) when read from a file
    M_source: str | None = None  # 'given' or the server log M was read from (None: the command's default M)


def resolve_workload(workload=None, trace=None, s_col=None, o_col=None, t_col=None, split="all", M=None,
                     **opts) -> ResolvedWorkload:
    """Exactly one of a preset name, a length model file or a trace (a benchmark result included) → a validated
    workload (checked against M when M is given), scaled by --prompt-scale/--output-scale when given."""
    from .inputs import workload_from_name

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
        if opts.get("run") is not None:
            raise LqsError("run", opts["run"], "only applies with --trace (a benchmark result file)")
        w, label = workload_from_name(workload, opts)
        if M is not None:
            w.validate(M)
        return ResolvedWorkload(workload=w, label=label, trace=None)

    from ..traces import load_trace
    from .inputs import bench_of, scaled_trace, scales

    bench = bench_of({"trace": trace, "s_col": s_col, "o_col": o_col, **opts})
    if bench is not None:
        tr = bench.trace
    else:
        run = None if opts.get("run") is None else parse_int("run", opts["run"], 0)
        tr = load_trace(trace, s_col=s_col, o_col=o_col, t_col=t_col, run=run)
    if split != "all":
        train, test = tr.split(TRAIN_FRAC, SPLIT_SEED)
        tr = train if split == "train" else test
    sc = scales(opts)
    if sc is not None:
        tr = scaled_trace(tr, sc)
    if M is not None:
        tr.validate(M)
    return ResolvedWorkload(workload=tr.workload(), label=tr.name, trace=tr, bench=bench)


def resolve_b(b=None, b_samples=None, b_estimator=None, b_col=None, *, default_estimator="median", bench=None,
              **_ignored) -> ResolvedB:
    """Exactly one of a batch time or a file of samples (+ estimator, default median) → b̄ in seconds; with
    neither, the inter-token gaps of a benchmark result (``bench``) when there is one."""
    from .._theory import estimate_b, parse_estimator

    if b is None and b_samples is None and bench is not None:
        if bench.b_samples is None:
            raise LqsError("b", None, f"give --b SECONDS: the benchmark result {bench.trace.source} has no "
                                      "inter-token gaps (itls) to estimate b̄ from")
        est = default_estimator if b_estimator is None else b_estimator
        x = bench.b_samples
        return ResolvedB(b_s=estimate_b(x, est), source=f"{est} of {x.size} inter-token gaps in {bench.trace.source}",
                         estimator=est, n_samples=int(x.size), samples=x)
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

    est = default_estimator if b_estimator is None else b_estimator
    parse_estimator(est)  # validate the name before reading the file
    x = load_b_samples(b_samples, col=b_col)
    return ResolvedB(b_s=estimate_b(x, est), source=str(b_samples), estimator=est, n_samples=int(x.size), samples=x)


def build_server(opts: dict, base=None):
    """The one :class:`lqs.Server` of a command's options → ``(server, ResolvedB or None)``.

    Without ``base`` the options must give M, ŝ and b̄ (or --b-samples). With ``base`` (e.g. a study's per-mode
    default) only the options given replace its fields. A --b-model other than ``constant`` becomes the batch-time
    model (parsed by :func:`lqs._batch.parse_batch_spec`, mean b̄) and b̄ stays the closed form's ``b_theory``."""
    from .._batch import parse_batch_spec
    from .._server import Server
    from .inputs import bench_of, resolve_M

    b_model = opts.get("b_model")
    given_b = opts.get("b") is not None or opts.get("b_samples") is not None
    bench = None if given_b else bench_of(opts)
    M, M_source = resolve_M(opts)
    if base is None and M is None:
        raise LqsError("M", None, "give --M TOKENS" + (" or --server-log FILE" if "server_log" in opts else ""))
    bb = None
    if base is None or given_b or bench is not None:
        empirical = (b_model or "").strip().partition(":")[0] == "empirical"
        bb = resolve_b(b=opts.get("b"), b_samples=opts.get("b_samples"), b_estimator=opts.get("b_estimator"),
                       b_col=opts.get("b_col"), default_estimator="mean" if empirical and opts.get("b") is None
                       else "median", bench=bench)
    if bb is not None:
        bb = replace(bb, M_source=M_source)
    fields = {k: parse_number(k, opts[k]) for k in ("prefill_chunk", "token_budget", "servers", "max_running",
                                                    "block_size") if opts.get(k) is not None}
    if M is not None:
        fields["M"] = parse_number("M", M)
    fields.update({k: opts[k] for k in ("policy", "routing") if opts.get(k) is not None})
    if b_model is not None and b_model.strip() != "constant":
        if bb is None:
            bb = ResolvedB(b_s=base.b_mean_s, source="default")
        samples = bb.samples
        if samples is None and opts.get("b_samples") is not None:  # pragma: no cover - resolve_b always reads them
            from ..traces import load_b_samples

            samples = load_b_samples(opts["b_samples"], col=opts.get("b_col"))
        fields.update(b=parse_batch_spec(b_model, bb.b_s, samples, param="b_model"), b_theory=bb.b_s)
    elif bb is not None:
        fields.update(b=bb.b_s, b_theory=None)
    server = Server(**fields) if base is None else base.replace(**fields)
    return server, bb


def build_mc(opts: dict, base=None):
    """The one :class:`lqs.MonteCarlo` of a command's options (the fields given replace those of ``base``, by
    default ``MonteCarlo()``)."""
    from .._server import MonteCarlo

    auto = str(opts.get("steps")).strip().lower() == "auto"
    fields = {k: parse_number(k, opts[k]) for k in ("trials", "steps", "warmup", "seed", "K")
              if opts.get(k) is not None and not (k == "steps" and auto)}
    if auto:
        fields["steps"] = None
    from . import cli_path  # lqs --path, carried on the MonteCarlo value

    fields.update({"path": cli_path()} if cli_path() is not None else {})
    return MonteCarlo(**fields) if base is None else base.replace(**fields)


# ----------------------------------------------------------------------------------------------- output
def console():
    """A rich console; piped or captured output gets a fixed wide width so that no table cell is cut to '…'."""
    from rich.console import Console

    con = Console(highlight=False)
    return con if con.is_terminal else Console(highlight=False, width=200)


def show_progress(flag) -> bool:
    """--progress/--no-progress, default: when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else bool(flag)


def echo_json(obj) -> None:
    """One strict JSON document on stdout (NaN and ±inf are written as null, as in every result file)."""
    click.echo(_jsonio.dumps(obj, ensure_ascii=False))

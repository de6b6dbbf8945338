"""Parsing and checking the values of a sweep spec's axes (lists, λ ranges, workload names, batch-model specs)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from .._batch import check_batch_spec, parse_batch_spec
from .._errors import LqsError, check_choice, check_float, check_int, parse_number
from .._server import MC_RENAMED, MonteCarlo

# MonteCarlo fields the spec holds itself (the rest may go in ``options``)
OWN_MC = ("trials", "steps", "warmup", "seed")
OPTIONS = tuple(f.name for f in dataclasses.fields(MonteCarlo) if f.name not in OWN_MC) + tuple(MC_RENAMED)
SPEC_VERSION = 2  # 2: the 0.2 vocabulary (trials, prefill_chunk, parts, swap) and ρ = λ/μ


# ----------------------------------------------------------------------------------------------- parsing helpers
def _as_list(param, v, *, allow_empty=False):
    if isinstance(v, (list, tuple, np.ndarray)):
        out = list(v.tolist() if isinstance(v, np.ndarray) else v)
    else:
        out = [v]
    if not out and not allow_empty:
        raise LqsError(param, v, "must be a value or a non-empty list")
    return out


def _no_dups(param, vals):
    seen = set()
    for x in vals:
        k = json.dumps(x)
        if k in seen:
            raise LqsError(param, vals, "must not repeat a value", f"{x!r} appears twice")
        seen.add(k)
    return vals


def _ints(param, v, lo=1, hi=2**30):
    return _no_dups(param, [check_int(param, parse_number(param, x), lo, hi) for x in _as_list(param, v)])


def _floats(param, v, lo=0.0, lo_open=False):
    vals = [check_float(param, parse_number(param, x), lo, lo_open=lo_open) for x in _as_list(param, v)]
    return _no_dups(param, vals)


def _strs(param, v, choices=None):
    out = []
    for x in _as_list(param, v):
        if not isinstance(x, str) or not x.strip():
            raise LqsError(param, x, "must be a non-empty string" if choices is None
                           else "must be one of " + ", ".join(choices))
        x = x.strip()
        if choices is not None:
            check_choice(param, x, choices)
        out.append(x)
    return _no_dups(param, out)


def _lam_range(param, lo, hi, n):
    lo = check_float(param, parse_number(param, lo), 0.0)
    hi = check_float(param, parse_number(param, hi), lo)
    n = check_int(param, parse_number(param, n), 1, 100_000)
    return [float(x) for x in np.linspace(lo, hi, n)]


def _parse_lam(v):
    """lam → (λ list or None, ρ list or None)."""
    if isinstance(v, dict):
        keys = set(v)
        if keys == {"rho"}:
            return None, _floats("rho", v["rho"])
        if keys == {"lo", "hi", "n"}:
            return _no_dups("lam", _lam_range("lam", v["lo"], v["hi"], v["n"])), None
        raise LqsError("lam", v, "a mapping must be {lo, hi, n} (a range) or {rho: [..]} (λ = ρ·μ)")
    if isinstance(v, str) and ":" in v:
        parts = v.split(":")
        if len(parts) != 3:
            raise LqsError("lam", v, "a range is LO:HI:N, e.g. 2.5:4:7")
        return _no_dups("lam", _lam_range("lam", *parts)), None
    return [float(x) for x in _floats("lam", v)], None


def _check_workload_name(w: str):
    """Validate the form of a workload entry (no file access); return it unchanged."""
    from .._workload import PRESETS

    if w.startswith("trace:"):
        if not w[6:].strip():
            raise LqsError("workload", w, "trace:NAME_OR_PATH needs a trace name or path after 'trace:'")
        return w
    if w.startswith("model:") or (not w.startswith(("trace:", "pd_ratio:")) and w.lower().endswith(".json")):
        _model_ref(w)
        return w
    if w.startswith("pd_ratio:"):
        parts = w.split(":")[1:]
        if len(parts) not in (1, 2):
            raise LqsError("workload", w, "pd_ratio:R or pd_ratio:R:TOTAL_HI, e.g. pd_ratio:2")
        check_float("workload", parse_number("workload", parts[0]), 0.0, lo_open=True)
        if len(parts) == 2:
            check_int("workload", parse_number("workload", parts[1]), 22, 2**30)
        return w
    names = list(PRESETS) + ["mix-2:1/1:2"]
    if w not in names:
        raise LqsError("workload", w, "must be a preset (" + ", ".join(names) + "), trace:NAME_OR_PATH, "
                                      "pd_ratio:R[:TOTAL_HI] or a length model model:FILE.json[@PROMPTxOUTPUT]")
    return w


def _model_ref(w: str):
    """(path, (prompt, output) scale factors) of a length-model entry: ``model:FILE.json[@PROMPTxOUTPUT]``, e.g.
    ``model:fit.json@1.5x1`` (the factors multiply the lengths, as :meth:`lqs.LengthModel.scaled`; no comma, so
    the entry survives a comma-separated --workload list) or a bare ``FILE.json``."""
    body = w[6:].strip() if w.startswith("model:") else w
    path, at, sc = body.rpartition("@") if "@" in body else (body, "", "")
    if not path.strip():
        raise LqsError("workload", w, "model:FILE.json[@PROMPTxOUTPUT] needs the length model file written by "
                                      "lqs fit lengths")
    if not at:
        return path.strip(), (1.0, 1.0)
    parts = sc.lower().split("x")
    if len(parts) != 2:
        raise LqsError("workload", w, "the scale of a length model is @PROMPTxOUTPUT, e.g. model:fit.json@1.5x1")
    f = tuple(check_float("workload", parse_number("workload", x), 0.0, lo_open=True) for x in parts)
    return path.strip(), f


def _load_workload(w: str):
    from .._workload import pd_ratio, preset

    if w.startswith("trace:"):
        from ..traces import load_trace

        return load_trace(w[6:].strip()).workload()
    if w.startswith("model:") or (not w.startswith("pd_ratio:") and w.lower().endswith(".json")):
        from ..fit import load_length_model

        path, sc = _model_ref(w)
        m = load_length_model(path)
        return m if sc == (1.0, 1.0) else m.scaled(*sc)
    if w.startswith("pd_ratio:"):
        parts = w.split(":")[1:]
        r = float(parse_number("workload", parts[0]))
        return pd_ratio(r) if len(parts) == 1 else pd_ratio(r, total_hi=int(parse_number("workload", parts[1])))
    return preset(w)


def _check_batch_spec(spec: str) -> str:
    """A batch-model text form (no empirical samples in a sweep), checked; errors name ``batch``."""
    return check_batch_spec(spec, param="batch")


def _batch_model(spec: str, b_s: float):
    """The BatchTime of a batch-model text form with mean (or theory) b̄ = ``b_s`` seconds."""
    return parse_batch_spec(spec, b_s, param="batch")

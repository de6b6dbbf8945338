"""load_trace: a request trace from a file or a bundled name (conventions in ``lqs.traces``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import LqsError
from .columns import _cols_text, _find_col, _lengths, _times, _unit_from_name
from .read import _UNITS, CONVENTIONS, _detect_format, _read_table, _resolve_source
from .trace import Trace
from .benchmark_results import load_benchmark_result, looks_like_benchmark_result


def load_trace(path_or_name, s_col: str | None = None, o_col: str | None = None, t_col: str | None = None,
               fmt: str | None = None, *, t_unit: str | None = None, name: str | None = None,
               run: int | None = None) -> Trace:
    """Load a request trace from a .csv, .jsonl/.ndjson or .parquet file, or a bundled trace by name.

    ``s_col`` / ``o_col`` / ``t_col`` name the prompt-length, output-length and arrival-time columns; left out,
    they are found by the conventions in the lqs.traces docstring. ``fmt`` ('csv', 'jsonl', 'parquet') overrides
    the file extension; ``t_unit`` ('s', 'ms', 'us', 'ns') the unit of a numeric time column. Every failure
    raises :class:`lqs.LqsError`.

    A vLLM or SGLang benchmark result (.json/.jsonl with per-request ``input_lens`` and ``output_lens``) is
    recognised by its keys: its successful requests are the trace (``run`` picks a run of a multi-run file;
    see :func:`lqs.traces.load_benchmark_result`).
    """
    src, label, default_name, fmt_hint = _resolve_source(path_or_name, "trace")
    if fmt is None and s_col is None and o_col is None and isinstance(src, str) and looks_like_benchmark_result(src):
        tr = load_benchmark_result(src, run).trace
        return tr if name is None else Trace(tr.s, tr.o, tr.arrival_s, tr.source, name, tr.row, tr.failed)
    if run is not None:
        raise LqsError("run", run, "applies only to benchmark result files (JSON with input_lens/output_lens)",
                       f"{label} is not one")
    f = _detect_format(fmt_hint, fmt, "trace")
    if t_unit is not None and t_unit not in _UNITS:
        raise LqsError("t_unit", t_unit, "must be one of " + ", ".join(_UNITS))
    if hasattr(src, "open") and not isinstance(src, str):  # importlib.resources Traversable
        with src.open("rb") as fh:
            df = _read_table(fh, f, label, "trace")
    else:
        df = _read_table(src, f, label, "trace")
    if not isinstance(df, pd.DataFrame):  # pragma: no cover - defensive
        raise LqsError("trace", label, "must hold a table of requests")
    df = df.rename(columns=lambda c: c.strip() if isinstance(c, str) else c)
    cols = list(df.columns)
    if len(df) == 0:
        raise LqsError("trace", label, "must contain at least one request",
                       f"no data rows; columns found: {_cols_text(cols)}")

    conv = None
    for c in CONVENTIONS:
        if _find_col(cols, c[1]) is not None and _find_col(cols, c[2]) is not None:
            conv = c
            break

    def pick(param, explicit, role_idx, what):
        if explicit is not None:
            c = _find_col(cols, explicit)
            if c is None:
                raise LqsError(param, explicit, f"must name a column of the trace; columns found: {_cols_text(cols)}",
                               f"in {label}")
            return c
        if conv is not None:
            return _find_col(cols, conv[role_idx])
        known = ", ".join(f"{c[1]}/{c[2]}" for c in CONVENTIONS)
        raise LqsError(param, None, f"no {what} column found; columns found: {_cols_text(cols)}",
                       f"in {label}; pass s_col/o_col (--s-col/--o-col) or use a known convention: {known}")

    sc = pick("s_col", s_col, 1, "prompt-length")
    oc = pick("o_col", o_col, 2, "output-length")
    if sc == oc:
        raise LqsError("o_col", oc, "must differ from the prompt-length column s_col")
    s = _lengths(df, sc, "s", label)
    o = _lengths(df, oc, "o", label)

    tc, unit = None, 1.0
    if t_col is not None:
        tc = _find_col(cols, t_col)
        if tc is None:
            raise LqsError("t_col", t_col, f"must name a column of the trace; columns found: {_cols_text(cols)}",
                           f"in {label}")
        unit = _unit_from_name(tc)
    else:
        cands = ([conv] if conv is not None else []) + [c for c in CONVENTIONS if c is not conv]
        for c in cands:
            found = _find_col(cols, c[3])
            if found is not None:
                tc, unit = found, _UNITS[c[4]]
                break
    if t_unit is not None:
        unit = _UNITS[t_unit]
    t = None
    rows = np.arange(len(df), dtype=np.int64)
    if tc is not None:
        t = _times(df, tc, unit, label)
        if np.any(np.diff(t) < 0):
            order = np.argsort(t, kind="stable")
            s, o, t, rows = s[order], o[order], t[order], rows[order]
    return Trace(s=s, o=o, arrival_s=t, source=label, name=name or default_name, row=rows)


"""load_b_samples: observed batch (step) times in seconds from a file."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import LqsError
from .benchmark_results import load_benchmark_result, looks_like_benchmark_result
from .columns import _cols_text, _find_col, _unit_from_name
from .read import _B_COLS, _detect_format, _read_table, _resolve_source


def load_b_samples(path, col: str | None = None, *, fmt: str | None = None, run: int | None = None) -> np.ndarray:
    """Observed batch (step) times in seconds, from a CSV, JSONL, Parquet or plain-text file.

    Plain text / CSV may have no header (one number per line, the first column is used) or a header. ``col``
    names the column; left out, a single column is used, else the first of the usual names (batch_time_s,
    batch_time, step_time_s, b_s, duration_s, latency_s, ...). A column whose name ends in ``_ms``/``_us``/``_ns``
    is converted to seconds. Every value must be a finite number > 0; failures raise LqsError.

    A vLLM/SGLang benchmark result file gives its inter-token gaps (``run`` picks a run; see
    :func:`lqs.traces.load_benchmark_result`).
    """
    param = "b_samples"
    src, label, _, fmt_hint = _resolve_source(path, param)
    if col is None and fmt is None and isinstance(src, str) and looks_like_benchmark_result(src):
        br = load_benchmark_result(src, run)
        if br.b_samples is None:
            raise LqsError(param, label, "a benchmark result needs per-request inter-token gaps (itls) to give "
                           "batch times")
        return br.b_samples
    if label.startswith("bundled:"):
        raise LqsError(param, path, "must be a file of batch times, not a bundled trace")
    try:
        f = _detect_format(fmt_hint, fmt, param)
    except LqsError:
        f = "csv"  # no known extension: treat as plain text, one number per line
    if f == "csv":
        df = _read_table(src, "csv", label, param, csv_header=None)
        if len(df) and not _row_is_numeric(df.iloc[0]):  # first row is a header
            header = [str(x).strip() for x in df.iloc[0].tolist()]
            df = df.iloc[1:].reset_index(drop=True)
            df.columns = header
        else:
            df.columns = [str(i) for i in range(df.shape[1])]
    else:
        df = _read_table(src, f, label, param)
        df = df.rename(columns=lambda c: c.strip() if isinstance(c, str) else c)
    cols = list(df.columns)
    if len(df) == 0:
        raise LqsError(param, label, "must hold at least one batch time", f"no data rows in {label}")
    if col is not None:
        c = _find_col(cols, col)
        if c is None:
            raise LqsError("b_col", col, f"must name a column of {label}; columns found: {_cols_text(cols)}")
    elif len(cols) == 1:
        c = cols[0]
    else:
        c = next((found for name in _B_COLS for suf in ("", "_s", "_ms", "_us", "_ns")
                  if (found := _find_col(cols, name + suf)) is not None), None)
        if c is None:
            raise LqsError("b_col", None, f"no batch-time column found; columns found: {_cols_text(cols)}",
                           f"in {label}; name one with col (or use a column called batch_time_s)")
    ser = df[c]
    x = pd.to_numeric(ser, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    x = x * _unit_from_name(c)
    bad = ~np.isfinite(x) | (x <= 0)
    if bad.any():
        i = int(np.argmax(bad))
        raw = ser.iloc[i]
        raw = raw.item() if hasattr(raw, "item") else raw
        raise LqsError(param, raw, "every batch time must be a finite number of seconds > 0",
                       f"column {str(c)!r}, row {i} of {label}")
    return x


def _row_is_numeric(row) -> bool:
    for v in row.tolist():
        try:
            float(str(v).strip())
        except ValueError:
            return False
    return True

"""Columns of a trace table: finding them by name, and validating lengths and arrival times."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._errors import LqsError
from .read import _MAX_LEN, _UNITS


def _find_col(columns, name):
    """The column in ``columns`` equal to ``name`` (exact match first, then case-insensitive, stripped)."""
    if name in columns:
        return name
    low = str(name).strip().lower()
    for c in columns:
        if str(c).strip().lower() == low:
            return c
    return None


def _cols_text(columns) -> str:
    cols = [str(c) for c in columns]
    txt = ", ".join(repr(c) for c in cols[:20])
    return f"[{txt}{', ...' if len(cols) > 20 else ''}]"


def _lengths(df, col, role: str, label: str) -> np.ndarray:
    """Validate one length column: every entry a finite integer ≥ 1; errors name the row."""
    what = "prompt length s" if role == "s" else "output length o"
    ser = df[col]
    for kind, test in (("booleans", pd.api.types.is_bool_dtype), ("datetimes", pd.api.types.is_datetime64_any_dtype),
                       ("time spans", pd.api.types.is_timedelta64_dtype)):
        if test(ser.dtype):
            raise LqsError(role, f"column {col!r} of {kind}", f"every {what} must be an integer ≥ 1 (tokens)",
                           f"in {label}; name the token-count column with --s-col / --o-col")
    num = pd.to_numeric(ser, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(num) | (num != np.round(num)) | (num < 1) | (num > _MAX_LEN)
    if bad.any():
        i = int(np.argmax(bad))
        raw = ser.iloc[i]
        raw = raw.item() if hasattr(raw, "item") else raw
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            why = "it is missing / NaN"
        elif not np.isfinite(num[i]):
            why = "it is not a number"
        elif num[i] != np.round(num[i]):
            why = "it is not an integer"
        elif num[i] > _MAX_LEN:
            why = "it is larger than 2^30 tokens"
        else:
            why = "it is not positive"
        raise LqsError(role, raw, f"every {what} must be an integer ≥ 1",
                       f"column {col!r}, row {i} of {label}: {why}; {int(bad.sum())} bad row(s)")
    return num.astype(np.int32)


def _unit_from_name(col: str) -> float:
    c = str(col).strip().lower()
    for suf, u in (("_ns", "ns"), ("_us", "us"), ("_ms", "ms"), ("_s", "s"), ("_sec", "s"), ("_seconds", "s")):
        if c.endswith(suf):
            return _UNITS[u]
    return 1.0


def _times(df, col, unit: float, label: str) -> np.ndarray:
    """Arrival times in seconds from the first arrival (float64), in file order."""
    ser = df[col]
    n = len(ser)
    if pd.api.types.is_datetime64_any_dtype(ser.dtype):
        dt = ser
    elif pd.api.types.is_numeric_dtype(ser.dtype) and not pd.api.types.is_bool_dtype(ser.dtype):
        dt = None
    else:
        num = pd.to_numeric(ser, errors="coerce")
        if num.notna().all():
            ser, dt = num, None
        else:
            try:
                dt = pd.to_datetime(ser, format="mixed", utc=True, errors="coerce")
            except Exception:  # pragma: no cover - pandas versions differ in what they raise
                dt = pd.Series([pd.NaT] * n)
            if dt.isna().any():
                i = int(np.argmax(dt.isna().to_numpy()))
                raise LqsError("arrival", ser.iloc[i], "every arrival time must be a number or a datetime",
                               f"column {col!r}, row {i} of {label}")
    if dt is not None:
        if dt.isna().any():
            i = int(np.argmax(dt.isna().to_numpy()))
            raise LqsError("arrival", None, "every arrival time must be a number or a datetime",
                           f"column {col!r}, row {i} of {label}: it is missing")
        return (dt - dt.min()).dt.total_seconds().to_numpy(np.float64)
    a = ser.to_numpy()
    if np.issubdtype(a.dtype, np.integer):
        t = (a.astype(np.int64) - a.astype(np.int64).min()).astype(np.float64) * unit
    else:
        a = a.astype(np.float64)
        bad = ~np.isfinite(a)
        if bad.any():
            i = int(np.argmax(bad))
            raise LqsError("arrival", ser.iloc[i], "every arrival time must be a finite number",
                           f"column {col!r}, row {i} of {label}")
        t = (a - a.min()) * unit
    return t

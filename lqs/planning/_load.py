"""Load curves for capacity plans: a table of (time, rate), or a request trace whose arrival times are binned into
windows (docs/model.md, "Capacity plans")."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._errors import LqsError, check_float

#: column names of a load curve's time (seconds) and rate, matched case-insensitively, first match wins
TIME_COLUMNS = ("time_s", "t_s", "start_s", "time", "t", "timestamp")
RATE_COLUMNS = {"rate_rps": 1.0, "lam_rps": 1.0, "rate": 1.0, "rps": 1.0, "requests_per_s": 1.0,
                "rate_rpm": 1 / 60, "rpm": 1 / 60, "requests_per_min": 1 / 60}


@dataclass(frozen=True, eq=False)
class LoadCurve:
    """A piecewise-constant load: window w spans [start_s[w], start_s[w] + window_s) at ``rate_rps[w]`` requests/s.

    From a trace, ``instants`` holds each window's arrival instants (seconds from the window's start) and
    ``trace`` the trace itself (its lengths are the plan's default workload)."""

    start_s: np.ndarray
    window_s: float
    rate_rps: np.ndarray
    source: str
    instants: tuple | None = None
    trace: object = None

    def __post_init__(self):
        r = np.asarray(self.rate_rps, np.float64)
        if r.ndim != 1 or r.size == 0:
            raise LqsError("load", self.source, "must hold at least one window", "the curve is empty")
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            i = int(np.flatnonzero(~np.isfinite(r) | (r < 0))[0])
            raise LqsError("load", self.source, "rates must be finite and ≥ 0 requests/s",
                           f"window {i} has {r[i]:g}")
        object.__setattr__(self, "rate_rps", r)
        object.__setattr__(self, "start_s", np.asarray(self.start_s, np.float64))
        object.__setattr__(self, "window_s", check_float("window", self.window_s, 0.0, lo_open=True))

    @property
    def n_windows(self) -> int:
        return int(self.rate_rps.size)

    @property
    def duration_s(self) -> float:
        return self.n_windows * self.window_s

    def scaled(self, factor: float) -> np.ndarray:
        return self.rate_rps * factor


def _col(df, names):
    low = {str(c).strip().lower(): c for c in df.columns}
    for n in names:
        if n in low:
            return low[n], n
    return None, None


def _times(values, label) -> np.ndarray:
    v = pd.Series(values)
    if not pd.api.types.is_numeric_dtype(v):
        try:
            d = pd.to_datetime(v)
        except (ValueError, TypeError):
            raise LqsError("load", label, "times must be seconds or datetimes") from None
        return (d - d.iloc[0]).dt.total_seconds().to_numpy(np.float64)
    return v.to_numpy(np.float64)


def curve_from_table(df: pd.DataFrame, label: str, window_s=None) -> LoadCurve:
    """A (time, rate) table: each row's rate holds until the next row's time (the last row for one spacing).
    ``window_s`` re-bins it into windows of that length (time-averaged rates); by default the rows' spacing,
    which must then be uniform."""
    tc, _ = _col(df, TIME_COLUMNS)
    rc, rn = _col(df, RATE_COLUMNS)
    if tc is None or rc is None:
        raise LqsError("load", label, "must have a time column (" + ", ".join(TIME_COLUMNS) + ") and a rate column ("
                       + ", ".join(RATE_COLUMNS) + "), or be a trace with arrival times",
                       "columns: " + ", ".join(map(str, df.columns)))
    if len(df) == 0:
        raise LqsError("load", label, "must hold at least one window", "the curve is empty")
    t = _times(df[tc], label)
    r = pd.to_numeric(df[rc], errors="coerce").to_numpy(np.float64) * RATE_COLUMNS[rn]
    if not np.all(np.isfinite(t)):
        raise LqsError("load", label, "times must be finite numbers of seconds")
    if np.any(np.diff(t) <= 0):
        i = int(np.flatnonzero(np.diff(t) <= 0)[0]) + 1
        raise LqsError("load", label, "times must be strictly increasing (sorted, no repeats)",
                       f"row {i}: {t[i]:g} s after {t[i - 1]:g} s")
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        i = int(np.flatnonzero(~np.isfinite(r) | (r < 0))[0])
        raise LqsError("load", label, "rates must be finite and ≥ 0 requests/s", f"row {i} has {r[i]:g}")
    gaps = np.diff(t)
    step = float(np.median(gaps)) if gaps.size else (float(window_s) if window_s else math.nan)
    if not math.isfinite(step):
        raise LqsError("window", None, "a one-row load curve needs --window (its length in seconds)")
    t = t - t[0]
    if window_s is None:
        if gaps.size and np.max(np.abs(gaps - step)) > 1e-6 * step:
            raise LqsError("window", None, "the curve's times are not evenly spaced: give --window (seconds) to "
                           "re-bin it")
        return LoadCurve(start_s=t, window_s=step, rate_rps=r, source=label)
    w = check_float("window", window_s, 0.0, lo_open=True)
    edges = np.append(t, t[-1] + step)  # row i holds over [edges[i], edges[i+1])
    n = max(1, int(math.ceil(edges[-1] / w - 1e-9)))
    cum = np.concatenate([[0.0], np.cumsum(r * np.diff(edges))])  # requests by each edge

    def arrived(x):
        return np.interp(x, edges, cum)

    starts = np.arange(n) * w
    rates = (arrived(np.minimum(starts + w, edges[-1])) - arrived(starts)) / w
    return LoadCurve(start_s=starts, window_s=w, rate_rps=rates, source=label)


def curve_from_trace(trace, window_s, label: str) -> LoadCurve:
    """A trace's arrivals binned into windows of ``window_s`` seconds: rate = count / window."""
    if trace.arrival_s is None:
        raise LqsError("load", label, "a trace used as a load curve needs arrival times")
    if window_s is None:
        raise LqsError("window", None, "a trace used as a load curve needs --window (seconds per window)")
    w = check_float("window", window_s, 0.0, lo_open=True)
    t = np.asarray(trace.arrival_s, np.float64)
    n = max(1, int(math.floor(t[-1] / w)) + 1)
    idx = np.minimum((t // w).astype(np.int64), n - 1)
    counts = np.bincount(idx, minlength=n)
    splits = np.cumsum(counts)[:-1]
    inst = tuple(x - k * w for k, x in enumerate(np.split(t, splits)))
    return LoadCurve(start_s=np.arange(n) * w, window_s=w, rate_rps=counts / w, source=label, instants=inst,
                     trace=trace)


def load_curve(src, window_s=None) -> LoadCurve:
    """A LoadCurve from ``src``: a LoadCurve, a DataFrame or CSV / Parquet file of (time, rate), or a trace (a file
    or a bundled name such as ``azure-conv``) whose arrival times are binned into windows of ``window_s``."""
    if isinstance(src, LoadCurve):
        return src
    if isinstance(src, pd.DataFrame):
        return curve_from_table(src, "DataFrame", window_s)
    from ..traces import Trace, load_trace
    from ..traces.read import BUNDLED

    if isinstance(src, Trace):
        return curve_from_trace(src, window_s, src.name)
    if isinstance(src, os.PathLike):
        src = os.fspath(src)
    if not isinstance(src, str) or not src.strip():
        raise LqsError("load", src, "must be a CSV or Parquet file of (time, rate), a trace file or a bundled "
                       "trace name (" + ", ".join(BUNDLED) + ")")
    name = src.strip()
    if name.lower().replace("_", "-") in BUNDLED and not os.path.exists(name):
        return curve_from_trace(load_trace(name), window_s, name)
    if not os.path.isfile(name):
        raise LqsError("load", src, "must be an existing file or a bundled trace name (" + ", ".join(BUNDLED) + ")")
    low = name.lower()
    try:
        df = pd.read_parquet(name) if low.endswith((".parquet", ".pq")) else (
            pd.read_csv(name, skipinitialspace=True) if low.endswith((".csv", ".tsv", ".txt", ".csv.gz")) else None)
    except pd.errors.EmptyDataError:
        raise LqsError("load", src, "must hold at least one window", "the file is empty") from None
    except Exception as e:  # noqa: BLE001 - parser errors
        raise LqsError("load", src, "must be a readable CSV or Parquet file", " ".join(str(e).split())[:200]) from None
    if df is not None and _col(df, RATE_COLUMNS)[0] is not None:
        return curve_from_table(df, name, window_s)
    return curve_from_trace(load_trace(name), window_s, name)

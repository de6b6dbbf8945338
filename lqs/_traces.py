"""Request traces: load (prompt, output) lengths and arrival times from CSV, JSONL or Parquet files.

Column conventions recognised automatically (names matched case-insensitively, first match wins):

==================  ======================  =====================  =====================================
convention          prompt s                output o               arrival time (optional)
==================  ======================  =====================  =====================================
Vidur / Splitwise   ``num_prefill_tokens``  ``num_decode_tokens``  ``arrived_at`` (seconds)
Azure LLM trace     ``ContextTokens``       ``GeneratedTokens``    ``TIMESTAMP`` (datetime string or s)
LLMServingSim JSONL ``input_toks``          ``output_toks``        ``arrival_time_ns`` (nanoseconds)
BurstGPT            ``Request tokens``      ``Response tokens``    ``Timestamp`` (seconds)
Mooncake            ``input_length``        ``output_length``      ``timestamp`` (milliseconds)
==================  ======================  =====================  =====================================

Any other layout: name the columns with ``s_col`` / ``o_col`` (and ``t_col``). The unit of a numeric time
column is taken from its name's suffix (``_ns``, ``_us``, ``_ms``, ``_s``; seconds otherwise) unless ``t_unit``
says; a column of datetime values or datetime strings is converted to seconds. Arrival times are always
returned in seconds from the first arrival, and a trace with arrival times is held in arrival order (a stable
sort; ``Trace.row`` keeps each request's 0-based data row in the file).

The two traces shipped with the package are addressable by name: ``azure-conv`` and ``azure-code``
(see ``lqs/data/README.md`` for their attribution).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd

from ._errors import LqsError, check_float, check_int

BUNDLED = {"azure-conv": "azure_conv.csv", "azure-code": "azure_code.csv"}

# (convention, s column, o column, time column, unit of a numeric time column)
CONVENTIONS = (
    ("vidur", "num_prefill_tokens", "num_decode_tokens", "arrived_at", "s"),
    ("azure", "ContextTokens", "GeneratedTokens", "TIMESTAMP", "s"),
    ("llmservingsim", "input_toks", "output_toks", "arrival_time_ns", "ns"),
    ("burstgpt", "Request tokens", "Response tokens", "Timestamp", "s"),
    ("mooncake", "input_length", "output_length", "timestamp", "ms"),
)
FORMATS = ("csv", "jsonl", "parquet")
_EXT = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
        ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_MAX_LEN = 2**30
# usual names of a batch-time column, each also with a unit suffix (_s, _ms, _us, _ns), in order of preference
_B_COLS = ("batch_time", "step_time", "iteration_time", "b", "duration", "latency", "time", "seconds")


# ----------------------------------------------------------------------------------------------- Trace
@dataclass(frozen=True, eq=False)
class Trace:
    """Observed requests: prompt lengths ``s`` and output lengths ``o`` (int32 tokens), optional arrival times.

    ``arrival_s`` is float64 seconds from the first arrival (sorted ascending) or None; ``source`` says where the
    trace came from (a path, or ``bundled:<file>``); ``row`` holds each request's 0-based data row in the source.
    """

    s: np.ndarray
    o: np.ndarray
    arrival_s: np.ndarray | None
    source: str
    name: str
    row: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        s = np.asarray(self.s)
        o = np.asarray(self.o)
        if s.ndim != 1 or o.shape != s.shape or s.size == 0:
            raise LqsError("trace", self.name, "must hold at least one request with one s and one o per request")
        object.__setattr__(self, "s", s.astype(np.int32, copy=False))
        object.__setattr__(self, "o", o.astype(np.int32, copy=False))
        if self.arrival_s is not None:
            t = np.asarray(self.arrival_s, np.float64)
            if t.shape != s.shape:
                raise LqsError("arrival_s", f"{t.size} times", f"must have one time per request ({s.size})")
            object.__setattr__(self, "arrival_s", t)
        r = np.arange(s.size, dtype=np.int64) if self.row is None else np.asarray(self.row, np.int64)
        object.__setattr__(self, "row", r)

    def __len__(self) -> int:
        return int(self.s.size)

    def __repr__(self) -> str:
        arr = "with arrivals" if self.arrival_s is not None else "no arrivals"
        return f"Trace(name={self.name!r}, n={len(self)}, {arr}, source={self.source!r})"

    @property
    def n(self) -> int:
        return len(self)

    @property
    def max_total(self) -> int:
        """Largest s + o in the trace (tokens)."""
        return int(np.max(self.s.astype(np.int64) + self.o.astype(np.int64)))

    @property
    def duration_s(self) -> float | None:
        """Time from the first to the last arrival (seconds), or None without arrival times."""
        if self.arrival_s is None:
            return None
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def mean_rate_rps(self) -> float | None:
        """Observed mean arrival rate (n − 1) / (t_last − t_first) in requests per second.

        None when the trace has no arrival times, fewer than two requests or all arrivals at one instant.
        """
        d = self.duration_s
        if d is None or len(self) < 2 or not d > 0:
            return None
        return (len(self) - 1) / d

    def workload(self):
        """The joint empirical distribution of (s, o): a :class:`lqs.Pairs` that resamples the trace's pairs."""
        from ._workload import Pairs

        return Pairs(self.s, self.o)

    def validate(self, M) -> "Trace":
        """Raise LqsError naming the first request (row in the source) with s + o > M; return self."""
        M = check_int("M", M, 1)
        tot = self.s.astype(np.int64) + self.o.astype(np.int64)
        bad = np.flatnonzero(tot > M)
        if bad.size:
            i = int(bad[0])
            raise LqsError("lengths", f"s+o={int(tot[i])}",
                           f"every request must have s+o ≤ M={M}; such a request can never run",
                           f"row {int(self.row[i])} of {self.source}: s={int(self.s[i])}, o={int(self.o[i])}; "
                           f"{bad.size} of {len(self)} requests are too long")
        return self

    def subset(self, idx, name: str) -> "Trace":
        """The requests at positions ``idx`` (kept in the given order; arrival times re-based to start at 0)."""
        idx = np.asarray(idx, np.int64)
        t = None
        if self.arrival_s is not None:
            t = self.arrival_s[idx]
            t = t - t.min()
        return Trace(self.s[idx], self.o[idx], t, self.source, name, self.row[idx])

    def split(self, train_frac: float = 0.8, seed: int = 0) -> tuple["Trace", "Trace"]:
        """Deterministic (train, test) split, as the paper fits on 80% and tests on the other 20%.

        With arrival times the split is chronological: the first ⌊train_frac·n⌉ requests in arrival order train,
        the rest test (no look-ahead, like a deployment that calibrates on the past). Without arrival times it
        is a random permutation drawn with ``numpy.random.default_rng(seed)``; the train part is then kept in
        source order, and so is the test part. Both parts hold at least one request; arrival times of each part
        are re-based to start at 0.
        """
        train_frac = check_float("train_frac", train_frac, 0.0, 1.0, lo_open=True, hi_open=True)
        seed = check_int("seed", seed, 0)
        n = len(self)
        if n < 2:
            raise LqsError("trace", self.name, "must hold at least 2 requests to split into train and test",
                           f"it holds {n}")
        n_train = min(max(int(round(train_frac * n)), 1), n - 1)
        if self.arrival_s is not None:
            order = np.arange(n)  # already in arrival order
            tr, te = order[:n_train], order[n_train:]
        else:
            perm = np.random.default_rng(seed).permutation(n)
            tr, te = np.sort(perm[:n_train]), np.sort(perm[n_train:])
        return self.subset(tr, f"{self.name}[train]"), self.subset(te, f"{self.name}[test]")


# ----------------------------------------------------------------------------------------------- reading
def _trace_hint() -> str:
    return ("must be an existing .csv, .jsonl/.ndjson or .parquet file, or a bundled trace name: "
            + ", ".join(BUNDLED))


def _detect_format(name: str, fmt: str | None, param: str) -> str:
    if fmt is not None:
        f = str(fmt).strip().lower()
        f = {"ndjson": "jsonl", "json": "jsonl", "pq": "parquet", "txt": "csv", "tsv": "csv"}.get(f, f)
        if f not in FORMATS:
            raise LqsError("fmt", fmt, "must be one of " + ", ".join(FORMATS))
        return f
    base = name.lower()
    for c in _COMPRESSION:
        if base.endswith(c):
            base = base[: -len(c)]
            break
    ext = os.path.splitext(base)[1]
    if ext in _EXT:
        return _EXT[ext]
    raise LqsError(param, name, "has an unknown file extension: use .csv, .jsonl/.ndjson or .parquet, or pass fmt")


def _read_jsonl(fh) -> pd.DataFrame:
    """JSON lines (one object per line; blank lines skipped) or one JSON array of objects."""
    text = fh.read()
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON at line {e.lineno}: {e.msg}") from None
        if not all(isinstance(r, dict) for r in data):
            raise ValueError("a JSON array must hold one object per request")
        return pd.DataFrame.from_records(data)
    rows = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {lineno} is not valid JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"line {lineno} is not a JSON object")
        rows.append(rec)
    return pd.DataFrame.from_records(rows)


def _open_text(path_or_buf):
    if hasattr(path_or_buf, "read"):
        return path_or_buf
    import bz2
    import gzip
    import lzma

    low = str(path_or_buf).lower()
    if low.endswith(".gz"):
        return gzip.open(path_or_buf, "rt", encoding="utf-8")
    if low.endswith(".bz2"):
        return bz2.open(path_or_buf, "rt", encoding="utf-8")
    if low.endswith(".xz"):
        return lzma.open(path_or_buf, "rt", encoding="utf-8")
    return open(path_or_buf, encoding="utf-8")


def _read_table(src, fmt: str, label: str, param: str, *, csv_header="infer") -> pd.DataFrame:
    """Read a table; every failure becomes an LqsError naming ``param`` and ``label``."""
    try:
        if fmt == "csv":
            low = str(label).lower()
            if low.endswith(".tsv"):
                return pd.read_csv(src, sep="\t", header=csv_header)
            if low.endswith(".txt"):  # plain text: comma- or whitespace-separated
                return pd.read_csv(src, sep=r"[,\s]+", engine="python", header=csv_header)
            return pd.read_csv(src, header=csv_header, skipinitialspace=True)
        if fmt == "jsonl":
            fh = _open_text(src)
            try:
                return _read_jsonl(fh)
            finally:
                if fh is not src:
                    fh.close()
        return pd.read_parquet(src, engine="pyarrow")
    except LqsError:
        raise
    except pd.errors.EmptyDataError:
        raise LqsError(param, label, "must contain at least one request" if param == "trace"
                       else "must hold at least one batch time", "the file is empty") from None
    except (IsADirectoryError, PermissionError, FileNotFoundError) as e:
        raise LqsError(param, label, _trace_hint() if param == "trace" else "must be a readable file",
                       type(e).__name__) from None
    except Exception as e:  # parser errors of pandas / pyarrow / json / decoding
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise LqsError(param, label, f"must be a readable {fmt} file", msg) from None


def _resolve_source(path_or_name, param: str):
    """(source to read, label for messages, default trace name, name for format detection)."""
    if isinstance(path_or_name, os.PathLike):
        path_or_name = os.fspath(path_or_name)
    if not isinstance(path_or_name, str) or not path_or_name.strip():
        raise LqsError(param, path_or_name, _trace_hint())
    key = path_or_name.strip()
    bname = key.lower().replace("_", "-")
    if bname in BUNDLED and not os.path.exists(key):
        fname = BUNDLED[bname]
        return resources.files("lqs.data").joinpath(fname), f"bundled:{fname}", bname, fname
    if not os.path.exists(key):
        raise LqsError(param, path_or_name, _trace_hint() if param == "trace" else "must be an existing file",
                       "no such file")
    if os.path.isdir(key):
        raise LqsError(param, path_or_name, _trace_hint() if param == "trace" else "must be a file",
                       "it is a directory")
    stem = os.path.basename(key)
    for c in _COMPRESSION:
        if stem.lower().endswith(c):
            stem = stem[: -len(c)]
    return key, key, os.path.splitext(stem)[0], key


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
    if pd.api.types.is_bool_dtype(ser.dtype):
        raise LqsError(role, f"column {col!r} of booleans", f"every {what} must be an integer ≥ 1",
                       f"in {label}")
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


def load_trace(path_or_name, s_col: str | None = None, o_col: str | None = None, t_col: str | None = None,
               fmt: str | None = None, *, t_unit: str | None = None, name: str | None = None) -> Trace:
    """Load a request trace from a .csv, .jsonl/.ndjson or .parquet file, or a bundled trace by name.

    ``s_col`` / ``o_col`` / ``t_col`` name the prompt-length, output-length and arrival-time columns; left out,
    they are found by the conventions in this module's docstring. ``fmt`` ('csv', 'jsonl', 'parquet') overrides
    the file extension; ``t_unit`` ('s', 'ms', 'us', 'ns') the unit of a numeric time column. Every failure
    raises :class:`lqs.LqsError`.
    """
    src, label, default_name, fmt_hint = _resolve_source(path_or_name, "trace")
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


# ----------------------------------------------------------------------------------------------- batch times
def load_b_samples(path, col: str | None = None, *, fmt: str | None = None) -> np.ndarray:
    """Observed batch (step) times in seconds, from a CSV, JSONL, Parquet or plain-text file.

    Plain text / CSV may have no header (one number per line, the first column is used) or a header. ``col``
    names the column; left out, a single column is used, else the first of the usual names (batch_time_s,
    batch_time, step_time_s, b_s, duration_s, latency_s, ...). A column whose name ends in ``_ms``/``_us``/``_ns``
    is converted to seconds. Every value must be a finite number > 0; failures raise LqsError.
    """
    param = "b_samples"
    src, label, _, fmt_hint = _resolve_source(path, param)
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

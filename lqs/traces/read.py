"""Reading trace files: the known conventions, format detection, table reading and source resolution."""

from __future__ import annotations

import json
import os
from importlib import resources

import pandas as pd

from .._errors import LqsError

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


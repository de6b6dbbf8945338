"""Files of a sweep directory: atomic writes, preparing (and checking) the directory, finished chunks, loading."""

from __future__ import annotations

import glob
import json
import os
import time

import pandas as pd

from .._errors import LqsError
from .plan import _Chunk
from .spec import SweepSpec


# ----------------------------------------------------------------------------------------------- files
def _write_atomic(df: pd.DataFrame, path: str, fmt: str = "parquet"):
    d, base = os.path.split(path)
    tmp = os.path.join(d, f".{base}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        if fmt == "parquet":
            df.to_parquet(fh, index=False)
        else:
            fh.write(df.to_csv(index=False).encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_json_atomic(obj, path):
    d, base = os.path.split(path)
    tmp = os.path.join(d, f".{base}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


_OUTPUTS = ("cells.parquet", "cells.csv", "replicas.parquet", "replicas.csv")


def _prepare_out(out: str, spec: SweepSpec, overwrite: bool, n_cells: int, n_chunks: int):
    """Create/check DIR: refuse a different spec unless ``overwrite``; clear leftovers of interrupted writes."""
    from .. import __version__

    if os.path.exists(out) and not os.path.isdir(out):
        raise LqsError("out", out, "must be a directory (a file of that name exists)")
    cdir = os.path.join(out, "chunks")
    sp = os.path.join(out, "spec.json")
    mine = spec.to_dict()
    if os.path.exists(sp) and not overwrite:
        try:
            with open(sp, encoding="utf-8") as fh:
                old = json.load(fh).get("spec")
        except (OSError, ValueError, AttributeError):
            old = None
        if old != mine:
            diff = sorted(k for k in set(mine) | set(old or {}) if (old or {}).get(k) != mine.get(k))
            raise LqsError("out", out, "holds a sweep with a different spec: use another directory or "
                                       "overwrite=True (--overwrite)",
                           "differs in: " + ", ".join(diff) if old is not None else "its spec.json is unreadable")
    elif not os.path.exists(sp) and not overwrite and glob.glob(os.path.join(cdir, "chunk-*.parquet")):
        raise LqsError("out", out, "holds chunk files but no spec.json: use another directory or overwrite=True "
                                   "(--overwrite)")
    if overwrite:
        for p in glob.glob(os.path.join(cdir, "chunk-*.parquet")) + [os.path.join(out, f) for f in _OUTPUTS] + [sp]:
            if os.path.exists(p):
                os.remove(p)
    os.makedirs(cdir, exist_ok=True)
    for p in glob.glob(os.path.join(cdir, ".chunk-*.tmp-*")) + glob.glob(os.path.join(out, ".*.tmp-*")):
        if not _pid_alive(p.rsplit("-", 1)[-1]):  # a write cut short by a kill (not one in progress elsewhere)
            try:
                os.remove(p)
            except OSError:  # pragma: no cover
                pass
    _write_json_atomic({"spec": mine, "lqs_version": __version__, "n_cells": n_cells, "n_chunks": n_chunks}, sp)
    return cdir


def _pid_alive(pid_text) -> bool:
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours
        return True
    return True


def _chunk_done(cdir: str, ch: _Chunk, per_replica: bool) -> bool:
    """True when the chunk's files exist and hold exactly its cells (anything else is recomputed)."""
    p = os.path.join(cdir, ch.name + ".parquet")
    if not os.path.exists(p):
        return False
    if per_replica and not os.path.exists(os.path.join(cdir, ch.name + ".replicas.parquet")):
        return False
    try:
        got = pd.read_parquet(p, columns=["cell"])["cell"].tolist()
    except Exception:
        return False
    return got == ch.cells


def _wait_for_spec(out, timeout_s: float = 600.0):
    """Hosts other than 0 wait until host 0 has laid out the directory (spec.json)."""
    t_end = time.time() + timeout_s
    while not os.path.exists(os.path.join(out, "spec.json")):
        if time.time() > t_end:
            raise LqsError("out", out, "host 0 has not written spec.json there (shared file system?)")
        time.sleep(1.0)


def load_sweep(out, replicas: bool = False) -> pd.DataFrame:
    """The finished table of a sweep directory (``cells.parquet``, or ``replicas.parquet``)."""
    p = os.path.join(os.fspath(out), "replicas.parquet" if replicas else "cells.parquet")
    if not os.path.exists(p):
        raise LqsError("out", os.fspath(out), "holds no finished sweep (" + os.path.basename(p) + " is missing)")
    return pd.read_parquet(p)

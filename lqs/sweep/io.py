"""The files of a sweep directory: atomic writes, preparing (and checking) the directory, finished parts, loading.

::

    DIR/spec.json                       the resolved spec (a different spec in the same DIR is refused)
    DIR/parts/part-00000.parquet        summary rows of one part (+ part-00000.trials.parquet with per_trial)
    DIR/cells.parquet, DIR/cells.csv    every cell, sorted by cell id (written when every part is there)
    DIR/trials.parquet, .csv            one row per cell × trial (with ``per_trial: true``)

Every file is written under a temporary name (``.NAME.tmp-HOST-PID``) and renamed into place, so a file that
exists is complete; temporary files left by a killed process of this host are removed on the next run.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import time

import pandas as pd

from .._errors import LqsError
from .plan import _Part
from .spec import SweepSpec
from .. import _jsonio

PARTS = "parts"
_OUTPUTS = ("cells.parquet", "cells.csv", "trials.parquet", "trials.csv")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _tmp_name(path: str) -> str:
    d, base = os.path.split(path)
    return os.path.join(d, f".{base}.tmp-{_host_tag()}-{os.getpid()}")


def write_atomic(df: pd.DataFrame, path: str, fmt: str = "parquet"):
    tmp = _tmp_name(path)
    with open(tmp, "wb") as fh:
        if fmt == "parquet":
            df.to_parquet(fh, index=False)
        else:
            fh.write(df.to_csv(index=False).encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_json_atomic(obj, path):
    tmp = _tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as fh:
        _jsonio.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prepare_out(out: str, spec: SweepSpec, overwrite: bool, n_cells: int, n_parts: int) -> str:
    """Create/check DIR: refuse a different spec unless ``overwrite``; clear leftovers of interrupted writes.
    Returns the parts folder."""
    from .._version import __version__

    if os.path.exists(out) and not os.path.isdir(out):
        raise LqsError("out", out, "must be a directory (a file of that name exists)")
    pdir = os.path.join(out, PARTS)
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
    elif not os.path.exists(sp) and not overwrite and glob.glob(os.path.join(pdir, "part-*.parquet")):
        raise LqsError("out", out, "holds part files but no spec.json: use another directory or overwrite=True "
                                   "(--overwrite)")
    if overwrite:
        for p in glob.glob(os.path.join(pdir, "part-*.parquet")) + [os.path.join(out, f) for f in _OUTPUTS] + [sp]:
            if os.path.exists(p):
                os.remove(p)
    os.makedirs(pdir, exist_ok=True)
    for p in glob.glob(os.path.join(pdir, ".part-*.tmp-*")) + glob.glob(os.path.join(out, ".*.tmp-*")):
        if _stale(p):  # a write cut short by a kill (not one in progress here or on another host)
            try:
                os.remove(p)
            except OSError:  # pragma: no cover
                pass
    _write_json_atomic({"spec": mine, "lqs_version": __version__, "n_cells": n_cells, "n_parts": n_parts}, sp)
    return pdir


def _stale(tmp_path: str) -> bool:
    """A temporary file of a dead process of this host (files of other hosts are left to them)."""
    tag = tmp_path.rsplit(".tmp-", 1)[-1]
    host, _, pid_text = tag.rpartition("-")
    if host and host != _host_tag():
        return False
    return not _pid_alive(pid_text)


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


def part_done(pdir: str, part: _Part, per_trial: bool) -> bool:
    """True when the part's files exist and hold exactly its cells (anything else is recomputed)."""
    p = os.path.join(pdir, part.name + ".parquet")
    if not os.path.exists(p):
        return False
    if per_trial and not os.path.exists(os.path.join(pdir, part.name + ".trials.parquet")):
        return False
    try:
        got = pd.read_parquet(p, columns=["cell"])["cell"].tolist()
    except Exception:
        return False
    return got == part.cells


def wait_for_spec(out, spec: SweepSpec | None = None, timeout_s: float = 600.0, poll_s: float = 0.2):
    """Hosts other than 0 wait until host 0 has laid out the directory (spec.json); with ``spec`` (a sweep that
    host 0 overwrites) until spec.json holds that spec."""
    sp = os.path.join(out, "spec.json")
    mine = None if spec is None else spec.to_dict()
    t_end = time.time() + timeout_s
    while True:
        if os.path.exists(sp):
            if mine is None:
                return
            try:
                with open(sp, encoding="utf-8") as fh:
                    if json.load(fh).get("spec") == mine:
                        return
            except (OSError, ValueError, AttributeError):
                pass
        if time.time() > t_end:
            raise LqsError("out", out, "host 0 has not written this sweep's spec.json there (shared file system?)")
        time.sleep(poll_s)


def load_sweep(out, trials: bool = False) -> pd.DataFrame:
    """The finished table of a sweep directory: ``cells.parquet`` (one row per cell), or with ``trials=True``
    ``trials.parquet`` (one row per cell × trial, from a sweep with ``per_trial``)."""
    p = os.path.join(os.fspath(out), "trials.parquet" if trials else "cells.parquet")
    if not os.path.exists(p):
        raise LqsError("out", os.fspath(out), "holds no finished sweep (" + os.path.basename(p) + " is missing)")
    return pd.read_parquet(p)

"""The store of ``lqs bench`` records: which step-loop path was measured fastest, and bit-identical to the XLA path,
on this device (read by ``path="auto"``: lqs/engine/paths.py; written by lqs/engine/bench.py).

Records live in ``<cache dir>/bench.json`` (``$LQS_CACHE_DIR``, else the platform's user cache directory:
``$XDG_CACHE_HOME/lqs`` or ``~/.cache/lqs`` on Linux, ``~/Library/Caches/lqs`` on macOS,
``%LOCALAPPDATA%\\lqs\\Cache`` on Windows), one per (device kind, jax and jaxlib versions, policy, batch-time model
kind, K bucket). A record written by another jax/jaxlib or another engine revision (ENGINE_REV) is stale.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CACHE_VERSION = 2  # 2: per-path speeds under trial_steps_per_s (1 wrote replica_steps_per_s)
#: bump when a path's step changes (its speed or bits): records of an older revision are stale
ENGINE_REV = "2026-12-02.typed-state.uniform-below-1"
SPEED = "trial_steps_per_s"  # the speed a record keeps per path


def cache_dir() -> Path:
    env = os.environ.get("LQS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "lqs"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "lqs" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lqs"


def cache_file() -> Path:
    return cache_dir() / "bench.json"


def device_kind() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', d.platform)}"


def versions() -> dict:
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "engine_rev": ENGINE_REV}


def k_bucket(K: int) -> int:
    """Records are shared by every K up to the same power of two."""
    return 1 << max(0, int(K) - 1).bit_length()


def scope(policy: str, batch_kind: str, K: int) -> str:
    """What a record is for, without the versions: device kind, policy, batch-time model kind, K bucket."""
    return f"{device_kind()} | policy {policy} | batch {batch_kind} | K<={k_bucket(K)}"


def record_key(policy: str, batch_kind: str, K: int) -> str:
    v = versions()
    return f"{scope(policy, batch_kind, K)} | jax {v['jax']} | jaxlib {v['jaxlib']} | engine {v['engine_rev']}"


def load_records() -> dict:
    try:
        with open(cache_file()) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    return data.get("records", {})


def save_record(key: str, entry: dict) -> Path:
    recs = load_records()
    recs[key] = entry
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump({"version": CACHE_VERSION, "records": recs}, fh, indent=1)
    os.replace(tmp, path)
    return path


def lookup(policy: str, batch_kind: str, K: int) -> tuple[str, dict | None, str | None]:
    """(key, record or None, key of a stale record of the same scope or None)."""
    recs = load_records()
    key = record_key(policy, batch_kind, K)
    if key in recs:
        return key, recs[key], None
    sc = scope(policy, batch_kind, K) + " |"
    stale = next((k for k in recs if k.startswith(sc)), None)
    return key, None, stale


def fastest(entry: dict) -> str | None:
    """The fastest path of a record among those that compiled and ended bit-identical to the XLA path."""
    ok = {p: r for p, r in entry.get("paths", {}).items() if r.get("compiled", True) and r.get("identical")
          and r.get(SPEED)}
    return max(ok, key=lambda p: ok[p][SPEED]) if ok else None

"""``lqs.bench``: time every step-loop path on this device from the same keys, check that they end in bit-identical
states, and record the result where ``engine="auto"`` looks for it (lqs/engine/paths.py: ``auto`` only picks a
path measured here).

The run: pd-1:1 at the paper's M = 131,000 tokens, ŝ = 512, b̄ = 0.0372 s, λ = 1.5·μ (saturated), one warm-up
call then one timed call of ``steps`` steps for ``trials`` trials. Paths: ``xla``, and the fused Pallas kernel
(``fused`` through Triton on a GPU; ``fused-interpret``, Pallas interpret mode, elsewhere: a verification path).
XLA is timed at its sized K, the fused path at its own (under Triton, ``kernels.fused.triton_K``: up to 320 slots
K rounded up to a multiple of 32, 288 stays 288, 300 runs as 320; above, to a sum of at most two powers of two of at
least 32 slots, 600 runs as 640); the fused
path's final states are compared leaf by leaf with those of an XLA run at that same K.

Records live in ``<cache dir>/bench.json`` (``$LQS_CACHE_DIR``, else the platform's user cache directory:
``$XDG_CACHE_HOME/lqs`` or ``~/.cache/lqs`` on Linux, ``~/Library/Caches/lqs`` on macOS,
``%LOCALAPPDATA%\\lqs\\Cache`` on Windows), one per (device kind, jax and jaxlib versions, policy, batch-time model
kind, K bucket). A record written by another jax/jaxlib or another engine revision (ENGINE_REV) is stale.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .._errors import check_choice, check_int

CACHE_VERSION = 1
#: bump when a path's step changes (its speed or bits): records of an older revision are stale
ENGINE_REV = "2026-12-01.slot-major.arrival-log"
POLICIES = ("swap", "recompute", "reserve")


# ----------------------------------------------------------------------------------------- the record file
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
    ok = {p: r for p, r in entry.get("paths", {}).items()
          if r.get("compiled", True) and r.get("identical") and r.get("replica_steps_per_s")}
    return max(ok, key=lambda p: ok[p]["replica_steps_per_s"]) if ok else None


# ----------------------------------------------------------------------------------------- the measurement
def available_paths() -> list[str]:
    from .paths import on_gpu

    return ["xla", "fused" if on_gpu() else "fused-interpret"]


#: programs compiled by bench in this process, with their compile time: a second bench of the same shapes (another
#: policy's run beside it, --engines xla after a full bench) reuses the executable and reports the first compile
_COMPILED: dict = {}


def _compiled(st, params, cfg, path, rb, n_arr):
    """(executable, compile seconds) of one call of ``path`` for these shapes, compiled once per process."""
    import jax

    from . import paths as P

    shapes = tuple((np.shape(x), str(np.asarray(x).dtype) if not hasattr(x, "dtype") else str(x.dtype))
                   for x in jax.tree_util.tree_leaves((st, params)))
    k = (path, cfg, rb, jax.tree_util.tree_structure((st, params)), shapes)
    if k not in _COMPILED:
        t0 = time.perf_counter()
        exe = P.run_call_jit.lower(st, params, cfg, path, rb, None, n_arr).compile()
        _COMPILED[k] = (exe, time.perf_counter() - t0)
    return _COMPILED[k]


def _tree_equal(a, b) -> bool:
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y),
                                                                                    equal_nan=True)
                                      for x, y in zip(la, lb))


def bench(*, trials: int | None = None, steps: int | None = None, quick: bool = False,
          engines: list[str] | None = None, policy: str = "swap", batch: str = "constant", K: int | None = None,
          seed: int = 0, record: bool = True, progress=None) -> list[dict]:
    """Time each step-loop path on the current device (pd-1:1 saturated, see the module docstring) and check
    that the fused path ends bit-identical to the XLA path from the same keys.

    Returns one dict per path: ``engine``, ``device_kind``, ``replica_steps_per_s`` (also ``trial_steps_per_s``),
    ``slot_steps_per_s``, ``requests_per_s`` (simulated completions per wall second), ``compile_s``, ``identical``
    (final states equal to the XLA path's, leaf by leaf; the XLA path is the reference), ``compiled``, ``error``,
    ``trials``, ``steps``, ``K``, and the record's ``key`` and ``cache_file`` when ``record``.
    ``quick``: a few seconds per path on a CPU (16 trials × 128 steps there; 4,096 × 1,024 on a GPU).
    ``engines``: a subset of ``["xla", "fused"]`` (default both; ``fused`` is interpret mode off a GPU)."""
    import jax

    import lqs
    from .._batch import parse_batch_spec
    from .._server import MonteCarlo, Server
    from . import paths as P
    from .sizing import call_plan, prepare

    on_gpu = P.on_gpu()
    policy = check_choice("policy", "swap" if policy == "fcfs" else policy, POLICIES)
    if trials is None:
        trials = (4096 if on_gpu else 16) if quick else (16384 if on_gpu else 64)
    if steps is None:
        steps = (1024 if on_gpu else 128) if quick else 4096
    trials = check_int("trials", trials, 1, 1 << 24)
    steps = check_int("steps", steps, 64, 1 << 20)
    avail = available_paths()
    want = ["xla", "fused"] if engines is None else list(engines)
    for e in want:
        check_choice("engines", e, ("xla", "fused"))
    paths = [p for p in avail if (p if p == "xla" else "fused") in want]
    if "xla" not in paths:
        paths.insert(0, "xla")  # the reference of the identity check

    w = lqs.preset("pd-1:1")
    bt = parse_batch_spec(batch, 0.0372)
    srv = Server(M=131_000, prefill_chunk=512, b=bt, policy=policy)
    lam = 1.5 * lqs.capacity(w, srv.replace(b=0.0372)).mu_rps
    mc = MonteCarlo(trials=trials, warmup=0, K=K, engine="xla", max_points=10**6)
    cfg_x, sz_x, _, params_x = prepare(w, srv, [lam], mc, steps)
    fused_path = next((p for p in paths if p != "xla"), None)
    if fused_path:
        cfg_f, sz_f, _, params_f = prepare(w, srv, [lam], mc.replace(engine="fused"), steps)
    keys = jax.random.split(jax.random.key(seed), trials)
    kind, dk = bt.kind, device_kind()

    def timed(path, cfg, params, rb):
        """(row, final state or None): compile, a warm-up call (the slots fill up: saturated), a timed call."""
        n_rec = call_plan(steps, cfg)[0]  # one call of (about) ``steps`` steps
        n_arr = np.int32(n_rec)
        call_steps = n_rec * cfg.compact_every * cfg.blocks_per_record
        row = dict(engine=path, device_kind=dk, policy=policy, batch=kind, trials=trials, steps=call_steps,
                   K=cfg.K, K_sized=sz_x.K, fused_rb=rb, compiled=False, error=None, identical=None,
                   replica_steps_per_s=None, trial_steps_per_s=None, slot_steps_per_s=None, requests_per_s=None,
                   compile_s=None, **versions())
        if progress:
            progress(f"{path}: compiling ({trials} trials, K = {cfg.K}, {call_steps} steps per call)")
        try:
            st = P.init_jit(keys, params, cfg)
            run, row["compile_s"] = _compiled(st, params, cfg, path, rb, n_arr)
            row["compiled"] = True
            st, _ = run(st, params, n_arr)
            jax.block_until_ready(st)
            c0 = int(np.asarray(st.completions).sum())
            t1 = time.perf_counter()
            st, _ = run(st, params, n_arr)
            jax.block_until_ready(st)
            wall = time.perf_counter() - t1
        except Exception as e:  # noqa: BLE001 - a path that does not compile or run here is recorded as such
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            row["identical"] = False
            return row, None
        n = trials * call_steps
        row.update(replica_steps_per_s=n / wall, trial_steps_per_s=n / wall, slot_steps_per_s=n * cfg.K / wall,
                   requests_per_s=(int(np.asarray(st.completions).sum()) - c0) / wall, wall_s=wall,
                   violations=int(np.asarray(st.violations).sum()))
        return row, jax.device_get(st)

    # XLA timed at its own K; the fused path at its own (triton_K under Triton), checked against an XLA run
    # at that same K
    row_x, st_x = timed("xla", cfg_x, params_x, 0)
    row_x["identical"] = st_x is not None
    rows = [row_x]
    if fused_path:
        row_f, st_f = timed(fused_path, cfg_f, params_f, sz_f.fused_rb)
        if st_f is not None:
            ref = st_x if cfg_f.K == cfg_x.K else timed("xla", cfg_f, params_f, 0)[1]
            row_f["identical"] = ref is not None and _tree_equal(ref, st_f)
        rows.append(row_f)
    cfg = cfg_f if fused_path else cfg_x
    if record:
        key = record_key(policy, kind, sz_x.K)
        entry = dict(when=time.strftime("%Y-%m-%dT%H:%M:%S"), lqs_version=lqs.__version__, trials=trials,
                     steps=cfg.steps_per_call, K=cfg.K, device_kind=dk, policy=policy, batch=kind, **versions(),
                     paths={r["engine"]: {k: r[k] for k in ("replica_steps_per_s", "identical", "compiled", "error")}
                            for r in rows})
        path = save_record(key, entry)
        for r in rows:
            r.update(key=key, cache_file=str(path))
    return rows


def table(rows: list[dict]) -> str:
    """The rows of :func:`bench` as a text table."""
    def num(x, f):
        return "—" if x is None else format(x, f)

    head = f"{'engine':<16} {'identical':>9} {'replica-steps/s':>16} {'slot-steps/s':>13} {'requests/s':>11} " \
           f"{'compile s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ident = "—" if r["identical"] is None else ("yes" if r["identical"] else "NO")
        lines.append(f"{r['engine']:<16} {ident:>9} {num(r['replica_steps_per_s'], ',.0f'):>16} "
                     f"{num(r['slot_steps_per_s'], '.3g'):>13} {num(r['requests_per_s'], ',.0f'):>11} "
                     f"{num(r['compile_s'], '.1f'):>9}")
        if r.get("error"):
            lines.append(f"  {r['engine']} failed: {r['error']}")
    r0 = rows[0]
    lines.append(f"device {r0['device_kind']}, jax {r0['jax']}, jaxlib {r0['jaxlib']}; pd-1:1 saturated, policy "
                 f"{r0['policy']}, batch {r0['batch']}, {r0['trials']} trials × {r0['steps']} steps, K = {r0['K']}")
    if r0.get("cache_file"):
        lines.append(f"recorded in {r0['cache_file']} (engine='auto' picks the fastest identical path from it)")
    return "\n".join(lines)

"""``lqs.bench``: time every step-loop path on this device from the same keys, check that they end in bit-identical
states, and record the result where ``path="auto"`` looks for it (lqs/engine/records.py; lqs/engine/paths.py:
``auto`` only picks a path measured here).

The run: pd-1:1 at the paper's M = 131,000 tokens, ŝ = 512, b̄ = 0.0372 s, λ = 1.5·μ (saturated), one warm-up
call then one timed call of ``steps`` steps for ``trials`` trials. Paths: ``xla``, and the fused Pallas kernel
(``fused`` through Triton on a GPU; ``fused-interpret``, Pallas interpret mode, elsewhere: a verification path).
XLA is timed at its sized K, the fused path at its own (under Triton, ``kernels/fused/layout.py: triton_K``); the
fused path's final states are compared leaf by leaf with those of an XLA run at that same K.
"""

from __future__ import annotations

import time

import numpy as np

from .._errors import check_choice, check_int
from .._server import POLICIES
from .records import SPEED, device_kind, record_key, save_record, versions


# ----------------------------------------------------------------------------------------- the measurement
def available_paths() -> list[str]:
    from .paths import on_gpu

    return ["xla", "fused" if on_gpu() else "fused-interpret"]


#: programs compiled by bench in this process, with their compile time: a second bench of the same shapes (another
#: policy's run beside it, --paths xla after a full bench) reuses the executable and reports the first compile
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
          paths: list[str] | None = None, policy: str = "swap", batch: str = "constant", K: int | None = None,
          seed: int = 0, record: bool = True, progress=None, engines: list[str] | None = None) -> list[dict]:
    """Time each step-loop path on the current device (pd-1:1 saturated, see the module docstring) and check
    that the fused path ends bit-identical to the XLA path from the same keys.

    Returns one dict per path: ``path``, ``device_kind``, ``trial_steps_per_s``, ``slot_steps_per_s``, ``requests_per_s`` (simulated completions per wall second), ``compile_s``, ``identical``
    (final states equal to the XLA path's, leaf by leaf; the XLA path is the reference), ``compiled``, ``error``,
    ``trials``, ``steps``, ``K``, and the record's ``key`` and ``cache_file`` when ``record``.
    ``quick``: a few seconds per path on a CPU (16 trials × 128 steps there; 4,096 × 1,024 on a GPU).
    ``paths``: a subset of ``["xla", "fused"]`` (default both; ``fused`` is interpret mode off a GPU);
    ``engines`` is its deprecated name."""
    import warnings

    import jax

    from .._batch import parse_batch_spec
    from .._server import MonteCarlo, Server
    from .._theory import capacity
    from .._version import __version__
    from .._workload import preset
    from . import paths as P
    from .sizing import call_plan, prepare

    if engines is not None:
        warnings.warn("bench(engines=...) is deprecated: use paths=", DeprecationWarning, stacklevel=2)
        paths = engines if paths is None else paths

    on_gpu = P.on_gpu()
    policy = check_choice("policy", "swap" if policy == "fcfs" else policy, POLICIES)
    if trials is None:
        trials = (4096 if on_gpu else 16) if quick else (16384 if on_gpu else 64)
    if steps is None:
        steps = (1024 if on_gpu else 128) if quick else 4096
    trials = check_int("trials", trials, 1, 1 << 24)
    steps = check_int("steps", steps, 64, 1 << 20)
    avail = available_paths()
    want = ["xla", "fused"] if paths is None else list(paths)
    for e in want:
        check_choice("paths", e, ("xla", "fused"))
    run_paths = [p for p in avail if (p if p == "xla" else "fused") in want]
    if "xla" not in run_paths:
        run_paths.insert(0, "xla")  # the reference of the identity check

    w = preset("pd-1:1")
    bt = parse_batch_spec(batch, 0.0372)
    srv = Server(M=131_000, prefill_chunk=512, b=bt, policy=policy)
    lam = 1.5 * capacity(w, srv.replace(b=0.0372)).mu_rps
    mc = MonteCarlo(trials=trials, warmup=0, K=K, path="xla", max_points=10**6)
    cfg_x, sz_x, _, params_x = prepare(w, srv, [lam], mc, steps)
    fused_path = next((p for p in run_paths if p != "xla"), None)
    if fused_path:
        cfg_f, sz_f, _, params_f = prepare(w, srv, [lam], mc.replace(path="fused"), steps)
    keys = jax.random.split(jax.random.key(seed), trials)
    kind, dk = bt.kind, device_kind()

    def timed(path, cfg, params, rb):
        """(row, final state or None): compile, a warm-up call (the slots fill up: saturated), a timed call."""
        n_pts = call_plan(steps, cfg)[0]  # one call of (about) ``steps`` steps
        n_arr = np.int32(n_pts)
        call_steps = n_pts * cfg.steps_per_point
        row = dict(path=path, device_kind=dk, policy=policy, batch=kind, trials=trials, steps=call_steps,
                   K=cfg.K, K_sized=sz_x.K, fused_trials=rb, compiled=False, error=None, identical=None,
                   trial_steps_per_s=None, slot_steps_per_s=None, requests_per_s=None, compile_s=None, **versions())
        if progress:
            progress(f"{path}: compiling ({trials} trials, K = {cfg.K}, {call_steps} steps per call)")
        try:
            st = P.init_jit(keys, params, cfg)
            run, row["compile_s"] = _compiled(st, params, cfg, path, rb, n_arr)
            row["compiled"] = True
            st, _ = run(st, params, n_arr)
            jax.block_until_ready(st)
            c0 = int(np.asarray(st.counters.completions).sum())
            t1 = time.perf_counter()
            st, _ = run(st, params, n_arr)
            jax.block_until_ready(st)
            wall = time.perf_counter() - t1
        except Exception as e:  # noqa: BLE001 - a path that does not compile or run here is recorded as such
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            row["identical"] = False
            return row, None
        n = trials * call_steps
        row.update(trial_steps_per_s=n / wall, slot_steps_per_s=n * cfg.K / wall,
                   requests_per_s=(int(np.asarray(st.counters.completions).sum()) - c0) / wall, wall_s=wall,
                   violations=int(np.asarray(st.limits.violations).sum()))
        return row, jax.device_get(st)

    # XLA timed at its own K; the fused path at its own (triton_K under Triton), checked against an XLA run
    # at that same K
    row_x, st_x = timed("xla", cfg_x, params_x, 0)
    row_x["identical"] = st_x is not None
    rows = [row_x]
    if fused_path:
        row_f, st_f = timed(fused_path, cfg_f, params_f, sz_f.fused_trials)
        if st_f is not None:
            ref = st_x if cfg_f.K == cfg_x.K else timed("xla", cfg_f, params_f, 0)[1]
            row_f["identical"] = ref is not None and _tree_equal(ref, st_f)
        rows.append(row_f)
    cfg = cfg_f if fused_path else cfg_x
    if record:
        key = record_key(policy, kind, sz_x.K)
        entry = dict(when=time.strftime("%Y-%m-%dT%H:%M:%S"), lqs_version=__version__, trials=trials,
                     steps=cfg.steps_per_call, K=cfg.K, device_kind=dk, policy=policy, batch=kind, **versions(),
                     paths={r["path"]: {k: r[k] for k in (SPEED, "identical", "compiled", "error")} for r in rows})
        path = save_record(key, entry)
        for r in rows:
            r.update(key=key, cache_file=str(path))
    return rows


def table(rows: list[dict]) -> str:
    """The rows of :func:`bench` as a text table."""
    def num(x, f):
        return "—" if x is None else format(x, f)

    head = f"{'path':<16} {'identical':>9} {'trial-steps/s':>16} {'slot-steps/s':>13} {'requests/s':>11} " \
           f"{'compile s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ident = "—" if r["identical"] is None else ("yes" if r["identical"] else "NO")
        lines.append(f"{r['path']:<16} {ident:>9} {num(r['trial_steps_per_s'], ',.0f'):>16} "
                     f"{num(r['slot_steps_per_s'], '.3g'):>13} {num(r['requests_per_s'], ',.0f'):>11} "
                     f"{num(r['compile_s'], '.1f'):>9}")
        if r.get("error"):
            lines.append(f"  {r['path']} failed: {r['error']}")
    r0 = rows[0]
    lines.append(f"device {r0['device_kind']}, jax {r0['jax']}, jaxlib {r0['jaxlib']}; pd-1:1 saturated, policy "
                 f"{r0['policy']}, batch {r0['batch']}, {r0['trials']} trials × {r0['steps']} steps, K = {r0['K']}")
    if r0.get("cache_file"):
        lines.append(f"recorded in {r0['cache_file']} (path='auto' picks the fastest identical path from it)")
    return "\n".join(lines)

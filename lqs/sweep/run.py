"""Running a sweep: each chunk through lqs.simulate, shared between hosts, with a progress bar."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._errors import LqsError
from .axes import _batch_model
from .io import _chunk_done, _prepare_out, _wait_for_spec, _write_atomic
from .plan import _Chunk, _chunk_key, _plan
from .spec import SweepSpec


def _simulate(workload, **kw):
    """lqs.simulate (a seam for the tests)."""
    from .. import _engine

    return _engine.simulate(workload, **kw)


def _run_chunk(spec: SweepSpec, wl, ch: _Chunk, devices=None):
    """Simulate one chunk → (summary rows, replica rows or None), with the axis columns in front."""
    g = ch.group
    kw = dict(M=ch.Ms, chunk=g.chunk, lam=ch.lams, policy=g.policy, replicas=spec.replicas, steps=g.steps,
              warmup=spec.warmup, key=_chunk_key(spec.seed, ch), token_budget=g.token_budget, progress=False)
    if g.batch == "constant":
        kw["b"] = ch.bs
    else:
        kw["b"] = _batch_model(g.batch, ch.bs[0])
        kw["b_theory"] = ch.bs[0]
    if g.servers != 1:  # only when needed, so this works with an engine without cluster support too
        kw.update(servers=g.servers, routing=g.routing)
    kw.update(spec.options)
    if devices is not None:  # where it runs, not what it computes: not part of the spec
        kw["devices"] = devices
    res = _simulate(wl, **kw)
    summ = res.summary.reset_index(drop=True)
    n = len(ch.cells)
    if len(summ) != n:
        raise RuntimeError(f"{ch.name}: simulate returned {len(summ)} rows for {n} cells")
    exp_lam = np.asarray([lam for _ in ch.bs for _ in ch.Ms for lam in ch.lams], np.float64)
    exp_M = np.asarray([m for _ in ch.bs for m in ch.Ms for _ in ch.lams])
    if not (np.allclose(summ["lam_rps"].to_numpy(np.float64), exp_lam, rtol=1e-6)
            and np.array_equal(summ["M_tokens"].to_numpy(), exp_M)):
        raise RuntimeError(f"{ch.name}: simulate's grid order differs from the sweep's cell order")
    front = {"cell": np.asarray(ch.cells, np.int64), "chunk": np.full(n, ch.id, np.int64),
             "workload": [g.workload] * n, "batch": [g.batch] * n, "servers": np.full(n, g.servers, np.int64),
             "routing": [g.routing] * n}
    if ch.rhos is not None:
        front["rho_target"] = np.asarray([r for _ in ch.bs for _ in ch.Ms for r in ch.rhos], np.float64)
    df = pd.concat([pd.DataFrame(front), summ.drop(columns=[c for c in summ.columns if c in front or c == "config"])],
                   axis=1)
    df["cell_key"] = ch.keys
    reps = None
    if spec.per_replica:
        r = res.replicas.reset_index(drop=True)
        ci = r["config"].to_numpy()
        rf = {k: np.asarray(v)[ci] if not isinstance(v, list) else [v[i] for i in ci] for k, v in front.items()}
        theory = [c for c in ("mu_rps", "mu_exact_rps", "mu_stable_rps", "mu_exact_stable_rps", "delta", "rho")
                  if c in summ.columns and c not in r.columns]
        reps = pd.concat([pd.DataFrame(rf), r.drop(columns=[c for c in r.columns if c in rf or c == "config"]),
                          summ.loc[ci, theory].reset_index(drop=True)], axis=1)
        reps["cell_key"] = [ch.keys[i] for i in ci]
    return df, reps



# ----------------------------------------------------------------------------------------------- progress
class _Bar:
    def __init__(self, total, initial, enabled):
        self.bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="sweep", unit="cell", dynamic_ncols=True,
                            file=sys.stderr)
        except Exception:  # pragma: no cover - tqdm missing
            self.bar = None

    def update(self, n, note=None):
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------- sweep
@dataclass
class SweepInfo:
    """What a run did (for the CLI): cells and chunks in all, chunks computed now and reused from disk."""

    n_cells: int
    n_chunks: int
    n_groups: int
    computed: int
    reused: int
    wall_s: float
    out: str | None


def _resolve_spec(spec, overrides) -> SweepSpec:
    if spec is None:
        return SweepSpec.from_dict(overrides)
    if isinstance(spec, (str, os.PathLike)):
        spec = SweepSpec.from_yaml(spec)
    elif isinstance(spec, dict):
        spec = SweepSpec.from_dict(spec)
    elif not isinstance(spec, SweepSpec):
        raise LqsError("spec", type(spec).__name__, "must be a SweepSpec, a dict or a YAML file path")
    return spec.replace(**overrides) if overrides else spec


def _hosts(hosts):
    """(index, count) of this process among the hosts sharing the sweep; default from jax.distributed."""
    if hosts is None:
        import jax

        return jax.process_index(), jax.process_count()
    try:
        i, n = (int(x) for x in hosts)
    except (TypeError, ValueError):
        raise LqsError("hosts", hosts, "must be (index, count) with 0 ≤ index < count") from None
    if not (n >= 1 and 0 <= i < n):
        raise LqsError("hosts", hosts, "must be (index, count) with 0 ≤ index < count")
    return i, n


def run_sweep(spec=None, out=None, *, overwrite: bool = False, progress: bool = True, devices=None, hosts=None,
              **fields):
    """:func:`sweep`, also returning a :class:`SweepInfo`."""
    t0 = time.perf_counter()
    host_i, host_n = _hosts(hosts)
    spec = _resolve_spec(spec, fields)
    workloads, groups, chunks = _plan(spec)
    n_cells = spec.n_cells
    if sum(len(c.cells) for c in chunks) != n_cells:  # pragma: no cover - planning bug
        raise RuntimeError("sweep plan does not cover every cell exactly once")
    cdir = None
    if host_n > 1 and out is None:
        raise LqsError("out", None, "a sweep shared by several hosts needs an output directory on a shared file "
                                    "system")
    if out is not None:
        out = os.fspath(out)
        if host_n > 1 and host_i != 0:
            _wait_for_spec(out)
        cdir = _prepare_out(out, spec, overwrite and host_i == 0, n_cells, len(chunks))
    done = {c.id for c in chunks if cdir is not None and _chunk_done(cdir, c, spec.per_replica)}
    bar = _Bar(n_cells, sum(len(c.cells) for c in chunks if c.id in done), progress)
    mem, mem_r = {}, {}
    computed = 0
    try:
        for ordinal, ch in enumerate(chunks):
            if ch.id in done or ordinal % host_n != host_i:  # another host computes every host_n-th chunk
                continue
            df, reps = _run_chunk(spec, workloads[ch.group.workload], ch, devices)
            computed += 1
            if cdir is None:
                mem[ch.id], mem_r[ch.id] = df, reps
            else:
                if reps is not None:  # the summary file is written last: its presence means "chunk done"
                    _write_atomic(reps, os.path.join(cdir, ch.name + ".replicas.parquet"))
                _write_atomic(df, os.path.join(cdir, ch.name + ".parquet"))
            bar.update(len(ch.cells), ch.group.workload)
    finally:
        bar.close()

    if host_n > 1:
        missing = [c for c in chunks if not _chunk_done(cdir, c, spec.per_replica)]
        if missing:  # other hosts are still at work: the merge happens on the run that finds every chunk
            info = SweepInfo(n_cells=n_cells, n_chunks=len(chunks), n_groups=len(groups), computed=computed,
                             reused=len(done), wall_s=time.perf_counter() - t0, out=out)
            return None, info

    def gather(suffix, memo):
        if cdir is None:
            frames = [memo[c.id] for c in chunks]
        else:
            frames = [pd.read_parquet(os.path.join(cdir, c.name + suffix)) for c in chunks]
        return pd.concat(frames, ignore_index=True).sort_values(["cell"] + (["replica"] if suffix != ".parquet"
                                                                            else []), kind="stable")

    cells = gather(".parquet", mem).reset_index(drop=True)
    ids = cells["cell"].to_numpy()
    if len(ids) != n_cells or not np.array_equal(ids, np.arange(n_cells)):
        dup = int(len(ids) - len(np.unique(ids)))
        missing = int(n_cells - len(np.intersect1d(ids, np.arange(n_cells))))
        raise RuntimeError(f"sweep table is inconsistent: {dup} repeated and {missing} missing cells")
    reps = gather(".replicas.parquet", mem_r).reset_index(drop=True) if spec.per_replica else None
    if reps is not None and (len(reps) != n_cells * spec.replicas):
        raise RuntimeError("per-replica table is inconsistent with the cells")
    if out is not None:
        _write_atomic(cells, os.path.join(out, "cells.parquet"))
        _write_atomic(cells, os.path.join(out, "cells.csv"), fmt="csv")
        if reps is not None:
            _write_atomic(reps, os.path.join(out, "replicas.parquet"))
            _write_atomic(reps, os.path.join(out, "replicas.csv"), fmt="csv")
    info = SweepInfo(n_cells=n_cells, n_chunks=len(chunks), n_groups=len(groups), computed=computed,
                     reused=len(done), wall_s=time.perf_counter() - t0, out=out)
    return (reps if spec.per_replica else cells), info


def sweep(spec=None, out=None, *, overwrite: bool = False, progress: bool = True, devices=None, hosts=None,
          **fields) -> pd.DataFrame:
    """Run a sweep and return one tidy DataFrame: one row per cell (per cell × replica with ``per_replica``).

    ``spec``: a :class:`SweepSpec`, a dict of its fields, a YAML file path, or None (then the fields are keyword
    arguments: ``lqs.sweep(workload=["pd-1:1"], lam={"rho": [0.5, 0.9]}, M=131000, chunk=512, b=0.0372)``);
    keyword fields given with a spec override it. ``out``: a directory for the chunk files, ``spec.json`` and the
    final ``cells.parquet`` / ``cells.csv`` (and ``replicas.*``); a sweep re-run into the same directory skips the
    chunks already written and returns exactly the same table. A directory holding a different spec is refused
    (LqsError, param ``out``) unless ``overwrite=True``, which deletes the old sweep's files first. Without
    ``out`` nothing is written and nothing can be resumed. ``devices``: passed to :func:`lqs.simulate` (which
    shards each chunk's configuration × replica axis across them; default: all local devices); it does not change
    the numbers, so it is not part of the spec and a sweep may resume on another machine.

    Several hosts (``hosts=(index, count)``, default ``(jax.process_index(), jax.process_count())`` after
    ``jax.distributed.initialize()``) share one sweep through ``out`` on a shared file system: host i computes
    every count-th chunk starting at i; each host returns None until a run finds every chunk on disk, which
    merges and returns the full table (re-run ``lqs sweep`` on one host once all have finished).

    Columns: ``cell`` (0..n−1, in product order workload, chunk, policy, token_budget, batch, servers, routing,
    b, M, λ — λ fastest), ``chunk``, the axes (``workload``, ``batch``, ``servers``, ``routing``, ``lam_rps``,
    ``M_tokens``, ``chunk_tokens``, ``b_s``, ``policy``, ``token_budget`` (0 = none), ``rho_target`` with ρ),
    then :func:`lqs.simulate`'s summary columns (theory ``mu_rps``, ``mu_exact_rps``, ``mu_stable_rps`` beside
    ``throughput_rps``, ``p_unstable``, latency percentiles, ``reliable`` …) and ``cell_key``.
    """
    return run_sweep(spec, out, overwrite=overwrite, progress=progress, devices=devices, hosts=hosts, **fields)[0]


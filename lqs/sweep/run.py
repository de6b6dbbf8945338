"""Running a sweep: every part through :func:`lqs.simulate` (one :class:`lqs.Server` per part, its M, b̄ and λ
as the grid), shared between hosts through the output directory, with a progress bar."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._errors import LqsError
from .axes import _batch_model
from .io import part_done, prepare_out, wait_for_spec, write_atomic
from .plan import _Part, _part_key, _plan
from .spec import SweepSpec, merge_fields, read_yaml

_THEORY = ("mu_rps", "mu_exact_rps", "mu_stable_rps", "mu_exact_stable_rps", "delta", "rho")


def _simulate(workload, server, lam, mc, **kw):
    """lqs.simulate (a seam for the tests)."""
    from ..engine import simulate

    return simulate(workload, server, lam, mc, **kw)


def part_server(spec: SweepSpec, part: _Part):
    """The :class:`lqs.Server` of one part: the group's fields, the part's M and b̄ (a grid when several)."""
    g = part.group
    if g.batch == "constant":
        b, b_theory = part.bs, None
    else:  # one batch-time model per part: its mean (the closed form's b̄) is the part's one b value
        b, b_theory = _batch_model(g.batch, part.bs[0]), part.bs[0]
    srv = spec.server(M=part.Ms, prefill_chunk=g.prefill_chunk, b=b, policy=g.policy, token_budget=g.token_budget,
                      servers=g.servers, routing=g.routing)
    return srv.replace(b_theory=b_theory) if b_theory is not None else srv


def _run_part(spec: SweepSpec, wl, part: _Part, devices=None, verdict_cache: dict | None = None):
    """Simulate one part → (summary rows, per-trial rows or None), with the sweep's columns in front. The long-run
    verdicts' saturation runs draw from the sweep's seed and the configuration alone, so one configuration's λ* is
    the same in every part (and computed once per run with ``verdict_cache``)."""
    import jax

    from ..engine import Verdict

    g = part.group
    mc = spec.monte_carlo().replace(steps=g.steps)
    kw = dict(key=_part_key(spec.seed, part), progress=False,
              verdict=Verdict(key=jax.random.fold_in(jax.random.key(spec.seed), 0x5A7), cache=verdict_cache))
    if devices is not None:  # where it runs, not what it computes: not part of the spec
        kw["devices"] = devices
    if spec.arrivals(g.burstiness) is not None:
        kw["arrivals"] = spec.arrivals(g.burstiness)
    if g.pd_split is not None:  # the coupled network of the part's deployments (b̄, M; λ fastest)
        from ..engine.stations import simulate_disagg

        base = part_server(spec, part)
        deps = [spec.deployment(base.replace(M=m, b=b), g.pd_split, g.decode_M, g.decode_b)
                for b in part.bs for m in part.Ms]
        res = simulate_disagg(wl, deps, part.lams, mc, key=kw["key"], arrivals=kw.get("arrivals"),
                               verdict=True, cache=verdict_cache)
        res.summary["M_tokens"] = [m for _ in part.bs for m in part.Ms for _ in part.lams]
        res.summary["b_s"] = [b for b in part.bs for _ in part.Ms for _ in part.lams]
        res.summary["pd_split"] = g.pd_split
        res.summary["decode_M_tokens"] = [g.decode_M or m for _ in part.bs for m in part.Ms for _ in part.lams]
        res.summary["decode_b_s"] = [g.decode_b or b for b in part.bs for _ in part.Ms for _ in part.lams]
    else:
        res = _simulate(wl, part_server(spec, part), part.lams, mc, **kw)
    summ = res.summary.reset_index(drop=True)
    n = len(part.cells)
    if len(summ) != n:
        raise RuntimeError(f"{part.name}: simulate returned {len(summ)} rows for {n} cells")
    exp_lam = np.asarray([lam for _ in part.bs for _ in part.Ms for lam in part.lams], np.float64)
    exp_M = np.asarray([m for _ in part.bs for m in part.Ms for _ in part.lams])
    if not (np.allclose(summ["lam_rps"].to_numpy(np.float64), exp_lam, rtol=1e-6)
            and np.array_equal(summ["M_tokens"].to_numpy(), exp_M)):
        raise RuntimeError(f"{part.name}: simulate's grid order differs from the sweep's cell order")
    front = {"cell": np.asarray(part.cells, np.int64), "part": np.full(n, part.id, np.int64),
             "workload": [g.workload] * n, "batch": [g.batch] * n, "burstiness": np.full(n, g.burstiness)}
    if part.rhos is not None:
        front["rho_target"] = np.asarray([r for _ in part.bs for _ in part.Ms for r in part.rhos], np.float64)
    df = pd.concat([pd.DataFrame(front), summ.drop(columns=[c for c in summ.columns if c in front or c == "config"])],
                   axis=1)
    df["cell_key"] = part.keys
    per = None
    if spec.per_trial:
        r = res.trials.reset_index(drop=True)
        ci = r["config"].to_numpy()
        rf = {k: np.asarray(v)[ci] if not isinstance(v, list) else [v[i] for i in ci] for k, v in front.items()}
        theory = [c for c in _THEORY if c in summ.columns and c not in r.columns]
        per = pd.concat([pd.DataFrame(rf), r.drop(columns=[c for c in r.columns if c in rf or c == "config"]),
                         summ.loc[ci, theory].reset_index(drop=True)], axis=1)
        per["cell_key"] = [part.keys[i] for i in ci]
    return df, per


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


@dataclass
class SweepInfo:
    """What a run did (for the CLI): cells, parts and groups in all, parts computed now and reused from disk."""

    n_cells: int
    n_parts: int
    n_groups: int
    computed: int
    reused: int
    wall_s: float
    out: str | None
    host: tuple[int, int] = (0, 1)


def resolve_spec(spec, overrides: dict, server=None) -> SweepSpec:
    """A SweepSpec from a SweepSpec, a dict or a YAML path, with keyword ``overrides`` and a base ``server``."""
    if spec is None:
        return SweepSpec.from_dict(overrides, server)
    if isinstance(spec, SweepSpec):
        if server is not None:
            return SweepSpec.from_dict(spec, server)  # refused: a finished spec has every axis already
        return spec.replace(**overrides) if overrides else spec
    if isinstance(spec, (str, os.PathLike)):
        d = read_yaml(spec)
    elif isinstance(spec, dict):
        d = spec
    else:
        raise LqsError("spec", type(spec).__name__, "must be a SweepSpec, a dict or a YAML file path")
    return SweepSpec.from_dict(merge_fields(d, overrides), server)


def resolve_hosts(hosts) -> tuple[int, int]:
    """(index, count) of this process among the hosts sharing the sweep.

    ``None``: ``(jax.process_index(), jax.process_count())`` (after ``jax.distributed.initialize()``; (0, 1)
    otherwise); ``"slurm"``: the task of a Slurm job array (``SLURM_ARRAY_TASK_ID`` − ``SLURM_ARRAY_TASK_MIN``
    of ``SLURM_ARRAY_TASK_COUNT``, so ``--array=0-7`` and ``--array=1-8`` both work; no step or list); or an
    explicit ``(index, count)``."""
    if hosts is None:
        import jax

        return jax.process_index(), jax.process_count()
    if isinstance(hosts, str) and hosts.strip().lower() == "slurm":
        env = os.environ
        try:
            tid, tmin, cnt = (int(env[k]) for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN",
                                                    "SLURM_ARRAY_TASK_COUNT"))
        except (KeyError, ValueError):
            raise LqsError("hosts", hosts, "needs a Slurm job array (SLURM_ARRAY_TASK_ID, _MIN and _COUNT set; "
                                           "sbatch --array=0-N)") from None
        hosts = (tid - tmin, cnt)
    try:
        i, n = (int(x) for x in hosts)
    except (TypeError, ValueError):
        raise LqsError("hosts", hosts, "must be (index, count) with 0 ≤ index < count, 'slurm' or None") from None
    if not (n >= 1 and 0 <= i < n):
        raise LqsError("hosts", hosts, "must be (index, count) with 0 ≤ index < count (a Slurm array must be "
                                       "contiguous: --array=0-N, no step)")
    return i, n


def run_sweep(spec=None, out=None, *, server=None, overwrite: bool = False, progress: bool = True, devices=None,
              hosts=None, **fields):
    """:func:`sweep`, returning (table or None, :class:`SweepInfo`)."""
    t0 = time.perf_counter()
    host_i, host_n = resolve_hosts(hosts)
    spec = resolve_spec(spec, fields, server)
    workloads, groups, parts = _plan(spec)
    n_cells = spec.n_cells
    if sum(len(p.cells) for p in parts) != n_cells:  # pragma: no cover - planning bug
        raise RuntimeError("sweep plan does not cover every cell exactly once")
    pdir = None
    if host_n > 1 and out is None:
        raise LqsError("out", None, "a sweep shared by several hosts needs an output directory on a shared file "
                                    "system")
    if out is not None:
        out = os.fspath(out)
        if host_n > 1 and host_i != 0:  # host 0 lays out (or, with overwrite, replaces) the directory
            wait_for_spec(out, spec if overwrite else None)
        pdir = prepare_out(out, spec, overwrite and host_i == 0, n_cells, len(parts))
    done = {p.id for p in parts if pdir is not None and part_done(pdir, p, spec.per_trial)}
    bar = _Bar(n_cells, sum(len(p.cells) for p in parts if p.id in done), progress)
    mem, mem_t = {}, {}
    computed = 0
    verdicts: dict = {}  # saturation runs shared by the parts of this run
    try:
        for ordinal, part in enumerate(parts):
            if part.id in done or ordinal % host_n != host_i:  # host i computes every host_n-th part
                continue
            df, per = _run_part(spec, workloads[part.group.workload], part, devices, verdicts)
            computed += 1
            if pdir is None:
                mem[part.id], mem_t[part.id] = df, per
            else:
                if per is not None:  # the summary file is written last: its presence means "part done"
                    write_atomic(per, os.path.join(pdir, part.name + ".trials.parquet"))
                write_atomic(df, os.path.join(pdir, part.name + ".parquet"))
            bar.update(len(part.cells), part.group.workload)
    finally:
        bar.close()

    def info():
        return SweepInfo(n_cells=n_cells, n_parts=len(parts), n_groups=len(groups), computed=computed,
                         reused=len(done), wall_s=time.perf_counter() - t0, out=out, host=(host_i, host_n))

    if host_n > 1 and any(not part_done(pdir, p, spec.per_trial) for p in parts):
        return None, info()  # other hosts are still at work: the run that finds every part merges

    def gather(suffix, memo):
        if pdir is None:
            frames = [memo[p.id] for p in parts]
        else:
            frames = [pd.read_parquet(os.path.join(pdir, p.name + suffix)) for p in parts]
        by = ["cell"] + (["trial"] if suffix != ".parquet" else [])
        return pd.concat(frames, ignore_index=True).sort_values(by, kind="stable").reset_index(drop=True)

    cells = gather(".parquet", mem)
    ids = cells["cell"].to_numpy()
    if len(ids) != n_cells or not np.array_equal(ids, np.arange(n_cells)):
        dup = int(len(ids) - len(np.unique(ids)))
        missing = int(n_cells - len(np.intersect1d(ids, np.arange(n_cells))))
        raise RuntimeError(f"sweep table is inconsistent: {dup} repeated and {missing} missing cells")
    per = gather(".trials.parquet", mem_t) if spec.per_trial else None
    if per is not None and len(per) != n_cells * spec.trials:
        raise RuntimeError("per-trial table is inconsistent with the cells")
    if out is not None:
        write_atomic(cells, os.path.join(out, "cells.parquet"))
        write_atomic(cells, os.path.join(out, "cells.csv"), fmt="csv")
        if per is not None:
            write_atomic(per, os.path.join(out, "trials.parquet"))
            write_atomic(per, os.path.join(out, "trials.csv"), fmt="csv")
    return (per if spec.per_trial else cells), info()


def sweep(spec=None, out=None, *, server=None, overwrite: bool = False, progress: bool = True, devices=None,
          hosts=None, **fields) -> pd.DataFrame | None:
    """Run a sweep and return one tidy DataFrame: one row per cell (per cell × trial with ``per_trial``).

    ``spec``: a :class:`SweepSpec`, a dict of its fields, a YAML file path, or None (then the fields are keyword
    arguments: ``lqs.sweep(workload=["pd-1:1"], rho=[0.5, 0.9], M=131000, prefill_chunk=512, b=0.0372)``);
    keyword fields given with a spec override it. ``server``: a base :class:`lqs.Server` whose fields fill the
    server axes the spec leaves out (``lqs.sweep(server=srv, workload=["pd-1:1"], rho=[0.5, 0.9], M=[65536,
    131000])`` sweeps M around ``srv``). Each cell is one workload, one :class:`lqs.Server` and one λ; with
    ``rho`` its λ = ρ·μ, μ = servers·M/(b̄·E[g]) (docs/model.md).

    ``out``: a directory for the part files, ``spec.json`` and the final ``cells.parquet`` / ``cells.csv`` (and
    ``trials.*``); a sweep re-run into the same directory skips the parts already written and returns exactly the
    same table (each part's key derives from the seed and its cells). A directory holding a different spec is
    refused (LqsError, param ``out``) unless ``overwrite=True``, which deletes the old sweep's files first. Without
    ``out`` nothing is written and nothing can be resumed. ``devices``: passed to :func:`lqs.simulate`; it does not
    change the numbers, so it is not part of the spec and a sweep may resume on another machine.

    Several hosts share one sweep through ``out`` on a shared file system: ``hosts=(index, count)``, ``"slurm"``
    (a job array's task) or None (``jax.process_index()`` and ``jax.process_count()`` after
    ``jax.distributed.initialize()``). Host i computes every count-th part starting at i; a host returns None
    while parts of others are missing, and the run that finds every part merges and returns the full table (run
    the sweep once more on one host when all have finished to be sure to get it).

    Columns: ``cell`` (0..n−1, in product order workload, prefill_chunk, policy, token_budget, batch, servers,
    routing, b, M, λ — λ fastest), ``part``, ``workload``, ``batch``, ``rho_target`` (with ρ), then
    :func:`lqs.simulate`'s summary columns: the Server's fields (``lam_rps``, ``M_tokens``,
    ``prefill_chunk_tokens``, ``b_s``, ``batch_model``, ``policy``, ``token_budget`` (0 = none), ``servers``,
    ``routing``), the closed form (``mu_rps``, ``mu_exact_rps``, ``mu_stable_rps``, ``rho``) beside
    ``throughput_rps``, ``verdict``, ``lam_star_rps`` (and interval), ``p_backlog_grows``, latency percentiles, ``reliable`` …, and ``cell_key``; per trial also
    ``trial``.
    """
    return run_sweep(spec, out, server=server, overwrite=overwrite, progress=progress, devices=devices, hosts=hosts,
                     **fields)[0]

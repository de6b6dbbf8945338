"""Resumable parameter sweeps: ``lqs.sweep(spec, out=DIR)`` over any product of λ (or ρ), workload, M, ŝ, b̄ or
batch-time model, policy, token budget and cluster size, returned as one tidy table (one row per cell).

A *cell* is one point of the product. Cells that differ only in λ, M and b̄ (constant batch time) share one
compiled program: within a *group* (a combination of the other axes) they are one vmapped ``lqs.simulate`` call,
split into *chunks* of at most ``cells_per_chunk`` cells. Each chunk is written to ``DIR/chunks/`` as soon as it
finishes (atomically: a temporary name, then ``os.replace``), so a sweep that is killed resumes where it stopped:
chunks whose file exists are not recomputed, and every chunk draws its randomness from a key derived from the
sweep seed and its cells' ids, so a resumed sweep gives exactly the numbers of an uninterrupted one.

Output directory::

    DIR/spec.json                       the resolved spec (a different spec in the same DIR is refused)
    DIR/chunks/chunk-00000.parquet      summary rows of one chunk (+ chunk-00000.replicas.parquet)
    DIR/cells.parquet, DIR/cells.csv    every cell, sorted by cell id (written at the end)
    DIR/replicas.parquet, .csv          one row per cell × replica (with ``per_replica: true``)

Spec fields (YAML or a dict; every list may also be a single value)::

    workload: [pd-1:1, "trace:azure-conv", "pd_ratio:2", "pd_ratio:2:400"]  # preset | trace:NAME_OR_PATH |
                                                   #   pd_ratio:R[:TOTAL_HI] (s/o upper bounds in ratio R)
    lam: [2.5, 3.0]          # or {lo: 2, hi: 4, n: 5}, "2:4:5", or {rho: [0.5, 0.9]} (λ = ρ·G·μ_exact per cell)
    M: [131000]              # KV capacity, tokens
    chunk: [512]             # prefill chunk ŝ, tokens
    b: [0.0372]              # batch time b̄, seconds (the mean of a batch-time model; the theory's b̄)
    batch: [constant]        # constant | lognormal:CV | two-speed:RATIO:FRAC | affine:A0,A1,A2,A3
    policy: [fcfs]           # fcfs | recompute | reserve
    token_budget: [null]     # null = no budget, else an integer ≥ chunk
    servers: [1]             # servers per replica (a cluster; λ is the cluster's total rate)
    routing: [round_robin]   # round_robin | random | jsq | least_kv (only matters when servers > 1)
    replicas: 64
    steps: null              # null = auto (warm-up + max(16000 steps, 2000 completions)), per group
    warmup: 4000
    seed: 0
    per_replica: false
    cells_per_chunk: 64
    options: {}              # further lqs.simulate keyword arguments (K, compact_every, ...)
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from ._errors import LqsError, check_choice, check_float, check_int, parse_number

POLICIES = ("fcfs", "recompute", "reserve")
ROUTINGS = ("round_robin", "random", "jsq", "least_kv")
BATCH_KINDS = ("constant", "lognormal", "two-speed", "affine")
# simulate() arguments that the sweep sets itself (not allowed in `options`)
_OWN_ARGS = {"workload", "M", "chunk", "lam", "b", "policy", "replicas", "steps", "warmup", "key", "seed",
             "token_budget", "progress", "b_theory", "phases", "servers", "routing", "devices"}
SPEC_VERSION = 1


# ----------------------------------------------------------------------------------------------- parsing helpers
def _as_list(param, v, *, allow_empty=False):
    if isinstance(v, (list, tuple, np.ndarray)):
        out = list(v.tolist() if isinstance(v, np.ndarray) else v)
    else:
        out = [v]
    if not out and not allow_empty:
        raise LqsError(param, v, "must be a value or a non-empty list")
    return out


def _no_dups(param, vals):
    seen = set()
    for x in vals:
        k = json.dumps(x)
        if k in seen:
            raise LqsError(param, vals, "must not repeat a value", f"{x!r} appears twice")
        seen.add(k)
    return vals


def _ints(param, v, lo=1, hi=2**30):
    return _no_dups(param, [check_int(param, parse_number(param, x), lo, hi) for x in _as_list(param, v)])


def _floats(param, v, lo=0.0, lo_open=False):
    vals = [check_float(param, parse_number(param, x), lo, lo_open=lo_open) for x in _as_list(param, v)]
    return _no_dups(param, vals)


def _strs(param, v, choices=None):
    out = []
    for x in _as_list(param, v):
        if not isinstance(x, str) or not x.strip():
            raise LqsError(param, x, "must be a non-empty string" if choices is None
                           else "must be one of " + ", ".join(choices))
        x = x.strip()
        if choices is not None:
            check_choice(param, x, choices)
        out.append(x)
    return _no_dups(param, out)


def _lam_range(param, lo, hi, n):
    lo = check_float(param, parse_number(param, lo), 0.0)
    hi = check_float(param, parse_number(param, hi), lo)
    n = check_int(param, parse_number(param, n), 1, 100_000)
    return [float(x) for x in np.linspace(lo, hi, n)]


def _parse_lam(v):
    """lam → (λ list or None, ρ list or None)."""
    if isinstance(v, dict):
        keys = set(v)
        if keys == {"rho"}:
            return None, _floats("rho", v["rho"])
        if keys == {"lo", "hi", "n"}:
            return _no_dups("lam", _lam_range("lam", v["lo"], v["hi"], v["n"])), None
        raise LqsError("lam", v, "a mapping must be {lo, hi, n} (a range) or {rho: [..]} (λ = ρ·G·μ_exact)")
    if isinstance(v, str) and ":" in v:
        parts = v.split(":")
        if len(parts) != 3:
            raise LqsError("lam", v, "a range is LO:HI:N, e.g. 2.5:4:7")
        return _no_dups("lam", _lam_range("lam", *parts)), None
    return [float(x) for x in _floats("lam", v)], None


def _check_workload_name(w: str):
    """Validate the form of a workload entry (no file access); return it unchanged."""
    from ._workload import PRESETS

    if w.startswith("trace:"):
        if not w[6:].strip():
            raise LqsError("workload", w, "trace:NAME_OR_PATH needs a trace name or path after 'trace:'")
        return w
    if w.startswith("pd_ratio:"):
        parts = w.split(":")[1:]
        if len(parts) not in (1, 2):
            raise LqsError("workload", w, "pd_ratio:R or pd_ratio:R:TOTAL_HI, e.g. pd_ratio:2")
        check_float("workload", parse_number("workload", parts[0]), 0.0, lo_open=True)
        if len(parts) == 2:
            check_int("workload", parse_number("workload", parts[1]), 22, 2**30)
        return w
    names = list(PRESETS) + ["mix-2:1/1:2"]
    if w not in names:
        raise LqsError("workload", w, "must be a preset (" + ", ".join(names) + "), trace:NAME_OR_PATH or "
                                      "pd_ratio:R[:TOTAL_HI]")
    return w


def _load_workload(w: str):
    from ._workload import pd_ratio, preset

    if w.startswith("trace:"):
        from .traces import load_trace

        return load_trace(w[6:].strip()).workload()
    if w.startswith("pd_ratio:"):
        parts = w.split(":")[1:]
        r = float(parse_number("workload", parts[0]))
        return pd_ratio(r) if len(parts) == 1 else pd_ratio(r, total_hi=int(parse_number("workload", parts[1])))
    return preset(w)


def _check_batch_spec(spec: str) -> str:
    name, _, arg = spec.partition(":")
    if name not in BATCH_KINDS:
        hint = " (empirical batch times need a samples file: use lqs simulate --b-model empirical)" \
            if name == "empirical" else ""
        raise LqsError("batch", spec, "must be constant, lognormal:CV, two-speed:RATIO:FRAC or affine:A0,A1,A2,A3"
                       + hint)
    if name == "constant" and arg:
        raise LqsError("batch", spec, "constant takes no argument (b gives b̄)")
    _batch_model(spec, 1.0)  # validates the numbers
    return spec


def _batch_model(spec: str, b_s: float):
    """A BatchTime from a CLI-style model spec with mean (or theory) b̄ = b_s."""
    from ._cli_sim import _batch_model as _bm

    try:
        return _bm(spec, b_s, None, None)
    except LqsError as e:
        raise LqsError("batch", spec, e.allowed, getattr(e, "detail", None)) from None


# ----------------------------------------------------------------------------------------------- the spec
@dataclass
class SweepSpec:
    """What to sweep. Every axis is a list (a single value is taken as a one-element list); see the module
    docstring for the forms. Build from a dict (:meth:`from_dict`) or a YAML file (:meth:`from_yaml`).
    Everything is validated on construction (and workloads/batch models again, against M, when the sweep runs)."""

    workload: list = field(default=None)
    lam: list | None = None
    rho: list | None = None
    M: list = None
    chunk: list = None
    b: list = None
    batch: list = field(default_factory=lambda: ["constant"])
    policy: list = field(default_factory=lambda: ["fcfs"])
    token_budget: list = field(default_factory=lambda: [None])
    servers: list = field(default_factory=lambda: [1])
    routing: list = field(default_factory=lambda: ["round_robin"])
    replicas: int = 64
    steps: int | None = None
    warmup: int = 4000
    seed: int = 0
    per_replica: bool = False
    cells_per_chunk: int = 64
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        for req in ("workload", "M", "chunk", "b"):
            if getattr(self, req) is None:
                raise LqsError(req, None, "is required")
        self.workload = [_check_workload_name(w) for w in _strs("workload", self.workload)]
        # λ: a list, a range, or ρ
        lam, rho = self.lam, self.rho
        if isinstance(lam, dict) and set(lam) == {"rho"}:
            if rho is not None:
                raise LqsError("rho", rho, "give ρ once: either lam: {rho: [..]} or rho: [..]")
            lam, rho = None, lam["rho"]
        if (lam is None) == (rho is None):
            raise LqsError("lam", lam, "give exactly one of lam (rates, req/s) or rho (λ = ρ·G·μ_exact)",
                           "both were given" if lam is not None else "neither was given")
        if lam is not None:
            self.lam, self.rho = _parse_lam(lam)[0], None
        else:
            self.lam, self.rho = None, [float(x) for x in _floats("rho", rho)]
        self.M = _ints("M", self.M, 1, 2**30)
        self.chunk = _ints("chunk", self.chunk, 1, 2**20)
        self.b = [float(x) for x in _floats("b", self.b, 0.0, lo_open=True)]
        self.batch = [_check_batch_spec(x) for x in _strs("batch", self.batch)]
        self.policy = _strs("policy", self.policy, POLICIES)
        tb = []
        for x in _as_list("token_budget", self.token_budget):
            if x is None or (isinstance(x, str) and x.strip().lower() in ("null", "none", "")):
                tb.append(None)
            else:
                v = check_int("token_budget", parse_number("token_budget", x), 1, 2**30)
                for c in self.chunk:
                    if v < c:
                        raise LqsError("token_budget", v, f"must be ≥ every chunk size (chunk={c}); a budget below "
                                                          "ŝ would deadlock")
                tb.append(v)
        self.token_budget = _no_dups("token_budget", tb)
        self.servers = _ints("servers", self.servers, 1, 4096)
        self.routing = _strs("routing", self.routing, ROUTINGS)
        self.replicas = check_int("replicas", parse_number("replicas", self.replicas), 1, 2**24)
        self.warmup = check_int("warmup", parse_number("warmup", self.warmup), 0)
        if self.steps is not None and not (isinstance(self.steps, str) and self.steps.strip().lower() == "auto"):
            self.steps = check_int("steps", parse_number("steps", self.steps), 2, 2**31 - 2**20)
            if self.steps <= self.warmup:
                raise LqsError("steps", self.steps, f"must exceed warmup ({self.warmup})")
        else:
            self.steps = None
        self.seed = check_int("seed", parse_number("seed", self.seed), 0, 2**63 - 1)
        if not isinstance(self.per_replica, (bool, np.bool_)):
            raise LqsError("per_replica", self.per_replica, "must be true or false")
        self.per_replica = bool(self.per_replica)
        self.cells_per_chunk = check_int("cells_per_chunk", parse_number("cells_per_chunk", self.cells_per_chunk), 1,
                                         1_000_000)
        if self.options is None:
            self.options = {}
        if not isinstance(self.options, dict):
            raise LqsError("options", self.options, "must be a mapping of lqs.simulate keyword arguments")
        params = _simulate_params()
        for k, v in self.options.items():
            if k in _OWN_ARGS:
                raise LqsError("options", k, "is set by the sweep itself: use the spec field instead")
            if k not in params:
                raise LqsError("options", k, "is not an lqs.simulate argument")
            try:
                json.dumps(v)
            except TypeError:
                raise LqsError("options", {k: v}, "values must be plain numbers, strings, booleans or lists") from None
        self.options = dict(self.options)
        if any(g > 1 for g in self.servers) and "servers" not in params:
            raise LqsError("servers", self.servers, "this lqs.simulate has no cluster support (servers=1 only)")

    # -------------------------------------------------------------------------------------------- (de)serialise
    @classmethod
    def from_dict(cls, d) -> "SweepSpec":
        if isinstance(d, SweepSpec):
            return d
        if not isinstance(d, dict):
            raise LqsError("config", type(d).__name__, "must be a mapping of sweep fields")
        names = {f.name for f in fields(cls)}
        d = dict(d)
        d.pop("version", None)
        for k in d:
            if k not in names:
                raise LqsError(str(k), d[k], "is not a sweep field (fields: " + ", ".join(sorted(names)) + ")")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path) -> "SweepSpec":
        import yaml

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise LqsError("config", path, "must be an existing YAML file")
        try:
            with open(path, encoding="utf-8") as fh:
                d = yaml.safe_load(fh)
        except yaml.YAMLError as e:
            raise LqsError("config", path, "must be valid YAML", " ".join(str(e).split())) from None
        if d is None:
            raise LqsError("config", path, "must not be empty")
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["version"] = SPEC_VERSION
        return json.loads(json.dumps(d))

    def to_yaml(self, path=None) -> str:
        import yaml

        d = self.to_dict()
        d.pop("version")
        if d["lam"] is None:
            d.pop("lam")
        else:
            d.pop("rho")
        txt = yaml.safe_dump(d, sort_keys=False, allow_unicode=True)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(txt)
        return txt

    def replace(self, **changes) -> "SweepSpec":
        d = self.to_dict()
        d.pop("version")
        if "lam" in changes and changes["lam"] is not None:
            d["rho"] = None
        if "rho" in changes and changes["rho"] is not None:
            d["lam"] = None
        d.update(changes)
        return SweepSpec.from_dict(d)

    @property
    def n_cells(self) -> int:
        n_lam = len(self.lam) if self.lam is not None else len(self.rho)
        return math.prod(len(x) for x in (self.workload, self.chunk, self.policy, self.token_budget, self.batch,
                                          self.servers, self.routing, self.b, self.M)) * n_lam


def _simulate_params():
    from . import _engine

    return set(inspect.signature(_engine.simulate).parameters)


# ----------------------------------------------------------------------------------------------- the plan
@dataclass
class _Group:
    workload: str
    chunk: int
    policy: str
    token_budget: int | None
    batch: str
    servers: int
    routing: str
    steps: int = 0


@dataclass
class _Chunk:
    id: int
    group: _Group
    cells: list  # cell ids, in simulate's grid order (b, M, λ; λ fastest)
    keys: list  # cell keys
    lams: list
    Ms: list
    bs: list
    rhos: list | None

    @property
    def name(self) -> str:
        return f"chunk-{self.id:05d}"


def _blocks(n, cap):
    k = -(-n // cap)
    return [list(map(int, a)) for a in np.array_split(np.arange(n), k)]


def _fmt(x):
    return repr(float(x)) if isinstance(x, float) else str(x)


def _plan(spec: SweepSpec):
    """Load and check every workload and batch model, then list the chunks (ids, keys, λ/M/b̄ per chunk)."""
    from . import _engine
    from ._theory import capacity

    workloads = {}
    for w in spec.workload:
        wl = _load_workload(w)
        for m in spec.M:
            try:
                wl.validate(m)
            except LqsError as e:
                raise LqsError("workload", w, f"does not fit M={m}: {e}") from None
        workloads[w] = wl
    for bs in spec.batch:
        for b in spec.b:
            _batch_model(bs, b)
    C = spec.cells_per_chunk
    rho_mode = spec.rho is not None
    xs = spec.rho if rho_mode else spec.lam
    n_l, nM, nB = len(xs), len(spec.M), len(spec.b)
    chunks, groups, mu_cache = [], [], {}
    auto = {}
    for gi, (w, ch, pol, tb, bs, G, rt) in enumerate(itertools.product(
            spec.workload, spec.chunk, spec.policy, spec.token_budget, spec.batch, spec.servers, spec.routing)):
        if spec.steps is None:
            if (w, ch) not in auto:
                auto[(w, ch)] = _engine.auto_steps(workloads[w], spec.M, ch, min(spec.b), spec.warmup, min(spec.b))
            steps = auto[(w, ch)]
        else:
            steps = spec.steps
        g = _Group(w, ch, pol, tb, bs, G, rt, steps)
        groups.append(g)
        base = gi * nB * nM * n_l  # cell ids: product order, λ fastest
        gkey = f"workload={w}|chunk={ch}|policy={pol}|token_budget={tb}|batch={bs}|servers={G}|routing={rt}"
        lblocks = _blocks(n_l, C)
        lb = max(map(len, lblocks))
        # with ρ, λ depends on (M, b̄): one (M, b̄) per chunk; a non-constant batch model is one model per call
        mblocks = [[i] for i in range(nM)] if rho_mode else _blocks(nM, max(1, C // lb))
        mb = max(map(len, mblocks))
        bblocks = ([[i] for i in range(nB)] if rho_mode or bs != "constant"
                   else _blocks(nB, max(1, C // (lb * mb))))
        for bblk, mblk, lblk in itertools.product(bblocks, mblocks, lblocks):
            ids, keys = [], []
            for bi, mi, li in itertools.product(bblk, mblk, lblk):
                ids.append(base + (bi * nM + mi) * n_l + li)
                xv = f"rho={_fmt(xs[li])}" if rho_mode else f"lam={_fmt(xs[li])}"
                keys.append(f"{gkey}|b={_fmt(spec.b[bi])}|M={spec.M[mi]}|{xv}")
            Ms = [spec.M[i] for i in mblk]
            bvals = [spec.b[i] for i in bblk]
            rhos = None
            if rho_mode:
                ck = (w, ch, Ms[0], bvals[0])
                if ck not in mu_cache:
                    mu_cache[ck] = capacity(workloads[w], Ms[0], ch, bvals[0]).mu_exact_rps
                rhos = [xs[i] for i in lblk]
                lams = [r * G * mu_cache[ck] for r in rhos]
            else:
                lams = [xs[i] for i in lblk]
            chunks.append(_Chunk(len(chunks), g, ids, keys, lams, Ms, bvals, rhos))
    return workloads, groups, chunks


def _chunk_key(seed: int, ch: _Chunk):
    """The chunk's PRNG key: the sweep seed folded with a stable 62-bit hash of its cells' keys."""
    import jax

    h = hashlib.blake2b("\n".join(ch.keys).encode("utf-8"), digest_size=8).digest()
    a = int.from_bytes(h[:4], "little") & 0x7FFFFFFF
    b = int.from_bytes(h[4:], "little") & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), a), b)


def _simulate(workload, **kw):
    """lqs.simulate (a seam for the tests)."""
    from . import _engine

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
    from . import __version__

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


def _wait_for_spec(out, timeout_s: float = 600.0):
    """Hosts other than 0 wait until host 0 has laid out the directory (spec.json)."""
    t_end = time.time() + timeout_s
    while not os.path.exists(os.path.join(out, "spec.json")):
        if time.time() > t_end:
            raise LqsError("out", out, "host 0 has not written spec.json there (shared file system?)")
        time.sleep(1.0)


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


def load_sweep(out, replicas: bool = False) -> pd.DataFrame:
    """The finished table of a sweep directory (``cells.parquet``, or ``replicas.parquet``)."""
    p = os.path.join(os.fspath(out), "replicas.parquet" if replicas else "cells.parquet")
    if not os.path.exists(p):
        raise LqsError("out", os.fspath(out), "holds no finished sweep (" + os.path.basename(p) + " is missing)")
    return pd.read_parquet(p)

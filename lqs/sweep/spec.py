"""The sweep spec (:class:`SweepSpec`): resumable parameter sweeps: ``lqs.sweep(spec, out=DIR)`` over any product of λ (or ρ), workload, M, ŝ, b̄ or
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

import inspect
import json
import math
import os
from dataclasses import dataclass, field, fields

import numpy as np

from .._errors import LqsError, check_int, parse_number
from .axes import (_OWN_ARGS, POLICIES, ROUTINGS, SPEC_VERSION, _as_list, _check_batch_spec, _check_workload_name,
                   _floats, _ints, _no_dups, _parse_lam, _strs)


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
    from .. import _engine

    return set(inspect.signature(_engine.simulate).parameters)


"""The sweep spec: what ``lqs.sweep(spec, out=DIR)`` runs, one product of axes named after the fields of
:class:`lqs.Server` (plus the workload and λ or ρ) and the Monte Carlo settings shared by every cell.

A *cell* is one point of the product: one workload, one :class:`lqs.Server` and one λ. ρ is the utilisation of
docs/model.md, ρ = λ/μ with μ = servers·M/(b̄·E[g]) the closed-form rate of the whole deployment; a spec in ρ gives
each cell λ = ρ·μ of that cell.

Spec fields (YAML or a dict; every axis may be a list or a single value)::

    workload: [pd-1:1, "trace:azure-conv", "pd_ratio:2", "pd_ratio:2:400"]  # preset | trace:NAME_OR_PATH |
                                                   #   pd_ratio:R[:TOTAL_HI] (s/o upper bounds in ratio R)
    lam: [2.5, 3.0]          # req/s; or {lo: 2, hi: 4, n: 5}, "2:4:5", or {rho: [0.5, 0.9]} (λ = ρ·μ per cell)
    rho: [0.5, 0.9]          # instead of lam: utilisations ρ = λ/μ
    M: [131000]              # KV-cache capacity, tokens                          (Server.M)
    prefill_chunk: [512]     # ŝ, tokens (key ``chunk`` accepted as an alias)      (Server.prefill_chunk)
    b: [0.0372]              # b̄, seconds (the mean of a batch-time model; the closed form's b̄)    (Server.b)
    batch: [constant]        # constant | lognormal:CV | two-speed:RATIO:FRAC | affine:A0,A1,A2,A3
    policy: [swap]           # swap | recompute | reserve (fcfs = swap)           (Server.policy)
    token_budget: [null]     # null = no budget, else tokens per step ≥ prefill_chunk
    servers: [1]             # serving instances behind one router; λ is their total rate
    routing: [round_robin]   # round_robin | random | jsq | least_kv (matters when servers > 1)
    pd_split: [null]         # null = colocated servers; "N_P:N_D" = a disaggregated deployment (prefill pool of
                             #   N_P servers with the server axes above, decode pool of N_D): the coupled network
    decode_M: [null]         # the decode pool's M (null = M); an axis
    decode_b: [null]         # the decode pool's b̄ (null = b); an axis
    transfer_latency: 0.0    # KV transfer τ0 (s), and its rate in tokens/s (null = latency only), every cell
    transfer_tokens_per_s: null
    burstiness: [1.0]        # gamma arrivals with shape k (CV 1/√k; 1 = Poisson); an axis
    arrival_times: null      # or a trace / open-loop benchmark file: its arrival pattern, time-scaled to each λ
    trials: 64               # Monte Carlo repetitions per cell                   (MonteCarlo.trials)
    steps: null              # null = auto (warm-up + max(16000 steps, 2000 completions)), per group
    warmup: 4000
    seed: 0
    per_trial: false         # also keep one row per cell × trial (trials.parquet)
    cells_per_part: 64       # cells per part file (parts/part-NNNNN.parquet)
    options: {}              # further MonteCarlo fields (K, compact_every, max_points, path, ...)

Renamed keys: ``replicas`` → ``trials``, ``per_replica`` → ``per_trial``, ``cells_per_chunk`` →
``cells_per_part`` (each a clear error); ``chunk`` → ``prefill_chunk`` (still accepted).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields

import numpy as np

from .._batch import BatchTime
from .._errors import LqsError, check_float, check_int, parse_number
from .._server import ROUTINGS, MonteCarlo, Server, normalise_policy
from .axes import (OPTIONS, OWN_MC, SPEC_VERSION, _as_list, _check_batch_spec, _check_workload_name,
                   _floats, _ints, _no_dups, _parse_lam, _strs)

RENAMED = {"replicas": ("trials", "Monte Carlo repetitions; serving instances are servers"),
           "per_replica": ("per_trial", "one row per cell × trial"),
           "cells_per_chunk": ("cells_per_part", "sweep files are parts/part-NNNNN.parquet")}
ALIASES = {"chunk": "prefill_chunk"}
SERVER_AXES = ("M", "prefill_chunk", "b", "policy", "token_budget", "servers", "routing")


# ----------------------------------------------------------------------------------------------- the spec
@dataclass
class SweepSpec:
    """What to sweep (see the module docstring for every field and its forms). Every axis is a list (a single
    value is taken as a one-element list). Build from a dict (:meth:`from_dict`, which also takes a base
    :class:`lqs.Server` for the axes the dict leaves out) or a YAML file (:meth:`from_yaml`). Everything is
    validated on construction (workloads and batch models again, against M, when the sweep runs)."""

    workload: list = field(default=None)
    lam: list | None = None
    rho: list | None = None
    M: list = None
    prefill_chunk: list = None
    b: list = None
    batch: list = field(default_factory=lambda: ["constant"])
    policy: list = field(default_factory=lambda: ["swap"])
    token_budget: list = field(default_factory=lambda: [None])
    servers: list = field(default_factory=lambda: [1])
    routing: list = field(default_factory=lambda: ["round_robin"])
    pd_split: list = field(default_factory=lambda: [None])
    decode_M: list = field(default_factory=lambda: [None])
    decode_b: list = field(default_factory=lambda: [None])
    transfer_latency: float = 0.0
    transfer_tokens_per_s: float | None = None
    burstiness: list = field(default_factory=lambda: [1.0])
    arrival_times: str | None = None
    trials: int = 64
    steps: int | None = None
    warmup: int = 4000
    seed: int = 0
    per_trial: bool = False
    cells_per_part: int = 64
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        for req in ("workload", "M", "prefill_chunk", "b"):
            if getattr(self, req) is None:
                raise LqsError(req, None, "is required")
        self.workload = [_check_workload_name(w) for w in _strs("workload", self.workload)]
        self._check_rate()
        self.M = _ints("M", self.M, 1, 2**30)
        self.prefill_chunk = _ints("prefill_chunk", self.prefill_chunk, 1, 2**20)
        self.b = [float(x) for x in _floats("b", self.b, 0.0, lo_open=True)]
        self.batch = [_check_batch_spec(x) for x in _strs("batch", self.batch)]
        self.policy = _no_dups("policy", [normalise_policy(x) for x in _as_list("policy", self.policy)])
        tb = []
        for x in _as_list("token_budget", self.token_budget):
            if x is None or (isinstance(x, str) and x.strip().lower() in ("null", "none", "")):
                tb.append(None)
            else:
                v = check_int("token_budget", parse_number("token_budget", x), 1, 2**30)
                for c in self.prefill_chunk:
                    if v < c:
                        raise LqsError("token_budget", v, f"must be ≥ every prefill_chunk ({c}): a smaller budget "
                                                          "can never fit a prefill step and would deadlock")
                tb.append(v)
        self.token_budget = _no_dups("token_budget", tb)
        self.servers = _ints("servers", self.servers, 1, 4096)
        self.routing = _strs("routing", self.routing, ROUTINGS)
        self._check_disagg()
        self.burstiness = [check_float("burstiness", k, 0.0, 1e6, lo_open=True)
                           for k in _floats("burstiness", self.burstiness, 0.0, lo_open=True)]
        if self.arrival_times is not None:
            if self.burstiness != [1.0]:
                raise LqsError("arrival_times", self.arrival_times, "give burstiness or arrival_times, not both")
            self.arrival_times = os.fspath(self.arrival_times)
            self.arrivals()  # read and checked now, before anything runs
        if not isinstance(self.per_trial, (bool, np.bool_)):
            raise LqsError("per_trial", self.per_trial, "must be true or false")
        self.per_trial = bool(self.per_trial)
        self.cells_per_part = check_int("cells_per_part", parse_number("cells_per_part", self.cells_per_part), 1,
                                        1_000_000)
        if self.options is None:
            self.options = {}
        if not isinstance(self.options, dict):
            raise LqsError("options", self.options, "must be a mapping of MonteCarlo fields (" + ", ".join(OPTIONS)
                           + ")")
        for k, v in self.options.items():
            if k in OWN_MC:
                raise LqsError("options", k, "is a spec field of its own: set it there")
            if k not in OPTIONS:
                raise LqsError("options", k, "is not a MonteCarlo field (" + ", ".join(OPTIONS) + ")")
            try:
                json.dumps(v)
            except TypeError:
                raise LqsError("options", {k: v}, "values must be plain numbers, strings, booleans or lists") from None
        self.options = dict(self.options)
        mc = self.monte_carlo()  # validates trials, steps, warmup, seed and the options
        self.trials, self.steps, self.warmup, self.seed = mc.trials, mc.steps, mc.warmup, mc.seed

    def _check_disagg(self):
        """pd_split ("N_P:N_D" or null), the decode pool's M and b̄ axes and the transfer."""
        def opt(name, vals, parse):
            out = []
            for x in _as_list(name, vals):
                none = x is None or (isinstance(x, str) and x.strip().lower() in ("null", "none", ""))
                out.append(None if none else parse(x))
            return _no_dups(name, out)

        def split(x):
            try:
                p, d = (int(v) for v in str(x).strip().split(":"))
            except ValueError:
                raise LqsError("pd_split", x, "must read N_P:N_D (e.g. 1:3) or null") from None
            if p < 1 or d < 1:
                raise LqsError("pd_split", x, "each pool needs at least one server (N_P, N_D ≥ 1)")
            return f"{p}:{d}"

        self.pd_split = opt("pd_split", self.pd_split, split)
        self.decode_M = opt("decode_M", self.decode_M,
                            lambda x: check_int("decode_M", parse_number("decode_M", x), 1, 2**30))
        self.decode_b = opt("decode_b", self.decode_b,
                            lambda x: check_float("decode_b", parse_number("decode_b", x), 0.0, lo_open=True))
        self.transfer_latency = check_float("transfer_latency", parse_number("transfer_latency",
                                                                             self.transfer_latency), 0.0)
        if self.transfer_tokens_per_s is not None:
            self.transfer_tokens_per_s = check_float("transfer_tokens_per_s", parse_number(
                "transfer_tokens_per_s", self.transfer_tokens_per_s), 0.0, lo_open=True)
        disagg = [x for x in self.pd_split if x is not None]
        per_pool = [x for x in self.decode_M + self.decode_b if x is not None]
        if per_pool and not disagg:
            raise LqsError("decode_M", self.decode_M if any(self.decode_M) else self.decode_b,
                           "the decode pool's axes need a pd_split (N_P:N_D)")
        if disagg:
            if any(g > 1 for g in self.servers):
                raise LqsError("servers", self.servers, "with pd_split the pools are the servers: keep servers = 1")
            if any(b != "constant" for b in self.batch):
                raise LqsError("batch", self.batch, "pd_split cells take a constant b̄ per pool")

    def deployment(self, server, pd_split, decode_M, decode_b):
        """The :class:`lqs.Disaggregated` of one pd_split cell: ``server`` as the prefill pool, the decode pool
        the same with ``decode_M`` / ``decode_b`` where given."""
        from .._disagg import Disaggregated, Transfer

        p, d = (int(v) for v in pd_split.split(":"))
        dec = server.replace(**{k: v for k, v in (("M", decode_M), ("b", decode_b)) if v is not None})
        tr = Transfer(self.transfer_latency, math.inf if self.transfer_tokens_per_s is None
                      else self.transfer_tokens_per_s)
        return Disaggregated(server, dec, p, d, tr)

    def _check_rate(self):
        """λ: a list, a range, or ρ (exactly one of them)."""
        lam, rho = self.lam, self.rho
        if isinstance(lam, dict) and set(lam) == {"rho"}:
            if rho is not None:
                raise LqsError("rho", rho, "give ρ once: either lam: {rho: [..]} or rho: [..]")
            lam, rho = None, lam["rho"]
        if (lam is None) == (rho is None):
            raise LqsError("lam", lam, "give exactly one of lam (rates, req/s) or rho (utilisations, λ = ρ·μ)",
                           "both were given" if lam is not None else "neither was given")
        if lam is not None:
            self.lam, self.rho = _parse_lam(lam)[0], None
        else:
            self.lam, self.rho = None, [float(x) for x in _floats("rho", rho)]

    # -------------------------------------------------------------------------------------------- views
    def monte_carlo(self) -> MonteCarlo:
        """The :class:`lqs.MonteCarlo` every cell runs with."""
        return MonteCarlo(trials=self.trials, steps=self.steps, warmup=self.warmup, seed=self.seed, **self.options)

    def server(self, M, prefill_chunk, b, policy, token_budget, servers, routing) -> Server:
        """The :class:`lqs.Server` of one combination of the server axes (``b``: a b̄ or a batch-time model)."""
        return Server(M=M, prefill_chunk=prefill_chunk, b=b, policy=policy, token_budget=token_budget,
                      servers=servers, routing=routing)

    @property
    def n_cells(self) -> int:
        n_lam = len(self.lam) if self.lam is not None else len(self.rho)
        n_colo = int(None in self.pd_split)
        n_pd = (len(self.pd_split) - n_colo) * len(self.decode_M) * len(self.decode_b)
        return math.prod(len(x) for x in (self.workload, self.prefill_chunk, self.policy, self.token_budget,
                                          self.batch, self.servers, self.routing, self.b, self.M,
                                          self.burstiness)) * n_lam \
            * (n_colo + n_pd)

    # -------------------------------------------------------------------------------------------- (de)serialise
    @classmethod
    def from_dict(cls, d, server: Server | None = None) -> "SweepSpec":
        """A spec from a mapping of its fields. ``server``: a base :class:`lqs.Server` whose fields fill the
        server axes (M, prefill_chunk, b, policy, token_budget, servers, routing) that ``d`` leaves out."""
        if isinstance(d, SweepSpec):
            if server is not None:
                raise LqsError("server", server, "combine server= with a dict, a YAML file or keyword fields, not "
                                                 "with a finished SweepSpec")
            return d
        d = _canonical(d)
        names = {f.name for f in fields(cls)}
        for k in d:
            if k not in names:
                raise LqsError(str(k), d[k], "is not a sweep field (fields: " + ", ".join(sorted(names)) + ")")
        if server is not None:
            d = _fill_from_server(d, server)
        return cls(**d)

    @classmethod
    def from_yaml(cls, path, server: Server | None = None) -> "SweepSpec":
        return cls.from_dict(read_yaml(path), server)

    def arrivals(self, burstiness: float = 1.0):
        """The arrival process of the cells of one ``burstiness`` value: None (Poisson), gamma with that shape,
        or the pattern of the ``arrival_times`` file (read once)."""
        from .._arrivals import Arrivals

        if self.arrival_times is not None:
            cached = getattr(self, "_arrivals_cache", None)
            if cached is None:
                from ..traces import load_trace

                tr = load_trace(self.arrival_times)
                if tr.arrival_s is None:
                    raise LqsError("arrival_times", self.arrival_times, "has no arrival times (a timestamp column, "
                                   "or a benchmark result's start_times)")
                cached = Arrivals("replayed", instants_s=tr.arrival_s)
                cached.check_engine()
                object.__setattr__(self, "_arrivals_cache", cached)
            return cached
        return None if burstiness == 1.0 else Arrivals("gamma", burstiness=burstiness)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["version"] = SPEC_VERSION
        return json.loads(json.dumps(d))

    def to_yaml(self, path=None) -> str:
        import yaml

        d = self.to_dict()
        d.pop("version")
        d.pop("rho" if d["lam"] is not None else "lam")
        txt = yaml.safe_dump(d, sort_keys=False, allow_unicode=True)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(txt)
        return txt

    def replace(self, **changes) -> "SweepSpec":
        """A validated copy with some fields changed (the aliases and renamed keys of :meth:`from_dict` apply)."""
        d = self.to_dict()
        d.pop("version")
        return SweepSpec.from_dict(merge_fields(d, changes))


def read_yaml(path) -> dict:
    """The mapping in a YAML sweep config (LqsError ``config`` when missing, unreadable or empty)."""
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
    return d


def _canonical(d) -> dict:
    """``d`` with aliases under their field names; renamed keys are an LqsError naming the new name."""
    if not isinstance(d, dict):
        raise LqsError("config", type(d).__name__, "must be a mapping of sweep fields")
    d = dict(d)
    d.pop("version", None)
    for k in d:
        if k in RENAMED:
            new, why = RENAMED[k]
            raise LqsError(k, d[k], f"was renamed {new} ({why})")
    for old, new in ALIASES.items():
        if old in d:
            if d.get(new) is not None:
                raise LqsError(old, d[old], f"is an alias of {new}: give one of them")
            d[new] = d.pop(old)
    return d


def merge_fields(d: dict, changes: dict) -> dict:
    """Spec fields ``d`` with ``changes`` applied (a new λ replaces a ρ and the other way round)."""
    d, changes = _canonical(d), _canonical(changes)
    if changes.get("lam") is not None:
        d["rho"] = None
    if changes.get("rho") is not None:
        d["lam"] = None
    d.update(changes)
    return d


def _fill_from_server(d: dict, server) -> dict:
    if not isinstance(server, Server):
        raise LqsError("server", type(server).__name__, "must be an lqs.Server (the base of the sweep's axes)")
    d = dict(d)
    for name in SERVER_AXES:
        if d.get(name) is not None or (name == "token_budget" and name in d):
            continue
        v = getattr(server, name)
        if name == "b" and isinstance(v, BatchTime):
            raise LqsError("server", v.kind, "a sweep takes batch-time models as text forms: give b (b̄ values) and "
                                             "batch (constant, lognormal:CV, two-speed:RATIO:FRAC, affine:...)")
        d[name] = list(v) if isinstance(v, tuple) else v
    return d

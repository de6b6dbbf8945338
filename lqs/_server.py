"""The two values every run is built from: what is served (:class:`Server`) and how it is simulated
(:class:`MonteCarlo`).

A :class:`Server` is the serving deployment of docs/model.md: KV-cache capacity M, prefill chunk ŝ, the batch time
(a constant b̄ or a model), the scheduling policy, an optional token budget and, for a cluster, the number of serving
instances and the router. Like gymnax's ``EnvParams`` it is one immutable value passed to :func:`lqs.capacity`,
:func:`lqs.simulate`, :func:`lqs.critical`, :func:`lqs.sweep` and the studies, printed in every result's
configuration, and swept field by field (``server.replace(M=...)``; ``M`` and ``b`` may be sequences: a grid).

:class:`MonteCarlo` holds the simulation settings that do not change the model: trials (independent Monte Carlo
repetitions), horizon, warm-up, seed, the engine's buffer sizes and the step-loop path.

Both are validated on construction: every bad field is an :class:`lqs.LqsError` naming it, before anything compiles.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import InitVar, dataclass
from typing import Any

import numpy as np

from ._batch import AffineBatch, BatchTime, ConstantBatch
from ._errors import LqsError, check_choice, check_float, check_int
from .kernels.state import ROUTINGS  # one list for the validation and the engine's rule index

POLICIES = ("swap", "recompute", "reserve")
POLICY_ALIASES = {"fcfs": "swap"}  # the name used before 0.2: all three policies admit first-come first-served
_INT_MAX = 2**30
MIN_K = 8  # fewest request slots per server the engine runs with
PATHS = ("auto", "xla", "fused")
#: MonteCarlo fields renamed in 0.3 (the old names still work for one release, with a DeprecationWarning)
MC_RENAMED = {"engine": "path", "fused_rb": "fused_trials"}


def normalise_policy(policy, param: str = "policy") -> str:
    """``swap``, ``recompute`` or ``reserve`` (``fcfs`` is accepted as the old name of ``swap``)."""
    if isinstance(policy, str):
        p = policy.strip().lower()
        p = POLICY_ALIASES.get(p, p)
        if p in POLICIES:
            return p
    raise LqsError(param, policy, "must be one of swap, recompute, reserve (fcfs is an alias of swap)")


def _axis(param: str, value, check) -> tuple | Any:
    """A scalar stays a scalar; a list/tuple/array becomes a non-empty tuple of checked scalars without repeats."""
    if isinstance(value, (list, tuple, np.ndarray)):
        vals = tuple(check(param, x) for x in np.asarray(value, dtype=object).ravel())
        if not vals:
            raise LqsError(param, list(value), "must not be empty")
        if len(set(vals)) != len(vals):
            raise LqsError(param, list(vals), "must not repeat a value")
        return vals if len(vals) > 1 else vals[0]
    return check(param, value)


def _check_M(p, x):
    return check_int(p, x, 1, _INT_MAX)


def _check_b(p, x):
    return check_float(p, x, 0.0, lo_open=True)


@dataclass(frozen=True)
class Server:
    """A serving deployment (docs/model.md, "Inputs" and "Clusters").

    M
        KV-cache capacity in tokens (an int, or a sequence of ints: a grid axis).
    prefill_chunk
        ŝ, the prompt tokens a request prefills per step (vLLM's chunked-prefill size), tokens.
    b
        The batch time: a constant b̄ in seconds (a float, or a sequence: a grid axis) or a
        :class:`lqs.BatchTime` model (i.i.d. or affine).
    policy
        What happens to a started request that no longer fits: ``swap`` (swapped out, resumes where it was),
        ``recompute`` (its KV cache is dropped and its work redone, vLLM's preemption) or ``reserve`` (admission
        reserves the request's peak memory, so nothing is ever preempted). ``fcfs`` is accepted for ``swap``.
    token_budget
        At most this many tokens processed per step (vLLM ``max_num_batched_tokens``); None: no budget. Must be
        ≥ prefill_chunk (a smaller budget would deadlock).
    servers
        Identical serving instances behind one router, stepping together (1: a single server).
    routing
        How the router sends each arrival: ``round_robin``, ``random``, ``jsq`` (fewest requests in system) or
        ``least_kv`` (least KV memory in use).
    b_theory
        The b̄ used by the closed form when ``b`` is an affine model (whose mean depends on the load); default:
        the mean of a constant or i.i.d. model.
    max_running
        At most this many requests scheduled per step (vLLM ``max_num_seqs``, SGLang ``max_running_requests``);
        None: no cap.
    block_size
        KV memory is held in whole blocks of this many tokens (vLLM ``block_size``, SGLang ``page_size``); 1: tokens.
    """

    M: Any
    prefill_chunk: int
    b: Any
    policy: str = "swap"
    token_budget: int | None = None
    servers: int = 1
    routing: str = "round_robin"
    b_theory: float | None = None
    max_running: int | None = None
    block_size: int = 1

    def __post_init__(self):
        s = object.__setattr__
        s(self, "M", _axis("M", self.M, _check_M))
        s(self, "prefill_chunk", check_int("prefill_chunk", self.prefill_chunk,
                                           1, 2**20))
        if isinstance(self.b, BatchTime):
            pass
        elif self.b is None:
            raise LqsError("b", None, "is required: a batch time b̄ in seconds (> 0) or an lqs.BatchTime model")
        else:
            s(self, "b", _axis("b", self.b, _check_b))
        s(self, "policy", normalise_policy(self.policy))
        if self.token_budget is not None:
            tb = check_int("token_budget", self.token_budget, 1, _INT_MAX)
            if tb < self.prefill_chunk:
                raise LqsError("token_budget", tb, f"must be ≥ prefill_chunk ({self.prefill_chunk}): a smaller "
                                                   "budget can never fit a prefill step and would deadlock")
            s(self, "token_budget", tb)
        s(self, "servers", check_int("servers", self.servers, 1, 4096))
        s(self, "routing", check_choice("routing", self.routing, ROUTINGS))
        if self.b_theory is not None:
            s(self, "b_theory", check_float("b_theory", self.b_theory, 0.0, lo_open=True))
        if self.max_running is not None:
            s(self, "max_running", check_int("max_running", self.max_running, 1, _INT_MAX))
        s(self, "block_size", check_int("block_size", self.block_size, 1, 2**16))

    # ------------------------------------------------------------------------------------------------ views
    def replace(self, **changes) -> "Server":
        """A validated copy with some fields changed (``server.replace(M=65536, policy="recompute")``)."""
        bad = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if bad:
            raise LqsError(bad[0], changes[bad[0]], "is not a Server field (M, prefill_chunk, b, policy, "
                                                    "token_budget, servers, routing, b_theory, max_running, "
                                                    "block_size)")
        return dataclasses.replace(self, **changes)

    @property
    def Ms(self) -> tuple[int, ...]:
        return self.M if isinstance(self.M, tuple) else (self.M,)

    @property
    def bs(self) -> tuple:
        """The batch-time grid axis: a tuple of BatchTime models (one per b̄ value, or the one model)."""
        if isinstance(self.b, BatchTime):
            return (self.b,)
        return tuple(ConstantBatch(x) for x in (self.b if isinstance(self.b, tuple) else (self.b,)))

    @property
    def scalar(self) -> bool:
        """True when no field is a grid axis (one configuration)."""
        return not isinstance(self.M, tuple) and not isinstance(self.b, tuple)

    @property
    def b_mean_s(self) -> float:
        """The b̄ of the closed form: ``b_theory`` if set, else the constant b̄ or the i.i.d. model's mean."""
        if self.b_theory is not None:
            return self.b_theory
        if isinstance(self.b, tuple):
            raise LqsError("b", list(self.b), "is a grid: take one value (server.replace(b=...)) for the closed form")
        if isinstance(self.b, AffineBatch):
            raise LqsError("b_theory", None, "an affine batch-time model needs b_theory (the b̄ the closed form "
                                             "uses): Server(..., b_theory=...)")
        if isinstance(self.b, BatchTime):
            return float(self.b.mean_s)
        return float(self.b)

    def require_scalar(self, what: str) -> "Server":
        if isinstance(self.M, tuple):
            raise LqsError("M", list(self.M), f"{what} takes one configuration, not a grid of M")
        if isinstance(self.b, tuple):
            raise LqsError("b", list(self.b), f"{what} takes one configuration, not a grid of b")
        return self

    def describe(self) -> dict:
        """A JSON-able description (written into every result's configuration)."""
        from ._jsonio import describe

        return dict(M_tokens=list(self.M) if isinstance(self.M, tuple) else self.M,
                    prefill_chunk_tokens=self.prefill_chunk,
                    b=list(self.b) if isinstance(self.b, tuple) else
                    (self.b if not isinstance(self.b, BatchTime) else describe(self.b)),
                    b_theory_s=self.b_theory, policy=self.policy, token_budget=self.token_budget,
                    servers=self.servers, routing=self.routing, max_running=self.max_running,
                    block_size_tokens=self.block_size)


@dataclass(frozen=True)
class MonteCarlo:
    """How a Server is simulated (none of it changes the model).

    trials
        Independent Monte Carlo repetitions of every configuration (each a whole server or cluster).
    steps
        Horizon in steps (batch iterations) including the warm-up; None: warm-up plus a window of at least
        16,000 steps and 2,000 completions (:func:`lqs.auto_steps`).
    warmup
        Steps from the empty system before measurement starts.
    seed
        Seed of the one PRNG key when no ``key=`` is given.
    K
        Request slots per server (default: sized from M and the workload; a full buffer is counted and marks the
        result unreliable).
    compact_every, max_points
        Steps per record period (finished slots are compacted and their latencies binned once a period); most
        time-series points kept.
    stop_when_settled
        End early once every configuration's backlog has clearly settled.
    path
        Step-loop path: ``auto`` (the fastest path ``lqs bench`` measured bit-identical on this device, else XLA),
        ``xla`` or ``fused`` (on a CPU the fused kernel runs in Pallas interpret mode: exact but slow, for
        verification); None: ``$LQS_PATH`` if set, else ``auto``. ``fused_trials``: trials per fused-kernel program
        (a power of two; default sized from K).
    engine, fused_rb
        Deprecated names of ``path`` and ``fused_trials``.
    """

    trials: int = 64
    steps: int | None = None
    warmup: int = 4000
    seed: int = 0
    K: int | None = None
    compact_every: int = 64
    max_points: int = 1000
    stop_when_settled: bool = False
    path: str | None = None
    fused_trials: int | None = None
    engine: InitVar[str | None] = None
    fused_rb: InitVar[int | None] = None

    def __post_init__(self, engine=None, fused_rb=None):
        s = object.__setattr__
        for old, value in (("engine", engine), ("fused_rb", fused_rb)):
            if value is not None:
                new = MC_RENAMED[old]
                warnings.warn(f"MonteCarlo({old}=...) is deprecated: use {new}=", DeprecationWarning, stacklevel=3)
                if getattr(self, new) is not None and getattr(self, new) != value:
                    raise LqsError(old, value, f"is the old name of {new}, which is also given ({getattr(self, new)!r})")
                s(self, new, value)
        s(self, "trials", check_int("trials", self.trials, 1, 2**24))
        s(self, "warmup", check_int("warmup", self.warmup, 0, 2**31 - 2**20))
        if self.steps is not None and not (isinstance(self.steps, str) and self.steps.strip().lower() == "auto"):
            st = check_int("steps", self.steps, 1, 2**31 - 2**20)
            if st <= self.warmup:
                raise LqsError("steps", st, f"must exceed warmup ({self.warmup})")
            s(self, "steps", st)
        else:
            s(self, "steps", None)
        s(self, "seed", check_int("seed", self.seed, 0, 2**63 - 1))
        if self.K is not None:
            s(self, "K", check_int("K", self.K, MIN_K, 2**20))
        s(self, "compact_every", check_int("compact_every", self.compact_every, 1, 4096))
        s(self, "max_points", check_int("max_points", self.max_points, 10, 2**24))
        if not isinstance(self.stop_when_settled, (bool, np.bool_)):
            raise LqsError("stop_when_settled", self.stop_when_settled, "must be True or False")
        s(self, "stop_when_settled", bool(self.stop_when_settled))
        if self.path is not None:
            p = self.path.strip().lower() if isinstance(self.path, str) else self.path
            s(self, "path", check_choice("path", p, PATHS))
        if self.fused_trials is not None:
            rb = check_int("fused_trials", self.fused_trials, 1, 1024)
            if rb & (rb - 1):
                raise LqsError("fused_trials", rb, "must be a power of two in [1, 1024] (Triton block shapes)")
            s(self, "fused_trials", rb)

    def replace(self, **changes) -> "MonteCarlo":
        for old, new in MC_RENAMED.items():
            if old in changes:
                warnings.warn(f"MonteCarlo field {old} is deprecated: use {new}", DeprecationWarning, stacklevel=2)
                changes[new] = changes.pop(old)
        bad = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if bad:
            if bad[0] == "replicas":
                raise LqsError("replicas", changes["replicas"], "was renamed trials (Monte Carlo repetitions); "
                                                                "serving instances are Server(servers=...)")
            raise LqsError(bad[0], changes[bad[0]], "is not a MonteCarlo field (" +
                           ", ".join(f.name for f in dataclasses.fields(self)) + ")")
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        return dataclasses.asdict(self)


def resolve_mc(mc, mc_fields: dict) -> MonteCarlo:
    """``mc`` (a MonteCarlo or None) with the keyword overrides of a call applied."""
    if mc is None:
        mc = MonteCarlo()
    elif not isinstance(mc, MonteCarlo):
        raise LqsError("mc", type(mc).__name__, "must be an lqs.MonteCarlo (or None)")
    return mc.replace(**mc_fields) if mc_fields else mc


def as_server(server) -> Server:
    if not isinstance(server, Server):
        raise LqsError("server", type(server).__name__, "must be an lqs.Server(M=..., prefill_chunk=..., b=...)")
    return server

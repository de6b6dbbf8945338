"""Arrival processes (docs/model.md, "Arrival processes"): Poisson, gamma renewal (a benchmark client's
``--burstiness``), replayed instants (a trace's or an open-loop benchmark's) and a burst at t = 0.

Two uses: a replay issues a finite run's N requests at :meth:`Arrivals.instants`; the long-run engine (simulate,
critical, sweep) runs Poisson as per-step counts and the others as given instants (:meth:`Arrivals.engine_instants`:
the process at each configuration's rate λ)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import LqsError, check_float

KINDS = ("poisson", "gamma", "replayed", "burst")


@dataclass(frozen=True, eq=False)
class Arrivals:
    """How the client issues the N requests.

    ``poisson`` at ``rate_rps``; ``gamma`` renewal with shape ``burstiness`` (inter-arrival CV 1/√k, the
    ``--burstiness`` of vLLM and SGLang's benchmark clients; 1 is Poisson); ``replayed``: the given sorted
    ``instants_s`` (shifted to start at 0); ``burst``: every request at t = 0 (request_rate inf).

    ``rate_rps`` may be left out where the caller gives the rate: ``lqs.simulate(w, server, lam,
    arrivals=Arrivals("gamma", burstiness=4))`` runs gamma arrivals at each λ of the grid, and replayed instants
    at each λ are the pattern time-scaled to mean rate λ and repeated (:meth:`engine_instants`)."""

    kind: str
    rate_rps: float | None = None
    burstiness: float = 1.0
    instants_s: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise LqsError("arrivals", self.kind, "must be one of " + ", ".join(KINDS))
        if self.kind in ("poisson", "gamma"):
            if self.rate_rps is not None:
                if not math.isfinite(float(self.rate_rps)):
                    raise LqsError("request_rate", self.rate_rps, f"{self.kind} arrivals need a finite rate > 0 req/s")
                object.__setattr__(self, "rate_rps", check_float("request_rate", self.rate_rps, 0.0, lo_open=True))
            object.__setattr__(self, "burstiness", check_float("burstiness", self.burstiness, 0.0, 1e6,
                                                               lo_open=True))
        if self.kind == "replayed":
            t = np.asarray(self.instants_s, np.float64)
            if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
                raise LqsError("arrival_times", None, "replayed arrivals need a non-empty list of finite instants")
            if np.any(np.diff(t) < 0):
                raise LqsError("arrival_times", None, "replayed arrival instants must be sorted ascending")
            object.__setattr__(self, "instants_s", t - t[0])

    @property
    def random(self) -> bool:
        """True when trials draw different instants."""
        return self.kind in ("poisson", "gamma")

    def describe(self) -> str:
        at = "" if self.rate_rps is None else f" at {self.rate_rps:g} req/s"
        if self.kind == "poisson":
            return "Poisson" + at
        if self.kind == "gamma":
            return f"gamma{at}, burstiness {self.burstiness:g} (CV {1 / math.sqrt(self.burstiness):.3g})"
        if self.kind == "replayed":
            return f"replayed instants ({self.instants_s.size}, over {self.instants_s[-1]:.4g} s)"
        return "burst: every request at t = 0"

    def instants(self, n: int, trials: int, key) -> np.ndarray:
        """float32[trials, n] instants (seconds from the first request, which is issued at 0)."""
        if self.kind == "burst":
            return np.zeros((trials, n), np.float32)
        if self.kind == "replayed":
            if self.instants_s.size != n:
                raise LqsError("arrival_times", f"{self.instants_s.size} instants", f"must give one per request ({n})")
            return np.broadcast_to(self.instants_s.astype(np.float32), (trials, n)).copy()
        if self.rate_rps is None:
            raise LqsError("request_rate", None, f"{self.kind} arrivals of a finite run need a rate > 0 req/s")
        gaps = np.asarray(self._gamma(key, (trials, max(n - 1, 0))), np.float64) / (self._k * self.rate_rps)
        t = np.concatenate([np.zeros((trials, 1)), np.cumsum(gaps, axis=1)], axis=1)
        return t.astype(np.float32)

    @property
    def _k(self) -> float:
        return 1.0 if self.kind == "poisson" else self.burstiness

    def _gamma(self, key, shape):
        """Gamma(k, 1) draws (k = 1 for Poisson): inter-arrival times × kλ (so that they have mean 1/λ)."""
        return jax.random.gamma(key, jnp.float32(self._k), shape, dtype=jnp.float32)

    # ------------------------------------------------------------------ the long-run engine
    @property
    def engine_kind(self) -> str:
        """EngineConfig.arrivals: "poisson" (per-step counts) or "instants" (given instants)."""
        return "poisson" if self.kind == "poisson" or (self.kind == "gamma" and self.burstiness == 1.0) \
            else "instants"

    def check_engine(self) -> None:
        """The long-run engine runs a stationary process at a rate λ: a burst has none."""
        if self.kind == "burst":
            raise LqsError("arrivals", "burst", "a burst (every request at t = 0) has no long-run rate; replay it "
                           "(lqs replay) or give poisson, gamma or replayed arrivals")
        if self.kind == "replayed" and self.instants_s.size < 2:
            raise LqsError("arrival_times", f"{self.instants_s.size} instant",
                           "a replayed pattern needs at least 2 instants to have a rate")

    @property
    def pattern_rate_rps(self) -> float:
        """A replayed pattern's own mean rate: n instants per period (span plus one mean gap)."""
        return self.instants_s.size / self.pattern_period_s

    def peak_rate_rps(self, lam: float, width_s: float) -> float:
        """A rate whose Poisson count over ``width_s`` bounds this process's count in one step of that length at
        mean rate λ (for the engine's static per-step cap): gamma with k < 1 has variance λ·w/k; a replayed
        pattern's densest window, time-scaled, counted exactly."""
        if self.kind == "gamma":
            return lam / min(1.0, self.burstiness)
        if self.kind == "replayed" and lam > 0 and width_s > 0:
            t = self.instants_s * (self.pattern_rate_rps / lam)
            t = np.concatenate([t, t + self.pattern_period_s * self.pattern_rate_rps / lam])
            return max(lam, _most_within(t, self.instants_s.size, width_s) / width_s)
        return lam

    @property
    def pattern_period_s(self) -> float:
        t = self.instants_s
        span = float(t[-1] - t[0])
        if span <= 0:
            raise LqsError("arrival_times", None, "replayed instants must span a positive time")
        return span * t.size / (t.size - 1)

    def engine_instants(self, lam: float, length: int, keys) -> np.ndarray:
        """float32[trials, length] arrival instants at mean rate ``lam`` for the trials of ``keys`` (typed keys,
        one per trial), +inf in the last entry (the engine counts reaching it as running out). Gamma: renewal
        from t = 0 (the first arrival one gap later), drawn from each trial's key; replayed: the pattern
        time-scaled by (its own rate / λ) and repeated period after period, identical in every trial."""
        self.check_engine()
        trials = int(np.shape(keys)[0])
        n = max(int(length) - 1, 1)
        if lam <= 0:
            t = np.full((trials, n), np.inf)
        elif self.kind == "replayed":
            reps = -(-n // self.instants_s.size)
            base = (np.arange(reps)[:, None] * self.pattern_period_s + self.instants_s[None, :]).ravel()[:n]
            t = np.broadcast_to(base * (self.pattern_rate_rps / lam), (trials, n))
        else:
            g = jax.vmap(lambda kk: self._gamma(jax.random.fold_in(kk, ARRIVALS_TAG), (n,)))(keys)
            t = np.cumsum(np.asarray(g, np.float64), axis=1) / (self._k * lam)
        out = np.full((trials, n + 1), np.inf, np.float32)
        out[:, :n] = t
        return out


def _most_within(t, n: int, width_s: float) -> int:
    """The most instants of sorted ``t`` in any window [t_i, t_i + width) starting at one of the first n."""
    return int(np.max(np.searchsorted(t, t[:n] + width_s) - np.arange(n)))


@dataclass(frozen=True, eq=False)
class GivenInstants:
    """Absolute arrival instants for the long-run engine, used as given: not shifted, scaled or repeated (the
    requests that a capacity plan's verification routes to one server over a day: lqs/planning). After the last
    instant no request arrives; the run is expected to end before ``end_s``."""

    instants_s: np.ndarray
    end_s: float
    kind: str = "given"
    burstiness: float = 1.0
    random = False
    engine_kind = "instants"

    def __post_init__(self):
        t = np.asarray(self.instants_s, np.float64)
        if t.ndim != 1 or not np.all(np.isfinite(t)) or np.any(np.diff(t) < 0) or (t.size and t[0] < 0):
            raise LqsError("arrival_times", None, "given instants must be finite, sorted and ≥ 0")
        object.__setattr__(self, "instants_s", t)

    def describe(self) -> str:
        return f"given instants ({self.instants_s.size} over {self.end_s:.4g} s)"

    def check_engine(self) -> None:
        pass

    @property
    def length(self) -> int:
        """Instants per trial the engine holds: the list, a far sentinel (so that reaching the end of the list
        is not counted as running out) and +inf."""
        return self.instants_s.size + 2

    def peak_rate_rps(self, lam: float, width_s: float) -> float:
        t = self.instants_s
        if t.size == 0 or width_s <= 0:
            return lam
        return max(lam, _most_within(t, t.size, width_s) / width_s)

    def engine_instants(self, lam: float, length: int, keys) -> np.ndarray:
        trials = int(np.shape(keys)[0])
        out = np.full((trials, int(length)), np.inf, np.float32)
        n = self.instants_s.size
        out[:, :n] = self.instants_s
        out[:, n:-1] = np.float32(max(1e30, 4.0 * self.end_s))  # never reached: the list does not "run out"
        return out


#: folded into a trial's key for its gamma inter-arrival draws (the engine's other streams are kernels/rng.py's)
ARRIVALS_TAG = 0x61727276


def as_arrivals(arrivals, servers: int = 1, phased: bool = False) -> Arrivals | None:
    """None (Poisson), a kind name ("poisson"), or an Arrivals; checked for the long-run engine (which runs
    given instants on one server or a cluster, without phases) before anything compiles."""
    if arrivals is None:
        return None
    if isinstance(arrivals, str):
        arrivals = Arrivals(arrivals)
    if isinstance(arrivals, GivenInstants):  # lengths may come from phases: the instants are the rate
        return arrivals
    if not isinstance(arrivals, Arrivals):
        raise LqsError("arrivals", arrivals, "must be None, 'poisson' or an lqs.Arrivals")
    arrivals.check_engine()
    if arrivals.engine_kind == "instants" and phased:
        raise LqsError("arrivals", arrivals.describe(), "gamma and replayed arrivals run without phases; a phased "
                       "schedule takes Poisson arrivals at each phase's rate")
    return arrivals

"""Arrival processes of a finite experiment (docs/model.md, "Arrival processes"): the instants at which the
benchmark client issues its requests, one row per trial."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import LqsError, check_float

KINDS = ("poisson", "gamma", "replayed", "burst")


@dataclass(frozen=True, eq=False)
class Arrivals:
    """How the client issues the N requests.

    ``poisson`` at ``rate_rps``; ``gamma`` renewal with shape ``burstiness`` (inter-arrival CV 1/√k, the
    ``--burstiness`` of vLLM and SGLang's benchmark clients; 1 is Poisson); ``replayed``: the given sorted
    ``instants_s`` (shifted to start at 0); ``burst``: every request at t = 0 (request_rate inf)."""

    kind: str
    rate_rps: float | None = None
    burstiness: float = 1.0
    instants_s: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise LqsError("arrivals", self.kind, "must be one of " + ", ".join(KINDS))
        if self.kind in ("poisson", "gamma"):
            if self.rate_rps is None or not math.isfinite(float(self.rate_rps)):
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
        if self.kind == "poisson":
            return f"Poisson at {self.rate_rps:g} req/s"
        if self.kind == "gamma":
            return f"gamma at {self.rate_rps:g} req/s, burstiness {self.burstiness:g} (CV {1 / math.sqrt(self.burstiness):.3g})"
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
        shape = 1.0 if self.kind == "poisson" else self.burstiness
        gaps = jax.random.gamma(key, jnp.float32(shape), (trials, max(n - 1, 0)), dtype=jnp.float32)
        gaps = np.asarray(gaps, np.float64) / (shape * self.rate_rps)  # Gamma(k, λk): mean 1/λ
        t = np.concatenate([np.zeros((trials, 1)), np.cumsum(gaps, axis=1)], axis=1)
        return t.astype(np.float32)

"""Batch-time models: how long one engine step (one batch iteration) lasts, in seconds (SPEC.md "Batch time").

Each model is an equinox Module whose numbers are array leaves (sweepable without recompiling) and whose
``draw(u1, u2, prefill_tokens, decode_tokens, mem_used)`` maps two uniforms and the step's composition to b_n.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import LqsError, check_float
from ._theory import estimate_b
from .kernels.engine import affine_time


class BatchTime(eqx.Module):
    def draw(self, u1, u2, prefill_tokens, decode_tokens, mem_used):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def mean_s(self) -> float:
        """E[b] (for constant and iid models); the theory's b̄ by default."""
        raise NotImplementedError  # pragma: no cover

    def max_s(self, M: int, K: int, chunk: int) -> float:
        """An upper bound (or a far quantile) of b_n, for sizing the static arrival cap."""
        raise NotImplementedError  # pragma: no cover

    kind: str = eqx.field(static=True, default="?")


class ConstantBatch(BatchTime):
    """b_n = b̄ (the paper)."""

    b: np.ndarray
    kind: str = eqx.field(static=True, default="constant")

    def __init__(self, b):
        self.b = np.asarray(check_float("b", b, 0.0, lo_open=True), np.float64)  # exact b̄ for the theory columns
        self.kind = "constant"

    def draw(self, u1, u2, prefill_tokens, decode_tokens, mem_used):
        return jnp.asarray(self.b, jnp.float32)

    @property
    def mean_s(self):
        return float(self.b)

    def max_s(self, M, K, chunk):
        return float(np.max(self.b))


class EmpiricalBatch(BatchTime):
    """b_n resampled i.i.d. from observed batch times."""

    samples: np.ndarray
    kind: str = eqx.field(static=True, default="iid-empirical")

    def __init__(self, samples):
        x = np.asarray(samples, np.float64).ravel()
        estimate_b(x, "mean")  # validates (non-empty, finite, > 0)
        self.samples = x.astype(np.float32)
        self.kind = "iid-empirical"

    def draw(self, u1, u2, prefill_tokens, decode_tokens, mem_used):
        n = self.samples.shape[-1]
        i = jnp.minimum(jnp.floor(u1 * n).astype(jnp.int32), n - 1)
        return jnp.asarray(self.samples)[i]

    @property
    def mean_s(self):
        return float(np.mean(self.samples.astype(np.float64)))

    def max_s(self, M, K, chunk):
        return float(np.max(self.samples))


class LogNormalMixBatch(BatchTime):
    """b_n i.i.d. from a mixture of lognormals: component i with probability p_i, median m_i, log-sd σ_i.

    One component is a plain lognormal; two components with, say, 70 % near the median and 30 % much slower give
    the paper's appendix shape (most batches alike, a heavy slow tail).
    """

    probs: np.ndarray
    log_median: np.ndarray
    sigma: np.ndarray
    kind: str = eqx.field(static=True, default="iid-lognormal")

    def __init__(self, probs, medians_s, sigmas):
        p = np.atleast_1d(np.asarray(probs, np.float64))
        m = np.atleast_1d(np.asarray(medians_s, np.float64))
        sg = np.atleast_1d(np.asarray(sigmas, np.float64))
        if not (p.shape == m.shape == sg.shape) or p.ndim != 1:
            raise LqsError("probs", p.tolist(), "probs, medians and sigmas must be 1-D lists of equal length")
        if np.any(p < 0) or p.sum() <= 0 or np.any(~np.isfinite(p)):
            raise LqsError("probs", p.tolist(), "must be finite, ≥ 0, with a positive sum")
        for v in m:
            check_float("median_s", v, 0.0, lo_open=True)
        for v in sg:
            check_float("sigma", v, 0.0)
        self.probs = (p / p.sum()).astype(np.float32)
        self.log_median = np.log(m).astype(np.float32)
        self.sigma = sg.astype(np.float32)
        self.kind = "iid-lognormal"

    @classmethod
    def from_mean_cv(cls, mean_s, cv):
        """A single lognormal with the given mean and coefficient of variation."""
        mean_s = check_float("mean_s", mean_s, 0.0, lo_open=True)
        cv = check_float("cv", cv, 0.0)
        s2 = math.log1p(cv * cv)
        return cls([1.0], [mean_s * math.exp(-s2 / 2)], [math.sqrt(s2)])

    @classmethod
    def two_speed(cls, fast_s, slow_s, slow_frac=0.3, sigma=0.1):
        """The paper's appendix shape: a fraction ``slow_frac`` of batches much slower than the rest."""
        slow_frac = check_float("slow_frac", slow_frac, 0.0, 1.0)
        return cls([1 - slow_frac, slow_frac], [fast_s, slow_s], [sigma, sigma])

    def draw(self, u1, u2, prefill_tokens, decode_tokens, mem_used):
        cum = jnp.cumsum(jnp.asarray(self.probs))
        j = jnp.sum(u1 >= cum[:-1])
        z = jax.scipy.special.ndtri(jnp.clip(u2, 1e-7, 1 - 1e-7))
        return jnp.exp(jnp.asarray(self.log_median)[j] + jnp.asarray(self.sigma)[j] * z)

    @property
    def mean_s(self):
        p = self.probs.astype(np.float64)
        return float(np.sum(p * np.exp(self.log_median + self.sigma.astype(np.float64) ** 2 / 2)))

    def max_s(self, M, K, chunk):
        return float(np.max(np.exp(self.log_median + 5.3 * self.sigma)))  # the 1 − 1e-7 quantile


class AffineBatch(BatchTime):
    """b_n = a0 + a1·(prefill tokens in step) + a2·(decode tokens in step) + a3·(memory used in step)."""

    a: np.ndarray  # (a0, a1, a2, a3)
    kind: str = eqx.field(static=True, default="affine")

    def __init__(self, a0, a1=0.0, a2=0.0, a3=0.0):
        a = [check_float("a0", a0, 0.0, lo_open=True), check_float("a1", a1, 0.0),
             check_float("a2", a2, 0.0), check_float("a3", a3, 0.0)]
        self.a = np.asarray(a, np.float32)
        self.kind = "affine"

    def draw(self, u1, u2, prefill_tokens, decode_tokens, mem_used):
        a = jnp.asarray(self.a)
        return affine_time(a[0], a[1], a[2], a[3], prefill_tokens, decode_tokens, mem_used)

    @property
    def mean_s(self):
        raise LqsError("batch", "affine", "an affine batch time has no fixed mean: pass b̄ for the theory explicitly")

    def max_s(self, M, K, chunk):
        a = self.a.astype(np.float64)
        return float(a[0] + a[1] * min(M, K * chunk) + a[2] * K + a[3] * M)

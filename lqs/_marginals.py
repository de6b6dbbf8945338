"""Distributions of one token length (a prompt or an output): the marginals that workloads are built from.

A marginal is an equinox Module (a pytree) mapping a uniform in [0, 1) to a positive integer length, with its
finite support (values, probabilities) where the theory needs exact sums.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import equinox as eqx

from ._errors import LqsError, check_float, check_int

_MAX_SUPPORT = 5_000_000  # largest finite support enumerated exactly


def _u_index(u, n):
    """Map u in [0,1) to an integer index in [0, n)."""
    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


# ----------------------------------------------------------------------------------------------- marginals
class Marginal(eqx.Module):
    """A distribution of one positive integer length (tokens)."""

    def from_uniform(self, u):  # pragma: no cover - abstract
        raise NotImplementedError

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, probabilities) of the finite support, exactly."""
        raise NotImplementedError  # pragma: no cover

    @property
    def lo(self) -> int:
        raise NotImplementedError  # pragma: no cover

    @property
    def hi(self) -> int:
        raise NotImplementedError  # pragma: no cover


class IntUniform(Marginal):
    """Integer uniform on {low, ..., high}."""

    low: np.ndarray
    high: np.ndarray

    def __init__(self, low, high, name: str = "length"):
        low = check_int(f"{name} low", low, 1)
        high = check_int(f"{name} high", high, low)
        self.low = np.asarray(low, np.int32)
        self.high = np.asarray(high, np.int32)

    def from_uniform(self, u):
        n = self.high - self.low + 1
        return self.low + jnp.minimum(jnp.floor(u * n.astype(jnp.float32)).astype(jnp.int32), n - 1)

    def support(self):
        v = np.arange(int(self.low), int(self.high) + 1, dtype=np.int64)
        return v, np.full(v.size, 1.0 / v.size)

    @property
    def lo(self):
        return int(np.min(self.low))

    @property
    def hi(self):
        return int(np.max(self.high))


class Constant(Marginal):
    """A fixed length."""

    value: np.ndarray

    def __init__(self, value, name: str = "length"):
        self.value = np.asarray(check_int(name, value, 1), np.int32)

    def from_uniform(self, u):
        return jnp.broadcast_to(self.value, jnp.shape(u)).astype(jnp.int32)

    def support(self):
        return np.array([int(self.value)], np.int64), np.array([1.0])

    @property
    def lo(self):
        return int(np.min(self.value))

    @property
    def hi(self):
        return int(np.max(self.value))


class LogNormal(Marginal):
    """round(exp(N(mu, sigma²))) clipped to {low, ..., high} (clipping puts the tail mass on the end points)."""

    mu: np.ndarray
    sigma: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def __init__(self, mu, sigma, low, high, name: str = "length"):
        self.mu = np.asarray(check_float(f"{name} mu", mu), np.float32)
        self.sigma = np.asarray(check_float(f"{name} sigma", sigma, 0.0, lo_open=True), np.float32)
        low = check_int(f"{name} low", low, 1)
        high = check_int(f"{name} high", high, low)
        self.low = np.asarray(low, np.int32)
        self.high = np.asarray(high, np.int32)

    def from_uniform(self, u):
        z = jax.scipy.special.ndtri(jnp.clip(u, 1e-7, 1 - 1e-7))
        x = jnp.exp(self.mu + self.sigma * z)
        x = jnp.clip(jnp.round(x), self.low.astype(jnp.float32), self.high.astype(jnp.float32))
        return x.astype(jnp.int32)

    def support(self):
        lo, hi = int(self.low), int(self.high)
        v = np.arange(lo, hi + 1, dtype=np.int64)
        mu, sg = float(self.mu), float(self.sigma)
        edges = np.concatenate([v - 0.5, [hi + 0.5]])
        z = (np.log(np.maximum(edges, 1e-300)) - mu) / (sg * math.sqrt(2.0))
        cdf = 0.5 * (1.0 + _erf(z))
        cdf[0], cdf[-1] = 0.0, 1.0  # clipping: all mass below low goes to low, above high to high
        p = np.diff(cdf)
        return v, p / p.sum()

    @property
    def lo(self):
        return int(self.low)

    @property
    def hi(self):
        return int(self.high)


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


class Empirical(Marginal):
    """Resample observed lengths with equal weight."""

    values: np.ndarray

    def __init__(self, values, name: str = "length"):
        v = _check_lengths(name, values)
        self.values = v

    def from_uniform(self, u):
        return jnp.asarray(self.values)[_u_index(u, self.values.shape[-1])]

    def support(self):
        v, c = np.unique(np.asarray(self.values, np.int64), return_counts=True)
        return v, c / c.sum()

    @property
    def lo(self):
        return int(np.min(self.values))

    @property
    def hi(self):
        return int(np.max(self.values))


def _check_lengths(name, values) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or a.size == 0:
        raise LqsError(name, f"array of shape {a.shape}", "must be a non-empty 1-D list of token lengths")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_):
        raise LqsError(name, str(a.dtype), "must be numeric token lengths")
    af = a.astype(np.float64)
    bad = ~np.isfinite(af) | (af != np.round(af)) | (af < 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise LqsError(name, a[i].item(), f"every length must be an integer ≥ 1 (row {i})")
    if af.max() > 2**30:
        raise LqsError(name, int(af.max()), "every length must be ≤ 2^30 tokens")
    return af.astype(np.int32)

"""Counter-based random numbers shared by every engine path.

A draw is a pure function of (trial key, stream, counter, sub-index): no state is carried, so request k's
lengths are the same whenever and wherever they are drawn, the XLA engine and a fused kernel produce identical
trajectories, and the waiting queue needs no per-request buffer. The mixer is the ``lowbias32`` integer hash
(Wellons, 2018): full avalanche on 32-bit words, only shifts, xors and 32-bit multiplies, so it lowers to any
backend. Uniforms are 24-bit floats in (0, 1), never exactly 0 or 1: (top 24 bits + 0.5)·2^-24 rounds to 1.0 in
float32 for the largest value, which is therefore mapped to the largest float32 below 1 (:data:`U_MAX`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# stream identifiers (distinct odd constants)
STREAM_ARRIVALS = 0x243F6A89  # Poisson count of step n            (counter = step)
STREAM_BATCH = 0x85A308D3  # batch time of step n                  (counter = step)
STREAM_LENGTHS = 0x13198A2F  # (s, o) of request k                 (counter = request index)
STREAM_OFFSET = 0x03707345  # arrival instant inside its step      (counter = request index)
STREAMS = (STREAM_ARRIVALS, STREAM_BATCH, STREAM_LENGTHS, STREAM_OFFSET)

#: the largest uniform: 1 − 2^-24, the largest float32 below 1
U_MAX = float(np.float32(1.0 - 2.0 ** -24))

_GOLD = 0x9E3779B9
_C2 = 0x85EBCA6B


def mix32(x):
    """lowbias32: a bijective 32-bit integer hash (uint32 in, uint32 out; jnp or numpy)."""
    if isinstance(x, (np.ndarray, np.generic)):
        with np.errstate(over="ignore"):
            return _mix32(x)
    return _mix32(x)


def _mix32(x):
    x = x ^ (x >> 16)
    x = x * _u32(0x7FEB352D, x)
    x = x ^ (x >> 15)
    x = x * _u32(0x846CA68B, x)
    x = x ^ (x >> 16)
    return x


def _u32(c, like):
    if isinstance(like, np.ndarray) or np.isscalar(like):
        return np.uint32(c)
    return jnp.uint32(c)


def stream_key(k0, k1, stream):
    """Fold a trial's 64-bit key (two uint32 words) and a stream id into one uint32 word."""
    return mix32(mix32(k0 ^ _u32(stream, k0)) ^ k1)


def bits(skey, counter, sub=0):
    """uint32 random bits for (stream key, counter, sub-index)."""
    if isinstance(counter, (np.ndarray, np.generic)) and isinstance(skey, (np.ndarray, np.generic)):
        with np.errstate(over="ignore"):
            c = np.asarray(counter).astype(np.uint32)
            h = mix32(skey ^ (c * np.uint32(_GOLD)))
            return mix32(h + np.uint32(sub) * np.uint32(_C2) + np.uint32(_GOLD))
    c = jnp.asarray(counter).astype(jnp.uint32)
    h = mix32(skey ^ (c * jnp.uint32(_GOLD)))
    return mix32(h + jnp.uint32(sub) * jnp.uint32(_C2) + jnp.uint32(_GOLD))


def to_uniform(h):
    """uint32 bits → float32 uniform in (0, 1): (top 24 bits + 0.5) · 2^-24, at most :data:`U_MAX` (the largest
    value's + 0.5 rounds up to 2^24 in float32, which would give exactly 1.0)."""
    if isinstance(h, np.ndarray):
        u = ((h >> np.uint32(8)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0 ** -24)
        return np.minimum(u, np.float32(U_MAX))
    u = ((h >> 8).astype(jnp.float32) + 0.5) * (2.0 ** -24)
    return jnp.minimum(u, jnp.float32(U_MAX))


def uniform(skey, counter, sub=0):
    return to_uniform(bits(skey, counter, sub))


def unfused_mul(a, b, nonneg):
    """a·b rounded to float32 on every backend: its bits pass through an integer xor with ``nonneg >> 31`` (zero,
    as ``nonneg`` is a non-negative int32 the compiler cannot prove non-negative), so no compiler can contract it
    with a following addition into a fused multiply-add. XLA on a CPU contracts ``t + b·u`` in some programs and
    not in others; with this the XLA engine and the fused kernel round alike."""
    import jax

    z = (jnp.asarray(nonneg, jnp.int32) >> 31).astype(jnp.uint32)
    p = jax.lax.bitcast_convert_type(jnp.asarray(a, jnp.float32) * b, jnp.uint32) ^ z
    return jax.lax.bitcast_convert_type(p, jnp.float32)


def poisson_inverse(u, mean, n_max: int):
    """Poisson(mean) by CDF inversion over at most ``n_max`` terms (static).

    Returns (count, truncated): ``truncated`` is true when u lies beyond P(X ≤ n_max); the caller counts it.

    Below the median the count compares u with the CDF summed upwards (cdf_j ≤ 1/2). Above it, where a float32
    CDF summed upwards carries an absolute error of a few 10^-8 and may end below the largest uniform (a spurious
    burst of n_max arrivals, counted as truncated), it compares 1 − u (exact for u ≥ 1/2) with the survival
    P(X > j) summed downwards from the smallest terms, which is accurate to a few ulp of itself. The mass beyond
    n_max is bounded by p_n·(mean/(n+1))/(1 − mean/(n+2)), its geometric majorant."""
    f32 = jnp.float32
    p = jnp.exp(-mean)
    cdf = p
    terms, cdfs = [p], [cdf]
    for j in range(1, n_max + 1):
        p = p * mean / j
        cdf = cdf + p
        terms.append(p)
        cdfs.append(cdf)
    r = mean / (n_max + 2)
    surv = jnp.where(r < 1, terms[-1] * (mean / (n_max + 1)) / jnp.maximum(1 - r, f32(2.0 ** -24)), f32(1.0))
    w = 1 - u
    n = jnp.zeros(jnp.shape(u), jnp.int32)
    beyond = None
    for j in range(n_max, -1, -1):  # surv = P(X > j)
        more = jnp.where(cdfs[j] <= 0.5, u > cdfs[j], w < surv)
        if j == n_max:
            beyond = more
        else:
            n = n + more.astype(jnp.int32)
        surv = surv + terms[j]
    return n, beyond


def poisson_cap(mean_max: float, tail: float = 1e-12) -> int:
    """Smallest n with P(Poisson(mean_max) > n) < tail (at least 2): the static arrival cap per step."""
    import math

    if mean_max <= 0:
        return 2
    p = math.exp(-mean_max)
    cdf = p
    n = 0
    while 1.0 - cdf >= tail and n < 100_000:
        n += 1
        p *= mean_max / n
        cdf += p
    return max(2, n)

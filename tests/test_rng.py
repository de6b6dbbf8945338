"""The counter-based uniforms and the Poisson inversion against float64 arithmetic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lqs.kernels import rng


def test_uniform_is_strictly_inside_the_unit_interval():
    top = np.array([0xFFFFFFFF, 0xFFFFFF00, 0], np.uint32)
    for u in (rng.to_uniform(top), np.asarray(rng.to_uniform(jnp.asarray(top)))):
        assert u.dtype == np.float32
        assert np.all(u > 0) and np.all(u < 1), u
        assert u[0] == np.float32(rng.U_MAX) and u[2] == np.float32(2.0 ** -25)


def _exact(u, mean, cap):
    """(count, truncated) of float64 inversion: count = #{j < cap: P(X > j) > 1 − u}, truncated = P(X > cap) > 1 − u."""
    p, terms = math.exp(-mean), []
    for j in range(cap + 80):
        terms.append(p)
        p *= mean / (j + 1)
    ge = np.cumsum(terms[::-1])[::-1]  # P(X ≥ j)
    surv = ge[1:cap + 2]  # P(X > j), j = 0..cap
    w = 1.0 - u.astype(np.float64)
    more = w[:, None] < surv[None, :]
    return more[:, :cap].sum(1), more[:, cap], surv, w


@pytest.mark.parametrize("cap", [16, 48])
def test_poisson_inverse_matches_float64_in_the_upper_tail(cap):
    """The largest uniforms (where a float32 CDF summed upwards ends below u) give the float64 quantile: no
    spurious burst of ``cap`` arrivals and no truncation unless the float64 tail says so."""
    bits = np.arange(2**24 - 4096, 2**24, dtype=np.uint32) << np.uint32(8)
    us = rng.to_uniform(bits)
    draw = jax.jit(lambda u, m: rng.poisson_inverse(u, m, cap))
    for mean in (1e-4, 0.003, 0.018, 0.1, 0.5, 1.0, 2.5, 4.0, 0.25 * cap):
        n, tr = (np.asarray(x) for x in draw(jnp.asarray(us), jnp.float32(mean)))
        n64, tr64, surv, w = _exact(us, mean, cap)
        # a float32 survival is within a few ulp of itself: only a uniform that close to a boundary may differ
        near = np.min(np.abs(w[:, None] / surv[None, :] - 1), axis=1) < 1e-5
        wrong = ((n != n64) | (tr != tr64)) & ~near
        assert not wrong.any(), (mean, us[wrong][:4], n[wrong][:4], n64[wrong][:4], tr[wrong][:4])


def test_poisson_inverse_body_matches_float64():
    """Across the whole unit interval the count is the float64 quantile, up to rounding at the boundaries."""
    us = rng.to_uniform(np.random.default_rng(0).integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32))
    for mean in (0.02, 0.7, 6.0):
        cap = rng.poisson_cap(mean)
        n, tr = (np.asarray(x) for x in jax.jit(lambda u: rng.poisson_inverse(u, jnp.float32(mean), cap))(us))
        n64, tr64, surv, w = _exact(us, mean, cap)
        assert not tr.any() and not tr64.any()
        assert np.mean(n != n64) < 1e-4
        assert abs(n.mean() - mean) < 5 * math.sqrt(mean / us.size)


def test_truncation_is_counted_when_the_cap_is_too_small():
    us = jnp.asarray(rng.to_uniform(np.arange(0, 2**32, 2**12, dtype=np.uint64).astype(np.uint32)))
    n, tr = rng.poisson_inverse(us, jnp.float32(6.0), 4)
    p_over = 1 - sum(math.exp(-6.0) * 6.0 ** j / math.factorial(j) for j in range(5))
    assert abs(float(np.mean(np.asarray(tr))) - p_over) < 2e-3
    assert int(np.max(np.asarray(n))) == 4

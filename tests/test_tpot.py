"""TPOT, the time per output token after the first, (E2E − TTFT)/(o − 1) as the benchmark clients define it: at
light load with a constant batch time every request decodes one token per step, so its TPOT is b̄·o/(o − 1)."""

import jax
import numpy as np
import pytest

import lqs


def test_tpot_at_light_load_is_the_step_time_per_token():
    b, o = 0.03, 11
    wl = lqs.Pairs(np.array([100, 300]), np.array([o, o]))
    srv = lqs.Server(M=20_000, prefill_chunk=512, b=b)
    res = lqs.simulate(wl, srv, 5.0, trials=2, steps=4000, warmup=500, key=jax.random.key(4), verdict=False)
    s = res.summary.iloc[0]
    assert s.latency_n > 500
    assert s.tpot_mean_s == pytest.approx(b * o / (o - 1), rel=1e-4)
    assert s.tpot_p50_s == pytest.approx(b * o / (o - 1), rel=0.08)  # histogram bins are 7.5 % wide
    # TTFT and E2E differ by the o decode steps
    assert s.e2e_mean_s - s.ttft_mean_s == pytest.approx(o * b, rel=1e-4)


def test_tpot_grows_with_load():
    wl = lqs.preset("pd-1:1")
    srv = lqs.Server(M=16_384, prefill_chunk=512, b=0.0372)
    mu = lqs.capacity(wl, srv).mu_rps
    res = lqs.simulate(wl, srv, [0.2 * mu, 0.9 * mu], trials=4, steps=6000, warmup=2000, K=96,
                       key=jax.random.key(5), verdict=False)
    lo, hi = res.summary.tpot_p90_s
    assert lo < hi and lo >= 0.0372

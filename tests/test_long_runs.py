"""Long horizons: the float32 clock and the window's sums are compensated (Kahan), so a run of 200,000 steps keeps
its clock at Σ b_n to float32's relative precision (a plain float32 sum drifts by 0.17 % here, 3 % over a day of
0.0372-s steps)."""

import jax
import numpy as np

import lqs
from shapes import B_SMALL, CHUNK_SMALL, K_SMALL_RUN, M_SMALL, SMALL


def test_clock_and_window_sums_do_not_drift_over_200k_steps():
    srv = lqs.Server(M=M_SMALL, prefill_chunk=CHUNK_SMALL, b=B_SMALL)
    n = 200_000
    res = lqs.simulate(SMALL, srv, 0.3 * lqs.capacity(SMALL, srv).mu_rps, trials=2, steps=n, warmup=n // 2,
                       K=K_SMALL_RUN, key=jax.random.key(5), verdict=False)
    s = res.summary.iloc[0]
    b = float(np.float32(B_SMALL))
    run = int(res.config["steps_run"])  # the horizon rounded up to whole engine calls
    assert run >= n
    assert abs(s.horizon_s / (run * b) - 1) < 1e-5, s.horizon_s
    assert abs(s.window_s / ((run - n // 2) * b) - 1) < 1e-5, s.window_s
    d = res.trials
    assert (d.arrivals == d.completions + d.in_system_final).all() and (d.violations == 0).all()

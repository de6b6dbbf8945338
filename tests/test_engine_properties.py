"""Properties of the Monte Carlo engine: theory bounds, invariants, verdicts, determinism, one compilation."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import lqs
from lqs import _engine as E

# a fast workload: short requests (k = 1) on a small cache, δ ≈ 0.098, ≈ 0.22 completions per step
FAST = lqs.Independent(lqs.IntUniform(10, 200, "s"), lqs.IntUniform(10, 200, "o"))
M_FAST, CHUNK, B = 4096, 512, 0.02
CAP = lqs.capacity(FAST, M_FAST, CHUNK, B)


@pytest.fixture(scope="module")
def saturated():
    """Saturation runs (λ = 1.5 μ) of the three policies."""
    out = {}
    for i, pol in enumerate(("fcfs", "recompute", "reserve")):
        out[pol] = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=1.5 * CAP.mu_rps, b=B, policy=pol, replicas=32,
                                steps=12_000, warmup=3_000, key=jax.random.key(100 + i))
    return out


def _cv(res):
    s = res.summary.iloc[0]
    return float(s.throughput_cv_rps), float(s.throughput_cv_se_rps)


def test_fcfs_saturation_throughput_in_theory_band(saturated):
    mu, se = _cv(saturated["fcfs"])
    lo, hi = CAP.mu_exact_rps * (1 - CAP.delta), CAP.mu_exact_rps
    assert lo - 4 * se <= mu <= hi + 4 * se, (lo, mu, hi, se)
    # the raw throughput agrees with the control-variate estimate within its own noise
    s = saturated["fcfs"].summary.iloc[0]
    assert abs(s.throughput_rps - mu) < 4 * s.throughput_se_rps


def test_recompute_and_reserve_below_fcfs(saturated):
    f, fse = _cv(saturated["fcfs"])
    for pol in ("recompute", "reserve"):
        x, xse = _cv(saturated[pol])
        assert x < f - 4 * math.hypot(fse, xse), (pol, x, f)


@pytest.mark.parametrize("pol", ["fcfs", "recompute", "reserve"])
def test_invariants_hold_in_saturation(saturated, pol):
    res = saturated[pol]
    d = res.replicas
    assert (d.violations == 0).all()  # memory ≤ M, conservation and (fcfs) memory-work = g_exact, in-kernel
    assert (d.mem_max_tokens <= M_FAST).all()
    assert (d.arrivals == d.completions + d.in_system_final).all()
    assert (d.starved_steps == 0).all() and (d.arrival_cap_hits == 0).all()
    assert res.reliable
    assert (d.waiting_final > 0).all()  # saturated: a backlog in every replica
    assert (d.unstable).all()
    if pol == "reserve":
        assert (d.swaps == 0).all()
    else:
        assert (d.swaps > 0).all()
    # memory is well used in saturation: above M(1−δ) on average for fcfs (SPEC consequence)
    if pol == "fcfs":
        assert (d.mem_util > 1 - CAP.delta).all()


def test_paper_workload_at_reduced_M_in_band():
    w = lqs.preset("pd-1:1")
    cap = lqs.capacity(w, 16384, 512, 0.0372)
    res = lqs.simulate(w, M=16384, chunk=512, lam=1.5 * cap.mu_rps, b=0.0372, replicas=16, steps=24_000,
                       warmup=4_000, key=jax.random.key(7))
    mu, se = _cv(res)
    assert cap.mu_exact_rps * (1 - cap.delta) - 4 * se <= mu <= cap.mu_exact_rps + 4 * se
    assert res.reliable and (res.replicas.violations == 0).all()


@pytest.mark.parametrize("pol", ["fcfs", "recompute"])
def test_verdicts_right_far_from_the_boundary(pol):
    lams = [0.8 * CAP.mu_exact_rps * (1 - CAP.delta), 1.2 * CAP.mu_exact_rps]
    res = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=lams, b=B, policy=pol, replicas=200, steps=12_000,
                       warmup=2_000, key=jax.random.key(11))
    p = res.summary.p_unstable.to_numpy()
    assert p[0] <= 0.01 and p[1] >= 0.99, p


def test_reserve_verdicts_against_its_own_saturation(saturated):
    mu_res, _ = _cv(saturated["reserve"])
    res = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=[0.8 * mu_res, 1.2 * mu_res], b=B, policy="reserve",
                       replicas=200, steps=12_000, warmup=2_000, key=jax.random.key(12))
    p = res.summary.p_unstable.to_numpy()
    assert p[0] <= 0.01 and p[1] >= 0.99, p


def test_same_seed_same_results_other_seed_differs():
    kw = dict(M=M_FAST, chunk=CHUNK, lam=[5.0, 12.0], b=B, replicas=4, steps=3_000, warmup=500)
    a = lqs.simulate(FAST, key=jax.random.key(3), **kw)
    b = lqs.simulate(FAST, key=jax.random.key(3), **kw)
    c = lqs.simulate(FAST, key=jax.random.key(4), **kw)
    cols = ["arrivals", "completions", "swaps", "throughput_rps", "wait_p99_s", "mem_mean_tokens"]
    assert a.replicas[cols].equals(b.replicas[cols])
    np.testing.assert_array_equal(a.series_waiting, b.series_waiting)
    assert not a.replicas[cols].equals(c.replicas[cols])
    # replicas are independent streams
    assert a.replicas.arrivals.nunique() > 1


def test_changing_values_does_not_recompile():
    kw = dict(chunk=CHUNK, replicas=4, steps=2_000, warmup=500, K=96)
    lqs.simulate(FAST, M=M_FAST, lam=[4.0, 9.0], b=B, **kw)
    n = E.TRACE_COUNT["run_chunk"]
    lqs.simulate(FAST, M=4000, lam=[5.0, 8.5], b=0.021, **kw)
    lqs.simulate(lqs.Independent(lqs.IntUniform(20, 150), lqs.IntUniform(5, 180)), M=3500, lam=[3.0, 6.0], b=0.019,
                 **kw)
    assert E.TRACE_COUNT["run_chunk"] == n


@pytest.mark.parametrize("kwargs,param", [
    (dict(M=0), "M"), (dict(lam=-1.0), "lam"), (dict(policy="lifo"), "policy"), (dict(replicas=0), "replicas"),
    (dict(token_budget=100), "token_budget"), (dict(b=0.0), "b"), (dict(M=300), "lengths"),
    (dict(steps=100, warmup=100), "warmup"), (dict(chunk=0), "chunk"), (dict(K=2), "K"),
])
def test_bad_input_fails_before_compiling(kwargs, param):
    base = dict(M=M_FAST, chunk=CHUNK, lam=5.0, b=B, replicas=2, steps=1000, warmup=100)
    base.update(kwargs)
    n = E.TRACE_COUNT["run_chunk"]
    with pytest.raises(lqs.LqsError) as e:
        lqs.simulate(FAST, **base)
    assert e.value.param == param
    assert E.TRACE_COUNT["run_chunk"] == n


def test_too_few_slots_is_reported_unreliable():
    res = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=1.5 * CAP.mu_rps, b=B, replicas=2, steps=2_000, warmup=500,
                       K=16, key=jax.random.key(0))
    s = res.summary.iloc[0]
    assert s.starved_steps > 0 and not s.reliable and not res.reliable


def test_iid_batch_times_follow_renewal_reward():
    # with i.i.d. batch times the saturation rate is μ computed with the *mean* batch time
    bt = lqs.LogNormalMixBatch.from_mean_cv(B, 0.8)
    res = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=1.5 * CAP.mu_rps, b=bt, replicas=32, steps=12_000,
                       warmup=3_000, key=jax.random.key(21))
    mu, se = _cv(res)
    cap = lqs.capacity(FAST, M_FAST, CHUNK, bt.mean_s)
    assert cap.mu_exact_rps * (1 - cap.delta) - 4 * se <= mu <= cap.mu_exact_rps + 4 * se
    assert res.reliable


def test_affine_batch_time_depends_on_the_batch():
    bt = lqs.AffineBatch(0.01, 2e-5, 5e-4, 1e-6)
    df, st, cfg = lqs.simulate_trace(FAST, M=M_FAST, chunk=CHUNK, lam=20.0, b=bt, steps=512, key=jax.random.key(2))
    expect = 0.01 + 2e-5 * df.prefill_tokens + 5e-4 * df.decode_tokens + 1e-6 * df.mem
    np.testing.assert_allclose(df.b, expect, rtol=1e-5)
    assert df.b.nunique() > 10
    assert int(st.violations) == 0


def test_latency_histograms_are_consistent():
    res = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=0.7 * CAP.mu_rps, b=B, replicas=8, steps=8_000, warmup=1_000,
                       key=jax.random.key(5))
    d = res.replicas
    assert (d.latency_n > 100).all()
    assert (res.hist.sum(-1) == d.latency_n.to_numpy()[None, :, None]).all()
    assert (d.wait_p50_s <= d.wait_p99_s).all()
    assert (d.wait_mean_s <= d.ttft_mean_s).all() and (d.ttft_mean_s <= d.e2e_mean_s).all()
    # every request spends at least its k + o steps (≥ 20 here) being served
    assert (d.e2e_p50_s >= 20 * B).all()
    assert res.summary.latency_reliable.all()
    # waiting is at least the remainder of the arrival step: positive
    assert (d.wait_mean_s > 0).all()


def test_result_tables_and_files(tmp_path):
    res = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=[5.0, 12.0], b=B, replicas=3, steps=2_000, warmup=500,
                       key=jax.random.key(9))
    assert len(res.replicas) == 6 and len(res.summary) == 2
    for col in ("lam_rps", "mu_rps", "mu_exact_rps", "mu_stable_rps", "b_s", "wait_p99_s", "ttft_p99_s",
                "throughput_rps", "p_unstable", "reliable"):
        assert col in res.summary.columns
    files = res.save(tmp_path / "run")
    names = {p.split("/")[-1] for p in files}
    assert {"replicas.csv", "summary.csv", "config.json", "series.npz", "waiting.png"} <= names
    assert res.series_waiting.shape[:2] == (2, 3) and res.series_waiting.shape[2] <= 1000


@pytest.mark.slow
def test_paper_pd11_critical_rate():
    """SPEC reference: pd-1:1 at M = 131,000 saturates at ≈ 0.996·μ_exact; λ* must lie in [3.18, 3.27]."""
    c = lqs.critical(lqs.preset("pd-1:1"), M=131000, chunk=512, b=0.0372, replicas=64, grid_points=0)
    assert 3.18 <= c.summary["lam_star_rps"] <= 3.27
    assert c.summary["reliable"]


def test_stops_early_once_every_replica_is_clearly_unstable():
    res = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=3 * CAP.mu_rps, b=B, replicas=4, steps=200_000, warmup=1_000,
                       key=jax.random.key(1), stop_when_settled=True)
    assert res.config["stopped_early"] and res.config["steps_run"] < 200_000
    assert (res.summary.p_unstable == 1.0).all()
    stable = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=0.5 * CAP.mu_rps, b=B, replicas=4, steps=60_000,
                          warmup=1_000, key=jax.random.key(1), stop_when_settled=True)
    assert not stable.config["stopped_early"] and stable.config["steps_run"] >= 60_000


def test_phased_schedule_switches_rate_and_lengths():
    small = lqs.Independent(lqs.Constant(10), lqs.Constant(10))
    big = lqs.Independent(lqs.Constant(300), lqs.Constant(40))
    df, st, cfg = lqs.simulate_trace(None, M=M_FAST, chunk=CHUNK, lam=None, b=B, steps=2048, key=jax.random.key(4),
                                     phases=[(16.0, 10.0, small), (16.0, 2.0, big), (1.0, 0.0, small)])
    t = df.t_start_s.to_numpy()
    pre = df.prefill_tokens.to_numpy()
    a_ = df.arrivals.to_numpy()
    first = (t < 15.0) & (pre > 0)
    assert first.any() and (pre[first] % 10 == 0).all() and pre[first].max() < 300
    second = (t > 18.0) & (t < 31.0) & (pre > 0)
    assert second.any() and (pre[second] % 300 == 0).all()
    # arrival rates follow the phases (10/s, 2/s, then 0/s)
    assert abs(a_[t < 16].sum() / 16 - 10) < 3 and abs(a_[(t >= 16) & (t < 32)].sum() / 16 - 2) < 1.5
    assert a_[t >= 33].sum() == 0
    assert int(st.violations) == 0
    res = lqs.simulate(None, M=M_FAST, chunk=CHUNK, lam=None, b=B, replicas=2, steps=3_000, warmup=500,
                       phases=[(20.0, 8.0, small), (20.0, 2.0, big)], key=jax.random.key(4))
    assert res.reliable and abs(res.summary.lam_rps[0] - 5.0) < 1e-9
    with pytest.raises(lqs.LqsError):
        lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=3.0, b=B, phases=[(1.0, 1.0, small)])


def test_cluster_round_robin_routes_evenly_and_keeps_invariants():
    df, st, cfg = lqs.simulate_trace(FAST, M=M_FAST, chunk=CHUNK, lam=4 * 0.9 * CAP.mu_exact_rps, b=B, steps=2048,
                                     servers=4, routing="round_robin", key=jax.random.key(8))
    arr = np.asarray(st.servers.arrivals)
    assert arr.max() - arr.min() <= 1 and arr.sum() == df.arrivals.sum()
    assert int(np.asarray(st.servers.violations).sum()) == 0
    assert (np.asarray(st.servers.t) == np.asarray(st.servers.t)[0]).all()  # lock-step clock
    assert (df.mem <= 4 * M_FAST).all()


@pytest.mark.parametrize("routing", ["random", "jsq", "least_kv"])
def test_cluster_routings_conserve_requests(routing):
    df, st, cfg = lqs.simulate_trace(FAST, M=M_FAST, chunk=CHUNK, lam=3 * CAP.mu_exact_rps, b=B, steps=1024,
                                     servers=3, routing=routing, key=jax.random.key(9))
    sv = st.servers
    arr = np.asarray(sv.arrivals)
    assert arr.sum() == df.arrivals.sum() and (arr > 0).all()
    in_sys = arr - np.asarray(sv.completions)
    assert int(np.asarray(sv.violations).sum()) == 0 and (in_sys >= 0).all()


def test_cluster_saturation_in_band_and_jsq_beats_random():
    G = 4
    sat = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=1.4 * G * CAP.mu_rps, b=B, replicas=8, steps=10_000,
                       warmup=2_000, servers=G, key=jax.random.key(10))
    s = sat.summary.iloc[0]
    assert s.mu_exact_rps == pytest.approx(G * CAP.mu_exact_rps, rel=1e-6)
    se = s.throughput_cv_se_rps
    assert G * CAP.mu_exact_rps * (1 - CAP.delta) - 4 * se <= s.throughput_cv_rps <= G * CAP.mu_exact_rps + 4 * se
    assert sat.reliable and s.p_unstable == 1.0
    lam = 0.9 * G * CAP.mu_exact_rps
    waits = {}
    for routing in ("random", "jsq"):
        r = lqs.simulate(FAST, M=M_FAST, chunk=CHUNK, lam=lam, b=B, replicas=8, steps=10_000, warmup=2_000,
                         servers=G, routing=routing, key=jax.random.key(10))
        waits[routing] = float(r.summary.wait_mean_s.iloc[0])
    assert waits["jsq"] < waits["random"], waits

"""Properties of the Monte Carlo engine: theory bounds, invariants, verdicts, determinism, one compilation."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

import lqs
from lqs import engine as E
from lqs.engine.verdict import saturating_rate

from shapes import B_FAST as B
from shapes import CHUNK_FAST as CHUNK
from shapes import FAST, K_FAST, M_FAST

pytestmark = pytest.mark.xdist_group("engine_properties")  # one worker: its module fixtures run once

SRV = lqs.Server(M=M_FAST, prefill_chunk=CHUNK, b=B)
CAP = lqs.capacity(FAST, SRV)

POLICIES = ("swap", "recompute", "reserve")


@pytest.fixture(scope="module")
def saturated():
    """Per policy, two runs of one program (32 lanes; 16 for reserve): saturation (λ = 1.5 μ, 32 trials), then the
    finite-horizon backlog test at 0.8× and 1.2× a reference rate (16 trials each): μ_exact(1−δ) and μ_exact for swap and
    recompute, the measured saturation throughput for reserve (which saturates well below μ_exact(1−δ))."""
    out, backlog = {}, {}
    for i, pol in enumerate(POLICIES):
        srv = SRV.replace(policy=pol)
        n = 16 if pol == "reserve" else 32  # reserve: 16 lanes, the program of test_studies' delta study
        out[pol] = lqs.simulate(FAST, srv, 1.5 * CAP.mu_rps, trials=n, steps=10_000, warmup=3_000, K=K_FAST,
                                key=jax.random.key(100 + i), verdict=False)
        if pol == "reserve":
            lo = hi = _cv(out[pol])[0]
        else:
            lo, hi = CAP.mu_exact_rps * (1 - CAP.delta), CAP.mu_exact_rps
        backlog[pol] = lqs.simulate(FAST, srv, [0.8 * lo, 1.2 * hi], trials=n // 2, steps=10_000, warmup=2_000,
                                    K=K_FAST, key=jax.random.key(11 + i), verdict=False)
    return out, backlog


def _cv(res):
    s = res.summary.iloc[0]
    return float(s.throughput_cv_rps), float(s.throughput_cv_se_rps)


def test_swap_saturation_throughput_in_theory_band(saturated):
    saturated = saturated[0]
    mu, se = _cv(saturated["swap"])
    lo, hi = CAP.mu_exact_rps * (1 - CAP.delta), CAP.mu_exact_rps
    assert lo - 4 * se <= mu <= hi + 4 * se, (lo, mu, hi, se)
    # the raw throughput agrees with the control-variate estimate within its own noise
    s = saturated["swap"].summary.iloc[0]
    assert abs(s.throughput_rps - mu) < 4 * s.throughput_se_rps


def test_recompute_and_reserve_below_swap(saturated):
    saturated = saturated[0]
    f, fse = _cv(saturated["swap"])
    for pol in ("recompute", "reserve"):
        x, xse = _cv(saturated[pol])
        assert x < f - 4 * math.hypot(fse, xse), (pol, x, f)


@pytest.mark.parametrize("pol", POLICIES)
def test_invariants_hold_in_saturation(saturated, pol):
    res = saturated[0][pol]
    d = res.trials
    assert (d.violations == 0).all()  # memory ≤ M, conservation and (swap) memory-work = g_exact, in-kernel
    assert (d.mem_max_tokens <= M_FAST).all()
    assert (d.arrivals == d.completions + d.in_system_final).all()
    assert (d.starved_steps == 0).all() and (d.arrival_cap_hits == 0).all()
    assert res.reliable
    assert (d.waiting_final > 0).all()  # saturated: a backlog in every trial
    assert (d.backlog_grew).all()
    if pol == "reserve":
        assert (d.swaps == 0).all()
    else:
        assert (d.swaps > 0).all()
    # memory is well used in saturation: above M(1−δ) on average for swap (docs/model.md)
    if pol == "swap":
        assert (d.mem_util > 1 - CAP.delta).all()


def test_paper_workload_at_reduced_M_in_band():
    w = lqs.preset("pd-1:1")
    srv = lqs.Server(M=16384, prefill_chunk=512, b=0.0372)
    cap = lqs.capacity(w, srv)
    # 10 trials at K = 96: the program of test_verdict's pd-1:1 saturation runs
    res = lqs.simulate(w, srv, 1.5 * cap.mu_rps, trials=10, steps=24_000, warmup=4_000, K=96, key=jax.random.key(7),
                       verdict=False)
    mu, se = _cv(res)
    assert cap.mu_exact_rps * (1 - cap.delta) - 4 * se <= mu <= cap.mu_exact_rps + 4 * se
    assert res.reliable and (res.trials.violations == 0).all()


@pytest.mark.parametrize("pol", POLICIES)
def test_backlog_growth_seen_right_far_from_the_boundary(saturated, pol):
    """The finite-horizon test (p_backlog_grows) is right in every trial at 0.8× and 1.2× the rate where the
    policy saturates: μ_exact(1−δ) and μ_exact for swap and recompute, reserve's own saturation throughput."""
    p = saturated[1][pol].summary.p_backlog_grows.to_numpy()
    assert p[0] <= 0.01 and p[1] >= 0.99, (pol, p)


def test_same_seed_same_results_other_seed_differs():
    kw = dict(trials=4, steps=3_000, warmup=500, K=K_FAST)
    a = lqs.simulate(FAST, SRV, [5.0, 12.0], key=jax.random.key(3), **kw, verdict=False)
    b = lqs.simulate(FAST, SRV, [5.0, 12.0], key=jax.random.key(3), **kw, verdict=False)
    c = lqs.simulate(FAST, SRV, [5.0, 12.0], key=jax.random.key(4), **kw, verdict=False)
    d = lqs.simulate(FAST, SRV, [5.0, 12.0], seed=4, **kw, verdict=False)  # seed= is jax.random.key(seed)
    cols = ["arrivals", "completions", "swaps", "throughput_rps", "wait_p99_s", "mem_mean_tokens"]
    assert a.trials[cols].equals(b.trials[cols])
    np.testing.assert_array_equal(a.series_waiting, b.series_waiting)
    assert not a.trials[cols].equals(c.trials[cols])
    assert c.trials[cols].equals(d.trials[cols])
    # trials are independent streams
    assert a.trials.arrivals.nunique() > 1


def test_changing_values_does_not_recompile():
    mc = lqs.MonteCarlo(trials=4, steps=2_000, warmup=500, K=K_FAST)
    lqs.simulate(FAST, SRV, [4.0, 9.0], mc, verdict=False)
    n = E.TRACE_COUNT["run_call"]
    lqs.simulate(FAST, SRV.replace(M=4000, b=0.021), [5.0, 8.5], mc, verdict=False)
    lqs.simulate(lqs.Independent(lqs.IntUniform(20, 150), lqs.IntUniform(5, 180)), SRV.replace(M=3500, b=0.019),
                 [3.0, 6.0], mc, verdict=False)
    assert E.TRACE_COUNT["run_call"] == n


@pytest.mark.parametrize("server,lam,mc,param", [
    (dict(M=0), 5.0, {}, "M"), ({}, -1.0, {}, "lam"), (dict(policy="lifo"), 5.0, {}, "policy"),
    ({}, 5.0, dict(trials=0), "trials"), ({}, 5.0, dict(replicas=2), "replicas"),
    (dict(token_budget=100), 5.0, {}, "token_budget"), (dict(b=0.0), 5.0, {}, "b"), (dict(M=300), 5.0, {}, "lengths"),
    ({}, 5.0, dict(steps=100, warmup=100), "steps"), (dict(prefill_chunk=0), 5.0, {}, "prefill_chunk"),
    ({}, 5.0, dict(K=4), "K"), ({}, None, {}, "lam"), ({}, 81 / B, {}, "lam"), ({}, 5.0, dict(path="gpu"), "path"),
])
def test_bad_input_fails_before_compiling(server, lam, mc, param):
    n = E.TRACE_COUNT["run_call"]
    with pytest.raises(lqs.LqsError) as e:
        srv = lqs.Server(**{**dict(M=M_FAST, prefill_chunk=CHUNK, b=B), **server})
        lqs.simulate(FAST, srv, lam, **{**dict(trials=2, steps=1000, warmup=100), **mc})
    assert e.value.param == param
    assert E.TRACE_COUNT["run_call"] == n


def test_a_workload_name_is_an_lqs_error_not_an_attribute_error():
    for call in (lambda: lqs.simulate("pd-1:1", SRV, 1.0), lambda: lqs.critical("pd-1:1", SRV),
                 lambda: lqs.auto_steps("pd-1:1", SRV)):
        with pytest.raises(lqs.LqsError) as e:
            call()
        assert e.value.param == "workload"


def test_arrivals_per_step_limit_is_stated_before_compiling():
    srv = lqs.Server(M=4096, prefill_chunk=512, b=1.0)
    tiny = lqs.Independent(lqs.Constant(1), lqs.Constant(1))
    n = E.TRACE_COUNT["run_call"]
    with pytest.raises(lqs.LqsError) as e:
        lqs.simulate(tiny, srv, 81.0, trials=2, steps=256, warmup=0)
    assert e.value.param == "lam" and "80" in str(e.value) and E.TRACE_COUNT["run_call"] == n


@pytest.mark.slow
def test_arrivals_per_step_limit_is_real():
    # λ·b = 80 expected arrivals per step is the largest allowed, and the draws there still have the right mean
    srv = lqs.Server(M=4096, prefill_chunk=512, b=1.0)
    tiny = lqs.Independent(lqs.Constant(1), lqs.Constant(1))
    df, st, cfg = lqs.step_log(tiny, srv, 80.0, steps=256, key=jax.random.key(3))
    a = df.arrivals.to_numpy()
    assert abs(a.mean() - 80.0) < 4 * np.sqrt(80.0 / a.size), a.mean()
    assert int(st.limits.arr_trunc) == 0
    with pytest.raises(lqs.LqsError) as e:
        lqs.step_log(tiny, srv, 81.0, steps=64)
    assert e.value.param == "lam" and "80" in str(e.value)


def test_too_few_slots_is_reported_unreliable():
    res = lqs.simulate(FAST, SRV, 1.5 * CAP.mu_rps, trials=2, steps=2_000, warmup=500, K=16, key=jax.random.key(0), verdict=False)
    s = res.summary.iloc[0]
    assert s.starved_steps > 0 and not s.reliable and not res.reliable


def test_iid_batch_times_follow_renewal_reward():
    # with i.i.d. batch times the saturation rate is μ computed with the *mean* batch time
    bt = lqs.LogNormalBatch.from_mean_cv(B, 1.0)
    # 16 trials at K = 160 and 1.3·μ_exact: the program of test_studies' b_error saturation runs
    res = lqs.simulate(FAST, SRV.replace(b=bt), saturating_rate(FAST, SRV.replace(b=bt)), trials=16, steps=12_000,
                       warmup=3_000, K=K_FAST, key=jax.random.key(21), verdict=False)
    mu, se = _cv(res)
    cap = lqs.capacity(FAST, SRV.replace(b=bt.mean_s))
    assert cap.mu_exact_rps * (1 - cap.delta) - 4 * se <= mu <= cap.mu_exact_rps + 4 * se
    assert res.reliable


def test_affine_batch_time_depends_on_the_batch():
    bt = lqs.AffineBatch(0.01, 2e-5, 5e-4, 1e-6)
    df, st, cfg = lqs.step_log(FAST, SRV.replace(b=bt), 20.0, steps=512, key=jax.random.key(2))
    expect = 0.01 + 2e-5 * df.prefill_tokens + 5e-4 * df.decode_tokens + 1e-6 * df.mem
    np.testing.assert_allclose(df.b, expect, rtol=1e-5)
    assert df.b.nunique() > 10
    assert int(st.limits.violations) == 0


def test_latency_histograms_are_consistent():
    res = lqs.simulate(FAST, SRV, 0.7 * CAP.mu_rps, trials=4, steps=8_000, warmup=1_000, K=K_FAST,
                       key=jax.random.key(5), verdict=False)
    d = res.trials
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
    res = lqs.simulate(FAST, SRV, [5.0, 12.0], trials=4, steps=2_000, warmup=500, K=K_FAST, key=jax.random.key(9))
    assert len(res.trials) == 8 and len(res.summary) == 2
    assert list(res.trials.trial) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert (res.summary.policy == "swap").all() and (res.summary.prefill_chunk_tokens == CHUNK).all()
    np.testing.assert_allclose(res.summary.rho, res.summary.lam_rps / CAP.mu_rps)
    for col in ("lam_rps", "mu_rps", "mu_exact_rps", "mu_stable_rps", "b_s", "wait_p99_s", "ttft_p99_s",
                "throughput_rps", "p_backlog_grows", "verdict", "verdict_basis", "lam_star_rps", "lam_star_lo_rps",
                "lam_star_hi_rps", "reliable"):
        assert col in res.summary.columns
    files = res.save(tmp_path / "run")
    names = {p.split("/")[-1] for p in files}
    assert {"trials.csv", "summary.csv", "config.json", "series.npz", "waiting.png"} <= names
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())  # strict JSON: no bare NaN
    assert cfg["server"]["prefill_chunk_tokens"] == CHUNK and cfg["monte_carlo"]["trials"] == 4
    assert res.series_waiting.shape[:2] == (2, 4) and res.series_waiting.shape[2] <= 1000


@pytest.mark.slow
def test_paper_pd11_critical_rate():
    """Reference: pd-1:1 at M = 131,000 saturates at ≈ 0.996·μ_exact; λ* must lie in [3.18, 3.27]."""
    c = lqs.critical(lqs.preset("pd-1:1"), lqs.Server(M=131000, prefill_chunk=512, b=0.0372), trials=64,
                     grid_points=0)
    assert 3.18 <= c.summary["lam_star_rps"] <= 3.27
    assert c.summary["reliable"]


def test_stops_early_once_every_trial_is_clearly_unstable():
    res = lqs.simulate(FAST, SRV, 3 * CAP.mu_rps, trials=4, steps=60_000, warmup=1_000, K=K_FAST,
                       key=jax.random.key(1), stop_when_settled=True, verdict=False)
    assert res.config["stopped_early"] and res.config["steps_run"] < 60_000
    assert (res.summary.p_backlog_grows == 1.0).all()
    stable = lqs.simulate(FAST, SRV, 0.5 * CAP.mu_rps, trials=4, steps=60_000, warmup=1_000, K=K_FAST,
                          key=jax.random.key(1), stop_when_settled=True, verdict=False)
    assert not stable.config["stopped_early"] and stable.config["steps_run"] >= 60_000


def test_phased_schedule_switches_rate_and_lengths():
    small = lqs.Independent(lqs.Constant(10), lqs.Constant(10))
    big = lqs.Independent(lqs.Constant(300), lqs.Constant(40))
    df, st, cfg = lqs.step_log(None, SRV, None, steps=2048, key=jax.random.key(4),
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
    assert int(st.limits.violations) == 0
    res = lqs.simulate(None, SRV, None, trials=2, steps=3_000, warmup=500,
                       phases=[(20.0, 8.0, small), (20.0, 2.0, big)], key=jax.random.key(4), verdict=False)
    assert res.reliable and abs(res.summary.lam_rps[0] - 5.0) < 1e-9
    with pytest.raises(lqs.LqsError):
        lqs.simulate(FAST, SRV, 3.0, phases=[(1.0, 1.0, small)], verdict=False)


def test_cluster_round_robin_routes_evenly_and_keeps_invariants():
    # 3 servers, 1,024 steps, K = 128: the routing tests below share this program (the routing rule is traced)
    df, st, cfg = lqs.step_log(FAST, SRV.replace(servers=3, routing="round_robin"), 3 * 0.9 * CAP.mu_exact_rps,
                               steps=1024, K=128, key=jax.random.key(8))
    arr = np.asarray(st.servers.counters.arrivals)
    assert arr.max() - arr.min() <= 1 and arr.sum() == df.arrivals.sum()
    assert int(np.asarray(st.servers.limits.violations).sum()) == 0
    assert (np.asarray(st.servers.clock.t) == np.asarray(st.servers.clock.t)[0]).all()  # lock-step clock
    assert (df.mem <= 3 * M_FAST).all()


@pytest.mark.parametrize("routing", [pytest.param("random", marks=pytest.mark.slow), "jsq", "least_kv"])
def test_cluster_routings_conserve_requests(routing):
    df, st, cfg = lqs.step_log(FAST, SRV.replace(servers=3, routing=routing), 3 * CAP.mu_exact_rps, steps=1024,
                               K=128, key=jax.random.key(9))
    sv = st.servers
    arr = np.asarray(sv.counters.arrivals)
    assert arr.sum() == df.arrivals.sum() and (arr > 0).all()
    in_sys = arr - np.asarray(sv.counters.completions)
    assert int(np.asarray(sv.limits.violations).sum()) == 0 and (in_sys >= 0).all()


@pytest.mark.slow  # clusters: the round-robin and routing tests here, test_studies' cluster study
def test_cluster_saturation_in_band():
    G = 4
    # random routing, 8 trials, K = 160: the program of test_studies' cluster study (round robin is checked above)
    sat = lqs.simulate(FAST, SRV.replace(servers=G, routing="random"), 1.4 * G * CAP.mu_rps, trials=8, steps=10_000,
                       warmup=2_000, K=K_FAST, key=jax.random.key(10), verdict=False)
    s = sat.summary.iloc[0]
    assert s.mu_exact_rps == pytest.approx(G * CAP.mu_exact_rps, rel=1e-6)
    se = s.throughput_cv_se_rps
    assert G * CAP.mu_exact_rps * (1 - CAP.delta) - 4 * se <= s.throughput_cv_rps <= G * CAP.mu_exact_rps + 4 * se
    assert sat.reliable and s.p_backlog_grows == 1.0

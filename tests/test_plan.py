"""lqs.plan: the per-window count agrees with study slo, the verification run conserves requests across scale-downs
and reports the backlog a scale-up lag lets build, and bad load curves get one-line errors."""

import jax
import numpy as np
import pandas as pd
import pytest

import lqs
from lqs.planning._verify import day_instants, route, schedule
from lqs.studies import slo_servers

SRV = lqs.Server(M=16_384, prefill_chunk=512, b=0.0372)
WL = lqs.preset("pd-1:1")
MC = lqs.MonteCarlo(trials=4, steps=3000, warmup=500, seed=0)


def sim_K(res):
    return int(res.verification.results[0].config["sizing"]["K"])


def curve(rates, width=20.0):
    return pd.DataFrame(dict(time_s=np.arange(len(rates)) * width, rate_rps=rates))


def test_plan_count_equals_study_slo():
    mu = lqs.capacity(WL, SRV).mu_rps
    lam = 3.3 * mu
    slo = slo_servers(WL, SRV, MC, lam=lam, target_s=1.5, metric="ttft_p99_s")
    assert slo.meta["servers_slo"] is not None
    # candidates covering study slo's whole range: the same rule on the same keys gives the same count
    full = lqs.plan(curve([lam, 0.8 * lam]), SRV, "ttft_p99_s<=1.5", workload=WL, mc=MC, verify=False,
                    candidates=64)
    assert int(full.windows.servers_sim[0]) == slo.meta["servers_slo"]
    # the closed-form column is the paper's rule at ρ = 0.9
    assert int(full.windows.servers_closed_form[0]) == lqs.servers_needed(lam, mu, 0.9)


@pytest.mark.slow
def test_plan_default_candidates_agree_with_study_slo_where_it_examines():
    mu = lqs.capacity(WL, SRV).mu_rps
    lam = 3.3 * mu
    slo = slo_servers(WL, SRV, MC, lam=lam, target_s=1.5, metric="ttft_p99_s")
    # the default examines fewer counts above the first that qualifies: never more servers than study slo's,
    # and the count it gives is one study slo found stable and within the SLO (same keys, same figure)
    res = lqs.plan(curve([lam, 0.8 * lam]), SRV, "ttft_p99_s<=1.5", workload=WL, mc=MC, verify=False)
    g = int(res.windows.servers_sim[0])
    assert 0 < g <= slo.meta["servers_slo"]
    row = slo.data[slo.data.servers == g].iloc[0]
    assert row.ttft_p99_s <= 1.5 and row.verdict == "stable"
    assert row.ttft_p99_s == pytest.approx(float(res.windows.ttft_p99_s_at_servers[0]), rel=1e-6)


def test_verification_conserves_across_scale_downs():
    mu = lqs.capacity(WL, SRV).mu_rps
    res = lqs.plan(curve([3.0 * mu, 0.7 * mu, 2.5 * mu]), SRV, "rho<=0.85", workload=WL, mc=MC, verify_trials=2)
    w, t = res.windows, res.totals
    assert w.servers[1] < w.servers[0] and w.servers[2] > w.servers[1]  # a scale-down, then up again
    assert t["verify_conserved"] and t["verify_violations"] == 0 and t["verify_reliable"]
    assert t["verify_arrivals"] == int(w.verify_arrivals.sum())
    assert t["verify_K"] >= 64 and sim_K(res) == t["verify_K"]  # the slots the day ran with, reported
    # the per-window latency histograms hold every counted request once
    sim = res.verification.results[0]
    assert np.array_equal(sim.phase_hist.sum(axis=2), sim.hist)


def test_scale_up_delay_longer_than_ramp_reports_backlog():
    mu = lqs.capacity(WL, SRV).mu_rps
    rates = [0.6 * mu, 0.6 * mu, 4.0 * mu, 4.0 * mu]
    res = lqs.plan(curve(rates), SRV, "rho<=0.85", workload=WL, mc=MC, scale_up_delay_s=30.0, verify_trials=1)
    t = res.totals
    assert 2 in t["verify_lag_windows"]  # the ramp's servers arrive 30 s into a 20 s window
    assert res.windows.verify_backlog_end[2] > res.windows.verify_backlog_end[1]
    assert t["provision_ahead_windows"] == 2 and t["provision_ahead_removes_lag"]
    # without the delay no window lags
    res0 = lqs.plan(curve(rates), SRV, "rho<=0.85", workload=WL, mc=MC, verify_trials=1)
    assert res0.totals["verify_lag_windows"] == []


def test_schedule_and_routing():
    req, iv = schedule([1, 3, 3, 1], 0, 5.0, 10.0)
    assert list(req) == [1, 3, 3, 1]
    assert iv[0] == [(0.0, 40.0)] and iv[1] == [(15.0, 30.0)] and iv[2] == [(15.0, 30.0)]
    t = np.array([1.0, 12.0, 16.0, 17.0, 18.0, 35.0])
    k, A = route(t, iv)
    assert list(A) == [1, 1, 3, 3, 3, 1] and list(k) == [0, 0, 2, 0, 1, 0]


def test_day_instants_follow_the_curve():
    import jax

    c = lqs.load_curve(curve([50.0, 5.0, 0.0, 20.0], 100.0))
    t = day_instants(c, c.rate_rps, "gamma", 0.5, 1.0, jax.random.key(3))
    n = np.bincount((t // 100).astype(int), minlength=4)
    assert n[2] == 0 and abs(n[0] - 5000) < 600 and abs(n[3] - 2000) < 400 and np.all(np.diff(t) >= 0)


@pytest.mark.parametrize("df, param, what", [
    (pd.DataFrame(dict(time_s=[], rate_rps=[])), "load", "at least one window"),
    (curve([1.0, -2.0]), "load", "≥ 0"),
    (pd.DataFrame(dict(time_s=[0.0, 20.0, 10.0], rate_rps=[1.0, 1.0, 1.0])), "load", "increasing"),
    (curve([1.0, 1.0], 0.01), "window", "one step"),
])
def test_bad_curves(df, param, what):
    with pytest.raises(lqs.LqsError) as e:
        lqs.plan(df, SRV, "rho<=0.8", workload=WL, mc=MC, verify=False)
    assert e.value.param == param and what in str(e.value) and "\n" not in str(e.value)


def test_slo_parse():
    assert lqs.Slo.parse("ttft_p99<=2s") == lqs.Slo("ttft_p99_s", 2.0)
    assert lqs.Slo.parse("rho<=0.8").metric == "rho"
    with pytest.raises(lqs.LqsError):
        lqs.Slo.parse("itl_p99_s<=0.1")
    assert lqs.Slo.parse("tpot_p90<=0.05") == lqs.Slo("tpot_p90_s", 0.05)


def test_cli_plan_json_and_bad_curve(tmp_path):
    import json

    from click.testing import CliRunner

    from lqs.cli import main

    mu = lqs.capacity(WL, SRV).mu_rps
    p = tmp_path / "load.csv"
    curve([2.0 * mu, 1.0 * mu]).to_csv(p, index=False)
    args = ["plan", str(p), "--M", "16384", "--chunk", "512", "--b", "0.0372", "--workload", "pd-1:1",
            "--slo", "rho<=0.85", "--trials", "4", "--steps", "3000", "--warmup", "500", "--verify-trials", "1"]
    r = CliRunner().invoke(main, args + ["--json", "--out", str(tmp_path / "out")])
    bad = CliRunner().invoke(main, args + ["--window-lengths"])  # a (time, rate) curve has no requests
    assert bad.exit_code != 0 and "window_lengths" in bad.output
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert len(doc["windows"]) == 2 and doc["totals"]["verify_conserved"]
    assert (tmp_path / "out" / "plan.png").exists() and (tmp_path / "out" / "windows.parquet").exists()
    bad = tmp_path / "bad.csv"
    pd.DataFrame(dict(time_s=[0.0, 20.0], rate_rps=[1.0, -1.0])).to_csv(bad, index=False)
    r = CliRunner().invoke(main, ["plan", str(bad)] + args[2:])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "load" in r.output


def _two_window_trace(n=300, width=20.0):
    """Short requests in the first window, longer ones in the second, at the same rate."""
    rng = np.random.default_rng(3)
    t = np.sort(np.concatenate([rng.uniform(0, width, n), rng.uniform(width, 2 * width, n)]))
    s = np.concatenate([rng.integers(10, 200, n), rng.integers(200, 400, n)]).astype(np.int32)
    o = np.concatenate([rng.integers(10, 200, n), rng.integers(200, 400, n)]).astype(np.int32)
    return lqs.Trace(s, o, t - t[0], "test", "two-windows"), s, o


def test_window_lengths_follow_each_windows_requests():
    from lqs._workload import PaddedPairs

    tr, s, o = _two_window_trace()
    res = lqs.plan(tr, SRV, "rho<=0.85", window_s=20.0, mc=MC, verify_trials=1, window_lengths=True)
    w = res.windows
    assert len(w) == 2
    win = np.minimum((tr.arrival_s // 20.0).astype(int), 1)
    for k in range(2):  # μ per window: the closed form of that window's own requests
        mu = lqs.capacity(lqs.Pairs(s[win == k], o[win == k]), SRV).mu_rps
        assert w.mu_rps[k] == pytest.approx(mu, rel=1e-9)
    assert w.mu_rps[1] < 0.5 * w.mu_rps[0]
    assert w.servers_closed_form[1] > w.servers_closed_form[0] and w.servers[1] > w.servers[0]
    t = res.totals
    assert t["window_lengths"] and t["verify_conserved"] and t["verify_reliable"] and t["verify_violations"] == 0
    # the whole trace's lengths in every window: one μ for both
    flat = lqs.plan(tr, SRV, "rho<=0.85", window_s=20.0, mc=MC, verify=False)
    assert flat.windows.mu_rps[0] == flat.windows.mu_rps[1]
    # the padded pairs draw what the window's own pairs draw
    u = jax.random.uniform(jax.random.key(1), (4096, 1))
    a = PaddedPairs(s[:7], o[:7], 32).sample_from_uniforms(u)
    b = lqs.Pairs(s[:7], o[:7]).sample_from_uniforms(u)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))

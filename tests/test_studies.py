"""The planner's studies (lqs.studies): each study's headline property on a small, fast case.

Shared case: P/D 1:1 with s, o ~ U{10..200} (δ ≈ 0.098 at M = 4096), ŝ = 512, b̄ = 0.02 s; ≈ 0.22 completions/step.
"""

from __future__ import annotations

import inspect
import math
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import lqs
from lqs import studies as S
from shapes import K_FAST
from lqs.studies.mixture import mixture_theory

FAST = lqs.pd_ratio(1.0, total_hi=400)  # s, o ~ U{10..200}
M, B = 4096, 0.02
SERVER = lqs.Server(M=M, prefill_chunk=512, b=B)
# one slot count K and one horizon: runs with the same number of configurations × trials (128 for the λ grids of
# phase, latency and slo; 16 for the constant-b̄ saturation runs of b_error and mixture) share compiled programs
MC = lqs.MonteCarlo(trials=16, steps=8000, warmup=2000, K=K_FAST)
CAP = lqs.capacity(FAST, SERVER)


def test_public_names():
    for name in S.__all__:
        assert getattr(lqs, name) is getattr(S, name)
    assert S.slo_replicas is S.slo_servers
    assert S.default_server(quick=True).M == 16_384 and S.default_server().M == 131_000
    assert S.default_mc(quick=True).trials == 16 and S.default_mc().steps is None
    for f in (S.phase_diagram, S.b_error, S.delta_study, S.mixture_study, S.cluster_study, S.latency_study,
              S.slo_servers):
        p = list(inspect.signature(f).parameters.values())
        assert [x.name for x in p[:3]] == ["workload", "server", "mc"], f
        assert all(x.kind is x.KEYWORD_ONLY for x in p[3:]), f
        assert {"quick", "seed", "out", "progress"} <= {x.name for x in p}, f


def test_bad_inputs_are_lqs_errors():
    with pytest.raises(lqs.LqsError, match="axis"):
        S.phase_diagram(axis="nonsense")
    with pytest.raises(lqs.LqsError, match="sections"):
        S.b_error(FAST, SERVER, sections=("nonsense",))
    with pytest.raises(lqs.LqsError, match="b_estimator"):
        S.b_error(FAST, SERVER, estimators=("mean", "mode"))
    with pytest.raises(lqs.LqsError, match="replicas"):
        S.latency_study(FAST, SERVER, MC.replace(replicas=4))
    with pytest.raises(lqs.LqsError, match="server"):
        S.latency_study(FAST, "pd-1:1")
    with pytest.raises(lqs.LqsError, match="workload"):
        S.latency_study("pd-1:1", SERVER)
    with pytest.raises(lqs.LqsError, match="workload"):
        S.mixture_study(FAST, SERVER)
    with pytest.raises(lqs.LqsError, match="policies"):
        S.delta_study(FAST, SERVER, policies=("lifo",))


def test_phase_diagram_boundary_curve_one_program_rows_equal_separate_runs(tmp_path):
    """32 rows along the P/D ratio: one compiled saturation program; every row's λ* inside the theorem's band
    [μ_exact(1−δ), μ_exact] (swap); rows equal the same configurations run alone from the same keys; a latency
    layer over the stable region."""
    from lqs import engine as E

    vals = list(np.geomspace(0.25, 4.0, 32))
    n = E.TRACE_COUNT["run_call"]
    res = S.phase_diagram(None, SERVER, MC.replace(trials=4), axis="ratio", values=vals, total_hi=400,
                          latency="ttft_p99_s", n_lam=1, lam_range=(0.8, 0.8), out=str(tmp_path))
    df = res.data
    assert len(df) == 32 and df.reliable.all() and res.meta["saturation_programs"] == 1
    assert E.TRACE_COUNT["run_call"] - n <= 2  # saturation rows + latency cells: one program each
    assert (df.lam_star_lo_rps <= df.mu_exact_rps).all() and (df.lam_star_hi_rps >= df.mu_exact_stable_rps).all()
    assert (df.lam_star_lo_rps < df.lam_star_rps).all() and (df.lam_star_rps < df.lam_star_hi_rps).all()
    assert np.all(np.diff(df.lam_star_rps) > 0)  # longer prompts, shorter outputs: more requests per second here
    for k in ("lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps", "mu_rps", "mu_exact_rps", "mu_stable_rps"):
        assert [r[k] for r in res.meta["rows"]] == pytest.approx(df[k].tolist())
    # rows equal separate runs of the same configurations from the same keys
    from lqs.engine.verdict import saturation

    w = lqs.pd_ratio(vals[17], total_hi=400)
    (alone,), _ = saturation([(w, SERVER.replace(b=SERVER.bs[0]))], MC.replace(trials=4), S.common.key(0))
    assert alone["lam_star_rps"] == df.lam_star_rps[17]
    cells = pd.DataFrame(res.meta["latency_cells"])
    assert len(cells) == 32 and (cells.lam_over_lam_star < 1).all() and np.isfinite(cells.value_s).all()
    assert res.meta["server"]["M_tokens"] == M and res.meta["monte_carlo"]["trials"] == 4
    assert res.png and os.path.getsize(res.png) > 10_000
    assert os.path.isfile(tmp_path / "phase_ratio.csv") and os.path.isfile(tmp_path / "phase_ratio.json")
    df2, png = res  # unpacks as (table, png)
    assert png == res.png and df2 is df


def test_b_error_mean_predicts_lam_star_median_over_predicts(tmp_path):
    models = {"lognormal cv=1": lqs.LogNormalBatch.from_mean_cv(B, 1.0)}
    res = S.b_error(FAST, SERVER, MC, models=models, sections=("closed_form", "iid"), n_samples=1_000_000,
                    out=str(tmp_path))
    df = res.data
    # (a) closed form: μ̂/μ − 1 = −ε/(1+ε)
    cf = df[df.section == "closed_form"]
    assert np.allclose(cf.rel_miss, -cf.b_rel_err / (1 + cf.b_rel_err))
    assert (np.diff(cf.rel_miss.to_numpy()) < 0).all()
    # (b) i.i.d. lognormal batch times
    iid = df[(df.section == "iid") & (df.case == "lognormal cv=1")].set_index("estimator")
    mean, med = iid.loc["mean"], iid.loc["median"]
    ls, se = mean.lam_star_rps, mean.lam_star_se_rps
    # renewal–reward: λ* equals the constant-b̄ system's λ* rescaled by b̄/b̂_mean, within a few standard errors
    assert abs(mean.miss_vs_const_in_se) < 4, mean.to_dict()
    # … and lies in the theory band of μ_exact computed with the mean batch time
    assert mean.mu_exact_hat_rps * (1 - CAP.delta) - 4 * se <= ls <= mean.mu_exact_hat_rps + 4 * se
    assert abs(mean.rel_miss) < 0.05
    # right-skewed: median < mean, so μ(median) over-predicts λ*, by far more than the noise
    assert med.b_hat_s < mean.b_hat_s
    assert med.rel_miss > 0.2 and med.miss_in_se > 10, med.to_dict()
    assert iid.loc["trimmed:0.05"].rel_miss > 0  # trimming the slow tail also over-predicts
    head = res.meta["iid"]["models"]["lognormal cv=1"]["estimators"]["median"]
    assert head["rel_miss"] == pytest.approx(med.rel_miss)
    assert os.path.getsize(res.png) > 10_000


def test_delta_swap_in_band_reserve_below(tmp_path):
    # 2 M values × 8 trials: the swap run shares the compiled 16-trial saturation program of b_error and mixture
    res = S.delta_study(FAST, SERVER, MC.replace(trials=8), deltas=(0.1, 0.3), policies=("fcfs", "reserve"),
                        out=str(tmp_path))
    df = res.data
    assert set(df.policy) == {"swap", "reserve"}  # fcfs is the old name of swap
    assert df.reliable.all() and df.saturated.all()
    assert sorted(df.M_tokens.unique()) == [math.ceil(400 / 0.3), math.ceil(400 / 0.1)]
    f = df[df.policy == "swap"].set_index("M_tokens")
    r = df[df.policy == "reserve"].set_index("M_tokens")
    for m in f.index:
        x = f.loc[m]
        assert x.mu_exact_stable_rps - 4 * x.lam_star_se_rps <= x.lam_star_rps <= x.mu_exact_rps + 4 * x.lam_star_se_rps
        assert bool(x.in_band)
        assert r.loc[m].lam_star_rps < x.lam_star_rps - 4 * math.hypot(x.lam_star_se_rps, r.loc[m].lam_star_se_rps)
    # larger δ: swap loses more to packing
    assert f.sort_values("delta").lam_star_over_mu_exact.is_monotonic_decreasing
    assert res.meta["swap_all_in_band"] and os.path.getsize(res.png) > 10_000


def test_mixture_weights_theory():
    phases = [lqs.pd_ratio(2.0, total_hi=400), lqs.pd_ratio(0.5, total_hi=400)]
    eq = mixture_theory(phases, (1, 1), (0.5, 0.5), SERVER)
    assert eq["mu_mix_count_rps"] == pytest.approx(eq["mu_mix_time_rps"])  # equal rates: count = time weights
    assert eq["mu_time_avg_rps"] > eq["mu_mix_count_rps"]  # arithmetic ≥ harmonic mean, unequal μ_ℓ
    un = mixture_theory(phases, (2, 1), (0.5, 0.5), SERVER)
    assert un["q_count"] == pytest.approx([2 / 3, 1 / 3])
    assert abs(un["mu_mix_count_rps"] / un["mu_mix_time_rps"] - 1) > 0.05
    assert un["mu_mix_count_rps"] == pytest.approx(lqs.mu_mix(un["mu_phases_rps"], [2, 1]))


@pytest.mark.slow  # phased runs: test_engine_properties' phased schedule; μ_mix: the mixture study's theory test
def test_mixture_phased_critical_rate_follows_count_weights(tmp_path):
    phases = [lqs.pd_ratio(2.0, total_hi=400), lqs.pd_ratio(0.5, total_hi=400)]
    res = S.mixture_study(phases, SERVER, MC, lam_ratio=(2, 1), n_load=5, load=(0.85, 1.15), cycles=16,
                          out=str(tmp_path))
    m = res.meta
    count, time_w = m["mu_exact_mix_count_rps"], m["mu_exact_mix_time_rps"]
    x = m["lam_backlog_half_rps"]
    assert np.isfinite(x)
    assert abs(x / count - 1) < 0.06, (x, count, time_w)
    assert abs(x - count) < abs(x - time_w)
    # every phase alone at saturation, combined with count weights: inside the mixture's theory band
    sat = m["lam_star_from_phase_saturation_rps"]
    assert count * (1 - m["delta"]) <= sat <= count * 1.01
    g = res.data[res.data.kind == "phased"]
    assert g.p_backlog_grows.iloc[0] <= 0.1 and g.p_backlog_grows.iloc[-1] >= 0.9
    assert os.path.getsize(res.png) > 10_000


def test_latency_grows_with_rho_and_slo_needs_at_least_stability_count(tmp_path):
    lat = S.latency_study(FAST, SERVER, MC, rhos=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), out=str(tmp_path))
    d = lat.data
    assert d.reliable.all() and (d[d.rho <= 0.8].p_backlog_grows <= 0.1).all()
    # ρ = 0.9 sits at the edge of the guaranteed range (1 − δ ≈ 0.902), where a finite horizon flags a few trials;
    # the long-run verdict, from λ* ≈ 0.99·μ_exact, is stable there
    assert d[d.rho == 0.9].p_backlog_grows.iloc[0] <= 0.25
    assert (d.verdict == "stable").all()
    assert np.allclose(d.lam_rps, d.rho * CAP.mu_rps)  # ρ = λ/μ
    g = d[d.rho.isin([0.5, 0.7, 0.9])]
    assert np.all(np.diff(g.wait_p99_s) > 0) and np.all(np.diff(g.ttft_p99_s) > 0)
    assert (d.ttft_p99_s >= d.wait_p99_s).all() and (d.wait_p50_s <= d.wait_p99_s).all()
    lam = 3.3 * CAP.mu_rps
    slo = S.slo_servers(FAST, SERVER, MC, lam=lam, target_s=0.5, max_servers=10, out=str(tmp_path))
    assert list(slo.data.servers) == list(range(3, 11))
    m = slo.meta
    assert m["servers_stability"] == math.ceil(3.3)
    assert m["servers_rho"] == lqs.servers_needed(lam, CAP.mu_rps, 0.9)
    assert m["servers_slo"] is not None and m["servers_slo"] >= m["servers_stability"]
    assert m["servers_slo"] >= m["servers_rho"]
    row = slo.data.set_index("servers").loc[m["servers_slo"]]
    assert row.value_s <= 0.5 and row.verdict == "stable"
    assert np.allclose(slo.data.rho, lam / (slo.data.servers * CAP.mu_rps))  # the deployment's ρ = λ/(G·μ)
    assert (slo.data[slo.data.servers < m["servers_stability"]].verdict == "unstable").all()  # below ⌈λ/μ⌉
    assert os.path.getsize(lat.png) > 10_000 and os.path.getsize(slo.png) > 10_000


def test_cluster_jsq_waits_less_than_random(tmp_path):
    res = S.cluster_study(FAST, SERVER, lqs.MonteCarlo(trials=8, steps=6000, warmup=1500, K=K_FAST), servers=4,
                          routings=("random", "jsq"), rhos=(0.9,), saturation=False, out=str(tmp_path))
    d = res.data.set_index("routing")
    assert d.reliable.all()
    assert d.mu_rps.iloc[0] == pytest.approx(4 * CAP.mu_rps)  # μ of the whole cluster; ρ = λ/μ
    assert d.lam_rps.iloc[0] == pytest.approx(0.9 * 4 * CAP.mu_rps)
    assert d.loc["jsq", "wait_mean_s"] < 0.6 * d.loc["random", "wait_mean_s"], d[["wait_mean_s", "wait_p99_s"]]
    assert d.loc["jsq", "wait_p99_s"] < d.loc["random", "wait_p99_s"]
    assert os.path.getsize(res.png) > 10_000


def test_cli_study_closed_form_and_errors(tmp_path):
    from lqs.cli import main

    r = CliRunner().invoke(main, ["study", "b-error", "--sections", "closed_form", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert os.path.isfile(tmp_path / "b_error.csv") and os.path.isfile(tmp_path / "b_error.png")
    r = CliRunner().invoke(main, ["study", "b-error", "--sections", "nonsense", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "error:" in r.output
    r = CliRunner().invoke(main, ["study", "--help"])
    assert r.exit_code == 0
    for name in ("phase", "b-error", "delta", "mixture", "cluster", "latency", "slo"):
        assert name in r.output


@pytest.mark.slow  # the affine engine: test_engine_properties' affine test; b̄'s estimators: the i.i.d. b_error test
def test_b_error_affine_mean_at_saturation_predicts_lam_star():
    mc = lqs.MonteCarlo(trials=16, steps=8000, warmup=2000)  # K sized by the study for the affine model
    res = S.b_error(FAST, SERVER, mc, sections=("affine",), affine_ratios=(4.0,), total_hi=400)
    df = res.data.set_index(["case", "estimator"])
    assert df.reliable.all()
    for case in ("P/D 4:1", "P/D 1:1"):
        sat = df.loc[(case, "mean b at saturation (this mix)")]
        d = lqs.pd_ratio(4.0 if case == "P/D 4:1" else 1.0, total_hi=400).max_total / M
        se = sat.lam_star_se_rps
        # renewal–reward: the closed form with b̄ = mean batch time at saturation brackets λ* like a constant b̄
        assert sat.mu_exact_hat_rps * (1 - d) - 4 * se <= sat.lam_star_rps <= sat.mu_exact_hat_rps + 4 * se
        # b̄ measured at a light load is too small: μ over-predicted
        assert df.loc[(case, "mean b at λ ≈ ½λ* (this mix)")].rel_miss > 0.1
    # prefill-heavy mix: a b̄ calibrated on 1:1 is too small (prefill tokens cost time), μ over-predicted
    assert df.loc[("P/D 4:1", "mean b at saturation on 1:1")].rel_miss > 0.05

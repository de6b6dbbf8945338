"""The long-run verdict (docs/model.md, "Two notions of stability"): λ against the saturation throughput λ* of the
same configuration, checked against λ* measured independently (other keys, more trials, a longer horizon); the
theorem's band for swap; verdict bookkeeping (caching, phased runs, critical); one program per group of
configurations that share a shape."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
import pandas as pd
import pytest

import lqs
from lqs import engine as E
from lqs.engine.sizing import Config

pytestmark = pytest.mark.xdist_group("verdict")  # one worker: its module fixtures run once

PD = lqs.preset("pd-1:1")
SRV = lqs.Server(M=16384, prefill_chunk=512, b=0.0372)  # the paper's regime at a reduced cache: δ = 0.195
CAP = lqs.capacity(PD, SRV)
MUE, D = CAP.mu_exact_rps, CAP.delta
# rates from far below to above the band, including 0.95..1 × μ_exact(1−δ), where swap is provably stable
LAMS = [MUE * x for x in (0.6, 0.75)] + [MUE * (1 - D) * x for x in (0.95, 0.975, 0.995)] + [MUE * x for x in (1.03,
                                                                                                               1.1)]
POLICIES = ("swap", "recompute", "reserve")


def _check(res, ref_row, pol):
    s = res.summary
    decided = 0
    for lam, v, lo, hi in zip(s.lam_rps, s.verdict, s.lam_star_lo_rps, s.lam_star_hi_rps):
        assert v in ("stable", "unstable", "undecided")
        assert (v == "stable") == (lam < lo) and (v == "unstable") == (lam > hi)
        # right against the independent measurement of λ*
        if v == "stable":
            assert lam < ref_row["lam_star_hi_rps"], (pol, lam, ref_row)
        if v == "unstable":
            assert lam > ref_row["lam_star_lo_rps"], (pol, lam, ref_row)
        decided += v != "undecided"
    assert decided >= len(s) - 1, (pol, list(s.verdict))
    return s


class _Rows(NamedTuple):
    summary: pd.DataFrame


@pytest.fixture(scope="module")
def verdicts():
    """Each policy at every rate, with its own saturation run; and λ* measured independently (other keys, a longer
    horizon). 10 trials at K = 96, one rate at a time (one saturation run per policy, from the cache): every run
    has the shape of the saturation runs (10 trials) and of test_cli_sim's one-rate policy runs: one program per
    policy."""
    out = {}
    for i, pol in enumerate(POLICIES):
        cache: dict = {}
        parts = [lqs.simulate(PD, SRV.replace(policy=pol), lam, trials=10, steps=9_000, warmup=4_000, K=96,
                              key=jax.random.fold_in(jax.random.key(20 + i), j),
                              verdict=E.Verdict(key=jax.random.key(20 + i), cache=cache)).summary for j, lam in enumerate(LAMS)]
        assert len(cache) == 1
        out[pol] = _Rows(pd.concat(parts, ignore_index=True))
    srvs = [SRV.replace(policy=p, b=SRV.bs[0]) for p in POLICIES]
    rows, _ = E.saturation([(PD, s) for s in srvs], lqs.MonteCarlo(trials=10, steps=14_000, warmup=4_000, K=96),
                           jax.random.key(99))
    return out, dict(zip(POLICIES, rows))


@pytest.mark.parametrize("pol", POLICIES)
def test_long_run_verdict_right_against_independent_saturation(verdicts, pol):
    res, ref = verdicts
    s = _check(res[pol], ref[pol], pol)
    assert (s.verdict_basis.str.startswith("saturation rule")).all()
    assert s.lam_star_rps.nunique() == 1  # one saturation run decides every rate of the configuration


def test_swap_band_and_rates_just_below_the_stable_bound(verdicts):
    s = verdicts[0]["swap"].summary
    lo, hi = float(s.lam_star_lo_rps[0]), float(s.lam_star_hi_rps[0])
    assert lo <= MUE and hi >= MUE * (1 - D)  # the theorem, within the interval
    band = (s.lam_rps >= 0.95 * MUE * (1 - D)) & (s.lam_rps < MUE * (1 - D))
    assert band.sum() == 3 and (s.verdict[band] == "stable").all()


def test_reserve_is_unstable_inside_the_swap_band_and_the_finite_test_disagrees(verdicts):
    """reserve saturates near 0.7·μ_exact: rates in [μ_exact(1−δ), μ_exact) are unstable for it. Below its λ* the
    finite-horizon test still flags trials (long excursions look like growth): it is reported, never the verdict."""
    s = verdicts[0]["reserve"].summary
    assert s.lam_star_hi_rps[0] < MUE * (1 - D)
    assert (s.verdict[s.lam_rps > MUE * (1 - D) * 0.9] == "unstable").all()
    assert "p_unstable" not in s.columns and "p_backlog_grows" in s.columns


def test_saturation_runs_are_cached_and_keyed_by_configuration():
    fast = lqs.Independent(lqs.IntUniform(10, 200), lqs.IntUniform(10, 200))
    srv = lqs.Server(M=4096, prefill_chunk=512, b=[0.02, 0.03])
    mc = lqs.MonteCarlo(trials=4, steps=3_000, warmup=500, K=160)
    cache: dict = {}
    a = lqs.simulate(fast, srv, [4.0, 9.0], mc, key=jax.random.key(1), verdict=E.Verdict(cache=cache))
    assert len(cache) == 2  # two configurations (b̄), four rows
    assert a.summary.groupby("b_s").lam_star_rps.nunique().eq(1).all()
    n = E.TRACE_COUNT["run_call"]
    b = lqs.simulate(fast, srv, [4.0, 9.0], mc, key=jax.random.key(2),
                     verdict=E.Verdict(key=jax.random.key(1), cache=cache))
    assert len(cache) == 2 and E.TRACE_COUNT["run_call"] == n  # same shapes; the saturation runs came from the cache
    assert b.summary.lam_star_rps.tolist() == a.summary.lam_star_rps.tolist()
    assert not b.trials.arrivals.equals(a.trials.arrivals)  # other key, other trials
    # keyed by the configuration, not by what else ran beside it: b̄ = 0.03 run first, beside another b̄, gets
    # the same λ*
    (other, moved), _ = E.saturation([(fast, srv.replace(b=srv.replace(b=0.025).bs[0])), (fast, srv.replace(b=srv.bs[1]))], mc,
                                     jax.random.key(1))
    assert moved["lam_star_rps"] == a.summary[a.summary.b_s == 0.03].lam_star_rps.iloc[0]
    assert other["lam_star_rps"] != moved["lam_star_rps"]


def test_phased_runs_say_the_rule_does_not_apply():
    small = lqs.Independent(lqs.Constant(10), lqs.Constant(10))
    big = lqs.Independent(lqs.Constant(300), lqs.Constant(40))  # the schedule's shapes of test_engine_properties
    res = lqs.simulate(None, lqs.Server(M=4096, prefill_chunk=512, b=0.02), None, trials=2, steps=2_000, warmup=200,
                       phases=[(20.0, 8.0, small), (20.0, 2.0, big)], key=jax.random.key(3))
    s = res.summary.iloc[0]
    assert s.verdict == "n/a" and "phased" in s.verdict_basis and np.isnan(s.lam_star_rps)


def test_critical_grid_verdicts_reuse_its_saturation_run():
    fast = lqs.Independent(lqs.IntUniform(10, 200), lqs.IntUniform(10, 200))
    c = lqs.critical(fast, lqs.Server(M=4096, prefill_chunk=512, b=0.02), trials=8, grid_trials=4, grid_points=4,
                     steps=4_000, warmup=1_000, K=160, key=jax.random.key(5))
    g = c.grid.summary
    assert (g.lam_star_rps == c.summary["lam_star_rps"]).all()
    for lam, v in zip(g.lam_rps, g.verdict):
        assert v == E.verdict_at(c, lam)
    assert c.summary["grid_verdict"] == list(g.verdict)


def test_groups_of_shapes_one_program_each_and_rows_equal_separate_runs():
    """A mixed list of configurations runs as one program per shape (two policies → two), and each row equals the
    same configuration run from its own key beside other configurations. (16 lanes at K = 160: the programs of
    test_engine_properties' and test_studies' 16-lane runs.)"""
    ws = [lqs.pd_ratio(r, total_hi=400) for r in (0.5, 1.0, 2.0, 3.0)]
    base = lqs.Server(M=4096, prefill_chunk=64, b=0.02)
    configs = [Config(w, base.replace(b=base.bs[0], policy=p), 6.0) for p in ("swap", "reserve") for w in ws]
    mc = lqs.MonteCarlo(trials=4, steps=1_024, warmup=256, K=160)
    keys = E.config_keys(jax.random.key(7), len(configs))
    n = E.TRACE_COUNT["run_call"]
    res = E.run_configs(configs, mc, keys=keys)
    assert E.TRACE_COUNT["run_call"] - n <= 2 and len(res.config["programs"]) == 2
    # row 5 (reserve, P/D 1:1) run first, beside three other workloads, from its own key: the same rows (row 17 of a
    # 32-row phase diagram is checked against a run alone in test_studies)
    others = [Config(lqs.pd_ratio(r, total_hi=400), configs[5].server, 6.0) for r in (0.25, 4.0, 6.0)]
    moved = E.run_configs([configs[5]] + others, mc, keys=jax.numpy.concatenate([keys[5:6], keys[:3]]))
    got = res.trials[res.trials.config == 5].drop(columns="config").reset_index(drop=True)
    want = moved.trials[moved.trials.config == 0].drop(columns="config").reset_index(drop=True)
    np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())
    assert not moved.trials[moved.trials.config == 1].arrivals.equals(want.arrivals)


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["pd-1:1", "pd-2:1", "pd-1:2"])
def test_long_run_verdict_right_on_the_paper_regimes_full_size(regime):
    w = lqs.preset(regime)
    srv = lqs.Server(M=131_000, prefill_chunk=512, b=lqs.PAPER_B[regime])
    cap = lqs.capacity(w, srv)
    lams = [cap.mu_exact_rps * (1 - cap.delta) * x for x in (0.95, 0.99)] + [cap.mu_exact_rps * x for x in (0.7, 1.05)]
    rows, _ = E.saturation([(w, srv.replace(policy=p, b=srv.bs[0])) for p in POLICIES],
                           lqs.MonteCarlo(trials=64, steps=40_000, warmup=4_000), jax.random.key(98))
    for pol, ref in zip(POLICIES, rows):
        res = lqs.simulate(w, srv.replace(policy=pol), lams, trials=32, key=jax.random.key(3))
        s = _check(res, ref, pol)
        if pol == "swap":
            assert (s.verdict[:2] == "stable").all()
            assert s.lam_star_lo_rps[0] <= cap.mu_exact_rps and s.lam_star_hi_rps[0] >= cap.mu_exact_stable_rps

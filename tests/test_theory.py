"""Closed-form theory (docs/model.md): Table 1, g vs footprints, μ_mix, replicas, b̄ estimators."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import lqs
from lqs import LqsError
from lqs._theory import g_exact, g_paper, parse_estimator, prefill_steps, trimmed_mean

M_PAPER, CHUNK_PAPER = 131_000, 512


def cap_of(workload, M, prefill_chunk, b, **server):
    return lqs.capacity(workload, lqs.Server(M=M, prefill_chunk=prefill_chunk, b=b, **server))


# ----------------------------------------------------------------------------------------------- Table 1
@pytest.mark.parametrize("name, mu_paper", [("pd-1:1", 3.263), ("pd-2:1", 3.956), ("pd-1:2", 2.902)])
def test_table1_mu_theory_three_decimals(name, mu_paper):
    cap = cap_of(lqs.preset(name), M_PAPER, CHUNK_PAPER, lqs.PAPER_B[name])
    assert round(cap.mu_rps, 3) == mu_paper
    assert cap.exact_moments and cap.mean_g_se_tokens2 == 0.0
    # δ = ess sup(s+o)/M: every paper regime tops out at s+o ≈ 3200 tokens
    assert cap.max_total_tokens in (3199, 3200)
    assert cap.delta == pytest.approx(cap.max_total_tokens / M_PAPER)
    # μ_exact ≤ μ (g_exact ≥ g) but within 0.1% on these regimes
    assert cap.mu_exact_rps <= cap.mu_rps
    assert cap.mu_exact_rps == pytest.approx(cap.mu_rps, rel=1e-3)
    assert cap.mu_stable_rps == pytest.approx(cap.mu_rps * (1 - cap.delta))
    assert cap.mu_exact_stable_rps == pytest.approx(cap.mu_exact_rps * (1 - cap.delta))


def test_pd11_done_criterion():
    cap = cap_of(lqs.preset("pd-1:1"), M_PAPER, CHUNK_PAPER, 0.0372)
    assert abs(cap.mu_rps - 3.263) <= 0.0005
    assert round(cap.delta, 4) == 0.0244
    assert cap.max_total_tokens == 3200
    d = cap.to_dict()
    for k in ("mu_rps", "mu_exact_rps", "mu_stable_rps", "mu_exact_stable_rps", "delta", "mean_g_tokens2",
              "mean_g_exact_tokens2", "b_s", "M_tokens", "prefill_chunk_tokens", "servers", "max_total_tokens"):
        assert k in d


def test_service_rate_formula():
    cap = cap_of(lqs.preset("pd-1:1"), M_PAPER, CHUNK_PAPER, 0.0372)
    assert cap.mu_rps == pytest.approx(M_PAPER / (0.0372 * cap.mean_g_tokens2), rel=1e-12)
    assert cap.mu_exact_rps == pytest.approx(M_PAPER / (0.0372 * cap.mean_g_exact_tokens2), rel=1e-12)
    assert lqs.service_rate(100, 2.0, 5.0) == 10.0
    assert lqs.delta(3200, 131_000) == pytest.approx(0.024427480916)


# ----------------------------------------------------------------------------------------------- g
def footprint_sum(s: int, o: int, chunk: int) -> int:
    """Σ of the step-1 footprints (docs/model.md) over a request's life, advancing it one unit per scheduled step."""
    k = prefill_steps(s, chunk)
    c = d = 0
    total = 0
    while d < o:
        f = min((c + 1) * chunk, s) if c < k else s + d + 1
        total += f
        if c < k:
            c += 1
        else:
            d += 1
    return total


CASES = [(s, o, ch) for ch in (1, 2, 3, 7, 16, 512)
         for s in (1, 2, 3, ch, 2 * ch, 3 * ch, ch + 1, 5 * ch - 1, 1000, 1024, 1600)
         for o in (1, 2, 5, 17, 300)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 512])
def test_g_exact_equals_step_by_step_footprints(chunk):
    for s, o, ch in CASES:
        if ch != chunk:
            continue
        assert g_exact(s, o, ch) == footprint_sum(s, o, ch), (s, o, ch)


def test_g_exact_small_grid_exhaustive():
    for s, o, ch in itertools.product(range(1, 40), range(1, 12), range(1, 13)):
        assert g_exact(s, o, ch) == footprint_sum(s, o, ch)


def test_g_exact_vectorised_and_int64():
    rng = np.random.default_rng(1)
    s = rng.integers(1, 100_000, 500).astype(np.int64)
    o = rng.integers(1, 100_000, 500).astype(np.int64)
    ch = 512
    v = g_exact(s, o, ch)
    assert v.dtype == np.int64
    for i in range(0, 500, 50):
        assert v[i] == g_exact(int(s[i]), int(o[i]), ch)
    # closed form ŝk(k−1)/2 + s + o·s + o(o+1)/2
    k = (s + ch - 1) // ch
    assert np.array_equal(v, ch * k * (k - 1) // 2 + s + o * s + o * (o + 1) // 2)


def test_g_paper_formula_and_relation_to_exact():
    for s, o, ch in CASES:
        gp = g_paper(s, o, ch)
        assert gp == pytest.approx(((1 + s / ch) * s + 2 * o * s + (1 + o) * o) / 2)
        ge = g_exact(s, o, ch)
        assert ge >= gp - 1e-9  # ⌈s/ŝ⌉ ≥ s/ŝ: exact accounting never uses less memory-work
        if s % ch == 0:
            assert ge == pytest.approx(gp, abs=1e-9)  # identical when ŝ divides s


def test_prefill_steps():
    assert [prefill_steps(s, 512) for s in (1, 511, 512, 513, 1024, 1025)] == [1, 1, 1, 2, 2, 3]


# ----------------------------------------------------------------------------------------------- mixtures / servers
def test_mu_mix_paper_halves():
    # with q = 1/2 the mixture formula gives 3.348 for the 2:1 and 1:2 halves
    assert round(lqs.mu_mix([3.956, 2.902], [0.5, 0.5]), 3) == 3.348
    mu21 = cap_of(lqs.preset("pd-2:1"), M_PAPER, CHUNK_PAPER, 0.0430).mu_rps
    mu12 = cap_of(lqs.preset("pd-1:2"), M_PAPER, CHUNK_PAPER, 0.0337).mu_rps
    assert round(lqs.mu_mix([mu21, mu12], [1, 1]), 3) == 3.348


def test_mu_mix_properties():
    assert lqs.mu_mix([2.0], [1.0]) == 2.0
    assert lqs.mu_mix([2.0, 4.0], [1, 1]) == pytest.approx(1 / (0.5 / 2 + 0.5 / 4))
    assert lqs.mu_mix([2.0, 4.0], [3, 1]) == pytest.approx(lqs.mu_mix([2.0, 4.0], [0.75, 0.25]))
    assert lqs.mu_mix([2.0, 4.0], [1, 0]) == pytest.approx(2.0)
    # weighted harmonic mean lies between the extremes
    assert 2.0 < lqs.mu_mix([2.0, 4.0], [1, 2]) < 4.0


def test_mu_mix_matches_mixture_workload_with_common_b():
    parts = [lqs.preset("pd-2:1"), lqs.preset("pd-1:2")]
    for q in ([0.5, 0.5], [0.2, 0.8]):
        mus = [cap_of(p, M_PAPER, CHUNK_PAPER, 0.04).mu_rps for p in parts]
        mix = cap_of(lqs.Mixture(parts, q), M_PAPER, CHUNK_PAPER, 0.04).mu_rps
        assert mix == pytest.approx(lqs.mu_mix(mus, q), rel=1e-6)


@pytest.mark.parametrize("mus, w", [([], []), ([1.0, 2.0], [1.0]), ([0.0, 1.0], [1, 1]), ([1.0, -2.0], [1, 1]),
                                    ([1.0, 2.0], [-1, 1]), ([1.0, 2.0], [0, 0]), ([np.nan, 1.0], [1, 1])])
def test_mu_mix_bad_input(mus, w):
    with pytest.raises(LqsError) as e:
        lqs.mu_mix(mus, w)
    assert e.value.param in ("mus", "weights")


def test_servers_needed():
    assert lqs.servers_needed(20, 3.263, 0.9) == math.ceil(20 / (3.263 * 0.9)) == 7
    assert lqs.servers_needed(0.0, 3.0, 0.9) == 1
    assert lqs.servers_needed(1.0, 3.0, 1.0) == 1
    mu, rho = 3.263217371495933, 0.9
    assert lqs.servers_needed(3 * mu * rho, mu, rho) == 3  # no floating-point bump to 4
    assert lqs.servers_needed(3 * mu * rho * 1.001, mu, rho) == 4


@pytest.mark.parametrize("lam, mu, rho, param", [(-1, 3, 0.9, "lam"), (1, 0, 0.9, "mu"), (1, 3, 0, "rho"),
                                                 (1, 3, 1.5, "rho"), (np.nan, 3, 0.9, "lam"), ("x", 3, 0.9, "lam")])
def test_servers_needed_bad_input(lam, mu, rho, param):
    with pytest.raises(LqsError) as e:
        lqs.servers_needed(lam, mu, rho)
    assert e.value.param == param


# ----------------------------------------------------------------------------------------------- estimators
def hand_trimmed(x, alpha):
    x = sorted(float(v) for v in x)
    cut = int(math.floor(alpha * len(x)))
    kept = x[cut:len(x) - cut]
    return sum(kept) / len(kept)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_estimators_against_numpy(n):
    rng = np.random.default_rng(n)
    x = rng.lognormal(np.log(0.04), 0.3, n)
    assert lqs.estimate_b(x, "mean") == pytest.approx(np.mean(x), rel=1e-12)
    assert lqs.estimate_b(x, "median") == pytest.approx(np.median(x), rel=1e-12)
    for a in (0.0, 0.05, 0.1, 0.25, 0.49):
        assert lqs.estimate_b(x, f"trimmed:{a}") == pytest.approx(hand_trimmed(x, a), rel=1e-12)
        assert trimmed_mean(x, a) == pytest.approx(hand_trimmed(x, a), rel=1e-12)
    assert lqs.estimate_b(x, "trimmed:0") == pytest.approx(np.mean(x), rel=1e-12)


def test_trimmed_mean_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(3).exponential(0.04, 997)
    for a in (0.05, 0.1, 0.2):
        assert lqs.estimate_b(x, f"trimmed:{a}") == pytest.approx(stats.trim_mean(x, a), rel=1e-12)


def test_estimator_default_is_median_and_robust():
    x = [0.03] * 99 + [100.0]
    assert lqs.estimate_b(x) == 0.03
    assert lqs.estimate_b(x, "trimmed:0.05") == pytest.approx(0.03)
    assert lqs.estimate_b(x, "mean") > 1.0
    assert parse_estimator(" Trimmed:0.1 ") == ("trimmed", 0.1)
    assert parse_estimator("trimmed_mean:0.05") == ("trimmed", 0.05)


@pytest.mark.parametrize("est", ["mode", "", "trimmed", "trimmed:", "trimmed:x", "trimmed:0.5", "trimmed:-0.1",
                                 "trimmed:nan", None, 3])
def test_bad_estimator_names(est):
    with pytest.raises(LqsError) as e:
        lqs.estimate_b([0.1, 0.2], est)
    assert e.value.param == "b_estimator"


@pytest.mark.parametrize("x", [[], [0.1, 0.0], [0.1, -1.0], [0.1, np.nan], [np.inf]])
def test_bad_b_samples(x):
    with pytest.raises(LqsError) as e:
        lqs.estimate_b(x, "mean")
    assert e.value.param == "b_samples"


def test_trimming_everything_is_an_error():
    with pytest.raises(LqsError) as e:
        trimmed_mean([1.0, 2.0], 0.5)
    assert e.value.param == "b_estimator"


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("M, chunk, b, param", [
    (0, 512, 0.0372, "M"), (-5, 512, 0.0372, "M"), (1.5, 512, 0.0372, "M"), ("131000", 512, 0.0372, "M"),
    (None, 512, 0.0372, "M"), (True, 512, 0.0372, "M"), (np.nan, 512, 0.0372, "M"),
    (131_000, 0, 0.0372, "prefill_chunk"), (131_000, 2.5, 0.0372, "prefill_chunk"),
    (131_000, "x", 0.0372, "prefill_chunk"),
    (131_000, 512, 0.0, "b"), (131_000, 512, -0.1, "b"), (131_000, 512, np.nan, "b"), (131_000, 512, np.inf, "b"),
    (131_000, 512, "fast", "b"),
    (3199, 512, 0.0372, "lengths"),  # s+o = 3200 > M
])
def test_capacity_bad_input_names_the_parameter(M, chunk, b, param):
    with pytest.raises(LqsError) as e:
        cap_of(lqs.preset("pd-1:1"), M, chunk, b)
    assert e.value.param == param
    msg = str(e.value)
    assert msg.startswith(f"{param}=") and "invalid" in msg
    assert isinstance(e.value, ValueError)  # LqsError is a ValueError


def test_capacity_accepts_integral_floats_and_M_at_the_limit():
    cap = cap_of(lqs.preset("pd-1:1"), 3200.0, 512.0, 0.0372)
    assert cap.M_tokens == 3200 and cap.delta == 1.0 and cap.mu_stable_rps == 0.0


def test_replicas_needed_is_the_old_name_of_servers_needed():
    assert lqs.replicas_needed is lqs.servers_needed


def test_capacity_of_a_cluster_scales_with_servers_and_needs_one_configuration():
    one = cap_of(lqs.preset("pd-1:1"), M_PAPER, CHUNK_PAPER, 0.0372)
    eight = cap_of(lqs.preset("pd-1:1"), M_PAPER, CHUNK_PAPER, 0.0372, servers=8)
    assert eight.servers == 8 and eight.mu_rps == pytest.approx(8 * one.mu_rps)
    assert eight.mu_exact_stable_rps == pytest.approx(8 * one.mu_exact_stable_rps)
    assert eight.rho(eight.mu_rps / 2) == pytest.approx(0.5)
    for field, grid in (("M", [65536, 131000]), ("b", [0.03, 0.04])):
        with pytest.raises(LqsError) as e:
            lqs.capacity(lqs.preset("pd-1:1"), lqs.Server(**{**dict(M=M_PAPER, prefill_chunk=512, b=0.0372),
                                                            field: grid}))
        assert e.value.param == field
    with pytest.raises(LqsError) as e:
        lqs.capacity(lqs.preset("pd-1:1"), lqs.Server(M=M_PAPER, prefill_chunk=512, b=lqs.AffineBatch(0.01, 1e-5)))
    assert e.value.param == "b_theory"
    aff = lqs.capacity(lqs.preset("pd-1:1"), lqs.Server(M=M_PAPER, prefill_chunk=512, b=lqs.AffineBatch(0.01, 1e-5),
                                                        b_theory=0.0372))
    assert aff.mu_rps == pytest.approx(one.mu_rps)

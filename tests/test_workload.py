"""Workloads: exact E[g] against brute-force enumeration, the Monte Carlo path, sampling under jit / vmap."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lqs
from lqs import Constant, Empirical, Independent, IntUniform, LogNormal, LqsError, Mixture, Pairs
from lqs._theory import g_exact, g_paper


# ----------------------------------------------------------------------------------------------- brute force
def brute_force(workload, chunk):
    """(E[g], E[g_exact], E[s], E[o]) by enumerating every (s, o) with its probability (double loop)."""
    eg = ege = es = eo = 0.0
    for q, part in workload.components():
        if isinstance(part, Pairs):
            pairs = list(zip(part.s.tolist(), part.o.tolist()))
            probs = [1.0 / len(pairs)] * len(pairs)
        else:
            vs, ps = part.s.support()
            vo, po = part.o.support()
            pairs, probs = [], []
            for s, p_s in zip(vs.tolist(), ps.tolist()):
                for o, p_o in zip(vo.tolist(), po.tolist()):
                    pairs.append((s, o))
                    probs.append(p_s * p_o)
        for (s, o), p in zip(pairs, probs):
            eg += q * p * g_paper(s, o, chunk)
            ege += q * p * g_exact(s, o, chunk)
            es += q * p * s
            eo += q * p * o
    return eg, ege, es, eo


WORKLOADS = {
    "uniform": lambda: Independent(IntUniform(1, 40), IntUniform(3, 17)),
    "uniform-paperlike": lambda: Independent(IntUniform(10, 130), IntUniform(10, 60)),
    "constant": lambda: Independent(Constant(37), Constant(5)),
    "lognormal": lambda: Independent(LogNormal(3.0, 0.8, 2, 90), LogNormal(2.0, 0.5, 1, 30)),
    "empirical": lambda: Independent(Empirical([5, 9, 9, 33, 64, 64, 64, 100]), Empirical([1, 2, 2, 50])),
    "mixed-marginals": lambda: Independent(LogNormal(3.5, 1.0, 1, 120), Empirical([3, 4, 40])),
    "pairs": lambda: Pairs([5, 17, 64, 100, 3], [9, 1, 64, 2, 33]),
    "mixture": lambda: Mixture([Independent(IntUniform(1, 30), IntUniform(1, 10)),
                                Independent(Empirical([8, 16, 70]), Constant(4)),
                                Pairs([3, 90], [7, 2])], [0.5, 0.3, 0.2]),
}


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_exact_moments_match_brute_force(name, chunk):
    w = WORKLOADS[name]()
    m = w.expected_g(chunk)
    assert m.exact and m.se == 0.0
    eg, ege, es, eo = brute_force(w, chunk)
    assert m.g == pytest.approx(eg, rel=1e-9)
    assert m.g_exact == pytest.approx(ege, rel=1e-9)
    assert m.mean_prompt_tokens == pytest.approx(es, rel=1e-9)
    assert m.mean_output_tokens == pytest.approx(eo, rel=1e-9)
    assert m.g_exact >= m.g - 1e-9


def test_lognormal_support_is_a_distribution():
    v, p = LogNormal(3.0, 0.8, 2, 90).support()
    assert v[0] == 2 and v[-1] == 90 and v.size == 89
    assert p.sum() == pytest.approx(1.0) and np.all(p >= 0)


@pytest.mark.parametrize("name", ["uniform-paperlike", "lognormal", "mixture", "pairs"])
def test_monte_carlo_path_within_4_se_of_exact(name):
    w = WORKLOADS[name]()
    exact = w.expected_g(16)
    mc = w.expected_g(16, method="mc", n_mc=200_000, key=jax.random.key(7))
    assert not mc.exact and mc.se > 0
    assert abs(mc.g_exact - exact.g_exact) <= 4 * mc.se
    # E[g] differs from E[g_exact] by a bounded s-term, so the same tolerance (plus that term's share) applies
    assert abs(mc.g - exact.g) <= 4 * mc.se + 1e-3 * exact.g


def test_paper_preset_moments():
    m = lqs.preset("pd-1:1").expected_g(512)
    assert m.mean_prompt_tokens == pytest.approx(805.0) and m.mean_output_tokens == pytest.approx(805.0)
    assert lqs.preset("pd-1:1").max_total == 3200
    assert lqs.preset("pd-2:1").max_total == 3199
    mix = lqs.preset("mix-2:1/1:2")
    a, b = lqs.preset("pd-2:1").expected_g(512), lqs.preset("pd-1:2").expected_g(512)
    assert mix.expected_g(512).g == pytest.approx((a.g + b.g) / 2)
    assert mix.max_total == 3199


# ----------------------------------------------------------------------------------------------- sampling
def _chi2(counts, probs):
    n = counts.sum()
    e = n * probs
    return float(np.sum((counts - e) ** 2 / e))


def test_sampling_under_jit_is_in_range_and_uniform():
    w = Independent(IntUniform(1, 6), IntUniform(10, 13))
    f = eqx.filter_jit(lambda wl, k: wl.sample(k, (60_000,)))
    s, o = f(w, jax.random.key(0))
    s, o = np.asarray(s), np.asarray(o)
    assert s.dtype == np.int32 and s.shape == (60_000,)
    assert s.min() == 1 and s.max() == 6 and o.min() == 10 and o.max() == 13
    # χ² with 5 and 3 degrees of freedom: the 99.99% points are 25.7 and 21.1
    assert _chi2(np.bincount(s, minlength=7)[1:], np.full(6, 1 / 6)) < 25.7
    assert _chi2(np.bincount(o - 10, minlength=4), np.full(4, 1 / 4)) < 21.1
    # independence: the 24 joint cells are uniform too (23 dof, 99.99% point 54.1)
    joint = np.bincount((s - 1) * 4 + (o - 10), minlength=24)
    assert _chi2(joint, np.full(24, 1 / 24)) < 54.1


def test_sampling_matches_lognormal_support():
    w = Independent(LogNormal(2.0, 0.6, 1, 25), Constant(3))
    s, o = eqx.filter_jit(lambda wl, k: wl.sample(k, (100_000,)))(w, jax.random.key(1))
    s = np.asarray(s)
    assert np.all(np.asarray(o) == 3)
    v, p = w.s.support()
    assert s.min() >= 1 and s.max() <= 25
    counts = np.array([(s == x).sum() for x in v])
    keep = p * s.size >= 20  # pool sparse cells
    c, pr = counts[keep], p[keep]
    if (~keep).any():
        c, pr = np.append(c, counts[~keep].sum()), np.append(pr, p[~keep].sum())
    dof = c.size - 1
    assert _chi2(c, pr) < dof + 6 * math.sqrt(2 * dof)


def test_sampling_under_vmap_over_keys():
    w = lqs.preset("pd-1:1")
    keys = jax.random.split(jax.random.key(2), 8)
    s, o = jax.jit(jax.vmap(lambda k: w.sample(k, (5_000,))))(keys)
    s, o = np.asarray(s), np.asarray(o)
    assert s.shape == (8, 5_000)
    assert s.min() >= 10 and s.max() <= 1600 and o.min() >= 10 and o.max() <= 1600
    # different keys give different draws; each row's mean is near 805 (sd of a mean of 5000: 6.5)
    assert not np.array_equal(s[0], s[1])
    assert np.all(np.abs(s.mean(axis=1) - 805) < 35) and np.all(np.abs(o.mean(axis=1) - 805) < 35)


def test_sampling_under_vmap_over_stacked_workloads():
    ws = [Independent(IntUniform(10, 20), IntUniform(1, 5)), Independent(IntUniform(100, 300), IntUniform(7, 7))]
    stacked = jax.tree.map(lambda *x: np.stack(x), *ws)
    keys = jax.random.split(jax.random.key(3), 2)
    s, o = eqx.filter_jit(eqx.filter_vmap(lambda wl, k: wl.sample(k, (20_000,))))(stacked, keys)
    s, o = np.asarray(s), np.asarray(o)
    assert s[0].min() == 10 and s[0].max() == 20 and o[0].min() == 1 and o[0].max() == 5
    assert s[1].min() >= 100 and s[1].max() <= 300 and np.all(o[1] == 7)
    assert abs(s[0].mean() - 15) < 0.2 and abs(s[1].mean() - 200) < 2.0


def test_mixture_and_pairs_sampling_frequencies():
    mix = Mixture([Independent(Constant(1), Constant(1)), Independent(Constant(2), Constant(2))], [0.25, 0.75])
    s, o = mix.sample(jax.random.key(4), 40_000)
    s, o = np.asarray(s), np.asarray(o)
    assert np.array_equal(s, o)  # a component's s and o travel together
    assert abs((s == 1).mean() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 40_000)
    pairs = Pairs([5, 6, 7, 8], [50, 60, 70, 80])
    s, o = pairs.sample(jax.random.key(5), 40_000)
    s, o = np.asarray(s), np.asarray(o)
    assert np.array_equal(o, 10 * s)  # joint resampling keeps the pairs
    assert _chi2(np.bincount(s - 5, minlength=4), np.full(4, 0.25)) < 21.1


def test_sample_from_uniforms_edges():
    w = Independent(IntUniform(3, 9), Empirical([4, 5, 6]))
    u = jnp.array([[0.0, 0.0], [0.999999, 0.999999], [0.5, 0.5]], jnp.float32)
    s, o = w.sample_from_uniforms(u)
    assert np.asarray(s).tolist() == [3, 9, 6] and np.asarray(o).tolist() == [4, 6, 5]


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, param", [
    (lambda: IntUniform(0, 5, "s"), "s low"),
    (lambda: IntUniform(5, 3, "s"), "s high"),
    (lambda: IntUniform(1.5, 3, "o"), "o low"),
    (lambda: Constant(0, "s"), "s"),
    (lambda: LogNormal(1.0, 0.0, 1, 10, "s"), "s sigma"),
    (lambda: LogNormal(np.nan, 1.0, 1, 10, "s"), "s mu"),
    (lambda: Empirical([], "s"), "s"),
    (lambda: Empirical([1, 2.5], "s"), "s"),
    (lambda: Empirical([1, 0], "o"), "o"),
    (lambda: Empirical([1, np.nan], "o"), "o"),
    (lambda: Empirical(["a", "b"], "o"), "o"),
    (lambda: Pairs([1, 2], [1]), "o"),
    (lambda: Pairs([1, -2], [1, 1]), "s"),
    (lambda: Mixture([]), "parts"),
    (lambda: Mixture([lqs.preset("pd-1:1")], [-1]), "weights"),
    (lambda: lqs.preset("pd-3:1"), "workload"),
    (lambda: lqs.preset("pd-1:1").expected_g(0), "prefill_chunk"),
    (lambda: lqs.preset("pd-1:1").expected_g(512, method="fast"), "method"),
    (lambda: lqs.preset("pd-1:1").validate(3199), "lengths"),
    (lambda: lqs.preset("pd-1:1").validate(0), "M"),
])
def test_bad_workload_input(make, param):
    with pytest.raises(LqsError) as e:
        make()
    assert e.value.param == param


def test_validate_passes_at_the_limit():
    lqs.preset("pd-1:1").validate(3200)
    Pairs([10, 20], [5, 5]).validate(25)

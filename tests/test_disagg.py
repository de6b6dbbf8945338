"""Disaggregated prefill and decode: the closed form per station against hand arithmetic and the colocated g,
the per-station saturation runs inside each station's band, the decode station's memory-work in the engine, and
bad input rejected before anything compiles."""

import json

import jax
import numpy as np
import pytest

import lqs
from lqs._disagg import DecodeStation, PrefillStation
from lqs.engine.stations import station_saturation
from shapes import CHUNK_FAST, FAST, K_FAST, M_FAST

SRV = lqs.Server(M=M_FAST, prefill_chunk=CHUNK_FAST, b=0.02)


def _pairs():
    rng = np.random.default_rng(0)
    return lqs.Pairs(rng.integers(10, 900, 200), rng.integers(5, 300, 200))


def test_closed_form_per_station_by_hand():
    wl = _pairs()
    s, o = wl.s.astype(float), wl.o.astype(float)
    P = lqs.Server(M=20_000, prefill_chunk=256, b=0.03, token_budget=2048)
    D = lqs.Server(M=50_000, prefill_chunk=256, b=0.02, token_budget=512)
    tr = lqs.Transfer(latency_s=0.004, tokens_per_s=1e5)
    dep = lqs.Disaggregated(P, D, n_prefill=2, n_decode=3, transfer=tr)
    c = lqs.capacity(wl, dep)  # capacity accepts a Disaggregated
    assert isinstance(c, lqs.DisaggCapacity) and c.exact_moments
    k = np.ceil(s / 256)
    hold = s * (0.004 + s / 1e5)
    g_p = np.mean(256 * k * (k - 1) / 2 + s + hold / 0.03)
    g_d = np.mean(o * s + o * (o + 1) / 2 + hold / 0.02)
    assert c.mean_g_prefill_tokens2 == pytest.approx(g_p, rel=1e-12)
    assert c.mean_g_decode_tokens2 == pytest.approx(g_d, rel=1e-12)
    assert c.mu_prefill_rps == pytest.approx(2 * 20_000 / (0.03 * g_p), rel=1e-12)
    assert c.mu_decode_rps == pytest.approx(3 * 50_000 / (0.02 * g_d), rel=1e-12)
    assert c.budget_prefill_rps == pytest.approx(2 * 2048 / (0.03 * s.mean()), rel=1e-12)
    assert c.budget_decode_rps == pytest.approx(3 * 512 / (0.02 * o.mean()), rel=1e-12)
    bounds = dict(prefill=c.mu_prefill_rps, decode=c.mu_decode_rps, **{"prefill budget": c.budget_prefill_rps,
                                                                       "decode budget": c.budget_decode_rps})
    assert c.mu_pd_rps == min(bounds.values()) and bounds[c.binding] == c.mu_pd_rps
    assert c.delta_prefill == s.max() / 20_000 and c.delta_decode == (s + o).max() / 50_000
    assert c.mu_pd_stable_rps <= c.mu_pd_rps


def test_without_transfer_the_stations_split_the_colocated_g():
    wl = lqs.preset("pd-1:1")  # exact over the integer supports
    srv = lqs.Server(M=131_000, prefill_chunk=512, b=0.0372)
    c = lqs.capacity(wl, lqs.Disaggregated(srv, srv))
    col = lqs.capacity(wl, srv)
    assert c.mean_g_prefill_tokens2 + c.mean_g_decode_tokens2 == pytest.approx(col.mean_g_exact_tokens2, rel=1e-12)
    # the split table: 7 splits of 8 GPUs and the colocated row; the best split has the largest μ_PD
    df = lqs.split_table(wl, lqs.Disaggregated(srv, srv), 8, lam=20.0)
    assert len(df) == 8 and df.best_split.sum() == 1
    d = df[df.binding != "colocated"]
    assert d[d.best_split].mu_pd_rps.iloc[0] == d.mu_pd_rps.max()
    # one unit of GPU memory-work per request is the same either way: splitting M across pools cannot beat the
    # colocated rate at equal batch times
    assert d.mu_pd_rps.max() < df[df.binding == "colocated"].mu_pd_rps.iloc[0]
    # a faster decode batch is what makes disaggregation pay
    fast = lqs.split_table(wl, lqs.Disaggregated(srv, srv.replace(b=0.025)), 8)
    best = fast[fast.best_split].iloc[0]
    assert best.mu_pd_rps > fast[fast.binding == "colocated"].mu_pd_rps.iloc[0] and best.binding == "decode"


@pytest.mark.parametrize("bad, what", [
    (lambda: lqs.Disaggregated(SRV, SRV, n_prefill=0), "n_prefill"),
    (lambda: lqs.Disaggregated(SRV, SRV, n_decode=0), "n_decode"),
    (lambda: lqs.Transfer(0.0, 0.0), "transfer_tokens_per_s"),
    (lambda: lqs.Transfer(0.0, -5.0), "transfer_tokens_per_s"),
    (lambda: lqs.Transfer(-1.0), "transfer_latency"),
    (lambda: lqs.capacity(lqs.preset("pd-1:1"), lqs.Disaggregated(SRV.replace(M=1000), SRV.replace(M=10_000))),
     "prefill M"),
    (lambda: lqs.capacity(lqs.preset("pd-1:1"), lqs.Disaggregated(SRV.replace(M=10_000), SRV.replace(M=3000))),
     "decode M"),
])
def test_bad_input_is_one_line_naming_the_parameter(bad, what):
    with pytest.raises(lqs.LqsError) as e:
        bad()
    assert what in str(e.value) and "\n" not in str(e.value)


def test_station_saturation_inside_each_stations_band():
    dep = lqs.Disaggregated(SRV, SRV)
    mc = lqs.MonteCarlo(trials=8, steps=6000, warmup=3000, seed=0)  # K sized per station (a prefill server
    # completes ~37 short prompts per step)
    cache = {}
    sat = station_saturation(FAST, dep, mc, colocated=SRV, cache=cache)
    c = lqs.capacity(FAST, dep)
    col = lqs.capacity(FAST, SRV)
    for name, mu, d in (("prefill", c.mu_prefill_rps, c.delta_prefill), ("decode", c.mu_decode_rps, c.delta_decode),
                        ("colocated", col.mu_exact_rps, col.delta)):
        r = sat[name]
        assert r["reliable"], name
        se = r["lam_star_se_rps"]
        assert mu * (1 - d) - 4 * se <= r["lam_star_rps"] <= mu + 4 * se, (name, r["lam_star_rps"], mu, d)
    # the split table's simulated λ*_PD is the smaller station's, N times one server's
    df = lqs.split_table(FAST, dep, pairs=[(1, 2), (2, 1)], simulate=True, mc=mc, lam=0.5 * c.mu_decode_rps,
                         cache=cache)  # the same runs (one saturation per station serves every split)
    r = df.iloc[0]
    assert r.lam_star_decode_rps == pytest.approx(2 * sat["decode"]["lam_star_rps"], rel=1e-6)
    assert r.lam_star_rps == min(r.lam_star_prefill_rps, r.lam_star_decode_rps) and r.binding_sim == "decode"
    lo = min(df.iloc[0].mu_prefill_rps * (1 - c.delta_prefill), df.iloc[0].mu_decode_rps * (1 - c.delta_decode))
    assert lo - 8 * sat["decode"]["lam_star_se_rps"] <= r.lam_star_rps <= r.mu_pd_rps * 1.001 + 8 * sat["decode"][
        "lam_star_se_rps"]
    assert r.verdict == "stable"


def test_decode_station_requests_arrive_prefilled_and_keep_the_invariants():
    res = lqs.simulate(DecodeStation(FAST), SRV, 2.0 * lqs.capacity(FAST, SRV).mu_rps, trials=4, steps=3000,
                       warmup=500, K=K_FAST, key=jax.random.key(2), verdict=False)
    d = res.trials
    # memory ≤ M, conservation and (swap) memory-work = o·s + o(o+1)/2 per completed request, checked in-kernel
    assert (d.violations == 0).all() and (d.arrivals == d.completions + d.in_system_final).all()
    # completions' mean memory-work is the decode g: the control-variate throughput equals the raw one's scale
    s = res.summary.iloc[0]
    assert s.throughput_cv_rps == pytest.approx(s.throughput_rps, rel=0.1)
    res_p = lqs.simulate(PrefillStation(FAST), SRV, 1.0, trials=2, steps=1000, warmup=200, K=K_FAST,
                         key=jax.random.key(3), verdict=False)
    assert (res_p.trials.violations == 0).all() and res_p.summary.iloc[0].ttft_p50_s == pytest.approx(
        res_p.summary.iloc[0].e2e_p50_s)


def test_cli_disagg_json_png_and_errors(tmp_path):
    from click.testing import CliRunner

    from lqs.cli import main

    base = ["disagg", "--workload", "pd-1:1", "--M", "131000", "--prefill-chunk", "512", "--b", "0.0372"]
    r = CliRunner().invoke(main, base + ["--gpus", "4", "--decode-b", "0.03", "--transfer-latency", "0.002",
                                         "--kv-bytes-per-token", "131072", "--transfer-bandwidth", "2.5e10",
                                         "--lam", "10", "--json", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [x["layout"] for x in doc["rows"]][:3] == ["1P:3D", "2P:2D", "3P:1D"]
    assert doc["deployment"]["transfer"]["tokens_per_s"] == pytest.approx(2.5e10 / 131072)
    assert (tmp_path / "splits.png").exists() and (tmp_path / "splits.csv").exists()
    bad = CliRunner().invoke(main, base + ["--splits", "0:4"])
    assert bad.exit_code != 0 and "N_P, N_D" in bad.output
    bad = CliRunner().invoke(main, base + ["--gpus", "4", "--transfer-tokens-per-s", "0"])
    assert bad.exit_code != 0 and "transfer_tokens_per_s" in bad.output

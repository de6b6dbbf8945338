"""The real engine's limits in the long-run engine and the closed form: the running-request cap and KV blocks
(docs/model.md, "Real-engine limits"), and calibration of the batch time by replay on a ladder written here."""

import json

import jax
import numpy as np
import pytest

import lqs
from lqs._batch import AffineBatch
from lqs._theory import g_block, g_exact
from lqs.engine.paths import select_path
from lqs.replay import _core, calibrate, default_fit
from shapes import CHUNK_SMALL, M_SMALL, SMALL

pytestmark = pytest.mark.xdist_group("limits")

MC = lqs.MonteCarlo(trials=6, steps=6000, warmup=2000, K=96, seed=3)


def _brute_g_block(s, o, chunk, block):
    k = -(-s // chunk)
    tot = sum(block * -(-min(c * chunk, s) // block) for c in range(1, k + 1))
    return tot + sum(block * -(-(s + d) // block) for d in range(1, o + 1))


def test_g_block_is_the_sum_of_block_rounded_footprints():
    rng = np.random.default_rng(0)
    s, o = rng.integers(1, 700, 200), rng.integers(1, 90, 200)
    for chunk, block in ((16, 16), (512, 16), (10, 16), (16, 1), (100, 7)):
        got = g_block(s, o, chunk, block)
        assert got.tolist() == [_brute_g_block(int(a), int(b), chunk, block) for a, b in zip(s, o)]
        assert np.all(got >= g_exact(s, o, chunk)) and (block > 1 or np.all(got == g_exact(s, o, chunk)))


def test_blocks_lower_the_saturation_throughput_inside_the_block_bound():
    srv = lqs.Server(M=M_SMALL, prefill_chunk=CHUNK_SMALL, b=0.05, policy="swap", block_size=16)
    cap = lqs.capacity(SMALL, srv)
    assert cap.mu_block_rps < cap.mu_exact_rps and cap.block_size_tokens == 16
    cr = lqs.critical(SMALL, srv, MC, grid_points=0)
    lam = cr.summary["lam_star_rps"]
    delta_b = 16 * -(-SMALL.max_total // 16) / M_SMALL  # the largest block-rounded request over M
    assert cap.mu_block_rps * (1 - delta_b) * 0.95 <= lam <= cap.mu_block_rps * 1.05
    res = cr.saturation
    assert int(res.trials["mem_max_tokens"].max()) <= M_SMALL and int(res.summary["violations"].iloc[0]) == 0
    assert set(res.trials["block_size_tokens"]) == {16} and cr.summary["mu_block_rps"] == cap.mu_block_rps


def test_running_cap_binds_and_bounds_the_started_requests():
    base = lqs.Server(M=M_SMALL, prefill_chunk=CHUNK_SMALL, b=0.05, policy="recompute")
    lam = 2 * lqs.capacity(SMALL, base).mu_exact_rps  # saturated: the schedule decides the throughput
    free = lqs.simulate(SMALL, base, lam, MC, verdict=False).summary.iloc[0]
    capped = lqs.simulate(SMALL, base.replace(max_running=3), lam, MC, verdict=False)
    c = capped.summary.iloc[0]
    assert int(free["started_max"]) > 3 >= int(c["started_max"])
    assert float(c["throughput_rps"]) < 0.9 * float(free["throughput_rps"]) and capped.reliable
    # a cap that never binds changes nothing
    assert set(capped.trials["max_running"]) == {3}
    loose = lqs.simulate(SMALL, base.replace(max_running=10_000), lam, MC, verdict=False).summary.iloc[0]
    assert float(loose["throughput_rps"]) == float(free["throughput_rps"])


def test_limits_run_on_the_xla_path_and_are_validated():
    assert select_path("auto", 1, False, True)[0] == "xla"
    with pytest.raises(lqs.LqsError, match="running-request cap or KV blocks"):
        select_path("fused", 1, False, True)
    with pytest.raises(lqs.LqsError, match="max_running"):
        lqs.Server(M=100, prefill_chunk=16, b=0.1, max_running=0)
    with pytest.raises(lqs.LqsError, match="block_size"):
        lqs.simulate(lqs.Independent(lqs.Constant(90), lqs.Constant(10)),
                     lqs.Server(M=100, prefill_chunk=16, b=0.1, block_size=64), 1.0, MC)


def _ladder(tmp_path, theta, Cs, n=48, s=64, o=24):
    """Closed-loop runs of a known affine server at several client caps, written as vLLM result files."""
    paths = []
    for C in Cs:
        raw = _core.run([s] * n, [o] * n, np.zeros((1, n), np.float32), M=100_000, chunk=8192, budget=8192,
                        max_running=1024, block=16, concurrency=C, batch=AffineBatch(*theta), policy="recompute",
                        key=jax.random.key(0), chunking="budget")
        ttft, e2e = raw.t_ttft[0] - raw.t_enter[0], raw.t_done[0] - raw.t_enter[0]
        dur = float(raw.t_done.max())
        run = {"backend": "openai", "request_rate": "inf", "burstiness": 1.0, "max_concurrency": C, "duration": dur,
               "completed": n, "request_throughput": n / dur, "input_lens": [s] * n, "output_lens": [o] * n,
               "ttfts": ttft.tolist(), "itls": [[(b - a) / (o - 1)] * (o - 1) for a, b in zip(ttft, e2e)],
               "errors": [""] * n, "start_times": raw.t_enter[0].tolist()}
        p = tmp_path / f"c{C}.json"
        p.write_text(json.dumps(run))
        paths.append(str(p))
    return paths


def test_calibrate_recovers_a_known_server_and_predicts_the_rest(tmp_path):
    theta = (0.004, 2e-5, 1e-4, 0.0)
    # the fitted runs (C = 4 and 16) must say how the step grows with the batch: at C = 2 and 4 a decode step of the
    # known server differs by 0.2 ms in 4.2 ms, which no search can tell from the fixed cost
    files = _ladder(tmp_path, theta, (4, 16, 24, 32, 40))
    runs = [lqs.load_benchmark_result(f) for f in files]
    assert default_fit(runs) == [0, 1]  # the lowest-load third of the ladder
    res = calibrate(files, M=100_000, frontend=False, iterations=10, population=32, seed=1)
    assert res.b_model.startswith("affine:") and res.report["fitted"] == [0, 1]
    df = res.runs
    assert df["fitted"].tolist() == [True, True, False, False, False]
    assert (df["predicted"] == ~df["fitted"]).all()
    for _, row in df[df.predicted].iterrows():
        assert abs(row["error_throughput_rps"]) < 0.05, row["source"]
        assert abs(row["error_e2e_p50_s"]) < 0.1, row["source"]
    assert res.history[-1]["best_loss"] <= res.history[0]["best_loss"]
    # predictions come from the ensemble of parameter sets the fitted runs allow; the best fit is one of them, and
    # on these deterministic closed-loop runs its replay is the first member's (to float32 rounding: another program)
    ens = res.report["ensemble"]
    assert ens["size"] == len(ens["members"]) >= 1 and ens["loss_threshold"] >= res.loss
    assert ens["members"][0] == pytest.approx(res.params)
    for _, row in df.iterrows():
        for m in ("throughput_rps", "ttft_p50_s", "e2e_p50_s"):
            lo, hi = row[f"replay_{m}_lo"], row[f"replay_{m}_hi"]
            assert lo <= row[f"replay_{m}"] <= hi, (row["source"], m)
            assert lo * (1 - 1e-5) <= row[f"best_{m}"] <= hi * (1 + 1e-5), (row["source"], m)


def test_calibrate_cli_json(tmp_path):
    from cli_run import run_json

    files = _ladder(tmp_path, (0.004, 2e-5, 1e-4, 0.0), (2, 8, 32))
    d = run_json(["calibrate", *files, "--M", "100000", "--no-frontend", "--iterations", "3", "--population", "16",
                  "--out", str(tmp_path / "cal")])
    assert d["b_model"].startswith("affine:") and d["fitted"] == [0] and d["predicted"] == [1, 2]
    assert [r["fitted"] for r in d["runs"]] == [True, False, False]
    assert [r["predicted"] for r in d["runs"]] == [False, True, True]
    assert d["ensemble"]["size"] >= 1 and all(r["replay_ttft_p50_s_lo"] <= r["replay_ttft_p50_s_hi"] for r in d["runs"])
    # decode batches of 8 and 32 against a fitted 2 are beyond what the fit measured (more than 2×); a TTFT there
    # is not determined when a decode time over 3× the TTFT moves it
    assert [r["beyond_fitted_batch"] for r in d["runs"]] == [False, True, True]
    assert d["runs"][2]["decode_batch"] == 32
    for r in d["runs"]:
        s = (r["replay_e2e_p50_s"] - r["replay_ttft_p50_s"]) / r["replay_ttft_p50_s"]
        assert r["ttft_sensitivity"] == pytest.approx(s) and s > 3  # short TTFTs in long requests
    assert [r["ttft_determined"] for r in d["runs"][1:]] == [False, False]
    # the fitted run's decode-only steps are read off its timelines and reported with the fit's value
    (st,) = d["decode_steps"]
    assert st["run"] == 0 and st["n"] <= 2 and st["measured_s"] > 0 and st["fitted_s"] > 0
    assert lqs.parse_batch_spec(d["b_model"], 1.0).kind == "affine"  # the spec replays as --b-model
    assert (tmp_path / "cal" / "calibration.json").is_file() and (tmp_path / "cal" / "runs.csv").is_file()


def test_ensemble_is_the_confidence_region_of_the_best_fit():
    """Every distinct candidate with loss ≤ best + σ²·χ²_p(confidence), σ² = best / (targets − p), the best first;
    a size cap keeps the best and a subset of the rest, all inside."""
    from scipy.stats import chi2

    from lqs.replay._calibrate import _ensemble

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(40, 3))
    L = np.linspace(1.0, 3.0, 40)
    best = Z[0]
    tried = [(Z[:20], L[:20]), (np.vstack([best, Z[20:]]), np.concatenate([[1.0], L[20:]]))]  # the best kept twice
    members, losses, thr = _ensemble(tried, best, 1.0, 13, 3, 0.68, 100, jax.random.key(0))
    assert thr == pytest.approx(1.0 + 0.1 * chi2.ppf(0.68, 3))
    inside = {tuple(z) for z, loss in zip(Z, L) if loss <= thr}
    assert 1 < len(inside) < 40 and len(members) == len(inside) and {tuple(m) for m in members} == inside
    np.testing.assert_array_equal(members[0], best)
    assert losses[0] == 1.0 and np.all(losses <= thr) and len(losses) == len(members)
    few, _, _ = _ensemble(tried, best, 1.0, 13, 3, 0.68, 3, jax.random.key(0))
    assert len(few) == 3 and np.array_equal(few[0], best) and {tuple(m) for m in few} <= inside
    wider, _, thr90 = _ensemble(tried, best, 1.0, 13, 3, 0.9, 100, jax.random.key(0))
    assert thr90 > thr and len(wider) > len(members)

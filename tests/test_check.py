"""lqs check / lqs.check on benchmark result files written here from a known server (tests/bench_files.py):
b̄ within 2 %, the arrival rate within sampling error, the long-run verdict below and above λ*, saturated runs
against μ and λ*; every command's benchmark-result path (--trace, --server-log, --run); one-line errors.

Every run uses the same small Monte Carlo (MC, fixed K) and one of two batch-time models (the gaps of a file with
spread, or constant b̄), at 0.5·μ or near 1.3·μ, and every file holds N successful requests (the shape of the trace workload), so the module compiles four
programs."""

import json
import math

import numpy as np
import pytest

import lqs
from bench_files import SMALL_B, SMALL_CHUNK, SMALL_M, SMALL_WL, VLLM_LOG, bench_run, write_json, write_jsonl
from cli_run import one_line_error, run, run_json

from shapes import CHECK_MC as MC  # one K for every λ: the checks share 4 compiled programs

pytestmark = pytest.mark.xdist_group("check")  # one worker: its module fixtures run once

MC_FLAGS = [x for k, v in MC.items() for x in (f"--{k}", str(v))]
SRV = lqs.Server(M=SMALL_M, prefill_chunk=SMALL_CHUNK, b=SMALL_B)
N = 800  # successful requests in every file: the trace workload's shape, so one compiled program serves all
MU_EXACT = lqs.capacity(SMALL_WL, SRV).mu_exact_rps  # ≈ λ* of the known server (tests: 0.5× and 1.3× it)


def _without_ttft(run, rows=(10, 11, 12)):
    """Three successful requests whose TTFT the file does not state (null), as some clients write."""
    for i in rows:
        run["ttfts"][i] = None
    return run


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    lam_lo, lam_hi = 0.5 * MU_EXACT, 1.3 * MU_EXACT
    log = d / "server.log"
    log.write_text(VLLM_LOG.format(tokens=SMALL_M))
    return dict(
        dir=d, lam_lo=lam_lo, lam_hi=lam_hi, log=str(log),
        stable=write_json(d / "stable.json", _without_ttft(bench_run(lam_lo, N + 4, spread=0.2, seed=1, failed=4))),
        unstable=write_json(d / "unstable.json", bench_run(lam_hi, N, spread=0.2, lam_star=MU_EXACT, seed=2)),
        saturated=write_json(d / "saturated.json", bench_run(math.inf, N, lam_star=MU_EXACT, saturated=True, seed=3)),
        sglang=write_jsonl(d / "sglang.jsonl", [bench_run(lam_lo, 200, seed=4, sglang=True),
                                               bench_run(lam_lo, N, seed=5, sglang=True)]),
    )


@pytest.mark.slow
def test_check_recovers_b_and_rate_and_says_stable(files):
    r = lqs.check(files["stable"], M=SMALL_M, prefill_chunk=SMALL_CHUNK, **MC)
    d = r.to_dict()
    assert abs(d["b_s"] / SMALL_B - 1) < 0.02  # b̄: the median of the gaps (uniform ±20 % around b̄)
    assert d["lam_source"] == "start_times" and d["lam_se_rps"] > 0
    assert abs(d["lam_rps"] - files["lam_lo"]) < 3 * d["lam_se_rps"]  # within sampling error
    assert d["failed_requests"] == 4 and d["n_requests"] == N
    assert d["verdict"] == "stable" and not d["saturated"]
    assert d["lam_star_lo_rps"] <= d["lam_star_rps"] <= d["lam_star_hi_rps"]
    assert abs(d["lam_star_rps"] / MU_EXACT - 1) < 0.1
    assert d["batch"].startswith("empirical") and "per-request TPOTs" in d["b_source"]
    assert abs(d["sim_throughput_rps"] / d["lam_rps"] - 1) < 0.1  # the simulation runs at the measured rate
    assert abs(d["sim_itl_median_s"] / d["measured_itl_median_s"] - 1) < 0.01
    assert d["rho"] == pytest.approx(d["lam_rps"] / d["mu_rps"])
    for k in ("ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s"):
        assert d["measured_" + k] > 0 and d["sim_" + k] > 0
    # the null TTFTs (and so their E2E) are counted and left out of the measured percentiles, not dropped unsaid
    assert d["measured_ttft_missing"] == 3 and d["measured_e2e_missing"] == 3
    assert abs(d["sim_e2e_p50_s"] / d["measured_e2e_p50_s"] - 1) < 0.25  # decode-dominated: o·b̄ on both sides
    # the replay holds every request of the file, in file order, once per trial
    assert r.sim.raw.t_done.shape == (d["trials"], N) and np.isfinite(r.sim.raw.t_done).all()
    assert d["run_kind"] == "open" and d["measured_queue_grew"] is False


def test_check_unstable_above_lam_star(files):
    d = lqs.check(files["unstable"], M=SMALL_M, prefill_chunk=SMALL_CHUNK, **MC).to_dict()
    assert d["verdict"] == "unstable" and d["lam_rps"] > d["lam_star_hi_rps"]
    assert d["saturated"] and "backlog grew" in d["saturated_reason"]
    # the file's throughput is λ* of the known server: Table 1's comparison comes out near 1
    assert 0.85 < d["throughput_over_lam_star"] < 1.15
    assert d["throughput_over_mu"] == pytest.approx(d["measured_throughput_rps"] / d["mu_rps"])
    assert d["sim_p_backlog_grows"] > 0.5


@pytest.mark.slow
def test_check_saturated_run_constant_batch(files):
    d = lqs.check(files["saturated"], M=SMALL_M, prefill_chunk=SMALL_CHUNK, batch="constant", **MC).to_dict()
    assert d["request_rate_rps"] == math.inf and d["lam_rps"] is None and d["rho"] == math.inf
    assert d["verdict"] == "unstable" and "infinite" in d["saturated_reason"]
    assert d["run_kind"] == "burst" and d["simulated"].startswith("replay of the run (burst")
    # the replay's clock is float32: a gap of b̄ is exact to a few parts in 10⁴ after seconds of simulated time
    assert d["batch"].startswith("constant") and d["sim_itl_median_s"] == pytest.approx(d["b_s"], rel=1e-3)
    assert {"throughput_over_mu", "throughput_over_mu_exact", "throughput_over_lam_star"} <= set(d)


@pytest.mark.slow
def test_check_cli_table_json_out(files, tmp_path):
    out = tmp_path / "ck"
    r = run(["check", files["stable"], "--server-log", files["log"], "--prefill-chunk", str(SMALL_CHUNK), *MC_FLAGS,
             "--out", str(out)])
    assert r.exit_code == 0, r.output
    for text in ("measured vs replayed", "TTFT p99", "median inter-token gap", "λ* (simulated", "verdict at the "
                 "measured rate: stable", "KV-cache size in", "empirical",
                 "note: 3 successful request(s) state no TTFT"):
        assert text in r.output, text
    rep = json.loads((out / "check.json").read_text())
    assert rep["M_tokens"] == SMALL_M and rep["M_source"].startswith("KV-cache size in")
    assert (out / "latency_cdf.png").stat().st_size > 10_000
    d = run_json(["check", files["unstable"], "--M", str(SMALL_M), "--chunk", str(SMALL_CHUNK), *MC_FLAGS])
    assert d["verdict"] == "unstable" and "throughput_over_lam_star" in d


def test_check_cli_sglang_jsonl_run(files):
    d = run_json(["check", files["sglang"], "--run", "1", "--M", str(SMALL_M), "--prefill-chunk",
                  str(SMALL_CHUNK), "--b", str(SMALL_B), "--batch", "constant", *MC_FLAGS])
    assert d["source_format"] == "sglang" and d["run"] == 1 and d["n_runs"] == 2 and d["n_requests"] == N
    assert d["b_source"] == "given" and d["lam_source"] == "request_rate"  # SGLang writes no start_times
    assert d["verdict"] == "stable"


# ----------------------------------------------------------------------------------------------- the other commands
def test_capacity_from_benchmark_result_and_server_log(files):
    d = run_json(["capacity", "--trace", files["stable"], "--server-log", files["log"], "--prefill-chunk",
                  str(SMALL_CHUNK), "--lam", "5"])
    assert abs(d["b_s"] / SMALL_B - 1) < 0.02 and d["b_source"].startswith("median of")
    assert d["M_tokens"] == SMALL_M and d["M_source"].startswith("KV-cache size in")
    assert d["trace_requests"] == N and d["trace_failed_requests"] == 4
    d2 = run_json(["capacity", "--trace", files["stable"], "--M", str(SMALL_M), "--prefill-chunk", str(SMALL_CHUNK),
                   "--b-estimator", "mean"])
    assert d2["b_source"].startswith("mean of") and d2["M_source"] == "given"
    d3 = run_json(["capacity", "--trace", files["stable"], "--M", str(SMALL_M), "--prefill-chunk", str(SMALL_CHUNK),
                   "--b", "0.03"])
    assert d3["b_source"] == "given" and d3["b_s"] == 0.03
    # lengths scaled on the command line: E[o] doubles
    d4 = run_json(["capacity", "--trace", files["stable"], "--M", str(SMALL_M), "--prefill-chunk", str(SMALL_CHUNK),
                   "--output-scale", "2"])
    assert d4["mean_g_tokens2"] > 1.5 * d2["mean_g_tokens2"]
    r = run(["capacity", "--trace", files["stable"], "--M", str(SMALL_M), "--prefill-chunk", str(SMALL_CHUNK)])
    assert r.exit_code == 0 and "inter-token gaps" in r.output and "4 failed" in r.output


def test_simulate_and_critical_from_benchmark_result(files):
    args = ["--trace", files["sglang"], "--run", "1", "--server-log", files["log"], "--prefill-chunk",
            str(SMALL_CHUNK), *MC_FLAGS]
    d = run_json(["simulate", *args, "--lam", str(files["lam_lo"])])
    assert d["b_source"].startswith("median of") and d["M_source"].startswith("KV-cache size")
    assert abs(d["summary"][0]["b_s"] / SMALL_B - 1) < 0.02
    c = run_json(["critical", *args, "--grid-points", "0"])
    assert c["M_tokens"] == SMALL_M and c["b_source"].startswith("median of")


# ----------------------------------------------------------------------------------------------- bad input
def _write(path, run_obj):
    path.write_text(json.dumps(run_obj))
    return str(path)


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r.pop("input_lens"), "input_lens"),
    (lambda r: r.update(input_lens=[], output_lens=[], ttfts=[], itls=[], errors=[], start_times=[]), "input_lens"),
    (lambda r: r["output_lens"].pop(), "output_lens"),
    (lambda r: r["ttfts"].__setitem__(3, -0.5), "ttfts"),
    (lambda r: r["start_times"].__setitem__(0, -1.0), "start_times"),
    (lambda r: r.update(duration=-3), "duration"),
])
def test_bad_result_files_are_one_line_errors(tmp_path, mutate, key):
    obj = bench_run(5.0, 20, seed=0)
    mutate(obj)
    f = _write(tmp_path / "bad.json", obj)
    for args in (["check", f, "--M", "4096"], ["capacity", "--trace", f, "--M", "4096", "--prefill-chunk", "128"],
                 ["fit", "lengths", f]):
        one_line_error(run(args), key, "bad.json")


def test_check_and_server_log_errors(tmp_path, files):
    f = files["stable"]
    one_line_error(run(["check", f]), "M")
    one_line_error(run(["check", f, "--M", "4096", "--server-log", files["log"]]), "server_log", "both")
    one_line_error(run(["capacity", "--trace", f, "--M", "4096", "--server-log", files["log"], "--prefill-chunk",
                         "128"]), "server_log", "both")
    log = tmp_path / "empty.log"
    log.write_text("INFO starting server\n")
    one_line_error(run(["check", f, "--server-log", str(log)]), "server_log", "empty.log")
    one_line_error(run(["check", files["sglang"], "--M", "4096"]), "run", "sglang.jsonl")  # two runs: pick one
    one_line_error(run(["check", files["sglang"], "--M", "4096", "--run", "2"]), "run")
    one_line_error(run(["check", f, "--M", "4096", "--batch", "bogus:1"]), "b_model", "affine")
    one_line_error(run(["check", f, "--M", "100"]), "lengths")  # requests longer than M
    one_line_error(run(["capacity", "--workload", "pd-1:1", "--M", "131000", "--prefill-chunk", "512", "--b", "0.03",
                         "--prompt-scale", "2"]), "prompt_scale")
    one_line_error(run(["capacity", "--workload", f, "--M", "131000", "--prefill-chunk", "512", "--b", "0.03"]),
                    "workload", "--trace")
    one_line_error(run(["capacity", "--workload", "pd-1:1", "--run", "1", "--M", "131000", "--prefill-chunk", "512",
                         "--b", "0.03"]), "run")
    obj = bench_run(5.0, 20, seed=0)
    del obj["itls"]
    g = _write(tmp_path / "noitl.json", obj)
    one_line_error(run(["capacity", "--trace", g, "--M", "4096", "--prefill-chunk", "128"]), "--b", "noitl.json")
    one_line_error(run(["check", g, "--M", "4096"]), "b", "noitl.json")


def test_check_python_server_argument(files):
    with pytest.raises(lqs.LqsError, match="not both"):
        lqs.check(files["stable"], SRV, M=SMALL_M)
    with pytest.raises(lqs.LqsError, match="server"):
        lqs.check(files["stable"], server="a100")
    d = lqs.check(files["sglang"], SRV, run=1, **MC).to_dict()  # the server as given: constant b̄ = 0.02 s
    assert d["b_source"] == "server" and d["b_s"] == SMALL_B and d["verdict"] == "stable"
    res = lqs.load_benchmark_result(files["stable"])
    assert isinstance(res, lqs.BenchmarkResult) and np.isclose(res.b, SMALL_B, rtol=0.02)


def test_check_without_a_simulable_lam_star_falls_back_on_the_closed_form(files):
    """A KV cache the engine cannot hold in a saturation run (here 2^29 tokens: λ* ≈ 4.5·10⁶ req/s, far more
    arrivals per step than the engine draws): the replay half still runs, and the long-run verdict comes from the
    theorems' band [μ_exact(1−δ), μ_exact] with the reason stated, instead of the command failing."""
    d = lqs.check(files["stable"], M=2**29, prefill_chunk=SMALL_CHUNK, **MC).to_dict()
    assert d["lam_star_rps"] is None and d["lam_star_basis"].startswith("closed form")
    assert "λ* not simulated" in d["lam_star_note"] and "lam" in d["lam_star_note"]
    cap = lqs.capacity(lqs.load_benchmark_result(files["stable"]).trace.workload(),
                       lqs.Server(M=2**29, prefill_chunk=SMALL_CHUNK, b=d["b_s"]))
    assert d["lam_star_lo_rps"] == pytest.approx(cap.mu_exact_stable_rps)
    assert d["lam_star_hi_rps"] == pytest.approx(cap.mu_exact_rps)
    assert d["verdict"] == "stable" and "closed form" in d["verdict_text"]
    assert abs(d["sim_throughput_rps"] / d["measured_throughput_rps"] - 1) < 0.1  # the replay half ran

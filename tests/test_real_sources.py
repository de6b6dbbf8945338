"""Real benchmark files and server logs, in the formats vLLM and SGLang write (every file is written here): what
kind of run each was, every key they state, the server they describe, and lqs check / replay on them. The three
misreadings this guards against: a short Poisson run called saturated, a closed-loop run given an arrival rate, an
infinite-rate SGLang file without start times failing."""

import json
import math

import jax
import numpy as np
import pytest

import lqs
from bench_files import bench_run, write_json, write_jsonl
from cli_run import one_line_error, run, run_json
from lqs._batch import ConstantBatch
from lqs.replay import _core, resolve_server
from lqs.traces.server_config import engine_defaults, read_server_log
from shapes import CHECK_MC

pytestmark = pytest.mark.xdist_group("real_sources")

B = 0.02


def _from_replay(n, s, o, C, *, rate=None, b=B, M=100_000, seed=0):
    """A vLLM result file of a run of the model itself: a closed loop with cap C (rate None: inf) or open."""
    t = np.zeros((1, n), np.float32) if rate is None else \
        lqs.Arrivals("poisson", rate_rps=rate).instants(n, 1, jax.random.key(seed))
    raw = _core.run([s] * n, [o] * n, t, M=M, chunk=512, concurrency=C, batch=ConstantBatch(b), policy="recompute",
                    key=jax.random.key(seed))
    ttft = raw.t_ttft[0] - raw.t_enter[0]
    e2e = raw.t_done[0] - raw.t_enter[0]
    dur = float(raw.t_done.max() - raw.t_enter.min())
    return {"date": "20260101-000000", "backend": "openai", "model_id": "m", "num_prompts": n,
            "request_rate": "inf" if rate is None else rate, "burstiness": 1.0, "max_concurrency": C,
            "duration": dur, "completed": n, "failed": 0, "request_throughput": n / dur,
            "input_lens": [s] * n, "output_lens": [o] * n, "ttfts": ttft.tolist(),
            "itls": [[(e - f) / (o - 1)] * (o - 1) for e, f in zip(e2e, ttft)], "errors": [""] * n,
            "start_times": (raw.t_enter[0] + 1.7e9).tolist(), "median_ttft_ms": float(np.median(ttft) * 1e3)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    # a short open-loop run: 100 requests at Poisson 10 req/s, TTFT flat (no queue), long outputs: the last
    # requests drain for seconds after the arrivals stop, so completed / duration is far below λ
    short = bench_run(10.0, 100, workload=lqs.Independent(lqs.Constant(64), lqs.Constant(300)), b=B, chunk=512,
                      seed=11)
    closed = _from_replay(96, 64, 40, 8)
    sgl = bench_run(math.inf, 120, saturated=True, sglang=True, lam_star=4.0, seed=12)
    sgl["request_rate"] = math.inf
    sgl["max_concurrency"] = 500
    sgl["server_info"] = {"version": "0.5.9", "max_total_num_tokens": 6144, "chunked_prefill_size": 256,
                          "page_size": 1, "max_running_requests": None, "max_prefill_tokens": 2048}
    return dict(dir=d, short=write_json(d / "short.json", short), closed=write_json(d / "closed.json", closed),
                sglang=write_jsonl(d / "sgl.jsonl", [sgl]), closed_run=closed)


def test_short_poisson_run_is_not_saturated(files):
    bench = lqs.load_benchmark_result(files["short"])
    assert bench.run_kind == "open" and bench.request_throughput < 0.9 * 10.0  # the old misreading's trigger
    d = lqs.check(files["short"], M=65536, **CHECK_MC).to_dict()
    assert d["run_kind"] == "open" and d["lam_rps"] is not None
    assert not d["saturated"] and d["measured_queue_grew"] is False and d["saturated_reason"] is None
    assert "throughput_over_mu" not in d
    # the replay reproduces the finite run's throughput, drain included
    assert abs(d["sim_throughput_rps"] / d["measured_throughput_rps"] - 1) < 0.1


def test_closed_loop_run_gets_no_arrival_rate(files):
    bench = lqs.load_benchmark_result(files["closed"])
    assert bench.run_kind == "closed" and bench.max_concurrency == 8 and "closed loop" in bench.describe_kind()
    d = lqs.check(files["closed"], M=100_000, batch="constant", **CHECK_MC).to_dict()
    assert d["run_kind"] == "closed" and d["lam_rps"] is None and d["lam_source"] is None
    assert d["verdict"] == "capped" and not d["saturated"]
    # the replay of a run of the model itself gives back its throughput and latencies (b̄ from TPOT: o/(o−1))
    for k in ("throughput_rps", "ttft_p50_s", "e2e_p50_s"):
        assert abs(d["sim_" + k] / d["measured_" + k] - 1) < 0.05, k
    r = lqs.replay(files["closed"], M=100_000).report
    assert r["concurrency"] == 8 and r["replay_peak_concurrency"] == 8 and "request_rate_rps" not in r
    with pytest.raises(lqs.LqsError, match="admission times"):
        lqs.replay(files["closed"], M=100_000, arrivals="recorded")


def test_infinite_rate_sglang_file_without_start_times_is_a_burst(files):
    bench = lqs.load_benchmark_result(files["sglang"])
    assert bench.trace.arrival_s is None and bench.run_kind == "burst"  # cap 500 ≥ 120 requests: no cap
    assert bench.server["M"][0] == 6144 and bench.server["prefill_chunk"][0] == 256
    d = lqs.check(files["sglang"], **CHECK_MC).to_dict()  # M from server_info
    assert d["run_kind"] == "burst" and d["M_tokens"] == 6144 and "server_info" in d["M_source"]
    assert d["policy"] == "recompute" and d["block_size_tokens"] == 1 and d["token_budget"] == 2048
    assert d["verdict"] == "unstable" and "throughput_over_lam_star" in d
    assert d["simulated"].startswith("replay of the run (burst")


def test_replay_cli_json_keys_and_outputs(files, tmp_path):
    out = tmp_path / "rp"
    d = run_json(["replay", files["closed"], "--M", "100000", "--out", str(out)])
    for k in ("measured_throughput_rps", "replay_throughput_rps", "measured_ttft_p50_s", "replay_ttft_p50_s",
              "measured_e2e_p50_s", "replay_e2e_p50_s", "run_kind", "replay_ttft_p50_sd_s", "replay_itl_p99_s",
              "measured_duration_s", "replay_peak_concurrency"):
        assert k in d, k
    assert d["run_kind"] == "closed" and d["sources"]["M"] == "given"
    assert "vLLM" in d["sources"]["max_running"] and d["max_running"] == 1024 and d["block_size_tokens"] == 16
    assert {p.name for p in out.iterdir()} == {"replay.json", "replay_trials.csv", "replay.png"}
    d2 = run_json(["replay", files["closed"], "--M", "100000", "--concurrency", "none", "--b-model",
                   "constant:0.02"])
    assert d2["concurrency"] is None and d2["replay_peak_concurrency"] == 96 and d2["b_model"] == "constant:0.02"


def test_every_key_the_files_state(tmp_path):
    base = bench_run(2.0, 50, seed=1)
    warm = {"type": "warmup", "input_lens": [1], "output_lens": [1], "ttfts": [0.1], "itls": [[]], "errors": [""]}
    meta = dict(base, request_rate="Infinity", max_concurrency="None", burstiness="0.5",
                server_config={"max_num_seqs": 64, "max_num_batched_tokens": 4096, "block_size": 32},
                input_len="100")
    p = tmp_path / "append.jsonl"
    p.write_text(json.dumps(warm) + "\n" + json.dumps(meta) + "\n")
    b = lqs.load_benchmark_result(str(p))  # the warm-up line is not a run
    assert b.n_runs == 1 and len(b.trace) == 50 and math.isinf(b.request_rate) and b.max_concurrency is None
    assert b.burstiness == 0.5 and b.run_kind == "burst"
    assert {k: v[0] for k, v in b.server.items()} == {"max_running": 64, "token_budget": 4096, "block_size": 32}
    srv, src = resolve_server(b, M=8192)
    assert srv.max_running == 64 and srv.token_budget == 4096 and srv.block_size == 32 and srv.policy == "recompute"
    assert "server_config.max_num_seqs" in src["max_running"] and "default" in src["policy"]
    assert lqs.load_benchmark_result(write_json(tmp_path / "num.json", dict(base, request_rate="2.5"))).request_rate == 2.5
    for key, val in (("max_concurrency", "lots"), ("burstiness", -1), ("request_rate", "fast")):
        r = run(["replay", write_json(tmp_path / f"bad_{key}.json", dict(base, **{key: val})), "--M", "8192"])
        one_line_error(r, key, "bad_" + key)


def test_summary_only_results(tmp_path):
    summ = {"backend": "openai", "dataset_name": "random", "random_range_ratio": 0.0, "request_rate": 4.0,
            "max_concurrency": None, "duration": 20.0, "completed": 40, "total_input_tokens": 40 * 200,
            "total_output_tokens": 40 * 30, "request_throughput": 2.0, "median_ttft_ms": 60.0, "median_tpot_ms": 20.0,
            "median_e2el_ms": 640.0}
    b = lqs.load_benchmark_result(write_json(tmp_path / "s.json", summ))
    assert b.summary_only and set(b.trace.s) == {200} and set(b.trace.o) == {30} and b.b == pytest.approx(0.02)
    r = lqs.replay(b, M=8192, trials=2).report
    assert r["measured_ttft_p50_s"] == pytest.approx(0.06) and r["replay_ttft_p50_s"] > 0
    assert any("summary-only" in n for n in r["notes"])
    sgl = dict(summ, backend="sglang", server_info={})
    with pytest.raises(lqs.LqsError, match="input_lens"):
        lqs.load_benchmark_result(write_json(tmp_path / "g.json", sgl))


LOG_V1 = """\
(APIServer pid=4011) INFO 09-01 10:00:00 [api_server.py:1805] vLLM API server version 0.10.1.1
(APIServer pid=4011) INFO 09-01 10:00:00 [utils.py:326] non-default args: {'model': 'Qwen/Qwen3-8B', 'max_num_seqs': 128,\
 'block_size': 32,
 'enable_prefix_caching': False, 'tensor_parallel_size': 1}
(EngineCore_0 pid=4100) INFO 09-01 10:00:10 [kv_cache_utils.py:829] GPU KV cache size: 418,784 tokens
(EngineCore_0 pid=4100) INFO 09-01 10:00:10 [kv_cache_utils.py:833] Maximum concurrency for 40,960 tokens per request: 10.22x
"""
LOG_V0 = """\
INFO 10-10 12:00:00 llm_engine.py:237] Initializing an LLM engine (v0.6.3) with config: model='m', max_seq_len=4096, \
enable_prefix_caching=False, use_async_output_proc=True
INFO 10-10 12:00:05 gpu_executor.py:122] # GPU blocks: 7282, # CPU blocks: 2048
INFO 10-10 12:00:05 config.py:100] block_size=16
"""
LOG_018 = """\
(EngineCore_DP0 pid=77) INFO 11-20 08:00:00 [core.py:90] Initializing a V1 LLM engine (v0.18.0) with config: model='m'
(EngineCore_DP0 pid=77) INFO 11-20 08:00:09 [kv_cache_utils.py:1100] GPU KV cache size: 1,234,560 tokens
(EngineCore_DP0 pid=77) INFO 11-20 08:00:09 [scheduler.py:50] Chunked prefill is enabled with max_num_batched_tokens=2048.
"""


def test_vllm_server_logs_state_the_whole_server(tmp_path):
    p1, p0, p18 = (tmp_path / n for n in ("v1.log", "v0.log", "v18.log"))
    p1.write_text(LOG_V1)
    p0.write_text(LOG_V0)
    p18.write_text(LOG_018)
    a = read_server_log(str(p1))
    assert a["M"][0] == 418784 and a["version"][0] == "0.10.1" and a["max_running"][0] == 128
    assert a["block_size"][0] == 32 and a["prefix_caching"][0] is False  # the wrapped dict line is joined back
    z = read_server_log(str(p0))
    assert z["M"][0] == 7282 * 16 and z["version"][0] == "0.6.3" and z["prefix_caching"][0] is False
    e = read_server_log(str(p18))
    assert e["M"][0] == 1234560 and e["version"][0] == "0.18.0" and e["token_budget"][0] == 2048
    bench = lqs.load_benchmark_result(write_json(tmp_path / "r.json", bench_run(2.0, 40, seed=2)))
    srv, src = resolve_server(bench, server_log=str(p1))
    assert (srv.M, srv.max_running, srv.block_size, srv.token_budget) == (418784, 128, 32, 8192)
    assert "0.10.1" in src["token_budget"] and "default" in src["token_budget"] and "v1.log" in src["M"]
    srv0, src0 = resolve_server(bench, server_log=str(p0))
    assert srv0.token_budget is None and srv0.max_running == 256 and "V0" in src0["max_running"]
    assert engine_defaults("vllm", "0.8.5")["token_budget"][0] == 2048
    assert engine_defaults("sglang", "0.5.9")["block_size"][0] == 1


def test_b_bar_from_per_request_tpot_survives_multi_token_chunks(tmp_path):
    """A stream that delivers two tokens per chunk halves the gap count: the gaps' median stays the gap, the
    per-request TPOT is the time per token."""
    run = bench_run(2.0, 60, seed=3)
    o = run["output_lens"]
    run["itls"] = [[2 * B] * ((k - 1) // 2) + [1e-6] * ((k - 1) % 2) for k in o]  # pairs, and a microsecond gap
    run["ttfts"] = [0.1] * len(o)
    b = lqs.load_benchmark_result(write_json(tmp_path / "chunks.json", run))
    assert abs(b.b / B - 1) < 0.05 and "per-request TPOT" in b.b_source
    assert b.itl_median == pytest.approx(2 * B)  # what the old estimator took

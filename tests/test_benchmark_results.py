"""Benchmark results (vLLM / SGLang layouts written here) and server logs as inputs."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

import lqs
from lqs import LqsError
from lqs.traces import kv_tokens_from_log, load_benchmark_result, load_trace, looks_like_benchmark_result


def _requests(n=200, b=0.03, lam=4.0, seed=0, fail=()):
    """Per-request lists as a server with step time ≈ b would give them (lengths, ttft, itl gaps, starts)."""
    rng = np.random.default_rng(seed)
    s = rng.integers(10, 900, n)
    o = rng.integers(2, 300, n)
    start = np.cumsum(rng.exponential(1 / lam, n)) + 1234.5  # perf_counter origin
    ttft = b * (1 + np.ceil(s / 512)) + rng.exponential(0.01, n)
    itls = [list(b * rng.lognormal(0.0, 0.05, k - 1)) for k in o]
    errors = [""] * n
    o_saved = o.copy()
    for i in fail:
        errors[i] = "Traceback (most recent call last): ... ClientConnectorError"
        o_saved[i] = 0
        itls[i] = []
        ttft[i] = 0.0
    return s, o, o_saved, start, ttft, itls, errors


def vllm_result(n=200, b=0.03, lam=4.0, seed=0, fail=(), rate=None, starts=True):
    """The layout of `vllm bench serve --save-result` (one JSON object)."""
    s, o, o_saved, start, ttft, itls, errors = _requests(n, b, lam, seed, fail)
    ok = o_saved > 0
    dur = float(start[-1] - start[0] + 10.0)
    r = {"date": "20261201-070000", "endpoint_type": "vllm", "backend": "vllm", "label": None,
         "model_id": "meta-llama/Llama-3.1-8B-Instruct", "tokenizer_id": "meta-llama/Llama-3.1-8B-Instruct",
         "num_prompts": n, "request_rate": lam if rate is None else rate, "burstiness": 1.0,
         "max_concurrency": None, "duration": dur, "completed": int(ok.sum()), "failed": int((~ok).sum()),
         "total_input_tokens": int(s[ok].sum()), "total_output_tokens": int(o_saved.sum()),
         "request_throughput": float(ok.sum() / dur), "output_throughput": float(o_saved.sum() / dur),
         "input_lens": s.tolist(), "output_lens": o_saved.tolist(), "ttfts": ttft.tolist(), "itls": itls,
         "generated_texts": ["x"] * n, "errors": errors, "mean_ttft_ms": float(ttft[ok].mean() * 1e3),
         "median_itl_ms": b * 1e3, "mean_e2el_ms": 1.0}
    if starts:
        r["start_times"] = start.tolist()
    return r, s, o, start, ok


def sglang_run(n=150, b=0.02, lam=3.0, seed=1, fail=()):
    """The layout of `python -m sglang.bench_serving --output-details` (one JSON line per run)."""
    s, o, o_saved, start, ttft, itls, errors = _requests(n, b, lam, seed, fail)
    ok = o_saved > 0
    return {"backend": "sglang", "dataset_name": "random", "request_rate": lam, "max_concurrency": None,
            "duration": 60.0, "completed": int(ok.sum()), "total_input_tokens": int(s.sum()),
            "total_output_tokens": int(o_saved.sum()), "total_output_tokens_retokenized": int(o_saved.sum()),
            "request_throughput": float(ok.sum() / 60.0), "mean_e2e_latency_ms": 900.0,
            "median_e2e_latency_ms": 800.0, "median_ttft_ms": 50.0, "mean_itl_ms": b * 1e3,
            "input_lens": s.tolist(), "output_lens": o_saved.tolist(), "ttfts": ttft.tolist(), "itls": itls,
            "generated_texts": [""] * n, "errors": errors}, s, o, ok


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_vllm_result(tmp_path):
    r, s, o, start, ok = vllm_result(fail=(3, 17))
    p = _write(tmp_path / "vllm-result.json", r)
    assert looks_like_benchmark_result(p)
    br = load_benchmark_result(p)
    assert br.source_format == "vllm" and br.failed == 2 and br.completed == 198 and len(br.trace) == 198
    assert br.trace.failed == 2
    np.testing.assert_array_equal(br.trace.s, s[ok])
    np.testing.assert_array_equal(br.trace.o, o[ok])
    np.testing.assert_allclose(br.trace.arrival_s, start[ok] - start[ok].min())
    assert br.b == pytest.approx(0.03, rel=0.01) and "median" in br.b_source
    assert br.itl_median == pytest.approx(0.03, rel=0.01)
    assert br.request_rate == 4.0 and not br.saturated
    assert br.trace.mean_rate_rps == pytest.approx(4.0, rel=0.2)
    assert np.all(br.e2e > br.ttfts)  # derived: ttft + Σ itl
    d = br.to_dict()
    assert d["failed"] == 2 and d["b_s"] == br.b and d["ttft_p50_s"] > 0
    json.dumps(d)
    # wherever a trace is accepted
    tr = load_trace(p)
    np.testing.assert_array_equal(tr.s, br.trace.s)
    assert tr.arrival_s is not None
    cap = lqs.capacity(tr.workload(), lqs.Server(M=131_000, prefill_chunk=512, b=br.b))
    assert cap.mu_rps > 0
    np.testing.assert_array_equal(lqs.load_b_samples(p), br.b_samples)  # and wherever batch times are


def test_vllm_inf_rate_and_no_start_times(tmp_path):
    r, *_ = vllm_result(rate="inf", starts=False)
    br = load_benchmark_result(_write(tmp_path / "r.json", r))
    assert math.isinf(br.request_rate) and br.saturated and br.trace.arrival_s is None
    text = json.dumps(dict(r, request_rate=float("inf")))  # Python's json writes Infinity
    assert "Infinity" in text
    (tmp_path / "r2.json").write_text(text)
    assert load_benchmark_result(tmp_path / "r2.json").saturated


def test_vllm_jsonl_runs_and_estimator(tmp_path):
    runs = [vllm_result(seed=k, b=0.01 * (k + 1))[0] for k in range(3)]
    p = tmp_path / "sweep.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    with pytest.raises(LqsError, match="run"):
        load_benchmark_result(p)
    br = load_benchmark_result(p, run=2, b_estimator="mean")
    assert br.run == 2 and br.n_runs == 3 and br.b == pytest.approx(0.03, rel=0.01)
    assert "mean" in br.b_source and "run 2" in br.b_source
    assert len(load_trace(p, run=1)) == 200
    with pytest.raises(LqsError, match="run"):
        load_benchmark_result(p, run=3)


def test_sglang_jsonl(tmp_path):
    runs = [sglang_run(seed=1, fail=(0,)), sglang_run(seed=2, b=0.05)]
    p = tmp_path / "sglang_1201_150_1024_1024.jsonl"
    p.write_text("".join(json.dumps(r[0]) + "\n" for r in runs))
    br = load_benchmark_result(p, run=0)
    assert br.source_format == "sglang" and br.failed == 1 and len(br.trace) == 149
    assert br.trace.arrival_s is None and br.b == pytest.approx(0.02, rel=0.01)
    np.testing.assert_array_equal(br.trace.s, runs[0][1][runs[0][3]])
    assert load_benchmark_result(p, run=1).b == pytest.approx(0.05, rel=0.01)


def test_gzip_and_chunked_streaming(tmp_path):
    r, s, o, _, _ = vllm_result(n=50, b=0.04)
    # a server that streams two tokens per chunk: half as many gaps, each twice as long
    r["itls"] = [[0.08] * ((k - 1) // 2) for k in o]
    p = tmp_path / "r.json.gz"
    with gzip.open(p, "wt") as fh:
        json.dump(r, fh)
    br = load_benchmark_result(p)
    assert br.b == pytest.approx(0.04, rel=0.1)


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r.pop("input_lens"), "input_lens"),
    (lambda r: r.update(output_lens=r["output_lens"][:-1]), "output_lens"),
    (lambda r: r.update(input_lens=[], output_lens=[]), "input_lens"),
    (lambda r: r.update(ttfts=[-0.1] + r["ttfts"][1:]), "ttfts"),
    (lambda r: r.update(itls=[[0.01, -0.02]] + r["itls"][1:]), "itls"),
    (lambda r: r.update(duration=-3.0), "duration"),
    (lambda r: r.update(start_times=r["start_times"][:5]), "start_times"),
    (lambda r: r.update(output_lens=[1.5] + r["output_lens"][1:]), "output_lens"),
    (lambda r: r.update(errors=["boom"] * len(r["errors"])), "errors"),
    (lambda r: r.update(request_rate="fast"), "request_rate"),
])
def test_bad_result_files(tmp_path, mutate, key):
    r, *_ = vllm_result(n=20)
    mutate(r)
    p = _write(tmp_path / "bad.json", r)
    with pytest.raises(LqsError) as e:
        load_benchmark_result(p)
    msg = str(e.value)
    assert key in msg and "bad.json" in msg and "\n" not in msg


def test_result_without_details(tmp_path):
    r, *_ = vllm_result(n=20)
    for k in ("input_lens", "output_lens", "start_times", "ttfts", "itls", "generated_texts", "errors"):
        r.pop(k)
    p = _write(tmp_path / "summary-only.json", r)
    with pytest.raises(LqsError, match="input_lens.*--save-detailed") as e:
        load_trace(p)  # recognised as a benchmark result, and told what is missing
    assert "summary-only.json" in str(e.value)


def test_run_only_for_benchmark_results(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("input_toks,output_toks\n10,20\n")
    with pytest.raises(LqsError, match="run"):
        load_trace(p, run=0)


def test_bad_json_text(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text('{"input_lens": [1], "output_lens": [2]}\n{not json\n')
    with pytest.raises(LqsError, match="broken.jsonl.*line 2"):
        load_benchmark_result(p, run=0)


# ----------------------------------------------------------------------------------------------- server logs
@pytest.mark.parametrize("text, M", [
    ("INFO 12-01 07:00:01 [kv_cache_utils.py:833] GPU KV cache size: 1,234,567 tokens\n"
     "INFO ... Maximum concurrency for 8,192 tokens per request: 150.70x\n", 1_234_567),
    ("INFO 05-01 llm_engine.py:237] Initializing an LLM engine (v0.6.3) with config: model='m', "
     "block_size=16, seed=0\nINFO 05-01 gpu_executor.py:122] # GPU blocks: 8188, # CPU blocks: 2048\n", 8188 * 16),
    ("[2026-12-01 07:00:00 TP0] Memory pool end. avail mem=10.5 GB\n"
     "[2026-12-01 07:00:01 TP0] max_total_num_tokens=131072, chunked_prefill_size=8192, max_prefill_tokens=16384\n",
     131072),
    ("GPU KV cache size: 2,000 tokens\nrestart\nGPU KV cache size: 2,000 tokens\n", 2000),
])
def test_kv_tokens_from_log(tmp_path, text, M):
    p = tmp_path / "server.log"
    p.write_text(text)
    assert kv_tokens_from_log(p) == M


def test_a_log_with_two_kv_sizes_gives_the_smallest_and_says_so(tmp_path):
    """Two TP ranks (or a restart) stating different sizes: M is the smallest, and a warning names every size."""
    p = tmp_path / "tp2.log"
    p.write_text("(EngineCore_0 pid=1) GPU KV cache size: 2,000 tokens\n(EngineCore_1 pid=2) GPU KV cache size: "
                 "100 tokens\nGPU KV cache size: 2,000 tokens\n")
    with pytest.warns(UserWarning, match=r"2 different KV-cache sizes \(100, 2,000 tokens\); M = 100, the smallest"):
        assert kv_tokens_from_log(p) == 100


@pytest.mark.parametrize("text, match", [
    ("INFO starting server\nINFO ready\n", "KV-cache size"),
    ("INFO # GPU blocks: 100, # CPU blocks: 5\n", "block size"),
    ("INFO GPU KV cache size: , tokens\n", "without a number: 'GPU KV cache size: , tokens'"),
    ("[TP0] max_total_num_tokens=_, chunked_prefill_size=8192\n", "without a number"),
])
def test_kv_tokens_from_log_errors(tmp_path, text, match):
    p = tmp_path / "no-kv.log"
    p.write_text(text)
    with pytest.raises(LqsError, match=match) as e:
        kv_tokens_from_log(p)
    assert "no-kv.log" in str(e.value)
    with pytest.raises(LqsError, match="server_log"):
        kv_tokens_from_log(tmp_path / "missing.log")

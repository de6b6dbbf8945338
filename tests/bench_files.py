"""Benchmark result and server log files written by the tests, in the layouts of the real tools.

``bench_run`` makes one run of a known server: Poisson arrivals at rate λ (``start_times``), lengths drawn from a
workload (``input_lens``/``output_lens``), inter-token gaps from the known batch time b̄ (constant, or uniform on
b̄·[1−spread, 1+spread], whose median is b̄), TTFT = a wait + ⌈s/ŝ⌉ prefill steps, E2E = TTFT + Σ gaps. Above the
critical rate ``lam_star`` the backlog grows: a request arriving at t starts at t·λ/λ* (served at rate λ*).
"""

import json
import math

import jax
import numpy as np

import lqs

SMALL_WL = lqs.Independent(lqs.IntUniform(32, 256), lqs.IntUniform(8, 64))
SMALL_M, SMALL_CHUNK, SMALL_B = 4096, 128, 0.02


def bench_run(lam, n=600, *, workload=SMALL_WL, b=SMALL_B, chunk=SMALL_CHUNK, spread=0.0, lam_star=None, seed=0,
              failed=0, saturated=False, sglang=False):
    rng = np.random.default_rng(seed)
    s, o = workload.sample(jax.random.key(seed), (n,))
    s, o = np.asarray(s, np.int64), np.asarray(o, np.int64)
    start = np.zeros(n) if saturated else np.cumsum(rng.exponential(1.0 / lam, n))
    itls = [(b * (1 + spread * rng.uniform(-1, 1, k - 1)) if spread else np.full(k - 1, b)).tolist() for k in o]
    wait = rng.exponential(b, n)
    if lam_star is not None and not saturated and lam > lam_star:
        wait += (start - start[0]) * (lam / lam_star - 1.0)
    if saturated:
        wait += np.arange(n) * (1.0 / lam_star if lam_star else b)
    ttft = wait + np.ceil(s / chunk) * b
    e2e = ttft + np.array([sum(g) for g in itls])
    errors = [""] * n
    for i in range(failed):  # failed requests: an error text and no output
        errors[i] = "Bad Gateway"
        o[i], itls[i], ttft[i], e2e[i] = 0, [], 0.0, 0.0
    duration = float(np.max(start + e2e) - start.min())
    ok = n - failed
    run = {"date": "20260101-000000", "backend": "sglang" if sglang else "vllm", "model_id": "test/model",
           "num_prompts": n, "request_rate": "inf" if saturated else lam, "burstiness": 1.0,
           "duration": duration, "completed": ok, "total_input_tokens": int(s[failed:].sum()),
           "total_output_tokens": int(o.sum()), "request_throughput": ok / duration,
           "output_throughput": float(o.sum()) / duration, "input_lens": s.tolist(), "output_lens": o.tolist(),
           "ttfts": ttft.tolist(), "itls": itls, "errors": errors, "start_times": (start + 1.7e9).tolist(),
           "mean_ttft_ms": float(np.mean(ttft[failed:]) * 1e3)}
    if sglang:  # SGLang bench_serving --output-details: its own keys, no start_times
        del run["start_times"], run["burstiness"]
        run["mean_e2e_latency_ms"] = float(np.mean(e2e[failed:]) * 1e3)
        run["total_output_tokens_retokenized"] = int(o.sum())
    return run


def write_json(path, run):
    def fix(v):
        return math.inf if v == "inf" else v

    text = json.dumps({k: fix(v) for k, v in run.items()})  # Infinity, as Python's json writes inf
    path.write_text(text)
    return str(path)


def write_jsonl(path, runs):
    path.write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    return str(path)


VLLM_LOG = """INFO 01-01 00:00:00 [config.py:100] model='test/model', block_size=16
INFO 01-01 00:00:05 [kv_cache_utils.py:700] GPU KV cache size: {tokens:,} tokens
INFO 01-01 00:00:05 [kv_cache_utils.py:704] Maximum concurrency for 8,192 tokens per request: 12.34x
"""

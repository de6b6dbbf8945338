"""Decode-only step times read off per-request timelines (lqs/traces/_steps.py), and what calibration does with
them: the decode coefficients' starting point, the front end's bound, the flag on extrapolated decode batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lqs
from lqs.traces._steps import decode_steps


def _lockstep(n, s, o, a0, a2, a3, prefill=0.05):
    """n requests of s prompt and o output tokens sent together, prefilled in one step, then decoded in lockstep:
    a decode step of the m requests left holding KV tokens kv lasts a0 + a2·m + a3·kv."""
    start = np.zeros(n)
    ttft = np.full(n, prefill)
    itls = [[] for _ in range(n)]
    for d in range(1, o):
        kv = n * (s + d)
        for i in range(n):
            itls[i].append(a0 + a2 * n + a3 * kv)
    return start, ttft, itls


def test_lockstep_decode_steps_are_the_affine_step_times():
    a0, a2, a3 = 3e-3, 4e-5, 7e-9
    start, ttft, itls = _lockstep(8, 2048, 129, a0, a2, a3)
    d = decode_steps(start, ttft, itls, [2048] * 8, [129] * 8)
    assert d.shape == (1, 4)
    n, kv, gap, count = d[0]
    assert n == 8 and count == 8 * 128
    # the median gap is the step at the median KV (the step grows by a3·n per token decoded)
    assert gap == pytest.approx(a0 + a2 * 8 + a3 * kv, rel=1e-3)
    assert kv == pytest.approx(8 * (2048 + 64), rel=0.02)


def test_gaps_that_could_hold_a_prefill_are_left_out():
    """A request that enters while another decodes: the decoding request's gaps from the newcomer's entry to its
    first token are not decode-only; the rest are, grouped by how many requests were decoding."""
    step = 0.01
    # request 0: first token at 0.1, then one token every step until 1.1 (100 gaps)
    # request 1: sent at 0.4055, first token at 0.5225 (a prefill step), then one token every step until 1.1225
    start = np.array([0.0, 0.4055])
    ttft = np.array([0.1, 0.5225 - 0.4055])
    itls = [[step] * 100, [step] * 60]
    d = decode_steps(start, ttft, itls, [100, 100], [101, 61], min_gaps=5)
    rows = {int(r[0]): r for r in d}
    assert set(rows) == {1, 2}
    # n = 1: request 0's gaps that end by 0.4055 (30), and request 1's last two, after request 0 ended; none of
    # request 0's from 0.40 to 0.53 (request 1 awaited its first token, or got it, in them); n = 2: request 0's
    # from 0.53 to 1.1 (57) and request 1's whose middle falls before 1.1 (58)
    assert rows[1][3] == 30 + 2
    assert rows[2][3] == 57 + 58
    assert rows[1][2] == pytest.approx(step) and rows[2][2] == pytest.approx(step)
    assert d[0][0] == 2  # most gaps first


def test_no_timelines_no_steps(tmp_path):
    assert decode_steps(None, [0.1], [[0.01]], [1], [2]) is None
    # a file without start times (SGLang) reads with decode_steps None
    from bench_files import bench_run, write_jsonl

    p = tmp_path / "sg.jsonl"
    write_jsonl(p, [bench_run(2.0, n=32, sglang=True)])
    assert lqs.load_benchmark_result(str(p)).decode_steps is None


def test_reader_keeps_the_decode_steps_of_a_vllm_file(tmp_path):
    a0, a2, a3 = 3e-3, 4e-5, 7e-9
    start, ttft, itls = _lockstep(6, 512, 65, a0, a2, a3)
    run = {"backend": "openai", "request_rate": "inf", "max_concurrency": 6, "duration": 1.0, "completed": 6,
           "request_throughput": 6.0, "input_lens": [512] * 6, "output_lens": [65] * 6, "ttfts": ttft.tolist(),
           "itls": itls, "errors": [""] * 6, "start_times": (start + 1.7e9).tolist()}
    p = tmp_path / "r.json"
    p.write_text(json.dumps(run))
    r = lqs.load_benchmark_result(str(p))
    assert r.decode_steps is not None and r.decode_steps[0, 0] == 6
    assert r.decode_steps[0, 2] == pytest.approx(a0 + a2 * 6 + a3 * r.decode_steps[0, 1], rel=1e-3)


def test_decode_coefficients_start_from_the_measured_steps():
    """Three decode-only steps at distinct (n, KV) give a0, a2, a3 exactly (non-negative least squares)."""
    from lqs.replay._decode import decode_fit

    a = (3e-3, 4e-5, 7e-9)
    pts = [(10, 21_000), (25, 53_000), (10, 42_000)]
    steps = [(n, kv, a[0] + a[1] * n + a[2] * kv, True) for n, kv in pts]
    np.testing.assert_allclose(decode_fit(steps, (2e-3, 2e-5, 1e-8)), a, rtol=1e-6)


def test_step_losses_pin_the_decode_step_and_bound_the_front_end():
    from lqs.replay._decode import STEP_WEIGHT, step_losses

    a0, a2, a3 = 3e-3, 4e-5, 7e-9
    gap = a0 + a2 * 25 + a3 * 53_000
    steps = [(25.0, 53_000.0, gap, True)]
    exact = {"a0": np.array([a0]), "a2": np.array([a2]), "a3": np.array([a3])}
    assert step_losses(steps, exact, 1)[0] == 0.0
    off = {k: v * 1.1 for k, v in exact.items()}
    assert step_losses(steps, off, 1)[0] == pytest.approx(STEP_WEIGHT * np.log(1.1) ** 2)
    # the front end: free while 25·f1 fits in the step, a loss beyond; no bound where the stream fell behind
    f1 = np.array([0.5 * gap / 25, gap / 25, 2 * gap / 25])
    loss = step_losses(steps, {"f1": f1}, 3)
    assert loss[0] == loss[1] == 0.0 and loss[2] == pytest.approx(STEP_WEIGHT * np.log(2.0) ** 2)
    assert not step_losses([(25.0, 53_000.0, gap, False)], {"f1": f1}, 3).any()

"""Replay of a finite experiment (kernels/replay.py, lqs.replay): against an independent plain-Python reference
of docs/model.md on small cases (every policy, the running-request cap, KV blocks, the token budget in both chunking
rules, client concurrency, front-end delay, idle gaps), against closed forms of simple runs, and its invariants.

Times are dyadic (b̄ = 0.25 s, affine coefficients powers of two), so the float32 engine and the float64 reference
agree exactly."""

import math

import jax
import numpy as np
import pytest

import lqs
from lqs._batch import AffineBatch, ConstantBatch
from lqs.replay import Arrivals, _core
from replay_reference import replay_reference

pytestmark = pytest.mark.xdist_group("replay")

RNG = np.random.default_rng(7)
N = 24
S = RNG.integers(1, 40, N).tolist()
O = RNG.integers(1, 12, N).tolist()
T_ARR = np.sort(RNG.choice(np.arange(0, 64) / 8, N)).tolist()  # dyadic instants, some equal


def _affine(pre, dec, mem):
    return 0.25 + pre / 256 + dec / 128 + mem / 4096


CASES = {
    "swap": dict(policy="swap", M=120, chunk=16),
    "recompute-tight": dict(policy="recompute", M=70, chunk=8),
    "reserve": dict(policy="reserve", M=120, chunk=16),
    "cap": dict(policy="recompute", M=400, chunk=16, max_running=3),
    "blocks": dict(policy="recompute", M=160, chunk=16, block=16),
    "budget-fixed": dict(policy="recompute", M=400, chunk=16, budget=24),
    "budget-fill": dict(policy="recompute", M=400, chunk=32, budget=24, chunking="budget"),
    "closed-loop": dict(policy="recompute", M=200, chunk=16, concurrency=3),
    "frontend": dict(policy="swap", M=200, chunk=16, concurrency=5, frontend=(0.125, 0.0625)),
    # the front end one request at a time: 0.5 s each, slower than the arrivals, so outputs wait for it too
    "frontend-queue": dict(policy="recompute", M=200, chunk=16, frontend=(0.125, 0.0, 0.5)),
    "frontend-closed": dict(policy="swap", M=200, chunk=16, concurrency=5, frontend=(0.0, 0.0625, 0.25),
                            batch="affine"),
    "affine": dict(policy="recompute", M=90, chunk=8, concurrency=6, batch="affine"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_replay_matches_the_reference(name):
    kw = dict(CASES[name])
    chunking = kw.pop("chunking", "fixed")
    aff = kw.pop("batch", None) == "affine"
    block = kw.pop("block", 1)
    ref_kw = {k: v for k, v in kw.items() if k not in ("chunk",)}
    enter, ttft, done, steps, mem_max = replay_reference(
        S, O, T_ARR, chunk=kw["chunk"], block=block, chunking=chunking, batch=_affine if aff else
        (lambda p, d, m: 0.25), **ref_kw)
    batch = AffineBatch(0.25, 1 / 256, 1 / 128, 1 / 4096) if aff else ConstantBatch(0.25)
    raw = _core.run(S, O, np.asarray([T_ARR], np.float32), block=block, chunking=chunking, batch=batch,
                    key=jax.random.key(0), steps_per_call=64, **kw)
    assert raw.finished.all() and raw.violations[0] == 0
    np.testing.assert_array_equal(raw.t_enter[0], enter)
    np.testing.assert_array_equal(raw.t_ttft[0], ttft)
    np.testing.assert_array_equal(raw.t_done[0], done)
    assert raw.steps[0] == steps and raw.mem_max[0] == mem_max <= kw["M"]
    if "concurrency" in kw:
        assert raw.peak[0] <= kw["concurrency"]
    if kw["policy"] == "reserve":
        assert raw.preempted[0] == 0


def test_tight_memory_preempts_and_blocks_cost_memory():
    base = dict(M=70, chunk=8, key=jax.random.key(0), batch=ConstantBatch(0.25))
    t = np.zeros((1, N), np.float32)
    rec = _core.run(S, O, t, policy="recompute", **base)
    assert rec.preempted[0] > 0  # the reference case above is not vacuous: the prefix rule preempts
    swap = _core.run(S, O, t, policy="swap", **base)
    assert swap.t_done.max() <= rec.t_done.max()  # recompute redoes work
    big = dict(base, M=400)
    b1 = _core.run(S, O, t, policy="recompute", block=1, **{k: v for k, v in big.items()})
    b16 = _core.run(S, O, t, policy="recompute", block=16, **{k: v for k, v in big.items()})
    assert b16.mem_max[0] > b1.mem_max[0] and b16.mem_max[0] % 16 == 0


def test_burst_closed_forms():
    """Everything fits and every prompt prefills in one step: TTFT = b̄, E2E = (o+1)·b̄ for all; one at a time
    (C = 1): request i completes at (i+1)·(k+o)·b̄."""
    n, s, o, b = 10, 8, 5, 0.25
    raw = _core.run([s] * n, [o] * n, np.zeros((1, n), np.float32), M=10_000, chunk=16, batch=ConstantBatch(b),
                    policy="recompute", key=jax.random.key(0))
    np.testing.assert_array_equal(raw.t_ttft[0], b)
    np.testing.assert_array_equal(raw.t_done[0], (o + 1) * b)
    m = _core.metrics(raw, [o] * n)[0]
    assert m["tpot_p50_s"] == pytest.approx(o * b / (o - 1)) and m["itl_p50_s"] == pytest.approx(b)
    assert m["throughput_rps"] == pytest.approx(n / ((o + 1) * b)) and m["peak_concurrency"] == n
    one = _core.run([s] * n, [o] * n, np.zeros((1, n), np.float32), M=10_000, chunk=4, batch=ConstantBatch(b),
                    policy="recompute", key=jax.random.key(0), concurrency=1)
    k = 2
    np.testing.assert_array_equal(one.t_done[0], (np.arange(n) + 1) * (k + o) * b)
    np.testing.assert_array_equal(one.t_enter[0], np.arange(n) * (k + o) * b)  # entry when the previous completes


def test_open_loop_idle_gaps_and_latencies_from_entry():
    """Requests far apart: each finds the server idle, so the clock jumps to its arrival and every request gets
    the same latencies as if it ran alone."""
    n, s, o, b = 6, 8, 3, 0.25
    t = (np.arange(n) * 100.0).astype(np.float32)[None]
    raw = _core.run([s] * n, [o] * n, t, M=10_000, chunk=16, batch=ConstantBatch(b), policy="swap",
                    key=jax.random.key(0))
    np.testing.assert_array_equal(raw.t_ttft[0] - raw.t_enter[0], b)
    np.testing.assert_array_equal(raw.t_done[0] - raw.t_enter[0], (o + 1) * b)
    assert raw.steps[0] == n * (o + 1)  # idle jumps are not steps


def test_gamma_and_poisson_arrivals():
    key = jax.random.key(3)
    for k in (1.0, 0.25, 4.0):
        t = Arrivals("gamma", rate_rps=5.0, burstiness=k).instants(4001, 4, key)
        gaps = np.diff(t.astype(np.float64), axis=1).ravel()
        assert t[:, 0].tolist() == [0.0] * 4 and np.all(gaps >= 0)
        assert gaps.mean() == pytest.approx(1 / 5.0, rel=0.03)
        assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(k), rel=0.06)
    assert np.all(Arrivals("burst").instants(5, 2, key) == 0)
    rep = Arrivals("replayed", instants_s=[3.0, 3.5, 7.0]).instants(3, 2, key)
    np.testing.assert_array_equal(rep, [[0.0, 0.5, 4.0]] * 2)
    with pytest.raises(lqs.LqsError, match="burstiness"):
        Arrivals("gamma", rate_rps=1.0, burstiness=0.0)
    with pytest.raises(lqs.LqsError, match="sorted"):
        Arrivals("replayed", instants_s=[2.0, 1.0])


def test_trials_differ_only_where_random_and_same_seed_same_result():
    s, o = [12] * 40, [6] * 40
    arr = Arrivals("poisson", rate_rps=2.0)
    t = arr.instants(40, 3, jax.random.key(1))
    a = _core.run(s, o, t, M=2000, chunk=16, batch=ConstantBatch(0.25), policy="swap", key=jax.random.key(2))
    b = _core.run(s, o, t, M=2000, chunk=16, batch=ConstantBatch(0.25), policy="swap", key=jax.random.key(2))
    np.testing.assert_array_equal(a.t_done, b.t_done)
    assert not np.array_equal(a.t_done[0], a.t_done[1])  # different arrival draws


def test_prompt_token_delay_matches_the_reference_and_grows_with_the_prompt():
    """The tokeniser takes f3 s per prompt token, one request at a time: engine ≡ reference, a request alone on the
    server gets TTFT = f0 + f3·s + b̄ exactly, and of two prompts sent together the second waits for the first's
    tokens too."""
    kw = dict(policy="swap", M=200, chunk=16, concurrency=5, frontend=(0.125, 0.0625, 0.25, 1 / 64))
    enter, ttft, done, steps, _ = replay_reference(S, O, T_ARR, batch=lambda p, d, m: 0.25, **kw)
    raw = _core.run(S, O, np.asarray([T_ARR], np.float32), batch=ConstantBatch(0.25), key=jax.random.key(0),
                    steps_per_call=64, **kw)
    np.testing.assert_array_equal(raw.t_enter[0], enter)
    np.testing.assert_array_equal(raw.t_ttft[0], ttft)
    np.testing.assert_array_equal(raw.t_done[0], done)
    assert raw.steps[0] == steps
    alone = _core.run([8, 32], [2, 2], np.asarray([[0.0, 100.0]], np.float32), M=1000, chunk=64,
                      batch=ConstantBatch(0.25), policy="swap", key=jax.random.key(0), frontend=(0.125, 0, 0, 1 / 64))
    np.testing.assert_array_equal(alone.t_ttft[0] - alone.t_enter[0], [0.125 + 8 / 64 + 0.25, 0.125 + 32 / 64 + 0.25])
    kw = dict(M=1000, chunk=64, policy="swap", frontend=(0.125, 0, 0, 1 / 64))
    pair = _core.run([8, 32], [2, 2], np.zeros((1, 2), np.float32), batch=ConstantBatch(0.25), key=jax.random.key(0),
                     **kw)
    np.testing.assert_array_equal(pair.t_ttft[0], [0.125 + 8 / 64 + 0.25, 0.125 + (8 + 32) / 64 + 0.25])
    np.testing.assert_array_equal(pair.t_ttft[0], replay_reference([8, 32], [2, 2], [0.0, 0.0], **kw)[1])


def test_unqueued_requests_are_those_no_earlier_prompt_was_waiting_ahead_of():
    # entries (any order) and TTFTs: first tokens at 0.5, 1.0, 1.2, 5.3; request 1 entered while request 0 waited
    e = np.array([1.0, 0.0, 0.0, 5.0])
    ttft = np.array([0.2, 0.5, 1.0, 0.3])
    np.testing.assert_array_equal(_core.unqueued(e, ttft), [True, True, False, True])
    assert _core.unqueued_ttft(e, ttft, min_count=3) == pytest.approx(0.3)
    assert math.isnan(_core.unqueued_ttft(e, ttft))  # fewer than 5
    # a request never served blocks every later one
    np.testing.assert_array_equal(_core.unqueued([0.0, 1.0, 2.0], [np.nan, 0.1, 0.1]), [True, False, False])
    assert _core.unqueued([], []).size == 0


def test_frontend_text_round_trips_and_bad_values_name_the_parameter():
    from lqs.replay._replay import _fe_text, parse_frontend

    assert parse_frontend("0.01,0.0005,0.001,4e-6") == (0.01, 0.0005, 0.001, 4e-6)
    assert parse_frontend(0.02) == (0.02, 0.0, 0.0, 0.0)
    assert _fe_text((0.01, 0.0005)) == "0.01,0.0005"
    assert _fe_text((0.01, 0.0005, 0.0, 4e-6)) == "0.01,0.0005,0,4e-06"
    assert parse_frontend(_fe_text((0.01, 0.0005, 0.001, 4e-6))) == (0.01, 0.0005, 0.001, 4e-6)
    for bad in ("1,2,3,4,5", "0,0,0,0.5", "-1"):
        with pytest.raises(lqs.LqsError, match="frontend"):
            parse_frontend(bad)

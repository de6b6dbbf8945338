"""Tests of the plain-Python reference simulator itself (tests/reference_sim.py).

Tiny cases are worked out by hand in the comments; larger random cases check
the invariants docs/model.md promises.  Standard library + pytest only.
"""
import os
import random
import sys
from fractions import Fraction

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_sim import footprint, g_exact, reference_run  # noqa: E402


# ---------------------------------------------------------------- helpers
def const_b(value=1.0):
    return lambda n, p, dtok, mem: value


def arrivals_at(schedule):
    """schedule: {step: count}."""
    return lambda n, b: schedule.get(n, 0)


def fixed_lengths(pairs):
    return lambda i: pairs[i]


def two_request_case(policy, steps, **kw):
    # r0 = (s=5, o=2), r1 = (s=3, o=2), both arrive during step 0; M=10, chunk=4, b=1.
    return reference_run(M=10, chunk=4, policy=policy, steps=steps,
                         arrivals=arrivals_at({0: 2}),
                         lengths=fixed_lengths([(5, 2), (3, 2)]),
                         batch_time=const_b(1.0), **kw)


# ---------------------------------------------------------------- g_exact / footprint
def test_footprint_by_hand():
    # s=5, chunk=4: k=2, prefill footprints min(4,5)=4, min(8,5)=5; decode s+d+1 = 6, 7
    assert [footprint(5, 2, c, 0, 4) for c in (0, 1)] == [4, 5]
    assert [footprint(5, 2, 2, d, 4) for d in (0, 1)] == [6, 7]
    # s=3, chunk=4: k=1, prefill 3; decode 4, 5
    assert footprint(3, 2, 0, 0, 4) == 3
    assert [footprint(3, 2, 1, d, 4) for d in (0, 1)] == [4, 5]


def test_g_exact_by_hand():
    assert g_exact(5, 2, 4) == 4 + 5 + 6 + 7 == 22
    assert g_exact(3, 2, 4) == 3 + 4 + 5 == 12
    assert g_exact(1, 1, 1) == 1 + 2
    # s=10, chunk=4: chunks cover 4, 8, 10; o=3 decodes hold 11, 12, 13
    assert g_exact(10, 3, 4) == 4 + 8 + 10 + 11 + 12 + 13


def test_g_exact_matches_spec_closed_form_and_paper_when_chunk_divides_s():
    for chunk in (1, 2, 3, 4, 7, 16):
        for s in range(1, 40):
            for o in range(1, 12):
                k = -(-s // chunk)
                closed = chunk * k * (k - 1) // 2 + s + o * s + o * (o + 1) // 2
                assert g_exact(s, o, chunk) == closed
                if s % chunk == 0:
                    paper = Fraction((1 + Fraction(s, chunk)) * s + 2 * o * s + (1 + o) * o, 2)
                    assert g_exact(s, o, chunk) == paper


# ---------------------------------------------------------------- hand-checked runs
def test_swap_two_requests_by_hand():
    # step 0: empty system, 2 arrivals at t=1 (end of step 0).
    # step 1: f0=4, f1=3 -> 7 <= 10, both run; r0 c=1, r1 c=1=k (first token).   prefill 4+3
    # step 2: f0=5, f1=4 -> 9, both run; r0 c=2=k (first token), r1 d=1.       prefill 1, decode 1
    # step 3: f0=6, f1=5 -> 11 > 10: only r0 (d=1); r1 swapped out (1 swap).   decode 1
    # step 4: f0=7, f1=5 -> 12 > 10: only r0 (d=2, done); r1 was not scheduled in step 3: no swap.
    # step 5: r1 f=5 (progress kept), d=2, done.
    # step 6: empty.
    r = two_request_case("swap", 7)
    assert r["mem_used"] == [0, 7, 9, 6, 7, 5, 0]
    assert r["n_scheduled"] == [0, 2, 2, 1, 1, 1, 0]
    assert r["swaps"] == [0, 0, 0, 1, 0, 0, 0]
    assert r["completions"] == [0, 0, 0, 0, 1, 1, 0]
    assert r["arrivals"] == [2, 0, 0, 0, 0, 0, 0]
    assert r["in_system"] == [2, 2, 2, 2, 1, 0, 0]
    assert r["waiting"] == [2, 0, 0, 0, 0, 0, 0]
    assert r["started"] == [0, 2, 2, 2, 1, 0, 0]
    assert r["prefill_tokens"] == [0, 7, 1, 0, 0, 0, 0]
    assert r["decode_tokens"] == [0, 0, 1, 1, 1, 1, 0]
    assert r["t_start"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert r["b"] == [1.0] * 7
    r0, r1 = r["requests"]
    assert (r0["t_arr"], r0["first_step"], r0["t_first"]) == (1.0, 1, 1.0)
    assert (r0["ttft_step"], r0["t_ttft"], r0["done_step"], r0["t_done"]) == (2, 3.0, 4, 5.0)
    assert (r0["work"], r0["preemptions"]) == (22, 0)
    assert (r1["ttft_step"], r1["t_ttft"], r1["done_step"], r1["t_done"]) == (1, 2.0, 5, 6.0)
    assert (r1["work"], r1["preemptions"]) == (12, 1)
    assert r0["work"] == g_exact(5, 2, 4) and r1["work"] == g_exact(3, 2, 4)
    assert (r["total_arrivals"], r["total_completions"], r["total_swaps"]) == (2, 2, 1)
    assert r["final_time"] == 7.0


def test_recompute_two_requests_by_hand():
    # steps 0-2 as for swap.
    # step 3: f0=6, f1=5 -> only r0 (d=1); r1 preempted: reset to c=d=0, still started.
    # step 4: f0=7, f1=min(4,3)=3 -> 10 <= 10: both; r0 d=2 done; r1 redoes its prefill, c=1.
    # step 5: r1 f=4, d=1.   step 6: r1 f=5, d=2, done.
    # r1 work = 3+4 (lost) + 3+4+5 = 19 = g_exact + 7.
    r = two_request_case("recompute", 7)
    assert r["mem_used"] == [0, 7, 9, 6, 10, 4, 5]
    assert r["n_scheduled"] == [0, 2, 2, 1, 2, 1, 1]
    assert r["swaps"] == [0, 0, 0, 1, 0, 0, 0]
    assert r["completions"] == [0, 0, 0, 0, 1, 0, 1]
    assert r["waiting"] == [2, 0, 0, 0, 0, 0, 0]      # preempted r1 is started, not waiting
    assert r["started"] == [0, 2, 2, 2, 1, 1, 0]
    assert r["prefill_tokens"] == [0, 7, 1, 0, 3, 0, 0]
    assert r["decode_tokens"] == [0, 0, 1, 1, 1, 1, 1]
    r0, r1 = r["requests"]
    assert (r0["work"], r0["done_step"], r0["preemptions"]) == (22, 4, 0)
    assert (r1["work"], r1["done_step"], r1["preemptions"]) == (19, 6, 1)
    assert r1["work"] == g_exact(3, 2, 4) + 3 + 4
    assert r1["ttft_step"] == 1      # first time its prefill finished (convention)
    assert r["total_swaps"] == 1 and r["total_completions"] == 2


def test_reserve_two_requests_by_hand():
    # weights are peaks: r0 7, r1 5 -> 12 > 10, so r1 waits until r0 leaves.
    # r0: steps 1..4 with f = 4, 5, 6, 7 (done step 4). r1: steps 5..7 with f = 3, 4, 5.
    r = two_request_case("reserve", 8)
    assert r["mem_used"] == [0, 4, 5, 6, 7, 3, 4, 5]
    assert r["weight_used"] == [0, 7, 7, 7, 7, 5, 5, 5]
    assert r["n_scheduled"] == [0, 1, 1, 1, 1, 1, 1, 1]
    assert r["waiting"] == [2, 1, 1, 1, 1, 0, 0, 0]
    assert r["started"] == [0, 1, 1, 1, 0, 1, 1, 0]
    assert r["completions"] == [0, 0, 0, 0, 1, 0, 0, 1]
    assert r["swaps"] == [0] * 8
    r0, r1 = r["requests"]
    assert (r0["work"], r1["work"]) == (22, 12)
    assert (r1["first_step"], r1["t_first"], r1["done_step"], r1["t_done"]) == (5, 5.0, 7, 8.0)


def test_token_budget_by_hand():
    # M=100 (memory never binds), chunk=4, B=5, same two requests.
    # step 1: tokens r0 4 + r1 3 = 7 > 5 -> only r0 (prefill 4).
    # step 2: r0's last chunk is 5-4=1 token, r1 3 -> 4 <= 5, both.
    # steps 3, 4: both decode 1 token each; both finish in step 4.
    r = reference_run(M=100, chunk=4, policy="swap", steps=5, arrivals=arrivals_at({0: 2}),
                      lengths=fixed_lengths([(5, 2), (3, 2)]), batch_time=const_b(),
                      token_budget=5)
    assert r["n_scheduled"] == [0, 1, 2, 2, 2]
    assert r["prefill_tokens"] == [0, 4, 4, 0, 0]
    assert r["decode_tokens"] == [0, 0, 0, 2, 2]
    assert r["completions"] == [0, 0, 0, 0, 2]
    assert r["waiting"] == [2, 1, 0, 0, 0]
    assert r["swaps"] == [0] * 5


def test_batch_time_arguments_and_clock():
    # affine b = 1 + 0.5*prefill + 0.25*decode + 0.125*mem on the swap case above:
    # step 0: (0,0,0) -> 1; step 1: (7,0,7) -> 1+3.5+0.875 = 5.375; step 2: (1,1,9) -> 1+0.5+0.25+1.125 = 2.875
    calls = []

    def bt(n, p, dtok, mem):
        calls.append((n, p, dtok, mem))
        return 1 + 0.5 * p + 0.25 * dtok + 0.125 * mem

    r = reference_run(M=10, chunk=4, policy="swap", steps=3, arrivals=arrivals_at({0: 2}),
                      lengths=fixed_lengths([(5, 2), (3, 2)]), batch_time=bt)
    assert calls == [(0, 0, 0, 0), (1, 7, 0, 7), (2, 1, 1, 9)]
    assert r["b"] == [1.0, 5.375, 2.875]
    assert r["t_start"] == [0.0, 1.0, 6.375]
    assert r["final_time"] == 9.25
    # r1 finished its prefill in step 1 (ends at 6.375), r0 in step 2 (ends at 9.25)
    assert r["requests"][1]["t_ttft"] == 6.375 and r["requests"][0]["t_ttft"] == 9.25


def test_arrivals_see_b_and_offsets():
    seen = []

    def arr(n, b):
        seen.append((n, b))
        return 2 if n == 1 else 0

    r = reference_run(M=10, chunk=4, policy="swap", steps=3, arrivals=arr,
                      lengths=fixed_lengths([(2, 1), (2, 1)]), batch_time=const_b(2.0),
                      arrival_offset=lambda n, j: j / 2)
    assert seen == [(0, 2.0), (1, 2.0), (2, 2.0)]
    # step 1 spans [2, 4): offsets 0 and 1/2 -> arrival times 2.0 and 3.0
    assert [q["t_arr"] for q in r["requests"]] == [2.0, 3.0]
    assert r["n_scheduled"] == [0, 0, 2]     # arrivals of step 1 run from step 2 on


# ---------------------------------------------------------------- validation
def test_rejects_token_budget_below_chunk():
    with pytest.raises(ValueError):
        reference_run(M=10, chunk=4, policy="swap", steps=1, arrivals=arrivals_at({}),
                      lengths=fixed_lengths([]), batch_time=const_b(), token_budget=3)
    # B == chunk is fine
    reference_run(M=10, chunk=4, policy="swap", steps=1, arrivals=arrivals_at({}),
                  lengths=fixed_lengths([]), batch_time=const_b(), token_budget=4)


@pytest.mark.parametrize("pair", [(6, 5), (0, 3), (3, 0)])
def test_rejects_bad_lengths(pair):
    with pytest.raises(ValueError):
        reference_run(M=10, chunk=4, policy="swap", steps=2, arrivals=arrivals_at({0: 1}),
                      lengths=fixed_lengths([pair]), batch_time=const_b())


def test_accepts_peak_equal_to_M_and_rejects_unknown_policy():
    r = reference_run(M=10, chunk=4, policy="swap", steps=10, arrivals=arrivals_at({0: 1}),
                      lengths=fixed_lengths([(6, 4)]), batch_time=const_b())
    assert r["total_completions"] == 1 and r["requests"][0]["work"] == g_exact(6, 4, 4)
    with pytest.raises(ValueError):
        reference_run(M=10, chunk=4, policy="lifo", steps=1, arrivals=arrivals_at({}),
                      lengths=fixed_lengths([]), batch_time=const_b())


# ---------------------------------------------------------------- random invariants
CONFIGS = [
    # (M, chunk, s_max, o_max, token_budget, arrival probability per slot)
    (40, 4, 15, 12, None, 0.35),
    (40, 4, 15, 12, 6, 0.35),
    (64, 16, 30, 20, None, 0.3),
    (25, 3, 12, 10, 3, 0.4),
    (100, 8, 50, 40, None, 0.15),
    (60, 4, 10, 8, None, 0.04),     # light load: mostly everything runs
    (60, 4, 10, 8, 5, 0.04),
]


def random_run(policy, M, chunk, s_max, o_max, budget, p, seed, steps=400, stop_arrivals=None):
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < 2000:
        s, o = rng.randint(1, s_max), rng.randint(1, o_max)
        if s + o <= M:
            pairs.append((s, o))
    arr_rng = random.Random(seed + 1)

    def arrivals(n, b):
        if stop_arrivals is not None and n >= stop_arrivals:
            return 0
        return sum(1 for _ in range(3) if arr_rng.random() < p)

    return reference_run(M=M, chunk=chunk, policy=policy, steps=steps, arrivals=arrivals,
                         lengths=fixed_lengths(pairs), batch_time=const_b(0.5),
                         token_budget=budget)


@pytest.mark.parametrize("policy", ["swap", "recompute", "reserve"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_invariants(policy, cfg):
    M, chunk, s_max, o_max, budget, p = cfg
    r = random_run(policy, M, chunk, s_max, o_max, budget, p, seed=10 * CONFIGS.index(cfg) + len(policy))
    reqs = r["requests"]
    max_peak = max((q["s"] + q["o"] for q in reqs), default=0)
    cum_arr = cum_done = 0
    prev_in_system = 0
    for n in range(len(r["b"])):
        cum_arr += r["arrivals"][n]
        cum_done += r["completions"][n]
        assert cum_arr == cum_done + r["in_system"][n]                      # conservation
        assert r["waiting"][n] + r["started"][n] == r["in_system"][n]
        assert r["mem_used"][n] <= r["weight_used"][n] <= M                  # memory bound
        if budget is not None:
            assert r["prefill_tokens"][n] + r["decode_tokens"][n] <= budget  # token budget
        assert r["n_scheduled"][n] <= prev_in_system
        if prev_in_system > 0:
            assert r["n_scheduled"][n] >= 1                                 # never idles needlessly
        if (policy != "reserve" and budget is None
                and r["n_scheduled"][n] < prev_in_system):
            assert r["mem_used"][n] > M - max_peak                          # docs/model.md consequence
        assert r["completions"][n] == sum(1 for q in reqs if q["done_step"] == n)
        prev_in_system = r["in_system"][n]
    assert r["total_arrivals"] == len(reqs) == cum_arr
    assert r["total_swaps"] == sum(q["preemptions"] for q in reqs)
    assert sum(r["mem_used"]) == sum(q["work"] for q in reqs)               # work bookkeeping
    # started requests form a prefix of the arrival order
    firsts = [q["first_step"] for q in reqs]
    n_started = sum(1 for f in firsts if f is not None)
    assert all(f is not None for f in firsts[:n_started])
    assert all(f is None for f in firsts[n_started:])
    assert firsts[:n_started] == sorted(firsts[:n_started])
    for q in reqs:
        if q["done_step"] is None:
            continue
        g = g_exact(q["s"], q["o"], chunk)
        if policy == "recompute" and q["preemptions"] > 0:
            assert q["work"] > g                                             # lost work redone
        else:
            assert q["work"] == g                                            # swap/reserve: exact
        assert q["first_step"] <= q["ttft_step"] <= q["done_step"]
        assert q["t_arr"] <= q["t_first"] < q["t_ttft"] <= q["t_done"]
    if policy == "reserve":
        assert r["total_swaps"] == 0                                         # reserve never swaps
    assert r["total_completions"] > 0


def test_loaded_runs_actually_swap_and_preempt():
    # the random configs above are loaded enough that swap swaps and recompute preempts
    for policy in ("swap", "recompute"):
        r = random_run(policy, 40, 4, 15, 12, None, 0.35, seed=7)
        assert r["total_swaps"] > 0
    r = random_run("recompute", 40, 4, 15, 12, None, 0.35, seed=7)
    assert any(q["work"] > g_exact(q["s"], q["o"], 4) for q in r["requests"] if q["done_step"] is not None)


@pytest.mark.parametrize("policy", ["swap", "recompute", "reserve"])
def test_drained_run_processes_every_token(policy):
    # arrivals stop at step 100; by step 2000 everything has left, and
    # (swap, reserve) exactly s prefill and o decode tokens were processed per request.
    r = random_run(policy, 40, 4, 15, 12, 6, 0.35, seed=3, steps=2000, stop_arrivals=100)
    reqs = r["requests"]
    assert r["in_system"][-1] == 0 and r["total_completions"] == len(reqs) > 0
    if policy != "recompute":
        assert sum(r["prefill_tokens"]) == sum(q["s"] for q in reqs)
        assert sum(r["decode_tokens"]) == sum(q["o"] for q in reqs)
    else:
        assert sum(r["prefill_tokens"]) >= sum(q["s"] for q in reqs)
        assert sum(r["decode_tokens"]) >= sum(q["o"] for q in reqs)

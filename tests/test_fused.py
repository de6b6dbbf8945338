"""The fused Pallas step loop (kernels/fused/) against the XLA path: identical trajectories from the same key.

On a CPU the kernel runs in Pallas interpret mode (the kernel body evaluated as written, block by block); the
Triton lowering for CUDA is checked here too, without a GPU, through jax.export.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import numpy as np
import pandas as pd
import pytest

import lqs
from lqs import engine as L
from lqs.engine import paths as LP
from lqs._batch import AffineBatch, ConstantBatch, EmpiricalBatch, LogNormalBatch
from lqs.kernels import batched as KB
from lqs.kernels import loop as KL
from lqs.kernels.state import POLICIES
from lqs.kernels import fused as F

from shapes import K_FAST, K_SMALL_RUN, SMALL

BATCHES = {
    "constant": ConstantBatch(0.05),
    "affine": AffineBatch(0.01, 2e-4, 1e-3, 2e-5),
    "empirical": EmpiricalBatch([0.03, 0.045, 0.05, 0.07, 0.11]),
    "lognormal": LogNormalBatch.two_speed(0.04, 0.12, slow_frac=0.3, sigma=0.2),
}


def _prepared(workload, *, M, chunk, lam, b, policy, trials=3, steps=512, token_budget=None, K=None, seed=1):
    srv = lqs.Server(M=M, prefill_chunk=chunk, b=b, policy=policy, token_budget=token_budget)
    mc = lqs.MonteCarlo(trials=trials, warmup=64, K=K, path="xla")
    cfg, sizing, grid, params = L.prepare(workload, srv, list(np.atleast_1d(lam)), mc, steps)
    # one call of ``steps`` steps (prepare's calls have a fixed number of time-series points; simulate says how many run)
    cfg = replace(cfg, points_per_call=L.sizing.call_plan(steps, cfg)[0])
    keys = jax.random.split(jax.random.key(seed), len(grid) * trials)
    return cfg, params, LP.init_jit(keys, params, cfg)


def _both(cfg, params, states, rb, triton_layout=None, warps=None):
    """Final states and records of both paths; ``triton_layout``: the kernel as Triton runs it (slot fields in
    power-of-two pieces, interleaved with one warp per trial, boolean slot arrays as bits), here in interpret mode;
    ``warps`` chooses the layout (kernel_pieces)."""
    xla = jax.jit(KB.run_call_batched, static_argnums=2)(states, params, cfg)
    fused = jax.jit(lambda s, p: F.run_call_batched(s, p, cfg, rb=rb, interpret=True, triton_layout=triton_layout,
                                                    num_warps=warps))(states, params)
    return jax.device_get(xla), jax.device_get(fused)


def _assert_identical(a, b):
    la = jax.tree_util.tree_leaves_with_path(a)
    lb = jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    bad = [jax.tree_util.keystr(p) for (p, x), y in zip(la, lb)
           if np.shape(x) != np.shape(y) or not np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)]
    assert not bad, f"fused and XLA paths differ in {bad}"


# every policy and every batch-time model with transcendental draws at least once: reserve + lognormal here, recompute
# + affine in the token-budget test, swap + constant in the paper-workload and simulate tests below (empirical is a
# table lookup, exact on any path: slow); the rest of the product is marked slow
_COVER = [("reserve", "lognormal")]
_CASES = [pytest.param(p, b, marks=() if (p, b) in _COVER else pytest.mark.slow)
          for p in POLICIES for b in BATCHES]


@pytest.mark.parametrize("policy,batch", _CASES)
def test_identical_to_xla_small(policy, batch):
    """Every policy × batch-time model, below, near and above capacity (λ = 0.5, 3, 8 per s), 3 trials each. K = 160.
    The slow variants run the kernel as on a GPU: slots interleaved, 5 per lane (one warp per trial), or, with the
    affine model, in contiguous pieces of 128 + 32 (4 warps for 2 trials, as for a K above 320)."""
    cfg, params, st = _prepared(SMALL, M=400, chunk=16, lam=[0.5, 3.0, 8.0], b=BATCHES[batch], policy=policy)
    tl = (policy, batch) not in _COVER
    warps = 4 if batch == "affine" else None
    assert F.kernel_pieces(cfg.K, 2, warps or F.default_warps(cfg.K, 2)) == ((128, 32) if warps else (32,) * 5)
    a, b = _both(cfg, params, st, rb=2, triton_layout=tl, warps=warps)  # 9 trials in blocks of 2: padding too
    _assert_identical(a, b)
    st_a = a[0]
    assert int(np.sum(st_a.counters.arrivals)) > 100 and int(np.sum(st_a.counters.completions)) > 50  # the run did something
    if policy != "reserve" and batch != "affine":
        assert int(np.sum(st_a.counters.swaps)) > 0  # preemptions exercised


@pytest.mark.parametrize("policy", [p if p == "recompute" else pytest.param(p, marks=pytest.mark.slow)
                                    for p in POLICIES])
def test_identical_with_token_budget_and_capacity_limits(policy):
    """Token budget; too few slots (overflow queue, starvation counter) and a tiny arrival cap (truncation); the
    affine batch-time model (the step's time depends on the batch)."""
    cfg, params, st = _prepared(SMALL, M=400, chunk=16, lam=[6.0, 30.0], b=BATCHES["affine"], policy=policy,
                                token_budget=40, K=16)
    from dataclasses import replace

    cfg = replace(cfg, a_max=2)
    a, b = _both(cfg, params, st, rb=4, triton_layout=policy != "recompute")  # slow variants: as on a GPU
    _assert_identical(a, b)
    st_a = a[0]
    assert int(np.sum(st_a.queue.overflow)) > 0 and int(np.sum(st_a.limits.arr_trunc)) > 0
    if policy != "reserve":
        assert int(np.sum(st_a.limits.starved)) > 0


@pytest.mark.parametrize("policy", [pytest.param(p, marks=pytest.mark.slow) for p in POLICIES])
def test_identical_on_the_paper_workload(policy):
    """pd-1:1 at the paper's M = 131,000 tokens, ŝ = 512, b̄ = 0.0372 s, below and above μ (K = 288), the kernel as
    Triton runs it: one warp per trial, each lane holding 9 consecutive slots (interleaved: 9 parts of 32 lanes),
    boolean slot arrays as bits."""
    cfg, params, st = _prepared(lqs.preset("pd-1:1"), M=131_000, chunk=512, lam=[2.5, 4.0], b=0.0372,
                                policy=policy, trials=2, steps=1024)
    assert cfg.K == 288 and F.kernel_pieces(288, 4, F.default_warps(288, 4)) == (32,) * 9
    assert F.interleaved(288, 4, F.default_warps(288, 4))
    a, b = _both(cfg, params, st, rb=4, triton_layout=True)
    _assert_identical(a, b)
    assert int(np.sum(a[0].counters.completions)) > 20


@pytest.mark.parametrize("policy,budget,block", [("swap", None, 3), pytest.param("swap", None, None, marks=pytest.mark.slow),
                                                 pytest.param("recompute", 40, 3, marks=pytest.mark.slow),
                                                 pytest.param("reserve", None, 3, marks=pytest.mark.slow)])
def test_slot_major_xla_loop_identical_to_vmapped_step(policy, budget, block):
    """The XLA path runs single-server trials slot-major ([K, trials]) in sequential trial blocks on a CPU
    (kernels/batched.py): states and records are bit-identical to the per-trial step vmapped over trials, for any
    block size (padded blocks too)."""
    from lqs.kernels import batched as B

    cfg, params, st = _prepared(SMALL, M=400, chunk=16, lam=[3.0, 8.0], b=BATCHES["lognormal"], policy=policy,
                                token_budget=budget, trials=2)
    ref = jax.device_get(jax.jit(lambda s, p: jax.vmap(lambda a, q: KL.run_call(a, q, cfg))(s, p))(st, params))
    # blocks of 3 trials (the last one padded); one block (None: the program every simulate call runs, which the
    # fused tests compare with the kernel) is a slow variant
    _assert_identical(ref, jax.device_get(jax.jit(lambda s, p: B.run_call(s, p, cfg, group=block))(st, params)))
    assert int(np.sum(ref[0].counters.completions)) > 50


@pytest.mark.slow  # lengths are drawn at compaction, in XLA on both paths: the kernel never sees the workload
def test_identical_on_a_pairs_trace_mixture():
    w = lqs.load_trace("azure-code").workload()
    cfg, params, st = _prepared(w, M=60_000, chunk=512, lam=[1.0, 6.0], b=0.04, policy="swap", trials=2)
    _assert_identical(*_both(cfg, params, st, rb=1))


def test_simulate_path_option_identical_results_and_reports_the_path():
    """Also: trials not a multiple of the block (2 trials in a program of 4: padded with copies of the last trial,
    dropped after). K = 192 and 2 trials: the programs of test_bench's runs."""
    kw = dict(trials=2, steps=512, warmup=64, K=K_SMALL_RUN, key=jax.random.key(9))
    srv, lams = lqs.Server(M=400, prefill_chunk=16, b=0.05), [6.0]
    x = lqs.simulate(SMALL, srv, lams, path="xla", **kw, verdict=False)
    f = lqs.simulate(SMALL, srv, lams, path="fused", fused_trials=4, **kw, verdict=False)
    assert x.config["sizing"]["path"] == "xla"
    assert f.config["sizing"]["path"] == "fused-interpret" and f.config["sizing"]["fused_trials"] == 4
    assert len(f.trials) == 2 and f.hist.shape == x.hist.shape and int(x.trials.completions.sum()) > 50
    pd.testing.assert_frame_equal(x.trials, f.trials, check_exact=True)
    pd.testing.assert_frame_equal(x.summary, f.summary, check_exact=True)
    assert np.array_equal(x.hist, f.hist) and np.array_equal(x.series_waiting, f.series_waiting)
    a = lqs.simulate(SMALL, srv, lams, path="auto", **kw, verdict=False)  # no GPU here: auto runs the XLA path
    assert a.config["sizing"]["path"] == "xla" and "auto" in a.config["sizing"]["path_reason"]


def test_path_errors_name_the_parameter_before_compiling():
    before = L.TRACE_COUNT["run_call"]
    kw = dict(trials=2, steps=256, warmup=0)
    srv = lqs.Server(M=400, prefill_chunk=16, b=0.05)
    with pytest.raises(lqs.LqsError, match="path"):
        lqs.simulate(SMALL, srv, 2.0, path="triton", **kw, verdict=False)
    with pytest.raises(lqs.LqsError, match="path.*servers > 1"):
        lqs.simulate(SMALL, srv.replace(servers=2), 2.0, path="fused", **kw, verdict=False)
    with pytest.raises(lqs.LqsError, match="fused_trials"):
        lqs.simulate(SMALL, srv, 2.0, path="fused", fused_trials=3, **kw, verdict=False)
    with pytest.raises(lqs.LqsError, match="set_engine"):  # removed: no process-wide switch
        lqs.set_engine("xla")
    assert L.TRACE_COUNT["run_call"] == before


def test_default_path_from_the_environment_and_deprecated_names(monkeypatch):
    """The path is a MonteCarlo field; None means $LQS_PATH (or its old name $LQS_ENGINE), else auto. The 0.2 names
    still work, with a DeprecationWarning."""
    monkeypatch.delenv("LQS_PATH", raising=False)
    monkeypatch.delenv("LQS_ENGINE", raising=False)
    assert lqs.default_path() == "auto"
    monkeypatch.setenv("LQS_ENGINE", "fused")
    assert lqs.default_path() == "fused"
    monkeypatch.setenv("LQS_PATH", "xla")
    assert lqs.default_path() == "xla"
    monkeypatch.setenv("LQS_PATH", "bogus")
    with pytest.raises(lqs.LqsError, match="LQS_PATH"):
        lqs.default_path()
    with pytest.warns(DeprecationWarning) as said:
        mc = lqs.MonteCarlo(engine="xla", fused_rb=2)
    assert {"path=", "fused_trials="} <= {str(w.message).rsplit(" ", 1)[-1] for w in said}
    assert (mc.path, mc.fused_trials) == ("xla", 2)
    with pytest.warns(DeprecationWarning, match="fused_trials"):
        assert lqs.MonteCarlo().replace(fused_rb=4).fused_trials == 4
    with pytest.warns(DeprecationWarning, match="BenchmarkResult"):
        assert lqs.BenchResult is lqs.BenchmarkResult
    with pytest.warns(DeprecationWarning, match="LogNormalBatch"):
        assert lqs.LogNormalMixBatch is lqs.LogNormalBatch


def test_clusters_and_phases_fall_back_to_xla_under_auto():
    # 4 servers, random routing, 8 trials, K = 160: the program of the cluster tests in test_engine_properties
    r = lqs.simulate(SMALL, lqs.Server(M=400, prefill_chunk=16, b=0.05, servers=4, routing="random"), 4.0, trials=8,
                     steps=256, warmup=0, K=K_FAST, path="auto", verdict=False)
    assert r.config["sizing"]["path"] == "xla" and "servers" in r.config["sizing"]["path_reason"]


@pytest.mark.parametrize("policy,batch,budget,K", [("swap", "constant", None, 128), ("recompute", "affine", 64, 96),
                                                   ("reserve", "empirical", None, 96), ("swap", "lognormal", 64, 128)])
def test_lowers_to_triton_for_cuda(policy, batch, budget, K):
    """Every primitive of the fused step has a Triton lowering (checked without a GPU via jax.export): slot fields
    interleaved (one warp per trial, strided loads and stores: K = 96 and 128) and, with 8 warps for 4 trials, in
    contiguous power-of-two pieces (K = 96: 64 + 32)."""
    cfg, params, st = _prepared(SMALL, M=400, chunk=16, lam=[3.0], b=BATCHES[batch], policy=policy, trials=8,
                                token_budget=budget, K=K)
    warps = 8 if policy == "reserve" else None
    assert cfg.K == K and F.kernel_pieces(K, 4, warps or F.default_warps(K, 4)) == ((64, 32) if warps else (32,) * (K // 32))
    text = F.lower_for_gpu(st, params, cfg, rb=4, num_warps=warps)
    assert "__gpu$xla.gpu.triton" in text and "lqs_step_loop" in text


def test_slots_are_not_padded_to_a_power_of_two():
    """pd-1:1 at M = 131,000 sizes K = 288; the Triton path runs it as 288 slots (9 interleaved parts of 32 with one
    warp per trial, pieces of 256 + 32 across warps), not 512. Up to 320 slots K is rounded up to a multiple of 32,
    above to at most two powers of two ≥ 32."""
    assert [F.slot_pieces(K) for K in (288, 96, 100, 512)] == [(256, 32), (64, 32), (64, 32, 4), (512,)]
    assert F.kernel_pieces(288, 2, 2) == (32,) * 9 and F.kernel_pieces(288, 2, 4) == (256, 32)
    assert F.interleaved(288, 2, 2) and not F.interleaved(288, 2, 4) and not F.interleaved(100, 2, 2)
    assert F.kernel_pieces(512, 2, 8) == (512,) and F.kernel_pieces(512, 1, 1) == (32,) * 16
    assert F.kernel_pieces(100, 2, 2) == (64, 32, 4)
    assert [F.triton_K(K) for K in (16, 100, 200, 288, 300, 480, 512, 600)] == [16, 128, 224, 288, 320, 512, 512, 640]
    srv = lqs.Server(M=131_000, prefill_chunk=512, b=0.0372)
    _, sz, _, _ = L.prepare(lqs.preset("pd-1:1"), srv, [4.0], lqs.MonteCarlo(trials=2, warmup=64, path="xla"), 512)
    assert sz.K == 288 and LP.settle("fused", "asked for", sz.K, "swap", "constant")[2] == 288


@pytest.mark.slow
def test_identical_with_slots_in_three_pieces():
    """K = 100 runs as pieces of 64, 32 and 4 slots: prefix sums carried across pieces, sums over slots combined,
    slot indices offset; bit-identical to the XLA path."""
    cfg, params, st = _prepared(SMALL, M=400, chunk=16, lam=[3.0, 30.0], b=0.05, policy="swap", trials=2, steps=256,
                                K=100)
    assert F.kernel_pieces(cfg.K, 2, F.default_warps(cfg.K, 2)) == (64, 32, 4)
    a, b = _both(cfg, params, st, rb=2, triton_layout=True)
    _assert_identical(a, b)
    assert int(np.sum(a[0].queue.n_used >= 64)) > 0 and int(np.sum(a[0].counters.swaps)) > 0  # the later pieces in use


def test_default_trials_per_program_and_warps_are_powers_of_two():
    for K in (16, 64, 96, 128, 288, 512, 640, 1024, 4096, 8192):
        rb = F.default_trials_per_program(K)
        w = F.default_warps(K, rb)
        assert rb >= 1 and rb & (rb - 1) == 0 and (rb * K <= 1024 or rb == 1)
        assert 1 <= w <= 32 and w & (w - 1) == 0
        if K <= F.ONE_WARP_MAX_K:  # one warp per trial, its slots in pieces of at most MAX_PIECE
            assert w == min(rb, 32) and max(F.kernel_pieces(K, rb, w)) <= F.MAX_PIECE
        else:
            per_thread = F.SLOTS_PER_THREAD if K & (K - 1) == 0 else F.PIECED_SLOTS_PER_THREAD
            assert rb * K <= 32 * w * per_thread or w == 32
    assert (F.default_trials_per_program(288), F.default_warps(288, 1), F.default_trials_per_program(512), F.default_warps(512, 2)) == (1, 1, 2, 8)


def test_auto_falls_back_to_xla_when_the_kernel_cannot_compile(monkeypatch, tmp_path):
    """`auto` picks the fused kernel when `lqs bench` recorded it fastest and identical here (K rounded for Triton);
    if it then fails to compile, the run continues on the XLA path, says so in a warning and in the result.
    Simulated by pretending to be on a GPU: the Triton kernel cannot be compiled for the CPU backend."""
    from lqs.engine import records as B

    kw = dict(trials=2, steps=256, warmup=64, K=K_SMALL_RUN, key=jax.random.key(4))  # test_bench's XLA program
    srv = lqs.Server(M=400, prefill_chunk=16, b=0.05)
    monkeypatch.setenv("LQS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(LP, "on_gpu", lambda: True)
    _, sz, _, _ = L.prepare(SMALL, srv, [6.0], lqs.MonteCarlo(trials=2, warmup=64, K=K_SMALL_RUN, path="xla"), 256)
    B.save_record(B.record_key("swap", "constant", sz.K), dict(paths={
        "xla": dict(trial_steps_per_s=1e5, identical=True), "fused": dict(trial_steps_per_s=4e5, identical=True)}))
    with pytest.warns(UserWarning, match="fused kernel failed"):
        r = lqs.simulate(SMALL, srv, [6.0], path="auto", **kw, verdict=False)
    sz = r.config["sizing"]
    assert sz["path"] == "xla" and "fused kernel failed" in sz["path_reason"]

"""The fused Pallas step loop (kernels/fused.py) against the XLA engine: identical trajectories from the same key.

On a CPU the kernel runs in Pallas interpret mode (the kernel body evaluated as written, block by block); the
Triton lowering for CUDA is checked here too, without a GPU, through jax.export.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import lqs
from lqs import _engine as L
from lqs._batch import AffineBatch, ConstantBatch, EmpiricalBatch, LogNormalMixBatch
from lqs.kernels import engine as E
from lqs.kernels import fused as F

SMALL = lqs.Independent(lqs.IntUniform(8, 40, "s"), lqs.IntUniform(4, 30, "o"))
BATCHES = {
    "constant": ConstantBatch(0.05),
    "affine": AffineBatch(0.01, 2e-4, 1e-3, 2e-5),
    "empirical": EmpiricalBatch([0.03, 0.045, 0.05, 0.07, 0.11]),
    "lognormal": LogNormalMixBatch.two_speed(0.04, 0.12, slow_frac=0.3, sigma=0.2),
}


def _prepared(workload, *, M, chunk, lam, b, policy, replicas=3, steps=512, token_budget=None, K=None, seed=1):
    cfg, sizing, grid, params = L._prepare(workload, M=M, chunk=chunk, lam=lam, b=b, policy=policy, replicas=replicas,
                                           steps=steps, warmup=64, token_budget=token_budget, K=K, compact_every=64,
                                           max_points=1000, engine="xla")
    keys = jax.random.split(jax.random.key(seed), len(grid) * replicas)
    return cfg, params, L._init_jit(keys, params, cfg)


def _both(cfg, params, states, rb):
    xla = jax.jit(E.run_chunk_batched, static_argnums=2)(states, params, cfg)
    fused = jax.jit(lambda s, p: F.run_chunk_batched(s, p, cfg, rb=rb, interpret=True))(states, params)
    return jax.device_get(xla), jax.device_get(fused)


def _assert_identical(a, b):
    la = jax.tree_util.tree_leaves_with_path(a)
    lb = jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    bad = [jax.tree_util.keystr(p) for (p, x), y in zip(la, lb)
           if np.shape(x) != np.shape(y) or not np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)]
    assert not bad, f"fused and XLA paths differ in {bad}"


# every policy and every batch-time model, each at least twice; the rest of the product is marked slow
_COVER = [("fcfs", "constant"), ("fcfs", "affine"), ("fcfs", "empirical"), ("fcfs", "lognormal"),
          ("recompute", "constant"), ("recompute", "affine"), ("recompute", "lognormal"),
          ("reserve", "empirical"), ("reserve", "lognormal")]
_CASES = [pytest.param(p, b, marks=() if (p, b) in _COVER else pytest.mark.slow)
          for p in E.POLICIES for b in BATCHES]


@pytest.mark.parametrize("policy,batch", _CASES)
def test_identical_to_xla_small(policy, batch):
    """Every policy × batch-time model, below, near and above capacity (λ = 0.5, 3, 8 per s), 3 replicas each."""
    cfg, params, st = _prepared(SMALL, M=400, chunk=16, lam=[0.5, 3.0, 8.0], b=BATCHES[batch], policy=policy)
    a, b = _both(cfg, params, st, rb=2)  # 9 replicas in blocks of 2: the padding path too
    _assert_identical(a, b)
    st_a = a[0]
    assert int(np.sum(st_a.arrivals)) > 100 and int(np.sum(st_a.completions)) > 50  # the run did something
    if policy != "reserve" and batch != "affine":
        assert int(np.sum(st_a.swaps)) > 0  # preemptions exercised


@pytest.mark.parametrize("policy", E.POLICIES)
def test_identical_with_token_budget_and_capacity_limits(policy):
    """Token budget; too few slots (overflow queue, starvation counter) and a tiny arrival cap (truncation)."""
    cfg, params, st = _prepared(SMALL, M=400, chunk=16, lam=[6.0, 30.0], b=0.05, policy=policy, token_budget=40,
                                K=16)
    from dataclasses import replace

    cfg = replace(cfg, a_max=2)
    a, b = _both(cfg, params, st, rb=4)
    _assert_identical(a, b)
    st_a = a[0]
    assert int(np.sum(st_a.overflow)) > 0 and int(np.sum(st_a.arr_trunc)) > 0
    if policy != "reserve":
        assert int(np.sum(st_a.starved)) > 0


@pytest.mark.parametrize("policy", E.POLICIES)
def test_identical_on_the_paper_workload(policy):
    """pd-1:1 at the paper's M = 131,000 tokens, ŝ = 512, b̄ = 0.0372 s, below and above μ (K = 288)."""
    cfg, params, st = _prepared(lqs.preset("pd-1:1"), M=131_000, chunk=512, lam=[2.5, 4.0], b=0.0372,
                                policy=policy, replicas=2, steps=1024)
    a, b = _both(cfg, params, st, rb=4)
    _assert_identical(a, b)
    assert int(np.sum(a[0].completions)) > 20


def test_identical_on_a_pairs_trace_mixture():
    w = lqs.load_trace("azure-code").workload()
    cfg, params, st = _prepared(w, M=60_000, chunk=512, lam=[1.0, 6.0], b=0.04, policy="fcfs", replicas=2)
    _assert_identical(*_both(cfg, params, st, rb=1))


def test_simulate_engine_flag_identical_results_and_reports_the_path():
    kw = dict(M=400, chunk=16, lam=[2.0, 6.0], b=0.05, replicas=3, steps=1024, warmup=128, key=jax.random.key(9))
    x = lqs.simulate(SMALL, engine="xla", **kw)
    f = lqs.simulate(SMALL, engine="fused", fused_rb=2, **kw)
    assert x.config["sizing"]["engine"] == "xla"
    assert f.config["sizing"]["engine"] == "fused-interpret" and f.config["sizing"]["fused_rb"] == 2
    for c in x.replicas.columns:
        assert x.replicas[c].equals(f.replicas[c]), c
    assert np.array_equal(x.hist, f.hist) and np.array_equal(x.series_waiting, f.series_waiting)
    a = lqs.simulate(SMALL, engine="auto", **kw)  # no GPU here: auto runs the XLA path
    assert a.config["sizing"]["engine"] == "xla" and "auto" in a.config["sizing"]["engine_reason"]


def test_engine_errors_name_the_parameter_before_compiling():
    before = L.TRACE_COUNT["run_chunk"]
    kw = dict(M=400, chunk=16, lam=2.0, b=0.05, replicas=2, steps=256, warmup=0)
    with pytest.raises(lqs.LqsError, match="engine"):
        lqs.simulate(SMALL, engine="triton", **kw)
    with pytest.raises(lqs.LqsError, match="engine.*servers > 1"):
        lqs.simulate(SMALL, engine="fused", servers=2, **kw)
    with pytest.raises(lqs.LqsError, match="fused_rb"):
        lqs.simulate(SMALL, engine="fused", fused_rb=3, **kw)
    with pytest.raises(lqs.LqsError, match="engine"):
        lqs.set_engine("gpu")
    assert L.TRACE_COUNT["run_chunk"] == before


def test_default_engine_from_set_engine_and_environment(monkeypatch):
    monkeypatch.setenv("LQS_ENGINE", "fused")
    assert lqs.default_engine() == "fused"
    lqs.set_engine("xla")
    try:
        assert lqs.default_engine() == "xla"
    finally:
        lqs.set_engine(None)
    monkeypatch.setenv("LQS_ENGINE", "bogus")
    with pytest.raises(lqs.LqsError, match="LQS_ENGINE"):
        lqs.default_engine()


def test_clusters_and_phases_fall_back_to_xla_under_auto():
    r = lqs.simulate(SMALL, M=400, chunk=16, lam=4.0, b=0.05, replicas=2, steps=256, warmup=0, servers=2,
                     engine="auto")
    assert r.config["sizing"]["engine"] == "xla" and "servers" in r.config["sizing"]["engine_reason"]


@pytest.mark.parametrize("policy,batch,budget", [("fcfs", "constant", None), ("recompute", "affine", 64),
                                                 ("reserve", "empirical", None), ("fcfs", "lognormal", 64)])
def test_lowers_to_triton_for_cuda(policy, batch, budget):
    """Every primitive of the fused step has a Triton lowering (checked without a GPU via jax.export)."""
    cfg, params, st = _prepared(SMALL, M=400, chunk=16, lam=[3.0], b=BATCHES[batch], policy=policy, replicas=8,
                                token_budget=budget, K=128)
    text = F.lower_for_gpu(st, params, cfg, rb=4)
    assert "__gpu$xla.gpu.triton" in text and "lqs_step_loop" in text


def test_default_block_and_warps_are_powers_of_two():
    for K in (64, 96, 128, 288, 512, 1024, 4096, 8192):
        rb = F.default_block(K)
        w = F.default_warps(K, rb)
        assert rb >= 1 and rb & (rb - 1) == 0 and (rb * K <= 1024 or rb == 1)
        assert 1 <= w <= 32 and w & (w - 1) == 0
        assert rb * K <= 32 * w * F.SLOTS_PER_THREAD or w == 32


def test_auto_falls_back_to_xla_when_the_kernel_cannot_compile(monkeypatch):
    """`auto` on a GPU picks the fused kernel (K rounded up to a power of two); if it fails to compile, the run
    continues on the XLA path, says so in a warning and in the result. Simulated here by pretending to be on a GPU:
    the Triton kernel cannot be compiled for the CPU backend."""
    kw = dict(M=400, chunk=16, lam=[2.0, 6.0], b=0.05, replicas=2, steps=512, warmup=64, key=jax.random.key(4))
    monkeypatch.setattr(L, "_on_gpu", lambda: True)
    with pytest.warns(UserWarning, match="fused kernel failed"):
        r = lqs.simulate(SMALL, engine="auto", **kw)
    sz = r.config["sizing"]
    assert sz["engine"] == "xla" and "fused kernel failed" in sz["engine_reason"]
    assert sz["K"] & (sz["K"] - 1) == 0
    monkeypatch.setattr(L, "_on_gpu", lambda: False)
    x = lqs.simulate(SMALL, engine="xla", K=sz["K"], **kw)
    for c in x.replicas.columns:
        assert x.replicas[c].equals(r.replicas[c]), c


def test_replica_count_not_a_multiple_of_the_block():
    """6 replicas in programs of 4: padded once before the run (copies of the last replica), dropped after."""
    kw = dict(M=400, chunk=16, lam=[2.0, 6.0], b=0.05, replicas=3, steps=512, warmup=64, key=jax.random.key(2))
    x = lqs.simulate(SMALL, engine="xla", **kw)
    f = lqs.simulate(SMALL, engine="fused", fused_rb=4, **kw)
    assert len(f.replicas) == 6 and f.hist.shape == x.hist.shape
    for c in x.replicas.columns:
        assert x.replicas[c].equals(f.replicas[c]), c

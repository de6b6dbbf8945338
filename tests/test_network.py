"""The coupled disaggregated network (kernels/network.py) against its plain-Python reference
(tests/reference_network.py), event for event; and its invariants and limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lqs
from lqs._batch import AffineBatch
from lqs._disagg import Disaggregated, Transfer
from lqs.engine.network import simulate_network
from lqs.kernels import rng
from lqs.kernels import state as K_
from lqs.kernels.network import EV_ARRIVAL, EV_DECODE, EV_PREFILL, EV_ROUTE

from reference_network import reference_network

SMALL = lqs.Independent(lqs.IntUniform(1, 40, "s"), lqs.IntUniform(1, 24, "o"))
TYPES = {EV_PREFILL: "P", EV_DECODE: "D", EV_ROUTE: "R", EV_ARRIVAL: "A"}


def _batch_fn(dep_p, dep_d):
    def one(server):
        b = server.b
        if isinstance(b, AffineBatch):
            a = np.asarray(b.a, np.float32)
            return lambda pre, dec, mem: (a[0] + np.float32(a[1] * np.float32(pre)) + np.float32(a[2] * np.float32(dec))
                                          + np.float32(a[3] * np.float32(mem)))
        return lambda pre, dec, mem: np.float32(b)

    fp, fd = one(dep_p), one(dep_d)
    return lambda pool, g, n, pre, dec, mem: (fp if pool == "P" else fd)(pre, dec, mem)


def _run_both(dep, lam, *, horizon_s, workload=SMALL, seed=0):
    res = simulate_network(workload, dep, lam, trials=1, horizon_s=horizon_s, warmup_s=0.0, record=4000, trace=True,
                           seed=seed, K=256)
    rec = res.records[0]
    n_arr = int(res.trials.arrivals.iloc[0])
    assert n_arr < 4000
    tr = {k: v[0] for k, v in res.trace.items()}
    keep = tr["type"] >= 0
    ev = [(TYPES[int(t)], int(g), np.float32(tt), int(m), int(ns), np.float32(b), int(tg), int(r))
          for t, g, tt, m, ns, b, tg, r in zip(tr["type"][keep], tr["server"][keep], tr["t"][keep], tr["mem"][keep],
                                                tr["n_sched"][keep], tr["b"][keep], tr["target"][keep],
                                                tr["rid"][keep])]
    # the engine's draws: lengths and routing uniforms from its streams, arrival instants as it drew them
    import jax
    import jax.numpy as jnp

    keys = np.asarray(jax.vmap(lambda k: __import__("lqs.kernels.netstate", fromlist=["_keys"])._keys(k))(
        jax.random.split(jax.random.key(seed), 1)))[0]
    idx = jnp.arange(max(n_arr, 1), dtype=jnp.int32)
    s, o, _ = K_.draw_lengths(workload, jnp.asarray(keys[1]), idx, jnp.int32(dep.prefill.prefill_chunk))
    s, o = np.asarray(s).tolist(), np.asarray(o).tolist()
    arrivals = [np.float32(x) for x in rec[0, :n_arr]]

    def route_u(rid, pool):
        return np.float32(rng.uniform(np.uint32(keys[2]), np.asarray(rid, np.uint32), 0 if pool == "P" else 1))

    pools = {}
    for name, srv in (("prefill", dep.prefill), ("decode", dep.decode)):
        pools[name] = dict(M=srv.M, chunk=srv.prefill_chunk, policy=srv.policy, budget=srv.token_budget,
                           routing=srv.routing)
    inv = 0.0 if np.isinf(dep.transfer.tokens_per_s) else 1.0 / dep.transfer.tokens_per_s
    events, reqs, totals = reference_network(
        n_p=dep.n_prefill, n_d=dep.n_decode, prefill=pools["prefill"], decode=pools["decode"],
        tau0=dep.transfer.latency_s, inv_rate=inv, arrivals=arrivals, lengths=lambda i: (s[i], o[i]),
        batch_time=_batch_fn(dep.prefill, dep.decode), route_u=route_u, t_stop=np.float32(horizon_s),
        K_decode=256)
    return res, rec, ev, events, reqs, totals


def _assert_same(res, rec, ev, events, reqs, totals):
    n = min(len(ev), len(events))
    for i in range(n):
        e, r = ev[i], events[i]
        same = e[0] == r[0] and e[1] == r[1] and e[3:5] == r[3:5] and e[6:] == r[6:]
        same = same and np.isclose(e[2], r[2], rtol=1e-6, atol=0) and np.isclose(e[5], r[5], rtol=1e-6)
        assert same, f"event {i} differs: engine {e}, reference {r} (previous: {ev[max(i - 3, 0):i]})"
    assert len(ev) == len(events), f"engine ran {len(ev)} events, reference {len(events)}"
    row = res.trials.iloc[0]
    assert int(row.arrivals) == totals["arrivals"] and int(row.completions) == totals["completions"]
    assert int(row.lost) == totals["lost"] == 0 and int(row.violations) == totals["violations"] == 0
    assert int(row.in_system_final) == totals["in_system"] and bool(row.conserved)
    for r in reqs:  # per-request instants: the prefill's first step, TTFT, transfer end, decode's first step, end
        for j, v in ((1, r.t_first), (2, r.t_ttft), (3, r.t_enter), (4, r.t_first_d), (5, r.t_done)):
            recorded = r.t_done is not None if j >= 4 else r.t_enter is not None  # the engine writes at routing, end
            if recorded:
                assert rec[j, r.rid] == pytest.approx(float(v), rel=1e-6), (r.rid, j)
        assert rec[6, r.rid] == r.p
        if r.dsrv is not None:
            assert rec[7, r.rid] == r.dsrv


def _dep(policy, *, b_p=0.01, b_d=0.01, n_p=2, n_d=3, M_p=300, M_d=500, transfer=Transfer(0.003, 4000.0),
         routing="round_robin", d_routing=None, budget=None, chunk=8):
    P = lqs.Server(M=M_p, prefill_chunk=chunk, b=b_p, policy=policy, routing=routing, token_budget=budget)
    D = lqs.Server(M=M_d, prefill_chunk=chunk, b=b_d, policy=policy, routing=d_routing or routing)
    return Disaggregated(P, D, n_p, n_d, transfer)


@pytest.mark.parametrize("policy", ["swap", "recompute", "reserve"])
def test_tied_clocks_identical(policy):
    """Equal constant batch times on both pools: every step boundary of every server coincides (ties everywhere),
    loaded near the decode pool's capacity so that preemptions happen."""
    dep = _dep(policy, transfer=Transfer(0.0), M_d=300)  # μ_D ≈ 247 req/s, μ_P ≈ 1500 req/s
    out = _run_both(dep, 230.0, horizon_s=3.0)
    _assert_same(*out)
    assert int(out[0].trials.swaps_decode.iloc[0]) > 0 or policy == "reserve"


@pytest.mark.parametrize("policy", ["swap", pytest.param("recompute", marks=pytest.mark.slow),
                                    pytest.param("reserve", marks=pytest.mark.slow)])
def test_affine_batch_and_transfer_identical(policy):
    """Affine batch times (each server's clock its own), a transfer with latency and rate, jsq and least_kv."""
    aff_p = AffineBatch(0.004, 2e-4, 0.0, 1e-6)
    aff_d = AffineBatch(0.006, 0.0, 3e-4, 2e-6)
    P = lqs.Server(M=300, prefill_chunk=8, b=aff_p, policy=policy, routing="jsq", b_theory=0.01)
    D = lqs.Server(M=500, prefill_chunk=8, b=aff_d, policy=policy, routing="least_kv", b_theory=0.01)
    dep = Disaggregated(P, D, 2, 2, Transfer(0.002, 3000.0))
    _assert_same(*_run_both(dep, 50.0, horizon_s=5.0))


def test_random_routing_and_token_budget_identical():
    dep = _dep("swap", routing="random", budget=24, n_p=3, n_d=2, b_p=0.008, b_d=0.011)
    _assert_same(*_run_both(dep, 40.0, horizon_s=6.0))


def _sat_case(dep, workload=SMALL):
    from lqs._disagg import capacity_disagg
    from lqs.engine.stations import station_saturation

    sat = station_saturation(workload, dep, lqs.MonteCarlo(trials=8, steps=6000, warmup=1000), seed=3)
    lam_p = dep.n_prefill * sat["prefill"]["lam_star_rps"]
    lam_d = dep.n_decode * sat["decode"]["lam_star_rps"]
    se = dep.n_prefill * sat["prefill"]["lam_star_se_rps"] if lam_p < lam_d else \
        dep.n_decode * sat["decode"]["lam_star_se_rps"]
    cap = capacity_disagg(workload, dep)
    res = simulate_network(workload, dep, 1.3 * cap.mu_pd_rps, trials=4, horizon_s=40.0, warmup_s=10.0,
                           drain_s=1.0, seed=5, K=512)
    return res, min(lam_p, lam_d), se, cap


@pytest.mark.parametrize("which", ["decode", pytest.param("prefill", marks=pytest.mark.slow)])
def test_overloaded_network_saturates_at_the_binding_station(which):
    """Above μ_PD the coupled network completes requests at min(λ*_P, λ*_D), the per-station saturation rule."""
    if which == "decode":
        dep = _dep("swap", transfer=Transfer(0.0), M_d=300, n_p=2, n_d=3)
    else:
        dep = _dep("swap", transfer=Transfer(0.0), M_p=60, M_d=600, n_p=1, n_d=3)
    res, lam_pd, se, cap = _sat_case(dep)
    s = res.summary.iloc[0]
    assert cap.binding == which
    assert s.observed_drift_rps > 0.1 * lam_pd  # the backlog grows: the run is overloaded
    tol = 1.96 * math.hypot(se, s.throughput_se_rps) + 0.01 * lam_pd
    assert abs(s.throughput_rps - lam_pd) < tol, (s.throughput_rps, lam_pd, tol)
    assert int(s.violations) == 0 and bool(s.conserved)


def test_light_load_latencies_and_invariants():
    """Below capacity: nothing lost, conserved, memory within M on both pools, the transfer time is τ0 + s/r of
    the requests, and every latency is ordered (TTFT ≤ E2E, transfer + decode wait ≤ E2E − TTFT)."""
    dep = _dep("swap", transfer=Transfer(0.004, 2000.0), n_p=2, n_d=2)
    res = simulate_network(SMALL, dep, 80.0, trials=3, horizon_s=30.0, warmup_s=5.0, seed=1)
    s = res.summary.iloc[0]
    assert s.reliable and int(s.lost) == 0 and int(s.censored) == 0 and bool(s.conserved)
    assert s.mem_max_prefill <= dep.prefill.M and s.mem_max_decode <= dep.decode.M
    assert s.throughput_rps == pytest.approx(80.0, rel=0.05)
    e_tau = 0.004 + (1 + 40) / 2 / 2000.0
    assert s.transfer_mean_s == pytest.approx(e_tau, rel=0.03)
    assert s.ttft_mean_s < s.e2e_mean_s
    assert s.transfer_mean_s + s.decode_wait_mean_s < s.e2e_mean_s - s.ttft_mean_s
    # without a transfer every transfer time is 0 s: reported as 0, not as the middle of the first histogram bin
    s0 = simulate_network(SMALL, _dep("swap", n_p=2, n_d=2, transfer=Transfer()), 80.0, trials=3, horizon_s=30.0, warmup_s=5.0,
                          seed=1).summary.iloc[0]
    assert [s0.transfer_p50_s, s0.transfer_p99_s, s0.transfer_mean_s] == [0.0, 0.0, 0.0] and s0.ttft_p50_s > 0


def test_network_bad_input_named_before_compiling():
    dep = _dep("swap")
    with pytest.raises(lqs.LqsError, match="lam"):
        simulate_network(SMALL, dep, 0.0, trials=2, horizon_s=10.0)
    with pytest.raises(lqs.LqsError, match="horizon_s"):
        simulate_network(SMALL, dep, 5.0, trials=2, horizon_s=1.0, warmup_s=0.9)
    with pytest.raises(lqs.LqsError, match="decode M"):
        simulate_network(SMALL, _dep("swap", M_d=40), 5.0, trials=2, horizon_s=10.0)


def test_simulate_critical_and_split_table_accept_a_deployment(tmp_path):
    """lqs.simulate runs the coupled network with the per-station verdict; lqs.critical gives λ*_PD inside the
    closed-form band; split_table adds the coupled latency of every split beside the colocated cluster's."""
    dep = _dep("swap", transfer=Transfer(0.002, 5000.0), M_d=300, n_p=1, n_d=2)
    cap = lqs.capacity(SMALL, dep)
    mc = lqs.MonteCarlo(trials=3, steps=2500, warmup=500, seed=2)
    res = lqs.simulate(SMALL, dep, [0.5 * cap.mu_pd_rps, 1.4 * cap.mu_pd_rps], mc, verdict=mc)
    s = res.summary
    assert list(s.verdict) == ["stable", "unstable"]
    assert s.observed_drift_rps.iloc[1] > 0.2 * cap.mu_pd_rps > abs(s.observed_drift_rps.iloc[0])
    crit = lqs.critical(SMALL, dep, mc, grid_points=0).summary
    assert crit["binding_sim"] == cap.binding == "decode"
    assert cap.mu_pd_stable_rps - 1.96 * crit["lam_star_se_rps"] <= crit["lam_star_rps"] <= cap.mu_pd_rps * 1.01
    df = lqs.split_table(SMALL, dep, 3, simulate=True, mc=mc, lam=0.5 * cap.mu_pd_rps,
                         latency_mc=lqs.MonteCarlo(trials=2, seed=1), horizon_s=20.0, warmup_s=4.0)
    assert {"net_ttft_p99_s", "net_e2e_p99_s", "net_tpot_p50_s", "net_reliable"} <= set(df.columns)
    colo = df[df.binding == "colocated"].iloc[0]
    assert colo.net_e2e_p99_s > colo.net_ttft_p99_s > 0
    stable = df[(df.binding != "colocated") & (df.verdict == "stable")]
    assert len(stable) and stable.net_reliable.all()
    assert (abs(stable.net_throughput_rps / stable.lam_rps - 1) < 0.1).all()


@pytest.mark.slow
def test_sweep_and_phase_take_the_split_and_the_decode_pool_as_axes(tmp_path):
    """A sweep over pd_split (colocated and 1:2) × the decode pool's b̄: one row per cell, the disaggregated cells
    run by the coupled network with the per-station verdict; and the phase diagram along pd_split has λ*_PD of
    every split inside its closed-form band."""
    from lqs.studies import phase_diagram

    spec = dict(workload=["pd_ratio:1:60"], lam=[6.0], M=600, prefill_chunk=16, b=0.01, pd_split=[None, "1:2"],
                decode_b=[None, 0.008], trials=2, steps=2500, warmup=500, options=dict(K=256))
    df = lqs.sweep(spec, out=str(tmp_path / "sw"), progress=False)
    assert lqs.SweepSpec.from_dict(spec).n_cells == 3 and len(df) == 3
    assert len(lqs.load_sweep(str(tmp_path / "sw"))) == 3
    pdc = df[df.pd_split.notna()]
    assert sorted(pdc.decode_b_s) == [0.008, 0.01] and (pdc.verdict == "stable").all()
    assert pdc.ttft_p99_s.notna().all() and (abs(pdc.throughput_rps / 6.0 - 1) < 0.15).all()
    res = phase_diagram(SMALL, lqs.Server(M=300, prefill_chunk=8, b=0.01), lqs.MonteCarlo(trials=6, steps=4000,
                        warmup=800), axis="pd_split", gpus=3)
    d = res.data
    assert list(d.layout) == ["1P:2D", "2P:1D"]
    assert ((d.lam_star_hi_rps >= d.mu_stable_rps) & (d.lam_star_lo_rps <= d.mu_rps)).all()


def _station_rows(dep, mc):
    from lqs.engine.stations import network_station_saturation

    return network_station_saturation(SMALL, dep, mc, seed=4)


def test_stations_with_a_transfer_saturate_inside_their_bands():
    """With a transfer that takes time, each station's λ* comes from the coupled network with a permanent backlog
    (the prefill server holding each prompt's KV for τ(s), the decode server reserving it) and lies in
    [μ_i(1−δ_i), μ_i] of the closed form that charges those token·steps to g_P and g_D."""
    from lqs._disagg import capacity_disagg
    from lqs.engine.stations import station_saturation

    dep = _dep("swap", transfer=Transfer(0.02, 2000.0), M_d=300, n_p=1, n_d=1)
    mc = lqs.MonteCarlo(trials=6, steps=5000, warmup=1000)
    rows = station_saturation(SMALL, dep, mc, seed=4)  # dispatches to the network with this transfer
    c = capacity_disagg(SMALL, dep)
    for name, mu, d in (("prefill", c.mu_prefill_rps, c.delta_prefill), ("decode", c.mu_decode_rps, c.delta_decode)):
        r = rows[name]
        assert r["reliable"], r["unreliable_reason"]
        assert mu * (1 - d) <= r["lam_star_hi_rps"] and r["lam_star_lo_rps"] <= mu, (name, r, mu, d)
    # the transfer costs capacity: both stations saturate below their no-transfer rates
    free = capacity_disagg(SMALL, _dep("swap", transfer=Transfer(0.0), M_d=300, n_p=1, n_d=1))
    assert rows["prefill"]["lam_star_hi_rps"] < free.mu_prefill_rps * (1 - free.delta_prefill)
    assert rows["decode"]["lam_star_rps"] < free.mu_decode_rps


@pytest.mark.slow
def test_network_station_saturation_equals_the_engines_without_transfer():
    """Without a transfer the network's saturated stations and the colocated engine's station runs measure the
    same λ* (16 trials of 8,000 steps: within 3 standard errors)."""
    from lqs.engine.stations import station_saturation

    dep = _dep("swap", transfer=Transfer(0.0), M_d=300, n_p=1, n_d=1)
    mc = lqs.MonteCarlo(trials=16, steps=8000, warmup=1000)
    eng = station_saturation(SMALL, dep, mc, seed=4)
    net = _station_rows(dep, mc)
    for name in ("prefill", "decode"):
        se = math.hypot(eng[name]["lam_star_se_rps"], net[name]["lam_star_se_rps"])
        assert abs(eng[name]["lam_star_rps"] - net[name]["lam_star_rps"]) < 3 * se, (name, eng[name], net[name])

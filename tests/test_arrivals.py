"""Gamma and replayed arrivals in the long-run engine (docs/model.md, "Arrival processes"): per-step counts and
arrival instants exactly as given, conservation and memory, burstier arrivals waiting longer at the same λ, λ*
unchanged, and the bad inputs refused before anything compiles.

Shapes: FAST (tests/shapes.py) at K_FAST; the given-instants programs are their own shape (EngineConfig.arrivals)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lqs
from cli_run import one_line_error, run
from lqs.engine.run import step_log
from lqs.kernels.step import count_instants
from shapes import B_FAST, CHUNK_FAST, FAST, K_FAST, M_FAST, PD16K_FLAGS

pytestmark = pytest.mark.xdist_group("arrivals")

SRV = lqs.Server(M=M_FAST, prefill_chunk=CHUNK_FAST, b=B_FAST)
MC = lqs.MonteCarlo(trials=8, steps=6144, warmup=1024, K=K_FAST, seed=5)


def _clock32(b):
    """The engine's float32 clock: the ends of the steps, added one by one with Kahan's compensation."""
    out = np.empty(len(b), np.float32)
    t = c = np.float32(0)
    for i, x in enumerate(np.asarray(b, np.float32)):
        y = np.float32(x - c)
        n = np.float32(t + y)
        c = np.float32(np.float32(n - t) - y)
        t = out[i] = n
    return out


def test_replayed_instants_arrive_in_the_steps_that_contain_them():
    rng = np.random.default_rng(1)
    inst = np.sort(rng.uniform(0, 30, 300))
    arr = lqs.Arrivals("replayed", instants_s=inst)
    lam = 0.9 * arr.pattern_rate_rps  # time-scaled: the pattern stretched by 1/0.9, repeated past its period
    srv = lqs.Server(M=20000, prefill_chunk=512, b=0.0237)
    wl = lqs.Pairs(np.array([200, 400, 300]), np.array([5, 10, 8]))
    df, st, cfg = step_log(wl, srv, lam, steps=2048, arrivals=arr)
    assert cfg.arrivals == "instants"
    t1 = _clock32(df["b"])
    t0 = np.concatenate([[np.float32(0)], t1[:-1]])
    given = arr.engine_instants(lam, 4000, jax.random.split(jax.random.key(0), 1))[0]
    expect = np.searchsorted(given, t1) - np.searchsorted(given, t0)
    assert df["arrivals"].sum() > 400 and np.array_equal(expect, df["arrivals"].to_numpy())
    assert int(st.limits.violations) == 0 and int(st.limits.arr_trunc) == 0


def test_a_replayed_request_waits_from_its_own_instant():
    # instants 0.3·b after a step boundary: every request waits 0.7·b for the next step (uniform stamping within
    # the step, as for Poisson, would give b/2 on average)
    b = 0.02
    inst = np.concatenate([[0.0], 5 * b * np.arange(1, 400) + 0.3 * b])
    arr = lqs.Arrivals("replayed", instants_s=inst)
    wl = lqs.Pairs(np.array([100, 200]), np.array([3, 5]))
    srv = lqs.Server(M=20000, prefill_chunk=512, b=b)
    df, st, _ = step_log(wl, srv, arr.pattern_rate_rps, steps=1024, arrivals=arr)
    n = int(st.latency.n)
    wait = float(st.latency.total[0]) / n
    assert n > 150 and abs(wait - 0.7 * b) < 0.01 * b, wait


def test_a_cluster_server_stamps_the_instants_of_the_requests_routed_to_it():
    # two instants in each step, 0.2·b and 0.6·b after its start, every 5th step; round robin sends the first of
    # each pair to server 0 (waits 0.8·b for the next boundary) and the second to server 1 (0.4·b). A server that
    # took the instants of its own arrival count instead (the one-server rule) would mix the two.
    b = 0.02
    base = 5 * b * np.arange(1, 300)
    inst = np.concatenate([[0.0, 0.4 * b], np.ravel(np.stack([base + 0.2 * b, base + 0.6 * b], 1))])
    arr = lqs.Arrivals("replayed", instants_s=inst)
    wl = lqs.Pairs(np.array([100, 200]), np.array([3, 5]))
    srv = lqs.Server(M=20000, prefill_chunk=512, b=b, servers=2, routing="round_robin")
    df, st, cfg = step_log(wl, srv, arr.pattern_rate_rps, steps=1024, arrivals=arr)
    assert cfg.arrivals == "instants" and cfg.servers == 2
    n = np.asarray(st.servers.latency.n)
    wait = np.asarray(st.servers.latency.total)[:, 0] / n
    assert (n > 150).all() and np.abs(wait - np.array([0.8, 0.4]) * b).max() < 0.01 * b, wait
    assert int(np.asarray(st.servers.counters.arrivals).sum()) == df["arrivals"].sum()
    assert int(np.asarray(st.servers.limits.violations).sum()) == 0


def test_gamma_arrivals_on_a_cluster_wait_longer_at_the_same_rate():
    srv = SRV.replace(servers=2, routing="jsq")
    lam = 0.8 * lqs.capacity(FAST, srv).mu_exact_stable_rps
    mc = MC.replace(trials=4)
    rows = {k: lqs.simulate(FAST, srv, lam, mc, arrivals=None if k == 1 else lqs.Arrivals("gamma", burstiness=k),
                            verdict=False).summary.iloc[0] for k in (1, 0.25)}
    for r in rows.values():
        assert r["violations"] == 0 and r["arrival_cap_hits"] == 0 and bool(r["reliable"])
        assert abs(r["throughput_rps"] - lam) < 0.06 * lam
    assert rows[0.25]["arrivals"].startswith("gamma") and rows[0.25]["wait_p99_s"] > 1.5 * rows[1]["wait_p99_s"]


def test_count_instants_counts_truncation_and_running_out():
    arr = jnp.asarray([0.1, 0.2, 0.3, 0.4, 0.5, jnp.inf], jnp.float32)
    n, tr = count_instants(arr, jnp.int32(0), jnp.float32(0.25), 4)
    assert (int(n), bool(tr)) == (2, False)
    n, tr = count_instants(arr, jnp.int32(0), jnp.float32(0.45), 3)  # four fall in the step, three looked at
    assert (int(n), bool(tr)) == (3, True)
    n, tr = count_instants(arr, jnp.int32(3), jnp.float32(9.0), 4)  # the last real instant: ran out
    assert (int(n), bool(tr)) == (2, True)
    # slot-major: one row per trial
    n, tr = count_instants(jnp.stack([arr, arr + 1]), jnp.asarray([0, 0], jnp.int32), jnp.asarray([0.25, 1.25],
                                                                                                  jnp.float32), 4)
    assert n.tolist() == [2, 2] and tr.tolist() == [False, False]


def test_burstier_arrivals_wait_longer_at_the_same_rate_and_keep_the_invariants():
    lam = 0.8 * lqs.capacity(FAST, SRV).mu_exact_stable_rps
    rows = {}
    for k in (0.25, 4.0):
        res = lqs.simulate(FAST, SRV, lam, MC, arrivals=lqs.Arrivals("gamma", burstiness=k), verdict=False)
        r = res.summary.iloc[0]
        assert r["violations"] == 0 and r["arrival_cap_hits"] == 0 and bool(r["reliable"])
        assert abs(r["throughput_rps"] - lam) < 0.05 * lam  # stable: completions keep up with the arrivals
        rows[k] = r
    assert rows[0.25]["arrivals"].startswith("gamma, burstiness 0.25")
    assert rows[0.25]["wait_p99_s"] > 2 * rows[4.0]["wait_p99_s"]
    assert rows[0.25]["wait_mean_s"] > 1.5 * rows[4.0]["wait_mean_s"]


@pytest.mark.slow
def test_gamma_near_one_agrees_with_poisson_and_repeats_with_its_seed():
    lam = 0.7 * lqs.capacity(FAST, SRV).mu_exact_stable_rps
    near = lqs.Arrivals("gamma", burstiness=1.0001)  # given instants, statistically Poisson
    a = lqs.simulate(FAST, SRV, lam, MC, arrivals=near, verdict=False).summary.iloc[0]
    p = lqs.simulate(FAST, SRV, lam, MC, verdict=False).summary.iloc[0]
    for col in ("throughput_rps", "mem_mean_tokens" if "mem_mean_tokens" in a else "throughput_rps"):
        assert abs(a[col] - p[col]) < 0.04 * p[col], col
    assert abs(a["wait_mean_s"] - p["wait_mean_s"]) < 0.25 * p["wait_mean_s"] + 1e-3
    again = lqs.simulate(FAST, SRV, lam, MC, arrivals=near, verdict=False).summary.iloc[0]
    assert again["throughput_rps"] == a["throughput_rps"] and again["wait_p99_s"] == a["wait_p99_s"]


@pytest.mark.slow
def test_the_long_run_verdict_does_not_depend_on_the_arrivals():
    lam = 1.05 * lqs.capacity(FAST, SRV).mu_exact_rps
    vmc = lqs.MonteCarlo(trials=4, steps=6144, warmup=1024, K=K_FAST, seed=2)
    v = lqs.engine.Verdict(mc=vmc)
    g = lqs.simulate(FAST, SRV, lam, MC, arrivals=lqs.Arrivals("gamma", burstiness=0.5), verdict=v).summary.iloc[0]
    p = lqs.simulate(FAST, SRV, lam, MC, verdict=v).summary.iloc[0]
    assert g["lam_star_rps"] == p["lam_star_rps"] and g["verdict"] == p["verdict"] == "unstable"


def test_bad_arrivals_are_refused_before_anything_compiles():
    with pytest.raises(lqs.LqsError, match="arrivals.*burst"):
        lqs.simulate(FAST, SRV, 1.0, MC, arrivals=lqs.Arrivals("burst"))
    with pytest.raises(lqs.LqsError, match="path.*fused.*arrival"):
        lqs.simulate(FAST, SRV, 1.0, MC.replace(path="fused"), arrivals=lqs.Arrivals("gamma", burstiness=2))
    with pytest.raises(lqs.LqsError, match="burstiness"):
        lqs.Arrivals("gamma", burstiness=0)
    with pytest.raises(lqs.LqsError, match="arrival_times"):
        lqs.simulate(FAST, SRV, 1.0, MC, arrivals=lqs.Arrivals("replayed", instants_s=[3.0]))
    with pytest.raises(lqs.LqsError, match="arrivals"):
        lqs.simulate(FAST, SRV, 1.0, MC, arrivals=3)
    with pytest.raises(lqs.LqsError, match="burstiness"):
        lqs.sweep(workload=["pd-1:1"], lam=[1.0], M=16384, prefill_chunk=512, b=0.0372, burstiness=-1)


def test_cli_arrival_flags(tmp_path):
    one_line_error(run(["simulate", *PD16K_FLAGS, "--lam", "1", "--burstiness", "0"]), "burstiness")
    f = tmp_path / "t.csv"
    f.write_text("input_length,output_length\n100,20\n200,30\n")
    one_line_error(run(["simulate", *PD16K_FLAGS, "--lam", "1", "--arrival-times", str(f)]), "arrival_times")
    one_line_error(run(["simulate", *PD16K_FLAGS, "--lam", "1", "--arrival-times", str(f), "--burstiness", "2"]),
                   "burstiness", "not both")
    one_line_error(run(["--path", "fused", "critical", *PD16K_FLAGS, "--burstiness", "2"]), "path")


def test_cli_replays_a_trace_pattern_with_the_engine_limits(tmp_path):
    f = _mooncake(tmp_path / "mooncake.csv")
    r = run(["simulate", *PD16K_FLAGS, "--lam", "0.3", "--arrival-times", f, "--max-running", "64",
             "--block-size", "16", "--trials", "2", "--steps", "3000", "--warmup", "500", "--K", "96",
             "--no-verdict", "--json"])
    assert r.exit_code == 0, r.output
    import json

    doc = json.loads(r.stdout)
    row = doc["summary"][0]
    assert doc["arrivals"].startswith("replayed instants (200")
    assert row["max_running"] == 64 and row["block_size_tokens"] == 16 and row["violations"] == 0
    assert row["lam_rps"] == pytest.approx(0.3) and row["arrival_cap_hits"] == 0 and row["reliable"]


def _mooncake(path, n=200, seed=0):
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(400.0, n))  # Mooncake convention: timestamp in milliseconds
    path.write_text("timestamp,input_length,output_length\n"
                    + "".join(f"{x:.1f},{rng.integers(50, 400)},{rng.integers(5, 60)}\n" for x in t))
    return str(path)


def test_sweep_replays_an_arrival_pattern(tmp_path):
    f = _mooncake(tmp_path / "arr.csv")
    kw = dict(workload=["pd-1:1"], lam=[0.3], M=16384, prefill_chunk=512, b=0.0372, trials=2, steps=3000,
              warmup=500, options={"K": 96})
    df = lqs.sweep(**kw, arrival_times=f, progress=False)
    row = df.iloc[0]
    assert row["arrivals"].startswith("replayed instants (200") and row["violations"] == 0 and row["reliable"]
    lines = tmp_path / "none.csv"
    lines.write_text("input_length,output_length\n100,20\n200,30\n")
    with pytest.raises(lqs.LqsError, match="arrival_times"):
        lqs.sweep(**kw, arrival_times=str(lines))
    with pytest.raises(lqs.LqsError, match="arrival_times.*not both"):
        lqs.sweep(**kw, arrival_times=f, burstiness=2)


def test_sweep_burstiness_is_an_axis():
    """burstiness as a sweep axis: Poisson cells keep their keys and numbers (the same cells without the axis),
    the gamma cells run gamma arrivals at the same λ and queue longer (CV 2 against 1)."""
    kw = dict(workload=["pd-1:1"], rho=[0.8], M=16384, prefill_chunk=512, b=0.0372, trials=4, steps=3000,
              warmup=500, progress=False)
    base = lqs.sweep(**kw)
    both = lqs.sweep(**kw, burstiness=[1, 0.25])
    assert len(both) == 2 * len(base) and sorted(both["burstiness"]) == [0.25, 1.0]
    pois, gam = both[both["burstiness"] == 1.0].iloc[0], both[both["burstiness"] == 0.25].iloc[0]
    assert pois["cell_key"] == base.iloc[0]["cell_key"] and "burstiness" in gam["cell_key"]
    assert pois["wait_p99_s"] == base.iloc[0]["wait_p99_s"] and pois["lam_rps"] == gam["lam_rps"]
    assert gam["arrivals"].startswith("gamma") and gam["reliable"] and pois["reliable"]
    assert gam["wait_p99_s"] > 1.5 * pois["wait_p99_s"]
    with pytest.raises(lqs.LqsError, match="burstiness.*repeat"):
        lqs.sweep(**kw, burstiness=[2, 2])

"""lqs.sweep: spec validation (names, aliases and renamed keys), grouping into simulate calls (one Server
per part), tidy table, ρ = λ/μ, deterministic keys, resume after a kill, refusing a different spec, and the
``lqs sweep`` command (YAML config and quick-grid flags)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import lqs
from lqs.cli import main
from lqs.sweep import plan as SP
from lqs.sweep import run as S

pytestmark = pytest.mark.xdist_group("sweep")  # one worker: its module fixtures run once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = "pd_ratio:1:400"  # s, o ~ U{10..200}: short requests, fast to simulate
# one real-engine configuration (every part has the same shapes: compiled once for the whole module; K pinned as in
# test_engine_properties, whose 4-lane program the parts share)
REAL = dict(workload=[W], lam=[0.5, 1.0, 1.5, 2.0], M=4096, prefill_chunk=256, b=0.02, trials=2, steps=2000,
            warmup=500, cells_per_part=2, options={"K": 160})


# ----------------------------------------------------------------------------------------------- a fake engine
def fake_simulate(workload, server, lam, mc, *, key=None, progress=False, devices=None, verdict=None):
    """Same grid order and columns as lqs.simulate, numbers drawn from ``key`` (so key mix-ups show)."""
    grid = [(lm, m, bt) for bt in server.bs for m in server.Ms for lm in lam]
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
    u = rng.random((len(grid), mc.trials))
    rows, per = [], []
    G = server.servers
    for ci, (lm, m, bt) in enumerate(grid):
        bb = server.b_theory if server.b_theory is not None else bt.mean_s
        cap = lqs.capacity(workload, lqs.Server(M=m, prefill_chunk=server.prefill_chunk, b=bb, servers=G))
        rows.append(dict(config=ci, lam_rps=lm, M_tokens=m, prefill_chunk_tokens=server.prefill_chunk, b_s=bb,
                         batch_model=bt.kind, policy=server.policy, token_budget=server.token_budget or 0, servers=G,
                         routing=server.routing, trials=mc.trials, steps=mc.steps, warmup_steps=mc.warmup,
                         mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps, mu_stable_rps=cap.mu_stable_rps,
                         rho=lm / cap.mu_rps, throughput_rps=float(u[ci].mean()),
                         p_backlog_grows=float((u[ci] > 0.5).mean()), reliable=True))
        for r in range(mc.trials):
            per.append(dict(config=ci, trial=r, lam_rps=lm, M_tokens=m, throughput_rps=float(u[ci, r])))

    class Res:
        summary = pd.DataFrame(rows)
        trials = pd.DataFrame(per)

    return Res()


class Calls:
    """Counts simulate calls (each as a dict: server, lam, mc and the keywords); optionally dies on the n-th."""

    def __init__(self, fail_on=None):
        self.kw = []
        self.fail_on = fail_on

    def __call__(self, workload, server, lam, mc, **kw):
        self.kw.append(dict(server=server, lam=lam, mc=mc, **kw))
        if self.fail_on is not None and len(self.kw) == self.fail_on:
            raise KeyboardInterrupt("killed")
        return fake_simulate(workload, server, lam, mc, **kw)


@pytest.fixture
def fake(monkeypatch):
    c = Calls()
    monkeypatch.setattr(S, "_simulate", c)
    return c


# policy "fcfs" is the old name of "swap" (accepted, normalised)
FAKE = dict(workload=[W, "pd_ratio:2:400"], lam=[1.0, 2.0, 3.0, 4.0, 5.0], M=[4096, 8192], prefill_chunk=256,
            b=0.02, policy=["fcfs", "reserve"], trials=3, steps=1000, warmup=100, cells_per_part=4)


def _parts(d):
    return sorted(glob.glob(os.path.join(d, "parts", "part-*[0-9].parquet")))


# ----------------------------------------------------------------------------------------------- spec
@pytest.mark.parametrize("change, param", [
    (dict(M=None), "M"),
    (dict(lam=None), "lam"),
    (dict(rho=[0.5]), "lam"),
    (dict(workload=["pd-3:1"]), "workload"),
    (dict(workload=["pd_ratio:-1"]), "workload"),
    (dict(workload=["trace:"]), "workload"),
    (dict(lam=[1.0, -2.0]), "lam"),
    (dict(lam=[1.0, 1.0]), "lam"),
    (dict(lam={"lo": 1, "hi": 2}), "lam"),
    (dict(lam="3:1:4"), "lam"),
    (dict(M=[0]), "M"),
    (dict(M=["lots"]), "M"),
    (dict(prefill_chunk=[1.5]), "prefill_chunk"),
    (dict(prefill_chunk=None, chunk=[1.5]), "prefill_chunk"),  # the alias is checked as the field
    (dict(chunk=[512]), "chunk"),  # both the alias and the field
    (dict(b=[0.0]), "b"),
    (dict(batch=["empirical"]), "batch"),
    (dict(batch=["lognormal:x"]), "batch"),
    (dict(batch=["affine:1,2"]), "batch"),
    (dict(policy=["lifo"]), "policy"),
    (dict(policy=["swap", "fcfs"]), "policy"),  # fcfs is swap: a repeat
    (dict(token_budget=[100]), "token_budget"),
    (dict(servers=[0]), "servers"),
    (dict(routing=["fastest"]), "routing"),
    (dict(trials=0), "trials"),
    (dict(replicas=4), "replicas"),  # renamed trials
    (dict(per_replica=True), "per_replica"),  # renamed per_trial
    (dict(cells_per_chunk=4), "cells_per_chunk"),  # renamed cells_per_part
    (dict(steps=100, warmup=500), "steps"),
    (dict(seed=-1), "seed"),
    (dict(per_trial="yes"), "per_trial"),
    (dict(cells_per_part=0), "cells_per_part"),
    (dict(options={"nonsense": 1}), "options"),
    (dict(options={"trials": 4}), "options"),
    (dict(options={"devices": 2}), "options"),
    (dict(options={"path": "warp"}), "path"),
    (dict(colour="blue"), "colour"),
])
def test_bad_spec_names_the_field(change, param):
    d = {**REAL, **change}
    with pytest.raises(lqs.LqsError) as e:
        lqs.SweepSpec.from_dict(d)
    assert e.value.param == param, str(e.value)


def test_renamed_keys_say_their_new_name(tmp_path):
    (tmp_path / "old.yaml").write_text("workload: pd-1:1\nlam: [1]\nM: 131000\nchunk: 512\nb: 0.0372\nreplicas: 8\n")
    with pytest.raises(lqs.LqsError, match="renamed trials") as e:
        lqs.SweepSpec.from_yaml(tmp_path / "old.yaml")
    assert e.value.param == "replicas"
    with pytest.raises(lqs.LqsError, match="renamed cells_per_part"):
        lqs.SweepSpec.from_dict(REAL).replace(cells_per_chunk=2)


def test_workload_too_big_for_M_is_refused_before_simulating(fake, tmp_path):
    with pytest.raises(lqs.LqsError) as e:
        lqs.sweep(workload=["pd-1:1"], lam=[1.0], M=2048, prefill_chunk=256, b=0.02, out=tmp_path, progress=False)
    assert e.value.param == "workload" and "M=2048" in str(e.value)
    assert fake.kw == [] and not os.path.exists(tmp_path / "spec.json")


def test_yaml_round_trip_and_forms(tmp_path):
    s = lqs.SweepSpec.from_dict({**FAKE, "lam": {"lo": 1, "hi": 5, "n": 5}, "token_budget": [None, 512],
                                 "batch": ["constant", "affine:0.01,1e-5,0,0"], "servers": [1, 2]})
    assert s.lam == [1.0, 2.0, 3.0, 4.0, 5.0] and s.token_budget == [None, 512]
    assert s.policy == ["swap", "reserve"]  # fcfs normalised
    p = tmp_path / "s.yaml"
    s.to_yaml(p)
    assert lqs.SweepSpec.from_yaml(p) == s
    r = s.replace(lam={"rho": [0.5, 0.9]})
    assert r.lam is None and r.rho == [0.5, 0.9]
    r.to_yaml(p)
    assert lqs.SweepSpec.from_yaml(p) == r
    assert lqs.SweepSpec.from_dict({**FAKE, "lam": "1:5:5"}).lam == s.lam
    assert s.replace(chunk=512).prefill_chunk == [512]  # the alias overrides the field
    (tmp_path / "text.yaml").write_text(textwrap.dedent("""
        workload: pd-1:1           # a single value is a one-element list
        lam: {rho: [0.5]}
        M: 131_000
        chunk: 512                 # alias of prefill_chunk
        b: 3.72e-2                 # YAML 1.1 reads this as text: still a number here
        steps: auto
    """))
    t = lqs.SweepSpec.from_yaml(tmp_path / "text.yaml")
    assert (t.workload, t.rho, t.M, t.prefill_chunk, t.b, t.steps) == (["pd-1:1"], [0.5], [131000], [512], [0.0372],
                                                                       None)
    for bad, txt in (("missing.yaml", None), ("empty.yaml", ""), ("list.yaml", "- 1\n- 2\n"),
                     ("broken.yaml", "lam: [1, 2\n")):
        if txt is not None:
            (tmp_path / bad).write_text(txt)
        with pytest.raises(lqs.LqsError) as e:
            lqs.SweepSpec.from_yaml(tmp_path / bad)
        assert e.value.param == "config"


def test_example_config_is_valid():
    s = lqs.SweepSpec.from_yaml(os.path.join(ROOT, "examples", "sweep_pd_ratio.yaml"))
    _, groups, parts = SP._plan(s)
    assert s.n_cells == 20 and len(groups) == 4 and len(parts) == 4


def test_base_server_fills_the_axes_the_spec_leaves_out(fake):
    srv = lqs.Server(M=4096, prefill_chunk=256, b=0.02, policy="reserve", servers=2, routing="jsq")
    df = lqs.sweep(server=srv, workload=[W], lam=[1.0, 2.0], M=[4096, 8192], trials=2, steps=1000, warmup=100,
                   progress=False)
    assert len(df) == 4 and set(df.M_tokens) == {4096, 8192}
    assert (df.policy == "reserve").all() and (df.servers == 2).all() and (df.routing == "jsq").all()
    assert all(k["server"].policy == "reserve" and k["server"].prefill_chunk == 256 for k in fake.kw)
    with pytest.raises(lqs.LqsError) as e:
        lqs.sweep(lqs.SweepSpec.from_dict(REAL), server=srv, progress=False)
    assert e.value.param == "server"
    with pytest.raises(lqs.LqsError) as e:
        lqs.sweep(server=srv.replace(b=lqs.LogNormalBatch.from_mean_cv(0.02, 0.5)), workload=[W], lam=[1.0],
                  progress=False)
    assert e.value.param == "server"


def test_hosts_from_a_slurm_job_array(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert S.resolve_hosts("slurm") == (2, 4)
    assert S.resolve_hosts((1, 3)) == (1, 3) and S.resolve_hosts(None) == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")  # --array=1-15:2 style (a step): refused, not mis-split
    with pytest.raises(lqs.LqsError):
        S.resolve_hosts("slurm")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(lqs.LqsError, match="job array"):
        S.resolve_hosts("slurm")


# ----------------------------------------------------------------------------------------------- grouping
def test_one_simulate_call_per_group_and_part(fake):
    s = lqs.SweepSpec.from_dict(FAKE)
    df = lqs.sweep(s, progress=False)
    # 4 groups (workload × policy); each group's 5 λ × 2 M cells in parts of ≤ 4:
    # λ blocks [3, 2] × M blocks [1, 1]
    assert len(fake.kw) == 4 * 4
    assert all(len(k["lam"]) * len(k["server"].Ms) * len(k["server"].bs) <= 4 for k in fake.kw)
    assert sorted({k["server"].policy for k in fake.kw}) == ["reserve", "swap"]
    assert all(isinstance(k["server"], lqs.Server) and k["mc"].trials == 3 and k["mc"].steps == 1000
               for k in fake.kw)
    assert len(df) == s.n_cells == 40 and df["cell"].tolist() == list(range(40))
    assert df.groupby("part").size().max() <= 4 and df["part"].nunique() == 16
    fake.kw.clear()
    lqs.sweep(s.replace(cells_per_part=64), progress=False)
    assert len(fake.kw) == 4 and all(len(k["lam"]) * len(k["server"].Ms) == 10 for k in fake.kw)
    # product order: workload, prefill_chunk, policy, token_budget, batch, servers, routing, b, M, λ (fastest)
    row = df.iloc[11]  # group 1 (pd_ratio:1:400, reserve), M=4096, λ index 1
    assert (row.workload, row.policy, row.M_tokens, row.lam_rps) == (W, "reserve", 4096, 2.0)
    for c in ("M_tokens", "prefill_chunk_tokens", "b_s", "policy", "token_budget", "servers", "routing"):
        assert c in df.columns, c  # one column per Server field


def test_batch_models_and_clusters_are_group_axes(fake):
    df = lqs.sweep(workload=[W], lam=[1.0, 2.0], M=4096, prefill_chunk=256, b=[0.02, 0.03],
                   batch=["constant", "lognormal:0.5"], servers=[1, 2], routing=["round_robin", "jsq"],
                   trials=2, steps=1000, warmup=100, progress=False)
    # constant: both b̄ in one call; lognormal: one model (one b̄) per call; × 2 servers × 2 routings
    assert len(fake.kw) == (1 + 2) * 2 * 2 and len(df) == 2 * 2 * 2 * 2 * 2
    for k in fake.kw:
        srv = k["server"]
        if isinstance(srv.b, lqs.BatchTime):
            assert srv.b_theory in (0.02, 0.03) and abs(srv.b.mean_s - srv.b_theory) < 1e-6
        else:
            assert srv.b == (0.02, 0.03) and srv.b_theory is None
    assert sum(k["server"].servers == 1 for k in fake.kw) == 6
    assert sum(k["server"].servers == 2 and k["server"].routing in ("round_robin", "jsq") for k in fake.kw) == 6
    assert set(df.routing) == {"round_robin", "jsq"} and set(df.servers) == {1, 2}
    assert set(df.batch) == {"constant", "lognormal:0.5"}
    assert all("devices" not in k for k in fake.kw)
    fake.kw.clear()
    devs = jax.local_devices()[:1]
    lqs.sweep(workload=[W], lam=[1.0], M=4096, prefill_chunk=256, b=0.02, trials=2, steps=1000, warmup=100,
              devices=devs, progress=False)
    assert [k["devices"] for k in fake.kw] == [devs]


def test_rho_is_lambda_over_mu_of_the_whole_deployment(fake):
    df = lqs.sweep(workload=[W], rho=[0.5, 0.9], M=[4096, 8192], prefill_chunk=256, b=0.02, servers=[1, 3],
                   trials=2, steps=1000, warmup=100, progress=False)
    assert len(df) == 8
    wl = lqs.pd_ratio(1, total_hi=400)
    for _, r in df.iterrows():
        g = wl.expected_g(256).g  # the paper's g, not g_exact
        mu = r.servers * r.M_tokens / (0.02 * g)  # μ = servers·M/(b̄·E[g]) (docs/model.md)
        assert r.lam_rps == pytest.approx(r.rho_target * mu, rel=1e-9)
        assert r.rho == pytest.approx(r.rho_target, rel=1e-6)
    assert all(len(k["server"].Ms) == 1 for k in fake.kw)


def test_keys_are_deterministic_and_distinct(fake):
    s = lqs.SweepSpec.from_dict(FAKE)
    _, _, parts = SP._plan(s)
    keys = [tuple(np.asarray(jax.random.key_data(SP._part_key(0, c))).tolist()) for c in parts]
    assert len(set(keys)) == len(keys)
    _, _, again = SP._plan(lqs.SweepSpec.from_dict(FAKE))
    assert keys == [tuple(np.asarray(jax.random.key_data(SP._part_key(0, c))).tolist()) for c in again]
    a = lqs.sweep(s, progress=False)
    b = lqs.sweep(s, progress=False)
    c = lqs.sweep(s.replace(seed=1), progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert not np.array_equal(a.throughput_rps, c.throughput_rps)


# ----------------------------------------------------------------------------------------------- resume
def test_resume_recomputes_only_missing_parts(fake, tmp_path):
    s = lqs.SweepSpec.from_dict(FAKE)
    full = lqs.sweep(s, out=tmp_path, progress=False)
    assert len(fake.kw) == 16 and len(_parts(tmp_path)) == 16
    assert (tmp_path / "cells.parquet").exists() and (tmp_path / "cells.csv").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cells.parquet"), full)
    assert len(pd.read_csv(tmp_path / "cells.csv")) == 40
    fake.kw.clear()
    files = _parts(tmp_path)
    for p in (files[1], files[7], files[15]):
        os.remove(p)
    stale = tmp_path / "parts" / ".part-00001.parquet.tmp-999999999"  # a write cut short by a kill
    stale.write_bytes(b"partial")
    elsewhere = tmp_path / "parts" / ".part-00002.parquet.tmp-otherhost-1"  # another host's write in progress
    elsewhere.write_bytes(b"partial")
    again = lqs.sweep(s, out=tmp_path, progress=False)
    assert len(fake.kw) == 3 and not stale.exists() and elsewhere.exists()
    pd.testing.assert_frame_equal(again, full, check_exact=True)
    fake.kw.clear()
    pd.testing.assert_frame_equal(lqs.sweep(s, out=tmp_path, progress=False), full, check_exact=True)
    assert fake.kw == []


def test_interrupted_sweep_resumes_without_lost_or_repeated_cells(monkeypatch, tmp_path):
    s = lqs.SweepSpec.from_dict(FAKE)
    monkeypatch.setattr(S, "_simulate", Calls())
    ref = lqs.sweep(s, out=tmp_path / "ref", progress=False)
    dying = Calls(fail_on=3)
    monkeypatch.setattr(S, "_simulate", dying)
    with pytest.raises(KeyboardInterrupt):
        lqs.sweep(s, out=tmp_path / "run", progress=False)
    assert len(_parts(tmp_path / "run")) == 2 and not (tmp_path / "run" / "cells.parquet").exists()
    rest = Calls()
    monkeypatch.setattr(S, "_simulate", rest)
    got = lqs.sweep(s, out=tmp_path / "run", progress=False)
    assert len(rest.kw) == 16 - 2
    assert got["cell"].is_unique and got["cell"].tolist() == list(range(40))
    pd.testing.assert_frame_equal(got, ref, check_exact=True)


def test_sigkilled_process_resumes(monkeypatch, tmp_path):
    """A real kill -9 mid-way (in a subprocess), then the same sweep again: same table as an uninterrupted run."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
        import lqs
        from lqs.sweep import run as S  # the package first: lqs.sweep must stay the function all the same
        from test_sweep import FAKE, fake_simulate
        n = [0]
        def dying(*args, **kw):
            n[0] += 1
            if n[0] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return fake_simulate(*args, **kw)
        S._simulate = dying
        lqs.sweep(FAKE, out={str(out)!r}, progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr[-2000:]
    assert len(_parts(out)) == 3
    rest = Calls()
    monkeypatch.setattr(S, "_simulate", rest)
    got = lqs.sweep(FAKE, out=out, progress=False)
    assert len(rest.kw) == 13
    monkeypatch.setattr(S, "_simulate", Calls())
    ref = lqs.sweep(FAKE, out=tmp_path / "ref", progress=False)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)


def test_a_different_spec_in_the_same_directory_is_refused(fake, tmp_path):
    s = lqs.SweepSpec.from_dict(FAKE)
    lqs.sweep(s, out=tmp_path, progress=False)
    with pytest.raises(lqs.LqsError) as e:
        lqs.sweep(s.replace(trials=4), out=tmp_path, progress=False)
    assert e.value.param == "out" and "trials" in str(e.value)
    n = len(fake.kw)
    df = lqs.sweep(s.replace(lam=[1.0]), out=tmp_path, overwrite=True, progress=False)
    assert len(df) == 8 and len(fake.kw) == n + 4 and len(_parts(tmp_path)) == 4
    # stray part files without a spec.json are not silently adopted
    os.remove(tmp_path / "spec.json")
    with pytest.raises(lqs.LqsError) as e:
        lqs.sweep(s.replace(lam=[1.0]), out=tmp_path, progress=False)
    assert e.value.param == "out"


def test_other_hosts_wait_for_host_0s_spec(fake, tmp_path):
    from lqs.sweep import io as SIO

    s = lqs.SweepSpec.from_dict(FAKE)
    lqs.sweep(s.replace(seed=9), out=tmp_path, progress=False)  # an older sweep in the directory
    with pytest.raises(lqs.LqsError) as e:  # host 1 of an overwriting sweep: waits for host 0's new spec.json
        SIO.wait_for_spec(str(tmp_path), s, timeout_s=0.3, poll_s=0.05)
    assert e.value.param == "out"
    SIO.wait_for_spec(str(tmp_path), None, timeout_s=0.3)  # without overwrite: any spec.json (checked after)
    lqs.sweep(s, out=tmp_path, overwrite=True, progress=False)  # host 0
    SIO.wait_for_spec(str(tmp_path), s, timeout_s=0.3)
    df, info = S.run_sweep(s, tmp_path, overwrite=True, hosts=(1, 2), progress=False)
    assert info.computed == 0 and len(df) == 40


def test_per_trial_rows(fake, tmp_path):
    df = lqs.sweep({**FAKE, "per_trial": True}, out=tmp_path, progress=False)
    assert len(df) == 40 * 3 and list(df.groupby("cell").size().unique()) == [3]
    assert {"cell", "trial", "workload", "lam_rps", "mu_exact_rps", "throughput_rps"} <= set(df.columns)
    assert len(glob.glob(str(tmp_path / "parts" / "*.trials.parquet"))) == 16
    cells = lqs.load_sweep(tmp_path)
    assert len(cells) == 40
    pd.testing.assert_frame_equal(lqs.load_sweep(tmp_path, trials=True), df)
    # a trials file lost → that part is recomputed
    os.remove(glob.glob(str(tmp_path / "parts" / "*.trials.parquet"))[0])
    fake.kw.clear()
    pd.testing.assert_frame_equal(lqs.sweep({**FAKE, "per_trial": True}, out=tmp_path, progress=False), df)
    assert len(fake.kw) == 1


# ----------------------------------------------------------------------------------------------- real engine
@pytest.fixture(scope="module")
def real(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    return out, lqs.sweep(REAL, out=out, progress=False)


def test_real_sweep_tidy_table_with_theory(real):
    out, df = real
    assert len(df) == 4 and df["cell"].tolist() == [0, 1, 2, 3] and df["part"].tolist() == [0, 0, 1, 1]
    for c in ("workload", "batch", "servers", "routing", "lam_rps", "M_tokens", "prefill_chunk_tokens", "b_s",
              "policy", "token_budget", "mu_rps", "mu_exact_rps", "mu_stable_rps", "rho", "throughput_rps",
              "p_backlog_grows", "verdict", "verdict_basis", "lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps",
              "wait_p99_s", "reliable", "cell_key"):
        assert c in df.columns, c
    assert (df.policy == "swap").all() and (df.prefill_chunk_tokens == 256).all()
    cap = lqs.capacity(lqs.pd_ratio(1, total_hi=400), lqs.Server(M=4096, prefill_chunk=256, b=0.02))
    assert np.allclose(df.mu_exact_rps, cap.mu_exact_rps, rtol=1e-6)
    assert np.allclose(df.mu_stable_rps, cap.mu_stable_rps, rtol=1e-6)
    assert np.allclose(df.rho, df.lam_rps / cap.mu_rps, rtol=1e-6)
    assert df.reliable.all() and (df.p_backlog_grows == 0).all()  # λ ≪ μ_exact(1−δ)
    assert (df.verdict == "stable").all()
    # one configuration (M, b̄): one saturation run for both parts (drawn from the sweep's seed, not the part's key)
    assert df.lam_star_rps.nunique() == 1 and (df.lam_rps < df.lam_star_lo_rps).all()
    assert np.allclose(df.throughput_rps, df.lam_rps, rtol=0.3)


def test_real_sweep_resumes_exactly(real, monkeypatch, tmp_path):
    out, df = real
    os.remove(_parts(out)[1])
    calls = []

    def counting(workload, server, lam, mc, **kw):
        calls.append(lam)
        return lqs.simulate(workload, server, lam, mc, **kw)

    monkeypatch.setattr(S, "_simulate", counting)
    pd.testing.assert_frame_equal(lqs.sweep(REAL, out=out, progress=False), df, check_exact=True)
    assert len(calls) == 1

    # killed after the first part, then resumed in a fresh directory: identical numbers
    def dies_on_second_part(workload, server, lam, mc, **kw):
        if lam[0] > 1.2:
            raise KeyboardInterrupt
        return lqs.simulate(workload, server, lam, mc, **kw)

    monkeypatch.setattr(S, "_simulate", dies_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        lqs.sweep(REAL, out=tmp_path, progress=False)
    monkeypatch.setattr(S, "_simulate", counting)
    calls.clear()
    pd.testing.assert_frame_equal(lqs.sweep(REAL, out=tmp_path, progress=False), df, check_exact=True)
    assert len(calls) == 1


def test_cli_yaml_and_quick_flags(real, tmp_path):
    _, df = real
    cfg = tmp_path / "sweep.yaml"
    lqs.SweepSpec.from_dict({**REAL, "trials": 64}).to_yaml(cfg)
    r = CliRunner().invoke(main, ["sweep", str(cfg), "--out", str(tmp_path / "a"), "--trials", "2",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "4 cells in 2 parts" in r.output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "cells.parquet"), df, check_exact=True)
    args = ["sweep", "--out", str(tmp_path / "b"), "--workload", W, "--lam", "0.5:2:4", "--M", "4096",
            "--prefill-chunk", "256", "--b", "0.02", "--trials", "2", "--steps", "2000", "--warmup", "500",
            "--cells-per-part", "2", "--K", "160", "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b" / "cells.parquet"), df, check_exact=True)
    r = CliRunner().invoke(main, args)  # resumed: nothing to compute
    assert r.exit_code == 0 and "0 parts computed, 2 reused" in r.output, r.output


@pytest.mark.parametrize("args, word", [
    (["--workload", W, "--lam", "1", "--M", "4096", "--prefill-chunk", "256", "--b", "0.02", "--policy", "lifo"],
     "policy"),
    (["--workload", W, "--lam", "1", "--M", "4096", "--prefill-chunk", "256"], "b"),
    (["--workload", W, "--lam", "1", "--M", "4096", "--prefill-chunk", "256", "--b", "0.02", "--trials", "0"],
     "trials"),
    (["--workload", W, "--lam", "1", "--M", "4096", "--prefill-chunk", "256", "--b", "0.02", "--replicas", "2"],
     "--replicas was renamed --trials"),
    ([], "config"),
    (["CONFIG", "--workload", W], "workload"),
    (["missing.yaml"], "config"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, word):
    cfg = tmp_path / "c.yaml"
    lqs.SweepSpec.from_dict(REAL).to_yaml(cfg)
    args = [str(cfg) if a == "CONFIG" else a for a in args]
    r = CliRunner().invoke(main, ["sweep", "--out", str(tmp_path / "o")] + args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], r.output

"""``lqs bench`` / ``lqs.bench()`` and the measured path choice of ``path="auto"`` (lqs/engine/bench.py,
lqs/engine/paths.py), on a CPU: Pallas interpret mode is the second path. Records go to a temporary
LQS_CACHE_DIR; the auto tests write records directly (no timing), so they stay quick."""

from __future__ import annotations

import json
import logging

import jax
import pandas as pd
import pytest
from click.testing import CliRunner

import lqs
from lqs.engine import bench as BM
from lqs.engine import records as B
from lqs.engine import paths as LP

from shapes import B_SMALL, CHUNK_SMALL, K_SMALL_RUN, M_SMALL, SMALL

SRV = lqs.Server(M=M_SMALL, prefill_chunk=CHUNK_SMALL, b=B_SMALL)
# K pinned (sizing gives 160–192 by λ) and two trials of one rate: every SMALL run on a path is one program
KW = dict(trials=2, steps=256, warmup=64, K=K_SMALL_RUN, key=jax.random.key(3))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LQS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(LP, "_SAID", set())
    return tmp_path


def _K():
    """The sized K of the SMALL runs (what their record's K bucket is looked up with)."""
    from lqs.engine import prepare

    _, sz, _, _ = prepare(SMALL, SRV, [4.0], lqs.MonteCarlo(trials=2, warmup=64, K=KW["K"], path="xla"), 256)
    return sz.K


def _write(paths: dict, *, key=None):
    key = key or B.record_key("swap", "constant", _K())
    B.save_record(key, dict(when="test", paths=paths))
    return key


@pytest.mark.slow
def test_bench_runs_both_paths_checks_identity_and_records(cache):
    rows = lqs.bench(quick=True, trials=4, steps=64)
    assert [r["path"] for r in rows] == ["xla", "fused-interpret"]
    for r in rows:
        assert r["identical"] is True and r["compiled"] and r["error"] is None
        assert r["trial_steps_per_s"] > 0
        assert r["slot_steps_per_s"] == pytest.approx(r["trial_steps_per_s"] * r["K"])
        assert r["compile_s"] > 0 and r["device_kind"] == B.device_kind() and r["requests_per_s"] >= 0
    data = json.loads((cache / "bench.json").read_text())
    rec = data["records"][rows[0]["key"]]
    assert set(rec["paths"]) == {"xla", "fused-interpret"} and rec["jax"] == jax.__version__
    assert "| policy swap | batch constant | K<=512 |" in rows[0]["key"]  # pd-1:1: K = 288
    assert "identical" in BM.table(rows) and "fused-interpret" in BM.table(rows)


def test_cli_bench_json(cache):
    from lqs.cli import main

    res = CliRunner().invoke(main,
                             ["bench", "--quick", "--trials", "4", "--steps", "64", "--paths", "xla", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 1 and {"path", "device_kind", "trial_steps_per_s", "identical"} <= set(rows[0])
    assert (cache / "bench.json").exists()


def test_auto_without_a_record_runs_xla_and_says_once(cache, caplog):
    with caplog.at_level(logging.INFO, logger="lqs"):
        a = lqs.simulate(SMALL, SRV, 4.0, path="auto", **KW)
        lqs.simulate(SMALL, SRV, 4.0, path="auto", **KW)
    sz = a.config["sizing"]
    assert sz["path"] == "xla" and "no lqs bench record" in sz["path_reason"] and "lqs bench" in sz["path_reason"]
    assert sum("lqs bench" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow
def test_auto_picks_the_fastest_identical_recorded_path(cache):
    key = _write({"xla": dict(trial_steps_per_s=1e5, identical=True, compiled=True),
                  "fused-interpret": dict(trial_steps_per_s=3e5, identical=True, compiled=True)})
    a = lqs.simulate(SMALL, SRV, 6.0, path="auto", **KW)
    x = lqs.simulate(SMALL, SRV, 6.0, path="xla", **KW)
    sz = a.config["sizing"]
    assert sz["path"] == "fused-interpret" and key in sz["path_reason"] and "3.00× xla" in sz["path_reason"]
    pd.testing.assert_frame_equal(a.trials, x.trials, check_exact=True)
    # slower than xla in the record: xla
    _write({"xla": dict(trial_steps_per_s=1e5, identical=True), "fused-interpret": dict(trial_steps_per_s=5e4,
                                                                                            identical=True)})
    assert lqs.simulate(SMALL, SRV, 4.0, path="auto", **KW).config["sizing"]["path"] == "xla"


@pytest.mark.parametrize("bad,msg", [(dict(identical=False, compiled=True), "did not end bit-identical"),
                                     (dict(identical=False, compiled=False, error="boom"), "failed to compile")])
def test_auto_falls_back_to_xla_on_a_recorded_mismatch_or_failed_compile(cache, bad, msg):
    key = _write({"xla": dict(trial_steps_per_s=1e5, identical=True, compiled=True),
                  "fused-interpret": dict(trial_steps_per_s=9e5, **bad)})
    with pytest.warns(UserWarning, match=msg) as w:
        a = lqs.simulate(SMALL, SRV, 4.0, path="auto", **KW)
    assert any(key in str(x.message) for x in w)  # the warning names the record
    sz = a.config["sizing"]
    assert sz["path"] == "xla" and msg in sz["path_reason"] and key in sz["path_reason"]


def test_auto_ignores_a_stale_record(cache):
    stale = B.record_key("swap", "constant", _K()).replace(f"jax {jax.__version__}", "jax 0.0.1")
    _write({"xla": dict(trial_steps_per_s=1e5, identical=True),
            "fused-interpret": dict(trial_steps_per_s=9e5, identical=True)}, key=stale)
    sz = lqs.simulate(SMALL, SRV, 4.0, path="auto", **KW).config["sizing"]
    assert sz["path"] == "xla" and "stale record" in sz["path_reason"]


def test_cache_dir_follows_the_platform_and_the_override(monkeypatch, tmp_path):
    monkeypatch.delenv("LQS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if B.sys.platform.startswith("linux"):
        assert B.cache_file() == tmp_path / "xdg" / "lqs" / "bench.json"
    monkeypatch.setenv("LQS_CACHE_DIR", str(tmp_path / "mine"))
    assert B.cache_file() == tmp_path / "mine" / "bench.json"
    assert B.k_bucket(288) == 512 and B.k_bucket(256) == 256


@pytest.mark.slow  # K rounding for Triton: test_fused's test_slots_are_not_padded_to_a_power_of_two
def test_bench_times_xla_at_its_own_K_and_checks_the_fused_path_at_the_fused_K(cache, monkeypatch):
    """Under Triton the fused path runs a rounded-up K: XLA is still timed at its sized K, and the fused final states
    are compared with an XLA run at the fused K (simulated here by rounding interpret mode's K up to 320)."""
    from lqs.engine import sizing

    orig = sizing.settle_path

    def settle(path, reason, K, policy, kind):
        p, r, K2 = orig(path, reason, K, policy, kind)
        return p, r, (320 if p == "fused-interpret" else K2)

    monkeypatch.setattr(sizing, "settle_path", settle)
    rows = lqs.bench(quick=True, trials=4, steps=64, record=False)
    assert [(r["path"], r["K"], r["identical"]) for r in rows] == [("xla", 288, True), ("fused-interpret", 320, True)]

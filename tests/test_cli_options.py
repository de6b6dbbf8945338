"""The CLI's shared options (lqs/cli/options.py), checked without simulating: renamed flags are one-line errors on
every command, aliases are documented, one Server and one MonteCarlo come out of the flags, and the library never
imports the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lqs
from lqs.cli.options import build_mc, build_server

from cli_run import run

ROOT = Path(__file__).resolve().parents[1]
SRV = ["--workload", "pd-1:1", "--M", "16384", "--prefill-chunk", "512", "--b", "0.0372"]
RENAMED = [
    (["simulate", *SRV, "--lam", "0.2", "--replicas", "4"], "--replicas was renamed --trials"),
    (["critical", *SRV, "--replicas", "4"], "--replicas was renamed --trials"),
    (["critical", *SRV, "--grid-replicas", "4"], "--grid-replicas was renamed --grid-trials"),
    (["sweep", "--out", "OUT", "--replicas", "4"], "--replicas was renamed --trials"),
    (["sweep", "--out", "OUT", "--per-replica"], "--per-replica was renamed --per-trial"),
    (["sweep", "--out", "OUT", "--cells-per-chunk", "8"], "--cells-per-chunk was renamed --cells-per-part"),
    (["study", "latency", "--quick", "--replicas", "4"], "--replicas was renamed --trials"),
    (["study", "b-error", "--parts", "iid"], "--parts was renamed --sections"),
    (["reproduce", "paper", "--quick", "--replicas", "4"], "--replicas was renamed --trials"),
]


IDS = [" ".join(x for x in a[:2] if not x.startswith("-")) + " " + m.split()[0] for a, m in RENAMED]


@pytest.mark.parametrize("args, msg", RENAMED, ids=IDS)
def test_renamed_flags_fail_on_one_line_before_any_work(tmp_path, args, msg):
    r = run([str(tmp_path / "o") if a == "OUT" else a for a in args])
    assert r.exit_code == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: " + msg), line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cmd", [["capacity"], ["simulate"], ["critical"], ["sweep"], ["study", "phase"]])
def test_help_documents_the_new_names_and_aliases(cmd):
    r = run(cmd + ["--help"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "--prefill-chunk" in out and "--chunk" in out and "alias" in out
    assert "--replicas" not in out
    if cmd != ["capacity"]:
        assert "--trials" in out and "--policy" in out and "fcfs is an alias of swap" in " ".join(out.split())


def test_build_server_and_mc_from_flags():
    opts = dict(M="1.31e5", prefill_chunk="512", b="0.0372", b_model="lognormal:0.5", policy="fcfs",
                token_budget="2048", servers="2", routing="jsq")
    srv, bb = build_server(opts)
    assert isinstance(srv, lqs.Server) and srv.M == 131000 and srv.prefill_chunk == 512
    assert srv.policy == "swap" and srv.token_budget == 2048 and srv.servers == 2 and srv.routing == "jsq"
    assert isinstance(srv.b, lqs.LogNormalBatch) and srv.b_theory == 0.0372 and bb.b_s == 0.0372
    assert srv.b.mean_s == pytest.approx(0.0372, rel=1e-6)
    base = lqs.Server(M=16384, prefill_chunk=256, b=0.02)
    s2, _ = build_server(dict(M="65536", policy="recompute"), base=base)
    assert s2 == base.replace(M=65536, policy="recompute")
    mc = build_mc(dict(trials="8", steps="auto", warmup="100", seed="3", K="64"))
    assert mc == lqs.MonteCarlo(trials=8, steps=None, warmup=100, seed=3, K=64)
    mc2 = build_mc(dict(trials="2"), base=lqs.MonteCarlo(trials=16, steps=10_000, warmup=2_500))
    assert mc2 == lqs.MonteCarlo(trials=2, steps=10_000, warmup=2_500)
    with pytest.raises(lqs.LqsError, match="trials="):
        build_mc(dict(trials="0"))


def test_the_library_never_imports_the_cli():
    code = ("import sys, lqs, lqs.engine, lqs.sweep, lqs.studies, lqs.traces\n"
            "bad = sorted(m for m in sys.modules if m == 'lqs.cli' or m.startswith('lqs.cli.'))\n"
            "assert not bad, bad\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT),
                       timeout=120)
    assert p.returncode == 0, p.stderr


def test_cli_modules_are_small():
    for f in (ROOT / "lqs" / "cli").glob("*.py"):
        n = len(f.read_text().splitlines())
        assert n <= 400, f"{f.name}: {n} lines"


# ----------------------------------------------------------------------------------------------- study wiring
@pytest.fixture
def calls(monkeypatch):
    """Replace every study function by a recorder that returns an empty result (no simulation)."""
    import pandas as pd

    import lqs.studies as S

    seen = []

    def fake(name):
        def f(**kw):
            seen.append((name, kw))
            meta = {"axis": kw.get("axis"), "rows": [{"value": 1.0}], "servers": kw.get("servers")}
            return S.StudyResult(name=name, data=pd.DataFrame({"section": ["iid"], "rho": [0.5]}), meta=meta)
        return f

    for fn in ("phase_diagram", "b_error", "delta_study", "mixture_study", "cluster_study", "latency_study",
               "slo_servers"):
        monkeypatch.setattr(S, fn, fake(fn))
    return seen


def _study(calls, args):
    r = run(["study", *args])
    assert r.exit_code == 0, r.output
    return calls[-1]


def test_study_flags_replace_fields_of_the_mode_defaults(calls, tmp_path):
    from lqs.studies import default_mc, default_server

    out = str(tmp_path)
    _, kw = _study(calls, ["latency", "--quick", "--out", out])
    assert kw == dict(server=None, mc=None, quick=True, seed=0, out=out, progress=False)
    _, kw = _study(calls, ["latency", "--quick", "--out", out, "--M", "65536", "--chunk", "256", "--policy", "fcfs",
                           "--trials", "3", "--seed", "5"])
    assert kw["server"] == default_server(True).replace(M=65536, prefill_chunk=256, policy="swap")
    assert kw["mc"] == default_mc(True).replace(trials=3, seed=5) and kw["seed"] == 5
    _, kw = _study(calls, ["latency", "--out", out, "--steps", "auto"])  # full mode
    assert kw["server"] is None and kw["mc"] == default_mc(False).replace(steps=None) and kw["quick"] is False


def test_study_options_of_each_command(calls, tmp_path):
    out = ["--quick", "--out", str(tmp_path)]
    _, kw = _study(calls, ["cluster", *out])
    assert kw["servers"] == 8 and kw["routings"] == ("round_robin", "random", "jsq", "least_kv")
    _, kw = _study(calls, ["cluster", *out, "--servers", "4", "--routings", "jsq,random", "--no-saturation"])
    assert kw["servers"] == 4 and kw["routings"] == ("jsq", "random") and kw["saturation"] is False
    _, kw = _study(calls, ["delta", *out, "--policies", "fcfs,reserve"])
    assert kw["policies"] == ("fcfs", "reserve")
    _, kw = _study(calls, ["mixture", *out, "--lam-ratio", "2,1", "--cycles", "4"])
    assert kw["lam_ratio"] == [2.0, 1.0] and kw["cycles"] == 4
    _, kw = _study(calls, ["b-error", *out, "--samples", "100", "--sections", "iid"])
    assert kw["n_samples"] == 100 and kw["sections"] == ("iid",)
    _, kw = _study(calls, ["slo", *out, "--lam", "10", "--target", "0.5", "--rho", "0.8", "--metric", "wait_p99_s"])
    assert (kw["lam"], kw["target_s"], kw["rho"], kw["metric"]) == (10.0, 0.5, 0.8, "wait_p99_s")
    n = len(calls)
    run(["study", "phase", *out, "--axis", "all", "--M", "65536", "--points", "4", "--latency", "ttft_p99_s"])
    axes = {kw["axis"]: kw for _, kw in calls[n:]}
    assert sorted(axes) == ["M", "b", "ratio"] and all(kw["n_values"] == 4 for kw in axes.values())
    assert all(kw["latency"] == "ttft_p99_s" for kw in axes.values())
    assert axes["M"]["server"] is None  # the M axis replaces M: --M applies to the other two
    assert axes["ratio"]["server"].M == 65536 == axes["b"]["server"].M


@pytest.mark.parametrize("args, param", [(["delta", "--M", "4096"], "M"), (["delta", "--policy", "swap"], "policy"),
                                         (["cluster", "--routing", "jsq"], "routing"),
                                         (["slo", "--servers", "2"], "servers"), (["latency", "--M", "0"], "M"),
                                         (["latency", "--trials", "0"], "trials")])
def test_study_bad_flags_are_one_line_errors(calls, args, param):
    r = run(["study", *args, "--quick"])
    assert r.exit_code == 2 and r.stdout == "" and not calls
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {param}=")

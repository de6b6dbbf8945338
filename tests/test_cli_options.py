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


@pytest.mark.parametrize("args, msg", RENAMED, ids=[" ".join(x for x in a[:2] if not x.startswith("-")) + " " + m.split()[0]
                                                for a, m in RENAMED])
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
    assert isinstance(srv.b, lqs.LogNormalMixBatch) and srv.b_theory == 0.0372 and bb.b_s == 0.0372
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

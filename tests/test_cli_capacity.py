"""``lqs capacity``: numbers, JSON keys, verdicts, and exit status 2 with a one-line error for bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import lqs
from lqs.cli import VERDICT_BAND, VERDICT_STABLE, VERDICT_UNSTABLE, main

from cli_run import run, run_json

ROOT = Path(__file__).resolve().parents[1]
SERVER = lqs.Server(M=131000, prefill_chunk=512, b=0.0372)
PD11 = ["capacity", "--workload", "pd-1:1", "--M", "131000", "--prefill-chunk", "512", "--b", "0.0372"]
BASE_KEYS = {"mu_rps", "mu_exact_rps", "mu_stable_rps", "mu_exact_stable_rps", "delta", "mean_g_tokens2",
             "mean_g_exact_tokens2", "b_s", "M_tokens", "prefill_chunk_tokens", "servers", "max_total_tokens",
             "workload"}
LAM_KEYS = {"lam_rps", "rho", "rho_target", "verdict", "servers_needed"}


# ----------------------------------------------------------------------------------------------- numbers
def test_done_criterion_json():
    d = run_json(PD11)
    assert abs(d["mu_rps"] - 3.263) <= 0.0005
    assert round(d["delta"], 4) == 0.0244
    assert BASE_KEYS <= set(d) and not (LAM_KEYS & set(d))
    assert d["workload"] == "pd-1:1" and d["M_tokens"] == 131000 and d["prefill_chunk_tokens"] == 512
    assert d["servers"] == 1
    assert d["b_s"] == 0.0372 and d["max_total_tokens"] == 3200
    assert d["mu_stable_rps"] == pytest.approx(d["mu_rps"] * (1 - d["delta"]))
    assert d["mu_exact_rps"] == pytest.approx(131000 / (0.0372 * d["mean_g_exact_tokens2"]))
    cap = lqs.capacity(lqs.preset("pd-1:1"), SERVER)
    assert d["mu_rps"] == cap.mu_rps and d["mean_g_tokens2"] == cap.mean_g_tokens2


@pytest.mark.parametrize("name, b, mu", [("pd-2:1", "0.0430", 3.956), ("pd-1:2", "0.0337", 2.902)])
def test_table1_via_cli(name, b, mu):
    d = run_json(["capacity", "--workload", name, "--M", "131000", "--prefill-chunk", "512", "--b", b])
    assert round(d["mu_rps"], 3) == mu


@pytest.mark.parametrize("lam, code, text", [("2.0", "stable", VERDICT_STABLE),
                                             ("3.2", "uncertain", VERDICT_BAND),
                                             ("3.3", "unstable", VERDICT_UNSTABLE)])
def test_verdicts_and_servers_needed(lam, code, text):
    d = run_json(PD11 + ["--lam", lam, "--rho", "0.8"])
    assert LAM_KEYS <= set(d)
    assert d["verdict"] == text and d["verdict_code"] == code
    assert d["lam_rps"] == float(lam) and d["rho_target"] == 0.8
    assert d["rho"] == pytest.approx(float(lam) / d["mu_rps"])  # ρ = λ/μ, the one utilisation
    assert d["servers_needed"] == math.ceil(float(lam) / (d["mu_rps"] * 0.8))


def test_trace_azure_conv_with_lambda():
    d = run_json(["capacity", "--trace", "azure-conv", "--M", "131000", "--prefill-chunk", "512", "--b", "0.0372",
                  "--lam", "20", "--rho", "0.9"])
    tr = lqs.load_trace("azure-conv")
    cap = lqs.capacity(tr.workload(), SERVER)
    assert d["workload"] == "azure-conv" and d["mu_rps"] == pytest.approx(cap.mu_rps)
    assert d["max_total_tokens"] == tr.max_total and d["delta"] == pytest.approx(tr.max_total / 131000)
    assert d["trace_requests"] == 19366 and d["trace_mean_rate_rps"] == pytest.approx(tr.mean_rate_rps)
    assert d["verdict_code"] == "unstable"  # μ ≈ 13.4 req/s < 20
    assert d["servers_needed"] == math.ceil(20 / (cap.mu_rps * 0.9)) == 2


def test_trace_split_train_test():
    args = ["capacity", "--trace", "azure-code", "--M", "131000", "--prefill-chunk", "512", "--b", "0.04"]
    full, train, test = (run_json(args + ["--split", s]) for s in ("all", "train", "test"))
    assert train["workload"] == "azure-code[train]" and test["workload"] == "azure-code[test]"
    assert train["trace_requests"] + test["trace_requests"] == full["trace_requests"] == 8819
    assert train["mu_rps"] != test["mu_rps"]
    # E[g] of the whole trace is the request-weighted average of the two parts
    n_tr, n_te = train["trace_requests"], test["trace_requests"]
    assert full["mean_g_exact_tokens2"] == pytest.approx(
        (n_tr * train["mean_g_exact_tokens2"] + n_te * test["mean_g_exact_tokens2"]) / (n_tr + n_te))


def test_trace_file_with_b_samples_and_trimmed_estimator(tmp_path):
    log = tmp_path / "my_log.csv"
    log.write_text("prompt,completion\n100,20\n300,40\n50,500\n")
    bt = tmp_path / "batch_times.csv"
    xs = [0.03, 0.031, 0.032, 0.033, 0.034, 0.035, 0.036, 0.037, 0.038, 0.039] * 2 + [5.0]
    bt.write_text("batch_time_s\n" + "\n".join(map(str, xs)) + "\n")
    d = run_json(["capacity", "--trace", str(log), "--s-col", "prompt", "--o-col", "completion", "--M", "131000",
                  "--prefill-chunk", "512", "--b-samples", str(bt), "--b-estimator", "trimmed:0.05"])
    assert d["b_s"] == pytest.approx(lqs.estimate_b(xs, "trimmed:0.05"))
    assert d["b_estimator"] == "trimmed:0.05" and d["b_samples_n"] == len(xs)
    assert d["max_total_tokens"] == 550 and d["workload"] == "my_log"
    # default estimator: the median, as the paper
    d2 = run_json(["capacity", "--trace", str(log), "--s-col", "prompt", "--o-col", "completion", "--M", "131000",
                   "--prefill-chunk", "512", "--b-samples", str(bt)])
    assert d2["b_s"] == pytest.approx(sorted(xs)[len(xs) // 2]) and d2["b_estimator"] == "median"


def test_chunk_is_an_alias_of_prefill_chunk():
    a = run_json(PD11)
    b = run_json([x if x != "--prefill-chunk" else "--chunk" for x in PD11])
    assert a == b and a["prefill_chunk_tokens"] == 512
    _assert_one_line_error(run(["capacity", "--workload", "pd-1:1", "--M", "131000", "--chunk", "0", "--b", "0.03"]),
                           "prefill_chunk")
    assert "--chunk" in run(["capacity", "--help"]).stdout  # documented


def test_servers_scale_the_deployment():
    one = run_json(PD11 + ["--lam", "20"])
    four = run_json(PD11 + ["--lam", "20", "--servers", "4"])
    assert four["servers"] == 4 and four["mu_rps"] == pytest.approx(4 * one["mu_rps"])
    assert four["rho"] == pytest.approx(one["rho"] / 4)
    assert four["servers_needed"] == one["servers_needed"]  # counted in instances of one server's rate


def test_number_spellings():
    d = run_json(["capacity", "--workload", "pd-1:1", "--M", "1.31e5", "--prefill-chunk", "512", "--b", "3.72e-2"])
    assert d["M_tokens"] == 131000 and abs(d["mu_rps"] - 3.263) <= 0.0005


def test_human_table():
    r = run(PD11 + ["--lam", "3.2"])
    assert r.exit_code == 0
    out = r.stdout
    for needle in ("μ (paper)", "μ_exact", "E[g] (paper)", "E[g_exact]", "δ", "stable range", "unstable range",
                   "3.2632", "0.0244", "utilisation ρ = λ/μ", "uncertain band", "servers for ρ = 0.9"):
        assert needle in out, needle


def test_help_and_version():
    r = run(["--help"])
    assert r.exit_code == 0 and "capacity" in r.stdout
    r = run(["capacity", "--help"])
    assert r.exit_code == 0 and "--b-samples" in r.stdout and "--split" in r.stdout
    r = run(["--version"])
    assert r.exit_code == 0 and lqs.__version__ in r.stdout


# ----------------------------------------------------------------------------------------------- bad input
BAD = [
    (["--M", "0"], "M"), (["--M", "abc"], "M"), (["--M", "1.5"], "M"), (["--M", "-1"], "M"),
    (["--prefill-chunk", "0"], "prefill_chunk"), (["--prefill-chunk", "x"], "prefill_chunk"),
    (["--servers", "0"], "servers"),
    (["--b", "0"], "b"), (["--b", "-0.1"], "b"), (["--b", "nan"], "b"), (["--b", "inf"], "b"),
    (["--lam", "-1"], "lam"), (["--lam", "fast"], "lam"),
    (["--rho", "0"], "rho"), (["--rho", "1.5"], "rho"),
    (["--workload", "pd-9:1"], "workload"),
    (["--split", "half"], "split"),
    (["--s-col", "prompt"], "s_col"),
    (["--b-estimator", "median"], "b_estimator"),
    (["--M", "3000"], "lengths"),
]


def _args_with(over):
    base = {"--workload": "pd-1:1", "--M": "131000", "--prefill-chunk": "512", "--b": "0.0372"}
    extra = []
    for k, v in zip(over[::2], over[1::2]):
        if k in base:
            base[k] = v
        else:
            extra += [k, v]
    return ["capacity"] + [x for kv in base.items() for x in kv] + extra


def _assert_one_line_error(r, param):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert f"{param}=" in lines[0]
    assert "Traceback" not in r.output and r.stdout == ""


@pytest.mark.parametrize("over, param", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_exit_2_one_line(over, param):
    _assert_one_line_error(run(_args_with(over)), param)


def test_workload_and_b_choice_errors(tmp_path):
    m = ["--M", "131000", "--prefill-chunk", "512"]
    _assert_one_line_error(run(["capacity", *m, "--b", "0.03"]), "workload")  # neither
    _assert_one_line_error(run(["capacity", "--workload", "pd-1:1", "--trace", "azure-conv", *m, "--b", "0.03"]),
                           "workload")  # both
    _assert_one_line_error(run(["capacity", "--workload", "pd-1:1", *m]), "b")  # neither --b nor --b-samples
    bt = tmp_path / "bt.txt"
    bt.write_text("0.03\n0.04\n")
    _assert_one_line_error(run(["capacity", "--workload", "pd-1:1", *m, "--b", "0.03", "--b-samples", str(bt)]), "b")
    for est in ("mode", "trimmed:0.7", "trimmed:x"):
        _assert_one_line_error(run(["capacity", "--workload", "pd-1:1", *m, "--b-samples", str(bt),
                                    "--b-estimator", est]), "b_estimator")
    _assert_one_line_error(run(["capacity", "--workload", "pd-1:1", *m, "--b-samples", str(tmp_path / "no.txt")]),
                           "b_samples")
    bad = tmp_path / "bad.txt"
    bad.write_text("0.03\n-1\n")
    _assert_one_line_error(run(["capacity", "--workload", "pd-1:1", *m, "--b-samples", str(bad)]), "b_samples")


def test_trace_errors(tmp_path):
    m = ["--M", "131000", "--prefill-chunk", "512", "--b", "0.03"]
    _assert_one_line_error(run(["capacity", "--trace", str(tmp_path / "missing.csv"), *m]), "trace")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _assert_one_line_error(run(["capacity", "--trace", str(empty), *m]), "trace")
    cols = tmp_path / "cols.csv"
    cols.write_text("a,b\n1,2\n")
    _assert_one_line_error(run(["capacity", "--trace", str(cols), *m]), "s_col")
    frac = tmp_path / "frac.csv"
    frac.write_text("num_prefill_tokens,num_decode_tokens\n1,2\n1.5,2\n")
    _assert_one_line_error(run(["capacity", "--trace", str(frac), *m]), "s")
    _assert_one_line_error(run(["capacity", "--trace", "azure-conv", "--M", "10000", "--prefill-chunk", "512",
                                "--b", "0.03"]), "lengths")  # azure-conv has a request with s+o = 14,089


def test_click_usage_errors_exit_2():
    r = CliRunner().invoke(main, ["capacity", "--bogus"])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["capacity", "--workload", "pd-1:1", "--b", "0.03"])  # --M / --chunk missing
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["nosuchcommand"])
    assert r.exit_code == 2


# ----------------------------------------------------------------------------------------------- subprocess
def _subprocess(args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    return subprocess.run([sys.executable, "-m", "lqs", *args], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=120)


def test_python_dash_m_lqs_json_and_error():
    p = _subprocess(PD11 + ["--json"])
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert abs(d["mu_rps"] - 3.263) <= 0.0005 and round(d["delta"], 4) == 0.0244
    p = _subprocess(["capacity", "--workload", "pd-1:1", "--M", "0", "--prefill-chunk", "512", "--b", "0.0372"])
    assert p.returncode == 2
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("error: M=0 is invalid: must be an integer")
    assert p.stdout == ""


def test_capacity_simulate_puts_lam_star_and_the_long_run_verdict_beside_the_closed_form():
    """The README's first command: the closed form and the simulated λ* side by side, with both verdicts at λ."""
    args = ["capacity", "--workload", "pd-1:1", "--M", "131000", "--prefill-chunk", "512", "--b", "0.0372",
            "--lam", "3.2", "--simulate", "--trials", "4"]
    d = run_json(args)
    assert d["verdict_code"] == "uncertain"  # 3.2 lies in [μ(1−δ), μ] = [3.18, 3.26]: the closed form cannot tell
    assert d["lam_star_lo_rps"] < d["lam_star_rps"] < d["lam_star_hi_rps"]
    assert d["mu_exact_stable_rps"] * 0.99 <= d["lam_star_rps"] <= d["mu_exact_rps"] * 1.01
    want = ("stable" if 3.2 < d["lam_star_lo_rps"] else "unstable" if 3.2 > d["lam_star_hi_rps"] else "undecided")
    assert d["sim_verdict"] == want and d["sim_verdict_basis"].startswith("saturation rule")
    assert d["sim_trials"] == 4 and d["sim_reliable"] is True
    r = run(args)
    assert r.exit_code == 0 and "simulated λ* (95 %)" in r.stdout and "simulated verdict" in r.stdout

"""``lqs simulate`` and ``lqs critical``: JSON keys and numbers, --out files, seeds, policies, batch-time models,
and exit status 2 with a one-line error for bad input.

Every run is small (M = 16,384 tokens, 10 trials, 6,000 steps, K = 96 slots) and the option shapes repeat, so JAX
compiles few programs: the (configuration × trial) count and the static engine config (policy, batch model, slot
count, arrival cap) decide a compilation, not the rates or the horizon. ``--lam 0.2,1.0 --trials 10``,
``--lam 1.25 --trials 20``, ``--lam 0.2:1.0:2 --trials 10`` and critical's grid (4 points × 5 trials) run 20 lanes
in one program; every saturation run (10 trials) is test_verdict's pd-1:1 program: a compilation per policy, per
batch model and for the fused kernel."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cli_run import run, run_json

from shapes import K_PD16K_CLI, PD16K_FLAGS

pytestmark = pytest.mark.xdist_group("cli_sim")  # one worker: its module fixtures run once

BASE = PD16K_FLAGS
SIM = ["simulate", *BASE, "--trials", "10", "--steps", "6000", "--warmup", "1000", "--K", str(K_PD16K_CLI)]
CRIT = ["critical", *BASE, "--trials", "10", "--steps", "6000", "--warmup", "1000", "--K", str(K_PD16K_CLI), "--grid-points", "4",
        "--grid-trials", "5"]
THEORY = ("mu_rps", "mu_exact_rps", "mu_stable_rps", "mu_exact_stable_rps", "delta")
SUMMARY_KEYS = {"lam_rps", "mu_rps", "mu_exact_rps", "mu_stable_rps", "p_backlog_grows", "throughput_rps", "wait_p99_s",
                "reliable", "verdict", "verdict_basis", "lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps"}


@pytest.fixture(scope="module")
def cap():
    """``lqs capacity --json`` for the same workload and server."""
    return run_json(["capacity", *BASE])


@pytest.fixture(scope="module")
def pair():
    """The workhorse run: λ = 0.2 (well below μ(1−δ) ≈ 0.328) and 1.0 (≈ 2.5 μ_exact), 10 trials each (the
    parsed JSON, and its text under ``_text``)."""
    r = run(SIM + ["--lam", "0.2,1.0", "--json"])
    assert r.exit_code == 0, r.output
    return {**json.loads(r.stdout), "_text": r.stdout}


def _check_rows(d, lams, cap, trials=10):
    assert d["workload"] == "pd-1:1"
    rows = d["summary"]
    assert [r["lam_rps"] for r in rows] == pytest.approx(lams)
    for r in rows:
        assert SUMMARY_KEYS <= set(r), SUMMARY_KEYS - set(r)
        for k in THEORY:
            assert r[k] == pytest.approx(cap[k], rel=1e-12), k
        assert r["trials"] == trials and r["policy"] == "swap" and r["M_tokens"] == 16384
        assert r["prefill_chunk_tokens"] == 512 and r["rho"] == pytest.approx(r["lam_rps"] / r["mu_rps"])
        assert 0.0 <= r["p_backlog_grows"] <= 1.0 and r["throughput_rps"] > 0
        assert r["verdict"] == ("stable" if r["lam_rps"] < r["lam_star_lo_rps"] else
                                "unstable" if r["lam_rps"] > r["lam_star_hi_rps"] else "undecided")
        assert r["verdict_basis"].startswith("saturation rule")
        assert r["reliable"] is True
    for r in rows:
        if r["lam_rps"] < 0.7 * r["mu_stable_rps"]:
            assert r["p_backlog_grows"] == 0.0 and r["verdict"] == "stable"
            assert r["throughput_rps"] == pytest.approx(r["lam_rps"], rel=0.5)
        if r["lam_rps"] > 2 * r["mu_exact_rps"]:
            assert r["p_backlog_grows"] == 1.0 and r["verdict"] == "unstable"
            assert r["throughput_rps"] < 1.05 * r["mu_exact_rps"] < r["lam_rps"]
    return rows


# ----------------------------------------------------------------------------------------------- simulate --json
def test_simulate_json_single_lambda_far_above_capacity(cap):
    d = run_json(_with(SIM, ["--trials", "20"]) + ["--lam", "1.25"])
    (r,) = d["summary"]
    assert SUMMARY_KEYS <= set(r)
    assert r["lam_rps"] == 1.25 and r["trials"] == 20
    assert r["lam_rps"] > 3 * r["mu_exact_rps"]
    assert r["p_backlog_grows"] == 1.0 and r["verdict"] == "unstable" and r["throughput_rps"] < r["lam_rps"]
    assert r["throughput_rps"] < 1.1 * r["mu_exact_rps"]
    for k in THEORY:
        assert r[k] == pytest.approx(cap[k], rel=1e-12), k
    assert d["reliable"] is True and r["reliable"] is True


def test_simulate_json_list(pair, cap):
    rows = _check_rows(pair, [0.2, 1.0], cap)
    lo, hi = rows
    assert lo["verdict"] == "stable" and hi["verdict"] == "unstable"
    assert lo["p_backlog_grows"] == 0.0 and hi["p_backlog_grows"] == 1.0
    assert hi["throughput_rps"] < hi["lam_rps"]
    assert lo["mem_util"] < hi["mem_util"] <= 1.0
    assert lo["wait_p99_s"] < hi["wait_p99_s"]
    assert pair["reliable"] is True


def test_simulate_json_range(cap, pair):
    d = run_json(SIM + ["--lam", "0.2:1.0:2"])  # start:stop:count, the workhorse's two rates
    rows = _check_rows(d, [0.2, 1.0], cap)
    assert rows[0]["verdict"] == "stable" and rows[-1]["verdict"] == "unstable"
    assert d["summary"] == pair["summary"]  # the same rates and seed: the same run


# ----------------------------------------------------------------------------------------------- --out
def test_simulate_out_dir(tmp_path, pair):
    out = tmp_path / "run"
    r = run(SIM + ["--lam", "0.2,1.0", "--out", str(out), "--seed", "0"])
    assert r.exit_code == 0, r.output
    for f in ("trials.csv", "summary.csv", "config.json", "series.npz", "waiting.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "waiting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in r.stdout.replace("\n", "")

    reps = pd.read_csv(out / "trials.csv")
    assert len(reps) == 10 * 2
    assert sorted(reps["lam_rps"].unique()) == [0.2, 1.0]
    assert (reps.groupby("lam_rps").size() == 10).all()
    for col in ("trial", "lam_rps", "M_tokens", "prefill_chunk_tokens", "b_s", "window_s", "throughput_rps",
                "mem_mean_tokens",
                "wait_p99_s", "ttft_p50_s", "e2e_mean_s", "warmup_steps"):
        assert col in reps.columns, col
    for bare in ("lam", "M", "chunk", "chunk_tokens", "replica", "b", "throughput", "wait_p99", "window"):
        assert bare not in reps.columns, bare
    summ = pd.read_csv(out / "summary.csv")
    assert len(summ) == 2
    # the same seed gives the same numbers as the --json run of the fixture
    assert summ["throughput_rps"].tolist() == pytest.approx([x["throughput_rps"] for x in pair["summary"]])
    # summary is the mean over the trial rows
    assert summ["throughput_rps"].tolist() == pytest.approx(reps.groupby("lam_rps")["throughput_rps"].mean().tolist())

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["server"]["policy"] == "swap"
    assert cfg["server"] == {"M_tokens": 16384, "prefill_chunk_tokens": 512, "b": 0.0372, "b_theory_s": None,
                             "policy": "swap", "token_budget": None, "servers": 1, "routing": "round_robin",
                             "max_running": None, "block_size_tokens": 1}
    mc = cfg["monte_carlo"]
    assert mc["trials"] == 10 and mc["steps"] == 6000 and mc["warmup"] == 1000 and mc["seed"] == 0
    assert cfg["M_tokens"] == [16384, 16384]
    assert cfg["steps_requested"] == 6000 and cfg["steps_run"] >= 6000 and cfg["warmup_steps"] == 1000
    assert cfg["trials"] == 10 and cfg["lam_rps"] == pytest.approx([0.2, 1.0])
    assert cfg["workload_label"] == "pd-1:1"

    npz = np.load(out / "series.npz")
    assert npz["waiting"].shape[:2] == (2, 10) and npz["t_s"].shape == npz["waiting"].shape


# ----------------------------------------------------------------------------------------------- seeds
def test_seed_reproducible_and_different(pair):
    """Same seed, same bytes: the JSON holds no timing."""
    again = run(SIM + ["--lam", "0.2,1.0", "--seed", "0", "--json"])
    assert again.stdout == pair["_text"]
    other = run_json(SIM + ["--lam", "0.2,1.0", "--seed", "1"])
    for a, b in zip(pair["summary"], other["summary"]):
        assert a["throughput_rps"] != b["throughput_rps"]
        assert {k: a[k] for k in THEORY} == {k: b[k] for k in THEORY}


# ----------------------------------------------------------------------------------------------- policies
@pytest.mark.parametrize("policy", ["swap", "recompute", "reserve"])
def test_policies_run(policy, pair):
    # reserve saturates near 0.27 req/s here (peak-memory admission, δ ≈ 0.2), so λ = 0.2 is too close to its
    # own capacity for a 4-trial, 6,000-step verdict: the low point is λ = 0.1 for the other policies
    # (one rate per run: the run and its saturation run have one shape, test_verdict's program for the policy)
    runs = [pair] * 2 if policy == "swap" else [run_json(SIM + ["--lam", x, "--policy", policy]) for x in ("0.1", "1.0")]
    lo, hi = runs[0]["summary"][0], runs[1]["summary"][-1]
    assert lo["policy"] == hi["policy"] == policy
    assert lo["verdict"] == "stable" and hi["verdict"] == "unstable"
    assert lo["p_backlog_grows"] == 0.0 and hi["p_backlog_grows"] == 1.0
    assert hi["throughput_rps"] < hi["lam_rps"] and lo["throughput_rps"] > 0
    assert all(d["reliable"] is True for d in runs)


def test_aliases_fcfs_and_chunk_give_the_same_run(pair):
    """``--policy fcfs`` is the old name of swap and ``--chunk`` of ``--prefill-chunk``: same numbers, named swap."""
    args = [x if x != "--prefill-chunk" else "--chunk" for x in SIM] + ["--lam", "0.2,1.0", "--policy", "fcfs"]
    d = run_json(args)
    assert [r["policy"] for r in d["summary"]] == ["swap", "swap"] and d["server"]["policy"] == "swap"
    assert d["summary"] == pair["summary"]


# ----------------------------------------------------------------------------------------------- batch models
@pytest.mark.parametrize("model, kind", [("lognormal:0.5", "lognormal"),
                                         pytest.param("two-speed:3:0.3", "lognormal", marks=pytest.mark.slow),
                                         ("affine:0.01,1e-5,1e-5,0", "affine")])
def test_batch_models(model, kind, cap):
    d = run_json(SIM + ["--lam", "0.2", "--b-model", model, "--no-verdict"])
    (r,) = d["summary"]
    assert r["batch_model"] == kind and "verdict" not in r
    assert r["reliable"] is True and d["reliable"] is True
    assert r["p_backlog_grows"] == 0.0 and r["throughput_rps"] > 0
    # the theory columns keep b̄ = --b
    assert r["b_s"] == 0.0372
    for k in THEORY:
        assert r[k] == pytest.approx(cap[k], rel=1e-12), k


def test_two_speed_spec_is_a_two_component_lognormal_with_mean_b():
    """``--b-model two-speed:R:F`` (its simulate run is a slow variant of the lognormal one above)."""
    import lqs

    bt = lqs.parse_batch_spec("two-speed:3:0.3", 0.0372)
    assert bt.kind == "lognormal" and bt.mean_s == pytest.approx(0.0372, rel=1e-6)
    assert np.asarray(bt.probs) == pytest.approx([0.7, 0.3])  # 30 % of steps in the slow component
    med = np.exp(np.asarray(bt.log_median, np.float64))
    assert med[1] == pytest.approx(3 * med[0], rel=1e-5)  # 3× slower


# ----------------------------------------------------------------------------------------------- critical
CRIT_KEYS = {"lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps", "mu_sim_rps", "mu_sim_se_rps", "mu_rps",
             "mu_exact_rps", "mu_stable_rps", "delta", "reliable"}


def test_critical_json_table_and_out(cap, tmp_path):
    d = run_json(CRIT)
    assert CRIT_KEYS <= set(d), CRIT_KEYS - set(d)
    assert d["lam_star_lo_rps"] <= d["lam_star_rps"] <= d["lam_star_hi_rps"]
    assert d["lam_star_lo_rps"] < d["lam_star_hi_rps"]
    assert 0.9 * d["mu_exact_stable_rps"] <= d["lam_star_rps"] <= 1.05 * d["mu_exact_rps"]
    assert d["mu_sim_se_rps"] > 0 and 0.8 * d["mu_exact_rps"] <= d["mu_sim_rps"] <= 1.1 * d["mu_exact_rps"]
    for k in THEORY:
        assert d[k] == pytest.approx(cap[k], rel=1e-12), k
    assert d["reliable"] is True and d["trials"] == 10 and d["policy"] == "swap"
    assert len(d["grid_lam_rps"]) == len(d["grid_p_backlog_grows"]) == len(d["grid_verdict"]) == 4
    assert d["grid_verdict"][0] == "stable" and d["grid_p_backlog_grows"][0] == 0.0  # 0.8·μ_exact(1−δ)
    assert d["grid_verdict"][-1] == "unstable"  # 1.2·μ_exact
    assert d["server"]["policy"] == "swap" and d["monte_carlo"]["trials"] == 10
    # the human table shows the same (seeded) numbers; --out writes them with both runs' tables
    out = tmp_path / "crit"
    r = run(CRIT + ["--out", str(out)])
    assert r.exit_code == 0, r.output
    saved = _strict((out / "critical.json").read_text())
    assert saved["lam_star_rps"] == d["lam_star_rps"] and saved["server"] == d["server"]
    assert (out / "saturation" / "trials.csv").is_file() and (out / "grid" / "summary.csv").is_file()
    _strict((out / "saturation" / "config.json").read_text())
    for needle in ("λ* (simulated critical rate)", f"{d['lam_star_rps']:.4f}", f"{d['lam_star_lo_rps']:.4f}",
                   f"{d['mu_exact_rps']:.4f}", "long-run verdict over λ", "inside [μ_exact(1−δ), μ_exact]: yes"):
        assert needle in r.stdout, needle
    assert "…" not in r.stdout


def test_simulate_table(pair):
    r = run(SIM + ["--lam", "0.2,1.0"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    lo, hi = pair["summary"]
    for needle in ("verdict", "backlog grew", "λ* (req/s)", "stable", "throughput (req/s)", "wait p99 (s)", f"{lo['throughput_rps']:.4f}",
                   f"{hi['throughput_rps']:.4f}", f"μ_exact = {lo['mu_exact_rps']:.4f}", "UNSTABLE at λ = 1 req/s"):
        assert needle in out, needle
    assert "…" not in out  # captured output is not cut to 80 columns
    assert "grows" in out  # no finite-horizon latency percentiles for the unstable row


# ----------------------------------------------------------------------------------------------- bad input
BAD = [
    (["--policy", "bogus"], "policy"),
    (["--trials", "0"], "trials"),
    (["--servers", "0"], "servers"),
    (["--routing", "nearest"], "routing"),
    (["--lam", "-1"], "lam"),
    (["--lam", "1:2"], "lam"),
    (["--lam", "1:2:0"], "lam"),
    (["--lam", ","], "lam"),
    (["--token-budget", "256"], "token_budget"),
    (["--steps", "1000"], "steps"),
    (["--steps", "500"], "steps"),
    (["--b-model", "nonsense"], "b_model"),
    (["--b-model", "empirical"], "b_model"),
    (["--b-model", "constant:x"], "b_model"),
    (["--b-model", "lognormal:-1"], "b_model"),
    (["--b-model", "two-speed:3"], "b_model"),
    (["--b-model", "affine:1,2"], "b_model"),
    (["--b-model", "affine:-1,0,0,0"], "b_model"),
    (["--M", "1000"], "lengths"),
    (["--seed", "-1"], "seed"),
    (["--K", "4"], "K"),
]


def _assert_one_line_error(r, param):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ")
    assert f"{param}=" in lines[0], lines[0]
    assert "Traceback" not in r.output and r.stdout == ""


def _with(cmd, over):
    args = list(cmd)
    for k, v in zip(over[::2], over[1::2]):
        if k in args:
            args[args.index(k) + 1] = v
        else:
            args += [k, v]
    return args


@pytest.mark.parametrize("over, param", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_simulate_bad_input_exit_2_one_line(over, param):
    _assert_one_line_error(run(_with(SIM + ["--lam", "0.2"], over) + ["--json"]), param)


@pytest.mark.parametrize("over, param", [(["--policy", "bogus"], "policy"), (["--grid-points", "-1"], "grid_points"),
                                         (["--grid-trials", "0"], "grid_trials"), (["--M", "1000"], "lengths"),
                                         (["--steps", "1000"], "steps")])
def test_critical_bad_input_exit_2_one_line(over, param):
    _assert_one_line_error(run(_with(CRIT, over)), param)


@pytest.mark.parametrize("cmd, flag, new", [(SIM + ["--lam", "0.2"], "--replicas", "--trials"),
                                            (CRIT, "--replicas", "--trials"),
                                            (CRIT, "--grid-replicas", "--grid-trials")],
                         ids=["simulate --replicas", "critical --replicas", "critical --grid-replicas"])
def test_renamed_flags_are_one_line_errors(cmd, flag, new):
    r = run(cmd + [flag, "4"])
    assert r.exit_code == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {flag} was renamed {new} (Monte Carlo repetitions")
    if flag == "--replicas":
        assert line == ("error: --replicas was renamed --trials (Monte Carlo repetitions); serving instances are "
                        "--servers")


def _strict(text):
    """json.loads that refuses bare NaN / Infinity (not JSON)."""
    def bad(c):
        raise AssertionError(f"bare {c} in JSON")

    return json.loads(text, parse_constant=bad)


def test_json_never_contains_bare_nan(tmp_path, pair):
    """λ = 0 has no completions, so its latencies and control-variate throughput are missing: null on stdout and
    in config.json, never NaN (one policy for every JSON lqs writes)."""
    out = tmp_path / "zero"
    r = run(SIM + ["--lam", "0,1.0", "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout
    d = _strict(r.stdout)
    zero = d["summary"][0]
    assert zero["lam_rps"] == 0.0 and zero["wait_p99_s"] is None and zero["throughput_rps"] == 0.0
    assert d["server"]["prefill_chunk_tokens"] == 512 and d["monte_carlo"]["trials"] == 10
    _strict((out / "config.json").read_text())


def test_missing_lam():
    _assert_one_line_error(run(SIM), "lam")


def test_path_option_selects_the_path_with_identical_numbers(tmp_path):
    """``lqs --path fused simulate`` (interpret mode on a CPU) gives the XLA run's numbers and records the path."""
    # 2 trials, K = 192, one rate: the XLA and fused programs of test_bench's runs (same workload structure)
    args = _with(SIM, ["--steps", "2000", "--trials", "2", "--K", "192"]) + ["--lam", "1.0", "--seed", "3",
                                                                              "--no-verdict"]
    outs = {}
    for eng in ("xla", "fused"):
        out = tmp_path / eng
        r = run(["--path", eng, *args, "--out", str(out)])
        assert r.exit_code == 0, r.output
        outs[eng] = (json.loads((out / "config.json").read_text()), pd.read_csv(out / "trials.csv"))
    assert outs["xla"][0]["sizing"]["path"] == "xla"
    assert outs["fused"][0]["sizing"]["path"] == "fused-interpret"
    pd.testing.assert_frame_equal(outs["xla"][1], outs["fused"][1])
    r = run(["--path", "cuda", *args])
    assert r.exit_code == 2 and "--path" in r.output and len(r.output.strip().splitlines()) == 1


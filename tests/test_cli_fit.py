"""lqs fit lengths / lqs fit batch from the command line, on files written here in every format: the
report table, --json, --out; the fitted length model as a workload (--workload FILE, scaled, and a sweep's
workload entry); one-line errors for bad files."""

import json

import numpy as np
import pandas as pd
import pytest

import lqs
from bench_files import SMALL_WL, bench_run, write_json, write_jsonl
from cli_run import one_line_error, run, run_json

pytestmark = pytest.mark.xdist_group("cli_fit")  # one worker: its module fixtures run once

FIT = ["--prefill-chunk", "128", "--components", "3", "--steps", "300"]


def _lengths(n=1500, seed=0):
    """Correlated log-normal lengths (a trace-like joint law)."""
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([5.0, 3.5], [[0.6, 0.2], [0.2, 0.5]], n)
    return np.clip(np.rint(np.exp(z[:, 0])), 1, 3000).astype(int), np.clip(np.rint(np.exp(z[:, 1])), 1, 800).astype(int)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("fit")
    s, o = _lengths()
    csv = d / "trace.csv"
    pd.DataFrame({"num_prefill_tokens": s, "num_decode_tokens": o, "arrived_at": np.arange(s.size) * 0.1}).to_csv(
        csv, index=False)
    out = d / "model"
    rep = run_json(["fit", "lengths", str(csv), *FIT, "--M", "4096", "--out", str(out)])
    return dict(dir=d, csv=str(csv), out=out, rep=rep, model=str(out / "length_model.json"), s=s, o=o)


def test_fit_lengths_json_and_files(fitted):
    rep = fitted["rep"]
    assert rep["components"] == 3 and rep["n_requests"] == 1500 and rep["prefill_chunk_tokens"] == 128
    assert rep["mean_g_rel_err"] < 0.01 and rep["ks_s"] <= 0.05 and rep["ks_o"] <= 0.05
    assert rep["delta"] == pytest.approx(rep["max_total_tokens"] / 4096)
    assert rep["max_total_tokens"] == int((fitted["s"] + fitted["o"]).max())
    for f in ("length_model.json", "length_fit.json", "length_fit.png"):
        assert (fitted["out"] / f).stat().st_size > 100, f
    assert json.loads((fitted["out"] / "length_fit.json").read_text())["ks_s"] == rep["ks_s"]


def test_length_model_is_a_workload_everywhere(fitted, tmp_path):
    base = ["--M", "4096", "--prefill-chunk", "128", "--b", "0.02"]
    tr = run_json(["capacity", "--trace", fitted["csv"], *base])
    m = run_json(["capacity", "--workload", fitted["model"], *base])
    assert m["workload"] == "length_model.json"
    assert abs(m["mean_g_tokens2"] / tr["mean_g_tokens2"] - 1) < 0.01 and m["max_total_tokens"] == tr["max_total_tokens"]
    m2 = run_json(["capacity", "--workload", fitted["model"], *base, "--prompt-scale", "1.5", "--output-scale", "2"])
    assert m2["mean_g_tokens2"] > 2 * m["mean_g_tokens2"] and "×(1.5,2)" in m2["workload"]
    t2 = run_json(["capacity", "--trace", fitted["csv"], *base, "--prompt-scale", "1.5", "--output-scale", "2"])
    assert abs(m2["mean_g_tokens2"] / t2["mean_g_tokens2"] - 1) < 0.03  # scaling the model ≈ scaling the trace
    # the Python API: the saved model loads as an lqs Workload and scales
    wl = lqs.load_length_model(fitted["model"])
    assert isinstance(wl, lqs.LengthModel) and isinstance(wl, lqs.Workload)
    assert wl.scaled(2.0, 1.0).max_total > wl.max_total
    # a sweep's workload entry: model:FILE[@PROMPTxOUTPUT] or a bare FILE.json (checked, then loaded by the plan)
    from lqs.sweep.plan import _load_workloads

    spec = lqs.SweepSpec.from_dict({"workload": [f"model:{fitted['model']}@1.5x2", fitted["model"]], "lam": [5.0],
                                    "M": [4096], "prefill_chunk": [128], "b": [0.02], "trials": 2, "steps": 500, "warmup": 100})
    wls = _load_workloads(spec)
    scaled, plain = (wls[w] for w in spec.workload)
    assert isinstance(scaled, lqs.LengthModel) and isinstance(plain, lqs.LengthModel)
    assert scaled.max_total > plain.max_total
    with pytest.raises(lqs.LqsError, match="PROMPTxOUTPUT"):
        lqs.SweepSpec.from_dict({"workload": [f"model:{fitted['model']}@1.5"], "lam": [5.0], "M": [4096],
                                 "prefill_chunk": [128], "b": [0.02]})


def test_fit_lengths_from_benchmark_results_table(tmp_path):
    # (every fit compiles its own optax loop: two fits here, the table on one, JSON on the other)
    f = write_json(tmp_path / "bench.json", bench_run(5.0, 402, seed=1, failed=2))
    r = run(["fit", "lengths", f, *FIT])
    assert r.exit_code == 0, r.output
    for text in ("400 requests", "E[g] relative error", "KS distance, prompt s", "KS distance, output o",
                 "components", "fit time"):
        assert text in r.output, text
    g = write_jsonl(tmp_path / "runs.jsonl", [bench_run(5.0, 100, seed=2, sglang=True),
                                              bench_run(5.0, 400, seed=3, sglang=True)])
    d = run_json(["fit", "lengths", g, "--run", "1", *FIT])
    assert d["n_requests"] == 400 and d["mean_g_rel_err"] < 0.01 and d["components"] == 3


# ----------------------------------------------------------------------------------------------- fit batch
A = (0.01, 1e-5, 2e-5, 1e-7)


@pytest.fixture(scope="module")
def steplog():
    srv = lqs.Server(M=4096, prefill_chunk=128, b=lqs.AffineBatch(*A), b_theory=0.02)
    df, _, _ = lqs.step_log(SMALL_WL, srv, 15.0, steps=512)
    return df


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_fit_batch_formats(steplog, tmp_path, fmt):
    path = tmp_path / f"steps.{fmt}"
    df = steplog[["b", "prefill_tokens", "decode_tokens", "mem"]]
    {"csv": lambda: df.to_csv(path, index=False), "jsonl": lambda: df.to_json(path, orient="records", lines=True),
     "parquet": lambda: df.to_parquet(path)}[fmt]()
    d = run_json(["fit", "batch", str(path), "--steps", "500"])
    assert d["n_steps"] == 512 and d["r2"] > 0.999 and d["spec"].startswith("affine:")
    np.testing.assert_allclose([d["a0_s"], d["a1_s_per_prefill_token"], d["a2_s_per_decode_token"]], A[:3], rtol=0.05)
    b = lqs.parse_batch_spec(d["spec"], 0.02)  # the printed spec is what --b-model takes
    assert isinstance(b, lqs.AffineBatch)


def test_fit_batch_named_columns_table_and_out(steplog, tmp_path):
    df = pd.DataFrame({"step_ms": steplog["b"] * 1e3, "pf": steplog["prefill_tokens"], "dc": steplog["decode_tokens"]})
    path = tmp_path / "engine_steps.csv"
    df.to_csv(path, index=False)
    out = tmp_path / "bf"
    r = run(["fit", "batch", str(path), "--time-col", "step_ms", "--prefill-col", "pf", "--decode-col", "dc",
             "--steps", "500", "--out", str(out)])
    assert r.exit_code == 0, r.output
    for text in ("R²", "residual p50", "use it: --b-model affine:", "a0 (s)"):
        assert text in r.output, text
    rep = json.loads((out / "batch_fit.json").read_text())
    assert rep["a3_s_per_memory_token"] == 0.0 and rep["columns"]["time"] == "step_ms"
    assert abs(rep["a0_s"] / A[0] - 1) < 0.3  # the memory term is folded into the others without a mem column
    assert (out / "batch_fit.png").stat().st_size > 10_000


def test_fit_bad_input(tmp_path, fitted):
    p = tmp_path / "steps.csv"
    pd.DataFrame({"b": [0.01, 0.02, 0.03, 0.04, 0.05], "prefill_tokens": [1, 2, 3, 4, 5]}).to_csv(p, index=False)
    one_line_error(run(["fit", "batch", str(p)]), "decode_col", "steps.csv")
    pd.DataFrame({"b": [0.01, -0.02, 0.03, 0.04, 0.05], "prefill_tokens": [1] * 5, "decode_tokens": [1] * 5}).to_csv(
        p, index=False)
    one_line_error(run(["fit", "batch", str(p)]), "b", "steps.csv")
    one_line_error(run(["fit", "batch", str(p), "--time-col", "nope"]), "time_col", "steps.csv")
    one_line_error(run(["fit", "batch", str(tmp_path / "missing.csv")]), "missing.csv")
    one_line_error(run(["fit", "lengths", str(tmp_path / "missing.csv")]), "missing.csv")
    one_line_error(run(["fit", "lengths", fitted["csv"], "--components", "0"]), "components")
    one_line_error(run(["fit", "lengths", fitted["csv"], "--run", "1"]), "run", "trace.csv")
    bad = tmp_path / "bad_model.json"
    bad.write_text('{"kind": "lqs-length-model", "version": 1}')
    one_line_error(run(["capacity", "--workload", str(bad), "--M", "4096", "--prefill-chunk", "128", "--b", "0.02"]),
                    "bad_model.json", "mixture")

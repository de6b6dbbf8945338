"""fit_batch: the affine batch-time model from step logs (CSV, JSONL, Parquet, lqs.step_log)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import lqs
from lqs import LqsError
from lqs._batch import parse_batch_spec
from lqs.fit import fit_batch

A = np.array([0.01, 2e-5, 5e-5, 1e-7])


def _steps(n=4000, seed=0, outliers=0.01):
    rng = np.random.default_rng(seed)
    pre = rng.choice([0, 256, 512], n)
    dec = rng.integers(1, 256, n)
    mem = rng.integers(1000, 131_000, n)
    y = (A[0] + A[1] * pre + A[2] * dec + A[3] * mem) * rng.lognormal(0, 0.02, n)
    y[rng.random(n) < outliers] *= 5  # slow steps: the robust loss ignores them
    return pre, dec, mem, y


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_fit_batch_recovers_coefficients(tmp_path, fmt):
    pre, dec, mem, y = _steps()
    df = pd.DataFrame({"step_time_ms": y * 1e3, "num_prefill_tokens": pre, "num_decode_tokens": dec,
                       "kv_tokens": mem})
    p = tmp_path / f"steps.{fmt}"
    {"csv": lambda: df.to_csv(p, index=False), "jsonl": lambda: df.to_json(p, orient="records", lines=True),
     "parquet": lambda: df.to_parquet(p)}[fmt]()
    fit = fit_batch(p)
    np.testing.assert_allclose(fit.a, A, rtol=0.03)
    assert fit.columns == {"time": "step_time_ms", "prefill": "num_prefill_tokens", "decode": "num_decode_tokens",
                           "memory": "kv_tokens"}
    assert fit.spec.startswith("affine:")
    b = parse_batch_spec(fit.spec, 1.0)
    np.testing.assert_allclose(np.asarray(b.a, np.float64), fit.a, rtol=1e-4)
    assert isinstance(fit.batch, lqs.AffineBatch)
    d = fit.to_dict()
    assert 0 < d["r2"] <= 1 and abs(d["residual_quantiles_s"]["p50"]) < 1e-3
    json.dumps(d)


def test_fit_batch_overrides_no_memory_and_plot(tmp_path):
    pre, dec, mem, y = _steps(outliers=0)
    y = y - A[3] * mem  # no memory term
    df = pd.DataFrame({"T": y, "P": pre, "D": dec})
    fit = fit_batch(df, time_col="T", prefill_col="P", decode_col="D")
    assert fit.a[3] == 0.0 and fit.r2 > 0.9
    paths = fit.save(tmp_path)
    with open(paths["plot"], "rb") as fh:
        assert fh.read(4) == b"\x89PNG"


@pytest.mark.parametrize("df, kw, match", [
    (pd.DataFrame({"b": [0.1] * 10, "prefill_tokens": [1] * 10}), {}, "decode_col"),
    (pd.DataFrame({"b": [0.1] * 10, "prefill_tokens": [1] * 10, "decode_tokens": [1] * 10}), {"mem_col": "x"},
     "mem_col"),
    (pd.DataFrame({"b": [0.1, -0.1] * 5, "prefill_tokens": [1] * 10, "decode_tokens": [1] * 10}), {}, "'b'|b="),
    (pd.DataFrame({"b": [0.1] * 3, "prefill_tokens": [1] * 3, "decode_tokens": [1] * 3}), {}, "at least 4"),
])
def test_fit_batch_bad_input(df, kw, match):
    with pytest.raises(LqsError, match=match):
        fit_batch(df, **kw)


def test_fit_batch_bad_file(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("step_time_s,prefill_tokens,decode_tokens\n0.1,1,1\n0.1,1,1\n0.1,1,1\n0.1,x,1\n0.1,1,1\n")
    with pytest.raises(LqsError, match="prefill_tokens") as e:
        fit_batch(p)
    assert "log.csv" in str(e.value)


@pytest.mark.slow
def test_fit_batch_from_engine_step_log():
    srv = lqs.Server(M=20_000, prefill_chunk=256, b=lqs.AffineBatch(*A), b_theory=0.02)
    df, _, _ = lqs.step_log(lqs.preset("pd-1:1"), srv, 20.0, steps=2048)
    fit = fit_batch(df)
    np.testing.assert_allclose(fit.a, A, rtol=1e-3)

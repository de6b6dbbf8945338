"""fit_lengths: the constrained log-normal mixture on the bundled traces (the targets: E[g] within 1 %, KS ≤ 0.05) and its Workload."""

from __future__ import annotations

import json
import time

import jax
import numpy as np
import pytest

import lqs
from lqs import LqsError
from lqs.fit import LengthModel, fit_lengths, is_length_model, load_length_model

pytestmark = pytest.mark.xdist_group("fit")  # one worker: its module fixtures run once


@pytest.mark.parametrize("name", [pytest.param("azure-conv", marks=pytest.mark.slow), "azure-code"])
def test_fit_lengths_targets(name, tmp_path):
    t0 = time.perf_counter()
    fit = fit_lengths(name, 512, M=131_000)
    took = time.perf_counter() - t0
    d = fit.to_dict()
    assert d["mean_g_rel_err"] <= 0.01
    assert d["ks_s"] <= 0.05 and d["ks_o"] <= 0.05
    assert d["components"] == 10
    tr = lqs.load_trace(name)
    m = fit.model.expected_g(512)
    assert m.mean_prompt_tokens == pytest.approx(tr.s.mean(), rel=1e-6)
    assert m.mean_output_tokens == pytest.approx(tr.o.mean(), rel=1e-6)
    assert fit.model.max_total == tr.max_total  # same δ
    assert d["delta"] == pytest.approx(tr.max_total / 131_000)
    assert took < 60  # loose: the CPU is shared
    json.dumps(d)
    paths = fit.save(tmp_path)
    assert set(paths) == {"model", "report", "plot"}
    with open(paths["plot"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_fit():
    tr = lqs.load_trace("azure-conv").split(0.1)[0]
    return fit_lengths(tr, 512, components=3, steps=300, quantiles=9)


def test_length_model_is_a_workload(small_fit, tmp_path):
    w = small_fit.model
    assert isinstance(w, lqs.Workload)
    cap = lqs.capacity(w, lqs.Server(M=131_000, prefill_chunk=512, b=0.0372))
    assert cap.exact_moments and cap.mean_g_tokens2 == pytest.approx(small_fit.mean_g_trace_tokens2, rel=1e-9)
    s, o = w.sample(jax.random.key(0), (100_000,))
    s, o = np.asarray(s), np.asarray(o)
    assert s.min() >= 1 and (s.astype(np.int64) + o).max() <= w.max_total
    m = w.expected_g(512)
    assert s.mean() == pytest.approx(m.mean_prompt_tokens, rel=0.02)
    assert o.mean() == pytest.approx(m.mean_output_tokens, rel=0.02)


def test_length_model_save_load_scale(small_fit, tmp_path):
    w = small_fit.model
    p = w.save(tmp_path / "lengths.json")
    assert is_length_model(p)
    w2 = load_length_model(p)
    assert isinstance(w2, LengthModel)
    np.testing.assert_array_equal(w2.s, w.s)
    np.testing.assert_allclose(w2.p, w.p, rtol=1e-12)
    sc = w2.scaled(prompt=1.5, output=0.8)
    m, ms = w.expected_g(512), sc.expected_g(512)
    assert ms.mean_prompt_tokens == pytest.approx(1.5 * m.mean_prompt_tokens, rel=0.01)
    assert ms.mean_output_tokens == pytest.approx(0.8 * m.mean_output_tokens, rel=0.01)
    sc.save(tmp_path / "scaled.json")
    assert load_length_model(tmp_path / "scaled.json").expected_g(512).g == pytest.approx(ms.g, rel=1e-12)
    with pytest.raises(LqsError, match="prompt"):
        w.scaled(prompt=0)


@pytest.mark.parametrize("text, match", [
    ("{not json", "readable JSON"),
    ('{"kind": "something-else"}', "kind"),
    ('{"kind": "lqs-length-model", "mixture": {}}', "grid"),
])
def test_bad_length_model_files(tmp_path, text, match):
    p = tmp_path / "model.json"
    p.write_text(text)
    with pytest.raises(LqsError, match=match) as e:
        load_length_model(p)
    assert "model.json" in str(e.value)


def test_fit_lengths_bad_input():
    with pytest.raises(LqsError, match="prefill_chunk"):
        fit_lengths("azure-code", 0)
    tr = lqs.Trace(np.array([10, 20, 30]), np.array([5, 6, 7]), None, "x", "tiny")
    with pytest.raises(LqsError, match="components"):
        fit_lengths(tr, 512, components=4)

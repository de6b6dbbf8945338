"""Trace loading (CSV, JSONL, Parquet; the column conventions), the train/test split, batch-time files."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

import lqs
from lqs import LqsError, Trace, load_b_samples, load_trace
from lqs._theory import g_exact, g_paper

S = [100, 250, 7, 4096, 33]
O = [20, 1, 300, 64, 5]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- bundled
@pytest.mark.parametrize("name, n", [("azure-conv", 19_366), ("azure-code", 8_819)])
def test_bundled_traces_by_name(name, n):
    tr = load_trace(name)
    assert isinstance(tr, Trace) and len(tr) == n and tr.name == name
    assert tr.source.startswith("bundled:")
    assert tr.s.dtype == np.int32 and tr.o.dtype == np.int32
    assert tr.s.min() >= 1 and tr.o.min() >= 1
    assert tr.arrival_s is not None and tr.arrival_s.dtype == np.float64
    assert tr.arrival_s[0] == 0.0 and np.all(np.diff(tr.arrival_s) >= 0)
    assert 3000 < tr.duration_s <= 3600  # one hour
    assert tr.mean_rate_rps == pytest.approx((n - 1) / tr.duration_s)
    # agrees with the raw file
    raw = pd.read_csv(f"lqs/data/{name.replace('-', '_')}.csv")
    assert np.array_equal(tr.s, raw.num_prefill_tokens.to_numpy())
    assert np.array_equal(tr.o, raw.num_decode_tokens.to_numpy())


def test_bundled_name_aliases():
    assert len(load_trace("AZURE_CONV")) == 19_366


def test_trace_workload_is_the_joint_empirical():
    tr = load_trace("azure-code")
    w = tr.workload()
    assert isinstance(w, lqs.Pairs)
    assert np.array_equal(w.s, tr.s) and np.array_equal(w.o, tr.o)
    s, o = tr.s.astype(np.int64), tr.o.astype(np.int64)
    m = w.expected_g(512)
    assert m.exact
    assert m.g_exact == pytest.approx(g_exact(s, o, 512).mean(), rel=1e-12)
    assert m.g == pytest.approx(g_paper(s.astype(float), o.astype(float), 512).mean(), rel=1e-12)
    assert w.max_total == tr.max_total == int((s + o).max())


# ----------------------------------------------------------------------------------------------- formats
def test_csv_vidur(tmp_path):
    df = pd.DataFrame({"arrived_at": [0.5, 1.0, 1.5, 3.0, 4.5], "num_prefill_tokens": S, "num_decode_tokens": O})
    p = tmp_path / "vidur.csv"
    df.to_csv(p, index=False)
    tr = load_trace(p)
    assert tr.s.tolist() == S and tr.o.tolist() == O
    assert tr.arrival_s.tolist() == pytest.approx([0.0, 0.5, 1.0, 2.5, 4.0])
    assert tr.name == "vidur" and tr.source == str(p)
    assert tr.mean_rate_rps == pytest.approx(4 / 4.0)


def test_csv_vidur_without_arrivals(tmp_path):
    p = _write(tmp_path / "t.csv", "num_prefill_tokens,num_decode_tokens\n10,2\n20,3\n")
    tr = load_trace(str(p))
    assert tr.arrival_s is None and tr.mean_rate_rps is None and tr.duration_s is None
    assert tr.s.tolist() == [10, 20]


def test_csv_azure_with_datetime_timestamps(tmp_path):
    text = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
            "2023-11-16 18:15:46.6805900,374,44\n"
            "2023-11-16 18:15:50.1,396,109\n"
            "2023-11-16 18:16:46,879,55\n"
            "2023-11-16 18:16:47.25,91,16\n")
    tr = load_trace(_write(tmp_path / "AzureLLMInferenceTrace_conv.csv", text))
    assert tr.s.tolist() == [374, 396, 879, 91] and tr.o.tolist() == [44, 109, 55, 16]
    assert tr.arrival_s == pytest.approx([0.0, 3.41941, 59.31941, 60.56941], abs=1e-6)


def test_csv_azure_with_numeric_timestamps(tmp_path):
    tr = load_trace(_write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n10,5,6\n12.5,7,8\n"))
    assert tr.arrival_s.tolist() == [0.0, 2.5]


def test_jsonl_llmservingsim_nanoseconds(tmp_path):
    t0 = 1_700_000_000_000_000_000
    lines = [json.dumps({"input_toks": s, "output_toks": o, "arrival_time_ns": t0 + i * 250_000_001})
             for i, (s, o) in enumerate(zip(S, O))]
    p = _write(tmp_path / "sim.jsonl", "\n".join(lines) + "\n\n")
    tr = load_trace(p)
    assert tr.s.tolist() == S and tr.o.tolist() == O
    assert tr.arrival_s == pytest.approx([i * 0.250000001 for i in range(5)], abs=1e-12)
    # the same in .ndjson, and as a JSON array
    assert load_trace(_write(tmp_path / "sim.ndjson", "\n".join(lines))).s.tolist() == S
    assert load_trace(_write(tmp_path / "arr.json", "[" + ",".join(lines) + "]")).o.tolist() == O


def test_parquet(tmp_path):
    df = pd.DataFrame({"num_prefill_tokens": np.array(S, np.int64), "num_decode_tokens": np.array(O, np.int16),
                       "arrived_at": [0.0, 0.1, 0.2, 0.3, 0.4]})
    p = tmp_path / "t.parquet"
    df.to_parquet(p, index=False)
    tr = load_trace(p)
    assert tr.s.tolist() == S and tr.o.tolist() == O and tr.arrival_s == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])


def test_parquet_azure_with_datetime64_column(tmp_path):
    ts = pd.to_datetime(["2023-11-16 18:15:46", "2023-11-16 18:15:47.5", "2023-11-16 18:15:49"], format="mixed")
    df = pd.DataFrame({"TIMESTAMP": ts, "ContextTokens": [1, 2, 3], "GeneratedTokens": [4, 5, 6]})
    p = tmp_path / "az.pq"
    df.to_parquet(p, index=False)
    assert load_trace(p).arrival_s.tolist() == pytest.approx([0.0, 1.5, 3.0])


def test_explicit_columns_and_time_units(tmp_path):
    p = _write(tmp_path / "custom.csv", "prompt,completion,t_ms,extra\n10,1,1000,x\n20,2,1500,y\n30,3,4000,z\n")
    with pytest.raises(LqsError) as e:
        load_trace(p)
    assert e.value.param == "s_col" and "'prompt'" in str(e.value) and "'completion'" in str(e.value)
    tr = load_trace(p, s_col="prompt", o_col="completion", t_col="t_ms")
    assert tr.s.tolist() == [10, 20, 30] and tr.o.tolist() == [1, 2, 3]
    assert tr.arrival_s.tolist() == pytest.approx([0.0, 0.5, 3.0])  # _ms suffix → milliseconds
    tr = load_trace(p, s_col="PROMPT", o_col="completion", t_col="t_ms", t_unit="s")
    assert tr.arrival_s.tolist() == pytest.approx([0.0, 500.0, 3000.0])
    # an explicit column overrides one role of a detected convention
    q = _write(tmp_path / "v.csv", "num_prefill_tokens,num_decode_tokens,my_o\n10,1,7\n")
    assert load_trace(q, o_col="my_o").o.tolist() == [7]


def test_other_conventions_and_compression(tmp_path):
    p = tmp_path / "mooncake.jsonl.gz"
    with gzip.open(p, "wt") as fh:
        fh.write('{"timestamp": 0, "input_length": 6955, "output_length": 52}\n')
        fh.write('{"timestamp": 2500, "input_length": 100, "output_length": 3}\n')
    tr = load_trace(p)
    assert tr.s.tolist() == [6955, 100] and tr.arrival_s.tolist() == [0.0, 2.5]  # Mooncake: milliseconds
    b = _write(tmp_path / "burst.csv", "Timestamp,Model,Request tokens,Response tokens\n5,gpt,10,20\n7,gpt,3,4\n")
    tr = load_trace(b)
    assert tr.s.tolist() == [10, 3] and tr.o.tolist() == [20, 4] and tr.arrival_s.tolist() == [0.0, 2.0]


def test_fmt_overrides_extension(tmp_path):
    p = _write(tmp_path / "trace.log", '{"input_toks": 4, "output_toks": 5}\n')
    with pytest.raises(LqsError) as e:
        load_trace(p)
    assert e.value.param == "trace"
    assert load_trace(p, fmt="jsonl").s.tolist() == [4]


def test_unsorted_arrivals_are_sorted_and_rows_kept(tmp_path):
    p = _write(tmp_path / "u.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n5,1,1\n2,2,2\n9,3,3\n2,4,4\n")
    tr = load_trace(p)
    assert tr.s.tolist() == [2, 4, 1, 3] and tr.row.tolist() == [1, 3, 0, 2]
    assert tr.arrival_s.tolist() == [0.0, 0.0, 3.0, 7.0]


# ----------------------------------------------------------------------------------------------- split
def test_split_chronological_80_20():
    tr = load_trace("azure-conv")
    train, test = tr.split()
    assert len(train) == round(0.8 * len(tr)) and len(train) + len(test) == len(tr)
    assert train.row.tolist() == list(range(len(train)))  # the first 80% in arrival order
    assert test.row.tolist() == list(range(len(train), len(tr)))
    assert np.array_equal(np.concatenate([train.s, test.s]), tr.s)
    assert train.arrival_s[0] == 0.0 and test.arrival_s[0] == 0.0  # each part re-based
    assert train.name == "azure-conv[train]" and test.name == "azure-conv[test]"
    t2, e2 = tr.split()
    assert np.array_equal(t2.s, train.s) and np.array_equal(e2.o, test.o)  # deterministic


def test_split_seeded_permutation_without_arrivals():
    rng = np.random.default_rng(0)
    tr = Trace(rng.integers(1, 100, 1000), rng.integers(1, 100, 1000), None, "mem", "mem")
    a, b = tr.split(0.8, seed=0)
    assert len(a) == 800 and len(b) == 200
    assert sorted(a.row.tolist() + b.row.tolist()) == list(range(1000))
    assert not set(a.row.tolist()) & set(b.row.tolist())
    assert a.row.tolist() != list(range(800))  # random, not the first 800
    a2, b2 = tr.split(0.8, seed=0)
    assert a2.row.tolist() == a.row.tolist() and b2.row.tolist() == b.row.tolist()
    a3, _ = tr.split(0.8, seed=1)
    assert a3.row.tolist() != a.row.tolist()
    assert np.array_equal(a.s, tr.s[a.row])


def test_split_small_and_bad():
    tr = Trace([1, 2], [1, 1], None, "x", "x")
    a, b = tr.split(0.99)
    assert len(a) == 1 and len(b) == 1
    for frac in (0.0, 1.0, -0.1, 1.5, np.nan, "a"):
        with pytest.raises(LqsError) as e:
            tr.split(frac)
        assert e.value.param == "train_frac"
    with pytest.raises(LqsError) as e:
        tr.split(0.8, seed=-1)
    assert e.value.param == "seed"
    with pytest.raises(LqsError) as e:
        Trace([5], [5], None, "one", "one").split()
    assert e.value.param == "trace"


def test_validate_against_M_names_the_row(tmp_path):
    p = _write(tmp_path / "t.csv", "num_prefill_tokens,num_decode_tokens\n10,10\n100,50\n60,60\n")
    tr = load_trace(p)
    assert tr.validate(150) is tr
    with pytest.raises(LqsError) as e:
        tr.validate(100)
    assert e.value.param == "lengths" and "row 1" in str(e.value) and "s=100" in str(e.value)
    assert "2 of 3" in str(e.value)


# ----------------------------------------------------------------------------------------------- bad input
def _err(fn, *a, **k):
    with pytest.raises(LqsError) as e:
        fn(*a, **k)
    return e.value


def test_missing_file_directory_and_bad_names(tmp_path):
    e = _err(load_trace, tmp_path / "nope.csv")
    assert e.param == "trace" and "azure-conv" in str(e) and "no such file" in str(e)
    assert _err(load_trace, tmp_path).param == "trace"
    assert _err(load_trace, "").param == "trace"
    assert _err(load_trace, None).param == "trace"
    assert _err(load_trace, 42).param == "trace"
    assert _err(load_trace, _write(tmp_path / "x.xlsx", "a")).param == "trace"
    assert _err(load_trace, "azure-conv", fmt="xml").param == "fmt"
    assert _err(load_trace, "azure-conv", t_unit="h").param == "t_unit"


@pytest.mark.parametrize("fname, content", [
    ("empty.csv", ""),
    ("header_only.csv", "num_prefill_tokens,num_decode_tokens\n"),
    ("empty.jsonl", "\n\n"),
])
def test_empty_traces(tmp_path, fname, content):
    e = _err(load_trace, _write(tmp_path / fname, content))
    assert e.param == "trace" and "at least one request" in str(e)


@pytest.mark.parametrize("fname, content", [
    ("ragged.csv", "num_prefill_tokens,num_decode_tokens\n1,2\n1,2,3,4\n"),
    ("bad.jsonl", '{"input_toks": 1, "output_toks": 2}\n{"input_toks": 1, oops}\n'),
    ("list.jsonl", '[1, 2, 3]\n'),
    ("scalar.jsonl", '3\n'),
    ("bad.parquet", "this is not parquet"),
])
def test_unparsable_traces(tmp_path, fname, content):
    e = _err(load_trace, _write(tmp_path / fname, content))
    assert e.param == "trace" and "readable" in str(e)


def test_undecodable_bytes(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"num_prefill_tokens,num_decode_tokens\n\xff\xfe\x00\x81,2\n")
    assert _err(load_trace, p).param in ("trace", "s")


def test_jsonl_error_names_the_line(tmp_path):
    e = _err(load_trace, _write(tmp_path / "b.jsonl", '{"input_toks": 1, "output_toks": 2}\n{nope\n'))
    assert "line 2" in str(e)


def test_missing_columns_lists_columns_found(tmp_path):
    e = _err(load_trace, _write(tmp_path / "c.csv", "foo,bar\n1,2\n"))
    assert e.param == "s_col" and "'foo'" in str(e) and "'bar'" in str(e)
    e = _err(load_trace, "azure-conv", s_col="prompt_len")
    assert e.param == "s_col" and "num_prefill_tokens" in str(e)
    e = _err(load_trace, "azure-conv", o_col="nope")
    assert e.param == "o_col"
    e = _err(load_trace, "azure-conv", t_col="nope")
    assert e.param == "t_col"
    e = _err(load_trace, "azure-conv", o_col="num_prefill_tokens")
    assert e.param == "o_col"


@pytest.mark.parametrize("cell, why", [("2.5", "not an integer"), ("0", "not positive"), ("-3", "not positive"),
                                       ("", "missing"), ("abc", "not a number"), ("nan", "missing"),
                                       ("2000000000", "2^30")])
def test_bad_lengths_name_the_row(tmp_path, cell, why):
    p = _write(tmp_path / "l.csv", f"num_prefill_tokens,num_decode_tokens\n10,2\n20,3\n{cell},4\n")
    e = _err(load_trace, p)
    assert e.param == "s" and "row 2" in str(e) and "num_prefill_tokens" in str(e) and why in str(e)
    q = _write(tmp_path / "l2.csv", f"num_prefill_tokens,num_decode_tokens\n10,{cell}\n")
    e = _err(load_trace, q)
    assert e.param == "o" and "row 0" in str(e)


def test_bad_lengths_in_jsonl_and_parquet(tmp_path):
    p = _write(tmp_path / "j.jsonl", '{"input_toks": 1, "output_toks": 2}\n{"input_toks": null, "output_toks": 2}\n')
    e = _err(load_trace, p)
    assert e.param == "s" and "row 1" in str(e)
    q = tmp_path / "p.parquet"
    pd.DataFrame({"num_prefill_tokens": [1.0, 2.0], "num_decode_tokens": [1.0, 0.5]}).to_parquet(q)
    e = _err(load_trace, q)
    assert e.param == "o" and "row 1" in str(e)
    r = tmp_path / "b.parquet"
    pd.DataFrame({"num_prefill_tokens": [True], "num_decode_tokens": [1]}).to_parquet(r)
    assert _err(load_trace, r).param == "s"


def test_bad_arrival_times(tmp_path):
    e = _err(load_trace, _write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                                    "2023-11-16 18:15:46,1,1\nyesterday-ish,1,1\n"))
    assert e.param == "arrival" and "row 1" in str(e)
    e = _err(load_trace, _write(tmp_path / "n.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n,1,1\n"))
    assert e.param == "arrival" and "row 1" in str(e)


def test_trace_constructor_validates():
    assert _err(Trace, [], [], None, "x", "x").param == "trace"
    assert _err(Trace, [1, 2], [1], None, "x", "x").param == "trace"
    assert _err(Trace, [1, 2], [1, 2], [0.0], "x", "x").param == "arrival_s"


# ----------------------------------------------------------------------------------------------- batch times
def test_b_samples_formats(tmp_path):
    x = [0.031, 0.035, 0.0372, 0.04, 0.1]
    assert load_b_samples(_write(tmp_path / "b.txt", "\n".join(map(str, x)) + "\n")).tolist() == x
    assert load_b_samples(_write(tmp_path / "b_noext", "\n".join(map(str, x)))).tolist() == x
    assert load_b_samples(_write(tmp_path / "h.csv", "batch_time_s\n" + "\n".join(map(str, x)))).tolist() == x
    assert load_b_samples(_write(tmp_path / "nh.csv", "\n".join(map(str, x)))).tolist() == x
    multi = _write(tmp_path / "m.csv", "step,batch_time_ms\n" + "\n".join(f"{i},{v * 1000}" for i, v in enumerate(x, 1)))
    assert load_b_samples(multi) == pytest.approx(x)  # _ms column converted to seconds
    assert load_b_samples(multi, col="step").tolist() == [1, 2, 3, 4, 5]
    j = _write(tmp_path / "b.jsonl", "\n".join(json.dumps({"b_s": v, "n": 3}) for v in x))
    assert load_b_samples(j).tolist() == x
    pq = tmp_path / "b.parquet"
    pd.DataFrame({"duration_s": x}).to_parquet(pq)
    assert load_b_samples(pq).tolist() == x
    assert lqs.estimate_b(load_b_samples(pq), "median") == 0.0372


def test_b_samples_bad(tmp_path):
    assert _err(load_b_samples, tmp_path / "none.txt").param == "b_samples"
    assert _err(load_b_samples, "azure-conv").param == "b_samples"
    assert _err(load_b_samples, _write(tmp_path / "e.txt", "")).param == "b_samples"
    assert _err(load_b_samples, _write(tmp_path / "h.csv", "batch_time_s\n")).param == "b_samples"
    e = _err(load_b_samples, _write(tmp_path / "z.txt", "0.1\n0\n0.2\n"))
    assert e.param == "b_samples" and "row 1" in str(e)
    assert _err(load_b_samples, _write(tmp_path / "n.txt", "0.1\nabc\n")).param in ("b_samples",)
    assert _err(load_b_samples, _write(tmp_path / "neg.txt", "0.1\n-0.2\n")).param == "b_samples"
    two = _write(tmp_path / "two.csv", "x,y\n1,2\n")
    e = _err(load_b_samples, two)
    assert e.param == "b_col" and "'x'" in str(e) and "'y'" in str(e)
    assert _err(load_b_samples, two, col="c").param == "b_col"

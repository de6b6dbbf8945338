"""Bad inputs found by fuzzing the commands: each ends in one line naming the parameter (or a counted, stated
choice), never in a traceback or a silent guess. Cheap: nothing here runs the Monte Carlo engine."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

import lqs
from bench_files import SMALL_WL, bench_run, write_json
from cli_run import one_line_error, run

from shapes import PD16K_FLAGS

SERVER = PD16K_FLAGS[2:]
SIM = ["simulate", *PD16K_FLAGS, "--lam", "0.3"]


def test_capacity_of_none_is_an_lqs_error():
    with pytest.raises(lqs.LqsError, match="workload"):
        lqs.capacity(None, lqs.Server(M=1000, prefill_chunk=64, b=0.02))


def test_a_binary_file_as_workload_is_one_line(tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes(bytes(range(256)) * 8)
    one_line_error(run(["capacity", "--workload", str(p), *SERVER]), "workload=", "length model")


def test_length_columns_of_timestamps_are_refused(tmp_path):
    """A Parquet column of datetimes is not read as token counts (1 s would become 10^9 tokens)."""
    p = tmp_path / "log.parquet"
    t = pd.to_datetime(np.arange(5) * 10**9 + 1.7e18)
    pd.DataFrame({"input_length": t, "output_length": [5, 6, 7, 8, 9], "timestamp": np.arange(5.0)}).to_parquet(p)
    with pytest.raises(lqs.LqsError, match="input_length.*datetimes"):
        lqs.load_trace(str(p))


@pytest.mark.parametrize("args, words", [
    (["study", "phase", "--axis", "bogus"], ["--axis=", "ratio"]),
    (["study", "phase", "--latency", "p42"], ["--latency=", "ttft_p99_s"]),
    (["--path", "gpu", "capacity", "--workload", "pd-1:1", *SERVER], ["--path=", "xla"]),
    (["bench", "--policy", "lifo"], ["policy=", "recompute"]),
    ([*SIM, "--K", "4"], ["K=4", "[8, 1048576]"]),
    ([*SIM, "--K", "0"], ["K=0", "[8, 1048576]"]),
    ([*SIM, "--b-model", "lognormal:1e9"], ["b_model=", "coefficient of variation CV in [0, 10]"]),
    (["capacity", "--workload", "pd-1:1", "--M", "16384", "--prefill-chunk", "512", "--b", "inf"],
     ["b=inf", "a finite number > 0"]),
])
def test_errors_are_one_line_and_name_the_right_parameter(args, words):
    r = run(args)
    one_line_error(r, *words)
    assert "Error: Invalid value" not in r.output


def test_monte_carlo_rejects_too_few_slots_at_construction():
    with pytest.raises(lqs.LqsError, match=r"K=4 is invalid: must be an integer in \[8, 1048576\]"):
        lqs.MonteCarlo(K=4)


def test_a_heavy_tailed_batch_model_is_named_when_it_overflows_the_arrivals():
    srv = lqs.Server(M=16384, prefill_chunk=512, b=lqs.parse_batch_spec("lognormal:8", 0.0372))
    with pytest.raises(lqs.LqsError, match="far quantile of the lognormal batch-time model"):
        lqs.simulate(lqs.preset("pd-1:1"), srv, 3.0, trials=2, steps=200, warmup=0)


def test_fit_lengths_with_no_quantiles_fits_the_moments_only():
    tr = lqs.Trace(s=np.arange(20, 220, dtype=np.int32), o=np.arange(200, 0, -1, dtype=np.int32), arrival_s=None,
                  source="t", name="t")
    fit = lqs.fit_lengths(tr, 64, components=2, quantiles=0, steps=50)
    assert fit.mean_g_rel_err < 1e-6


def test_a_zero_request_rate_without_start_times_is_refused(tmp_path):
    """request_rate 0 for a run that completed its requests is no arrival rate: refused before any simulation."""
    run_ = bench_run(1.0, 60, seed=3)
    del run_["start_times"]
    run_["request_rate"] = 0
    p = write_json(tmp_path / "zero.json", run_)
    with pytest.raises(lqs.LqsError, match=r"request_rate=0(\.0)? is invalid: must be > 0"):
        lqs.check(p, M=4096, prefill_chunk=128)


def test_measured_latencies_missing_are_counted_not_dropped_silently():
    from lqs.measured import _missing, _q

    x = np.array([0.1, np.nan, 0.3, np.nan])
    assert _missing(x) == 2 and _q(x, 0.5) == pytest.approx(0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "All-NaN slice" RuntimeWarning
        assert _q(np.full(3, np.nan), 0.5) is None and _missing(np.full(3, np.nan)) == 3

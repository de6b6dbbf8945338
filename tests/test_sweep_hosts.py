"""Several hosts share one sweep through its output directory: disjoint chunks, one merged table."""

import pandas as pd
import pytest

import lqs
from lqs.sweep import run_sweep

SPEC = dict(lam=[1.0, 3.0, 6.0], M=[4096], chunk=512, b=0.02, replicas=2,
            steps=1500, warmup=300, cells_per_chunk=2, seed=5)


def test_two_hosts_split_the_chunks_and_merge(tmp_path):
    small = dict(SPEC, workload=["pd_ratio:1:400", "pd_ratio:2:400"])  # short requests: M = 4096 holds them
    single, _ = run_sweep(small, tmp_path / "one", progress=False)
    part0, info0 = run_sweep(small, tmp_path / "two", progress=False, hosts=(0, 2))
    assert part0 is None and 0 < info0.computed < info0.n_chunks
    full, info1 = run_sweep(small, tmp_path / "two", progress=False, hosts=(1, 2))
    assert info0.computed + info1.computed == info1.n_chunks
    pd.testing.assert_frame_equal(full.drop(columns=["chunk"], errors="ignore").reset_index(drop=True),
                                  single.drop(columns=["chunk"], errors="ignore").reset_index(drop=True),
                                  check_exact=False, rtol=0, atol=0)
    with pytest.raises(lqs.LqsError):
        run_sweep(small, None, progress=False, hosts=(0, 2))
    with pytest.raises(lqs.LqsError):
        run_sweep(small, tmp_path / "three", progress=False, hosts=(2, 2))

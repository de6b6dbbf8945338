"""Several hosts share one sweep through its output directory: disjoint parts, one merged table, the same as one
process's. In-process with explicit ``hosts=(index, count)``, and for real: two processes joined by
``jax.distributed.initialize`` (CPU, coordinator on 127.0.0.1), each taking its index and count from JAX."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

import lqs
from lqs.sweep import run_sweep

pytestmark = pytest.mark.xdist_group("sweep_hosts")  # one worker: its module fixtures run once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 2 parts of 1 cell × 2 trials; with K pinned, the cells and the configuration's saturation run (2 trials) have one
# shape: one compilation per worker process (and, in this process, test_bench's 2-trial program)
SPEC = dict(workload=["pd_ratio:1:400"], lam=[0.5, 2.0], M=4096, prefill_chunk=256, b=0.02, trials=2, steps=2000,
            warmup=500, cells_per_part=1, seed=5, options={"K": 192})

WORKER = textwrap.dedent("""
    import json, sys
    import jax
    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=60, shutdown_timeout_seconds=60)
    import lqs  # after initialize: no JAX computation may run before it
    from lqs.sweep import run_sweep
    spec = json.loads(sys.argv[4])
    df, info = run_sweep(spec, out, progress=False)  # hosts from jax.process_index() / jax.process_count()
    print(json.dumps(dict(host=list(info.host), computed=info.computed, n_parts=info.n_parts,
                          merged=df is not None)), flush=True)
    jax.distributed.shutdown()
""")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    df, info = run_sweep(SPEC, tmp_path_factory.mktemp("one"), progress=False)
    assert info.n_parts == 2 and info.host == (0, 1)
    return df


def test_two_hosts_split_the_parts_and_merge(single, tmp_path):
    part0, info0 = run_sweep(SPEC, tmp_path / "two", progress=False, hosts=(0, 2))
    assert part0 is None and info0.computed == 1 and info0.n_parts == 2
    full, info1 = run_sweep(SPEC, tmp_path / "two", progress=False, hosts=(1, 2))
    assert info1.computed == 1 and info1.reused == 1
    pd.testing.assert_frame_equal(full, single, check_exact=True)
    with pytest.raises(lqs.LqsError):
        run_sweep(SPEC, None, progress=False, hosts=(0, 2))
    with pytest.raises(lqs.LqsError):
        run_sweep(SPEC, tmp_path / "three", progress=False, hosts=(2, 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # the host split itself: the in-process hosts=(i, n) test here
def test_two_jax_distributed_processes_share_one_sweep(single, tmp_path):
    """Two real JAX processes (jax.distributed on one machine, CPU) run one sweep into one directory."""
    out = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i), str(out), json.dumps(SPEC)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    deadline = time.monotonic() + 150
    try:
        results = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:  # never leave a worker behind (timeout or failure)
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (so, se) in zip(procs, results):
        assert p.returncode == 0, se[-3000:]
    reports = [json.loads(so.strip().splitlines()[-1]) for so, _ in results]
    assert [r["host"] for r in reports] == [[0, 2], [1, 2]]
    assert [r["computed"] for r in reports] == [1, 1]  # host i computes part i: disjoint, none twice
    assert any(r["merged"] for r in reports)  # the host that finished last found every part and merged
    pd.testing.assert_frame_equal(lqs.load_sweep(out), single, check_exact=True)
    again, info = run_sweep(SPEC, out, progress=False)  # one more run on one host: nothing left to compute
    assert info.computed == 0 and info.reused == 2
    pd.testing.assert_frame_equal(again, single, check_exact=True)

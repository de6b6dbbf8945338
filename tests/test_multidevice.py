"""The sharded path: the (configuration × trial) axis split across 2 forced host devices gives the same answers."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, jax, lqs
w = lqs.Independent(lqs.IntUniform(10, 200), lqs.IntUniform(10, 200))
r = lqs.simulate(w, lqs.Server(M=4096, prefill_chunk=512, b=0.02), [5.0, 12.0, 20.0], trials=3, steps=2000,
                 warmup=500, key=jax.random.key(3), devices=None if DEVICES else jax.local_devices()[:1],
                 path="ENGINE", verdict=False)
print(json.dumps(dict(n=jax.local_device_count(), devices=r.config["devices"], engine=r.config["sizing"]["path"],
                      arrivals=r.trials.arrivals.tolist(), thr=r.trials.throughput_rps.tolist(),
                      wait=r.summary.wait_p99_s.tolist())))
"""


def _run(*runs):
    """Each (devices, engine) run in its own process with 2 forced host devices, the processes side by side."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT.replace("DEVICES", str(devices)).replace("ENGINE", engine)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for devices, engine in runs]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-2000:]
    return [json.loads(so.strip().splitlines()[-1]) for so, _ in outs]


def test_two_devices_match_one_device():
    two, one = _run((True, "xla"), (False, "xla"))
    assert two["n"] == 2 and len(two["devices"]) == 2
    # 3 configurations × 3 trials = 9 rows on 2 devices: the padding path is exercised too
    assert len(two["arrivals"]) == 9
    assert two["arrivals"] == one["arrivals"]
    assert two["thr"] == one["thr"]
    assert two["wait"] == one["wait"]


@pytest.mark.slow
def test_fused_kernel_sharded_over_two_devices_matches_xla_on_one():
    """The fused path runs per device under shard_map (a Pallas call is not partitioned by XLA)."""
    two, one = _run((True, "fused"), (False, "xla"))
    assert two["engine"] == "fused-interpret" and one["engine"] == "xla"
    assert two["arrivals"] == one["arrivals"]
    assert two["thr"] == one["thr"]
    assert two["wait"] == one["wait"]

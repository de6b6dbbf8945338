import atexit
import os
import shutil
import sys
import tempfile

# One compilation cache for this test run, shared by the pytest-xdist workers and the processes that tests start
# (the multi-device and multi-host tests): a program that one of them compiled is loaded by the others instead of
# compiled again. Made fresh for every run (and removed after it), so no run starts warm from an earlier one.
if "PYTEST_XDIST_WORKER" not in os.environ and "LQS_TEST_JAX_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="lqs-test-jax-cache-")
    os.environ["LQS_TEST_JAX_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["LQS_TEST_JAX_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

# tests import the plain-Python reference (tests/reference_sim.py) and the shared program shapes (tests/shapes.py)
# by module name
sys.path.insert(0, os.path.dirname(__file__))

# strict dtype promotion, as equinox's tests run: an int32 meeting a float32 (or a uint32 an int32) without an
# explicit cast is an error, which guards the int32 / float32 discipline that the XLA and fused paths' bit identity
# depends on
jax.config.update("jax_numpy_dtype_promotion", "strict")

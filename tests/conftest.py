import os
import sys

import jax

# tests import the plain-Python reference (tests/reference_sim.py) and the shared program shapes (tests/shapes.py)
# by module name
sys.path.insert(0, os.path.dirname(__file__))

# strict dtype promotion, as equinox's tests run: an int32 meeting a float32 (or a uint32 an int32) without an
# explicit cast is an error, which guards the int32 / float32 discipline that the XLA and fused paths' bit identity
# depends on
jax.config.update("jax_numpy_dtype_promotion", "strict")

"""The program shapes that test files share, named once.

Most of the default suite's time is XLA compiling the engine's programs (a few seconds each). A program is
compiled once per static configuration (K, policy, arrival cap, batch-model kind, token budget set or not, servers,
phased or not) and number of (configuration × trial) lanes; λ, M, b̄, the keys and the horizon are traced. So tests
that use the workloads, slot counts K and lane counts below reuse each other's programs within one pytest process,
whatever file they are in. A new test should use one of these unless its property needs another shape, and say why.
"""

import lqs

# FAST: short requests (k = 1) on a small cache, δ ≈ 0.098, ≈ 0.22 completions per step
# (test_engine_properties, test_studies, test_verdict's clusters, test_fused's cluster fallback)
FAST = lqs.Independent(lqs.IntUniform(10, 200, "s"), lqs.IntUniform(10, 200, "o"))
M_FAST, CHUNK_FAST, B_FAST = 4096, 512, 0.02
K_FAST = 160  # sizing gives 128–192 by λ; the arrival cap comes out at 16 for every rate the tests use

# SMALL: tiny requests on a 400-token cache, the fused path's identity tests and lqs bench's runs
# (test_fused, test_bench)
SMALL = lqs.Independent(lqs.IntUniform(8, 40, "s"), lqs.IntUniform(4, 30, "o"))
M_SMALL, CHUNK_SMALL, B_SMALL = 400, 16, 0.05
K_SMALL_RUN = 192  # two trials at K = 192: the XLA and fused programs of test_bench and test_fused's simulate runs

# PD16K: the paper's pd-1:1 at a reduced cache (δ = 0.195): the CLI and verdict tests
# (test_cli_sim, test_cli_options, test_verdict, test_bad_inputs)
PD16K_FLAGS = ["--workload", "pd-1:1", "--M", "16384", "--prefill-chunk", "512", "--b", "0.0372"]
K_PD16K_CLI = 96  # the CLI tests' --K

# benchmark-result files of a known server (tests/bench_files.py): every check runs K = 256, 4 trials
CHECK_MC = dict(trials=4, steps=3000, warmup=1000, K=256)

"""The fused path: one Pallas kernel launch runs a whole record period of steps for the trials of each program on
chip.

The XLA path (kernels/loop.py, kernels/batched.py) runs one ``lax.scan`` iteration per step: every step reads and
writes every trial's slots through GPU memory and launches its kernels again. Here one ``pallas_call`` launch runs
``cfg.compact_every`` steps; each program of its grid loads the slots of ``rb`` trials (``rb × K`` per field)
once, keeps them in registers / on-chip memory through the ``fori_loop`` over steps, and writes them back once.
Compaction, latency binning and the time-series point stay in XLA between launches.

Identity with the XLA path is by construction, not by a second implementation: the kernel body is
``step.step_with`` with ``step.serve`` and ``step.finish`` vmapped over the program's trials, so the scheduling
rule, the counters (overflow, arrival cap, starvation, invariant checks) and the counter-based random numbers
(kernels/rng.py) are the same code. State-free batch times (constant, i.i.d.) are drawn ahead in XLA by the
step's own draw; the affine model depends on the batch and is drawn in the kernel. Products that feed an addition
go through ``rng.unfused_mul`` so that no compiler contracts them into a fused multiply-add in one path and not in
the other. tests/test_fused.py checks bit-identity in interpret mode.

Lowering: Triton (``jax.experimental.pallas.triton``); Mosaic GPU, in jax 0.10.x, has no lowering for the prefix
sum (``cumsum``) that FCFS admission needs. The modules, one concept each:

* ``layout``: how a trial's K slots are held under Triton (power-of-two pieces, interleaved with one warp per
  trial), K rounded for the kernel, trials per program and warps: integer arithmetic only;
* ``split_eval``: the step's jaxpr re-evaluated on that layout (the one module on private JAX, and why);
* ``kernel``: the Pallas kernel of one record period and the pre-drawn batch times;
* ``loop``: the fused step loop between compactions (same contract as the XLA path's);
* ``export``: lowering for CUDA without a GPU.

Not fused (the XLA path runs them): clusters (``servers > 1``) and phased schedules.
"""

from .export import lower_for_gpu
from .kernel import IN_KERNEL, LOGS, PARAMS, SCALARS, SLOTS, STATE_FREE, fused_period, pre_draw
from .layout import (LANES, MAX_PIECE, MAX_PIECES, MIN_PIECE, ONE_WARP_MAX_K, PIECED_SLOTS_PER_THREAD,
                     SLOTS_PER_THREAD, default_trials_per_program, default_warps, interleaved, kernel_pieces,
                     next_pow2, slot_pieces, triton_K)
from .loop import run_call_batched, unsupported
from .split_eval import BITS, Eval

__all__ = ["BITS", "Eval", "IN_KERNEL", "LANES", "LOGS", "MAX_PIECE", "MAX_PIECES", "MIN_PIECE", "ONE_WARP_MAX_K",
           "PARAMS", "PIECED_SLOTS_PER_THREAD", "SLOTS_PER_THREAD", "SCALARS", "SLOTS", "STATE_FREE", "default_trials_per_program", "default_warps", "fused_period",
           "interleaved", "kernel_pieces", "lower_for_gpu", "next_pow2", "pre_draw", "run_call_batched",
           "slot_pieces", "triton_K", "unsupported"]

"""The fused kernel's slot layout under Triton: how K slots of a trial are held as power-of-two pieces, K rounded
for the kernel (:func:`triton_K`), trials per program and warps. Plain integer arithmetic, no JAX.

The instruction counts behind the defaults are measured by bench/fused_resources.py (Triton → PTX → ptxas, no GPU
needed) and listed in bench/results/README.md ("the fused step's instruction count")."""

from __future__ import annotations

LANES = 32  # threads of a warp
MAX_PIECE = 128  # 32 lanes × 4 slots: one warp's share of a row in Triton's layout of a [rb, n] block
MAX_PIECES = 2  # pieces per slot field above ONE_WARP_MAX_K: each adds a block-wide reduction per sum over slots
MIN_PIECE = 32  # smallest piece under Triton (one warp's lanes)
ONE_WARP_MAX_K = 320  # up to this K a trial's slots sit in one warp (≤ 10 slots per thread); see default_warps
SLOTS_PER_THREAD = 4  # slots of each field per GPU thread for a larger K that is a power of two
PIECED_SLOTS_PER_THREAD = 10  # at most this many (all pieces together) for a larger K in pieces


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def slot_pieces(K: int, max_piece: int | None = None) -> tuple[int, ...]:
    """K as a sum of powers of two, one per set bit, largest first, those above ``max_piece`` cut into pieces of
    ``max_piece`` (288 → (256, 32); with max_piece 128: (128, 128, 32))."""
    K = int(K)
    bits = [1 << b for b in reversed(range(K.bit_length())) if K >> b & 1]
    if not max_piece:
        return tuple(bits)
    return tuple(x for n in bits for x in ((max_piece,) * (n // max_piece) if n > max_piece else (n,)))


def kernel_pieces(K: int, rb: int, warps: int) -> tuple[int, ...]:
    """The kernel's slot layout: each slot field of a program ([rb, K]) is loaded as [rb, n] pieces, n in this tuple.

    Pallas' Triton lowering needs every in-kernel array to have a power-of-two size, so a K that is not one is
    held as power-of-two pieces and the step runs on the pieces (:class:`_Eval`: the step's jaxpr evaluated piece
    by piece). With at most one warp per trial (warps ≤ rb) a trial's slots stay in one warp, so no sum over slots
    goes through shared memory: K a multiple of 32 is held as K/32 interleaved parts of 32 (:func:`interleaved`:
    part e holds slots e, e + P, …, so each lane holds P consecutive slots), any other K as contiguous pieces of at
    most MAX_PIECE slots, the share of one warp in Triton's layout (the prefix sum carried across pieces). With more
    warps per trial: contiguous pieces, one per set bit of K."""
    if interleaved(K, rb, warps):
        return (LANES,) * (K // LANES)
    return slot_pieces(K, MAX_PIECE if warps <= rb else None)


def interleaved(K: int, rb: int, warps: int) -> bool:
    """Whether the kernel holds a trial's K = 32·P slots interleaved (one warp per trial, K a multiple of 32): part e
    of P holds slots e, P + e, 2P + e, … (lane j: slot j·P + e), so each thread holds P consecutive slots. The
    prefix sum is then a running sum over the thread's own slots plus one warp scan of the threads' totals, and
    every sum over slots one warp reduction, whatever P, where contiguous pieces (128 + 128 + 32 for K = 288) need
    three warp scans and two reductions per sum (instruction counts: bench/results/README.md)."""
    return warps <= rb and K > LANES and K % LANES == 0


def triton_K(K: int) -> int:
    """Slots per trial the Triton kernel runs for a sized K: up to ONE_WARP_MAX_K (one warp per trial, slots
    interleaved) the next multiple of 32 (288 stays 288, 200 → 224, 300 → 320); above it the smallest K' ≥ K that
    is a power of two or a sum of at most MAX_PIECES powers of two ≥ MIN_PIECE (480 → 512, 600 → 640). The extra
    slots, if any, only lift capacity limits."""
    K = int(K)
    if K <= MIN_PIECE or K & (K - 1) == 0:
        return next_pow2(K)
    k = -(-K // MIN_PIECE) * MIN_PIECE
    if k <= ONE_WARP_MAX_K:
        return k
    while bin(k).count("1") > MAX_PIECES:
        k += MIN_PIECE
    return k


def default_trials_per_program(K: int) -> int:
    """Trials per kernel program. 32 < K ≤ ONE_WARP_MAX_K: one (a program is one warp, its slots interleaved, 8–10
    of each field per thread; programs of two or four such trials cost more instructions per thread and step).
    Otherwise about 1024 slots per field (a power of two, 1..64): K = 512 runs two trials on 8 warps, 4 slots per
    thread. The measured grid behind these choices (bench/fused_resources.py: Triton → PTX → ptxas, no GPU) is in
    bench/results/README.md, "the fused step's instruction count"."""
    if LANES < K <= ONE_WARP_MAX_K:
        return 1
    return int(min(64, 1 << (max(1, 1024 // K).bit_length() - 1)))


def default_warps(K: int, rb: int) -> int:
    """Warps per program (1..32, a power of two).

    K ≤ ONE_WARP_MAX_K: one warp per trial (K/32 slots of each field per thread, interleaved: every sum and prefix
    sum over a trial's slots stays in its warp). Larger K: each thread holds at most SLOTS_PER_THREAD slots (K a
    power of two) or PIECED_SLOTS_PER_THREAD (K in pieces, e.g. 640 = 512 + 128). Measured for sm_90
    (bench/fused_resources.py, lane-instructions per slot-step): bench/results/README.md."""
    if K <= ONE_WARP_MAX_K:
        return int(min(32, rb))
    if K & (K - 1) == 0:
        return int(min(32, next_pow2(-(-(rb * K) // (32 * SLOTS_PER_THREAD)))))
    return int(min(32, next_pow2(-(-(rb * K) // (32 * PIECED_SLOTS_PER_THREAD)))))

"""Registers and spills of the fused kernel on a Hopper GPU, measured without one.

Lowers the fused step loop (kernels/fused.py) to Triton IR with JAX's Pallas lowering, compiles that IR for
sm_90 with the ``triton`` package (TTIR → TTGIR → LLVM → PTX) and assembles the PTX with its ptxas, which reports
registers per thread and spill bytes: the numbers that decide how many trials a program may hold (``rb``) and
with how many warps. This is the lowering half of "choose by measurement"; the speed half is bench_fused.py on a
GPU. Needs ``pip install triton`` (not a dependency of lqs; any recent release parses the IR JAX emits).

    PYTHONPATH=. python bench/fused_resources.py                       # pd-1:1, fcfs, K 256/512, rb 1..8
    PYTHONPATH=. python bench/fused_resources.py --K 288 --rb 2 --warps 2   # pd-1:1's own K, unpadded
Results go to bench/results/fused-resources-sm90.json (--out). Each row also gives the slot layout (``pieces``:
kernels/fused.py ``kernel_pieces``, which depends on K, rb and the warps) and whether (rb, warps) is the default.
The step loop's SASS is the longest backward branch of the cubin (cuobjdump, bundled with triton); per slot-step,
lane-instructions = SASS × 32 × warps / (rb × K).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def triton_ir(policy: str, batch: str, K: int, rb: int, warps: int | None = None) -> str:
    """Textual Triton IR of one fused block (captured from JAX's Pallas → Triton lowering for CUDA). The slot
    layout depends on the warps (kernels/fused.py ``kernel_pieces``), the IR on nothing else of them."""
    import jax
    from jax._src.pallas.triton import lowering as TL

    import lqs
    from lqs.engine import paths as P
    from lqs.engine import prepare
    from lqs.kernels import fused as F
    from test_fused import BATCHES

    captured = []
    orig = TL.lower_jaxpr_to_triton_module

    def capture(*a, **k):
        r = orig(*a, **k)
        captured.append(r.module.operation.get_asm(enable_debug_info=False))
        return r

    TL.lower_jaxpr_to_triton_module = capture
    try:
        w = lqs.preset("pd-1:1")
        srv = lqs.Server(M=131000, prefill_chunk=512, b=BATCHES[batch], policy=policy)
        mc = lqs.MonteCarlo(trials=2 * rb, warmup=64, K=K, path="xla")
        cfg, _, grid, params = prepare(w, srv, [4.0], mc, 512)
        st = P.init_jit(jax.random.split(jax.random.key(0), 2 * rb), params, cfg)
        F.lower_for_gpu(st, params, cfg, rb=rb, num_warps=warps)
    finally:
        TL.lower_jaxpr_to_triton_module = orig
    return captured[-1]


def ptxas_path():
    import triton

    d = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):  # the newest bundled assembler reads the newest PTX
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    hits = glob.glob("/usr/local/cuda*/bin/ptxas")
    return hits[0] if hits else None


def resources(ttir_path: str, warps: int, arch: int = 90) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    t0 = time.perf_counter()
    k = triton.compile(ttir_path, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": 1})
    t_compile = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as fh:
            fh.write(k.asm["ptx"])
        out = subprocess.run([ptxas_path(), f"-arch=sm_{arch}a", "-v", ptx, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
        log = out.stderr + out.stdout
        loop = step_loop_sass(k.asm["cubin"], d)
    regs = re.search(r"Used (\d+) registers", log)
    sp = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(warps=warps, registers=int(regs.group(1)) if regs else None,
                spill_store_bytes=int(sp.group(1)) if sp else None, spill_load_bytes=int(sp.group(2)) if sp else None,
                shared_bytes=int(k.metadata.shared), triton_compile_s=t_compile, **loop)


def step_loop_sass(cubin: bytes, d: str) -> dict:
    """SASS of the step loop (the longest backward branch: the fori_loop over steps): instructions per thread and
    step, barriers, and the opcode mix. Empty when cuobjdump is not at hand."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.isfile(tool):
        return {}
    path = os.path.join(d, "k.cubin")
    with open(path, "wb") as fh:
        fh.write(cubin)
    txt = subprocess.run([tool, "-sass", path], capture_output=True, text=True).stdout
    ins = []
    for line in txt.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)([^;]*);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(3).split(".")[0], m.group(4)))
    best = None
    for a, op, args in ins:
        m = re.search(r"0x([0-9a-f]+)", args) if op == "BRA" else None
        if m and int(m.group(1), 16) < a and (best is None or a - int(m.group(1), 16) > best[1] - best[0]):
            best = (int(m.group(1), 16), a)
    if best is None:
        return {}
    body = [op for a, op, _ in ins if best[0] <= a <= best[1]]
    from collections import Counter

    return dict(loop_sass_instructions=len(body), loop_barriers=body.count("BAR"),
                loop_opcodes=dict(Counter(body).most_common(12)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", nargs="+", default=["swap"])
    ap.add_argument("--batch", nargs="+", default=["constant"])
    ap.add_argument("--K", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--rb", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "fused-resources-sm90.json"))
    a = ap.parse_args()
    try:
        import triton
    except ImportError:
        sys.exit("needs the triton package: pip install triton")
    import jax

    import lqs  # noqa: F401 (makes lqs.kernels importable from a checkout)
    from lqs.kernels import fused as F

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    rows = []

    def save():  # after every row: a long grid cut short by a timeout keeps what it measured
        res = dict(arch="sm_90a", triton=triton.__version__, jax=jax.__version__, ptxas=ptxas_path(),
                   command="PYTHONPATH=. python " + " ".join(sys.argv), when=time.strftime("%Y-%m-%d %H:%M:%S"),
                   rows=rows)
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=2)

    with tempfile.TemporaryDirectory() as d:
        for pol in a.policy:
            for bt in a.batch:
                for K in a.K:
                    for rb in a.rb:
                        for w in a.warps:
                            pieces = "-".join(map(str, F.kernel_pieces(K, rb, w)))
                            p = os.path.join(d, f"{pol}-{bt}-{K}-{rb}-{pieces}.ttir")
                            if not os.path.exists(p):
                                with open(p, "w") as fh:
                                    fh.write(triton_ir(pol, bt, K, rb, w))
                            try:
                                r = resources(p, w)
                            except Exception as e:  # noqa: BLE001 - a failure to compile is a result
                                r = dict(warps=w, error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
                            r.update(policy=pol, batch=bt, K=K, rb=rb, pieces=list(F.kernel_pieces(K, rb, w)),
                                     default=(rb == F.default_trials_per_program(K) and w == F.default_warps(K, rb)),
                                     elements_per_thread_per_field=rb * K / (32 * w))
                            if r.get("loop_sass_instructions"):
                                # warp-instructions per trial-step; H200 bound at 2 int32 warp-instr/clk/SM
                                wi = r["loop_sass_instructions"] * w / rb
                                r["warp_instructions_per_trial_step"] = wi
                                r["lane_instructions_per_slot_step"] = wi * 32 / K
                                r["h200_int32_bound_trial_steps_per_s"] = 132 * 2 * 1.98e9 / wi
                            rows.append(r)
                            save()
                            print(f"{pol:9s} {bt:9s} K={K:4d} rb={rb:2d} warps={w:2d} pieces={pieces:11s} "
                                  f"({r['elements_per_thread_per_field']:5.1f} slots/thread): "
                                  + (f"{r['registers']} regs, spills {r['spill_store_bytes']}/{r['spill_load_bytes']} B"
                                     + (f", step loop {r['loop_sass_instructions']} SASS/thread "
                                        f"({r['loop_barriers']} barriers), {r['lane_instructions_per_slot_step']:.0f} "
                                        f"lane-instr/slot-step, H200 int32 bound "
                                        f"{r['h200_int32_bound_trial_steps_per_s']:.3g} trial-steps/s"
                                        if r.get("loop_sass_instructions") else "")
                                     if "error" not in r else r["error"]), flush=True)
    save()
    print("saved", a.out)


if __name__ == "__main__":
    main()

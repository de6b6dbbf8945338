"""The plan of a sweep: groups (cells sharing one compiled program) cut into chunks, and each chunk's key."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

from .._errors import LqsError
from .axes import _batch_model, _load_workload
from .spec import SweepSpec


# ----------------------------------------------------------------------------------------------- the plan
@dataclass
class _Group:
    workload: str
    chunk: int
    policy: str
    token_budget: int | None
    batch: str
    servers: int
    routing: str
    steps: int = 0


@dataclass
class _Chunk:
    id: int
    group: _Group
    cells: list  # cell ids, in simulate's grid order (b, M, λ; λ fastest)
    keys: list  # cell keys
    lams: list
    Ms: list
    bs: list
    rhos: list | None

    @property
    def name(self) -> str:
        return f"chunk-{self.id:05d}"


def _blocks(n, cap):
    k = -(-n // cap)
    return [list(map(int, a)) for a in np.array_split(np.arange(n), k)]


def _fmt(x):
    return repr(float(x)) if isinstance(x, float) else str(x)


def _plan(spec: SweepSpec):
    """Load and check every workload and batch model, then list the chunks (ids, keys, λ/M/b̄ per chunk)."""
    from .. import _engine
    from .._theory import capacity

    workloads = {}
    for w in spec.workload:
        wl = _load_workload(w)
        for m in spec.M:
            try:
                wl.validate(m)
            except LqsError as e:
                raise LqsError("workload", w, f"does not fit M={m}: {e}") from None
        workloads[w] = wl
    for bs in spec.batch:
        for b in spec.b:
            _batch_model(bs, b)
    C = spec.cells_per_chunk
    rho_mode = spec.rho is not None
    xs = spec.rho if rho_mode else spec.lam
    n_l, nM, nB = len(xs), len(spec.M), len(spec.b)
    chunks, groups, mu_cache = [], [], {}
    auto = {}
    for gi, (w, ch, pol, tb, bs, G, rt) in enumerate(itertools.product(
            spec.workload, spec.chunk, spec.policy, spec.token_budget, spec.batch, spec.servers, spec.routing)):
        if spec.steps is None:
            if (w, ch) not in auto:
                auto[(w, ch)] = _engine.auto_steps(workloads[w], spec.M, ch, min(spec.b), spec.warmup, min(spec.b))
            steps = auto[(w, ch)]
        else:
            steps = spec.steps
        g = _Group(w, ch, pol, tb, bs, G, rt, steps)
        groups.append(g)
        base = gi * nB * nM * n_l  # cell ids: product order, λ fastest
        gkey = f"workload={w}|chunk={ch}|policy={pol}|token_budget={tb}|batch={bs}|servers={G}|routing={rt}"
        lblocks = _blocks(n_l, C)
        lb = max(map(len, lblocks))
        # with ρ, λ depends on (M, b̄): one (M, b̄) per chunk; a non-constant batch model is one model per call
        mblocks = [[i] for i in range(nM)] if rho_mode else _blocks(nM, max(1, C // lb))
        mb = max(map(len, mblocks))
        bblocks = ([[i] for i in range(nB)] if rho_mode or bs != "constant"
                   else _blocks(nB, max(1, C // (lb * mb))))
        for bblk, mblk, lblk in itertools.product(bblocks, mblocks, lblocks):
            ids, keys = [], []
            for bi, mi, li in itertools.product(bblk, mblk, lblk):
                ids.append(base + (bi * nM + mi) * n_l + li)
                xv = f"rho={_fmt(xs[li])}" if rho_mode else f"lam={_fmt(xs[li])}"
                keys.append(f"{gkey}|b={_fmt(spec.b[bi])}|M={spec.M[mi]}|{xv}")
            Ms = [spec.M[i] for i in mblk]
            bvals = [spec.b[i] for i in bblk]
            rhos = None
            if rho_mode:
                ck = (w, ch, Ms[0], bvals[0])
                if ck not in mu_cache:
                    mu_cache[ck] = capacity(workloads[w], Ms[0], ch, bvals[0]).mu_exact_rps
                rhos = [xs[i] for i in lblk]
                lams = [r * G * mu_cache[ck] for r in rhos]
            else:
                lams = [xs[i] for i in lblk]
            chunks.append(_Chunk(len(chunks), g, ids, keys, lams, Ms, bvals, rhos))
    return workloads, groups, chunks


def _chunk_key(seed: int, ch: _Chunk):
    """The chunk's PRNG key: the sweep seed folded with a stable 62-bit hash of its cells' keys."""
    import jax

    h = hashlib.blake2b("\n".join(ch.keys).encode("utf-8"), digest_size=8).digest()
    a = int.from_bytes(h[:4], "little") & 0x7FFFFFFF
    b = int.from_bytes(h[4:], "little") & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), a), b)


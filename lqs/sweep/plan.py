"""The plan of a sweep: *groups* (cells that share one compiled program: every server axis but M and a constant
b̄, the workload and the horizon) cut into *parts* of at most ``cells_per_part`` cells, one ``lqs.simulate`` call
and one file each, and every part's PRNG key."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

from .._errors import LqsError
from .._server import Server
from .axes import _batch_model, _load_workload
from .spec import SweepSpec


@dataclass
class _Group:
    workload: str
    prefill_chunk: int
    policy: str
    token_budget: int | None
    batch: str
    servers: int
    routing: str
    steps: int = 0
    pd_split: str | None = None  # "N_P:N_D": the cells are disaggregated deployments (the coupled network)
    decode_M: int | None = None
    decode_b: float | None = None
    burstiness: float = 1.0  # gamma arrivals with this shape (1: Poisson)


@dataclass
class _Part:
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
        return f"part-{self.id:05d}"


def _blocks(n, cap):
    k = -(-n // cap)
    return [list(map(int, a)) for a in np.array_split(np.arange(n), k)]


def _fmt(x):
    return repr(float(x)) if isinstance(x, float) else str(x)


def _load_workloads(spec: SweepSpec) -> dict:
    workloads = {}
    for w in spec.workload:
        wl = _load_workload(w)
        for m in spec.M:
            try:
                wl.validate(m)
            except LqsError as e:
                raise LqsError("workload", w, f"does not fit M={m}: {e}") from None
        workloads[w] = wl
    return workloads


def _plan(spec: SweepSpec):
    """Load and check every workload and batch model, then list the parts (ids, keys, λ/M/b̄ per part).

    Returns (workloads by name, groups, parts). With ρ, each cell's λ = ρ·μ, μ = servers·M/(b̄·E[g]) the closed
    form of docs/model.md for the whole deployment (``lqs.capacity(...).mu_rps``)."""
    from .._theory import capacity
    from ..engine import auto_steps

    workloads = _load_workloads(spec)
    for bs in spec.batch:
        for b in spec.b:
            _batch_model(bs, b)
    C = spec.cells_per_part
    rho_mode = spec.rho is not None
    xs = spec.rho if rho_mode else spec.lam
    n_l, nM, nB = len(xs), len(spec.M), len(spec.b)
    parts, groups, mu_cache, auto = [], [], {}, {}
    for gi, (w, ch, pol, tb, bs, G, rt, pds, dM, db, k) in enumerate(itertools.product(
            spec.workload, spec.prefill_chunk, spec.policy, spec.token_budget, spec.batch, spec.servers,
            spec.routing, spec.pd_split, spec.decode_M, spec.decode_b, spec.burstiness)):
        if pds is None:  # the decode pool's axes apply to disaggregated cells only: colocated cells run once
            if (dM, db) != (spec.decode_M[0], spec.decode_b[0]):
                continue
            dM = db = None
        if spec.steps is None:
            if (w, ch) not in auto:
                auto[(w, ch)] = auto_steps(workloads[w], Server(M=spec.M, prefill_chunk=ch, b=min(spec.b)),
                                           spec.warmup)
            steps = auto[(w, ch)]
        else:
            steps = spec.steps
        g = _Group(w, ch, pol, tb, bs, G, rt, steps, pds, dM, db, k)
        base = len(groups) * nB * nM * n_l  # cell ids: product order, λ fastest
        groups.append(g)
        gkey = f"workload={w}|prefill_chunk={ch}|policy={pol}|token_budget={tb}|batch={bs}|servers={G}|routing={rt}"
        if pds is not None:
            gkey += f"|pd_split={pds}|decode_M={dM}|decode_b={_fmt(db) if db is not None else None}"
        if k != 1.0:  # Poisson cells keep the keys (and numbers) they had before burstiness was an axis
            gkey += f"|burstiness={_fmt(k)}"
        lblocks = _blocks(n_l, C)
        lb = max(map(len, lblocks))
        # with ρ, λ depends on (M, b̄): one (M, b̄) per part; a non-constant batch model is one model per call
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
                ck = (w, ch, Ms[0], bvals[0], G)
                ck = ck + (pds, dM, db)
                if ck not in mu_cache:
                    srv = Server(M=Ms[0], prefill_chunk=ch, b=bvals[0], servers=G)
                    if pds is not None:  # μ_PD of the deployment (lqs.capacity of a Disaggregated)
                        mu_cache[ck] = capacity(workloads[w], spec.deployment(srv, pds, dM, db)).mu_pd_rps
                    else:
                        mu_cache[ck] = capacity(workloads[w], srv).mu_rps
                rhos = [xs[i] for i in lblk]
                lams = [r * mu_cache[ck] for r in rhos]
            else:
                lams = [xs[i] for i in lblk]
            parts.append(_Part(len(parts), g, ids, keys, lams, Ms, bvals, rhos))
    return workloads, groups, parts


def _part_key(seed: int, part: _Part):
    """The part's PRNG key: the sweep seed folded with a stable 62-bit hash of its cells' keys."""
    import jax

    h = hashlib.blake2b("\n".join(part.keys).encode("utf-8"), digest_size=8).digest()
    a = int.from_bytes(h[:4], "little") & 0x7FFFFFFF
    b = int.from_bytes(h[4:], "little") & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), a), b)

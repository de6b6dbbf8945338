"""A fitted length model as an lqs Workload: the log-normal mixture discretised onto integer cells.

The continuous mixture of :mod:`lqs.fit.mixture` is turned into a finite joint distribution of (s, o): the
observed range of each length is cut into cells (every integer at the short end, geometrically growing cells
above), each cell pair gets the mixture's probability (exact along s, quadrature along o), cells with s + o above
the trace's largest request are dropped, and the weights are tilted exponentially (the smallest change in the
Kullback–Leibler sense) so that E[s], E[o], E[g] and E[g_exact] equal the trace's exactly (docs/model.md, "Workload"
and "Capacity"). Being finite, the result has exact moments like every lqs workload, and the largest s + o of the
trace. The model is stored as JSON (the mixture, the grid and the tilt, not the cells) and rebuilt on loading.
"""

from __future__ import annotations

import json
import math
import os

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr, ndtri

from .._errors import LqsError, check_float
from .._theory import g_exact, g_paper
from .._workload import GMoments, Workload

KIND = "lqs-length-model"
VERSION = 1
GROWTH = 1.02  # relative width of the geometric cells
PRUNE = 1e-12  # cells below this fraction of the largest cell's probability are dropped
QUAD = 8  # quadrature points along s within each s cell (for the conditional o probability)


def cell_edges(lo: int, hi: int, must=(), cuts=()) -> tuple[np.ndarray, np.ndarray]:
    """(edges, representative integer per cell) covering [lo − 0.5, hi + 0.5]; lo, hi and ``must`` are own cells,
    and every t in ``cuts`` ends a cell (t + 0.5 is an edge)."""
    edges = [lo - 0.5]
    x = lo - 0.5
    while x < hi + 0.5:
        x = max(x + 1.0, math.floor(x * GROWTH) + 0.5)
        edges.append(min(x, hi + 0.5))
    e = set(edges)
    for k in (lo, hi) + tuple(must):
        e.update((k - 0.5, k + 0.5))
    e.update(k + 0.5 for k in cuts)
    edges = np.array(sorted(v for v in e if lo - 0.5 <= v <= hi + 0.5))
    a, b = edges[:-1], edges[1:]
    rep = np.rint(np.sqrt(np.maximum(a, 0.5) * b)).astype(np.int64)
    rep = np.clip(rep, np.ceil(a).astype(np.int64), np.floor(b).astype(np.int64))
    return edges, rep


def cell_probs(mix: dict, s_edges: np.ndarray, o_edges: np.ndarray) -> np.ndarray:
    """P(cell i of s, cell j of o) under the mixture (log-space normals), shape (I, J), not normalised."""
    xs, ys = np.log(np.maximum(s_edges, 1e-9)), np.log(np.maximum(o_edges, 1e-9))
    out = np.zeros((xs.size - 1, ys.size - 1))
    u = (np.arange(QUAD) + 0.5) / QUAD
    for w, m, sd, rho in zip(mix["weights"], mix["mean"], mix["sd"], mix["rho"]):
        if w <= 0:
            continue
        cx = ndtr((xs - m[0]) / sd[0])
        px = np.diff(cx)  # exact s-cell masses
        # quadrature nodes: quantiles of x within each cell
        q = cx[:-1, None] + u[None, :] * px[:, None]
        x = m[0] + sd[0] * ndtri(np.clip(q, 1e-300, 1 - 1e-16))
        cm = m[1] + rho * sd[1] * (x - m[0]) / sd[0]
        cs = sd[1] * math.sqrt(max(1.0 - rho * rho, 1e-12))
        cy = ndtr((ys[None, None, :] - cm[..., None]) / cs)  # (I, Q, J+1)
        py = np.diff(cy, axis=-1).mean(axis=1)  # (I, J)
        out += w * px[:, None] * py
    return out


def features(s, o, prefill_chunk, s_thr=(), o_thr=()) -> np.ndarray:
    """Per-point s, o, g, g_exact, then 1{t' < s ≤ t} for consecutive t', t in ``s_thr`` (the first from −∞),
    and the same for o with ``o_thr`` (thresholds ascending).

    These are the quantities whose means the tilt matches: the capacity moments, and the marginal CDFs at the
    given thresholds (float64, shape (n, 4 + len(s_thr) + len(o_thr))).
    """
    s = np.asarray(s, np.int64)
    o = np.asarray(o, np.int64)
    cols = [s, o, g_paper(s.astype(np.float64), o.astype(np.float64), prefill_chunk),
            g_exact(s, o, prefill_chunk).astype(np.float64)]
    for x, thr in ((s, s_thr), (o, o_thr)):
        lo = -np.inf
        for t_ in thr:  # disjoint bins (lo, t]: the same constraints as the CDF at t, better conditioned
            cols.append((x > lo) & (x <= t_))
            lo = t_
    return np.stack(cols, axis=1).astype(np.float64)


def tilt(p: np.ndarray, F: np.ndarray, target: np.ndarray, iters: int = 200,
         groups: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
    """Exponential tilt p_i·exp(λ·F_i) matching E[F] = target; returns (λ in F's units, tilted weights).

    ``groups``: (first column, number of columns) of blocks of 0/1 columns of which each row has at most one set
    (the disjoint length bins of :func:`features`). Their part of the Newton step's covariance is then computed
    from per-bin masses and per-bin sums (O(n) per block) instead of as dense products (O(n·d²))."""
    scale = np.where(np.abs(target) > 1.0, np.abs(target), 1.0)
    Z = (F - target) / scale
    lam = np.zeros(F.shape[1])
    logp = np.log(np.maximum(p, 1e-300))
    cov_of = _grouped_cov(F, Z, target, scale, groups) if groups else None
    for _ in range(iters):
        a = logp + Z @ lam
        amax = a.max()
        q = np.exp(a - amax)
        f0 = np.log(np.sum(q)) + amax  # log Σ p·exp(λ·Z): the convex dual
        q /= q.sum()
        mz = q @ Z
        if np.max(np.abs(mz)) < 1e-9:  # relative to each target: far below the 1 % the fit promises
            break
        if cov_of is None:
            cov = (Z * q[:, None]).T @ Z - np.outer(mz, mz)
        else:
            cov = cov_of(q) - np.outer(mz, mz)
        step = np.linalg.solve(cov + 1e-12 * np.eye(F.shape[1]), mz)
        t = 1.0
        while t > 1e-6:  # backtracking on the dual
            nl = lam - t * step
            b = logp + Z @ nl
            if np.log(np.sum(np.exp(b - b.max()))) + b.max() <= f0 - 1e-4 * t * (mz @ step):
                break
            t /= 2
        if t <= 1e-6:  # no more progress in float64
            break
        lam = lam - t * step
    a = logp + Z @ lam
    q = np.exp(a - a.max())
    return lam / scale, q / q.sum()


def _grouped_cov(F, Z, target, scale, groups):
    """E_q[Z Zᵀ] as a function of q, for Z = (F − target)/scale whose ``groups`` columns are disjoint 0/1 bins:
    Z_a = 1_a − t_a there (scale 1), so every product with a bin column reduces to per-bin sums of q (and of q·Z_j
    for the other columns) and, between two groups, to their joint bin masses."""
    d = F.shape[1]
    groups = [(c0, m) for c0, m in groups if m > 0]  # no bins (quantiles=0: the moments only)
    in_group = np.zeros(d, bool)
    idx = []  # per group: each row's bin (n_cols: none)
    for c0, m in groups:
        block = F[:, c0:c0 + m]
        if not (np.all((block == 0) | (block == 1)) and np.all(block.sum(1) <= 1) and np.all(scale[c0:c0 + m] == 1)):
            raise ValueError("tilt groups must be disjoint 0/1 columns with targets ≤ 1")
        idx.append(np.where(block.sum(1) > 0, block.argmax(1), m))
        in_group[c0:c0 + m] = True
    dense = np.flatnonzero(~in_group)
    Zd = Z[:, dense]

    def cov(q):
        out = np.empty((d, d))
        out[np.ix_(dense, dense)] = (Zd * q[:, None]).T @ Zd
        ez = q @ Zd  # E[Z_j] of the dense columns
        mass = [np.bincount(ix, weights=q, minlength=m + 1)[:m] for ix, (_, m) in zip(idx, groups)]
        for (c0, m), ix, P in zip(groups, idx, mass):
            t = target[c0:c0 + m]
            cols = np.arange(c0, c0 + m)
            # dense × bin: E[Z_j·1_a] − t_a·E[Z_j]
            zb = np.stack([np.bincount(ix, weights=q * Zd[:, k], minlength=m + 1)[:m] for k in range(len(dense))])
            blk = zb - np.outer(ez, t)
            out[np.ix_(dense, cols)] = blk
            out[np.ix_(cols, dense)] = blk.T
            # bin × bin within the group: δ_ab·P_a − t_a·P_b − t_b·P_a + t_a·t_b
            out[np.ix_(cols, cols)] = np.diag(P) - np.outer(t, P) - np.outer(P, t) + np.outer(t, t)
        for gi in range(len(groups)):
            for gj in range(gi + 1, len(groups)):
                (ci, mi), (cj, mj) = groups[gi], groups[gj]
                ti, tj = target[ci:ci + mi], target[cj:cj + mj]
                joint = np.bincount(idx[gi] * (mj + 1) + idx[gj], weights=q,
                                    minlength=(mi + 1) * (mj + 1)).reshape(mi + 1, mj + 1)[:mi, :mj]
                blk = joint - np.outer(ti, mass[gj]) - np.outer(mass[gi], tj) + np.outer(ti, tj)
                out[np.ix_(np.arange(ci, ci + mi), np.arange(cj, cj + mj))] = blk
                out[np.ix_(np.arange(cj, cj + mj), np.arange(ci, ci + mi))] = blk.T
        return out

    return cov


class LengthModel(Workload):
    """A fitted joint length distribution on a finite set of (s, o) points with weights (see module docstring).

    Build with :func:`lqs.fit.fit_lengths` or :func:`load_length_model`; :meth:`scaled` multiplies prompt and
    output lengths by factors; :meth:`save` writes JSON.
    """

    s: np.ndarray
    o: np.ndarray
    p: np.ndarray  # float64 weights (exact moments)
    cum: np.ndarray  # float32 cumulative weights (sampling)
    scale: np.ndarray  # (prompt factor, output factor): a leaf, so scaled copies share one tree structure
    spec: str = eqx.field(static=True)  # JSON of the unscaled model's parameters (hashable text)

    def __init__(self, s, o, p, spec: dict):
        keep = p > 0
        self.s = np.asarray(s, np.int32)[keep]
        self.o = np.asarray(o, np.int32)[keep]
        pp = np.asarray(p, np.float64)[keep]
        self.p = pp / pp.sum()
        self.cum = np.cumsum(self.p).astype(np.float32)
        spec = dict(spec)
        self.scale = np.asarray(spec.pop("scale", [1.0, 1.0]), np.float64)
        self.spec = json.dumps(spec, sort_keys=True)

    @property
    def n_uniforms(self):
        return 1

    def sample_from_uniforms(self, u):
        cum = jnp.asarray(self.cum)
        i = jnp.minimum(jnp.searchsorted(cum, u[..., 0] * cum[-1], side="right"), cum.shape[-1] - 1)
        return jnp.asarray(self.s)[i], jnp.asarray(self.o)[i]

    @property
    def max_total(self):
        return int(np.max(self.s.astype(np.int64) + self.o.astype(np.int64)))

    @property
    def min_s(self):
        return int(np.min(self.s))

    def _exact_moments(self, chunk):
        F = features(self.s, self.o, chunk)
        m = self.p @ F
        return GMoments(g=float(m[2]), g_exact=float(m[3]), se=0.0, exact=True, mean_prompt_tokens=float(m[0]),
                        mean_output_tokens=float(m[1]))

    @property
    def params(self) -> dict:
        """Everything that rebuilds this model (what :meth:`save` writes)."""
        return dict(json.loads(self.spec), scale=[float(x) for x in np.asarray(self.scale)])

    def scaled(self, prompt: float = 1.0, output: float = 1.0) -> "LengthModel":
        """The same model with prompt lengths × ``prompt`` and output lengths × ``output`` (rounded, ≥ 1)."""
        prompt = check_float("prompt", prompt, 0.0, lo_open=True)
        output = check_float("output", output, 0.0, lo_open=True)
        spec = self.params
        spec["scale"] = [spec["scale"][0] * prompt, spec["scale"][1] * output]
        return _build(spec)

    def to_dict(self) -> dict:
        return self.params

    def save(self, path) -> str:
        """Write the model as JSON to ``path`` (a file); returns the path."""
        path = os.fspath(path)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.params, fh, indent=1)
        return path


def _support(spec: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, o, p, index of the trace's largest s+o) before the tilt, from the mixture and grid in ``spec``."""
    g = spec["grid"]
    tl = spec["tilt"]
    se, sr = cell_edges(g["s_lo"], g["s_hi"], (g["s_at_max"],), (*tl.get("s_thresholds", ()), *g.get("s_cuts", ())))
    oe, orr = cell_edges(g["o_lo"], g["o_hi"], (g["o_at_max"],), (*tl.get("o_thresholds", ()), *g.get("o_cuts", ())))
    P = cell_probs(spec["mixture"], se, oe)
    S, O = np.meshgrid(sr, orr, indexing="ij")
    P = np.where(S + O <= g["max_total"], P, 0.0)
    S, O, P = S.ravel(), O.ravel(), P.ravel()
    at_max = int(np.searchsorted(sr, g["s_at_max"]) * orr.size + np.searchsorted(orr, g["o_at_max"]))
    keep = P > PRUNE * P.max()  # cells the mixture gives (almost) nothing: dropped
    keep[at_max] = True
    return S[keep], O[keep], P[keep], int(np.count_nonzero(keep[:at_max]))


def _build(spec: dict) -> LengthModel:
    s, o, p, at_max = _support(spec)
    lam = np.asarray(spec["tilt"]["lambda"], np.float64)
    tl = spec["tilt"]
    F = features(s, o, tl["prefill_chunk"], tl.get("s_thresholds", ()), tl.get("o_thresholds", ()))
    logq = np.log(np.maximum(p, 1e-300)) + F @ lam
    logq[p <= 0] = -np.inf
    q = np.exp(logq - logq.max())
    q[at_max] = max(q[at_max], 1e-300)  # the trace's largest request stays in the support (δ)
    fs, fo = spec.get("scale", [1.0, 1.0])
    if fs != 1.0 or fo != 1.0:
        s = np.maximum(np.rint(s * fs), 1).astype(np.int64)
        o = np.maximum(np.rint(o * fo), 1).astype(np.int64)
    return LengthModel(s, o, q, spec)


def load_length_model(path) -> LengthModel:
    """A length model saved by :meth:`LengthModel.save` (JSON); bad files raise LqsError naming the file."""
    label = os.fspath(path)
    try:
        with open(label, encoding="utf-8") as fh:
            spec = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise LqsError("length_model", label, "must be a readable JSON length model written by lqs fit lengths",
                       " ".join(str(e).split())[:160]) from None
    if not isinstance(spec, dict) or spec.get("kind") != KIND:
        raise LqsError("length_model", label, f"must be a JSON object with kind={KIND!r}")
    for key in ("mixture", "grid", "tilt"):
        if key not in spec:
            raise LqsError("length_model", label, f"is missing the key {key!r}")
    try:
        return _build(spec)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise LqsError("length_model", label, "has malformed parameters", f"{type(e).__name__}: {e}") from None


def is_length_model(path) -> bool:
    """True if ``path`` is a JSON file holding a length model (cheap check on its start)."""
    try:
        with open(os.fspath(path), encoding="utf-8") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):  # not a text file: not a length model
        return False
    return f'"kind": "{KIND}"' in head or f'"kind":"{KIND}"' in head

"""Request-length workloads: joint distributions of (prompt s, output o) in tokens.

A workload is an equinox Module (a pytree): its numbers are array leaves, so workloads of the same structure
can be passed to a jitted function, or stacked and vmapped, without recompiling. Every workload turns a vector
of independent uniforms into one (s, o) pair with :meth:`Workload.sample_from_uniforms` — the simulator feeds it
uniforms from a counter-based stream keyed by the request index — and exposes what the theory needs:
exact E[g] where the support is finite, and the largest s+o (for δ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import LqsError, check_float, check_int
from ._theory import g_exact, g_o_term, g_paper, g_s_term

from ._marginals import _MAX_SUPPORT, IntUniform, Marginal, _check_lengths, _u_index


@dataclass(frozen=True)
class GMoments:
    """E[g] (paper form) and E[g_exact]; ``se`` is the Monte Carlo standard error (0 when exact)."""

    g: float
    g_exact: float
    se: float
    exact: bool
    mean_prompt_tokens: float  # E[s]
    mean_output_tokens: float  # E[o]


# ----------------------------------------------------------------------------------------------- workloads
class Workload(eqx.Module):
    """A joint distribution of (s, o). Subclasses implement the three methods below."""

    @property
    def n_uniforms(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample_from_uniforms(self, u):
        """u: float32 [..., n_uniforms] in [0,1) → (s, o) int32 arrays of shape u.shape[:-1]."""
        raise NotImplementedError  # pragma: no cover

    def components(self) -> list[tuple[float, "Workload"]]:
        return [(1.0, self)]

    @property
    def max_total(self) -> int:
        """ess sup (s + o)."""
        raise NotImplementedError  # pragma: no cover

    @property
    def min_s(self) -> int:
        raise NotImplementedError  # pragma: no cover

    def _exact_moments(self, prefill_chunk) -> GMoments | None:
        return None

    # -- shared
    def sample(self, key, shape=()):
        """Draw (s, o) of the given shape under a JAX key (usable inside jit and vmap)."""
        if isinstance(shape, int):
            shape = (shape,)
        u = jax.random.uniform(key, tuple(shape) + (self.n_uniforms,), dtype=jnp.float32)
        return self.sample_from_uniforms(u)

    def validate(self, M):
        """Raise if some request could never run (s + o > M)."""
        M = check_int("M", M, 1)
        if self.max_total > M:
            raise LqsError("lengths", f"s+o={self.max_total}",
                           f"every request must have s+o ≤ M={M}; this workload's largest request can never run")

    def expected_g(self, prefill_chunk, *, key=None, n_mc: int = 1_000_000, method: str = "auto") -> GMoments:
        """E[g] and E[g_exact]: exact sums where the support is finite, else Monte Carlo with a standard error."""
        prefill_chunk = check_int("prefill_chunk", prefill_chunk, 1)
        if method not in ("auto", "exact", "mc"):
            raise LqsError("method", method, "must be one of auto, exact, mc")
        if method != "mc":
            m = self._exact_moments(prefill_chunk)
            if m is not None:
                return m
            if method == "exact":
                raise LqsError("method", method, "this workload has no finite support to sum over exactly")
        n_mc = check_int("n_mc", n_mc, 2)
        key = jax.random.key(0) if key is None else key
        s, o = eqx.filter_jit(lambda k, w: w.sample(k, (n_mc,)))(key, self)
        s = np.asarray(s, np.float64)
        o = np.asarray(o, np.float64)
        g = g_paper(s, o, prefill_chunk)
        ge = g_exact(s.astype(np.int64), o.astype(np.int64), prefill_chunk).astype(np.float64)
        return GMoments(g=float(g.mean()), g_exact=float(ge.mean()), se=float(ge.std(ddof=1) / math.sqrt(n_mc)),
                        exact=False, mean_prompt_tokens=float(s.mean()), mean_output_tokens=float(o.mean()))


class Independent(Workload):
    """s and o drawn independently from two marginals."""

    s: Marginal
    o: Marginal

    def __init__(self, s: Marginal, o: Marginal):
        self.s, self.o = s, o

    @property
    def n_uniforms(self):
        return 2

    def sample_from_uniforms(self, u):
        return self.s.from_uniform(u[..., 0]), self.o.from_uniform(u[..., 1])

    @property
    def max_total(self):
        return self.s.hi + self.o.hi

    @property
    def min_s(self):
        return self.s.lo

    def _exact_moments(self, prefill_chunk):
        vs, ps = self.s.support()
        vo, po = self.o.support()
        if vs.size > _MAX_SUPPORT or vo.size > _MAX_SUPPORT:
            return None
        es, eo = float(ps @ vs), float(po @ vo)
        co = float(po @ g_o_term(vo))
        g = float(ps @ g_s_term(vs, prefill_chunk, exact=False)) + es * eo + co
        ge = float(ps @ g_s_term(vs, prefill_chunk, exact=True)) + es * eo + co
        return GMoments(g=g, g_exact=ge, se=0.0, exact=True, mean_prompt_tokens=es, mean_output_tokens=eo)


class Pairs(Workload):
    """Joint empirical distribution: resample observed (s, o) pairs with equal weight (a trace)."""

    s: np.ndarray
    o: np.ndarray

    def __init__(self, s, o):
        s = _check_lengths("s", s)
        o = _check_lengths("o", o)
        if s.shape != o.shape:
            raise LqsError("o", f"{o.size} lengths", f"must have as many entries as s ({s.size})")
        self.s, self.o = s, o

    @property
    def n_uniforms(self):
        return 1

    def sample_from_uniforms(self, u):
        i = _u_index(u[..., 0], self.s.shape[-1])
        return jnp.asarray(self.s)[i], jnp.asarray(self.o)[i]

    @property
    def max_total(self):
        return int(np.max(np.asarray(self.s, np.int64) + np.asarray(self.o, np.int64)))

    @property
    def min_s(self):
        return int(np.min(self.s))

    def _exact_moments(self, prefill_chunk):
        s = np.asarray(self.s, np.int64)
        o = np.asarray(self.o, np.int64)
        return GMoments(g=float(g_paper(s.astype(np.float64), o.astype(np.float64), prefill_chunk).mean()),
                        g_exact=float(g_exact(s, o, prefill_chunk).mean()), se=0.0, exact=True,
                        mean_prompt_tokens=float(s.mean()), mean_output_tokens=float(o.mean()))


class PaddedPairs(Workload):
    """``Pairs`` of the first ``n`` entries, stored padded to a common length (a capacity plan's per-window lengths):
    windows with different request counts then share one compiled program, ``n`` being a traced leaf. Draws are
    those of ``Pairs(s[:n], o[:n])``, bit for bit."""

    s: np.ndarray
    o: np.ndarray
    n: np.ndarray  # float32[] entries in use

    def __init__(self, s, o, size: int | None = None):
        s = _check_lengths("s", s)
        o = _check_lengths("o", o)
        if s.shape != o.shape:
            raise LqsError("o", f"{o.size} lengths", f"must have as many entries as s ({s.size})")
        size = s.size if size is None else int(size)
        if size < s.size:
            raise LqsError("size", size, f"must be at least the number of pairs ({s.size})")
        self.s, self.o = np.resize(s, size), np.resize(o, size)
        self.n = np.asarray(s.size, np.float32)

    @property
    def pairs(self) -> "Pairs":
        k = int(self.n)
        return Pairs(self.s[:k], self.o[:k])

    @property
    def n_uniforms(self):
        return 1

    def sample_from_uniforms(self, u):
        n = jnp.asarray(self.n, jnp.float32)
        i = jnp.minimum(jnp.floor(u[..., 0] * n).astype(jnp.int32), n.astype(jnp.int32) - 1)
        return jnp.asarray(self.s)[i], jnp.asarray(self.o)[i]

    @property
    def max_total(self):
        return self.pairs.max_total

    @property
    def min_s(self):
        return self.pairs.min_s

    def _exact_moments(self, prefill_chunk):
        return self.pairs._exact_moments(prefill_chunk)


class Mixture(Workload):
    """A finite mixture: component ℓ with request fraction q_ℓ."""

    parts: tuple
    weights: np.ndarray

    def __init__(self, parts, weights=None):
        parts = tuple(parts)
        if not parts or not all(isinstance(p, Workload) for p in parts):
            raise LqsError("parts", parts, "must be a non-empty list of workloads")
        w = np.ones(len(parts)) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (len(parts),) or np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise LqsError("weights", np.asarray(weights).tolist(),
                           f"must be {len(parts)} finite non-negative numbers with a positive sum")
        self.parts = parts
        self.weights = w / w.sum()  # float64: exact mixture moments

    @property
    def n_uniforms(self):
        return 1 + max(p.n_uniforms for p in self.parts)

    def sample_from_uniforms(self, u):
        cum = jnp.cumsum(jnp.asarray(self.weights))
        j = jnp.sum(u[..., :1] >= cum[:-1], axis=-1)  # component index
        return _pick(self.parts, j, u[..., 1:])

    def components(self):
        return [(float(w), p) for w, p in zip(np.asarray(self.weights), self.parts)]

    @property
    def max_total(self):
        return max(p.max_total for w, p in zip(np.asarray(self.weights), self.parts) if w > 0)

    @property
    def min_s(self):
        return min(p.min_s for w, p in zip(np.asarray(self.weights), self.parts) if w > 0)

    def _exact_moments(self, prefill_chunk):
        ms = [p._exact_moments(prefill_chunk) for p in self.parts]
        if any(m is None for m in ms):
            return None
        q = np.asarray(self.weights, np.float64)
        return GMoments(g=float(sum(qi * m.g for qi, m in zip(q, ms))),
                        g_exact=float(sum(qi * m.g_exact for qi, m in zip(q, ms))), se=0.0, exact=True,
                        mean_prompt_tokens=float(sum(qi * m.mean_prompt_tokens for qi, m in zip(q, ms))),
                        mean_output_tokens=float(sum(qi * m.mean_output_tokens for qi, m in zip(q, ms))))


# ----------------------------------------------------------------------------------------------- presets
PRESETS = {
    # paper Table 1 (M = 131,000, ŝ = 512): s, o independent integer uniforms on [10, hi]
    "pd-1:1": ((10, 1600), (10, 1600)),
    "pd-2:1": ((10, 2133), (10, 1066)),
    "pd-1:2": ((10, 1066), (10, 2133)),
    # paper appendix 8:1, same max s+o of about 3200
    "pd-8:1": ((10, 2844), (10, 355)),
}
PAPER_B = {"pd-1:1": 0.0372, "pd-2:1": 0.0430, "pd-1:2": 0.0337}


def preset(name: str) -> Workload:
    """A paper workload by name: pd-1:1, pd-2:1, pd-1:2, pd-8:1, or mix-2:1/1:2 (the two halves, equal counts)."""
    if name == "mix-2:1/1:2":
        return Mixture([preset("pd-2:1"), preset("pd-1:2")], [0.5, 0.5])
    if name not in PRESETS:
        raise LqsError("workload", name, "must be one of " + ", ".join(list(PRESETS) + ["mix-2:1/1:2"]))
    (sl, sh), (ol, oh) = PRESETS[name]
    return Independent(IntUniform(sl, sh, "s"), IntUniform(ol, oh, "o"))


def pd_ratio(ratio: float, total_hi: int = 3200, lo: int = 10) -> Workload:
    """A P/D family with s ~ U{lo..hs}, o ~ U{lo..ho}, hs/ho = ratio and hs + ho = total_hi (paper's construction)."""
    ratio = check_float("ratio", ratio, 0.0, lo_open=True)
    hs = int(round(total_hi * ratio / (1.0 + ratio)))
    ho = total_hi - hs
    return Independent(IntUniform(lo, max(hs, lo), "s"), IntUniform(lo, max(ho, lo), "o"))


def _pick(parts, index, u):
    """(s, o) of ``parts[index]`` (index an int array), each part sampling from the leading uniforms of u."""
    s_out = o_out = None
    for i, p in enumerate(parts):
        s_i, o_i = p.sample_from_uniforms(u[..., :p.n_uniforms])
        if s_out is None:
            s_out, o_out = s_i, o_i
        else:
            s_out = jnp.where(index == i, s_i, s_out)
            o_out = jnp.where(index == i, o_i, o_out)
    return s_out, o_out


class Phased(Workload):
    """The workloads of a piecewise-constant schedule: request lengths come from the phase the request arrives in.

    Used by the engine for non-stationary runs (``lqs.simulate(..., phases=[(duration_s, lam, workload), ...])``);
    as a plain workload it behaves like its first phase's.
    """

    parts: tuple

    def __init__(self, parts):
        parts = tuple(parts)
        if not parts or not all(isinstance(p, Workload) for p in parts):
            raise LqsError("phases", parts, "every phase needs an lqs Workload")
        self.parts = parts

    @property
    def n_uniforms(self):
        return max(p.n_uniforms for p in self.parts)

    def sample_phase(self, u, phase):
        return _pick(self.parts, phase, u)

    def sample_from_uniforms(self, u):
        return self.parts[0].sample_from_uniforms(u[..., :self.parts[0].n_uniforms])

    @property
    def max_total(self):
        return max(p.max_total for p in self.parts)

    @property
    def min_s(self):
        return min(p.min_s for p in self.parts)

    def _exact_moments(self, prefill_chunk):
        return self.parts[0]._exact_moments(prefill_chunk)


def as_workload(workload, param: str = "workload") -> "Workload":
    """``workload`` itself when it is an lqs Workload; a Trace (``lqs.load_trace``:
    an object with ``s``, ``o`` and ``arrival_s``) as the Pairs of its (s, o); else an LqsError naming ``param``."""
    if not isinstance(workload, Workload) and all(hasattr(workload, a) for a in ("s", "o", "arrival_s")):
        return Pairs(workload.s, workload.o)
    if not isinstance(workload, Workload):
        raise LqsError(param, type(workload).__name__, "must be an lqs Workload (see lqs.preset; a name such as "
                                                       "'pd-1:1' must go through lqs.preset first)")
    return workload

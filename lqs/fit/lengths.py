"""fit_lengths: a parametric joint model of (prompt s, output o) whose capacity moments equal a trace's.

Maximum likelihood alone misses E[g] (the quantity μ = M / (b̄·E[g]) depends on, docs/model.md "Capacity") by
percents, because E[g] is set by the tails and by the s·o correlation. So the fit has two stages: a mixture of
bivariate log-normals with correlation is fitted by maximum likelihood with optax (Adam) on the dequantised
lengths (:mod:`lqs.fit.mixture`), then discretised over the trace's range and tilted exponentially so that
E[s], E[o], E[g] and E[g_exact] for the given prefill chunk ŝ, and the largest s + o, equal the trace's
(:mod:`lqs.fit.model`). The tilt is the smallest change of the maximum-likelihood weights (in Kullback–Leibler
divergence) that meets the constraints; its size is reported as ``tilt_kl``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from .._errors import LqsError, check_int
from .._theory import g_exact, g_paper
from .mixture import fit_logmix
from .model import KIND, VERSION, LengthModel, _build, _support, features, tilt
from .. import _jsonio


@dataclass(frozen=True, eq=False)
class LengthFit:
    """The fitted model and how well it matches the trace (units in the names)."""

    model: LengthModel
    trace_name: str
    n_requests: int
    prefill_chunk: int
    components: int
    mean_g_trace_tokens2: float
    mean_g_model_tokens2: float
    mean_g_rel_err: float
    ks_s: float
    ks_o: float
    max_total_tokens: int
    M_tokens: int | None
    delta: float | None
    loglik_per_request: float
    tilt_kl: float
    fit_s: float
    _obs: tuple = field(default=(), repr=False)

    def to_dict(self) -> dict:
        return {"trace": self.trace_name, "n_requests": self.n_requests, "prefill_chunk_tokens": self.prefill_chunk,
                "components": self.components, "mean_g_trace_tokens2": self.mean_g_trace_tokens2,
                "mean_g_model_tokens2": self.mean_g_model_tokens2, "mean_g_rel_err": self.mean_g_rel_err,
                "ks_s": self.ks_s, "ks_o": self.ks_o, "max_total_tokens": self.max_total_tokens,
                "M_tokens": self.M_tokens, "delta": self.delta,
                "loglik_per_request": self.loglik_per_request, "tilt_kl": self.tilt_kl, "fit_s": self.fit_s,
                "support_points": int(self.model.s.size)}

    def save(self, out_dir) -> dict:
        """Write ``length_model.json`` (the model), ``length_fit.json`` (this report) and ``length_fit.png``."""

        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths = {"model": self.model.save(os.path.join(out_dir, "length_model.json")),
                 "report": os.path.join(out_dir, "length_fit.json"),
                 "plot": os.path.join(out_dir, "length_fit.png")}
        with open(paths["report"], "w", encoding="utf-8") as fh:
            _jsonio.dump(self.to_dict(), fh, indent=1)
        _plot(self, paths["plot"])
        return paths


def _ks(values: np.ndarray, model_v: np.ndarray, model_p: np.ndarray) -> float:
    """sup_k |F_model(k) − F_trace(k)| over the integers k (both distributions are on integers)."""
    lo = int(min(values.min(), model_v.min()))
    hi = int(max(values.max(), model_v.max()))
    grid = np.arange(lo, hi + 1)
    fe = np.searchsorted(np.sort(values), grid, side="right") / values.size
    order = np.argsort(model_v, kind="stable")
    cv, cp = model_v[order], np.cumsum(model_p[order])
    idx = np.searchsorted(cv, grid, side="right") - 1
    fm = np.where(idx >= 0, cp[np.maximum(idx, 0)], 0.0)
    return float(np.max(np.abs(fm - fe)))


def _cuts(x: np.ndarray, n: int = 200) -> list[int]:
    """Cell boundaries at the data's 1/n quantiles, so that no cell of the grid holds much more than 1/n of the
    requests (a representative point per cell then misplaces little of the marginal CDF)."""
    q = np.quantile(x, np.arange(1, n) / n, method="inverted_cdf").astype(np.int64)
    return [int(v) for v in np.unique(q) if x.min() <= v < x.max()]


def _thresholds(x: np.ndarray, n: int) -> list[int]:
    """CDF points to match: integer quantiles of x at levels 1/(n+1) … n/(n+1), and both sides of every value
    that holds at least 1 % of the requests (kept if within [min, max) of x)."""
    if n <= 0:
        return []
    q = np.quantile(x, np.arange(1, n + 1) / (n + 1), method="inverted_cdf").astype(np.int64)
    v, c = np.unique(x, return_counts=True)
    atoms = v[c >= 0.01 * x.size]  # values holding ≥ 1 % of the requests: match their steps too
    q = np.unique(np.concatenate([q, atoms, atoms - 1]))
    return [int(t_) for t_ in q if x.min() <= t_ < x.max()]


def fit_lengths(trace, prefill_chunk: int, components: int = 10, *, M: int | None = None, quantiles: int = 19,
                key=None, seed: int = 0, steps: int = 2000, lr: float = 0.03) -> LengthFit:
    """Fit a constrained log-normal mixture to a trace (an :class:`lqs.Trace`, a path or a bundled name).

    ``prefill_chunk`` is ŝ (tokens) for E[g]; ``components`` the number of bivariate log-normals; ``seed`` (or a
    JAX ``key``, which then sets it) fixes the dequantisation and the start; ``steps`` / ``lr`` are Adam's. The
    model's E[s], E[o], E[g], E[g_exact] and max s+o equal the trace's, and so do its marginal CDFs at ``quantiles`` quantiles of each length
    (0: moments only); the report gives the per-marginal Kolmogorov–Smirnov distances, and δ = max(s+o)/M
    when the KV capacity ``M`` (tokens) is given.
    """
    from ..traces import Trace, load_trace

    if not isinstance(trace, Trace):
        trace = load_trace(trace)
    prefill_chunk = check_int("prefill_chunk", prefill_chunk, 1)
    components = check_int("components", components, 1, 64)
    if key is not None:
        import jax

        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    seed = check_int("seed", seed, 0)
    quantiles = check_int("quantiles", quantiles, 0, 200)
    M = None if M is None else check_int("M", M, 1)
    steps = check_int("steps", steps, 1)
    if len(trace) < 2 * components:
        raise LqsError("components", components, f"needs at least 2 requests per component; the trace "
                       f"{trace.name!r} holds {len(trace)}")
    t0 = time.perf_counter()
    s = trace.s.astype(np.int64)
    o = trace.o.astype(np.int64)
    mix, ll = fit_logmix(s, o, components, seed=seed, steps=steps, lr=lr)
    tot = s + o
    i = int(np.argmax(tot))
    target = np.array([s.mean(), o.mean(), g_paper(s.astype(np.float64), o.astype(np.float64), prefill_chunk).mean(),
                       g_exact(s, o, prefill_chunk).astype(np.float64).mean()])
    spec = {"kind": KIND, "version": VERSION, "mixture": mix.to_numpy(),
            "grid": {"s_lo": int(s.min()), "s_hi": int(s.max()), "o_lo": int(o.min()), "o_hi": int(o.max()),
                     "max_total": int(tot[i]), "s_at_max": int(s[i]), "o_at_max": int(o[i]),
                     "s_cuts": _cuts(s), "o_cuts": _cuts(o)},
            "scale": [1.0, 1.0], "source": {"trace": trace.name, "n_requests": len(trace)}}
    s_thr, o_thr = _thresholds(s, quantiles), _thresholds(o, quantiles)
    spec["tilt"] = {"s_thresholds": s_thr, "o_thresholds": o_thr}
    vs, vo, p, _ = _support(spec)
    p = p / p.sum()
    F = features(vs, vo, prefill_chunk, s_thr, o_thr)
    cdf = np.concatenate([np.diff([0.0] + [np.mean(x <= t_) for t_ in thr]) for x, thr in ((s, s_thr), (o, o_thr))])
    lam, q = tilt(p, F, np.concatenate([target, cdf]), groups=((4, len(s_thr)), (4 + len(s_thr), len(o_thr))))
    spec["tilt"] = {"prefill_chunk": prefill_chunk, "lambda": lam.tolist(), "s_thresholds": s_thr,
                    "o_thresholds": o_thr,
                    "targets": dict(zip(("mean_s", "mean_o", "mean_g", "mean_g_exact"), target.tolist()))}
    model = _build(spec)
    m = model.expected_g(prefill_chunk)
    fit_s = time.perf_counter() - t0
    nz = q > 0
    kl = float(np.sum(q[nz] * (np.log(q[nz]) - np.log(np.maximum(p[nz], 1e-300)))))
    return LengthFit(model=model, trace_name=trace.name, n_requests=len(trace), prefill_chunk=prefill_chunk,
                     components=components, mean_g_trace_tokens2=float(target[2]), mean_g_model_tokens2=m.g,
                     mean_g_rel_err=float(abs(m.g / target[2] - 1.0)),
                     ks_s=_ks(s, model.s.astype(np.int64), model.p), ks_o=_ks(o, model.o.astype(np.int64), model.p),
                     max_total_tokens=model.max_total, M_tokens=M,
                     delta=None if M is None else model.max_total / M, loglik_per_request=ll, tilt_kl=kl, fit_s=fit_s,
                     _obs=(s, o))


def _plot(fit: LengthFit, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, o = fit._obs
    m = fit.model
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.4))
    for a, obs, mv, name, ks in ((ax[0], s, m.s, "prompt length s", fit.ks_s), (ax[1], o, m.o, "output length o",
                                                                               fit.ks_o)):
        xs = np.sort(obs)
        a.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label="trace")
        order = np.argsort(mv, kind="stable")
        a.step(mv[order], np.cumsum(m.p[order]), where="post", label="fitted model", ls="--")
        a.set_xscale("log")
        a.set_xlabel(f"{name} (tokens)")
        a.set_ylabel("CDF")
        a.set_title(f"{name}: KS = {ks:.3f}")
        a.legend()
    rng = np.random.default_rng(0)
    k = min(4000, s.size)
    idx = rng.choice(s.size, k, replace=False)
    draw = rng.choice(m.s.size, k, p=m.p)
    ax[2].scatter(s[idx], o[idx], s=3, alpha=0.35, label="trace")
    ax[2].scatter(m.s[draw], m.o[draw], s=3, alpha=0.35, label="fitted model")
    ax[2].set_xscale("log")
    ax[2].set_yscale("log")
    ax[2].set_xlabel("s (tokens)")
    ax[2].set_ylabel("o (tokens)")
    ax[2].set_title(f"joint; E[g] error {100 * fit.mean_g_rel_err:.3f} %")
    ax[2].legend(markerscale=4)
    fig.suptitle(f"lqs fit lengths — {fit.trace_name}, {fit.components} components, ŝ = {fit.prefill_chunk}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

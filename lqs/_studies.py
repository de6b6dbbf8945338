"""Studies: the questions a capacity planner asks, each answered by simulation next to the closed form.

Every study is a function returning a :class:`StudyResult` (a tidy DataFrame, the PNG path and a dict of headline
numbers; ``df, png = study(...)`` unpacks the first two). Sizes (replicas, steps, grid points) are arguments with
full-size defaults (paper scale: M = 131,000, ŝ = 512, b̄ = 0.0372 s, meant for an accelerator) and a ``quick``
mode (smaller M and requests, fewer replicas and steps: minutes on a laptop CPU). With ``out=DIR`` each study
writes ``DIR/<name>.csv``, ``DIR/<name>.json`` (headline numbers and settings) and ``DIR/<name>.png``.

1. :func:`phase_diagram` — P(unstable) over (λ, P/D ratio), (λ, M) or (λ, b̄), with μ and μ(1−δ) drawn on top.
2. :func:`b_error` — how an error in b̄ moves μ; which estimator of b̄ predicts λ* for random and affine batch times.
3. :func:`delta_study` — where λ* falls in [μ_exact(1−δ), μ_exact] as the largest request grows against M.
4. :func:`mixture_study` — a piecewise-stationary schedule of workloads against μ_mix with count or time weights.
5. :func:`cluster_study` — G servers and the routing rule: λ* and waiting-time percentiles.
6. :func:`latency_study` / :func:`slo_replicas` — latency against utilisation; replicas for a p99 TTFT target.

Units: tokens, seconds, requests per second (SPEC.md). ρ = λ/μ with the paper's closed-form μ unless a column
name says ``exact``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._errors import LqsError, check_float, check_int
from ._jsonio import json_default as _json_default

__all__ = ["StudyResult", "phase_diagram", "b_error", "delta_study", "mixture_study", "cluster_study",
           "latency_study", "slo_replicas"]

PAPER_M, PAPER_CHUNK, PAPER_B1 = 131_000, 512, 0.0372
# paper Table 3: 8 replicas, P/D 1:1, round robin
PAPER_CLUSTER = dict(servers=8, mu_theory_rps=25.808, mu_measured_rps=26.710)

# full size (paper scale, for an accelerator) and quick (CPU minutes); None steps = lqs.auto_steps
_FULL = dict(M=PAPER_M, chunk=PAPER_CHUNK, b=PAPER_B1, total_hi=3200, replicas=64, steps=None, warmup=4000)
_QUICK = dict(M=16_384, chunk=PAPER_CHUNK, b=PAPER_B1, total_hi=800, replicas=16, steps=10_000, warmup=2_500)


@dataclass
class StudyResult:
    """A study's tidy table (``data``), the PNG written (``png``, None without ``out``), the CSV and headline
    numbers (``meta``). Unpacks as ``df, png = result``."""

    name: str
    data: pd.DataFrame
    png: str | None = None
    csv: str | None = None
    meta: dict = field(default_factory=dict)

    def __iter__(self):
        yield self.data
        yield self.png


# ----------------------------------------------------------------------------------------------- helpers
def _defaults(quick, **given):
    """Resolve None arguments from the quick or full defaults."""
    base = _QUICK if quick else _FULL
    out = {}
    for k, v in given.items():
        out[k] = base[k] if v is None and k in base else v
    return out


def _key(seed, i=None):
    import jax

    k = jax.random.key(check_int("seed", seed, 0, 2**63 - 1))
    return k if i is None else jax.random.fold_in(k, i)


def _fast_1to1(total_hi):
    from ._workload import pd_ratio

    return pd_ratio(1.0, total_hi=total_hi)


def _label(w) -> str:
    """Short description of a workload for titles."""
    from ._workload import Independent, IntUniform, Mixture

    if isinstance(w, Independent) and isinstance(w.s, IntUniform) and isinstance(w.o, IntUniform):
        return f"s~U{{{int(w.s.low)}..{int(w.s.high)}}}, o~U{{{int(w.o.low)}..{int(w.o.high)}}}"
    if isinstance(w, Mixture):
        return "mixture of " + ", ".join(f"{q:.2g}×[{_label(p)}]" for q, p in w.components())
    return type(w).__name__


def _sat(row) -> tuple[float, float]:
    """(λ*, se) of a saturated summary row: the control-variate saturation throughput (as lqs.critical)."""
    if np.isfinite(row["throughput_cv_rps"]):
        return float(row["throughput_cv_rps"]), float(row["throughput_cv_se_rps"])
    return float(row["throughput_rps"]), float(row["throughput_se_rps"])


def _crossing(x, p):
    from ._critical import _crossing as c

    return c(np.asarray(x, np.float64), np.asarray(p, np.float64))


def _plt():
    from ._plots import _plt as p

    return p()


def _write(name, df, meta, fig, out) -> StudyResult:
    """Save the CSV, the JSON of headline numbers and the figure into ``out`` (when given)."""
    res = StudyResult(name=name, data=df, meta=meta)
    plt = _plt()
    if out is not None:
        os.makedirs(out, exist_ok=True)
        res.csv = os.path.join(out, f"{name}.csv")
        df.to_csv(res.csv, index=False)
        with open(os.path.join(out, f"{name}.json"), "w") as fh:
            json.dump(meta, fh, indent=2, default=_json_default)
        if fig is not None:
            res.png = os.path.join(out, f"{name}.png")
            fig.savefig(res.png, dpi=130)
    if fig is not None:
        plt.close(fig)
    return res


def _row_edges(v, log):
    """Cell edges around sorted row centres (geometric midpoints on a log axis)."""
    v = np.asarray(v, np.float64)
    if len(v) == 1:
        return np.array([v[0] / 1.25, v[0] * 1.25]) if log else np.array([v[0] - 0.5, v[0] + 0.5])
    if log:
        lv = np.log(v)
        mid = (lv[1:] + lv[:-1]) / 2
        return np.exp(np.concatenate([[lv[0] - (mid[0] - lv[0])], mid, [lv[-1] + (lv[-1] - mid[-1])]]))
    mid = (v[1:] + v[:-1]) / 2
    return np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])


def _lin_edges(x):
    x = np.asarray(x, np.float64)
    if len(x) == 1:
        return np.array([x[0] * 0.95, x[0] * 1.05])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def _ratio_label(r):
    r = float(r)
    if r >= 1:
        return f"{r:g}:1"
    return f"1:{1 / r:g}"


# ----------------------------------------------------------------------------------------------- 1. phase diagrams
def phase_diagram(axis: str = "ratio", values=None, *, workload=None, M=None, chunk=None, b=None, total_hi=None,
                  lam_range=(0.6, 1.3), n_lam=None, policy: str = "fcfs", replicas=None, steps=None, warmup=None,
                  K=None, seed: int = 0, quick: bool = False, out=None, progress: bool = False) -> StudyResult:
    """P(unstable) over λ and one design axis, with the theory curves λ = μ and λ = μ(1−δ) on top.

    ``axis``: ``"ratio"`` (rows are ``lqs.pd_ratio(r, total_hi)`` workloads, ``values`` = P/D ratios),
    ``"M"`` (rows are KV capacities in tokens) or ``"b"`` (rows are batch times b̄ in seconds); the other two are
    fixed (``workload`` defaults to P/D 1:1 with s + o ≤ ``total_hi``). Each row gets its own λ grid,
    ``n_lam`` points from ``lam_range[0]``·μ(1−δ) to ``lam_range[1]``·μ of that row, so every row resolves its
    boundary; one simulate call (one vmapped program over the λ grid) per row.
    The table has one row per (row value, λ) cell; ``meta['rows']`` the simulated crossing P(unstable) = ½ per row.
    """
    from ._engine import simulate
    from ._theory import capacity
    from ._workload import pd_ratio

    if axis not in ("ratio", "M", "b"):
        raise LqsError("axis", axis, "must be one of ratio, M, b")
    d = _defaults(quick, M=M, chunk=chunk, b=b, total_hi=total_hi, replicas=replicas, steps=steps, warmup=warmup)
    n_lam = check_int("n_lam", n_lam if n_lam is not None else (8 if quick else 15), 2, 1000)
    lo_f, hi_f = (check_float("lam_range", x, 0.0, lo_open=True) for x in lam_range)
    if values is None:
        values = {"ratio": (0.25, 1.0, 4.0) if quick else (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
                  "M": (8192, 16_384, 32_768) if quick else (32_768, 65_536, 131_000, 262_144),
                  "b": (0.02, 0.0372, 0.06) if quick else (0.02, 0.03, 0.0372, 0.05, 0.07)}[axis]
    values = sorted(float(v) for v in np.atleast_1d(values))
    if workload is None and axis != "ratio":
        workload = _fast_1to1(d["total_hi"])
    rows, crossings = [], []
    for i, v in enumerate(values):
        w, Mi, bi = workload, d["M"], d["b"]
        if axis == "ratio":
            w = pd_ratio(v, total_hi=d["total_hi"])
        elif axis == "M":
            Mi = check_int("M", v, 1)
        else:
            bi = check_float("b", v, 0.0, lo_open=True)
        cap = capacity(w, Mi, d["chunk"], bi)
        lams = np.linspace(lo_f * cap.mu_stable_rps, hi_f * cap.mu_rps, n_lam)
        res = simulate(w, M=Mi, chunk=d["chunk"], lam=lams, b=bi, policy=policy, replicas=d["replicas"],
                       steps=d["steps"], warmup=d["warmup"], key=_key(seed, i), K=K, progress=progress)
        s = res.summary
        cross = _crossing(s["lam_rps"], s["p_unstable"])
        crossings.append(dict(value=v, mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps,
                              mu_stable_rps=cap.mu_stable_rps, delta=cap.delta, lam_cross_rps=cross,
                              lam_cross_over_mu=cross / cap.mu_rps))
        for _, r in s.iterrows():
            rows.append(dict(axis=axis, value=v, workload=_label(w), M_tokens=Mi, chunk_tokens=d["chunk"], b_s=bi,
                             lam_rps=float(r.lam_rps), lam_over_mu=float(r.lam_rps) / cap.mu_rps,
                             lam_over_mu_stable=float(r.lam_rps) / cap.mu_stable_rps,
                             p_unstable=float(r.p_unstable), p_unstable_lo=float(r.p_unstable_lo),
                             p_unstable_hi=float(r.p_unstable_hi), mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps,
                             mu_stable_rps=cap.mu_stable_rps, delta=cap.delta,
                             throughput_cv_rps=float(r.throughput_cv_rps), wait_p99_s=float(r.wait_p99_s),
                             policy=policy, replicas=int(r.replicas), steps=int(r.steps), reliable=bool(r.reliable)))
    df = pd.DataFrame(rows)
    meta = dict(study="phase_diagram", axis=axis, values=values, policy=policy, lam_range=[lo_f, hi_f], n_lam=n_lam,
                M_tokens=d["M"], chunk_tokens=d["chunk"], b_s=d["b"], total_hi=d["total_hi"],
                replicas=d["replicas"], steps=d["steps"], warmup=d["warmup"], quick=quick, rows=crossings,
                reliable=bool(df.reliable.all()))

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.2))
    log_y = axis in ("ratio", "M")
    ye = _row_edges(values, log_y)
    mesh = None
    for i, v in enumerate(values):
        sub = df[df.value == v]
        mesh = ax.pcolormesh(_lin_edges(sub.lam_rps), [ye[i], ye[i + 1]], sub.p_unstable.to_numpy()[None, :],
                             cmap="RdYlBu_r", vmin=0, vmax=1, shading="flat")
    cr = pd.DataFrame(crossings)
    ax.plot(cr.mu_rps, cr.value, "k-", lw=2, marker="o", ms=4, label="μ (closed form): unstable above")
    ax.plot(cr.mu_stable_rps, cr.value, "k--", lw=2, marker="o", ms=4, label="μ(1−δ): stable below (fcfs)")
    ok = np.isfinite(cr.lam_cross_rps)
    ax.plot(cr.lam_cross_rps[ok], cr.value[ok], "w^", ms=8, mec="k",
            label="simulated P(unstable) = ½ (finite horizon)")
    if log_y:
        ax.set_yscale("log")
    ax.set_yticks(values)
    ylab = {"ratio": "P/D ratio (prompt : output length)", "M": "KV-cache capacity M (tokens)",
            "b": "batch time b̄ (s)"}[axis]
    ax.set_yticklabels([_ratio_label(v) if axis == "ratio" else f"{v:g}" for v in values])
    ax.minorticks_off()
    ax.set_ylim(ye[0], ye[-1])
    ax.set_xlabel("arrival rate λ (requests/s)")
    ax.set_ylabel(ylab)
    fixed = {"ratio": f"M={d['M']:,} tokens, b̄={d['b']:g} s, s+o≤{d['total_hi']}",
             "M": f"{_label(workload)}, b̄={d['b']:g} s",
             "b": f"{_label(workload)}, M={d['M']:,} tokens"}[axis]
    ax.set_title(f"Stability phase diagram ({policy}, ŝ={d['chunk']}): P(unstable) over λ and {ylab.split(' (')[0]}"
                 f"\n{fixed}; {d['replicas']} replicas per cell", fontsize=10)
    cb = fig.colorbar(mesh, ax=ax)
    cb.set_label("P(unstable) (fraction of replicas)")
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    return _write(f"phase_{axis}", df, meta, fig, out)


# ----------------------------------------------------------------------------------------------- 2. b̄ error
def _draw_b(model, n, seed):
    """n batch times from a model's own (scalar) draw function, vmapped; composition 0 (i.i.d. models ignore it)."""
    import jax

    rng = np.random.default_rng(seed)
    u = rng.random((2, n), dtype=np.float32)
    z = np.zeros(n, np.int32)
    return np.asarray(jax.jit(jax.vmap(model.draw))(u[0], u[1], z, z, z), np.float64)


def default_b_models(b_mean: float, slow_factor: float = 3.0, slow_frac: float = 0.3) -> dict:
    """i.i.d. batch-time models, all with mean ``b_mean``: lognormals (cv 0.5 and 1) and the paper's appendix
    shape (``slow_frac`` of the batches ``slow_factor``× slower than the rest)."""
    from ._batch import LogNormalMixBatch

    sigma = 0.1
    fast = b_mean / (math.exp(sigma**2 / 2) * ((1 - slow_frac) + slow_frac * slow_factor))
    return {"lognormal cv=0.5": LogNormalMixBatch.from_mean_cv(b_mean, 0.5),
            "lognormal cv=1": LogNormalMixBatch.from_mean_cv(b_mean, 1.0),
            f"two-speed: {slow_frac:.0%} of batches {slow_factor:g}× slower":
                LogNormalMixBatch.two_speed(fast, slow_factor * fast, slow_frac, sigma)}


def default_affine(ref_workload, M, chunk, b_mean, shares=(0.35, 0.2, 0.15, 0.3)) -> tuple:
    """Affine coefficients (a0, a1, a2, a3) that make a saturated server on ``ref_workload`` average about
    ``b_mean`` per step, split into a fixed cost, prefill tokens, decode tokens and KV memory read by ``shares``.

    At saturation a server completes about c = M/E[g_exact] requests per step, so it processes about c·E[s] prefill
    and c·E[o] decode tokens per step and holds about M tokens of KV cache.
    """
    m = ref_workload.expected_g(chunk)
    c = M / m.g_exact
    f0, f1, f2, f3 = (float(x) / float(sum(shares)) for x in shares)
    return (f0 * b_mean, f1 * b_mean / (c * m.mean_s), f2 * b_mean / (c * m.mean_o), f3 * b_mean / M)


def b_error(workload=None, *, M=None, chunk=None, b=None, total_hi=None, models=None,
            estimators=("mean", "median", "trimmed:0.05", "trimmed:0.1"), rel_errors=None, n_samples: int = 1_000_000,
            affine=None, affine_ratios=None, parts=("closed_form", "iid", "affine"), replicas=None, steps=None,
            warmup=None, K=None, seed: int = 0, quick: bool = False, out=None, progress: bool = False) -> StudyResult:
    """How the batch-time estimate b̂ moves the capacity estimate, against simulated λ*.

    Three parts (rows tagged by ``part``):

    * ``closed_form``: μ ∝ 1/b̄, so b̂ = b̄(1+ε) gives μ̂/μ − 1 = −ε/(1+ε) (no simulation).
    * ``iid``: for i.i.d. random batch times (``models``, default :func:`default_b_models`, all with mean b̄),
      λ* = saturation throughput (lqs.critical) against μ_exact computed with b̂ from the mean, median and trimmed
      means of ``n_samples`` draws of the model's own distribution. ``rel_miss`` = μ̂_exact/λ* − 1;
      ``rel_miss_vs_const`` compares with λ*_const·b̄/b̂ instead (λ*_const: the same workload with constant b̄, same
      random numbers), which isolates the estimator from the KV-packing loss ≤ δ. Renewal–reward: with batch
      times independent of the batch, throughput = completions per step / E[b], so the *mean* predicts λ*.
    * ``affine``: b_n = a0 + a1·prefill + a2·decode + a3·memory (``affine`` = (a0, a1, a2, a3)) for P/D mixes
      ``affine_ratios`` (default coefficients: :func:`default_affine`): λ* against the closed form with b̄ = the mean
      batch time observed at saturation, at a light load (λ = ½λ*), and at saturation on the 1:1 mix (one b̄
      measured once, used for every mix).
    """
    from ._batch import AffineBatch, ConstantBatch
    from ._critical import critical
    from ._engine import simulate
    from ._theory import capacity, estimate_b
    from ._workload import pd_ratio

    d = _defaults(quick, M=M, chunk=chunk, b=b, total_hi=total_hi, replicas=replicas, steps=steps, warmup=warmup)
    bad = set(parts) - {"closed_form", "iid", "affine"}
    if bad:
        raise LqsError("parts", sorted(bad), "must be among closed_form, iid, affine")
    workload = _fast_1to1(d["total_hi"]) if workload is None else workload
    cap = capacity(workload, d["M"], d["chunk"], d["b"])
    rows = []
    meta = dict(study="b_error", workload=_label(workload), M_tokens=d["M"], chunk_tokens=d["chunk"], b_s=d["b"],
                delta=cap.delta, replicas=d["replicas"], steps=d["steps"], warmup=d["warmup"], quick=quick,
                parts=list(parts))
    common = dict(part="", case="", estimator="", b_hat_s=np.nan, b_rel_err=np.nan, mu_hat_rps=np.nan,
                  mu_exact_hat_rps=np.nan, lam_star_rps=np.nan, lam_star_se_rps=np.nan, rel_miss=np.nan,
                  miss_in_se=np.nan, rel_miss_vs_const=np.nan, miss_vs_const_in_se=np.nan, mem_util=np.nan)

    # (a) closed form
    if "closed_form" in parts:
        eps = np.linspace(-0.5, 1.0, 31) if rel_errors is None else np.asarray(rel_errors, np.float64)
        for e in eps:
            rows.append({**common, "part": "closed_form", "case": "b̂ = b̄(1+ε)", "estimator": f"ε={e:+.3f}",
                         "b_rel_err": float(e), "b_hat_s": d["b"] * (1 + e), "mu_hat_rps": cap.mu_rps / (1 + e),
                         "mu_exact_hat_rps": cap.mu_exact_rps / (1 + e), "rel_miss": float(1 / (1 + e) - 1)})

    # (b) i.i.d. random batch times
    if "iid" in parts:
        models = default_b_models(d["b"]) if models is None else dict(models)
        key = _key(seed, 1)  # one key for every model: common random numbers (same requests, same arrivals)
        kw = dict(M=d["M"], chunk=d["chunk"], replicas=d["replicas"], steps=d["steps"], warmup=d["warmup"], key=key,
                  grid_points=0, K=K, progress=progress)
        c0 = critical(workload, b=ConstantBatch(d["b"]), **kw).summary
        ls0, se0 = c0["lam_star_rps"], c0["lam_star_se_rps"]
        rows.append({**common, "part": "iid", "case": f"constant b̄={d['b']:g} s", "estimator": "exact",
                     "b_hat_s": d["b"], "b_rel_err": 0.0, "mu_hat_rps": cap.mu_rps, "mu_exact_hat_rps": cap.mu_exact_rps,
                     "lam_star_rps": ls0, "lam_star_se_rps": se0, "rel_miss": cap.mu_exact_rps / ls0 - 1,
                     "miss_in_se": (cap.mu_exact_rps - ls0) / se0, "rel_miss_vs_const": 0.0,
                     "miss_vs_const_in_se": 0.0})
        heads = {}
        for mi, (name, model) in enumerate(models.items()):
            x = _draw_b(model, check_int("n_samples", n_samples, 10), seed + 17 + mi)
            true_mean = float(model.mean_s) if hasattr(model, "mean_s") else float(x.mean())
            c = critical(workload, b=model, b_theory=true_mean, **kw).summary
            ls, se = c["lam_star_rps"], c["lam_star_se_rps"]
            hm = {}
            for est in estimators:
                bh = estimate_b(x, est)
                mu_e = cap.mu_exact_rps * d["b"] / bh
                pred_c = ls0 * d["b"] / bh  # λ*_const (constant b̄) rescaled to b̂: renewal–reward
                se_c = math.hypot(se, se0 * d["b"] / bh)
                rows.append({**common, "part": "iid", "case": name, "estimator": est, "b_hat_s": bh,
                             "b_rel_err": bh / true_mean - 1, "mu_hat_rps": cap.mu_rps * d["b"] / bh,
                             "mu_exact_hat_rps": mu_e, "lam_star_rps": ls, "lam_star_se_rps": se,
                             "rel_miss": mu_e / ls - 1, "miss_in_se": (mu_e - ls) / se,
                             "rel_miss_vs_const": pred_c / ls - 1, "miss_vs_const_in_se": (pred_c - ls) / se_c})
                hm[est] = dict(b_hat_s=bh, rel_miss=mu_e / ls - 1, rel_miss_vs_const=pred_c / ls - 1,
                               miss_vs_const_in_se=(pred_c - ls) / se_c)
            heads[name] = dict(lam_star_rps=ls, lam_star_se_rps=se, mean_s=true_mean,
                               median_s=float(np.median(x)), estimators=hm)
        meta["iid"] = dict(lam_star_const_rps=ls0, lam_star_const_se_rps=se0, mu_exact_rps=cap.mu_exact_rps,
                           models=heads)

    # (c) affine, composition-dependent batch times
    if "affine" in parts:
        ratios = tuple(affine_ratios) if affine_ratios is not None else ((8.0, 2.0, 1.0, 0.5) if not quick
                                                                          else (8.0, 1.0, 0.5))
        if 1.0 not in ratios:
            ratios = ratios + (1.0,)
        if affine is None:
            affine = default_affine(pd_ratio(1.0, total_hi=d["total_hi"]), d["M"], d["chunk"], d["b"])
        bt = AffineBatch(*affine)
        aff = {}
        for ri, r in enumerate(ratios):
            w = pd_ratio(r, total_hi=d["total_hi"])
            cap_r = capacity(w, d["M"], d["chunk"], 1.0)  # μ with b̄ = 1 s; scale by 1/b̄
            b_lo = affine[0] + affine[3] * d["M"] * (1 - cap_r.delta)  # ≤ every saturated step: λ_sat > λ*
            K_r = K
            if K_r is None:  # the engine sizes an affine model by its loose upper bound max_s: far too many slots
                from ._engine import size_engine

                m = w.expected_g(d["chunk"])
                c_sat = d["M"] / m.g_exact  # completions per step at saturation
                b_est = affine[0] + affine[1] * c_sat * m.mean_s + affine[2] * c_sat * m.mean_o + affine[3] * d["M"]
                K_r = size_engine(w, d["M"], d["chunk"], 1.3 * cap_r.mu_rps / b_lo, ConstantBatch(2 * b_est), "fcfs",
                                  64).K
            c = critical(w, M=d["M"], chunk=d["chunk"], b=bt, b_theory=b_lo, replicas=d["replicas"],
                         steps=d["steps"], warmup=d["warmup"], key=_key(seed, 100 + ri), grid_points=0, K=K_r,
                         progress=progress)
            ls, se = c.summary["lam_star_rps"], c.summary["lam_star_se_rps"]
            rep = c.saturation.replicas
            b_sat = float((rep.window_s / (rep.steps - rep.warmup_steps)).mean())
            light = simulate(w, M=d["M"], chunk=d["chunk"], lam=0.5 * ls, b=bt, replicas=d["replicas"],
                             steps=d["steps"], warmup=d["warmup"], key=_key(seed, 200 + ri), K=K_r,
                             b_theory=b_lo, progress=progress)
            lr = light.replicas
            b_light = float((lr.window_s / (lr.steps - lr.warmup_steps)).mean())
            aff[r] = dict(w=w, cap=cap_r, lam_star=ls, se=se, b_sat=b_sat, b_light=b_light,
                          mem_util=float(c.saturation.summary.iloc[0].mem_util),
                          reliable=bool(c.summary["reliable"]) and bool(light.reliable))
        b_ref = aff[1.0]["b_sat"]
        for r in ratios:
            a = aff[r]
            for est, bh in (("mean b at saturation (this mix)", a["b_sat"]),
                            ("mean b at λ = ½λ* (this mix)", a["b_light"]),
                            ("mean b at saturation on 1:1", b_ref)):
                mu_e = a["cap"].mu_exact_rps / bh
                rows.append({**common, "part": "affine", "case": f"P/D {_ratio_label(r)}", "estimator": est,
                             "b_hat_s": bh, "b_rel_err": bh / a["b_sat"] - 1, "mu_hat_rps": a["cap"].mu_rps / bh,
                             "mu_exact_hat_rps": mu_e, "lam_star_rps": a["lam_star"], "lam_star_se_rps": a["se"],
                             "rel_miss": mu_e / a["lam_star"] - 1, "miss_in_se": (mu_e - a["lam_star"]) / a["se"],
                             "mem_util": a["mem_util"], "reliable": a["reliable"]})
        meta["affine"] = dict(coefficients=dict(a0_s=affine[0], a1_s_per_prefill_token=affine[1],
                                                a2_s_per_decode_token=affine[2], a3_s_per_kv_token=affine[3]),
                              ratios=list(ratios))
    df = pd.DataFrame(rows)

    plt = _plt()
    panels = [p for p in ("closed_form", "iid", "affine") if p in parts]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.0), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sub = df[df.part == p]
        if p == "closed_form":
            ax.plot(100 * sub.b_rel_err, 100 * sub.rel_miss, "C0-", lw=2, label="μ̂/μ − 1 = −ε/(1+ε)")
            ax.axhline(0, color="k", lw=0.6)
            ax.axvline(0, color="k", lw=0.6)
            ax.set_xlabel("relative error of b̂, ε = b̂/b̄ − 1 (%)")
            ax.set_ylabel("relative error of μ̂ (%)")
            ax.set_title("(a) b̄ error → μ error (closed form)", fontsize=10)
        elif p == "iid":
            cases = [c for c in sub.case.unique() if not c.startswith("constant")]
            ests = list(estimators)
            wdt = 0.8 / max(1, len(ests))
            for j, est in enumerate(ests):
                vals = [float(sub[(sub.case == c) & (sub.estimator == est)].rel_miss.iloc[0]) for c in cases]
                errs = [float((sub[(sub.case == c) & (sub.estimator == est)].lam_star_se_rps
                               / sub[(sub.case == c) & (sub.estimator == est)].lam_star_rps).iloc[0]) for c in cases]
                ax.bar(np.arange(len(cases)) + (j - (len(ests) - 1) / 2) * wdt, 100 * np.asarray(vals), wdt,
                       yerr=196 * np.asarray(errs), capsize=3, label=f"b̂ = {est}")
            ax.axhline(0, color="k", lw=0.8)
            ax.axhline(-100 * cap.delta, color="grey", ls=":", lw=1, label=f"−δ = {-100 * cap.delta:.1f}% (packing bound)")
            ax.set_xticks(np.arange(len(cases)))
            ax.set_xticklabels([c.replace(": ", ":\n") for c in cases], fontsize=8)
            ax.set_ylabel("μ_exact(b̂)/λ* − 1 (%)  [> 0: over-predicts]")
            ax.set_title(f"(b) i.i.d. batch times (mean {d['b']:g} s): which b̂ predicts λ*", fontsize=10)
        else:
            cases = list(sub.case.unique())
            ests = list(sub.estimator.unique())
            wdt = 0.8 / max(1, len(ests))
            for j, est in enumerate(ests):
                vals = [float(sub[(sub.case == c) & (sub.estimator == est)].rel_miss.iloc[0]) for c in cases]
                ax.bar(np.arange(len(cases)) + (j - (len(ests) - 1) / 2) * wdt, 100 * np.asarray(vals), wdt,
                       label=est)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xticks(np.arange(len(cases)))
            ax.set_xticklabels(cases)
            ax.set_ylabel("μ_exact(b̂)/λ* − 1 (%)  [> 0: over-predicts]")
            a = meta["affine"]["coefficients"]
            ax.set_title("(c) affine b = a0 + a1·prefill + a2·decode + a3·KV: b̄ measured where?\n"
                         f"a0={a['a0_s'] * 1e3:.3g} ms, a1={a['a1_s_per_prefill_token'] * 1e6:.3g} µs/token, "
                         f"a2={a['a2_s_per_decode_token'] * 1e6:.3g} µs/token, a3={a['a3_s_per_kv_token'] * 1e9:.3g} ns/token",
                         fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.suptitle(f"Batch-time estimate vs simulated critical rate\n{_label(workload)}, M={d['M']:,}, ŝ={d['chunk']}",
                 fontsize=10.5)
    fig.tight_layout()
    return _write("b_error", df, meta, fig, out)


# ----------------------------------------------------------------------------------------------- 3. δ
def delta_study(workload=None, *, deltas=None, chunk=None, b=None, total_hi=None,
                policies=("fcfs", "recompute", "reserve"), overload: float = 1.3, replicas=None, steps=None,
                warmup=None, K=None, seed: int = 0, quick: bool = False, out=None,
                progress: bool = False) -> StudyResult:
    """λ* (saturation throughput) against [μ_exact(1−δ), μ_exact] as the largest request grows against M.

    The workload is fixed (default P/D 1:1 with s, o ~ U{10..200}, so max(s+o) = 400) and M = ⌈max(s+o)/δ⌉
    shrinks. ``total_hi`` resizes the default workload. One simulate call
    per policy covers every M (M is vmapped) at λ = ``overload``·μ of the largest M, which saturates all of them.
    """
    from ._engine import auto_steps, simulate
    from ._theory import capacity

    d = _defaults(quick, chunk=chunk, b=b, replicas=replicas, steps=steps, warmup=warmup)
    if workload is None:
        workload = _fast_1to1(400 if total_hi is None else check_int("total_hi", total_hi, 2))
    if deltas is None:
        deltas = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5) if quick else (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    deltas = [check_float("delta", x, 0.0, 1.0, lo_open=True) for x in np.atleast_1d(deltas)]
    mt = int(workload.max_total)
    Ms = sorted({int(math.ceil(mt / x)) for x in deltas}, reverse=True)
    caps = {m: capacity(workload, m, d["chunk"], d["b"]) for m in Ms}
    lam = check_float("overload", overload, 1.0, lo_open=True) * max(c.mu_rps for c in caps.values())
    steps_ = d["steps"] if d["steps"] is not None else auto_steps(workload, Ms, d["chunk"], d["b"], d["warmup"])
    rows = []
    for pi, pol in enumerate(policies):
        res = simulate(workload, M=Ms, chunk=d["chunk"], lam=lam, b=d["b"], policy=pol, replicas=d["replicas"],
                       steps=steps_, warmup=d["warmup"], key=_key(seed, pi), K=K, progress=progress)
        for _, r in res.summary.iterrows():
            c = caps[int(r.M_tokens)]
            ls, se = _sat(r)
            rows.append(dict(policy=pol, M_tokens=int(r.M_tokens), delta=c.delta, max_total_tokens=mt,
                             mu_rps=c.mu_rps, mu_exact_rps=c.mu_exact_rps, mu_exact_stable_rps=c.mu_exact_stable_rps,
                             lam_star_rps=ls, lam_star_se_rps=se, lam_star_over_mu_exact=ls / c.mu_exact_rps,
                             band_lo_over_mu_exact=1 - c.delta,
                             in_band=bool(c.mu_exact_stable_rps - 4 * se <= ls <= c.mu_exact_rps + 4 * se),
                             mem_util=float(r.mem_util), swaps_per_s=float(r.swaps_per_s),
                             saturated=float(r.waiting_final_mean) > 0, replicas=int(r.replicas), steps=int(r.steps),
                             reliable=bool(r.reliable)))
    df = pd.DataFrame(rows).sort_values(["policy", "delta"]).reset_index(drop=True)
    if "fcfs" in policies:
        f = df[df.policy == "fcfs"].set_index("M_tokens")
        df["lam_star_over_fcfs"] = [r.lam_star_rps / f.loc[r.M_tokens, "lam_star_rps"] for r in df.itertuples()]
    meta = dict(study="delta", workload=_label(workload), max_total_tokens=mt, chunk_tokens=d["chunk"], b_s=d["b"],
                deltas=deltas, M_tokens=Ms, lam_saturation_rps=lam, policies=list(policies), replicas=d["replicas"],
                steps=steps_, warmup=d["warmup"], quick=quick,
                fcfs_all_in_band=bool(df[df.policy == "fcfs"].in_band.all()) if "fcfs" in policies else None,
                reliable=bool(df.reliable.all()))

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.8, 5.0))
    dd = np.linspace(min(df.delta) * 0.9, max(df.delta) * 1.05, 100)
    ax.fill_between(dd, 1 - dd, 1, color="C2", alpha=0.15, label="theory band [μ_exact(1−δ), μ_exact]")
    ax.plot(dd, 1 - dd, "C2--", lw=1)
    ax.axhline(1, color="C2", lw=1)
    for i, pol in enumerate(policies):
        s = df[df.policy == pol]
        ax.errorbar(s.delta, s.lam_star_over_mu_exact, yerr=1.96 * s.lam_star_se_rps / s.mu_exact_rps, marker="os^"[i % 3],
                    capsize=3, label=f"{pol}: simulated λ*")
    ax.set_xscale("log")
    ax.set_xlabel("δ = max(s+o) / M  (M shrinks from left to right)")
    ax.set_ylabel("λ* / μ_exact")
    ax.set_title(f"Saturation throughput against the δ band — {_label(workload)}, ŝ={d['chunk']}, b̄={d['b']:g} s\n"
                 f"M from {max(Ms):,} to {min(Ms):,} tokens; {d['replicas']} replicas, 95% intervals", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _write("delta", df, meta, fig, out)


# ----------------------------------------------------------------------------------------------- 4. mixtures
def _mixture_theory(parts, lams, durations, M, chunk, b) -> dict:
    """μ_ℓ of each phase workload and μ_mix with request-count weights (λ_ℓ·T_ℓ) and with time weights (T_ℓ)."""
    from ._theory import capacity, mu_mix

    caps = [capacity(w, M, chunk, b) for w in parts]
    lams = np.asarray(lams, np.float64)
    T = np.asarray(durations, np.float64)
    q_count = lams * T / np.sum(lams * T)
    q_time = T / T.sum()
    out = {}
    for tag, attr in (("", "mu_rps"), ("_exact", "mu_exact_rps")):
        mus = [getattr(c, attr) for c in caps]
        out[f"mu{tag}_phases_rps"] = mus
        out[f"mu{tag}_mix_count_rps"] = mu_mix(mus, q_count)
        out[f"mu{tag}_mix_time_rps"] = mu_mix(mus, q_time)
        out[f"mu{tag}_time_avg_rps"] = float(np.sum(q_time * np.asarray(mus)))  # Σ τ_ℓ μ_ℓ
    out.update(q_count=q_count.tolist(), q_time=q_time.tolist(), delta=max(c.delta for c in caps),
               lam_mean_rps=float(np.sum(lams * T) / T.sum()))
    return out


def mixture_study(parts=None, *, lam_ratio=(1.0, 1.0), time_frac=(0.5, 0.5), M=None, chunk=None, b=None,
                  total_hi=None, cycles: int = 24, load=(0.8, 1.2), n_load=None, replicas=None, steps=None,
                  warmup=None, K=None, seed: int = 0, quick: bool = False, out=None,
                  progress: bool = False) -> StudyResult:
    """A piecewise-stationary schedule (the paper's P/D 2:1 → 1:2, repeated) against μ_mix.

    Phase ℓ runs workload ``parts[ℓ]`` for a fraction ``time_frac[ℓ]`` of each cycle at a rate ∝ ``lam_ratio[ℓ]``.
    Theory: μ_mix = (Σ q_ℓ/μ_ℓ)^−1 with request-count weights q_ℓ ∝ λ_ℓ·T_ℓ (the long-run work balance), with time
    weights q_ℓ ∝ T_ℓ (equal to the count weights when the rates are equal), and the time average Σ τ_ℓ μ_ℓ.

    Simulated: (i) P(unstable) over a common load factor x of all rates, the mean rate λ̄ = x·μ_exact,mix(count);
    the crossing P = ½ is the phased schedule's λ*. The whole x grid is one compiled call: with a constant batch
    time, running at b̄·x is exactly the schedule at x times the rates and 1/x times the phase lengths at b̄ (time
    rescaling), so b is the vmapped axis. ``cycles`` cycles fit the horizon at x = 1. (ii) Each phase's workload
    alone at saturation (λ*_ℓ), combined with the count weights.
    """
    from ._critical import critical
    from ._engine import simulate
    from ._theory import mu_mix
    from ._workload import pd_ratio

    d = _defaults(quick, M=M, chunk=chunk, b=b, total_hi=total_hi, replicas=replicas, steps=steps, warmup=warmup)
    if parts is None:
        parts = [pd_ratio(2.0, total_hi=d["total_hi"]), pd_ratio(0.5, total_hi=d["total_hi"])]
        names = ["P/D 2:1", "P/D 1:2"]
    else:
        names = [f"phase {i + 1}" for i in range(len(parts))]
    parts = list(parts)
    if not (len(parts) == len(lam_ratio) == len(time_frac)) or len(parts) < 2:
        raise LqsError("parts", len(parts), "need ≥ 2 parts with one lam_ratio and one time_frac each")
    lr = np.asarray([check_float("lam_ratio", x, 0.0, lo_open=True) for x in lam_ratio])
    tf = np.asarray([check_float("time_frac", x, 0.0, lo_open=True) for x in time_frac])
    tf = tf / tf.sum()
    th = _mixture_theory(parts, lr, tf, d["M"], d["chunk"], d["b"])
    n_load = check_int("n_load", n_load if n_load is not None else (7 if quick else 11), 2, 1000)
    xs = np.linspace(check_float("load", load[0], 0.0, lo_open=True), check_float("load", load[1], 0.0), n_load)
    steps_ = d["steps"]
    if steps_ is None:
        from ._engine import auto_steps

        steps_ = max(auto_steps(w, d["M"], d["chunk"], d["b"], d["warmup"]) for w in parts)
    cycles = check_int("cycles", cycles, 1)
    # rates at x = 1: mean λ̄ = μ_exact,mix(count), split in proportion lam_ratio over the time fractions
    lam_bar = th["mu_exact_mix_count_rps"]
    lams = lr * lam_bar / np.sum(lr * tf)
    cycle_s = steps_ * d["b"] / cycles
    n_cyc = int(math.ceil(cycles * xs.max() * 1.05)) + 1
    phases = [(float(tf[j] * cycle_s), float(lams[j]), parts[j]) for _ in range(n_cyc) for j in range(len(parts))]
    res = simulate(None, M=d["M"], chunk=d["chunk"], lam=None, b=[d["b"] * x for x in xs], replicas=d["replicas"],
                   steps=steps_, warmup=d["warmup"], key=_key(seed, 0), K=K, phases=phases, progress=progress)
    s = res.summary
    rows = []
    for x, (_, r) in zip(xs, s.iterrows()):
        rows.append(dict(kind="phased", load_factor=float(x), lam_mean_rps=float(x * lam_bar),
                         **{f"lam_phase{j + 1}_rps": float(x * lams[j]) for j in range(len(parts))},
                         p_unstable=float(r.p_unstable), p_unstable_lo=float(r.p_unstable_lo),
                         p_unstable_hi=float(r.p_unstable_hi), throughput_rps=float(x * r.throughput_rps),
                         wait_p99_s=float(r.wait_p99_s / x), latency_reliable=bool(r.latency_reliable),
                         reliable=bool(r.reliable)))
    lam_star_grid = _crossing([rr["lam_mean_rps"] for rr in rows], [rr["p_unstable"] for rr in rows])
    # (ii) every phase workload alone at saturation
    sat = []
    for j, w in enumerate(parts):
        c = critical(w, M=d["M"], chunk=d["chunk"], b=d["b"], replicas=d["replicas"], steps=steps_,
                     warmup=d["warmup"], key=_key(seed, 10 + j), grid_points=0, K=K, progress=progress).summary
        sat.append((c["lam_star_rps"], c["lam_star_se_rps"]))
        rows.append(dict(kind=f"saturation {names[j]}", lam_star_rps=c["lam_star_rps"],
                         lam_star_se_rps=c["lam_star_se_rps"], mu_rps=th["mu_phases_rps"][j],
                         mu_exact_rps=th["mu_exact_phases_rps"][j], reliable=bool(c["reliable"])))
    lam_star_phases = mu_mix([x for x, _ in sat], th["q_count"])
    df = pd.DataFrame(rows)
    for k in ("mu_mix_count_rps", "mu_mix_time_rps", "mu_time_avg_rps", "mu_exact_mix_count_rps",
              "mu_exact_mix_time_rps", "mu_exact_time_avg_rps"):
        df[k] = th[k]
    meta = dict(study="mixture", phases=names, workloads=[_label(w) for w in parts], lam_ratio=lr.tolist(),
                time_frac=tf.tolist(), M_tokens=d["M"], chunk_tokens=d["chunk"], b_s=d["b"], cycles=cycles,
                cycle_s_at_x1=cycle_s, load_factors=xs.tolist(), replicas=d["replicas"], steps=steps_,
                warmup=d["warmup"], quick=quick, lam_star_grid_rps=lam_star_grid,
                lam_star_from_phase_saturation_rps=lam_star_phases,
                phase_saturation_rps=[x for x, _ in sat], phase_saturation_se_rps=[e for _, e in sat],
                grid_step_rps=float((xs[1] - xs[0]) * lam_bar), **th)

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.0))
    g = df[df.kind == "phased"]
    ax.errorbar(g.lam_mean_rps, g.p_unstable, yerr=[g.p_unstable - g.p_unstable_lo, g.p_unstable_hi - g.p_unstable],
                fmt="ko-", capsize=3, label="simulated phased schedule: P(unstable)")
    lines = [(th["mu_exact_mix_count_rps"], "C0", "-", "μ_exact,mix — request-count weights λ_ℓT_ℓ"),
             (th["mu_exact_mix_time_rps"], "C1", "--", "μ_exact,mix — time weights T_ℓ"),
             (th["mu_exact_time_avg_rps"], "C3", ":", "Σ τ_ℓ μ_exact,ℓ (time average of rates)"),
             (lam_star_phases, "C2", "-.", "phases at saturation, count-weighted (simulated)")]
    for v, c, ls, lab in lines:
        ax.axvline(v, color=c, ls=ls, lw=1.8, label=f"{lab}: {v:.3g}")
    for j, m in enumerate(th["mu_exact_phases_rps"]):
        ax.axvline(m, color="grey", lw=0.8, alpha=0.6)
        ax.text(m, 0.5, f" μ_exact {names[j]} ", rotation=90, fontsize=7, va="center", ha="right", color="grey")
    ax.set_ylim(-0.03, 1.15)
    ax.set_xlabel("mean arrival rate λ̄ over a cycle (requests/s)")
    ax.set_ylabel("P(unstable) (fraction of replicas)")
    sched = " → ".join(f"{names[j]} ({tf[j]:.0%} of time, λ×{lr[j]:g})" for j in range(len(parts)))
    ax.set_title(f"Piecewise-stationary mixture: {sched}, repeated\nM={d['M']:,}, ŝ={d['chunk']}, b̄={d['b']:g} s; "
                 f"{d['replicas']} replicas per point", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    return _write("mixture", df, meta, fig, out)


# ----------------------------------------------------------------------------------------------- 5. clusters
def cluster_study(workload=None, *, servers: int = 8, routings=("round_robin", "random", "jsq", "least_kv"),
                  rhos=None, M=None, chunk=None, b=None, total_hi=None, saturation: bool = True, replicas=None,
                  steps=None, warmup=None, K=None, seed: int = 0, quick: bool = False, out=None,
                  progress: bool = False) -> StudyResult:
    """G servers in lock-step behind a router: how the routing rule changes λ* and the waiting-time percentiles.

    For each routing: one simulate call over λ = ρ·G·μ (``rhos``) for the latency percentiles, and (``saturation``)
    the cluster's saturation throughput λ* (lqs.critical with ``servers=G``). The default is the paper's 8-replica
    P/D 1:1 case (Table 3: μ_theory 25.808, measured 26.710 requests/s, round robin).
    """
    import inspect

    from ._critical import critical
    from ._engine import simulate
    from ._theory import capacity

    if "servers" not in inspect.signature(simulate).parameters:  # pragma: no cover - older engine
        raise LqsError("servers", servers, "this lqs.simulate has no cluster support")
    d = _defaults(quick, M=M, chunk=chunk, b=b, total_hi=total_hi, replicas=replicas, steps=steps, warmup=warmup)
    if workload is None:
        workload = _fast_1to1(d["total_hi"])
    G = check_int("servers", servers, 1, 4096)
    rhos = np.asarray(rhos if rhos is not None else ((0.5, 0.8, 0.9, 0.95) if quick else
                                                      (0.5, 0.7, 0.8, 0.85, 0.9, 0.95)), np.float64)
    cap = capacity(workload, d["M"], d["chunk"], d["b"])
    lams = rhos * G * cap.mu_rps
    rows, sat = [], {}
    for i, rt in enumerate(routings):
        res = simulate(workload, M=d["M"], chunk=d["chunk"], lam=lams, b=d["b"], replicas=d["replicas"],
                       steps=d["steps"], warmup=d["warmup"], key=_key(seed, i), K=K, servers=G, routing=rt,
                       progress=progress)
        if saturation:
            c = critical(workload, M=d["M"], chunk=d["chunk"], b=d["b"], replicas=d["replicas"], steps=d["steps"],
                         warmup=d["warmup"], key=_key(seed, 100 + i), grid_points=0, K=K, servers=G, routing=rt,
                         progress=progress).summary
            sat[rt] = (c["lam_star_rps"], c["lam_star_se_rps"])
        ls, se = sat.get(rt, (np.nan, np.nan))
        for rho, (_, r) in zip(rhos, res.summary.iterrows()):
            rows.append(dict(routing=rt, servers=G, rho=float(rho), lam_rps=float(r.lam_rps),
                             mu_cluster_rps=G * cap.mu_rps, mu_exact_cluster_rps=G * cap.mu_exact_rps,
                             p_unstable=float(r.p_unstable), throughput_rps=float(r.throughput_rps),
                             wait_mean_s=float(r.wait_mean_s), wait_p50_s=float(r.wait_p50_s),
                             wait_p90_s=float(r.wait_p90_s), wait_p99_s=float(r.wait_p99_s),
                             ttft_p99_s=float(r.ttft_p99_s), e2e_p99_s=float(r.e2e_p99_s), lam_star_rps=ls,
                             lam_star_se_rps=se, lam_star_over_mu_exact=ls / (G * cap.mu_exact_rps),
                             replicas=int(r.replicas), steps=int(r.steps), reliable=bool(r.reliable),
                             latency_reliable=bool(r.latency_reliable)))
    df = pd.DataFrame(rows)
    meta = dict(study="cluster", workload=_label(workload), servers=G, routings=list(routings), rhos=rhos.tolist(),
                M_tokens=d["M"], chunk_tokens=d["chunk"], b_s=d["b"], mu_cluster_rps=G * cap.mu_rps,
                mu_exact_cluster_rps=G * cap.mu_exact_rps, lam_star_rps={k: v[0] for k, v in sat.items()},
                lam_star_se_rps={k: v[1] for k, v in sat.items()}, paper_table3=PAPER_CLUSTER,
                replicas=d["replicas"], steps=d["steps"], warmup=d["warmup"], quick=quick,
                reliable=bool(df.reliable.all()))

    plt = _plt()
    n_p = 2 if saturation else 1
    fig, axes = plt.subplots(1, n_p, figsize=(6.4 * n_p, 4.9), squeeze=False)
    ax = axes[0, 0]
    for i, rt in enumerate(routings):
        s = df[df.routing == rt]
        ax.plot(s.rho, s.wait_p99_s, marker="o", color=f"C{i}", label=f"{rt}: p99")
        ax.plot(s.rho, s.wait_mean_s, ls="--", marker=".", color=f"C{i}", alpha=0.7, label=f"{rt}: mean")
    ax.set_yscale("log")
    ax.set_xlabel("utilisation ρ = λ / (G·μ)")
    ax.set_ylabel("waiting time before the first schedule (s)")
    ax.set_title(f"Waiting time by routing, G={G} servers", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    if saturation:
        ax = axes[0, 1]
        x = np.arange(len(routings))
        v = np.asarray([sat[r][0] for r in routings])
        e = np.asarray([sat[r][1] for r in routings])
        for i in range(len(routings)):
            ax.errorbar(x[i], v[i], yerr=1.96 * e[i], fmt="o", ms=9, capsize=6, color=f"C{i}")
        ax.axhline(G * cap.mu_rps, color="k", lw=1.5, label=f"G·μ (closed form) = {G * cap.mu_rps:.4g}")
        ax.axhline(G * cap.mu_stable_rps, color="k", ls="--", lw=1, label=f"G·μ(1−δ) = {G * cap.mu_stable_rps:.4g}")
        if G == PAPER_CLUSTER["servers"] and d["M"] == PAPER_M:
            ax.axhline(PAPER_CLUSTER["mu_measured_rps"], color="C3", ls=":", lw=1.5,
                       label=f"paper Table 3, measured: {PAPER_CLUSTER['mu_measured_rps']}")
            ax.axhline(PAPER_CLUSTER["mu_theory_rps"], color="C3", ls="-.", lw=1,
                       label=f"paper Table 3, μ_theory: {PAPER_CLUSTER['mu_theory_rps']}")
        ax.set_xticks(x)
        ax.set_xticklabels(routings)
        ax.set_xlim(-0.6, len(routings) - 0.4)
        lo = min(v.min(), G * cap.mu_stable_rps) * 0.97
        ax.set_ylim(lo, max(v.max(), G * cap.mu_rps) * 1.02)
        ax.set_ylabel("critical rate λ* (requests/s, 95% interval)")
        ax.set_title("Cluster saturation throughput λ* by routing", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7.5, loc="lower right")
    fig.suptitle(f"{G}-server cluster — {_label(workload)}, M={d['M']:,}/server, ŝ={d['chunk']}, b̄={d['b']:g} s; "
                 f"{d['replicas']} replicas", fontsize=10.5)
    fig.tight_layout()
    return _write("cluster", df, meta, fig, out)


# ----------------------------------------------------------------------------------------------- 6. latency
def latency_study(workload=None, *, rhos=None, M=None, chunk=None, b=None, total_hi=None, policy: str = "fcfs",
                  replicas=None, steps=None, warmup=None, K=None, seed: int = 0, quick: bool = False, out=None,
                  progress: bool = False) -> StudyResult:
    """Waiting time and TTFT percentiles (p50, p90, p99) against utilisation ρ = λ/μ (one simulate call)."""
    from ._engine import simulate
    from ._theory import capacity

    d = _defaults(quick, M=M, chunk=chunk, b=b, total_hi=total_hi, replicas=replicas, steps=steps, warmup=warmup)
    if workload is None:
        workload = _fast_1to1(d["total_hi"])
    if rhos is None:
        rhos = np.linspace(0.3, 0.95, 8 if quick else 14)
    rhos = np.asarray([check_float("rho", x, 0.0, lo_open=True) for x in np.atleast_1d(rhos)])
    cap = capacity(workload, d["M"], d["chunk"], d["b"])
    res = simulate(workload, M=d["M"], chunk=d["chunk"], lam=rhos * cap.mu_rps, b=d["b"], policy=policy,
                   replicas=d["replicas"], steps=d["steps"], warmup=d["warmup"], key=_key(seed), K=K,
                   progress=progress)
    cols = [f"{m}_{q}_s" for m in ("wait", "ttft", "e2e") for q in ("mean", "p50", "p90", "p99")]
    rows = []
    for rho, (_, r) in zip(rhos, res.summary.iterrows()):
        rows.append(dict(rho=float(rho), lam_rps=float(r.lam_rps), rho_exact=float(r.lam_rps) / cap.mu_exact_rps,
                         mu_rps=cap.mu_rps, mu_stable_rps=cap.mu_stable_rps, p_unstable=float(r.p_unstable),
                         throughput_rps=float(r.throughput_rps), mem_util=float(r.mem_util),
                         **{c: float(r[c]) for c in cols}, policy=policy, replicas=int(r.replicas), steps=int(r.steps),
                         reliable=bool(r.reliable), latency_reliable=bool(r.latency_reliable)))
    df = pd.DataFrame(rows)
    meta = dict(study="latency", workload=_label(workload), M_tokens=d["M"], chunk_tokens=d["chunk"], b_s=d["b"],
                policy=policy, mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps, delta=cap.delta,
                replicas=d["replicas"], steps=d["steps"], warmup=d["warmup"], quick=quick)

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, m, nm in ((axes[0], "wait", "waiting time (arrival → first schedule)"),
                      (axes[1], "ttft", "time to first token (TTFT)")):
        for q, ls in (("p50", ":"), ("p90", "--"), ("p99", "-")):
            ax.plot(df.rho, df[f"{m}_{q}_s"], ls=ls, marker="o", ms=4, label=q)
        ax.plot(df.rho, df[f"{m}_mean_s"], color="grey", lw=1, label="mean")
        ax.axvline(1 - cap.delta, color="k", ls="--", lw=0.8, label=f"1−δ = {1 - cap.delta:.3f} (stable below)")
        ax.set_yscale("log")
        ax.set_xlabel("utilisation ρ = λ/μ (closed-form μ)")
        ax.set_title(nm, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("seconds")
    fig.suptitle(f"Latency against utilisation ({policy}) — {_label(workload)}, M={d['M']:,}, ŝ={d['chunk']}, "
                 f"b̄={d['b']:g} s, μ={cap.mu_rps:.4g} req/s; {d['replicas']} replicas", fontsize=10.5)
    fig.tight_layout()
    return _write("latency", df, meta, fig, out)


def slo_replicas(lam: float, target_s: float, workload=None, *, metric: str = "ttft_p99_s", rho: float = 0.9,
                 G_max=None, max_p_unstable: float = 0.05, M=None, chunk=None, b=None, total_hi=None,
                 policy: str = "fcfs", replicas=None, steps=None, warmup=None, K=None, seed: int = 0,
                 quick: bool = False, out=None, progress: bool = False) -> StudyResult:
    """The fewest independent replicas G (each receiving λ/G) that keep ``metric`` (default p99 TTFT) ≤ ``target_s``
    at total rate ``lam``, next to the stability-only counts ⌈λ/μ⌉ and ⌈λ/(μρ)⌉ (the paper's rule).

    One simulate call over λ/G for G = max(1, ⌊λ/μ⌋) … ``G_max`` (default ⌈λ/(μ·0.5)⌉ + 1). A G qualifies when
    P(unstable) ≤ ``max_p_unstable``, its percentile meets the target, and so does every larger G (robust to
    simulation noise). ``meta['G_slo']`` is the answer (None when no G up to G_max qualifies).
    """
    from ._engine import simulate
    from ._theory import capacity, replicas_needed

    d = _defaults(quick, M=M, chunk=chunk, b=b, total_hi=total_hi, replicas=replicas, steps=steps, warmup=warmup)
    if workload is None:
        workload = _fast_1to1(d["total_hi"])
    lam = check_float("lam", lam, 0.0, lo_open=True)
    target_s = check_float("target_s", target_s, 0.0, lo_open=True)
    ok_metrics = [f"{m}_{q}_s" for m in ("wait", "ttft", "e2e") for q in ("mean", "p50", "p90", "p99")]
    if metric not in ok_metrics:
        raise LqsError("metric", metric, "must be one of " + ", ".join(ok_metrics))
    cap = capacity(workload, d["M"], d["chunk"], d["b"])
    G_stab = replicas_needed(lam, cap.mu_rps, 1.0)
    G_rho = replicas_needed(lam, cap.mu_rps, rho)
    G_lo = max(1, int(math.floor(lam / cap.mu_rps)))
    G_hi = check_int("G_max", G_max, G_lo) if G_max is not None else max(G_rho, int(math.ceil(lam / (0.5 * cap.mu_rps)))) + 1
    Gs = np.arange(G_lo, G_hi + 1)
    res = simulate(workload, M=d["M"], chunk=d["chunk"], lam=lam / Gs, b=d["b"], policy=policy,
                   replicas=d["replicas"], steps=d["steps"], warmup=d["warmup"], key=_key(seed), K=K,
                   progress=progress)
    s = res.summary
    meets = ((s.p_unstable <= max_p_unstable) & (s[metric] <= target_s)).to_numpy()
    ok_from = np.logical_and.accumulate(meets[::-1])[::-1]  # this G and every larger one meet it
    G_slo = int(Gs[np.argmax(ok_from)]) if ok_from.any() else None
    df = pd.DataFrame(dict(G=Gs, lam_total_rps=lam, lam_per_server_rps=lam / Gs, rho=lam / Gs / cap.mu_rps,
                           p_unstable=s.p_unstable.to_numpy(), metric=metric, value_s=s[metric].to_numpy(),
                           target_s=target_s, meets_target=meets, qualifies=ok_from,
                           wait_p99_s=s.wait_p99_s.to_numpy(), ttft_p99_s=s.ttft_p99_s.to_numpy(),
                           ttft_p90_s=s.ttft_p90_s.to_numpy(), e2e_p99_s=s.e2e_p99_s.to_numpy(),
                           G_slo=G_slo if G_slo is not None else -1, G_stability=G_stab, G_rho=G_rho, rho_target=rho,
                           reliable=s.reliable.to_numpy(), latency_reliable=s.latency_reliable.to_numpy()))
    meta = dict(study="slo", workload=_label(workload), lam_rps=lam, target_s=target_s, metric=metric,
                G_slo=G_slo, G_stability=G_stab, G_rho=G_rho, rho=rho, mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps,
                M_tokens=d["M"], chunk_tokens=d["chunk"], b_s=d["b"], policy=policy, replicas=d["replicas"],
                steps=d["steps"], warmup=d["warmup"], quick=quick)

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.8, 4.9))
    what, q = metric[:-2].split("_")
    pretty = f"{q} {dict(wait='waiting time', ttft='TTFT', e2e='end-to-end latency')[what]}"
    stable = df.p_unstable <= max_p_unstable
    ax.plot(df.G[stable], df.value_s[stable], "C0o-", label=f"simulated {pretty} per replica")
    if (~stable).any():
        ax.plot(df.G[~stable], df.value_s[~stable], "C3x", ms=9, label="unstable (P(unstable) > "
                                                                         f"{max_p_unstable:g}): grows with the horizon")
    ax.axhline(target_s, color="k", ls="--", lw=1, label=f"target {target_s:g} s")
    ax.axvline(G_stab, color="C1", ls=":", lw=1.5, label=f"⌈λ/μ⌉ = {G_stab} (stability only)")
    ax.axvline(G_rho, color="C2", ls="-.", lw=1.5, label=f"⌈λ/(μρ)⌉ = {G_rho} (ρ = {rho:g})")
    if G_slo is not None:
        ax.axvline(G_slo, color="C0", lw=2, alpha=0.5, label=f"fewest replicas meeting the SLO: {G_slo}")
    ax.set_yscale("log")
    ax.set_xticks(Gs)
    ax.set_xlabel("replicas G (each serves λ/G)")
    ax.set_ylabel(f"{pretty} (s)")
    ax.set_title(f"Replicas for a latency SLO at λ = {lam:.4g} req/s — {_label(workload)}\n"
                 f"M={d['M']:,}, ŝ={d['chunk']}, b̄={d['b']:g} s, μ={cap.mu_rps:.4g} req/s per replica; "
                 f"{d['replicas']} replicas per G", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _write("slo", df, meta, fig, out)

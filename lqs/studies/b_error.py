"""The b̄ study: how an error in the batch-time estimate b̂ moves μ, and which estimator of b̄ predicts the
simulated λ* for random (i.i.d.) and composition-dependent (affine) batch times (docs/model.md)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._errors import LqsError, check_int
from .common import StudyResult, key, label, mean_step_s, ratio_label, saturation, settings, setup, write

SECTIONS = ("closed_form", "iid", "affine")
ESTIMATORS = ("mean", "median", "trimmed:0.05", "trimmed:0.1")
_BLANK = dict(section="", case="", estimator="", b_hat_s=np.nan, b_rel_err=np.nan, mu_hat_rps=np.nan,
              mu_exact_hat_rps=np.nan, lam_star_rps=np.nan, lam_star_se_rps=np.nan, rel_miss=np.nan,
              miss_in_se=np.nan, rel_miss_vs_const=np.nan, miss_vs_const_in_se=np.nan, mem_util=np.nan)


def default_b_models(b_mean: float, slow_factor: float = 3.0, slow_frac: float = 0.3) -> dict:
    """i.i.d. batch-time models, all with mean ``b_mean``: lognormals (cv 0.5 and 1) and the paper's appendix
    shape (``slow_frac`` of the batches ``slow_factor``× slower than the rest)."""
    from .._batch import LogNormalBatch

    sigma = 0.1
    fast = b_mean / (math.exp(sigma**2 / 2) * ((1 - slow_frac) + slow_frac * slow_factor))
    return {"lognormal cv=0.5": LogNormalBatch.from_mean_cv(b_mean, 0.5),
            "lognormal cv=1": LogNormalBatch.from_mean_cv(b_mean, 1.0),
            f"two-speed: {slow_frac:.0%} of batches {slow_factor:g}× slower":
                LogNormalBatch.two_speed(fast, slow_factor * fast, slow_frac, sigma)}


def default_affine(ref_workload, M, prefill_chunk, b_mean, shares=(0.35, 0.2, 0.15, 0.3)) -> tuple:
    """Affine coefficients (a0, a1, a2, a3) that make a saturated server on ``ref_workload`` average about
    ``b_mean`` per step, split into a fixed cost, prefill tokens, decode tokens and KV memory read by ``shares``.

    At saturation a server completes about c = M/E[g_exact] requests per step, so it processes about c·E[s] prefill
    and c·E[o] decode tokens per step and holds about M tokens of KV cache.
    """
    m = ref_workload.expected_g(prefill_chunk)
    c = M / m.g_exact
    f0, f1, f2, f3 = (float(x) / float(sum(shares)) for x in shares)
    return (f0 * b_mean, f1 * b_mean / (c * m.mean_prompt_tokens), f2 * b_mean / (c * m.mean_output_tokens),
            f3 * b_mean / M)


def _draw_b(model, n, seed):
    """n batch times from a model's own (scalar) draw function, vmapped; composition 0 (i.i.d. models ignore it)."""
    import jax

    rng = np.random.default_rng(seed)
    u = rng.random((2, n), dtype=np.float32)
    z = np.zeros(n, np.int32)
    return np.asarray(jax.jit(jax.vmap(model.draw))(u[0], u[1], z, z, z), np.float64)


# ----------------------------------------------------------------------------------------------- (a) closed form
def _closed_form_rows(cap, b, rel_errors):
    """μ ∝ 1/b̄: b̂ = b̄(1+ε) gives μ̂/μ − 1 = −ε/(1+ε) (no simulation)."""
    eps = np.linspace(-0.5, 1.0, 31) if rel_errors is None else np.asarray(rel_errors, np.float64)
    return [{**_BLANK, "section": "closed_form", "case": "b̂ = b̄(1+ε)", "estimator": f"ε={e:+.3f}",
             "b_rel_err": float(e), "b_hat_s": b * (1 + e), "mu_hat_rps": cap.mu_rps / (1 + e),
             "mu_exact_hat_rps": cap.mu_exact_rps / (1 + e), "rel_miss": float(1 / (1 + e) - 1)} for e in eps]


# ----------------------------------------------------------------------------------------------- (b) i.i.d.
def _iid_rows(workload, server, mc, cap, models, estimators, n_samples, seed, progress):
    """λ* of each i.i.d. model against μ_exact(b̂) per estimator; returns (rows, headline dict)."""
    from .._batch import ConstantBatch
    from .._theory import estimate_b
    from ..engine import critical

    b = cap.b_s
    models = default_b_models(b) if models is None else dict(models)
    n_samples = check_int("n_samples", n_samples, 10)
    k = key(seed, 1)  # one key for every model: common random numbers (same requests, same arrivals)
    c0 = critical(workload, server.replace(b=ConstantBatch(b)), mc, key=k, grid_points=0, progress=progress).summary
    ls0, se0 = c0["lam_star_rps"], c0["lam_star_se_rps"]
    rows = [{**_BLANK, "section": "iid", "case": f"constant b̄={b:g} s", "estimator": "exact", "b_hat_s": b,
             "b_rel_err": 0.0, "mu_hat_rps": cap.mu_rps, "mu_exact_hat_rps": cap.mu_exact_rps, "lam_star_rps": ls0,
             "lam_star_se_rps": se0, "rel_miss": cap.mu_exact_rps / ls0 - 1,
             "miss_in_se": (cap.mu_exact_rps - ls0) / se0, "rel_miss_vs_const": 0.0, "miss_vs_const_in_se": 0.0}]
    heads = {}
    for mi, (name, model) in enumerate(models.items()):
        x = _draw_b(model, n_samples, seed + 17 + mi)
        true_mean = float(model.mean_s) if hasattr(model, "mean_s") else float(x.mean())
        c = critical(workload, server.replace(b=model, b_theory=true_mean), mc, key=k, grid_points=0,
                     progress=progress).summary
        ls, se = c["lam_star_rps"], c["lam_star_se_rps"]
        hm = {}
        for est in estimators:
            bh = estimate_b(x, est)
            mu_e = cap.mu_exact_rps * b / bh
            pred_c = ls0 * b / bh  # λ*_const (constant b̄) rescaled to b̂: renewal–reward
            se_c = math.hypot(se, se0 * b / bh)
            rows.append({**_BLANK, "section": "iid", "case": name, "estimator": est, "b_hat_s": bh,
                         "b_rel_err": bh / true_mean - 1, "mu_hat_rps": cap.mu_rps * b / bh,
                         "mu_exact_hat_rps": mu_e, "lam_star_rps": ls, "lam_star_se_rps": se,
                         "rel_miss": mu_e / ls - 1, "miss_in_se": (mu_e - ls) / se,
                         "rel_miss_vs_const": pred_c / ls - 1, "miss_vs_const_in_se": (pred_c - ls) / se_c})
            hm[est] = dict(b_hat_s=bh, rel_miss=mu_e / ls - 1, rel_miss_vs_const=pred_c / ls - 1,
                           miss_vs_const_in_se=(pred_c - ls) / se_c)
        heads[name] = dict(lam_star_rps=ls, lam_star_se_rps=se, mean_s=true_mean, median_s=float(np.median(x)),
                           estimators=hm)
    return rows, dict(lam_star_const_rps=ls0, lam_star_const_se_rps=se0, mu_exact_rps=cap.mu_exact_rps, models=heads)


# ----------------------------------------------------------------------------------------------- (c) affine
def _b_sat_predicted(w, server, affine) -> float:
    """The affine model's step time at saturation, predicted: c = M/E[g_exact] completions per step process about
    c·E[s] prefill and c·E[o] decode tokens and hold about M tokens of KV cache."""
    M = server.M
    m = w.expected_g(server.prefill_chunk)
    c_sat = M / m.g_exact
    return (affine[0] + affine[1] * c_sat * m.mean_prompt_tokens + affine[2] * c_sat * m.mean_output_tokens
            + affine[3] * M)


def _affine_setup(w, server, mc, affine, overload):
    """One mix under the affine model: its two configurations (saturation at λ = ``overload``·μ at the smallest
    possible step b_lo, for λ* and the mean step there; a light load λ ≈ ½λ*, half the closed form's μ_exact at
    the predicted saturated step, for the mean step at light load), the slots they need, and μ with b̄ = 1 s."""
    from .._batch import AffineBatch, ConstantBatch
    from .._theory import capacity
    from ..engine import size_engine
    from ..engine.sizing import Config

    cap_1s = capacity(w, server.replace(b=1.0, b_theory=None))  # μ with b̄ = 1 s; scale by 1/b̄
    b_lo = affine[0] + affine[3] * server.M * (1 - cap_1s.delta)  # ≤ every saturated step: λ_sat > λ*
    b_pred = _b_sat_predicted(w, server, affine)
    lam_sat = overload * cap_1s.mu_rps / b_lo
    # the engine sizes an affine model by its loose upper bound max_s: far too many slots
    K = mc.K or size_engine(w, server.M, server.prefill_chunk, lam_sat, ConstantBatch(2 * b_pred), mc.compact_every).K
    srv = server.replace(b=AffineBatch(*affine), b_theory=b_lo)
    one = srv.replace(b=srv.bs[0])
    return cap_1s, K, [Config(w, one, lam_sat), Config(w, one, 0.5 * cap_1s.mu_exact_rps / b_pred)]


def _affine_mixes(ws, server, mc, affine, keys, overload, progress) -> list[dict]:
    """Every mix's saturation and light-load runs as one call (one program: the mixes share the workload's shape);
    mix i's two configurations draw from ``config_keys(keys[i], 2)``, as a separate simulate call would."""
    import jax.numpy as jnp

    from ..engine import run_configs
    from ..engine.run import config_keys

    setups = [_affine_setup(w, server, mc, affine, overload) for w in ws]
    configs = [c for _, _, cs in setups for c in cs]
    ck = jnp.concatenate([config_keys(k, 2) for k in keys])
    res = run_configs(configs, mc.replace(K=max(K for _, K, _ in setups)), keys=ck, progress=progress)
    tr, out = res.trials, []
    for i, (cap_1s, _, _) in enumerate(setups):
        sat, light = res.summary.iloc[2 * i], res.summary.iloc[2 * i + 1]
        ls, se = saturation(sat)
        t_sat, t_light = tr[tr.config == 2 * i], tr[tr.config == 2 * i + 1]
        out.append(dict(cap=cap_1s, lam_star=ls, se=se, b_sat=mean_step_s(t_sat), b_light=mean_step_s(t_light),
                        mem_util=float(sat.mem_util),
                        reliable=bool(sat.reliable) and bool(light.reliable) and bool(t_sat.waiting_final.min() > 0)))
    return out


def _affine_rows(server, mc, affine, ratios, total_hi, seed, progress):
    """λ* per P/D mix under b = a0 + a1·prefill + a2·decode + a3·KV against μ_exact(b̂) for three b̂; (rows, meta)."""
    from .._workload import pd_ratio

    if 1.0 not in ratios:
        ratios = ratios + (1.0,)
    if affine is None:
        affine = default_affine(pd_ratio(1.0, total_hi=total_hi), server.M, server.prefill_chunk, server.b_mean_s)
    aff = dict(zip(ratios, _affine_mixes([pd_ratio(r, total_hi=total_hi) for r in ratios], server, mc, affine,
                                         [key(seed, 100 + i) for i in range(len(ratios))], 1.3, progress)))
    b_ref = aff[1.0]["b_sat"]
    rows = []
    for r in ratios:
        a = aff[r]
        for est, bh in (("mean b at saturation (this mix)", a["b_sat"]),
                        ("mean b at λ ≈ ½λ* (this mix)", a["b_light"]),
                        ("mean b at saturation on 1:1", b_ref)):
            mu_e = a["cap"].mu_exact_rps / bh
            rows.append({**_BLANK, "section": "affine", "case": f"P/D {ratio_label(r)}", "estimator": est,
                         "b_hat_s": bh, "b_rel_err": bh / a["b_sat"] - 1, "mu_hat_rps": a["cap"].mu_rps / bh,
                         "mu_exact_hat_rps": mu_e, "lam_star_rps": a["lam_star"], "lam_star_se_rps": a["se"],
                         "rel_miss": mu_e / a["lam_star"] - 1, "miss_in_se": (mu_e - a["lam_star"]) / a["se"],
                         "mem_util": a["mem_util"], "reliable": a["reliable"]})
    return rows, dict(coefficients=dict(a0_s=affine[0], a1_s_per_prefill_token=affine[1],
                                        a2_s_per_decode_token=affine[2], a3_s_per_kv_token=affine[3]),
                      ratios=list(ratios))


def b_error(workload=None, server=None, mc=None, *, quick: bool = False, seed: int = 0, out=None,
            progress: bool = False, sections=SECTIONS, models=None, estimators=ESTIMATORS, rel_errors=None,
            n_samples: int = 1_000_000, affine=None, affine_ratios=None, total_hi=None) -> StudyResult:
    """How the batch-time estimate b̂ moves the capacity estimate, against simulated λ*.

    ``server`` (default :func:`default_server`) has a constant b̄; ``mc`` defaults to :func:`default_mc`.
    Three sections (rows tagged by ``section``):

    * ``closed_form``: μ ∝ 1/b̄, so b̂ = b̄(1+ε) gives μ̂/μ − 1 = −ε/(1+ε) (no simulation).
    * ``iid``: for i.i.d. random batch times (``models``, default :func:`default_b_models`, all with mean b̄),
      λ* = saturation throughput (lqs.critical) against μ_exact computed with b̂ from the mean, median and trimmed
      means of ``n_samples`` draws of the model's own distribution. ``rel_miss`` = μ̂_exact/λ* − 1;
      ``rel_miss_vs_const`` compares with λ*_const·b̄/b̂ instead (λ*_const: the same workload with constant b̄, same
      random numbers), which isolates the estimator from the KV-packing loss ≤ δ. Renewal–reward: with batch
      times independent of the batch, throughput = completions per step / E[b], so the *mean* predicts λ*.
    * ``affine``: b_n = a0 + a1·prefill + a2·decode + a3·memory (``affine`` = (a0, a1, a2, a3)) for the P/D mixes
      ``lqs.pd_ratio(r, total_hi)``, r in ``affine_ratios`` (default coefficients: :func:`default_affine`): λ*
      against the closed form with b̄ = the mean batch time observed at saturation, at a light load (λ ≈ ½λ*: half
      of μ_exact at the predicted saturated step), and at saturation on the 1:1 mix (one b̄ measured once, used for
      every mix). Saturation and light load of a mix are one simulate call (one compiled program).
    """
    from .._theory import capacity, estimate_b

    bad = sorted(set(sections) - set(SECTIONS))
    if bad or not sections:
        raise LqsError("sections", bad or list(sections), "must be among closed_form, iid, affine")
    for est in estimators:  # every name checked before anything runs
        estimate_b(np.ones(4), est)
    workload, server, mc, total_hi = setup(workload, server, mc, quick, total_hi)
    server.require_scalar("b_error")
    cap = capacity(workload, server)
    meta = dict(study="b_error", workload=label(workload), delta=cap.delta, sections=list(sections),
                estimators=list(estimators), **settings(server, mc, quick))
    rows = []
    if "closed_form" in sections:
        rows += _closed_form_rows(cap, cap.b_s, rel_errors)
    if "iid" in sections:
        r, meta["iid"] = _iid_rows(workload, server, mc, cap, models, estimators, n_samples, seed, progress)
        rows += r
    if "affine" in sections:
        ratios = tuple(float(x) for x in affine_ratios) if affine_ratios is not None else (
            (8.0, 1.0, 0.5) if quick else (8.0, 2.0, 1.0, 0.5))
        r, meta["affine"] = _affine_rows(server, mc, affine, ratios, total_hi, seed, progress)
        rows += r
    from .plots import plot_b_error

    return write("b_error", pd.DataFrame(rows), meta, plot_b_error, out)

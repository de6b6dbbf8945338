"""calibrate: the batch-time model (and the front end) that makes replays of measured runs reproduce their
measured timings (docs/model.md, "Calibrating the batch time").

Model: ``constant`` b̄, or ``affine`` b = a0 + a1·prefill tokens + a2·decode tokens + a3·memory in use, each
coefficient ≥ 0; with ``frontend`` also the front end (f0, f1, f2, f3): an event loop takes the entering requests
one at a time, f2 seconds each, then a tokeniser, one at a time, f3·s seconds each (s the prompt tokens); a request
can be scheduled f0 + f1·n seconds after that (n the requests in the server when it entered), and outputs reach
the client once the event loop has taken the requests that entered before them (kernels/replay.py).

Targets: per-request TPOT and TTFT quantiles (p10, p50, p90), the request throughput and the median TTFT of the
unqueued requests (those that entered while no earlier one awaited its first token) of every fitted run, or the
summary medians where that is all a file has; the loss is the sum of squared log ratios replayed / measured. Where
a file has per-request timelines, its most frequent decode-only step (lqs/traces/_steps.py) is a target of the
affine model's a0 + a2·n + a3·KV, and bounds the front end: a run that streamed one token per chunk streamed a
step's n tokens within the step, n·f1 ≤ the step.

Search: the cross-entropy method in log-parameter space, a0, a2, a3 starting at their fit to the decode-only
steps. The replay's metrics are piecewise constant in the parameters (step counts are integers), so there is no
gradient to follow; every candidate of one iteration, on every trial, is replayed in one vmapped program per run
(kernels/replay.py), which is what the engine is for.

Prediction: every run is replayed with the ensemble of parameter sets the fitted runs allow (the candidates within
the joint confidence region of the best fit), in one program per run; the prediction is their likelihood-weighted
geometric mean, with their range. A predicted TTFT is flagged as not determined when that range is wide or when
the run's decode batches exceed the fitted ones more than EXTRAPOLATION-fold and its TTFT is what a decode time
more than SENSITIVITY times longer leaves of its E2E.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .._batch import AffineBatch, ConstantBatch
from .._errors import LqsError, check_choice, check_float, check_int
from . import _core
from ._decode import decode_fit, decode_time, step_losses, step_target
from ._replay import _fe_text, measured_metrics, resolve_chunking, run_arrivals
from ._sources import resolve_server

MODELS = ("affine", "constant")
TARGETS = (("ttft", 0.1), ("ttft", 0.5), ("ttft", 0.9), ("tpot", 0.1), ("tpot", 0.5), ("tpot", 0.9))
#: typical magnitude of each parameter (the search runs on log(θ / scale))
SCALES = {"a0": 2e-3, "a1": 1e-5, "a2": 2e-5, "a3": 1e-8, "f0": 2e-2, "f1": 5e-4, "f2": 1e-3, "f3": 5e-6, "b": 1e-2}
FIT_FRACTION = 1 / 3  # default: the lowest-load third (at least one) of each ladder's runs is fitted
CONFIDENCE = 0.68  # the ensemble: parameter sets inside this joint confidence region of the best fit
PREDICTED = ("throughput_rps", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s")


def _load(run) -> float:
    """How hard a run pushes its server: the client cap of a closed loop, the rate of an open one (inf: burst)."""
    if run.run_kind == "closed":
        return float(run.max_concurrency)
    return math.inf if run.request_rate is None else float(run.request_rate)


def default_fit(runs) -> list[int]:
    """Indices of the runs to fit: runs of one ladder share engine, lengths (mean s and o) and run kind; the
    lowest-load ⌈n/3⌉ of each ladder are fitted, the rest predicted."""
    ladders: dict = {}
    for i, r in enumerate(runs):
        key = (r.source_format, r.run_kind, round(float(r.trace.s.mean())), round(float(r.trace.o.mean())))
        ladders.setdefault(key, []).append(i)
    fit = []
    for idx in ladders.values():
        idx = sorted(idx, key=lambda i: _load(runs[i]))
        fit += idx[:max(1, math.ceil(len(idx) * FIT_FRACTION))]
    return sorted(fit)


def _targets(run) -> dict:
    """{name: measured value} of one run: TTFT / TPOT quantiles and throughput (summary medians as fallback)."""
    out = {}
    arrays = {"ttft": run.ttfts, "tpot": run.tpots}
    for name, q in TARGETS:
        x = arrays[name]
        x = None if x is None else np.asarray(x, np.float64)[np.isfinite(x)]
        if x is not None and x.size >= 8:
            out[f"{name}_q{round(q * 100)}"] = float(np.quantile(x, q))
        elif q == 0.5 and (run.summary or {}).get(f"{name}_p50_s"):
            out[f"{name}_q50"] = run.summary[f"{name}_p50_s"]
    meas = measured_metrics(run)
    if meas["ttft_unqueued_p50_s"] is not None:
        out["ttft_unqueued"] = meas["ttft_unqueued_p50_s"]
    thr = meas["throughput_rps"]
    if thr:
        out["throughput"] = float(thr)
    if not out:
        raise LqsError("result", run.trace.source, "states no TTFT, TPOT or throughput to calibrate on")
    return out


def _replayed(raw, o, P, trials) -> list[dict]:
    """Per-candidate (mean over trials) replayed values of the targets."""
    T = raw.t_enter.shape[0]
    ttft = (raw.t_ttft - raw.t_enter).reshape(P, trials, -1)
    e2e = (raw.t_done - raw.t_enter).reshape(P, trials, -1)
    o = np.asarray(o, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(o >= 2, (e2e - ttft) / np.maximum(o - 1, 1), np.nan)
    dur = (np.nanmax(np.where(np.isfinite(raw.t_done), raw.t_done, np.nan), axis=1)
           - raw.t_enter.min(axis=1)).reshape(P, trials)
    out = []
    for p in range(P):
        d = {}
        for name, q in TARGETS:
            x = (ttft if name == "ttft" else tpot)[p]
            d[f"{name}_q{round(q * 100)}"] = float(np.nanmean(np.nanquantile(x, q, axis=1)))
        d["throughput"] = float(np.nanmean(o.size / dur[p]))
        ent = raw.t_enter.reshape(P, trials, -1)[p]
        u = [_core.unqueued_ttft(ent[j], ttft[p, j]) for j in range(trials)]
        # no request entered unqueued: the lower tail stands in (the same meaning: no wait behind other prompts)
        d["ttft_unqueued"] = float(np.nanmean([x if np.isfinite(x) else np.nanquantile(ttft[p, j], 0.1)
                                               for j, x in enumerate(u)]))
        out.append(d)
    assert len(out) * trials == T
    return out


def _loss(rep: dict, meas: dict) -> float:
    tot = 0.0
    for k, m in meas.items():
        r = rep.get(k)
        if r is None or not np.isfinite(r) or r <= 0 or m <= 0:
            return math.inf
        tot += math.log(r / m) ** 2
    return tot


@dataclass(frozen=True, eq=False)
class CalibrationResult:
    """The fitted model (``b_model``, ``frontend``: the replay / CLI text forms), the search, and every run's
    measured against replayed figures, marked ``fitted`` or ``predicted``."""

    b_model: str
    frontend: str
    params: dict
    loss: float
    history: list
    runs: object  # pandas DataFrame, one row per run
    report: dict

    def to_dict(self) -> dict:
        return dict(self.report)

    def save(self, out_dir) -> dict:
        from .. import _jsonio

        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths = {"report": os.path.join(out_dir, "calibration.json"), "runs": os.path.join(out_dir, "runs.csv")}
        with open(paths["report"], "w", encoding="utf-8") as fh:
            _jsonio.dump(self.report, fh, indent=1, ensure_ascii=False)
        self.runs.to_csv(paths["runs"], index=False)
        return paths


def _candidates(model, frontend, z, names):
    th = {n: SCALES[n] * np.exp(z[:, j]) for j, n in enumerate(names)}
    P = z.shape[0]
    if model == "affine":
        batch = [AffineBatch(th["a0"][p], th["a1"][p], th["a2"][p], th["a3"][p]) for p in range(P)]
    else:
        batch = [ConstantBatch(th["b"][p]) for p in range(P)]
    fe = np.stack([th.get(n, np.zeros(P)) for n in ("f0", "f1", "f2", "f3")], axis=1)
    return th, batch, fe


def calibrate(results, *, fit=None, model: str = "affine", frontend: bool = True, iterations: int = 14,
              population: int = 48, trials: int = 2, seed: int = 0, key=None, progress: bool = False,
              ensemble: int = 128, confidence: float = CONFIDENCE,
              b_estimator: str = "median", chunking: str = "auto", **server_fields) -> CalibrationResult:
    """Fit the batch-time model to measured runs (module docstring). ``results``: result files or
    :class:`lqs.BenchmarkResult` s of one server; ``fit``: indices of the runs to fit (default
    :func:`default_fit`), the rest are predicted; ``server_fields`` as in :func:`lqs.replay.replay`."""
    import jax
    import pandas as pd

    from ..traces import BenchmarkResult, load_benchmark_result

    model = check_choice("model", model, MODELS)
    iterations = check_int("iterations", iterations, 1, 200)
    population = check_int("population", population, 8, 4096)
    trials = check_int("trials", trials, 1, 256)
    ensemble = check_int("ensemble", ensemble, 1, 4096)
    confidence = check_float("confidence", confidence, 0.0, 1.0, lo_open=True, hi_open=True)
    if isinstance(results, (str, os.PathLike, BenchmarkResult)):
        results = [results]
    runs = [r if isinstance(r, BenchmarkResult) else load_benchmark_result(r, b_estimator=b_estimator) for r in results]
    if not runs:
        raise LqsError("results", [], "must list at least one benchmark result")
    fit = default_fit(runs) if fit is None else sorted({check_int("fit", i, 0, len(runs) - 1) for i in fit})
    servers = [resolve_server(r, None, **server_fields) for r in runs]
    chunking = resolve_chunking(chunking, None)
    for r, (srv, _) in zip(runs, servers):
        r.trace.validate(srv.M)
    names = ["a0", "a1", "a2", "a3"] if model == "affine" else ["b"]
    names += ["f0", "f1", "f2", "f3"] if frontend else []
    key = jax.random.key(seed) if key is None else key
    key_search, key_arr, key_batch = jax.random.split(key, 3)

    # fixed per run: arrival instants (trials per candidate), measured targets
    step_of = {i: step_target(runs[i], servers[i][0]) for i in fit}
    step_runs = [i for i in fit if step_of[i] is not None]
    steps = [step_of[i] for i in step_runs]
    prepared = []
    for i in fit:
        r, (srv, _) = runs[i], servers[i]
        arr = run_arrivals(r, "auto")
        tr_n = trials if arr.random else 1
        t_arr = arr.instants(len(r.trace), tr_n, jax.random.fold_in(key_arr, i))
        prepared.append((r, srv, np.tile(t_arr, (population, 1)), tr_n, _targets(r)))

    b0 = float(np.median([r.b for r in runs if r.b is not None] or [SCALES["b"]]))
    mean = np.zeros(len(names))
    if model == "affine":
        mean[names.index("a0")] = math.log(max(0.5 * b0, 1e-5) / SCALES["a0"])
    else:
        mean[names.index("b")] = math.log(b0 / SCALES["b"])
    std = np.full(len(names), 1.5)
    if model == "affine" and steps:  # start a0, a2, a3 where the decode-only steps put them
        for name, v in zip(("a0", "a2", "a3"), decode_fit(steps, [SCALES[n] for n in ("a0", "a2", "a3")])):
            mean[names.index(name)] = math.log(max(v / SCALES[name], 1e-3))
            std[names.index(name)] = 0.5
    best, best_loss, history, tried = None, math.inf, [], []
    n_elite = max(2, population // 4)
    for it in range(iterations):
        k_it = jax.random.fold_in(key_search, it)
        z = mean + std * np.asarray(jax.random.normal(k_it, (population, len(names))), np.float64)
        if best is not None:
            z[0] = best  # keep the best so far
        th, batch, fe = _candidates(model, frontend, z, names)
        losses = np.zeros(population)
        for r, srv, t_arr, tr_n, meas in prepared:
            raw = _replay_candidates(r, srv, t_arr, batch, fe, tr_n, jax.random.fold_in(key_batch, it), chunking)
            for p, rep in enumerate(_replayed(raw, r.trace.o, population, tr_n)):
                losses[p] += _loss(rep, meas)
        losses += step_losses(steps, th, population)  # no replay needed for these
        tried.append((z.copy(), losses.copy()))
        order = np.argsort(losses)
        if losses[order[0]] < best_loss:
            best_loss, best = float(losses[order[0]]), z[order[0]].copy()
        elite = z[order[:n_elite]]
        mean = 0.3 * mean + 0.7 * elite.mean(axis=0)
        std = np.maximum(0.3 * std + 0.7 * elite.std(axis=0), 0.02)
        history.append({"iteration": it, "best_loss": best_loss, "median_loss": float(np.median(losses))})
        if progress:
            print(f"calibrate: iteration {it + 1}/{iterations}, loss {best_loss:.4g}", flush=True)
    th, batch, fe = _candidates(model, frontend, best[None, :], names)
    params = {n: float(v[0]) for n, v in th.items()}
    b_model = ("affine:" + ",".join(f"{params[n]:.6g}" for n in ("a0", "a1", "a2", "a3"))) if model == "affine" \
        else f"constant:{params['b']:.6g}"
    fe_text = _fe_text(tuple(float(x) for x in fe[0]))
    n_targets = sum(len(p[4]) for p in prepared) + (len(steps) if model == "affine" else 0)
    members, member_loss, threshold = _ensemble(tried, best, best_loss, n_targets, len(names), confidence, ensemble,
                                   jax.random.fold_in(key, 20_000))
    if progress:
        print(f"calibrate: replaying {len(members)} parameter set(s) the fitted runs allow on every run", flush=True)
    _, ens_batch, ens_fe = _candidates(model, frontend, members, names)
    # each member weighs as its likelihood under the loss's Gaussian log-ratio errors: exp(−(loss − best) / 2σ²)
    sigma2 = _sigma2(best_loss, n_targets, len(names))
    weights = np.exp(-(member_loss - best_loss) / (2 * sigma2)) if sigma2 > 0 else np.eye(1, len(members))[0]

    rows, member_pred = [], []
    # largest decode batch the fitted runs measured (their decode-only steps, else their caps)
    n_fitted = max([n_dec for n_dec, *_ in steps] or [float(runs[i].max_concurrency or 0) for i in fit]) or None
    for i, (r, (srv, _)) in enumerate(zip(runs, servers)):
        meas_all = measured_metrics(r)
        # every member on every trial in one program; member 0 is the best fit
        ens = _ensemble_metrics(r, srv, ens_batch, ens_fe, max(trials, 4), chunking,
                                jax.random.fold_in(key, 30_000 + i))
        member_pred.append({m: [float(v) for v in ens[m]] for m in PREDICTED})
        row = {"run": i, "source": r.trace.source, "role": "fitted" if i in fit else "predicted",
               "fitted": i in fit, "predicted": i not in fit, "run_kind": r.run_kind,
               "concurrency": r.max_concurrency, "request_rate_rps": r.request_rate}
        for m in PREDICTED:
            meas, x = meas_all[m], ens[m]
            row["measured_" + m] = meas
            row["replay_" + m] = _gmean(x, weights)
            row["replay_" + m + "_lo"], row["replay_" + m + "_hi"] = _range(x)
            row["error_" + m] = (row["replay_" + m] / meas - 1) if meas and row["replay_" + m] else None
            best_m = float(x[0]) if np.isfinite(x[0]) else None
            row["best_" + m] = best_m
            row["best_error_" + m] = (best_m / meas - 1) if meas and best_m else None
        row["measured_ttft_unqueued_p50_s"] = meas_all["ttft_unqueued_p50_s"]
        u0 = ens["ttft_unqueued_p50_s"][0]
        row["best_ttft_unqueued_p50_s"] = float(u0) if np.isfinite(u0) else None
        lo, hi = row["replay_ttft_p50_s_lo"], row["replay_ttft_p50_s_hi"]
        # the decode steps of this run against the largest batch the fitted runs measured
        peak = ens["peak_concurrency"][0]
        row["decode_batch"] = int(peak) if np.isfinite(peak) else None
        row["decode_batch_fitted"] = n_fitted
        row["beyond_fitted_batch"] = bool(row["predicted"] and n_fitted and np.isfinite(peak)
                                          and peak > EXTRAPOLATION * n_fitted)
        # per cent the TTFT moves per per cent of decode time: in a saturated closed loop the E2E is set by the cap
        # and the throughput and the TTFT is what the decode time leaves of it
        e2e, ttft = row["replay_e2e_p50_s"], row["replay_ttft_p50_s"]
        row["ttft_sensitivity"] = (e2e - ttft) / ttft if e2e and ttft else None
        sensitive = row["ttft_sensitivity"] is None or row["ttft_sensitivity"] > SENSITIVITY
        row["ttft_determined"] = bool(lo and hi and hi <= UNDETERMINED * lo
                                      and not (row["beyond_fitted_batch"] and sensitive))
        rows.append(row)
    df = pd.DataFrame(rows)
    report = {"b_model": b_model, "frontend": fe_text, "chunking": chunking, "model": model, "params": params, "loss": best_loss,
              "iterations": iterations, "population": population, "seed": seed, "fitted": [int(i) for i in fit],
              "predicted": [i for i in range(len(runs)) if i not in fit], "history": history,
              "ensemble": {"size": int(len(members)), "confidence": confidence, "loss_threshold": threshold,
                           "weights": [float(x) for x in weights / weights.sum()],
                           "targets": int(n_targets), "parameters": len(names),
                           "losses": [float(x) for x in member_loss], "predictions": member_pred,
                           "members": [dict(zip(names, (SCALES[n] * np.exp(zz) for n, zz in zip(names, z_row))))
                                       for z_row in members]},
              "decode_steps": [{"run": int(i), "n": n_dec, "kv_tokens": kv, "measured_s": gap, "kept_up": kept_up,
                                "fitted_s": decode_time(params, n_dec, kv) if model == "affine" else None,
                                "frontend_per_request_s": params.get("f1")}
                               for i, (n_dec, kv, gap, kept_up) in zip(step_runs, steps)],
              "runs": df.to_dict(orient="records")}
    return CalibrationResult(b_model=b_model, frontend=fe_text, params=params, loss=best_loss, history=history,
                             runs=df, report=report)


UNDETERMINED = 1.5  # a predicted TTFT whose ensemble range spans more than this factor is not set by the fitted runs
#: a predicted TTFT is not determined either when the run's decode batch exceeds the fitted ones by more than this
#: factor (the decode step there is the affine model's extrapolation) and the TTFT is sensitive to it: a saturated
#: closed loop's TTFT is its E2E less the decode time, (E2E − TTFT) / TTFT per cent per per cent of decode time
#: (docs/model.md)
EXTRAPOLATION = 2.0
SENSITIVITY = 3.0


def _sigma2(best_loss, n_targets, n_params) -> float:
    """The residual variance of one log-ratio target at the best fit: best / (targets − parameters)."""
    return best_loss / max(n_targets - n_params, 1)


def _ensemble(tried, best, best_loss, n_targets, n_params, confidence, size, key):
    """The parameter sets (log-scaled rows) the fitted runs allow, their losses and the loss threshold: every distinct candidate the search replayed
    whose loss lies within the joint ``confidence`` region of the best fit, loss ≤ best + σ²·χ²_p(confidence),
    σ² = best / (targets − parameters) the residual variance of one log-ratio target. The best fit comes first;
    beyond ``size`` members a uniform random subset of the rest is kept."""
    import jax
    from scipy.stats import chi2  # a dependency of jax; the χ² quantile, not re-derived here

    Z = np.concatenate([z for z, _ in tried])
    L = np.concatenate([loss for _, loss in tried])
    Z, first = np.unique(Z, axis=0, return_index=True)
    L = L[first]
    sigma2 = _sigma2(best_loss, n_targets, n_params)
    threshold = float(best_loss + sigma2 * chi2.ppf(confidence, n_params))
    inside = np.flatnonzero((L <= threshold) & np.isfinite(L) & np.any(Z != best, axis=1))
    if inside.size > size - 1:
        pick = np.asarray(jax.random.choice(key, inside.size, (size - 1,), replace=False))
        inside = inside[np.sort(pick)]
    return np.concatenate([best[None, :], Z[inside]]), np.concatenate([[best_loss], L[inside]]), threshold


def _ensemble_metrics(run, srv, batch, fe, trials, chunking, key) -> dict:
    """{metric: one value per ensemble member (mean over trials)} for one run: every member, on every trial, in one
    replay program."""
    import jax

    arr = run_arrivals(run, "auto")
    tr_n = trials if arr.random else 1
    key_arr, key_batch = jax.random.split(key)
    P = len(batch)
    t_arr = np.tile(arr.instants(len(run.trace), tr_n, key_arr), (P, 1))
    raw = _replay_candidates(run, srv, t_arr, batch, fe, tr_n, key_batch, chunking)
    rows = _core.metrics(raw, run.trace.o)
    return {m: np.array([_nanmean([rows[p * tr_n + j][m] for j in range(tr_n)]) for p in range(P)])
            for m in PREDICTED + ("ttft_unqueued_p50_s", "peak_concurrency")}


def _replay_candidates(run, srv, t_arr, batch, fe, tr_n, key, chunking):
    """One replay program of ``run`` on ``srv`` for every parameter set (``batch``: one model each, ``fe``: one
    front-end row each) on each of its ``tr_n`` trials, candidate-major (``t_arr``: float[P·tr_n, N])."""
    return _core.run(run.trace.s, run.trace.o, t_arr, M=srv.M, chunk=srv.prefill_chunk, budget=srv.token_budget,
                     max_running=srv.max_running, block=srv.block_size, concurrency=run.max_concurrency,
                     frontend=np.repeat(fe, tr_n, axis=0), batch=[m for m in batch for _ in range(tr_n)],
                     policy=srv.policy, key=key, chunking=chunking)


def _nanmean(x):
    x = np.asarray(x, np.float64)
    return float(np.mean(x[np.isfinite(x)])) if np.isfinite(x).any() else math.nan


def _gmean(x, w):
    """The weighted geometric mean of the finite positive values (None if none)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    ok = np.isfinite(x) & (x > 0) & (w > 0)
    return float(np.exp(np.sum(w[ok] * np.log(x[ok])) / np.sum(w[ok]))) if ok.any() else None


def _range(x):
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return (float(x.min()), float(x.max())) if x.size else (None, None)

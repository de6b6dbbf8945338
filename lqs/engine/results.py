"""What a run returns: the per-trial table, the per-configuration summary (with the closed form beside it), the
time series, the latency histograms and the resolved configuration; and how they are computed from the final
engine states and records."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field

import jax
import numpy as np
import pandas as pd

from .. import _jsonio
from .._theory import _capacity
from ..kernels.state import LAT_NAMES, N_LAT, EngineConfig
from .sizing import nominal_b
from .stats import backlog_grows, hist_quantiles, wilson

LAT_Q = (0.5, 0.9, 0.99)


@dataclass
class SimResult:
    """What :func:`lqs.simulate` returns: per-trial rows, per-configuration summary, time series, histograms,
    the resolved configuration (``config``: server, Monte Carlo settings, engine sizing, keys; and, apart,
    ``config["timing"]``: wall time and speed, the only entries that differ between two runs of one seed)."""

    trials: pd.DataFrame
    summary: pd.DataFrame
    series_t: np.ndarray  # [n_cfg, trials, points] seconds
    series_waiting: np.ndarray  # [n_cfg, trials, points]
    series_started: np.ndarray
    hist: np.ndarray  # [n_cfg, trials, 3, n_bins]
    config: dict
    engine_config: EngineConfig = field(repr=False)
    phase_hist: np.ndarray | None = None  # [n_cfg, trials, phases, 3, n_bins] by arrival phase (phase_hist runs)

    @property
    def reliable(self) -> bool:
        return bool(self.summary["reliable"].all())

    def save(self, out_dir, plot: bool = True) -> list[str]:
        """Write the trials and summary tables (CSV + parquet), the resolved configuration (config.json: the same
        bytes for the same seed), the wall time (timing.json), the series and histograms (series.npz) and,
        optionally, a PNG of the waiting count over time."""
        os.makedirs(out_dir, exist_ok=True)
        written = []
        for name, df in (("trials", self.trials), ("summary", self.summary)):
            p = os.path.join(out_dir, f"{name}.csv")
            df.to_csv(p, index=False)
            written.append(p)
            try:
                pq = os.path.join(out_dir, f"{name}.parquet")
                df.to_parquet(pq, index=False)
                written.append(pq)
            except Exception:  # pragma: no cover - pyarrow missing
                pass
        config = dict(self.config)
        for name, doc in (("config", {k: v for k, v in config.items() if k != "timing"}),
                          ("timing", config.get("timing", {}))):
            p = os.path.join(out_dir, f"{name}.json")
            with open(p, "w") as fh:
                _jsonio.dump(doc, fh, indent=2)
            written.append(p)
        p = os.path.join(out_dir, "series.npz")
        np.savez_compressed(p, t_s=self.series_t, waiting=self.series_waiting, started=self.series_started,
                            hist=self.hist, bin_edges_s=self.engine_config.bin_edges)
        written.append(p)
        if plot:
            from .._plots import plot_waiting

            p = os.path.join(out_dir, "waiting.png")
            plot_waiting(self, p)
            written.append(p)
        return written


def _closed_form(workload, server, M, bt):
    b_nom = server.b_theory if server.b_theory is not None else nominal_b(bt)
    if not np.isfinite(b_nom):
        return b_nom, None
    return b_nom, _capacity(workload, M, server.prefill_chunk, b_nom, servers=server.servers)


def _describe_all(items) -> object:
    """One description when every item describes alike, else one per item."""
    descs = [_jsonio.describe(x) if not hasattr(x, "describe") else x.describe() for x in items]
    return descs[0] if all(d == descs[0] for d in descs) else descs


def collect(configs, mc, cfg, sizing, st, recs, steps_run, steps_asked, wall, stopped_early, keys):
    """Tables of one program's configurations from its final states ``st`` (trial axis flattened as
    configuration × trial) and its records."""
    R = mc.trials
    n_cfg = len(configs)

    def a(x):
        return np.asarray(x).reshape((n_cfg, R) + np.shape(x)[1:])

    t_ser = np.concatenate([np.asarray(r.t) for r in recs], axis=1).reshape(n_cfg, R, -1)
    w_ser = np.concatenate([np.asarray(r.waiting) for r in recs], axis=1).reshape(n_cfg, R, -1)
    s_ser = np.concatenate([np.asarray(r.started) for r in recs], axis=1).reshape(n_cfg, R, -1)
    hist_all = a(st.latency.hist)
    hist = hist_all[:, :, :N_LAT]
    phase_hist = (hist_all[:, :, N_LAT:].reshape((n_cfg, R, cfg.phase_hist, N_LAT, -1)) if cfg.phase_hist
                  else None)
    moments = {}
    rows, sums = [], []
    with warnings.catch_warnings():  # empty windows give NaN on purpose; this filter ends with the block
        warnings.simplefilter("ignore", RuntimeWarning)
        for ci, c in enumerate(configs):
            server, workload = c.server, c.workload
            mk = (id(workload), server.prefill_chunk)
            if mk not in moments:
                moments[mk] = workload.expected_g(server.prefill_chunk)
            b_nom, cap = _closed_form(workload, server, c.M, c.batch)
            per, srow = _one_config(ci, c.lam, c.M, c.batch, b_nom, cap, a, st, t_ser[ci], w_ser[ci], s_ser[ci],
                                    hist[ci], moments[mk], cfg, R, server.servers, steps_run, mc.warmup, workload)
            common = dict(prefill_chunk_tokens=server.prefill_chunk, policy=server.policy,
                          token_budget=server.token_budget or 0, max_running=server.max_running or 0,
                          block_size_tokens=server.block_size, servers=server.servers, routing=server.routing)
            rows.append(pd.DataFrame({**per, **{k: [v] * R for k, v in common.items()}}))
            sums.append({**srow, **common})
    order = ["config", "trial", "lam_rps", "M_tokens", "prefill_chunk_tokens", "b_s", "batch_model", "policy",
             "token_budget", "max_running", "block_size_tokens", "servers", "routing"]
    trials = pd.concat(rows, ignore_index=True)
    trials = trials[order + [c for c in trials.columns if c not in order]]
    summary = pd.DataFrame(sums)
    summary = summary[[c for c in order if c != "trial"] + [c for c in summary.columns if c not in order]]
    N = n_cfg * R
    config = dict(workload=_describe_all([c.workload for c in configs]),
                  server=_describe_all([c.server for c in configs]), monte_carlo=mc.describe(),
                  M_tokens=[c.M for c in configs], lam_rps=[c.lam for c in configs],
                  batch=[_jsonio.describe(c.batch) for c in configs], trials=R, steps_requested=steps_asked,
                  steps_run=steps_run, warmup_steps=mc.warmup, stopped_early=stopped_early,
                  keys=np.asarray(jax.random.key_data(keys)).tolist(), engine_config=asdict(cfg),
                  sizing=asdict(sizing), devices=[str(d) for d in jax.local_devices()], backend=jax.default_backend(),
                  jax_version=jax.__version__,
                  timing=dict(wall_s=wall, trial_steps_per_s=N * steps_run / max(wall, 1e-9)))
    return SimResult(trials=trials, summary=summary, series_t=t_ser, series_waiting=w_ser, series_started=s_ser,
                     hist=hist, config=config, engine_config=cfg, phase_hist=phase_hist)


def _pad_points(arrays):
    """Series of programs that ran different numbers of records (early stop), padded with NaN to one length."""
    P = max(x.shape[-1] for x in arrays)
    if all(x.shape[-1] == P for x in arrays):
        return np.concatenate(arrays)
    return np.concatenate([np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 1) + [(0, P - x.shape[-1])],
                                  constant_values=np.nan) for x in arrays])


def merge(results, n_cfg: int) -> SimResult:
    """One SimResult from the programs of one call: rows back in configuration order, ``config`` numbered 0..n−1;
    ``config["programs"]`` lists each program's configurations, sizing and engine configuration."""
    if len(results) == 1 and list(results[0][0]) == list(range(n_cfg)):
        return results[0][1]
    order = np.argsort(np.concatenate([np.asarray(idx) for idx, _ in results]), kind="stable")
    trials, summary = [], []
    for idx, r in results:
        t, s = r.trials.copy(), r.summary.copy()
        t["config"] = np.asarray(idx)[t["config"].to_numpy()]
        s["config"] = np.asarray(idx)[s["config"].to_numpy()]
        trials.append(t)
        summary.append(s)
    summary = pd.concat(summary, ignore_index=True).sort_values("config", kind="stable").reset_index(drop=True)
    trials = pd.concat(trials, ignore_index=True).sort_values(["config", "trial"], kind="stable").reset_index(drop=True)
    first = results[0][1]
    config = dict(first.config)
    per = [r.config for _, r in results]
    for k in ("workload", "server", "batch", "keys"):
        vals = [None] * n_cfg
        for (idx, r) in results:
            v = r.config[k]
            items = v if isinstance(v, list) and len(v) == len(idx) else [v] * len(idx)
            for i, x in zip(idx, items):
                vals[i] = x
        config[k] = vals
    config["M_tokens"] = [None] * n_cfg
    config["lam_rps"] = [None] * n_cfg
    for idx, r in results:
        for i, m, lm in zip(idx, r.config["M_tokens"], r.config["lam_rps"]):
            config["M_tokens"][i], config["lam_rps"][i] = m, lm
    wall = sum(p["timing"]["wall_s"] for p in per)
    config.update(steps_run=max(p["steps_run"] for p in per), stopped_early=any(p["stopped_early"] for p in per),
                  programs=[dict(configs=[int(i) for i in idx], engine_config=r.config["engine_config"],
                                 sizing=r.config["sizing"], steps_run=r.config["steps_run"]) for idx, r in results],
                  timing=dict(wall_s=wall, program_wall_s=[r.config["timing"]["wall_s"] for _, r in results],
                              trial_steps_per_s=n_cfg * first.config["trials"] * max(p["steps_run"] for p in per)
                              / max(wall, 1e-9)))
    cat = [r for _, r in results]
    return SimResult(trials=trials, summary=summary,
                     series_t=_pad_points([r.series_t for r in cat])[order],
                     series_waiting=_pad_points([r.series_waiting for r in cat])[order],
                     series_started=_pad_points([r.series_started for r in cat])[order],
                     hist=np.concatenate([r.hist for r in cat])[order], config=config,
                     engine_config=first.engine_config,
                     phase_hist=(np.concatenate([r.phase_hist for r in cat])[order]
                                 if all(r.phase_hist is not None for r in cat) else None))


def _one_config(ci, lam, M, bt, b_nom, cap, a, st, t_ser, w_ser, s_ser, hist, mom, cfg, R, G, steps_run, warmup,
                workload):
    arrivals = a(st.counters.arrivals)[ci]
    comp = a(st.counters.completions)[ci]
    arr_w = a(st.window.arrivals)[ci]
    comp_w = a(st.window.completions)[ci]
    busy = a(st.window.busy)[ci].astype(np.float64)
    thr = comp_w / np.maximum(busy, 1e-12)
    g_mean_done = a(st.window.gsum)[ci].astype(np.float64) / np.maximum(comp_w, 1)
    # control variate: memory-work completed per second / E[g_exact] (docs/model.md, "What is measured")
    thr_cv = np.where(comp_w > 0, thr * g_mean_done / mom.g_exact, np.nan)
    grew, tstat, drift, rise = backlog_grows(t_ser, w_ser, arr_w, a(st.clock.t_w0)[ci].astype(np.float64))
    in_sys = arrivals - comp
    n_started_final = s_ser[:, -1]
    lat_n = a(st.latency.n)[ci]
    lat_sum = a(st.latency.total)[ci]
    qs = hist_quantiles(hist, LAT_Q, cfg)  # [R, 3, 3]
    starved, trunc = a(st.limits.starved)[ci], a(st.limits.arr_trunc)[ci]
    viol, lost = a(st.limits.violations)[ci], a(st.limits.lat_lost)[ci]
    reliable = (starved == 0) & (trunc == 0) & (viol == 0)
    steps_w = np.maximum(a(st.window.steps)[ci], 1)
    mem_mean = a(st.window.mem_sum)[ci] / steps_w
    per = dict(config=np.full(R, ci), trial=np.arange(R), lam_rps=np.full(R, lam), M_tokens=np.full(R, M),
               b_s=np.full(R, b_nom), batch_model=[bt.kind] * R, steps=np.full(R, steps_run),
               warmup_steps=np.full(R, warmup), window_s=busy, arrivals=arrivals.astype(np.int64),
               completions=comp.astype(np.int64), in_system_final=in_sys.astype(np.int64),
               waiting_final=(in_sys - n_started_final).astype(np.int64), throughput_rps=thr,
               throughput_cv_rps=thr_cv, mem_mean_tokens=mem_mean, mem_util=mem_mean / (M * G),
               mem_max_tokens=a(st.counters.mem_max)[ci].astype(np.int64), swaps=a(st.counters.swaps)[ci].astype(np.int64),
               started_max=a(st.counters.started_max)[ci].astype(np.int64),
               waiting_max=a(st.counters.waiting_max)[ci].astype(np.int64), backlog_grew=grew, growth_tstat=tstat,
               drift_rps=drift, waiting_rise=rise, latency_n=lat_n.astype(np.int64))
    with np.errstate(divide="ignore", invalid="ignore"):
        for mi, name in enumerate(LAT_NAMES):
            per[f"{name}_mean_s"] = np.where(lat_n > 0, lat_sum[:, mi] / np.maximum(lat_n, 1), np.nan)
            for qi, q in enumerate(LAT_Q):
                per[f"{name}_p{int(q * 100)}_s"] = qs[:, mi, qi]
    per.update(starved_steps=starved.astype(np.int64), arrival_cap_hits=trunc.astype(np.int64),
               overflow_final=a(st.queue.overflow)[ci].astype(np.int64), latency_lost=lost.astype(np.int64),
               violations=viol.astype(np.int64), reliable=reliable, latency_reliable=lost == 0)
    # pooled over trials
    pq = hist_quantiles(hist.sum(0), LAT_Q, cfg)
    lo, hi = wilson(int(grew.sum()), R)
    se = float(thr.std(ddof=1) / math.sqrt(R)) if R > 1 else np.nan
    se_cv = float(np.nanstd(thr_cv, ddof=1) / math.sqrt(R)) if R > 1 else np.nan
    nan = np.nan
    srow = dict(config=ci, lam_rps=lam, M_tokens=M, b_s=b_nom, batch_model=bt.kind, trials=R, steps=steps_run,
                warmup_steps=warmup, mu_rps=cap.mu_rps if cap else nan, mu_exact_rps=cap.mu_exact_rps if cap else nan,
                mu_stable_rps=cap.mu_stable_rps if cap else nan,
                mu_exact_stable_rps=cap.mu_exact_stable_rps if cap else nan,
                delta=workload.max_total / M, rho=lam / cap.mu_rps if cap else nan,
                throughput_rps=float(thr.mean()), throughput_se_rps=se,
                throughput_ci_lo_rps=float(thr.mean() - 1.96 * se), throughput_ci_hi_rps=float(thr.mean() + 1.96 * se),
                throughput_cv_rps=float(np.nanmean(thr_cv)), throughput_cv_se_rps=se_cv,
                p_backlog_grows=float(grew.mean()), p_backlog_grows_lo=lo, p_backlog_grows_hi=hi,
                horizon_s=float(np.mean(a(st.clock.t)[ci])), window_s=float(np.mean(busy)),
                mem_util=float(np.mean(mem_mean / (M * G))),
                swaps_per_s=float(np.mean(a(st.counters.swaps)[ci] / np.maximum(a(st.clock.t)[ci], 1e-12))),
                started_max=int(a(st.counters.started_max)[ci].max()),
                waiting_final_mean=float(np.mean(in_sys - n_started_final)), latency_n=int(lat_n.sum()))
    for mi, name in enumerate(LAT_NAMES):
        srow[f"{name}_mean_s"] = float(lat_sum[:, mi].sum() / lat_n.sum()) if lat_n.sum() > 0 else nan
        for qi, q in enumerate(LAT_Q):
            srow[f"{name}_p{int(q * 100)}_s"] = pq[mi, qi]
    srow.update(starved_steps=int(starved.sum()), arrival_cap_hits=int(trunc.sum()), latency_lost=int(lost.sum()),
                violations=int(viol.sum()), reliable=bool(reliable.all()), latency_reliable=bool((lost == 0).all()))
    return per, srow

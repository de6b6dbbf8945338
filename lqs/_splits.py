"""The P:D split table of a disaggregated deployment over G GPUs (closed form, per-station saturation runs, the
coupled network's latency at λ) beside G colocated servers, and its plot (docs/model.md, "Disaggregated prefill
and decode")."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._disagg import Disaggregated, capacity_disagg, splits
from ._errors import LqsError, check_float
from .engine.stations import station_saturation


#: the coupled network's columns the split table carries (latency at λ)
NET_COLUMNS = ("throughput_rps", "observed_drift_rps", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
               "e2e_p50_s", "e2e_p99_s", "transfer_p50_s", "decode_wait_p50_s", "wait_p99_s", "lost", "censored")


def split_table(workload, dep: Disaggregated, gpus: int | None = None, *, pairs=None, colocated=None,
                lam: float | None = None, simulate: bool = False, mc=None, seed: int = 0,
                progress: bool = False, cache: dict | None = None, latency: bool | None = None,
                latency_mc=None, horizon_s: float | None = None, warmup_s: float | None = None) -> pd.DataFrame:
    """The closed form over the P:D splits of ``gpus`` (or the explicit ``pairs`` of (N_P, N_D)), best first by
    μ_PD, with the colocated row of the same GPUs (``colocated``: a Server, default the prefill pool's; each GPU one
    colocated server). With ``lam``: the verdict of each row at λ (stable, unstable, or between the bounds).

    ``simulate``: the saturation rule per station (:func:`station_saturation`, one engine call for the prefill,
    decode and colocated servers, whatever the number of splits): λ*_P = N_P·λ*(prefill server), λ*_D =
    N_D·λ*(decode server), λ*_PD = min of the two (its 95 % interval that station's), the simulated binding station
    and, with ``lam``, the long-run verdict. The stations run without the transfer hold (the closed form has it).

    ``latency`` (default: with ``simulate`` and ``lam``): the coupled network of every split at λ, all splits in
    one program (:func:`lqs.engine.network.simulate_network`, ``latency_mc`` trials, default 2; ``horizon_s``,
    ``warmup_s``), and G colocated servers behind their router at λ (lqs.simulate): the columns
    ``net_<metric>`` (TTFT, TPOT, E2E and transfer percentiles, throughput, the observed drift) and
    ``net_reliable``. A split above its λ*_PD has no steady state: its latencies grow with the horizon and its row
    is marked unreliable."""
    from ._theory import capacity

    import time

    t0 = time.perf_counter()
    timing = {}
    if pairs is None:
        pairs = splits(dep.gpus if gpus is None else gpus)
    rows = []
    for p, d in pairs:
        c = capacity_disagg(workload, dep.split(p, d))
        rows.append(dict(layout=f"{p}P:{d}D", n_prefill=p, n_decode=d, gpus=p + d, prefill_fraction=p / (p + d),
                         mu_prefill_rps=c.mu_prefill_rps, mu_decode_rps=c.mu_decode_rps,
                         budget_prefill_rps=c.budget_prefill_rps, budget_decode_rps=c.budget_decode_rps,
                         mu_pd_rps=c.mu_pd_rps, mu_pd_stable_rps=c.mu_pd_stable_rps, binding=c.binding,
                         delta_prefill=c.delta_prefill, delta_decode=c.delta_decode))
    G = max(r["gpus"] for r in rows)
    col = (dep.prefill if colocated is None else colocated)
    from ._server import as_server

    cc = capacity(workload, as_server(col).replace(servers=G))
    rows.append(dict(layout=f"colocated ×{G}", n_prefill=0, n_decode=0, gpus=G, prefill_fraction=np.nan,
                     mu_prefill_rps=np.nan, mu_decode_rps=np.nan, budget_prefill_rps=None, budget_decode_rps=None,
                     mu_pd_rps=cc.mu_exact_rps, mu_pd_stable_rps=cc.mu_exact_stable_rps, binding="colocated",
                     delta_prefill=np.nan, delta_decode=cc.delta))
    df = pd.DataFrame(rows)
    timing["closed_form_s"] = time.perf_counter() - t0
    if simulate:
        from .engine.verdict import verdict_of

        t1 = time.perf_counter()
        sat = station_saturation(workload, dep, mc, seed=seed, colocated=col, progress=progress, cache=cache)
        ext = []
        for r in rows:
            if r["binding"] == "colocated":
                n = r["gpus"]
                one = {k: n * sat["colocated"][k] for k in ("lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps")}
                ext.append(dict(lam_star_prefill_rps=np.nan, lam_star_decode_rps=np.nan, binding_sim="colocated",
                                reliable=bool(sat["colocated"]["reliable"]), **one))
                continue
            st = {name: {k: n * sat[name][k] for k in ("lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps")}
                  for name, n in (("prefill", r["n_prefill"]), ("decode", r["n_decode"]))}
            b = min(st, key=lambda k: st[k]["lam_star_rps"])
            ext.append(dict(lam_star_prefill_rps=st["prefill"]["lam_star_rps"],
                            lam_star_decode_rps=st["decode"]["lam_star_rps"], binding_sim=b,
                            reliable=bool(sat["prefill"]["reliable"] and sat["decode"]["reliable"]), **st[b]))
        df = pd.concat([df, pd.DataFrame(ext)], axis=1)
        timing["saturation_s"] = time.perf_counter() - t1
        if lam is not None:
            df["verdict"] = [verdict_of(lam, dict(lam_star_rps=a, lam_star_lo_rps=lo, lam_star_hi_rps=hi, reliable=ok))
                             for a, lo, hi, ok in zip(df.lam_star_rps, df.lam_star_lo_rps, df.lam_star_hi_rps,
                                                      df.reliable)]
    if lam is not None:
        lam = check_float("lam", lam, 0.0)
        df["lam_rps"] = lam
        df["verdict_closed_form"] = np.where(lam > df.mu_pd_rps, "unstable",
                                             np.where(lam < df.mu_pd_stable_rps, "stable", "between the bounds"))
    if latency is None:
        latency = simulate and lam is not None
    if latency:
        if lam is None:
            raise LqsError("lam", lam, "the coupled latency needs an arrival rate λ")
        df = _with_latency(df, workload, dep, pairs, col, G, lam, latency_mc, seed, horizon_s, warmup_s, progress,
                           timing)
    best = df[df.binding != "colocated"]["lam_star_rps" if simulate else "mu_pd_rps"].idxmax()
    df["best_split"] = df.index == best
    timing["total_s"] = time.perf_counter() - t0
    df.attrs["timing"] = timing
    return df


def _with_latency(df, workload, dep, pairs, col, G, lam, latency_mc, seed, horizon_s, warmup_s, progress, timing):
    """The split table with the coupled network's latency at λ for every split and the colocated cluster's."""
    from ._server import MonteCarlo, as_server
    from .engine.network import simulate_network

    mc = MonteCarlo(trials=2, seed=seed) if latency_mc is None else latency_mc
    deps = [dep.split(p, d) for p, d in pairs]
    import time

    t0 = time.perf_counter()
    net = simulate_network(workload, deps, lam, mc, horizon_s=horizon_s, warmup_s=warmup_s,
                           progress=progress)
    timing["network_s"] = time.perf_counter() - t0
    s = net.summary
    cols = {f"net_{c}": list(s[c]) for c in NET_COLUMNS}
    cols["net_reliable"] = list(s.reliable)
    cols["net_unreliable_reason"] = list(s.unreliable_reason)
    # the colocated row: G servers of the same hardware behind their router, the same λ, trials and horizon
    from .engine.simulate import simulate
    from .engine.network import typical_b

    b_ref = typical_b(workload, as_server(col))
    t_stop = net.config["horizon_s"]
    steps = max(int(round(t_stop / b_ref)), 1000)
    warm = int(round(net.config["warmup_s"] / b_ref))
    cres = simulate(workload, as_server(col).replace(servers=G), lam, mc.replace(steps=steps, warmup=warm),
                    verdict=False)
    cs = cres.summary.iloc[0]
    timing["colocated_latency_s"] = time.perf_counter() - t0 - timing["network_s"]
    colo = {"throughput_rps": cs.throughput_rps, "observed_drift_rps": cs.lam_rps - cs.throughput_rps,
            "lost": cs.latency_lost}
    for c in NET_COLUMNS:
        v = colo.get(c, cs.get(c, np.nan))
        cols[f"net_{c}"].append(v)
    cols["net_reliable"].append(bool(cs.reliable))
    cols["net_unreliable_reason"].append("" if cs.reliable else str(cs.get("unreliable_reason", "")))
    df = df.copy()
    for c, v in cols.items():
        df[c] = v
    df.attrs["network_config"] = net.config
    return df


def plot_splits(df: pd.DataFrame, path: str, label: str = "") -> str:
    """μ_PD (and the stable bound min_i μ_i(1−δ_i)) against the prefill fraction N_P / G, with the colocated rate of
    the same GPUs as a line; measured λ* points when the table has them."""
    from ._plots import _plt

    plt = _plt()
    d = df[df.binding != "colocated"].sort_values("prefill_fraction")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot(d.prefill_fraction, d.mu_pd_rps, "o-", color="C0", label="μ_PD (closed form: unstable above)")
    ax.plot(d.prefill_fraction, d.mu_pd_stable_rps, "s--", color="C0", alpha=0.6, ms=4,
            label="min μ_i(1−δ_i) (stable below)")
    if "lam_star_rps" in d:
        ax.errorbar(d.prefill_fraction, d.lam_star_rps,
                    yerr=[d.lam_star_rps - d.lam_star_lo_rps, d.lam_star_hi_rps - d.lam_star_rps], fmt="x",
                    color="C3", label="λ*_PD = min(λ*_P, λ*_D) (simulated)")
    for _, r in df[df.binding == "colocated"].iterrows():
        ax.axhline(r.mu_pd_rps, color="k", ls=":", label=f"{r.layout}: μ_exact")
    for _, r in d.iterrows():
        ax.annotate(r.layout, (r.prefill_fraction, r.mu_pd_rps), fontsize=7, textcoords="offset points",
                    xytext=(0, 5), ha="center")
    ax.set_xlabel("prefill fraction N_P / G")
    ax.set_ylabel("requests / s")
    ax.set_title(f"disaggregated P:D splits{(' — ' + label) if label else ''}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

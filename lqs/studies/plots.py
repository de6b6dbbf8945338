"""The studies' figures (matplotlib, Agg backend): each ``plot_<study>(df, meta)`` draws a study's table and
headline numbers into a new figure and returns it; :func:`save` writes it as PNG and closes it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .common import PAPER_CLUSTER, PAPER_M, ratio_label


def _plt():
    from .._plots import _plt as p

    return p()


def save(fig, path: str, dpi: int = 130) -> str:
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _run(meta):
    """(M, ŝ, b̄, trials, policy) of a study's meta, for titles."""
    srv, mc = meta["server"], meta["monte_carlo"]
    return srv["M_tokens"], srv["prefill_chunk_tokens"], meta["b_s"], mc["trials"], srv["policy"]


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


# ----------------------------------------------------------------------------------------------- phase diagram
def plot_phase(df, meta):
    """The long-run boundary λ*(x) with its band, μ(x) and μ(1−δ)(x), regions shaded by the verdict, and the
    optional latency layer over the stable region."""
    from matplotlib.colors import LogNorm

    plt = _plt()
    axis = meta["axis"]
    M, chunk, b, trials, policy = _run(meta)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.5, 5.6), sharey=True, gridspec_kw=dict(width_ratios=(3, 2)))
    cat = axis == "policy"
    y = np.arange(len(df)) if cat else df.value.to_numpy(np.float64)
    lo, hi, mid = (df[c].to_numpy(np.float64) for c in ("lam_star_lo_rps", "lam_star_hi_rps", "lam_star_rps"))
    x_max = 1.15 * float(np.nanmax(np.concatenate([hi, df.mu_rps.to_numpy(np.float64)])))
    if cat:
        for k in range(len(df)):
            ax.barh(k, lo[k], height=0.8, color="tab:green", alpha=0.25)
            ax.barh(k, hi[k] - lo[k], left=lo[k], height=0.8, color="0.55", alpha=0.6)
            ax.barh(k, x_max - hi[k], left=hi[k], height=0.8, color="tab:red", alpha=0.2)
        ax.plot(mid, y, "k^", ms=8, label="λ* (saturation throughput), 95 % interval")
        ax.plot(df.mu_rps, y, "ks", mfc="none", ms=8, label="μ (closed form): unstable above")
        ax.plot(df.mu_stable_rps, y, "ko", mfc="none", ms=8, label="μ(1−δ): swap stable below")
        ax.set_yticks(y, [str(v) for v in df.value])
    else:
        ax.fill_betweenx(y, 0, lo, color="tab:green", alpha=0.22, lw=0, label="stable (λ < λ*): long-run verdict")
        ax.fill_betweenx(y, lo, hi, color="0.55", alpha=0.6, lw=0, label="undecided (inside λ*'s 95 % interval)")
        ax.fill_betweenx(y, hi, x_max, color="tab:red", alpha=0.18, lw=0, label="unstable (λ > λ*)")
        ax.plot(mid, y, "k-", lw=1.2, label="λ*(x): saturation throughput")
        ax.plot(df.mu_rps, y, color="tab:purple", lw=1.6, label="μ (closed form): unstable above")
        ax.plot(df.mu_stable_rps, y, color="tab:purple", ls="--", lw=1.6, label="μ(1−δ): swap stable below")
        if axis in ("ratio", "M", "prefill_chunk", "length_scale"):
            ax.set_yscale("log")
        if axis == "ratio":
            ticks = [v for v in (0.125, 0.25, 0.5, 1, 2, 4, 8) if y.min() <= v <= y.max()]
            ax.set_yticks(ticks, [ratio_label(v) for v in ticks])
            ax.minorticks_off()
        ax.set_ylim(y.min(), y.max())
    cells = pd.DataFrame(meta.get("latency_cells") or [])
    if len(cells) and np.isfinite(cells.value_s).any():
        ok = np.isfinite(cells.value_s) & (cells.value_s > 0)
        yy = np.asarray([list(df.value).index(v) for v in cells.value[ok]]) if cat else cells.value[ok]
        sc = ax.scatter(cells.lam_rps[ok], yy, c=cells.value_s[ok], cmap="viridis", s=14, marker="s",
                        norm=LogNorm(), zorder=3)
        fig.colorbar(sc, ax=ax).set_label(f"{meta['latency']} (s) in the stable region")
    ax.set_xlim(0, x_max)
    ax.set_xlabel("arrival rate λ (requests/s)")
    # the same boundary relative to the closed form: where in [μ_exact(1−δ), μ_exact] the simulated λ* falls
    mue = df.mu_exact_rps.to_numpy(np.float64)
    one_minus_delta = 1 - df.delta.to_numpy(np.float64)
    if cat:
        ax2.errorbar(mid / mue, y, xerr=[(mid - lo) / mue, (hi - mid) / mue], fmt="k^", capsize=3)
        ax2.plot(one_minus_delta, y, "ko", mfc="none", label="1 − δ")
    else:
        ax2.fill_betweenx(y, lo / mue, hi / mue, color="0.55", alpha=0.6, lw=0, label="λ*/μ_exact, 95 % interval")
        ax2.plot(mid / mue, y, "k-", lw=1.2, label="λ*/μ_exact")
        ax2.plot(one_minus_delta, y, color="tab:purple", ls="--", lw=1.6, label="1 − δ (swap's guarantee)")
    ax2.axvline(1.0, color="tab:purple", lw=1.6, label="1 (μ_exact)")
    ax2.set_xlabel("λ* / μ_exact")
    ax2.legend(loc="lower left", fontsize=7.5, framealpha=0.9)
    ax2.grid(alpha=0.3)
    ylab = {"ratio": "P/D ratio (prompt : output length)", "M": "KV-cache capacity M (tokens)",
            "b": "batch time b̄ (s)", "prefill_chunk": "prefill chunk ŝ (tokens)",
            "token_budget": "token budget (tokens per step)", "length_scale": "length scale (× prompt and output)",
            "policy": "policy", "pd_split": f"prefill fraction N_P / G (G = {meta.get('gpus')} GPUs)"}[axis]
    ax.set_ylabel(ylab)
    ax.set_title(f"Stability phase diagram along {ylab.split(' (')[0]} ({policy if axis != 'policy' else 'policies'}"
                 f", M={M:,}, ŝ={chunk}, b̄={b:.4g} s)\nlong-run verdict from λ* of every row; {trials} Monte Carlo "
                 f"trials per row, {len(df)} rows", fontsize=10)
    ax.legend(loc="lower right", fontsize=7.5, framealpha=0.9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- b̄ error
def _bars(ax, sub, cases, ests, with_err):
    wdt = 0.8 / max(1, len(ests))
    for j, est in enumerate(ests):
        cell = [sub[(sub.case == c) & (sub.estimator == est)].iloc[0] for c in cases]
        vals = np.asarray([float(r.rel_miss) for r in cell])
        err = 196 * np.asarray([float(r.lam_star_se_rps / r.lam_star_rps) for r in cell]) if with_err else None
        ax.bar(np.arange(len(cases)) + (j - (len(ests) - 1) / 2) * wdt, 100 * vals, wdt, yerr=err,
               capsize=3 if with_err else 0, label=f"b̂ = {est}" if with_err else est)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(cases)))
    ax.set_ylabel("μ_exact(b̂)/λ* − 1 (%)  [> 0: over-predicts]")


def plot_b_error(df, meta):
    """One panel per part: the closed-form error curve, the i.i.d. estimators, the affine calibration points."""
    plt = _plt()
    M, chunk, b, _, _ = _run(meta)
    panels = [p for p in ("closed_form", "iid", "affine") if p in meta["sections"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.0), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sub = df[df.section == p]
        if p == "closed_form":
            ax.plot(100 * sub.b_rel_err, 100 * sub.rel_miss, "C0-", lw=2, label="μ̂/μ − 1 = −ε/(1+ε)")
            ax.axhline(0, color="k", lw=0.6)
            ax.axvline(0, color="k", lw=0.6)
            ax.set_xlabel("relative error of b̂, ε = b̂/b̄ − 1 (%)")
            ax.set_ylabel("relative error of μ̂ (%)")
            ax.set_title("(a) b̄ error → μ error (closed form)", fontsize=10)
        elif p == "iid":
            cases = [c for c in sub.case.unique() if not c.startswith("constant")]
            _bars(ax, sub, cases, list(meta["estimators"]), True)
            ax.axhline(-100 * meta["delta"], color="grey", ls=":", lw=1,
                       label=f"−δ = {-100 * meta['delta']:.1f}% (packing bound)")
            ax.set_xticklabels([c.replace(": ", ":\n") for c in cases], fontsize=8)
            ax.set_title(f"(b) i.i.d. batch times (mean {b:g} s): which b̂ predicts λ*", fontsize=10)
        else:
            cases = list(sub.case.unique())
            _bars(ax, sub, cases, list(sub.estimator.unique()), False)
            ax.set_xticklabels(cases)
            a = meta["affine"]["coefficients"]
            ax.set_title("(c) affine b = a0 + a1·prefill + a2·decode + a3·KV: b̄ measured where?\n"
                         f"a0={a['a0_s'] * 1e3:.3g} ms, a1={a['a1_s_per_prefill_token'] * 1e6:.3g} µs/token, "
                         f"a2={a['a2_s_per_decode_token'] * 1e6:.3g} µs/token, "
                         f"a3={a['a3_s_per_kv_token'] * 1e9:.3g} ns/token", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.suptitle(f"Batch-time estimate vs simulated critical rate\n{meta['workload']}, M={M:,}, ŝ={chunk}",
                 fontsize=10.5)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- δ
def plot_delta(df, meta):
    """λ*/μ_exact per policy against δ, inside the band [1−δ, 1]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.8, 5.0))
    dd = np.linspace(min(df.delta) * 0.9, max(df.delta) * 1.05, 100)
    ax.fill_between(dd, 1 - dd, 1, color="C2", alpha=0.15, label="theory band [μ_exact(1−δ), μ_exact]")
    ax.plot(dd, 1 - dd, "C2--", lw=1)
    ax.axhline(1, color="C2", lw=1)
    for i, pol in enumerate(meta["policies"]):
        s = df[df.policy == pol]
        ax.errorbar(s.delta, s.lam_star_over_mu_exact, yerr=1.96 * s.lam_star_se_rps / s.mu_exact_rps,
                    marker="os^"[i % 3], capsize=3, label=f"{pol}: simulated λ*")
    ax.set_xscale("log")
    ax.set_xlabel("δ = max(s+o) / M  (M shrinks from left to right)")
    ax.set_ylabel("λ* / μ_exact")
    Ms = meta["M_tokens"]
    _, chunk, b, trials, _ = _run(meta)
    ax.set_title(f"Saturation throughput against the δ band — {meta['workload']}, ŝ={chunk}, b̄={b:g} s\n"
                 f"M from {max(Ms):,} to {min(Ms):,} tokens; {trials} Monte Carlo trials, 95% intervals", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- mixtures
def plot_mixture(df, meta):
    """Share of trials whose backlog grew (finite horizon) for the phased schedule over the mean rate, with the
    μ_mix candidates and the long-run answer from the phases' saturation as vertical lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.0))
    g = df[df.kind == "phased"]
    ax.errorbar(g.lam_mean_rps, g.p_backlog_grows, yerr=[g.p_backlog_grows - g.p_backlog_grows_lo,
                                                         g.p_backlog_grows_hi - g.p_backlog_grows],
                fmt="ko-", capsize=3, label="simulated phased schedule: share of trials whose backlog grew")
    lines = [(meta["mu_exact_mix_count_rps"], "C0", "-", "μ_exact,mix — request-count weights λ_ℓT_ℓ"),
             (meta["mu_exact_mix_time_rps"], "C1", "--", "μ_exact,mix — time weights T_ℓ"),
             (meta["mu_exact_time_avg_rps"], "C3", ":", "Σ τ_ℓ μ_exact,ℓ (time average of rates)"),
             (meta["lam_star_from_phase_saturation_rps"], "C2", "-.",
              "phases at saturation, count-weighted (simulated)")]
    for v, c, ls, lab in lines:
        ax.axvline(v, color=c, ls=ls, lw=1.8, label=f"{lab}: {v:.3g}")
    names = meta["phases"]
    for j, m in enumerate(meta["mu_exact_phases_rps"]):
        ax.axvline(m, color="grey", lw=0.8, alpha=0.6)
        ax.text(m, 0.5, f" μ_exact {names[j]} ", rotation=90, fontsize=7, va="center", ha="right", color="grey")
    ax.set_ylim(-0.03, 1.15)
    ax.set_xlabel("mean arrival rate λ̄ over a cycle (requests/s)")
    ax.set_ylabel("trials whose backlog grew (fraction, finite horizon)")
    tf, lr = meta["time_frac"], meta["lam_ratio"]
    M, chunk, b, trials, _ = _run(meta)
    sched = " → ".join(f"{names[j]} ({tf[j]:.0%} of time, λ×{lr[j]:g})" for j in range(len(names)))
    ax.set_title(f"Piecewise-stationary mixture: {sched}, repeated\nM={M:,}, ŝ={chunk}, b̄={b:g} s; "
                 f"{trials} Monte Carlo trials per point", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- clusters
def plot_cluster(df, meta):
    """Waiting-time percentiles by routing against ρ; λ* by routing next to G·μ and G·μ(1−δ)."""
    plt = _plt()
    routings, G = meta["routings"], meta["servers"]
    M, chunk, b, trials, _ = _run(meta)
    saturation = bool(meta["lam_star_rps"])
    n_p = 2 if saturation else 1
    fig, axes = plt.subplots(1, n_p, figsize=(6.4 * n_p, 4.9), squeeze=False)
    ax = axes[0, 0]
    for i, rt in enumerate(routings):
        s = df[df.routing == rt]
        ax.plot(s.rho, s.wait_p99_s, marker="o", color=f"C{i}", label=f"{rt}: p99")
        ax.plot(s.rho, s.wait_mean_s, ls="--", marker=".", color=f"C{i}", alpha=0.7, label=f"{rt}: mean")
    ax.set_yscale("log")
    ax.set_xlabel("utilisation ρ = λ/μ, μ = G·M/(b̄·E[g]) of the cluster")
    ax.set_ylabel("waiting time before the first schedule (s)")
    ax.set_title(f"Waiting time by routing, G={G} servers", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    if saturation:
        mu, mu_st = meta["mu_rps"], meta["mu_stable_rps"]
        ax = axes[0, 1]
        x = np.arange(len(routings))
        v = np.asarray([meta["lam_star_rps"][r] for r in routings])
        e = np.asarray([meta["lam_star_se_rps"][r] for r in routings])
        for i in range(len(routings)):
            ax.errorbar(x[i], v[i], yerr=1.96 * e[i], fmt="o", ms=9, capsize=6, color=f"C{i}")
        ax.axhline(mu, color="k", lw=1.5, label=f"G·μ (closed form) = {mu:.4g}")
        ax.axhline(mu_st, color="k", ls="--", lw=1, label=f"G·μ(1−δ) = {mu_st:.4g}")
        if G == PAPER_CLUSTER["servers"] and M == PAPER_M:
            ax.axhline(PAPER_CLUSTER["mu_measured_rps"], color="C3", ls=":", lw=1.5,
                       label=f"paper Table 3, measured: {PAPER_CLUSTER['mu_measured_rps']}")
            ax.axhline(PAPER_CLUSTER["mu_theory_rps"], color="C3", ls="-.", lw=1,
                       label=f"paper Table 3, μ_theory: {PAPER_CLUSTER['mu_theory_rps']}")
        ax.set_xticks(x)
        ax.set_xticklabels(routings)
        ax.set_xlim(-0.6, len(routings) - 0.4)
        ax.set_ylim(min(v.min(), mu_st) * 0.97, max(v.max(), mu) * 1.02)
        ax.set_ylabel("critical rate λ* (requests/s, 95% interval)")
        ax.set_title("Cluster saturation throughput λ* by routing", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7.5, loc="lower right")
    fig.suptitle(f"{G}-server cluster — {meta['workload']}, M={M:,}/server, ŝ={chunk}, b̄={b:g} s; "
                 f"{trials} Monte Carlo trials", fontsize=10.5)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- latency
def plot_latency(df, meta):
    """Waiting time and TTFT percentiles against ρ, with the stability edge 1−δ."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    delta = meta["delta"]
    M, chunk, b, trials, policy = _run(meta)
    for ax, m, nm in ((axes[0], "wait", "waiting time (arrival → first schedule)"),
                      (axes[1], "ttft", "time to first token (TTFT)")):
        for q, ls in (("p50", ":"), ("p90", "--"), ("p99", "-")):
            ax.plot(df.rho, df[f"{m}_{q}_s"], ls=ls, marker="o", ms=4, label=q)
        ax.plot(df.rho, df[f"{m}_mean_s"], color="grey", lw=1, label="mean")
        ax.axvline(1 - delta, color="k", ls="--", lw=0.8, label=f"1−δ = {1 - delta:.3f} (stable below)")
        ax.set_yscale("log")
        ax.set_xlabel("utilisation ρ = λ/μ (closed-form μ)")
        ax.set_title(nm, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("seconds")
    fig.suptitle(f"Latency against utilisation ({policy}) — {meta['workload']}, M={M:,}, ŝ={chunk}, b̄={b:g} s, "
                 f"μ={meta['mu_rps']:.4g} req/s; {trials} Monte Carlo trials", fontsize=10.5)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- SLO
def plot_slo(df, meta):
    """The latency metric per number of servers G against the target, with the stability-only counts."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.8, 4.9))
    M, chunk, b, trials, _ = _run(meta)
    metric, target_s, rho = meta["metric"], meta["target_s"], meta["rho_target"]
    G_stab, G_rho, G_slo = meta["servers_stability"], meta["servers_rho"], meta["servers_slo"]
    what, q = metric[:-2].split("_")
    pretty = f"{q} {dict(wait='waiting time', ttft='TTFT', e2e='end-to-end latency')[what]}"
    stable = df.verdict == "stable"
    ax.plot(df.servers[stable], df.value_s[stable], "C0o-", label=f"simulated {pretty} per server")
    if (~stable).any():
        ax.plot(df.servers[~stable], df.value_s[~stable], "C3x", ms=9,
                label="not stable in the long run (λ/G ≥ λ*): grows with the horizon")
    ax.axhline(target_s, color="k", ls="--", lw=1, label=f"target {target_s:g} s")
    ax.axvline(G_stab, color="C1", ls=":", lw=1.5, label=f"⌈λ/μ⌉ = {G_stab} (stability only)")
    ax.axvline(G_rho, color="C2", ls="-.", lw=1.5, label=f"⌈λ/(μρ)⌉ = {G_rho} (ρ = {rho:g})")
    if G_slo is not None:
        ax.axvline(G_slo, color="C0", lw=2, alpha=0.5, label=f"fewest servers meeting the SLO: {G_slo}")
    ax.set_yscale("log")
    ax.set_xticks(df.servers)
    ax.set_xlabel("servers G (each serves λ/G)")
    ax.set_ylabel(f"{pretty} (s)")
    ax.set_title(f"Servers for a latency SLO at λ = {meta['lam_rps']:.4g} req/s — {meta['workload']}\n"
                 f"M={M:,}, ŝ={chunk}, b̄={b:g} s, μ={meta['mu_rps']:.4g} req/s per server; "
                 f"{trials} Monte Carlo trials per G", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

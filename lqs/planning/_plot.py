"""The plan's PNG: λ(t) against the planned capacity G(t)·μ and G(t)·λ* (step plots), with the verification
run's SLO attainment per window."""

from __future__ import annotations


def plot_plan(res, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    df, tot = res.windows, res.totals
    t = np.append(df.start_s.to_numpy(), df.end_s.to_numpy()[-1]) / 3600.0
    step = lambda y: np.append(y, y[-1])  # noqa: E731
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    ax.step(t, step(df.lam_rps.to_numpy()), where="post", color="k", label="λ(t) (offered)")
    G = df.servers.to_numpy()
    ax.step(t, step(G * df.mu_rps.to_numpy()), where="post", color="C0", label="G(t)·μ (closed form)")
    ax.step(t, step(G * df.lam_star_rps.to_numpy()), where="post", color="C1", ls="--", label="G(t)·λ* (simulated)")
    ax.set_ylabel("requests/s")
    axg = ax.twinx()
    axg.step(t, step(G), where="post", color="C2", alpha=0.5, label="G(t) servers")
    axg.set_ylabel("servers")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = axg.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax.set_title(f"capacity plan, SLO {tot['slo']}: peak {tot['servers_peak']} servers; GPU-hours "
                 f"{tot['gpu_hours_scaled']:.3g} scaled vs {tot['gpu_hours_static']:.3g} static", fontsize=9)
    if "verify_slo_met" in df:
        mid = (df.start_s.to_numpy() + df.end_s.to_numpy()) / 7200.0
        met = df.verify_slo_met.to_numpy().astype(bool)
        ax2.bar(mid, np.ones_like(mid), width=(t[1] - t[0]) * 0.9, color=np.where(met, "C2", "C3"))
        ax2.set_yticks([])
        ax2.set_ylabel("SLO met\n(verification)", fontsize=8)
    ax2.set_xlabel("time (h)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

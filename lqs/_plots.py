"""Figures (matplotlib, Agg backend, saved as PNG)."""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_waiting(result, path, max_trials: int = 5):
    """Waiting count over time of a few trials, one panel per configuration (like the paper's Fig. 2)."""
    plt = _plt()
    n_cfg = result.series_waiting.shape[0]
    show = list(range(n_cfg)) if n_cfg <= 6 else list(np.linspace(0, n_cfg - 1, 6).round().astype(int))
    fig, axes = plt.subplots(len(show), 1, figsize=(7.5, 2.2 * len(show) + 0.6), squeeze=False, sharex=True)
    summ = result.summary
    for ax, ci in zip(axes[:, 0], show):
        row = summ.iloc[ci]
        for r in range(min(max_trials, result.series_waiting.shape[1])):
            ax.plot(result.series_t[ci, r], result.series_waiting[ci, r], lw=0.8, alpha=0.8)
        verdict = (f"{row['verdict']}, " if isinstance(row.get('verdict'), str) else "") + f"backlog grew in {row['p_backlog_grows']:.0%} of trials"
        rho = f", ρ={row['rho']:.2f}" if np.isfinite(row.get("rho", np.nan)) else ""
        ax.set_title(f"λ={row['lam_rps']:.3g} req/s, M={row['M_tokens']}, {row['policy']}{rho} — {verdict}",
                     fontsize=9)
        ax.set_ylabel("waiting")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

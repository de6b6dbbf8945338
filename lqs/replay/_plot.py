"""PNG of a replay: measured and replayed per-request TTFT and E2E over the request index."""

from __future__ import annotations

import numpy as np


def plot_replay(res, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw, bench = res.raw, res.measured
    idx = np.arange(raw.t_enter.shape[1])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (name, rep, meas) in zip(axes, (("TTFT", raw.t_ttft - raw.t_enter, bench.ttfts),
                                            ("E2E", raw.t_done - raw.t_enter, bench.e2e))):
        if meas is not None:
            ax.plot(np.arange(len(meas)), meas, ".", ms=2.5, alpha=0.6, label="measured")
        med = np.nanmedian(rep, axis=0)
        ax.plot(idx, med, "-", lw=1.0, color="C1", label=f"replayed (median of {rep.shape[0]} trials)")
        if rep.shape[0] > 1:
            lo, hi = np.nanquantile(rep, 0.1, axis=0), np.nanquantile(rep, 0.9, axis=0)
            ax.fill_between(idx, lo, hi, color="C1", alpha=0.25, lw=0, label="replayed 10–90 %")
        ax.set_xlabel("request index (file order)")
        ax.set_ylabel(f"{name} (s)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{res.report['run_kind_text']} — {bench.trace.name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

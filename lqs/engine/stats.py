"""Statistics of a finite run: did the backlog visibly grow within the horizon (per trial), latency quantiles from
log-spaced histograms, and Wilson intervals. (Whether a configuration is stable in the long run is a different
question, answered against its saturation throughput: docs/model.md, "Two notions of stability".)"""

from __future__ import annotations

import math

import numpy as np

from ..kernels.state import EngineConfig


def backlog_grows(t, waiting, arrivals_w, warm_t0, n_batches: int = 10):
    """Per-trial test from the waiting-count series after warm-up (vectorised over trials).

    The window is cut into ``n_batches`` batches; the slope of the batch means of the waiting count against time,
    divided by its standard error, is the growth statistic. A trial's backlog grew when the growth is large
    against its noise (t > 3) **and** the waiting count rose by more than max(3, 1 % of the window's arrivals).
    Windows too short for batch means fall back to: rise > max(3, 1 %) + 3·sqrt(arrivals).
    Returns (grew bool[R], t_stat float[R], drift_rps float[R], rise float[R]).
    """
    t = np.asarray(t, np.float64)
    W = np.asarray(waiting, np.float64)
    A = np.asarray(arrivals_w, np.float64)
    R, P = W.shape
    n_w = (t >= np.asarray(warm_t0, np.float64)[:, None]).sum(1)  # records are taken at the same steps everywhere
    if R and not np.all(n_w == n_w[0]):
        out = [backlog_grows(t[r:r + 1], W[r:r + 1], A[r:r + 1], np.asarray(warm_t0)[r:r + 1], n_batches)
               for r in range(R)]
        return tuple(np.concatenate([o[i] for o in out]) for i in range(4))
    n = int(n_w[0]) if R else 0
    floor = np.maximum(3.0, 0.01 * A)
    if n < 2 * n_batches:
        rise = W[:, -1] - W[:, -n] if n >= 2 else np.zeros(R)
        span = t[:, -1] - t[:, -n] if n >= 2 else np.ones(R)
        grew = rise > floor + 3.0 * np.sqrt(np.maximum(A, 1.0))
        return grew, np.where(grew, np.inf, 0.0), rise / np.maximum(span, 1e-12), rise
    cut = (n // n_batches) * n_batches
    tb = t[:, -cut:].reshape(R, n_batches, -1).mean(2)
    wb = W[:, -cut:].reshape(R, n_batches, -1).mean(2)
    tc = tb - tb.mean(1, keepdims=True)
    wc = wb - wb.mean(1, keepdims=True)
    sxx = np.maximum((tc * tc).sum(1), 1e-300)
    beta = (tc * wc).sum(1) / sxx
    resid = wc - beta[:, None] * tc
    se = np.sqrt(np.maximum((resid * resid).sum(1) / (n_batches - 2), 0.0) / sxx)
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = np.where(se > 0, beta / np.where(se > 0, se, 1.0), np.sign(beta) * np.inf)
    tstat = np.nan_to_num(tstat, nan=0.0, posinf=np.inf, neginf=-np.inf)
    rise = wb[:, -1] - wb[:, 0]
    grew = (tstat > 3.0) & (rise > floor)
    return grew, tstat, beta, rise


def hist_quantiles(hist, qs, cfg: EngineConfig):
    """Quantiles from log-spaced histograms (geometric interpolation inside a bin). hist [..., n_bins]."""
    hist = np.asarray(hist, np.float64)
    edges = cfg.bin_edges  # n_bins-1 upper edges
    lower = np.concatenate([[0.0], edges])
    upper = np.concatenate([edges, [edges[-1] * (edges[1] / edges[0])]])
    cum = np.cumsum(hist, axis=-1)
    tot = cum[..., -1:]
    out = np.full(hist.shape[:-1] + (len(qs),), np.nan)
    for i, q in enumerate(qs):
        target = q * tot
        j = np.argmax(cum >= np.maximum(target, 1e-300), axis=-1)
        cprev = np.take_along_axis(cum, np.maximum(j - 1, 0)[..., None], -1)[..., 0]
        cprev = np.where(j == 0, 0.0, cprev)
        cnt = np.take_along_axis(hist, j[..., None], -1)[..., 0]
        frac = np.clip((target[..., 0] - cprev) / np.maximum(cnt, 1e-300), 0.0, 1.0)
        lo, hi = lower[j], upper[j]
        val = np.where(j == 0, hi * frac, lo * (hi / np.maximum(lo, 1e-300)) ** frac)
        out[..., i] = np.where(tot[..., 0] > 0, val, np.nan)
    return out


def wilson(k, n, z=1.96):
    if n == 0:
        return (np.nan, np.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))

"""Decode-only step times read off a benchmark run's per-request timelines (docs/model.md, "Calibrating the batch
time").

A streamed token reaches the client at the end of the engine step that produced it, so the gap between two tokens
of one request spans one step (chunks carrying one token each). A gap is *decode-only* when nothing could have been
prefilled in it: no request awaited its first token at either end (entered, first token not yet seen) and none
received its first token inside it. Such a gap is one step of the n requests then decoding, holding about
Σ (s_j + tokens decoded so far) tokens of KV. Grouped by n, the median gap is the step time of a decode-only batch
of n requests: the measurement that pins the decode part of an affine batch time (a0 + a2·n + a3·KV) without the
prefill steps that every TPOT mixes in.
"""

from __future__ import annotations

import numpy as np

#: fewest decode-only gaps a group of n must hold to be reported
MIN_GAPS = 50
#: gaps sampled per group to estimate its KV (the median over them)
KV_SAMPLE = 512


def decode_steps(start, ttft, itls, s, o, *, min_gaps: int = MIN_GAPS) -> np.ndarray | None:
    """float64[G, 4] rows (n decoding, median KV tokens, median decode-only gap s, number of gaps), one per n with
    at least ``min_gaps`` decode-only gaps, most gaps first; None when the run holds none (or lacks start times,
    TTFTs or per-request gaps). ``start``: per-request send instants (s), ``ttft`` (s), ``itls``: one array of gaps
    (s) per request, ``s`` / ``o``: prompt and output tokens."""
    if start is None or ttft is None or itls is None:
        return None
    start = np.asarray(start, np.float64)
    first = start + np.asarray(ttft, np.float64)
    times = [f + np.concatenate([[0.0], np.cumsum(np.asarray(g, np.float64))]) for f, g in zip(first, itls)]
    done = np.array([t[-1] for t in times])
    a = np.concatenate([t[:-1] for t in times])
    b = np.concatenate([t[1:] for t in times])
    ok_req = np.isfinite(first) & np.isfinite(done)
    if a.size == 0 or not ok_req.any():
        return None
    st, fs, ds = np.sort(start[ok_req]), np.sort(first[ok_req]), np.sort(done[ok_req])

    def waiting(t):  # entered, first token not yet seen
        return np.searchsorted(st, t, "right") - np.searchsorted(fs, t, "right")

    ok = (np.isfinite(a) & np.isfinite(b) & (b > a) & (waiting(a) == 0) & (waiting(b) == 0)
          & (np.searchsorted(fs, b, "right") == np.searchsorted(fs, a, "right")))
    if not ok.any():
        return None
    mid = 0.5 * (a + b)
    n = np.searchsorted(fs, mid, "left") - np.searchsorted(ds, mid, "left")
    gap = b - a
    s = np.asarray(s, np.float64)[ok_req]
    o = np.asarray(o, np.float64)[ok_req]
    f1, d1 = first[ok_req], done[ok_req]
    span = np.maximum(d1 - f1, 1e-12)
    rows = []
    for m in np.unique(n[ok]):
        sel = np.flatnonzero(ok & (n == m))
        if m < 1 or sel.size < min_gaps:
            continue
        pick = sel[np.linspace(0, sel.size - 1, min(sel.size, KV_SAMPLE)).astype(np.int64)]
        t = mid[pick][:, None]
        dec = (f1[None, :] < t) & (d1[None, :] > t)
        kv = np.sum(np.where(dec, s[None, :] + 1 + (o[None, :] - 1) * (t - f1[None, :]) / span[None, :], 0.0), 1)
        rows.append((float(m), float(np.median(kv)), float(np.median(gap[sel])), float(sel.size)))
    if not rows:
        return None
    out = np.array(rows)
    return out[np.argsort(-out[:, 3], kind="stable")]

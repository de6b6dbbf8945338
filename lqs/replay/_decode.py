"""The decode-only steps in calibration (docs/model.md, "Calibrating the batch time"): each fitted run's most
frequent decode-only step (lqs/traces/_steps.py) as a target of the affine model's a0 + a2·n + a3·KV, the starting
point of a0, a2, a3, and the bound a run that streamed one token per chunk puts on the front end."""

from __future__ import annotations

import numpy as np

#: a decode-only step time (the median of thousands of gaps) and the front end's bound weigh as this many targets
STEP_WEIGHT = 30.0
#: a run streamed one token per chunk (the front end kept up) when its gaps number at least this share of tokens
KEPT_UP = 0.95


def step_target(run, srv):
    """(n, KV in whole blocks, median gap s, whether the run streamed one token per chunk) of the run's most
    frequent decode-only step, or None when the run has none."""
    d = run.decode_steps
    if d is None or not len(d):
        return None
    n, kv, gap = (float(x) for x in d[0, :3])
    tokens = float(np.sum(np.maximum(np.asarray(run.trace.o, np.float64) - 1, 0)))
    kept_up = run.itl_gaps is not None and run.itl_gaps.size >= KEPT_UP * tokens
    # each request's KV rounded up to a whole block, on average
    return n, kv + n * (srv.block_size - 1) / 2, gap, bool(kept_up)


def decode_fit(steps, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    """(a0, a2, a3) ≥ 0 that best give the decode-only steps (n, KV, gap, _) as a0 + a2·n + a3·KV, in relative
    error: scipy's non-negative least squares (not re-derived here) on the rows scaled by each gap, solved for the
    coefficients in units of ``scale`` (their typical magnitudes)."""
    from scipy.optimize import nnls

    scale = np.asarray(scale, np.float64)
    rows = np.array([[1.0, n_dec, kv] for n_dec, kv, _, _ in steps]) / np.array([[g] for _, _, g, _ in steps])
    sol, _ = nnls(rows * scale, np.ones(len(steps)))
    return sol * scale


def decode_time(th: dict, n, kv):
    """The affine model's decode-only step of n requests holding kv tokens: a0 + a2·n + a3·KV (``th``: the
    coefficients, numbers or one array per candidate)."""
    return th["a0"] + th["a2"] * n + th["a3"] * kv


def step_losses(steps, th: dict, P: int) -> np.ndarray:
    """Loss terms of P candidates (``th``: {parameter: float[P]}) from the fitted runs' decode-only steps: an affine
    model's a0 + a2·n + a3·KV against each measured step, and, where a run streamed one token per chunk (its front
    end kept up with the engine, streaming a step's n tokens within the step), the bound n·f1 ≤ the step."""
    out = np.zeros(P)
    for n_dec, kv, gap, kept_up in steps:
        if "a0" in th:
            out += STEP_WEIGHT * np.log(decode_time(th, n_dec, kv) / gap) ** 2
        if "f1" in th and kept_up:
            out += STEP_WEIGHT * np.log(np.maximum(th["f1"] * n_dec / gap, 1.0)) ** 2
    return out

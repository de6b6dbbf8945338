"""fit_batch: the affine batch-time model b = a0 + a1·prefill tokens + a2·decode tokens + a3·memory in use
(docs/model.md, "Batch time"), fitted to a server's step log with optax.

The loss is Huber's (robust to the occasional slow step: a garbage collection, a recompilation) with its
threshold set from the residuals of an ordinary least-squares start (1.345 robust standard deviations); the
coefficients are kept ≥ 0 (a0 > 0) by fitting softplus-transformed parameters with Adam.

Step-log columns are found by name (case-insensitive), as for traces; override with ``time_col``,
``prefill_col``, ``decode_col``, ``mem_col``. A time column whose name ends in ``_ms``/``_us``/``_ns`` is
converted to seconds. The step logs of :func:`lqs.step_log` (``b``, ``prefill_tokens``, ``decode_tokens``,
``mem``) are recognised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from .._errors import LqsError, check_int
from .. import _jsonio

TIME_COLS = ("batch_time_s", "step_time_s", "iteration_time_s", "batch_time", "step_time", "iteration_time",
             "duration_s", "latency_s", "time_s", "b_s", "b", "batch_time_ms", "step_time_ms", "duration_ms",
             "latency_ms", "iteration_time_ms")
PREFILL_COLS = ("prefill_tokens", "num_prefill_tokens", "n_prefill_tokens", "prefill", "num_prefill",
                "scheduled_prefill_tokens")
DECODE_COLS = ("decode_tokens", "num_decode_tokens", "n_decode_tokens", "decode", "num_decode",
               "scheduled_decode_tokens")
MEM_COLS = ("mem", "mem_used", "mem_used_tokens", "memory_tokens", "memory_in_use", "kv_tokens",
            "kv_cache_tokens", "kv_tokens_used", "mem_tokens")
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass(frozen=True, eq=False)
class BatchFit:
    """Fitted coefficients (a0 s, a1 s/token, a2 s/token, a3 s/token), goodness of fit and the spec string."""

    a: tuple[float, float, float, float]
    r2: float
    residual_quantiles_s: dict
    huber_delta_s: float
    n_steps: int
    source: str
    columns: dict
    fit_s: float
    _xy: tuple = field(default=(), repr=False)

    @property
    def spec(self) -> str:
        """The batch-model text form, e.g. ``affine:0.012,1.5e-05,2e-05,1e-08`` (``--b-model``)."""
        return "affine:" + ",".join(f"{v:.6g}" for v in self.a)

    @property
    def batch(self):
        """The fitted model as an :class:`lqs.AffineBatch`."""
        from .._batch import AffineBatch

        return AffineBatch(*self.a)

    def to_dict(self) -> dict:
        return {"source": self.source, "n_steps": self.n_steps, "a0_s": self.a[0], "a1_s_per_prefill_token": self.a[1],
                "a2_s_per_decode_token": self.a[2], "a3_s_per_memory_token": self.a[3], "r2": self.r2,
                "residual_quantiles_s": self.residual_quantiles_s, "huber_delta_s": self.huber_delta_s,
                "columns": self.columns, "spec": self.spec, "fit_s": self.fit_s}

    def save(self, out_dir) -> dict:
        """Write ``batch_fit.json`` and ``batch_fit.png`` (measured vs fitted step times, residuals)."""

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths = {"report": os.path.join(out_dir, "batch_fit.json"), "plot": os.path.join(out_dir, "batch_fit.png")}
        with open(paths["report"], "w", encoding="utf-8") as fh:
            _jsonio.dump(self.to_dict(), fh, indent=1)
        X, y = self._xy
        pred = X @ np.asarray(self.a)
        fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
        ax[0].scatter(pred, y, s=4, alpha=0.4)
        lim = [0, float(max(pred.max(), np.quantile(y, 0.995)))]
        ax[0].plot(lim, lim, "k--", lw=1)
        ax[0].set_xlabel("fitted step time (s)")
        ax[0].set_ylabel("measured step time (s)")
        ax[0].set_title(f"R² = {self.r2:.4f}")
        ax[1].hist(y - pred, bins=80)
        ax[1].set_xlabel("residual (s)")
        ax[1].set_title(self.spec)
        fig.tight_layout()
        fig.savefig(paths["plot"], dpi=110)
        plt.close(fig)
        return paths


def _read_steplog(steplog, fmt):
    """(DataFrame, label) from a path (CSV/JSONL/Parquet, as traces) or a DataFrame."""
    if isinstance(steplog, pd.DataFrame):
        return steplog, "<DataFrame>"
    from ..traces.read import _detect_format, _read_table, _resolve_source

    src, label, _, hint = _resolve_source(steplog, "steplog")
    if label.startswith("bundled:"):
        raise LqsError("steplog", steplog, "must be a step-log file, not a bundled trace")
    df = _read_table(src, _detect_format(hint, fmt, "steplog"), label, "steplog")
    return df.rename(columns=lambda c: c.strip() if isinstance(c, str) else c), label


def _column(df, label, param, explicit, names, what, required=True):
    from ..traces.columns import _cols_text, _find_col

    cols = list(df.columns)
    if explicit is not None:
        c = _find_col(cols, explicit)
        if c is None:
            raise LqsError(param, explicit, f"must name a column of {label}; columns found: {_cols_text(cols)}")
        return c
    for n in names:
        c = _find_col(cols, n)
        if c is not None:
            return c
    if required:
        raise LqsError(param, None, f"no {what} column found in {label}; columns found: {_cols_text(cols)}",
                       f"name it with {param}")
    return None


def _values(df, col, label, *, positive: bool) -> np.ndarray:
    ser = df[col]
    x = pd.to_numeric(ser, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(x) | ((x <= 0) if positive else (x < 0))
    if bad.any():
        i = int(np.argmax(bad))
        raw = ser.iloc[i]
        raw = raw.item() if hasattr(raw, "item") else raw
        raise LqsError(str(col), raw, f"every value must be a finite number {'> 0' if positive else '≥ 0'}",
                       f"row {i} of {label}")
    return x


def fit_batch(steplog, *, time_col: str | None = None, prefill_col: str | None = None,
              decode_col: str | None = None, mem_col: str | None = None, fmt: str | None = None,
              steps: int = 3000, lr: float = 0.05, huber_delta: float | None = None) -> BatchFit:
    """Fit b = a0 + a1·prefill + a2·decode + a3·memory (all coefficients ≥ 0, a0 > 0) to a step log.

    ``steplog`` is a CSV/JSONL/Parquet path or a DataFrame with one row per engine step. The memory column is
    optional (a3 = 0 without it). ``huber_delta`` (seconds) overrides the robust threshold. Returns a
    :class:`BatchFit` (``.a``, ``.r2``, ``.spec``, ``.batch``, ``to_dict()``, ``save(out_dir)``).
    """
    import time

    t0 = time.perf_counter()
    steps = check_int("steps", steps, 1)
    df, label = _read_steplog(steplog, fmt)
    if len(df) < 4:
        raise LqsError("steplog", label, "must hold at least 4 steps to fit 4 coefficients", f"it holds {len(df)}")
    tc = _column(df, label, "time_col", time_col, TIME_COLS, "step-time")
    pc = _column(df, label, "prefill_col", prefill_col, PREFILL_COLS, "prefill-token")
    dc = _column(df, label, "decode_col", decode_col, DECODE_COLS, "decode-token")
    mc = _column(df, label, "mem_col", mem_col, MEM_COLS, "memory-in-use", required=mem_col is not None)
    from ..traces.columns import _unit_from_name

    y = _values(df, tc, label, positive=True) * _unit_from_name(tc)
    cols = [np.ones(len(df)), _values(df, pc, label, positive=False), _values(df, dc, label, positive=False),
            _values(df, mc, label, positive=False) if mc is not None else np.zeros(len(df))]
    X = np.stack(cols, axis=1)
    xs = np.where(X.max(0) > 0, X.max(0), 1.0)  # scale each feature to [0, 1]
    ys = float(np.median(y))
    Xn, yn = X / xs, y / ys
    active = X.max(0) > 0
    # least-squares start, clipped into the feasible set; Huber threshold from its residuals
    c0 = np.zeros(4)
    c0[active] = np.linalg.lstsq(Xn[:, active], yn, rcond=None)[0]
    c0 = np.maximum(c0, 1e-4)
    r0 = yn - Xn @ c0
    mad = 1.4826 * np.median(np.abs(r0 - np.median(r0)))
    delta = huber_delta / ys if huber_delta is not None else max(1.345 * mad, 1e-6)
    mask = jnp.asarray(active, jnp.float32)
    Xj, yj = jnp.asarray(Xn, jnp.float32), jnp.asarray(yn, jnp.float32)

    def coef(theta):
        return jax.nn.softplus(theta) * mask

    def loss(theta):
        return jnp.mean(optax.losses.huber_loss(Xj @ coef(theta), yj, delta=delta))

    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))
    theta0 = jnp.asarray(np.log(np.expm1(c0)), jnp.float32)  # softplus⁻¹

    @jax.jit
    def run(theta):
        def body(carry, _):
            th, st = carry
            g = jax.grad(loss)(th)
            upd, st = opt.update(g, st, th)
            return (optax.apply_updates(th, upd), st), None

        (th, _), _ = jax.lax.scan(body, (theta, opt.init(theta)), None, length=steps)
        return th

    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix its int32 step count with Python floats
        c = np.asarray(coef(run(theta0)), np.float64)
    a = c * ys / xs
    a[0] = max(a[0], 1e-12)
    pred = X @ a
    res = y - pred
    r2 = float(1.0 - np.sum(res**2) / np.sum((y - y.mean()) ** 2)) if np.ptp(y) > 0 else float("nan")
    return BatchFit(a=tuple(float(v) for v in a), r2=r2,
                    residual_quantiles_s={f"p{round(q * 100):02d}": float(np.quantile(res, q)) for q in QUANTILES},
                    huber_delta_s=float(delta * ys), n_steps=len(df), source=label,
                    columns={"time": str(tc), "prefill": str(pc), "decode": str(dc),
                             "memory": None if mc is None else str(mc)},
                    fit_s=time.perf_counter() - t0, _xy=(X, y))

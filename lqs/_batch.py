"""Batch-time models: how long one engine step (one batch iteration) lasts, in seconds (docs/model.md, "Batch time").

Each model is an equinox Module whose numbers are array leaves (sweepable without recompiling) and whose
``draw(u1, u2, prefill_tokens, decode_tokens, mem_used)`` maps two uniforms and the step's composition to b_n.
Each model's ``kind`` is the name of its text form (:func:`parse_batch_spec`): ``constant``, ``empirical``,
``lognormal`` (also what ``two-speed`` builds: a two-component mixture) and ``affine``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import LqsError, check_float
from ._theory import estimate_b
from .kernels.state import affine_time


class BatchTime(eqx.Module):
    def draw(self, u1, u2, prefill_tokens, decode_tokens, mem_used):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def mean_s(self) -> float:
        """E[b] (for constant and iid models); the theory's b̄ by default."""
        raise NotImplementedError  # pragma: no cover

    def max_s(self, M: int, K: int, chunk: int) -> float:
        """An upper bound (or a far quantile) of b_n, for sizing the static arrival cap."""
        raise NotImplementedError  # pragma: no cover

    kind: str = eqx.field(static=True, default="?")


class ConstantBatch(BatchTime):
    """b_n = b̄ (the paper)."""

    b: np.ndarray
    kind: str = eqx.field(static=True, default="constant")

    def __init__(self, b):
        self.b = np.asarray(check_float("b", b, 0.0, lo_open=True), np.float64)  # exact b̄ for the theory columns
        self.kind = "constant"

    def draw(self, u1, u2, prefill_tokens, decode_tokens, mem_used):
        return jnp.asarray(self.b, jnp.float32)

    @property
    def mean_s(self):
        return float(self.b)

    def max_s(self, M, K, chunk):
        return float(np.max(self.b))


class EmpiricalBatch(BatchTime):
    """b_n resampled i.i.d. from observed batch times."""

    samples: np.ndarray
    kind: str = eqx.field(static=True, default="empirical")

    def __init__(self, samples):
        x = np.asarray(samples, np.float64).ravel()
        estimate_b(x, "mean")  # validates (non-empty, finite, > 0)
        self.samples = x.astype(np.float32)
        self.kind = "empirical"

    def draw(self, u1, u2, prefill_tokens, decode_tokens, mem_used):
        n = self.samples.shape[-1]
        i = jnp.minimum(jnp.floor(u1 * n).astype(jnp.int32), n - 1)
        return jnp.asarray(self.samples)[i]

    @property
    def mean_s(self):
        return float(np.mean(self.samples.astype(np.float64)))

    def max_s(self, M, K, chunk):
        return float(np.max(self.samples))


class LogNormalBatch(BatchTime):
    """b_n i.i.d. from a mixture of lognormals: component i with probability p_i, median m_i, log-sd σ_i.

    One component is a plain lognormal; two components with, say, 70 % near the median and 30 % much slower give
    the paper's appendix shape (most batches alike, a heavy slow tail).
    """

    probs: np.ndarray
    log_median: np.ndarray
    sigma: np.ndarray
    kind: str = eqx.field(static=True, default="lognormal")

    def __init__(self, probs, medians_s, sigmas):
        p = np.atleast_1d(np.asarray(probs, np.float64))
        m = np.atleast_1d(np.asarray(medians_s, np.float64))
        sg = np.atleast_1d(np.asarray(sigmas, np.float64))
        if not (p.shape == m.shape == sg.shape) or p.ndim != 1:
            raise LqsError("probs", p.tolist(), "probs, medians and sigmas must be 1-D lists of equal length")
        if np.any(p < 0) or p.sum() <= 0 or np.any(~np.isfinite(p)):
            raise LqsError("probs", p.tolist(), "must be finite, ≥ 0, with a positive sum")
        for v in m:
            check_float("median_s", v, 0.0, lo_open=True)
        for v in sg:
            check_float("sigma", v, 0.0)
        self.probs = (p / p.sum()).astype(np.float32)
        self.log_median = np.log(m).astype(np.float32)
        self.sigma = sg.astype(np.float32)
        self.kind = "lognormal"

    @classmethod
    def from_mean_cv(cls, mean_s, cv):
        """A single lognormal with the given mean and coefficient of variation."""
        mean_s = check_float("mean_s", mean_s, 0.0, lo_open=True)
        cv = check_float("cv", cv, 0.0)
        s2 = math.log1p(cv * cv)
        return cls([1.0], [mean_s * math.exp(-s2 / 2)], [math.sqrt(s2)])

    @classmethod
    def two_speed(cls, fast_s, slow_s, slow_frac=0.3, sigma=0.1):
        """The paper's appendix shape: a fraction ``slow_frac`` of batches much slower than the rest."""
        slow_frac = check_float("slow_frac", slow_frac, 0.0, 1.0)
        return cls([1 - slow_frac, slow_frac], [fast_s, slow_s], [sigma, sigma])

    def draw(self, u1, u2, prefill_tokens, decode_tokens, mem_used):
        cum = jnp.cumsum(jnp.asarray(self.probs))
        j = jnp.sum(u1 >= cum[:-1])
        z = jax.scipy.special.ndtri(jnp.clip(u2, 1e-7, 1 - 1e-7))
        return jnp.exp(jnp.asarray(self.log_median)[j] + jnp.asarray(self.sigma)[j] * z)

    @property
    def mean_s(self):
        p = self.probs.astype(np.float64)
        return float(np.sum(p * np.exp(self.log_median + self.sigma.astype(np.float64) ** 2 / 2)))

    def max_s(self, M, K, chunk):
        return float(np.max(np.exp(self.log_median + 5.3 * self.sigma)))  # the 1 − 1e-7 quantile


class AffineBatch(BatchTime):
    """b_n = a0 + a1·(prefill tokens in step) + a2·(decode tokens in step) + a3·(memory used in step)."""

    a: np.ndarray  # (a0, a1, a2, a3)
    kind: str = eqx.field(static=True, default="affine")

    def __init__(self, a0, a1=0.0, a2=0.0, a3=0.0):
        a = [check_float("a0", a0, 0.0, lo_open=True), check_float("a1", a1, 0.0),
             check_float("a2", a2, 0.0), check_float("a3", a3, 0.0)]
        self.a = np.asarray(a, np.float32)
        self.kind = "affine"

    def draw(self, u1, u2, prefill_tokens, decode_tokens, mem_used):
        a = jnp.asarray(self.a)
        return affine_time(a[0], a[1], a[2], a[3], prefill_tokens, decode_tokens, mem_used)

    @property
    def mean_s(self):
        raise LqsError("batch", "affine", "an affine batch time has no fixed mean: pass b̄ for the theory explicitly")

    def max_s(self, M, K, chunk):
        a = self.a.astype(np.float64)
        return float(a[0] + a[1] * min(M, K * chunk) + a[2] * K + a[3] * M)

    def typical_s(self, M, chunk, n_service) -> float:
        """b_n of a typical saturated step: one prefill chunk, ``n_service`` requests decoding, the cache full."""
        a = self.a.astype(np.float64)
        return float(a[0] + a[1] * chunk + a[2] * n_service + a[3] * M)


#: the name before 0.3 (deprecated: lqs.LogNormalMixBatch still resolves, with a DeprecationWarning)
LogNormalMixBatch = LogNormalBatch

# ----------------------------------------------------------------------------------------------- text specs
BATCH_KINDS = ("constant", "empirical", "lognormal", "two-speed", "affine")
#: largest coefficient of variation of lognormal:CV: its far quantile (the arrival cap is sized from it) is then
#: already ~100 × b̄ (σ = 2.15)
MAX_CV = 10.0
_SPEC_FORMS = "constant, empirical, lognormal:CV, two-speed:RATIO:FRAC or affine:A0,A1,A2,A3"


def parse_batch_spec(spec: str | None, b_s: float, samples=None, *, param: str = "batch") -> BatchTime:
    """A BatchTime from its text form, with mean b̄ = ``b_s`` seconds where the form needs one:

    - ``constant``: b̄ every step (the paper); ``constant:B``: b̄ = B seconds;
    - ``empirical``: i.i.d. draws from ``samples`` (measured step times, seconds);
    - ``lognormal:CV``: i.i.d. log-normal with mean b̄ and coefficient of variation CV (default 0.5);
    - ``two-speed:RATIO:FRAC``: a fraction FRAC of steps RATIO times slower than the rest, mean b̄;
    - ``affine:A0,A1,A2,A3``: b = A0 + A1·prefill tokens + A2·decode tokens + A3·memory in use (b̄ unused).

    Errors name ``param``."""
    from ._errors import check_float, parse_number

    def num(text, lo=None, hi=None):
        return check_float(param, parse_number(param, text), lo, hi)

    spec = (spec or "constant").strip()
    name, _, arg = spec.partition(":")
    if name == "empirical" and arg:
        raise LqsError(param, spec, f"{name} takes no argument (b̄ comes from the samples)")
    if name == "constant":
        if arg:
            try:
                return ConstantBatch(parse_number(param, arg))
            except LqsError:
                raise LqsError(param, spec, "constant:B needs B, b̄ in seconds (> 0)") from None
        return ConstantBatch(b_s)
    if name == "empirical":
        if samples is None:
            raise LqsError(param, spec, "empirical needs measured step times (--b-samples FILE)")
        return EmpiricalBatch(samples)
    if name == "lognormal":
        try:
            cv = check_float("CV", parse_number("CV", arg or "0.5"), 0.0, MAX_CV)
        except LqsError:
            raise LqsError(param, spec, f"lognormal:CV needs a coefficient of variation CV in [0, {MAX_CV:g}]") from None
        return LogNormalBatch.from_mean_cv(b_s, cv)
    if name == "two-speed":
        try:
            r_s, f_s = arg.split(",") if "," in arg else arg.split(":")
        except ValueError:
            raise LqsError(param, spec, "two-speed:RATIO:FRAC, e.g. two-speed:3:0.3") from None
        ratio, frac = num(r_s, 1.0), num(f_s, 0.0, 1.0)
        fast = b_s / (1 - frac + frac * ratio)  # mean b̄ (σ = 0.1 adds < 1 %, corrected below)
        m = LogNormalBatch.two_speed(fast, fast * ratio, frac)
        return LogNormalBatch.two_speed(fast * b_s / m.mean_s, fast * ratio * b_s / m.mean_s, frac)
    if name == "affine":
        try:
            a = [float(x) for x in arg.split(",")]
        except ValueError:
            a = []
        if len(a) != 4:
            raise LqsError(param, spec, "affine:A0,A1,A2,A3 with four numbers (seconds, s/token, s/token, s/token)")
        try:
            return AffineBatch(*a)
        except LqsError as e:
            raise LqsError(param, spec, "affine:A0,A1,A2,A3 needs A0 > 0 and A1, A2, A3 ≥ 0",
                           f"{e.param}={e.value}") from None
    raise LqsError(param, spec, f"must be {_SPEC_FORMS}")


def check_batch_spec(spec: str, *, param: str = "batch", allow_empirical: bool = False) -> str:
    """Validate a batch-model text form without samples (sweeps and studies); returns it stripped."""
    spec = str(spec).strip()
    name = spec.partition(":")[0]
    if name == "empirical" and not allow_empirical:
        raise LqsError(param, spec, "must be constant, lognormal:CV, two-speed:RATIO:FRAC or affine:A0,A1,A2,A3",
                       "empirical batch times need a samples file: use lqs simulate --b-model empirical")
    parse_batch_spec(spec, 1.0, samples=[1.0] if name == "empirical" else None, param=param)
    return spec

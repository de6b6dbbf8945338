"""Closed-form theory of Nie, Si & Zhou (arXiv 2605.04595), as docs/model.md states it.

Every function here is vectorised and works on Python numbers, numpy arrays and JAX arrays alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ._errors import LqsError, check_float, check_int


def prefill_steps(s, prefill_chunk):
    """k(s) = ⌈s/ŝ⌉: the steps a prompt of s tokens takes to prefill in chunks of ŝ tokens."""
    return (s + prefill_chunk - 1) // prefill_chunk


def g_paper(s, o, prefill_chunk):
    """Paper's lifetime memory-work g(s,o) = [(1 + s/ŝ)·s + 2·o·s + (1 + o)·o] / 2 (s/ŝ treated as real)."""
    return ((1.0 + s / prefill_chunk) * s + 2.0 * o * s + (1.0 + o) * o) / 2.0


def g_exact(s, o, prefill_chunk):
    """Exact lifetime memory-work Σ_{c=1..k} min(cŝ, s) + o·s + o(o+1)/2 = ŝk(k−1)/2 + s + o·s + o(o+1)/2.

    Integer in, integer out (use int64 / Python ints for large lengths; int32 overflows above ~46,000 tokens).
    """
    k = prefill_steps(s, prefill_chunk)
    return prefill_chunk * k * (k - 1) // 2 + s + o * s + o * (o + 1) // 2


def _ceil_sum(n, block):
    """Σ_{x=1..n} ⌈x/β⌉ (n ≥ 0 integers, vectorised)."""
    q, r = n // block, n % block
    return block * q * (q + 1) // 2 + r * (q + 1)


def g_block(s, o, prefill_chunk, block):
    """Lifetime memory-work with KV blocks of β tokens: every footprint rounded up to whole blocks,
    Σ_{c=1..k} β⌈min(cŝ, s)/β⌉ + Σ_{d=1..o} β⌈(s+d)/β⌉ (= g_exact for β = 1). Integers in, int64 out."""
    s = np.asarray(s, np.int64)
    o = np.asarray(o, np.int64)
    k = prefill_steps(s, prefill_chunk)
    b = int(block)
    dec = b * (_ceil_sum(s + o, b) - _ceil_sum(s, b))
    last = b * ((s + b - 1) // b)  # the final chunk's footprint is s
    if prefill_chunk % b == 0:  # every full chunk c·ŝ is whole blocks
        pre = prefill_chunk * k * (k - 1) // 2 + last
    else:
        pre = last.copy()
        for c in range(1, int(np.max(k, initial=1))):
            pre = pre + np.where(c < k, b * ((c * prefill_chunk + b - 1) // b), 0)
    return pre + dec


def g_s_term(s, prefill_chunk, exact: bool):
    """A(s): the part of g that depends on s alone."""
    s = np.asarray(s, dtype=np.float64)
    if exact:
        k = np.ceil(s / prefill_chunk)
        return prefill_chunk * k * (k - 1) / 2.0 + s
    return (1.0 + s / prefill_chunk) * s / 2.0


def g_o_term(o):
    """C(o) = o(o+1)/2: the part of g that depends on o alone (same in both forms)."""
    o = np.asarray(o, dtype=np.float64)
    return o * (o + 1.0) / 2.0


def service_rate(M, b, mean_g):
    """μ = M / (b̄ · E[g]) requests per second."""
    return M / (b * mean_g)


def delta(max_total, M):
    """δ = ess sup(s+o) / M."""
    return max_total / M


def mu_mix(mus, weights):
    """Mixture service rate μ_mix = (Σ_ℓ q_ℓ / μ_ℓ)^−1 with request fractions q_ℓ (normalised here)."""
    mus = np.asarray(mus, dtype=np.float64)
    q = np.asarray(weights, dtype=np.float64)
    if mus.shape != q.shape or mus.ndim != 1 or mus.size == 0:
        raise LqsError("weights", weights, "must be a non-empty 1-D list with one weight per rate")
    if np.any(~np.isfinite(mus)) or np.any(mus <= 0):
        raise LqsError("mus", mus.tolist(), "must all be finite and > 0")
    if np.any(~np.isfinite(q)) or np.any(q < 0) or q.sum() <= 0:
        raise LqsError("weights", q.tolist(), "must be finite, ≥ 0, with a positive sum")
    q = q / q.sum()
    return float(1.0 / np.sum(q / mus))


def servers_needed(lam, mu, rho):
    """G = ⌈λ / (μ·ρ)⌉ serving instances of rate μ each for target utilisation ρ = λ/(G·μ) (at least 1)."""
    lam = check_float("lam", lam, 0.0)
    mu = check_float("mu", mu, 0.0, lo_open=True)
    rho = check_float("rho", rho, 0.0, 1.0, lo_open=True)
    x = lam / (mu * rho)
    # guard against 3.0000000000000004 → 4 from floating-point noise
    return max(1, int(math.ceil(x - 1e-12)))


# ----------------------------------------------------------------------------------------------- b̄ estimators
B_ESTIMATORS = ("mean", "median", "trimmed:ALPHA (0 ≤ ALPHA < 0.5)")


def parse_estimator(name: str) -> tuple[str, float]:
    """'mean' | 'median' | 'trimmed:0.05' → (kind, alpha)."""
    if not isinstance(name, str):
        raise LqsError("b_estimator", name, "must be one of " + ", ".join(B_ESTIMATORS))
    n = name.strip().lower()
    if n in ("mean", "median"):
        return n, 0.0
    if n.startswith("trimmed:") or n.startswith("trimmed_mean:"):
        a = n.split(":", 1)[1]
        try:
            alpha = float(a)
        except ValueError:
            raise LqsError("b_estimator", name, "trimmed:ALPHA needs a number ALPHA in [0, 0.5)") from None
        if not (0.0 <= alpha < 0.5):
            raise LqsError("b_estimator", name, "trimmed:ALPHA needs ALPHA in [0, 0.5)")
        return "trimmed", alpha
    raise LqsError("b_estimator", name, "must be one of " + ", ".join(B_ESTIMATORS))


def trimmed_mean(x, alpha: float) -> float:
    """α-trimmed mean: drop ⌊α·n⌋ samples from each end (as scipy.stats.trim_mean)."""
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    n = x.size
    cut = int(math.floor(alpha * n))
    if n - 2 * cut <= 0:
        raise LqsError("b_estimator", f"trimmed:{alpha}", f"trims away all {n} samples")
    return float(x[cut:n - cut].mean())


def estimate_b(samples, estimator: str = "median") -> float:
    """b̄ from observed batch times with the named estimator ('mean', 'median', 'trimmed:α')."""
    kind, alpha = parse_estimator(estimator)
    x = np.asarray(samples, dtype=np.float64).ravel()
    if x.size == 0:
        raise LqsError("b_samples", "[]", "must hold at least one batch time")
    if np.any(~np.isfinite(x)) or np.any(x <= 0):
        bad = x[~np.isfinite(x) | (x <= 0)][0]
        raise LqsError("b_samples", float(bad), "every batch time must be a finite number of seconds > 0")
    if kind == "mean":
        return float(x.mean())
    if kind == "median":
        return float(np.median(x))
    return trimmed_mean(x, alpha)


# ----------------------------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class Capacity:
    """Closed-form capacity of a Server (units in the field names). Rates are for the whole deployment: a
    cluster of ``servers`` instances serves ``servers`` times one instance's rate."""

    M_tokens: int
    prefill_chunk_tokens: int
    b_s: float
    servers: int
    mean_g_tokens2: float
    mean_g_exact_tokens2: float
    mean_g_se_tokens2: float  # 0 when E[g] is exact
    exact_moments: bool
    max_total_tokens: int
    delta: float
    mu_rps: float  # servers · M / (b̄ · E[g])
    mu_exact_rps: float  # servers · M / (b̄ · E[g_exact])
    mu_stable_rps: float  # μ(1−δ)
    mu_exact_stable_rps: float  # μ_exact(1−δ)
    block_size_tokens: int = 1
    mean_g_block_tokens2: float | None = None  # E[g_β] (KV blocks of β tokens; None for β = 1)
    mu_block_rps: float | None = None  # servers · M / (b̄ · E[g_β]): the rate of a server holding whole blocks

    def to_dict(self) -> dict:
        return asdict(self)

    def rho(self, lam):
        """Utilisation ρ = λ / μ (μ of the whole deployment, paper's g): the one definition lqs uses."""
        return np.asarray(lam, dtype=np.float64) / self.mu_rps


def capacity(workload, server, *, key=None, n_mc: int = 1_000_000) -> Capacity:
    """μ, μ_exact, δ and the stable range of ``workload`` on ``server`` (an :class:`lqs.Server` with one M and one
    b̄; for an affine batch-time model the closed form uses ``server.b_theory``). See docs/model.md."""
    from ._server import as_server
    from ._workload import as_workload

    if hasattr(server, "station_capacity"):  # an lqs.Disaggregated (prefill and decode pools): a DisaggCapacity
        return server.station_capacity(workload, key=key, n_mc=n_mc)
    server = as_server(server).require_scalar("capacity")
    cap = _capacity(as_workload(workload), server.M, server.prefill_chunk, server.b_mean_s, servers=server.servers,
                    key=key, n_mc=n_mc)
    if server.block_size > 1:
        import dataclasses

        gb = expected_g_block(as_workload(workload), server.prefill_chunk, server.block_size, key=key, n_mc=n_mc)
        cap = dataclasses.replace(cap, block_size_tokens=server.block_size, mean_g_block_tokens2=gb,
                                  mu_block_rps=server.servers * service_rate(server.M, server.b_mean_s, gb))
    return cap


def expected_g_block(workload, prefill_chunk, block, *, key=None, n_mc: int = 1_000_000) -> float:
    """E[g_β]: the exact mean over a trace's pairs (or a finite support), else a Monte Carlo mean of n_mc draws."""
    import jax

    s = getattr(workload, "s", None)
    if isinstance(s, np.ndarray) and isinstance(getattr(workload, "o", None), np.ndarray):  # Pairs: exact
        return float(np.mean(g_block(workload.s, workload.o, prefill_chunk, block)))
    key = jax.random.key(0) if key is None else key
    s, o = workload.sample(key, (int(n_mc),))
    return float(np.mean(g_block(np.asarray(s, np.int64), np.asarray(o, np.int64), prefill_chunk, block)))


def _capacity(workload, M, prefill_chunk, b, *, servers: int = 1, key=None, n_mc: int = 1_000_000) -> Capacity:
    M = check_int("M", M, 1)
    prefill_chunk = check_int("prefill_chunk", prefill_chunk, 1)
    b = check_float("b", b, 0.0, lo_open=True)
    G = check_int("servers", servers, 1)
    workload.validate(M)
    m = workload.expected_g(prefill_chunk, key=key, n_mc=n_mc)
    d = delta(workload.max_total, M)
    mu = G * service_rate(M, b, m.g)
    mue = G * service_rate(M, b, m.g_exact)
    return Capacity(M_tokens=M, prefill_chunk_tokens=prefill_chunk, b_s=b, servers=G, mean_g_tokens2=m.g,
                    mean_g_exact_tokens2=m.g_exact, mean_g_se_tokens2=m.se, exact_moments=m.exact,
                    max_total_tokens=int(workload.max_total), delta=d, mu_rps=mu, mu_exact_rps=mue,
                    mu_stable_rps=mu * (1 - d), mu_exact_stable_rps=mue * (1 - d))

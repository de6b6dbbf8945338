"""Disaggregated prefill and decode: a pool of prefill servers feeding a pool of decode servers through a KV
transfer, and its closed-form capacity (docs/model.md, "Disaggregated prefill and decode").

A request's prefill runs on a prefill server (its k(s) chunks, footprints min(c·ŝ, s)); its s KV tokens then move
to a decode server, held on the prefill server and reserved on the decode server for the transfer's τ(s) = τ0 + s/r
seconds; the decode server runs its o decode steps (footprints s+1 … s+o). Each pool is one memory-limited station:

    g_P(s)   = Σ_{c=1..k} min(c·ŝ_P, s) + s·τ(s)/b_P          μ_P = N_P·M_P / (b_P·E[g_P])
    g_D(s,o) = o·s + o(o+1)/2 + s·τ(s)/b_D                    μ_D = N_D·M_D / (b_D·E[g_D])

with the token-budget bounds N_P·B_P/(b_P·E[s]) and N_D·B_D/(b_D·E[o]); μ_PD is the smallest of the four. A
feed-forward tandem is stable iff each station is: unstable above μ_PD, stable below min_i μ_i(1−δ_i), with
δ_P = max s / M_P and δ_D = max(s+o) / M_D.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ._errors import LqsError, check_float, check_int
from ._workload import GMoments, Workload


@dataclass(frozen=True)
class Transfer:
    """The KV transfer from a prefill to a decode server: τ(s) = ``latency_s`` + s / ``tokens_per_s`` seconds
    (``tokens_per_s`` = inf: only the latency). :meth:`from_bandwidth` derives the rate from KV bytes per token and
    a link bandwidth."""

    latency_s: float = 0.0
    tokens_per_s: float = math.inf

    def __post_init__(self):
        object.__setattr__(self, "latency_s", check_float("transfer_latency", self.latency_s, 0.0))
        r = float(self.tokens_per_s)
        if not (r > 0) or math.isnan(r):
            raise LqsError("transfer_tokens_per_s", self.tokens_per_s, "must be > 0 tokens/s (inf: latency only)")
        object.__setattr__(self, "tokens_per_s", r)

    @classmethod
    def from_bandwidth(cls, kv_bytes_per_token: float, bandwidth_bytes_per_s: float, latency_s: float = 0.0):
        kv = check_float("kv_bytes_per_token", kv_bytes_per_token, 0.0, lo_open=True)
        bw = check_float("transfer_bandwidth", bandwidth_bytes_per_s, 0.0, lo_open=True)
        return cls(latency_s=latency_s, tokens_per_s=bw / kv)

    def time_s(self, s):
        s = np.asarray(s, np.float64)
        return self.latency_s + s / self.tokens_per_s  # s / inf = 0: latency only

    def describe(self) -> dict:
        return dict(latency_s=self.latency_s, tokens_per_s=self.tokens_per_s)


@dataclass(frozen=True)
class Disaggregated:
    """A deployment of ``n_prefill`` prefill servers and ``n_decode`` decode servers (each pool a :class:`Server`
    with its own M, chunk, token budget, batch-time model, policy and routing) and the KV ``transfer`` between
    them."""

    prefill: object
    decode: object
    n_prefill: int = 1
    n_decode: int = 1
    transfer: Transfer = field(default_factory=Transfer)

    def __post_init__(self):
        from ._server import as_server

        object.__setattr__(self, "prefill", as_server(self.prefill).replace(servers=1).require_scalar("prefill"))
        object.__setattr__(self, "decode", as_server(self.decode).replace(servers=1).require_scalar("decode"))
        object.__setattr__(self, "n_prefill", check_int("n_prefill", self.n_prefill, 1))
        object.__setattr__(self, "n_decode", check_int("n_decode", self.n_decode, 1))
        if not isinstance(self.transfer, Transfer):
            raise LqsError("transfer", self.transfer, "must be an lqs.Transfer")

    @property
    def gpus(self) -> int:
        return self.n_prefill + self.n_decode

    def station_capacity(self, workload, *, key=None, n_mc: int = 1_000_000) -> "DisaggCapacity":
        """The closed form of this deployment (what ``lqs.capacity(workload, self)`` returns)."""
        return capacity_disagg(workload, self, key=key, n_mc=n_mc)

    def split(self, n_prefill: int, n_decode: int) -> "Disaggregated":
        return replace(self, n_prefill=n_prefill, n_decode=n_decode)

    def describe(self) -> dict:
        return dict(prefill=self.prefill.describe(), decode=self.decode.describe(), n_prefill=self.n_prefill,
                    n_decode=self.n_decode, transfer=self.transfer.describe())


@dataclass(frozen=True)
class DisaggCapacity:
    """Closed-form capacity of a :class:`Disaggregated` deployment (rates for the whole deployment)."""

    n_prefill: int
    n_decode: int
    mean_g_prefill_tokens2: float  # E[g_P], transfer hold included
    mean_g_decode_tokens2: float  # E[g_D], transfer reservation included
    mean_transfer_s: float  # E[τ(s)]
    exact_moments: bool
    delta_prefill: float  # max s / M_P
    delta_decode: float  # max(s+o) / M_D
    mu_prefill_rps: float
    mu_decode_rps: float
    budget_prefill_rps: float | None  # N_P·B_P / (b_P·E[s]), None without a token budget
    budget_decode_rps: float | None  # N_D·B_D / (b_D·E[o])
    mu_pd_rps: float  # the smallest of the four: unstable above it
    binding: str  # which bound is μ_PD: prefill, decode, prefill budget or decode budget
    mu_pd_stable_rps: float  # min_i μ_i(1−δ_i), and below the budget bounds: stable below it

    def to_dict(self) -> dict:
        return asdict(self)


class _Station(Workload):
    """A pool's view of ``inner``'s requests (lengths drawn as ``inner`` draws them; moments exact where
    ``_moments`` is)."""

    inner: Workload

    def __init__(self, inner):
        self.inner = inner

    @property
    def n_uniforms(self):
        return self.inner.n_uniforms

    def sample_from_uniforms(self, u):
        return self.inner.sample_from_uniforms(u)

    @property
    def max_total(self):
        return self.inner.max_total

    @property
    def min_s(self):
        return self.inner.min_s

    def expected_g(self, prefill_chunk, *, key=None, n_mc: int = 1_000_000, method: str = "auto"):
        return self._exact_moments(prefill_chunk)


class PrefillStation(_Station):
    """A prefill server's requests: the prompts of ``inner``, each ending with its last prefill chunk (o = 0);
    memory-work Σ_{c=1..k} min(c·ŝ, s) (the transfer hold is not simulated)."""

    def sample_from_uniforms(self, u):
        s, o = self.inner.sample_from_uniforms(u)
        return s, o * 0

    @property
    def max_total(self):
        return _max_s(self.inner)

    def _exact_moments(self, prefill_chunk):
        a_s, _, _, _, es, _, exact = _moments(self.inner, prefill_chunk, Transfer())
        return GMoments(g=a_s, g_exact=a_s, se=0.0, exact=exact, mean_prompt_tokens=es, mean_output_tokens=0.0)


class DecodeStation(_Station):
    """A decode server's requests: those of ``inner`` arriving prefilled (no prefill steps: footprints s+1 … s+o,
    memory-work o·s + o(o+1)/2; the transfer reservation is not simulated). Under recompute a preempted request
    restarts its decode there (its prefill is not redone)."""

    prefilled = True

    def _exact_moments(self, prefill_chunk):
        _, c_d, _, _, es, eo, exact = _moments(self.inner, prefill_chunk, Transfer())
        return GMoments(g=c_d, g_exact=c_d, se=0.0, exact=exact, mean_prompt_tokens=es, mean_output_tokens=eo)


def _max_s(workload, field: str = "s") -> int:
    """The largest prompt (``field`` "s") or output ("o") length the workload can draw."""
    from ._workload import Independent, Mixture, PaddedPairs, Pairs, Phased

    if isinstance(workload, PaddedPairs):
        return int(np.max(getattr(workload.pairs, field)))
    if isinstance(workload, Pairs):
        return int(np.max(getattr(workload, field)))
    if isinstance(workload, Independent):
        return int(getattr(workload, field).hi)
    if isinstance(workload, (Mixture, Phased)):
        return max(_max_s(p, field) for p in workload.parts)
    raise LqsError("workload", type(workload).__name__, f"has no known largest {'prompt' if field == 's' else 'output'} length")


def check_fits(workload, dep: Disaggregated) -> tuple[int, int]:
    """(largest prompt, largest request) of ``workload``, checked against the prefill and decode pools' M."""
    max_s, max_total = _max_s(workload), int(workload.max_total)
    if max_s > dep.prefill.M:
        raise LqsError("prefill M", dep.prefill.M, f"must hold the largest prompt ({max_s} tokens)")
    if max_total > dep.decode.M:
        raise LqsError("decode M", dep.decode.M, f"must hold the largest request ({max_total} tokens of prompt + "
                       "output)")
    return max_s, max_total


def _moments(workload, chunk_p: int, transfer: Transfer, key=None, n_mc: int = 1_000_000):
    """(E[A_exact(s)], E[o·s + o(o+1)/2], E[s·τ(s)], E[τ(s)], E[s], E[o], exact): exact over a trace's pairs,
    else Monte Carlo means of n_mc draws."""
    import jax

    from ._theory import g_o_term, g_s_term
    from ._workload import Independent, Mixture, PaddedPairs

    w = workload.pairs if isinstance(workload, PaddedPairs) else workload
    if isinstance(w, Independent):  # exact over the marginals' finite supports (s and o independent)
        try:
            (vs, ps), (vo, po) = w.s.support(), w.o.support()
        except NotImplementedError:
            vs = None
        if vs is not None and vs.size <= 2_000_000 and vo.size <= 2_000_000:
            vs, vo = np.asarray(vs, np.float64), np.asarray(vo, np.float64)
            es, eo = float(ps @ vs), float(po @ vo)
            tau = transfer.time_s(vs)
            return (float(ps @ g_s_term(vs, chunk_p, exact=True)), es * eo + float(po @ g_o_term(vo)),
                    float(ps @ (vs * tau)), float(ps @ tau), es, eo, True)
    if isinstance(w, Mixture):  # request-weighted components
        parts = [(q, _moments(c, chunk_p, transfer, key, n_mc)) for q, c in w.components()]
        tot = sum(q for q, _ in parts)
        vals = [sum(q * m[i] for q, m in parts) / tot for i in range(6)]
        return (*vals, all(m[6] for _, m in parts))
    s, o = getattr(w, "s", None), getattr(w, "o", None)
    exact = isinstance(s, np.ndarray) and isinstance(o, np.ndarray)
    if not exact:
        s, o = w.sample(jax.random.key(0) if key is None else key, (int(n_mc),))
    s = np.asarray(s, np.float64)
    o = np.asarray(o, np.float64)
    tau = transfer.time_s(s)
    return (float(np.mean(g_s_term(s, chunk_p, exact=True))), float(np.mean(o * s + o * (o + 1) / 2)),
            float(np.mean(s * tau)), float(np.mean(tau)), float(s.mean()), float(o.mean()), exact)


def capacity_disagg(workload, dep: Disaggregated, *, key=None, n_mc: int = 1_000_000) -> DisaggCapacity:
    """μ_P, μ_D, the token-budget bounds, μ_PD, the binding station and the stable range of ``workload`` on the
    deployment ``dep`` (docs/model.md, "Disaggregated prefill and decode")."""
    from ._workload import as_workload

    workload = as_workload(workload)
    P, D = dep.prefill, dep.decode
    max_s, max_total = check_fits(workload, dep)
    a_s, c_d, s_tau, tau, es, eo, exact = _moments(workload, P.prefill_chunk, dep.transfer, key, n_mc)
    b_p, b_d = P.b_mean_s, D.b_mean_s
    g_p = a_s + s_tau / b_p
    g_d = c_d + s_tau / b_d
    mu_p = dep.n_prefill * P.M / (b_p * g_p)
    mu_d = dep.n_decode * D.M / (b_d * g_d)
    bud_p = None if P.token_budget is None else dep.n_prefill * P.token_budget / (b_p * es)
    bud_d = None if D.token_budget is None else dep.n_decode * D.token_budget / (b_d * eo)
    bounds = {"prefill": mu_p, "decode": mu_d, "prefill budget": bud_p, "decode budget": bud_d}
    bounds = {k: v for k, v in bounds.items() if v is not None}
    binding = min(bounds, key=bounds.get)
    d_p, d_d = max_s / P.M, max_total / D.M
    stable = min([mu_p * (1 - d_p), mu_d * (1 - d_d)] + [v for k, v in bounds.items() if "budget" in k])
    return DisaggCapacity(n_prefill=dep.n_prefill, n_decode=dep.n_decode, mean_g_prefill_tokens2=g_p,
                          mean_g_decode_tokens2=g_d, mean_transfer_s=tau, exact_moments=exact, delta_prefill=d_p,
                          delta_decode=d_d, mu_prefill_rps=mu_p, mu_decode_rps=mu_d, budget_prefill_rps=bud_p,
                          budget_decode_rps=bud_d, mu_pd_rps=bounds[binding], binding=binding,
                          mu_pd_stable_rps=stable)


def splits(gpus: int) -> list[tuple[int, int]]:
    """Every N_P:N_D with N_P + N_D = gpus and both ≥ 1."""
    gpus = check_int("gpus", gpus, 2)
    return [(p, gpus - p) for p in range(1, gpus)]

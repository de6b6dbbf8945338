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
import pandas as pd

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


def _max_s(workload) -> int:
    from ._workload import Independent, Mixture, PaddedPairs, Pairs, Phased

    if isinstance(workload, PaddedPairs):
        return int(np.max(workload.pairs.s))
    if isinstance(workload, Pairs):
        return int(np.max(workload.s))
    if isinstance(workload, Independent):
        return int(workload.s.hi)
    if isinstance(workload, (Mixture, Phased)):
        return max(_max_s(p) for p in workload.parts)
    raise LqsError("workload", type(workload).__name__, "has no known largest prompt length")


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
    max_s, max_total = _max_s(workload), int(workload.max_total)
    if max_s > P.M:
        raise LqsError("prefill M", P.M, f"must hold the largest prompt ({max_s} tokens)")
    if max_total > D.M:
        raise LqsError("decode M", D.M, f"must hold the largest request ({max_total} tokens of prompt + output)")
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


#: the coupled network's columns the split table carries (latency at λ)
NET_COLUMNS = ("throughput_rps", "observed_drift_rps", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
               "e2e_p50_s", "e2e_p99_s", "transfer_p50_s", "decode_wait_p50_s", "wait_p99_s", "lost", "censored")


def split_table(workload, dep: Disaggregated, gpus: int | None = None, *, pairs=None, colocated=None,
                lam: float | None = None, simulate: bool = False, mc=None, seed: int = 0,
                progress: bool = False, cache: dict | None = None, latency: bool | None = None,
                latency_mc=None, horizon_s: float | None = None, warmup_s: float | None = None) -> pd.DataFrame:
    """The closed form over the P:D splits of ``gpus`` (or the explicit ``pairs`` of (N_P, N_D)), best first by
    μ_PD, with the colocated row of the same GPUs (``colocated``: a Server, default the prefill pool's; each GPU one
    colocated server). With ``lam``: the verdict of each row at λ (stable, unstable, or between the bounds).

    ``simulate``: the saturation rule per station (:func:`station_saturation`, one engine call for the prefill,
    decode and colocated servers, whatever the number of splits): λ*_P = N_P·λ*(prefill server), λ*_D =
    N_D·λ*(decode server), λ*_PD = min of the two (its 95 % interval that station's), the simulated binding station
    and, with ``lam``, the long-run verdict. The stations run without the transfer hold (the closed form has it).

    ``latency`` (default: with ``simulate`` and ``lam``): the coupled network of every split at λ, all splits in
    one program (:func:`lqs.engine.network.simulate_network`, ``latency_mc`` trials, default 2; ``horizon_s``,
    ``warmup_s``), and G colocated servers behind their router at λ (lqs.simulate): the columns
    ``net_<metric>`` (TTFT, TPOT, E2E and transfer percentiles, throughput, the observed drift) and
    ``net_reliable``. A split above its λ*_PD has no steady state: its latencies grow with the horizon and its row
    is marked unreliable."""
    from ._theory import capacity

    import time

    t0 = time.perf_counter()
    timing = {}
    if pairs is None:
        pairs = splits(dep.gpus if gpus is None else gpus)
    rows = []
    for p, d in pairs:
        c = capacity_disagg(workload, dep.split(p, d))
        rows.append(dict(layout=f"{p}P:{d}D", n_prefill=p, n_decode=d, gpus=p + d, prefill_fraction=p / (p + d),
                         mu_prefill_rps=c.mu_prefill_rps, mu_decode_rps=c.mu_decode_rps,
                         budget_prefill_rps=c.budget_prefill_rps, budget_decode_rps=c.budget_decode_rps,
                         mu_pd_rps=c.mu_pd_rps, mu_pd_stable_rps=c.mu_pd_stable_rps, binding=c.binding,
                         delta_prefill=c.delta_prefill, delta_decode=c.delta_decode))
    G = max(r["gpus"] for r in rows)
    col = (dep.prefill if colocated is None else colocated)
    from ._server import as_server

    cc = capacity(workload, as_server(col).replace(servers=G))
    rows.append(dict(layout=f"colocated ×{G}", n_prefill=0, n_decode=0, gpus=G, prefill_fraction=np.nan,
                     mu_prefill_rps=np.nan, mu_decode_rps=np.nan, budget_prefill_rps=None, budget_decode_rps=None,
                     mu_pd_rps=cc.mu_exact_rps, mu_pd_stable_rps=cc.mu_exact_stable_rps, binding="colocated",
                     delta_prefill=np.nan, delta_decode=cc.delta))
    df = pd.DataFrame(rows)
    timing["closed_form_s"] = time.perf_counter() - t0
    if simulate:
        from .engine.verdict import verdict_of

        t1 = time.perf_counter()
        sat = station_saturation(workload, dep, mc, seed=seed, colocated=col, progress=progress, cache=cache)
        ext = []
        for r in rows:
            if r["binding"] == "colocated":
                n = r["gpus"]
                one = {k: n * sat["colocated"][k] for k in ("lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps")}
                ext.append(dict(lam_star_prefill_rps=np.nan, lam_star_decode_rps=np.nan, binding_sim="colocated",
                                reliable=bool(sat["colocated"]["reliable"]), **one))
                continue
            st = {name: {k: n * sat[name][k] for k in ("lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps")}
                  for name, n in (("prefill", r["n_prefill"]), ("decode", r["n_decode"]))}
            b = min(st, key=lambda k: st[k]["lam_star_rps"])
            ext.append(dict(lam_star_prefill_rps=st["prefill"]["lam_star_rps"],
                            lam_star_decode_rps=st["decode"]["lam_star_rps"], binding_sim=b,
                            reliable=bool(sat["prefill"]["reliable"] and sat["decode"]["reliable"]), **st[b]))
        df = pd.concat([df, pd.DataFrame(ext)], axis=1)
        timing["saturation_s"] = time.perf_counter() - t1
        if lam is not None:
            df["verdict"] = [verdict_of(lam, dict(lam_star_rps=a, lam_star_lo_rps=lo, lam_star_hi_rps=hi, reliable=ok))
                             for a, lo, hi, ok in zip(df.lam_star_rps, df.lam_star_lo_rps, df.lam_star_hi_rps,
                                                      df.reliable)]
    if lam is not None:
        lam = check_float("lam", lam, 0.0)
        df["lam_rps"] = lam
        df["verdict_closed_form"] = np.where(lam > df.mu_pd_rps, "unstable",
                                             np.where(lam < df.mu_pd_stable_rps, "stable", "between the bounds"))
    if latency is None:
        latency = simulate and lam is not None
    if latency:
        if lam is None:
            raise LqsError("lam", lam, "the coupled latency needs an arrival rate λ")
        df = _with_latency(df, workload, dep, pairs, col, G, lam, latency_mc, seed, horizon_s, warmup_s, progress,
                           timing)
    best = df[df.binding != "colocated"]["lam_star_rps" if simulate else "mu_pd_rps"].idxmax()
    df["best_split"] = df.index == best
    timing["total_s"] = time.perf_counter() - t0
    df.attrs["timing"] = timing
    return df


def _with_latency(df, workload, dep, pairs, col, G, lam, latency_mc, seed, horizon_s, warmup_s, progress, timing):
    """The split table with the coupled network's latency at λ for every split and the colocated cluster's."""
    from ._server import MonteCarlo, as_server
    from .engine.network import simulate_network

    mc = MonteCarlo(trials=2, seed=seed) if latency_mc is None else latency_mc
    deps = [dep.split(p, d) for p, d in pairs]
    import time

    t0 = time.perf_counter()
    net = simulate_network(workload, deps, lam, mc, horizon_s=horizon_s, warmup_s=warmup_s, verdict=False,
                           progress=progress)
    timing["network_s"] = time.perf_counter() - t0
    s = net.summary
    cols = {f"net_{c}": list(s[c]) for c in NET_COLUMNS}
    cols["net_reliable"] = list(s.reliable)
    cols["net_unreliable_reason"] = list(s.unreliable_reason)
    # the colocated row: G servers of the same hardware behind their router, the same λ, trials and horizon
    from .engine.simulate import simulate
    from .engine.network import typical_b

    b_ref = typical_b(workload, as_server(col))
    t_stop = net.config["horizon_s"]
    steps = max(int(round(t_stop / b_ref)), 1000)
    warm = int(round(net.config["warmup_s"] / b_ref))
    cres = simulate(workload, as_server(col).replace(servers=G), lam, mc.replace(steps=steps, warmup=warm),
                    verdict=False)
    cs = cres.summary.iloc[0]
    timing["colocated_latency_s"] = time.perf_counter() - t0 - timing["network_s"]
    colo = {"throughput_rps": cs.throughput_rps, "observed_drift_rps": cs.lam_rps - cs.throughput_rps,
            "lost": cs.latency_lost}
    for c in NET_COLUMNS:
        v = colo.get(c, cs.get(c, np.nan))
        cols[f"net_{c}"].append(v)
    cols["net_reliable"].append(bool(cs.reliable))
    cols["net_unreliable_reason"].append("" if cs.reliable else str(cs.get("unreliable_reason", "")))
    df = df.copy()
    for c, v in cols.items():
        df[c] = v
    df.attrs["network_config"] = net.config
    return df


def plot_splits(df: pd.DataFrame, path: str, label: str = "") -> str:
    """μ_PD (and the stable bound min_i μ_i(1−δ_i)) against the prefill fraction N_P / G, with the colocated rate of
    the same GPUs as a line; measured λ* points when the table has them."""
    from ._plots import _plt

    plt = _plt()
    d = df[df.binding != "colocated"].sort_values("prefill_fraction")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot(d.prefill_fraction, d.mu_pd_rps, "o-", color="C0", label="μ_PD (closed form: unstable above)")
    ax.plot(d.prefill_fraction, d.mu_pd_stable_rps, "s--", color="C0", alpha=0.6, ms=4,
            label="min μ_i(1−δ_i) (stable below)")
    if "lam_star_rps" in d:
        ax.errorbar(d.prefill_fraction, d.lam_star_rps,
                    yerr=[d.lam_star_rps - d.lam_star_lo_rps, d.lam_star_hi_rps - d.lam_star_rps], fmt="x",
                    color="C3", label="λ*_PD = min(λ*_P, λ*_D) (simulated)")
    for _, r in df[df.binding == "colocated"].iterrows():
        ax.axhline(r.mu_pd_rps, color="k", ls=":", label=f"{r.layout}: μ_exact")
    for _, r in d.iterrows():
        ax.annotate(r.layout, (r.prefill_fraction, r.mu_pd_rps), fontsize=7, textcoords="offset points",
                    xytext=(0, 5), ha="center")
    ax.set_xlabel("prefill fraction N_P / G")
    ax.set_ylabel("requests / s")
    ax.set_title(f"disaggregated P:D splits{(' — ' + label) if label else ''}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def one_server(w, srv):
    """(workload, one server with b as a BatchTime): what the engine's saturation items hold."""
    from ._server import as_server
    from .engine.sizing import product

    return w, product(w, as_server(srv).replace(servers=1), [0.0])[0].server


def network_station_saturation(workload, dep: Disaggregated, mc, *, seed: int = 0, progress: bool = False,
                               cache: dict | None = None) -> dict:
    """λ* of one prefill and one decode server with the transfer's hold and reservation (what the per-station
    engine runs leave out), from the coupled network with a permanent backlog on the station measured: a prefill
    server whose free slots are refilled at every step, and a decode server whose free slots are refilled with new
    transfers. λ*_P is the prefill server's completions per second, λ*_D the decode server's; ±1.96 standard
    errors over ``mc.trials``. Rows as :func:`station_saturation` gives them."""
    from .engine.network import simulate_network, typical_b
    from .engine.sizing import saturated_service, size_engine

    ck = ("network-stations", repr(dep.split(1, 1).describe()), id(workload), mc.trials, mc.steps, mc.warmup, seed)
    if cache is not None and ck in cache:
        return dict(cache[ck])
    one = capacity_disagg(workload, dep.split(1, 1))
    mu_p = min(x for x in (one.mu_prefill_rps, one.budget_prefill_rps) if x is not None)
    mu_d = min(x for x in (one.mu_decode_rps, one.budget_decode_rps) if x is not None)
    # two configurations of one server per pool: the prefill server with a permanent backlog (its slots refilled
    # every step; the decode server beside it overflows, which does not touch the prefill server), and the decode
    # server with one (its free slots refilled with new transfers, each reserved for its τ(s)). Feeding the decode
    # server from saturated prefill servers and dropping what finds it full would keep the first prefill
    # completions of each step, the oldest and longest prompts: a biased mix
    deps = [dep.split(1, 1), dep.split(1, 1)]
    b_ref = max(typical_b(workload, dep.prefill), typical_b(workload, dep.decode))
    steps = mc.steps or 20_000
    K = 0
    for st, srv in ((PrefillStation(workload), dep.prefill), (DecodeStation(workload), dep.decode)):
        w, s = one_server(st, srv)
        K = max(K, size_engine(w, s.M, s.prefill_chunk, 1.0, s.b, 1).K)
    K = int(32 * math.ceil(1.25 * K / 32))
    res = simulate_network(workload, deps, [1.0, 1.0], mc.replace(steps=steps), zip_lams=True,
                           saturated=["prefill", "decode"], horizon_s=steps * b_ref, warmup_s=mc.warmup * b_ref,
                           drain_s=0.0, K=K, verdict=False, progress=progress, retries=0)
    tr = res.trials
    rows = {}
    for name, cfg_i, col, n in (("prefill", 0, "prefill_throughput_rps", 1), ("decode", 1, "throughput_rps", 1)):
        x = tr[tr.config == cfg_i][col].to_numpy(np.float64) / n
        lam = float(x.mean())
        se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")
        sub = tr[tr.config == cfg_i]
        starved = int(sub[f"starved_{name}"].sum())
        # the decode server beside the saturated prefill server overflows: only the measured station's limits count
        viol = int(sub.violations.sum()) + (int(sub.reserve_over.sum()) if name == "decode" else 0)
        reasons = []
        if starved:
            reasons.append(f"slot capacity K = {K} limited the {name} schedule ({starved} steps)")
        if viol:
            reasons.append(f"invariant violations ({viol})")
        if not math.isfinite(se):
            reasons.append("λ* needs at least 2 trials for its interval")
        rows[name] = dict(lam_star_rps=lam, lam_star_se_rps=se, lam_star_lo_rps=lam - 1.96 * se,
                          lam_star_hi_rps=lam + 1.96 * se, lam_saturation_rps=float("inf"), mu_sim_rps=lam,
                          mu_sim_se_rps=se, method="saturation throughput of the coupled network (transfer held "
                          "and reserved)", saturation_min_waiting=-1, reliable=not reasons,
                          unreliable_reason="; ".join(reasons), trials=mc.trials, steps=steps)
    if cache is not None:
        cache[ck] = dict(rows)
    return rows


def station_saturation(workload, dep: Disaggregated, mc=None, *, seed: int = 0, colocated=None,
                       progress: bool = False, cache: dict | None = None) -> dict:
    """One server's saturation throughput λ* in each pool, each measured alone (docs/model.md: the decode pool fed
    with prefilled requests), and a colocated server's, in one call of the engine: {"prefill": row, "decode": row,
    "colocated": row} (rows as lqs.engine.verdict.saturation gives them). A pool of N servers behind its router
    saturates at N times its server's λ* (every server saturated). With a transfer that takes time (τ0 > 0 or a
    finite rate), the stations' λ* come from the coupled network instead (:func:`network_station_saturation`), so
    that the prefill server's hold and the decode server's reservation are in them."""
    import jax

    from ._server import MonteCarlo, as_server
    from .engine.verdict import saturation

    mc = MonteCarlo(trials=16, steps=20_000, warmup=4_000, seed=seed) if mc is None else mc
    from .engine.sizing import product

    if dep.transfer.latency_s > 0 or math.isfinite(dep.transfer.tokens_per_s):
        out = network_station_saturation(workload, dep, mc, seed=seed, progress=progress, cache=cache)
        if colocated is not None:
            out["colocated"] = saturation([one_server(workload, colocated)], mc, jax.random.key(seed),
                                          progress=progress, cache=cache)[0][0]
        return out

    one = one_server

    # a prefill server completes many short requests per step: Poisson draws of that many per step are beyond the
    # engine's float32 draws, so it is fed evenly spaced arrivals (a saturation run's λ* does not depend on them)
    from ._arrivals import Arrivals

    even = Arrivals("replayed", instants_s=np.arange(4096, dtype=np.float64))
    items = [one(PrefillStation(workload), dep.prefill) + (even,), one(DecodeStation(workload), dep.decode)]
    if colocated is not None:
        items.append(one(workload, colocated))
    rows = saturation(items, mc, jax.random.key(seed), progress=progress, cache=cache)[0]
    return dict(zip(("prefill", "decode", "colocated"), rows))

"""``lqs.plan``: servers per window of a load curve, SLO-aware, with the closed-form count beside the simulated one,
the GPU-hours of static against scaled provisioning, and a verification run of the whole day (docs/model.md,
"Capacity plans")."""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field

import jax
import numpy as np
import pandas as pd

from .._errors import LqsError, check_float, check_int
from .._server import MonteCarlo, as_server
from ._load import LoadCurve, load_curve

#: the latency metrics a plan's SLO may name (percentiles the engine's histograms give per window)
PLAN_METRICS = tuple(f"{m}_{q}_s" for m in ("wait", "ttft", "e2e", "tpot") for q in ("p50", "p90", "p99"))
_LAT_INDEX = {"wait": 0, "ttft": 1, "e2e": 2, "tpot": 3}
_Q = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


@dataclass(frozen=True)
class Slo:
    """A latency percentile at most ``target`` seconds (``metric`` one of PLAN_METRICS), or a utilisation target
    (``metric="rho"``: λ per server at most ``target``·λ*)."""

    metric: str = "ttft_p99_s"
    target: float = 2.0

    def __post_init__(self):
        if self.metric != "rho" and self.metric not in PLAN_METRICS:
            raise LqsError("slo", self.metric, "metric must be rho or one of " + ", ".join(PLAN_METRICS))
        hi = 1.0 if self.metric == "rho" else None
        object.__setattr__(self, "target", check_float("slo target", self.target, 0.0, hi, lo_open=True))

    @classmethod
    def parse(cls, text) -> "Slo":
        """``ttft_p99_s<=2``, ``ttft_p99<=2s``, ``e2e_p90_s<=30`` or ``rho<=0.8``."""
        if isinstance(text, Slo):
            return text
        m = re.fullmatch(r"\s*([a-z0-9_]+?)(_s)?\s*<=\s*([0-9.eE+-]+)\s*s?\s*", str(text))
        if not m:
            raise LqsError("slo", text, "must read METRIC<=TARGET, e.g. ttft_p99_s<=2 or rho<=0.8")
        name = m.group(1) if m.group(1) == "rho" else m.group(1) + "_s"
        try:
            target = float(m.group(3))
        except ValueError:
            raise LqsError("slo", text, "must read METRIC<=TARGET with a number as TARGET") from None
        return cls(name, target)

    def describe(self) -> str:
        return f"{self.metric} <= {self.target:g}" + ("" if self.metric == "rho" else " s")


@dataclass
class PlanResult:
    """What :func:`lqs.plan` returns: ``windows`` (one row per window), ``totals`` (headline numbers) and
    ``config`` (the resolved inputs); ``save(out)`` writes them with the PNG."""

    windows: pd.DataFrame
    totals: dict
    config: dict
    png: str | None = None
    verification: object = field(default=None, repr=False)

    def save(self, out) -> list[str]:
        from .._jsonio import dump

        os.makedirs(out, exist_ok=True)
        paths = [os.path.join(out, "windows.csv")]
        self.windows.to_csv(paths[0], index=False)
        try:
            p = os.path.join(out, "windows.parquet")
            self.windows.to_parquet(p, index=False)
            paths.append(p)
        except Exception:  # pragma: no cover - pyarrow missing
            pass
        for name, doc in (("totals", self.totals), ("config", self.config)):
            p = os.path.join(out, f"{name}.json")
            with open(p, "w") as fh:
                dump(doc, fh, indent=2)
            paths.append(p)
        from ._plot import plot_plan

        self.png = os.path.join(out, "plan.png")
        plot_plan(self, self.png)
        paths.append(self.png)
        return paths


def step_s(workload, server) -> float:
    """A step's typical duration: the batch-time model's mean, or an affine model's typical step at saturation."""
    from ..engine.sizing import saturated_service, step_times

    n_serv = saturated_service(workload.expected_g(server.prefill_chunk), server.M, server.prefill_chunk)[1]
    b_typ, b_max, _ = step_times(server.bs[0], server.M, server.prefill_chunk, n_serv)
    return b_typ if b_typ is not None else b_max


def _arrivals_for(kind: str, burstiness: float, curve: LoadCurve, w: int):
    from .._arrivals import Arrivals

    if kind == "poisson" or (kind == "gamma" and burstiness == 1.0):
        return None
    if kind == "gamma":
        return Arrivals("gamma", burstiness=burstiness)
    inst = curve.instants[w]
    return Arrivals("replayed", instants_s=inst) if inst.size >= 2 else None


def _window_workloads(curve):
    """Each window's request lengths: the trace's requests that arrive in it, as PaddedPairs of one common size
    (one program for all windows); a window without requests takes the previous one's (the next one's at the
    start)."""
    from .._workload import PaddedPairs

    tr = curve.trace
    t = np.asarray(tr.arrival_s, np.float64)
    order = np.argsort(t, kind="stable")
    win = np.minimum((t[order] // curve.window_s).astype(np.int64), curve.n_windows - 1)
    counts = np.bincount(win, minlength=curve.n_windows)
    size = int(counts.max())
    parts, start = [], 0
    for n in counts:
        idx = order[start:start + n]
        start += n
        parts.append(PaddedPairs(tr.s[idx], tr.o[idx], size) if n else None)
    first = next(p for p in parts if p is not None)
    out, last = [], first
    for p in parts:
        last = p if p is not None else last
        out.append(last)
    return out


def _window_counts(lams, mus, sats, slo, kind, burstiness, curve, workloads, server, mc, seed, candidates,
                   max_servers, progress, poisson_only=False):
    """(servers, metric at that count, verdict there) per window: study slo's rule (the fewest G that is stable in
    the long run and meets the SLO, and so does every larger G examined), all windows' candidates in one call."""
    from ..engine.run import run_configs
    from ..engine.sizing import product
    from ..engine.verdict import verdict_of
    from ..studies.common import key as study_key

    W = len(lams)
    G = np.full(W, -1, np.int64)
    val = np.full(W, np.nan)
    if slo.metric == "rho":  # utilisation against the simulated saturation throughput
        for w, lam in enumerate(lams):
            sat = sats[w]
            g = max(1, int(math.ceil(lam / (slo.target * sat["lam_star_rps"]) - 1e-12)))
            while verdict_of(lam / g, sat) != "stable" and g < 100_000:
                g += 1
            G[w], val[w] = g, lam / (g * sat["lam_star_rps"])
        return G, val, None
    lo, hi, nxt = {}, {}, {}
    for w, lam in enumerate(lams):
        mu, sat = mus[w], sats[w]
        g_lo = max(1, int(math.floor(lam / mu)))  # study slo's range
        g_rho = max(1, int(math.ceil(lam / (0.9 * mu) - 1e-12)))
        g_hi = max_servers if max_servers is not None else max(g_rho, int(math.ceil(lam / (0.5 * mu)))) + 1
        g_a = g_lo
        while g_a < g_hi and verdict_of(lam / g_a, sat) != "stable":
            g_a += 1  # unstable counts cannot qualify: not simulated
        lo[w], hi[w], nxt[w] = g_lo, g_hi, g_a
    meets = {w: {} for w in range(W)}
    base = jax.random.split(study_key(seed), max(hi.values()) + 1)
    todo = list(range(W))
    rounds = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=W, desc="plan: windows decided" + (" (Poisson)" if poisson_only else ""), unit="window")
    while todo:
        rounds += 1
        configs, keys, where = [], [], []
        for w in todo:
            arr = None if poisson_only else _arrivals_for(kind, burstiness, curve, w)
            for g in range(nxt[w], min(nxt[w] + candidates, hi[w] + 1)):
                configs += product(workloads[w], server, [lams[w] / g], arr)
                keys.append(g - lo[w])
                where.append((w, g))
        res = run_configs(configs, mc, keys=base[np.asarray(keys)], progress=progress)
        s = res.summary
        for (w, g), v, ok in zip(where, s[slo.metric].to_numpy(), s["reliable"].to_numpy()):
            meets[w][g] = (verdict_of(lams[w] / g, sats[w]) == "stable") and bool(v <= slo.target), float(v)
        new = []
        for w in todo:
            top = max(meets[w]) if meets[w] else nxt[w] - 1
            if meets[w] and meets[w][top][0] or top >= hi[w]:
                continue
            nxt[w] = top + 1
            new.append(w)
        if bar is not None:
            bar.update(len(todo) - len(new))
        todo = new
    if bar is not None:
        bar.close()
    for w in range(W):
        gs = sorted(meets[w])
        ok = [meets[w][g][0] for g in gs]
        tail = np.logical_and.accumulate(np.asarray(ok[::-1], bool))[::-1] if ok else np.asarray([], bool)
        if tail.any():
            g = gs[int(np.argmax(tail))]
            G[w], val[w] = g, meets[w][g][1]
    return G, val, rounds


def plan(load, server, slo="ttft_p99_s<=2", *, workload=None, window_s=None, arrivals: str = "poisson",
         burstiness: float = 1.0, headroom: float = 1.0, rate_scale: float = 1.0, rho: float = 0.9,
         scale_up_delay_s: float = 0.0, static_servers: int | None = None, mc: MonteCarlo | None = None,
         verify: bool = True, verify_trials: int = 2, candidates: int = 2, max_servers: int | None = None,
         compare_poisson: bool = True, window_lengths: bool = False, seed: int = 0, progress: bool = False,
         out=None) -> PlanResult:
    """Servers per window of a load curve (``load``: a LoadCurve, a (time, rate) table or a trace binned into
    windows of ``window_s``) for ``server`` (one serving instance) and ``slo`` (an :class:`Slo` or a string such
    as ``"ttft_p99_s<=2"`` or ``"rho<=0.8"``).

    Per window: λ = rate·``rate_scale`` (planned for λ·``headroom``), the closed-form count ⌈λ/(μρ)⌉ and the
    simulated count (the fewest servers, each receiving λ/G, that are stable in the long run and meet the SLO, as
    :func:`lqs.studies.slo_servers` decides, with the same keys). All windows' candidate counts run in one call
    (one program per shape). ``arrivals`` inside a window: ``poisson``, ``gamma`` (``burstiness``) or
    ``replayed`` (the trace's own instants of that window, time-scaled to each server's rate); with
    ``compare_poisson`` the Poisson count is computed beside it (how many more servers burstiness costs).
    ``candidates`` counts per window are simulated in each round, from the first one stable in the long run; a
    window none of them met gets the next ones in another round (until ``max_servers`` or 2λ/μ + 1).
    ``totals`` holds the wall time of each stage (``time_saturation_s``, ``time_candidates_s``, …).
    ``window_lengths`` (a trace as the load): each window's requests have the lengths of the trace's requests in
    that window (μ, λ*, the closed form, the candidates and the verification per window; a window without
    requests takes the previous one's lengths); by default every window has the whole trace's (or ``workload``'s).

    ``verify`` simulates the whole day (docs/model.md, "Capacity plans"): the day's arrivals are routed round
    robin to the servers that accept requests; a server taken out drains; a server added accepts requests
    ``scale_up_delay_s`` after the plan asks for it; per window the backlog, the SLO met or not and the long-run
    verdict, and the windows where the scaling lag let a backlog build; with a delay, a second run provisions
    ⌈delay/window⌉ windows ahead and reports whether that removes them. ``verify_trials`` simulated days (their cost is
    nearly that of one on a CPU: the day's sequential steps, not its lanes, set the time).
    """
    from .._theory import capacity, servers_needed
    from .._workload import Pairs
    from ..engine.sizing import check_workload
    from ..engine.verdict import saturation, verdict_of
    from ..studies.common import key as study_key

    t_wall = time.perf_counter()
    slo = Slo.parse(slo)
    curve = load_curve(load, window_s)
    server = as_server(server).replace(servers=1).require_scalar("plan")
    if workload is None:
        if curve.trace is None:
            raise LqsError("workload", None, "a (time, rate) load curve needs a workload (request lengths)")
        workload = Pairs(curve.trace.s, curve.trace.o)
    check_workload(workload, server)
    from ..engine.sizing import product

    if window_lengths and curve.trace is None:
        raise LqsError("window_lengths", True, "per-window lengths need a trace as the load (its requests)")
    wls = _window_workloads(curve) if window_lengths else [workload] * curve.n_windows
    if window_lengths:
        for wl in {id(x): x for x in wls}.values():
            check_workload(wl, server)

    server = product(workload, server, [0.0])[0].server  # b as a BatchTime (what the engine's items hold)
    if arrivals not in ("poisson", "gamma", "replayed"):
        raise LqsError("arrivals", arrivals, "must be poisson, gamma or replayed")
    if arrivals == "replayed" and curve.instants is None:
        raise LqsError("arrivals", arrivals, "replayed arrivals need a trace as the load (its arrival instants)")
    burstiness = check_float("burstiness", burstiness, 0.0, 1e6, lo_open=True)
    headroom = check_float("headroom", headroom, 1.0)
    rate_scale = check_float("rate_scale", rate_scale, 0.0, lo_open=True)
    rho = check_float("rho", rho, 0.0, 1.0, lo_open=True)
    delay = check_float("scale_up_delay", scale_up_delay_s, 0.0)
    candidates = check_int("candidates", candidates, 1, 64)
    verify_trials = check_int("verify_trials", verify_trials, 1, 1024)
    if static_servers is not None:
        static_servers = check_int("static_servers", static_servers, 1, 100_000)
    b_step = step_s(workload, server)
    if curve.window_s < b_step:
        raise LqsError("window", curve.window_s, f"must be at least one step ({b_step:.4g} s)")
    mc = MonteCarlo(trials=8, steps=4000, warmup=1000, seed=seed) if mc is None else mc
    cap = capacity(workload, server)
    lam = curve.scaled(rate_scale)
    lam_plan = lam * headroom
    timing = {}
    t0 = time.perf_counter()
    uniq = list({id(x): x for x in wls}.values())  # one saturation run per distinct length distribution
    rows = saturation([(x, server) for x in uniq], mc, study_key(seed), progress=progress)[0]
    by_id = {id(x): r for x, r in zip(uniq, rows)}
    sats = [by_id[id(x)] for x in wls]
    sat = sats[int(np.argmax(lam_plan))]  # the headline λ*: the peak window's (every window's without window_lengths)
    caps = {id(x): (cap if x is workload else capacity(x.pairs if hasattr(x, "pairs") else x, server)) for x in uniq}
    mus = np.asarray([caps[id(x)].mu_rps for x in wls])
    timing["saturation_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    G_cf = np.asarray([servers_needed(x, m, rho) for x, m in zip(lam_plan, mus)], np.int64)
    G, val, rounds = _window_counts(lam_plan, mus, sats, slo, arrivals, burstiness, curve, wls, server, mc, seed,
                                    candidates, max_servers, progress)
    timing["candidates_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    G_poisson = None
    if compare_poisson and arrivals != "poisson" and slo.metric != "rho":
        G_poisson = _window_counts(lam_plan, mus, sats, slo, arrivals, burstiness, curve, wls, server, mc, seed,
                                   candidates, max_servers, progress, poisson_only=True)[0]
        timing["candidates_poisson_s"] = time.perf_counter() - t0
    planned = np.where(G > 0, G, G_cf)  # a window no candidate met falls back to the closed form (and says so)
    W, Wd = curve.n_windows, curve.window_s
    df = pd.DataFrame(dict(window=np.arange(W), start_s=curve.start_s, end_s=curve.start_s + Wd, lam_rps=lam,
                           lam_plan_rps=lam_plan, servers_closed_form=G_cf, servers_sim=G,
                           servers=planned, servers_source=np.where(G > 0, "simulated", "closed form (no count met)")))
    df["lam_per_server_rps"] = lam_plan / planned
    df["mu_rps"] = mus
    df["lam_star_rps"] = [x["lam_star_rps"] for x in sats]
    df["rho"] = lam_plan / (planned * mus)
    df["verdict"] = [verdict_of(x / g, st) for x, g, st in zip(lam_plan, planned, sats)]
    df[f"{slo.metric}_at_servers"] = val
    if G_poisson is not None:
        df["servers_poisson"] = G_poisson
        df["extra_servers_burstiness"] = np.where((G > 0) & (G_poisson > 0), G - G_poisson, 0)
    static = int(planned.max()) if static_servers is None else static_servers
    bad = planned > static
    df["static_ok"] = ~bad
    df["static_problem"] = [("" if not b else ("unstable" if verdict_of(x / static, st) == "unstable"
                                               else "misses SLO")) for b, x, st in zip(bad, lam_plan, sats)]
    hours = Wd / 3600.0
    totals = dict(windows=W, window_s=Wd, duration_h=W * hours, slo=slo.describe(), arrivals=arrivals,
                  burstiness=burstiness if arrivals == "gamma" else None, rate_scale=rate_scale, headroom=headroom,
                  window_lengths=bool(window_lengths),
                  mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps, lam_star_rps=sat["lam_star_rps"],
                  lam_star_lo_rps=sat["lam_star_lo_rps"], lam_star_hi_rps=sat["lam_star_hi_rps"],
                  servers_peak=int(planned.max()), servers_min=int(planned.min()),
                  gpu_hours_static=float(planned.max() * W * hours), gpu_hours_scaled=float(planned.sum() * hours),
                  gpu_hours_closed_form_static=float(G_cf.max() * W * hours),
                  gpu_hours_closed_form_scaled=float(G_cf.sum() * hours),
                  windows_without_simulated_count=int((G <= 0).sum()), candidate_rounds=rounds,
                  static_servers=static, static_bad_windows=[int(i) for i in np.flatnonzero(bad)])
    totals["gpu_hours_saved"] = totals["gpu_hours_static"] - totals["gpu_hours_scaled"]
    totals["gpu_hours_saved_fraction"] = totals["gpu_hours_saved"] / max(totals["gpu_hours_static"], 1e-12)
    totals["gpu_hours_closed_form_saved"] = totals["gpu_hours_closed_form_static"] - totals["gpu_hours_closed_form_scaled"]
    if G_poisson is not None:
        totals["extra_servers_burstiness_max"] = int(df["extra_servers_burstiness"].max())
        totals["extra_gpu_hours_burstiness"] = float(df["extra_servers_burstiness"].sum() * hours)
    ver = None
    if verify:
        from ._verify import verify_plan

        t0 = time.perf_counter()
        ver = verify_plan(curve, lam, planned, workload, server, slo, sats, arrivals, burstiness, rate_scale, delay,
                          verify_trials, seed, progress, window_workloads=wls if window_lengths else None)
        timing["verify_s"] = time.perf_counter() - t0
        for c in ver.windows.columns:
            df[c] = ver.windows[c].to_numpy()
        totals.update(ver.totals)
    totals["wall_s"] = time.perf_counter() - t_wall
    totals.update({f"time_{k}": v for k, v in timing.items()})
    config = dict(load=curve.source, window_s=Wd, server=server.describe(), workload=str(type(workload).__name__),
                  slo=slo.describe(), arrivals=arrivals, burstiness=burstiness, headroom=headroom,
                  rate_scale=rate_scale, rho=rho, scale_up_delay_s=delay, static_servers=static_servers,
                  window_lengths=bool(window_lengths), monte_carlo=mc.describe(), verify=verify, verify_trials=verify_trials, candidates=candidates,
                  max_servers=max_servers, seed=seed, saturation=dict(sat))
    res = PlanResult(windows=df, totals=totals, config=json.loads(json.dumps(config, default=str)), verification=ver)
    if out is not None:
        res.save(out)
    return res

"""Phase diagrams from boundary curves: the long-run stability boundary λ*(x) along one design axis, with its
confidence band, the closed-form μ(x) and μ(1−δ)(x), regions shaded by the long-run verdict, and an optional
latency layer over the stable region.

Every row's saturation run goes into one jitted, vmapped program (rows that differ in static shape, such as the
policy, get one program each), and so do all cells of the latency layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import LqsError, check_float, check_int
from .common import StudyResult, key, label, settings, setup, write

AXES = ("ratio", "M", "b", "prefill_chunk", "token_budget", "length_scale", "policy", "pd_split")
LATENCY_METRICS = ("ttft_p99_s", "wait_p99_s", "e2e_p99_s", "ttft_p50_s", "wait_p50_s")
_LOG_AXES = ("ratio", "M", "prefill_chunk", "length_scale")


def default_values(axis: str, n: int, server, total_hi: int):
    """``n`` values along ``axis`` (fewer where the axis is integer-valued and its range is narrow)."""
    if axis == "ratio":
        return list(np.geomspace(1 / 8, 8, n))
    if axis == "M":
        lo = max(2 * total_hi, 4096)
        return sorted({int(round(x)) for x in np.geomspace(lo, 16 * lo, n)})
    if axis == "b":
        return list(np.linspace(0.02, 0.07, n))
    if axis == "prefill_chunk":
        return sorted({int(round(x)) for x in np.geomspace(32, 2048, n)})
    if axis == "token_budget":
        c = server.prefill_chunk
        return sorted({int(round(x)) for x in np.linspace(c, 8 * c, n)})
    if axis == "length_scale":
        return list(np.geomspace(0.5, 2.0, n))
    return ["swap", "recompute", "reserve"]


def _row(axis, v, workload, server, total_hi):
    """(workload, one-configuration server) of the row at value ``v``."""
    from .._workload import pd_ratio

    srv = server.replace(b=server.bs[0])
    if axis == "ratio":
        return pd_ratio(float(v), total_hi=total_hi), srv
    if axis == "M":
        return workload, srv.replace(M=check_int("M", v, 1))
    if axis == "b":
        b = check_float("b", v, 0.0, lo_open=True)
        return workload, srv.replace(b=server.replace(b=b).bs[0])
    if axis == "prefill_chunk":
        c = check_int("prefill_chunk", v, 1)
        tb = None if server.token_budget is None else max(server.token_budget, c)
        return workload, srv.replace(prefill_chunk=c, token_budget=tb)
    if axis == "token_budget":
        return workload, srv.replace(token_budget=check_int("token_budget", v, server.prefill_chunk))
    if axis == "length_scale":
        f = check_float("length_scale", v, 0.0, lo_open=True)
        if workload is None:
            return pd_ratio(1.0, total_hi=max(2, int(round(total_hi * f)))), srv
        if hasattr(workload, "scaled"):
            return workload.scaled(prompt=f, output=f), srv
        raise LqsError("axis", "length_scale", "needs the default P/D workload or a fitted length model "
                                               "(lqs fit lengths), whose lengths can be scaled")
    return workload, srv.replace(policy=v)


def phase_diagram(workload=None, server=None, mc=None, *, quick: bool = False, seed: int = 0, out=None,
                  progress: bool = False, axis: str = "ratio", values=None, n_values=None, total_hi=None,
                  latency: str | None = None, n_lam=None, lam_range=(0.3, 1.0), gpus: int = 8,
                  disagg=None) -> StudyResult:
    """The stability boundary λ*(x) along one design axis ``axis``, from the saturation rule (docs/model.md).

    ``axis``: ``ratio`` (rows are ``lqs.pd_ratio(r, total_hi)`` workloads; ``workload`` unused), ``M`` (KV
    capacity, tokens), ``b`` (batch time b̄, s), ``prefill_chunk`` (ŝ, tokens), ``token_budget`` (tokens per step),
    ``length_scale`` (prompt and output lengths scaled by x: the default P/D workload's s+o bound, or a fitted
    length model's ``scaled``), or ``policy``. ``values`` (default ``n_values`` of them: 32 in ``quick`` mode, 128
    in full size) replace that field of ``server`` (default :func:`default_server`) one row each.

    Each row's λ* (saturation throughput, ±1.96 se over ``mc.trials``; 12 trials by default in ``quick`` mode) is
    measured by one program for all rows of a shape. Below λ*'s interval the row is stable in the long run, above it unstable; μ and μ(1−δ) of each row are
    drawn beside it. ``latency`` (one of ``ttft_p99_s``, ``wait_p99_s``, ``e2e_p99_s``, ``ttft_p50_s``,
    ``wait_p50_s``) adds a layer: ``n_lam`` rates per row from ``lam_range[0]``·λ*_lo to ``lam_range[1]``·λ*_lo, all
    rows and rates in one program, coloured by that percentile. The table has one row per axis value (columns
    ``lam_star_rps``, ``lam_star_lo_rps``, ``lam_star_hi_rps``, ``mu_rps``, ``mu_exact_rps``, ``mu_stable_rps``, …);
    ``meta["rows"]`` the same rows, ``meta["latency_cells"]`` the latency layer.

    ``axis="pd_split"``: the rows are the P:D splits N_P + N_D = ``gpus`` of a disaggregated deployment
    (``disagg``, an :class:`lqs.Disaggregated` whose pools and transfer are kept; default: ``server`` on both
    pools, no transfer time); ``values`` are the N_P (default 1 … G−1) and the row's ``value`` its prefill fraction
    N_P / G. λ* is λ*_PD = min(N_P·λ*_P, N_D·λ*_D) from the per-station saturation runs (one engine call for every
    row), μ is μ_PD and μ(1−δ) the stable bound min_i μ_i(1−δ_i); the latency layer runs the coupled network of
    every (row, rate) in one program.
    """
    from .._theory import capacity
    from ..engine import saturation
    from ..engine.run import config_keys, run_configs
    from ..engine.sizing import Config

    if axis not in AXES:
        raise LqsError("axis", axis, "must be one of " + ", ".join(AXES))
    if latency is not None and latency not in LATENCY_METRICS:
        raise LqsError("latency", latency, "must be one of " + ", ".join(LATENCY_METRICS))
    given_mc = mc is not None
    if axis == "pd_split":
        return _pd_split(workload, server, mc, quick=quick, seed=seed, out=out, progress=progress, values=values,
                         total_hi=total_hi, latency=latency, n_lam=n_lam, lam_range=lam_range, gpus=gpus,
                         disagg=disagg)
    workload, server, mc, total_hi = setup(workload, server, mc, quick, total_hi,
                                           default_workload=axis not in ("ratio", "length_scale"))
    server.require_scalar("phase_diagram")
    n_values = check_int("n_values", n_values if n_values is not None else (32 if quick else 128), 1, 100_000)
    if values is None:
        values = default_values(axis, n_values, server, total_hi)
    values = list(np.atleast_1d(values))
    if axis != "policy":
        values = sorted(float(v) if axis in ("ratio", "b", "length_scale") else int(v) for v in values)
    if mc.steps is None:
        from ..engine import auto_steps

        mc = mc.replace(steps=auto_steps(workload or _default_w(total_hi), server, mc.warmup))
    if quick and not given_mc:
        # one saturation run per row decides it: 12 trials already put λ* within ±0.3 % at the quick size
        mc = mc.replace(trials=12)
    items = [_row(axis, v, workload, server, total_hi) for v in values]  # every row validated before any run
    caps = [capacity(w, s) for w, s in items]
    sat, sat_res = saturation(items, mc, key(seed), progress=progress)
    rows = []
    for v, (w, s), cap, r in zip(values, items, caps, sat):
        rows.append(dict(axis=axis, value=v, workload=label(w), M_tokens=s.M, prefill_chunk_tokens=s.prefill_chunk,
                         b_s=cap.b_s, token_budget=s.token_budget or 0, policy=s.policy, servers=s.servers,
                         mu_rps=cap.mu_rps, mu_exact_rps=cap.mu_exact_rps, mu_stable_rps=cap.mu_stable_rps,
                         mu_exact_stable_rps=cap.mu_exact_stable_rps, delta=cap.delta,
                         lam_star_rps=r["lam_star_rps"], lam_star_lo_rps=r["lam_star_lo_rps"],
                         lam_star_hi_rps=r["lam_star_hi_rps"], lam_star_se_rps=r["lam_star_se_rps"],
                         lam_star_over_mu_exact=r["lam_star_rps"] / cap.mu_exact_rps,
                         trials=mc.trials, steps=r["steps"], reliable=r["reliable"],
                         unreliable_reason=r["unreliable_reason"]))
    df = pd.DataFrame(rows)
    cells = []
    if latency is not None:
        n_lam = check_int("n_lam", n_lam if n_lam is not None else (8 if quick else 16), 1, 1000)
        lo_f, hi_f = (check_float("lam_range", x, 0.0, lo_open=True) for x in lam_range)
        configs, where = [], []
        for i, ((w, s), r) in enumerate(zip(items, sat)):
            for lam in np.linspace(lo_f, hi_f, n_lam) * r["lam_star_lo_rps"]:
                if lam > 0:
                    configs.append(Config(w, s, float(lam)))
                    where.append(i)
        res = run_configs(configs, mc, keys=config_keys(key(seed, 1), len(configs)), progress=progress)
        for (c, i), (_, x) in zip(zip(configs, where), res.summary.iterrows()):
            cells.append(dict(value=values[i], lam_rps=c.lam, lam_over_lam_star=c.lam / sat[i]["lam_star_rps"],
                              metric=latency, value_s=float(x[latency]), p_backlog_grows=float(x.p_backlog_grows),
                              reliable=bool(x.reliable)))
    n_programs = len(sat_res.config.get("programs", [None])) if sat_res is not None else 0
    meta = dict(study="phase_diagram", axis=axis, values=[v if isinstance(v, str) else float(v) for v in values],
                workload=label(workload) if workload is not None else "P/D ratio rows", total_hi=total_hi,
                rows=df.to_dict(orient="records"), latency=latency, latency_cells=cells,
                saturation_programs=n_programs, reliable=bool(df.reliable.all()),
                verdict_rule="stable below lam_star_lo_rps, unstable above lam_star_hi_rps, undecided between",
                **settings(server, mc, quick))
    from .plots import plot_phase

    return write(f"phase_{axis}", df, meta, plot_phase, out)


def _pd_split(workload, server, mc, *, quick, seed, out, progress, values, total_hi, latency, n_lam, lam_range, gpus,
              disagg) -> StudyResult:
    """phase_diagram(axis="pd_split"): the rows are the P:D splits of ``gpus`` GPUs."""
    from .._disagg import Disaggregated, capacity_disagg
    from ..engine.stations import station_saturation

    G = check_int("gpus", gpus, 2, 4096)
    given_mc = mc is not None
    workload, server, mc, total_hi = setup(workload, server, mc, quick, total_hi, default_workload=True)
    if workload is None:
        workload = _default_w(total_hi)
    if disagg is None:
        srv = server.require_scalar("phase_diagram")
        disagg = Disaggregated(srv, srv)
    elif not isinstance(disagg, Disaggregated):
        raise LqsError("disagg", disagg, "must be an lqs.Disaggregated")
    n_ps = list(range(1, G)) if values is None else sorted({check_int("pd_split", v, 1, G - 1) for v in
                                                            np.atleast_1d(values)})
    deps = [disagg.split(p, G - p) for p in n_ps]
    caps = [capacity_disagg(workload, d) for d in deps]  # every row checked before any run
    if mc.steps is None:
        from ..engine import auto_steps

        mc = mc.replace(steps=auto_steps(workload, disagg.decode, mc.warmup))
    if quick and not given_mc:
        mc = mc.replace(trials=12)
    sat = station_saturation(workload, disagg, mc, seed=seed, progress=progress)
    rows = []
    for p, d, cap in zip(n_ps, deps, caps):
        st = {name: {k: n * sat[name][k] for k in ("lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps",
                                                   "lam_star_se_rps")}
              for name, n in (("prefill", d.n_prefill), ("decode", d.n_decode))}
        b = min(st, key=lambda k: st[k]["lam_star_rps"])
        ok = bool(sat["prefill"]["reliable"] and sat["decode"]["reliable"])
        why = "; ".join(x for x in (sat["prefill"]["unreliable_reason"], sat["decode"]["unreliable_reason"]) if x)
        rows.append(dict(axis="pd_split", value=p / G, layout=f"{p}P:{G - p}D", n_prefill=p, n_decode=G - p, gpus=G,
                         workload=label(workload), M_prefill_tokens=d.prefill.M, M_decode_tokens=d.decode.M,
                         b_prefill_s=d.prefill.b_mean_s, b_decode_s=d.decode.b_mean_s,
                         prefill_chunk_tokens=d.prefill.prefill_chunk, policy=d.decode.policy,
                         mu_rps=cap.mu_pd_rps, mu_exact_rps=cap.mu_pd_rps, mu_stable_rps=cap.mu_pd_stable_rps,
                         mu_exact_stable_rps=cap.mu_pd_stable_rps, mu_prefill_rps=cap.mu_prefill_rps,
                         mu_decode_rps=cap.mu_decode_rps, binding=cap.binding, binding_sim=b,
                         delta=max(cap.delta_prefill, cap.delta_decode),
                         lam_star_prefill_rps=st["prefill"]["lam_star_rps"],
                         lam_star_decode_rps=st["decode"]["lam_star_rps"], **st[b],
                         lam_star_over_mu_exact=st[b]["lam_star_rps"] / cap.mu_pd_rps, trials=mc.trials,
                         steps=sat["decode"]["steps"], reliable=ok, unreliable_reason=why))
    df = pd.DataFrame(rows)
    cells = []
    if latency is not None:
        from ..engine.network import simulate_network

        n_lam = check_int("n_lam", n_lam if n_lam is not None else (6 if quick else 12), 1, 1000)
        lo_f, hi_f = (check_float("lam_range", x, 0.0, lo_open=True) for x in lam_range)
        lams = sorted({float(x) for r in rows for x in np.linspace(lo_f, hi_f, n_lam) * r["lam_star_lo_rps"]
                       if x > 0})
        # one program: every split at every rate of the union (cells outside a row's own range are dropped)
        net = simulate_network(workload, deps, lams, mc.replace(trials=min(mc.trials, 4), seed=seed), progress=progress)
        for _, x in net.summary.iterrows():
            i = n_ps.index(int(x.n_prefill))
            r = rows[i]
            if not (lo_f * r["lam_star_lo_rps"] * (1 - 1e-9) <= x.lam_rps <= hi_f * r["lam_star_lo_rps"] * (1 + 1e-9)):
                continue
            cells.append(dict(value=r["value"], lam_rps=float(x.lam_rps),
                              lam_over_lam_star=float(x.lam_rps) / r["lam_star_rps"], metric=latency,
                              value_s=float(x[latency]), observed_drift_rps=float(x.observed_drift_rps),
                              p_backlog_grows=float("nan"), reliable=bool(x.reliable)))
    meta = dict(study="phase_diagram", axis="pd_split", gpus=G, values=[float(r["value"]) for r in rows],
                layouts=[r["layout"] for r in rows], workload=label(workload), deployment=disagg.describe(),
                rows=df.to_dict(orient="records"), latency=latency, latency_cells=cells, saturation_programs=1,
                reliable=bool(df.reliable.all()),
                verdict_rule="stable below lam_star_lo_rps, unstable above lam_star_hi_rps, undecided between "
                             "(λ*_PD = min(N_P·λ*_P, N_D·λ*_D), the saturation rule per station)",
                **settings(disagg.decode, mc, quick))
    from .plots import plot_phase

    return write("phase_pd_split", df, meta, plot_phase, out)


def _default_w(total_hi):
    from .._workload import pd_ratio

    return pd_ratio(1.0, total_hi=total_hi)


__all__ = ["AXES", "LATENCY_METRICS", "StudyResult", "default_values", "phase_diagram"]

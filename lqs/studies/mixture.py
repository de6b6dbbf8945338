"""The mixture study: a piecewise-stationary schedule of workloads against μ_mix with request-count and time
weights (docs/model.md)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._errors import LqsError, check_float, check_int
from .common import StudyResult, crossing, key, label, settings, setup, write


def mixture_theory(phases, lams, durations, server) -> dict:
    """μ_ℓ of each phase workload on ``server`` and μ_mix with request-count weights (λ_ℓ·T_ℓ) and with time
    weights (T_ℓ), and the time average Σ τ_ℓ μ_ℓ; each for μ and μ_exact."""
    from .._theory import capacity, mu_mix

    caps = [capacity(w, server) for w in phases]
    lams = np.asarray(lams, np.float64)
    T = np.asarray(durations, np.float64)
    q_count = lams * T / np.sum(lams * T)
    q_time = T / T.sum()
    out = {}
    for tag, attr in (("", "mu_rps"), ("_exact", "mu_exact_rps")):
        mus = [getattr(c, attr) for c in caps]
        out[f"mu{tag}_phases_rps"] = mus
        out[f"mu{tag}_mix_count_rps"] = mu_mix(mus, q_count)
        out[f"mu{tag}_mix_time_rps"] = mu_mix(mus, q_time)
        out[f"mu{tag}_time_avg_rps"] = float(np.sum(q_time * np.asarray(mus)))  # Σ τ_ℓ μ_ℓ
    out.update(q_count=q_count.tolist(), q_time=q_time.tolist(), delta=max(c.delta for c in caps),
               lam_mean_rps=float(np.sum(lams * T) / T.sum()))
    return out


def _phases(workload, total_hi):
    """(phase workloads, names): the given sequence, or the paper's P/D 2:1 and 1:2."""
    from .._workload import Workload, pd_ratio

    if workload is None:
        return [pd_ratio(2.0, total_hi=total_hi), pd_ratio(0.5, total_hi=total_hi)], ["P/D 2:1", "P/D 1:2"]
    if isinstance(workload, Workload) or not all(isinstance(w, Workload) for w in workload):
        raise LqsError("workload", type(workload).__name__, "the mixture study takes a sequence of ≥ 2 workloads "
                                                            "(one per phase)")
    return list(workload), [f"phase {i + 1}" for i in range(len(workload))]


def mixture_study(workload=None, server=None, mc=None, *, quick: bool = False, seed: int = 0, out=None,
                  progress: bool = False, lam_ratio=(1.0, 1.0), time_frac=(0.5, 0.5), cycles: int = 24,
                  load=(0.8, 1.2), n_load=None, total_hi=None) -> StudyResult:
    """A piecewise-stationary schedule (the paper's P/D 2:1 → 1:2, repeated) against μ_mix.

    ``workload`` is the sequence of phase workloads (default: ``lqs.pd_ratio`` 2:1 and 1:2 with s + o ≤
    ``total_hi``); phase ℓ runs ``workload[ℓ]`` for a fraction ``time_frac[ℓ]`` of each cycle at a rate ∝
    ``lam_ratio[ℓ]``, on ``server`` (a constant b̄) simulated with ``mc``. Theory: μ_mix = (Σ q_ℓ/μ_ℓ)^−1 with
    request-count weights q_ℓ ∝ λ_ℓ·T_ℓ (the long-run work balance), with time weights q_ℓ ∝ T_ℓ (equal to the
    count weights when the rates are equal), and the time average Σ τ_ℓ μ_ℓ.

    Simulated: (i) the share of trials whose backlog grew within the horizon over a common load factor x of all
    rates, the mean rate λ̄ = x·μ_exact,mix(count), and where it crosses ½ (a non-stationary schedule has no single
    saturation throughput, so this finite-horizon reading is what the schedule itself offers). The whole x grid is one compiled call: with a constant batch
    time, running at b̄·x is exactly the schedule at x times the rates and 1/x times the phase lengths at b̄ (time
    rescaling), so b is the vmapped axis. ``cycles`` cycles fit the horizon at x = 1. (ii) Each phase's workload
    alone at saturation (λ*_ℓ, all phases in one program), combined with the count weights: the long-run answer.
    """
    from .._theory import mu_mix
    from ..engine import auto_steps, saturation, simulate

    _, server, mc, total_hi = setup(None, server, mc, quick, total_hi, default_workload=False)
    server.require_scalar("mixture_study")
    if not isinstance(server.b, (int, float)):
        raise LqsError("b", type(server.b).__name__, "the mixture study needs a constant b̄ (it rescales time by b̄)")
    b = float(server.b)
    phases, names = _phases(workload, total_hi)
    if not (len(phases) == len(lam_ratio) == len(time_frac)) or len(phases) < 2:
        raise LqsError("workload", len(phases), "need ≥ 2 phase workloads with one lam_ratio and one time_frac each")
    lr = np.asarray([check_float("lam_ratio", x, 0.0, lo_open=True) for x in lam_ratio])
    tf = np.asarray([check_float("time_frac", x, 0.0, lo_open=True) for x in time_frac])
    tf = tf / tf.sum()
    th = mixture_theory(phases, lr, tf, server)
    n_load = check_int("n_load", n_load if n_load is not None else (7 if quick else 11), 2, 1000)
    xs = np.linspace(check_float("load", load[0], 0.0, lo_open=True), check_float("load", load[1], 0.0), n_load)
    if mc.steps is None:
        mc = mc.replace(steps=max(auto_steps(w, server, mc.warmup) for w in phases))
    cycles = check_int("cycles", cycles, 1)
    # rates at x = 1: mean λ̄ = μ_exact,mix(count), split in proportion lam_ratio over the time fractions
    lam_bar = th["mu_exact_mix_count_rps"]
    lams = lr * lam_bar / np.sum(lr * tf)
    cycle_s = mc.steps * b / cycles
    n_cyc = int(math.ceil(cycles * xs.max() * 1.05)) + 1
    sched = [(float(tf[j] * cycle_s), float(lams[j]), phases[j]) for _ in range(n_cyc) for j in range(len(phases))]
    res = simulate(None, server.replace(b=[b * x for x in xs]), None, mc, key=key(seed, 0), phases=sched,
                   progress=progress)
    rows = []
    for x, (_, r) in zip(xs, res.summary.iterrows()):
        rows.append(dict(kind="phased", load_factor=float(x), lam_mean_rps=float(x * lam_bar),
                         **{f"lam_phase{j + 1}_rps": float(x * lams[j]) for j in range(len(phases))},
                         p_backlog_grows=float(r.p_backlog_grows), p_backlog_grows_lo=float(r.p_backlog_grows_lo),
                         p_backlog_grows_hi=float(r.p_backlog_grows_hi), throughput_rps=float(x * r.throughput_rps),
                         wait_p99_s=float(r.wait_p99_s / x), latency_reliable=bool(r.latency_reliable),
                         reliable=bool(r.reliable)))
    lam_star_grid = crossing([rr["lam_mean_rps"] for rr in rows], [rr["p_backlog_grows"] for rr in rows])
    # (ii) every phase workload alone at saturation: one program for all phases
    sat_rows, _ = saturation([(w, server.replace(b=server.bs[0])) for w in phases], mc, key(seed, 10),
                             progress=progress)
    sat = []
    for j, c in enumerate(sat_rows):
        sat.append((c["lam_star_rps"], c["lam_star_se_rps"]))
        rows.append(dict(kind=f"saturation {names[j]}", lam_star_rps=c["lam_star_rps"],
                         lam_star_se_rps=c["lam_star_se_rps"], mu_rps=th["mu_phases_rps"][j],
                         mu_exact_rps=th["mu_exact_phases_rps"][j], reliable=bool(c["reliable"])))
    df = pd.DataFrame(rows)
    for k in ("mu_mix_count_rps", "mu_mix_time_rps", "mu_time_avg_rps", "mu_exact_mix_count_rps",
              "mu_exact_mix_time_rps", "mu_exact_time_avg_rps"):
        df[k] = th[k]
    meta = dict(study="mixture", phases=names, workloads=[label(w) for w in phases], lam_ratio=lr.tolist(),
                time_frac=tf.tolist(), cycles=cycles, cycle_s_at_x1=cycle_s, load_factors=xs.tolist(),
                lam_backlog_half_rps=lam_star_grid,
                lam_star_from_phase_saturation_rps=mu_mix([x for x, _ in sat], th["q_count"]),
                phase_saturation_rps=[x for x, _ in sat], phase_saturation_se_rps=[e for _, e in sat],
                grid_step_rps=float((xs[1] - xs[0]) * lam_bar), **th, **settings(server, mc, quick))
    from .plots import plot_mixture

    return write("mixture", df, meta, plot_mixture, out)

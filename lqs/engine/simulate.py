"""``lqs.simulate``: run a grid of configurations (lqs/engine/run.py) and give each its long-run verdict
(lqs/engine/verdict.py). This module orchestrates; verdict decides; run runs."""

from __future__ import annotations

import jax

from .._arrivals import as_arrivals
from .._server import as_server, resolve_mc
from .results import SimResult
from .run import _phases, run_configs
from .sizing import auto_steps, check_workload, product, rates
from .verdict import Verdict, attach_verdicts


def simulate(workload, server, lam=None, mc=None, *, key=None, phases=None, progress: bool = False, devices=None,
             verdict: bool | Verdict = True, arrivals=None, **mc_fields) -> SimResult:
    """Simulate ``mc.trials`` independent copies of ``server`` for every λ (and M, b̄) of a grid.

    ``lam`` (requests/s) may be a number or a 1-D list; with ``server.M`` and ``server.b`` (each a number or a
    sequence) it spans the grid. ``mc`` is an :class:`lqs.MonteCarlo` (default ``MonteCarlo()``); keyword
    arguments that name MonteCarlo fields override it (``simulate(w, server, 3.0, trials=32, steps=8000)``).
    Randomness flows from ``key`` (a typed JAX key; default ``jax.random.key(mc.seed)``). Every input is checked
    before anything is compiled. The whole grid runs as one jitted, vmapped program.

    ``verdict`` (default True) adds the long-run verdict of every configuration (docs/model.md, "Two notions of
    stability"): one saturation run per distinct (M, b̄) gives λ* with its confidence interval, and each λ is
    ``stable`` below the interval, ``unstable`` above it, ``undecided`` inside (columns ``verdict``,
    ``verdict_basis``, ``lam_star_rps``, ``lam_star_lo_rps``, ``lam_star_hi_rps``). Saturation runs draw from
    the key of a :class:`lqs.engine.Verdict` (default ``key``) and the configuration alone, with its ``mc``
    (default ``mc``) as their trials and horizon; its ``cache`` (a dict) reuses them across calls
    (``verdict=Verdict(key=..., mc=..., cache=...)``); ``verdict=False`` skips them. What the finite run itself saw
    is ``p_backlog_grows``: the share of trials whose backlog visibly grew within the horizon, never called a
    verdict.

    ``phases=[(duration_s, lam, workload), ...]`` runs a non-stationary, piecewise-constant schedule instead of
    ``lam`` (pass ``workload=None`` and ``lam=None``): requests arriving in a phase take that phase's lengths, the
    last phase lasts until the end, and the theory columns use the request-weighted mixture (weights λ·duration).
    The saturation rule needs a stationary configuration, so a phased run's verdict is ``n/a`` and its
    ``verdict_basis`` says why.

    ``arrivals`` (default Poisson) is an :class:`lqs.Arrivals` without a rate: ``Arrivals("gamma", burstiness=k)``
    (a benchmark client's ``--burstiness``; inter-arrival CV 1/√k) or ``Arrivals("replayed", instants_s=...)`` (a
    trace's arrival pattern, time-scaled to each λ and repeated), run as given instants on one server or a
    cluster, without phases (docs/model.md, "Arrival processes"). The long-run verdict does not depend on them: the saturation
    run that gives λ* has a permanent backlog, and any stationary process of rate λ drifts by λ − λ*. What a
    finite run sees (latencies, ``p_backlog_grows``) does.

    A disaggregated deployment (an :class:`lqs.Disaggregated`, or a list of them, such as the P:D splits of G
    GPUs) runs as the coupled network on one clock (:func:`lqs.engine.network.simulate_network`: TTFT, TPOT, E2E
    and the transfer time, both pools' limits), every deployment × λ in one program, and returns its
    :class:`~lqs.engine.network.NetworkResult`; its verdict is the saturation rule per station.

    ``devices`` (default: all local devices) shards the (configuration × trial) axis across devices; trials are
    independent, so the partitioned program needs no communication.

    A cluster (``server.servers = G > 1``) steps its G servers together (the step lasts as long as the slowest
    server's batch); λ is the cluster's total rate, routed on arrival by ``server.routing``; the theory columns are
    for the whole cluster (G·μ). The model is docs/model.md; the step-loop path is ``mc.path`` and the one that
    ran is ``result.config["sizing"]["path"]``.
    """
    from .._disagg import Disaggregated

    if isinstance(server, Disaggregated) or (isinstance(server, (list, tuple)) and server
                                             and all(isinstance(d, Disaggregated) for d in server)):
        return _simulate_disagg(workload, server, lam, mc, key=key, phases=phases, progress=progress,
                                verdict=verdict, arrivals=arrivals, mc_fields=mc_fields)
    server = as_server(server)
    verdict = Verdict.of(verdict, mc_fields)
    mc = resolve_mc(mc, mc_fields)
    phased = None
    if phases is not None:
        workload, lam, phased = _phases(phases, workload, lam)
    check_workload(workload, server)
    lams = rates(lam)
    if mc.steps is None:
        mc = mc.replace(steps=auto_steps(workload, server, mc.warmup))
    arrivals = as_arrivals(arrivals, server.servers, phased is not None)
    configs = product(workload, server, lams, arrivals)
    if key is None:
        key = jax.random.key(mc.seed)
    res = run_configs(configs, mc, key=key, phased=phased, progress=progress, devices=devices)
    res.config["server"] = server.describe()
    res.config["arrivals"] = "Poisson" if arrivals is None else arrivals.describe()
    res.summary["arrivals"] = res.config["arrivals"]
    if verdict is not None:
        vmc = mc if verdict.mc is None else resolve_mc(verdict.mc, {})
        attach_verdicts(res, configs, vmc, key if verdict.key is None else verdict.key, phased=phased is not None,
                        cache=verdict.cache, progress=progress, devices=devices)
    return res


def _simulate_disagg(workload, deps, lam, mc, *, key, phases, progress, verdict, arrivals, mc_fields):
    """lqs.simulate of a Disaggregated deployment: the coupled network."""
    from .._errors import LqsError
    from .stations import simulate_disagg

    if phases is not None:
        raise LqsError("phases", "given", "a disaggregated deployment runs stationary arrivals (no phases)")
    if lam is None:
        raise LqsError("lam", lam, "the coupled network needs an arrival rate λ (requests/s)")
    from .._server import MonteCarlo

    if isinstance(verdict, Verdict):
        v = verdict.mc if verdict.mc is not None else True
        cache = verdict.cache
    elif isinstance(verdict, MonteCarlo):  # the saturation runs' trials and horizon
        v, cache = verdict, None
    else:
        v, cache = bool(verdict), None
    return simulate_disagg(workload, deps, lam, mc, key=key, arrivals=arrivals, progress=progress, verdict=v,
                            cache=cache, **mc_fields)

"""The long-run verdict (docs/model.md, "Two notions of stability"): with a large backlog a server runs saturated,
so its backlog drifts at λ − λ*, where λ* is the saturation throughput of the same configuration. One saturation
run per configuration decides every λ at once: stable below λ*'s confidence interval, unstable above it, undecided
inside. Saturation runs are keyed by the configuration (not by what else runs beside it) and cached."""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import jax
import numpy as np

from .._batch import AffineBatch
from .._errors import LqsError
from .run import run_configs
from .sizing import Config, saturated_service

OVERLOAD = 1.3  # saturation runs at λ = 1.3·μ: far enough above λ* that the backlog never empties
_SAT_TAG = 0x5A7


@dataclass
class Verdict:
    """How :func:`lqs.simulate` decides the long-run verdicts: the saturation runs' key (None: the run's key), their
    MonteCarlo (None: the run's) and a dict that caches them across calls (None: within the call)."""

    key: object = None
    mc: object = None
    cache: dict | None = None

    @classmethod
    def of(cls, verdict, kwargs: dict):
        """A Verdict or None from simulate's ``verdict`` argument; pops the deprecated ``verdict_key``,
        ``verdict_mc`` and ``verdict_cache`` keywords from ``kwargs``."""
        old = {k: kwargs.pop(f"verdict_{k}") for k in ("key", "mc", "cache") if f"verdict_{k}" in kwargs}
        if old:
            warnings.warn("simulate(verdict_key=, verdict_mc=, verdict_cache=) are deprecated: pass "
                          "verdict=lqs.engine.Verdict(key=, mc=, cache=)", DeprecationWarning, stacklevel=3)
        if isinstance(verdict, cls):
            return cls(**{**verdict.__dict__, **old}) if old else verdict
        if verdict is True or verdict is None:
            return cls(**old)
        if verdict is False:
            return None
        raise LqsError("verdict", verdict, "must be True, False or an lqs.engine.Verdict")


def config_hash(workload, server) -> int:
    """A stable 31-bit hash of a configuration's workload values and server (not of the rate)."""
    h = hashlib.sha256()
    h.update(str(jax.tree_util.tree_structure(workload)).encode())
    for x in jax.tree_util.tree_leaves(workload):
        a = np.ascontiguousarray(np.asarray(x))
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    h.update(type(server.b).__name__.encode())
    for x in jax.tree_util.tree_leaves(server.b):
        h.update(np.ascontiguousarray(np.asarray(x, np.float64)).tobytes())
    d = server.describe()
    d.pop("b", None)
    # the real-engine limits enter only when set, so a server without them keeps the hash (and the draws) it had
    if d.get("max_running") is None:
        d.pop("max_running", None)
    if d.get("block_size_tokens") == 1:
        d.pop("block_size_tokens", None)
    h.update(repr(sorted(d.items())).encode())
    return int.from_bytes(h.digest()[:4], "little") & 0x7FFFFFFF


def saturating_rate(workload, server) -> float:
    """A rate safely above λ*: OVERLOAD·μ_exact, with the b̄ of the closed form or, for an affine model without
    ``b_theory``, the duration of a typical saturated step (one prefill chunk, the mean number in service
    decoding, the cache full)."""
    m = workload.expected_g(server.prefill_chunk)
    if server.b_theory is not None or not isinstance(server.b, AffineBatch):
        b = server.b_mean_s
    else:
        _life, n_serv = saturated_service(m, server.M, server.prefill_chunk)
        b = server.b.typical_s(server.M, server.prefill_chunk, n_serv)
    return OVERLOAD * server.servers * server.M / (b * m.g_exact)


def _cache_key(h, mc, key):
    kd = tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())
    return (h, mc.trials, mc.steps, mc.warmup, mc.K, mc.compact_every, kd)


def saturation(items, mc, key, *, cache: dict | None = None, progress: bool = False, devices=None):
    """λ* of each (workload, one-configuration server[, arrivals]) in ``items``: the saturation throughput (control variate
    where available) over ``mc.trials`` trials, ±1.96 standard errors. Runs what ``cache`` lacks as one call of
    :func:`run_configs` (one program per shape). Returns (rows, SimResult of the runs made or None)."""
    cache = {} if cache is None else cache
    hashes = [config_hash(it[0], it[1]) for it in items]  # (workload, server[, arrivals])
    ckeys = [_cache_key(h, mc, key) for h in hashes]
    todo = []
    for i, ck in enumerate(ckeys):
        if ck not in cache and ck not in [ckeys[j] for j in todo]:
            todo.append(i)
    res = None
    if todo:
        base = jax.random.fold_in(key, _SAT_TAG)
        configs = [Config(items[i][0], items[i][1], saturating_rate(*items[i][:2]),
                          items[i][2] if len(items[i]) > 2 else None) for i in todo]
        keys = jax.vmap(lambda h: jax.random.fold_in(base, h))(np.asarray([hashes[i] for i in todo], np.uint32))
        res = run_configs(configs, mc.replace(stop_when_settled=False), keys=keys, progress=progress,
                          devices=devices)
        for j, i in enumerate(todo):
            cache[ckeys[i]] = _row(res, j, mc)
    return [cache[ck] for ck in ckeys], res


def _row(res, j, mc) -> dict:
    s = res.summary.iloc[j]
    t = res.trials[res.trials.config == j]
    use_cv = bool(np.isfinite(s["throughput_cv_rps"]))
    lam_star = float(s["throughput_cv_rps"] if use_cv else s["throughput_rps"])
    se = float(s["throughput_cv_se_rps"] if use_cv else s["throughput_se_rps"])
    saturated = int(t["waiting_final"].min())
    reasons = []
    if saturated <= 0:
        reasons.append("the saturation run did not keep a backlog in every trial")
    for col, what in (("starved_steps", "slot capacity K limited the schedule"),
                      ("arrival_cap_hits", "the per-step arrival cap was hit"), ("violations", "invariant violations")):
        if int(s[col]):
            reasons.append(f"{what} ({int(s[col])})")
    if not math.isfinite(se):
        reasons.append("λ* needs at least 2 trials for its interval")
    return dict(lam_star_rps=lam_star, lam_star_se_rps=se, lam_star_lo_rps=lam_star - 1.96 * se,
                lam_star_hi_rps=lam_star + 1.96 * se, lam_saturation_rps=float(s["lam_rps"]),
                mu_sim_rps=float(s["throughput_rps"]), mu_sim_se_rps=float(s["throughput_se_rps"]),
                method="saturation throughput" + (" (control variate)" if use_cv else ""),
                saturation_min_waiting=saturated, reliable=not reasons, unreliable_reason="; ".join(reasons),
                trials=mc.trials, steps=int(s["steps"]))


def verdict_of(lam: float, row: dict) -> str:
    if not row["reliable"]:
        return "undecided"
    if lam < row["lam_star_lo_rps"]:
        return "stable"
    if lam > row["lam_star_hi_rps"]:
        return "unstable"
    return "undecided"


def basis_of(row: dict) -> str:
    b = (f"saturation rule: λ* of this configuration from {row['trials']} trials × {row['steps']:,} steps at "
         f"λ = {row['lam_saturation_rps']:.4g}")
    return b if row["reliable"] else b + f"; unreliable: {row['unreliable_reason']}"


PHASED_BASIS = ("not applicable: a phased (non-stationary) schedule has no single saturation throughput; see "
                "p_backlog_grows for what the finite run observed")


def attach_verdicts(res, configs, mc, key, *, phased: bool = False, cache=None, progress=False, devices=None):
    """Add verdict, verdict_basis and λ* columns to ``res.summary`` (one saturation run per distinct
    configuration, ignoring the rate)."""
    s = res.summary
    if phased:
        s["verdict"], s["verdict_basis"] = "n/a", PHASED_BASIS
        for c in ("lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps"):
            s[c] = np.nan
        return res
    rows, _ = saturation([(c.workload, c.server) for c in configs], mc, key, cache=cache, progress=progress,
                         devices=devices)
    s["verdict"] = [verdict_of(c.lam, r) for c, r in zip(configs, rows)]
    s["verdict_basis"] = [basis_of(r) for r in rows]
    for c in ("lam_star_rps", "lam_star_lo_rps", "lam_star_hi_rps"):
        s[c] = [r[c] for r in rows]
    res.config["verdict"] = dict(rule="saturation", overload=OVERLOAD,
                                 key=np.asarray(jax.random.key_data(key)).tolist())
    return res


__all__ = ["OVERLOAD", "PHASED_BASIS", "Verdict", "attach_verdicts", "basis_of", "config_hash", "saturating_rate", "saturation",
           "verdict_of"]

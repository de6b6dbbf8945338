"""A cluster: G servers of one trial in lock-step behind a router (docs/model.md, "Clusters")."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import rng
from .compact import init_state
from .state import EngineConfig, Params, State, trial_keys
from .step import StepOut, draw_step, finish, serve


class ClusterKeys(NamedTuple):
    """A cluster's own streams (each server draws its lengths and offsets from its own Keys)."""

    arrivals: jax.Array  # uint32[]: Poisson arrival count of step n (counter = step)
    batch: jax.Array  # uint32[]: batch time of step n (counter = step)
    routing: jax.Array  # uint32[]: the random router's choice for arrival i (counter = request index)


class Cluster(NamedTuple):
    servers: State  # every leaf with a leading [G] axis
    keys: ClusterKeys
    rr: jax.Array  # int32[] round-robin pointer


def init_cluster(key, params: Params, cfg: EngineConfig) -> Cluster:
    ks = jax.random.split(key, cfg.servers + 1)
    servers = jax.vmap(lambda k: init_state(k, params, cfg))(ks[:-1])
    kc = trial_keys(ks[-1])
    return Cluster(servers=servers, keys=ClusterKeys(kc.arrivals, kc.batch, kc.lengths), rr=jnp.int32(0))


def cluster_step(cl: Cluster, params: Params, cfg: EngineConfig) -> tuple[Cluster, StepOut]:
    """One lock-step batch iteration of G servers: the step lasts as long as the slowest server's batch; each
    arrival is routed on arrival (round_robin, random, jsq = fewest requests in system, least_kv = least memory
    in use; ties to the lowest index)."""
    G = cfg.servers
    srv = cl.servers
    svs = jax.vmap(lambda st: serve(st, params, cfg))(srv)
    step_n, t = srv.clock.step[0], srv.clock.t[0]

    def slowest(ub1, ub2, pre, dec, mem):
        return jnp.max(jax.vmap(lambda a, b_, c: params.batch.draw(ub1, ub2, a, b_, c))(pre, dec, mem))

    b_n, n_arr, trunc, phase = draw_step(cl.keys, step_n, t, svs, slowest, params, cfg,
                                         jnp.sum(srv.counters.arrivals), t_c=srv.clock.t_c[0])
    # route the arrivals one by one
    gi = jnp.arange(G, dtype=jnp.int32)
    in_sys = svs.n_live - svs.n_done + srv.queue.overflow
    routed = jnp.zeros((G,), jnp.int32)
    rr = cl.rr
    first = jnp.sum(srv.counters.arrivals)
    rule = params.routing  # traced: every rule is evaluated, one is taken (a few operations on G servers)
    given = cfg.arrivals == "instants"
    if given:  # inst[g, r]: the instant of the r-th arrival routed to server g in this step
        ka = jnp.arange(cfg.a_max, dtype=jnp.int32)
        inst = jnp.zeros((G, cfg.a_max), jnp.float32)
        L = params.arr_t.shape[-1]
    for j in range(cfg.a_max):
        active = j < n_arr
        g_rr = rr % G
        g_random = jnp.minimum((rng.uniform(cl.keys.routing, first + j, 0) * G).astype(jnp.int32), G - 1)
        g_jsq = jnp.argmin(in_sys + routed).astype(jnp.int32)
        g_kv = jnp.argmin(svs.mem + routed * params.prefill_chunk).astype(jnp.int32)  # least_kv
        g = jnp.select([rule == 0, rule == 1, rule == 2], [g_rr, g_random, g_jsq], g_kv)
        if given:
            t_j = params.arr_t[jnp.minimum(first + j, L - 1)]
            inst = jnp.where((gi[:, None] == g) & (ka[None, :] == routed[g]) & active, t_j, inst)
        rr = rr + (active & (rule == 0)).astype(jnp.int32)
        routed = routed + ((gi == g) & active).astype(jnp.int32)
    trunc_g = trunc & (gi == 0)  # counted once per cluster
    new_srv, outs = jax.vmap(lambda st, sv, m, tr: finish(st, sv, b_n, m, tr, phase, params, cfg))(
        srv, svs, routed, trunc_g)
    if given:
        # a server's slots were pre-filled with the instants of its own arrival indices (the one-server rule);
        # in a cluster the r-th request routed to server g in this step is the cluster's arrival first + j: its
        # slot (n_used before the step + r, for those that found a slot) takes that request's instant
        def own_instants(u_off, n_before, n_after, ig):
            r = jnp.arange(u_off.shape[0], dtype=jnp.int32) - n_before
            took = (r >= 0) & (r < n_after - n_before)
            return jnp.where(took, ig[jnp.clip(r, 0, cfg.a_max - 1)], u_off)

        u_off = jax.vmap(own_instants)(new_srv.slots.u_off, srv.queue.n_used, new_srv.queue.n_used, inst)
        new_srv = new_srv._replace(slots=new_srv.slots._replace(u_off=u_off))
    out = StepOut(mem=jnp.sum(outs.mem), n_sched=jnp.sum(outs.n_sched), prefill_tokens=jnp.sum(outs.prefill_tokens),
                  decode_tokens=jnp.sum(outs.decode_tokens), b=b_n, arrivals=n_arr,
                  completions=jnp.sum(outs.completions), swaps=jnp.sum(outs.swaps), waiting=jnp.sum(outs.waiting))
    return Cluster(servers=new_srv, keys=cl.keys, rr=rr), out

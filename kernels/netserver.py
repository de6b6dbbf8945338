"""One server of the coupled network (kernels/network.py): its step boundary on each pool (the colocated
scheduler, kernels/step.serve, under M minus the transfer holds or reservations), the routing rules and the
insertion of a transfer into a decode server's slots."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import rng
from .netstate import _BIG, F_DONE, F_PDONE, DSlots, NetConfig, NetParams, Pool, PSlots, tau_of
from .state import EngineConfig, Params, Slots, State, draw_lengths, empty, replace_paths
from .step import kahan_add, serve

def _take(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def _put(tree, i, sub):
    return jax.tree_util.tree_map(lambda x, y: x.at[i].set(y), tree, sub)


def _pick(c, a, b):
    """where(c, a, b) over two trees of one structure."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)


def _compact(tree, keep, K):
    """The slots of ``tree`` (leaves [K]) with ``keep``, squeezed to the front in order; the rest zero."""
    pos = jnp.where(keep, jnp.cumsum(keep.astype(jnp.int32)) - 1, K)
    return jax.tree_util.tree_map(lambda x: jnp.zeros_like(x).at[pos].set(x, mode="drop"), tree)


def _serve(s, o, k, u, flags, t_first, n_used, T, M_eff, p: Params, ecfg: EngineConfig, backlog: bool = False):
    """kernels/step.serve on one server's slots, under M_eff (``backlog``: requests wait beyond the slots, so a
    schedule that reaches every slot with memory to spare counts as starved)."""
    st = replace_paths(empty(State), {
        "slots": Slots(s=s, o=o, k=k, u=u, flags=flags, t_arr=None, t_first=t_first, t_ttft=None, t_done=None,
                       work=None, u_off=None, uu=None),
        "queue.n_used": n_used, "queue.overflow": jnp.asarray(backlog).astype(jnp.int32), "clock.t": T})
    return serve(st, p._replace(M=M_eff), ecfg)


def _draw_b(p: Params, skey, step_n, g, sv):
    ub1 = rng.uniform(skey, step_n, 2 * g)
    ub2 = rng.uniform(skey, step_n, 2 * g + 1)
    return p.batch.draw(ub1, ub2, sv.n_pre_tok, sv.n_dec_tok, sv.mem).astype(jnp.float32)


def _route(rule, n, n_in, score, rr, u):
    """The routing rule's server among the first n (round_robin, random, jsq, least_kv; ties to the lowest index)."""
    G = n_in.shape[0]
    act = jnp.arange(G) < n
    g_rr = rr % n
    g_random = jnp.minimum((u * n.astype(jnp.float32)).astype(jnp.int32), n - 1)
    g_jsq = jnp.argmin(jnp.where(act, n_in, _BIG)).astype(jnp.int32)
    g_kv = jnp.argmin(jnp.where(act, score, _BIG)).astype(jnp.int32)
    return jnp.select([rule == 0, rule == 1, rule == 2], [g_rr, g_random, g_jsq], g_kv), rr + (rule == 0).astype(jnp.int32)


def _prefill_boundary(sp: PSlots, pl: Pool, g, T, prm: NetParams, cfg: NetConfig, keys, rid0):
    """Prefill server g's step boundary at T (module docstring, event 0). With cfg.saturated the free slots are
    then filled with the next requests (indices rid0, rid0 + 1, ...), arriving at T."""
    KP = cfg.KP
    iota = jnp.arange(KP, dtype=jnp.int32)
    occ = iota < pl.n_used
    pdone = occ & ((sp.flags & F_PDONE) != 0)
    t_ttft = jnp.where(pdone, T, sp.t_ttft)
    t_rel = jnp.where(pdone, T + tau_of(sp.s, prm), sp.t_rel)
    pend = sp.pend | pdone.astype(jnp.int32)
    keep = occ & ((sp.u < sp.k) | (pend != 0) | (t_rel > T))
    sp = _compact(sp._replace(t_ttft=t_ttft, t_rel=t_rel, pend=pend), keep, KP)
    n_used = jnp.sum(keep.astype(jnp.int32))
    n_new = jnp.int32(0)
    if cfg.saturated:
        n_new = (KP - n_used) * (prm.sat == 1).astype(jnp.int32)
        new = (iota >= n_used) & (prm.sat == 1)
        rid = rid0 + iota - n_used
        s_n, o_n, k_n = draw_lengths(prm.workload, keys[1], rid, prm.P.prefill_chunk)
        z = jnp.zeros_like(iota)
        vals = dict(s=s_n, k=k_n, u=z, flags=z, t_first=jnp.zeros((KP,), jnp.float32), o=o_n, rid=rid,
                    t_arr=jnp.full((KP,), T), t_ttft=jnp.zeros((KP,), jnp.float32),
                    t_rel=jnp.full((KP,), jnp.inf, jnp.float32), pend=z)
        sp = PSlots(**{f: jnp.where(new, vals[f].astype(getattr(sp, f).dtype), getattr(sp, f))
                       for f in PSlots._fields})
        n_used = n_used + n_new
    occ = iota < n_used
    held = jnp.sum(jnp.where(occ & (sp.u >= sp.k) & (sp.t_rel > T), sp.s, 0))
    zero_o = jnp.zeros_like(sp.s)
    sv = _serve(sp.s, zero_o, sp.k, sp.u, sp.flags, sp.t_first, n_used, T, prm.P.M - held, prm.P, cfg.prefill,
                (prm.sat == 1) if cfg.saturated else False)
    b = _draw_b(prm.P, keys[3], pl.steps, g, sv)
    flags = sv.slots.flags | jnp.where(sv.prefill_done, F_PDONE, 0)
    sp = sp._replace(u=sv.slots.u, flags=flags, t_first=sv.slots.t_first)
    t_end, t_end_c = kahan_add(T, pl.t_end_c, b)
    mem = sv.mem + held
    n_in = jnp.sum((occ & ((sp.u < sp.k) | ((flags & F_PDONE) != 0))).astype(jnp.int32))  # not yet prefilled
    pl = pl._replace(n_used=n_used, n_aux=pl.n_aux + jnp.sum(pdone.astype(jnp.int32)), n_in=n_in, t=T,
                     t_c=pl.t_end_c, t_end=t_end, t_end_c=t_end_c, steps=pl.steps + 1, mem=mem,
                     joined=jnp.int32(0))
    info = dict(pdone=jnp.sum(pdone.astype(jnp.int32)), mem=mem, held=held, n_sched=sv.n_sched, b=b,
                swaps=sv.n_swap, viol=(mem > prm.P.M).astype(jnp.int32), n_new=n_new,
                starved=sv.starved.astype(jnp.int32))
    return sp, pl, info


def _decode_boundary(sd: DSlots, pl: Pool, g, T, prm: NetParams, cfg: NetConfig, keys, rid0):
    """Decode server g's step boundary at T (event 1). Returns the slots, the pool scalars, what the step did and
    the finished requests' mask and latencies. With cfg.saturated and NetParams.sat = 2 the server runs a closed
    loop with a permanent backlog (new requests rid0, rid0 + 1, ... whose prefill ended at T: see below)."""
    KD = cfg.KD
    iota = jnp.arange(KD, dtype=jnp.int32)
    arr_order = iota < pl.n_used
    done = arr_order & ((sd.flags & F_DONE) != 0)
    region = iota < pl.n_used + pl.n_aux
    keep = region & ~done
    admit = region & ~arr_order & (sd.t_enter < T)
    n_admit = jnp.sum(admit.astype(jnp.int32))
    n_done = jnp.sum(done.astype(jnp.int32))
    finished = sd  # latencies read from the slots before compaction
    sd = _compact(sd, keep, KD)
    n_used = pl.n_used - n_done + n_admit
    n_aux = pl.n_aux - n_admit
    n_new = jnp.int32(0)
    if cfg.saturated:
        # a closed loop at the decode server's own throughput: its first boundary fills three quarters of the
        # slots with requests already transferred (a waiting backlog); every later boundary starts one new
        # transfer per request completed (reserved for its τ(s)), so the reservations are those of requests
        # arriving at λ*_D, the edge of stability
        on = prm.sat == 2
        first = on & (pl.steps == 0)
        n_init = jnp.where(first, (3 * KD) // 4, 0)
        n_new = jnp.where(on, n_init + jnp.where(first, 0, n_done), 0).astype(jnp.int32)
        new = (iota >= n_used + n_aux) & (iota < n_used + n_aux + n_new)
        rid = rid0 + iota - (n_used + n_aux)
        s_n, o_n, _ = draw_lengths(prm.workload, keys[1], rid, prm.P.prefill_chunk)
        tf = jnp.full((KD,), T)
        z = jnp.zeros_like(iota)
        vals = dict(s=s_n, o=o_n, k=z, u=z, flags=z, t_first=jnp.zeros((KD,), jnp.float32), rid=rid, t_arr=tf,
                    t_first_p=tf, t_ttft=tf, t_enter=jnp.where(first, T, T + tau_of(s_n, prm)))
        sd = DSlots(**{f: jnp.where(new, vals[f].astype(getattr(sd, f).dtype), getattr(sd, f))
                       for f in DSlots._fields})
        n_used = n_used + n_init  # the initial backlog has entered: it waits in the arrival order
        n_aux = n_aux + n_new - n_init
        # the transfers stay sorted by their end (a stable sort: the arrival order first, ties in slot order)
        key_ = jnp.where(iota < n_used, -jnp.inf, jnp.where(iota < n_used + n_aux, sd.t_enter, jnp.inf))
        order = jnp.argsort(key_, stable=True)
        sd = _take_slots(sd, order)
    transit = (iota >= n_used) & (iota < n_used + n_aux)
    reserved = jnp.sum(jnp.where(transit & (sd.t_enter > T), sd.s, 0))
    over = reserved > prm.D.M  # the reservations alone exceed M: a capacity limit of its own
    sv = _serve(sd.s, sd.o, sd.k, sd.u, sd.flags, sd.t_first, n_used, T, prm.D.M - reserved, prm.D, cfg.decode,
                (prm.sat == 2) if cfg.saturated else False)
    b = _draw_b(prm.D, keys[4], pl.steps, g, sv)
    flags = sv.slots.flags | jnp.where(sv.done, F_DONE, 0)
    k_new = sv.slots.k
    sd = sd._replace(u=sv.slots.u, flags=flags, t_first=sv.slots.t_first, k=k_new)
    t_end, t_end_c = kahan_add(T, pl.t_end_c, b)
    mem = sv.mem + reserved
    pl = pl._replace(n_used=n_used, n_aux=n_aux, n_in=n_used + n_aux, t=T, t_c=pl.t_end_c, t_end=t_end,
                     t_end_c=t_end_c, steps=pl.steps + 1, mem=mem, joined=jnp.int32(0))
    info = dict(mem=mem, n_sched=sv.n_sched, b=b, swaps=sv.n_swap, viol=((mem > prm.D.M) & ~over).astype(jnp.int32),
                n_done=n_done, n_transit=n_aux, starved=sv.starved.astype(jnp.int32), n_new=n_new,
                over=over.astype(jnp.int32))
    return sd, pl, info, done, finished


def _take_slots(f: DSlots, idx):
    return DSlots(*(x[idx] for x in f))


def _latencies(f: DSlots, T):
    """[6, KD] latencies of the decode slots ``f`` finishing at T, rows in NET_LAT order."""
    o1 = jnp.maximum(f.o - 1, 1).astype(jnp.float32)
    return jnp.stack([f.t_first_p - f.t_arr, f.t_ttft - f.t_arr, T - f.t_arr, (T - f.t_ttft) / o1,
                      f.t_enter - f.t_ttft, f.t_first - f.t_enter])


def _insert(sd: DSlots, pl: Pool, new: dict, cfg: NetConfig):
    """A transfer into decode server slots, at its place among the running transfers (sorted by their end; ties
    after)."""
    KD = cfg.KD
    iota = jnp.arange(KD, dtype=jnp.int32)
    transit = (iota >= pl.n_used) & (iota < pl.n_used + pl.n_aux)
    pos = pl.n_used + jnp.sum((transit & (sd.t_enter <= new["t_enter"])).astype(jnp.int32))
    fits = pl.n_used + pl.n_aux < KD

    def shift(x, v):
        prev = jnp.roll(x, 1)
        y = jnp.where(iota < pos, x, jnp.where(iota == pos, v, prev))
        return jnp.where(fits, y, x)

    vals = dict(s=new["s"], o=new["o"], k=jnp.int32(0), u=jnp.int32(0), flags=jnp.int32(0),
                t_first=jnp.float32(0.0), rid=new["rid"], t_arr=new["t_arr"], t_first_p=new["t_first_p"],
                t_ttft=new["t_ttft"], t_enter=new["t_enter"])
    sd = DSlots(**{f: shift(getattr(sd, f), jnp.asarray(vals[f], getattr(sd, f).dtype)) for f in DSlots._fields})
    fi = fits.astype(jnp.int32)
    pl = pl._replace(n_aux=pl.n_aux + fi, n_in=pl.n_in + fi, joined=pl.joined + fi * new["s"])
    return sd, pl, fits

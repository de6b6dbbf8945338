"""Plain-Python reference of the coupled disaggregated network (docs/model.md, "Disaggregated prefill and
decode"), written to be read and trusted: lists of small objects, one loop over events, no JAX.

The network: N_P prefill servers and N_D decode servers, each stepping with its own batch time on one clock.

* A request arrives at an instant (given) and is routed to a prefill server by the prefill pool's rule.
* A prefill server runs the colocated step (tests/reference_sim.py) on requests that end with their prefill:
  footprints min((c+1)·ŝ, s), one prefill chunk per step, the longest FCFS prefix under M minus the KV it holds
  for transfers. When the step that ran a request's last chunk ends (instant T), the request has its first token
  (TTFT = T), its transfer starts (it ends at T + τ(s), τ(s) = τ0 + s/r) and its s tokens stay held on the
  prefill server until then.
* It is then routed (after every step boundary at T) to a decode server by the decode pool's rule, where its s
  tokens are reserved until the transfer ends; the decode server adds it to its arrival order at its first step
  boundary after that end (strictly after: the colocated rule, arrivals in [t, t + b) join at t + b), in the order
  the transfers ended. It decodes o tokens there (footprints s + d + 1) under M minus the reserved tokens; under
  recompute a preempted request redoes its prefill there (⌈s/ŝ_D⌉ chunks), then all its o decode steps.
* Events at one instant run in the order: prefill step boundaries, decode step boundaries (each by server index),
  routings (by prefill server, then arrival order), arrivals.

Instants are float32 and the clocks Kahan-compensated, as in the engine, so that ties between the servers'
clocks (constant batch times make many) resolve identically; the model itself is in real time.
"""

from __future__ import annotations

import numpy as np

f32 = np.float32
ROUTINGS = ("round_robin", "random", "jsq", "least_kv")


def kahan(t, c, x):
    y = f32(f32(x) - c)
    new = f32(t + y)
    return new, f32(f32(new - t) - y)


class Req:
    def __init__(self, rid, s, o, t_arr):
        self.rid, self.s, self.o, self.t_arr = rid, s, o, t_arr
        self.k = 0  # prefill chunks needed on the server it is on
        self.c = 0  # prefill chunks done there
        self.d = 0  # decode tokens done
        self.started = False
        self.sched_last = False
        self.finishing = False  # its last step is running (prefill: last chunk; decode: last token)
        self.t_first = self.t_ttft = self.t_rel = self.t_enter = self.t_first_d = self.t_done = None
        self.p = self.dsrv = None
        self.pending = False


class Srv:
    def __init__(self, pool, g):
        self.pool, self.g = pool, g
        self.order = []  # arrival order
        self.held = []  # prefill: requests whose transfer holds their KV here
        self.transit = []  # decode: transfers running to it, sorted by their end
        self.t, self.c = f32(0.0), f32(0.0)
        self.t_end, self.c_end = f32(0.0), f32(0.0)
        self.n = 0  # steps run
        self.mem = 0
        self.joined = 0
        self.n_in = 0


def _schedule(srv, reqs, M_eff, chunk, policy, budget, decode):
    """The colocated step on ``reqs`` (arrival order): the longest FCFS prefix, advance, preempt. Returns
    (scheduled, mem, prefill tokens, decode tokens, swaps)."""
    def k_of(r):
        return r.k

    prefix, wsum, tsum = 0, 0, 0
    for r in reqs:
        k = k_of(r)
        f = min((r.c + 1) * chunk, r.s) if r.c < k else r.s + r.d + 1
        w = (r.s + (r.o if decode else 0)) if policy == "reserve" else f
        tok = min(chunk, r.s - r.c * chunk) if r.c < k else 1
        if wsum + w > M_eff or (budget is not None and tsum + tok > budget):
            break
        wsum += w
        tsum += tok
        prefix += 1
    sched, rest = reqs[:prefix], reqs[prefix:]
    mem = pre = dec = swaps = 0
    for r in sched:
        k = k_of(r)
        if r.c < k:
            mem += min((r.c + 1) * chunk, r.s)
            pre += min(chunk, r.s - r.c * chunk)
            r.c += 1
            r.finishing = (not decode) and r.c == k
        else:
            mem += r.s + r.d + 1
            dec += 1
            r.d += 1
            r.finishing = decode and r.d == r.o
        if not r.started:
            r.started = True
            if decode:
                r.t_first_d = srv.t
            else:
                r.t_first = srv.t
    for r in rest:
        r.finishing = False
        if r.sched_last:
            swaps += 1
        if r.started and policy == "recompute":
            r.c, r.d = 0, 0
            if decode:
                r.k = (r.s + chunk - 1) // chunk  # its prefill is redone on the decode server
    for r in sched:
        r.sched_last = True
    for r in rest:
        r.sched_last = False
    return sched, mem, pre, dec, swaps


def reference_network(*, n_p, n_d, prefill, decode, tau0, inv_rate, arrivals, lengths, batch_time, route_u, t_stop,
                      K_decode=None):
    """Run the network until the first event at or after ``t_stop``.

    ``prefill`` / ``decode``: dicts of M, chunk, policy, budget (None: no token budget), routing. ``arrivals``:
    sorted float32 instants; ``lengths(rid) -> (s, o)``; ``batch_time(pool, g, n, pre, dec, mem) -> b`` (pool
    "P" or "D", server g's step n); ``route_u(rid, pool) -> u`` the random router's uniform; ``K_decode``: a
    decode server's slots (arrival order + transfers; a transfer that finds them full is lost).
    Returns (events, requests, totals)."""
    P = [Srv("P", g) for g in range(n_p)]
    D = [Srv("D", g) for g in range(n_d)]
    tau0, inv_rate = f32(tau0), f32(inv_rate)
    inf = f32(np.inf)
    rr = {"P": 0, "D": 0}
    reqs, events = [], []
    ai = 0
    lost = 0
    viol = 0

    def route(pool, servers, rid, score_kv):
        rule = ROUTINGS.index((prefill if pool == "P" else decode)["routing"])
        n = len(servers)
        if rule == 0:
            g = rr[pool] % n
            rr[pool] += 1
            return g
        if rule == 1:
            return min(int(f32(route_u(rid, pool)) * f32(n)), n - 1)
        scores = [s.n_in for s in servers] if rule == 2 else [score_kv(s) for s in servers]
        return scores.index(min(scores))

    def p_boundary(srv, T):
        nonlocal viol
        prm = prefill
        srv.t, srv.c = srv.t_end, srv.c_end
        for r in srv.order:
            if r.finishing:
                r.t_ttft = T
                r.t_rel = f32(T + f32(tau0 + f32(inv_rate * f32(r.s))))
                r.pending = True
                srv.held.append(r)
        srv.order = [r for r in srv.order if not (r.c == r.k and r.finishing)]
        srv.held = [r for r in srv.held if r.pending or r.t_rel > T]
        held = sum(r.s for r in srv.held if r.t_rel > T)
        live = [r for r in srv.order if r.c < r.k]
        sched, mem, pre, dec, swaps = _schedule(srv, live, prm["M"] - held, prm["chunk"], prm["policy"],
                                                prm["budget"], False)
        b = f32(batch_time("P", srv.g, srv.n, pre, dec, mem))
        srv.t_end, srv.c_end = kahan(T, srv.c, b)
        srv.n += 1
        srv.mem = mem + held
        viol += srv.mem > prm["M"]
        srv.joined = 0
        srv.n_in = sum(1 for r in srv.order if r.c < r.k or r.finishing)
        events.append(("P", srv.g, T, srv.mem, len(sched), b, -1, -1))

    def d_boundary(srv, T):
        nonlocal viol
        prm = decode
        srv.t, srv.c = srv.t_end, srv.c_end
        for r in srv.order:
            if r.finishing:
                r.t_done = T
        srv.order = [r for r in srv.order if not r.finishing]
        while srv.transit and srv.transit[0].t_enter < T:
            srv.order.append(srv.transit.pop(0))
        reserved = sum(r.s for r in srv.transit if r.t_enter > T)
        sched, mem, pre, dec, swaps = _schedule(srv, srv.order, prm["M"] - reserved, prm["chunk"], prm["policy"],
                                                prm["budget"], True)
        b = f32(batch_time("D", srv.g, srv.n, pre, dec, mem))
        srv.t_end, srv.c_end = kahan(T, srv.c, b)
        srv.n += 1
        srv.mem = mem + reserved
        viol += srv.mem > prm["M"]
        srv.joined = 0
        srv.n_in = len(srv.order) + len(srv.transit)
        events.append(("D", srv.g, T, srv.mem, len(sched), b, -1, -1))

    while True:
        tP = min(s.t_end for s in P)
        tD = min(s.t_end for s in D)
        with_pending = [s for s in P if any(r.pending for r in s.held)]
        tR = min((s.t for s in with_pending), default=inf)
        tA = arrivals[ai] if ai < len(arrivals) else inf
        T = min(tP, tD, tR, tA)
        if not T < t_stop:
            break
        if tP == T:
            p_boundary(next(s for s in P if s.t_end == T), T)
        elif tD == T:
            d_boundary(next(s for s in D if s.t_end == T), T)
        elif tR == T:
            src = next(s for s in with_pending if s.t == T)
            r = next(x for x in sorted(src.held, key=lambda x: x.rid) if x.pending)
            r.pending = False
            r.t_enter = r.t_rel
            g = route("D", D, r.rid, lambda s: s.mem + s.joined)
            dst = D[g]
            if K_decode is not None and len(dst.order) + len(dst.transit) >= K_decode:
                lost += 1
            else:
                pos = sum(1 for x in dst.transit if x.t_enter <= r.t_enter)
                dst.transit.insert(pos, r)
                r.dsrv = g
                r.k, r.c, r.d = 0, 0, 0
                r.started = r.sched_last = r.finishing = False
                dst.n_in += 1
                dst.joined += r.s
            events.append(("R", src.g, T, 0, 0, f32(0.0), g, r.rid))
        else:
            rid = ai
            s, o = lengths(rid)
            r = Req(rid, s, o, T)
            r.k = (s + prefill["chunk"] - 1) // prefill["chunk"]
            g = route("P", P, rid, lambda x: x.mem + prefill["chunk"] * x.joined)
            r.p = g
            P[g].order.append(r)
            P[g].n_in += 1
            P[g].joined += 1
            reqs.append(r)
            ai += 1
            events.append(("A", g, T, 0, 0, f32(0.0), g, rid))
    in_system = sum(1 for r in reqs if r.t_done is None and (r.dsrv is not None or r.pending or r.t_ttft is None))
    totals = dict(arrivals=len(reqs), completions=sum(1 for r in reqs if r.t_done is not None), lost=lost,
                  violations=viol, in_system=in_system)
    return events, reqs, totals

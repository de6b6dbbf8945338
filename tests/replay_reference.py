"""A plain-Python replay of a finite experiment, written from docs/model.md ("Replaying a benchmark", "Real-engine
limits"), independent of kernels/replay.py: one request at a time, Python floats and lists, no arrays.

Times in the tests are dyadic fractions (b̄ = 0.25 s, ...), so float32 and float64 agree exactly."""

from __future__ import annotations

import math


def _blocks(x, block):
    return -(-x // block) * block


def replay_reference(s, o, t_arr, *, M, chunk, budget=None, max_running=None, block=1, concurrency=None,
                     frontend=(0.0, 0.0), policy="recompute", chunking="fixed", batch=lambda pre, dec, mem: 0.25):
    """(t_enter, t_ttft, t_done, steps, mem_max) of one trial. ``batch(prefill_tokens, decode_tokens, mem)`` gives
    each step's duration. ``frontend`` (f0, f1[, f2[, f3]]): the event loop takes the requests that entered one at a
    time, in entry order, f2 s each; then the tokeniser, one at a time, f3·s s each (s: its prompt tokens); a
    request can be scheduled f0 + f1·n s after the tokeniser is through with it (n: requests in the server when it
    entered); a first token or completion produced at T is seen at max(T, the instant the event loop is through
    with every request that entered before)."""
    f0, f1, f2, f3 = (tuple(frontend) + (0.0, 0.0, 0.0))[:4]
    n = len(s)
    C = n if concurrency is None else concurrency
    B = math.inf if budget is None else budget
    cap = math.inf if max_running is None else max_running
    k = [len(range(0, si, chunk)) if chunking == "fixed" else si for si in s]  # prefill units: chunks or tokens
    prog = [0] * n  # steps served (fixed) or tokens (budget)
    started = [False] * n
    ttft_seen = [False] * n
    t_free = [0.0 if i < C else math.inf for i in range(n)]
    t_avail = [math.inf] * n
    t_ttft = [math.inf] * n
    t_done = [math.inf] * n
    done_count, t, steps, mem_max = 0, 0.0, 0, 0
    fe_free = 0.0  # the event loop is through with every entered request by then
    tok_free = 0.0  # the tokeniser is through with every entered request by then
    while done_count < n:
        enter = [max(t_arr[i], t_free[i]) for i in range(n)]
        pending = [i for i in range(n) if t_done[i] == math.inf]
        inside = [i for i in pending if enter[i] <= t]
        for i in inside:  # file order is entry order
            if t_avail[i] == math.inf:
                through = enter[i]
                if f2 > 0:
                    fe_free = max(fe_free, enter[i]) + f2
                    through = fe_free
                if f3 > 0:
                    tok_free = max(tok_free, through) + f3 * s[i]
                    through = tok_free
                t_avail[i] = through + (f0 + f1 * len(inside))
        live = [i for i in pending if t_avail[i] <= t]
        if not live:  # idle: jump to the next instant a request enters or can be scheduled
            t = max(t, min(t_avail[i] if t_avail[i] < math.inf else enter[i] for i in pending))
            continue
        # the longest prefix, in file order, under M, the cap and the token budget
        sched, used_mem, used_w, used_tok, tok_of = [], 0, 0, 0, {}
        for i in live:  # live is in file order
            pre = prog[i] < k[i]
            if chunking == "fixed":
                tok = min(chunk, s[i] - prog[i] * chunk) if pre else 1
                foot = min((prog[i] + 1) * chunk, s[i]) if pre else s[i] + (prog[i] - k[i]) + 1
                if used_tok + tok > B:
                    break
            else:
                left = B - used_tok
                if left < 1:
                    break
                tok = min(chunk, s[i] - prog[i], left) if pre else 1
                foot = prog[i] + tok
            foot = _blocks(foot, block)
            weight = _blocks(s[i] + o[i], block) if policy == "reserve" else foot
            if used_w + weight > M or len(sched) + 1 > cap:
                break
            sched.append(i)
            used_mem += foot
            used_w += weight
            used_tok += (min(chunk, s[i] - prog[i] * chunk) if pre else 1) if chunking == "fixed" else tok
            tok_of[i] = tok
        mem_max = max(mem_max, used_mem)
        pre_tok = sum(tok_of[i] for i in sched if prog[i] < k[i])
        dec_tok = sum(1 for i in sched if prog[i] >= k[i])
        b = batch(pre_tok, dec_tok, used_mem)
        t_end = t + b
        t_seen = max(t_end, fe_free) if f2 > 0 else t_end
        steps += 1
        finished = []
        for i in live:
            if i in tok_of:
                was_pre = prog[i] < k[i]
                prog[i] += tok_of[i] if chunking == "budget" else 1
                started[i] = True
                if was_pre and prog[i] == k[i] and not ttft_seen[i]:
                    ttft_seen[i], t_ttft[i] = True, t_seen
                if prog[i] == k[i] + o[i]:
                    t_done[i] = t_seen
                    finished.append(i)
            elif started[i] and policy == "recompute":
                prog[i] = 0
        new_done = len(finished)
        for i in range(done_count + C, done_count + new_done + C):
            if i < n:
                t_free[i] = t_seen
        done_count += new_done
        t = t_end
    enter = [max(t_arr[i], t_free[i]) for i in range(n)]
    return enter, t_ttft, t_done, steps, mem_max

"""Plain-Python reference implementation of the lqs single-server step model.

Written to be read and trusted, not to be fast: standard library only, one
server, a list of small objects, one loop over steps.  It follows
docs/model.md (the simulation step, batch time and
"Closed-form theory" (g_exact), step by step.

Each step n = 0 .. steps-1, starting at time t_n:

1. every request in the system gets its next footprint
       f = min((c+1)*chunk, s)   while c < k   (k = ceil(s/chunk))
       f = s + d + 1             once c == k
2. the scheduled set is the longest prefix of the arrival order whose
   weights sum to <= M (weight f for swap/recompute, s+o for reserve) and,
   with a token budget B, whose processed tokens sum to <= B
   (prefill step: min(chunk, s - c*chunk) tokens; decode step: 1 token);
3. every scheduled request advances one unit (c += 1 while c < k, else
   d += 1); a request with d == o completes at the end of the step;
4. started requests outside the prefix are swapped out (swap; reserve keeps
   progress too, though it never happens there) or reset to c = d = 0
   (recompute; they stay started and keep their place).  One swap-out /
   preemption is counted for every request that was scheduled in step n-1,
   is still in the system, and is not scheduled in step n;
5. the step lasts b_n = batch_time(n, prefill_tokens, decode_tokens,
   mem_used) seconds; then a = arrivals(n, b_n) requests arrive during it,
   at times t_n + b_n * arrival_offset(n, j) (t_n + b_n when no offset is
   given), appended in arrival order, schedulable from step n+1.
"""

POLICIES = ("swap", "recompute", "reserve")


def num_chunks(s, chunk):
    """k(s) = ceil(s / chunk), in integers."""
    return (s + chunk - 1) // chunk


def footprint(s, o, c, d, chunk):
    """Memory the request holds if it is scheduled in the coming step.

    While prefilling (c < k) it is the prompt prefix covered after this
    chunk, min((c+1)*chunk, s); while decoding it is s + d + 1.
    """
    k = num_chunks(s, chunk)
    if c < k:
        return min((c + 1) * chunk, s)
    return s + d + 1


def tokens_processed(s, o, c, d, chunk):
    """Tokens the request processes if it is scheduled in the coming step."""
    k = num_chunks(s, chunk)
    if c < k:
        return min(chunk, s - c * chunk)
    return 1


def g_exact(s, o, chunk):
    """Exact lifetime memory-work, by the explicit sum (no closed form):
    sum_{c=1..k} min(c*chunk, s) + o*s + o*(o+1)/2."""
    k = num_chunks(s, chunk)
    total = 0
    for c in range(1, k + 1):
        total += min(c * chunk, s)
    for d in range(o):          # decode step with d tokens done holds s + d + 1
        total += s + d + 1
    return total


class _Request:
    def __init__(self, index, s, o, t_arr):
        self.index = index
        self.s = s
        self.o = o
        self.t_arr = t_arr
        self.c = 0                  # prefill chunks done
        self.d = 0                  # decode tokens done
        self.started = False        # scheduled at least once
        self.scheduled_last_step = False
        self.first_step = None
        self.t_first = None
        self.ttft_step = None
        self.t_ttft = None
        self.done_step = None
        self.t_done = None
        self.work = 0
        self.preemptions = 0

    def as_dict(self):
        return {
            "index": self.index, "s": self.s, "o": self.o, "t_arr": self.t_arr,
            "first_step": self.first_step, "t_first": self.t_first,
            "ttft_step": self.ttft_step, "t_ttft": self.t_ttft,
            "done_step": self.done_step, "t_done": self.t_done,
            "work": self.work, "preemptions": self.preemptions,
        }


def reference_run(*, M, chunk, policy, steps, arrivals, lengths, batch_time,
                  token_budget=None, arrival_offset=None):
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
    if M < 1:
        raise ValueError(f"M must be >= 1, got {M}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if token_budget is not None and token_budget < chunk:
        raise ValueError(f"token_budget {token_budget} < chunk {chunk} would deadlock")

    all_requests = []   # every request that ever arrived, in index order
    system = []         # requests in the system, in arrival order
    t = 0.0

    out = {key: [] for key in (
        "mem_used", "n_scheduled", "completions", "swaps", "arrivals",
        "in_system", "waiting", "started", "b", "prefill_tokens",
        "decode_tokens", "t_start", "weight_used")}

    for n in range(steps):
        t_start = t

        # (1) + (2): footprints and the longest admissible prefix.
        prefix_len = 0
        weight_sum = 0
        token_sum = 0
        for r in system:
            f = footprint(r.s, r.o, r.c, r.d, chunk)
            w = (r.s + r.o) if policy == "reserve" else f
            tok = tokens_processed(r.s, r.o, r.c, r.d, chunk)
            if weight_sum + w > M:
                break
            if token_budget is not None and token_sum + tok > token_budget:
                break
            weight_sum += w
            token_sum += tok
            prefix_len += 1
        scheduled = system[:prefix_len]
        not_scheduled = system[prefix_len:]

        # (3): advance the scheduled requests, measuring the step as we go.
        mem_used = 0
        prefill_tokens = 0
        decode_tokens = 0
        ttft_now = []
        for r in scheduled:
            f = footprint(r.s, r.o, r.c, r.d, chunk)
            tok = tokens_processed(r.s, r.o, r.c, r.d, chunk)
            mem_used += f
            r.work += f
            if not r.started:
                r.started = True
                r.first_step = n
                r.t_first = t_start
            k = num_chunks(r.s, chunk)
            if r.c < k:
                prefill_tokens += tok
                r.c += 1
                if r.c == k and r.ttft_step is None:
                    ttft_now.append(r)      # first time its prefill completes
            else:
                decode_tokens += tok
                r.d += 1
        assert mem_used <= weight_sum <= M  # f <= s+o, so also true for reserve

        # (4): requests left out of the prefix.
        swaps = 0
        for r in not_scheduled:
            if r.scheduled_last_step:
                swaps += 1
                r.preemptions += 1
            if r.started and policy == "recompute":
                r.c = 0
                r.d = 0
            # swap (and reserve, where it never happens) keep their progress.
        for r in scheduled:
            r.scheduled_last_step = True
        for r in not_scheduled:
            r.scheduled_last_step = False

        # (5): step duration, then completions at its end, then arrivals.
        b = batch_time(n, prefill_tokens, decode_tokens, mem_used)
        if not b > 0:
            raise ValueError(f"batch_time returned {b!r} at step {n}; must be > 0")
        t_end = t_start + b
        for r in ttft_now:
            r.ttft_step = n
            r.t_ttft = t_end

        completed = [r for r in scheduled if r.d == r.o]
        for r in completed:
            r.done_step = n
            r.t_done = t_end
        system = [r for r in system if r.done_step is None]

        a = arrivals(n, b)
        if a < 0 or int(a) != a:
            raise ValueError(f"arrivals returned {a!r} at step {n}")
        a = int(a)
        for j in range(a):
            index = len(all_requests)
            s, o = lengths(index)
            if s < 1 or o < 1:
                raise ValueError(f"request {index}: lengths (s={s}, o={o}) need s >= 1 and o >= 1")
            if s + o > M:
                raise ValueError(f"request {index}: s + o = {s}+{o} = {s + o} > M = {M}; it can never run")
            off = 1.0 if arrival_offset is None else arrival_offset(n, j)
            r = _Request(index, s, o, t_start + b * off)
            all_requests.append(r)
            system.append(r)

        t = t_end

        out["mem_used"].append(mem_used)
        out["weight_used"].append(weight_sum)
        out["n_scheduled"].append(len(scheduled))
        out["completions"].append(len(completed))
        out["swaps"].append(swaps)
        out["arrivals"].append(a)
        out["in_system"].append(len(system))
        out["waiting"].append(sum(1 for r in system if not r.started))
        out["started"].append(sum(1 for r in system if r.started))
        out["b"].append(b)
        out["prefill_tokens"].append(prefill_tokens)
        out["decode_tokens"].append(decode_tokens)
        out["t_start"].append(t_start)

    out["requests"] = [r.as_dict() for r in all_requests]
    out["total_arrivals"] = len(all_requests)
    out["total_completions"] = sum(out["completions"])
    out["total_swaps"] = sum(out["swaps"])
    out["final_time"] = t
    return out

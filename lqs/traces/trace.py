"""The Trace: observed (prompt, output) lengths and optional arrival times (see ``lqs.traces``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._errors import LqsError, check_float, check_int


@dataclass(frozen=True, eq=False)
class Trace:
    """Observed requests: prompt lengths ``s`` and output lengths ``o`` (int32 tokens), optional arrival times.

    ``arrival_s`` is float64 seconds from the first arrival (sorted ascending) or None; ``source`` says where the
    trace came from (a path, or ``bundled:<file>``); ``row`` holds each request's 0-based data row in the source;
    ``failed`` counts the source's requests left out because they failed (benchmark results; 0 otherwise).
    """

    s: np.ndarray
    o: np.ndarray
    arrival_s: np.ndarray | None
    source: str
    name: str
    row: np.ndarray | None = field(default=None, repr=False)
    failed: int = 0  # requests of the source left out because they failed (benchmark results)

    def __post_init__(self):
        s = np.asarray(self.s)
        o = np.asarray(self.o)
        if s.ndim != 1 or o.shape != s.shape or s.size == 0:
            raise LqsError("trace", self.name, "must hold at least one request with one s and one o per request")
        object.__setattr__(self, "s", s.astype(np.int32, copy=False))
        object.__setattr__(self, "o", o.astype(np.int32, copy=False))
        if self.arrival_s is not None:
            t = np.asarray(self.arrival_s, np.float64)
            if t.shape != s.shape:
                raise LqsError("arrival_s", f"{t.size} times", f"must have one time per request ({s.size})")
            object.__setattr__(self, "arrival_s", t)
        r = np.arange(s.size, dtype=np.int64) if self.row is None else np.asarray(self.row, np.int64)
        object.__setattr__(self, "row", r)

    def __len__(self) -> int:
        return int(self.s.size)

    def __repr__(self) -> str:
        arr = "with arrivals" if self.arrival_s is not None else "no arrivals"
        return f"Trace(name={self.name!r}, n={len(self)}, {arr}, source={self.source!r})"

    @property
    def n(self) -> int:
        return len(self)

    @property
    def max_total(self) -> int:
        """Largest s + o in the trace (tokens)."""
        return int(np.max(self.s.astype(np.int64) + self.o.astype(np.int64)))

    @property
    def duration_s(self) -> float | None:
        """Time from the first to the last arrival (seconds), or None without arrival times."""
        if self.arrival_s is None:
            return None
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def mean_rate_rps(self) -> float | None:
        """Observed mean arrival rate (n − 1) / (t_last − t_first) in requests per second.

        None when the trace has no arrival times, fewer than two requests or all arrivals at one instant.
        """
        d = self.duration_s
        if d is None or len(self) < 2 or not d > 0:
            return None
        return (len(self) - 1) / d

    def workload(self):
        """The joint empirical distribution of (s, o): a :class:`lqs.Pairs` that resamples the trace's pairs."""
        from .._workload import Pairs

        return Pairs(self.s, self.o)

    def validate(self, M) -> "Trace":
        """Raise LqsError naming the first request (row in the source) with s + o > M; return self."""
        M = check_int("M", M, 1)
        tot = self.s.astype(np.int64) + self.o.astype(np.int64)
        bad = np.flatnonzero(tot > M)
        if bad.size:
            i = int(bad[0])
            raise LqsError("lengths", f"s+o={int(tot[i])}",
                           f"every request must have s+o ≤ M={M}; such a request can never run",
                           f"row {int(self.row[i])} of {self.source}: s={int(self.s[i])}, o={int(self.o[i])}; "
                           f"{bad.size} of {len(self)} requests are too long")
        return self

    def subset(self, idx, name: str) -> "Trace":
        """The requests at positions ``idx`` (kept in the given order; arrival times re-based to start at 0)."""
        idx = np.asarray(idx, np.int64)
        t = None
        if self.arrival_s is not None:
            t = self.arrival_s[idx]
            t = t - t.min()
        return Trace(self.s[idx], self.o[idx], t, self.source, name, self.row[idx])

    def split(self, train_frac: float = 0.8, seed: int = 0) -> tuple["Trace", "Trace"]:
        """Deterministic (train, test) split, as the paper fits on 80% and tests on the other 20%.

        With arrival times the split is chronological: the first ⌊train_frac·n⌉ requests in arrival order train,
        the rest test (no look-ahead, like a deployment that calibrates on the past). Without arrival times it
        is a random permutation drawn with ``numpy.random.default_rng(seed)``; the train part is then kept in
        source order, and so is the test part. Both parts hold at least one request; arrival times of each part
        are re-based to start at 0.
        """
        train_frac = check_float("train_frac", train_frac, 0.0, 1.0, lo_open=True, hi_open=True)
        seed = check_int("seed", seed, 0)
        n = len(self)
        if n < 2:
            raise LqsError("trace", self.name, "must hold at least 2 requests to split into train and test",
                           f"it holds {n}")
        n_train = min(max(int(round(train_frac * n)), 1), n - 1)
        if self.arrival_s is not None:
            order = np.arange(n)  # already in arrival order
            tr, te = order[:n_train], order[n_train:]
        else:
            perm = np.random.default_rng(seed).permutation(n)
            tr, te = np.sort(perm[:n_train]), np.sort(perm[n_train:])
        return self.subset(tr, f"{self.name}[train]"), self.subset(te, f"{self.name}[test]")


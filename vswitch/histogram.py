"""A plain histogram for values observed off the data path (mapping push lag, API request durations).

No dependency: the owner observes into lists on its event loop; ``vswitch.metrics`` reads them from
the metrics server's thread at scrape time (``snapshot``), as Prometheus' cumulative buckets.
"""

from __future__ import annotations

import bisect

# Seconds: from a millisecond (a push on one machine) to a minute (an API long poll).
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket (not cumulative); the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: a value equal to a bound is in it
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> tuple[list[tuple[str, int]], int, float]:
        """(cumulative buckets [(le, count)] ending with "+Inf", count, sum), consistent among themselves
        even while another thread observes (the counts are copied once)."""
        counts, total = list(self.counts), self.sum
        buckets, running = [], 0
        for bound, c in zip((*map(repr, self.bounds), "+Inf"), counts):
            running += c
            buckets.append((bound, running))
        return buckets, running, total

"""Expiry a slice at a time, for flow tables too large to scan in one go (conntrack, NAT, load balancer).

Each call examines at most ``budget`` entries, continuing where the last call stopped, so it costs
O(budget) however large the table (Linux's conntrack gc worker likewise scans a slice of its hash table
per run). A pass starts with one copy of the table's keys — a dict cannot be walked across the
removals that follow — and takes len/budget calls; a call makes at most one full pass.
"""

from __future__ import annotations


class Sweep:
    __slots__ = ("_keys", "_cursor")

    def __init__(self) -> None:
        self._keys: list = []  # the pass's snapshot of the table's keys
        self._cursor = 0

    def expired(self, table: dict, now: float, budget: int) -> list:
        """The keys, among the next ``budget`` examined, of entries whose ``expires`` is at or before
        ``now``, each once (a new pass may meet again a key the old one found). The caller removes them."""
        found: dict = {}
        new_pass = False
        for _ in range(budget):
            if self._cursor >= len(self._keys):
                if new_pass or not table:
                    break  # one full pass per call at most
                self._keys = list(table)
                self._cursor = 0
                new_pass = True
            key = self._keys[self._cursor]
            self._cursor += 1
            entry = table.get(key)
            if entry is not None and now >= entry.expires:
                found[key] = None
        if self._cursor >= len(self._keys):
            self._keys = []  # let the keys of removed entries go
            self._cursor = 0
        return list(found)

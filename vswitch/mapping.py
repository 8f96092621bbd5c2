"""The mapping service: (VPC, address) → (physical host, ENI), as a pure core.

Two plain objects, no sockets:
- ``MappingService``: the daemon's authoritative table and its subscribers. It takes messages from
  connections and returns the messages to send to which connections.
- ``MappingCache``: what a host agent (or the edge) holds. Preloaded with a snapshot of its VPCs, kept
  current by pushes, asked on a miss. A hit is one dict access.

Wire protocol: one JSON object per line over a stream (TCP). Every message has ``op``:

    client → daemon   {"op": "subscribe", "vnis": [1, 2] | "*"}      snapshot of each, then pushes
                      {"op": "query", "vni": 1, "addr": "10.0.1.5"}   one lookup (on a miss)
                      {"op": "put", "vni": 1, "addr": ..., "host": "198.18.0.11", "eni": "eni-…"}
                      {"op": "delete", "vni": 1, "addr": ...}
                      {"op": "ping"}
    daemon → client   {"op": "snapshot", "vni": 1, "entries": [[addr, host, eni], ...]}
                      {"op": "set", "vni": 1, "addr": ..., "host": ..., "eni": ...}
                      {"op": "unset", "vni": 1, "addr": ...}           (also the answer to a failed query)
                      {"op": "pong"} / {"op": "error", "message": "..."}

A pushed ``set``/``unset`` (a change, not the answer to a query) also carries ``"ts"``: the daemon's wall
clock when it pushed (Unix seconds, float). A client that knows the field observes ``now - ts``, the
push lag (``MappingCache.push_lag``, ``vpc_mapping_push_lag_seconds``; meaningful across machines whose
clocks NTP keeps within a millisecond or so); one that does not ignores it, as every client ignores
fields it does not read, and a message without it is applied as before.

The protocol is hand-written because it is a dozen lines of JSON; a message broker or gRPC would add
a dependency and a daemon for what a dict and a list of subscribers do.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from typing import Any, Callable, Iterable

import orjson

from . import addresses
from .geneve import MAX_VNI, UDP_PORT
from .histogram import Histogram


class ProtocolError(ValueError):
    """A message that is not valid JSON or not a valid mapping-protocol message."""


@dataclasses.dataclass(frozen=True, slots=True)
class Mapping:
    host: str  # underlay IP of the physical host that holds the ENI
    eni: int  # ENI number
    underlay: tuple[str, int]  # (host, 6081): ready for sendto, built once

    @classmethod
    def of(cls, host: str, eni: int, port: int = UDP_PORT) -> "Mapping":
        return cls(host, eni, (host, port))


def encode(message: dict) -> bytes:
    return orjson.dumps(message) + b"\n"


def decode(line: bytes) -> dict:
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError("a message is a JSON object with a string 'op'")
    return message


def _vni(message: dict) -> int:
    vni = message.get("vni")
    if not isinstance(vni, int) or isinstance(vni, bool) or not 0 <= vni <= MAX_VNI:
        raise ProtocolError(f"'vni' must be an integer 0..{MAX_VNI}")
    return vni


def _addr(message: dict, field: str = "addr") -> str:
    value = message.get(field)
    try:
        if not isinstance(value, str) or "%" in value:
            raise ValueError
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ProtocolError(f"'{field}' must be an IP address as a string") from None


def _eni(message: dict) -> int:
    try:
        return addresses.eni_number(message.get("eni"))
    except (ValueError, TypeError, AttributeError):
        raise ProtocolError("'eni' must be an ENI id like eni-0123456789abcdef") from None


Outgoing = list[tuple[Any, dict]]  # (connection, message)


class MappingService:
    """The daemon's authoritative table. ``handle`` returns what to send to whom."""

    def __init__(self, entries: Iterable[tuple[int, str, str, int]] = (),
                 clock: Callable[[], float] | None = None):
        self.clock = clock  # stamps pushes ("ts"): the daemon passes time.time; None: no stamp
        self.table: dict[int, dict[str, tuple[str, int]]] = {}
        self.subscribers: dict[Any, set[int] | None] = {}  # None = every VNI (the edge)
        for vni, addr, host, eni in entries:
            self.table.setdefault(vni, {})[addr] = (host, eni)

    def export(self) -> list[list]:
        return [[vni, addr, host, eni] for vni, t in sorted(self.table.items()) for addr, (host, eni) in t.items()]

    def disconnect(self, conn) -> None:
        self.subscribers.pop(conn, None)

    def handle(self, conn, message: dict) -> Outgoing:
        op = message["op"]
        if op == "subscribe":
            return self._subscribe(conn, message)
        if op == "query":
            vni, addr = _vni(message), _addr(message)
            return [(conn, self._entry_message(vni, addr))]
        if op == "put":
            vni, addr, host, eni = _vni(message), _addr(message), _addr(message, "host"), _eni(message)
            return self.put(vni, addr, host, eni)
        if op == "delete":
            return self.delete(_vni(message), _addr(message))
        if op == "ping":
            return [(conn, {"op": "pong"})]
        raise ProtocolError(f"unknown op {op!r}")

    def put(self, vni: int, addr: str, host: str, eni: int) -> Outgoing:
        if self.table.get(vni, {}).get(addr) == (host, eni):
            return []
        self.table.setdefault(vni, {})[addr] = (host, eni)
        return self._push(vni, self._entry_message(vni, addr))

    def delete(self, vni: int, addr: str) -> Outgoing:
        if self.table.get(vni, {}).pop(addr, None) is None:
            return []
        return self._push(vni, {"op": "unset", "vni": vni, "addr": addr})

    def _subscribe(self, conn, message: dict) -> Outgoing:
        vnis = message.get("vnis")
        if vnis == "*":
            self.subscribers[conn] = None
            wanted = sorted(self.table)
        elif isinstance(vnis, list):
            wanted = [_vni({"vni": v}) for v in vnis]
            self.subscribers[conn] = set(wanted)
        else:
            raise ProtocolError("'vnis' must be a list of VNIs or \"*\"")
        return [(conn, self._snapshot(v)) for v in wanted]

    def _snapshot(self, vni: int) -> dict:
        entries = [[a, h, addresses.eni_id(e)] for a, (h, e) in self.table.get(vni, {}).items()]
        return {"op": "snapshot", "vni": vni, "entries": entries}

    def _entry_message(self, vni: int, addr: str) -> dict:
        found = self.table.get(vni, {}).get(addr)
        if found is None:
            return {"op": "unset", "vni": vni, "addr": addr}
        return {"op": "set", "vni": vni, "addr": addr, "host": found[0], "eni": addresses.eni_id(found[1])}

    def _push(self, vni: int, message: dict) -> Outgoing:
        if self.clock is not None:
            message["ts"] = self.clock()
        return [(c, message) for c, vnis in self.subscribers.items() if vnis is None or vni in vnis]


class MappingCache:
    """A host's (or the edge's) copy of the mappings it needs.

    ``tables[vni][addresses.key(addr)] -> Mapping``: the data path keeps a reference to one VPC's dict
    and does a single ``dict.get`` per packet.
    """

    QUERY_RETRY = 1.0  # seconds before a miss on the same key asks the daemon again

    def __init__(self, port: int = UDP_PORT):
        self.port = port
        self.tables: dict[int, dict[int, Mapping]] = {}
        self.all_vnis = False
        self.pending: dict[tuple[int, int], float] = {}  # (vni, key) -> when we last asked
        self.queries: list[dict] = []  # messages the shell should send to the daemon
        self.hits_by_query = 0  # answers that filled a miss
        self.misses = 0
        self.updates = 0
        self.clock = time.time
        self.push_lag = Histogram()  # seconds from the daemon's push ("ts") to its application here
        self.push_lag_negative = 0  # pushes stamped after they arrived: the clocks disagree (counted as 0 s)

    def table(self, vni: int) -> dict[int, Mapping]:
        """The (possibly empty, but stable) dict for one VPC; the data path holds on to it."""
        t = self.tables.get(vni)
        if t is None:
            t = self.tables[vni] = {}
        return t

    def subscribe_message(self, vnis: Iterable[int] | None) -> dict:
        """None subscribes to every VPC (the edge)."""
        if vnis is None:
            self.all_vnis = True
            return {"op": "subscribe", "vnis": "*"}
        vnis = sorted(set(vnis))
        for v in vnis:
            self.table(v)
        return {"op": "subscribe", "vnis": vnis}

    def lookup(self, vni: int, key: int) -> Mapping | None:
        t = self.tables.get(vni)
        return t.get(key) if t is not None else None

    def note_miss(self, vni: int, key: int, now: float) -> None:
        """Record a miss; queue a query unless one for the same key is already in flight."""
        self.misses += 1
        asked = self.pending.get((vni, key))
        if asked is not None and now - asked < self.QUERY_RETRY:
            return
        self.pending[(vni, key)] = now
        self.queries.append({"op": "query", "vni": vni, "addr": addresses.text(key)})

    def take_queries(self) -> list[dict]:
        q, self.queries = self.queries, []
        return q

    def apply(self, message: dict) -> None:
        """Apply a snapshot/set/unset from the daemon. Raises ProtocolError on a bad message."""
        op = message["op"]
        if op == "snapshot":
            vni = _vni(message)
            entries = message.get("entries")
            if not isinstance(entries, list):
                raise ProtocolError("'entries' must be a list")
            fresh = {}
            for item in entries:
                if not isinstance(item, list) or len(item) != 3:
                    raise ProtocolError("snapshot entries are [addr, host, eni]")
                m = {"addr": item[0], "host": item[1], "eni": item[2]}
                fresh[addresses.key(_addr(m))] = Mapping.of(_addr(m, "host"), _eni(m), self.port)
            t = self.table(vni)  # replace in place: the data path holds a reference
            t.clear()
            t.update(fresh)
            for k in fresh:  # a snapshot answers any query in flight for what it contains
                self.pending.pop((vni, k), None)
            self.updates += 1
        elif op == "set":
            vni, k = _vni(message), addresses.key(_addr(message))
            self._observe_push(message)
            if vni in self.tables or self.all_vnis or (vni, k) in self.pending:
                self.table(vni)[k] = Mapping.of(_addr(message, "host"), _eni(message), self.port)
                self.updates += 1
            if self.pending.pop((vni, k), None) is not None:
                self.hits_by_query += 1
        elif op == "unset":
            vni, k = _vni(message), addresses.key(_addr(message))
            self._observe_push(message)
            self.pending.pop((vni, k), None)
            t = self.tables.get(vni)
            if t is not None and t.pop(k, None) is not None:
                self.updates += 1
        elif op in ("pong", "ok", "error"):
            pass
        else:
            raise ProtocolError(f"unknown op {op!r}")

    def _observe_push(self, message: dict) -> None:
        """A pushed change carries the daemon's wall clock (``ts``); answers to queries and messages from
        daemons that do not stamp carry none (a stamp that is not a number is ignored too)."""
        ts = message.get("ts")
        if ts.__class__ is float or ts.__class__ is int:
            lag = self.clock() - ts
            if lag < 0:
                self.push_lag_negative += 1
                lag = 0.0
            self.push_lag.observe(lag)

    def size(self) -> int:
        return sum(len(t) for t in list(self.tables.values()))  # list: the metrics thread calls it too

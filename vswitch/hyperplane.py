"""The Hyperplane fleet as everyone sees it: which nodes are alive, and which node a flow goes to.

Hosts, the edge and the nodes themselves each hold a ``Fleet``: the configured nodes (name → underlay
address), the shard size k, and when each node was last heard. Nodes announce themselves with a
heartbeat every ``HEARTBEAT_INTERVAL`` to every host, the edge and each other; a node not heard for
``DEAD_AFTER`` is dead. No election, no coordination: every sender computes a flow's owners with
``hyperplane_shard.owners`` over the same shard and (within a heartbeat or two) the same live set, so
they agree, and when a primary dies they all move its flows to the old secondary — which has them,
because the primary replicated each flow there (``FLOWS`` messages).

Control datagrams are Geneve OAM packets (the O bit: "not data", RFC 8926 §3.4) on the underlay port,
so no other socket or port is needed, and a receiver tells them from data by one bit::

    [0:8]  Geneve base header: O bit set, VNI 0, protocol 0x88B5 (IEEE local experimental)
    [8:12] message type: b"HPHB" heartbeat | b"HPFL" flow records
    [12:]  heartbeat: the node's name (UTF-8)
           flow records: JSON {"from": node, "kind": "nat"|"nlb", "id": resource, "flows": [[...], ...]}

Receivers accept them only from fleet addresses. Keys a sender hashes (see ``hyperplane_shard``):
- NAT gateway: ``flow_hash(proto, remote, 0, 0, 0)``, the remote (internet) address, which outbound
  packets carry as destination and replies as source.
- Load balancer: ``flow_hash(proto, client, 0, client_port, 0)``: requests carry the client as source,
  the target's replies (client address preserved) as destination.

Pure: ``now`` is passed in.
"""

from __future__ import annotations

import orjson

from . import hyperplane_shard
from .geneve import Geneve

HEARTBEAT_INTERVAL = 0.1  # seconds between a node's heartbeats
DEAD_AFTER = 0.5  # silence after which a node is dead
OAM_PROTOCOL = 0x88B5
HEARTBEAT, FLOWS = b"HPHB", b"HPFL"
MAX_CACHED = 65536  # flow keys whose owner is remembered (cleared when the live set changes)


def heartbeat(name: str) -> bytes:
    return Geneve(0, OAM_PROTOCOL, payload=HEARTBEAT + name.encode(), oam=True).emit()


def flows_message(sender: str, kind: str, resource: str, flows: list) -> bytes:
    body = orjson.dumps({"from": sender, "kind": kind, "id": resource, "flows": flows})
    return Geneve(0, OAM_PROTOCOL, payload=FLOWS + body, oam=True).emit()


def is_oam(buf) -> bool:
    """A Geneve OAM datagram (checked before the data path decodes it)."""
    return bool(buf[1] & 0x80)


def parse_message(buf, n: int):
    """(HEARTBEAT, name) or (FLOWS, dict) from an OAM datagram, or None if it is neither."""
    if n < 12:
        return None
    opts = 8 + (buf[0] & 0x3F) * 4
    kind = bytes(buf[opts:opts + 4])
    try:
        if kind == HEARTBEAT:
            return HEARTBEAT, bytes(buf[opts + 4:n]).decode()
        if kind == FLOWS:
            body = orjson.loads(bytes(buf[opts + 4:n]))
            if isinstance(body, dict) and isinstance(body.get("flows"), list):
                return FLOWS, body
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        pass
    return None


class Fleet:
    """The configured nodes, which of them are alive, and flows' owners among them."""

    def __init__(self, nodes: dict[str, str], shard_size: int, port: int):
        self.nodes = dict(nodes)  # name -> underlay IP
        self.by_ip = {ip: name for name, ip in self.nodes.items()}
        self.shard_size = shard_size
        self.port = port
        self.last_heard: dict[str, float] = {}
        self.alive: frozenset[str] = frozenset()
        self.changes = 0  # live-set changes seen
        self._shards: dict[str, list[str]] = {}
        self._owner: dict[tuple, tuple[str, int] | None] = {}

    def __bool__(self) -> bool:
        return bool(self.nodes)

    def heard(self, ip: str, now: float) -> bool:
        """A heartbeat from ``ip``; False if it is not a fleet address. A node coming back counts at once."""
        name = self.by_ip.get(ip)
        if name is None:
            return False
        self.last_heard[name] = now
        if name not in self.alive:
            self._set_alive(self.alive | {name})
        return True

    def check(self, now: float) -> bool:
        """Declare dead the nodes silent for DEAD_AFTER. True if the live set changed."""
        alive = frozenset(n for n in self.alive if now - self.last_heard.get(n, -1e9) < DEAD_AFTER)
        if alive != self.alive:
            self._set_alive(alive)
            return True
        return False

    def _set_alive(self, alive: frozenset[str]) -> None:
        self.alive = alive
        self.changes += 1
        self._owner.clear()

    def shard(self, resource_id: str) -> list[str]:
        s = self._shards.get(resource_id)
        if s is None:
            s = self._shards[resource_id] = hyperplane_shard.shard(resource_id, self.nodes, self.shard_size)
        return s

    def owners(self, resource_id: str, key: int) -> tuple[str | None, str | None]:
        return hyperplane_shard.owners(self.shard(resource_id), key, self.alive)

    def _primary(self, resource_id: str, cache_key: tuple, key: int) -> tuple[str, int] | None:
        primary = hyperplane_shard.owners(self.shard(resource_id), key, self.alive)[0]
        addr = None if primary is None else (self.nodes[primary], self.port)
        if len(self._owner) >= MAX_CACHED:
            self._owner.clear()
        self._owner[cache_key] = addr
        return addr

    def nat_node(self, nat_id: str, proto: int, remote: int) -> tuple[str, int] | None:
        """The underlay address of the live node that holds NAT flows of ``proto`` with ``remote``."""
        cache_key = (nat_id, proto, remote)
        addr = self._owner.get(cache_key, False)
        if addr is False:
            addr = self._primary(nat_id, cache_key, nat_key(proto, remote))
        return addr

    def nlb_node(self, lb_id: str, proto: int, client: int, client_port: int) -> tuple[str, int] | None:
        """The underlay address of the live node that holds the load balancer's flow of this client."""
        cache_key = (lb_id, proto, client, client_port)
        addr = self._owner.get(cache_key, False)
        if addr is False:
            addr = self._primary(lb_id, cache_key, nlb_key(proto, client, client_port))
        return addr

    def status(self, now: float) -> dict:
        return {"nodes": {name: {"underlay": ip, "alive": name in self.alive,
                                 "last_heard_ago": round(now - self.last_heard[name], 3)
                                 if name in self.last_heard else None}
                          for name, ip in sorted(self.nodes.items())},
                "shard_size": self.shard_size, "live_set_changes": self.changes}


def nat_key(proto: int, remote: int) -> int:
    return hyperplane_shard.flow_hash(proto, remote, 0, 0, 0)


def nlb_key(proto: int, client: int, client_port: int) -> int:
    return hyperplane_shard.flow_hash(proto, client, 0, client_port, 0)

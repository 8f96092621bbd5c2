"""A Hyperplane node's data path: NAT gateway and load balancer flows, as a pure core.

A node holds flow state only. Everything else — which ENI lives where, route tables, which gateway or
load balancer owns an address — comes from the control plane's desired view (``update``); the flows
come from packets, and from the other nodes of the shard (replication, ``import_flows``).

    host ──► node   a packet of an instance routed to a NAT gateway (its subnet's route says so), or to a
                    load balancer's address, or a load balancer target's reply to a client
    edge ──► node   a packet from the internet to a NAT gateway's address (the edge translated the
                    elastic IP to the gateway's private address, and hashed the flow to this node)

``process(buf, n, outer_ip, now)`` takes a Geneve datagram as received, rewrites the inner packet in
place and returns where to send the datagram next (an underlay ``(ip, port)``), or None (``last_drop``
says why, counted). Packets the node makes itself (ICMP "fragmentation needed", TCP RSTs, health
checks) go to ``outbox``; flows to copy to their secondary go to ``replicate``.

NAT gateway (``natgw.NatGateway`` decides; here the packet work):

    out  check the sender owns the source (mapping as the edge checks it), repeat the sender's route
         lookup (source ENI → subnet → route table → ``nat`` target) to find the gateway, translate
         the source to the gateway's private address and a port, and send it on along the gateway's own
         subnet's route table: to the edge for a public gateway (which maps the private address to the
         elastic IP, 1:1), within the VPC for a private one (not served yet: no route).
         Larger than the internet MTU with DF: ICMP fragmentation needed back to the instance, from its
         subnet router, as the internet gateway does (PMTUD through the gateway).
    in   from the edge only: the destination becomes the instance's address and port; on to its host.

The SOURCE_ENI option of what the node sends names the gateway's ENI (out) or 0 (in: relayed, as the
edge does); hosts and the edge trust fleet addresses as relays.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from . import geneve, hyperplane
from .drops import Drop, new_counters
from .headers import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from .hyperplane import Fleet
from .igw import INTERNET_MTU, _adjust, frag_needed, rewrite_address
from .natgw import NatDrop, NatGateway
from .offload import F_NEEDS_CSUM, GSO_NONE, GSO_ECN
from .routes import RouteTable

_H = struct.Struct("!H")
_I = struct.Struct("!I")
_ADDRS = struct.Struct("!II")
_ENI_OPT_HEAD = struct.pack("!HBB", geneve.OPTION_CLASS, geneve.OPT_SOURCE_ENI, 2)  # SOURCE_ENI at [8:12]
_ENI_DATA = struct.Struct("!Q")  # its value at [12:20]


@dataclasses.dataclass(eq=False)
class _Eni:
    number: int
    host: str | None  # underlay IP of its host (None: a gateway's or load balancer's own ENI)
    subnet_id: str
    router: int  # its subnet's .1


@dataclasses.dataclass(eq=False)
class _Nat:
    id: str
    vni: int
    private_ip: int
    eni: int  # the gateway's ENI number
    subnet_id: str
    core: NatGateway
    public: bool


def rewrite_port(pkt, ihl: int, at: int, new: int, partial: bool) -> int:
    """Replace the TCP/UDP port at ``ihl + at`` (0: source, 2: destination), or the ICMP echo identifier
    (at 4), adjusting the transport checksum; returns the old value. A ``partial`` checksum (NEEDS_CSUM)
    holds only the pseudo-header sum, which no port is part of: it stays."""
    old = _H.unpack_from(pkt, ihl + at)[0]
    if old == new:
        return old
    _H.pack_into(pkt, ihl + at, new)
    proto = pkt[9]
    if proto == PROTO_TCP:
        if not partial:
            _H.pack_into(pkt, ihl + 16, _adjust(_H.unpack_from(pkt, ihl + 16)[0], old, new))
    elif proto == PROTO_UDP:
        c = _H.unpack_from(pkt, ihl + 6)[0]
        if c and not partial:
            _H.pack_into(pkt, ihl + 6, _adjust(c, old, new) or 0xFFFF)
    else:  # ICMP: the checksum covers the message, no pseudo-header
        _H.pack_into(pkt, ihl + 2, _adjust(_H.unpack_from(pkt, ihl + 2)[0], old, new))
    return old


class NodeCore:
    def __init__(self, name: str, fleet: Fleet, edge_ip: str, port: int, seed: int | None = None):
        self.name = name
        self.fleet = fleet
        self.edge = (edge_ip, port)
        self.edge_ip = edge_ip
        self.port = port
        self.seed = seed
        self.enis: dict[tuple[int, int], _Eni] = {}
        self.routes: dict[str, RouteTable] = {}  # subnet id → its table
        self.nats: dict[str, _Nat] = {}
        self.nat_by_addr: dict[tuple[int, int], _Nat] = {}
        self.drops = new_counters()
        self.last_drop: Drop | None = None
        self.nat_refusals: dict[str, int] = {}
        self.outbox: list[tuple[bytes, tuple[str, int]]] = []
        self.replicate: list[tuple[str, str, str, list]] = []  # (to node, kind, resource id, record)
        self.counters = {"nat_out": 0, "nat_in": 0, "too_big": 0, "imported": 0}
        self._hdr = [0, 0, 0, 0]

    # --- desired state ---------------------------------------------------------------------------
    def update(self, view: dict) -> None:
        subnets = {s["id"]: s for s in view.get("subnets", ())}
        tables = {t["id"]: t for t in view.get("route_tables", ())}
        routes = {}
        for sid, s in subnets.items():
            t = tables.get(s.get("route_table_id"))
            if t is not None:
                try:
                    routes[sid] = RouteTable.compile(t["routes"])
                except ValueError:
                    continue
        enis = {}
        for e in view.get("enis", ()):
            iface = ipaddress.IPv4Interface(f"{e['private_ip']}/{e['prefixlen']}")
            enis[(e["vni"], int(iface.ip))] = _Eni(int(e["id"][4:], 16), e.get("underlay_ip"), e["subnet_id"],
                                                    int(iface.network.network_address) + 1)
        nats, by_addr = {}, {}
        for g in view.get("nat_gateways", ()):
            if not g.get("private_ip") or not g.get("eni_id"):
                continue
            private = int(ipaddress.IPv4Address(g["private_ip"]))
            old = self.nats.get(g["id"])
            core = old.core if old is not None and old.private_ip == private else NatGateway(private, seed=self.seed)
            nat = _Nat(g["id"], g["vni"], private, int(g["eni_id"][4:], 16), g["subnet_id"], core,
                       g.get("connectivity_type", "public") == "public")
            nats[g["id"]] = by_addr[(nat.vni, private)] = nat
        self.routes, self.enis, self.nats, self.nat_by_addr = routes, enis, nats, by_addr

    # --- per packet ------------------------------------------------------------------------------
    def _drop(self, reason: Drop) -> None:
        self.last_drop = reason
        self.drops[reason] += 1
        return None

    def process(self, buf, n: int, outer_ip: str, now: float):
        hdr = self._hdr
        inner = geneve.decode_into(buf, n, hdr)
        if inner < 0:
            return self._drop(Drop(-1 - inner))
        if hdr[geneve.DECODE_PROTO] != geneve.PROTO_IPV4:
            return self._drop(Drop.UNSUPPORTED_PROTOCOL)
        if n - inner < 20 or buf[inner] >> 4 != 4 or bytes(buf[8:12]) != _ENI_OPT_HEAD:
            return self._drop(Drop.MALFORMED_PACKET)  # our senders always put SOURCE_ENI first
        vni = hdr[geneve.DECODE_VNI]
        vnet = hdr[geneve.DECODE_VNET]
        partial = vnet >= 0 and bool(buf[vnet] & F_NEEDS_CSUM)
        src, dst = _ADDRS.unpack_from(buf, inner + 12)
        if outer_ip == self.edge_ip:
            nat = self.nat_by_addr.get((vni, dst))
            if nat is None:
                return self._drop(Drop.UNKNOWN_DESTINATION)
            return self._nat_in(nat, buf, inner, n, partial, now)
        sender = self.enis.get((vni, src))
        if sender is None:
            return self._drop(Drop.UNKNOWN_SOURCE)
        if sender.host != outer_ip:
            return self._drop(Drop.OUTER_SOURCE_MISMATCH)
        if sender.number != hdr[geneve.DECODE_ENI]:
            return self._drop(Drop.SOURCE_ENI_MISMATCH)
        table = self.routes.get(sender.subnet_id)
        route = table.lookup(dst) if table is not None else None
        if route is None or route.target_type != "nat" or not route.active:
            return self._drop(Drop.NO_ROUTE)
        nat = self.nats.get(route.target_id)
        if nat is None:
            return self._drop(Drop.BLACKHOLE_ROUTE)
        return self._nat_out(nat, sender, buf, inner, n, vnet, partial, now)

    def _refused(self, nat_reason, kind: str) -> None:
        label = f"{kind}_{nat_reason.label if hasattr(nat_reason, 'label') else nat_reason}"
        self.nat_refusals[label] = self.nat_refusals.get(label, 0) + 1
        return self._drop(Drop.NAT_REFUSED)

    def _nat_out(self, nat: _Nat, sender: _Eni, buf, inner: int, n: int, vnet: int, partial: bool, now: float):
        pkt = memoryview(buf)[inner:n]
        ihl = (pkt[0] & 0xF) * 4
        proto = pkt[9]
        # Where the gateway sends it: its own subnet's route for the destination.
        table = self.routes.get(nat.subnet_id)
        dst = _I.unpack_from(pkt, 16)[0]
        route = table.lookup(dst) if table is not None else None
        if route is None or not route.active or route.target_type != "igw" or not nat.public:
            return self._drop(Drop.NO_ROUTE)  # private NAT gateways (within the VPC): not served yet
        segment = len(pkt)
        if vnet >= 0 and buf[vnet + 1] & ~GSO_ECN != GSO_NONE and proto == PROTO_TCP and len(pkt) > ihl + 20:
            segment = ihl + (pkt[ihl + 12] >> 4) * 4 + (buf[vnet + 4] | buf[vnet + 5] << 8)
        if segment > INTERNET_MTU and pkt[6] & 0x40:
            self.counters["too_big"] += 1
            icmp = frag_needed(pkt, sender.router, INTERNET_MTU)
            self.outbox.append((geneve.prefix(nat.vni, 0, False) + icmp, (sender.host, self.port)))
            return self._drop(Drop.TOO_BIG)
        frag = _H.unpack_from(pkt, 6)[0]
        src = _I.unpack_from(pkt, 12)[0]
        core = nat.core
        if frag & 0x1FFF:  # a non-first fragment: no ports; UDP ones keep going, with the new source
            verdict = core.fragment_out(proto)
            if verdict.__class__ is NatDrop:
                return self._refused(verdict, "out")
            rewrite_address(pkt, 12, nat.private_ip, partial)
            return self._send_out(buf, nat)
        if proto == PROTO_ICMP:
            if len(pkt) < ihl + 8 or pkt[ihl] != 8:  # echo requests only
                return self._refused(NatDrop.UNSUPPORTED_PROTOCOL, "out")
            sport, dport, flags, at = _H.unpack_from(pkt, ihl + 4)[0], 0, None, 4
        elif proto == PROTO_TCP or proto == PROTO_UDP:
            if len(pkt) < ihl + (20 if proto == PROTO_TCP else 8):
                return self._drop(Drop.MALFORMED_PACKET)
            sport, dport = _H.unpack_from(pkt, ihl)[0], _H.unpack_from(pkt, ihl + 2)[0]
            flags, at = (pkt[ihl + 13] if proto == PROTO_TCP else None), 0
        else:
            return self._refused(NatDrop.UNSUPPORTED_PROTOCOL, "out")
        verdict = core.translate_out(proto, src, sport, dst, dport, now, tcp_flags=flags,
                                     first_fragment=bool(frag & 0x2000))
        if verdict.__class__ is NatDrop:
            return self._refused(verdict, "out")
        if core.created:
            self._replicate(nat, proto, dst, core.export(proto, src, sport, dst, dport, now))
        rewrite_address(pkt, 12, nat.private_ip, partial)
        rewrite_port(pkt, ihl, at, verdict[1], partial)
        self.counters["nat_out"] += 1
        return self._send_out(buf, nat)

    def _send_out(self, buf, nat: _Nat):
        _ENI_DATA.pack_into(buf, 12, nat.eni)  # the gateway's ENI sends it on
        return self.edge

    def _nat_in(self, nat: _Nat, buf, inner: int, n: int, partial: bool, now: float):
        pkt = memoryview(buf)[inner:n]
        ihl = (pkt[0] & 0xF) * 4
        proto = pkt[9]
        remote = _I.unpack_from(pkt, 12)[0]
        frag = _H.unpack_from(pkt, 6)[0]
        core = nat.core
        if frag & 0x1FFF:
            inside = core.fragment_in(proto, remote, _H.unpack_from(pkt, 4)[0], now)
            if inside is None:
                return self._refused("no_flow", "in")
            return self._deliver(nat, buf, pkt, inside, partial)
        if proto == PROTO_ICMP:
            if len(pkt) < ihl + 8 or pkt[ihl] != 0:  # echo replies (errors quoting our packets: later)
                return self._refused(NatDrop.UNSUPPORTED_PROTOCOL, "in")
            port, rport, flags, at = _H.unpack_from(pkt, ihl + 4)[0], 0, None, 4
        elif proto == PROTO_TCP or proto == PROTO_UDP:
            if len(pkt) < ihl + (20 if proto == PROTO_TCP else 8):
                return self._drop(Drop.MALFORMED_PACKET)
            rport, port = _H.unpack_from(pkt, ihl)[0], _H.unpack_from(pkt, ihl + 2)[0]
            flags, at = (pkt[ihl + 13] if proto == PROTO_TCP else None), 2
        else:
            return self._refused(NatDrop.UNSUPPORTED_PROTOCOL, "in")
        inside = core.translate_in(proto, port, remote, rport, now, tcp_flags=flags,
                                   fragment_id=_H.unpack_from(pkt, 4)[0] if frag & 0x2000 else None)
        if inside is None:
            return self._refused("no_flow", "in")
        rewrite_port(pkt, ihl, at, inside[1], partial)
        self.counters["nat_in"] += 1
        return self._deliver(nat, buf, pkt, inside[0], partial)

    def _deliver(self, nat: _Nat, buf, pkt, inside: int, partial: bool):
        rewrite_address(pkt, 16, inside, partial)
        eni = self.enis.get((nat.vni, inside))
        if eni is None or eni.host is None:
            return self._drop(Drop.UNKNOWN_DESTINATION)
        _ENI_DATA.pack_into(buf, 12, 0)  # relayed: the receiving host trusts the fleet, like the edge
        return (eni.host, self.port)

    # --- replication -----------------------------------------------------------------------------
    def _replicate(self, nat: _Nat, proto: int, remote: int, record) -> None:
        if record is None:
            return
        primary, secondary = self.fleet.owners(nat.id, hyperplane.nat_key(proto, remote))
        other = secondary if primary == self.name else primary
        if other is not None and other != self.name:
            self.replicate.append((other, "nat", nat.id, list(record)))

    def import_flows(self, kind: str, resource: str, flows: list, now: float) -> int:
        done = 0
        if kind == "nat":
            nat = self.nats.get(resource)
            if nat is None:
                return 0
            for record in flows:
                try:
                    done += nat.core.import_(record, now)
                except (TypeError, ValueError):
                    continue
        self.counters["imported"] += done
        return done

    def resync(self, now: float) -> None:
        """Every flow to the other owner it has now: after the live set changed (a new secondary
        needs copies) and periodically (the copies' idle timers stay ahead of the flows')."""
        for nat in self.nats.values():
            for record in nat.core.flows(now):
                if record.remaining > 0:
                    self._replicate(nat, record.proto, record.dst, record)

    def expire(self, now: float) -> None:
        for nat in self.nats.values():
            nat.core.expire(now)

    def status(self, now: float) -> dict:
        return {"nat_gateways": {nat.id: {"private_ip": str(ipaddress.IPv4Address(nat.private_ip)),
                                          "shard": self.fleet.shard(nat.id), **nat.core.stats()}
                                 for nat in self.nats.values()},
                "counters": dict(self.counters), "refusals": dict(self.nat_refusals)}


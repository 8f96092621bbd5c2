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

Network load balancer (``nlb`` decides; the client address is preserved for the target):

    client → lb      a packet to the balancer's address on a listener's port: ``Listener.forward`` picks
                     the target (sticky per flow); the destination becomes the target's address and port;
                     on to the target's host with the client's SOURCE_ENI (the client's own packet).
    target → client  hosts send a target's replies here (not straight to the client: the client talks to
                     the balancer's address); the source becomes the balancer's address and listener port.
                     A target's packet that is not a reply of a balanced flow (someone reached the target
                     directly) is relayed unchanged.
    health checks    the nodes of a balancer's shard probe each target of its groups on their own
                     (``health_probe.HealthProbe``: a userspace TCP client, since a node has no socket in
                     the VPC), from the balancer's address and a port whose flows hash to this very node,
                     so the target's answers come back here. A target turning unhealthy gets no new flows
                     and its flows are removed; their next packet is answered with a RST.

The SOURCE_ENI option of what the node sends names the gateway's ENI (out) or 0 (in: relayed, as the
edge does); hosts and the edge trust fleet addresses as relays.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import struct

from . import addresses, geneve, hyperplane, nlb
from .drops import Drop, new_counters
from .headers import PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP, ipv4_packet
from .health_probe import HealthProbe
from .hyperplane import Fleet
from .igw import INTERNET_MTU, _adjust, frag_needed, rewrite_address
from .natgw import NatDrop, NatGateway
from .offload import F_NEEDS_CSUM, segment_size
from .routes import RouteTable

_H = struct.Struct("!H")
_ICMP_ERRORS = (3, 4, 5, 11, 12)
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


@dataclasses.dataclass(eq=False)
class _Lb:
    id: str
    vni: int
    ip: int
    eni: int  # the balancer's ENI number
    listeners: dict  # (proto, port) -> nlb.Listener


@dataclasses.dataclass(eq=False)
class _Probe:
    probe: HealthProbe
    group: nlb.TargetGroup
    target_id: str
    lb: _Lb
    host: str  # the target's host


def tcp_reset(pkt) -> bytes | None:
    """The RST a TCP endpoint answers an unexpected segment with (RFC 9293 §3.10.7.1), from the segment's
    destination to its source; None for a RST (never answered) or what is not a whole TCP header."""
    if len(pkt) < 20 or pkt[9] != PROTO_TCP:
        return None
    ihl = (pkt[0] & 0xF) * 4
    if len(pkt) < ihl + 20:
        return None
    sport, dport, seq, ack = struct.unpack_from("!HHII", pkt, ihl)
    flags = pkt[ihl + 13]
    if flags & TCP.RST:
        return None
    if flags & TCP.ACK:
        reset = TCP(dport, sport, seq=ack, flags=TCP.RST, window=0)
    else:
        size = _H.unpack_from(pkt, 2)[0] - ihl - (pkt[ihl + 12] >> 4) * 4
        reset = TCP(dport, sport, ack=(seq + size + (flags & TCP.SYN and 1) + (flags & TCP.FIN)) & 0xFFFFFFFF,
                    flags=TCP.RST | TCP.ACK, window=0)
    src, dst = _ADDRS.unpack_from(pkt, 12)
    return ipv4_packet(addresses.text(dst), addresses.text(src), reset)


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
        self.accounts: dict[str, str] = {}  # NAT gateway and load balancer ids -> their account
        self.groups: dict[str, nlb.TargetGroup] = {}  # by target group id, kept across views (health)
        self.lbs: dict[str, _Lb] = {}
        self.lb_by_addr: dict[tuple[int, int], _Lb] = {}
        self.target_index: dict[tuple, list] = {}  # (vni, address, port, proto) -> [(lb, listener, target id)]
        self.probes: dict[tuple[int, int, int], _Probe] = {}  # (vni, balancer address, probe port)
        self.nlb_refusals: dict[str, int] = {}
        self.health_events: list[tuple[str, str, str, str]] = []  # (group, target, old, new) for the log
        self._rng = random.Random(seed)
        self.counters = {"nat_out": 0, "nat_in": 0, "too_big": 0, "imported": 0, "nlb_in": 0, "nlb_out": 0,
                         "relayed": 0, "resets_sent": 0, "probes": 0}
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
            enis[(e["vni"], int(iface.ip))] = _Eni(addresses.eni_number(e["id"]), e.get("underlay_ip"), e["subnet_id"],
                                                    int(iface.network.network_address) + 1)
        nats, by_addr = {}, {}
        for g in view.get("nat_gateways", ()):
            if not g.get("private_ip") or not g.get("eni_id"):
                continue
            private = addresses.key(g["private_ip"])
            old = self.nats.get(g["id"])
            core = old.core if old is not None and old.private_ip == private else NatGateway(private, seed=self.seed)
            nat = _Nat(g["id"], g["vni"], private, addresses.eni_number(g["eni_id"]), g["subnet_id"], core,
                       g.get("connectivity_type", "public") == "public")
            nats[g["id"]] = by_addr[(nat.vni, private)] = nat
        self.routes, self.enis, self.nats, self.nat_by_addr = routes, enis, nats, by_addr
        self.accounts = {r["id"]: r.get("account", "") for kind in ("nat_gateways", "load_balancers")
                         for r in view.get(kind, ())}
        self._update_balancers(view)

    def _update_balancers(self, view: dict) -> None:
        groups = {}
        for g in view.get("target_groups", ()):
            targets = [nlb.Target(f"{t['id']}:{t['port']}", addresses.key(t["ip"]), t["port"])
                       for t in g.get("targets", ()) if t.get("ip")]
            try:
                group = self.groups.get(g["id"])
                if group is None:
                    group = nlb.TargetGroup(targets, g.get("health_check"))
                else:
                    group.set_targets(targets)
                    group.set_health_check(g.get("health_check"))
            except ValueError:
                continue  # the API validates; a record it would refuse serves nobody
            groups[g["id"]] = group
        lbs, by_addr, index = {}, {}, {}
        for rec in view.get("load_balancers", ()):
            if not rec.get("private_ip") or not rec.get("eni_id"):
                continue
            old = self.lbs.get(rec["id"])
            lb = _Lb(rec["id"], rec["vni"], addresses.key(rec["private_ip"]), addresses.eni_number(rec["eni_id"]), {})
            for li in rec.get("listeners", ()):
                group = groups.get(li["target_group_id"])
                if group is None:
                    continue
                proto = PROTO_TCP if li["protocol"] == "tcp" else PROTO_UDP
                listener = old.listeners.get((proto, li["port"])) if old is not None and old.ip == lb.ip else None
                if listener is None or listener.group is not group:
                    listener = nlb.Listener(li["protocol"], li["port"], group)
                lb.listeners[(proto, li["port"])] = listener
                for t in group.members.values():
                    index.setdefault((lb.vni, t.target.address, t.target.port, proto), []).append(
                        (lb, listener, t.target.id))
            lbs[lb.id] = by_addr[(lb.vni, lb.ip)] = lb
        self.groups, self.lbs, self.lb_by_addr, self.target_index = groups, lbs, by_addr, index

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
        if n - inner < 20 or buf[inner] >> 4 != 4 or buf[8] != _ENI_OPT_HEAD[0] or buf[9] != _ENI_OPT_HEAD[1] \
                or buf[10] != _ENI_OPT_HEAD[2] or buf[11] != _ENI_OPT_HEAD[3]:
            return self._drop(Drop.MALFORMED_PACKET)  # our senders always put SOURCE_ENI first
        if buf.__class__ is not memoryview:
            buf = memoryview(buf)  # the packet is rewritten in place, through views of it
        pkt = buf[inner:n]
        vni = hdr[geneve.DECODE_VNI]
        vnet = hdr[geneve.DECODE_VNET]
        partial = vnet >= 0 and bool(buf[vnet] & F_NEEDS_CSUM)
        src, dst = _ADDRS.unpack_from(pkt, 12)
        if outer_ip == self.edge_ip:
            nat = self.nat_by_addr.get((vni, dst))
            if nat is None:
                return self._drop(Drop.UNKNOWN_DESTINATION)
            return self._nat_in(nat, buf, pkt, src, partial, now)
        sender = self.enis.get((vni, src))
        if sender is None:
            return self._drop(Drop.UNKNOWN_SOURCE)
        if sender.host != outer_ip:
            return self._drop(Drop.OUTER_SOURCE_MISMATCH)
        if sender.number != hdr[geneve.DECODE_ENI]:
            return self._drop(Drop.SOURCE_ENI_MISMATCH)
        if self.lbs:
            lb = self.lb_by_addr.get((vni, dst))
            if lb is not None:
                return self._to_balancer(lb, pkt, src, partial, now)
            if self.target_index:
                verdict = self._from_target(vni, buf, pkt, src, dst, partial, now)
                if verdict is not False:
                    return verdict
        table = self.routes.get(sender.subnet_id)
        route = table.lookup(dst) if table is not None else None
        if route is None or route.target_type != "nat" or not route.active:
            return self._drop(Drop.NO_ROUTE)
        nat = self.nats.get(route.target_id)
        if nat is None:
            return self._drop(Drop.BLACKHOLE_ROUTE)
        return self._nat_out(nat, sender, buf, pkt, src, dst, segment_size(buf, vnet, inner, n), partial, now)

    def _refuse(self, counts: dict, reason, drop: Drop) -> None:
        """A refusal by the NAT gateway or the load balancer: counted by reason, dropped as ``drop``."""
        label = reason.label if hasattr(reason, "label") else reason
        counts[label] = counts.get(label, 0) + 1
        return self._drop(drop)

    def _refused(self, reason, direction: str) -> None:
        return self._refuse(self.nat_refusals, f"{direction}_{reason.label if hasattr(reason, 'label') else reason}",
                            Drop.NAT_REFUSED)

    def _nat_out(self, nat: _Nat, sender: _Eni, buf, pkt, src: int, dst: int, segment: int, partial: bool,
                 now: float):
        """``segment``: a TCP super-packet's size on the wire per segment (0: not one)."""
        ihl = (pkt[0] & 0xF) * 4
        proto = pkt[9]
        # Where the gateway sends it: its own subnet's route for the destination.
        table = self.routes.get(nat.subnet_id)
        route = table.lookup(dst) if table is not None else None
        if route is None or not route.active or route.target_type != "igw" or not nat.public:
            return self._drop(Drop.NO_ROUTE)  # private NAT gateways (within the VPC): not served yet
        if (segment or len(pkt)) > INTERNET_MTU and pkt[6] & 0x40:
            self.counters["too_big"] += 1
            icmp = frag_needed(pkt, sender.router, INTERNET_MTU)
            self.outbox.append((geneve.prefix(nat.vni, 0, False) + icmp, (sender.host, self.port)))
            return self._drop(Drop.TOO_BIG)
        frag = _H.unpack_from(pkt, 6)[0]
        core = nat.core
        if frag & 0x1FFF:  # a non-first fragment: no ports; UDP ones keep going, with the new source
            verdict = core.fragment_out(proto)
            if verdict.__class__ is NatDrop:
                return self._refused(verdict, "out")
            rewrite_address(pkt, 12, nat.private_ip, partial)
            return self._send_out(buf, nat)
        ports = self._ports(pkt, ihl, proto, 8, "out")  # echo requests only
        if ports is None:
            return None
        sport, dport, flags = ports
        verdict = core.translate_out(proto, src, sport, dst, dport, now, tcp_flags=flags,
                                     first_fragment=bool(frag & 0x2000))
        if verdict.__class__ is NatDrop:
            if verdict.rst and (rst := tcp_reset(pkt)) is not None:  # idle timeout: the instance learns at once
                self.counters["resets_sent"] += 1
                self.outbox.append((geneve.prefix(nat.vni, 0, False) + rst, (sender.host, self.port)))
            return self._refused(verdict, "out")
        if core.created:
            self._copy(nat.id, hyperplane.nat_key(proto, dst), "nat", nat.id, core.export(proto, src, sport, dst, dport, now))
        rewrite_address(pkt, 12, nat.private_ip, partial)
        rewrite_port(pkt, ihl, 4 if proto == PROTO_ICMP else 0, verdict[1], partial)
        self.counters["nat_out"] += 1
        return self._send_out(buf, nat)

    def _ports(self, pkt, ihl: int, proto: int, echo: int, direction: str):
        """(source port, destination port, TCP flags or None) of a packet through a NAT gateway; for an
        ICMP echo of type ``echo`` (8 request out, 0 reply in) the identifier is the port on the
        inside's side, the other 0. None: refused or malformed (counted)."""
        if proto == PROTO_ICMP:
            if len(pkt) < ihl + 8 or pkt[ihl] != echo:
                return self._refused(NatDrop.UNSUPPORTED_PROTOCOL, direction)
            ident = _H.unpack_from(pkt, ihl + 4)[0]
            return (ident, 0, None) if echo == 8 else (0, ident, None)
        if proto == PROTO_TCP or proto == PROTO_UDP:
            if len(pkt) < ihl + (20 if proto == PROTO_TCP else 8):
                return self._drop(Drop.MALFORMED_PACKET)
            return (_H.unpack_from(pkt, ihl)[0], _H.unpack_from(pkt, ihl + 2)[0],
                    pkt[ihl + 13] if proto == PROTO_TCP else None)
        return self._refused(NatDrop.UNSUPPORTED_PROTOCOL, direction)

    def _send_out(self, buf, nat: _Nat):
        _ENI_DATA.pack_into(buf, 12, nat.eni)  # the gateway's ENI sends it on
        return self.edge

    def _nat_in(self, nat: _Nat, buf, pkt, remote: int, partial: bool, now: float):
        ihl = (pkt[0] & 0xF) * 4
        proto = pkt[9]
        frag = _H.unpack_from(pkt, 6)[0]
        core = nat.core
        if frag & 0x1FFF:
            inside = core.fragment_in(proto, remote, _H.unpack_from(pkt, 4)[0], now)
            if inside is None:
                return self._refused("no_flow", "in")
            return self._deliver(nat, buf, pkt, inside, partial)
        if proto == PROTO_ICMP:
            if len(pkt) >= ihl + 8 and pkt[ihl] in _ICMP_ERRORS:
                return self._nat_icmp_error(nat, buf, pkt, ihl, now)
        ports = self._ports(pkt, ihl, proto, 0, "in")  # echo replies
        if ports is None:
            return None
        rport, port, flags = ports
        inside = core.translate_in(proto, port, remote, rport, now, tcp_flags=flags,
                                   fragment_id=_H.unpack_from(pkt, 4)[0] if frag & 0x2000 else None)
        if inside is None:
            return self._refused("no_flow", "in")
        rewrite_port(pkt, ihl, 4 if proto == PROTO_ICMP else 2, inside[1], partial)
        self.counters["nat_in"] += 1
        return self._deliver(nat, buf, pkt, inside[0], partial)

    def _nat_icmp_error(self, nat: _Nat, buf, pkt, ihl: int, now: float):
        """An ICMP error from the internet about one of the gateway's packets (port unreachable, time
        exceeded...): it quotes that packet as translated — the gateway's address and port — which
        becomes the instance's again, so its kernel finds the socket. The flow is not refreshed.

            [IPv4 remote → gateway][ICMP type code csum rest][quoted IPv4 gateway → remote][ports ...]
        """
        q = ihl + 8
        if len(pkt) < q + 20 or pkt[q] >> 4 != 4 or _I.unpack_from(pkt, q + 12)[0] != nat.private_ip:
            return self._refused("icmp_error_unrelated", "in")
        qihl = (pkt[q] & 0xF) * 4
        qproto = pkt[q + 9]
        if len(pkt) < q + qihl + 8:
            return self._refused("icmp_error_short", "in")
        remote = _I.unpack_from(pkt, q + 16)[0]
        if qproto == PROTO_ICMP:  # an echo request of ours: its identifier is the port
            at, port, rport = 4, _H.unpack_from(pkt, q + qihl + 4)[0], 0
        elif qproto == PROTO_TCP or qproto == PROTO_UDP:
            at, port, rport = 0, _H.unpack_from(pkt, q + qihl)[0], _H.unpack_from(pkt, q + qihl + 2)[0]
        else:
            return self._refused("icmp_error_unrelated", "in")
        inside = nat.core.translate_in(qproto, port, remote, rport, now, refresh=False)
        if inside is None:
            return self._refused("no_flow", "in")
        # The quote: source address (and its header checksum), source port; the ICMP checksum covers both.
        icmp = _H.unpack_from(pkt, ihl + 2)[0]
        old_hcsum = _H.unpack_from(pkt, q + 10)[0]
        new_hcsum = _adjust(old_hcsum, nat.private_ip, inside[0])
        _I.pack_into(pkt, q + 12, inside[0])
        _H.pack_into(pkt, q + 10, new_hcsum)
        old_port = _H.unpack_from(pkt, q + qihl + at)[0]
        _H.pack_into(pkt, q + qihl + at, inside[1])  # the quoted transport checksum is left: nobody checks it
        for old, new in ((nat.private_ip, inside[0]), (old_hcsum, new_hcsum), (old_port, inside[1])):
            icmp = _adjust(icmp, old, new)
        _H.pack_into(pkt, ihl + 2, icmp)
        self.counters["nat_in"] += 1
        return self._deliver(nat, buf, pkt, inside[0], False)

    def _deliver(self, nat: _Nat, buf, pkt, inside: int, partial: bool):
        rewrite_address(pkt, 16, inside, partial)
        eni = self.enis.get((nat.vni, inside))
        if eni is None or eni.host is None:
            return self._drop(Drop.UNKNOWN_DESTINATION)
        _ENI_DATA.pack_into(buf, 12, 0)  # relayed: the receiving host trusts the fleet, like the edge
        return (eni.host, self.port)

    # --- load balancers ---------------------------------------------------------------------------
    def _nlb_refused(self, reason) -> None:
        return self._refuse(self.nlb_refusals, reason, Drop.NLB_REFUSED)

    def _to_balancer(self, lb: _Lb, pkt, client: int, partial: bool, now: float):
        ihl = (pkt[0] & 0xF) * 4
        proto = pkt[9]
        if proto != PROTO_TCP and proto != PROTO_UDP or len(pkt) < ihl + 8 or _H.unpack_from(pkt, 6)[0] & 0x1FFF:
            return self._nlb_refused("unsupported")
        sport, dport = _H.unpack_from(pkt, ihl)[0], _H.unpack_from(pkt, ihl + 2)[0]
        probe = self.probes.get((lb.vni, lb.ip, dport)) if self.probes else None
        if probe is not None:  # a target answering one of our health checks
            self._probe_answer(probe, pkt, partial, now)
            return None
        listener = lb.listeners.get((proto, dport))
        if listener is None:
            return self._nlb_refused("no_listener")
        tcp = proto == PROTO_TCP
        if tcp and len(pkt) < ihl + 20:
            return self._drop(Drop.MALFORMED_PACKET)
        target = listener.forward(client, sport, lb.ip, now, tcp_flags=pkt[ihl + 13] if tcp else None,
                                  seq=_I.unpack_from(pkt, ihl + 4)[0] if tcp else 0)
        if target.__class__ is nlb.NlbDrop:
            if target.rst:
                self._reset(lb, pkt, client)
            return self._nlb_refused(target)
        where = self.enis.get((lb.vni, target.address))
        if where is None or where.host is None:
            return self._nlb_refused("target_not_placed")
        if listener.created:
            self._replicate_nlb(lb, listener, proto, client, sport, now)
        rewrite_address(pkt, 16, target.address, partial)
        rewrite_port(pkt, ihl, 2, target.port, partial)
        self.counters["nlb_in"] += 1
        return (where.host, self.port)  # the client's SOURCE_ENI stays: it is the client's packet

    def _from_target(self, vni: int, buf, pkt, src: int, dst: int, partial: bool, now: float):
        """A target's packet to a client: the reply of a balanced flow (the source becomes the balancer),
        or the target's own traffic (relayed unchanged). False if the sender is no target."""
        ihl = (pkt[0] & 0xF) * 4
        proto = pkt[9]
        if len(pkt) < ihl + 4 or proto != PROTO_TCP and proto != PROTO_UDP:
            return False
        sport, dport = _H.unpack_from(pkt, ihl)[0], _H.unpack_from(pkt, ihl + 2)[0]
        entries = self.target_index.get((vni, src, sport, proto))
        if entries is None:
            return False
        client_host = self.enis.get((vni, dst))
        if client_host is None or client_host.host is None:
            return self._drop(Drop.UNKNOWN_DESTINATION)
        for lb, listener, tid in entries:
            if listener.reply(dst, dport, lb.ip, tid, now):
                rewrite_address(pkt, 12, lb.ip, partial)
                rewrite_port(pkt, ihl, 0, listener.port, partial)
                _ENI_DATA.pack_into(buf, 12, lb.eni)
                self.counters["nlb_out"] += 1
                return (client_host.host, self.port)
        self.counters["relayed"] += 1  # not a balanced flow: the target talking to the client directly
        return (client_host.host, self.port)

    def _reset(self, lb: _Lb, pkt, client_ip: int) -> None:
        """Answer a client's TCP packet that has no flow (or lost its target) with a RST."""
        rst = tcp_reset(pkt)
        client = self.enis.get((lb.vni, client_ip))
        if rst is None or client is None or client.host is None:
            return
        self.counters["resets_sent"] += 1
        self.outbox.append((geneve.prefix(lb.vni, lb.eni, False) + rst, (client.host, self.port)))

    # --- health checks ---------------------------------------------------------------------------
    def health(self, now: float) -> None:
        """Start the probes that are due (targets of groups behind balancers whose shard holds this
        node), run the probes' timers, and record what they decided."""
        started = set()
        for lb in self.lbs.values():
            if self.name not in self.fleet.shard(lb.id):
                continue
            for listener in lb.listeners.values():
                group = listener.group
                if id(group) in started:
                    continue
                started.add(id(group))
                for target in group.due(now):
                    self._probe(lb, group, target, now)
        for key, p in list(self.probes.items()):
            for packet in p.probe.poll(now):
                self._send_probe(p, packet)
            if p.probe.done:
                self._probe_done(key, p, now)

    def _probe(self, lb: _Lb, group: nlb.TargetGroup, target: nlb.Target, now: float) -> None:
        check = group.check(target.id)
        where = self.enis.get((lb.vni, target.address))
        port = self._probe_port(lb)
        if where is None or where.host is None or port is None:
            check.start(now)
            group.record(target.id, False, now)  # nowhere to send it: a failed probe
            return
        check.start(now)
        probe = HealthProbe(check.protocol, lb.ip, port, target.address, check.port or target.port, now,
                            check.timeout, path=check.path, matcher=check.matcher)
        p = self.probes[(lb.vni, lb.ip, port)] = _Probe(probe, group, target.id, lb, where.host)
        self.counters["probes"] += 1
        self._send_probe(p, probe.start())

    def _probe_port(self, lb: _Lb) -> int | None:
        """A port whose flows hash to this node (the target's answers then come here), not in use."""
        for _ in range(64):
            port = self._rng.randrange(32768, 61000)
            if (lb.vni, lb.ip, port) in self.probes or (PROTO_TCP, port) in lb.listeners:
                continue
            if self.fleet.owners(lb.id, hyperplane.nlb_key(PROTO_TCP, lb.ip, port))[0] == self.name:
                return port
        return None

    def _send_probe(self, p: _Probe, packet: bytes) -> None:
        self.outbox.append((geneve.prefix(p.lb.vni, p.lb.eni, False) + packet, (p.host, self.port)))

    def _probe_answer(self, p: _Probe, pkt, partial: bool, now: float) -> None:
        for packet in p.probe.receive(pkt, now, partial=partial):
            self._send_probe(p, packet)
        if p.probe.done:
            self._probe_done((p.lb.vni, p.lb.ip, p.probe.sport), p, now)

    def _probe_done(self, key, p: _Probe, now: float) -> None:
        del self.probes[key]
        if p.target_id not in p.group.members:
            return  # deregistered meanwhile
        change = p.group.record(p.target_id, bool(p.probe.result), now)
        if change is None:
            return
        self.health_events.append((p.target_id, change.old.value, change.new.value, p.probe.reason))
        for lb in self.lbs.values():
            for listener in lb.listeners.values():
                if listener.group is p.group:
                    listener.reset_unhealthy(now)

    def _replicate_nlb(self, lb: _Lb, listener, proto: int, client: int, client_port: int, now: float) -> None:
        self._copy(lb.id, hyperplane.nlb_key(proto, client, client_port), "nlb", f"{lb.id}/{proto}/{listener.port}",
                   listener.export(client, client_port, lb.ip, now))

    # --- replication -----------------------------------------------------------------------------
    def _copy(self, resource_id: str, key: int, kind: str, resource: str, record) -> None:
        """Queue a flow's record for the other owner of its key (the secondary, seen from the primary)."""
        if record is None:
            return
        primary, secondary = self.fleet.owners(resource_id, key)
        other = secondary if primary == self.name else primary
        if other is not None and other != self.name:
            self.replicate.append((other, kind, resource, list(record)))

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
        elif kind == "nlb":
            lb_id, _, rest = resource.partition("/")
            proto, _, port = rest.partition("/")
            lb = self.lbs.get(lb_id)
            listener = lb.listeners.get((int(proto), int(port))) if lb and proto.isdigit() and port.isdigit() else None
            if listener is None:
                return 0
            for record in flows:
                try:
                    done += listener.import_(record, now)
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
                    self._copy(nat.id, hyperplane.nat_key(record.proto, record.dst), "nat", nat.id, record)
        for lb in self.lbs.values():
            for (proto, _), listener in lb.listeners.items():
                for record in listener.flows(now):
                    if record.remaining > 0:
                        self._replicate_nlb(lb, listener, proto, record.src, record.sport, now)

    def expire(self, now: float) -> None:
        for nat in self.nats.values():
            nat.core.expire(now)
        for lb in self.lbs.values():
            for listener in lb.listeners.values():
                listener.expire(now)

    def shards(self) -> dict:
        """Every NAT gateway's and load balancer's shard (``vpc hyperplane shards``)."""
        return {"nodes": sorted(self.fleet.nodes), "alive": sorted(self.fleet.alive),
                "shard_size": self.fleet.shard_size,
                "resources": {rid: {"account": account, "shard": self.fleet.shard(rid)}
                              for rid, account in sorted(self.accounts.items())}}

    def status(self, now: float) -> dict:
        return {"nat_gateways": {nat.id: {"private_ip": str(ipaddress.IPv4Address(nat.private_ip)),
                                          "shard": self.fleet.shard(nat.id), **nat.core.stats()}
                                 for nat in self.nats.values()},
                "load_balancers": {lb.id: {"private_ip": str(ipaddress.IPv4Address(lb.ip)),
                                           "shard": self.fleet.shard(lb.id),
                                           "listeners": {f"{'tcp' if p == PROTO_TCP else 'udp'}/{port}": {
                                               **li.stats(), "targets": {t: m.check.state.value
                                                                         for t, m in li.group.members.items()}}
                                               for (p, port), li in lb.listeners.items()}}
                                   for lb in self.lbs.values()},
                "counters": dict(self.counters), "refusals": dict(self.nat_refusals),
                "nlb_refusals": dict(self.nlb_refusals), "probes_in_flight": len(self.probes)}


"""The internet gateway on the Blackfoot edge: stateless 1:1 NAT between private and public addresses.

The edge holds, for every VPC with an internet gateway attached, each ENI's public (elastic) address.
Nothing per flow: a packet's translation depends only on its addresses, so any edge node can
translate any packet (the cloud's design: Blackfoot is stateless, Hyperplane holds flows).

    VPC → internet   a host's route sent the packet to the edge (Geneve, the VPC's VNI). The inner
                     source must have a public address in a VPC with an attached gateway; it becomes
                     that address. A packet longer than the internet MTU (1500) with DF set is not
                     forwarded: the edge answers with ICMP "fragmentation needed" (type 3 code 4, next-hop
                     MTU 1500) from the VPC router (the subnet's .1), so Path MTU Discovery works.
    internet → VPC   a packet to a public address: the destination becomes the private address and the
                     packet is encapsulated to the host that holds the ENI. An ICMP error about one of
                     our packets quotes it with the public source: that quoted source is translated back
                     too, so the instance's kernel matches the error to its socket.

The instance only ever sees its private address. Checksums are adjusted incrementally (RFC 1624): the
IPv4 header's, TCP's and UDP's (pseudo-header; a zero UDP checksum stays zero), and for ICMP errors
the quoted header's and the ICMP checksum over the quote. A transport checksum the sender left partial
(virtio NEEDS_CSUM, as TSO super-packets always are) holds the pseudo-header sum instead, which moves
the other way round (``_adjust_partial``): the edge forwards super-packets whole, and the kernel on
the far side cuts and completes them.

IPv6 has no NAT: a VPC's /56 is public. Packets of a VPC with an internet gateway or an egress-only
gateway (``egress_only.py``: the edge keeps those flows) to IPv6 addresses outside the VPC go to the
internet unchanged; over 1500 bytes they are answered with ICMPv6 Packet Too Big (RFC 4443 §3.2) from
the sender's subnet router (``<subnet>::1``), since IPv6 routers never fragment. From the internet, a
packet for an address inside a VPC's /56 enters when the VPC has an internet gateway, or, behind an
egress-only gateway only, when it belongs to a flow the VPC started.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from .addresses import V6_TAG, eni_number, text
from .drops import Drop
from .egress_only import EgressOnlyGateway
from .headers import ICMP, PROTO_ICMP, PROTO_TCP, PROTO_UDP, fold, ipv4_packet, ipv6_packet

INTERNET_MTU = 1500
_H = struct.Struct("!H")
_I = struct.Struct("!I")
_ICMP_ERRORS = (3, 4, 5, 11, 12)


@dataclasses.dataclass(frozen=True)
class Binding:
    """One public address: where its private twin lives."""

    public: int
    private: int
    vni: int
    host: str | None  # underlay IP of the host holding the ENI; None: a NAT gateway's (Hyperplane's)
    eni: int  # ENI number
    router: int  # the ENI's subnet router (.1): the source of the edge's ICMP errors
    nat_gateway_id: str | None = None  # a NAT gateway's address: its flows live on Hyperplane nodes


def _adjust_partial(partial: int, old: int, new: int) -> int:
    """A checksum the sender left partial (virtio NEEDS_CSUM) after a 32-bit field it covers changed from
    ``old`` to ``new``: the field holds the folded, not complemented, sum, which moves by ``new - old``
    in one's complement."""
    return fold(partial + (~old >> 16 & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF))


def _adjust(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: the same for a complete checksum, which is that sum complemented."""
    return ~_adjust_partial(~csum & 0xFFFF, old, new) & 0xFFFF


class InternetGateway:
    def __init__(self) -> None:
        self.by_public: dict[int, Binding] = {}
        self.by_private: dict[tuple[int, int], Binding] = {}
        self.vpcs: dict[int, tuple[int, int]] = {}  # VNI of a VPC with an attached gateway → (net, mask)
        # IPv6: VPCs with an internet or egress-only gateway, VNI → (net6, mask6) as address keys, and
        # their /56 blocks (key >> 72, the tag bit included) → VNI for packets from the internet.
        self.vpcs6: dict[int, tuple[int, int]] = {}
        self.blocks6: dict[int, int] = {}
        self.egress_only = EgressOnlyGateway()
        self.now = 0.0  # the caller's clock, set before each batch (the egress-only gateway's timers)
        self.counters = {"out": 0, "in": 0, "too_big": 0, "out6": 0, "in6": 0}

    def update(self, view: dict) -> None:
        """Bindings from the control plane's desired view (``public_ips``, ``internet_gateways``)."""
        vpc_by_id = {v["id"]: v for v in view.get("vpcs", ())}
        attached = {g["vpc_id"] for g in view.get("internet_gateways", ()) if g.get("vpc_id")}
        self.vpcs = {}
        for vpc_id in attached:
            v = vpc_by_id.get(vpc_id)
            if v is not None:
                net = ipaddress.IPv4Network(v["cidr_block"])
                self.vpcs[v["vni"]] = (int(net.network_address), int(net.netmask))
        enis = {e["id"]: e for e in view.get("enis", ())}
        by_public, by_private = {}, {}
        for p in view.get("public_ips", ()):
            e = enis.get(p["eni_id"])
            if e is None or not (e.get("underlay_ip") or p.get("nat_gateway_id")):
                continue
            iface = ipaddress.IPv4Interface(f"{e['private_ip']}/{e['prefixlen']}")
            b = Binding(int(ipaddress.IPv4Address(p["public_ip"])), int(iface.ip), e["vni"], e.get("underlay_ip"),
                        eni_number(e["id"]), int(iface.network.network_address) + 1, p.get("nat_gateway_id"))
            by_public[b.public] = b
            by_private[(b.vni, b.private)] = b
        self.by_public, self.by_private = by_public, by_private
        eigw = {g["vpc_id"] for g in view.get("egress_only_gateways", ()) if g.get("vpc_id")}
        vpcs6, blocks6 = {}, {}
        for v in view.get("vpcs", ()):
            if v.get("ipv6_cidr_block") and (v["id"] in attached or v["id"] in eigw):
                net6 = ipaddress.IPv6Network(v["ipv6_cidr_block"])
                vpcs6[v["vni"]] = (int(net6.network_address) | V6_TAG, int(net6.netmask) | V6_TAG)
                blocks6[(int(net6.network_address) | V6_TAG) >> 72] = v["vni"]
        self.vpcs6, self.blocks6 = vpcs6, blocks6
        self.egress_only.keep(vpc_by_id[i]["vni"] for i in eigw - attached if i in vpc_by_id)

    def nat_source(self, vni: int, src: int) -> bool:
        """``src`` is a NAT gateway's private address in VPC ``vni`` (only Hyperplane nodes send from it)."""
        b = self.by_private.get((vni, src))
        return b is not None and b.nat_gateway_id is not None

    def serves(self, vni: int, dst: int) -> bool:
        """Whether a packet of VPC ``vni`` to ``dst`` is for the internet: the VPC has a gateway and
        ``dst`` lies outside the VPC."""
        vpc = (self.vpcs6 if dst & V6_TAG else self.vpcs).get(vni)
        return vpc is not None and dst & vpc[1] != vpc[0]

    # --- VPC → internet --------------------------------------------------------------------------
    def outbound(self, vni: int, pkt: bytearray, partial: bool = False, segment: int = 0, count: bool = True):
        """Translate an IPv4 packet leaving VPC ``vni`` in place. Returns None (forward it), a Drop, or
        ``bytes``: an ICMP error to send back to the instance instead (too big). ``partial``: its
        transport checksum is left to be completed (virtio NEEDS_CSUM); ``segment``: a TSO
        super-packet's segment length with headers (the size on the wire), 0 for a plain packet.
        ``count``: False for a dry run (``vpc trace``)."""
        if len(pkt) >= 40 and pkt[0] >> 4 == 6:
            return self._outbound6(vni, pkt, segment, count)
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            return Drop.MALFORMED_PACKET
        if vni not in self.vpcs:
            return Drop.NO_INTERNET_GATEWAY
        src = _I.unpack_from(pkt, 12)[0]
        b = self.by_private.get((vni, src))
        if b is None:
            return Drop.NO_PUBLIC_ADDRESS
        if (segment or len(pkt)) > INTERNET_MTU:
            if pkt[6] & 0x40:  # DF
                self.counters["too_big"] += count
                return frag_needed(pkt, b.router, INTERNET_MTU)
            return Drop.TOO_BIG  # no fragmentation here (the cloud's gateway does not either for TCP)
        rewrite_address(pkt, 12, b.public, partial)
        self.counters["out"] += count
        return None

    def _outbound6(self, vni: int, pkt: bytearray, segment: int, count: bool):
        if vni not in self.vpcs6:
            return Drop.NO_INTERNET_GATEWAY
        if (segment or len(pkt)) > INTERNET_MTU:
            self.counters["too_big"] += count
            src = int.from_bytes(pkt[8:24], "big")
            return packet_too_big(pkt, (src >> 64 << 64) + 1, INTERNET_MTU)
        if count:
            self.egress_only.outbound(vni, pkt, self.now)
            self.counters["out6"] += 1
        return None

    # --- internet → VPC --------------------------------------------------------------------------
    def inbound6(self, pkt) -> int | Drop:
        """An IPv6 packet from the internet: the VNI of the VPC whose /56 holds its destination (the
        packet is not changed: the caller maps the destination to its host), or a Drop."""
        if len(pkt) < 40 or pkt[0] >> 4 != 6:
            return Drop.MALFORMED_PACKET
        vni = self.blocks6.get((int.from_bytes(pkt[24:40], "big") | V6_TAG) >> 72)
        if vni is None:
            # The edge's own kernel's link chatter on the internet device (MLD reports) is no lost packet.
            return Drop.BROADCAST_MULTICAST if pkt[24] == 0xFF else Drop.NO_PUBLIC_ADDRESS
        if not self.egress_only.inbound(vni, pkt, self.now):
            return Drop.EGRESS_ONLY
        self.counters["in6"] += 1
        return vni

    def inbound(self, pkt: bytearray, partial: bool = False):
        """Translate an IPv4 packet from the internet in place (``partial``: as for ``outbound``).
        Returns its Binding (where to send it), or a Drop."""
        if len(pkt) < 20 or pkt[0] >> 4 != 4 or (pkt[0] & 0xF) < 5:
            return Drop.MALFORMED_PACKET
        dst = _I.unpack_from(pkt, 16)[0]
        b = self.by_public.get(dst)
        if b is None or b.vni not in self.vpcs:
            return Drop.NO_PUBLIC_ADDRESS
        rewrite_address(pkt, 16, b.private, partial)
        ihl = (pkt[0] & 0xF) * 4
        if pkt[9] == PROTO_ICMP and len(pkt) >= ihl + 8 + 20 and pkt[ihl] in _ICMP_ERRORS:
            self._rewrite_quoted(pkt, ihl, b)
        self.counters["in"] += 1
        return b

    # --- checksums -------------------------------------------------------------------------------
    def _rewrite_quoted(self, pkt: bytearray, ihl: int, b: Binding) -> None:
        """An ICMP error quoting a packet we translated: its source is the public address; make it
        private, with the quoted header's checksum and the ICMP checksum over the quote adjusted."""
        q = ihl + 8
        if pkt[q] >> 4 != 4 or _I.unpack_from(pkt, q + 12)[0] != b.public:
            return
        old_hcsum = _H.unpack_from(pkt, q + 10)[0]
        new_hcsum = _adjust(old_hcsum, b.public, b.private)
        _I.pack_into(pkt, q + 12, b.private)
        _H.pack_into(pkt, q + 10, new_hcsum)
        icmp = _H.unpack_from(pkt, ihl + 2)[0]
        icmp = _adjust(icmp, b.public, b.private)
        icmp = _adjust(icmp, old_hcsum, new_hcsum)
        _H.pack_into(pkt, ihl + 2, icmp)


def rewrite_address(pkt, at: int, new: int, partial: bool) -> None:
    """Replace the address at ``at`` (12: source, 16: destination) of the IPv4 header at 0, with the IPv4
    header checksum and a TCP or UDP checksum (complete, or ``partial``: NEEDS_CSUM) adjusted."""
    old = _I.unpack_from(pkt, at)[0]
    if old == new:
        return
    _I.pack_into(pkt, at, new)
    _H.pack_into(pkt, 10, _adjust(_H.unpack_from(pkt, 10)[0], old, new))
    ihl = (pkt[0] & 0xF) * 4
    if _H.unpack_from(pkt, 6)[0] & 0x1FFF:
        return  # a non-first fragment: no transport header
    proto = pkt[9]
    if proto == PROTO_TCP and len(pkt) >= ihl + 18:
        c = _H.unpack_from(pkt, ihl + 16)[0]
        _H.pack_into(pkt, ihl + 16, _adjust_partial(c, old, new) if partial else _adjust(c, old, new))
    elif proto == PROTO_UDP and len(pkt) >= ihl + 8:
        c = _H.unpack_from(pkt, ihl + 6)[0]
        if partial:
            _H.pack_into(pkt, ihl + 6, _adjust_partial(c, old, new))
        elif c:  # zero: no checksum (RFC 768); a computed 0 is sent as 0xFFFF
            _H.pack_into(pkt, ihl + 6, _adjust(c, old, new) or 0xFFFF)


def packet_too_big(pkt, router: int, mtu: int) -> bytes:
    """ICMPv6 Packet Too Big (RFC 4443 §3.2) for the IPv6 packet ``pkt``, from ``router`` (an IPv6
    address as an int) to its sender, quoting as much of it as fits the minimum MTU of 1280 bytes."""
    quote = bytes(pkt[:1280 - 40 - 8])
    return ipv6_packet(str(ipaddress.IPv6Address(router)), str(ipaddress.IPv6Address(bytes(pkt[8:24]))),
                       ICMP(2, 0, struct.pack("!I", mtu) + quote))


def frag_needed(pkt: bytes, router: int, mtu: int) -> bytes:
    """ICMP destination unreachable, fragmentation needed (RFC 1191) for ``pkt``, from ``router`` to its
    sender, quoting its header and the first 8 bytes beyond as RFC 792 requires (Linux quotes more; the
    header and 8 bytes are all a sender needs to find the socket)."""
    ihl = (pkt[0] & 0xF) * 4
    return ipv4_packet(text(router), text(_I.unpack_from(pkt, 12)[0]),
                       ICMP(3, 4, struct.pack("!HH", 0, mtu) + bytes(pkt[:ihl + 8])), tos=0xC0, dont_fragment=False)

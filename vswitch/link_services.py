"""What a host answers itself on a TAP ENI (a virtual machine's ``-netdev tap``): ARP, DHCPv4, IPv6 neighbour
discovery and DHCPv6. The cloud's link has no broadcast domain: the host is the instance's only neighbour,
answers for the router and for every other address of the subnet, and hands it its address, router, DNS,
domain and MTU (9001). A pure core: frames and ``now`` in, reply frames and a decision out.

``handle`` looks at each frame the instance sends (Ethernet II, see ``ethernet``)::

    EtherType 0x0806 ARP                         → arp.serve                          ANSWERED / DROPPED
    EtherType 0x0800 IPv4, UDP 68 → 67           → dhcp_server.serve                  ANSWERED / DROPPED
                     IGMP to a multicast group   → link chatter, nothing to say       ANSWERED
                     anything else               → the data path (packet at offset 14) PASS
    EtherType 0x86DD IPv6 (when the lease has IPv6; else always PASS and the data path refuses it)
                     ICMPv6 135 neighbour sol.   → neighbour.serve_neighbour_solicitation
                     ICMPv6 133 router sol.      → neighbour.serve_router_solicitation
                     other ND (134, 136, 137), MLD (130-132, 143), any ICMPv6 to a multicast address
                                                 → link chatter, nothing to say       ANSWERED
                     UDP 546 → 547               → dhcpv6_server.serve                ANSWERED / DROPPED
                     anything else               → PASS
    any other EtherType, 802.1Q/802.1ad tags, 802.3 lengths, frames under 14 bytes    DROPPED

Link chatter (group membership reports, unsolicited advertisements from the instance) is what any host
says when its link comes up: answered silently, not counted as drops, since nothing is wrong with it.
Only the EtherType decides PASS: source MACs are not the cloud's business (the data path checks the IP
source) and no multicast or broadcast IP reaches anyone (the data path drops it, counting why).
DHCP is recognised by its ports whatever the destination address: the VPC's only DHCP server is the host.

``PASS`` leaves ``replies`` alone; ``ANSWERED`` appends zero or more whole reply frames to ``replies``
(the caller writes them to the TAP and empties the list); ``DROPPED`` sets ``last_drop`` to
``Drop.LINK_REFUSED`` and counts it in ``drops``. No bytes make ``handle`` raise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Callable

from . import arp, dhcp_server, dhcpv6_server, neighbour
from .drops import Drop, new_counters
from .ethernet import (ETH_HEADER, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPV6_EXTENSIONS, Malformed,
                       upper_layer)
from .headers import PROTO_ICMPV6, PROTO_UDP, ports
from .neighbour import router_advertisement  # noqa: F401 (the agent sends one when the ENI attaches)

PASS, ANSWERED, DROPPED = 0, 1, 2

PROTO_IGMP = 2
_ICMPV6_CHATTER = frozenset((130, 131, 132, 143, neighbour.ROUTER_ADVERTISEMENT, neighbour.NEIGHBOUR_ADVERTISEMENT,
                             neighbour.REDIRECT))
_DHCP4 = (dhcp_server.CLIENT_PORT, dhcp_server.SERVER_PORT)
_DHCP6 = (dhcpv6_server.CLIENT_PORT, dhcpv6_server.SERVER_PORT)


@dataclasses.dataclass(frozen=True)
class Lease:
    """One TAP ENI as DHCP, ARP and ND tell it to its instance. Strings are accepted and converted."""

    mac: bytes  # the ENI's MAC (addresses.eni_mac)
    ipv4: ipaddress.IPv4Interface  # address and subnet prefix, e.g. 10.0.1.5/24
    router: ipaddress.IPv4Address  # the subnet's .1
    dns_servers: tuple[ipaddress.IPv4Address, ...]
    domain_name: str
    ntp_servers: tuple[ipaddress.IPv4Address, ...]
    hostname: str  # e.g. ip-10-0-1-5
    lease_time: int = 3600
    mtu: int = 9001
    ipv6: ipaddress.IPv6Interface | None = None  # e.g. 2001:db8:100:1::4/64
    dns_servers6: tuple[ipaddress.IPv6Address, ...] = (ipaddress.IPv6Address("fd00:ec2::253"),)

    def __post_init__(self) -> None:
        if not isinstance(self.mac, bytes) or len(self.mac) != 6 or self.mac[0] & 1:
            raise ValueError(f"not a unicast MAC: {self.mac!r}")
        if not 0 < self.lease_time < 2 ** 32 or not 1280 <= self.mtu < 2 ** 16:
            raise ValueError("lease time or MTU out of range")
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        fix("ipv4", ipaddress.IPv4Interface(self.ipv4))
        fix("router", ipaddress.IPv4Address(self.router))
        fix("dns_servers", tuple(ipaddress.IPv4Address(a) for a in self.dns_servers))
        fix("ntp_servers", tuple(ipaddress.IPv4Address(a) for a in self.ntp_servers))
        fix("ipv6", ipaddress.IPv6Interface(self.ipv6) if self.ipv6 else None)
        fix("dns_servers6", tuple(ipaddress.IPv6Address(a) for a in self.dns_servers6))


class LinkServices:
    def __init__(self, lease: Lease, resolve_mac: Callable[[int], bytes | None] | None = None) -> None:
        self.lease = lease
        self.resolve_mac = resolve_mac  # address key (addresses.key) → another ENI's MAC, or None
        self.replies: list[bytes] = []
        self.drops = new_counters()
        self.last_drop: Drop | None = None
        self.served: dict[str, int] = {}  # what the host did, by name (arp_reply, dhcp_ack, ...)
        self.leased_at: float | None = None  # ``now`` of the last DHCPACK that gave the address
        self.leased6_at: float | None = None  # the same for DHCPv6 (a Reply or a rapid commit)

    def update(self, lease: Lease) -> None:
        self.lease = lease

    def handle(self, frame, n: int, now: float) -> int:
        if n < ETH_HEADER:
            return self._refuse()
        ethertype = frame[12] << 8 | frame[13]
        if ethertype == ETHERTYPE_IPV4:
            if n >= ETH_HEADER + 20:
                proto, ihl = frame[23], (frame[14] & 0xF) * 4
                if (proto == PROTO_UDP and ihl >= 20 and n >= ETH_HEADER + ihl + 4
                        and not (frame[20] & 0x1F or frame[21]) and ports(frame, ETH_HEADER + ihl) == _DHCP4):
                    return self._serve(now, dhcp_server.serve, self.lease, bytes(frame[:n]))
                if proto == PROTO_IGMP and frame[30] & 0xF0 == 0xE0:
                    return self._serve(now, _chatter, "igmp")
            return PASS
        if ethertype == ETHERTYPE_IPV6:
            return self._ipv6(frame, n, now) if self.lease.ipv6 is not None else PASS
        if ethertype == ETHERTYPE_ARP:
            return self._serve(now, arp.serve, self.lease, self.resolve_mac, bytes(frame[:n]))
        return self._refuse()

    def _ipv6(self, frame, n: int, now: float) -> int:
        if n < ETH_HEADER + 44:
            return PASS
        nh, l4 = frame[20], ETH_HEADER + 40
        if nh in IPV6_EXTENSIONS:
            try:
                nh, off = upper_layer(bytes(frame[ETH_HEADER:n]))
            except Malformed:
                return PASS  # not something the host serves: the data path judges it
            l4 = ETH_HEADER + off
            if l4 + 4 > n:
                return PASS
        if nh == PROTO_ICMPV6:
            kind = frame[l4]
            if kind == neighbour.NEIGHBOUR_SOLICITATION:
                return self._serve(now, neighbour.serve_neighbour_solicitation, self.lease, self.resolve_mac,
                                   bytes(frame[:n]))
            if kind == neighbour.ROUTER_SOLICITATION:
                return self._serve(now, neighbour.serve_router_solicitation, self.lease, bytes(frame[:n]))
            if kind in _ICMPV6_CHATTER or frame[38] == 0xFF:
                return self._serve(now, _chatter, "icmpv6")
        elif nh == PROTO_UDP and ports(frame, l4) == _DHCP6:
            return self._serve(now, dhcpv6_server.serve, self.lease, bytes(frame[:n]))
        return PASS

    def _serve(self, now: float, service, *args) -> int:
        try:
            label, reply = service(*args)
        except Malformed:
            return self._refuse()
        self.served[label] = self.served.get(label, 0) + 1
        if reply is not None:
            self.replies.append(reply)
        if label == "dhcp_ack":
            self.leased_at = now
        elif label in ("dhcpv6_reply", "dhcpv6_rapid_commit"):
            self.leased6_at = now
        return ANSWERED

    def _refuse(self) -> int:
        self.last_drop = Drop.LINK_REFUSED
        self.drops[Drop.LINK_REFUSED] += 1
        return DROPPED


def _chatter(kind: str) -> tuple[str, None]:
    return f"{kind}_chatter", None

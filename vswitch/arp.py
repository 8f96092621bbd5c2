"""ARP (RFC 826) on a TAP ENI: the host answers every who-has itself, nothing is broadcast to other hosts.

The packet after the Ethernet header (EtherType 0x0806), for Ethernet and IPv4::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |      Hardware type (1)        |    Protocol type (0x0800)     |
    |  HW len (6)   | Proto len (4) |  Operation (1 request, 2 reply)|
    |                 Sender hardware address (6)                   |
    |                               |  Sender protocol address (4)  |
    |                               |  Target hardware address (6)  |
    |                                                               |
    |                   Target protocol address (4)                 |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Who answers for target T (the cloud's behaviour):
- the subnet router (``lease.router``, .1): the gateway MAC;
- another host address of the subnet: the owning ENI's MAC when ``resolve_mac`` knows it, else the gateway
  MAC, so the instance sends to the host's data path, which routes, relays or drops the packet;
- the instance's own address (an RFC 5227 probe or a gratuitous announcement), an announcement of any
  address (sender = target), the subnet's network and broadcast addresses, and anything outside the
  subnet: nobody, as on a real link where no such neighbour exists.

Replies are unicast to the sender's hardware address, with the answered MAC as Ethernet source (as if the
owner itself answered) and padded to the 60-byte minimum frame, as a NIC would deliver them.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from .addresses import GATEWAY_MAC
from .ethernet import ETH_HEADER, ETHERTYPE_ARP, Malformed, header, pad

if TYPE_CHECKING:
    from .link_services import Lease

REQUEST, REPLY = 1, 2
ARP_LENGTH = 28
_ARP = struct.Struct("!HHBBH6s4s6s4s")


def answer_mac(lease: Lease, resolve_mac: Callable[[int], bytes | None] | None, target: int) -> bytes | None:
    """The MAC that owns IPv4 address ``target`` on the instance's link, or None: nobody answers."""
    if target == int(lease.router):
        return GATEWAY_MAC
    net = lease.ipv4.network
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.prefixlen <= 30:  # network and broadcast addresses are not hosts (a /31 or /32 has no such pair)
        first, last = first + 1, last - 1
    if not first <= target <= last or target == int(lease.ipv4.ip):
        return None
    return (resolve_mac(target) if resolve_mac else None) or GATEWAY_MAC


def serve(lease: Lease, resolve_mac: Callable[[int], bytes | None] | None, frame: bytes) -> tuple[str, bytes | None]:
    """(what happened, reply frame or None) for one ARP frame; raises Malformed."""
    if len(frame) < ETH_HEADER + ARP_LENGTH:
        raise Malformed("ARP packet shorter than 28 bytes")
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(frame, ETH_HEADER)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        raise Malformed("ARP not for Ethernet and IPv4")
    if op == REPLY:
        return "arp_reply_ignored", None  # the host never asks, so a reply is an announcement: nothing to do
    if op != REQUEST:
        raise Malformed(f"ARP operation {op}")  # RARP, InARP: not served
    if sha[0] & 1:
        raise Malformed("ARP sender hardware address is multicast")
    if spa == tpa:
        return "arp_announcement", None  # gratuitous ARP: the instance tells, it does not ask
    mac = answer_mac(lease, resolve_mac, int.from_bytes(tpa, "big"))
    if mac is None:
        return "arp_unanswered", None
    return "arp_reply", pad(header(sha, mac, ETHERTYPE_ARP) + _ARP.pack(1, 0x0800, 6, 4, REPLY, mac, tpa, sha, spa))


"""Ethernet frames on a TAP ENI: the header, and the reply frames the host builds for its link services.

A virtual machine's ``-netdev tap`` carries Ethernet II frames (RFC 894), no preamble and no FCS::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                  Destination MAC (6 bytes)                    |
    +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                               |                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
    |                     Source MAC (6 bytes)                      |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |           EtherType           |  payload (IPv4, IPv6, ARP) ...
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

An 802.1Q tag (EtherType 0x8100, then a 2-byte tag and the real EtherType) would sit before the payload;
the VPC has no VLANs, so tagged frames are refused rather than looked into. A value below 0x0600 is an
802.3 length (LLC: spanning tree and the like), not an EtherType: refused too.

The IPv4, IPv6, UDP and ICMPv6 headers (and their checksums) come from ``headers``; this module only
wraps them in frames and walks IPv6 extension headers to the upper layer.
"""

from __future__ import annotations

import ipaddress
import struct

from .headers import (ICMP, IPV6_HEADER, PROTO_ICMPV6, PROTO_UDP, UDP, HeaderError, IPv4, IPv6, checksum,
                      pseudo_header_sum)

ETH_HEADER = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
BROADCAST_MAC = b"\xff" * 6
MIN_FRAME = 60  # the shortest Ethernet frame without its FCS: NICs pad shorter ones (ARP) with zeros

ALL_NODES = ipaddress.IPv6Address("ff02::1")
ROUTER_LINK_LOCAL = ipaddress.IPv6Address("fe80::1")  # the subnet router's link-local address on every TAP ENI
_ETH = struct.Struct("!6s6sH")

# IPv6 extension headers shaped (next header, length in 8-byte units beyond the first 8): hop-by-hop
# options (MLD reports carry Router Alert in one), routing, destination options. A fragment header (44)
# ends the walk: nothing the host serves is ever fragmented.
IPV6_EXTENSIONS = frozenset((0, 43, 60))


class Malformed(ValueError):
    """A frame the host would serve if it were well formed: refused (``Drop.LINK_REFUSED``)."""


def header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return _ETH.pack(dst, src, ethertype)


def pad(frame: bytes) -> bytes:
    return frame + bytes(MIN_FRAME - len(frame)) if len(frame) < MIN_FRAME else frame


def ipv4_udp_frame(dst_mac: bytes, src_mac: bytes, src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address,
                   sport: int, dport: int, payload: bytes) -> bytes:
    """A whole frame: Ethernet, IPv4 (header checksum) and UDP (checksum over the pseudo-header)."""
    udp = UDP(sport, dport, payload).emit(src.packed, dst.packed)
    return header(dst_mac, src_mac, ETHERTYPE_IPV4) + IPv4(src, dst, PROTO_UDP, udp).emit()


def ipv6_udp_frame(dst_mac: bytes, src_mac: bytes, src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address,
                   sport: int, dport: int, payload: bytes, hop_limit: int = 64) -> bytes:
    udp = UDP(sport, dport, payload).emit(src.packed, dst.packed)
    return header(dst_mac, src_mac, ETHERTYPE_IPV6) + IPv6(src, dst, PROTO_UDP, udp, hop_limit).emit()


def icmpv6_frame(dst_mac: bytes, src_mac: bytes, src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address,
                 icmp_type: int, body: bytes, hop_limit: int = 255) -> bytes:
    """An ICMPv6 message (code 0) after its checksum field; hop limit 255 because ND demands it."""
    icmp = ICMP(icmp_type, 0, body).emit((src.packed, dst.packed))
    return header(dst_mac, src_mac, ETHERTYPE_IPV6) + IPv6(src, dst, PROTO_ICMPV6, icmp, hop_limit).emit()


def multicast_mac(address: ipaddress.IPv6Address) -> bytes:
    """RFC 2464 §7: 33:33 and the low 32 bits of the IPv6 multicast address."""
    return b"\x33\x33" + address.packed[12:]


def icmpv6_checksum_ok(src: bytes, dst: bytes, message: bytes) -> bool:
    return checksum(message, pseudo_header_sum(src, dst, PROTO_ICMPV6, len(message))) == 0


def upper_layer(packet: bytes) -> tuple[int, int]:
    """(protocol, offset) of the IPv6 packet's upper layer past the extension headers listed above;
    the caller has parsed the fixed header (``packet`` ends where its payload length says). Raises
    Malformed when an extension header runs past the end."""
    nh, off = packet[6], 40
    for _ in range(8):  # a bound: real packets carry one or two
        if nh not in IPV6_EXTENSIONS:
            return nh, off
        if off + 8 > len(packet) or off + 8 + packet[off + 1] * 8 > len(packet):
            raise Malformed("IPv6 extension header past the end")
        nh, off = packet[off], off + 8 + packet[off + 1] * 8
    raise Malformed("too many IPv6 extension headers")


def ipv6_upper_layer(frame: bytes) -> tuple[IPv6, int, bytes]:
    """(IPv6 header, upper-layer protocol, upper-layer bytes) of a frame carrying IPv6, past the extension
    headers ``upper_layer`` walks; raises Malformed."""
    try:
        ip = IPv6.parse(frame[ETH_HEADER:])
    except HeaderError as e:
        raise Malformed(str(e)) from None
    packet = frame[ETH_HEADER:ETH_HEADER + IPV6_HEADER + len(ip.payload)]
    nh, off = upper_layer(packet)
    return ip, nh, packet[off:]

"""Views over IPv4, IPv6, TCP, UDP and ICMP headers.

Two shapes, as in smoltcp and gVisor:
- hot-path helpers: precompiled ``struct.Struct`` reads at fixed offsets into a buffer (no objects built);
- value types (``IPv4``, ``IPv6``, ``L4``) with ``parse``/``emit`` for building packets, tests and the slow
  path, where ``parse(emit(x)) == x``.

IPv4 (RFC 791)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version|  IHL  |Type of Service|          Total Length         |
    |         Identification        |Flags|      Fragment Offset    |
    |  Time to Live |    Protocol   |         Header Checksum       |
    |                       Source Address                          |
    |                    Destination Address                        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

IPv6 (RFC 8200)::

    |Version| Traffic Class |           Flow Label                  |
    |         Payload Length        |  Next Header  |   Hop Limit   |
    |                 Source Address (16 bytes)                     |
    |              Destination Address (16 bytes)                   |

TCP/UDP both start with source port, destination port; ICMP with type, code, checksum.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

IPV4_MIN_HEADER = 20
IPV6_HEADER = 40

# Hot-path readers: source and destination addresses as integers (one unpack, no objects).
_V4_ADDRS = struct.Struct("!II")  # at offset 12
_V6_ADDRS = struct.Struct("!QQQQ")  # at offset 8: src hi, src lo, dst hi, dst lo
_PORTS = struct.Struct("!HH")
_V4_FIXED = struct.Struct("!BBHHHBBHII")
_V6_FIXED = struct.Struct("!IHBB16s16s")
_U16 = struct.Struct("!H")


def v4_addresses(buf, off: int = 0) -> tuple[int, int]:
    """(source, destination) of the IPv4 packet at ``off``; caller has checked the length."""
    return _V4_ADDRS.unpack_from(buf, off + 12)


def v6_addresses(buf, off: int = 0) -> tuple[int, int]:
    """(source, destination) of the IPv6 packet at ``off`` as 128-bit integers."""
    sh, sl, dh, dl = _V6_ADDRS.unpack_from(buf, off + 8)
    return (sh << 64) | sl, (dh << 64) | dl


def ports(buf, off: int) -> tuple[int, int]:
    return _PORTS.unpack_from(buf, off)


def fold(total: int) -> int:
    """A one's-complement sum folded to 16 bits (end-around carries), not complemented."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data, initial: int = 0) -> int:
    """Internet checksum (RFC 1071) of ``data``, folded and complemented."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    return ~fold(initial + sum(struct.unpack(f"!{len(data) // 2}H", data))) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Unfolded sum of the TCP/UDP pseudo-header (v4 if 4-byte addresses, else v6)."""
    if len(src) == 4:
        ph = src + dst + struct.pack("!BBH", 0, proto, length)
    else:
        ph = src + dst + struct.pack("!IxxxB", length, proto)
    return sum(struct.unpack(f"!{len(ph) // 2}H", ph))


class HeaderError(ValueError):
    """A header that cannot be parsed: too short, wrong version, inconsistent lengths."""


@dataclasses.dataclass(frozen=True)
class IPv4:
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    proto: int
    payload: bytes = b""
    ttl: int = 64
    ident: int = 0
    tos: int = 0
    dont_fragment: bool = True
    more_fragments: bool = False
    frag_offset: int = 0  # in 8-byte units
    options: bytes = b""

    @classmethod
    def parse(cls, buf) -> "IPv4":
        buf = bytes(buf)
        if len(buf) < IPV4_MIN_HEADER:
            raise HeaderError(f"IPv4 header needs 20 bytes, got {len(buf)}")
        vihl, tos, total, ident, frag, ttl, proto, _csum, src, dst = _V4_FIXED.unpack_from(buf)
        if vihl >> 4 != 4:
            raise HeaderError(f"not IPv4: version {vihl >> 4}")
        ihl = (vihl & 0xF) * 4
        if ihl < IPV4_MIN_HEADER or ihl > total or total > len(buf):
            raise HeaderError(f"IPv4 lengths inconsistent: ihl {ihl}, total {total}, have {len(buf)}")
        return cls(
            src=ipaddress.IPv4Address(src), dst=ipaddress.IPv4Address(dst), proto=proto,
            payload=buf[ihl:total], ttl=ttl, ident=ident, tos=tos,
            dont_fragment=bool(frag & 0x4000), more_fragments=bool(frag & 0x2000),
            frag_offset=frag & 0x1FFF, options=buf[IPV4_MIN_HEADER:ihl],
        )

    def emit(self) -> bytes:
        if len(self.options) % 4 or len(self.options) > 40:
            raise HeaderError("IPv4 options must be a multiple of 4 bytes, at most 40")
        ihl = IPV4_MIN_HEADER + len(self.options)
        frag = (0x4000 if self.dont_fragment else 0) | (0x2000 if self.more_fragments else 0) | self.frag_offset
        head = _V4_FIXED.pack(
            0x40 | ihl // 4, self.tos, ihl + len(self.payload), self.ident, frag, self.ttl, self.proto, 0,
            int(self.src), int(self.dst),
        ) + self.options
        csum = checksum(head)
        return head[:10] + _U16.pack(csum) + head[12:] + self.payload


@dataclasses.dataclass(frozen=True)
class IPv6:
    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    next_header: int
    payload: bytes = b""
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    @classmethod
    def parse(cls, buf) -> "IPv6":
        buf = bytes(buf)
        if len(buf) < IPV6_HEADER:
            raise HeaderError(f"IPv6 header needs 40 bytes, got {len(buf)}")
        vtf, plen, nh, hlim, src, dst = _V6_FIXED.unpack_from(buf)
        if vtf >> 28 != 6:
            raise HeaderError(f"not IPv6: version {vtf >> 28}")
        if IPV6_HEADER + plen > len(buf):
            raise HeaderError(f"IPv6 payload length {plen} past the end ({len(buf) - IPV6_HEADER})")
        return cls(
            src=ipaddress.IPv6Address(src), dst=ipaddress.IPv6Address(dst), next_header=nh,
            payload=buf[IPV6_HEADER:IPV6_HEADER + plen], hop_limit=hlim,
            traffic_class=(vtf >> 20) & 0xFF, flow_label=vtf & 0xFFFFF,
        )

    def emit(self) -> bytes:
        vtf = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return _V6_FIXED.pack(vtf, len(self.payload), self.next_header, self.hop_limit,
                              self.src.packed, self.dst.packed) + self.payload


@dataclasses.dataclass(frozen=True)
class UDP:
    sport: int
    dport: int
    payload: bytes = b""

    @classmethod
    def parse(cls, buf) -> "UDP":
        buf = bytes(buf)
        if len(buf) < 8:
            raise HeaderError("UDP header needs 8 bytes")
        sport, dport, length, _ = struct.unpack_from("!HHHH", buf)
        if length < 8 or length > len(buf):
            raise HeaderError(f"UDP length {length} inconsistent with {len(buf)} bytes")
        return cls(sport, dport, buf[8:length])

    def emit(self, src: bytes, dst: bytes) -> bytes:
        length = 8 + len(self.payload)
        head = struct.pack("!HHHH", self.sport, self.dport, length, 0)
        csum = checksum(head + self.payload, pseudo_header_sum(src, dst, PROTO_UDP, length)) or 0xFFFF
        return head[:6] + _U16.pack(csum) + self.payload


@dataclasses.dataclass(frozen=True)
class TCP:
    sport: int
    dport: int
    seq: int = 0
    ack: int = 0
    flags: int = 0x02  # SYN
    window: int = 65535
    payload: bytes = b""
    options: bytes = b""

    FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

    @classmethod
    def parse(cls, buf) -> "TCP":
        buf = bytes(buf)
        if len(buf) < 20:
            raise HeaderError("TCP header needs 20 bytes")
        sport, dport, seq, ack, off_flags, window = struct.unpack_from("!HHIIHH", buf)
        doff = (off_flags >> 12) * 4
        if doff < 20 or doff > len(buf):
            raise HeaderError(f"TCP data offset {doff} inconsistent with {len(buf)} bytes")
        return cls(sport, dport, seq, ack, off_flags & 0x1FF, window, buf[doff:], buf[20:doff])

    def emit(self, src: bytes, dst: bytes) -> bytes:
        if len(self.options) % 4 or len(self.options) > 40:
            raise HeaderError("TCP options must be a multiple of 4 bytes, at most 40")
        doff = (20 + len(self.options)) // 4
        head = struct.pack("!HHIIHHHH", self.sport, self.dport, self.seq, self.ack,
                           (doff << 12) | self.flags, self.window, 0, 0) + self.options
        seg = head + self.payload
        csum = checksum(seg, pseudo_header_sum(src, dst, PROTO_TCP, len(seg)))
        return seg[:16] + _U16.pack(csum) + seg[18:]


@dataclasses.dataclass(frozen=True)
class ICMP:
    """ICMP (v4) or ICMPv6 message; for echo, ``rest`` starts with identifier and sequence."""

    type: int
    code: int
    rest: bytes = b""

    @classmethod
    def parse(cls, buf) -> "ICMP":
        buf = bytes(buf)
        if len(buf) < 4:
            raise HeaderError("ICMP header needs 4 bytes")
        return cls(buf[0], buf[1], buf[4:])

    def emit(self, v6_pseudo: tuple[bytes, bytes] | None = None) -> bytes:
        body = bytes([self.type, self.code, 0, 0]) + self.rest
        initial = pseudo_header_sum(*v6_pseudo, PROTO_ICMPV6, len(body)) if v6_pseudo else 0
        csum = checksum(body, initial)
        return body[:2] + _U16.pack(csum) + body[4:]


def ipv4_packet(src: str, dst: str, l4, **kw) -> bytes:
    """Build a full IPv4 packet around a TCP/UDP/ICMP value (tests and slow path)."""
    s, d = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
    if isinstance(l4, TCP):
        proto, payload = PROTO_TCP, l4.emit(s.packed, d.packed)
    elif isinstance(l4, UDP):
        proto, payload = PROTO_UDP, l4.emit(s.packed, d.packed)
    elif isinstance(l4, ICMP):
        proto, payload = PROTO_ICMP, l4.emit()
    else:
        proto, payload = kw.pop("proto"), bytes(l4)
    return IPv4(s, d, proto, payload, **kw).emit()


def ipv6_packet(src: str, dst: str, l4, **kw) -> bytes:
    s, d = ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst)
    if isinstance(l4, TCP):
        nh, payload = PROTO_TCP, l4.emit(s.packed, d.packed)
    elif isinstance(l4, UDP):
        nh, payload = PROTO_UDP, l4.emit(s.packed, d.packed)
    elif isinstance(l4, ICMP):
        nh, payload = PROTO_ICMPV6, l4.emit((s.packed, d.packed))
    else:
        nh, payload = kw.pop("next_header"), bytes(l4)
    return IPv6(s, d, nh, payload, **kw).emit()

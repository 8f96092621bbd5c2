"""Finishing offloaded packets in userspace: what the kernel does for a device without offloads.

A TUN opened with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)`` hands us,
in front of every L3 packet, a ``struct virtio_net_hdr`` (10 bytes, little-endian)::

     0               1               2               3
     0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
    +---------------+---------------+-------------------------------+
    |     flags     |   gso_type    |            hdr_len            |
    +---------------+---------------+-------------------------------+
    |           gso_size            |          csum_start           |
    +-------------------------------+-------------------------------+
    |          csum_offset          |
    +-------------------------------+

- flags: NEEDS_CSUM (1) = the L4 checksum is partial (CHECKSUM_PARTIAL): the field at
  ``csum_start + csum_offset`` holds only the folded, *not* complemented pseudo-header sum, and the sum
  over ``packet[csum_start:]`` is still to be done. DATA_VALID (2) is a receive-side hint: nothing to do.
- gso_type: NONE 0, TCPV4 1, UDP 3 (UFO), TCPV6 4, optionally OR-ed with ECN 0x80. Anything but NONE
  means a super-packet bigger than the MTU that is to be cut into ``gso_size``-byte TCP segments.
- hdr_len: on TUN reads this is ``skb_headlen()``, only "a hint as to how much should be linear"; it is
  *not* guaranteed to be the IP + TCP header length, so segmentation reads the headers themselves.

Such a packet can cross the underlay whole (the Geneve OFFLOAD option carries the header, see
``geneve.py``) and be written to a receiving TUN that also uses vnet headers. Any other receiver
needs wire packets, so :func:`finish` does here what ``skb_checksum_help`` and ``tcp_gso_segment``
do in the kernel. Pure computation: no I/O, the caller owns the buffers.
"""

from __future__ import annotations

import struct

from .headers import IPV4_MIN_HEADER, IPV6_HEADER, PROTO_TCP, pseudo_header_sum

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size  # 10

F_NEEDS_CSUM = 1
F_DATA_VALID = 2

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # USO: never negotiated by us (no TUN_F_USO4/6), so never finished here
GSO_ECN = 0x80

TCP_MIN_HEADER = 20
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_V4_LEN_ID = struct.Struct("!HH")  # total length, identification at offset 2
_V4_FIELDS = struct.Struct("!HHHBB")  # total length, id, flags/fragment offset, TTL, protocol at offset 2
_V6_PLEN_NH = struct.Struct("!HB")  # payload length, next header at offset 4


class OffloadError(ValueError):
    """A virtio header and packet we cannot finish: malformed, inconsistent or an unsupported GSO type."""


def _unpack(vnet_hdr) -> tuple[int, int, int, int, int, int]:
    try:
        return VNET_HDR.unpack_from(vnet_hdr)
    except (struct.error, TypeError):
        raise OffloadError(f"virtio_net_hdr needs {VNET_HDR_LEN} bytes") from None


def _ones_sum(data, initial: int = 0) -> int:
    """Folded one's-complement sum of ``data`` as 16-bit big-endian words, plus ``initial``; not complemented.

    Uses 2**16 ≡ 1 (mod 0xFFFF): the whole buffer read as one big integer is congruent to the sum of
    its words, so one C-speed ``int.from_bytes`` and one modulo replace a word-by-word loop. The fold
    of a non-zero sum is in 1..0xFFFF (never "positive zero"), hence the ``or 0xFFFF``.
    """
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8  # odd length: pad with a zero byte at the end (RFC 1071)
    n += initial
    return (n % 0xFFFF or 0xFFFF) if n else 0


def needs_work(vnet_hdr) -> bool:
    """True if the packet behind ``vnet_hdr`` is not yet fit for a receiver without vnet headers."""
    flags, gso_type, _, _, _, _ = _unpack(vnet_hdr)
    return bool(flags & F_NEEDS_CSUM) or (gso_type & ~GSO_ECN) != GSO_NONE


def segment_count(vnet_hdr, packet_len: int) -> int:
    """How many packets a super-packet of ``packet_len`` bytes becomes on the wire (for counters, MTU checks).

    ``ceil((packet_len - hdr_len) / gso_size)``, at least 1; 1 without GSO or with a nonsensical header.
    Exact when ``hdr_len`` is the IP + TCP header length; the kernel's TUN reports ``skb_headlen()``
    there, which can be longer, so this is an estimate — ``len(finish(...))`` is the truth.
    """
    _, gso_type, hdr_len, gso_size, _, _ = _unpack(vnet_hdr)
    if (gso_type & ~GSO_ECN) == GSO_NONE or gso_size == 0 or packet_len <= hdr_len:
        return 1
    return -(-(packet_len - hdr_len) // gso_size)


def _tso(buf, vnet: int, inner: int, end: int) -> tuple[int, int] | None:
    """(IP + TCP header length, gso_size) of a TCP super-packet at ``buf[inner:end]``, its virtio header at
    ``vnet``, with the header length read from the packet itself; None if it is not one."""
    gso_type = buf[vnet + 1] & ~GSO_ECN
    gso_size = buf[vnet + 4] | buf[vnet + 5] << 8  # flags, gso_type, hdr_len (2), then gso_size (2)
    if gso_type not in (GSO_TCPV4, GSO_TCPV6) or not gso_size:
        return None
    ip_len = (buf[inner] & 0x0F) * 4 if gso_type == GSO_TCPV4 else 40
    if ip_len + 13 >= end - inner:
        return None
    return ip_len + (buf[inner + ip_len + 12] >> 4) * 4, gso_size


def wire_segments(buf, vnet: int, inner: int, end: int) -> int:
    """Exact packet count of the super-packet at ``buf[inner:end]`` whose virtio header is at ``vnet``.

    Unlike ``segment_count`` it takes the header length from the packet itself (IPv4 IHL or the fixed
    IPv6 header, plus the TCP data offset) rather than the kernel's ``hdr_len`` hint. For the data path's
    counters: a few byte reads, once per super-packet, and never an exception.
    """
    tso = _tso(buf, vnet, inner, end)
    if tso is None:
        gso_type = buf[vnet + 1] & ~GSO_ECN
        if gso_type in (GSO_TCPV4, GSO_TCPV6) and buf[vnet + 4] | buf[vnet + 5] << 8:
            return 1  # too short to hold its headers
        return segment_count(buf[vnet:vnet + VNET_HDR_LEN], end - inner)  # the hint is all there is
    headers, gso_size = tso
    return max(1, -(-(end - inner - headers) // gso_size))


def segment_size(buf, vnet: int, inner: int, end: int) -> int:
    """The size on the wire of each packet a TCP super-packet becomes (its headers + gso_size), for MTU
    checks judged per segment; 0 when the packet is not a TCP super-packet (``vnet`` -1: no header)."""
    if vnet < 0:
        return 0
    tso = _tso(buf, vnet, inner, end)
    return 0 if tso is None else tso[0] + tso[1]


def complete_checksum(packet: bytearray, csum_start: int, csum_offset: int) -> None:
    """Finish a CHECKSUM_PARTIAL checksum in place, as ``skb_checksum_help`` does.

    The field at ``csum_start + csum_offset`` already holds the folded pseudo-header sum, so summing
    ``packet[csum_start:]`` *with* the field and complementing gives the final checksum. A result of 0
    is written as 0xFFFF (CSUM_MANGLED_0): equal in one's complement, and for UDP 0 would mean "none".
    """
    pos = csum_start + csum_offset
    if csum_start < 0 or csum_offset < 0 or pos + 2 > len(packet):
        raise OffloadError(f"checksum at {csum_start}+{csum_offset} outside a {len(packet)}-byte packet")
    csum = ~_ones_sum(packet[csum_start:]) & 0xFFFF
    _U16.pack_into(packet, pos, csum or 0xFFFF)


def finish(vnet_hdr, packet) -> list[bytes]:
    """The wire packets for ``packet`` read with ``vnet_hdr``: checksums complete, TSO split into segments.

    Raises :class:`OffloadError` (and nothing else) for anything it cannot finish, including UFO.
    """
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _unpack(vnet_hdr)
    gso = gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if not flags & F_NEEDS_CSUM:
            return [bytes(packet)]
        buf = bytearray(packet)
        complete_checksum(buf, csum_start, csum_offset)
        return [bytes(buf)]
    if gso == GSO_UDP:
        # UFO means IP fragmentation; no Linux since 4.14 produces it and we never advertise TUN_F_UFO.
        raise OffloadError("UDP fragmentation offload unsupported")
    if gso not in (GSO_TCPV4, GSO_TCPV6):
        raise OffloadError(f"unsupported gso_type {gso_type:#x}")
    if gso_size == 0:
        raise OffloadError("GSO packet with gso_size 0")
    # A TSO packet always has a partial TCP checksum; each segment gets a full one computed from
    # scratch below, so csum_start/csum_offset and the field's content do not matter.
    return _segment_tcp(bytes(packet), gso == GSO_TCPV6, gso_size)


def _segment_tcp(pkt: bytes, v6: bool, mss: int) -> list[bytes]:
    """Cut an IP + TCP super-packet into segments of at most ``mss`` payload bytes (``tcp_gso_segment``).

    Every segment repeats the IP header and the TCP header with its options, then:

    - IPv4: total length, identification (+1 per segment, like ``inet_gso_segment``) and header checksum;
      IPv6: payload length;
    - TCP: sequence number advanced by the payload offset; FIN and PSH only on the last segment, CWR only
      on the first (it acknowledges one ECE, once); checksum over pseudo-header and segment.
    """
    n = len(pkt)
    if v6:
        if n < IPV6_HEADER or pkt[0] >> 4 != 6:
            raise OffloadError("TCPV6 GSO on a packet that is not IPv6")
        plen, nh = _V6_PLEN_NH.unpack_from(pkt, 4)
        if nh != PROTO_TCP:
            raise OffloadError(f"TCPV6 GSO with next header {nh}: only TCP right after the IPv6 header")
        # BIG TCP: payload length 0 (jumbogram header already removed) on a packet longer than 64 KiB.
        end = n if plen == 0 and n > IPV6_HEADER + 0xFFFF else IPV6_HEADER + plen
        ip_len = IPV6_HEADER
        src, dst = pkt[8:24], pkt[24:40]
    else:
        if n < IPV4_MIN_HEADER or pkt[0] >> 4 != 4:
            raise OffloadError("TCPV4 GSO on a packet that is not IPv4")
        ip_len = (pkt[0] & 0x0F) * 4
        total, ident, frag, _ttl, proto = _V4_FIELDS.unpack_from(pkt, 2)
        if proto != PROTO_TCP:
            raise OffloadError(f"TCPV4 GSO with IP protocol {proto}")
        if frag & 0x3FFF:
            raise OffloadError("TCPV4 GSO on an IP fragment")
        end = n if total == 0 and n > 0xFFFF else total  # BIG TCP for IPv4 leaves total length 0
        if ip_len < IPV4_MIN_HEADER:
            raise OffloadError(f"IPv4 header length {ip_len}")
        src, dst = pkt[12:16], pkt[16:20]
    if end > n:
        raise OffloadError(f"IP length {end} past the {n} bytes read")
    # Bytes after the IP length (end < n) are link padding; ip_rcv trims them too.
    if ip_len + TCP_MIN_HEADER > end:
        raise OffloadError("no room for a TCP header")
    tcp_len = (pkt[ip_len + 12] >> 4) * 4
    if tcp_len < TCP_MIN_HEADER or ip_len + tcp_len > end:
        raise OffloadError(f"TCP data offset {tcp_len} inconsistent with the packet")
    hdr_len = ip_len + tcp_len
    payload_len = end - hdr_len
    # The largest segment's length field must fit in 16 bits (IPv4 total length, IPv6 payload length).
    if hdr_len - (IPV6_HEADER if v6 else 0) + min(mss, payload_len) > 0xFFFF:
        raise OffloadError(f"segments of {mss} bytes do not fit in an IP packet")

    ip = bytearray(pkt[:ip_len])
    tcp = bytearray(pkt[ip_len:hdr_len])
    seq = _U32.unpack_from(tcp, 4)[0]
    flags = tcp[13]
    pseudo = pseudo_header_sum(src, dst, PROTO_TCP, 0)  # each segment adds its own length
    count = max(1, -(-payload_len // mss))  # a GSO packet of at most one MSS goes out as it is
    out = []
    for i in range(count):
        off = i * mss
        chunk = pkt[hdr_len + off:hdr_len + min(off + mss, payload_len)]
        seg_len = tcp_len + len(chunk)
        f = flags
        if i:
            f &= ~_TCP_CWR
        if i != count - 1:
            f &= ~(_TCP_FIN | _TCP_PSH)
        tcp[13] = f
        _U32.pack_into(tcp, 4, (seq + off) & 0xFFFFFFFF)
        tcp[16:18] = b"\x00\x00"
        # Adding the length as an integer is fine: _ones_sum works modulo 0xFFFF, where the two
        # 16-bit words of IPv6's 32-bit length sum to the same value.
        _U16.pack_into(tcp, 16, ~_ones_sum(tcp + chunk, pseudo + seg_len) & 0xFFFF)
        if v6:
            _U16.pack_into(ip, 4, seg_len)
        else:
            _V4_LEN_ID.pack_into(ip, 2, ip_len + seg_len, (ident + i) & 0xFFFF)
            ip[10:12] = b"\x00\x00"
            _U16.pack_into(ip, 10, ~_ones_sum(ip) & 0xFFFF)
        out.append(b"".join((ip, tcp, chunk)))
    return out

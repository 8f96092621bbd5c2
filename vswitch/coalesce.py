"""Small UDP packets of one flow, written to a TUN as one USO super-packet.

Under a flood of small datagrams the receiving agent spends most of its time in one ``write`` per
packet to the instance's TUN. The underlay already hands us such floods in batches (UDP GRO), so
consecutive packets of one flow to one ENI are copied behind a single IPv4 + UDP header and written
once, with a virtio header asking the kernel to split them again (``VIRTIO_NET_HDR_GSO_UDP_L4``, the
kernel's UDP segmentation offload, accepted on TUN writes since Linux 6.2). The instance receives
exactly the datagrams that were sent.

A packet joins the staged run only if nothing is lost by re-deriving its headers from the run's
first: IPv4 without options or fragmentation, UDP, the same addresses, ports, TOS, TTL and DF bit,
the same payload size, and a checksum the sender left to be completed (virtio ``NEEDS_CSUM`` at the
UDP checksum field): the kernel computes each segment's checksum afresh, so a complete (possibly
wrong) checksum must never be replaced by a computed one — such packets are written as they came.

    staged buffer:  [virtio_net_hdr 10][IPv4 20][UDP 8][payload 1][payload 2]...[payload n]
    virtio header:  flags NEEDS_CSUM, gso_type UDP_L4, hdr_len 28, gso_size = payload size,
                    csum_start 20, csum_offset 6; the UDP checksum field holds the pseudo-header sum
                    over the run's UDP length (what Linux's own UDP GSO leaves there)

Pure: the caller owns the I/O and decides when to ``take`` the staged write (before any other write
to any ENI, so order is kept, and at the end of each batch).
"""

from __future__ import annotations

import struct

from .headers import checksum, fold, pseudo_header_sum

VNET_LEN = 10
HEADERS = 28  # IPv4 without options + UDP
MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS on older kernels (128 since 6.x): stay below both
_F_NEEDS_CSUM, _GSO_UDP_L4 = 1, 5
_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_H = struct.Struct("!H")
_SINGLE_VNET = _VNET.pack(_F_NEEDS_CSUM, 0, 0, 0, 20, 6)


def _set_lengths(head, at: int, payload: int) -> None:
    """Fill in the IPv4 + UDP headers at ``head[at:at + 28]`` for ``payload`` bytes behind them: lengths,
    IP header checksum, and in the UDP checksum field the pseudo-header sum, folded, not complemented
    (CHECKSUM_PARTIAL's convention: the kernel completes it, per segment for a run)."""
    udp_len = 8 + payload
    head[at + 2:at + 4] = _H.pack(20 + udp_len)
    head[at + 10:at + 12] = b"\0\0"
    head[at + 10:at + 12] = _H.pack(checksum(head[at:at + 20]))
    head[at + 24:at + 26] = _H.pack(udp_len)
    head[at + 26:at + 28] = _H.pack(fold(pseudo_header_sum(head[at + 12:at + 16], head[at + 16:at + 20], 17,
                                                            udp_len)))


class UdpCoalescer:
    def __init__(self) -> None:
        self.buf = bytearray(VNET_LEN + HEADERS + 65535)
        self.view = memoryview(self.buf)
        self.target = None  # the caller's handle of the ENI the run goes to; None: nothing staged
        self.count = 0
        self.size = 0
        self._key = b""
        self.coalesced = 0  # packets that went out as part of a run of two or more
        self.writes_saved = 0

    @staticmethod
    def fits(view, vnet: int, inner: int, end: int) -> bool:
        """Whether the packet at ``view[inner:end]`` (virtio header at ``vnet``) may join a run."""
        return (vnet >= 0 and view[vnet] == _F_NEEDS_CSUM and view[vnet + 1] == 0
                and view[vnet + 6] == 20 and view[vnet + 7] == 0 and view[vnet + 8] == 6 and view[vnet + 9] == 0
                and end - inner > HEADERS and view[inner] == 0x45 and view[inner + 9] == 17
                and not (view[inner + 6] & 0x3F or view[inner + 7])  # no MF, no offset (DF may be set)
                and view[inner + 2] << 8 | view[inner + 3] == end - inner
                and view[inner + 24] << 8 | view[inner + 25] == end - inner - 20)

    def add(self, target, view, inner: int, end: int) -> bool:
        """Stage a packet that ``fits``. False: it cannot join the run staged for another target or
        flow; ``take`` that run first, then add again (which then starts a new run)."""
        size = end - inner - HEADERS
        key = bytes(view[inner + 12:inner + 24]) + bytes((view[inner + 1], view[inner + 6], view[inner + 8]))
        if self.target is None:
            self.target, self.count, self.size, self._key = target, 1, size, key
            self.buf[VNET_LEN:VNET_LEN + HEADERS + size] = view[inner:end]
            return True
        if (target is not self.target or key != self._key or size != self.size or self.count >= MAX_SEGMENTS
                or HEADERS + (self.count + 1) * size > 65535):
            return False
        at = VNET_LEN + HEADERS + self.count * size
        self.buf[at:at + size] = view[inner + HEADERS:end]
        self.count += 1
        return True

    def take(self):
        """(target, the bytes to write — virtio header included —, packets in it), and nothing staged
        afterwards; None if nothing was staged. The view is valid until the next ``add``."""
        target, count, size = self.target, self.count, self.size
        if target is None:
            return None
        self.target = None
        buf = self.buf
        if count == 1:  # as it came: its own headers and partial checksum
            buf[:VNET_LEN] = _SINGLE_VNET
            return target, self.view[:VNET_LEN + HEADERS + size], 1
        total = HEADERS + count * size
        _set_lengths(buf, VNET_LEN, count * size)
        buf[:VNET_LEN] = _VNET.pack(_F_NEEDS_CSUM, _GSO_UDP_L4, HEADERS, size, 20, 6)
        self.coalesced += count
        self.writes_saved += count - 1
        return target, self.view[:VNET_LEN + total], count

    @staticmethod
    def split(data) -> list[bytes]:
        """A run as separate packets (virtio header each), for a device that refuses USO writes."""
        size = _VNET.unpack_from(data, 0)[3]
        head = bytearray(data[VNET_LEN:VNET_LEN + HEADERS])
        if not data[1]:  # a single packet already
            return [bytes(data)]
        out = []
        for at in range(VNET_LEN + HEADERS, len(data), size):
            payload = data[at:at + size]
            _set_lengths(head, 0, len(payload))
            out.append(_SINGLE_VNET + bytes(head) + bytes(payload))
        return out

"""Geneve (RFC 8926) on UDP port 6081: the VPC encapsulation.

Base header (8 bytes) followed by options::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |        Virtual Network Identifier (VNI)       |    Reserved   |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                    Variable-Length Options                    |

Each option (Opt Len and Length count 4-byte words)::

    |          Option Class         |C|    Type     |R|R|R| Length  |
    |                 Variable-Length Option Data                   |

VNI = the VPC's number. Protocol Type = 0x0800 (IPv4) or 0x86DD (IPv6): the inner packet is L3.

Our options use class 0xFF5C, inside the range RFC 8926 leaves for experimental use (0xFF00–0xFFFF):

- type 0x01 SOURCE_ENI (not critical), 8 bytes: the sending ENI's 64-bit number.
- type 0x82 OFFLOAD (critical: a receiver that does not understand it would deliver a broken
  super-packet), 12 bytes: 2 bytes of padding, then the Linux ``struct virtio_net_hdr`` (10 bytes,
  little-endian) read with the packet from the TUN. It lets a TSO super-packet or a packet with a
  partial checksum cross the underlay whole and be written to the receiving TUN as it was read.
  The padding comes first so that the virtio header sits right before the inner packet: one
  contiguous read from the sending TUN and one contiguous write to the receiving TUN.

Our own packets therefore always have this fixed layout, which the data path writes and reads in place::

    [0:8] base  [8:20] SOURCE_ENI  [20:24] OFFLOAD header  [24:26] pad  [26:36] virtio header  [36:] inner
    [0:8] base  [8:20] SOURCE_ENI  [20:] inner                                  (without offloads)
"""

from __future__ import annotations

import dataclasses
import struct

from .drops import Drop

UDP_PORT = 6081
PROTO_IPV4 = 0x0800
PROTO_IPV6 = 0x86DD
OPTION_CLASS = 0xFF5C
OPT_SOURCE_ENI = 0x01
OPT_OFFLOAD = 0x82  # high bit = critical
CRITICAL_BIT = 0x80
VNET_HDR_LEN = 10
BASE_LEN = 8
MAX_VNI = (1 << 24) - 1

# Offsets of the fixed layout we emit.
ENI_OPT_LEN = 12
OFFLOAD_OPT_LEN = 16
INNER_OFFSET_PLAIN = BASE_LEN + ENI_OPT_LEN  # 20
INNER_OFFSET_OFFLOAD = INNER_OFFSET_PLAIN + OFFLOAD_OPT_LEN  # 36
VNET_OFFSET = INNER_OFFSET_OFFLOAD - VNET_HDR_LEN  # 26: virtio_net_hdr, last in the OFFLOAD option
_VNET_PAD = OFFLOAD_OPT_LEN - 4 - VNET_HDR_LEN  # 2

_BASE = struct.Struct("!BBHI")
_OPT_HDR = struct.Struct("!HBB")
_ENI = struct.Struct("!Q")


class GeneveError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Option:
    cls: int
    type: int
    data: bytes

    @property
    def critical(self) -> bool:
        return bool(self.type & CRITICAL_BIT)


@dataclasses.dataclass(frozen=True)
class Geneve:
    """Value type for building and inspecting Geneve packets (tests, slow path, the edge)."""

    vni: int
    protocol: int
    options: tuple[Option, ...] = ()
    payload: bytes = b""
    oam: bool = False

    @property
    def critical(self) -> bool:
        return any(o.critical for o in self.options)

    def option(self, cls: int, type_: int) -> Option | None:
        for o in self.options:
            if o.cls == cls and o.type == type_:
                return o
        return None

    @property
    def source_eni(self) -> int | None:
        o = self.option(OPTION_CLASS, OPT_SOURCE_ENI)
        return _ENI.unpack(o.data)[0] if o and len(o.data) == 8 else None

    @property
    def vnet_header(self) -> bytes | None:
        o = self.option(OPTION_CLASS, OPT_OFFLOAD)
        return o.data[-VNET_HDR_LEN:] if o and len(o.data) >= VNET_HDR_LEN else None

    def emit(self) -> bytes:
        if not 0 <= self.vni <= MAX_VNI:
            raise GeneveError(f"VNI {self.vni} out of range 0..{MAX_VNI}")
        opts = b""
        for o in self.options:
            if len(o.data) % 4 or len(o.data) > 124:
                raise GeneveError("option data must be a multiple of 4 bytes, at most 124")
            opts += _OPT_HDR.pack(o.cls, o.type, len(o.data) // 4) + o.data
        if len(opts) > 252:
            raise GeneveError("options longer than 252 bytes")
        flags = (0x80 if self.oam else 0) | (0x40 if self.critical else 0)
        return _BASE.pack(len(opts) // 4, flags, self.protocol, self.vni << 8) + opts + self.payload

    @classmethod
    def parse(cls, buf) -> "Geneve":
        buf = bytes(buf)
        if len(buf) < BASE_LEN:
            raise GeneveError(f"Geneve header needs 8 bytes, got {len(buf)}")
        ver_optlen, flags, proto, vni_res = _BASE.unpack_from(buf)
        if ver_optlen >> 6:
            raise GeneveError(f"Geneve version {ver_optlen >> 6} unsupported")
        end = BASE_LEN + (ver_optlen & 0x3F) * 4
        if end > len(buf):
            raise GeneveError("Geneve options run past the end of the packet")
        options, off = [], BASE_LEN
        while off < end:
            if off + 4 > end:
                raise GeneveError("truncated Geneve option header")
            ocls, otype, olen = _OPT_HDR.unpack_from(buf, off)
            dend = off + 4 + (olen & 0x1F) * 4
            if dend > end:
                raise GeneveError("Geneve option runs past the options length")
            options.append(Option(ocls, otype, buf[off + 4:dend]))
            off = dend
        return cls(vni_res >> 8, proto, tuple(options), buf[end:], oam=bool(flags & 0x80))


def source_eni_option(eni_number: int) -> Option:
    return Option(OPTION_CLASS, OPT_SOURCE_ENI, _ENI.pack(eni_number))


def offload_option(vnet_header: bytes) -> Option:
    return Option(OPTION_CLASS, OPT_OFFLOAD, bytes(_VNET_PAD) + bytes(vnet_header[:VNET_HDR_LEN]))


def prefix(vni: int, eni_number: int, offload: bool, protocol: int = PROTO_IPV4) -> bytes:
    """The constant header bytes the data path keeps in front of its read buffer for one ENI.

    With ``offload`` the result ends with the OFFLOAD option's header and padding: the TUN read then
    fills in the virtio header and the packet right behind it.
    """
    opts = (source_eni_option(eni_number),)
    if offload:
        opts += (offload_option(bytes(VNET_HDR_LEN)),)
    full = Geneve(vni, protocol, opts).emit()
    return full[:VNET_OFFSET] if offload else full


# --- hot path decoding -----------------------------------------------------------------------------
# Returns an int code: >= 0 is the inner offset; negative values are the Drop to count.
# Decoding writes the findings into a small reusable list to avoid building a tuple per packet.

DECODE_VNI, DECODE_PROTO, DECODE_ENI, DECODE_VNET = 0, 1, 2, 3


def decode_into(buf, n: int, out: list) -> int:
    """Parse the Geneve header of ``buf[:n]``. Fills ``out`` = [vni, protocol, source ENI or -1,
    virtio header offset or -1] and returns the inner packet's offset, or ``-1 - Drop`` on error.
    The virtio header is the last 10 bytes of the OFFLOAD option's data."""
    if n < BASE_LEN:
        return -1 - Drop.MALFORMED_GENEVE
    ver_optlen, flags, proto, vni_res = _BASE.unpack_from(buf, 0)
    if ver_optlen >> 6:
        return -1 - Drop.MALFORMED_GENEVE
    end = BASE_LEN + (ver_optlen & 0x3F) * 4
    if end > n:
        return -1 - Drop.MALFORMED_GENEVE
    if flags & 0x80:
        return -1 - Drop.GENEVE_OAM
    out[DECODE_VNI] = vni_res >> 8
    out[DECODE_PROTO] = proto
    out[DECODE_ENI] = -1
    out[DECODE_VNET] = -1
    off = BASE_LEN
    while off < end:
        if off + 4 > end:
            return -1 - Drop.MALFORMED_GENEVE
        ocls, otype, olen = _OPT_HDR.unpack_from(buf, off)
        dlen = (olen & 0x1F) * 4
        data = off + 4
        if data + dlen > end:
            return -1 - Drop.MALFORMED_GENEVE
        if ocls == OPTION_CLASS and otype == OPT_SOURCE_ENI and dlen == 8:
            out[DECODE_ENI] = _ENI.unpack_from(buf, data)[0]
        elif ocls == OPTION_CLASS and otype == OPT_OFFLOAD and dlen >= VNET_HDR_LEN:
            out[DECODE_VNET] = data + dlen - VNET_HDR_LEN
        elif otype & CRITICAL_BIT:
            return -1 - Drop.UNKNOWN_CRITICAL_OPTION
        off = data + dlen
    return end

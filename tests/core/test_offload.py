"""Finishing virtio-offloaded packets: partial checksums and TSO segmentation, checked against vswitch.headers."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


from vswitch.headers import (
    IPV4_MIN_HEADER, IPV6_HEADER, PROTO_TCP, PROTO_UDP, TCP, UDP, IPv4, IPv6, checksum, ipv4_packet,
    ipv6_packet, pseudo_header_sum,
)
from vswitch.offload import (
    F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, VNET_HDR, OffloadError,
    complete_checksum, finish, needs_work, segment_count, wire_segments,
)

V4 = ("10.0.1.5", "10.0.2.7")
V6 = ("fd00:1::5", "fd00:2::7")
CWR, ECE = 0x80, 0x40
F_DATA_VALID = 2
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def vnet(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    return VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def addrs(pkt: bytes) -> tuple[bytes, bytes, int]:
    """Source, destination and L4 offset of a v4 or v6 packet."""
    if pkt[0] >> 4 == 4:
        return pkt[12:16], pkt[16:20], (pkt[0] & 0xF) * 4
    return pkt[8:24], pkt[24:40], IPV6_HEADER


def build(v6: bool, l4, **kw) -> bytes:
    return ipv6_packet(*V6, l4, **kw) if v6 else ipv4_packet(*V4, l4, **kw)


def make_partial(full: bytes, proto: int) -> tuple[bytearray, int, int]:
    """What the kernel hands over with CHECKSUM_PARTIAL: the L4 checksum field holds the folded,
    not complemented, pseudo-header sum. Returns the packet, csum_start and csum_offset."""
    src, dst, l4 = addrs(full)
    field = 16 if proto == PROTO_TCP else 6
    pkt = bytearray(full)
    struct.pack_into("!H", pkt, l4 + field, fold(pseudo_header_sum(src, dst, proto, len(full) - l4)))
    return pkt, l4, field


def l4_checksum_ok(pkt: bytes, proto: int) -> bool:
    src, dst, l4 = addrs(pkt)
    return checksum(pkt[l4:], pseudo_header_sum(src, dst, proto, len(pkt) - l4)) == 0


# --- needs_work and segment_count ---------------------------------------------------------------------------


@pytest.mark.parametrize("flags, gso_type, expected", [
    (0, GSO_NONE, False),
    (F_DATA_VALID, GSO_NONE, False),
    (0, GSO_ECN, False),  # the ECN bit alone is no GSO type
    (F_NEEDS_CSUM, GSO_NONE, True),
    (F_NEEDS_CSUM, GSO_TCPV4, True),
    (0, GSO_TCPV6 | GSO_ECN, True),
    (0, GSO_UDP, True),
])
def test_needs_work(flags, gso_type, expected):
    assert needs_work(vnet(flags, gso_type)) is expected
    assert needs_work(bytearray(vnet(flags, gso_type)) + b"extra") is expected
    assert needs_work(memoryview(vnet(flags, gso_type))) is expected


@pytest.mark.parametrize("fn", [needs_work, lambda h: segment_count(h, 100), lambda h: finish(h, b"")])
def test_short_vnet_header_is_offload_error(fn):
    for short in (b"", b"\x01" * 9):
        with pytest.raises(OffloadError):
            fn(short)


@pytest.mark.parametrize("gso_type, hdr_len, gso_size, packet_len, expected", [
    (GSO_NONE, 40, 1000, 5000, 1),
    (GSO_TCPV4, 40, 1000, 3040, 3),
    (GSO_TCPV4, 40, 1000, 3041, 4),
    (GSO_TCPV6 | GSO_ECN, 60, 1440, 61, 1),
    (GSO_TCPV4, 40, 1000, 40, 1),  # no payload: still one packet
    (GSO_TCPV4, 90, 1000, 40, 1),  # hdr_len past the end
    (GSO_TCPV4, 40, 0, 5000, 1),  # gso_size 0
])
def test_segment_count(gso_type, hdr_len, gso_size, packet_len, expected):
    assert segment_count(vnet(0, gso_type, hdr_len, gso_size), packet_len) == expected


# --- checksum completion ------------------------------------------------------------------------------------


@FAST
@given(v6=st.booleans(), tcp=st.booleans(), payload=st.binary(max_size=1500), sport=st.integers(0, 0xFFFF))
def test_complete_checksum_equals_full_checksum(v6, tcp, payload, sport):
    l4 = TCP(sport, 443, seq=7, flags=TCP.ACK | TCP.PSH, payload=payload) if tcp else UDP(sport, 53, payload)
    proto = PROTO_TCP if tcp else PROTO_UDP
    full = build(v6, l4)
    partial, start, field = make_partial(full, proto)
    hdr = vnet(F_NEEDS_CSUM, GSO_NONE, 0, 0, start, field)
    assert needs_work(hdr)
    [out] = finish(hdr, bytes(partial))
    expected = bytearray(full)
    if tcp and full[start + field:start + field + 2] == b"\x00\x00":
        expected[start + field:start + field + 2] = b"\xff\xff"  # CSUM_MANGLED_0, same value for TCP
    assert out == bytes(expected)
    assert l4_checksum_ok(out, proto)
    complete_checksum(partial, start, field)  # in place gives the same
    assert partial == expected


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("tcp", [False, True])
def test_zero_checksum_is_written_as_ffff(v6, tcp):
    # Choose the last payload word so that the data sums to 0xFFFF: the complemented sum is then 0,
    # which UDP would read as "no checksum"; the kernel writes 0xFFFF instead (CSUM_MANGLED_0).
    def packet(word: int) -> bytes:
        payload = b"offload" + b"!" + struct.pack("!H", word)
        return build(v6, TCP(1, 2, payload=payload) if tcp else UDP(1, 2, payload))

    proto = PROTO_TCP if tcp else PROTO_UDP
    probe = bytearray(packet(0))
    src, dst, l4 = addrs(bytes(probe))
    field = l4 + (16 if tcp else 6)
    probe[field:field + 2] = b"\x00\x00"
    word = checksum(probe[l4:], pseudo_header_sum(src, dst, proto, len(probe) - l4))
    partial, start, off = make_partial(packet(word), proto)
    [out] = finish(vnet(F_NEEDS_CSUM, 0, 0, 0, start, off), partial)
    assert out[field:field + 2] == b"\xff\xff"
    assert l4_checksum_ok(out, proto)
    if not tcp:
        assert out == packet(word)  # headers.UDP mangles a zero checksum the same way


def test_complete_checksum_odd_length_and_out_of_range():
    full = build(False, UDP(5, 6, b"abc"))  # odd L4 length: padded with a zero byte
    partial, start, field = make_partial(full, PROTO_UDP)
    complete_checksum(partial, start, field)
    assert bytes(partial) == full
    for s, o in [(-1, 6), (20, -1), (len(full), 0), (len(full) - 1, 0), (20, len(full) - 21)]:
        with pytest.raises(OffloadError):
            complete_checksum(bytearray(full), s, o)
    with pytest.raises(OffloadError):
        finish(vnet(F_NEEDS_CSUM, 0, 0, 0, 60000, 6), full)


def test_no_work_returns_packet_unchanged():
    pkt = build(True, UDP(1, 2, b"hello"))
    for hdr in (vnet(), vnet(F_DATA_VALID), vnet(0, GSO_ECN)):
        assert finish(hdr, pkt) == [pkt]
        assert finish(hdr, bytearray(pkt)) == [pkt]
        assert finish(hdr, memoryview(pkt)) == [pkt]
        assert type(finish(hdr, bytearray(pkt))[0]) is bytes
    assert finish(vnet(), b"") == [b""]  # not our business to validate what needs no work


# --- segmentation -------------------------------------------------------------------------------------------


def super_packet(v6: bool, payload: bytes, *, seq: int, flags: int, ident: int = 0, options: bytes = b"",
                 ip_options: bytes = b"") -> bytes:
    """A TSO super-packet as the kernel writes it: checksum field partial."""
    l4 = TCP(40000, 443, seq=seq, ack=99, flags=flags, window=512, payload=payload, options=options)
    full = build(v6, l4) if v6 else build(v6, l4, ident=ident, options=ip_options)
    return bytes(make_partial(full, PROTO_TCP)[0])


def check_segments(segs: list[bytes], v6: bool, payload: bytes, mss: int, *, seq: int, flags: int,
                   ident: int, options: bytes = b"", ip_options: bytes = b"") -> None:
    count = max(1, -(-len(payload) // mss))
    assert len(segs) == count
    got = b""
    for i, seg in enumerate(segs):
        assert type(seg) is bytes
        if v6:
            ip = IPv6.parse(seg)
            assert len(seg) == IPV6_HEADER + len(ip.payload) and ip.next_header == PROTO_TCP
        else:
            ip = IPv4.parse(seg)
            ihl = IPV4_MIN_HEADER + len(ip_options)
            assert struct.unpack_from("!H", seg, 2)[0] == len(seg)
            assert checksum(seg[:ihl]) == 0  # header checksum valid
            assert ip.ident == (ident + i) & 0xFFFF
            assert ip.options == ip_options and ip.dont_fragment and not ip.more_fragments
        assert l4_checksum_ok(seg, PROTO_TCP)
        tcp = TCP.parse(ip.payload)
        assert (tcp.sport, tcp.dport, tcp.ack, tcp.window, tcp.options) == (40000, 443, 99, 512, options)
        assert tcp.seq == (seq + len(got)) % 2**32
        want = flags
        if i:
            want &= ~CWR
        if i != count - 1:
            want &= ~(TCP.FIN | TCP.PSH)
        assert tcp.flags == want
        assert len(tcp.payload) == mss if i != count - 1 else 0 < len(tcp.payload) <= mss or not payload
        got += tcp.payload
        # The same bytes as a segment built from scratch by vswitch.headers.
        ref = TCP(40000, 443, seq=tcp.seq, ack=99, flags=want, window=512, payload=tcp.payload, options=options)
        assert seg == (build(v6, ref) if v6 else build(v6, ref, ident=(ident + i) & 0xFFFF, options=ip_options))
    assert got == payload


@FAST
@given(
    v6=st.booleans(),
    length=st.integers(0, 20000),
    mss=st.integers(1, 9000),
    seed=st.integers(0, 2**32),
    seq=st.integers(0, 2**32 - 1),
    ident=st.integers(0, 0xFFFF),
    flags=st.sets(st.sampled_from([TCP.FIN, TCP.PSH, TCP.ACK, CWR, ECE, TCP.URG])).map(sum),
    options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8))]),  # NOP NOP timestamps
    ip_options=st.sampled_from([b"", b"\x94\x04\x00\x00"]),  # router alert
    ecn=st.booleans(),
)
def test_segmentation(v6, length, mss, seed, seq, ident, flags, options, ip_options, ecn):
    if length // mss > 100:  # tiny MSS on a big payload: same code, just slow to check (and to shrink)
        mss = max(mss, length // 100)
    payload = random.Random(seed).randbytes(length)
    pkt = super_packet(v6, payload, seq=seq, flags=flags, ident=ident, options=options, ip_options=ip_options)
    hdr_len = len(pkt) - length
    gso = (GSO_TCPV6 if v6 else GSO_TCPV4) | (GSO_ECN if ecn else 0)
    hdr = vnet(F_NEEDS_CSUM, gso, hdr_len, mss, hdr_len - len(options) - 20, 16)
    segs = finish(hdr, pkt)
    check_segments(segs, v6, payload, mss, seq=seq, flags=flags, ident=ident, options=options,
                   ip_options=b"" if v6 else ip_options)
    assert segment_count(hdr, len(pkt)) == len(segs)


@pytest.mark.parametrize("v6", [False, True])
def test_segmentation_smallest_mss_and_wraparound(v6):
    payload = bytes(range(256)) * 3
    pkt = super_packet(v6, payload, seq=2**32 - 300, flags=TCP.ACK | TCP.PSH | TCP.FIN | CWR, ident=0xFFFE)
    segs = finish(vnet(F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, 0, 1), pkt)
    check_segments(segs, v6, payload, 1, seq=2**32 - 300, flags=TCP.ACK | TCP.PSH | TCP.FIN | CWR, ident=0xFFFE)


@pytest.mark.parametrize("v6", [False, True])
def test_big_tcp_length_zero(v6):
    # BIG TCP: packets over 64 KiB carry IPv4 total length / IPv6 payload length 0.
    payload = random.Random(1).randbytes(70000)
    head = bytearray(super_packet(v6, b"", seq=5, flags=TCP.ACK, ident=9))
    struct.pack_into("!H", head, 4 if v6 else 2, 0)
    segs = finish(vnet(F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, len(head), 9000), bytes(head) + payload)
    check_segments(segs, v6, payload, 9000, seq=5, flags=TCP.ACK, ident=9)


def test_trailing_padding_ignored():
    payload = b"x" * 3000
    pkt = super_packet(False, payload, seq=1, flags=TCP.ACK, ident=3)
    segs = finish(vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 1448), pkt + b"\x00" * 6)
    check_segments(segs, False, payload, 1448, seq=1, flags=TCP.ACK, ident=3)


def malformed_cases():
    v4 = super_packet(False, b"y" * 3000, seq=1, flags=TCP.ACK)
    v6 = super_packet(True, b"y" * 3000, seq=1, flags=TCP.ACK)
    udp4 = build(False, UDP(1, 2, b"z" * 3000))
    frag = bytearray(v4)
    struct.pack_into("!H", frag, 6, 0x2000)  # more fragments
    long_total = bytearray(v4)
    struct.pack_into("!H", long_total, 2, len(v4) + 1)
    bad_ihl = bytearray(v4)
    bad_ihl[0] = 0x44
    bad_doff = bytearray(v4)
    bad_doff[20 + 12] = 0x40  # data offset 16 bytes
    huge_doff = bytearray(v4)
    huge_doff[20 + 12] = 0xF0
    v6_ext = bytearray(v6)
    v6_ext[6] = 0  # hop-by-hop options
    big_head = bytearray(super_packet(False, b"", seq=0, flags=0))
    struct.pack_into("!H", big_head, 2, 0)  # BIG TCP: length 0, so 0xFFFF-byte segments are asked for
    return [
        ("udp", vnet(F_NEEDS_CSUM, GSO_UDP, 28, 1000), udp4),
        ("uso", vnet(F_NEEDS_CSUM, 5, 28, 1000), udp4),
        ("unknown type", vnet(0, 2, 40, 1000), v4),
        ("gso_size 0", vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 0), v4),
        ("v4 type on v6", vnet(F_NEEDS_CSUM, GSO_TCPV4, 60, 1000), v6),
        ("v6 type on v4", vnet(F_NEEDS_CSUM, GSO_TCPV6, 40, 1000), v4),
        ("v4 udp", vnet(F_NEEDS_CSUM, GSO_TCPV4, 28, 1000), udp4),
        ("fragment", vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 1000), bytes(frag)),
        ("truncated", vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 1000), v4[:-1]),
        ("headers only partly", vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 1000), v4[:30]),
        ("total past end", vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 1000), bytes(long_total)),
        ("ihl < 5", vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 1000), bytes(bad_ihl)),
        ("doff < 5", vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 1000), bytes(bad_doff)),
        ("doff past end", vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 1000), bytes(huge_doff)[:70]),
        ("v6 extension header", vnet(F_NEEDS_CSUM, GSO_TCPV6, 60, 1000), bytes(v6_ext)),
        ("v6 truncated", vnet(F_NEEDS_CSUM, GSO_TCPV6, 60, 1000), v6[:39]),
        ("empty", vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 1000), b""),
        ("segment too big", vnet(F_NEEDS_CSUM, GSO_TCPV4, 40, 0xFFFF), bytes(big_head) + b"w" * 66000),
    ]


@pytest.mark.parametrize("name, hdr, pkt", malformed_cases(), ids=[c[0] for c in malformed_cases()])
def test_malformed_raises_offload_error(name, hdr, pkt):
    with pytest.raises(OffloadError):
        finish(hdr, pkt)


def test_udp_fragmentation_message():
    with pytest.raises(OffloadError, match="UDP fragmentation offload unsupported"):
        finish(vnet(F_NEEDS_CSUM, GSO_UDP | GSO_ECN, 28, 1000), build(False, UDP(1, 2, b"z" * 3000)))


# --- fuzz: anything goes in, only OffloadError comes out ----------------------------------------------------


def survives(hdr, pkt) -> None:
    try:
        out = finish(hdr, pkt)
    except OffloadError:
        return
    assert out and all(type(p) is bytes for p in out)


@FAST
@given(hdr=st.binary(max_size=14), pkt=st.binary(max_size=300))
def test_fuzz_random_bytes(hdr, pkt):
    survives(hdr, pkt)
    try:
        needs_work(hdr)
        assert segment_count(hdr, len(pkt)) >= 1
    except OffloadError:
        assert len(hdr) < 10


VALID = [super_packet(v6, b"q" * 300, seq=1, flags=TCP.ACK | TCP.PSH) for v6 in (False, True)]
VALID += [build(v6, UDP(1, 2, b"u" * 300)) for v6 in (False, True)]


@FAST
@given(
    base=st.sampled_from(VALID),
    flips=st.lists(st.tuples(st.integers(0, 99), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 400),
    flags=st.sampled_from([0, F_NEEDS_CSUM, 0xFF]),
    gso_type=st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_TCPV4 | GSO_ECN, 2, 5, 0x7F, 0xFF]),
    hdr_len=st.integers(0, 0xFFFF),
    gso_size=st.sampled_from([0, 1, 100, 1448, 0xFFFF]),
    csum_start=st.sampled_from([0, 20, 40, 700, 0xFFFF]),
    csum_offset=st.sampled_from([0, 6, 16, 0xFFFF]),
)
def test_fuzz_mutated_packets(base, flips, cut, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset):
    pkt = bytearray(base[:cut] if cut < len(base) else base)
    for pos, value in flips:  # header bytes are where the parsing decisions are
        if pos < len(pkt):
            pkt[pos] = value
    hdr = vnet(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    survives(hdr, bytes(pkt))
    assert segment_count(hdr, len(pkt)) >= 1


@given(v6=st.booleans(), length=st.integers(0, 20000), mss=st.integers(1, 9000),
       options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]),
       hint=st.integers(0, 200), csum_start=st.integers(0, 200))
@settings(max_examples=200, deadline=None)
def test_wire_segments_counts_what_finish_produces(v6, length, mss, options, hint, csum_start):
    """The data path's counter: exact, whatever the kernel's hdr_len hint and the other header fields say."""
    pkt = super_packet(v6, bytes(length), seq=1, flags=0x18, options=options)
    hdr = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, hint, mss, csum_start, 16)
    buf = b"\x00" * 3 + hdr + pkt  # at an offset, as in the agent's buffers
    count = wire_segments(buf, 3, 3 + len(hdr), len(buf))
    assert count == (len(finish(hdr, pkt)) if length else 1)

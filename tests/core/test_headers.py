"""vswitch.headers: value types round trip, checksums verify, hot-path readers, malformed input."""

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vswitch import headers
from vswitch.headers import ICMP, IPv4, IPv6, TCP, UDP, HeaderError

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

v4_addrs = st.ip_addresses(v=4)
v6_addrs = st.ip_addresses(v=6)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
payloads = st.binary(max_size=300)


def words(max_words: int):
    """Bytes whose length is a multiple of 4, at most ``4 * max_words``."""
    return st.integers(0, max_words).flatmap(lambda k: st.binary(min_size=4 * k, max_size=4 * k))


def ref_checksum(data: bytes, initial: int = 0) -> int:
    """A deliberately naive RFC 1071 checksum to compare against."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


ipv4_values = st.builds(
    IPv4, src=v4_addrs, dst=v4_addrs, proto=u8, payload=payloads, ttl=u8, ident=u16, tos=u8,
    dont_fragment=st.booleans(), more_fragments=st.booleans(), frag_offset=st.integers(0, 0x1FFF),
    options=words(10),
)
ipv6_values = st.builds(
    IPv6, src=v6_addrs, dst=v6_addrs, next_header=u8, payload=payloads, hop_limit=u8,
    traffic_class=u8, flow_label=st.integers(0, 0xFFFFF),
)
udp_values = st.builds(UDP, sport=u16, dport=u16, payload=payloads)
tcp_values = st.builds(TCP, sport=u16, dport=u16, seq=u32, ack=u32, flags=st.integers(0, 0x1FF),
                       window=u16, payload=payloads, options=words(10))
icmp_values = st.builds(ICMP, type=u8, code=u8, rest=payloads)


# --- checksum ---------------------------------------------------------------------------------------

def test_checksum_rfc1071_example():
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (folded); the checksum is its complement.
    assert headers.checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2 & 0xFFFF)


def test_checksum_of_empty_and_odd_lengths():
    assert headers.checksum(b"") == 0xFFFF
    assert headers.checksum(b"\x12") == (~0x1200 & 0xFFFF)  # padded with a zero byte at the end
    assert headers.checksum(b"\x12\x34\x56") == ref_checksum(b"\x12\x34\x56\x00")


@FAST
@given(st.binary(max_size=600), st.integers(0, 0xFFFFFFFF))
def test_checksum_matches_reference(data, initial):
    assert headers.checksum(data, initial) == ref_checksum(data, initial)
    assert headers.checksum(bytearray(data), initial) == ref_checksum(data, initial)


@FAST
@given(st.binary(max_size=300).map(lambda b: b if len(b) % 2 == 0 else b + b"\x00"))
def test_checksum_inserted_into_data_folds_to_zero(data):
    c = headers.checksum(data)
    assert headers.checksum(data + struct.pack("!H", c)) == 0


def test_pseudo_header_sums():
    s, d = V4("10.0.0.1").packed, V4("10.0.0.2").packed
    assert headers.pseudo_header_sum(s, d, 17, 28) == 0x0A00 + 0x0001 + 0x0A00 + 0x0002 + 17 + 28
    s6, d6 = V6("2001:db8::1").packed, V6("2001:db8::2").packed
    expected = 2 * 0x2001 + 2 * 0x0DB8 + 1 + 2 + 0 + 70000 % 65536 + 70000 // 65536 + 6
    assert headers.pseudo_header_sum(s6, d6, 6, 70000) == expected


# --- IPv4 -------------------------------------------------------------------------------------------

@FAST
@given(ipv4_values)
def test_ipv4_round_trip(p):
    raw = p.emit()
    ihl = 20 + len(p.options)
    assert IPv4.parse(raw) == p
    assert IPv4.parse(bytearray(raw)) == p
    assert IPv4.parse(memoryview(raw)) == p
    assert len(raw) == ihl + len(p.payload)
    assert raw[0] == 0x40 | ihl // 4
    assert raw[1] == p.tos
    assert struct.unpack_from("!H", raw, 2)[0] == len(raw)
    assert struct.unpack_from("!H", raw, 4)[0] == p.ident
    frag = struct.unpack_from("!H", raw, 6)[0]
    assert bool(frag & 0x4000) == p.dont_fragment
    assert bool(frag & 0x2000) == p.more_fragments
    assert frag & 0x1FFF == p.frag_offset
    assert not frag & 0x8000  # the reserved bit stays clear
    assert (raw[8], raw[9]) == (p.ttl, p.proto)
    assert raw[20:ihl] == p.options
    assert raw[ihl:] == p.payload
    # The header checksum verifies: the header summed with its checksum folds to zero.
    assert headers.checksum(raw[:ihl]) == 0
    assert headers.v4_addresses(raw) == (int(p.src), int(p.dst))


@FAST
@given(ipv4_values, st.binary(max_size=64), st.binary(max_size=16))
def test_ipv4_readers_at_an_offset(p, before, after):
    buf = bytearray(before + p.emit() + after)
    assert headers.v4_addresses(buf, len(before)) == (int(p.src), int(p.dst))
    assert headers.v4_addresses(memoryview(buf), len(before)) == (int(p.src), int(p.dst))
    # Link padding behind the total length is not payload.
    assert IPv4.parse(buf[len(before):]) == p


def test_ipv4_fragment_flags_and_offset():
    p = IPv4(V4("10.0.0.1"), V4("10.0.0.2"), 17, b"x" * 8, dont_fragment=False, more_fragments=True,
             frag_offset=0x1FFF)
    raw = p.emit()
    assert raw[6:8] == b"\x3f\xff"
    q = IPv4.parse(raw)
    assert (q.dont_fragment, q.more_fragments, q.frag_offset) == (False, True, 0x1FFF)
    default = IPv4(V4("10.0.0.1"), V4("10.0.0.2"), 6).emit()
    assert default[6:8] == b"\x40\x00"  # DF set by default, no fragment offset


def test_ipv4_emit_rejects_unaligned_options():
    with pytest.raises(HeaderError, match="multiple of 4"):
        IPv4(V4("10.0.0.1"), V4("10.0.0.2"), 17, options=b"\x01\x01\x01").emit()


def test_ipv4_emit_rejects_options_longer_than_40_bytes():
    p = IPv4(V4("10.0.0.1"), V4("10.0.0.2"), 17, options=bytes(44))
    try:
        raw = p.emit()
    except HeaderError:
        return
    assert IPv4.parse(raw) == p  # whatever emit accepts must round trip


def test_ipv4_known_bytes():
    raw = headers.ipv4_packet("10.0.1.4", "10.0.1.10", ICMP(8, 0, b"\x00\x01\x00\x02"), ident=0x1234)
    head = bytes.fromhex("4500001c" "12344000" "40010000" "0a000104" "0a00010a")
    csum = ref_checksum(head)
    assert raw[:20] == head[:10] + struct.pack("!H", csum) + head[12:]
    assert raw[20:] == bytes.fromhex("0800") + struct.pack("!H", ref_checksum(bytes.fromhex("0800000000010002"))) \
        + bytes.fromhex("00010002")


@pytest.mark.parametrize("raw, message", [
    (b"", "needs 20 bytes"),
    (bytes.fromhex("45000014") + bytes(15), "needs 20 bytes"),
    (bytes.fromhex("65000014") + bytes(16), "version 6"),
    (bytes.fromhex("05000014") + bytes(16), "version 0"),
    (bytes.fromhex("44000014") + bytes(16), "inconsistent"),  # IHL 16 bytes < 20
    (bytes.fromhex("46000014") + bytes(20), "inconsistent"),  # IHL 24 > total length 20
    (bytes.fromhex("45000015") + bytes(16), "inconsistent"),  # total length 21 > 20 bytes
    (bytes.fromhex("4f00003c") + bytes(40), "inconsistent"),  # IHL 60 but only 44 bytes
])
def test_ipv4_parse_malformed(raw, message):
    with pytest.raises(HeaderError, match=message):
        IPv4.parse(raw)
    assert issubclass(HeaderError, ValueError)


def test_ipv4_parse_minimum_and_maximum_ihl():
    hdr = bytearray(60)
    hdr[0], hdr[2:4] = 0x4F, struct.pack("!H", 60)
    p = IPv4.parse(hdr)
    assert p.options == bytes(40) and p.payload == b""
    hdr = bytearray(20)
    hdr[0], hdr[2:4] = 0x45, struct.pack("!H", 20)
    assert IPv4.parse(hdr).options == b""


# --- IPv6 -------------------------------------------------------------------------------------------

@FAST
@given(ipv6_values)
def test_ipv6_round_trip(p):
    raw = p.emit()
    assert IPv6.parse(raw) == p
    assert IPv6.parse(bytearray(raw) + b"pad") == p  # bytes past the payload length are not payload
    assert len(raw) == 40 + len(p.payload)
    vtf = struct.unpack_from("!I", raw)[0]
    assert vtf >> 28 == 6
    assert (vtf >> 20) & 0xFF == p.traffic_class
    assert vtf & 0xFFFFF == p.flow_label
    assert struct.unpack_from("!HBB", raw, 4) == (len(p.payload), p.next_header, p.hop_limit)
    assert raw[8:24] == p.src.packed and raw[24:40] == p.dst.packed
    assert headers.v6_addresses(raw) == (int(p.src), int(p.dst))
    assert headers.v6_addresses(b"\xee" * 7 + raw, 7) == (int(p.src), int(p.dst))


@pytest.mark.parametrize("raw, message", [
    (bytes(39), "needs 40 bytes"),
    (bytes([0x45]) + bytes(39), "version 4"),
    (bytes([0x60, 0, 0, 0, 0, 1]) + bytes(34), "past the end"),
    (bytes([0x60, 0, 0, 0, 0, 8]) + bytes(34) + bytes(7), "past the end"),
])
def test_ipv6_parse_malformed(raw, message):
    with pytest.raises(HeaderError, match=message):
        IPv6.parse(raw)


# --- UDP --------------------------------------------------------------------------------------------

@FAST
@given(udp_values, st.one_of(st.tuples(v4_addrs, v4_addrs), st.tuples(v6_addrs, v6_addrs)))
def test_udp_round_trip_and_checksum(u, addrs):
    s, d = (a.packed for a in addrs)
    raw = u.emit(s, d)
    assert UDP.parse(raw) == u
    assert len(raw) == 8 + len(u.payload)
    assert struct.unpack_from("!HHH", raw) == (u.sport, u.dport, len(raw))
    assert headers.ports(raw, 0) == (u.sport, u.dport)
    csum = struct.unpack_from("!H", raw, 6)[0]
    assert csum != 0  # 0 means "no checksum" in UDP over IPv4
    assert headers.checksum(raw, headers.pseudo_header_sum(s, d, headers.PROTO_UDP, len(raw))) == 0


def test_udp_checksum_zero_is_sent_as_ffff():
    s, d = V4("10.0.0.1").packed, V4("10.0.0.2").packed
    # Pick the last payload word so the one's complement sum is 0xFFFF: the computed checksum is 0.
    base = UDP(1000, 2000, b"\x00\x00")
    length = 10
    folded = ~headers.checksum(struct.pack("!HHHH", 1000, 2000, length, 0) + b"\x00\x00",
                               headers.pseudo_header_sum(s, d, 17, length)) & 0xFFFF
    word = 0xFFFF - folded
    u = UDP(1000, 2000, struct.pack("!H", word))
    raw = u.emit(s, d)
    assert raw[6:8] == b"\xff\xff"
    assert headers.checksum(raw, headers.pseudo_header_sum(s, d, 17, length)) == 0
    assert UDP.parse(raw) == u
    assert base.emit(s, d)[6:8] != b"\x00\x00"


@pytest.mark.parametrize("raw", [
    bytes(7),
    struct.pack("!HHHH", 1, 2, 7, 0),  # length below the header
    struct.pack("!HHHH", 1, 2, 9, 0),  # length past the end
])
def test_udp_parse_malformed(raw):
    with pytest.raises(HeaderError):
        UDP.parse(raw)


def test_udp_parse_ignores_bytes_past_length():
    raw = struct.pack("!HHHH", 1, 2, 10, 0) + b"ab" + b"trailing"
    assert UDP.parse(raw) == UDP(1, 2, b"ab")


# --- TCP --------------------------------------------------------------------------------------------

@FAST
@given(tcp_values, st.one_of(st.tuples(v4_addrs, v4_addrs), st.tuples(v6_addrs, v6_addrs)))
def test_tcp_round_trip_and_checksum(t, addrs):
    s, d = (a.packed for a in addrs)
    raw = t.emit(s, d)
    assert TCP.parse(raw) == t
    hlen = 20 + len(t.options)
    assert len(raw) == hlen + len(t.payload)
    assert raw[12] >> 4 == hlen // 4
    assert struct.unpack_from("!HHIIHH", raw) == (t.sport, t.dport, t.seq, t.ack, (hlen // 4) << 12 | t.flags,
                                                  t.window)
    assert raw[18:20] == b"\x00\x00"  # urgent pointer
    assert raw[20:hlen] == t.options
    assert headers.ports(raw, 0) == (t.sport, t.dport)
    assert headers.checksum(raw, headers.pseudo_header_sum(s, d, headers.PROTO_TCP, len(raw))) == 0


def test_tcp_flags_constants():
    assert (TCP.FIN, TCP.SYN, TCP.RST, TCP.PSH, TCP.ACK, TCP.URG) == (1, 2, 4, 8, 16, 32)
    raw = TCP(1, 2, flags=TCP.SYN | TCP.ACK).emit(bytes(4), bytes(4))
    assert raw[13] == 0x12
    assert TCP.parse(raw).flags == 0x12


def test_tcp_emit_rejects_unaligned_options():
    with pytest.raises(HeaderError, match="multiple of 4"):
        TCP(1, 2, options=b"\x02\x04\x05").emit(bytes(4), bytes(4))


def test_tcp_emit_rejects_options_longer_than_40_bytes():
    with pytest.raises(HeaderError):
        TCP(1, 2, options=bytes(44)).emit(bytes(4), bytes(4))


@pytest.mark.parametrize("raw", [
    bytes(19),
    struct.pack("!HHIIHH", 1, 2, 0, 0, 4 << 12, 0) + bytes(4),  # data offset 16 < 20
    struct.pack("!HHIIHH", 1, 2, 0, 0, 6 << 12, 0) + bytes(4),  # data offset 24 > 20 bytes
])
def test_tcp_parse_malformed(raw):
    with pytest.raises(HeaderError):
        TCP.parse(raw)


# --- ICMP -------------------------------------------------------------------------------------------

@FAST
@given(icmp_values)
def test_icmp_v4_round_trip_and_checksum(m):
    raw = m.emit()
    assert ICMP.parse(raw) == m
    assert (raw[0], raw[1]) == (m.type, m.code)
    assert headers.checksum(raw) == 0


@FAST
@given(icmp_values, v6_addrs, v6_addrs)
def test_icmpv6_round_trip_and_checksum(m, s, d):
    raw = m.emit((s.packed, d.packed))
    assert ICMP.parse(raw) == m
    assert headers.checksum(raw, headers.pseudo_header_sum(s.packed, d.packed, headers.PROTO_ICMPV6, len(raw))) == 0


def test_icmp_parse_short():
    with pytest.raises(HeaderError):
        ICMP.parse(b"\x08\x00\x00")
    assert ICMP.parse(b"\x08\x00\x00\x00") == ICMP(8, 0, b"")


# --- whole packets ----------------------------------------------------------------------------------

@FAST
@given(v4_addrs, v4_addrs, st.one_of(udp_values, tcp_values, icmp_values), words(10))
def test_ipv4_packet_builder(s, d, l4, options):
    raw = headers.ipv4_packet(str(s), str(d), l4, options=options)
    ip = IPv4.parse(raw)
    assert (ip.src, ip.dst, ip.options) == (s, d, options)
    ihl = 20 + len(options)
    assert headers.v4_addresses(raw, 0) == (int(s), int(d))
    if isinstance(l4, ICMP):
        assert ip.proto == headers.PROTO_ICMP
        assert ICMP.parse(ip.payload) == l4
        assert headers.checksum(ip.payload) == 0
    else:
        proto = headers.PROTO_TCP if isinstance(l4, TCP) else headers.PROTO_UDP
        assert ip.proto == proto
        assert type(l4).parse(ip.payload) == l4
        assert headers.ports(raw, ihl) == (l4.sport, l4.dport)
        assert headers.checksum(ip.payload, headers.pseudo_header_sum(s.packed, d.packed, proto, len(ip.payload))) == 0


@FAST
@given(v6_addrs, v6_addrs, st.one_of(udp_values, tcp_values, icmp_values))
def test_ipv6_packet_builder(s, d, l4):
    raw = headers.ipv6_packet(str(s), str(d), l4, hop_limit=7)
    ip = IPv6.parse(raw)
    assert (ip.src, ip.dst, ip.hop_limit) == (s, d, 7)
    assert headers.v6_addresses(raw) == (int(s), int(d))
    proto = {ICMP: headers.PROTO_ICMPV6, TCP: headers.PROTO_TCP, UDP: headers.PROTO_UDP}[type(l4)]
    assert ip.next_header == proto
    assert type(l4).parse(ip.payload) == l4
    assert headers.checksum(ip.payload, headers.pseudo_header_sum(s.packed, d.packed, proto, len(ip.payload))) == 0
    if not isinstance(l4, ICMP):
        assert headers.ports(raw, 40) == (l4.sport, l4.dport)


def test_packet_builders_with_raw_payload():
    raw = headers.ipv4_packet("10.0.0.1", "10.0.0.2", b"\x01\x02\x03\x04", proto=47)
    assert IPv4.parse(raw) == IPv4(V4("10.0.0.1"), V4("10.0.0.2"), 47, b"\x01\x02\x03\x04")
    raw6 = headers.ipv6_packet("::1", "::2", b"xyz", next_header=59)
    assert IPv6.parse(raw6) == IPv6(V6("::1"), V6("::2"), 59, b"xyz")


# --- malformed input never raises anything but HeaderError ------------------------------------------

def _parse_all(data: bytes):
    for parser in (IPv4.parse, IPv6.parse, UDP.parse, TCP.parse, ICMP.parse):
        try:
            value = parser(data)
        except HeaderError:
            continue
        # Whatever is accepted is self-consistent and no longer than its input.
        if parser is IPv4.parse:
            assert 20 + len(value.options) + len(value.payload) <= len(data)
        elif parser is IPv6.parse:
            assert 40 + len(value.payload) <= len(data)
        elif parser is TCP.parse:
            assert 20 + len(value.options) + len(value.payload) == len(data)
        elif parser is UDP.parse:
            assert 8 + len(value.payload) <= len(data)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_parse_or_raise_header_error(data):
    _parse_all(data)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x44, 0x50]), st.integers(0, 120), st.binary(max_size=120))
def test_plausible_headers_parse_or_raise_header_error(first, total, rest):
    # Steer towards the length checks: a real-looking version nibble and a total length near the size.
    data = bytes([first, 0]) + struct.pack("!H", total) + rest
    _parse_all(data)
    _parse_all(data[:total])


@settings(max_examples=100, deadline=None)
@given(ipv4_values, st.data())
def test_truncated_or_mutated_packets_parse_or_raise(p, data):
    raw = bytearray(p.emit())
    cut = data.draw(st.integers(0, len(raw)))
    _parse_all(bytes(raw[:cut]))
    if raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
        _parse_all(bytes(raw))
    if cut < len(raw):
        with pytest.raises(HeaderError):
            IPv4.parse(p.emit()[:cut])

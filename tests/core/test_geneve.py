"""vswitch.geneve: the value type round trips, the fixed layout we emit, and the hot-path decoder."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vswitch import geneve
from vswitch.drops import Drop
from vswitch.geneve import Geneve, GeneveError, Option
from vswitch.headers import ICMP, UDP, ipv4_packet, ipv6_packet

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GENEVE_DROPS = {Drop.MALFORMED_GENEVE, Drop.GENEVE_OAM, Drop.UNKNOWN_CRITICAL_OPTION}
PACKET = ipv4_packet("10.0.1.4", "10.0.1.10", UDP(1234, 80, b"hello"))
VNET = bytes([1, 1, 54, 0, 0xA8, 5, 34, 0, 16, 0])  # NEEDS_CSUM, TCPV4, hdr_len 54, gso_size 1448, ...


def ver(code: int) -> Drop:
    return Drop(-1 - code)


@st.composite
def option_lists(draw, classes=st.integers(0, 0xFFFF), types=st.integers(0, 0xFF)):
    """Options whose encoding fits the 252-byte limit; each data length a multiple of 4, at most 124."""
    budget, opts = 252, []
    for _ in range(draw(st.integers(0, 8))):
        if budget < 4:
            break
        words = draw(st.integers(0, min(31, (budget - 4) // 4)))
        data = draw(st.binary(min_size=4 * words, max_size=4 * words))
        opts.append(Option(draw(classes), draw(types), data))
        budget -= 4 + 4 * words
    return tuple(opts)


geneve_values = st.builds(
    Geneve, vni=st.integers(0, geneve.MAX_VNI), protocol=st.integers(0, 0xFFFF), options=option_lists(),
    payload=st.binary(max_size=100), oam=st.booleans(),
)


def understood(o: Option) -> bool:
    """Options decode_into interprets (rather than skipping or dropping for)."""
    return o.cls == geneve.OPTION_CLASS and (
        (o.type == geneve.OPT_SOURCE_ENI and len(o.data) == 8)
        or (o.type == geneve.OPT_OFFLOAD and len(o.data) >= geneve.VNET_HDR_LEN))


# --- constants and the value type -------------------------------------------------------------------

def test_layout_constants():
    assert (geneve.UDP_PORT, geneve.PROTO_IPV4, geneve.PROTO_IPV6) == (6081, 0x0800, 0x86DD)
    assert geneve.INNER_OFFSET_PLAIN == 20
    assert geneve.INNER_OFFSET_OFFLOAD == 36
    # [20:24] OFFLOAD option header, [24:26] padding, [26:36] virtio header right before the packet.
    assert geneve.VNET_OFFSET == 26
    assert geneve.VNET_OFFSET + geneve.VNET_HDR_LEN == geneve.INNER_OFFSET_OFFLOAD
    assert 0xFF00 <= geneve.OPTION_CLASS <= 0xFFFF
    assert geneve.OPT_OFFLOAD & geneve.CRITICAL_BIT and not geneve.OPT_SOURCE_ENI & geneve.CRITICAL_BIT


@FAST
@given(geneve_values)
def test_round_trip(g):
    raw = g.emit()
    assert Geneve.parse(raw) == g
    assert Geneve.parse(bytearray(raw)) == g
    opt_len = sum(4 + len(o.data) for o in g.options)
    assert len(raw) == 8 + opt_len + len(g.payload)
    assert raw[0] == opt_len // 4  # version 0 in the top two bits
    assert raw[1] == (0x80 if g.oam else 0) | (0x40 if g.critical else 0)
    assert struct.unpack_from("!H", raw, 2)[0] == g.protocol
    assert int.from_bytes(raw[4:7], "big") == g.vni and raw[7] == 0
    assert g.critical == any(o.type & 0x80 for o in g.options)
    assert raw[8 + opt_len:] == g.payload


def test_option_and_header_bytes():
    g = Geneve(0xABCDEF, geneve.PROTO_IPV4, (Option(0x0102, 0x83, b"abcd"),), b"P")
    raw = g.emit()
    assert raw == bytes([2, 0x40]) + b"\x08\x00" + b"\xab\xcd\xef\x00" + b"\x01\x02\x83\x01abcd" + b"P"
    assert g.critical and Option(0x0102, 0x83, b"").critical and not Option(0x0102, 0x03, b"").critical


def test_source_eni_and_vnet_header_properties():
    g = Geneve(7, geneve.PROTO_IPV4, (geneve.source_eni_option(0x0123456789ABCDEF), geneve.offload_option(VNET)))
    assert g.source_eni == 0x0123456789ABCDEF
    assert g.vnet_header == VNET
    assert g.critical  # the OFFLOAD option is critical
    assert geneve.offload_option(VNET).data == b"\x00\x00" + VNET  # padding first, virtio header last
    assert geneve.offload_option(VNET + b"extra").data == b"\x00\x00" + VNET
    longer = Geneve(7, geneve.PROTO_IPV4, (Option(geneve.OPTION_CLASS, geneve.OPT_OFFLOAD, bytes(6) + VNET),))
    assert longer.vnet_header == VNET  # always the last 10 bytes of the option
    parsed = Geneve.parse(g.emit())
    assert (parsed.source_eni, parsed.vnet_header) == (0x0123456789ABCDEF, VNET)
    plain = Geneve(7, geneve.PROTO_IPV4)
    assert plain.source_eni is None and plain.vnet_header is None and not plain.critical
    odd = Geneve(7, geneve.PROTO_IPV4, (Option(geneve.OPTION_CLASS, geneve.OPT_SOURCE_ENI, bytes(4)),))
    assert odd.source_eni is None  # wrong length: not an ENI
    assert odd.option(geneve.OPTION_CLASS, geneve.OPT_SOURCE_ENI) is not None
    assert odd.option(geneve.OPTION_CLASS, geneve.OPT_OFFLOAD) is None


@pytest.mark.parametrize("g, message", [
    (Geneve(-1, 0x0800), "VNI"),
    (Geneve(geneve.MAX_VNI + 1, 0x0800), "VNI"),
    (Geneve(1, 0x0800, (Option(1, 1, b"abc"),)), "multiple of 4"),
    (Geneve(1, 0x0800, (Option(1, 1, bytes(128)),)), "at most 124"),
    (Geneve(1, 0x0800, (Option(1, 1, bytes(124)),) * 2), "252"),  # 2 * 128 = 256 bytes
])
def test_emit_rejects(g, message):
    with pytest.raises(GeneveError, match=message):
        g.emit()


def test_emit_limits_are_inclusive():
    top = Geneve(geneve.MAX_VNI, 0x0800, (Option(1, 1, bytes(124)), Option(2, 2, bytes(120))))  # 252 bytes
    raw = top.emit()
    assert raw[0] == 63
    assert Geneve.parse(raw) == top
    assert Geneve.parse(Geneve(0, 0).emit()) == Geneve(0, 0)


@pytest.mark.parametrize("raw, message", [
    (bytes(7), "8 bytes"),
    (bytes([0x40]) + bytes(7), "version 1"),
    (bytes([0xC0]) + bytes(7), "version 3"),
    (bytes([0x01]) + bytes(7), "past the end"),
    (bytes([0x01]) + bytes(7) + b"\xff\x5c\x01\x02", "past the options length"),
])
def test_parse_rejects(raw, message):
    with pytest.raises(GeneveError, match=message):
        Geneve.parse(raw)


# --- the fixed layout and decode_into ---------------------------------------------------------------

def decode(buf, n=None):
    out = [None, None, None, None]
    r = geneve.decode_into(buf, len(buf) if n is None else n, out)
    return r, out


@FAST
@given(st.integers(0, geneve.MAX_VNI), st.integers(0, (1 << 64) - 1),
       st.sampled_from([geneve.PROTO_IPV4, geneve.PROTO_IPV6]), st.binary(min_size=10, max_size=10),
       st.binary(max_size=60))
def test_prefix_offload_layout(vni, eni, proto, vnet, packet):
    head = geneve.prefix(vni, eni, True, proto)
    assert len(head) == geneve.VNET_OFFSET
    assert head[1] & 0x40  # the OFFLOAD option is critical: so is the packet
    assert head[-2:] == b"\x00\x00"  # the padding is part of the constant prefix
    assert head == Geneve(vni, proto, (geneve.source_eni_option(eni), geneve.offload_option(vnet))).emit()[:26]
    buf = bytearray(head + vnet + packet)  # one contiguous read fills virtio header and packet
    r, out = decode(buf)
    assert r == geneve.INNER_OFFSET_OFFLOAD
    assert out == [vni, proto, eni, geneve.VNET_OFFSET]
    assert bytes(buf[out[geneve.DECODE_VNET]:out[geneve.DECODE_VNET] + 10]) == vnet
    assert bytes(buf[r:]) == packet
    g = Geneve.parse(buf)
    assert (g.vni, g.protocol, g.source_eni, g.vnet_header, g.payload) == (vni, proto, eni, vnet, packet)


@FAST
@given(st.integers(0, geneve.MAX_VNI), st.integers(0, (1 << 64) - 1),
       st.sampled_from([geneve.PROTO_IPV4, geneve.PROTO_IPV6]), st.binary(max_size=60))
def test_prefix_plain_layout(vni, eni, proto, packet):
    head = geneve.prefix(vni, eni, False, proto)
    assert len(head) == geneve.INNER_OFFSET_PLAIN
    assert head == Geneve(vni, proto, (geneve.source_eni_option(eni),)).emit()
    assert not head[1] & 0xC0
    buf = memoryview(bytearray(head + packet))
    r, out = decode(buf)
    assert r == geneve.INNER_OFFSET_PLAIN
    assert out == [vni, proto, eni, -1]
    assert bytes(buf[r:]) == packet


def test_prefix_default_protocol_is_ipv4():
    assert geneve.prefix(1, 2, False)[2:4] == b"\x08\x00"


def test_decode_reads_only_n_bytes_of_a_larger_buffer():
    full = geneve.prefix(5, 9, False) + PACKET
    buf = bytearray(full) + bytearray(1000)
    assert decode(buf, len(full)) == (20, [5, 0x0800, 9, -1])
    # The option area claims bytes that lie past n even though the buffer has them.
    assert decode(buf, 19)[0] == -1 - Drop.MALFORMED_GENEVE


def test_decode_without_options():
    raw = Geneve(3, geneve.PROTO_IPV6, (), b"inner").emit()
    assert decode(raw) == (8, [3, geneve.PROTO_IPV6, -1, -1])


@pytest.mark.parametrize("n", range(8))
def test_decode_short(n):
    raw = geneve.prefix(1, 1, False)
    assert ver(decode(raw[:n])[0]) is Drop.MALFORMED_GENEVE
    assert ver(decode(raw, n)[0]) is Drop.MALFORMED_GENEVE


@pytest.mark.parametrize("version", [1, 2, 3])
def test_decode_bad_version(version):
    raw = bytearray(geneve.prefix(1, 1, False) + PACKET)
    raw[0] |= version << 6
    assert ver(decode(raw)[0]) is Drop.MALFORMED_GENEVE


def test_decode_options_past_the_end():
    raw = bytearray(Geneve(1, 0x0800, (geneve.source_eni_option(1),)).emit())  # exactly 20 bytes
    assert decode(raw)[0] == 20
    raw[0] = 4  # 16 bytes of options claimed, 12 present
    assert ver(decode(raw)[0]) is Drop.MALFORMED_GENEVE
    raw[0] = 63
    assert ver(decode(raw + bytes(200))[0]) is Drop.MALFORMED_GENEVE


def test_decode_oam():
    raw = Geneve(1, 0x0800, (geneve.source_eni_option(1),), PACKET, oam=True).emit()
    assert ver(decode(raw)[0]) is Drop.GENEVE_OAM


@pytest.mark.parametrize("option", [
    Option(0x0101, 0x80, b""),  # someone else's critical option
    Option(0x0101, 0xFF, bytes(8)),
    Option(geneve.OPTION_CLASS, 0x83, bytes(4)),  # our class, a critical type we do not know
    Option(geneve.OPTION_CLASS, geneve.OPT_OFFLOAD, bytes(8)),  # OFFLOAD too short to hold a virtio header
])
def test_decode_unknown_critical_option(option):
    raw = Geneve(1, 0x0800, (geneve.source_eni_option(1), option), PACKET).emit()
    assert ver(decode(raw)[0]) is Drop.UNKNOWN_CRITICAL_OPTION
    # Even with the C flag cleared by a sender that forgot it: the option itself is critical.
    raw = bytearray(raw)
    raw[1] &= ~0x40
    assert ver(decode(raw)[0]) is Drop.UNKNOWN_CRITICAL_OPTION


def test_decode_truncated_option():
    # Options length 8 bytes, but the option header claims 8 bytes of data (12 in all).
    raw = bytes([2, 0]) + b"\x08\x00" + b"\x00\x00\x01\x00" + b"\xff\x5c\x01\x02" + bytes(4) + bytes(20)
    assert ver(decode(raw)[0]) is Drop.MALFORMED_GENEVE
    with pytest.raises(GeneveError):
        Geneve.parse(raw)


@pytest.mark.parametrize("option", [
    Option(0x0101, 0x01, b""),
    Option(0x0101, 0x7F, bytes(124)),
    Option(geneve.OPTION_CLASS, 0x02, bytes(8)),  # our class, unknown non-critical type
    Option(geneve.OPTION_CLASS, geneve.OPT_SOURCE_ENI, bytes(4)),  # wrong-length ENI: ignored
])
def test_decode_skips_unknown_non_critical_options(option):
    for opts in ((option, geneve.source_eni_option(77)), (geneve.source_eni_option(77), option)):
        g = Geneve(9, 0x0800, opts, PACKET)
        raw = g.emit()
        r, out = decode(raw)
        assert r == len(raw) - len(PACKET)
        assert out == [9, 0x0800, 77, -1]
    r, out = decode(Geneve(9, 0x0800, (option,), PACKET).emit())
    assert r > 0 and out[geneve.DECODE_ENI] == -1


def test_decode_offload_option_anywhere():
    g = Geneve(2, 0x0800, (Option(0x0101, 0x05, bytes(4)), geneve.offload_option(VNET),
                           geneve.source_eni_option(3)), PACKET)
    raw = g.emit()
    r, out = decode(raw)
    assert out == [2, 0x0800, 3, 8 + 8 + 4 + 2]
    assert raw[out[3]:out[3] + 10] == VNET
    assert raw[r:] == PACKET
    # A longer OFFLOAD option: the virtio header is its last 10 bytes.
    g = Geneve(2, 0x0800, (Option(geneve.OPTION_CLASS, geneve.OPT_OFFLOAD, b"\xee" * 10 + VNET),), PACKET)
    raw = g.emit()
    r, out = decode(raw)
    assert out[3] == 8 + 4 + 10 and raw[out[3]:out[3] + 10] == VNET and r == 32


def test_decode_ipv6_inner():
    pkt = ipv6_packet("fd00::1", "fd00::2", ICMP(128, 0, b"\x00\x01\x00\x01"))
    raw = geneve.prefix(4, 5, False, geneve.PROTO_IPV6) + pkt
    assert decode(raw) == (20, [4, geneve.PROTO_IPV6, 5, -1])


# --- properties over arbitrary input ----------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=80), st.binary(max_size=20))
def test_random_bytes_never_raise(data, slack):
    for buf, n in ((data, len(data)), (bytearray(data + slack), len(data)), (memoryview(data), len(data))):
        out = [None] * 4
        r = geneve.decode_into(buf, n, out)
        assert isinstance(r, int)
        if r >= 0:
            assert 8 <= r <= n and r % 4 == 0
            assert 0 <= out[geneve.DECODE_VNI] <= geneve.MAX_VNI
            v = out[geneve.DECODE_VNET]
            assert v == -1 or (8 + 4 + 2 <= v and v + geneve.VNET_HDR_LEN <= r)
        else:
            assert Drop(-1 - r) in GENEVE_DROPS


@FUZZ
@given(st.sampled_from([0, 1, 2, 3, 5, 0x3F, 0x80]), st.sampled_from([0, 0x40, 0x80]), st.binary(max_size=100))
def test_plausible_headers_never_raise(first, flags, rest):
    data = bytes([first, flags]) + rest
    r = geneve.decode_into(data, len(data), [0] * 4)
    assert r >= 0 or Drop(-1 - r) in GENEVE_DROPS


def check_agreement(raw: bytes):
    out = [None] * 4
    r = geneve.decode_into(raw, len(raw), out)
    try:
        g = Geneve.parse(raw)
    except GeneveError:
        assert r < 0 and Drop(-1 - r) in (Drop.MALFORMED_GENEVE, Drop.GENEVE_OAM)
        return
    if g.oam:
        assert ver(r) is Drop.GENEVE_OAM
    elif any(o.critical and not understood(o) for o in g.options):
        assert ver(r) is Drop.UNKNOWN_CRITICAL_OPTION
    else:
        assert r == len(raw) - len(g.payload)
        assert out[geneve.DECODE_VNI] == g.vni
        assert out[geneve.DECODE_PROTO] == g.protocol
        enis = [o for o in g.options if o.cls == geneve.OPTION_CLASS and o.type == geneve.OPT_SOURCE_ENI]
        if len(enis) == 1:
            assert out[geneve.DECODE_ENI] == (g.source_eni if g.source_eni is not None else -1)
        elif not enis:
            assert out[geneve.DECODE_ENI] == -1
        offl = [o for o in g.options if o.cls == geneve.OPTION_CLASS and o.type == geneve.OPT_OFFLOAD]
        if len(offl) == 1:
            v = out[geneve.DECODE_VNET]
            assert raw[v:v + 10] == g.vnet_header
        elif not offl:
            assert out[geneve.DECODE_VNET] == -1


@FUZZ
@given(st.binary(max_size=80))
def test_decode_agrees_with_parse_on_random_bytes(raw):
    check_agreement(raw)


ours = st.sampled_from([geneve.OPTION_CLASS, 0x0101])
our_types = st.sampled_from([geneve.OPT_SOURCE_ENI, geneve.OPT_OFFLOAD, 0x02, 0x83, 0x7F, 0xFF])


@FUZZ
@given(st.builds(Geneve, vni=st.integers(0, geneve.MAX_VNI), protocol=st.integers(0, 0xFFFF),
                 options=option_lists(ours, our_types), payload=st.binary(max_size=40), oam=st.booleans()))
def test_decode_agrees_with_parse_on_built_packets(g):
    raw = g.emit()
    check_agreement(raw)
    if not g.oam and not any(o.critical and not understood(o) for o in g.options):
        assert geneve.decode_into(raw, len(raw), [0] * 4) == len(raw) - len(g.payload)

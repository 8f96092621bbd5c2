"""vswitch.conntrack for IPv6 (dual stack): parsing (RFC 8200 extension headers, ICMPv6 of RFC 4443),
flow keys that never collide with IPv4 ones, TCP/UDP/ICMPv6 tracking, ICMPv6 errors related to flows,
and the IPv6 wire fast path against the parsed one.

Packets are built with ``vswitch.headers`` and go through the tracker as the firewall sends them: the
wire fast path first (``lookup_wire``), the parsed path (``packet_info`` + ``lookup``) when it has no
answer. Time is virtual (``now``).
"""

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vswitch.addresses import V6_TAG, key as K
from vswitch.conntrack import (
    ConnTrack, FlowKey, PacketInfo, State, Verdict, _flow_key, _key, packet_info,
)
from vswitch.headers import ICMP, IPv6, TCP, UDP, ipv4_packet

from test_conntrack import damaged

EST, NEW, INVALID = Verdict.ESTABLISHED, Verdict.NEW, Verdict.INVALID
SYN, ACK, FIN, RST, PSH = TCP.SYN, TCP.ACK, TCP.FIN, TCP.RST, TCP.PSH
M32 = 0xFFFFFFFF
EPS = 1e-3
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LOCAL, REMOTE, ROUTER, OTHER = "2001:db8:0:1::10", "2001:db8:0:2::20", "2001:db8:0:2::1", "2001:db8:0:1::11"
L, R, RT = K(LOCAL), K(REMOTE), K(ROUTER)
WS7 = b"\x02\x04\x05\xb4\x01\x03\x03\x07"  # MSS 1460, NOP, window scale 7


# --- building packets ----------------------------------------------------------------------------

def hbh(units=0):
    """A hop-by-hop options header (type 0) of 8 * (units + 1) bytes: PadN only."""
    return 0, bytes([units, 1, 4 + 8 * units]) + bytes(4 + 8 * units)


def dstopts(units=0):
    return 60, hbh(units)[1]


ROUTING = (43, bytes([0, 4, 0]) + bytes(4))  # routing header, segments left 0


def frag(offset, more, ident=0x1234):
    """A fragment header (type 44): ``offset`` in 8-byte units, ``more``: the M flag."""
    return 44, b"\x00" + struct.pack("!HI", offset << 3 | more, ident)


def v6(src, dst, l4, headers=(), **kw) -> bytes:
    """An IPv6 packet around a TCP/UDP/ICMP(v6) value or raw bytes (``proto=``), with the extension
    headers ``headers`` ((type, body without its next-header byte), outermost first)."""
    s, d = ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst)
    if isinstance(l4, (TCP, UDP)):
        proto, body = (6 if isinstance(l4, TCP) else 17), l4.emit(s.packed, d.packed)
    elif isinstance(l4, ICMP):
        proto, body = 58, l4.emit((s.packed, d.packed))
    else:
        proto, body = kw.pop("proto"), bytes(l4)
    for kind, ext in reversed(headers):
        body, proto = bytes([proto]) + ext + body, kind
    return IPv6(s, d, proto, body, **kw).emit()


def parse(raw: bytes) -> PacketInfo | None:
    return packet_info(raw, 0, len(raw))


def through(ct, raw: bytes, out: bool, now: float = 0.0, create: bool = False) -> Verdict:
    """As the firewall does: the wire fast path, else parse and ``lookup``; ``create`` a NEW flow."""
    buf = bytearray(raw)
    verdict = ct.lookup_wire(buf, 0, len(buf), out, now)
    if verdict is None:
        p = packet_info(buf, 0, len(buf))
        assert p is not None, raw.hex()
        verdict = ct.lookup(p, out, now)
        if verdict == NEW and create:
            assert ct.create(p, out, now)
    return verdict


def echo(out, icmp_type, ident, seq=1, remote=REMOTE):
    src, dst = (LOCAL, remote) if out else (remote, LOCAL)
    return v6(src, dst, ICMP(icmp_type, 0, struct.pack("!HH", ident, seq) + b"ping"))


def udp(out, lport=5000, rport=53, payload=b"q", remote=REMOTE):
    return v6(LOCAL, remote, UDP(lport, rport, payload)) if out else v6(remote, LOCAL, UDP(rport, lport, payload))


def icmp6_error(src, dst, quoted: bytes, icmp_type=2, code=0, body=1280) -> bytes:
    """An ICMPv6 error (packet too big by default, MTU ``body``) quoting ``quoted``."""
    return v6(src, dst, ICMP(icmp_type, code, struct.pack("!I", body) + quoted[:1232]))


def states(ct):
    return sorted(e.state for e in ct.entries())


class Conversation:
    """A TCP connection LOCAL:lport ↔ REMOTE:rport whose endpoints behave (as in test_conntrack),
    every packet built on the wire and sent ``through`` the tracker."""

    def __init__(self, ct, isn_local=1000, isn_remote=5000, lport=40000, rport=443):
        self.ct = ct
        self.nxt = {True: isn_local & M32, False: isn_remote & M32}
        self.ports = lport, rport

    def raw(self, out, flags, n=0, seq=None, ack=None, win=65535, options=b"", headers=()):
        seq = self.nxt[out] if seq is None else seq
        ack = self.nxt[not out] if ack is None else ack
        lport, rport = self.ports
        seg = TCP(lport, rport, seq & M32, ack & M32, flags, win, b"d" * n, options) if out else \
            TCP(rport, lport, seq & M32, ack & M32, flags, win, b"d" * n, options)
        return v6(LOCAL, REMOTE, seg, headers) if out else v6(REMOTE, LOCAL, seg, headers)

    def send(self, out, flags, n=0, now=0.0, **kw):
        raw = self.raw(out, flags, n, **kw)
        v = through(self.ct, raw, out, now)
        if v == EST and kw.get("seq") in (None, self.nxt[out]):
            self.nxt[out] = (self.nxt[out] + n + bool(flags & SYN) + bool(flags & FIN)) & M32
        return v

    def open(self, out=True, now=0.0, wscale=True):
        syn = self.raw(out, SYN, options=WS7 if wscale else b"")
        assert through(self.ct, syn, out, now, create=True) == NEW
        self.nxt[out] = (self.nxt[out] + 1) & M32
        assert self.send(not out, SYN | ACK, now=now, options=WS7 if wscale else b"") == EST
        assert self.send(out, ACK, now=now) == EST
        return self


# --- parsing -------------------------------------------------------------------------------------

def test_packet_info_tcp_udp_icmpv6_other():
    raw = v6(LOCAL, REMOTE, TCP(40000, 443, seq=M32, ack=7, flags=SYN, window=64240, options=WS7, payload=b"hello"))
    assert parse(raw) == PacketInfo(6, L, R, 40000, 443, SYN, M32, 7, 64240, 5, wscale=7)
    assert parse(raw).src == int(ipaddress.IPv6Address(LOCAL)) | V6_TAG  # address keys, tagged
    for raw, expected in (
        (v6(LOCAL, REMOTE, UDP(5000, 53, b"q" * 10)), PacketInfo(17, L, R, 5000, 53, payload_len=10)),
        (echo(True, 128, 0xBEEF), PacketInfo(58, L, R, payload_len=4, icmp_type=128, icmp_code=0, icmp_id=0xBEEF)),
        (echo(False, 129, 7), PacketInfo(58, R, L, payload_len=4, icmp_type=129, icmp_code=0, icmp_id=7)),
        # Neighbour solicitation: no identifier, no flow.
        (v6(REMOTE, LOCAL, ICMP(135, 0, bytes(4) + ipaddress.IPv6Address(LOCAL).packed)),
         PacketInfo(58, R, L, payload_len=16, icmp_type=135, icmp_code=0)),
        (v6(LOCAL, REMOTE, b"gre!" * 3, proto=47), PacketInfo(47, L, R, payload_len=12)),
        (v6(LOCAL, REMOTE, b"", proto=59), PacketInfo(59, L, R)),  # no next header
        # ICMP (1) in IPv6 is just another protocol: no type, no code.
        (v6(LOCAL, REMOTE, bytes([8, 0, 0, 0, 0, 1, 0, 1]), proto=1), PacketInfo(1, L, R, payload_len=8)),
    ):
        buf = b"\xff" * 10 + raw + b"\x00" * 6  # headroom in front, link padding behind
        assert packet_info(buf, 10, len(raw) + 6) == expected


def test_extension_headers_are_walked_to_the_transport_header():
    seg = TCP(40000, 443, seq=9, ack=0, flags=SYN, window=64240, options=WS7, payload=b"x")
    expected = PacketInfo(6, L, R, 40000, 443, SYN, 9, 0, 64240, 1, wscale=7)
    for headers in ([hbh()], [hbh(2)], [hbh(), dstopts(), ROUTING, dstopts(1)], [ROUTING], [dstopts()],
                    [hbh(), frag(0, 0)]):  # an atomic fragment (offset 0, no M): a whole packet
        assert parse(v6(LOCAL, REMOTE, seg, headers)) == expected, headers
    # The first fragment of a datagram carries the transport header: parsed as a packet (its own bytes).
    first = v6(REMOTE, LOCAL, UDP(53, 5000, b"y" * 100), [frag(0, 1)])
    assert parse(first) == PacketInfo(17, R, L, 53, 5000, payload_len=100)
    # A later one has no ports; the protocol is the fragment header's next header.
    tail = v6(REMOTE, LOCAL, b"middle of a datagram", [hbh(), frag(185, 1)], proto=17)
    assert parse(tail) == PacketInfo(17, R, L, payload_len=20, fragment=True)
    last = v6(REMOTE, LOCAL, b"end", [frag(1, 0)], proto=6)
    assert parse(last) == PacketInfo(6, R, L, payload_len=3, fragment=True)
    # An ICMPv6 echo behind a destination options header.
    assert parse(v6(LOCAL, REMOTE, ICMP(128, 0, struct.pack("!HH", 3, 1)), [dstopts()])).icmp_id == 3


def payload_length(raw: bytes, plen: int) -> bytes:
    return raw[:4] + struct.pack("!H", plen) + raw[6:]


def cut(raw: bytes, n: int) -> bytes:
    """The first ``n`` bytes with a payload length that says so: consistent IPv6, short inside."""
    return payload_length(raw[:n], n - 40)


def test_packet_info_malformed_ipv6():
    good = v6(LOCAL, REMOTE, TCP(1, 2, flags=ACK))
    with_hbh = v6(LOCAL, REMOTE, TCP(1, 2, flags=ACK), [hbh(1)])
    for raw in (
        good[:39],  # shorter than the fixed header
        good[:-1],  # shorter than its payload length
        payload_length(good, 21),  # payload length past the end
        cut(good, 59),  # TCP header truncated
        good[:52] + bytes([0x40]) + good[53:],  # TCP data offset of 16 bytes
        good[:52] + bytes([0xF0]) + good[53:],  # TCP data offset past the end
        cut(v6(LOCAL, REMOTE, UDP(1, 2)), 47),
        cut(v6(LOCAL, REMOTE, ICMP(128, 0, bytes(4))), 47),
        cut(with_hbh, 47),  # extension header chain truncated: not even its first 8 bytes
        cut(with_hbh, 55),  # its length (16 bytes) runs past the end
        cut(with_hbh, 56),  # complete, but no room for the transport header behind it
        v6(LOCAL, REMOTE, TCP(1, 2, flags=ACK), [dstopts(), hbh()]),  # hop-by-hop must come first
        v6(LOCAL, REMOTE, TCP(1, 2, flags=ACK), [dstopts()] * 9),  # a chain of 9 extension headers
        cut(v6(LOCAL, REMOTE, UDP(1, 2, b"x" * 20), [frag(0, 1)]), 48 + 7),  # first fragment, no UDP header
        cut(v6(REMOTE, LOCAL, b"x" * 8, [frag(3, 1)], proto=6), 47),  # fragment header truncated
    ):
        assert parse(raw) is None, raw.hex()
    assert parse(good + b"pad") is not None  # bytes beyond the payload length are padding
    assert parse(v6(LOCAL, REMOTE, TCP(1, 2, flags=ACK), [dstopts()] * 8)) is not None


def test_icmpv6_errors_quote_the_invoking_packet():
    sent = v6(LOCAL, REMOTE, TCP(40000, 443, seq=123456, flags=ACK, payload=b"x" * 1400))
    err = parse(icmp6_error(ROUTER, LOCAL, sent))
    assert (err.proto, err.icmp_type, err.icmp_code, err.src, err.dst) == (58, 2, 0, RT, L)
    assert err.inner == PacketInfo(6, L, R, 40000, 443, seq=123456)
    assert parse(icmp6_error(ROUTER, LOCAL, udp(True), 1, 4)).inner == PacketInfo(17, L, R, 5000, 53)
    ping = parse(icmp6_error(ROUTER, LOCAL, echo(True, 128, 5), 3, 0)).inner
    assert ping == PacketInfo(58, L, R, icmp_type=128, icmp_code=0, icmp_id=5)
    # The quoted packet's extension headers are walked too.
    quoted = v6(LOCAL, REMOTE, UDP(5000, 53, b"q" * 50), [hbh(), dstopts()])
    assert parse(icmp6_error(ROUTER, LOCAL, quoted, 4, 1)).inner == PacketInfo(17, L, R, 5000, 53)
    later = v6(LOCAL, REMOTE, b"x" * 16, [frag(10, 1)], proto=17)
    assert parse(icmp6_error(ROUTER, LOCAL, later)).inner == PacketInfo(17, L, R, fragment=True)
    # Too short: the quoted header and 8 bytes of transport are required.
    assert parse(icmp6_error(ROUTER, LOCAL, sent[:47])) is None
    assert parse(icmp6_error(ROUTER, LOCAL, quoted[:40 + 16 + 7])) is None
    # An ICMPv6 error quotes IPv6, never IPv4.
    assert parse(icmp6_error(ROUTER, LOCAL, ipv4_packet("10.0.1.10", "10.0.2.20", UDP(1, 2, bytes(40))))) is None


@FAST
@given(st.binary(max_size=160), st.data())
def test_packet_info_never_raises_on_random_ipv6_bytes(data, draw):
    data = bytes([0x60 | (data[0] & 0xF)]) + data[1:] if data else data
    off = draw.draw(st.integers(0, len(data)))
    n = draw.draw(st.integers(0, len(data) - off))
    p = packet_info(data, off, n)
    assert p is None or isinstance(p, PacketInfo)


templates = [
    v6(LOCAL, REMOTE, TCP(1, 2, flags=SYN, options=WS7, payload=b"abc")),
    v6(LOCAL, REMOTE, TCP(1, 2, flags=ACK, payload=b"abc"), [hbh(), ROUTING, dstopts()]),
    v6(LOCAL, REMOTE, UDP(1, 2, b"abc"), [frag(0, 1)]),
    v6(LOCAL, REMOTE, b"x" * 24, [hbh(), frag(7, 0)], proto=17),
    echo(True, 128, 9),
    icmp6_error(ROUTER, LOCAL, v6(LOCAL, REMOTE, TCP(1, 2), [dstopts()])),
    icmp6_error(ROUTER, LOCAL, echo(True, 128, 9), 3, 0),
]


@FAST
@given(st.sampled_from(templates), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 100))
def test_packet_info_never_raises_on_damaged_ipv6_packets(raw, flips, trim):
    """Damaged real packets reach every parser: extension header walks, quotes, transports."""
    buf = damaged(raw, flips, trim)
    p = packet_info(buf, 0, len(buf))
    assert p is None or isinstance(p, PacketInfo)
    ct = ConnTrack()
    for out in (True, False):
        assert ct.lookup_wire(buf, 0, len(buf), out, 0.0) in (None, EST, NEW, INVALID)
    if p is not None:  # and whatever it parsed, the tracker takes
        ct.create(p, True, 0.0)
        ct.lookup(p, False, 0.0)


# --- keys ----------------------------------------------------------------------------------------

def test_ipv4_compatible_and_mapped_addresses_are_other_flows_than_ipv4():
    ct = ConnTrack()
    v4 = ipv4_packet("10.0.1.10", "10.0.2.20", UDP(5000, 53, b"q"))
    compatible = v6("::a00:10a", "::a00:214", UDP(5000, 53, b"q"))  # ::10.0.1.10 → ::10.0.2.20
    mapped = v6("::ffff:10.0.1.10", "::ffff:10.0.2.20", UDP(5000, 53, b"q"))
    assert through(ct, v4, True, create=True) == NEW
    assert through(ct, compatible, True, create=True) == NEW
    assert through(ct, mapped, True, create=True) == NEW
    assert len(ct) == 3
    assert sorted((e.key for e in ct.entries()), key=lambda k: k.local) == [
        FlowKey(17, K("10.0.1.10"), K("10.0.2.20"), 5000, 53),
        FlowKey(17, K("::10.0.1.10"), K("::10.0.2.20"), 5000, 53),
        FlowKey(17, K("::ffff:10.0.1.10"), K("::ffff:10.0.2.20"), 5000, 53)]
    # The IPv4 reply finds the IPv4 flow only; ct.remove_if sees keys of both families.
    assert ct.remove_if(lambda k: k.local & V6_TAG) == 2
    assert through(ct, compatible, True) == NEW
    assert through(ct, ipv4_packet("10.0.2.20", "10.0.1.10", UDP(53, 5000, b"a")), False) == EST


ADDRESSES = st.one_of(st.integers(0, M32), st.integers(0, V6_TAG - 1).map(lambda a: a | V6_TAG),
                      st.sampled_from([0, M32, V6_TAG, V6_TAG | M32, 2 * V6_TAG - 1, V6_TAG | 0x0A00010A]))


@FAST
@given(st.integers(0, 255), ADDRESSES, ADDRESSES, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.booleans(), st.booleans())
def test_flow_keys_unpack_to_what_they_were_made_of(proto, a, b, sport, dport, v6_family, out):
    """``_flow_key`` inverts ``_key`` in both families: two packets with different flows can never
    share a key (in particular no IPv6 flow has an IPv4 flow's key), and FlowKey gives address keys."""
    src, dst = (a | V6_TAG, b | V6_TAG) if v6_family else (a & M32, b & M32)
    p = PacketInfo(proto, src, dst, sport, dport, icmp_type=128 if v6_family else 8, icmp_id=sport)
    k = _key(p, out)
    local, remote = (src, dst) if out else (dst, src)
    icmp = proto == (58 if v6_family else 1)
    ports = ((sport, 0 if out else 1) if icmp else ((sport, dport) if out else (dport, sport))
             if proto in (6, 17) else (0, 0))
    assert _flow_key(k) == FlowKey(proto, local, remote, *ports)
    assert (k >= 1 << 288) == v6_family and (k < 1 << 104) == (not v6_family)


# --- TCP -----------------------------------------------------------------------------------------

def test_tcp_handshake_established_window_and_close():
    ct = ConnTrack()
    c = Conversation(ct, isn_local=M32 - 10, isn_remote=M32 - 3000).open(now=1.0)
    assert states(ct) == [State.TCP_ESTABLISHED]
    assert [e.key for e in ct.entries()] == [FlowKey(6, L, R, 40000, 443)]
    for i in range(4):  # across the wrap, both ways; through the wire fast path
        assert c.send(True, ACK | PSH, n=1400, now=2.0 + i) == EST
        assert c.send(False, ACK | PSH, n=1000, now=2.0 + i) == EST
    buf = bytearray(c.raw(True, ACK, n=10))
    assert ct.lookup_wire(buf, 0, len(buf), True, 6.0) == EST  # the fast path answered
    # Out of window: beyond what the remote side offered, acknowledging what it never sent.
    assert c.send(True, ACK, n=100, now=7.0, seq=c.nxt[True] + 2**30) == INVALID
    assert c.send(False, ACK, now=7.0, ack=c.nxt[True] + 100_000) == INVALID
    assert ct.stats()["invalid"] == 2 and states(ct) == [State.TCP_ESTABLISHED]
    # Behind a hop-by-hop header the parsed path answers, the same way.
    assert c.send(True, ACK | PSH, n=10, now=8.0, headers=[hbh()]) == EST
    assert c.send(True, FIN | ACK, now=10.0) == EST
    assert states(ct) == [State.TCP_CLOSING]
    assert c.send(False, FIN | ACK, now=10.1) == EST
    assert c.send(True, ACK, now=10.2) == EST
    assert states(ct) == [State.TCP_TIME_WAIT]
    assert c.send(True, ACK, now=10.2 + 10) == NEW and len(ct) == 0  # tcp_closed: 10 s


def test_tcp_started_by_the_remote_side_and_rst():
    ct = ConnTrack()
    c = Conversation(ct, lport=22, rport=50000).open(out=False)
    assert [e.outbound for e in ct.entries()] == [False]
    assert c.send(True, ACK | PSH, n=100) == EST
    assert c.send(False, RST, seq=c.nxt[False] + 2**31) == INVALID  # out of window
    assert c.send(False, RST) == EST and states(ct) == [State.TCP_CLOSE]


def test_only_a_syn_starts_a_tcp_flow_and_a_bare_ack_has_no_fast_answer():
    ct = ConnTrack()
    c = Conversation(ct)
    raw = c.raw(True, ACK)
    assert ct.lookup_wire(bytearray(raw), 0, len(raw), True, 0.0) is None
    p = parse(raw)
    assert ct.lookup(p, True, 0.0) == NEW and not ct.create(p, True, 0.0)
    assert ct.stats()["invalid_starts"] == 1


# --- UDP, ICMPv6, others, fragments ---------------------------------------------------------------

def test_udp_single_direction_then_stream():
    ct = ConnTrack()
    assert through(ct, udp(True), True, 0.0, create=True) == NEW
    assert states(ct) == [State.UDP_SINGLE]
    assert through(ct, udp(True), True, 29.0) == EST  # the fast path, same direction
    assert through(ct, udp(False), False, 29.5) == EST
    assert states(ct) == [State.UDP_STREAM]
    assert through(ct, udp(False, rport=54), False, 30.0) == NEW  # another port, another flow
    assert through(ct, udp(True), True, 29.5 + 179.9) == EST
    assert through(ct, udp(True), True, 29.5 + 179.9 + 180) == NEW and len(ct) == 0


def test_icmpv6_echo_both_directions():
    ct = ConnTrack()
    assert through(ct, echo(True, 128, 7), True, 0.0, create=True) == NEW
    assert through(ct, echo(False, 129, 7), False, 0.1) == EST  # the reply (fast path)
    assert through(ct, echo(True, 128, 7, seq=2), True, 1.0) == EST  # the next request of the same ping
    assert through(ct, echo(False, 129, 8), False, 1.0) == NEW  # another identifier
    assert not ct.create(parse(echo(False, 129, 8)), False, 1.0)  # an unsolicited reply starts nothing
    # The remote side pinging us with the same identifier is its own flow, not a reply to ours.
    assert through(ct, echo(False, 128, 7), False, 1.0, create=True) == NEW
    assert through(ct, echo(True, 129, 7), True, 1.0) == EST
    assert sorted(e.key for e in ct.entries()) == [FlowKey(58, L, R, 7, 0), FlowKey(58, L, R, 7, 1)]
    assert states(ct) == [State.ICMP, State.ICMP]
    assert through(ct, echo(False, 129, 7), False, 1.0 + 30) == NEW  # icmp timeout: 30 s


def test_neighbour_discovery_and_other_icmpv6_messages_have_no_flow():
    ct = ConnTrack()
    target = ipaddress.IPv6Address(LOCAL).packed
    for raw in (v6(REMOTE, LOCAL, ICMP(135, 0, bytes(4) + target)),  # neighbour solicitation
                v6(REMOTE, LOCAL, ICMP(136, 0, b"\x60" + bytes(3) + target)),  # neighbour advertisement
                v6("fe80::1", "ff02::1", ICMP(134, 0, bytes(12))),  # router advertisement
                v6(REMOTE, LOCAL, ICMP(143, 0, bytes(4)))):  # MLDv2 report
        p = parse(raw)
        assert ct.lookup(p, False, 0.0) == NEW and not ct.create(p, False, 0.0)
    assert len(ct) == 0 and ct.stats()["invalid_starts"] == 4


def test_cross_family_icmp_numbers_are_other_protocols():
    ct = ConnTrack()
    one_in_v6 = parse(v6(LOCAL, REMOTE, bytes([8, 0, 0, 0, 0, 1, 0, 1]), proto=1))
    assert ct.create(one_in_v6, True, 0.0)
    v6_in_v4 = parse(ipv4_packet("10.0.1.10", "10.0.2.20", bytes([128, 0, 0, 0, 0, 1, 0, 1]), proto=58))
    assert ct.create(v6_in_v4, True, 0.0)
    assert states(ct) == [State.OTHER, State.OTHER]
    assert sorted(e.key.proto for e in ct.entries()) == [1, 58]


def test_other_protocols_and_fragments():
    ct = ConnTrack()
    assert through(ct, v6(LOCAL, REMOTE, b"gre!", proto=47), True, 0.0, create=True) == NEW
    assert through(ct, v6(REMOTE, LOCAL, b"back", proto=47), False, 1.0) == EST
    assert [e.key for e in ct.entries()] == [FlowKey(47, L, R, 0, 0)]
    assert through(ct, udp(True), True, 0.0, create=True) == NEW
    tail = parse(v6(REMOTE, LOCAL, b"x" * 500, [frag(100, 0)], proto=17))
    assert ct.lookup(tail, False, 1.0) == NEW and not ct.create(tail, False, 1.0)
    first = v6(REMOTE, LOCAL, UDP(53, 5000, b"x" * 1000), [frag(0, 1)])
    assert through(ct, first, False, 1.0) == EST  # the first fragment has the ports: the flow's
    assert len(ct) == 2


# --- ICMPv6 errors -------------------------------------------------------------------------------

def test_packet_too_big_related_to_a_live_flow_passes_unrelated_is_refused():
    ct = ConnTrack()
    c = Conversation(ct).open()
    sent = c.raw(True, ACK | PSH, n=1400)
    # A router on the way (or the remote host) reports on a packet the local side sent: PMTUD.
    for err in (icmp6_error(ROUTER, LOCAL, sent), icmp6_error(REMOTE, LOCAL, sent, 1, 4),
                icmp6_error(ROUTER, LOCAL, sent, 3, 0), icmp6_error(ROUTER, LOCAL, sent, 4, 0, body=40)):
        buf = bytearray(err)
        assert ct.lookup_wire(buf, 0, len(buf), False, 1.0) is None  # errors take the parsed path
        assert through(ct, err, False, 1.0) == EST
    assert ct.flow is None  # related to the flow, not of it
    # Unrelated: another port; the quoted packet as if the remote had sent it; an error the local
    # side sends about its own packet; one addressed to someone else; an IPv4 twin of the flow.
    other = v6(LOCAL, REMOTE, TCP(40001, 443, flags=ACK))
    reversed_ = v6(REMOTE, LOCAL, TCP(443, 40000, flags=ACK))
    v4_twin = ipv4_packet("10.0.1.10", "10.0.2.20", TCP(40000, 443, flags=ACK))
    for err, out in ((icmp6_error(ROUTER, LOCAL, other), False), (icmp6_error(ROUTER, LOCAL, reversed_), False),
                     (icmp6_error(LOCAL, ROUTER, sent), True), (icmp6_error(ROUTER, OTHER, sent), False),
                     (ipv4_packet("10.0.2.1", "10.0.1.10", ICMP(3, 4, bytes(4) + v4_twin[:28])), False)):
        p = parse(err)
        assert ct.lookup(p, out, 1.0) == NEW
        assert not ct.create(p, out, 1.0)  # an ICMP(v6) error never starts a flow
    assert ct.stats()["invalid_starts"] == 5 and len(ct) == 1


def test_icmpv6_errors_about_udp_ping_and_expired_flows():
    ct = ConnTrack()
    assert through(ct, udp(False), False, 0.0, create=True) == NEW
    quoted = udp(False, payload=b"query")
    assert through(ct, icmp6_error(LOCAL, REMOTE, quoted, 1, 4), True, 1.0) == EST  # port unreachable back
    assert through(ct, icmp6_error(REMOTE, LOCAL, quoted, 1, 4), False, 1.0) == NEW
    assert through(ct, echo(True, 128, 99), True, 0.0, create=True) == NEW
    err = icmp6_error(ROUTER, LOCAL, echo(True, 128, 99), 3, 0)
    assert through(ct, err, False, 29.0) == EST
    assert through(ct, err, False, 30.0) == NEW  # errors do not keep a flow alive
    # Quoting a packet behind extension headers, and a later fragment, which relates to nothing.
    c = Conversation(ct, lport=40002).open(now=31.0)
    quoted = c.raw(True, ACK | PSH, n=1300, headers=[hbh(), dstopts()])
    assert through(ct, icmp6_error(ROUTER, LOCAL, quoted), False, 32.0) == EST
    tail = v6(LOCAL, REMOTE, b"x" * 16, [frag(10, 0)], proto=6)
    assert through(ct, icmp6_error(ROUTER, LOCAL, tail), False, 32.0) == NEW


# --- the wire fast path --------------------------------------------------------------------------

WIRE_PACKET = st.tuples(st.booleans(), st.sampled_from(["tcp", "udp", "icmp", "hbh-tcp", "frag-udp", "tcp4"]),
                        st.sampled_from([SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, 0, SYN | FIN]),
                        st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 64), st.floats(0, 50))


@FAST
@given(st.lists(WIRE_PACKET, max_size=60))
def test_lookup_wire_agrees_with_lookup_for_ipv6(packets):
    """Two trackers fed the same packets (IPv6, some behind extension headers, some IPv4 in the same
    table): one parses every packet, the other tries ``lookup_wire`` first as the firewall does. Same
    verdicts, same table, same counters."""
    parsed, wire = ConnTrack(), ConnTrack()
    now = 0.0
    for out, kind, flags, seq, ack, n, step in packets:
        now += step
        src, dst, sport, dport = (LOCAL, REMOTE, 40000, 443) if out else (REMOTE, LOCAL, 443, 40000)
        seg = TCP(sport, dport, seq=seq, ack=ack, flags=flags, payload=b"x" * n)
        if kind == "tcp":
            raw = v6(src, dst, seg)
        elif kind == "hbh-tcp":
            raw = v6(src, dst, seg, [hbh()])
        elif kind == "tcp4":
            raw = ipv4_packet("10.0.1.10" if out else "10.0.2.20", "10.0.2.20" if out else "10.0.1.10", seg)
        elif kind == "udp":
            raw = v6(src, dst, UDP(sport, dport, b"x" * n))
        elif kind == "frag-udp":
            raw = v6(src, dst, UDP(sport, dport, b"x" * n), [frag(0, 1)])
        else:
            raw = v6(src, dst, ICMP(128 if out else 129, 0, b"\x00\x01\x00\x01"))
        buf = bytearray(raw) + b"\x00" * (n % 3)  # sometimes link padding
        pkt = packet_info(buf, 0, len(buf))
        v1 = parsed.lookup(pkt, out, now)
        v2 = wire.lookup_wire(buf, 0, len(buf), out, now)
        if v2 is None:
            v2 = wire.lookup(packet_info(buf, 0, len(buf)), out, now)
        assert v1 == v2
        if v1 is NEW:
            assert parsed.create(pkt, out, now) == wire.create(packet_info(buf, 0, len(buf)), out, now)
        assert parsed.entries() == wire.entries()
        assert parsed.stats() == wire.stats()


def test_lookup_wire_declines_what_it_does_not_read():
    ct = ConnTrack()
    assert through(ct, udp(True), True, 0.0, create=True) == NEW
    good = bytearray(udp(False))
    assert ct.lookup_wire(good, 0, len(good), False, 1.0) == EST
    for raw in (good[:47], payload_length(bytes(good), 7), payload_length(bytes(good), 2000),
                v6(REMOTE, LOCAL, UDP(53, 5000, b"q"), [dstopts()])):
        buf = bytearray(raw)
        assert ct.lookup_wire(buf, 0, len(buf), False, 1.0) is None
    assert ct.stats()["invalid"] == 0


@pytest.mark.parametrize("out", [True, False])
def test_ipv6_packets_at_an_offset(out):
    ct = ConnTrack()
    c = Conversation(ct).open()
    raw = c.raw(out, ACK | PSH, n=100)
    buf = bytearray(b"\xee" * 14 + raw + b"\x00" * 4)
    assert ct.lookup_wire(buf, 14, len(raw) + 4, out, 1.0) == EST
    assert packet_info(buf, 14, len(raw) + 4).payload_len == 100

"""vswitch.coalesce: runs of small UDP packets become one USO write that splits back into the same
datagrams, and everything that must not be merged is refused."""

import struct

from hypothesis import given, settings, strategies as st

from vswitch.coalesce import HEADERS, MAX_SEGMENTS, VNET_LEN, UdpCoalescer
from vswitch.headers import UDP, checksum, ipv4_packet, pseudo_header_sum

PARTIAL = struct.pack("<BBHHHH", 1, 0, 0, 0, 20, 6)  # NEEDS_CSUM at the UDP checksum, what TUN hands us


def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def partial_udp(src="10.0.1.4", dst="10.0.1.10", sport=40000, dport=5201, payload=b"x" * 36, ttl=64):
    """A UDP packet as a sender with checksum offload writes it: the pseudo-header sum in the field."""
    pkt = bytearray(ipv4_packet(src, dst, UDP(sport, dport, payload), ttl=ttl))
    pkt[26:28] = struct.pack("!H", fold(pseudo_header_sum(pkt[12:16], pkt[16:20], 17, 8 + len(payload))))
    return pkt


def framed(pkt, vnet=PARTIAL):
    """(view, vnet offset, inner offset, end) as the ingress path hands packets over."""
    buf = bytearray(vnet + pkt)
    return memoryview(buf), 0, VNET_LEN, len(buf)


def stage(c, target, pkt):
    view, vnet, inner, end = framed(pkt)
    assert c.fits(view, vnet, inner, end)
    return c.add(target, view, inner, end)


def segments(data):
    """What the kernel makes of a USO write: the datagrams, each with its full checksum."""
    flags, gso_type, hdr_len, gso_size, cs, co = struct.unpack_from("<BBHHHH", data)
    head, body = bytearray(data[VNET_LEN:VNET_LEN + HEADERS]), bytes(data[VNET_LEN + HEADERS:])
    assert (flags, cs, co) == (1, 20, 6)
    if gso_type == 0:
        return [bytes(data[VNET_LEN:])]
    assert (gso_type, hdr_len) == (5, HEADERS)
    out = []
    for at in range(0, len(body), gso_size):
        payload = body[at:at + gso_size]
        seg = bytearray(head) + payload
        seg[2:4] = struct.pack("!H", len(seg))
        seg[24:26] = struct.pack("!H", 8 + len(payload))
        out.append(bytes(seg))
    return out


def same_datagram(a, b):
    """Equal as a receiver sees them: addresses, ports, TTL, TOS, lengths and payload."""
    return (a[12:24] == b[12:24] and a[8] == b[8] and a[1] == b[1] and a[2:4] == b[2:4] and a[24:26] == b[24:26]
            and a[28:] == b[28:])


def test_a_run_becomes_one_uso_write_with_valid_headers():
    c = UdpCoalescer()
    pkts = [partial_udp(payload=bytes([i]) * 36) for i in range(5)]
    for p in pkts:
        assert stage(c, "eni", p)
    target, data, count = c.take()
    assert (target, count) == ("eni", 5) and c.take() is None
    flags, gso_type, hdr_len, gso_size, cs, co = struct.unpack_from("<BBHHHH", data)
    assert (flags, gso_type, hdr_len, gso_size, cs, co) == (1, 5, 28, 36, 20, 6)
    ip = bytes(data[VNET_LEN:VNET_LEN + 20])
    assert struct.unpack_from("!H", ip, 2)[0] == 28 + 5 * 36 and checksum(ip) == 0
    udp_len, check = struct.unpack_from("!HH", data, VNET_LEN + 24)
    assert udp_len == 8 + 5 * 36
    assert check == fold(pseudo_header_sum(ip[12:16], ip[16:20], 17, udp_len))
    assert [s[28:] for s in segments(data)] == [bytes(p[28:]) for p in pkts]
    assert all(same_datagram(s, p) for s, p in zip(segments(data), pkts))
    assert c.coalesced == 5 and c.writes_saved == 4


def test_a_single_packet_goes_out_as_it_came():
    c = UdpCoalescer()
    p = partial_udp()
    stage(c, "eni", p)
    _, data, count = c.take()
    assert count == 1 and bytes(data) == PARTIAL + bytes(p)


def test_another_flow_or_size_or_target_ends_the_run():
    for other in (partial_udp(sport=40001), partial_udp(payload=b"y" * 37), partial_udp(ttl=63),
                  partial_udp(dst="10.0.1.11")):
        c = UdpCoalescer()
        stage(c, "eni", partial_udp())
        assert not stage(c, "eni", other)
        assert c.take()[2] == 1
        assert stage(c, "eni", other)
    c = UdpCoalescer()
    stage(c, "eni-a", partial_udp())
    assert not stage(c, "eni-b", partial_udp())


def test_runs_stop_at_the_segment_limit():
    c = UdpCoalescer()
    for _ in range(MAX_SEGMENTS):
        assert stage(c, "eni", partial_udp())
    assert not stage(c, "eni", partial_udp())


def test_what_may_not_be_merged_does_not_fit():
    c = UdpCoalescer()
    ok = partial_udp()
    assert c.fits(*framed(ok))
    complete = struct.pack("<BBHHHH", 0, 0, 0, 0, 0, 0)  # a finished (maybe wrong) checksum: never recompute
    assert not c.fits(*framed(ok, complete))
    tso = struct.pack("<BBHHHH", 1, 1, 52, 1448, 20, 16)
    assert not c.fits(*framed(ok, tso))
    view, _, inner, end = framed(ok)
    assert not c.fits(view, -1, inner, end)  # no virtio header at all
    tcp = bytearray(ok)
    tcp[9] = 6
    assert not c.fits(*framed(tcp))
    fragment = bytearray(ok)
    fragment[6] = 0x20  # more fragments
    assert not c.fits(*framed(fragment))
    options = bytearray(ok)
    options[0] = 0x46
    assert not c.fits(*framed(options))
    padded = bytearray(ok) + b"\0\0"  # IP total length says less than the bytes we hold
    assert not c.fits(*framed(padded))
    empty = partial_udp(payload=b"")
    assert not c.fits(*framed(empty))


def test_split_gives_back_the_single_packets():
    c = UdpCoalescer()
    pkts = [partial_udp(payload=bytes([i]) * 20) for i in range(3)]
    for p in pkts:
        stage(c, "eni", p)
    _, data, _ = c.take()
    assert UdpCoalescer.split(bytes(data)) == [PARTIAL + bytes(p) for p in pkts]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2), st.integers(1, 3)), max_size=200))
def test_the_agent_loop_delivers_every_packet_once_in_order(stream):
    """As the host agent drives it: add, take-and-retry when refused, take at the end. Per target, the
    datagrams coming out of the writes are the ones that went in, in order."""
    c = UdpCoalescer()
    sent = {"a": [], "b": []}
    got = {"a": [], "b": []}

    def write(staged):
        if staged:
            target, data, _ = staged
            got[target] += segments(bytes(data))

    for n, (target, flow, size) in enumerate(stream):
        p = partial_udp(sport=40000 + flow, payload=n.to_bytes(2, "big") * (size * 4))
        sent[target].append(bytes(p))
        view, vnet, inner, end = framed(p)
        if not c.add(target, view, inner, end):
            write(c.take())
            assert c.add(target, view, inner, end)
    write(c.take())
    for t in "ab":
        assert len(got[t]) == len(sent[t])
        assert all(same_datagram(g, s) for g, s in zip(got[t], sent[t]))

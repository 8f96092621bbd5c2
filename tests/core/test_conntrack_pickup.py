"""vswitch.conntrack: mid-stream pickup of TCP during a grace period (``ConnTrack.allow_pickup``), as a
host agent restarted with its instances' connections still open needs it. Virtual time throughout.

The connection here: LOCAL:40000 (the ENI's instance) and REMOTE:443, with window scale 7 on both sides
(scaled windows a tracker that never saw the SYNs must not misread as small ones).
"""

import ipaddress

from vswitch.conntrack import ConnTrack, PacketInfo, State, Verdict
from vswitch.headers import TCP, ipv4_packet

EST, NEW, INVALID = Verdict.ESTABLISHED, Verdict.NEW, Verdict.INVALID
SYN, ACK, FIN, RST, PSH = TCP.SYN, TCP.ACK, TCP.FIN, TCP.RST, TCP.PSH
M32 = 0xFFFFFFFF
L, R = (int(ipaddress.IPv4Address(a)) for a in ("10.0.1.4", "10.0.1.10"))
MSS = 8949  # a 9001-byte MTU


def tcp(out, flags, seq, ack, win=502, n=0):
    if out:
        return PacketInfo(6, L, R, 40000, 443, flags, seq & M32, ack & M32, win, n)
    return PacketInfo(6, R, L, 443, 40000, flags, seq & M32, ack & M32, win, n)


def start(ct, pkt, out, now):
    """The first packet the tracker sees of a connection: NEW, then ``create`` (the rules allowed it)."""
    assert ct.lookup(pkt, out, now) == NEW
    return ct.create(pkt, out, now)


def states(ct):
    return [e.state for e in ct.entries()]


def test_without_pickup_a_mid_stream_ack_starts_nothing():
    ct = ConnTrack()
    assert not start(ct, tcp(False, ACK | PSH, 5000, 1000, n=MSS), False, 1.0)
    assert len(ct) == 0 and ct.stats()["invalid_starts"] == 1 and ct.stats()["picked_up"] == 0


def test_pickup_then_window_checks_apply():
    """An ACK with data from the remote sender starts an ESTABLISHED flow; the local side is learnt from
    its first packet; from then on packets far outside the windows are INVALID again."""
    ct = ConnTrack()
    ct.allow_pickup(60.0)
    r_seq, l_seq = 5000, 1000
    assert start(ct, tcp(False, ACK | PSH, r_seq, l_seq, n=MSS), False, 1.0)
    assert states(ct) == [State.TCP_ESTABLISHED]
    assert ct.stats()["picked_up"] == 1 and ct.stats()["created"] == 1
    r_seq += MSS
    for _ in range(20):  # the remote side goes on sending before the local side is heard
        assert ct.lookup(tcp(False, ACK | PSH, r_seq, l_seq, n=MSS), False, 1.1) == EST
        r_seq += MSS
    # The local side, first heard: a pure ACK of everything so far (window 502 << 7 = 64 KB really).
    assert ct.lookup(tcp(True, ACK, l_seq, r_seq), True, 1.2) == EST
    for _ in range(50):  # both ways, well behaved
        assert ct.lookup(tcp(False, ACK, r_seq, l_seq, n=MSS), False, 1.3) == EST
        r_seq += MSS
        assert ct.lookup(tcp(True, ACK | PSH, l_seq, r_seq, n=100), True, 1.3) == EST
        l_seq += 100
    # Out of window: the sequence space far ahead, an ACK of data never sent, an ACK from the far past.
    assert ct.lookup(tcp(False, ACK, r_seq + (1 << 31) - 1, l_seq, n=10), False, 1.4) == INVALID
    assert ct.lookup(tcp(True, ACK, l_seq, r_seq + (1 << 30) + (1 << 29)), True, 1.4) == INVALID
    assert ct.lookup(tcp(True, ACK, l_seq, r_seq - (1 << 31) + 5), True, 1.4) == INVALID
    assert ct.lookup(tcp(False, ACK, r_seq - (1 << 31) + 7, l_seq, n=10), False, 1.4) == INVALID
    assert ct.stats()["invalid"] == 4
    # Retransmissions and the connection's own packets still pass.
    assert ct.lookup(tcp(False, ACK, r_seq - 3 * MSS, l_seq, n=MSS), False, 1.5) == EST
    assert ct.lookup(tcp(True, ACK, l_seq, r_seq), True, 1.5) == EST
    # And its close is tracked as any connection's.
    assert ct.lookup(tcp(False, FIN | ACK, r_seq, l_seq), False, 1.6) == EST
    assert ct.lookup(tcp(True, FIN | ACK, l_seq, r_seq + 1), True, 1.6) == EST
    assert ct.lookup(tcp(False, ACK, r_seq + 1, l_seq + 1), False, 1.6) == EST
    assert states(ct) == [State.TCP_TIME_WAIT]


def test_pickup_from_the_local_side_and_the_ack_that_jumps_over_a_hole():
    """Picked up from the local receiver's duplicate ACK (a hole at 5000). The remote sender retransmits
    the hole, then the receiver acknowledges everything it had: far beyond anything the tracker saw the
    sender send, but within the window the receiver offered. It passes; beyond that window it does not."""
    ct = ConnTrack(pickup_until=10.0)
    assert start(ct, tcp(True, ACK, 1000, 5000), True, 1.0)
    assert ct.lookup(tcp(False, ACK, 5000, 1000, n=MSS), False, 1.1) == EST  # the retransmission
    jump = 5000 + 40 * MSS  # received before the restart, around the hole
    assert ct.lookup(tcp(True, ACK, 1000, jump), True, 1.2) == EST
    assert ct.lookup(tcp(False, ACK, jump, 1000, n=MSS), False, 1.3) == EST
    # 502 << 14 (the scale taken as the largest) ≈ 8 MB: an ACK 100 MB ahead is nothing the sender sent.
    assert ct.lookup(tcp(True, ACK, 1000, jump + MSS + 100_000_000), True, 1.4) == INVALID
    assert ct.lookup(tcp(True, ACK, 1000, jump + MSS), True, 1.4) == EST


def test_a_flow_that_was_not_picked_up_keeps_the_exact_check():
    """The same jump on a flow tracked from its SYN is INVALID: the relaxation is for picked-up flows only."""
    ct = ConnTrack(pickup_until=10.0)
    assert start(ct, PacketInfo(6, L, R, 40000, 443, SYN, 999, 0, 64240, wscale=7), True, 1.0)
    assert ct.lookup(PacketInfo(6, R, L, 443, 40000, SYN | ACK, 4999, 1000, 65160, wscale=7), False, 1.0) == EST
    assert ct.lookup(tcp(True, ACK, 1000, 5000), True, 1.0) == EST
    assert ct.lookup(tcp(False, ACK, 5000, 1000, n=MSS), False, 1.1) == EST
    assert ct.lookup(tcp(True, ACK, 1000, 5000 + 40 * MSS), True, 1.2) == INVALID
    assert ct.stats()["picked_up"] == 0


def test_pickup_ends_at_its_deadline():
    ct = ConnTrack()
    ct.allow_pickup(10.0)
    assert start(ct, tcp(False, ACK, 5000, 1000), False, 10.0 - 1e-3)
    other = PacketInfo(6, R, L, 444, 40001, ACK, 7000, 3000, 502, 0)
    assert not start(ct, other, False, 10.0)  # now == until: over
    assert ct.stats()["invalid_starts"] == 1
    # The flow picked up in time lives on, as any flow.
    assert ct.lookup(tcp(True, ACK, 1000, 5000), True, 500.0) == EST


def test_only_plain_acks_are_picked_up():
    """As in Linux: SYN+ACK, FIN, RST and invalid flag combinations start no flow mid-stream; a SYN
    still starts one the ordinary way."""
    ct = ConnTrack(pickup_until=100.0)
    for flags in (SYN | ACK, FIN | ACK, RST, RST | ACK, FIN, 0, SYN | FIN):
        assert not start(ct, tcp(False, flags, 5000, 1000), False, 1.0), flags
    assert ct.stats()["picked_up"] == 0 and len(ct) == 0
    assert start(ct, PacketInfo(6, L, R, 40000, 443, SYN, 999, 0, 64240), True, 1.0)
    assert states(ct) == [State.TCP_SYN_SENT] and ct.stats()["picked_up"] == 0


def test_udp_and_icmp_need_no_pickup():
    """Any UDP datagram starts a flow, and an ICMP echo request does, grace period or not; an echo reply
    whose request was not seen does not (the next request starts the flow)."""
    ct = ConnTrack()
    assert start(ct, PacketInfo(17, R, L, 53, 5000), False, 1.0)
    assert ct.lookup(PacketInfo(17, L, R, 5000, 53), True, 1.0) == EST
    reply = PacketInfo(1, R, L, icmp_type=0, icmp_code=0, icmp_id=7)
    assert not start(ct, reply, False, 1.0)
    assert start(ct, PacketInfo(1, L, R, icmp_type=8, icmp_code=0, icmp_id=7), True, 1.0)
    assert ct.lookup(reply, False, 1.0) == EST


def test_wire_fast_path_agrees_on_a_picked_up_flow():
    """``lookup_wire`` (the bulk of traffic) and ``lookup`` give the same verdicts on a picked-up flow,
    the local side's learning packet included."""
    def wire(out, seq, ack, n=0, win=502):
        src, dst, sport, dport = ("10.0.1.4", "10.0.1.10", 40000, 443) if out else ("10.0.1.10", "10.0.1.4", 443, 40000)
        return bytearray(ipv4_packet(src, dst, TCP(sport, dport, seq=seq & M32, ack=ack & M32, flags=ACK,
                                                   window=win, payload=b"x" * n)))

    fast, slow = ConnTrack(pickup_until=10.0), ConnTrack(pickup_until=10.0)
    for ct in (fast, slow):
        assert start(ct, tcp(False, ACK, 5000, 1000, n=1000), False, 1.0)
    script = [(True, 1000, 6000, 0), (False, 6000, 1000, 1000), (True, 1000, 7000, 50),
              (False, 7000 + (1 << 31) - 1, 1050, 10), (True, 1050, 7000 + (1 << 30) + (1 << 29), 0),
              (False, 7000, 1050, 1000), (True, 1050, 8000, 0)]
    for out, seq, ack, n in script:
        b = wire(out, seq, ack, n)
        v = fast.lookup_wire(b, 0, len(b), out, 2.0)
        assert v is not None  # an established flow's ACK: the fast path answers
        assert v == slow.lookup(tcp(out, ACK, seq, ack, n=n), out, 2.0), (out, seq, ack)
    assert fast.stats() == slow.stats() and fast.stats()["invalid"] == 2

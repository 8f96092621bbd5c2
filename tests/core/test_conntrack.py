"""vswitch.conntrack: flow keys, TCP/UDP/ICMP/other state and timeouts, ICMP errors, the table limit,
sweeping, parsing; property tests against a reference model and against well-behaved TCP peers.

Time is virtual (``now``). Timeout boundaries are probed with a packet that leaves the state as it
is: it must pass just before the idle timeout runs out, and find nothing once it has (a flow idle for
exactly its timeout has expired).
"""

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vswitch.conntrack import (
    ConnTrack, FlowKey, PacketInfo, State, Timeouts, Verdict, flow_memory_bytes, packet_info,
)
from vswitch.headers import ICMP, TCP, UDP, ipv4_packet

EST, NEW, INVALID = Verdict.ESTABLISHED, Verdict.NEW, Verdict.INVALID
SYN, ACK, FIN, RST, PSH, URG = TCP.SYN, TCP.ACK, TCP.FIN, TCP.RST, TCP.PSH, TCP.URG
ECE, CWR = 0x40, 0x80
M32 = 0xFFFFFFFF
EPS = 1e-3

LOCAL, REMOTE, ROUTER = "10.0.1.10", "10.0.2.20", "10.0.2.1"
L, R, RT = (int(ipaddress.IPv4Address(a)) for a in (LOCAL, REMOTE, ROUTER))
R2 = R + 1

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tcp(out, flags, seq=0, ack=0, win=65535, n=0, lport=40000, rport=443, wscale=-1, remote=R):
    """A TCP packet between LOCAL:lport and remote:rport; ``out``: from the local side."""
    if out:
        return PacketInfo(6, L, remote, lport, rport, flags, seq & M32, ack & M32, win, n, wscale=wscale)
    return PacketInfo(6, remote, L, rport, lport, flags, seq & M32, ack & M32, win, n, wscale=wscale)


def udp(out, lport=5000, rport=53, remote=R):
    return PacketInfo(17, L, remote, lport, rport) if out else PacketInfo(17, remote, L, rport, lport)


def icmp(out, icmp_type, ident, remote=R):
    src, dst = (L, remote) if out else (remote, L)
    return PacketInfo(1, src, dst, icmp_type=icmp_type, icmp_code=0, icmp_id=ident)


def states(ct):
    return sorted(e.state for e in ct.entries())


def expires_after(ct, probe, out, last, timeout):
    """``probe()`` (a packet that keeps the state) passes at ``last + timeout - EPS``; then, idle for
    exactly ``timeout`` again, the flow has expired."""
    t = last + timeout - EPS
    assert ct.lookup(probe(), out, t) == EST
    assert ct.lookup(probe(), out, t + timeout) == NEW
    assert len(ct) == 0


class Conversation:
    """A TCP connection through ``ct`` whose endpoints behave: each packet carries the sequence and
    acknowledgment numbers a real stack would, ``nxt[side]`` being the side's next sequence number."""

    def __init__(self, ct, isn_local=1000, isn_remote=5000, **kw):
        self.ct = ct
        self.nxt = {True: isn_local & M32, False: isn_remote & M32}
        self.kw = kw

    def pkt(self, out, flags, n=0, seq=None, ack=None, win=65535, wscale=-1):
        seq = self.nxt[out] if seq is None else seq
        ack = self.nxt[not out] if ack is None else ack
        return tcp(out, flags, seq, ack, win, n, wscale=wscale, **self.kw)

    def send(self, out, flags, n=0, now=0.0, **kw):
        p = self.pkt(out, flags, n, **kw)
        v = self.ct.lookup(p, out, now)
        if v == EST and p.seq == self.nxt[out]:
            self.nxt[out] = (self.nxt[out] + n + bool(flags & SYN) + bool(flags & FIN)) & M32
        return v

    def open(self, out=True, now=0.0, wscale=(-1, -1), win=(65535, 65535)):
        """Three-way handshake started by the local side (``out``) or the remote one."""
        syn = self.pkt(out, SYN, win=win[0], wscale=wscale[0])
        assert self.ct.lookup(syn, out, now) == NEW
        assert self.ct.create(syn, out, now)
        self.nxt[out] = (self.nxt[out] + 1) & M32
        assert self.send(not out, SYN | ACK, now=now, win=win[1], wscale=wscale[1]) == EST
        assert self.send(out, ACK, now=now, win=win[0]) == EST
        return self


# --- timeouts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, lo, hi", [
    ("tcp_established", 60, 432000), ("udp_stream", 60, 180), ("udp_single", 30, 60), ("other", 60, 600),
    ("icmp", 10, 60), ("tcp_transitory", 30, 600), ("tcp_closed", 1, 120),
])
def test_timeout_ranges(field, lo, hi):
    Timeouts().validate()
    Timeouts(**{field: lo}).validate()
    Timeouts(**{field: hi}).validate()
    for bad in (lo - 0.5, hi + 1, float("nan"), "60"):
        with pytest.raises(ValueError, match=rf"{field}=.* outside {lo}\.\.{hi} s"):
            Timeouts(**{field: bad}).validate()
    with pytest.raises(ValueError, match=field):
        ConnTrack(Timeouts(**{field: hi + 1}))


def test_reference_defaults_and_table_size():
    t = Timeouts()
    assert (t.tcp_established, t.udp_stream, t.udp_single, t.other) == (432000, 180, 30, 600)
    assert ConnTrack().max_flows == 65536
    with pytest.raises(ValueError):
        ConnTrack(max_flows=0)


# --- TCP -----------------------------------------------------------------------------------------

def test_handshake_data_both_ways_across_the_wrap_and_fin_close():
    ct = ConnTrack()
    c = Conversation(ct, isn_local=M32 - 10, isn_remote=M32 - 3000)
    c.open(now=1.0)
    assert states(ct) == [State.TCP_ESTABLISHED]
    for i in range(6):  # both sides' sequence numbers cross 2^32 here
        assert c.send(True, ACK | PSH, n=1400, now=2.0 + i) == EST
        assert c.send(False, ACK | PSH, n=1000, now=2.0 + i) == EST
    assert c.nxt[True] < 10_000 and c.nxt[False] < 10_000
    assert c.send(True, FIN | ACK, now=10.0) == EST
    assert states(ct) == [State.TCP_CLOSING]
    assert c.send(False, ACK, n=500, now=10.0) == EST  # half closed: the remote side still sends
    assert c.send(True, ACK, now=10.0) == EST
    assert states(ct) == [State.TCP_CLOSING]
    assert c.send(False, FIN | ACK, now=10.0) == EST
    assert states(ct) == [State.TCP_CLOSING]  # the remote FIN is not acknowledged yet
    assert c.send(True, ACK, now=10.0) == EST
    assert states(ct) == [State.TCP_TIME_WAIT]
    assert ct.stats() == {"flows": 1, "limit_hits": 0, "invalid": 0, "invalid_starts": 0, "created": 1,
                          "expired": 0, "picked_up": 0}
    [entry] = ct.entries()
    assert entry.key == FlowKey(6, L, R, 40000, 443) and entry.outbound and entry.packets == 20
    expires_after(ct, lambda: c.pkt(True, ACK), True, 10.0, 10)  # TIME_WAIT: tcp_closed
    assert ct.stats()["expired"] == 1


def test_simultaneous_close():
    ct = ConnTrack()
    c = Conversation(ct).open()
    fin_local, fin_remote = c.pkt(True, FIN | ACK), c.pkt(False, FIN | ACK)  # they cross on the wire
    assert ct.lookup(fin_local, True, 1.0) == EST and ct.lookup(fin_remote, False, 1.0) == EST
    c.nxt[True] += 1
    c.nxt[False] += 1
    assert c.send(True, ACK, now=1.0) == EST
    assert states(ct) == [State.TCP_CLOSING]
    assert c.send(False, ACK, now=1.0) == EST
    assert states(ct) == [State.TCP_TIME_WAIT]


def test_handshake_started_by_the_remote_side():
    ct = ConnTrack()
    c = Conversation(ct).open(out=False)
    [entry] = ct.entries()
    assert not entry.outbound and entry.state == State.TCP_ESTABLISHED
    assert c.send(True, ACK | PSH, n=100) == EST and c.send(False, ACK) == EST


def test_tcp_state_timeouts():
    t = Timeouts(tcp_established=3600, tcp_transitory=100, tcp_closed=5)
    # SYN_SENT: the originator's SYN again
    ct = ConnTrack(t)
    c = Conversation(ct)
    syn = c.pkt(True, SYN)
    assert ct.lookup(syn, True, 0.0) == NEW and ct.create(syn, True, 0.0)
    assert states(ct) == [State.TCP_SYN_SENT]
    expires_after(ct, lambda: c.pkt(True, SYN), True, 0.0, 100)
    # SYN_RECV: the SYN+ACK again
    ct = ConnTrack(t)
    c = Conversation(ct)
    assert ct.create(c.pkt(True, SYN), True, 0.0)
    c.nxt[True] += 1
    assert c.send(False, SYN | ACK, now=1.0) == EST
    assert states(ct) == [State.TCP_SYN_RECV]
    expires_after(ct, lambda: c.pkt(False, SYN | ACK, seq=5000), False, 1.0, 100)
    # ESTABLISHED: a duplicate ACK
    ct = ConnTrack(t)
    c = Conversation(ct).open(now=2.0)
    expires_after(ct, lambda: c.pkt(False, ACK), False, 2.0, 3600)
    # CLOSING: the remote side's ACK of old data, which does not cover the FIN
    ct = ConnTrack(t)
    c = Conversation(ct).open()
    assert c.send(True, FIN | ACK, now=3.0) == EST
    expires_after(ct, lambda: c.pkt(False, ACK, ack=c.nxt[True] - 1), False, 3.0, 100)
    # CLOSE: an in-window RST, then an ACK
    ct = ConnTrack(t)
    c = Conversation(ct).open()
    assert c.send(False, RST | ACK, now=4.0) == EST
    assert states(ct) == [State.TCP_CLOSE]
    expires_after(ct, lambda: c.pkt(True, ACK), True, 4.0, 5)


def test_rst_in_window_closes_out_of_window_is_invalid():
    ct = ConnTrack()
    c = Conversation(ct).open()
    assert c.send(False, RST, seq=c.nxt[False] + 10_000_000) == INVALID  # blind reset attempt
    assert c.send(False, RST | ACK, ack=c.nxt[True] + 5000) == INVALID  # acknowledges unsent data
    assert states(ct) == [State.TCP_ESTABLISHED] and ct.stats()["invalid"] == 2
    assert c.send(True, ACK | PSH, n=10) == EST  # the connection is unharmed
    assert c.send(False, RST) == EST
    assert states(ct) == [State.TCP_CLOSE]


def test_out_of_window_packets_are_invalid_and_harmless():
    ct = ConnTrack()
    c = Conversation(ct).open()
    assert c.send(True, ACK | PSH, n=1000) == EST
    n = c.nxt[True]
    bad = [
        c.pkt(True, ACK, n=100, seq=n + 70_000),  # I: beyond the 65535-byte window the remote offered
        c.pkt(True, ACK, n=100, seq=n - 200_000),  # II: older than any window
        c.pkt(True, ACK, n=100, seq=n ^ 0x80000000),  # half the sequence space away
        c.pkt(True, ACK, ack=c.nxt[False] + 1),  # III: acknowledges a byte the remote never sent
        c.pkt(True, ACK, ack=c.nxt[False] - 100_000),  # IV: an acknowledgment far too old
    ]
    for p in bad:
        assert ct.lookup(p, True, 1.0) == INVALID
    assert ct.stats()["invalid"] == len(bad)
    assert c.send(True, ACK, n=500, seq=n - 1000, now=1.0) == EST  # a retransmission is fine
    assert c.send(True, ACK | PSH, n=65535 - 1000) == EST  # up to the window's edge
    assert c.send(False, ACK, win=0) == EST  # zero window: a 1-byte probe at the edge still passes
    assert c.send(True, ACK, n=1) == EST
    assert c.send(True, ACK) == EST  # its next ACK starts one past the edge
    assert ct.lookup(c.pkt(True, ACK, n=1, seq=c.nxt[True] + 1), True, 1.0) == INVALID


@pytest.mark.parametrize("flags", [
    0, SYN | FIN, SYN | RST, FIN, FIN | PSH | URG, FIN | RST | ACK, URG, PSH, SYN | FIN | ACK, RST | FIN,
    SYN | ACK | URG, ACK | SYN | RST,
])
def test_invalid_flag_combinations(flags):
    ct = ConnTrack()
    c = Conversation(ct).open()
    assert c.send(True, flags) == INVALID
    assert c.send(False, flags) == INVALID
    assert states(ct) == [State.TCP_ESTABLISHED]
    # and they cannot start a flow (a TCP flow starts with a bare SYN only)
    other = tcp(True, flags, lport=40001)
    assert ct.lookup(other, True, 0.0) == NEW and not ct.create(other, True, 0.0)
    assert ct.stats()["invalid_starts"] == 1 and len(ct) == 1


def test_ece_cwr_psh_do_not_matter():
    ct = ConnTrack()
    c = Conversation(ct)
    syn = c.pkt(True, SYN | ECE | CWR)
    assert ct.create(syn, True, 0.0)
    c.nxt[True] += 1
    assert c.send(False, SYN | ACK | ECE) == EST
    assert c.send(True, ACK | PSH | CWR, n=10) == EST
    assert states(ct) == [State.TCP_ESTABLISHED]


def test_only_a_syn_starts_a_tcp_flow():
    ct = ConnTrack()
    for flags in (ACK, SYN | ACK, RST, FIN | ACK, ACK | PSH):
        p = tcp(False, flags, seq=1, ack=1)
        assert ct.lookup(p, False, 0.0) == NEW
        assert not ct.create(p, False, 0.0)
    assert len(ct) == 0 and ct.stats()["invalid_starts"] == 5 and ct.stats()["created"] == 0


def test_syn_sent_accepts_only_the_handshake():
    ct = ConnTrack()
    c = Conversation(ct)
    assert ct.create(c.pkt(True, SYN), True, 0.0)
    c.nxt[True] += 1
    assert c.send(True, ACK | PSH, n=10) == INVALID  # data before the SYN+ACK
    assert c.send(False, ACK) == INVALID  # the remote side has not sent its SYN
    assert c.send(False, SYN) == INVALID  # simultaneous open (Linux's SYN_SENT2) is not followed
    assert c.send(False, SYN | ACK, ack=c.nxt[True] + 1) == INVALID  # acknowledges more than our SYN
    assert c.send(False, SYN | ACK, ack=c.nxt[True] - 1) == INVALID  # does not acknowledge it
    assert c.send(True, SYN | ACK) == INVALID  # from the wrong side
    assert states(ct) == [State.TCP_SYN_SENT]
    assert c.send(False, SYN | ACK) == EST
    assert c.send(True, SYN | ACK) == INVALID  # the originator never sends a SYN+ACK
    assert c.send(False, ACK) == EST and states(ct) == [State.TCP_SYN_RECV]  # only the originator's ACK
    assert c.send(True, ACK) == EST
    assert states(ct) == [State.TCP_ESTABLISHED]


def test_syn_ack_with_a_new_isn_in_syn_recv():
    ct = ConnTrack()
    c = Conversation(ct)
    assert ct.create(c.pkt(True, SYN), True, 0.0)
    c.nxt[True] += 1
    assert c.send(False, SYN | ACK) == EST
    c.nxt[False] = 3_000_000_000  # the server started over (Linux re-seeds that side too)
    assert c.send(False, SYN | ACK) == EST
    assert ct.lookup(c.pkt(True, ACK, ack=5001), True, 0.0) == INVALID  # the old ISN is gone
    assert c.send(True, ACK) == EST and c.send(False, ACK | PSH, n=100) == EST
    assert states(ct) == [State.TCP_ESTABLISHED]


def test_stale_ack_within_linux_maxackwindow():
    """Check IV allows an ACK to lag 66000 bytes behind even when windows are small (Linux's
    MAXACKWINDOW): a duplicate ACK reordered behind later ones still passes."""
    ct = ConnTrack()
    c = Conversation(ct).open(win=(1000, 1000))
    for i in range(60):
        assert c.send(False, ACK | PSH, n=1000) == EST
        assert c.send(True, ACK, win=1000) == EST
        if i == 0:
            first_ack = c.pkt(True, ACK, win=1000)
    assert ct.lookup(first_ack, True, 0.0) == EST  # 59000 bytes behind
    assert ct.lookup(c.pkt(True, ACK, ack=c.nxt[False] - 70_000, win=1000), True, 0.0) == INVALID


def test_new_attempt_with_a_new_isn_in_syn_sent():
    ct = ConnTrack()
    c = Conversation(ct)
    assert ct.create(c.pkt(True, SYN), True, 0.0)
    c.nxt[True] = 777_777
    assert c.send(True, SYN, now=1.0) == EST  # the first attempt got no answer; the retry re-seeds
    assert c.send(False, SYN | ACK) == EST and c.send(True, ACK) == EST


def test_connection_refused():
    ct = ConnTrack()
    c = Conversation(ct)
    assert ct.create(c.pkt(True, SYN), True, 0.0)
    c.nxt[True] += 1
    assert c.send(False, RST, seq=0) == INVALID  # a RST in SYN_SENT must acknowledge the SYN
    assert c.send(False, RST | ACK, seq=0, ack=c.nxt[True] + 7) == INVALID
    assert c.send(False, RST | ACK, seq=0, now=1.0) == EST
    assert states(ct) == [State.TCP_CLOSE]
    # The remote side never sent a SYN: there is no window to check its packets against.
    assert c.send(False, ACK) == INVALID and c.send(False, ACK, seq=0) == INVALID
    # The client tries again on the same ports: a new connection, the rules decide again.
    syn = c.pkt(True, SYN, seq=99)
    assert ct.lookup(syn, True, 2.0) == NEW
    assert ct.create(syn, True, 2.0) and states(ct) == [State.TCP_SYN_SENT]


def test_originator_rst_in_syn_sent():
    ct = ConnTrack()
    c = Conversation(ct)
    assert ct.create(c.pkt(True, SYN), True, 0.0)
    c.nxt[True] += 1
    assert c.send(True, RST, seq=c.nxt[True] + 100) == INVALID
    assert c.send(True, RST) == EST and states(ct) == [State.TCP_CLOSE]


def test_retransmitted_handshake_packets():
    ct = ConnTrack()
    c = Conversation(ct)
    syn = c.pkt(True, SYN)
    assert ct.create(syn, True, 0.0)
    c.nxt[True] += 1
    assert c.send(False, SYN | ACK) == EST
    assert ct.lookup(syn, True, 0.5) == EST  # the SYN+ACK got lost behind us: the client asks again
    assert c.send(False, SYN | ACK, seq=5000) == EST  # and the server answers again
    assert states(ct) == [State.TCP_SYN_RECV]
    assert c.send(True, ACK) == EST
    # The client's ACK got lost behind us: the server repeats its SYN+ACK, which must reach the client.
    assert c.send(False, SYN | ACK, seq=5000) == EST
    assert states(ct) == [State.TCP_ESTABLISHED]
    assert ct.lookup(syn, True, 1.0) == INVALID  # but a SYN on an established connection is not
    assert c.send(False, SYN | ACK, seq=123_456_789) == INVALID  # nor a SYN+ACK out of window
    assert ct.stats()["invalid"] == 2


def test_syn_after_time_wait_reopens():
    ct = ConnTrack()
    c = Conversation(ct).open()
    assert c.send(True, FIN | ACK) == EST and c.send(False, FIN | ACK) == EST and c.send(True, ACK) == EST
    assert states(ct) == [State.TCP_TIME_WAIT]
    # The remote side reuses the ports at once (Linux drops the old entry likewise): NEW for the rules.
    syn = tcp(False, SYN, seq=42)
    assert ct.lookup(syn, False, 1.0) == NEW and len(ct) == 0
    assert ct.create(syn, False, 1.0)
    [entry] = ct.entries()
    assert entry.state == State.TCP_SYN_SENT and not entry.outbound


def test_window_scaling():
    # Both sides offer scaling (shift 7): the remote's window of 1000 means 128000 bytes.
    ct = ConnTrack()
    c = Conversation(ct).open(wscale=(7, 7), win=(65535, 1000))
    assert c.send(False, ACK, win=1000) == EST
    assert c.send(True, ACK | PSH, n=64000) == EST and c.send(True, ACK | PSH, n=60000) == EST
    assert ct.lookup(c.pkt(True, ACK, n=1, seq=c.nxt[True] + 10_000), True, 0.0) == INVALID
    # Only one side offers it: windows are not scaled (RFC 7323 §1.3), 1000 means 1000.
    ct = ConnTrack()
    c = Conversation(ct).open(wscale=(7, -1), win=(65535, 1000))
    assert c.send(False, ACK, win=1000) == EST
    assert c.send(True, ACK | PSH, n=1000) == EST
    assert ct.lookup(c.pkt(True, ACK, n=1000, seq=c.nxt[True] + 5000), True, 0.0) == INVALID


def test_first_data_obeys_the_unscaled_syn_ack_window():
    ct = ConnTrack()
    c = Conversation(ct).open(wscale=(7, 7), win=(64240, 20000))
    assert ct.lookup(c.pkt(True, ACK, n=100, seq=c.nxt[True] + 30_000), True, 0.0) == INVALID
    assert c.send(True, ACK | PSH, n=20000) == EST


# --- UDP -----------------------------------------------------------------------------------------

def test_udp_single_direction_then_stream():
    ct = ConnTrack()
    assert ct.lookup(udp(True), True, 0.0) == NEW and ct.create(udp(True), True, 0.0)
    assert states(ct) == [State.UDP_SINGLE]
    expires_after(ct, lambda: udp(True), True, 0.0, 30)  # more from the same side keeps it single

    ct = ConnTrack()
    assert ct.create(udp(True), True, 0.0)
    assert ct.lookup(udp(False), False, 29.0) == EST
    assert states(ct) == [State.UDP_STREAM]
    expires_after(ct, lambda: udp(True), True, 29.0, 180)


def test_udp_started_by_the_remote_side_and_configured_timeouts():
    t = Timeouts(udp_single=60, udp_stream=60)
    ct = ConnTrack(t)
    assert ct.lookup(udp(False), False, 0.0) == NEW and ct.create(udp(False), False, 0.0)
    expires_after(ct, lambda: udp(False), False, 0.0, 60)
    ct = ConnTrack(t)
    assert ct.create(udp(False), False, 0.0) and ct.lookup(udp(True), True, 1.0) == EST
    expires_after(ct, lambda: udp(False), False, 1.0, 60)


def test_udp_ports_and_addresses_make_the_flow():
    ct = ConnTrack()
    assert ct.create(udp(True), True, 0.0)
    swapped = PacketInfo(17, R, L, 5000, 53)
    for p in (udp(False, lport=5001), udp(False, rport=54), udp(False, remote=R2), swapped):
        assert ct.lookup(p, False, 1.0) == NEW
    assert ct.lookup(PacketInfo(17, R, L, 53, 5000), False, 1.0) == EST


# --- ICMP ----------------------------------------------------------------------------------------

def test_icmp_echo_by_identifier():
    ct = ConnTrack()
    assert ct.lookup(icmp(True, 8, 7), True, 0.0) == NEW and ct.create(icmp(True, 8, 7), True, 0.0)
    assert ct.lookup(icmp(False, 0, 7), False, 0.1) == EST  # the reply
    assert ct.lookup(icmp(True, 8, 7), True, 1.0) == EST  # the next request of the same ping
    assert ct.lookup(icmp(False, 0, 8), False, 1.0) == NEW  # another identifier: another flow
    assert not ct.create(icmp(False, 0, 8), False, 1.0)  # and an unsolicited reply starts nothing
    # The remote side pinging us with the same identifier is its own flow, not a reply to ours.
    assert ct.lookup(icmp(False, 8, 7), False, 1.0) == NEW and ct.create(icmp(False, 8, 7), False, 1.0)
    assert ct.lookup(icmp(True, 0, 7), True, 1.0) == EST
    assert sorted(e.key for e in ct.entries()) == [FlowKey(1, L, R, 7, 0), FlowKey(1, L, R, 7, 1)]
    assert ct.stats()["invalid_starts"] == 1
    assert ct.remove_if(lambda k: k.remote_port == 1) == 1
    expires_after(ct, lambda: icmp(False, 0, 7), False, 1.0, 30)


def test_icmp_messages_that_are_neither_queries_nor_errors_are_not_tracked():
    ct = ConnTrack()
    advert = PacketInfo(1, R, L, icmp_type=9, icmp_code=0)  # router advertisement
    assert ct.lookup(advert, False, 0.0) == NEW and not ct.create(advert, False, 0.0)
    assert len(ct) == 0


def icmp_error(src, dst, quoted: bytes, icmp_type=3, code=3) -> PacketInfo:
    """An ICMP error from ``src`` to ``dst`` quoting ``quoted`` (the IP header + 8 bytes), parsed."""
    p = packet_info(ipv4_packet(src, dst, ICMP(icmp_type, code, b"\0\0\0\0" + quoted[:28])), 0, 56)
    assert p is not None and p.inner is not None
    return p


def test_icmp_errors_related_to_a_flow():
    ct = ConnTrack()
    c = Conversation(ct).open()
    sent = ipv4_packet(LOCAL, REMOTE, TCP(40000, 443, seq=c.nxt[True], flags=ACK))
    # A router on the way (or the remote host) reports on a packet the local side sent.
    assert ct.lookup(icmp_error(ROUTER, LOCAL, sent, 11, 0), False, 1.0) == EST
    assert ct.lookup(icmp_error(REMOTE, LOCAL, sent, 3, 4), False, 1.0) == EST  # frag needed: PMTUD
    # Unrelated: another port; the quoted packet as if the remote had sent it; an error the local side
    # sends about its own packet; an error addressed to someone else.
    other = ipv4_packet(LOCAL, REMOTE, TCP(40001, 443, flags=ACK))
    reversed_ = ipv4_packet(REMOTE, LOCAL, TCP(443, 40000, flags=ACK))
    for err, out in ((icmp_error(ROUTER, LOCAL, other), False), (icmp_error(ROUTER, LOCAL, reversed_), False),
                     (icmp_error(LOCAL, ROUTER, sent), True), (icmp_error(ROUTER, "10.0.1.11", sent), False)):
        assert ct.lookup(err, out, 1.0) == NEW
        assert not ct.create(err, out, 1.0)  # an ICMP error never starts a flow
    assert ct.stats()["invalid_starts"] == 4 and len(ct) == 1
    # Quotes of packets that have no flow of their own relate to nothing.
    for quoted in (ipv4_packet(LOCAL, REMOTE, b"8 bytes!", proto=6, frag_offset=100),
                   ipv4_packet(LOCAL, REMOTE, ICMP(3, 3, bytes(32)))):
        assert ct.lookup(icmp_error(ROUTER, LOCAL, quoted), False, 1.0) == NEW


def test_icmp_error_sent_by_the_local_side():
    ct = ConnTrack()
    inbound = udp(False)
    assert ct.create(inbound, False, 0.0)
    quoted = ipv4_packet(REMOTE, LOCAL, UDP(53, 5000, b"query"))
    assert ct.lookup(icmp_error(LOCAL, REMOTE, quoted), True, 1.0) == EST  # port unreachable back
    assert ct.lookup(icmp_error(REMOTE, LOCAL, quoted), False, 1.0) == NEW


def test_icmp_error_about_a_ping_and_about_an_expired_flow():
    ct = ConnTrack()
    assert ct.create(icmp(True, 8, 99), True, 0.0)
    quoted = ipv4_packet(LOCAL, REMOTE, ICMP(8, 0, struct.pack("!HH", 99, 1)))
    err = icmp_error(ROUTER, LOCAL, quoted, 11, 0)
    assert ct.lookup(err, False, 29.0) == EST
    assert ct.lookup(err, False, 30.0) == NEW  # errors do not keep a flow alive
    assert len(ct) == 0 and ct.stats()["expired"] == 1


# --- other protocols -----------------------------------------------------------------------------

def test_other_protocols_by_addresses_and_protocol():
    ct = ConnTrack()
    gre_out, gre_in = PacketInfo(47, L, R, payload_len=100), PacketInfo(47, R, L)
    assert ct.lookup(gre_out, True, 0.0) == NEW and ct.create(gre_out, True, 0.0)
    assert ct.lookup(gre_in, False, 1.0) == EST
    assert ct.lookup(PacketInfo(47, R2, L), False, 1.0) == NEW
    assert ct.lookup(PacketInfo(50, R, L), False, 1.0) == NEW  # another protocol
    assert [e.key for e in ct.entries()] == [FlowKey(47, L, R, 0, 0)]
    assert states(ct) == [State.OTHER]
    expires_after(ct, lambda: gre_in, False, 1.0, 600)


def test_fragments_are_not_tracked():
    ct = ConnTrack()
    assert ct.create(udp(True), True, 0.0)
    tail = PacketInfo(17, R, L, payload_len=500, fragment=True)
    assert ct.lookup(tail, False, 0.0) == NEW and not ct.create(tail, False, 0.0)
    assert len(ct) == 1


# --- the table -----------------------------------------------------------------------------------

def test_table_full_refuses_new_flows_keeps_established_ones():
    ct = ConnTrack(max_flows=3)
    for port in (1, 2, 3):
        assert ct.create(udp(True, lport=port), True, 0.0)
    c = Conversation(ct)
    assert not ct.create(c.pkt(True, SYN), True, 1.0)
    assert not ct.create(udp(True, lport=4), True, 1.0)
    assert ct.stats()["limit_hits"] == 2 and len(ct) == 3
    for port in (1, 2, 3):
        assert ct.lookup(udp(False, lport=port), False, 2.0) == EST
        assert ct.lookup(udp(True, lport=port), True, 2.0) == EST
    assert ct.create(udp(True, lport=3), True, 2.0)  # the same key is replaced, not added
    # Once flows expire, even if nothing swept them yet, there is room again.
    assert ct.lookup(udp(True, lport=1), True, 100.0) == EST
    assert len(ct) == 3 and ct.create(udp(True, lport=4), True, 2.0 + 180)
    assert ct.stats() == {"flows": 2, "limit_hits": 2, "invalid": 0, "invalid_starts": 0, "created": 5,
                          "expired": 2, "picked_up": 0}


def test_expire_sweeps_in_slices():
    ct = ConnTrack()
    for port in range(100):
        assert ct.create(udp(True, lport=port), True, 0.0)
    for port in range(100, 150):
        assert ct.create(udp(True, lport=port), True, 20.0)
    removed = [ct.expire(30.0, budget=40) for _ in range(4)]
    assert all(r <= 40 for r in removed) and sum(removed) == 100 and len(ct) == 50
    assert ct.expire(30.0) == 0
    assert ct.lookup(udp(True, lport=120), True, 30.0) == EST
    assert ct.expire(1000.0, budget=10) == 10 and ct.expire(1000.0) == 40 and len(ct) == 0
    assert ct.stats()["expired"] == 150


def test_lookup_removes_an_expired_flow():
    ct = ConnTrack()
    assert ct.create(udp(True), True, 0.0)
    assert ct.lookup(udp(False), False, 30.0) == NEW  # the reply came too late
    assert len(ct) == 0 and ct.stats()["expired"] == 1


def test_remove_if_cuts_flows():
    ct = ConnTrack()
    Conversation(ct).open()
    assert ct.create(udp(True, remote=R2), True, 0.0) and ct.create(icmp(True, 8, 1), True, 0.0)
    assert sorted(e.key for e in ct.entries()) == [
        FlowKey(1, L, R, 1, 0), FlowKey(6, L, R, 40000, 443), FlowKey(17, L, R2, 5000, 53)]
    assert ct.remove_if(lambda k: k.proto == 6 and k.remote_port == 443) == 1
    assert ct.lookup(tcp(False, ACK, seq=5001, ack=1001), False, 1.0) == NEW
    assert ct.remove_if(lambda k: k.remote == R2) == 1 and ct.remove_if(lambda k: False) == 0
    assert ct.lookup(icmp(False, 0, 1), False, 1.0) == EST and len(ct) == 1


# --- parsing -------------------------------------------------------------------------------------

WS7 = b"\x02\x04\x05\xb4\x01\x03\x03\x07"  # MSS 1460, NOP, window scale 7


def test_packet_info_tcp():
    raw = ipv4_packet(LOCAL, REMOTE, TCP(40000, 443, seq=M32, ack=7, flags=SYN, window=64240, options=WS7,
                                         payload=b"hello"))
    assert packet_info(raw, 0, len(raw)) == PacketInfo(6, L, R, 40000, 443, SYN, M32, 7, 64240, 5, wscale=7)
    big = ipv4_packet(LOCAL, REMOTE, TCP(1, 2, flags=SYN, options=b"\x01\x01\x03\x03\x63\x00\x00\x00"))
    assert packet_info(big, 0, len(big)).wscale == 14  # RFC 7323: larger shifts are taken as 14
    for options in (b"", b"\x02\x04\x05\xb4", b"\x03\x00\x00\x00", b"\x08\x0a" + bytes(10)):
        raw = ipv4_packet(LOCAL, REMOTE, TCP(1, 2, flags=SYN, options=options))
        assert packet_info(raw, 0, len(raw)).wscale == -1
    raw = ipv4_packet(LOCAL, REMOTE, TCP(1, 2, flags=ACK, options=WS7))
    assert packet_info(raw, 0, len(raw)).wscale == -1  # only a SYN's option counts


def test_packet_info_udp_icmp_other_at_an_offset_with_padding():
    for raw, expected in (
        (ipv4_packet(LOCAL, REMOTE, UDP(5000, 53, b"q" * 10)), PacketInfo(17, L, R, 5000, 53, payload_len=10)),
        (ipv4_packet(LOCAL, REMOTE, ICMP(8, 0, struct.pack("!HH", 0xBEEF, 1) + b"ping")),
         PacketInfo(1, L, R, payload_len=4, icmp_type=8, icmp_code=0, icmp_id=0xBEEF)),
        (ipv4_packet(LOCAL, REMOTE, ICMP(9, 0, bytes(8))),
         PacketInfo(1, L, R, payload_len=4, icmp_type=9, icmp_code=0)),
        (ipv4_packet(LOCAL, REMOTE, b"gre!" * 3, proto=47), PacketInfo(47, L, R, payload_len=12)),
    ):
        buf = b"\xff" * 10 + raw + b"\x00" * 6  # headroom in front, link padding behind
        assert packet_info(buf, 10, len(raw) + 6) == expected


def test_packet_info_icmp_errors_and_fragments():
    quoted = ipv4_packet(LOCAL, REMOTE, TCP(40000, 443, seq=123456, flags=ACK, payload=b"x" * 100))
    err = icmp_error(ROUTER, LOCAL, quoted, 3, 4)
    assert (err.icmp_type, err.icmp_code, err.src, err.dst) == (3, 4, RT, L)
    assert err.inner == PacketInfo(6, L, R, 40000, 443, seq=123456)
    assert icmp_error(ROUTER, LOCAL, ipv4_packet(LOCAL, REMOTE, UDP(1, 2))).inner == PacketInfo(17, L, R, 1, 2)
    ping = ipv4_packet(LOCAL, REMOTE, ICMP(8, 0, struct.pack("!HH", 5, 1)))
    expected = PacketInfo(1, L, R, icmp_type=8, icmp_code=0, icmp_id=5)
    assert icmp_error(ROUTER, LOCAL, ping, 11, 0).inner == expected
    short = ipv4_packet(ROUTER, LOCAL, ICMP(3, 1, bytes(4) + quoted[:27]))  # one byte short of IP + 8
    assert packet_info(short, 0, len(short)) is None
    tail = ipv4_packet(REMOTE, LOCAL, b"rest of a datagram", proto=17, frag_offset=185)
    assert packet_info(tail, 0, len(tail)) == PacketInfo(17, R, L, payload_len=18, fragment=True)
    head = ipv4_packet(REMOTE, LOCAL, UDP(53, 5000, b"x" * 20), more_fragments=True)
    assert packet_info(head, 0, len(head)) == PacketInfo(17, R, L, 53, 5000, payload_len=20)


def total_length(raw: bytes, total: int) -> bytes:
    return raw[:2] + struct.pack("!H", total) + raw[4:]


def cut(raw: bytes, n: int) -> bytes:
    """The first ``n`` bytes, with a total length that says so: consistent IP, short transport."""
    return total_length(raw[:n], n)


def test_packet_info_malformed():
    good = ipv4_packet(LOCAL, REMOTE, TCP(1, 2, flags=ACK))
    for raw in (
        good[:19],
        bytes([0x50]) + good[1:],  # version 5 (an IPv4 header marked 6 can be a valid IPv6 one: test_conntrack6)
        bytes([0x75]) + good[1:],  # version 7
        bytes([0x44]) + good[1:],  # IHL of 16 bytes
        good[:-1],  # shorter than its total length
        total_length(good, 19),  # total length inside the header
        good[:32] + bytes([0x40]) + good[33:],  # TCP data offset of 16 bytes
        good[:32] + bytes([0xF0]) + good[33:],  # TCP data offset past the end
        cut(good, 39),  # TCP header truncated
        cut(ipv4_packet(LOCAL, REMOTE, UDP(1, 2)), 27),
        cut(ipv4_packet(LOCAL, REMOTE, ICMP(8, 0, bytes(4))), 27),
        cut(ipv4_packet(ROUTER, LOCAL, ICMP(3, 3, bytes(4) + bytes([0x45]) + bytes(27))), 55),
    ):
        assert packet_info(raw, 0, len(raw)) is None, raw.hex()
    assert packet_info(good + b"pad", 0, len(good) + 3) is not None


@FAST
@given(st.binary(max_size=120), st.data())
def test_packet_info_never_raises_on_random_bytes(data, draw):
    off = draw.draw(st.integers(0, len(data)))
    n = draw.draw(st.integers(0, len(data) - off))
    p = packet_info(data, off, n)
    assert p is None or isinstance(p, PacketInfo)


def damaged(raw: bytes, flips, trim: int) -> bytearray:
    """``raw`` with bytes overwritten (``flips``: (index modulo the length, value) pairs), then ``trim``
    bytes cut off its end (shared with test_conntrack6)."""
    buf = bytearray(raw)
    for i, b in flips:
        buf[i % len(buf)] = b
    return buf[:max(0, len(buf) - trim)]


templates = [
    ipv4_packet(LOCAL, REMOTE, TCP(1, 2, flags=SYN, options=WS7, payload=b"abc")),
    ipv4_packet(LOCAL, REMOTE, UDP(1, 2, b"abc")),
    ipv4_packet(ROUTER, LOCAL, ICMP(3, 3, bytes(4) + ipv4_packet(LOCAL, REMOTE, TCP(1, 2))[:28])),
    ipv4_packet(ROUTER, LOCAL, ICMP(11, 0, bytes(4) + ipv4_packet(LOCAL, REMOTE, ICMP(8, 0, bytes(4)))[:28])),
]


@FAST
@given(st.sampled_from(templates), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 80))
def test_packet_info_never_raises_on_damaged_packets(raw, flips, trim):
    """Random bytes rarely get past the IP header; damaged real packets reach every parser."""
    buf = damaged(raw, flips, trim)
    p = packet_info(buf, 0, len(buf))
    assert p is None or isinstance(p, PacketInfo)
    if p is not None:  # and whatever it parsed, the tracker takes
        ct = ConnTrack()
        ct.create(p, True, 0.0)
        ct.lookup(p, False, 0.0)


def test_parsed_packets_through_the_tracker():
    ct = ConnTrack()
    pkts = [
        (ipv4_packet(LOCAL, REMOTE, TCP(40000, 443, seq=M32, flags=SYN, options=WS7)), True, NEW),
        (ipv4_packet(REMOTE, LOCAL, TCP(443, 40000, seq=9, ack=0, flags=SYN | ACK, options=WS7)), False, EST),
        (ipv4_packet(LOCAL, REMOTE, TCP(40000, 443, seq=0, ack=10, flags=ACK, payload=b"GET /")), True, EST),
        (ipv4_packet(REMOTE, LOCAL, TCP(443, 40000, seq=10, ack=5, flags=ACK, payload=b"200 OK")), False, EST),
    ]
    for raw, out, verdict in pkts:
        p = packet_info(raw, 0, len(raw))
        assert ct.lookup(p, out, 0.0) == verdict
        if verdict == NEW:
            assert ct.create(p, out, 0.0)
    assert states(ct) == [State.TCP_ESTABLISHED]


# --- properties ----------------------------------------------------------------------------------

MODEL_TIMEOUTS = Timeouts(tcp_established=60, tcp_transitory=60, tcp_closed=60, udp_single=30, udp_stream=60,
                          icmp=30, other=60)
MODEL_MAX = 6  # small enough that the tracker's full-table sweep (16 entries) sees the whole table
GOOD_TCP_FLAGS = [SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK]
BAD_TCP_FLAGS = [0, SYN | FIN, FIN]


def model_key(p, out):
    """The reference model's flow identity, written independently of the tracker's packed key."""
    local, remote = (p.src, p.dst) if out else (p.dst, p.src)
    if p.proto in (6, 17):
        return FlowKey(p.proto, local, remote, *((p.sport, p.dport) if out else (p.dport, p.sport)))
    if p.proto == 1:
        local_asked = (p.icmp_type == 8) == out
        return FlowKey(1, local, remote, p.icmp_id, 0 if local_asked else 1)
    return FlowKey(p.proto, local, remote, 0, 0)


def model_timeout(proto, replied):
    return {6: 60, 47: 60, 1: 30}.get(proto) or (60 if replied else 30)


def can_start(p):
    return not (p.proto == 6 and p.tcp_flags != SYN or p.proto == 1 and p.icmp_type != 8)


ports = st.sampled_from([1000, 2000])
remotes = st.sampled_from([R, R2])
seqs = st.sampled_from([0, 1, 2, 1000, M32])


@st.composite
def plain_packets(draw):
    out, remote = draw(st.booleans()), draw(remotes)
    src, dst = (L, remote) if out else (remote, L)
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    if kind == "tcp":
        flags = draw(st.sampled_from(GOOD_TCP_FLAGS + BAD_TCP_FLAGS))
        return PacketInfo(6, src, dst, draw(ports), draw(ports), flags, draw(seqs), draw(seqs), 65535,
                          draw(st.sampled_from([0, 1, 100]))), out
    if kind == "udp":
        return PacketInfo(17, src, dst, draw(ports), draw(ports)), out
    if kind == "icmp":
        return PacketInfo(1, src, dst, icmp_type=draw(st.sampled_from([0, 8])), icmp_code=0,
                          icmp_id=draw(st.sampled_from([0, 1]))), out
    return PacketInfo(47, src, dst), out


@st.composite
def packets(draw):
    """Mostly plain packets; one in six an ICMP error quoting one, usually sent back the right way."""
    if draw(st.integers(0, 5)):
        return draw(plain_packets())
    inner, inner_out = draw(plain_packets())
    out = draw(st.sampled_from([not inner_out, not inner_out, inner_out]))
    dst = draw(st.sampled_from([inner.src, inner.src, inner.dst]))
    src = L if out else draw(st.sampled_from([RT, R]))
    return PacketInfo(1, src, dst, icmp_type=3, icmp_code=1, inner=inner), out


steps = st.one_of(
    st.tuples(st.just("packet"), packets(), st.booleans()),  # the bool: whether the rules allow it
    st.tuples(st.just("tick"), st.sampled_from([0.5, 5.0, 29.0, 30.0, 31.0, 60.0])),
    st.tuples(st.just("expire"), st.integers(1, 10)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, max_size=80))
def test_random_traffic_against_a_reference_model(script):
    """Every verdict agrees with a model that knows only which flows were created and when each last
    passed a packet: nothing is ESTABLISHED (either direction) without a live flow created for it or
    for its counterpart. All TCP timeouts are equal here, so the model need not know TCP states; it
    cannot tell ESTABLISHED from INVALID for TCP, and accepts that a bare SYN may end a flow
    (reopening after TIME_WAIT or a RST)."""
    ct = ConnTrack(MODEL_TIMEOUTS, max_flows=MODEL_MAX)
    model = {}  # FlowKey -> [expires, replied (UDP), originated locally]
    now = 0.0

    def prune():
        for key in [k for k, (expires, _, _) in model.items() if now >= expires]:
            del model[key]

    for step in script:
        if step[0] == "tick":
            now += step[1]
            prune()
            continue
        if step[0] == "expire":
            ct.expire(now, step[1])
            assert len(ct) >= len(model)
            continue
        (p, out), allowed = step[1], step[2]
        verdict = ct.lookup(p, out, now)
        if p.inner is not None:  # an ICMP error: related to a live flow, or nothing
            related = p.dst == p.inner.src and model_key(p.inner, not out) in model
            assert verdict == (EST if related else NEW)
            assert not ct.create(p, out, now)
            continue
        key = model_key(p, out)
        entry = model.get(key)
        if entry is None:
            assert verdict == NEW  # the invariant
        elif p.proto != 6:
            assert verdict == EST
        elif verdict == INVALID:
            continue  # refreshes nothing, changes nothing
        elif verdict == NEW:  # a SYN reopening after TIME_WAIT or CLOSE ended the flow
            assert p.tcp_flags == SYN
            del model[key]
        else:
            assert p.tcp_flags in GOOD_TCP_FLAGS
        if verdict == EST:
            if out != entry[2]:
                entry[1] = True
            entry[0] = now + model_timeout(p.proto, entry[1])
        elif allowed:
            expected = can_start(p) and len(model) < MODEL_MAX
            assert ct.create(p, out, now) == expected
            if expected:
                model[key] = [now + model_timeout(p.proto, False), False, out]
    ct.expire(now, 1000)
    assert len(ct) == len(model)
    assert sorted(e.key for e in ct.entries()) == sorted(model)


class Peer:
    """One well-behaved TCP endpoint: sends only inside the window its peer offered, acknowledges
    everything it received, advertises windows with its scale."""

    def __init__(self, isn, scale):
        self.una = self.nxt = isn  # oldest unacknowledged, next to send
        self.rcv = 0  # next expected from the peer
        self.scale = scale  # agreed shift for the windows this side advertises
        self.peer_edge = 0  # the peer allows sequence numbers below this
        self.last_ack = None


@FAST
@given(
    isn_l=st.one_of(st.integers(0, M32), st.integers(M32 - 70_000, M32)),
    isn_r=st.one_of(st.integers(0, M32), st.integers(M32 - 70_000, M32)),
    offers=st.sampled_from([(-1, -1), (7, -1), (0, 0), (7, 7), (14, 2), (2, 14)]),
    syn_wins=st.tuples(st.integers(1, 65535), st.integers(1, 65535)),
    ops=st.lists(st.tuples(st.sampled_from(["send", "ack", "retransmit", "dupack", "keepalive"]), st.booleans(),
                           st.integers(0, 65535)), max_size=60),
)
def test_well_behaved_tcp_is_never_invalid(isn_l, isn_r, offers, syn_wins, ops):
    """Whatever the ISNs (wrapping included), windows, scales and mix of data, ACKs, retransmissions
    and keepalives, traffic that real stacks could send passes, through to TIME_WAIT."""
    ct = ConnTrack()
    scaled = offers[0] >= 0 and offers[1] >= 0
    peers = {True: Peer(isn_l, offers[0] if scaled else 0), False: Peer(isn_r, offers[1] if scaled else 0)}

    def send(out, flags, seq, n=0, win=None, wscale=-1):
        me, other = peers[out], peers[not out]
        raw_win = 65535 if win is None else win
        p = tcp(out, flags, seq, me.rcv, raw_win, n, wscale=wscale)
        verdict = ct.lookup(p, out, 0.0)
        assert verdict == EST, (flags, seq, n)
        if flags & ACK:
            me.last_ack = (me.rcv, raw_win)
            other.una = me.rcv if (me.rcv - other.una) & M32 < 0x80000000 else other.una
            other.peer_edge = (me.rcv + (raw_win << me.scale)) & M32
        end = (seq + n + bool(flags & (SYN | FIN))) & M32
        if (end - me.nxt) & M32 < 0x80000000:
            me.nxt = end
        other.rcv = me.nxt  # delivered in order, at once

    syn = tcp(True, SYN, isn_l, 0, syn_wins[0], wscale=offers[0])
    assert ct.create(syn, True, 0.0)
    peers[True].nxt = (isn_l + 1) & M32
    peers[False].rcv = peers[True].nxt
    send(False, SYN | ACK, isn_r, win=syn_wins[1], wscale=offers[1])
    peers[True].peer_edge = (peers[True].nxt + syn_wins[1]) & M32  # a SYN+ACK's window is unscaled
    send(True, ACK, peers[True].nxt)
    for op, out, size in ops:
        me = peers[out]
        if op == "send":
            room = (me.peer_edge - me.nxt) & M32
            n = min(size, room) if room < 0x80000000 else 0
            if n:
                send(out, ACK | PSH, me.nxt, n)
        elif op == "ack":
            send(out, ACK, me.nxt, win=size)
        elif op == "retransmit" and me.nxt != me.una:
            send(out, ACK, me.una, min((me.nxt - me.una) & M32, size))
        elif op == "dupack" and me.last_ack is not None:
            p = tcp(out, ACK, me.nxt, me.last_ack[0], me.last_ack[1])
            assert ct.lookup(p, out, 0.0) == EST
        elif op == "keepalive":
            send(out, ACK, (me.nxt - 1) & M32)
    send(True, FIN | ACK, peers[True].nxt)
    send(False, FIN | ACK, peers[False].nxt)
    send(True, ACK, peers[True].nxt)
    assert states(ct) == [State.TCP_TIME_WAIT]
    assert ct.stats()["invalid"] == 0


def test_memory_per_flow():
    per_flow = flow_memory_bytes(20_000)
    print(f"\nconntrack: {per_flow:.0f} bytes per established TCP flow (20,000 flows, tracemalloc)")
    assert per_flow < 400


# --- the wire fast path ----------------------------------------------------------------------------
WIRE_PACKET = st.tuples(st.booleans(), st.sampled_from(["tcp", "udp", "icmp"]),
                        st.sampled_from([SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, 0, SYN | FIN]),
                        st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 64), st.floats(0, 50))


@FAST
@given(st.lists(WIRE_PACKET, max_size=60))
def test_lookup_wire_agrees_with_lookup(packets):
    """Two trackers fed the same packets: one parses every packet (``lookup``), the other tries
    ``lookup_wire`` first as the firewall does. Same verdicts, same table, same counters."""
    parsed, wire = ConnTrack(), ConnTrack()
    now = 0.0
    for out, proto, flags, seq, ack, n, step in packets:
        now += step
        src, dst, sport, dport = (LOCAL, REMOTE, 40000, 443) if out else (REMOTE, LOCAL, 443, 40000)
        if proto == "tcp":
            raw = ipv4_packet(src, dst, TCP(sport, dport, seq=seq, ack=ack, flags=flags, payload=b"x" * n))
        elif proto == "udp":
            raw = ipv4_packet(src, dst, UDP(sport, dport, b"x" * n))
        else:
            raw = ipv4_packet(src, dst, ICMP(8 if out else 0, 0, b"\x00\x01\x00\x01"))
        buf = bytearray(raw)
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

"""vswitch.health_probe: the userspace TCP client of health checks. Every packet it emits is parsed by dpkt
and its checksums are verified by a separate RFC 1071 sum; the target's replies are built by hand (with
``vswitch.headers``). Time is virtual.

A real kernel TCP server cannot be used without root (the probe's packets are raw IPv4): correctness
against real servers is for the lab."""

import ipaddress
import struct

import dpkt
import pytest
from hypothesis import HealthCheck as HypothesisHealthCheck, given, settings, strategies as st

import vswitch.health_probe as health_probe
from helpers import imported_modules
from vswitch.headers import IPv4, TCP, ipv4_packet
from vswitch.health_probe import ACK, FIN, PSH, RST, SYN, HealthProbe
from vswitch.nlb import http_request, parse_matcher

LB, TARGET = "10.0.1.100", "10.0.1.10"
LB_I, TARGET_I = int(ipaddress.IPv4Address(LB)), int(ipaddress.IPv4Address(TARGET))
SPORT, DPORT = 40001, 8080
ISN, IRS = 1_000_000, 5_000_000
M32 = 0xFFFFFFFF


# --- helpers -----------------------------------------------------------------------------------------

def probe(kind="tcp", now=0.0, timeout=10.0, **kw):
    kw.setdefault("isn", ISN)
    return HealthProbe(kind, LB_I, SPORT, TARGET_I, DPORT, now, timeout, **kw)


def reply(flags, seq, ack=0, payload=b"", *, sport=DPORT, dport=SPORT, src=TARGET, dst=LB, options=b"",
          window=65160, **ip):
    """A segment from the target, as its kernel would send it."""
    return ipv4_packet(src, dst, TCP(sport, dport, seq & M32, ack & M32, flags, window, payload, options), **ip)


def synack(isn=ISN, irs=IRS, mss=1460, **kw):
    opts = struct.pack("!BBH", 2, 4, mss) if mss else b""
    return reply(SYN | ACK, irs, isn + 1, options=opts, **kw)


def ones_sum(data: bytes) -> int:
    """RFC 1071, written out again so the probe's checksums are not checked with its own helper."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def check(pkt: bytes) -> dpkt.tcp.TCP:
    """An emitted packet: IPv4 header of 20 bytes, DF, TTL 64, TCP from the probe port to the target,
    both checksums valid (by recomputation and by dpkt's). Returns the TCP header, as dpkt reads it."""
    assert isinstance(pkt, bytes)
    ip = dpkt.ip.IP(pkt)
    assert ip.v == 4 and ip.hl == 5 and ip.len == len(pkt)
    assert ip.df and not ip.mf and ip.offset == 0 and ip.ttl == 64 and ip.p == dpkt.ip.IP_PROTO_TCP
    assert ip.src == ipaddress.IPv4Address(LB).packed and ip.dst == ipaddress.IPv4Address(TARGET).packed
    assert ones_sum(pkt[:20]) == 0xFFFF
    seg = pkt[20:]
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(seg))
    assert ones_sum(pseudo + seg) == 0xFFFF
    tcp = ip.data
    assert isinstance(tcp, dpkt.tcp.TCP) and (tcp.sport, tcp.dport) == (SPORT, DPORT)
    # dpkt's own checksums agree: repack with the sums cleared
    expected_ip, expected_tcp = ip.sum, tcp.sum
    ip.sum = tcp.sum = 0
    again = dpkt.ip.IP(bytes(ip))
    assert (again.sum, again.data.sum) == (expected_ip, expected_tcp)
    return dpkt.ip.IP(pkt).data


def flags(tcp) -> int:
    return tcp.flags & 0x3F


def established(path="/", **kw):
    """An HTTP probe past its handshake; returns (probe, the request's segments)."""
    p = probe("http", path=path, **kw)
    p.start()
    out = p.receive(synack(), 0.01)
    return p, [check(x) for x in out]


def answer(p, data: bytes, offset=0, fl=ACK | PSH, now=0.02):
    """The target's answer bytes from ``offset`` on, acknowledging the whole request."""
    return p.receive(reply(fl, IRS + 1 + offset, ISN + 1 + len(p.request), data), now)


# --- the SYN -----------------------------------------------------------------------------------------

def test_syn_fields_and_checksums():
    p = probe()
    syn = p.start()
    tcp = check(syn)
    assert flags(tcp) == SYN and tcp.seq == ISN and tcp.ack == 0 and tcp.win == 64240
    assert dpkt.tcp.parse_opts(tcp.opts) == [(dpkt.tcp.TCP_OPT_MSS, struct.pack("!H", 1460))]
    assert len(syn) == 20 + 24 and tcp.data == b""
    assert p.result is None and not p.done and p.reason == "" and p.status is None


def test_random_isn_and_text_addresses():
    a = HealthProbe("tcp", LB, SPORT, TARGET, DPORT, 0.0, 10.0)
    b = HealthProbe("tcp", LB, SPORT, TARGET, DPORT, 0.0, 10.0)
    assert {a.src, a.dst} == {LB_I, TARGET_I}
    assert dpkt.ip.IP(a.start()).data.seq != dpkt.ip.IP(b.start()).data.seq  # 1 in 2**32 to fail
    check(a.start())


def test_bad_arguments_refused():
    with pytest.raises(ValueError):
        probe("udp")
    with pytest.raises(ValueError):
        probe(timeout=0)
    with pytest.raises(ValueError):
        HealthProbe("tcp", LB_I, 0, TARGET_I, DPORT, 0.0, 10.0)
    with pytest.raises(ValueError):
        probe("http", matcher="abc")


def test_pure_core_imports_no_io():
    imported = imported_modules(health_probe)
    assert not imported & {"asyncio", "socket", "fcntl", "os", "time", "select"}


# --- TCP checks --------------------------------------------------------------------------------------

def test_tcp_synack_is_healthy_and_reset():
    p = probe()
    p.start()
    out = p.receive(synack(), 0.05)
    assert p.done and p.result is True and p.reason == "connected" and p.status is None
    assert len(out) == 1
    rst = check(out[0])
    assert flags(rst) & RST and not flags(rst) & (SYN | FIN) and rst.seq == ISN + 1 and rst.data == b""
    assert p.next_poll == float("inf") and p.poll(100.0) == []


def test_tcp_refused():
    p = probe()
    p.start()
    assert p.receive(reply(RST | ACK, 0, ISN + 1), 0.01) == []
    assert p.done and p.result is False and p.reason == "refused"


def test_rst_not_acknowledging_the_syn_is_ignored():
    p = probe()
    p.start()
    assert p.receive(reply(RST | ACK, 0, ISN + 2), 0.01) == []
    assert p.receive(reply(RST | ACK, 0, ISN), 0.01) == []
    assert p.receive(reply(RST, ISN + 1), 0.01) == []  # RFC 793: a RST without ACK in SYN-SENT
    assert not p.done and p.result is None
    p.receive(synack(), 0.02)
    assert p.result is True


def test_timeout_with_one_syn_retransmission():
    p = probe(now=100.0, timeout=10.0)
    syn = p.start()
    assert p.poll(100.5) == [] and p.next_poll == pytest.approx(101.0)
    again = p.poll(101.0)
    assert len(again) == 1 and again[0][20:] == syn[20:]  # the same segment (the IPv4 ident moves on)
    check(again[0])
    assert p.poll(105.0) == [] and p.next_poll == pytest.approx(110.0)
    assert p.poll(109.999) == [] and not p.done
    assert p.poll(110.0) == []
    assert p.done and p.result is False and p.reason == "timeout"


def test_answer_after_the_deadline_is_a_timeout_and_reset():
    p = probe(timeout=2.0)
    p.start()
    out = p.receive(synack(), 2.0)
    assert p.result is False and p.reason == "timeout"
    assert len(out) == 1 and flags(check(out[0])) == RST and check(out[0]).seq == ISN + 1


def test_wrong_packets_are_ignored():
    p = probe()
    p.start()
    wrong = [
        synack(sport=DPORT + 1),  # another target port
        synack(dport=SPORT + 1),  # another probe's port
        synack(src="10.0.1.11"),  # another target
        synack(dst="10.0.1.101"),  # another load balancer address
        synack(isn=ISN + 7),  # acknowledges something else
        reply(ACK, IRS, ISN + 1),  # no SYN
        reply(SYN, IRS),  # simultaneous open: not handled
        ipv4_packet(TARGET, LB, TCP(DPORT, SPORT, IRS, ISN + 1, SYN | ACK), more_fragments=True),
        synack(ttl=1)[:-1],  # truncated
        ipv4_packet(TARGET, LB, b"\0" * 20, proto=17),  # UDP
    ]
    bad_sum = bytearray(synack())
    bad_sum[37] ^= 0x40  # the TCP checksum
    wrong.append(bytes(bad_sum))
    bad_ip_sum = bytearray(synack())
    bad_ip_sum[11] ^= 0x01
    wrong.append(bytes(bad_ip_sum))
    for pkt in wrong:
        assert p.receive(pkt, 0.01) == [], pkt.hex()
    assert not p.done and p.result is None
    assert p.receive(memoryview(bytearray(synack())), 0.02)  # memoryview input
    assert p.result is True


def test_partial_checksum_is_not_checked_when_the_shell_says_so():
    bad_sum = bytearray(synack())
    bad_sum[36:38] = b"\x12\x34"  # what a NEEDS_CSUM packet carries: not a complete checksum
    p = probe()
    assert p.receive(bytes(bad_sum), 0.01) == [] and not p.done
    assert p.receive(bytes(bad_sum), 0.01, partial=True) and p.result is True


def test_ip_options_and_trailing_padding_accepted():
    seg = TCP(DPORT, SPORT, IRS, ISN + 1, SYN | ACK).emit(ipaddress.IPv4Address(TARGET).packed,
                                                          ipaddress.IPv4Address(LB).packed)
    pkt = IPv4(ipaddress.IPv4Address(TARGET), ipaddress.IPv4Address(LB), 6, seg, options=b"\x01" * 4).emit()
    p = probe()
    assert p.receive(pkt + b"\0" * 6, 0.01) and p.result is True


def test_done_probe_answers_like_a_closed_port():
    p = probe(timeout=1.5)
    p.start()
    p.poll(1.5)
    assert p.reason == "timeout"
    late = p.receive(synack(), 3.0)  # the target answered after all: release its half-open socket
    assert len(late) == 1
    rst = check(late[0])
    assert flags(rst) == RST and rst.seq == ISN + 1
    assert p.receive(reply(RST | ACK, IRS + 1, ISN + 1), 3.1) == []  # never a RST to a RST
    no_ack = check(p.receive(reply(FIN, IRS + 1, 0, b"xy"), 3.2)[0])
    assert flags(no_ack) == RST | ACK and no_ack.seq == 0 and no_ack.ack == IRS + 1 + 2 + 1
    assert p.result is False and p.reason == "timeout"


# --- HTTP checks -------------------------------------------------------------------------------------

def test_http_request_after_synack():
    p, out = established(path="/health")
    assert len(out) == 1
    req = out[0]
    assert flags(req) == ACK | PSH and req.seq == ISN + 1 and req.ack == IRS + 1
    assert req.data == http_request("/health", f"{TARGET}:{DPORT}")
    assert not p.done and p.state == "established"


def test_http_host_header():
    p = HealthProbe("http", LB_I, SPORT, TARGET_I, 80, 0.0, 6.0, isn=ISN)
    assert p.request == http_request("/", TARGET)
    p = probe("http", host="web.internal", path="/x")
    assert p.request == http_request("/x", "web.internal")


@pytest.mark.parametrize("status, healthy", [(200, True), (204, True), (302, True), (399, True),
                                             (404, False), (500, False), (503, False)])
def test_http_status_decides(status, healthy):
    p, _ = established()
    out = answer(p, f"HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n".encode())
    assert p.done and p.status == status and p.result is healthy and p.reason == f"http {status}"
    assert len(out) == 1
    rst = check(out[0])
    assert flags(rst) & RST and rst.seq == ISN + 1 + len(p.request)


@pytest.mark.parametrize("matcher", ["200-299,404", parse_matcher("200-299,404")])
@pytest.mark.parametrize("status, healthy", [(200, True), (299, True), (302, False), (404, True), (405, False)])
def test_http_matcher(matcher, status, healthy):
    p, _ = established(matcher=matcher)
    answer(p, f"HTTP/1.0 {status} X\r\n".encode())
    assert p.status == status and p.result is healthy


def test_status_line_split_across_segments():
    p, _ = established()
    out = answer(p, b"HTTP/1.1 2")
    assert not p.done and len(out) == 1
    ack = check(out[0])
    assert flags(ack) == ACK and ack.ack == IRS + 1 + 10 and ack.seq == ISN + 1 + len(p.request)
    out = answer(p, b"00 OK\r\nServer: x\r\n", offset=10)
    assert p.done and p.result is True and p.status == 200
    assert flags(check(out[0])) & RST


def test_out_of_order_segment_is_ignored_until_retransmitted():
    p, _ = established()
    out = answer(p, b"00 OK\r\n", offset=10)  # the first segment was lost
    assert not p.done and check(out[0]).ack == IRS + 1  # a duplicate ACK
    answer(p, b"HTTP/1.1 2")
    assert not p.done
    answer(p, b"HTTP/1.1 200 OK\r\n")  # the server retransmits from the start: only the new bytes count
    assert p.done and p.status == 200 and p.result is True


def test_old_duplicate_is_acknowledged():
    p, _ = established()
    answer(p, b"HTTP/1.")
    out = answer(p, b"HTTP/1.")
    assert not p.done and check(out[0]).ack == IRS + 1 + 7


def test_fin_before_status_line_is_unhealthy():
    p, _ = established()
    out = answer(p, b"", fl=FIN | ACK)
    assert p.done and p.result is False and p.reason == "closed" and p.status is None
    assert flags(check(out[0])) & RST


def test_fin_with_a_partial_line():
    p, _ = established()
    answer(p, b"HTTP/1.1 20", fl=FIN | ACK | PSH)
    assert p.result is False and p.reason == "closed"
    p, _ = established()
    answer(p, b"HTTP/1.0 200", fl=FIN | ACK | PSH)  # a status line that the close ends
    assert p.result is True and p.status == 200


def test_fin_after_a_gap_is_not_taken():
    p, _ = established()
    answer(p, b"", offset=5, fl=FIN | ACK)
    assert not p.done


def test_reset_before_status_line():
    p, _ = established()
    assert p.receive(reply(RST | ACK, IRS + 1, ISN + 1), 0.02) == []
    assert p.done and p.result is False and p.reason == "reset"


def test_reset_out_of_window_is_ignored():
    p, _ = established()
    assert p.receive(reply(RST, IRS + 1 + 100_000), 0.02) == [] and not p.done
    assert p.receive(reply(RST, IRS), 0.02) == [] and not p.done


def test_not_a_status_line():
    p, _ = established()
    answer(p, b"SSH-2.0-OpenSSH_9.6\r\n")
    assert p.done and p.result is False and p.reason == "no status line" and p.status is None


def test_endless_first_line():
    p, _ = established()
    chunk = b"HTTP/1.1 200 " + b"x" * 1000
    offset = 0
    while not p.done:
        answer(p, chunk, offset=offset)
        offset += len(chunk)
        assert offset <= HealthProbe.MAX_HEAD + len(chunk)
    assert p.result is False and p.reason == "no status line"


def test_wrong_acknowledgments_ignored_while_established():
    p, _ = established()
    ok = "HTTP/1.1 200 OK\r\n".encode()
    end = ISN + 1 + len(p.request)
    assert p.receive(reply(ACK | PSH, IRS + 1, end + 1, ok), 0.02) == []  # acknowledges the future
    assert p.receive(reply(ACK | PSH, IRS + 1, ISN, ok), 0.02) == []  # before our SYN
    assert p.receive(reply(PSH, IRS + 1, 0, ok), 0.02) == []  # no ACK
    assert p.receive(reply(ACK | PSH, IRS + 1, end, ok, sport=DPORT + 1), 0.02) == []
    assert not p.done
    assert p.receive(reply(ACK | PSH, IRS + 1, ISN + 1, ok), 0.02)  # the request not acknowledged yet: fine
    assert p.result is True


def test_http_timeout_resets_the_connection():
    p, _ = established(timeout=6.0)
    answer(p, b"HTTP/1.1 2")
    out = p.poll(6.0)
    assert p.done and p.result is False and p.reason == "timeout"
    rst = check(out[0])
    assert flags(rst) & RST and rst.seq == ISN + 1 + len(p.request)


def test_request_retransmitted_once_unless_acknowledged():
    p, out = established()
    assert p.next_poll == pytest.approx(1.01)
    again = p.poll(1.01)
    assert [check(x).data for x in again] == [x.data for x in out]
    assert p.poll(2.5) == [] and p.next_poll == 10.0
    q, _ = established()
    q.receive(reply(ACK, IRS + 1, ISN + 1 + len(q.request)), 0.02)  # acknowledged
    assert q.next_poll == 10.0 and q.poll(1.5) == []


def test_repeated_synack_resends_the_request():
    p, out = established()
    again = p.receive(synack(), 1.0)
    assert [check(x).data for x in again] == [x.data for x in out]
    answer(p, b"HTTP/1.1 200 OK\r\n")
    assert p.result is True


def test_request_cut_to_the_target_mss():
    p = probe("http", path="/" + "a" * 1200)
    p.start()
    segs = [check(x) for x in p.receive(synack(mss=536), 0.01)]
    assert [len(s.data) for s in segs] == [536, 536, len(p.request) - 1072]
    assert b"".join(s.data for s in segs) == p.request
    assert [s.seq for s in segs] == [ISN + 1, ISN + 537, ISN + 1073]
    assert [flags(s) for s in segs] == [ACK, ACK, ACK | PSH]
    q = probe("http", path="/" + "a" * 1200)
    assert len(q.receive(synack(mss=0), 0.01)) == 3  # no MSS option: 536
    r = probe("http", path="/" + "a" * 1200)
    assert len(r.receive(synack(mss=9000), 0.01)) == 1  # never more than our own 1460


def test_sequence_numbers_wrap():
    isn, irs = M32 - 3, M32 - 1
    p = probe("http", isn=isn)
    p.start()
    [req] = [check(x) for x in p.receive(synack(isn=isn, irs=irs), 0.01)]
    assert req.seq == (isn + 1) & M32 and req.ack == (irs + 1) & M32
    end = (isn + 1 + len(p.request)) & M32
    assert answer_wrapped(p, irs, end, b"HTTP/1.1 2", 0)
    out = answer_wrapped(p, irs, end, b"04 No Content\r\n", 10)
    assert p.result is True and p.status == 204 and check(out[0]).seq == end


def answer_wrapped(p, irs, end, data, offset):
    return p.receive(reply(ACK, (irs + 1 + offset) & M32, end, data), 0.02)


# --- garbage never raises ----------------------------------------------------------------------------

def _in_state(state: str) -> HealthProbe:
    if state == "syn_sent":
        p = probe("http")
        p.start()
    elif state == "established":
        p, _ = established()
    else:
        p = probe("tcp")
        p.receive(synack(), 0.01)
    return p


@settings(max_examples=400, deadline=None)
@given(state=st.sampled_from(["syn_sent", "established", "done"]), data=st.binary(max_size=120))
def test_random_bytes_never_raise(state, data):
    p = _in_state(state)
    assert p.receive(data, 0.03) == []
    assert p.receive(bytearray(data), 0.03) == [] and p.receive(memoryview(data), 0.03) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HypothesisHealthCheck.too_slow])
@given(state=st.sampled_from(["syn_sent", "established", "done"]), head=st.binary(min_size=20, max_size=20),
       body=st.binary(max_size=80), version_ihl=st.integers(0, 255), total=st.integers(0, 200))
def test_garbage_behind_a_plausible_ip_header_never_raises(state, head, body, version_ihl, total):
    pkt = bytearray(ipv4_packet(TARGET, LB, head + body, proto=6))
    pkt[0] = version_ihl
    struct.pack_into("!H", pkt, 2, total)
    ihl = (version_ihl & 0xF) * 4
    if 10 < ihl <= len(pkt):  # a valid header checksum, so that the parse goes on past it
        pkt[10:12] = b"\0\0"
        pkt[10:12] = struct.pack("!H", 0xFFFF - ones_sum(bytes(pkt[:ihl])))
    p = _in_state(state)
    for out in p.receive(bytes(pkt), 0.03) + p.receive(bytes(pkt), 0.03, partial=True):
        check(out)


@settings(max_examples=500, deadline=None)
@given(state=st.sampled_from(["syn_sent", "established", "done"]), fl=st.integers(0, 0x3F),
       seq=st.integers(0, M32), ack=st.sampled_from([0, ISN, ISN + 1, ISN + 2, M32]) | st.integers(0, M32),
       payload=st.binary(max_size=40) | st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 5"]),
       options=st.binary(max_size=40).map(lambda b: b[:len(b) // 4 * 4]), now=st.floats(0, 20))
def test_random_segments_of_the_probe(state, fl, seq, ack, payload, options, now):
    """Valid packets of this 4-tuple with any flags, numbers, options and data: no exception, every
    answer a well-formed packet, and a decided probe stays decided."""
    p = _in_state(state)
    before = (p.result, p.reason) if p.done else None
    for out in p.receive(reply(fl, seq, ack, payload, options=options), now) + p.poll(now):
        check(out)
    if before is not None:
        assert (p.result, p.reason) == before
    if p.done:
        assert p.result in (True, False) and p.reason


@pytest.mark.parametrize("options, mss", [
    (b"", 536), (struct.pack("!BBH", 2, 4, 1200), 1200), (b"\x01\x01" + struct.pack("!BBH", 2, 4, 700), 700),
    (b"\x04\x02\x01\x01" + struct.pack("!BBH", 2, 4, 800), 800),  # SACK permitted, NOPs, then MSS
    (b"\x00\x00\x00\x00" + struct.pack("!BBH", 2, 4, 800), 536),  # end of options first
    (b"\x08\x00\x00\x00", 536), (b"\x08\x20\x00\x00", 536), (b"\x02\x05\x00\x00", 536),  # bad lengths
    (b"\x02\x03\x00\x00", 536), (b"\x02\x04\x00\x00", HealthProbe.MIN_PEER_MSS),  # MSS 3 bytes long; MSS 0
    (struct.pack("!BBH", 2, 4, 10), HealthProbe.MIN_PEER_MSS),
])
def test_target_mss_option(options, mss):
    p = probe("http")
    p.receive(reply(SYN | ACK, IRS, ISN + 1, options=options + b"\0" * (-len(options) % 4)), 0.01)
    assert p.state == "established" and p.peer_mss == mss


@settings(max_examples=300, deadline=None)
@given(options=st.binary(max_size=40).map(lambda b: b[:len(b) // 4 * 4]))
def test_random_synack_options(options):
    p = probe("http")
    out = p.receive(reply(SYN | ACK, IRS, ISN + 1, options=options), 0.01)
    assert out and b"".join(check(x).data for x in out) == p.request


def test_not_bytes_ignored_and_repr():
    p = probe()
    for thing in (None, "a string", 12, [1, 2, 3], 1.5):
        assert p.receive(thing, 0.01) == []
    assert "tcp 10.0.1.10:8080" in repr(p) and "syn_sent" in repr(p)

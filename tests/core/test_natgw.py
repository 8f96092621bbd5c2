"""vswitch.natgw: distinct source ports per destination, the same flow keeps its mapping, replies map
back, exhaustion at the limit, reuse after the idle timeout, RST verdicts, ICMP identifiers, fragments,
export/import; a property test against a plain model. Time is virtual (``now``), ranges small."""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

import vswitch.natgw as natgw
from helpers import imported_modules
from vswitch.natgw import NatDrop, NatFlow, NatGateway

TCP, UDP, ICMP, GRE = 6, 17, 1, 47
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
PUB = int(ipaddress.IPv4Address("203.0.113.1"))
IN = int(ipaddress.IPv4Address("10.0.1.10"))
WEB = int(ipaddress.IPv4Address("198.51.100.7"))
DNS = int(ipaddress.IPv4Address("198.51.100.53"))
EPS = 1e-3


def gw(**kw):
    kw.setdefault("seed", 1)
    return NatGateway(PUB, **kw)


def test_pure_core_imports_no_io():
    imported = imported_modules(natgw)
    assert not imported & {"asyncio", "socket", "fcntl", "os", "time"}


def test_defaults_are_the_references():
    g = NatGateway(PUB)
    assert (g.port_range, g.max_per_destination, g.idle_timeout, g.tcp_closed_timeout) == \
        ((1024, 65535), 55000, 350.0, None)


@pytest.mark.parametrize("kw", [dict(port_range=(0, 10)), dict(port_range=(10, 9)), dict(port_range=(1, 65536)),
                                dict(max_per_destination=0), dict(idle_timeout=0), dict(tcp_closed_timeout=400),
                                dict(max_flows=0)])
def test_refuses_bad_settings(kw):
    with pytest.raises(ValueError):
        NatGateway(PUB, **kw)


# --- translation -----------------------------------------------------------------------------------

def test_same_flow_keeps_its_mapping_and_replies_map_back():
    g = gw()
    pub, port = g.translate_out(TCP, IN, 40000, WEB, 443, 0.0, tcp_flags=SYN)
    assert pub == PUB and 1024 <= port <= 65535 and g.created
    assert g.translate_out(TCP, IN, 40000, WEB, 443, 1.0, tcp_flags=ACK) == (PUB, port)
    assert not g.created
    assert g.translate_in(TCP, port, WEB, 443, 1.5, tcp_flags=SYN | ACK) == (IN, 40000)
    # Anything not exactly the reply tuple finds nothing.
    assert g.translate_in(TCP, port, WEB, 444, 2.0) is None
    assert g.translate_in(TCP, port, DNS, 443, 2.0) is None
    assert g.translate_in(UDP, port, WEB, 443, 2.0) is None
    assert g.translate_in(TCP, port ^ 1, WEB, 443, 2.0) is None
    s = g.stats()
    assert (s["ActiveConnectionCount"], s["ConnectionAttemptCount"], s["ConnectionEstablishedCount"]) == (1, 1, 1)
    assert (s["PacketsOutToDestination"], s["PacketsInFromDestination"]) == (2, 1)
    assert s["drops"] == {"in_no_flow": 4} and s["PacketsDropCount"] == 4


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 65535)), min_size=1, max_size=300,
                unique=True), st.sampled_from([TCP, UDP]))
def test_distinct_ports_for_many_sources_to_one_destination(sources, proto):
    g = gw()
    ports = [g.translate_out(proto, src, sport, WEB, 443, 0.0) for src, sport in sources]
    assert all(isinstance(p, tuple) and p[0] == PUB and 1024 <= p[1] <= 65535 for p in ports)
    assert len({p for _, p in ports}) == len(sources)
    for (src, sport), (_, port) in zip(sources, ports):
        assert g.translate_in(proto, port, WEB, 443, 1.0) == (src, sport)
        assert g.translate_out(proto, src, sport, WEB, 443, 2.0) == (PUB, port)


def test_a_port_is_distinct_per_destination_not_overall():
    """Ports are unique per (proto, destination address, destination port): with a range of 4, four
    flows fit to each of several destinations at once."""
    g = gw(port_range=(5000, 5003))
    dests = [(TCP, WEB, 443), (TCP, WEB, 80), (TCP, DNS, 443), (UDP, WEB, 443)]
    for proto, dst, dport in dests:
        got = {g.translate_out(proto, IN + i, 1000, dst, dport, 0.0)[1] for i in range(4)}
        assert got == {5000, 5001, 5002, 5003}
    assert len(g) == 16


def test_endpoint_dependent_mapping():
    g = gw()
    a = g.translate_out(UDP, IN, 5353, WEB, 53, 0.0)
    b = g.translate_out(UDP, IN, 5353, DNS, 53, 0.0)
    assert a != NatDrop.PORT_ALLOCATION and b != NatDrop.PORT_ALLOCATION
    assert g.translate_in(UDP, a[1], WEB, 53, 1.0) == (IN, 5353)
    assert g.translate_in(UDP, b[1], DNS, 53, 1.0) == (IN, 5353)


def test_exhaustion_at_the_range_and_at_the_limit():
    g = gw(port_range=(2000, 2009))
    for i in range(10):
        assert isinstance(g.translate_out(UDP, IN + i, 1000, DNS, 53, 0.0), tuple)
    assert g.translate_out(UDP, IN + 10, 1000, DNS, 53, 0.0) is NatDrop.PORT_ALLOCATION
    assert not NatDrop.PORT_ALLOCATION.rst
    assert g.stats()["ErrorPortAllocation"] == 1
    assert isinstance(g.translate_out(UDP, IN + 10, 1000, DNS, 54, 0.0), tuple)  # another destination
    assert g.translate_out(UDP, IN + 3, 1000, DNS, 53, 1.0)[0] == PUB  # existing flows go on

    g = gw(port_range=(2000, 2009), max_per_destination=3)
    for i in range(3):
        assert isinstance(g.translate_out(TCP, IN + i, 1000, WEB, 443, 0.0, tcp_flags=SYN), tuple)
    assert g.translate_out(TCP, IN + 3, 1000, WEB, 443, 0.0, tcp_flags=SYN) is NatDrop.PORT_ALLOCATION
    assert g.stats()["ErrorPortAllocation"] == 1 and g.stats()["ConnectionAttemptCount"] == 4


def test_ports_are_reused_after_the_idle_timeout():
    g = gw(port_range=(2000, 2001))
    p1 = g.translate_out(UDP, IN, 1000, DNS, 53, 0.0)[1]
    p2 = g.translate_out(UDP, IN + 1, 1000, DNS, 53, 100.0)[1]
    assert g.translate_out(UDP, IN + 2, 1000, DNS, 53, 350.0 - EPS) is NatDrop.PORT_ALLOCATION
    # Idle for exactly 350 s: the first flow has expired and its port goes to the newcomer.
    assert g.translate_out(UDP, IN + 2, 1000, DNS, 53, 350.0) == (PUB, p1)
    assert g.stats()["IdleTimeoutCount"] == 1
    assert g.translate_in(UDP, p1, DNS, 53, 351.0) == (IN + 2, 1000)
    assert g.translate_in(UDP, p2, DNS, 53, 351.0) == (IN + 1, 1000)


def test_packets_either_way_keep_a_flow_alive():
    g = gw()
    port = g.translate_out(UDP, IN, 1000, DNS, 53, 0.0)[1]
    assert g.translate_out(UDP, IN, 1000, DNS, 53, 349.0) == (PUB, port)
    assert g.translate_in(UDP, port, DNS, 53, 698.0) == (IN, 1000)
    assert g.translate_in(UDP, port, DNS, 53, 1047.0) == (IN, 1000)
    assert g.translate_in(UDP, port, DNS, 53, 1047.0 + 350.0) is None  # idle for exactly 350 s
    assert g.stats()["IdleTimeoutCount"] == 1 and len(g) == 0


def test_icmp_errors_map_without_refreshing():
    g = gw()
    port = g.translate_out(UDP, IN, 1000, DNS, 53, 0.0)[1]
    assert g.translate_in(UDP, port, DNS, 53, 300.0, refresh=False) == (IN, 1000)
    assert g.translate_in(UDP, port, DNS, 53, 350.0) is None


# --- TCP -------------------------------------------------------------------------------------------

def test_late_tcp_from_inside_gets_a_rst_verdict():
    g = gw()
    port = g.translate_out(TCP, IN, 40000, WEB, 443, 0.0, tcp_flags=SYN)[1]
    assert g.translate_out(TCP, IN, 40000, WEB, 443, 10.0, tcp_flags=ACK) == (PUB, port)
    late = g.translate_out(TCP, IN, 40000, WEB, 443, 360.0, tcp_flags=ACK | 0x08)
    assert late is NatDrop.IDLE_TIMEOUT and late.rst
    assert g.stats()["IdleTimeoutCount"] == 1
    # Never seen at all: also answered with a RST; a RST itself is not.
    assert g.translate_out(TCP, IN, 40001, WEB, 443, 360.0, tcp_flags=ACK) is NatDrop.NOT_A_FLOW_START
    assert NatDrop.NOT_A_FLOW_START.rst
    assert g.translate_out(TCP, IN, 40001, WEB, 443, 360.0, tcp_flags=RST | ACK) is NatDrop.STRAY_RST
    assert not NatDrop.STRAY_RST.rst
    assert g.translate_out(TCP, IN, 40001, WEB, 443, 360.0, tcp_flags=SYN | FIN) is NatDrop.NOT_A_FLOW_START
    # A new SYN starts over; without flags any packet may start a flow.
    assert isinstance(g.translate_out(TCP, IN, 40000, WEB, 443, 361.0, tcp_flags=SYN), tuple)
    assert isinstance(g.translate_out(TCP, IN, 40002, WEB, 443, 361.0), tuple)
    # Packets from outside without a flow are dropped, never reset.
    assert g.translate_in(TCP, 9, WEB, 443, 361.0, tcp_flags=SYN) is None
    assert g.stats()["drops"] == {"idle_timeout": 1, "not_a_flow_start": 2, "stray_rst": 1, "in_no_flow": 1}


def test_closed_tcp_flows_use_the_shorter_timeout_when_set():
    g = gw(tcp_closed_timeout=10.0, port_range=(3000, 3000))
    g.translate_out(TCP, IN, 1, WEB, 443, 0.0, tcp_flags=SYN)
    g.translate_out(TCP, IN, 1, WEB, 443, 1.0, tcp_flags=FIN | ACK)  # one FIN: still 350 s
    assert g.translate_out(TCP, IN + 1, 1, WEB, 443, 100.0, tcp_flags=SYN) is NatDrop.PORT_ALLOCATION
    g.translate_in(TCP, 3000, WEB, 443, 101.0, tcp_flags=FIN | ACK)  # both FINs: 10 s
    assert g.translate_out(TCP, IN + 1, 1, WEB, 443, 111.0 - EPS, tcp_flags=SYN) is NatDrop.PORT_ALLOCATION
    assert g.translate_out(TCP, IN + 1, 1, WEB, 443, 111.0, tcp_flags=SYN) == (PUB, 3000)
    # A RST from either side closes at once; a SYN on the same tuple (port reuse) opens it again.
    g.translate_in(TCP, 3000, WEB, 443, 112.0, tcp_flags=RST)
    assert g.translate_out(TCP, IN + 1, 1, WEB, 443, 113.0, tcp_flags=SYN) == (PUB, 3000)
    assert g.translate_out(TCP, IN + 2, 1, WEB, 443, 123.0, tcp_flags=SYN) is NatDrop.PORT_ALLOCATION
    assert g.export(TCP, IN + 1, 1, WEB, 443, 113.0).tcp == 0

    g = gw(port_range=(3000, 3000))  # off by default: the reference's single 350 s
    g.translate_out(TCP, IN, 1, WEB, 443, 0.0, tcp_flags=SYN)
    g.translate_out(TCP, IN, 1, WEB, 443, 1.0, tcp_flags=RST)
    assert g.translate_out(TCP, IN + 1, 1, WEB, 443, 350.0, tcp_flags=SYN) is NatDrop.PORT_ALLOCATION
    assert g.translate_out(TCP, IN + 1, 1, WEB, 443, 351.0, tcp_flags=SYN) == (PUB, 3000)


# --- ICMP, other protocols, fragments --------------------------------------------------------------

def test_icmp_echo_identifier_plays_the_port():
    g = gw()
    a = g.translate_out(ICMP, IN, 7, WEB, 0, 0.0)
    b = g.translate_out(ICMP, IN + 1, 7, WEB, 123, 0.0)  # the destination "port" is ignored for ICMP
    assert a[1] != b[1]
    assert g.translate_out(ICMP, IN, 7, WEB, 99, 1.0) == a
    assert g.translate_in(ICMP, a[1], WEB, 0, 1.0) == (IN, 7)
    assert g.translate_in(ICMP, b[1], WEB, 555, 1.0) == (IN + 1, 7)
    assert g.export(ICMP, IN, 7, WEB, 1, 1.0).dport == 0


def test_other_protocols_are_dropped():
    g = gw()
    assert g.translate_out(GRE, IN, 0, WEB, 0, 0.0) is NatDrop.UNSUPPORTED_PROTOCOL
    assert g.translate_in(GRE, 0, WEB, 0, 0.0) is None
    assert len(g) == 0


def test_udp_fragments_pass_and_tcp_icmp_fragments_drop():
    g = gw(fragment_timeout=30.0)
    assert g.translate_out(TCP, IN, 1, WEB, 443, 0.0, first_fragment=True) is NatDrop.FRAGMENT
    assert g.translate_out(ICMP, IN, 1, WEB, 0, 0.0, first_fragment=True) is NatDrop.FRAGMENT
    port = g.translate_out(UDP, IN, 5000, DNS, 53, 0.0, first_fragment=True)[1]
    assert g.fragment_out(UDP) == PUB
    assert g.fragment_out(TCP) is NatDrop.FRAGMENT and g.fragment_out(ICMP) is NatDrop.FRAGMENT
    # Inbound: the first fragment teaches the inside address of the datagram's later fragments.
    assert g.fragment_in(UDP, DNS, 0x1234, 0.5) is None  # overtook its first fragment: dropped
    assert g.translate_in(UDP, port, DNS, 53, 1.0, fragment_id=0x1234) == (IN, 5000)
    assert g.fragment_in(UDP, DNS, 0x1234, 1.1) == IN
    assert g.fragment_in(UDP, DNS, 0x1235, 1.1) is None
    assert g.fragment_in(UDP, WEB, 0x1234, 1.1) is None
    assert g.fragment_in(TCP, DNS, 0x1234, 1.1) is None
    assert g.fragment_in(UDP, DNS, 0x1234, 31.0) is None  # fragment_timeout
    g.translate_out(TCP, IN, 2, WEB, 443, 0.0, tcp_flags=SYN)
    assert g.translate_in(TCP, g.export(TCP, IN, 2, WEB, 443, 0.0).nat_port, WEB, 443, 1.0,
                          fragment_id=9) is None
    g.expire(31.0)
    assert g.stats()["fragments"] == 0
    assert g.stats()["drops"] == {"fragment": 4, "in_fragment_unmatched": 4, "in_fragment": 2}


def test_fragment_memory_is_bounded_oldest_first():
    g = gw(max_fragments=2)
    port = g.translate_out(UDP, IN, 5000, DNS, 53, 0.0)[1]
    for ip_id in (1, 2, 3):
        g.translate_in(UDP, port, DNS, 53, float(ip_id), fragment_id=ip_id)
    assert [g.fragment_in(UDP, DNS, i, 4.0) for i in (1, 2, 3)] == [None, IN, IN]


# --- housekeeping, limits, replication -------------------------------------------------------------

def test_expire_sweeps_in_slices_and_reports_flows():
    g = gw()
    for i in range(50):
        g.translate_out(UDP, IN + i, 1000, DNS, 53, float(i))
    assert g.expire(360.0, budget=0) == []
    first = g.expire(360.0, budget=20)  # examines flows 0–19, of which 0–10 are idle ≥ 350 s
    assert sorted(r.src - IN for r in first) == list(range(11))
    removed = []
    for _ in range(10):
        removed += g.expire(375.0, budget=20)
    assert sorted(r.src - IN for r in first + removed) == list(range(26))  # idle ≥ 350 s at t = 375
    assert all(isinstance(r, NatFlow) and r.remaining <= 0 for r in removed)
    assert len(g) == 24 and g.stats()["IdleTimeoutCount"] == 26
    assert g.stats()["destinations"] == 1
    g.expire(1000.0, budget=1000)
    assert len(g) == 0 and g.stats()["destinations"] == 0


def test_table_full():
    g = gw(max_flows=3)
    for i in range(3):
        g.translate_out(UDP, IN + i, 1000, DNS, 53, 0.0)
    assert g.translate_out(UDP, IN + 3, 1000, DNS, 53, 1.0) is NatDrop.TABLE_FULL
    assert isinstance(g.translate_out(UDP, IN + 3, 1000, DNS, 53, 350.0), tuple)  # room after expiry


def test_export_import_carries_a_flow_to_another_node():
    primary, secondary = gw(seed=1), gw(seed=2)
    port = primary.translate_out(TCP, IN, 40000, WEB, 443, 100.0, tcp_flags=SYN)[1]
    rec = primary.export(TCP, IN, 40000, WEB, 443, 130.0)
    assert rec == NatFlow(TCP, IN, 40000, WEB, 443, port, 320.0, 0)
    assert primary.export(TCP, IN, 40001, WEB, 443, 130.0) is None
    # The record travels as JSON (a list); the secondary's clock is its own.
    assert secondary.import_(list(rec), 5000.0)
    assert secondary.translate_in(TCP, port, WEB, 443, 5000.0) == (IN, 40000)
    assert secondary.translate_out(TCP, IN, 40000, WEB, 443, 5001.0, tcp_flags=ACK) == (PUB, port)
    assert secondary.export(TCP, IN, 40000, WEB, 443, 5001.0).remaining == 350.0
    # Expired records and records from another range are refused.
    assert not secondary.import_(rec._replace(remaining=0.0), 0.0)
    assert not gw(port_range=(1024, 1100)).import_(rec._replace(nat_port=2000), 0.0)
    # The copy expires as the original would.
    s2 = gw()
    s2.import_(rec, 0.0)
    assert s2.translate_in(TCP, port, WEB, 443, 320.0) is None


def test_import_replaces_a_conflicting_flow():
    a, b = gw(port_range=(2000, 2000)), gw(port_range=(2000, 2000))
    a.translate_out(UDP, IN, 1, DNS, 53, 0.0)
    b.translate_out(UDP, IN + 1, 1, DNS, 53, 0.0)  # split brain: both gave port 2000 to DNS:53
    assert b.import_(a.export(UDP, IN, 1, DNS, 53, 0.0), 0.0)
    assert b.translate_in(UDP, 2000, DNS, 53, 1.0) == (IN, 1)
    assert b.export(UDP, IN + 1, 1, DNS, 53, 1.0) is None
    assert b.stats()["import_conflicts"] == 1 and len(b) == 1
    # Re-importing the same flow replaces it (a fresher ``remaining``), no conflict.
    assert b.import_(a.export(UDP, IN, 1, DNS, 53, 0.0)._replace(remaining=10.0), 300.0)
    assert b.stats()["import_conflicts"] == 1 and len(b) == 1
    assert b.flows(300.0) == [NatFlow(UDP, IN, 1, DNS, 53, 2000, 10.0, 0)]


def test_flow_memory_is_as_documented():
    assert 200 < natgw.flow_memory_bytes(20_000) < 450


# --- against a model -------------------------------------------------------------------------------

PORTS = (5000, 5007)
LIMIT = 6
ops = st.lists(st.tuples(st.sampled_from(["out", "in", "expire"]), st.integers(0, 9), st.integers(0, 2),
                         st.sampled_from([0.0, 0.5, 1.0, 30.0, 100.0, 349.5, 350.0])), max_size=120)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_agrees_with_a_model(script):
    """Sources 0–9 to destinations 0–2 (UDP); a model of live flows (last packet < 350 s ago) predicts
    every answer: same port while live, a port unused by the destination's live flows when new, a
    refusal exactly when the destination has LIMIT live flows."""
    g = gw(port_range=PORTS, max_per_destination=LIMIT)
    model: dict[tuple[int, int], list] = {}  # (source, destination) → [port, last packet]
    now = 0.0
    for kind, i, j, dt in script:
        now += dt
        live = {k: v for k, v in model.items() if now < v[1] + 350.0}
        model = live
        src, dst = IN + i, DNS + j
        if kind == "out":
            got = g.translate_out(UDP, src, 1000 + i, dst, 53, now)
            if (i, j) in live:
                assert got == (PUB, live[i, j][0])
                live[i, j][1] = now
            else:
                taken = {v[0] for k, v in live.items() if k[1] == j}
                if len(taken) >= LIMIT:
                    assert got is NatDrop.PORT_ALLOCATION
                else:
                    assert isinstance(got, tuple) and PORTS[0] <= got[1] <= PORTS[1] and got[1] not in taken
                    model[i, j] = [got[1], now]
        elif kind == "in":
            flows = sorted(k for k in live if k[1] == j)
            if flows:
                k = flows[i % len(flows)]
                assert g.translate_in(UDP, live[k][0], dst, 53, now) == (IN + k[0], 1000 + k[0])
                live[k][1] = now
            unused = set(range(PORTS[0], PORTS[1] + 1)) - {v[0] for k, v in live.items() if k[1] == j}
            for port in unused:
                assert g.translate_in(UDP, port, dst, 53, now) is None
        else:
            g.expire(now, budget=3)
        assert len(g) >= len(model)
    g.expire(now, budget=10_000)
    assert len(g) == len({k: v for k, v in model.items() if now < v[1] + 350.0})

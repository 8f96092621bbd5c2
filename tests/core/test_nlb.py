"""vswitch.nlb: rendezvous picks (consistency, spread, minimal disruption), listener flow tables
(stickiness, idle timeouts, resets of unhealthy targets, fail open, RST verdicts, replication) and
health checks (exact thresholds, flapping against a model, schedule, matcher). Time is virtual."""

import collections
import ipaddress
import random

import pytest
from hypothesis import given, settings, strategies as st

import vswitch.nlb as nlb
from helpers import imported_modules
from vswitch.controlplane import resources
from vswitch.hyperplane_shard import flow_hash
from vswitch.nlb import (
    HealthChange, HealthCheck, Listener, NlbDrop, NlbFlow, Target, TargetGroup, TargetState, http_request,
    http_status, parse_matcher, pick,
)

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
INITIAL, HEALTHY, UNHEALTHY = TargetState.INITIAL, TargetState.HEALTHY, TargetState.UNHEALTHY
LB = int(ipaddress.IPv4Address("10.0.1.100"))
CLIENT = int(ipaddress.IPv4Address("10.0.2.20"))
EPS = 1e-3


def targets(n, port=8080):
    return [Target(f"t{i}", int(ipaddress.IPv4Address("10.0.1.10")) + i, port) for i in range(n)]


def group(n, **spec):
    return TargetGroup(targets(n), spec or None)


def make_healthy(g, ids, now=0.0):
    for tid in ids:
        for _ in range(g.check(tid).healthy_threshold):
            g.record(tid, True, now)


def make_unhealthy(g, ids, now=0.0):
    for tid in ids:
        for _ in range(g.check(tid).unhealthy_threshold):
            g.record(tid, False, now)


def chi_square(counts, n):
    expected = n / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def test_pure_core_imports_no_io():
    imported = imported_modules(nlb)
    assert not imported & {"asyncio", "socket", "fcntl", "os", "time", "random"}


# --- picking ---------------------------------------------------------------------------------------

def test_pick_is_consistent_and_none_without_targets():
    ts = targets(5)
    assert pick(123, ts) == pick(123, list(reversed(ts))) == pick(123, ts)
    assert pick(123, []) is None
    assert pick(123, ts[:1]) == ts[0]


def test_pick_spreads_flows_evenly():
    """10,000 random flows over 4 targets: chi-square (3 dof) below the 0.1 % critical value 16.3."""
    rng = random.Random(3)
    ts = targets(4)
    counts = collections.Counter(pick(flow_hash(6, rng.getrandbits(32), LB, rng.randrange(1024, 65536), 80,
                                                rng.getrandbits(32)), ts).id for _ in range(10_000))
    assert len(counts) == 4 and chi_square(list(counts.values()), 10_000) < 16.3


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 8), st.data())
def test_pick_moves_only_what_must_move(n, data):
    ts = targets(n)
    gone = data.draw(st.sampled_from(ts))
    extra = Target("new", 1, 1)
    for h in data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=50)):
        before = pick(h, ts)
        after_removal = pick(h, [t for t in ts if t != gone])
        assert after_removal == before or before == gone
        after_add = pick(h, ts + [extra])
        assert after_add in (before, extra)


# --- health checks ---------------------------------------------------------------------------------

def test_defaults_follow_the_api_model():
    """The API's HealthCheck defaults (and the reference's): TCP, interval 30 s, timeout 10 s TCP /
    6 s HTTP, thresholds 5 healthy / 2 unhealthy, matcher 200-399."""
    tcp = HealthCheck.from_spec(resources.HealthCheck().model_dump())
    assert (tcp.protocol, tcp.interval, tcp.timeout, tcp.healthy_threshold, tcp.unhealthy_threshold,
            tcp.matcher, tcp.path, tcp.port) == ("tcp", 30.0, 10.0, 5, 2, ((200, 399),), "/", None)
    http = HealthCheck.from_spec(resources.HealthCheck(protocol="http").model_dump())
    assert http.timeout == 6.0
    plain = HealthCheck()
    assert (plain.interval, plain.timeout, plain.healthy_threshold, plain.unhealthy_threshold) == (30.0, 10.0, 5, 2)
    assert HealthCheck.from_spec(None).state is INITIAL
    with pytest.raises(ValueError):
        HealthCheck(protocol="udp")
    with pytest.raises(ValueError):
        HealthCheck(interval=0)


def test_transitions_at_exact_thresholds():
    hc = HealthCheck()
    assert [hc.record(True, t) for t in range(4)] == [None] * 4 and hc.state is INITIAL
    assert hc.record(True, 4) is HEALTHY
    assert hc.record(True, 5) is None
    assert hc.record(False, 6) is None and hc.state is HEALTHY
    assert hc.record(False, 7) is UNHEALTHY
    assert [hc.record(False, t) for t in range(3)] == [None] * 3
    assert [hc.record(True, t) for t in range(4)] == [None] * 4 and hc.state is UNHEALTHY
    assert hc.record(True, 0) is HEALTHY
    fresh = HealthCheck(healthy_threshold=3, unhealthy_threshold=3)
    assert [fresh.record(False, 0) for _ in range(3)] == [None, None, UNHEALTHY]  # initial → unhealthy


def test_flapping_keeps_the_state():
    for start in (INITIAL, HEALTHY, UNHEALTHY):
        hc = HealthCheck()
        if start is HEALTHY:
            [hc.record(True, 0) for _ in range(5)]
        elif start is UNHEALTHY:
            [hc.record(False, 0) for _ in range(2)]
        for i in range(100):
            assert hc.record(i % 2 == 0, float(i)) is None
        assert hc.state is start


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 10), st.integers(2, 10), st.lists(st.booleans(), max_size=60))
def test_state_machine_agrees_with_a_model(healthy_threshold, unhealthy_threshold, results):
    """The state is decided by the latest streak that reached its threshold."""
    hc = HealthCheck(healthy_threshold=healthy_threshold, unhealthy_threshold=unhealthy_threshold)
    state, streak, last = INITIAL, 0, None
    for i, ok in enumerate(results):
        streak = streak + 1 if ok == last else 1
        last = ok
        new = state
        if ok and streak >= healthy_threshold:
            new = HEALTHY
        elif not ok and streak >= unhealthy_threshold:
            new = UNHEALTHY
        assert hc.record(ok, float(i)) == (new if new is not state else None)
        state = new
        assert hc.state is state


def test_probe_schedule():
    hc = HealthCheck(interval=30, timeout=10)
    assert hc.due(0.0)
    assert hc.start(5.0) == 15.0
    assert not hc.due(100.0)  # one probe at a time: the result is owed first
    hc.record(False, 15.0)
    assert not hc.due(35.0 - EPS) and hc.due(35.0) and hc.next_due == 35.0
    assert hc.start(40.0) == 50.0 and hc.next_due == 70.0


def test_matcher_and_http_helpers():
    assert parse_matcher("200-399,404") == ((200, 399), (404, 404))
    assert parse_matcher("200, 302") == ((200, 200), (302, 302))
    for bad in ("199", "300-200", "200-600", "abc", "200-", "", "2000"):
        with pytest.raises(ValueError):
            parse_matcher(bad)
    hc = HealthCheck(protocol="http", matcher="200-299,404")
    assert [hc.http_ok(s) for s in (200, 299, 300, 404, 500, None)] == [True, True, False, True, False, False]
    assert http_status(b"HTTP/1.1 204 No Content\r\n") == 204
    assert http_status(b"HTTP/1.0 404\r\n") == 404
    assert http_status(b"SSH-2.0-OpenSSH\r\n") is None and http_status(b"HTTP/1.1 20") is None
    req = http_request("/health", "10.0.1.10:8080")
    assert req.startswith(b"GET /health HTTP/1.1\r\nHost: 10.0.1.10:8080\r\n") and req.endswith(b"\r\n\r\n")


def test_group_health_changes_and_eligibility():
    g = group(3)
    assert g.eligible() == tuple(targets(3))  # nothing healthy yet: fail open
    assert [t.id for t in g.due(0.0)] == ["t0", "t1", "t2"]
    for _ in range(4):
        assert g.record("t0", True, 1.0) is None
    assert g.record("t0", True, 1.0) == HealthChange("t0", INITIAL, HEALTHY)
    assert g.eligible() == (targets(3)[0],) and g.healthy_count == 1
    make_healthy(g, ["t1"])
    assert g.record("t1", False, 2.0) is None
    assert g.record("t1", False, 2.0) == HealthChange("t1", HEALTHY, UNHEALTHY)
    assert g.eligible() == (targets(3)[0],)
    make_unhealthy(g, ["t0"])
    assert g.eligible() == tuple(targets(3)) and g.healthy_count == 0  # fail open again


def test_group_schedule_and_reconfiguration():
    g = group(2, interval=10, timeout=2)
    for t in g.due(0.0):
        assert g.check(t.id).start(0.0) == 2.0
    assert g.due(5.0) == [] and g.next_due() == float("inf")  # both in flight
    g.record("t0", True, 1.0)
    assert g.next_due() == 10.0
    make_healthy(g, ["t1"])
    g.set_health_check({"interval": 60, "healthy_threshold": 3})
    assert g.state("t1") is HEALTHY and g.check("t1").interval == 60 and g.check("t0").successes == 1
    # Kept ids keep their health (and take a new address); new ones start initial.
    moved = Target("t1", 99, 8081)
    g.set_targets([moved, Target("t9", 7, 80)])
    assert g.state("t1") is HEALTHY and g.members["t1"].target == moved and g.state("t9") is INITIAL
    assert "t0" not in g.members and g.eligible() == (moved,)
    with pytest.raises(ValueError):
        g.set_targets([moved, moved])
    with pytest.raises(ValueError):
        TargetGroup([], {"matcher": "700"})


# --- listeners -------------------------------------------------------------------------------------

def syn(listener, i, now, seq=0, dst=LB):
    return listener.forward(CLIENT + i, 10000 + i, dst, now, tcp_flags=SYN, seq=seq)


def data(listener, i, now, dst=LB, flags=ACK):
    return listener.forward(CLIENT + i, 10000 + i, dst, now, tcp_flags=flags)


def test_flows_stick_to_their_target_while_the_group_changes():
    g = group(4)
    make_healthy(g, ["t0", "t1", "t2", "t3"])
    lst = Listener("tcp", 80, g)
    first = {i: syn(lst, i, 0.0) for i in range(200)}
    assert all(isinstance(t, Target) for t in first.values()) and len(lst) == 200 and lst.created
    assert len({t.id for t in first.values()}) == 4
    # Targets join; others are deregistered; another turns unhealthy: none of it moves a live flow
    # whose own target is still fine.
    g.set_targets(targets(4) + [Target("t8", 8, 8080), Target("t9", 9, 8080)])
    make_healthy(g, ["t8", "t9"])
    make_unhealthy(g, ["t3"])
    for i, t in first.items():
        if t.id != "t3":
            assert data(lst, i, 1.0) == t
    assert not lst.created
    # A retransmitted SYN (same flow) finds its flow, whatever its sequence number now hashes to.
    some = next(i for i, t in first.items() if t.id != "t3")
    assert syn(lst, some, 2.0, seq=12345) == first[some]


def test_deregistered_targets_drain_and_can_be_cut():
    g = group(3)
    make_healthy(g, ["t0", "t1", "t2"])
    lst = Listener("tcp", 80, g)
    first = {i: syn(lst, i, 0.0) for i in range(60)}
    g.set_targets(targets(2))  # t2 deregistered
    on_t2 = [i for i, t in first.items() if t.id == "t2"]
    assert on_t2 and all(data(lst, i, 1.0).id == "t2" for i in on_t2)  # draining: still forwarded
    assert all(syn(lst, 100 + i, 1.0, seq=i).id != "t2" for i in range(60))  # no new flows
    cut = lst.reset_target("t2", 2.0)
    assert sorted(f.src - CLIENT for f in cut) == on_t2
    assert all(data(lst, i, 3.0) is NlbDrop.NOT_A_FLOW_START for i in on_t2)


def test_unhealthy_targets_flows_are_reset_and_get_no_new_flows():
    g = group(3)
    make_healthy(g, ["t0", "t1", "t2"])
    lst = Listener("tcp", 80, g)
    first = {i: syn(lst, i, 0.0) for i in range(90)}
    on_t1 = sorted(i for i, t in first.items() if t.id == "t1")
    make_unhealthy(g, ["t1"], now=5.0)
    # A packet of such a flow before the shell asked for the resets: refused with a RST verdict.
    hit = data(lst, on_t1[0], 5.0)
    assert hit is NlbDrop.TARGET_UNHEALTHY and hit.rst
    resets = lst.reset_unhealthy(6.0)
    assert sorted(f.src - CLIENT for f in resets) == on_t1[1:]
    assert all(isinstance(f, NlbFlow) and f.target_id == "t1" and f.dst == LB for f in resets)
    assert lst.stats()["resets"] == len(on_t1) and lst.reset_unhealthy(6.0) == []
    assert all(syn(lst, 200 + i, 7.0, seq=i).id != "t1" for i in range(100))
    # Its flows' clients reconnect and land elsewhere.
    assert syn(lst, on_t1[0], 8.0).id != "t1"


def test_udp_flows_of_an_unhealthy_target_move():
    g = group(2)
    make_healthy(g, ["t0", "t1"])
    lst = Listener("udp", 53, g)
    got = {i: lst.forward(CLIENT + i, 5000, LB, 0.0) for i in range(40)}
    on_t0 = [i for i, t in got.items() if t.id == "t0"]
    make_unhealthy(g, ["t0"])
    assert all(lst.forward(CLIENT + i, 5000, LB, 1.0).id == "t1" for i in on_t0)
    assert lst.stats()["resets"] == len(on_t0)


def test_fail_open_when_every_target_is_unhealthy():
    g = group(3)
    make_healthy(g, ["t0", "t1", "t2"])
    lst = Listener("tcp", 80, g)
    first = {i: syn(lst, i, 0.0) for i in range(60)}
    make_unhealthy(g, ["t0", "t1", "t2"])
    assert lst.reset_unhealthy(1.0) == []  # failing open: nothing is reset
    assert all(data(lst, i, 1.0) == t for i, t in first.items())
    assert {syn(lst, 100 + i, 1.0, seq=i).id for i in range(60)} == {"t0", "t1", "t2"}  # sent to all
    # One recovers: the unhealthy ones' flows are reset now, new flows go to it alone.
    make_healthy(g, ["t2"])
    resets = lst.reset_unhealthy(2.0)
    assert resets and {f.target_id for f in resets} == {"t0", "t1"}
    assert {syn(lst, 300 + i, 2.0, seq=i).id for i in range(30)} == {"t2"}


def test_initial_targets_get_flows_only_when_failing_open():
    g = group(3)
    lst = Listener("tcp", 80, g)
    early = {i: syn(lst, i, 0.0, seq=i) for i in range(60)}  # all initial: fail open
    assert {t.id for t in early.values()} == {"t0", "t1", "t2"}
    make_healthy(g, ["t0"])
    assert lst.reset_unhealthy(1.0) == []  # initial is not unhealthy: their flows stay
    assert all(data(lst, i, 1.0) == t for i, t in early.items())
    assert {syn(lst, 100 + i, 1.0, seq=i).id for i in range(30)} == {"t0"}


def test_tcp_idle_timeout_then_rst_and_udp_idle_timeout_then_new_flow():
    g = group(2)
    tcp = Listener("tcp", 80, g)
    assert tcp.idle_timeout == 350.0 and Listener("udp", 53, g).idle_timeout == 120.0
    t = syn(tcp, 1, 0.0)
    assert data(tcp, 1, 349.5) == t
    late = data(tcp, 1, 699.5)  # idle for exactly 350 s
    assert late is NlbDrop.IDLE_TIMEOUT and late.rst
    assert data(tcp, 2, 1.0) is NlbDrop.NOT_A_FLOW_START and NlbDrop.NOT_A_FLOW_START.rst
    assert data(tcp, 2, 1.0, flags=RST) is NlbDrop.STRAY_RST and not NlbDrop.STRAY_RST.rst
    assert tcp.forward(CLIENT + 3, 1, LB, 1.0) in targets(2)  # no flags given: any packet starts a flow
    udp = Listener("udp", 53, g)
    u = udp.forward(CLIENT, 5000, LB, 0.0)
    assert udp.forward(CLIENT, 5000, LB, 119.5) == u
    assert udp.forward(CLIENT, 5000, LB, 239.0) == u and len(udp) == 1
    assert isinstance(udp.forward(CLIENT, 5000, LB, 359.0), Target)  # idle exactly 120 s: a new flow
    assert udp.stats()["idle_timeouts"] == 1 and udp.stats()["new_flows"] == 2
    assert tcp.stats()["drops"] == {"idle_timeout": 1, "not_a_flow_start": 1, "stray_rst": 1}


def test_the_syn_sequence_number_and_the_addresses_spread_flows():
    g = group(4)
    make_healthy(g, ["t0", "t1", "t2", "t3"])
    lst = Listener("tcp", 80, g)
    # One client port reused by successive connections (different ISNs) lands on every target.
    seen = set()
    for seq in range(40):
        seen.add(syn(lst, 1, seq * 400.0, seq=seq).id)  # each after the last idled out
    assert seen == {"t0", "t1", "t2", "t3"}
    counts = collections.Counter(syn(lst, i, 0.0, seq=i * 7919).id for i in range(1000, 11_000))
    assert chi_square(list(counts.values()), 10_000) < 16.3


def test_expire_and_no_targets_and_table_full():
    g = group(2)
    lst = Listener("udp", 53, g, max_flows=3)
    for i in range(3):
        lst.forward(CLIENT + i, 1, LB, float(i))
    assert lst.forward(CLIENT + 9, 1, LB, 3.0) is NlbDrop.TABLE_FULL
    assert isinstance(lst.forward(CLIENT + 9, 1, LB, 120.0), Target)  # the first idled out: room
    gone = lst.expire(122.5, budget=10)
    assert [f.src - CLIENT for f in gone] == [1, 2] and all(f.remaining <= 0 for f in gone)
    assert len(lst) == 1 and lst.stats()["idle_timeouts"] == 3
    empty = Listener("tcp", 80, TargetGroup())
    assert syn(empty, 1, 0.0) is NlbDrop.NO_TARGETS
    with pytest.raises(ValueError):
        Listener("tls", 443, g)


def test_export_import_carries_a_flow_to_another_node():
    g1, g2 = group(3), group(3)
    a, b = Listener("tcp", 80, g1), Listener("tcp", 80, g2)
    t = syn(a, 1, 100.0, seq=77)
    rec = a.export(CLIENT + 1, 10001, LB, 150.0)
    assert rec == NlbFlow(CLIENT + 1, 10001, LB, t.id, 300.0)
    assert a.export(CLIENT + 2, 10002, LB, 150.0) is None
    assert b.import_(list(rec), 9000.0)
    assert data(b, 1, 9000.0) == t
    assert a.flows(150.0) == [rec]
    assert not b.import_(rec._replace(target_id="nope"), 0.0)
    assert not b.import_(rec._replace(remaining=0.0), 0.0)
    b2 = Listener("tcp", 80, group(3))
    b2.import_(rec, 0.0)
    assert data(b2, 1, 300.0) is NlbDrop.IDLE_TIMEOUT

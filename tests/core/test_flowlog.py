"""vswitch.flowlog: aggregation of packets into flow log records, windows, NODATA and SKIPDATA, formats;
and vswitch.flowlog_shipper: delivery, retries, the bounded queue and its SKIPDATA markers.

Time is virtual: ``now`` is a monotonic clock starting at T0, ``wall`` the Unix time that goes with it.
"""

import asyncio
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vswitch import addresses
from vswitch.flowlog import (
    DEFAULT_LOG_FORMAT, EniIdentity, FlowLogAggregator, FlowLogSpec, header, record_identities,
    skipdata_records,
)
from vswitch.flowlog_shipper import FlowLogShipper

FL = "fl-0123456789abcdef0"
ACCT = "acct-0a1b2c3d4e5f"
ENI = EniIdentity("eni-0123456789abcdef", ACCT, "vpc-0123456789abcdef0", "subnet-0123456789abcdef0",
                  "i-0123456789abcdef0")
T0 = 1000.0  # monotonic
WALL0 = 1_718_000_000.0  # the Unix time at T0
CLIENT, WEB = addresses.key("10.0.1.4"), addresses.key("10.0.1.10")
V6A, V6B = addresses.key("fd00::4"), addresses.key("fd00::10")
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
V5_FORMAT = ("${version} ${vpc-id} ${subnet-id} ${instance-id} ${interface-id} ${account-id} ${type} "
             "${srcaddr} ${dstaddr} ${srcport} ${dstport} ${pkt-srcaddr} ${pkt-dstaddr} ${protocol} "
             "${packets} ${bytes} ${start} ${end} ${action} ${tcp-flags} ${log-status} ${flow-direction} "
             "${traffic-path}")

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def spec(traffic_type="ALL", log_format=None, interval=60) -> FlowLogSpec:
    return FlowLogSpec(FL, ACCT, traffic_type, log_format, interval)


def agg(traffic_type="ALL", log_format=None, interval=60, max_records=10_000) -> FlowLogAggregator:
    return FlowLogAggregator(spec(traffic_type, log_format, interval), ENI, T0, max_records)


def flush(a: FlowLogAggregator, now: float) -> list[str]:
    return a.flush(now, WALL0 + (now - T0))


def web_request(a, t, egress=True, accepted=True, packets=1, nbytes=60, flags=ACK, sport=40512):
    """client:sport -> web:80 as seen leaving the client's ENI (egress) or reaching it (ingress)."""
    a.add(egress, accepted, TCP, CLIENT, WEB, sport, 80, packets, nbytes, flags, t)


def as_dict(line: str, fmt: str | None = None) -> dict:
    return dict(zip(spec(log_format=fmt).fields, line.split(" ")))


# --- records ------------------------------------------------------------------------------------------
def test_packets_of_one_flow_make_one_record_in_the_default_format():
    a = agg()
    web_request(a, T0 + 1.2, flags=SYN, nbytes=60)
    web_request(a, T0 + 1.5, flags=ACK, nbytes=52)
    web_request(a, T0 + 4.9, flags=PSH | ACK, nbytes=200)
    assert flush(a, T0 + 60) == [
        f"2 {ACCT} {ENI.eni_id} 10.0.1.4 10.0.1.10 40512 80 6 3 312 {int(WALL0) + 1} {int(WALL0) + 4} ACCEPT OK"]
    assert header(a.spec) == ("version account-id interface-id srcaddr dstaddr srcport dstport protocol "
                              "packets bytes start end action log-status")


def test_each_direction_and_each_action_is_its_own_record():
    a = agg()
    web_request(a, T0 + 1, egress=True)
    a.add(False, True, TCP, WEB, CLIENT, 80, 40512, 2, 120, SYN | ACK, T0 + 2)  # the answer, arriving
    web_request(a, T0 + 3, egress=True, accepted=False)  # the same 5-tuple, rejected by a later rule
    out = [as_dict(line) for line in flush(a, T0 + 60)]
    assert [(r["srcaddr"], r["dstaddr"], r["srcport"], r["dstport"], r["packets"], r["action"]) for r in out] == [
        ("10.0.1.4", "10.0.1.10", "40512", "80", "1", "ACCEPT"),
        ("10.0.1.10", "10.0.1.4", "80", "40512", "2", "ACCEPT"),
        ("10.0.1.4", "10.0.1.10", "40512", "80", "1", "REJECT")]


@pytest.mark.parametrize("traffic_type, logged", [("ALL", {"ACCEPT", "REJECT"}), ("ACCEPT", {"ACCEPT"}),
                                                  ("REJECT", {"REJECT"})])
def test_traffic_type_picks_accepted_rejected_or_all_packets(traffic_type, logged):
    a = agg(traffic_type)
    web_request(a, T0 + 1, accepted=True)
    web_request(a, T0 + 2, accepted=False, sport=40513)
    assert {as_dict(line)["action"] for line in flush(a, T0 + 60)} == logged


def test_packets_a_flow_log_filters_out_are_no_traffic_for_it():
    a = agg("REJECT")
    web_request(a, T0 + 1, accepted=True)
    assert [as_dict(line)["log-status"] for line in flush(a, T0 + 60)] == ["NODATA"]


def test_tcp_flags_are_ored_over_the_window_and_only_fin_to_urg_count():
    a = agg(log_format="${srcport} ${protocol} ${tcp-flags}")
    web_request(a, T0 + 1, flags=SYN | ECE | CWR)
    web_request(a, T0 + 2, flags=ACK)
    web_request(a, T0 + 3, flags=FIN | ACK)
    a.add(True, True, TCP, CLIENT, WEB, 40600, 80, 1, 40, RST | URG, T0 + 4)
    a.add(True, True, UDP, CLIENT, WEB, 5353, 53, 1, 40, 0xFF, T0 + 5)  # not TCP: no flags, whatever is passed
    assert flush(a, T0 + 60) == ["40512 6 19", "40600 6 36", "5353 17 0"]


@given(st.lists(st.integers(0, 255), min_size=1, max_size=20))
@FAST
def test_tcp_flags_are_the_or_of_every_packets_low_six_bits(flags):
    a = agg(log_format="${tcp-flags}")
    for i, f in enumerate(flags):
        web_request(a, T0 + i / 100, flags=f)
    expected = 0
    for f in flags:
        expected |= f
    assert flush(a, T0 + 60) == [str(expected & 0x3F)]


def test_a_super_packet_counts_its_segments():
    a = agg()
    web_request(a, T0 + 1, packets=44, nbytes=64_000)  # one TSO read: 44 segments
    web_request(a, T0 + 2, packets=1, nbytes=52)
    r = as_dict(flush(a, T0 + 60)[0])
    assert (r["packets"], r["bytes"]) == ("45", "64052")


def test_icmp_records_carry_ports_0_0_whatever_the_identifier():
    a = agg()
    for ident in (7, 8, 9):  # three pings, three echo identifiers: one record
        a.add(True, True, ICMP, CLIENT, WEB, ident, 0, 1, 84, 0, T0 + ident)
    a.add(True, True, ICMPV6, V6A, V6B, 3, 1, 1, 104, 0, T0 + 10)
    assert [line.split(" ")[3:10] for line in flush(a, T0 + 60)] == [
        ["10.0.1.4", "10.0.1.10", "0", "0", "1", "3", "252"],
        ["fd00::4", "fd00::10", "0", "0", "58", "1", "104"]]


def test_ipv6_records_have_type_ipv6_and_ipv4_records_ipv4():
    a = agg(log_format="${type} ${srcaddr} ${dstaddr} ${pkt-srcaddr} ${pkt-dstaddr}")
    a.add(False, True, UDP, V6B, V6A, 53, 5353, 1, 100, 0, T0 + 1)
    a.add(False, True, UDP, WEB, CLIENT, 53, 5353, 1, 100, 0, T0 + 2)
    assert flush(a, T0 + 60) == ["IPv6 fd00::10 fd00::4 fd00::10 fd00::4",
                                 "IPv4 10.0.1.10 10.0.1.4 10.0.1.10 10.0.1.4"]


def test_records_are_in_order_of_first_packet_then_key():
    a = agg(log_format="${srcport} ${start} ${end}")
    for sport, t in ((5003, 3.0), (5001, 1.0), (5002, 1.0), (5000, 2.0)):
        a.add(True, True, UDP, CLIENT, WEB, sport, 53, 1, 60, 0, T0 + t)
    a.add(True, True, UDP, CLIENT, WEB, 5001, 53, 1, 60, 0, T0 + 9)
    w = int(WALL0)
    assert flush(a, T0 + 60) == [f"5001 {w + 1} {w + 9}", f"5002 {w + 1} {w + 1}", f"5000 {w + 2} {w + 2}",
                                 f"5003 {w + 3} {w + 3}"]


flow_keys = st.tuples(st.booleans(), st.booleans(), st.sampled_from([TCP, UDP, ICMP]),
                      st.sampled_from([CLIENT, WEB, V6A]), st.sampled_from([CLIENT, WEB, V6B]),
                      st.integers(0, 3), st.integers(0, 3))


@given(st.lists(st.tuples(flow_keys, st.integers(1, 64), st.integers(20, 65_535), st.floats(0, 59.9)),
                max_size=60))
@FAST
def test_packets_and_bytes_of_the_records_add_up_to_what_was_added(packets):
    a = agg(log_format="${flow-direction} ${action} ${protocol} ${srcaddr} ${dstaddr} ${srcport} ${dstport} "
                       "${packets} ${bytes} ${start} ${end}")
    for key, n, nbytes, t in sorted(packets, key=lambda p: p[3]):
        a.add(*key, n, nbytes, 0, T0 + t)
    out = [line.split(" ") for line in flush(a, T0 + 60)]
    if not packets:
        assert len(out) == 1 and out[0][7:9] == ["-", "-"]
        return
    assert sum(int(r[7]) for r in out) == sum(p[1] for p in packets)
    assert sum(int(r[8]) for r in out) == sum(p[2] for p in packets)
    distinct = {k[:5] + ((0, 0) if k[2] == ICMP else k[5:]) for k, *_ in packets}
    assert len(out) == len(distinct)
    assert all(int(WALL0) <= int(r[9]) <= int(r[10]) <= int(WALL0) + 60 for r in out)


# --- windows, NODATA, SKIPDATA --------------------------------------------------------------------------
def test_an_idle_window_yields_one_nodata_record_with_the_window_bounds():
    a = agg()
    assert not a.due(T0 + 59.9) and a.due(T0 + 60)
    assert flush(a, T0 + 60) == [f"2 {ACCT} {ENI.eni_id} - - - - - - - {int(WALL0)} {int(WALL0) + 60} - NODATA"]
    assert a.last_window == (WALL0, WALL0 + 60)


def test_nodata_in_a_custom_format_fills_what_names_the_eni():
    a = agg(log_format=V5_FORMAT)
    r = as_dict(flush(a, T0 + 60)[0], V5_FORMAT)
    assert {k: v for k, v in r.items() if v != "-"} == {
        "version": "5", "vpc-id": ENI.vpc_id, "subnet-id": ENI.subnet_id, "instance-id": ENI.instance_id,
        "interface-id": ENI.eni_id, "account-id": ACCT, "start": str(int(WALL0)), "end": str(int(WALL0) + 60),
        "log-status": "NODATA"}


def test_windows_roll_over_at_each_flush():
    a = agg(log_format="${srcport} ${packets} ${start} ${end} ${log-status}")
    web_request(a, T0 + 10)
    assert flush(a, T0 + 60) == [f"40512 1 {int(WALL0) + 10} {int(WALL0) + 10} OK"]
    assert not a.due(T0 + 100) and a.due(T0 + 120)  # the next window started at the flush
    web_request(a, T0 + 61)
    web_request(a, T0 + 70)
    assert flush(a, T0 + 120) == [f"40512 2 {int(WALL0) + 61} {int(WALL0) + 70} OK"]
    assert flush(a, T0 + 180) == [f"- - {int(WALL0) + 120} {int(WALL0) + 180} NODATA"]
    assert a.stats()["totals"] == {"windows": 3, "records": 3, "skipdata_windows": 0, "skipped_packets": 0,
                                   "skipped_bytes": 0}


def test_a_full_table_counts_new_flows_and_the_window_ends_with_skipdata():
    a = agg(max_records=2)
    web_request(a, T0 + 1, sport=1)
    web_request(a, T0 + 2, sport=2)
    web_request(a, T0 + 3, sport=3, packets=5, nbytes=500)  # a third record: no room
    web_request(a, T0 + 4, sport=1)  # known records still count
    assert a.stats() == {"flows": 2, "skipped_packets": 5, "skipped_bytes": 500,
                         "totals": {"windows": 0, "records": 0, "skipdata_windows": 0, "skipped_packets": 0,
                                    "skipped_bytes": 0}}
    out = flush(a, T0 + 60)
    assert [as_dict(line)["srcport"] for line in out[:2]] == ["1", "2"]
    assert as_dict(out[0])["packets"] == "2"
    assert out[2] == f"2 {ACCT} {ENI.eni_id} - - - - - - - {int(WALL0)} {int(WALL0) + 60} - SKIPDATA"
    assert a.stats()["totals"]["skipped_packets"] == 5
    # The next window has room again.
    web_request(a, T0 + 61, sport=3)
    assert [as_dict(line)["log-status"] for line in flush(a, T0 + 120)] == ["OK"]


# --- formats ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, version", [
    (None, 2), (DEFAULT_LOG_FORMAT, 2), ("${srcaddr} ${dstaddr}", 2), ("${version} ${vpc-id}", 3),
    ("${version} ${tcp-flags} ${pkt-dstaddr}", 3), ("${version} ${flow-direction}", 5),
    ("${traffic-path} ${srcaddr}", 5), (V5_FORMAT, 5)])
def test_the_version_is_the_highest_of_the_formats_fields(fmt, version):
    assert spec(log_format=fmt).version == version


def test_a_v5_record_of_egress_and_ingress():
    a = agg(log_format=V5_FORMAT)
    web_request(a, T0 + 1, flags=SYN)
    a.add(False, True, TCP, WEB, CLIENT, 80, 40512, 1, 60, SYN | ACK, T0 + 1.5)
    out, w = flush(a, T0 + 60), int(WALL0)
    vpc, subnet, inst, eni = ENI.vpc_id, ENI.subnet_id, ENI.instance_id, ENI.eni_id
    assert out == [
        f"5 {vpc} {subnet} {inst} {eni} {ACCT} IPv4 10.0.1.4 10.0.1.10 40512 80 10.0.1.4 10.0.1.10 6 1 60 "
        f"{w + 1} {w + 1} ACCEPT 2 OK egress 1",
        f"5 {vpc} {subnet} {inst} {eni} {ACCT} IPv4 10.0.1.10 10.0.1.4 80 40512 10.0.1.10 10.0.1.4 6 1 60 "
        f"{w + 1} {w + 1} ACCEPT 18 OK ingress -"]
    assert header(a.spec) == V5_FORMAT.replace("${", "").replace("}", "")


def test_a_v3_format_without_version_and_an_eni_without_instance():
    s = spec(log_format="${instance-id} ${subnet-id} ${srcaddr}")
    a = FlowLogAggregator(s, EniIdentity("eni-00000000000000aa", ACCT, "vpc-0123456789abcdef0",
                                         "subnet-0123456789abcdef0"), T0)
    a.add(True, True, UDP, CLIENT, WEB, 1, 2, 1, 40, 0, T0)
    assert flush(a, T0 + 1) == ["- subnet-0123456789abcdef0 10.0.1.4"]
    assert s.version == 3


@pytest.mark.parametrize("kwargs, says", [
    ({"id": "vpc-0123456789abcdef0"}, "id: expected a fl- id"),
    ({"account": ""}, "account"),
    ({"traffic_type": "SOME"}, "traffic_type"),
    ({"interval": 0}, "interval"), ({"interval": 601}, "interval"), ({"interval": 1.5}, "interval"),
    ({"log_format": "${version} ${colour}"}, "['colour']"), ({"log_format": ""}, "log_format"),
])
def test_a_bad_spec_is_refused_naming_the_field(kwargs, says):
    fields = {"id": FL, "account": ACCT, **kwargs}
    with pytest.raises(ValueError, match=None) as e:
        FlowLogSpec(**fields)
    assert says in str(e.value)


def test_a_spec_from_the_apis_record():
    s = FlowLogSpec.from_resource({"id": FL, "kind": "flow-logs", "account": ACCT, "resource_id": "vpc-1",
                                   "traffic_type": "REJECT", "log_format": None, "max_aggregation_interval": 60})
    assert (s.traffic_type, s.interval, s.version, s.fields[:3]) == ("REJECT", 60, 2,
                                                                     ("version", "account-id", "interface-id"))


def test_max_records_must_be_positive():
    with pytest.raises(ValueError, match="max_records"):
        FlowLogAggregator(spec(), ENI, T0, max_records=0)


def test_skipdata_records_stand_for_lost_records_one_per_eni():
    fields = spec().fields
    lost = [f"2 {ACCT} eni-00000000000000a1 10.0.1.4 10.0.1.10 1 2 17 1 40 5 6 ACCEPT OK",
            f"2 {ACCT} eni-00000000000000a2 - - - - - - - 5 6 - NODATA",
            f"2 {ACCT} eni-00000000000000a1 10.0.1.4 10.0.1.10 3 4 17 1 40 5 6 ACCEPT OK",
            "garbage"]
    assert skipdata_records(fields, lost, 100.7, 160.2) == [
        f"2 {ACCT} eni-00000000000000a1 - - - - - - - 100 160 - SKIPDATA",
        f"2 {ACCT} eni-00000000000000a2 - - - - - - - 100 160 - SKIPDATA"]
    assert len(record_identities(fields, lost)) == 2


# --- the shipper -----------------------------------------------------------------------------------------
class FakeControlPlane:
    """An httpx transport standing for the control plane: it records deliveries, or fails as told."""

    def __init__(self):
        self.up = True
        self.status = 201
        self.deliveries: list[tuple[str, dict]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if self.status >= 300:
            return httpx.Response(self.status, json={"error": {"status": self.status, "message": "no"}})
        self.deliveries.append((request.url.path, json.loads(request.content)))
        return httpx.Response(201, json={"ok": True})


def shipper_with(cp: FakeControlPlane, **kwargs) -> FlowLogShipper:
    s = FlowLogShipper("http://cp.invalid", "admin-token", "host-a", **kwargs)
    s.http = httpx.AsyncClient(base_url="http://cp.invalid", transport=httpx.MockTransport(cp.handle))
    return s


def window(n: int, eni: str = "eni-00000000000000a1") -> list[str]:
    return [f"2 {ACCT} {eni} 10.0.1.4 10.0.1.10 {n} 80 6 1 40 {n} {n} ACCEPT OK"]


def test_the_shipper_posts_a_window_to_the_flow_logs_records():
    cp = FakeControlPlane()

    async def go():
        s = shipper_with(cp)
        assert await s.ship(FL, window(1), 100.0, 160.0, fields=spec().fields)
        return s.status()

    status = asyncio.run(go())
    assert cp.deliveries == [(f"/v1/flow-logs/{FL}/records",
                              {"records": window(1), "window_start": 100.0, "window_end": 160.0, "host": "host-a"})]
    assert status["delivered_batches"] == 1 and status["queued_batches"] == 0 and status["connected"] is True


def test_the_shipper_keeps_windows_while_the_control_plane_is_down_and_delivers_them_in_order():
    cp = FakeControlPlane()
    cp.up = False

    async def go():
        s = shipper_with(cp)
        assert not await s.ship(FL, window(1), 100.0, 160.0)
        assert not await s.ship(FL, window(2), 160.0, 220.0)
        down = s.status()
        cp.up = True
        assert await s.deliver()
        return down, s.status()

    down, up = asyncio.run(go())
    assert (down["connected"], down["queued_batches"], down["retries"]) == (False, 2, 2)
    assert "connection refused" in down["last_error"]
    assert [d[1]["records"] for d in cp.deliveries] == [window(1), window(2)]
    assert (up["connected"], up["queued_batches"], up["delivered_records"]) == (True, 0, 2)


def test_the_run_task_retries_until_the_control_plane_answers():
    cp = FakeControlPlane()
    cp.up = False

    async def go():
        s = shipper_with(cp)
        task = asyncio.create_task(s.run())
        s.submit(FL, window(1), 100.0, 160.0)
        await asyncio.sleep(0.1)
        assert not cp.deliveries and s.status()["queued_batches"] == 1
        cp.up = True
        for _ in range(100):
            if cp.deliveries:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        return s.status()

    status = asyncio.run(go())
    assert [d[1]["records"] for d in cp.deliveries] == [window(1)] and status["queued_batches"] == 0


def test_an_overflowing_queue_drops_the_oldest_window_and_marks_the_loss_with_skipdata():
    cp = FakeControlPlane()
    cp.up = False
    fields = spec().fields

    async def go():
        s = shipper_with(cp, max_batches=2)
        for n in (1, 2, 3):
            s.submit(FL, window(n) + window(n, "eni-00000000000000a2"), 100.0 * n, 100.0 * n + 60, fields=fields)
        s.submit(FL, window(4), 400.0, 460.0, fields=fields)  # drops window 2 as well: one marker per ENI, merged
        full = s.status()
        cp.up = True
        assert await s.deliver()
        return full, s.status()

    full, after = asyncio.run(go())
    assert (full["dropped_batches"], full["dropped_records"], full["queued_batches"]) == (2, 4, 2)
    assert full["pending_skipdata"] == 2
    first, second = (d[1]["records"] for d in cp.deliveries)
    assert first == [f"2 {ACCT} eni-00000000000000a1 - - - - - - - 100 260 - SKIPDATA",
                     f"2 {ACCT} eni-00000000000000a2 - - - - - - - 100 260 - SKIPDATA",
                     *window(3), *window(3, "eni-00000000000000a2")]
    assert second == window(4)
    assert after["skipdata_markers"] == 2 and after["pending_skipdata"] == 0


def test_a_refused_window_is_dropped_not_retried():
    cp = FakeControlPlane()
    cp.status = 404  # the flow log was deleted meanwhile

    async def go():
        s = shipper_with(cp)
        assert await s.ship(FL, window(1), 100.0, 160.0)
        return s.status()

    status = asyncio.run(go())
    assert (status["rejected_batches"], status["queued_batches"], status["retries"]) == (1, 0, 0)


def test_the_shipper_never_raises_into_its_caller():
    def broken(request):
        raise RuntimeError("a bug in the transport")

    async def go():
        s = FlowLogShipper("http://cp.invalid", "t", "host-a")
        s.http = httpx.AsyncClient(base_url="http://cp.invalid", transport=httpx.MockTransport(broken))
        assert not await s.ship(FL, window(1), 100.0, 160.0)
        s.submit(FL, None, 1.0, 2.0)  # not even a list
        return s.status()

    status = asyncio.run(go())
    assert status["errors"] == 2 and status["queued_batches"] == 1


def test_traffic_path_is_8_beyond_the_vpc_and_1_inside():
    from vswitch.flowlog import EniIdentity, FlowLogAggregator, FlowLogSpec
    from vswitch.addresses import key
    spec = FlowLogSpec(id=FL, account="123456789012", traffic_type="ALL",
                       log_format="${dstaddr} ${flow-direction} ${traffic-path}", interval=60)
    eni = EniIdentity("eni-1", "123456789012", "vpc-1", "subnet-1", "i-1", "10.0.0.0/16")
    agg = FlowLogAggregator(spec, eni, now=0.0)
    for dst in ("10.0.2.5", "203.0.113.10"):
        agg.add(True, True, 6, key("10.0.1.4"), key(dst), 40000, 80, 1, 60, 2, 1.0)
    agg.add(False, True, 6, key("203.0.113.10"), key("10.0.1.4"), 80, 40000, 1, 60, 18, 2.0)
    lines = agg.flush(60.0, 1_000_060.0)
    assert lines == ["10.0.2.5 egress 1", "203.0.113.10 egress 8", "10.0.1.4 ingress -"]


def test_traffic_path_of_ipv6_against_the_vpcs_ipv6_block():
    from vswitch.addresses import key
    spec = FlowLogSpec(id=FL, account="123456789012", traffic_type="ALL",
                       log_format="${type} ${dstaddr} ${flow-direction} ${traffic-path}", interval=60)
    eni = EniIdentity("eni-1", "123456789012", "vpc-1", "subnet-1", "i-1", "10.0.0.0/16", "2001:db8:0:100::/56")
    agg = FlowLogAggregator(spec, eni, now=0.0)
    src = key("2001:db8:0:101::4")
    # Inside the /56; beyond it; an IPv6 address whose low 32 bits fall in the IPv4 block (::10.0.2.5)
    # and an IPv4-mapped one: both beyond, not inside.
    for i, dst in enumerate(("2001:db8:0:1ff::5", "2001:db8:1::5", "::a00:205", "::ffff:10.0.2.5", "10.0.2.5")):
        agg.add(True, True, 6, key("10.0.1.4") if dst == "10.0.2.5" else src, key(dst), 40000, 80, 1, 60, 2, i)
    agg.add(False, True, 58, key("2001:db8:1::5"), src, 7, 0, 1, 48, 0, 9.0)
    assert agg.flush(60.0, 1_000_060.0) == [
        "IPv6 2001:db8:0:1ff::5 egress 1", "IPv6 2001:db8:1::5 egress 8", "IPv6 ::a00:205 egress 8",
        "IPv6 ::ffff:a00:205 egress 8", "IPv4 10.0.2.5 egress 1", "IPv6 2001:db8:0:101::4 ingress -"]
    # Without the IPv6 block (an IPv4-only VPC identity) every IPv6 destination counts as inside, as
    # every destination does without any block.
    agg = FlowLogAggregator(spec, EniIdentity("eni-1", "123456789012", "vpc-1", "subnet-1", "i-1", "10.0.0.0/16"),
                            now=0.0)
    agg.add(True, True, 6, src, key("2001:db8:1::5"), 40000, 80, 1, 60, 2, 1.0)
    agg.add(True, True, 6, key("10.0.1.4"), key("203.0.113.9"), 40000, 80, 1, 60, 2, 2.0)
    assert agg.flush(60.0, 1_000_060.0) == ["IPv6 2001:db8:1::5 egress 1", "IPv4 203.0.113.9 egress 8"]


def test_ipv6_records_in_the_default_and_v5_formats():
    a = agg()
    a.add(True, True, TCP, V6A, V6B, 40512, 443, 3, 300, SYN | ACK, T0 + 1)
    a.add(False, False, ICMPV6, V6B, V6A, 128, 0, 1, 104, 0, T0 + 2)
    a.add(True, True, UDP, addresses.key("2001:db8::1:0:0:1"), addresses.key("2001:0db8:0000:0000:0000:0000:0000:0053"),
          5353, 53, 1, 80, 0, T0 + 3)
    w = int(WALL0)
    assert flush(a, T0 + 60) == [
        f"2 {ACCT} {ENI.eni_id} fd00::4 fd00::10 40512 443 6 3 300 {w + 1} {w + 1} ACCEPT OK",
        f"2 {ACCT} {ENI.eni_id} fd00::10 fd00::4 0 0 58 1 104 {w + 2} {w + 2} REJECT OK",
        f"2 {ACCT} {ENI.eni_id} 2001:db8::1:0:0:1 2001:db8::53 5353 53 17 1 80 {w + 3} {w + 3} ACCEPT OK"]
    a = agg(log_format=V5_FORMAT)
    a.add(False, True, TCP, V6B, V6A, 443, 40512, 1, 60, SYN | ACK | ECE, T0 + 1)
    [line] = flush(a, T0 + 60)
    r = as_dict(line, V5_FORMAT)
    assert (r["version"], r["type"], r["srcaddr"], r["dstaddr"], r["pkt-srcaddr"], r["pkt-dstaddr"], r["tcp-flags"],
            r["flow-direction"], r["traffic-path"]) == ("5", "IPv6", "fd00::10", "fd00::4", "fd00::10", "fd00::4",
                                                         "18", "ingress", "-")

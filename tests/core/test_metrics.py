"""vswitch.metrics: the collectors read the daemons' own counters at scrape time, with the labels the
dashboards use; the control plane counts requests by route template and status; pushes carry the
mapping daemon's clock (the push lag); ``serve`` and ``scrape`` round-trip over HTTP."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
import types

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from test_api import ADMIN, serve_store
from test_firewall import CLIENT, REMOTE, SERVER, view as firewall_view

from agents.edge_agent import EdgeAgent
from agents.host_agent import HostAgent
from agents.hyperplane_agent import HyperplaneAgent
from agents.mapping_daemon import MappingDaemon
from vswitch import addresses, config, geneve, metrics
from vswitch.controlplane.api import build_app
from vswitch.controlplane.service import ControlPlane
from vswitch.drops import Drop
from vswitch.eni import Eni
from vswitch.headers import TCP, UDP, ipv4_packet
from vswitch.histogram import Histogram
from vswitch.mapping import MappingCache, MappingService, decode, encode

HOST_A, HOST_B, EDGE = "198.18.0.11", "198.18.0.12", "198.18.0.3"
LIMITS = {"tcp_established_timeout": 432000, "udp_stream_timeout": 180, "udp_timeout": 30, "max_tracked_flows": 3}


# --- the host agent ------------------------------------------------------------------------------------
class Agent:
    """A real HostAgent (its __init__ does no I/O) with two ENIs attached as ``attach`` leaves them, minus
    the devices: client 10.0.1.4 and server 10.0.2.5 here, remote 10.0.1.10 on host B."""

    def __init__(self):
        cfg = config.HostAgentConfig(
            name="host-a", control_socket="/nonexistent/host-a.sock", underlay_ip=HOST_A,
            mapping="198.18.0.2:6080", edge=EDGE,
            vpcs=[{"vni": 1, "cidr": "10.0.0.0/16", "subnets": ["10.0.1.0/24", "10.0.2.0/24"]}])
        self.a = HostAgent(cfg)
        self.client = self.attach(CLIENT, "10.0.1.4/24", "client")
        self.server = self.attach(SERVER, "10.0.2.5/24", "server")
        self.a.cache.apply({"op": "snapshot", "vni": 1, "entries": [
            ["10.0.1.10", HOST_B, REMOTE], ["10.0.1.4", HOST_A, CLIENT], ["10.0.2.5", HOST_A, SERVER]]})
        self.a.policy.apply(firewall_view(conntrack=LIMITS), {e.id: e for e in (self.client, self.server)})
        self.registry = metrics.registry_for(self.a, "host-a", process=False)

    def attach(self, eni_id, ip, instance):
        vpc = self.a.vpcs[1]
        eni = Eni(eni_id, 1, ipaddress.IPv4Interface(ip), instance, f"ns-{instance}", True, vpc)
        vpc.local[eni.ipv4_key] = eni
        self.a.ports[eni.number] = types.SimpleNamespace(eni=eni)
        return eni

    def send(self, eni, pkt, now=1.0):
        head = geneve.prefix(1, eni.number, False)
        return self.a.egress.process(eni, bytearray(head + pkt), len(head), len(pkt), now, 1)

    def receive(self, pkt, src_eni=REMOTE, outer=HOST_B, now=1.0):
        d = bytearray(geneve.prefix(1, addresses.eni_number(src_eni), False) + pkt)
        return self.a.ingress.process(d, len(d), outer, now)

    def value(self, name, **labels):
        return self.registry.get_sample_value(name, labels)


def udp(src, dst, sport=40000, payload=b"x" * 20):
    return ipv4_packet(src, dst, UDP(sport, 7, payload))


def test_host_agent_eni_packets_bytes_drops_and_conntrack():
    h = Agent()
    out = [udp("10.0.1.4", "10.0.1.10", payload=b"x" * k) for k in (10, 20, 30)]
    for p in out:
        assert h.send(h.client, p) == (HOST_B, 6081)
    back = [ipv4_packet("10.0.1.10", "10.0.1.4", UDP(7, 40000, b"y" * 5))] * 2
    for p in back:
        assert h.receive(p) is h.client
    assert h.send(h.client, udp("10.0.1.4", "10.0.1.3")) is None  # reserved: dropped

    c = dict(eni=CLIENT, instance="client")
    assert h.value("vpc_eni_packets_total", direction="tx", **c) == 3
    assert h.value("vpc_eni_bytes_total", direction="tx", **c) == sum(map(len, out))
    assert h.value("vpc_eni_packets_total", direction="rx", **c) == 2
    assert h.value("vpc_eni_bytes_total", direction="rx", **c) == sum(map(len, back))
    assert h.value("vpc_eni_packets_total", eni=SERVER, instance="server", direction="tx") == 0
    assert h.value("vpc_eni_drops_total", eni=CLIENT, reason="reserved_address") == 1
    assert h.value("vpc_eni_drops_total", eni=CLIENT, reason="sg_deny") is None  # only reasons that happened
    assert h.value("vpc_drops_total", path="egress", reason="reserved_address") == 1
    assert h.value("vpc_drops_total", path="ingress", reason="unknown_source") == 0  # every reason, per path
    assert h.value("vpc_conntrack_entries", eni=CLIENT) == 1  # one UDP flow, both ways
    assert h.value("vpc_conntrack_limit", eni=CLIENT) == 3
    assert h.value("vpc_enis") == 2


def test_conntrack_limit_hits_are_the_tables_refusals():
    h = Agent()
    for sport in range(40000, 40004):  # room for 3 flows: the 4th is refused
        h.send(h.client, udp("10.0.1.4", "10.0.1.10", sport))
    assert h.client.ct.limit_hits == 1
    assert h.value("vpc_conntrack_limit_hits_total", eni=CLIENT) == 1
    assert h.value("vpc_conntrack_entries", eni=CLIENT) == 3
    assert h.value("vpc_eni_drops_total", eni=CLIENT, reason="conntrack_full") == 1


def test_mapping_hits_counted_and_misses_derived_per_path():
    h = Agent()
    for _ in range(4):
        h.send(h.client, udp("10.0.1.4", "10.0.1.10"))  # mapped: hits
    assert h.send(h.client, udp("10.0.1.4", "10.0.1.99")) == (EDGE, 6081)  # a miss, relayed by the edge
    assert h.send(h.client, udp("10.0.1.4", "10.0.2.5")) is h.server  # local: no lookup of the cache
    # an unknown inner source from another host: an ingress miss (the packet is held, the daemon asked)
    assert h.receive(ipv4_packet("10.0.1.77", "10.0.1.4", UDP(7, 40000)), src_eni="eni-00000000000000d7") is None
    assert h.value("vpc_mapping_cache_hits_total", path="egress") == 4
    assert h.value("vpc_mapping_cache_misses_total", path="egress") == 1
    assert h.value("vpc_mapping_cache_misses_total", path="ingress") == 1
    assert h.a.cache.misses == 2
    assert h.value("vpc_mapping_cache_entries") == 3
    assert h.value("vpc_via_edge_packets_total", direction="out") == 1
    assert h.value("vpc_held_for_mapping_total") == 1


def test_dry_runs_count_nothing():
    h = Agent()
    head = geneve.prefix(1, h.client.number, False)
    pkt = udp("10.0.1.4", "10.0.1.10")
    h.a.egress.process(h.client, bytearray(head + pkt), len(head), len(pkt), 1.0, 1, [])  # vpc trace
    assert h.value("vpc_mapping_cache_hits_total", path="egress") == 0
    assert h.value("vpc_eni_packets_total", eni=CLIENT, instance="client", direction="tx") == 0


def test_resolver_queries_by_result():
    h = Agent()
    junk = ipv4_packet("10.0.1.4", "10.0.0.2", UDP(5353, 53, b"not dns"))
    assert h.a.resolver.handle(CLIENT, 1, junk, 1.0) is None
    assert h.value("vpc_resolver_queries_total", result="refused") == 1
    assert h.value("vpc_resolver_queries_total", result="answered") == 0
    assert h.value("vpc_drops_total", path="resolver", reason="dns_refused") == 1


def test_push_lag_is_served_as_a_histogram():
    h = Agent()
    h.a.cache.clock = lambda: 1000.03
    h.a.cache.apply({"op": "set", "vni": 1, "addr": "10.0.1.20", "host": HOST_B, "eni": REMOTE, "ts": 1000.0})
    assert h.value("vpc_mapping_push_lag_seconds_count") == 1
    assert h.value("vpc_mapping_push_lag_seconds_bucket", le="0.025") == 0
    assert h.value("vpc_mapping_push_lag_seconds_bucket", le="0.05") == 1
    assert h.value("vpc_mapping_push_lag_seconds_bucket", le="+Inf") == 1
    assert h.value("vpc_mapping_push_lag_seconds_sum") == pytest.approx(0.03)


def test_exposition_is_valid_text_with_the_info_metric():
    h = Agent()
    h.send(h.client, udp("10.0.1.4", "10.0.1.10"))
    text = generate_latest(h.registry).decode()
    assert 'vpc_info{name="host-a",role="host-agent"} 1.0' in text
    assert 'vpc_eni_packets_total{direction="tx",eni="eni-00000000000000c1",instance="client"} 1.0' in text
    assert "# TYPE vpc_mapping_push_lag_seconds histogram" in text


def test_collect_while_the_loop_attaches_and_counts():
    """The metrics thread snapshots dicts the event loop grows: no 'changed size during iteration'."""
    h = Agent()
    stop = threading.Event()
    vpc = h.a.vpcs[1]

    def churn():
        n = 0x100
        while not stop.is_set():
            eni = Eni(addresses.eni_id(n), 1, ipaddress.IPv4Interface(f"10.0.{3 + n // 250 % 200}.{4 + n % 250}/24"),
                      "x", "ns", True, vpc)
            h.a.ports[eni.number] = types.SimpleNamespace(eni=eni)
            h.a.cache.tables.setdefault(n, {})
            if len(h.a.ports) > 300:
                h.a.ports.clear()
                h.a.cache.tables.clear()
            eni.stats[0] += 1
            n += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            generate_latest(h.registry)
    finally:
        stop.set()
        t.join()


# --- the mapping push lag: the daemon stamps, the client observes -----------------------------------------
def test_push_stamp_round_trip():
    service = MappingService(clock=lambda: 5000.0)
    cache = MappingCache()
    cache.clock = lambda: 5000.004
    out = service.handle("h", {"op": "subscribe", "vnis": [1]})
    for _, msg in out:  # the snapshot: not a push, no stamp
        assert "ts" not in msg
        cache.apply(decode(encode(msg)))
    pushed = service.put(1, "10.0.1.5", HOST_B, 0xAA) + service.delete(1, "10.0.1.5")
    assert [m["ts"] for _, m in pushed] == [5000.0, 5000.0]
    for _, msg in pushed:
        cache.apply(decode(encode(msg)))  # through the wire format
    assert cache.push_lag.count == 2
    assert cache.push_lag.sum == pytest.approx(0.008)
    buckets, count, _ = cache.push_lag.snapshot()
    assert dict(buckets)["0.005"] == 2 and dict(buckets)["0.0025"] == 0 and count == 2


def test_query_answers_are_not_stamped_and_unstamped_pushes_are_applied_as_before():
    service = MappingService([(1, "10.0.1.5", HOST_B, 0xAA)], clock=lambda: 1.0)
    [(_, answer)] = service.handle("h", {"op": "query", "vni": 1, "addr": "10.0.1.5"})
    assert "ts" not in answer
    cache = MappingCache()
    cache.table(1)
    cache.apply({"op": "set", "vni": 1, "addr": "10.0.1.6", "host": HOST_B, "eni": REMOTE})  # an older daemon
    cache.apply({"op": "set", "vni": 1, "addr": "10.0.1.7", "host": HOST_B, "eni": REMOTE, "ts": "soon"})
    assert cache.size() == 2 and cache.push_lag.count == 0
    core = MappingService()  # no clock (the pure core's default): pushes go unstamped
    core.handle("c", {"op": "subscribe", "vnis": [1]})
    assert [m for _, m in core.put(1, "10.0.1.5", HOST_B, 1)] == [
        {"op": "set", "vni": 1, "addr": "10.0.1.5", "host": HOST_B, "eni": addresses.eni_id(1)}]


def test_a_stamp_from_the_future_counts_as_zero_and_is_counted():
    cache = MappingCache()
    cache.table(1)
    cache.clock = lambda: 99.0
    cache.apply({"op": "unset", "vni": 1, "addr": "10.0.1.5", "ts": 100.0})
    assert cache.push_lag.count == 1 and cache.push_lag.sum == 0.0 and cache.push_lag_negative == 1


def test_histogram_buckets_are_cumulative_and_inclusive():
    h = Histogram((0.1, 1.0))
    for v in (0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.snapshot() == ([("0.1", 1), ("1.0", 3), ("+Inf", 4)], 4, pytest.approx(8.6))


# --- the other daemons --------------------------------------------------------------------------------
def test_mapping_daemon_entries_subscribers_pushes(tmp_path):
    d = MappingDaemon(config.MappingDaemonConfig(name="mapping", control_socket=str(tmp_path / "m.sock"),
                                                 listen="127.0.0.1:6080"))
    d.service.handle("host-a", {"op": "subscribe", "vnis": [1]})
    d.service.handle("edge", {"op": "subscribe", "vnis": "*"})
    d._dispatch("control", {"op": "put", "vni": 1, "addr": "10.0.1.5", "host": HOST_B, "eni": REMOTE})
    r = metrics.registry_for(d, "mapping", process=False)
    assert r.get_sample_value("vpc_mapping_entries") == 1
    assert r.get_sample_value("vpc_mapping_subscribers") == 2
    assert r.get_sample_value("vpc_mapping_pushes_total") == 2
    assert r.get_sample_value("vpc_info", {"role": "mapping-daemon", "name": "mapping"}) == 1


def test_edge_relayed_internet_and_drops(tmp_path):
    e = EdgeAgent(config.EdgeConfig(name="edge", control_socket=str(tmp_path / "e.sock"), underlay_ip=EDGE,
                                    mapping="198.18.0.2:6080"))
    e.relay.relayed = 7
    e.igw.counters["out"], e.igw.counters["in6"] = 3, 2
    e.internet_drops[Drop.NO_PUBLIC_ADDRESS] += 1
    e.relay.drops[Drop.EDGE_NO_MAPPING] += 4
    r = metrics.registry_for(e, "edge", process=False)
    assert r.get_sample_value("vpc_edge_relayed_packets_total") == 7
    assert r.get_sample_value("vpc_edge_internet_packets_total", {"direction": "out", "family": "ipv4"}) == 3
    assert r.get_sample_value("vpc_edge_internet_packets_total", {"direction": "in", "family": "ipv6"}) == 2
    assert r.get_sample_value("vpc_drops_total", {"path": "internet", "reason": "no_public_address"}) == 1
    assert r.get_sample_value("vpc_drops_total", {"path": "relay", "reason": "edge_no_mapping"}) == 4
    assert r.get_sample_value("vpc_mapping_connected") == 0


def test_hyperplane_flows_and_refusals(tmp_path):
    fleet = [{"name": "hp-1", "underlay_ip": "198.18.0.21"}]
    a = HyperplaneAgent(config.HyperplaneConfig(name="hp-1", control_socket=str(tmp_path / "h.sock"),
                                                underlay_ip="198.18.0.21", edge=EDGE, hyperplane=fleet,
                                                control_plane="unix:///nonexistent"))
    a.core.nat_refusals["out_port_allocation"] = 2
    a.core.nlb_refusals["no_listener"] = 1
    a.core.counters["nat_out"] = 5
    r = metrics.registry_for(a, "hp-1", process=False)
    assert r.get_sample_value("vpc_hyperplane_flows", {"kind": "nat"}) == 0
    assert r.get_sample_value("vpc_hyperplane_flows", {"kind": "nlb"}) == 0
    assert r.get_sample_value("vpc_hyperplane_refusals_total", {"kind": "nat", "reason": "out_port_allocation"}) == 2
    assert r.get_sample_value("vpc_hyperplane_refusals_total", {"kind": "nlb", "reason": "no_listener"}) == 1
    assert r.get_sample_value("vpc_hyperplane_events_total", {"event": "nat_out"}) == 5


def test_unknown_component_is_refused():
    with pytest.raises(ValueError, match="no metrics"):
        metrics.registry_for(object())


# --- the control plane ---------------------------------------------------------------------------------
@pytest.fixture
def cp_client(tmp_path):
    cp = ControlPlane(None)
    app = build_app(cp)
    serve_store(app, cp, f"sqlite://{tmp_path}/control-plane.db")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield cp, client


def test_api_requests_by_method_route_template_and_status(cp_client):
    cp, client = cp_client
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert client.get("/v1/vpcs", headers=auth).status_code == 200
    assert client.get("/v1/vpcs", headers=auth).status_code == 200
    assert client.get("/v1/vpcs").status_code == 401
    assert client.get("/v1/vpcs/vpc-0123456789abcdef0", headers=auth).status_code == 404
    assert client.get("/v1/vpcs/vpc-0fedcba987654321f", headers=auth).status_code == 404
    assert client.post("/v1/vpcs", json={"cidr_block": "nonsense"}, headers=auth).status_code == 422
    assert client.get("/no/such/path").status_code == 404
    r = metrics.registry_for(cp, "control-plane", process=False)

    def count(method, route, status):
        return r.get_sample_value("vpc_api_requests_total", {"method": method, "route": route, "status": status})

    assert count("GET", "/v1/vpcs", "200") == 2
    assert count("GET", "/v1/vpcs", "401") == 1
    assert count("GET", "/v1/vpcs/{resource_id}", "404") == 2  # the template: one series for every id
    assert count("POST", "/v1/vpcs", "422") == 1
    assert count("GET", "unmatched", "404") == 1
    assert r.get_sample_value("vpc_api_request_duration_seconds_count", {"method": "GET", "route": "/v1/vpcs"}) == 3
    assert r.get_sample_value("vpc_api_request_duration_seconds_sum", {"method": "GET", "route": "/v1/vpcs"}) > 0


def test_api_request_that_raises_counts_500(cp_client):
    cp, client = cp_client

    async def boom(*_a, **_k):
        raise RuntimeError("a bug")

    cp.list_accounts = boom
    assert client.get("/v1/accounts", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 500
    r = metrics.registry_for(cp, process=False)
    assert r.get_sample_value("vpc_api_requests_total",
                              {"method": "GET", "route": "/v1/accounts", "status": "500"}) == 1


# --- serving and scraping ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_then_scrape_and_summarise():
    h = Agent()
    for _ in range(3):
        h.send(h.client, udp("10.0.1.4", "10.0.1.10"))
    h.send(h.client, udp("10.0.1.4", "10.0.1.3"))
    cfg = types.SimpleNamespace(name="host-a", metrics=f"127.0.0.1:{free_port()}")
    server = metrics.serve(cfg, h.a)
    try:
        samples = metrics.scrape(cfg.metrics)
        assert metrics.total(samples, "vpc_eni_packets_total", eni=CLIENT, direction="tx") == 3
        assert "process_cpu_seconds_total" in samples
        s = metrics.scrape_summary(cfg.metrics)
        assert s["role"] == "host-agent" and s["packets_tx"] == 3 and s["drops"] == 1 and s["mapping_hits"] == 3
        assert metrics.serve(cfg, h.a) is None  # the port is taken: logged, not fatal
    finally:
        server.shutdown()
        server.server_close()
    assert "error" in metrics.scrape_summary(cfg.metrics, timeout=0.5)
    assert metrics.serve(types.SimpleNamespace(name="x", metrics=None), h.a) is None  # not configured

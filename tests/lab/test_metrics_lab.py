"""Every daemon of a real lab serves Prometheus metrics on its underlay address (the control plane on
loopback); the per-ENI counters follow real pings exactly, drops and API requests are counted, and
``vpc status`` summarises them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from vswitch.metrics import total

pytestmark = pytest.mark.root
PINGS = 20


def ping(lab, dst: str, count: int) -> subprocess.CompletedProcess:
    return lab.run("client", "ping", "-c", str(count), "-i", "0.02", "-W", "1", dst, timeout=30)


def test_eni_counters_follow_pings_both_ways(demo_lab):
    client, web = demo_lab.state["instances"]["client"], demo_lab.state["instances"]["web"]
    assert (client["host"], web["host"]) == ("host-a", "host-b")
    a0, b0 = demo_lab.lab.scrape("host-a"), demo_lab.lab.scrape("host-b")
    p = ping(demo_lab, web["ip"], PINGS)
    assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr
    a1, b1 = demo_lab.lab.scrape("host-a"), demo_lab.lab.scrape("host-b")

    def grew(before, after, name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    # client's ENI: the requests out (tx), the replies in (rx); web's the reverse. Nothing else runs in
    # these instances (no IPv6, a TUN has no ARP), so the counts are exact; allow a stray packet or two.
    for before, after, instance, out, back in ((a0, a1, "client", "tx", "rx"), (b0, b1, "web", "rx", "tx")):
        eni = demo_lab.state["instances"][instance]["eni"]
        assert PINGS <= grew(before, after, "vpc_eni_packets_total", eni=eni, direction=out) <= PINGS + 2
        assert PINGS <= grew(before, after, "vpc_eni_packets_total", eni=eni, direction=back) <= PINGS + 2
        assert grew(before, after, "vpc_eni_bytes_total", eni=eni, direction=out) >= PINGS * 84  # 56 + 8 + 20
        assert total(after, "vpc_eni_packets_total", eni=eni, instance=instance) >= 2 * PINGS  # labelled
    # every request looked web up in host-a's mapping cache, and found it
    assert grew(a0, a1, "vpc_mapping_cache_hits_total", path="egress") >= PINGS
    assert grew(a0, a1, "vpc_mapping_cache_misses_total") == 0
    assert grew(a0, a1, "vpc_drops_total") == 0 and grew(b0, b1, "vpc_drops_total") == 0
    # an ICMP echo is a tracked flow on both ENIs
    assert total(a1, "vpc_conntrack_entries", eni=client["eni"]) >= 1
    assert total(b1, "vpc_conntrack_entries", eni=web["eni"]) >= 1


def test_a_dropped_packet_is_counted_by_reason(demo_lab):
    client = demo_lab.state["instances"]["client"]
    reserved = client["ip"].rsplit(".", 1)[0] + ".3"  # the subnet's reserved .3: nobody answers it
    before = demo_lab.lab.scrape("host-a")
    p = ping(demo_lab, reserved, 3)
    assert p.returncode != 0
    after = demo_lab.lab.scrape("host-a")
    for name, labels in (("vpc_drops_total", {"path": "egress", "reason": "reserved_address"}),
                         ("vpc_eni_drops_total", {"eni": client["eni"], "reason": "reserved_address"})):
        assert total(after, name, **labels) - total(before, name, **labels) == 3


def test_control_plane_counts_api_requests(demo_lab):
    route = {"method": "GET", "route": "/v1/vpcs", "status": "200"}
    before = total(demo_lab.lab.scrape("control-plane"), "vpc_api_requests_total", **route)
    demo_lab.lab.api().call("GET", "/v1/vpcs")
    after = demo_lab.lab.scrape("control-plane")
    assert total(after, "vpc_api_requests_total", **route) == before + 1
    # the agents' long polls are counted under their route template, not their query string
    assert total(after, "vpc_api_requests_total", route="/v1/infra/desired") >= 1


def test_every_daemon_serves_its_role(demo_lab):
    roles = {"control-plane": "control-plane", "mapping": "mapping-daemon", "edge": "edge",
             "host-a": "host-agent", "host-b": "host-agent", "hp-1": "hyperplane"}
    for name, role in roles.items():
        samples = demo_lab.lab.scrape(name)
        assert total(samples, "vpc_info", role=role, name=name) == 1, name
    mapping = demo_lab.lab.scrape("mapping")
    assert total(mapping, "vpc_mapping_subscribers") >= 3  # both hosts and the edge
    assert total(mapping, "vpc_mapping_entries") >= 2 and total(mapping, "vpc_mapping_pushes_total") >= 2
    # A new instance on host-b: its mapping reaches host-a as a stamped push (the first ones may all have
    # come in the snapshot host-a got when it subscribed, which carries no stamp).
    api = demo_lab.lab.api()
    before = total(demo_lab.lab.scrape("host-a"), "vpc_mapping_push_lag_seconds_count")
    subnet = api.call("GET", "/v1/subnets")[0]
    extra = api.call("POST", "/v1/instances", {"name": "lag", "subnet_id": subnet["id"], "host": "host-b"})
    try:
        deadline = time.monotonic() + 10
        while (count := total(demo_lab.lab.scrape("host-a"), "vpc_mapping_push_lag_seconds_count")) <= before:
            assert time.monotonic() < deadline, "no stamped push reached host-a"
            time.sleep(0.1)
        host_a = demo_lab.lab.scrape("host-a")
        lag = total(host_a, "vpc_mapping_push_lag_seconds_sum") / total(host_a, "vpc_mapping_push_lag_seconds_count")
        assert lag < 1.0
    finally:
        api.call("DELETE", f"/v1/instances/{extra['id']}")
    hp = demo_lab.lab.scrape("hp-1")
    assert total(hp, "vpc_hyperplane_flows", kind="nat") == 0 and total(hp, "vpc_hyperplane_nodes_alive") == 4


def test_vpc_status_summarises_the_metrics(demo_lab):
    p = subprocess.run([sys.executable, "-m", "agents.cli", "--lab", demo_lab.name, "status", "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    comps = json.loads(p.stdout)["components"]
    assert all(c["metrics"] and "error" not in c["metrics"] for c in comps.values()), {n: c["metrics"] for n, c in comps.items()}
    assert comps["host-a"]["metrics"]["packets_tx"] >= 1 and comps["host-a"]["metrics"]["role"] == "host-agent"
    assert comps["control-plane"]["metrics"]["api_requests"] >= 1
    assert comps["mapping"]["metrics"]["subscribers"] >= 3
    p = subprocess.run([sys.executable, "-m", "agents.cli", "--lab", demo_lab.name, "status"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "METRICS" in p.stdout and "packets_tx=" in p.stdout and "api_requests=" in p.stdout

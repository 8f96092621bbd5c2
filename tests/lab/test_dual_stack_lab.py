"""Built-in DNS, a virtual machine on a TAP ENI and IPv6 dual stack, with real clients (configs/dual-stack.yaml):
dig against the VPC resolver (private names, PTRs, a private zone, a public name it recurses for), a VM
that got its addresses from real DHCP clients reaching an instance on another host, curl -6 between
hosts and out through the egress-only gateway, which lets nothing in."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import start_lab

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "lab-1.compute.internal"
INTERNET6_WEB = "2001:db8:ff::10"


@pytest.fixture(scope="module")
def lab(root_tools, tmp_path_factory):
    handle = start_lab(str(ROOT / "configs" / "dual-stack.yaml"))
    try:
        handle.api = handle.lab.api()
        handle.instances = {i["name"]: i for i in handle.api.call("GET", "/v1/instances")}
        handle.vpc = handle.api.call("GET", "/v1/vpcs")[0]
        www = tmp_path_factory.mktemp("www")
        (www / "index.html").write_text("hello from web\n")
        handle.spawn("web", sys.executable, "-m", "http.server", "80", "--bind", "::", "--directory", str(www))
        handle.wait_http("web", "http://127.0.0.1/", "web's server did not start")
        yield handle
    finally:
        handle.lab.down(quiet=True)


def dig(lab, instance: str, *args: str) -> str:
    p = lab.run(instance, "dig", "+short", "+time=2", "+tries=2", *args)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.strip()


def ip6(lab, name: str) -> str:
    return lab.instances[name]["ipv6_address"]


# --- the VPC resolver --------------------------------------------------------------------------------

@pytest.mark.parametrize("resolver", ["10.0.0.2", "169.254.169.253", "fd00:ec2::253"])
def test_dig_resolves_private_hostnames_at_every_resolver_address(lab, resolver):
    assert dig(lab, "client", f"@{resolver}", f"ip-10-0-1-10.{DOMAIN}") == "10.0.1.10"
    assert dig(lab, "client", f"@{resolver}", "-x", "10.0.1.10") == f"ip-10-0-1-10.{DOMAIN}."


def test_dig_resolves_instance_names_both_families_and_ipv6_ptrs(lab):
    assert dig(lab, "client", "@10.0.0.2", f"web.{DOMAIN}") == "10.0.1.10"
    assert dig(lab, "client", "@10.0.0.2", "AAAA", f"web.{DOMAIN}") == ip6(lab, "web")
    assert dig(lab, "client", "@10.0.0.2", "-x", ip6(lab, "web")) == f"web.{DOMAIN}."


def test_dig_resolves_the_private_zone_and_its_negative_answers(lab):
    assert dig(lab, "client", "@10.0.0.2", "www.corp.example").split() == ["db.corp.example.", "10.0.1.10"]
    assert dig(lab, "client", "@10.0.0.2", "TXT", "corp.example") == '"private zone of vpc dual"'
    p = lab.run("client", "dig", "+time=2", "+tries=2", "@10.0.0.2", "nope.corp.example")
    assert "status: NXDOMAIN" in p.stdout and "flags: qr aa rd ra" in p.stdout


def test_dig_gets_public_names_from_the_upstream_resolver(lab):
    assert dig(lab, "client", "@10.0.0.2", "www.example.test") == "203.0.113.10"
    p = lab.run("client", "dig", "+time=2", "+tries=2", "@10.0.0.2", "missing.example.test")
    assert "status: NXDOMAIN" in p.stdout and "ra" in p.stdout.split("flags:")[1].split(";")[0]
    assert lab.status("host-a")["resolver"]["forwarded"] >= 2


def test_instances_resolve_with_their_resolv_conf(lab):
    """No @server: the instance's resolv.conf names the VPC resolver, its search domain the region's."""
    assert dig(lab, "client", "+search", "web") == "10.0.1.10"
    p = lab.run("client", "getent", "hosts", "db.corp.example")
    assert p.returncode == 0 and p.stdout.split()[0] == "10.0.1.10"


def test_the_resolver_is_not_filtered_by_security_groups(lab):
    """A group that allows no outbound traffic at all still lets the instance ask the resolver."""
    api, client = lab.api, lab.instances["client"]
    closed = api.call("POST", "/v1/security-groups", {"vpc_id": lab.vpc["id"], "name": "closed", "egress": []})
    try:
        api.call("PATCH", f"/v1/instances/{client['id']}", {"security_group_ids": [closed["id"]]})
        time.sleep(0.5)
        assert lab.run("client", "ping", "-c", "1", "-W", "1", "10.0.1.10").returncode != 0
        assert dig(lab, "client", "@10.0.0.2", f"web.{DOMAIN}") == "10.0.1.10"
    finally:
        api.call("PATCH", f"/v1/instances/{client['id']}", {"security_group_ids": client["security_group_ids"]})
        api.call("DELETE", f"/v1/security-groups/{closed['id']}")


# --- a virtual machine on a TAP ENI ------------------------------------------------------------------

def test_the_vm_got_its_lease_from_real_dhcp_clients(lab):
    lease = (lab.lab.dir / "dhcp-vm.out").read_text()
    assert "lease bound: ip=10.0.1.5 subnet=255.255.255.0 router=10.0.1.1 dns=10.0.0.2" in lease
    assert f"domain={DOMAIN} mtu=9001 lease=3600" in lease and "hostname=ip-10-0-1-5" in lease
    lease6 = (lab.lab.dir / "dhcp6-vm.out").read_text()
    assert f"lease6 BOUND6: ip6={ip6(lab, 'vm')}/128 dns6=fd00:ec2::253 search={DOMAIN}" in lease6
    eni = lab.api.call("GET", f"/v1/network-interfaces/{lab.instances['vm']['eni_id']}")
    link = lab.run("vm", "ip", "link", "show", "eth0").stdout
    assert "mtu 9001" in link and f"link/ether {eni['mac_address']} " in link  # the NIC has its ENI's MAC
    routes6 = lab.run("vm", "ip", "-6", "route").stdout
    assert "default via fe80::1" in routes6  # from the host's router advertisement


def test_the_vm_reaches_an_instance_on_another_host_both_families(lab):
    p = lab.run("vm", "curl", "-sS", "-m", "5", "http://10.0.1.10/")
    assert p.returncode == 0 and p.stdout == "hello from web\n", p.stderr
    p = lab.run("vm", "curl", "-6", "-sS", "-m", "5", f"http://[{ip6(lab, 'web')}]/")
    assert p.returncode == 0 and p.stdout == "hello from web\n", p.stderr
    assert lab.run("client", "ping", "-c", "1", "-W", "2", "10.0.1.5").returncode == 0


def test_the_host_answers_arp_and_neighbour_discovery_with_enis_macs(lab):
    assert dig(lab, "vm", "@169.254.169.253", f"web.{DOMAIN}") == "10.0.1.10"  # off the subnet: via .1
    assert lab.run("vm", "ping", "-6", "-c", "1", "-W", "2", ip6(lab, "web")).returncode == 0
    neigh = lab.run("vm", "ip", "neigh").stdout
    web_mac = lab.api.call("GET", f"/v1/network-interfaces/{lab.instances['web']['eni_id']}")["mac_address"]
    assert f"10.0.1.10 dev eth0 lladdr {web_mac}" in neigh
    assert "10.0.1.1 dev eth0 lladdr 06:00:00:00:00:01" in neigh
    assert "fe80::1 dev eth0 lladdr 06:00:00:00:00:01 router" in neigh
    assert f"{ip6(lab, 'web')} dev eth0 lladdr {web_mac}" in neigh
    vm = next(e for e in lab.status("host-a")["enis"] if e["instance"] == "vm")
    assert vm["interface_type"] == "tap" and not vm["drops"].get("link_refused")


# --- IPv6 --------------------------------------------------------------------------------------------

def test_curl_6_between_instances_on_different_hosts(lab):
    p = lab.run("client", "curl", "-6", "-sS", "-m", "5", f"http://[{ip6(lab, 'web')}]/")
    assert p.returncode == 0 and p.stdout == "hello from web\n", p.stderr
    assert lab.run("client", "ping", "-6", "-c", "2", "-W", "2", ip6(lab, "web")).returncode == 0


def test_ipv6_routes_in_instances_follow_the_route_table(lab):
    routes = lab.run("client", "ip", "-6", "route").stdout
    assert f"{lab.vpc['ipv6_cidr_block']} dev eth0" in routes and "default dev eth0" in routes
    assert "fd00:ec2::253 dev eth0" in routes


def test_curl_6_to_the_internet_through_the_egress_only_gateway(lab):
    p = lab.run("client", "curl", "-6", "-sS", "-m", "5", f"http://[{INTERNET6_WEB}]/")
    assert p.returncode == 0 and p.stdout == "hello from the internet\n", p.stderr
    log = (lab.lab.dir / "internet-web6.out").read_text()
    assert ip6(lab, "client") in log  # no NAT: the internet sees the instance's own address


def test_the_internet_cannot_open_a_connection_back(lab):
    inet = lab.lab.ns("internet")
    before = lab.status("edge")["internet"]["drops"].get("egress_only", 0)
    p = lab.in_ns(inet, "curl", "-6", "-sS", "-m", "2", f"http://[{ip6(lab, 'web')}]/")
    assert p.returncode != 0
    assert lab.in_ns(inet, "ping", "-6", "-c", "1", "-W", "1", ip6(lab, "client")).returncode != 0
    assert lab.status("edge")["internet"]["drops"]["egress_only"] >= before + 2


def test_pmtu_discovery_finds_1500_at_the_edge_with_packet_too_big(lab):
    p = lab.run("client", "ping", "-6", "-c", "1", "-W", "2", "-s", "2000", "-M", "do", INTERNET6_WEB)
    assert "Packet too big: mtu=1500" in p.stdout + p.stderr
    p = lab.run("client", "tracepath", "-6", "-n", INTERNET6_WEB)
    assert "pmtu 1500" in p.stdout


def test_trace_follows_ipv6(lab):
    p = subprocess.run([sys.executable, "-m", "agents.cli", "--lab", lab.name, "trace", "client", "web", "tcp",
                        "80", "-6", "--json"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    result = json.loads(p.stdout)
    assert result["verdict"] == "delivered" and result["packet"].startswith(f"tcp {ip6(lab, 'client')} ")
    assert any("from ::/0" in (s.get("rule") or "") for s in result["steps"])
    p = subprocess.run([sys.executable, "-m", "agents.cli", "--lab", lab.name, "trace", "client", INTERNET6_WEB,
                        "udp", "53", "--json"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert any(s["step"] == "egress-only gateway" for s in json.loads(p.stdout)["steps"])


def test_ipv6_flows_reach_the_flow_log(lab):
    fl = lab.api.call("POST", "/v1/flow-logs", {"resource_id": lab.instances["web"]["eni_id"],
                                                "max_aggregation_interval": 1})
    try:
        time.sleep(1.0)  # the flow log reaches host-b's agent with the next view (~0.1 s)
        assert lab.run("client", "curl", "-6", "-sS", "-m", "5", f"http://[{ip6(lab, 'web')}]/").returncode == 0
        deadline = time.monotonic() + 15
        while True:
            got = lab.api.call("GET", f"/v1/flow-logs/{fl['id']}/records")
            rows = [dict(zip(got["fields"], r)) for r in got["records"]]
            mine = [r for r in rows if r["srcaddr"] == ip6(lab, "client") and r["dstport"] == "80"]
            if mine:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.3)
        assert mine[0]["action"] == "ACCEPT" and mine[0]["dstaddr"] == ip6(lab, "web")
    finally:
        lab.api.call("DELETE", f"/v1/flow-logs/{fl['id']}")

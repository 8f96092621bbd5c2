"""The internet gateway with real clients: an instance with an elastic IP reaches the lab's internet
namespace (the server sees the public address), the internet reaches the instance when its group
allows, an instance without one does not get out, and PMTU discovery finds 1500 at the edge."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import start_lab

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
INTERNET_WEB = "203.0.113.10"


@pytest.fixture(scope="module")
def lab(root_tools, tmp_path_factory):
    handle = start_lab(str(ROOT / "configs" / "demo.yaml"))
    try:
        api = handle.api = handle.lab.api()
        handle.instances = {i["name"]: i for i in api.call("GET", "/v1/instances")}
        vpc = api.call("GET", "/v1/vpcs")[0]
        igw = api.call("POST", "/v1/internet-gateways", {"vpc_id": vpc["id"]})
        api.call("PATCH", f"/v1/route-tables/{vpc['main_route_table_id']}",
                 {"routes": [{"destination": "0.0.0.0/0", "gateway_id": igw["id"]}]})
        handle.eip = api.call("POST", "/v1/elastic-ips", {"instance_id": handle.instances["web"]["id"]})
        www = tmp_path_factory.mktemp("www")
        (www / "index.html").write_text("hello from web\n")
        handle.spawn("web", sys.executable, "-m", "http.server", "8080", "--directory", str(www))
        time.sleep(1.0)  # the view reaches agents and edge in ~0.1 s; the server starts
        yield handle
    finally:
        handle.lab.down(quiet=True)


def internet(lab, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", lab.lab.ns("internet"), *cmd], capture_output=True, text=True,
                          timeout=timeout)


def test_instance_with_an_elastic_ip_reaches_the_internet_as_its_public_address(lab):
    p = lab.run("web", "curl", "-sS", "-m", "5", f"http://{INTERNET_WEB}/")
    assert p.returncode == 0 and p.stdout == "hello from the internet\n", p.stderr
    log = (lab.lab.dir / "internet-web.out").read_text()
    assert lab.eip["public_ip"] in log and lab.instances["web"]["private_ip"] not in log
    assert lab.run("web", "ping", "-c", "2", "-W", "2", INTERNET_WEB).returncode == 0


def test_instance_without_a_public_address_does_not_get_out(lab):
    assert lab.run("client", "curl", "-sS", "-m", "2", f"http://{INTERNET_WEB}/").returncode != 0
    edge = lab.status("edge")
    assert edge["internet"]["drops"].get("no_public_address", 0) >= 1


def test_the_internet_reaches_the_instance_when_its_group_allows(lab):
    url = f"http://{lab.eip['public_ip']}:8080/"
    assert internet(lab, "curl", "-sS", "-m", "2", url).returncode != 0  # the default group: members only
    web = lab.instances["web"]
    sg = lab.api.call("POST", "/v1/security-groups", {"vpc_id": web["vpc_id"], "name": "public-web", "ingress": [
        {"protocol": "tcp", "from_port": 8080, "to_port": 8080, "cidr": "0.0.0.0/0"}]})
    lab.api.call("PATCH", f"/v1/instances/{web['id']}", {"security_group_ids": [sg["id"], *web["security_group_ids"]]})
    time.sleep(0.5)
    p = internet(lab, "curl", "-sS", "-m", "5", url)
    assert p.returncode == 0 and p.stdout == "hello from web\n", p.stderr


def test_path_mtu_discovery_finds_1500_at_the_edge(lab):
    p = lab.run("web", "tracepath", "-n", "-m", "5", INTERNET_WEB, timeout=60)
    assert re.search(r"pmtu 1500", p.stdout), p.stdout
    # And a large download works (the server's side is at 1500 already; the instance's at 9001).
    big = lab.run("web", "sh", "-c", f"head -c 3000000 /dev/zero | curl -sS -m 10 -o /dev/null -w '%{{http_code}}' "
                                     f"-X POST --data-binary @- http://{INTERNET_WEB}/")
    assert big.returncode == 0 and big.stdout in ("501", "405"), (big.stdout, big.stderr)  # http.server: no POST


def test_the_internet_has_a_dns_resolver(lab):
    p = lab.run("web", "dig", "+short", "+time=2", "+tries=2", "@203.0.113.53", "www.example.test")
    assert p.returncode == 0 and p.stdout.strip() == INTERNET_WEB, (p.stdout, p.stderr)
    nx = lab.run("web", "dig", "+time=2", "+tries=2", "@203.0.113.53", "nope.example.test")
    assert "NXDOMAIN" in nx.stdout


def test_trace_follows_the_packet_through_the_edge(lab):
    from agents.trace import trace

    state, instances = lab.lab.state(), lab.lab.instances()
    out = trace(state, instances, "web", INTERNET_WEB, "tcp", 80)
    assert out["verdict"] == "delivered"
    gateway = next(s for s in out["steps"] if s["host"] == "edge" and s["step"] == "internet gateway")
    assert gateway["detail"] == f"source {lab.instances['web']['private_ip']} becomes {lab.eip['public_ip']}"
    denied = trace(state, instances, "client", INTERNET_WEB, "tcp", 80)
    assert denied["verdict"] == "dropped"
    assert denied["steps"][-1] == {"host": "edge", "step": "internet gateway", "result": "deny",
                                   "reason": "no_public_address",
                                   "detail": f"{lab.instances['client']['private_ip']} has no public address"}

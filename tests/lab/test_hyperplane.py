"""Hyperplane with real clients (configs/hyperplane.yaml): private instances reach the internet through the NAT
gateway (the server sees its elastic IP, 1,000 parallel connections get distinct ports, PMTU finds 1500),
curl through the load balancer reaches every target and a dead target stops getting flows, and killing a
Hyperplane node with kill -9 in the middle of a transfer leaves the transfer intact."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agents.lab import SHARD_SIZE
from tests.conftest import start_lab
from vswitch import hyperplane
from vswitch.addresses import key

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
CONNS = str(Path(__file__).with_name("conns.py"))
INTERNET_WEB = "203.0.113.10"
WEBS = ("web1", "web2", "web3")


@pytest.fixture(scope="module")
def lab(root_tools, tmp_path_factory):
    handle = start_lab(str(ROOT / "configs" / "hyperplane.yaml"))
    try:
        api = handle.api = handle.lab.api()
        (handle.nat,) = api.call("GET", "/v1/nat-gateways")
        (handle.lb,) = api.call("GET", "/v1/load-balancers")
        handle.servers = {}
        for name in WEBS:
            www = tmp_path_factory.mktemp(name)
            (www / "index.html").write_text(f"{name}\n")
            handle.servers[name] = handle.spawn(name, sys.executable, "-m", "http.server", "80", "--directory", str(www))
        wait_for(lambda: all(target_states(handle).values()) and set(target_states(handle).values()) == {"healthy"},
                 timeout=20, what="every target healthy")
        yield handle
    finally:
        handle.lab.down(quiet=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def nodes(lab) -> list[str]:
    return [n for n, c in lab.state["components"].items() if c["role"] == "hyperplane_agent"]


def target_states(lab) -> dict[str, str]:
    """target id -> state, as the first node of the balancer's shard sees it."""
    for name in nodes(lab):
        st = lab.status(name)
        lb = st["load_balancers"].get(lab.lb["id"])
        if lb and lb["shard"][0] == name:
            return lb["listeners"]["tcp/80"]["targets"]
    return {}


def background(lab, instance: str, *cmd: str) -> subprocess.Popen:
    return subprocess.Popen(lab.lab.exec_argv(instance, list(cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def internet(lab, *cmd: str, timeout: float = 60):
    return lab.in_ns(lab.lab.ns("internet"), *cmd, timeout=timeout)


def test_a_private_instance_reaches_the_internet_through_the_nat_gateway(lab):
    p = lab.run("client", "curl", "-sS", "-m", "5", f"http://{INTERNET_WEB}/")
    assert p.returncode == 0 and p.stdout == "hello from the internet\n", p.stderr
    log = (lab.lab.dir / "internet-web.out").read_text()
    assert lab.nat["public_ip"] in log and lab.ip("client") not in log
    assert lab.run("client", "ping", "-c", "2", "-W", "2", INTERNET_WEB).returncode == 0
    assert lab.run("client", "dig", "+short", "+time=2", "+tries=2", "@203.0.113.53", "www.example.test").stdout.split() \
        == [INTERNET_WEB]


def test_trace_follows_a_packet_to_the_nat_gateways_node(lab):
    from agents.trace import trace
    result = trace(lab.lab.state(), lab.lab.instances(), "client", INTERNET_WEB, "tcp", 80)
    steps = [s["step"] for s in result["steps"]]
    assert "NAT gateway" in steps and steps[-1] == "hyperplane node" and result["verdict"] == "delivered", result


def test_path_mtu_discovery_through_the_nat_gateway_finds_1500(lab):
    p = lab.run("client2", "tracepath", "-n", "-m", "5", INTERNET_WEB, timeout=60)
    assert re.search(r"pmtu 1500", p.stdout), p.stdout


def test_a_thousand_parallel_connections_get_distinct_source_ports(lab, tmp_path):
    out = tmp_path / "peers.txt"
    server = subprocess.Popen(["ip", "netns", "exec", lab.lab.ns("internet"), sys.executable, CONNS, "serve",
                               INTERNET_WEB, "9000", str(out)], start_new_session=True)
    try:
        wait_for(lambda: ":9000" in internet(lab, "ss", "-ltn").stdout, 10, "the server listening")
        procs = [background(lab, name, sys.executable, CONNS, "open", INTERNET_WEB, "9000", "500")
                 for name in ("client", "client2")]
        results = [p.communicate(timeout=120)[0] for p in procs]
        for r in results:
            assert r.startswith("opened 500 ok 500"), results
        peers = [line.split() for line in out.read_text().splitlines()]
        assert len(peers) == 1000
        assert {ip for ip, _ in peers} == {lab.nat["public_ip"]}  # all from the gateway's elastic IP
        assert len({port for _, port in peers}) == 1000  # distinct source ports
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


def test_curl_through_the_load_balancer_reaches_every_target_with_the_client_address(lab):
    seen = Counter()
    for _ in range(60):
        p = lab.run("client", "curl", "-sS", "-m", "3", f"http://{lab.lb['private_ip']}/")
        assert p.returncode == 0, p.stderr
        seen[p.stdout.strip()] += 1
    assert set(seen) == set(WEBS), seen
    logs = "".join((lab.lab.dir / f).read_text() for f in os.listdir(lab.lab.dir) if f.startswith("spawn-web"))
    assert lab.ip("client") in logs  # the targets see the client's own address


def test_a_dead_target_stops_receiving_new_flows(lab):
    victim = lab.servers.pop("web2")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    wait_for(lambda: target_states(lab).get(f"{instance_id(lab, 'web2')}:80") == "unhealthy", 15, "web2 unhealthy")
    time.sleep(1.0)  # every node of the shard has seen it by now (interval 1 s, threshold 2)
    seen = Counter()
    for _ in range(40):
        p = lab.run("client2", "curl", "-sS", "-m", "3", f"http://{lab.lb['private_ip']}/")
        assert p.returncode == 0, p.stderr
        seen[p.stdout.strip()] += 1
    assert set(seen) == {"web1", "web3"}, seen


def test_vpc_hyperplane_shards_names_each_resources_nodes(lab, capsys):
    from agents.cli import main
    assert main(["--lab", lab.name, "hyperplane", "shards", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer["resources"]) == {lab.nat["id"], lab.lb["id"]}
    assert all(len(r["shard"]) == SHARD_SIZE and set(r["shard"]) <= set(nodes(lab)) for r in answer["resources"].values())
    assert answer["overlap"]["pairs"] == 1 and sum(answer["expected_overlap"].values()) == pytest.approx(1.0)


def instance_id(lab, name: str) -> str:
    return next(i["id"] for i in lab.api.call("GET", "/v1/instances") if i["name"] == name)


def test_killing_the_flows_primary_node_mid_transfer_leaves_the_transfer_intact(lab):
    """Last in the module: the node stays dead."""
    payload = os.urandom(60_000_000)
    (lab.lab.dir / "internet-www" / "big.bin").write_bytes(payload)
    want = hashlib.sha256(payload).hexdigest()
    fleet = hyperplane.Fleet({n: lab.component(n)["underlay_ip"] for n in nodes(lab)}, SHARD_SIZE, 6081)
    for ip in fleet.nodes.values():
        fleet.heard(ip, 0.0)
    primary, secondary = fleet.owners(lab.nat["id"], hyperplane.nat_key(6, key(INTERNET_WEB)))
    assert primary and secondary
    download = background(lab, "client", "sh", "-c", f"curl -sS -m 60 --limit-rate 15M "
                                                      f"http://{INTERNET_WEB}/big.bin | sha256sum")
    wait_for(lambda: lab.status(primary)["counters"]["nat_in"] > 200, 10, "the transfer under way", 0.05)
    os.kill(lab.component(primary)["pid"], signal.SIGKILL)
    out, _ = download.communicate(timeout=90)
    assert out.split()[0] == want, out
    survivor = lab.status(secondary)
    assert survivor["counters"]["nat_in"] > 200  # the secondary carried the rest

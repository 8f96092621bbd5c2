"""Real labs: real programs in instances on different hosts, through our switch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.lab import Lab
from vswitch import control

pytestmark = pytest.mark.root
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def wait_listening(lab, instance: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f":{port} " in lab.run(instance, "ss", "-ltnH").stdout:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listening on {instance}:{port}")


def test_ping_crosses_hosts(demo_lab):
    assert demo_lab.state["instances"]["client"]["host"] != demo_lab.state["instances"]["web"]["host"]
    p = demo_lab.run("client", "ping", "-c", "5", "-i", "0.05", "-W", "2", demo_lab.ip("web"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert " 0% packet loss" in p.stdout
    host_a = demo_lab.status("host-a")
    eni = host_a["enis"][0]
    assert eni["instance"] == "client" and eni["tx_packets"] >= 5 and eni["rx_packets"] >= 5


def test_curl_across_hosts(demo_lab, tmp_path):
    (tmp_path / "index.html").write_text("hello through the overlay\n")
    demo_lab.spawn("web", sys.executable, "-m", "http.server", "8080", "--directory", str(tmp_path))
    wait_listening(demo_lab, "web", 8080)
    p = demo_lab.run("client", "curl", "-sS", "--max-time", "10", f"http://{demo_lab.ip('web')}:8080/")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hello through the overlay\n"


def test_iperf3_tcp_and_udp_across_hosts(demo_lab):
    demo_lab.spawn("web", "iperf3", "-s", "-p", "5300")
    wait_listening(demo_lab, "web", 5300)
    p = demo_lab.run("client", "iperf3", "-c", demo_lab.ip("web"), "-p", "5300", "-t", "2", "-J", timeout=30)
    assert p.returncode == 0, p.stdout[-500:] + p.stderr
    tcp = json.loads(p.stdout)["end"]
    assert tcp["sum_received"]["bytes"] > 10_000_000  # a real transfer, not a trickle
    p = demo_lab.run("client", "iperf3", "-c", demo_lab.ip("web"), "-p", "5300", "-u", "-b", "50M", "-t", "2", "-J",
                     timeout=30)
    assert p.returncode == 0, p.stdout[-500:] + p.stderr
    udp = json.loads(p.stdout)["end"]["sum"]
    assert udp["packets"] > 1000 and udp["lost_percent"] < 5
    # Super-packets are counted as the packets they carry, on both sides.
    a, b = demo_lab.status("host-a")["enis"][0], demo_lab.status("host-b")["enis"][0]
    assert b["rx_packets"] >= 0.95 * a["tx_packets"] - 10
    # ... and the count is the wire's: no packet on a 9001-byte MTU is larger, and the bulk is large.
    assert 1000 < a["tx_bytes"] / a["tx_packets"] <= 9001, a


def test_large_packets_use_the_9001_mtu(demo_lab):
    """An 8973-byte ICMP payload + headers = 9001 bytes with DF set crosses without fragmentation."""
    p = demo_lab.run("client", "ping", "-c", "2", "-M", "do", "-s", "8973", "-W", "2", demo_lab.ip("web"))
    assert p.returncode == 0, p.stdout + p.stderr
    p = demo_lab.run("client", "ip", "-o", "link", "show", "eth0")
    assert "mtu 9001" in p.stdout


def test_exec_passes_exit_code_through(demo_lab):
    env = dict(os.environ, VPC_LAB=demo_lab.name)
    vpc = [sys.executable, "-m", "agents.cli"]
    p = subprocess.run([*vpc, "exec", "client", "--", "sh", "-c", "exit 7"], env=env)
    assert p.returncode == 7
    p = subprocess.run([*vpc, "exec", "nosuch", "--", "true"], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "no instance 'nosuch'" in p.stderr


def test_status_reports_every_component(demo_lab):
    p = subprocess.run([sys.executable, "-m", "agents.cli", "--lab", demo_lab.name, "status", "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    status = json.loads(p.stdout)
    assert set(status["components"]) == {"control-plane", "mapping", "edge", "host-a", "host-b",
                                         "hp-1", "hp-2", "hp-3", "hp-4"}  # the Hyperplane fleet
    assert all(c["health"] == "ready" and c["alive"] for c in status["components"].values())
    p = subprocess.run([sys.executable, "-m", "agents.cli", "--lab", demo_lab.name, "status"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and re.search(r"host-a\s+host_agent\s+\d+\s+ready", p.stdout)


def test_first_packet_to_an_unmapped_destination_goes_through_the_edge(demo_lab):
    vni = demo_lab.state["instances"]["web"]["vni"]
    sock = demo_lab.component("host-a")["socket"]
    assert control.request(sock, {"op": "evict", "vni": vni, "addr": demo_lab.ip("web")})["evicted"]
    before_edge = demo_lab.status("edge")["relayed"]
    before = demo_lab.status("host-a")
    # One single packet: if the miss lost it, ping would report 100% loss.
    p = demo_lab.run("client", "ping", "-c", "1", "-W", "2", demo_lab.ip("web"))
    assert p.returncode == 0, p.stdout
    after = demo_lab.status("host-a")
    assert demo_lab.status("edge")["relayed"] == before_edge + 1
    assert after["to_edge"] == before["to_edge"] + 1
    assert after["mapping"]["answered_misses"] > before["mapping"]["answered_misses"]  # learned it
    p = demo_lab.run("client", "ping", "-c", "3", "-i", "0.05", "-W", "2", demo_lab.ip("web"))
    assert p.returncode == 0
    assert demo_lab.status("edge")["relayed"] == before_edge + 1  # later packets go direct


def test_vpcs_with_the_same_cidr_are_isolated(lab_factory):
    lab = lab_factory(str(CONFIGS / "two-vpcs.yaml"))
    inst = lab.state["instances"]
    assert inst["blue-b"]["ip"] == inst["red-b"]["ip"] or inst["blue-a"]["ip"] == inst["red-a"]["ip"]
    # Inside each VPC, traffic flows across hosts.
    for a, b in (("blue-a", "blue-b"), ("red-a", "red-b")):
        p = lab.run(a, "ping", "-c", "2", "-i", "0.05", "-W", "2", lab.ip(b))
        assert p.returncode == 0, f"{a} -> {b}: {p.stdout}"
    # An address that exists only in the other VPC is unreachable, and red never sees blue's packets.
    red_only = {i["ip"] for n, i in inst.items() if n.startswith("red")} - {
        i["ip"] for n, i in inst.items() if n.startswith("blue")}
    for ip in red_only:
        p = lab.run("blue-a", "ping", "-c", "2", "-i", "0.05", "-W", "1", ip)
        assert p.returncode != 0
    red_rx = {n: lab.status(i["host"]) for n, i in inst.items() if n.startswith("red")}
    rx_before = {n: next(e["rx_packets"] for e in s["enis"] if e["instance"] == n) for n, s in red_rx.items()}
    shared = inst["blue-b"]["ip"]
    lab.run("blue-a", "ping", "-c", "5", "-i", "0.05", "-W", "1", shared)
    for n, i in inst.items():
        if n.startswith("red"):
            e = next(e for e in lab.status(i["host"])["enis"] if e["instance"] == n)
            assert e["rx_packets"] == rx_before[n], f"{n} received blue's traffic"


def test_down_leaves_nothing_behind(root_tools):
    from tests.conftest import start_lab

    handle = start_lab(str(CONFIGS / "demo.yaml"))
    lab = handle.lab
    pids = [c["pid"] for c in handle.state["components"].values()]
    handle.spawn("web", "sleep", "600")
    # A crash: kill -9 an agent first; down must still clean up everything.
    os.kill(pids[-1], 9)
    lab.down()
    lab.down()  # twice in a row is fine
    assert not lab.namespaces()
    assert not lab.dir.exists()
    assert not list(Path("/etc/netns").glob(f"{lab.name}.*"))
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    tuns = subprocess.run(["ip", "-o", "link", "show", "type", "tun"], capture_output=True, text=True).stdout
    assert not tuns.strip()
    assert Lab(lab.name).down() == []


def test_topology_errors_are_refused_before_anything_is_created(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts: [{name: host-a}]\nvpcs:\n  - {name: v, cidr: 10.0.0.0/8, subnets: []}\n")
    name = "t" + os.urandom(5).hex()
    p = subprocess.run([sys.executable, "-m", "agents.cli", "--lab", name, "up", str(bad)],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "vpcs[0].cidr" in p.stderr
    assert not Lab(name).exists()


def test_demo_runs_end_to_end():
    p = subprocess.run([sys.executable, "-m", "agents.cli", "--lab", "t" + os.urandom(5).hex(), "demo"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "Hello from web" in p.stdout
    assert "0% packet loss" in p.stdout and "receiver" in p.stdout and "demo succeeded" in p.stdout


def test_host_without_offloads_interoperates(lab_factory, tmp_path):
    """host-a reads super-packets with partial checksums; host-b's ENIs have no virtio header, so its
    agent segments and checksums them in software. TCP both ways and ping must work."""
    topo = tmp_path / "mixed.yaml"
    topo.write_text((CONFIGS / "demo.yaml").read_text().replace(
        "hosts: [{name: host-a}, {name: host-b}]", "hosts: [{name: host-a}, {name: host-b, offload: false}]"))
    lab = lab_factory(str(topo))
    assert not lab.status("host-b")["enis"][0]["vnet_hdr"] and lab.status("host-a")["enis"][0]["vnet_hdr"]
    lab.spawn("web", "iperf3", "-s", "-p", "5301")
    wait_listening(lab, "web", 5301)
    for reverse in ((), ("-R",)):
        p = lab.run("client", "iperf3", "-c", lab.ip("web"), "-p", "5301", "-t", "2", "-J", *reverse, timeout=30)
        assert p.returncode == 0, p.stdout[-500:]
        end = json.loads(p.stdout)["end"]
        assert end["sum_received"]["bytes"] > 5_000_000
    assert lab.run("client", "ping", "-c", "2", "-i", "0.05", "-s", "4000", lab.ip("web")).returncode == 0
    for host in ("host-a", "host-b"):
        s = lab.status(host)
        assert s["errors"] == 0 and not s["ingress_drops"], s


UDP_SINK = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("0.0.0.0", 9999))
s.settimeout(2.0)
print("ready", flush=True)
seen, bad = set(), 0
try:
    while True:
        data = s.recv(2048)
        n = int.from_bytes(data[:4], "big")
        if data != n.to_bytes(4, "big") + bytes((n + i) & 0xFF for i in range(len(data) - 4)):
            bad += 1
        seen.add(n)
except socket.timeout:
    pass
print(json.dumps({"received": len(seen), "bad": bad}))
"""

UDP_FLOOD = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in range(int(sys.argv[2])):
    size = 60 if n % 500 < 400 else 61 + n % 7
    s.sendto(n.to_bytes(4, "big") + bytes((n + i) & 0xFF for i in range(size - 4)), (sys.argv[1], 9999))
"""


def test_small_udp_datagrams_arrive_intact_through_coalesced_writes(demo_lab):
    """A burst of small datagrams (mostly one size, some others) crosses hosts; web's agent writes runs of
    them as USO super-packets, and every datagram web's socket receives is exactly what was sent, with
    its checksum verified by web's kernel."""
    h = demo_lab
    before = h.status("host-b")["udp_coalesced"]["packets"]
    snmp = h.run("web", "cat", "/proc/net/snmp").stdout
    sink = subprocess.Popen(h.lab.exec_argv("web", [sys.executable, "-c", UDP_SINK]), stdout=subprocess.PIPE,
                            text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        h.run("client", sys.executable, "-c", UDP_FLOOD, h.ip("web"), "20000", check=True)
        result = json.loads(sink.communicate(timeout=30)[0])
    finally:
        sink.kill()
        sink.wait()
    assert result["bad"] == 0
    assert result["received"] > 10000, result  # the rest may be lost in queues: UDP, a flood
    assert h.status("host-b")["udp_coalesced"]["packets"] > before

    def csum_errors(text: str) -> int:
        head, values = [line.split() for line in text.splitlines() if line.startswith("Udp:")][:2]
        return int(values[head.index("InCsumErrors")])

    assert csum_errors(h.run("web", "cat", "/proc/net/snmp").stdout) == csum_errors(snmp)

"""Adversarial labs: forged sources, forged underlay datagrams, garbage on every input, a dead daemon.

Every packet here is sent inside the lab's own namespaces. Whatever a test adds to a namespace (an
address) is removed in a ``finally``; the namespaces themselves go with ``lab.down``.

Packets are built in the test process (``vswitch.headers``, ``vswitch.geneve``) and handed, pickled on
stdin, to a small Python program run inside the namespace that sends them (``_send``).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vswitch import control, geneve
from vswitch.addresses import eni_number
from vswitch.geneve import Geneve, Option, offload_option, source_eni_option
from vswitch.headers import ICMP, UDP, ipv4_packet
from vswitch.ingress import IngressPath

pytestmark = pytest.mark.root
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PORT = geneve.UDP_PORT
SINK_PORT = 7000

# --- helpers -----------------------------------------------------------------------------------------

# Runs inside a namespace. stdin: pickled {"kind": ..., "items": [...], ...}; prints a JSON summary.
SENDER = r"""
import json, pickle, socket, sys, time
job = pickle.loads(sys.stdin.buffer.read())
kind, items = job["kind"], job["items"]
sent, errors = 0, {}
def stat(name):
    try:
        return int(open(f"/sys/class/net/{job['dev']}/statistics/{name}").read())
    except (KeyError, OSError):
        return 0
if kind == "udp":        # items: (datagram, (ip, port)); optional bind address
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if job.get("bind"):
        s.bind((job["bind"], 0))
elif kind == "raw":      # items: (IPv4 packet with our own header, (ip, 0))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
elif kind == "packet":   # items: bytes for the device, no link header (a TUN has none)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    s.bind((job["dev"], 0x0800))
tx_dropped = stat("tx_dropped")
pace = job.get("pace", 0)
for i, item in enumerate(items):
    if pace and i and i % pace == 0:
        time.sleep(0.002)  # let the reader keep up: a TUN queues only 500 packets
    try:
        if kind == "packet":
            s.send(item)
        else:
            s.sendto(item[0], item[1])
        sent += 1
    except OSError as e:
        errors[e.errno] = errors.get(e.errno, 0) + 1
print(json.dumps({"sent": sent, "errors": errors, "tx_dropped": stat("tx_dropped") - tx_dropped}))
"""


def _send(netns: str, kind: str, items: list, **job) -> dict:
    p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SENDER],
                       input=pickle.dumps({"kind": kind, "items": items, **job}), capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return json.loads(p.stdout)


def ns(handle, kind: str, name: str = "") -> str:
    return handle.lab.ns(kind, name)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def drops(status: dict, side: str) -> dict:
    return status[f"{side}_drops"]


def delta(after: dict, before: dict) -> dict:
    """Counter differences (drop dicts omit zero counters)."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
            if after.get(k, 0) != before.get(k, 0)}


def eni_of(status: dict, instance: str) -> dict:
    return next(e for e in status["enis"] if e["instance"] == instance)


def udp_rcvbuf_errors(netns: str) -> int:
    """UDP datagrams the kernel dropped in ``netns`` because a socket's buffer was full."""
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    lines = [ln.split() for ln in out if ln.startswith("Udp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))["RcvbufErrors"])


def alive(handle, component: str) -> bool:
    pid = handle.component(component)["pid"]
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def no_tracebacks(handle, component: str) -> None:
    """Neither the structured log nor stdout/stderr of ``component`` reports an exception."""
    for path in (Path(handle.component(component)["log"]), handle.lab.dir / f"{component}.out"):
        if path.exists():
            text = path.read_text(errors="replace")
            assert "Traceback" not in text and "Exception in callback" not in text, f"{path}:\n{text[-3000:]}"


def ping(handle, src: str, dst: str, count: int = 3) -> subprocess.CompletedProcess:
    return handle.run(src, "ping", "-c", str(count), "-i", "0.05", "-W", "2", handle.ip(dst), timeout=30)


def assert_ping(handle, src: str = "client", dst: str = "web", count: int = 3) -> None:
    p = ping(handle, src, dst, count)
    assert p.returncode == 0 and " 0% packet loss" in p.stdout, p.stdout + p.stderr


def wait_listening(handle, instance: str, port: int, proto: str = "u") -> None:
    ok = wait_for(lambda: f":{port} " in handle.run(instance, "ss", f"-l{proto}nH").stdout, timeout=10)
    assert ok, f"nothing listening on {instance}:{port}"


SINK = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
with open(sys.argv[2], "a") as out:
    while True:
        data, addr = s.recvfrom(65535)
        out.write(json.dumps([addr[0], data.hex()]) + "\n")
        out.flush()
"""


class UdpSink:
    """A UDP listener in an instance that records every datagram it receives (source, payload)."""

    def __init__(self, handle, instance: str, port: int):
        self.path = handle.lab.dir / f"sink-{instance}-{port}.jsonl"
        self.path.touch()
        handle.spawn(instance, sys.executable, "-c", SINK, str(port), str(self.path))
        wait_listening(handle, instance, port)

    def received(self) -> list[tuple[str, bytes]]:
        return [(a, bytes.fromhex(d)) for a, d in map(json.loads, self.path.read_text().splitlines())]


def inner_udp(src: str, dst: str, payload: bytes, dport: int = SINK_PORT) -> bytes:
    return ipv4_packet(src, dst, UDP(40000, dport, payload))


@pytest.fixture(scope="module")
def sink(demo_lab):
    return UdpSink(demo_lab, "web", SINK_PORT)


# --- 1. an instance forging its source address ------------------------------------------------------

def test_forged_source_addresses_never_leave_the_host(demo_lab, sink):
    h = demo_lab
    client, web = h.ip("client"), h.ip("web")
    a0, b0 = h.status("host-a"), h.status("host-b")
    forged = ([(inner_udp("10.0.1.99", web, b"forged-99-%d" % i), (web, 0)) for i in range(20)]
              + [(inner_udp(web, web, b"forged-web-%d" % i), (web, 0)) for i in range(20)]
              + [(ipv4_packet("10.0.1.99", web, ICMP(8, 0, struct.pack("!HH", 0x4242, i) + b"x" * 32)), (web, 0))
                 for i in range(10)])
    result = _send(ns(h, "inst", "client"), "raw", forged)
    assert result["sent"] == len(forged), result

    def source_check_delta():
        return drops(h.status("host-a"), "egress").get("source_check", 0) - drops(a0, "egress").get("source_check", 0)

    assert wait_for(lambda: source_check_delta() >= len(forged))
    # A source-spoofing instance with source/destination check on: dropped, counted per reason and per ENI.
    p = None
    try:
        h.run("client", "ip", "addr", "add", "10.0.1.99/32", "dev", "eth0", check=True)
        p = h.run("client", "ping", "-c", "3", "-i", "0.05", "-W", "1", "-I", "10.0.1.99", web)
    finally:
        h.run("client", "ip", "addr", "del", "10.0.1.99/32", "dev", "eth0")
    assert p.returncode != 0 and "100% packet loss" in p.stdout, p.stdout + p.stderr
    expected = len(forged) + 3
    assert wait_for(lambda: source_check_delta() >= expected)
    time.sleep(0.2)
    a1, b1 = h.status("host-a"), h.status("host-b")
    assert delta(drops(a1, "egress"), drops(a0, "egress")) == {"source_check": expected}
    assert delta(eni_of(a1, "client")["drops"], eni_of(a0, "client")["drops"]) == {"source_check": expected}
    assert eni_of(a1, "client")["tx_packets"] == eni_of(a0, "client")["tx_packets"]
    assert eni_of(b1, "web")["rx_packets"] == eni_of(b0, "web")["rx_packets"]
    assert sink.received() == []
    assert a1["errors"] == 0 and b1["errors"] == 0

    # The same socket path with the instance's own address does get through: the sink really listens.
    real = [(inner_udp(client, web, b"genuine"), (web, 0))]
    assert _send(ns(h, "inst", "client"), "raw", real)["sent"] == 1
    assert wait_for(lambda: sink.received() == [(client, b"genuine")]), sink.received()


# --- 2. datagrams injected on the underlay -------------------------------------------------------------

def test_underlay_injection_with_a_forged_outer_source_is_dropped(demo_lab, sink):
    h = demo_lab
    client, web = h.ip("client"), h.ip("web")
    vni = h.state["instances"]["client"]["vni"]
    client_eni = eni_number(h.state["instances"]["client"]["eni"])
    host_b = (h.component("host-b")["underlay_ip"], PORT)
    mapping_ns = ns(h, "mapping")

    def datagram(payload: bytes, v: int = vni, eni: int = client_eni, src: str = client) -> bytes:
        return Geneve(v, geneve.PROTO_IPV4, (source_eni_option(eni),), inner_udp(src, web, payload)).emit()

    before_sink = len(sink.received())
    b0 = h.status("host-b")
    # From the mapping node (198.18.0.2): a real underlay node that owns no instance.
    assert _send(mapping_ns, "udp", [(datagram(b"from-mapping-%d" % i), host_b) for i in range(10)])["sent"] == 10
    # From an extra address on the mapping node's underlay link: still not the owner of 10.0.1.4.
    extra = "198.18.0.99"
    try:
        h.in_ns(mapping_ns, "ip", "addr", "add", f"{extra}/24", "dev", "ul0")
        r = _send(mapping_ns, "udp", [(datagram(b"from-extra-%d" % i), host_b) for i in range(5)], bind=extra)
        assert r["sent"] == 5, r
    finally:
        h.in_ns(mapping_ns, "ip", "addr", "del", f"{extra}/24", "dev", "ul0")
    # A VPC that does not live on host-b.
    assert _send(mapping_ns, "udp", [(datagram(b"vni-%d" % i, v=999), host_b) for i in range(7)])["sent"] == 7

    expected = {"outer_source_mismatch": 15, "unknown_vni": 7}
    assert wait_for(lambda: delta(drops(h.status("host-b"), "ingress"), drops(b0, "ingress")) == expected), \
        delta(drops(h.status("host-b"), "ingress"), drops(b0, "ingress"))

    # From host-a's own address (any source port): it may speak for its own ENI only.
    host_a_ns = ns(h, "host", "host-a")
    wrong = [(datagram(b"wrong-eni-%d" % i, eni=client_eni ^ 1), host_b) for i in range(4)]
    not_hers = [(datagram(b"not-hers-%d" % i, src=web), host_b) for i in range(3)]
    assert _send(host_a_ns, "udp", wrong + not_hers)["sent"] == 7
    expected.update(source_eni_mismatch=4, outer_source_mismatch=18)
    assert wait_for(lambda: delta(drops(h.status("host-b"), "ingress"), drops(b0, "ingress")) == expected)
    b1 = h.status("host-b")
    assert eni_of(b1, "web")["rx_packets"] == eni_of(b0, "web")["rx_packets"]
    assert len(sink.received()) == before_sink

    # Control: the very same datagram, sent from host-a's address with the right ENI, is delivered.
    assert _send(host_a_ns, "udp", [(datagram(b"well-formed"), host_b)])["sent"] == 1
    assert wait_for(lambda: (client, b"well-formed") in sink.received()), sink.received()
    b2 = h.status("host-b")
    assert eni_of(b2, "web")["rx_packets"] == eni_of(b1, "web")["rx_packets"] + 1
    assert b2["errors"] == 0


# --- 3. garbage on the underlay port --------------------------------------------------------------------

def garbled_geneve(rng: random.Random, vni: int, eni: int, src: str, dst: str) -> list[bytes]:
    """Valid-looking Geneve datagrams, each broken in some way (and a few intact ones)."""
    eni_opt = source_eni_option(eni)
    good = Geneve(vni, geneve.PROTO_IPV4, (eni_opt,), inner_udp(src, dst, b"fuzz")).emit()
    out = [good[:i] for i in range(len(good))]  # every truncation
    for _ in range(400):  # a few bytes flipped
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    inner = inner_udp(src, dst, b"x" * 8)
    for version in (1, 2, 3):
        out.append(bytes([version << 6 | 3]) + good[1:])
    out.append(good[:1] + bytes([0x80]) + good[2:])  # OAM
    for optlen in (4, 20, 63):  # options running past the end of the datagram
        out.append(bytes([optlen]) + good[1:])
    # An option whose length runs past the options' total length.
    out.append(Geneve(vni, geneve.PROTO_IPV4, (eni_opt,), inner).emit()[:8] + struct.pack("!HBB", 0xFF5C, 1, 31)
               + bytes(8) + inner)
    # Unknown critical / non-critical options, protocols, VNIs.
    out.append(Geneve(vni, geneve.PROTO_IPV4, (Option(0x0103, 0x85, bytes(4)), eni_opt), inner).emit())
    out.append(Geneve(vni, geneve.PROTO_IPV4, (Option(0x0103, 0x05, bytes(4)), eni_opt), inner).emit())
    out.append(Geneve(vni, geneve.PROTO_IPV6, (eni_opt,), bytes(40)).emit())  # "IPv6" of version 0
    out.append(Geneve(vni, 0x6558, (eni_opt,), bytes(60)).emit())  # Ethernet: not for an L3 overlay
    out.append(Geneve(vni, geneve.PROTO_IPV4, (eni_opt,), b"").emit())
    out.append(Geneve(vni, geneve.PROTO_IPV4, (eni_opt,), b"\x45" + bytes(10)).emit())
    out.append(Geneve(vni, geneve.PROTO_IPV4, (), inner).emit())  # no SOURCE_ENI at all
    out.append(Geneve(vni, geneve.PROTO_IPV4, (Option(geneve.OPTION_CLASS, geneve.OPT_SOURCE_ENI, bytes(4)),),
                      inner).emit())  # SOURCE_ENI of the wrong size
    for _ in range(50):  # OFFLOAD options with garbage virtio headers
        out.append(Geneve(vni, geneve.PROTO_IPV4, (eni_opt, offload_option(rng.randbytes(10))), inner).emit())
    for _ in range(300):  # inner sources nobody owns (held while the daemon is asked)
        s = f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"
        out.append(Geneve(vni, geneve.PROTO_IPV4, (eni_opt,), inner_udp(s, dst, b"who")).emit())
    for _ in range(50):
        out.append(Geneve(rng.randrange(1 << 24), rng.randrange(1 << 16), (), rng.randbytes(rng.randrange(80))).emit())
    return out


def test_garbage_on_the_underlay_never_crashes_an_agent(demo_lab):
    h = demo_lab
    rng = random.Random(6081)
    vni = h.state["instances"]["client"]["vni"]
    client_eni = eni_number(h.state["instances"]["client"]["eni"])
    noise = [rng.randbytes(rng.randrange(2001)) for _ in range(2000)]
    noise += [rng.randbytes(rng.randrange(2001, 8900)) for _ in range(50)]
    # Random payloads behind a plausible first byte (version 0, small option length).
    noise += [bytes([rng.randrange(8)]) + rng.randbytes(rng.randrange(7, 200)) for _ in range(300)]
    garbled = garbled_geneve(rng, vni, client_eni, h.ip("client"), h.ip("web"))
    datagrams = noise + garbled
    targets = {"host-a": (h.component("host-a")["underlay_ip"], PORT),
               "edge": (h.component("edge")["underlay_ip"], PORT)}
    a0, e0 = h.status("host-a"), h.status("edge")
    rcvbuf0 = {c: udp_rcvbuf_errors(h.component(c)["netns"]) for c in targets}
    items = [(d, targets["host-a"]) for d in datagrams] + [(d, targets["edge"]) for d in datagrams]
    r = _send(ns(h, "mapping"), "udp", items)
    assert r["sent"] == len(items), r

    # Every datagram that reached a socket is dropped and counted once — none delivered, none relayed
    # (the sender owns nothing). Held ones are counted when released (at most HOLD_TIME later).
    def counted(component: str, side: str) -> int:
        s = h.status(component)
        before = a0 if component == "host-a" else e0
        return sum(delta(s[side], before[side]).values())

    def expected(component: str) -> int:
        return len(datagrams) - (udp_rcvbuf_errors(h.component(component)["netns"]) - rcvbuf0[component])

    timeout = IngressPath.HOLD_TIME + 5
    assert wait_for(lambda: counted("host-a", "ingress_drops") == expected("host-a"), timeout=timeout), \
        (counted("host-a", "ingress_drops"), expected("host-a"), h.status("host-a")["ingress_drops"])
    assert wait_for(lambda: counted("edge", "drops") == expected("edge"), timeout=timeout), \
        (counted("edge", "drops"), expected("edge"), h.status("edge")["drops"])
    assert expected("host-a") > 0.9 * len(datagrams)

    a1, e1 = h.status("host-a"), h.status("edge")
    for component in ("host-a", "host-b", "edge", "mapping"):
        assert alive(h, component), f"{component} died"
        no_tracebacks(h, component)
    assert a1["errors"] == 0 and h.status("host-b")["errors"] == 0
    assert a1["pid"] == a0["pid"] and e1["pid"] == e0["pid"]
    ingress = delta(a1["ingress_drops"], a0["ingress_drops"])
    for reason in ("malformed_geneve", "unknown_vni", "outer_source_mismatch", "unknown_source",
                   "geneve_oam", "unknown_critical_option", "unsupported_protocol", "malformed_packet"):
        assert ingress.get(reason, 0) > 0, (reason, ingress)
    assert e1["relayed"] == e0["relayed"]
    assert eni_of(a1, "client")["rx_packets"] == eni_of(a0, "client")["rx_packets"]
    assert a1["mapping"]["connected"] and e1["mapping"]["connected"]
    assert_ping(h)


# --- 4. garbage from an instance ----------------------------------------------------------------------

def test_garbage_from_an_instance_never_crashes_its_agent(demo_lab):
    h = demo_lab
    rng = random.Random(0x45)
    client, web = h.ip("client"), h.ip("web")
    src_key, web_key = bytes(map(int, client.split("."))), bytes(map(int, web.split(".")))
    packets = [rng.randbytes(rng.randrange(2001)) for _ in range(2000)]
    for first in (0x45, 0x60, 0x4F, 0x40):
        for _ in range(300):
            packets.append(bytes([first]) + rng.randbytes(rng.randrange(2000)))
    # Own source address, random destinations in the VPC and the subnet (mapping misses, relays through
    # the edge), reserved addresses, outside the VPC, broadcast and multicast.
    for _ in range(200):
        dst = bytes([10, 0, rng.choice((1, rng.randrange(256))), rng.randrange(256)])
        packets.append(b"\x45" + rng.randbytes(11) + src_key + dst + rng.randbytes(rng.randrange(200)))
    # Well-formed ones too, which the client's default group lets out: only those can reach the mapping
    # stage (the firewall counts the rest as malformed or refuses them), and their misses go to the edge.
    for _ in range(100):
        dst = f"10.0.{rng.choice((1, rng.randrange(2, 256)))}.{rng.randrange(4, 255)}"
        if dst != web:
            packets.append(ipv4_packet(client, dst, UDP(rng.randrange(1024, 65536), 9, rng.randbytes(20))))
    for dst in ("10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.255", "192.0.2.1", "255.255.255.255",
                "224.0.0.1", "239.1.2.3"):
        for _ in range(5):
            packets.append(b"\x45" + rng.randbytes(11) + src_key + bytes(map(int, dst.split(".")))
                           + rng.randbytes(rng.randrange(100)))
    # Own source, web as destination, garbage behind the addresses: crosses to host-b and web's kernel.
    garbage_to_web = [b"\x45" + rng.randbytes(11) + src_key + web_key + rng.randbytes(rng.randrange(1500))
                      for _ in range(200)]
    # Most of that never leaves host-a now (the firewall parses every first packet). Well-formed UDP
    # with garbage payloads and bad checksums does cross, into web's kernel.
    udp_to_web = [bytearray(ipv4_packet(client, web, UDP(rng.randrange(1024, 65536), rng.randrange(1, 65536),
                                                         rng.randbytes(rng.randrange(1400)))))
                  for _ in range(100)]
    for p in udp_to_web[::2]:
        p[26:28] = rng.randbytes(2)  # the UDP checksum: web's kernel drops these, not us
    packets += garbage_to_web + [bytes(p) for p in udp_to_web]
    rng.shuffle(packets)
    a0, b0 = h.status("host-a"), h.status("host-b")
    r = _send(ns(h, "inst", "client"), "packet", packets, dev="eth0", pace=50)
    sent = r["sent"] - r["tx_dropped"]  # what the TUN queued for the agent
    assert r["sent"] > 0.99 * len(packets), r  # an empty packet may be refused by the socket
    assert sent > 0.9 * len(packets), r

    # Every packet the TUN handed over is either forwarded or dropped and counted.
    def handled() -> int:
        a = h.status("host-a")
        return (sum(delta(a["egress_drops"], a0["egress_drops"]).values())
                + eni_of(a, "client")["tx_packets"] - eni_of(a0, "client")["tx_packets"])

    assert wait_for(lambda: handled() == sent, timeout=10), (handled(), sent, r)
    a1 = h.status("host-a")
    egress = delta(a1["egress_drops"], a0["egress_drops"])
    for reason in ("malformed_packet", "source_check", "ipv6_not_enabled"):
        assert egress.get(reason, 0) > 100, (reason, egress, r)
    for reason in ("reserved_address", "no_route", "broadcast_multicast"):
        assert egress.get(reason, 0) > 0, (reason, egress, r)
    assert a1["to_edge"] > a0["to_edge"]  # misses were relayed, not lost
    # The UDP for web crossed (the kernel in web drops what it cannot parse); nothing was fatal.
    assert wait_for(lambda: eni_of(h.status("host-b"), "web")["rx_packets"]
                    >= eni_of(b0, "web")["rx_packets"] + len(udp_to_web))
    for component in ("host-a", "host-b", "edge", "mapping"):
        assert alive(h, component), f"{component} died"
        no_tracebacks(h, component)
    assert a1["errors"] == 0 and h.status("host-b")["errors"] == 0
    assert a1["pid"] == a0["pid"]
    assert_ping(h)
    assert_ping(h, "web", "client")


# --- 6. what the wire looks like -------------------------------------------------------------------------

def test_tshark_dissects_our_packets_as_geneve(demo_lab):
    h = demo_lab
    a_ip, b_ip = h.component("host-a")["underlay_ip"], h.component("host-b")["underlay_ip"]
    client, web = h.ip("client"), h.ip("web")
    fields = ("frame.protocols", "ip.src", "ip.dst", "udp.dstport", "geneve.version", "geneve.vni",
              "geneve.proto_type", "geneve.option.class", "icmp.type")
    cmd = ["ip", "netns", "exec", ns(h, "underlay"), "tshark", "-i", "br0", "-l", "-n", "-c", "8",
           "-a", "duration:15", "-f", f"udp port {PORT} and host {a_ip} and host {b_ip}",  # not heartbeats
           "-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    tshark = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = threading.Event()
        err_lines: list[str] = []

        def watch_stderr():
            for line in tshark.stderr:
                err_lines.append(line)
                if "Capturing on" in line:
                    started.set()

        threading.Thread(target=watch_stderr, daemon=True).start()
        assert started.wait(10), "".join(err_lines)
        time.sleep(0.3)  # "Capturing on" comes just before the capture is live
        p = h.run("client", "ping", "-c", "4", "-i", "0.1", "-W", "2", web)
        assert p.returncode == 0, p.stdout
        out, _ = tshark.communicate(timeout=20)
    finally:
        if tshark.poll() is None:
            tshark.kill()
            tshark.wait()
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    assert len(rows) == 8, out + "".join(err_lines)
    directions = {(a_ip, b_ip, client, web): "8", (b_ip, a_ip, web, client): "0"}  # echo request / reply
    seen = []
    for row in rows:
        assert ":ip:udp:geneve:ip:icmp" in row["frame.protocols"], row
        outer_src, inner_src = row["ip.src"].split(",")
        outer_dst, inner_dst = row["ip.dst"].split(",")
        key = (outer_src, outer_dst, inner_src, inner_dst)
        assert key in directions, row
        assert row["icmp.type"] == directions[key], row
        assert row["udp.dstport"] == str(PORT)
        assert int(row["geneve.version"], 0) == 0
        assert int(row["geneve.vni"], 0) == h.state["instances"]["client"]["vni"] == 1
        assert int(row["geneve.proto_type"], 0) == geneve.PROTO_IPV4
        assert geneve.OPTION_CLASS in {int(c, 0) for c in row["geneve.option.class"].split(",")}, row
        seen.append(row["icmp.type"])
    assert seen.count("8") == 4 and seen.count("0") == 4


# --- 5. the mapping daemon dies ---------------------------------------------------------------------------

def test_killing_the_mapping_daemon_leaves_cached_traffic_flowing(lab_factory, tmp_path):
    h = lab_factory(str(CONFIGS / "demo.yaml"))
    assert_ping(h)
    pid = h.component("mapping")["pid"]
    assert h.status("mapping")["pid"] == pid
    os.kill(pid, signal.SIGKILL)
    try:  # the daemon is this process's child (the lab started it): reap it
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    assert wait_for(lambda: not alive(h, "mapping"))
    for host in ("host-a", "host-b"):
        assert wait_for(lambda host=host: not h.status(host)["mapping"]["connected"]), h.status(host)["mapping"]
    assert h.lab.status()["components"]["mapping"]["health"] == "dead"

    assert_ping(h, count=5)
    assert_ping(h, "web", "client")
    (tmp_path / "index.html").write_text("still here\n")
    h.spawn("web", sys.executable, "-m", "http.server", "8080", "--directory", str(tmp_path))
    wait_listening(h, "web", 8080, "t")
    p = h.run("client", "curl", "-sS", "--max-time", "10", f"http://{h.ip('web')}:8080/")
    assert p.returncode == 0 and p.stdout == "still here\n", p.stderr
    # Let that connection's FIN exchange finish first: a FIN of web's caught by the eviction below is
    # dropped like the pings' replies, and its retransmissions would be counted with them (seen once,
    # under load: 9 unknown_source drops instead of 3).
    time.sleep(1.0)

    # A mapping lost from a cache cannot be learned now. Requests still reach web through the edge (which
    # has it), but web's replies come from a source host-a can no longer verify: dropped (fail closed).
    vni = h.state["instances"]["web"]["vni"]
    assert control.request(h.component("host-a")["socket"], {"op": "evict", "vni": vni, "addr": h.ip("web")})["evicted"]
    a0, b0, e0 = h.status("host-a"), h.status("host-b"), h.status("edge")
    p = h.run("client", "ping", "-c", "3", "-i", "0.05", "-W", "1", h.ip("web"))
    assert p.returncode != 0 and "100% packet loss" in p.stdout, p.stdout
    assert wait_for(lambda: delta(h.status("host-a")["ingress_drops"], a0["ingress_drops"]) == {"unknown_source": 3},
                    timeout=IngressPath.HOLD_TIME + 3), h.status("host-a")["ingress_drops"]
    a1, b1, e1 = h.status("host-a"), h.status("host-b"), h.status("edge")
    assert a1["to_edge"] - a0["to_edge"] == 3 and e1["relayed"] - e0["relayed"] == 3
    assert b1["from_edge"] - b0["from_edge"] == 3
    assert eni_of(b1, "web")["rx_packets"] - eni_of(b0, "web")["rx_packets"] == 3
    assert not a1["mapping"]["connected"] and a1["mapping"]["answered_misses"] == a0["mapping"]["answered_misses"]
    for host in ("host-a", "host-b"):
        assert h.status(host)["errors"] == 0
        assert alive(h, host)


# --- a held packet that cannot be finished --------------------------------------------------------------

NO_OFFLOAD_TOPOLOGY = """\
hosts: [{name: host-a}, {name: host-b, offload: false}]
vpcs:
  - name: demo
    cidr: 10.0.0.0/16
    subnets: [{name: app, cidr: 10.0.1.0/24}]
    instances:
      - {name: web, subnet: app, host: host-b, ip: 10.0.1.10}
      - {name: client, subnet: app, host: host-a}
"""


def test_a_held_packet_with_a_bad_offload_header_is_counted_not_fatal(lab_factory, tmp_path):
    """A datagram from the right host whose OFFLOAD option cannot be finished, held while host-b learns
    its source, is dropped as malformed when released (as on the direct path), and nothing else breaks."""
    topology = tmp_path / "no-offload.yaml"
    topology.write_text(NO_OFFLOAD_TOPOLOGY)
    h = lab_factory(str(topology))
    client, web = h.ip("client"), h.ip("web")
    vni = h.state["instances"]["client"]["vni"]
    client_eni = eni_number(h.state["instances"]["client"]["eni"])
    b0 = h.status("host-b")
    assert not eni_of(b0, "web")["vnet_hdr"]
    # host-b forgets the client: the next datagram from it is held while host-b asks the daemon.
    assert control.request(h.component("host-b")["socket"], {"op": "evict", "vni": vni, "addr": client})["evicted"]
    # A NEEDS_CSUM virtio header whose checksum lies far outside the packet: nothing can finish it.
    bad_vnet = struct.pack("<BBHHHH", 1, 0, 0, 0, 60000, 6)
    dgram = Geneve(vni, geneve.PROTO_IPV4, (source_eni_option(client_eni), offload_option(bad_vnet)),
                   inner_udp(client, web, b"bad offload")).emit()
    host_b = (h.component("host-b")["underlay_ip"], PORT)
    assert _send(ns(h, "host", "host-a"), "udp", [(dgram, host_b)])["sent"] == 1
    assert wait_for(lambda: h.status("host-b")["held_for_mapping"] == b0["held_for_mapping"] + 1)
    assert wait_for(lambda: delta(h.status("host-b")["ingress_drops"], b0["ingress_drops"]) == {"malformed_packet": 1},
                    timeout=IngressPath.HOLD_TIME + 2), {k: v for k, v in h.status("host-b").items() if k != "enis"}
    b1 = h.status("host-b")
    assert b1["errors"] == 0
    assert b1["mapping"]["connected"], b1["mapping"]
    no_tracebacks(h, "host-b")
    assert_ping(h)

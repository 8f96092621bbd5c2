"""The dual-stack figures of ``scripts/bench``: IPv6, a virtual machine's TAP ENI and the VPC resolver,
on a lab of configs/dual-stack.yaml (client and the TAP VM ``vm`` on host-a, web on host-b).

    tcp        one iperf3 stream (``-t S``) to web on host-b, as a ratio to the first:
               ``ipv4`` client → web, ``ipv6`` client → web's IPv6 address, ``tap`` vm → web (IPv4: a TAP
               ENI carries frames without the virtio header, so one packet per read, no TSO).
    resolver   from ``client``, UDP queries for ``web.<region>.compute.internal`` to 10.0.0.2:
               ``rtt``    one at a time for 2 s: the median round trip (ms), the host agent answering;
               ``limit``  3,000 queries/s offered for 3 s: answers/s (the limit is 1,024/s per ENI, after a
                          burst of 1,024) and the host's ``dns_rate_limited`` count for the run;
               ``core``   ``VpcResolver.handle`` answering the same query in-process, per second (no limit):
                          what a query costs the agent.

``python -m agents.bench_dual_stack query ADDRESS NAME SECONDS RATE`` is the client side of the resolver
figures, run inside the instance (RATE 0: one query at a time).
"""

from __future__ import annotations

import json
import random
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from agents.bench_hyperplane import IperfPath, tcp_streams

TOPOLOGY = Path(__file__).resolve().parent.parent / "configs" / "dual-stack.yaml"
REGION = "lab-1"
RESOLVER = "10.0.0.2"
LIMIT_RATE, LIMIT_SECONDS = 3000, 3


def _query(name: str, qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 1, 1)


def _client(address: str, name: str, seconds: float, rate: float) -> dict:
    """Queries to ``address`` for ``seconds``: one at a time (``rate`` 0: round trips measured), or
    ``rate`` per second without waiting (answers counted)."""
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((address, 53))
    sent = answered = 0
    rtts = []
    end = time.perf_counter() + seconds
    if rate == 0:
        s.settimeout(1.0)
        while time.perf_counter() < end:
            qid = random.getrandbits(16)
            t = time.perf_counter()
            s.send(_query(name, qid))
            sent += 1
            try:
                while struct.unpack_from("!H", s.recv(4096))[0] != qid:
                    pass
            except (socket.timeout, struct.error):
                continue
            answered += 1
            rtts.append((time.perf_counter() - t) * 1000)
        return {"sent": sent, "answered": answered, "rtt_ms_median": statistics.median(rtts) if rtts else None}
    s.setblocking(False)
    start = time.perf_counter()
    while (now := time.perf_counter()) < end:
        while sent < (now - start) * rate:
            s.send(_query(name, sent & 0xFFFF))
            sent += 1
        try:
            while True:
                s.recv(4096)
                answered += 1
        except BlockingIOError:
            time.sleep(0.0005)
    time.sleep(0.2)
    try:
        while True:
            s.recv(4096)
            answered += 1
    except BlockingIOError:
        pass
    return {"sent": sent, "answered": answered, "seconds": seconds, "answered_per_second": answered / seconds}


def core_queries_per_second(seconds: float = 1.0) -> float:
    """``VpcResolver.handle`` answering a private name in-process, as many times as it can (no limit)."""
    from vswitch.headers import UDP, ipv4_packet
    from vswitch.vpc_resolver import VpcResolver
    r = VpcResolver(REGION, rate=1e12, burst=1e12)
    r.update({"vpcs": [{"id": "vpc-1", "vni": 1, "cidr_block": "10.0.0.0/16"}],
              "enis": [{"id": "eni-1", "vni": 1, "private_ip": "10.0.1.10", "instance": "web"}]})
    packet = ipv4_packet("10.0.1.4", RESOLVER, UDP(40000, 53, _query(f"web.{REGION}.compute.internal", 7)))
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            r.handle("eni-1", 1, packet, 0.0)
        n += 1000
    assert isinstance(r.handle("eni-1", 1, packet, 0.0), bytes)
    return n / seconds


def measure(lab, iperf3, servers, runs: int, seconds: int, log) -> dict:
    """The figures above on a running lab of TOPOLOGY; ``iperf3`` and ``servers`` are ``agents.bench``'s."""
    inst = {i["name"]: i for i in lab.api().call("GET", "/v1/instances")}

    def in_inst(name):
        return lambda cmd: lab.exec_argv(name, cmd)

    paths = {"ipv4": IperfPath(in_inst("client"), in_inst("web"), inst["web"]["private_ip"]),
             "ipv6": IperfPath(in_inst("client"), in_inst("web"), inst["web"]["ipv6_address"]),
             "tap": IperfPath(in_inst("vm"), in_inst("web"), inst["web"]["private_ip"])}
    out: dict = {"tcp": tcp_streams(paths, iperf3, servers, runs, seconds, log, "dual stack")}

    def query(seconds_: float, rate: float) -> dict:
        p = subprocess.run(lab.exec_argv("client", [sys.executable, "-m", "agents.bench_dual_stack", "query",
                                                    RESOLVER, f"web.{REGION}.compute.internal", str(seconds_),
                                                    str(rate)]), capture_output=True, text=True, timeout=60)
        return json.loads(p.stdout)

    def limited() -> int:
        from vswitch import control
        sock = lab.state()["components"]["host-a"]["socket"]
        return control.request(sock, {"op": "status"})["resolver"]["rate_limited"]

    rtt = query(2, 0)
    log(f"bench: resolver round trip {rtt['rtt_ms_median']:.3f} ms ({rtt['answered']} answers)")
    time.sleep(1.5)  # the bucket refills
    before = limited()
    flood = query(LIMIT_SECONDS, LIMIT_RATE)
    flood["rate_limited"] = limited() - before
    log(f"bench: resolver under {LIMIT_RATE:,}/s offered: {flood['answered_per_second']:,.0f} answers/s, "
        f"{flood['rate_limited']:,} dropped by the limit")
    core = core_queries_per_second()
    log(f"bench: resolver core {core:,.0f} answers/s in-process")
    out["resolver"] = {"rtt": rtt, "limit": flood, "core_per_second": core}
    return out


def report_lines(figures: dict) -> list[str]:
    if not figures or "tcp" not in figures:
        return []
    lines = ["", f"Dual stack, TAP and the VPC resolver ({TOPOLOGY.name}; medians)"]
    for name, label in (("ipv4", "IPv4 client → web"), ("ipv6", "IPv6 client → web"), ("tap", "TAP vm → web")):
        t = figures["tcp"][name]
        lines.append(f"  one TCP stream, {label:<20} {t['median_bits_per_second'] / 1e9:>6.2f} Gbit/s   "
                     f"ratio {t['ratio']:.2f}")
    r = figures.get("resolver")
    if r:
        lines.append(f"  resolver round trip (one at a time)       {r['rtt']['rtt_ms_median']:>6.3f} ms")
        lines.append(f"  resolver answers/s, {LIMIT_RATE:,}/s offered      {r['limit']['answered_per_second']:>8,.0f}"
                     f"   (limit 1,024/s after a burst of 1,024; {r['limit']['rate_limited']:,} dropped)")
        lines.append(f"  resolver core, answers/s in-process       {r['core_per_second']:>8,.0f}")
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "query":
        print(json.dumps(_client(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))))
    else:
        sys.exit(f"usage: {sys.argv[0]} query ADDRESS NAME SECONDS RATE")

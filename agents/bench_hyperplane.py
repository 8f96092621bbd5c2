"""The Hyperplane figures of ``scripts/bench``: the NAT gateway and the load balancer, on a lab of
configs/hyperplane.yaml (client on host-a; web1 on host-b; the gateway and balancer on Hyperplane nodes).

    conns     new TCP connections per second, each connect + close, 64 at a time, from ``client``
              (after a warm-up of 500 untimed, and a second of quiet):
              ``nat``  to a sink in the internet namespace (203.0.113.10:9100) through the NAT gateway,
              ``lb``   to the load balancer's listener 80, whose targets web1..3 run the same sink.
              The floor: 2,000/s each.
    tcp       one iperf3 stream (``-t S``, client → server) on three paths of the same lab, as a ratio to
              the first: ``direct`` client → web1 (instance to instance), ``nat`` client → 203.0.113.10
              through the NAT gateway (and the edge), ``lb`` client → the balancer's listener 5201, whose
              target group holds web1:5201 only (added for the run).

``python -m agents.bench_hyperplane sink ADDRESS PORT`` and ``… connect ADDRESS PORT N CONCURRENCY``
are the two ends of the connection-rate test, run inside namespaces by the bench.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import uvloop

TOPOLOGY = Path(__file__).resolve().parent.parent / "configs" / "hyperplane.yaml"
INTERNET_WEB = "203.0.113.10"
SINK_PORT = 9100
CONNECTIONS, CONCURRENCY, WARM_UP = 5000, 64, 500
FLOOR_CONNS = 2000
WEBS = ("web1", "web2", "web3")


# --- the two ends of the connection-rate test (run in namespaces) -----------------------------------
async def _sink(address: str, port: int) -> None:
    async def handle(reader, writer):
        writer.close()

    server = await asyncio.start_server(handle, address, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


async def _connect(address: str, port: int, n: int, concurrency: int) -> dict:
    errors: dict[str, int] = {}
    todo = iter(range(n))

    async def worker():
        done = 0
        for _ in todo:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 5)
                await reader.read()  # the server closes first: its side keeps the TIME_WAIT
                writer.close()
                done += 1
            except (OSError, asyncio.TimeoutError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        return done

    t0 = time.perf_counter()
    done = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
    seconds = time.perf_counter() - t0
    return {"connections": done, "seconds": seconds, "per_second": done / seconds, "errors": errors}


# --- the bench's side ----------------------------------------------------------------------------------
def _background(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


class IperfPath:
    """An iperf3 path in ``bench``'s shape: where the client and server run, and the address to use."""

    def __init__(self, client, server, server_ip: str):
        self.client, self.server, self.server_ip = client, server, server_ip


def tcp_streams(paths: dict, iperf3, servers, runs: int, seconds: int, log, label: str) -> dict:
    """One iperf3 stream on each path, ``runs`` times in turn: per path the median, the runs and the
    ratio to the first path's median."""
    tcp: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(runs):
        for name, path in paths.items():
            time.sleep(1.0)
            bps = float(iperf3(path, servers, [], seconds)["end"]["sum_received"]["bits_per_second"])
            tcp[name].append(bps)
            log(f"bench: {label} tcp {name} run {i + 1}/{runs}: {bps / 1e9:.2f} Gbit/s")
    medians = {name: statistics.median(v) for name, v in tcp.items()}
    first = medians[next(iter(paths))]
    return {name: {"median_bits_per_second": medians[name], "runs": tcp[name], "ratio": medians[name] / first}
            for name in paths}


def measure(lab, iperf3, servers, runs: int, seconds: int, log, terminate) -> dict:
    """The figures above on a running lab of TOPOLOGY; ``iperf3``, ``servers`` and ``terminate`` are
    ``agents.bench``'s, so the paths are measured exactly as the main figures are."""
    api = lab.api()
    lb = api.call("GET", "/v1/load-balancers")[0]
    inst = {i["name"]: i for i in api.call("GET", "/v1/instances")}
    internet = ["ip", "netns", "exec", lab.ns("internet")]

    def in_inst(name):
        return lambda cmd: lab.exec_argv(name, cmd)

    out: dict = {"connections": CONNECTIONS, "concurrency": CONCURRENCY}
    sinks = [_background([*internet, sys.executable, "-m", "agents.bench_hyperplane", "sink", INTERNET_WEB,
                          str(SINK_PORT)])]
    sinks += [_background(lab.exec_argv(w, [sys.executable, "-m", "agents.bench_hyperplane", "sink", "0.0.0.0", "80"]))
              for w in WEBS]
    # iperf3 through the balancer: a listener on 5201 to a group of web1:5201 only.
    tg = api.call("POST", "/v1/target-groups", {"vpc_id": lb["vpc_id"], "name": "bench-iperf", "protocol": "tcp",
                                                "port": 5201, "targets": [{"instance_id": inst["web1"]["id"],
                                                                           "port": 5201}],
                                                "health_check": {"protocol": "tcp", "interval": 1, "timeout": 1,
                                                                 "healthy_threshold": 2, "unhealthy_threshold": 2}})
    listeners = lb["listeners"]
    api.call("PATCH", f"/v1/load-balancers/{lb['id']}",
             {"listeners": [*listeners, {"protocol": "tcp", "port": 5201, "target_group_id": tg["id"]}]})
    # web1's group admits tcp/80 only: iperf3 (5201) from the VPC too, for the run.
    group = api.call("GET", f"/v1/security-groups/{inst['web1']['security_group_ids'][0]}")
    api.call("PATCH", f"/v1/security-groups/{group['id']}", {"ingress": [
        *group["ingress"], {"protocol": "tcp", "from_port": 5201, "to_port": 5201, "cidr": "10.0.0.0/16"}]})
    try:
        time.sleep(3.0)  # sinks up; the web targets turn healthy (interval 1 s, threshold 2)
        def connect(address: str, port: int, n: int) -> dict:
            p = subprocess.run(lab.exec_argv("client", [sys.executable, "-m", "agents.bench_hyperplane", "connect",
                                                        address, str(port), str(n), str(CONCURRENCY)]),
                               capture_output=True, text=True, timeout=300)
            return json.loads(p.stdout)

        for name, address, port in (("nat", INTERNET_WEB, SINK_PORT), ("lb", lb["private_ip"], 80)):
            rates = []
            connect(address, port, WARM_UP)
            for i in range(runs):
                time.sleep(1.0)
                result = connect(address, port, CONNECTIONS)
                rates.append(result)
                log(f"bench: hyperplane conns {name} run {i + 1}/{runs}: {result['per_second']:,.0f}/s "
                    f"errors {result['errors']}")
            out[f"conns_{name}"] = {"median_per_second": statistics.median(r["per_second"] for r in rates),
                                    "runs": rates}
        paths = {"direct": IperfPath(in_inst("client"), in_inst("web1"), inst["web1"]["private_ip"]),
                 "nat": IperfPath(in_inst("client"), lambda cmd: [*internet, *cmd], INTERNET_WEB),
                 "lb": IperfPath(in_inst("client"), in_inst("web1"), lb["private_ip"])}
        out["tcp"] = tcp_streams(paths, iperf3, servers, runs, seconds, log, "hyperplane")
    finally:
        api.call("PATCH", f"/v1/security-groups/{group['id']}", {"ingress": group["ingress"]})
        api.call("PATCH", f"/v1/load-balancers/{lb['id']}", {"listeners": listeners})
        api.call("DELETE", f"/v1/target-groups/{tg['id']}")
        for p in sinks:
            terminate(p.pid)
    return out


def report_lines(figures: dict) -> list[str]:
    if not figures or "tcp" not in figures:
        return []
    lines = ["", f"Hyperplane ({TOPOLOGY.name}; medians)"]
    for name, label in (("nat", "NAT gateway"), ("lb", "load balancer")):
        c = figures.get(f"conns_{name}")
        if c:
            rate = c["median_per_second"]
            lines.append(f"  new TCP connections/s through the {label:<14} {rate:>9,.0f}   "
                         f"(floor {FLOOR_CONNS:,}: {'ok' if rate >= FLOOR_CONNS else 'BELOW'})")
    for name, label in (("direct", "instance to instance"), ("nat", "through the NAT gateway"),
                        ("lb", "through the load balancer")):
        t = figures["tcp"][name]
        lines.append(f"  one TCP stream {label:<26} {t['median_bits_per_second'] / 1e9:>6.2f} Gbit/s   "
                     f"ratio {t['ratio']:.2f}")
    return lines


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        uvloop.run(_sink(sys.argv[2], int(sys.argv[3])))
    elif sys.argv[1] == "connect":
        print(json.dumps(uvloop.run(_connect(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))))
    else:
        sys.exit(f"usage: {sys.argv[0]} sink ADDRESS PORT | connect ADDRESS PORT N CONCURRENCY")

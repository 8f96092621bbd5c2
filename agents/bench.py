"""``python -m agents.bench``: our data path against the kernel, measured in the same run.

Two paths, each measured with the same tools:

    baseline   two fresh network namespaces ``bench-<hex>-a`` / ``bench-<hex>-b`` joined by a veth pair
               (MTU 9001, 10.250.0.1 ↔ 10.250.0.2/24, only inside those namespaces): the kernel ceiling.
    ours       a lab from configs/demo.yaml under a unique name (``b`` + 8 hex): client (host-a) → web
               (host-b), i.e. TUN → host agent → Geneve over the underlay → host agent → TUN.

Figures, each taken ``--runs`` times (per run, per figure: baseline then ours, the order swapped on every
other run so a drift in machine load does not always favour one path), reported as medians:

    tcp    single-stream TCP throughput: ``iperf3 -c … -t S -J``, end.sum_received.bits_per_second.
    udp    64-byte UDP packets per second *delivered*: ``iperf3 -c … -u -l 64 -b 0 -t S -J``, from the client's
           JSON end.sum_received, which holds the receiver's (server's) figures as reported back to the
           client at the end of the test: (packets − lost_packets) / seconds. ``packets`` there is the
           receiver's count of datagrams the sender numbered (highest sequence seen), so subtracting the
           gaps gives what actually arrived (equals bytes / 64). Sender-side figures are kept in the raw runs.
    rtt    ``ping -c 200 -i 0.002 -q``: the avg of the rtt summary line, in ms.

Then, on the same lab, the policy figures (``agents/bench_policy.py``; ``--no-policy`` skips them): TCP
of an established flow through a 1-rule vs a 1,000-rule security group, new flows admitted per second by
the policy path, and the memory of 1,000,000 tracked flows.

Then the Hyperplane figures (``agents/bench_hyperplane.py``; ``--no-hyperplane`` skips them), on a second lab
of configs/hyperplane.yaml: new TCP connections per second through the NAT gateway and through the load
balancer (floor 2,000/s), and one TCP stream through each as a ratio to instance to instance in that lab.

Then the dual-stack figures (``agents/bench_dual_stack.py``; ``--no-dual-stack`` skips them), on a lab of
configs/dual-stack.yaml: one TCP stream over IPv6 and from a TAP VM as ratios to IPv4, and the VPC
resolver's round trip, its per-ENI limit under load and its in-process answer rate.

Each iperf3 test gets its own server (``iperf3 -s -1``, started in the server's namespace and killed by
pid if it outlives the test). A short warm-up ping on each path first proves it works and fills caches
(ARP, the host agents' mapping cache), so the first measured run is not a cold one; each measurement
starts after a 1 s pause, as a UDP flood leaves packets queued in our path for a while after it stops.

The floors of the current milestone: TCP ≥ 15 % of veth; 64-byte UDP ≥ 50,000 packets/s delivered (ours,
absolute); RTT added by our path ≤ 0.3 ms. A failed floor is a result, not an error: exit status 0.
The exit status is 1 when a measurement could not be taken (or setup failed), 130 when interrupted.
Everything made is removed on every way out (lab down, namespaces deleted, iperf3 servers killed).

These machines are shared and noisy: compare the ratio, not the absolute figures, and look at the
raw runs (``--json``) before believing a median. The load average is printed for that reason.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agents import bench_dual_stack, bench_hyperplane, bench_policy
from agents.lab import Lab, terminate
from vswitch.topology import load_topology

TOPOLOGY = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
CLIENT, SERVER = "client", "web"  # instances of demo.yaml, on different hosts
PORT = 5201  # every server namespace is our own, so the default iperf3 port never collides
VETH_MTU = 9001
VETH_A, VETH_B = "10.250.0.1", "10.250.0.2"
UDP_LEN = 64
PING_COUNT, PING_INTERVAL = 200, "0.002"
CMD_TIMEOUT = 15.0  # set-up and tear-down commands
SERVER_READY_TIMEOUT = 5.0
SETTLE = 1.0  # seconds of quiet before each measurement: a UDP flood leaves queues draining in the agents
LAB_UP_TIMEOUT = 90  # seconds; Lab.up's own commands have no time-out, so an alarm bounds the whole call
TOOLS = ("ip", "iperf3", "ping", "ss")

FLOOR_TCP_RATIO = 0.15
FLOOR_UDP_PPS = 50_000
FLOOR_RTT_ADDED_MS = 0.3

FIGURES = ("tcp", "udp", "rtt")
PATHS = ("baseline", "ours")


class MeasureError(RuntimeError):
    """One measurement could not be taken."""


class Interrupted(BaseException):
    """SIGTERM/SIGHUP, handled like Ctrl-C so every ``finally`` runs."""


class SetupTimeout(BaseException):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(argv: list[str], timeout: float = CMD_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise MeasureError(f"`{' '.join(argv)}` timed out after {timeout:.0f} s") from None
    if check and p.returncode:
        raise MeasureError(f"`{' '.join(argv)}` failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-500:]}")
    return p


# --- the two paths ---------------------------------------------------------------------------------------

class VethPath:
    """The kernel baseline: two namespaces and a veth pair; nothing touches the root namespace."""

    label = "baseline (kernel veth)"

    def __init__(self, prefix: str):
        self.ns_client, self.ns_server = f"{prefix}-a", f"{prefix}-b"
        self.server_ip = VETH_B
        self.made: list[str] = []

    def up(self) -> None:
        for ns in (self.ns_client, self.ns_server):
            run(["ip", "netns", "add", ns])
            self.made.append(ns)
            run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                 "net.ipv6.conf.default.disable_ipv6=1"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # Created inside the client namespace, its peer placed straight into the server namespace.
        run(["ip", "-n", self.ns_client, "link", "add", "veth0", "mtu", str(VETH_MTU), "type", "veth",
             "peer", "name", "veth0", "netns", self.ns_server, "mtu", str(VETH_MTU)])
        for ns, ip in ((self.ns_client, VETH_A), (self.ns_server, VETH_B)):
            run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "veth0"])
            run(["ip", "-n", ns, "link", "set", "veth0", "up"])

    def client(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns_client, *cmd]

    def server(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns_server, *cmd]

    def describe(self) -> dict:
        return {"netns": [self.ns_client, self.ns_server], "client": VETH_A, "server": VETH_B, "mtu": VETH_MTU}

    def down(self) -> None:
        for ns in reversed(self.made):
            # Only our own programs can be in a namespace with our unique name.
            pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                terminate(int(pid))
            run(["ip", "netns", "del", ns], check=False)  # takes the veth pair with it
        self.made.clear()


class LabPath:
    """Ours: a demo lab, client on host-a → web on host-b."""

    label = "ours (VPC, across hosts)"

    def __init__(self, name: str):
        self.lab = Lab(name)
        self.state: dict = {}
        self.server_ip = ""

    def up(self) -> None:
        def alarm(signum, frame):
            raise SetupTimeout(f"lab up took longer than {LAB_UP_TIMEOUT} s")

        old = signal.signal(signal.SIGALRM, alarm)
        signal.alarm(LAB_UP_TIMEOUT)
        try:  # Lab.up removes what it made if anything (this alarm included) interrupts it
            self.state = self.lab.up(load_topology(str(TOPOLOGY)), str(TOPOLOGY), say=lambda m: log(f"  {m}"))
        except SetupTimeout as e:
            raise MeasureError(str(e)) from None
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        self.server_ip = self.state["instances"][SERVER]["ip"]

    def client(self, cmd: list[str]) -> list[str]:
        return self.lab.exec_argv(CLIENT, cmd)

    def server(self, cmd: list[str]) -> list[str]:
        return self.lab.exec_argv(SERVER, cmd)

    def describe(self) -> dict:
        inst = self.state.get("instances", {})
        out = {"lab": self.lab.name, "topology": str(TOPOLOGY),
               "client": inst.get(CLIENT, {}).get("ip"), "server": self.server_ip,
               "client_host": inst.get(CLIENT, {}).get("host"), "server_host": inst.get(SERVER, {}).get("host")}
        try:  # the instance's MTU, to compare like with like
            links = json.loads(run(self.client(["ip", "-j", "link", "show"])).stdout)
            out["mtu"] = next((l["mtu"] for l in links if l.get("ifname") != "lo"), None)
        except (MeasureError, ValueError):
            out["mtu"] = None
        return out

    def down(self) -> None:
        self.lab.down(quiet=True)


# --- measurements ----------------------------------------------------------------------------------------

class Servers:
    """iperf3 servers we started; each is killed by its pid when done (or on any way out)."""

    def __init__(self):
        self.live: dict[int, subprocess.Popen] = {}

    def start(self, path) -> tuple[subprocess.Popen, object]:
        out = tempfile.TemporaryFile()
        p = subprocess.Popen(path.server(["iperf3", "-s", "-1", "-p", str(PORT)]), stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.live[p.pid] = p  # `ip netns exec` execs iperf3: this pid is the server itself
        deadline = time.monotonic() + SERVER_READY_TIMEOUT
        while True:
            if p.poll() is not None:
                raise MeasureError(f"iperf3 server exited with {p.returncode} at start: {_tail(out)}")
            if run(path.server(["ss", "-Hltn", "sport", "=", f":{PORT}"]), check=False).stdout.strip():
                return p, out
            if time.monotonic() > deadline:
                raise MeasureError(f"iperf3 server not listening after {SERVER_READY_TIMEOUT:.0f} s")
            time.sleep(0.02)

    def stop(self, p: subprocess.Popen, wait: float = 3.0) -> None:
        try:
            p.wait(timeout=wait)  # `-1`: it exits by itself after its one test
        except subprocess.TimeoutExpired:
            terminate(p.pid)
            p.wait()
        self.live.pop(p.pid, None)

    def kill_all(self) -> None:
        for p in list(self.live.values()):
            if p.poll() is None:
                terminate(p.pid)
            self.live.pop(p.pid, None)


def _tail(f) -> str:
    f.seek(0)
    return f.read()[-500:].decode(errors="replace").strip()


def iperf3(path, servers: Servers, args: list[str], seconds: int) -> dict:
    server, out = servers.start(path)
    try:
        argv = path.client(["iperf3", "-c", path.server_ip, "-p", str(PORT), "-t", str(seconds), "-J",
                            "--connect-timeout", "3000", *args])
        p = run(argv, timeout=seconds + 20, check=False)
        try:
            result = json.loads(p.stdout)
        except ValueError:
            raise MeasureError(f"iperf3 gave no JSON (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-300:]}")
        if result.get("error") or p.returncode:
            raise MeasureError(f"iperf3: {result.get('error') or p.stderr.strip() or f'exit {p.returncode}'}"
                               f"; server said: {_tail(out)}")
        return result
    finally:
        servers.stop(server)
        out.close()


def measure_tcp(path, servers: Servers, seconds: int) -> tuple[float, dict]:
    end = iperf3(path, servers, [], seconds)["end"]
    try:
        bps = float(end["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError):
        raise MeasureError("iperf3 JSON lacks end.sum_received.bits_per_second") from None
    sent = end.get("sum_sent", {})
    return bps, {"bits_per_second": bps, "seconds": end["sum_received"].get("seconds"),
                 "sender_bits_per_second": sent.get("bits_per_second"), "retransmits": sent.get("retransmits"),
                 "cpu_utilization_percent": end.get("cpu_utilization_percent")}


def measure_udp(path, servers: Servers, seconds: int) -> tuple[float, dict]:
    end = iperf3(path, servers, ["-u", "-l", str(UDP_LEN), "-b", "0"], seconds)["end"]
    source = "end.sum_received"
    recv = end.get("sum_received")
    if not recv:  # older iperf3: the client's end.sum carries the server-reported loss
        source, recv = "end.sum", end.get("sum", {})
    try:
        packets, lost, secs = int(recv["packets"]), int(recv["lost_packets"]), float(recv["seconds"])
    except (KeyError, TypeError, ValueError):
        raise MeasureError(f"iperf3 JSON lacks {source}.packets/lost_packets/seconds") from None
    if secs <= 0:
        raise MeasureError(f"iperf3 {source}.seconds is {secs}")
    delivered = packets - lost
    pps = delivered / secs
    sent = end.get("sum_sent", {})
    return pps, {"source": source, "delivered_pps": pps, "receiver_packets": packets, "lost_packets": lost,
                 "delivered_packets": delivered, "lost_percent": recv.get("lost_percent"), "seconds": secs,
                 "received_bytes": recv.get("bytes"), "sender_packets": sent.get("packets"),
                 "sender_pps": (sent["packets"] / sent["seconds"]) if sent.get("seconds") else None,
                 "jitter_ms": recv.get("jitter_ms"), "cpu_utilization_percent": end.get("cpu_utilization_percent")}


PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")
PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def ping(path, count: int, interval: str, timeout: float) -> dict:
    p = run(path.client(["ping", "-c", str(count), "-i", interval, "-W", "1", "-q", path.server_ip]),
            timeout=timeout, check=False)
    summary, rtt = PING_SUMMARY.search(p.stdout), PING_RTT.search(p.stdout)
    if not summary or not rtt or int(summary.group(2)) == 0:
        raise MeasureError(f"ping to {path.server_ip} failed (exit {p.returncode}): "
                           f"{(p.stdout + p.stderr).strip()[-300:]}")
    mn, avg, mx, mdev = (float(x) for x in rtt.groups())
    sent, got = int(summary.group(1)), int(summary.group(2))
    return {"avg_ms": avg, "min_ms": mn, "max_ms": mx, "mdev_ms": mdev, "transmitted": sent, "received": got}


def measure_rtt(path, servers: Servers, seconds: int) -> tuple[float, dict]:
    r = ping(path, PING_COUNT, PING_INTERVAL, timeout=30)
    return r["avg_ms"], r


MEASURE = {"tcp": measure_tcp, "udp": measure_udp, "rtt": measure_rtt}


# --- the report ------------------------------------------------------------------------------------------

def summarise(raw: list[dict]) -> dict:
    figures = {}
    for fig in FIGURES:
        med = {}
        for path in PATHS:
            values = [r["value"] for r in raw if r["figure"] == fig and r["path"] == path and r["error"] is None]
            med[path] = statistics.median(values) if values else None
        b, o = med["baseline"], med["ours"]
        entry = {"baseline": b, "ours": o}
        if fig == "tcp":
            ratio = o / b if b and o is not None else None
            entry.update(unit="bit/s", ratio=ratio, floor=f">= {FLOOR_TCP_RATIO:.0%} of veth",
                         verdict=None if ratio is None else ratio >= FLOOR_TCP_RATIO)
        elif fig == "udp":
            ratio = o / b if b and o is not None else None
            entry.update(unit="packets/s delivered", ratio=ratio, floor=f">= {FLOOR_UDP_PPS} packets/s (ours)",
                         verdict=None if o is None else o >= FLOOR_UDP_PPS)
        else:
            added = o - b if b is not None and o is not None else None
            entry.update(unit="ms (avg)", added_ms=added, floor=f"<= {FLOOR_RTT_ADDED_MS} ms added",
                         verdict=None if added is None else added <= FLOOR_RTT_ADDED_MS)
        entry["verdict"] = {True: "PASS", False: "FAIL", None: "n/a"}[entry["verdict"]]
        figures[fig] = entry
    return figures


def _fmt(fig: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    if fig == "tcp":
        return f"{v / 1e9:.2f} Gbit/s"
    if fig == "udp":
        return f"{v:,.0f} pps"
    return f"{v:.3f} ms"


def print_table(report: dict) -> None:
    names = {"tcp": "TCP, 1 stream", "udp": f"UDP {UDP_LEN} B delivered", "rtt": "ping RTT avg"}
    floors = {"tcp": f">= {FLOOR_TCP_RATIO:.0%} of veth", "udp": f">= {FLOOR_UDP_PPS:,} pps (ours)",
              "rtt": f"<= {FLOOR_RTT_ADDED_MS} ms added"}
    rows = [("figure", "baseline", "ours", "ratio", "floor", "verdict")]
    for fig in FIGURES:
        e = report["figures"][fig]
        if fig == "rtt":
            ratio = "n/a" if e["added_ms"] is None else f"added {e['added_ms']:+.3f} ms"
        else:
            ratio = "n/a" if e["ratio"] is None else f"{e['ratio']:.1%}"
        rows.append((names[fig], _fmt(fig, e["baseline"]), _fmt(fig, e["ours"]), ratio, floors[fig], e["verdict"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"medians of {report['runs']} run(s), {report['seconds']} s each; baseline = kernel veth "
          f"(MTU {report['paths']['baseline']['mtu']}), ours = lab {report['paths']['ours'].get('lab')} "
          f"{CLIENT} → {SERVER} across hosts (MTU {report['paths']['ours'].get('mtu')})")
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("\nraw runs (in order taken):")
    for fig in FIGURES:
        for path in PATHS:
            vals = [("ERR" if r["error"] else _fmt(fig, r["value"])) for r in report["raw"]
                    if r["figure"] == fig and r["path"] == path]
            print(f"  {fig:<4} {path:<9} {', '.join(vals)}")
    la, lb = report["loadavg_start"], report["loadavg_end"]
    print(f"\nload average at start {la[0]:.2f} / end {lb[0]:.2f} on {os.cpu_count()} CPUs; "
          f"took {report['duration_s']:.0f} s. UDP delivered = iperf3 client JSON end.sum_received "
          f"(server's figures): (packets - lost_packets) / seconds.")
    for e in report["errors"]:
        print(f"ERROR: {e}")


# --- main ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agents.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="repetitions of each measurement (default 3)")
    ap.add_argument("--seconds", type=int, default=5, help="length of each iperf3 test (default 5)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (with every raw run)")
    ap.add_argument("--no-policy", action="store_true", help="skip the policy figures (agents/bench_policy.py)")
    ap.add_argument("--no-hyperplane", action="store_true",
                    help="skip the NAT gateway and load balancer figures (agents/bench_hyperplane.py)")
    ap.add_argument("--no-dual-stack", action="store_true",
                    help="skip the IPv6, TAP and resolver figures (agents/bench_dual_stack.py)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.seconds < 1:
        ap.error("--runs and --seconds must be at least 1")
    if os.geteuid() != 0:
        log("bench: needs root (network namespaces)")
        return 1
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        log(f"bench: tools missing: {', '.join(missing)} (scripts/setup installs them)")
        return 1

    def on_signal(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    tag = uuid.uuid4().hex[:8]
    paths = {"baseline": VethPath(f"bench-{tag}"), "ours": LabPath(f"b{tag}")}
    hyperplane_lab = Lab(f"h{tag}")
    dual_lab = Lab(f"d{tag}")
    servers = Servers()
    raw: list[dict] = []
    errors: list[str] = []
    policy: dict = {"errors": []}
    t0, load0 = time.monotonic(), os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        for name, path in paths.items():
            log(f"bench: setting up {path.label}")
            path.up()
            try:  # proves the path works and warms ARP / mapping caches before anything is timed
                ping(path, 5, "0.1", timeout=15)
            except MeasureError as e:
                raise MeasureError(f"{name}: path does not work: {e}") from None
        for i in range(args.runs):
            for fig in FIGURES:
                for name in (PATHS if i % 2 == 0 else PATHS[::-1]):
                    entry = {"run": i + 1, "figure": fig, "path": name, "value": None, "detail": None, "error": None}
                    time.sleep(SETTLE)
                    try:
                        entry["value"], entry["detail"] = MEASURE[fig](paths[name], servers, args.seconds)
                        log(f"bench: run {i + 1}/{args.runs} {fig:<3} {name:<8} {_fmt(fig, entry['value'])}")
                    except MeasureError as e:
                        entry["error"] = str(e)
                        errors.append(f"run {i + 1} {fig} {name}: {e}")
                        log(f"bench: run {i + 1}/{args.runs} {fig:<3} {name:<8} FAILED: {e}")
                    raw.append(entry)
        described = {name: p.describe() for name, p in paths.items()}
        if not args.no_policy:
            measure_policy(paths["ours"], servers, args, policy)
        if not args.no_hyperplane:
            paths["ours"].down()  # one lab at a time: the machine has two cores
            measure_on_lab(hyperplane_lab, bench_hyperplane, policy, "hyperplane",
                           lambda lab: bench_hyperplane.measure(lab, iperf3, servers, args.runs, args.seconds, log,
                                                                terminate))
        if not args.no_dual_stack:
            paths["ours"].down()
            measure_on_lab(dual_lab, bench_dual_stack, policy, "dual_stack",
                           lambda lab: bench_dual_stack.measure(lab, iperf3, servers, args.runs, args.seconds, log))
    except MeasureError as e:
        errors.append(f"setup: {e}")
        log(f"bench: {e}")
        described = {name: {} for name in paths}
    except (KeyboardInterrupt, Interrupted) as e:
        log(f"bench: interrupted ({str(e) or 'SIGINT'}); cleaning up")
        return 130
    finally:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:  # every step, even when an earlier one fails
            for step in (servers.kill_all, paths["ours"].down, paths["baseline"].down,
                         lambda: hyperplane_lab.down(quiet=True), lambda: dual_lab.down(quiet=True)):
                try:
                    step()
                except Exception as e:  # noqa: BLE001 - report, carry on cleaning
                    log(f"bench: clean-up step {step.__qualname__} failed: {e}")
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    report = {"runs": args.runs, "seconds": args.seconds, "started": started,
              "duration_s": time.monotonic() - t0, "loadavg_start": load0, "loadavg_end": os.getloadavg(),
              "cpus": os.cpu_count(), "paths": described,
              "method": {
                  "tcp": "iperf3 -t S -J, single stream; end.sum_received.bits_per_second",
                  "udp": f"iperf3 -u -l {UDP_LEN} -b 0 -t S -J; client JSON end.sum_received (the server's "
                         "receive figures reported back): (packets - lost_packets) / seconds",
                  "rtt": f"ping -c {PING_COUNT} -i {PING_INTERVAL} -q; avg of the rtt line, ms",
                  "order": "per run and figure: baseline then ours; reversed on every other run",
                  "statistic": "median of the successful runs",
                  "settle_s": SETTLE},
              "figures": summarise(raw), "raw": raw, "policy": policy,
              "errors": errors + policy["errors"], "ok": not errors and not policy["errors"]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        if raw:
            print_table(report)
            if not args.no_policy:
                print("\n".join(bench_policy.report_lines(policy)))
            print("\n".join(bench_hyperplane.report_lines(policy.get("hyperplane", {}))))
            print("\n".join(bench_dual_stack.report_lines(policy.get("dual_stack", {}))))
        else:
            for e in errors:
                print(f"ERROR: {e}")
    return 1 if errors or policy["errors"] else 0


def measure_policy(ours: LabPath, servers: Servers, args, policy: dict) -> None:
    """The figures of ``agents/bench_policy.py``; each failure is recorded and the others still run."""
    steps = (("tcp_rules", lambda: bench_policy.tcp_with_rules(ours.lab, measure_tcp, ours, servers, args.runs,
                                                                 args.seconds, log)),
             ("new_flows", lambda: {str(n): bench_policy.new_flows_per_second(n) for n in (1, 1000)}),
             ("memory", bench_policy.memory))
    for name, step in steps:
        log(f"bench: policy figure {name}")
        try:
            policy[name] = step()
        except (MeasureError, RuntimeError, subprocess.SubprocessError, OSError) as e:
            policy["errors"].append(f"policy {name}: {e}")
            log(f"bench: policy {name} FAILED: {e}")


def measure_on_lab(lab: Lab, module, policy: dict, key: str, measure) -> None:
    """``measure(lab)`` (the figures of ``module``, an ``agents/bench_*.py``) on their own lab of
    ``module.TOPOLOGY``, stored as ``policy[key]``; a failure is recorded, not raised."""
    name = key.replace("_", " ")
    log(f"bench: setting up the {name} lab {lab.name} ({module.TOPOLOGY.name})")
    try:
        topo = str(module.TOPOLOGY)
        lab.up(load_topology(topo), topo, say=lambda m: log(f"  {m}"))
        policy[key] = measure(lab)
    except (MeasureError, RuntimeError, subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
        policy["errors"].append(f"{name}: {e}")
        log(f"bench: {name} FAILED: {e}")
    finally:
        lab.down(quiet=True)


if __name__ == "__main__":
    sys.exit(main())

"""Host agent restart without harm (issue 7): ENI devices are persistent, so a host agent killed with
``kill -9`` leaves its instances their interfaces, addresses and routes; restarted (as systemd's
``Restart=on-failure`` would), it attaches to the same devices again and established TCP connections
go on. A deliberate detach still removes the device, and ``vpc down`` leaves nothing.

Topology: tests/lab/agent_restart.yaml (a1, a2 and the TAP virtual machine vm on host-a, rx on host-b).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.lab import Lab

pytestmark = pytest.mark.root
HERE = Path(__file__).resolve().parent
TOPOLOGY = str(HERE / "agent_restart.yaml")
TRANSFER = str(HERE / "transfer.py")
TOTAL = 256 << 20  # bytes per transfer
RATE = 32 << 20  # bytes/s: 8 s each, the agent is killed ~2.5 s in
SENDERS = {"a1": 9001, "a2": 9002}  # instance on host-a -> its receiver's port on rx (host-b)

sys.path.insert(0, str(HERE))
from transfer import expected_sha256  # noqa: E402


def ip_json(netns: str, *args: str):
    p = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True)
    return json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else None


def eth0(lab, instance: str) -> dict | None:
    """What the instance's namespace has of its ENI: the device, its addresses and routes."""
    ns = lab.state["instances"][instance]["netns"]
    link = ip_json(ns, "-d", "link", "show", "eth0")
    if not link:
        return None
    link = link[0]
    addrs = ip_json(ns, "addr", "show", "dev", "eth0")[0]["addr_info"]
    routes4 = ip_json(ns, "-4", "route", "show", "dev", "eth0") or []
    routes6 = ip_json(ns, "-6", "route", "show", "dev", "eth0") or []
    info = link.get("linkinfo", {}).get("info_data", {})
    return {"ifindex": link["ifindex"], "qlen": link.get("txqlen"), "alias": link.get("ifalias"),
            "persist": info.get("persist"),
            "carrier": "NO-CARRIER" not in link["flags"],
            "addresses": sorted(f"{a['local']}/{a['prefixlen']}" for a in addrs if a.get("scope") == "global"),
            "routes4": sorted(r["dst"] for r in routes4),
            "routes6": sorted(r["dst"] for r in routes6 if not r["dst"].startswith(("fe80", "ff")))}


def tun_aliases(lab) -> dict[str, str]:
    """Every TUN/TAP device of the lab's namespaces and of the root namespace: alias -> where."""
    found = {}
    for ns in [*lab.lab.namespaces(), None]:
        cmd = ["ip", "-j", "-d", "link", "show", "type", "tun"] if ns is None else \
            ["ip", "-n", ns, "-j", "-d", "link", "show", "type", "tun"]
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        for link in json.loads(out) if out.strip() else []:
            found[link.get("ifalias") or link["ifname"]] = ns or "root"
    return found


def mark(lab, instance: str, qlen: int = 777) -> None:
    """Mark the instance's eth0 (a queue length no ENI device is made with: 500), to know it again:
    indexes are no identity (a device made in a host's namespace keeps its index when moved)."""
    subprocess.run(["ip", "-n", lab.state["instances"][instance]["netns"], "link", "set", "eth0", "txqueuelen",
                    str(qlen)], check=True)


def until(predicate, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout:.0f} s: {what}")
        time.sleep(0.05)


def kill9(lab, component: str) -> None:
    """kill -9 a component (its pid from the lab's state) and reap it: a crash."""
    pid = lab.lab.state()["components"][component]["pid"]
    os.kill(pid, 9)
    lab.lab._procs[component].wait(timeout=10)


def test_kill9_of_the_host_agent_under_two_long_transfers(lab_factory):
    lab = lab_factory(TOPOLOGY)
    inst = lab.state["instances"]
    host_a = sorted(n for n, i in inst.items() if i["host"] == "host-a")
    assert host_a == ["a1", "a2", "vm"] and inst["rx"]["host"] == "host-b"
    for n in host_a:
        mark(lab, n)
    before = {n: eth0(lab, n) for n in host_a}
    for n, dev in before.items():
        assert dev["alias"] == inst[n]["eni"] and dev["persist"] and dev["carrier"] and dev["qlen"] == 777, (n, dev)
    assert {f"{inst['a1']['ip']}/24", f"{inst['a1']['ipv6']}/64"} <= set(before["a1"]["addresses"])
    assert "default" in before["a1"]["routes4"] and before["a1"]["routes6"], before["a1"]

    receivers = {}
    senders = {}
    try:
        for n, port in SENDERS.items():
            receivers[n] = subprocess.Popen(lab.lab.exec_argv("rx", [sys.executable, TRANSFER, "recv", str(port)]),
                                            stdout=subprocess.PIPE, text=True)
            assert receivers[n].stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        for n, port in SENDERS.items():
            senders[n] = subprocess.Popen(lab.lab.exec_argv(n, [sys.executable, TRANSFER, "send", lab.ip("rx"),
                                                                str(port), str(TOTAL), str(RATE)]),
                                          stdout=subprocess.PIPE, text=True)
        time.sleep(2.5)
        assert all(p.poll() is None for p in senders.values()), "a transfer ended before the crash"
        rx_before = sum(e["rx_bytes"] for e in lab.status("host-b")["enis"])
        assert rx_before > 20 << 20, f"too little moved before the crash: {rx_before} bytes"

        kill9(lab, "host-a")
        t_kill = time.monotonic() - t0
        # While the agent is down, the instances keep their devices (no carrier: nobody reads them),
        # addresses and routes.
        for n in host_a:
            dev = eth0(lab, n)
            assert dev is not None, f"{n} lost eth0 with its agent"
            assert not dev["carrier"], dev
            assert {**dev, "carrier": True} == before[n], (n, dev, before[n])
        assert os.path.exists(lab.state["components"]["host-a"]["socket"])  # stale: must not stop the restart

        new_pid = lab.lab.restart("host-a")  # as systemd would; the stale control socket is in the way
        t_ready = time.monotonic() - t0
        st = lab.status("host-a")
        assert st["pid"] == new_pid and st["ready"] and st["pending"] == {} and st["errors"] == 0, st
        assert sorted(e["instance"] for e in st["enis"]) == host_a
        assert all(e["reattached"] for e in st["enis"]), st["enis"]
        # Its mappings were preloaded again before it attached (the VPC's four instances, both families).
        assert st["mapping"]["connected"] and st["mapping"]["entries"] >= 8, st["mapping"]
        after = {n: eth0(lab, n) for n in host_a}
        for n in host_a:  # the very same devices, with carrier again
            assert after[n] == before[n], (n, after[n], before[n])

        results = {}
        for n in SENDERS:
            out, _ = senders[n].communicate(timeout=120)
            assert senders[n].returncode == 0, f"sender {n} failed: {out}"
            sent = json.loads(out)
            got = json.loads(receivers[n].communicate(timeout=30)[0])
            results[n] = {"sent": sent, "received": got}
    finally:
        for p in [*senders.values(), *receivers.values()]:
            if p.poll() is None:
                p.kill()
                p.wait()
    for n, port in SENDERS.items():
        sent, got = results[n]["sent"], results[n]["received"]
        want = expected_sha256(port, TOTAL)
        assert sent["bytes"] == got["bytes"] == TOTAL, results[n]
        assert sent["sha256"] == got["sha256"] == want, results[n]
        # The stall around the restart is visible, and bounded.
        assert got["max_gap"] < 20, results[n]
    print(f"\nagent killed at {t_kill:.2f} s, ready again at {t_ready:.2f} s (restart took "
          f"{t_ready - t_kill:.2f} s); longest pause at the receivers: "
          + ", ".join(f"{n} {r['received']['max_gap']:.2f} s at {r['received']['gap_at']:.2f} s"
                      for n, r in results.items())
          + "; transfers took " + ", ".join(f"{n} {r['received']['seconds']:.1f} s" for n, r in results.items()))

    st = lab.status("host-a")
    by_instance = {e["instance"]: e for e in st["enis"]}
    for n in SENDERS:  # their flows were picked up mid-stream by the restarted agent
        assert by_instance[n]["conntrack"]["picked_up"] >= 1, by_instance[n]
        assert not by_instance[n]["drops"].get("not_a_flow_start"), by_instance[n]
    assert st["errors"] == 0
    # New connections work; the VM's link is answered by the new agent (ARP for its router included).
    assert lab.run("a1", "ping", "-c", "2", "-i", "0.1", "-W", "2", lab.ip("rx")).returncode == 0
    subprocess.run(["ip", "-n", inst["vm"]["netns"], "neigh", "flush", "dev", "eth0"], check=True)
    p = lab.run("vm", "ping", "-c", "2", "-i", "0.1", "-W", "2", lab.ip("rx"))
    assert p.returncode == 0, p.stdout + p.stderr
    p = lab.run("a2", "ping", "-6", "-c", "2", "-i", "0.1", "-W", "2", inst["rx"]["ipv6"])
    assert p.returncode == 0, p.stdout + p.stderr

    # A stop (SIGTERM, as for an upgrade) and start again: the same devices are attached to again.
    lab.lab.restart("host-a")
    st = lab.status("host-a")
    assert all(e["reattached"] for e in st["enis"]) and st["pending"] == {}, st
    assert {n: eth0(lab, n) for n in host_a} == before
    assert lab.run("a1", "ping", "-c", "2", "-i", "0.1", "-W", "2", lab.ip("rx")).returncode == 0


def test_detach_removes_the_device_and_down_leaves_nothing(lab_factory):
    lab = lab_factory(TOPOLOGY)
    api = lab.lab.api()
    inst = lab.state["instances"]
    assert set(tun_aliases(lab)) >= {inst[n]["eni"] for n in ("a1", "a2", "vm", "rx")}

    # a2 moves to host-b: host-a deletes its device, host-b makes a new one (a device left behind would
    # have been attached to again: "reattached", with the mark).
    mark(lab, "a2")
    api.call("PATCH", f"/v1/instances/{inst['a2']['id']}", {"host": "host-b"})
    until(lambda: any(e["instance"] == "a2" for e in lab.status("host-b")["enis"]), what="a2 on host-b")
    assert not any(e["instance"] == "a2" for e in lab.status("host-a")["enis"])
    moved = next(e for e in lab.status("host-b")["enis"] if e["instance"] == "a2")
    assert not moved["reattached"]
    dev = eth0(lab, "a2")
    assert dev["qlen"] == 500 and dev["alias"] == inst["a2"]["eni"] and dev["carrier"] and dev["persist"], dev
    assert lab.run("a2", "ping", "-c", "2", "-i", "0.1", "-W", "2", lab.ip("rx")).returncode == 0

    # a1 deleted while its agent runs: its namespace and device go.
    api.call("DELETE", f"/v1/instances/{inst['a1']['id']}")
    until(lambda: not Path(f"/run/netns/{inst['a1']['netns']}").exists(), what="a1's namespace removed")
    assert inst["a1"]["eni"] not in tun_aliases(lab)

    # vm deleted while host-a's agent is down: its persistent device waits in the namespace; the
    # restarted agent finds it orphaned and removes it with the namespace.
    kill9(lab, "host-a")
    api.call("DELETE", f"/v1/instances/{inst['vm']['id']}")
    assert eth0(lab, "vm")["alias"] == inst["vm"]["eni"]
    lab.lab.restart("host-a")
    st = lab.status("host-a")
    assert st["enis"] == [] and st["pending"] == {} and st["errors"] == 0, st
    assert not Path(f"/run/netns/{inst['vm']['netns']}").exists()
    aliases = tun_aliases(lab)
    assert inst["vm"]["eni"] not in aliases and inst["a1"]["eni"] not in aliases
    assert {inst["a2"]["eni"], inst["rx"]["eni"]} <= set(aliases)

    # vpc down, with persistent devices in the instances: nothing is left, in the lab's namespaces
    # (gone) nor in the root namespace.
    lab.lab.down()
    assert not lab.lab.namespaces()
    assert not lab.lab.dir.exists()
    assert not list(Path("/etc/netns").glob(f"{lab.name}.*"))
    assert not tun_aliases(lab)
    assert Lab(lab.name).down() == []

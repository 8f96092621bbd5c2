"""The control plane drives real labs: changes through the API reach the data path without restarts;
nothing acknowledged is lost when the control plane is killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vswitch.controlplane.client import ApiClient, ApiRequestError

pytestmark = pytest.mark.root
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def pids(lab) -> dict:
    return {n: c["pid"] for n, c in lab.lab.state()["components"].items()}


def answers(lab, src: str, ip: str) -> bool:
    return lab.run(src, "ping", "-c", "1", "-W", "1", ip).returncode == 0


def until(predicate, timeout: float = 10.0, step: float = 0.02) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("not reached in time")
        time.sleep(step)
    return time.monotonic() - t0


def test_topology_changes_through_the_api_while_traffic_flows(lab_factory):
    lab = lab_factory(str(CONFIGS / "three-hosts.yaml"))
    api = lab.lab.api()
    before = pids(lab)
    subnet = api.call("GET", "/v1/subnets", params={"name": "app"})[0]["id"]
    # Traffic flows the whole time: a ping client -> web in the background.
    pinger = subprocess.Popen(lab.lab.exec_argv("client", ["ping", "-i", "0.05", "-W", "1", lab.ip("web")]),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Add an instance on the third host, then reach it with curl.
        t0 = time.monotonic()
        extra = api.call("POST", "/v1/instances", {"name": "extra", "subnet_id": subnet, "host": "host-c"})
        until(lambda: answers(lab, "client", extra["private_ip"]))
        converged = time.monotonic() - t0
        lab.spawn("extra", sys.executable, "-m", "http.server", "8081", "--bind", extra["private_ip"],
                  "--directory", "/proc/self")
        until(lambda: lab.run("client", "curl", "-s", "--max-time", "1", "-o", "/dev/null", "-w", "%{http_code}",
                              f"http://{extra['private_ip']}:8081/").stdout == "200")
        # Delete it: its address stops answering, and its namespace is gone.
        api.call("DELETE", f"/v1/instances/{extra['id']}")
        until(lambda: not answers(lab, "client", extra["private_ip"]))
        until(lambda: not Path(f"/run/netns/{lab.name}.inst.extra").exists())
        # Move web to host-c: it answers again from there.
        web = api.call("GET", "/v1/instances", params={"name": "web"})[0]
        api.call("PATCH", f"/v1/instances/{web['id']}", {"host": "host-c"})
        until(lambda: any(e["instance"] == "web" for e in lab.status("host-c")["enis"]))
        until(lambda: answers(lab, "client", lab.ip("web")))
        assert not any(e["instance"] == "web" for e in lab.status("host-b")["enis"])
    finally:
        pinger.send_signal(signal.SIGINT)
        out = pinger.communicate(timeout=10)[0]
    assert converged < 5, f"an added instance took {converged:.2f} s to answer"
    assert pids(lab) == before, "no agent was restarted"
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    assert sent > 20 and received >= sent * 0.5, out[-300:]  # ping kept working (a gap while web moved)


def test_vpc_apply_is_idempotent_and_converges(lab_factory, tmp_path):
    lab = lab_factory(str(CONFIGS / "three-hosts.yaml"))
    vpc = [sys.executable, "-m", "agents.cli", "--lab", lab.name]
    p = subprocess.run([*vpc, "apply", str(CONFIGS / "three-hosts.yaml")], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "no changes", p.stdout + p.stderr
    changed = tmp_path / "changed.yaml"
    changed.write_text((CONFIGS / "three-hosts.yaml").read_text()
                       .replace("{name: web, subnet: app, host: host-b, ip: 10.0.1.10}",
                                "{name: web, subnet: app, host: host-c, ip: 10.0.1.10}")
                       .replace("      - {name: client, subnet: app, host: host-a}",
                                "      - {name: client, subnet: app, host: host-a}\n"
                                "      - {name: db, subnet: app, host: host-b, ip: 10.0.1.20}"))
    p = subprocess.run([*vpc, "apply", str(changed)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "created instance db (10.0.1.20 on host-b)" in p.stdout and "changed instance web: host=host-c" in p.stdout
    assert answers(lab, "client", "10.0.1.20") and answers(lab, "client", "10.0.1.10")
    p = subprocess.run([*vpc, "apply", str(changed)], capture_output=True, text=True)
    assert p.stdout.strip() == "no changes"
    # Back to the original: db is removed, web goes home.
    p = subprocess.run([*vpc, "apply", str(CONFIGS / "three-hosts.yaml")], capture_output=True, text=True)
    assert "deleted instance db" in p.stdout and "changed instance web: host=host-b" in p.stdout, p.stdout
    until(lambda: not answers(lab, "client", "10.0.1.20"))
    assert answers(lab, "client", "10.0.1.10")


def test_control_plane_kill9_loses_no_acknowledged_write(lab_factory):
    lab = lab_factory(str(CONFIGS / "demo.yaml"))
    vpc_id = lab.lab.api().call("GET", "/v1/vpcs")[0]["id"]
    acknowledged, stop = [], threading.Event()

    def writer(n: int):
        api = ApiClient(f"unix://{lab.lab.api_socket}", lab.lab.token_file.read_text().strip(), timeout=2)
        i = 0
        while not stop.is_set():
            try:
                sg = api.call("POST", "/v1/security-groups", {"vpc_id": vpc_id, "name": f"burst-{n}-{i}"})
                acknowledged.append(sg["id"])
            except (ApiRequestError, OSError, Exception):
                pass  # refused or cut off: not acknowledged, so no promise was made
            i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    until(lambda: len(acknowledged) >= 30, timeout=30)
    os.kill(lab.component("control-plane")["pid"], signal.SIGKILL)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    lab.lab.restart("control-plane")
    have = {g["id"] for g in lab.lab.api().call("GET", "/v1/security-groups")}
    lost = [g for g in acknowledged if g not in have]
    assert len(acknowledged) >= 30 and not lost, f"{len(lost)} acknowledged writes lost"
    # The agents resynchronise with the restarted control plane: a new instance attaches.
    subnet = lab.lab.api().call("GET", "/v1/subnets")[0]["id"]
    extra = lab.lab.api().call("POST", "/v1/instances", {"name": "after", "subnet_id": subnet, "host": "host-a"})
    until(lambda: answers(lab, "web", extra["private_ip"]), timeout=15)

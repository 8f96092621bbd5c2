"""``vpc demo``: the demo VPC end to end — up, a web page across hosts, ping, iperf3, a security group
and a trace, the internet through an elastic IP, down."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from agents.lab import Lab
from vswitch.topology import load_topology

PAGE = "<html><body><h1>Hello from web</h1><p>Served at {ip} on {host}, reached through the userspace VPC.</p></body></html>\n"


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _show(lab: Lab, instance: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    print(f"$ vpc exec {instance} -- {' '.join(cmd)}", flush=True)
    p = subprocess.run(lab.exec_argv(instance, list(cmd)), capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(p.stdout)
    sys.stdout.write(p.stderr)
    sys.stdout.flush()
    return p


def run_demo(lab_name: str = "demo") -> int:
    from agents.cli import DEFAULT_TOPOLOGY, print_instances

    lab = Lab(lab_name)
    if lab.exists():
        print(f"(removing a leftover lab {lab_name!r} first)")
        lab.down()
    _step(f"vpc up {DEFAULT_TOPOLOGY.name}: mapping daemon, edge, one host agent per host, instances")
    t0 = time.monotonic()
    state = lab.up(load_topology(str(DEFAULT_TOPOLOGY)), str(DEFAULT_TOPOLOGY), say=print)
    print(f"up in {time.monotonic() - t0:.1f} s")
    print_instances(state)
    ok = True
    try:
        web, client = state["instances"]["web"], state["instances"]["client"]
        _step(f"web server in 'web' ({web['ip']} on {web['host']})")
        www = lab.dir / "www"
        www.mkdir()
        (www / "index.html").write_text(PAGE.format(ip=web["ip"], host=web["host"]))
        lab.spawn("web", [sys.executable, "-m", "http.server", "80", "--bind", web["ip"], "--directory", str(www)],
                  "demo-http")
        for _ in range(100):  # wait for it to listen
            if f"{web['ip']}:80 " in subprocess.run(lab.exec_argv("web", ["ss", "-ltnH"]), capture_output=True,
                                                     text=True).stdout:
                break
            time.sleep(0.05)

        _step(f"curl from 'client' ({client['ip']} on {client['host']}) to web, across hosts")
        ok &= _show(lab, "client", "curl", "-sS", "--max-time", "10", f"http://{web['ip']}/").returncode == 0

        _step("ping")
        ok &= _show(lab, "client", "ping", "-c", "3", "-i", "0.2", web["ip"]).returncode == 0

        _step("iperf3, 3 seconds, one TCP stream")
        lab.spawn("web", ["iperf3", "-s", "-1"], "demo-iperf3")
        time.sleep(0.3)
        p = _show(lab, "client", "iperf3", "-c", web["ip"], "-t", "3", "-f", "g", timeout=30)
        ok &= p.returncode == 0

        _step("a security group: web admits TCP 80 from the VPC only; vpc trace shows who decides")
        api = lab.api()
        inst = {i["name"]: i for i in api.call("GET", "/v1/instances")}
        sg = api.call("POST", "/v1/security-groups", {"vpc_id": inst["web"]["vpc_id"], "name": "web", "ingress": [
            {"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr": "10.0.0.0/16"}]})
        api.call("PATCH", f"/v1/instances/{inst['web']['id']}", {"security_group_ids": [sg["id"]]})
        time.sleep(0.5)  # reaches the agents in ~0.1 s
        ok &= _show(lab, "client", "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "HTTP %{http_code}\n",
                    f"http://{web['ip']}/").returncode == 0
        from agents.trace import render, trace
        print("$ vpc trace client web tcp 22")
        denied = trace(lab.state(), lab.instances(), "client", "web", "tcp", 22)
        print(render(denied))
        ok &= denied["verdict"] == "dropped"

        _step("the internet: a gateway, a default route, an elastic IP for web")
        vpc = api.call("GET", f"/v1/vpcs/{inst['web']['vpc_id']}")
        igw = api.call("POST", "/v1/internet-gateways", {"vpc_id": vpc["id"]})
        api.call("PATCH", f"/v1/route-tables/{vpc['main_route_table_id']}",
                 {"routes": [{"destination": "0.0.0.0/0", "gateway_id": igw["id"]}]})
        eip = api.call("POST", "/v1/elastic-ips", {"instance_id": inst["web"]["id"]})
        print(f"web is {eip['public_ip']} on the internet")
        time.sleep(0.5)
        ok &= _show(lab, "web", "curl", "-sS", "--max-time", "10", "http://203.0.113.10/").returncode == 0
        ok &= _show(lab, "web", "dig", "+short", "+time=2", "@203.0.113.53", "www.example.test").returncode == 0

        _step("what the switch counted (vpc status --json, abridged)")
        for name, c in lab.status()["components"].items():
            d = c["detail"]
            summary = {k: d[k] for k in ("enis", "egress_drops", "ingress_drops", "relayed", "entries", "revision")
                       if k in d}
            for e in summary.get("enis", []):
                e.pop("vnet_hdr", None)
            print(f"{name}: {json.dumps(summary)}")
    finally:
        _step("vpc down")
        removed = lab.down()
        print(f"removed {len(removed)} namespaces, processes and files")
    print("\ndemo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1

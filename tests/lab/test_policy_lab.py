"""Security groups and network ACLs with real clients: curl, a long-lived TCP connection, vpc trace.

One lab (configs/two-subnets.yaml): client and web in subnet app, ops in subnet ops. Each test sets
the policy it needs through the API and puts the defaults back when it ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import start_lab

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
ECHO = str(Path(__file__).with_name("echo.py"))


@pytest.fixture(scope="module")
def lab(root_tools, tmp_path_factory):
    handle = start_lab(str(ROOT / "configs" / "two-subnets.yaml"))
    www = tmp_path_factory.mktemp("www")
    (www / "index.html").write_text("hello from web\n")
    try:
        handle.api = handle.lab.api()
        handle.instances = {i["name"]: i for i in handle.api.call("GET", "/v1/instances")}
        handle.vpc = handle.api.call("GET", "/v1/vpcs")[0]
        handle.subnets = {s["name"]: s for s in handle.api.call("GET", "/v1/subnets")}
        handle.spawn("web", sys.executable, "-m", "http.server", "8080", "--directory", str(www))
        handle.spawn("web", sys.executable, ECHO, "serve", "7007")
        handle.wait_http("client", "http://10.0.1.10:8080/", "web server did not come up")
        yield handle
    finally:
        handle.lab.down(quiet=True)


def curl(lab, src: str, port: int = 8080) -> bool:
    return lab.run(src, "curl", "-s", "-m", "2", f"http://10.0.1.10:{port}/").stdout == "hello from web\n"


def vpc(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.cli", "--lab", lab.name, *args], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)


def set_groups(lab, instance: str, groups: list[str]) -> None:
    lab.api.call("PATCH", f"/v1/instances/{lab.instances[instance]['id']}", {"security_group_ids": groups})
    time.sleep(0.5)  # the bound is a second; measured ~0.1 s


def group(lab, name: str, ingress: list[dict], egress: list[dict] | None = None) -> dict:
    body = {"vpc_id": lab.vpc["id"], "name": name, "ingress": ingress}
    if egress is not None:
        body["egress"] = egress
    return lab.api.call("POST", "/v1/security-groups", body)


@pytest.fixture
def restore(lab):
    """Put every instance back in the default group and subnets on the default ACL after the test."""
    yield
    default_sg, default_acl = lab.vpc["default_security_group_id"], lab.vpc["default_network_acl_id"]
    for name in lab.instances:
        set_groups(lab, name, [default_sg])
    for s in lab.subnets.values():
        lab.api.call("PATCH", f"/v1/subnets/{s['id']}", {"network_acl_id": default_acl})
    for g in lab.api.call("GET", "/v1/security-groups"):
        if not g.get("default"):
            lab.api.call("DELETE", f"/v1/security-groups/{g['id']}")
    for a in lab.api.call("GET", "/v1/network-acls"):
        if not a.get("default"):
            lab.api.call("DELETE", f"/v1/network-acls/{a['id']}")
    time.sleep(0.3)


def test_curl_allowed_and_denied_by_a_security_group(lab, restore):
    assert curl(lab, "client")  # the default group: members talk to each other
    web = group(lab, "web", [{"protocol": "tcp", "from_port": 8080, "to_port": 8080, "cidr": "10.0.1.0/24"}])
    set_groups(lab, "web", [web["id"]])
    assert curl(lab, "client")
    assert not curl(lab, "ops")  # 10.0.2.4 is outside the rule's CIDR
    trace = vpc(lab, "trace", "ops", "web", "tcp", "8080", "--json")
    assert trace.returncode == 1, trace.stderr
    result = json.loads(trace.stdout)
    assert result["verdict"] == "dropped"
    assert result["denied_by"] == f"no ingress rule of {web['id']} matches"
    drop = result["steps"][-1]
    assert (drop["host"], drop["step"], drop["reason"]) == ("host-b", "drop", "sg_deny")
    status = lab.status("host-b")
    eni = next(e for e in status["enis"] if e["instance"] == "web")
    assert eni["drops"]["sg_deny"] >= 1 and eni["security_groups"] == [web["id"]]


def test_curl_denied_by_a_network_acl_only_across_the_boundary(lab, restore):
    acl = lab.api.call("POST", "/v1/network-acls", {"vpc_id": lab.vpc["id"], "name": "no-ops-web", "entries": [
        {"rule_number": 50, "action": "deny", "protocol": "tcp", "from_port": 8080, "to_port": 8080,
         "cidr": "10.0.2.0/24"},
        {"rule_number": 100, "action": "allow", "cidr": "0.0.0.0/0"},
        {"rule_number": 100, "egress": True, "action": "allow", "cidr": "0.0.0.0/0"}]})
    lab.api.call("PATCH", f"/v1/subnets/{lab.subnets['app']['id']}", {"network_acl_id": acl["id"]})
    time.sleep(0.5)
    assert curl(lab, "client")  # inside subnet app: no ACL applies
    assert not curl(lab, "ops")
    text = vpc(lab, "trace", "ops", "web", "tcp", "8080")
    assert text.returncode == 1
    assert f"{acl['id']} ingress rule 50 deny" in text.stdout
    assert "verdict: dropped" in text.stdout
    assert vpc(lab, "trace", "ops", "web", "tcp", "7007").returncode == 0  # rule 100 allows other ports


def talk(lab, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen(lab.lab.exec_argv("client", [sys.executable, ECHO, "talk", "10.0.1.10", "7007",
                                                      str(seconds)]), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "connected"
    return p


def test_tracked_connection_survives_removing_its_rule(lab, restore):
    echo = group(lab, "echo", [{"protocol": "tcp", "from_port": 7007, "to_port": 7007, "cidr": "10.0.1.0/24"}])
    set_groups(lab, "web", [echo["id"]])
    p = talk(lab, 3)
    time.sleep(1)
    lab.api.call("PATCH", f"/v1/security-groups/{echo['id']}", {"ingress": []})
    out = p.communicate(timeout=15)[0].split()
    assert out and set(out) == {"ok"}, out  # not one round trip lost
    # New connections are refused now.
    assert lab.run("client", sys.executable, ECHO, "talk", "10.0.1.10", "7007", "0", timeout=20).returncode != 0


def test_untracked_connection_is_cut_when_its_rule_goes(lab, restore):
    open_ = group(lab, "open", [{"protocol": "tcp", "from_port": 0, "to_port": 65535, "cidr": "0.0.0.0/0"}])
    set_groups(lab, "web", [open_["id"]])  # in and out open to 0.0.0.0/0: web tracks no TCP flow

    def created() -> int:
        return next(e for e in lab.status("host-b")["enis"] if e["instance"] == "web")["conntrack"]["created"]

    before = created()
    p = talk(lab, 4)
    time.sleep(1)
    assert created() == before
    lab.api.call("PATCH", f"/v1/security-groups/{open_['id']}",
                 {"ingress": [{"protocol": "tcp", "from_port": 0, "to_port": 65535, "cidr": "10.0.0.0/16"}]})
    out = p.communicate(timeout=15)[0].split("\n")
    assert "ok" in out[:12]
    assert out[-2].startswith("lost"), out  # cut, although the new rule would allow a new connection
    eni = next(e for e in lab.status("host-b")["enis"] if e["instance"] == "web")
    assert eni["drops"].get("not_a_flow_start", 0) >= 1
    assert lab.run("client", sys.executable, ECHO, "talk", "10.0.1.10", "7007", "0.3").returncode == 0


def records(lab, fl_id: str) -> list[dict]:
    out = vpc(lab, "flow-logs", fl_id, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    return [dict(zip(result["fields"], row)) for row in result["records"]]


def until(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.3)
    return found


def test_reject_shows_up_in_the_flow_log_with_its_fields(lab, restore):
    web_eni = lab.instances["web"]["eni_id"]
    fmt = ("${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} "
           "${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${vpc-id} ${subnet-id} ${instance-id} "
           "${tcp-flags} ${type} ${pkt-srcaddr} ${pkt-dstaddr} ${flow-direction} ${traffic-path}")
    rejects = lab.api.call("POST", "/v1/flow-logs", {"resource_id": web_eni, "traffic_type": "REJECT",
                                                     "log_format": fmt, "max_aggregation_interval": 1})
    everything = lab.api.call("POST", "/v1/flow-logs", {"resource_id": lab.vpc["id"], "max_aggregation_interval": 1})
    web = group(lab, "web", [{"protocol": "tcp", "from_port": 8080, "to_port": 8080, "cidr": "10.0.1.0/24"}])
    set_groups(lab, "web", [web["id"]])
    t0 = time.time()
    assert curl(lab, "client")
    assert not curl(lab, "ops")

    def reject():
        return [r for r in records(lab, rejects["id"]) if r["action"] == "REJECT" and r["srcaddr"] == "10.0.2.4"]

    r = until(reject)[0]
    assert r["version"] == "5" and r["interface-id"] == web_eni and r["log-status"] == "OK"
    assert (r["dstaddr"], r["dstport"], r["protocol"], r["flow-direction"], r["traffic-path"]) == (
        "10.0.1.10", "8080", "6", "ingress", "-")
    assert r["vpc-id"] == lab.vpc["id"] and r["subnet-id"] == lab.subnets["app"]["id"]
    assert r["instance-id"] == lab.instances["web"]["id"] and r["type"] == "IPv4"
    assert r["pkt-srcaddr"] == "10.0.2.4" and int(r["tcp-flags"]) & 2  # SYN (retransmitted: packets >= 1)
    assert int(r["packets"]) >= 1 and int(r["bytes"]) >= 60 * int(r["packets"]) and int(r["start"]) >= int(t0) - 1
    assert r["account-id"] == lab.instances["web"]["account"]
    assert not [x for x in records(lab, rejects["id"]) if x["action"] == "ACCEPT"]  # REJECT only

    # The VPC's log, version 2: the accepted curl from client, seen leaving client and entering web.
    def accepted():
        rows = records(lab, everything["id"])
        return [x for x in rows if x["action"] == "ACCEPT" and x["dstport"] == "8080" and x["srcaddr"] == "10.0.1.4"]

    rows = until(lambda: len({x["interface-id"] for x in accepted()}) == 2 and accepted())
    assert {x["interface-id"] for x in rows} == {lab.instances["client"]["eni_id"], web_eni}
    assert all(x["version"] == "2" and x["protocol"] == "6" for x in rows)
    lab.api.call("DELETE", f"/v1/flow-logs/{rejects['id']}")
    lab.api.call("DELETE", f"/v1/flow-logs/{everything['id']}")


def test_a_rule_change_reaches_the_data_path_in_under_a_second(lab, restore):
    from agents.trace import trace

    web = group(lab, "web", [{"protocol": "tcp", "from_port": 9000, "to_port": 9000, "cidr": "10.0.1.0/24"}])
    set_groups(lab, "web", [web["id"]])
    state, instances = lab.lab.state(), lab.lab.instances()
    assert trace(state, instances, "client", "web", "tcp", 9001)["verdict"] == "dropped"
    t0 = time.monotonic()
    lab.api.call("PATCH", f"/v1/security-groups/{web['id']}",
                 {"ingress": [{"protocol": "tcp", "from_port": 9000, "to_port": 9001, "cidr": "10.0.1.0/24"}]})
    while trace(state, instances, "client", "web", "tcp", 9001)["verdict"] != "delivered":
        assert time.monotonic() - t0 < 1.0, "the change took longer than a second to reach host-b"
        time.sleep(0.01)


def test_vpc_flows_lists_the_tracked_connection(lab, restore):
    p = talk(lab, 2)
    out = vpc(lab, "flows", "web", "--json")
    assert out.returncode == 0, out.stderr
    flows = json.loads(out.stdout)["web"]
    mine = [f for f in flows if f["local_port"] == 7007 and f["remote"] == "10.0.1.4" and f["protocol"] == 6]
    assert mine and mine[0]["state"] == "tcp_established" and not mine[0]["outbound"]
    p.communicate(timeout=10)

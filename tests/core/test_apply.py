"""``vpc apply`` (agents/apply.py) against the real API in-process: policy from the topology file.

The app is the real one, ``build_app(ControlPlane(store))`` on a SQLite store in a temporary directory,
driven through Starlette's ``TestClient`` — an ``httpx.Client`` — set as the ``http`` of a real
``ApiClient``, so apply_topology makes the same calls as ``vpc apply`` does. Each test starts from a
fresh store with three registered hosts and one account.
"""

from __future__ import annotations

import copy
import ipaddress
import pathlib
import re

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st

from agents.apply import apply_topology
from test_api import ADMIN, serve_store
from vswitch.controlplane.api import build_app
from vswitch.controlplane.client import ApiClient, ApiRequestError
from vswitch.controlplane.service import ControlPlane
from vswitch.topology import load_topology, parse_topology

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def api(tmp_path):
    cp = ControlPlane(None)
    app = build_app(cp)
    serve_store(app, cp, f"sqlite://{tmp_path}/control-plane.db")
    with TestClient(app, raise_server_exceptions=True) as http:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for name, ip in (("host-a", "192.168.50.1"), ("host-b", "192.168.50.2"), ("host-c", "192.168.50.3")):
            assert http.post("/v1/hosts", json={"name": name, "underlay_ip": ip}, headers=admin).status_code == 201
        token = http.post("/v1/accounts", json={"name": "alice"}, headers=admin).json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        client = ApiClient("http://testserver", token)
        client.http.close()
        client.http = http
        yield client


def base() -> dict:
    """A file with every kind of policy: groups naming each other, an ACL, conntrack, flow logs."""
    return {
        "hosts": [{"name": "host-a"}, {"name": "host-b"}],
        "vpcs": [{
            "name": "demo",
            "cidr": "10.0.0.0/16",
            "subnets": [{"name": "app", "cidr": "10.0.1.0/24"},
                        {"name": "ops", "cidr": "10.0.2.0/24", "network_acl": "strict"}],
            "instances": [
                {"name": "web", "subnet": "app", "host": "host-b", "ip": "10.0.1.10",
                 "security_groups": ["web", "default"]},
                {"name": "db", "subnet": "app", "host": "host-b",
                 "connection_tracking": {"tcp_established_timeout": 3600, "max_tracked_flows": 10000}},
                {"name": "admin", "subnet": "ops", "host": "host-a", "security_groups": ["admin"]},
            ],
            "security_groups": [
                {"name": "web", "description": "web servers", "ingress": [
                    {"protocol": "tcp", "ports": 8080, "cidr": "10.0.1.0/24"},
                    {"protocol": "tcp", "ports": 22, "source_group": "admin"},
                    {"protocol": "icmp", "icmp_type": 8, "cidr": "0.0.0.0/0"}]},
                {"name": "admin", "ingress": [{"protocol": "tcp", "ports": "1024-65535", "source_group": "web"}],
                 "egress": [{"protocol": "tcp", "ports": 22, "source_group": "web"}]},
            ],
            "network_acls": [{"name": "strict", "entries": [
                {"rule": 100, "action": "allow", "protocol": "tcp", "ports": 22, "cidr": "10.0.0.0/16"},
                {"rule": 100, "egress": True, "action": "allow", "cidr": "0.0.0.0/0"}]}],
            "flow_logs": [
                {"name": "all", "resource": "vpc", "interval": 60},
                {"name": "rejects", "resource": "instance/web", "traffic_type": "REJECT", "interval": 1,
                 "log_format": "${version} ${srcaddr} ${dstaddr} ${action}"},
                {"name": "ops", "resource": "subnet/ops", "traffic_type": "ACCEPT"},
            ],
        }],
    }


def apply(api, data: dict) -> list[str]:
    return apply_topology(api, parse_topology(copy.deepcopy(data)))


def applied(api, data: dict) -> list[str]:
    """Apply, then check that applying again changes nothing."""
    changes = apply(api, data)
    assert apply(api, data) == []
    return changes


class World:
    """The account's resources by name, read back through the API."""

    def __init__(self, api):
        (self.vpc,) = api.call("GET", "/v1/vpcs")
        self.groups = {g["name"]: g for g in api.call("GET", "/v1/security-groups")}
        self.acls = {a["name"]: a for a in api.call("GET", "/v1/network-acls")}
        self.subnets = {s["name"]: s for s in api.call("GET", "/v1/subnets")}
        self.instances = {i["name"]: i for i in api.call("GET", "/v1/instances")}
        self.flow_logs = {f["name"]: f for f in api.call("GET", "/v1/flow-logs")}
        self.group_names = {g["id"]: name for name, g in self.groups.items()}
        self.acl_names = {a["id"]: name for name, a in self.acls.items()}

    def rules(self, group: str, direction: str = "ingress") -> list[tuple]:
        return [(r["protocol"], r["from_port"], r["to_port"], r["cidr"],
                 self.group_names.get(r["source_group_id"])) for r in self.groups[group][direction]]

    def groups_of(self, instance: str) -> list[str]:
        return [self.group_names[g] for g in self.instances[instance]["security_group_ids"]]

    def acl_of(self, subnet: str) -> str:
        return self.acl_names[self.subnets[subnet]["network_acl_id"]]


def test_policy_applies_then_a_second_apply_changes_nothing(api):
    changes = applied(api, base())
    for line in ("created VPC demo", "created security group demo/web", "created security group demo/admin",
                 "changed security group demo/web: ingress", "changed security group demo/admin: ingress, egress",
                 "created network ACL demo/strict", "created subnet demo/ops (10.0.2.0/24, network ACL strict)",
                 "created instance web (10.0.1.10 on host-b)", "created flow log demo/all (vpc, ALL, every 60 s)",
                 "created flow log demo/rejects (instance/web, REJECT, every 1 s)"):
        assert any(c.startswith(line) for c in changes), (line, changes)
    w = World(api)
    assert set(w.groups) == {"default", "web", "admin"}
    assert w.groups["web"]["description"] == "web servers"
    assert w.rules("web") == [("tcp", 8080, 8080, "10.0.1.0/24", None), ("tcp", 22, 22, None, "admin"),
                              ("icmp", 8, -1, "0.0.0.0/0", None)]
    assert w.rules("web", "egress") == [("-1", -1, -1, "0.0.0.0/0", None)]  # the API's default
    assert w.rules("admin") == [("tcp", 1024, 65535, None, "web")]
    assert w.rules("admin", "egress") == [("tcp", 22, 22, None, "web")]
    # The default group is the API's: all from its own members in, all out.
    assert w.rules("default") == [("-1", -1, -1, None, "default")]
    assert w.groups_of("web") == ["web", "default"] and w.groups_of("db") == ["default"]
    assert w.groups_of("admin") == ["admin"]
    assert w.instances["db"]["connection_tracking"] == {
        "tcp_established_timeout": 3600, "udp_stream_timeout": 180, "udp_timeout": 30, "max_tracked_flows": 10000}
    assert w.acl_of("ops") == "strict" and w.acl_of("app") == "default"
    assert [(e["rule_number"], e["egress"], e["protocol"], e["from_port"], e["to_port"], e["cidr"])
            for e in w.acls["strict"]["entries"]] == [(100, False, "tcp", 22, 22, "10.0.0.0/16"),
                                                      (100, True, "-1", -1, -1, "0.0.0.0/0")]
    fl = w.flow_logs
    assert (fl["all"]["resource_id"], fl["all"]["traffic_type"], fl["all"]["max_aggregation_interval"],
            fl["all"]["log_format"]) == (w.vpc["id"], "ALL", 60, None)
    assert (fl["rejects"]["resource_id"], fl["rejects"]["traffic_type"], fl["rejects"]["log_format"]) == (
        w.instances["web"]["eni_id"], "REJECT", "${version} ${srcaddr} ${dstaddr} ${action}")
    assert (fl["ops"]["resource_id"], fl["ops"]["max_aggregation_interval"]) == (w.subnets["ops"]["id"], 600)


def test_the_policy_example_applies(api):
    topo = load_topology(CONFIGS / "policy.yaml")
    changes = apply_topology(api, topo)
    assert apply_topology(api, topo) == []
    assert "created flow log demo/web-rejects (instance/web, REJECT, every 60 s)" in changes
    w = World(api)
    assert w.acl_of("ops") == "ops" and w.acl_of("app") == "default"
    assert ("tcp", 8080, 8080, "10.0.1.0/24", None) in w.rules("web")
    assert w.groups_of("web") == ["web"] and w.groups_of("client") == ["default"]


def test_a_changed_rule_is_modified_in_place(api):
    applied(api, base())
    before = World(api)
    data = base()
    data["vpcs"][0]["security_groups"][0]["ingress"][0]["ports"] = "8080-8081"
    data["vpcs"][0]["security_groups"][0]["description"] = "web and more"
    assert applied(api, data) == ["changed security group demo/web: ingress, description"]
    after = World(api)
    assert after.groups["web"]["id"] == before.groups["web"]["id"]
    assert after.rules("web")[0] == ("tcp", 8080, 8081, "10.0.1.0/24", None)
    assert after.groups["web"]["description"] == "web and more"
    # A description taken out is cleared; rules given in another order or spelling are the same rules.
    del data["vpcs"][0]["security_groups"][0]["description"]
    data["vpcs"][0]["security_groups"][0]["ingress"].reverse()
    data["vpcs"][0]["security_groups"][0]["ingress"][0]["protocol"] = 1  # icmp by number
    assert applied(api, data) == ["changed security group demo/web: description"]
    assert not World(api).groups["web"]["description"]


def test_removing_a_group_moves_its_instances_and_deletes_it(api):
    applied(api, base())
    before = World(api)
    data = base()
    vpc = data["vpcs"][0]
    vpc["security_groups"] = [g for g in vpc["security_groups"] if g["name"] != "admin"]
    vpc["security_groups"][0]["ingress"][1]["source_group"] = "default"
    vpc["security_groups"].append({"name": "ops", "ingress": [{"protocol": "tcp", "ports": 22, "source_group": "web"}]})
    vpc["instances"][2]["security_groups"] = ["ops", "default"]
    changes = applied(api, data)
    assert changes[0] == "created security group demo/ops (%s)" % World(api).groups["ops"]["id"]
    assert "changed instance admin: security_groups=ops,default" in changes
    assert changes[-1] == f"deleted security group demo/admin ({before.groups['admin']['id']})"
    w = World(api)
    assert set(w.groups) == {"default", "web", "ops"}
    assert w.groups_of("admin") == ["ops", "default"]
    assert w.rules("web")[1] == ("tcp", 22, 22, None, "default")
    assert w.instances["admin"]["id"] == before.instances["admin"]["id"]  # modified, not re-created


def test_groups_that_name_each_other_are_deleted_together(api):
    applied(api, base())
    data = base()
    vpc = data["vpcs"][0]
    vpc["security_groups"] = []
    for inst in vpc["instances"]:
        inst.pop("security_groups", None)
    changes = applied(api, data)
    assert {c.split(" (")[0] for c in changes if c.startswith("deleted")} == {
        "deleted security group demo/web", "deleted security group demo/admin"}
    w = World(api)
    assert set(w.groups) == {"default"} and all(w.groups_of(i) == ["default"] for i in w.instances)


def test_the_default_group_changes_only_where_the_file_names_it(api):
    applied(api, base())
    default = World(api).groups["default"]
    data = base()
    data["vpcs"][0]["security_groups"].append({"name": "default", "ingress": [
        {"protocol": "tcp", "ports": 443, "source_group": "web"}]})
    assert applied(api, data) == ["changed security group demo/default: ingress"]
    w = World(api)
    assert w.groups["default"]["id"] == default["id"]
    assert w.rules("default") == [("tcp", 443, 443, None, "web")]
    assert w.groups["default"]["egress"] == default["egress"]  # not named: left as it is
    assert w.groups["default"]["description"] == default["description"]
    # Dropping the entry leaves the default group as it is now; naming it without rules changes nothing.
    data["vpcs"][0]["security_groups"][-1] = {"name": "default"}
    assert apply(api, data) == []
    assert apply(api, base()) == []
    assert World(api).rules("default") == [("tcp", 443, 443, None, "web")]
    # But a rule of the default group that names a group the file drops stops the deletion.
    data = base()
    data["vpcs"][0]["security_groups"] = []
    for inst in data["vpcs"][0]["instances"]:
        inst.pop("security_groups", None)
    with pytest.raises(ApiRequestError, match="still used"):
        apply(api, data)


def test_the_default_acl_changes_only_where_the_file_names_it(api):
    applied(api, base())
    default = World(api).acls["default"]
    data = base()
    data["vpcs"][0]["network_acls"].append({"name": "default", "entries": [
        {"rule": 10, "action": "deny", "protocol": "udp", "cidr": "0.0.0.0/0"},
        {"rule": 100, "action": "allow", "cidr": "0.0.0.0/0"},
        {"rule": 100, "egress": True, "action": "allow", "cidr": "0.0.0.0/0"}]})
    assert applied(api, data) == ["changed network ACL demo/default: entries"]
    acl = World(api).acls["default"]
    assert acl["id"] == default["id"] and [e["rule_number"] for e in acl["entries"]] == [10, 100, 100]
    assert apply(api, base()) == []


def test_a_subnet_moves_to_another_acl_and_the_unnamed_acl_goes(api):
    applied(api, base())
    before = World(api)
    data = base()
    vpc = data["vpcs"][0]
    vpc["network_acls"] = [{"name": "open", "entries": [{"rule": 1, "action": "allow", "cidr": "0.0.0.0/0"},
                                                        {"rule": 1, "egress": True, "action": "allow",
                                                         "cidr": "0.0.0.0/0"}]}]
    vpc["subnets"][0]["network_acl"] = "open"
    vpc["subnets"][1]["network_acl"] = "open"
    changes = applied(api, data)
    assert changes == [f"created network ACL demo/open ({World(api).acls['open']['id']})",
                       "changed subnet demo/app: network_acl=open", "changed subnet demo/ops: network_acl=open",
                       f"deleted network ACL demo/strict ({before.acls['strict']['id']})"]
    del vpc["subnets"][1]["network_acl"]
    assert applied(api, data) == ["changed subnet demo/ops: network_acl=default"]
    w = World(api)
    assert w.acl_of("app") == "open" and w.acl_of("ops") == "default"
    assert w.subnets["ops"]["id"] == before.subnets["ops"]["id"]


def test_a_changed_acl_entry_is_modified_in_place(api):
    applied(api, base())
    acl_id = World(api).acls["strict"]["id"]
    data = base()
    data["vpcs"][0]["network_acls"][0]["entries"][0]["action"] = "deny"
    assert applied(api, data) == ["changed network ACL demo/strict: entries"]
    acl = World(api).acls["strict"]
    assert acl["id"] == acl_id and acl["entries"][0]["action"] == "deny"


def test_a_changed_flow_log_is_re_created_and_an_unnamed_one_deleted(api):
    applied(api, base())
    before = World(api).flow_logs
    data = base()
    logs = data["vpcs"][0]["flow_logs"]
    logs[1]["traffic_type"] = "ALL"
    logs[1]["interval"] = 5
    del logs[2]
    changes = applied(api, data)
    assert changes == ["deleted flow log demo/ops",
                       "re-created flow log demo/rejects: traffic_type=ALL, interval=5 (a flow log cannot be modified)"]
    after = World(api).flow_logs
    assert set(after) == {"all", "rejects"}
    assert after["all"]["id"] == before["all"]["id"]
    assert after["rejects"]["id"] != before["rejects"]["id"]
    assert (after["rejects"]["traffic_type"], after["rejects"]["max_aggregation_interval"]) == ("ALL", 5)


def test_a_flow_log_follows_its_instance_when_that_is_re_created(api):
    applied(api, base())
    data = base()
    data["vpcs"][0]["instances"][0]["ip"] = "10.0.1.11"  # a new address: the instance is re-created
    changes = applied(api, data)
    assert changes[0] == "deleted instance web (10.0.1.10)"
    assert "re-created flow log demo/rejects: resource=instance/web (a flow log cannot be modified)" in changes
    w = World(api)
    assert w.flow_logs["rejects"]["resource_id"] == w.instances["web"]["eni_id"]
    assert w.groups_of("web") == ["web", "default"]


def test_connection_tracking_and_groups_are_modified_in_place(api):
    applied(api, base())
    before = World(api).instances["db"]
    data = base()
    data["vpcs"][0]["instances"][1]["connection_tracking"] = {"udp_timeout": 60}
    data["vpcs"][0]["instances"][1]["security_groups"] = ["default", "web"]
    assert applied(api, data) == ["changed instance db: security_groups=default,web, connection_tracking("
                                  "tcp_established_timeout=432000, udp_timeout=60, max_tracked_flows=65536)"]
    db = World(api).instances["db"]
    assert db["id"] == before["id"] and db["connection_tracking"]["udp_timeout"] == 60
    # The order of an instance's groups carries no meaning.
    data["vpcs"][0]["instances"][1]["security_groups"] = ["web", "default"]
    assert apply(api, data) == []


def test_a_vpc_with_policy_is_deleted_whole(api):
    applied(api, base())
    changes = applied(api, {"hosts": [{"name": "host-a"}], "vpcs": []})
    assert changes[-1].startswith("deleted VPC demo")
    for collection in ("vpcs", "security-groups", "network-acls", "subnets", "instances", "flow-logs"):
        assert api.call("GET", f"/v1/{collection}") == [], collection


def test_a_vpc_whose_cidr_changes_is_re_created_with_its_policy(api):
    applied(api, base())
    data = base()
    data["vpcs"][0]["cidr"] = "10.0.0.0/17"
    changes = applied(api, data)
    assert changes[:3] == ["deleted flow log demo/all", "deleted flow log demo/rejects", "deleted flow log demo/ops"]
    w = World(api)
    assert set(w.groups) == {"default", "web", "admin"} and len(w.flow_logs) == 3
    assert w.flow_logs["all"]["resource_id"] == w.vpc["id"]


def test_resources_made_by_hand_are_converged_too(api):
    applied(api, base())
    w = World(api)
    vpc_id = w.vpc["id"]
    api.call("POST", "/v1/security-groups", {"vpc_id": vpc_id, "name": "stray"})
    api.call("POST", "/v1/network-acls", {"vpc_id": vpc_id, "name": "strict"})  # a second one of that name
    api.call("POST", "/v1/flow-logs", {"resource_id": vpc_id, "name": "all"})  # likewise
    api.call("POST", "/v1/flow-logs", {"resource_id": vpc_id})  # no name
    api.call("PATCH", f"/v1/security-groups/{w.groups['web']['id']}", {"ingress": []})
    api.call("PATCH", f"/v1/instances/{w.instances['web']['id']}", {"security_group_ids": [w.groups['admin']['id']]})
    changes = applied(api, base())
    assert len(changes) == 6, changes
    assert sorted(re.sub(r"-[0-9a-f]{17}", "-ID", c.split(" (")[0].split(":")[0]) for c in changes) == [
        "changed instance web", "changed security group demo/web", "deleted flow log demo/all",
        "deleted flow log demo/fl-ID", "deleted network ACL demo/strict", "deleted security group demo/stray"]
    after = World(api)
    assert after.acls["strict"]["id"] == w.acls["strict"]["id"]  # the older one of the name stays
    assert after.flow_logs["all"]["id"] == w.flow_logs["all"]["id"]


# --- any sequence of files converges -------------------------------------------------------------------
GROUPS, ACLS = ["g1", "g2", "g3"], ["a1", "a2"]


@st.composite
def policy_files(draw) -> dict:
    """A valid file of random policy over a fixed VPC: which groups, ACLs and flow logs exist, their rules,
    who uses them. The default group is always named with rules, so no dropped group stays named by it."""
    groups = draw(st.lists(st.sampled_from(GROUPS), unique=True, max_size=3))
    peers = st.sampled_from(groups + ["default"])

    def rules(draw_):
        return draw_(st.lists(st.one_of(
            st.builds(lambda p: {"protocol": "tcp", "ports": p, "cidr": "10.0.0.0/16"},
                      st.sampled_from([22, 80, "8000-8100"])),
            st.builds(lambda g: {"protocol": "udp", "ports": 53, "source_group": g}, peers),
            st.just({"protocol": "icmp", "icmp_type": 8, "cidr": "0.0.0.0/0"})), max_size=3))

    security_groups = [{"name": g, **({"description": draw(st.sampled_from(["", "d1", "d2"]))}
                                      if draw(st.booleans()) else {}),
                        "ingress": rules(draw), **({"egress": rules(draw)} if draw(st.booleans()) else {})}
                       for g in groups]
    security_groups.append({"name": "default", "ingress": rules(draw), "egress": rules(draw)})
    acls = draw(st.lists(st.sampled_from(ACLS), unique=True, max_size=2))
    network_acls = [{"name": a, "entries": [
        {"rule": n, "action": draw(st.sampled_from(["allow", "deny"])), "egress": e, "cidr": "0.0.0.0/0"}
        for n in draw(st.lists(st.sampled_from([1, 100, 200]), unique=True, max_size=2)) for e in (False, True)]}
        for a in acls]
    instances = [{"name": name, "subnet": draw(st.sampled_from(["app", "ops"])), "host": "host-a",
                  "security_groups": draw(st.lists(st.sampled_from(groups + ["default"]), unique=True,
                                                   min_size=1, max_size=3)),
                  "connection_tracking": {"udp_timeout": draw(st.sampled_from([30, 45]))}}
                 for name in draw(st.lists(st.sampled_from(["i1", "i2", "i3"]), unique=True, max_size=3))]
    resources = ["vpc", "subnet/app", "subnet/ops"] + [f"instance/{i['name']}" for i in instances]
    flow_logs = [{"name": n, "resource": draw(st.sampled_from(resources)),
                  "traffic_type": draw(st.sampled_from(["ALL", "REJECT"])), "interval": draw(st.sampled_from([1, 60]))}
                 for n in draw(st.lists(st.sampled_from(["f1", "f2"]), unique=True, max_size=2))]
    return {"hosts": [{"name": "host-a"}], "vpcs": [{
        "name": "demo", "cidr": "10.0.0.0/16",
        "subnets": [{"name": s, "network_acl": draw(st.sampled_from(acls + ["default"])), "cidr": cidr}
                    for s, cidr in (("app", "10.0.1.0/24"), ("ops", "10.0.2.0/24"))],
        "instances": instances, "security_groups": security_groups, "network_acls": network_acls,
        "flow_logs": flow_logs}]}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(policy_files(), min_size=2, max_size=3))
def test_any_sequence_of_files_converges(api, files):
    """Whatever the account holds (the previous example's files included), each file converges in one apply."""
    for data in files:
        apply(api, data)
        assert apply(api, data) == []
        w, (vpc,) = World(api), data["vpcs"]
        assert set(w.groups) == {g["name"] for g in vpc["security_groups"]}
        assert set(w.acls) == {a["name"] for a in vpc["network_acls"]} | {"default"}
        # The order of an instance's groups carries no meaning: a kept instance keeps the order it has.
        assert {n: sorted(w.groups_of(n)) for n in w.instances} == {
            i["name"]: sorted(i["security_groups"]) for i in vpc["instances"]}
        assert {s["name"]: w.acl_of(s["name"]) for s in vpc["subnets"]} == {
            s["name"]: s["network_acl"] for s in vpc["subnets"]}
        assert {n: (f["traffic_type"], f["max_aggregation_interval"]) for n, f in w.flow_logs.items()} == {
            f["name"]: (f["traffic_type"], f["interval"]) for f in vpc["flow_logs"]}
        for g in vpc["security_groups"]:
            assert len(w.groups[g["name"]]["ingress"]) == len(g["ingress"])


# --- the internet: gateways, route tables, elastic IPs ----------------------------------------------------


def internet() -> dict:
    """web public (its subnet routed to the gateway, an elastic IP), an appliance routed to, client private."""
    return {
        "hosts": [{"name": "host-a"}, {"name": "host-b"}],
        "vpcs": [{
            "name": "demo",
            "cidr": "10.0.0.0/16",
            "internet_gateway": True,
            "route_tables": [{"name": "public", "routes": [
                {"destination": "0.0.0.0/0", "target": "internet_gateway"},
                {"destination": "10.1.0.0/24", "target": "instance/appliance"}]}],
            "subnets": [{"name": "app", "cidr": "10.0.1.0/24", "route_table": "public"},
                        {"name": "db", "cidr": "10.0.2.0/24"}],
            "instances": [
                {"name": "web", "subnet": "app", "host": "host-b", "ip": "10.0.1.10", "elastic_ip": True},
                {"name": "appliance", "subnet": "app", "host": "host-a", "source_dest_check": False},
                {"name": "client", "subnet": "db", "host": "host-a"},
            ],
        }],
    }


class Net:
    """The account's gateways, route tables and elastic IPs, by name, read back through the API."""

    def __init__(self, api):
        (self.vpc,) = api.call("GET", "/v1/vpcs")
        self.gateways = api.call("GET", "/v1/internet-gateways")
        self.tables = {t["name"]: t for t in api.call("GET", "/v1/route-tables")}
        self.subnets = {s["name"]: s for s in api.call("GET", "/v1/subnets")}
        self.instances = {i["name"]: i for i in api.call("GET", "/v1/instances")}
        self.eips = api.call("GET", "/v1/elastic-ips")
        self.nats = {n["name"]: n for n in api.call("GET", "/v1/nat-gateways")}
        self.names = {**{i["eni_id"]: f"instance/{n}" for n, i in self.instances.items()},
                      **{g["id"]: f"igw/{g['name']}" for g in self.gateways},
                      **{n["id"]: f"nat_gateway/{name}" for name, n in self.nats.items()}, "local": "local"}
        self.table_names = {t["id"]: n for n, t in self.tables.items()}

    def routes(self, table: str) -> list[tuple]:
        """(destination, target by name, state); a target gone shows as its id."""
        return [(r["destination"], self.names.get(target, target), r["state"])
                for r in self.tables[table]["routes"]
                for target in [r["gateway_id"] or r["nat_gateway_id"] or r["network_interface_id"]]]

    def table_of(self, subnet: str) -> str:
        return self.table_names[self.subnets[subnet]["route_table_id"]]

    def public_ips(self) -> dict:
        """Instance name (None: not associated) -> public address."""
        on = {i["id"]: n for n, i in self.instances.items()}
        return {on.get(e["instance_id"]): e["public_ip"] for e in self.eips}


def test_internet_applies_then_a_second_apply_changes_nothing(api):
    changes = applied(api, internet())
    n = Net(api)
    (igw,) = n.gateways
    (eip,) = n.eips
    shown = [re.sub(r"-[0-9a-f]{16,17}", "-ID", c) for c in changes]
    for line in ("created internet gateway demo/demo-igw (igw-ID)", "created route table demo/public (rtb-ID)",
                 "created subnet demo/app (10.0.1.0/24, route table public)", "created subnet demo/db (10.0.2.0/24)",
                 "created instance appliance (10.0.1.4 on host-a)", "changed route table demo/public: routes",
                 "allocated elastic IP 198.51.100.1 (eipalloc-ID) to instance web"):
        assert line in shown, (line, changes)
    order = [shown.index(line) for line in (
        "created VPC demo (10.0.0.0/16, VNI 1)", "created internet gateway demo/demo-igw (igw-ID)",
        "created route table demo/public (rtb-ID)", "created subnet demo/app (10.0.1.0/24, route table public)",
        "created instance appliance (10.0.1.4 on host-a)", "changed route table demo/public: routes",
        "allocated elastic IP 198.51.100.1 (eipalloc-ID) to instance web")]
    assert order == sorted(order), changes
    assert (igw["name"], igw["vpc_id"]) == ("demo-igw", n.vpc["id"])
    assert set(n.tables) == {"main", "public"} and n.tables["main"]["id"] == n.vpc["main_route_table_id"]
    assert n.routes("public") == [("10.0.0.0/16", "local", "active"), ("0.0.0.0/0", "igw/demo-igw", "active"),
                                  ("10.1.0.0/24", "instance/appliance", "active")]
    assert n.routes("main") == [("10.0.0.0/16", "local", "active")]  # the file does not name it: as it is
    assert n.table_of("app") == "public" and n.table_of("db") == "main"
    assert n.public_ips() == {"web": "198.51.100.1"}
    assert (eip["name"], eip["private_ip"], eip["vpc_id"]) == ("web", "10.0.1.10", n.vpc["id"])


def test_the_internet_example_applies(api):
    topo = load_topology(CONFIGS / "internet.yaml")
    changes = apply_topology(api, topo)
    assert apply_topology(api, topo) == []
    assert "changed route table demo/public: routes" not in changes  # its one route's target existed
    n = Net(api)
    assert n.table_of("public") == "public" and n.table_of("private") == "main"
    assert n.routes("public")[1:] == [("0.0.0.0/0", "igw/demo-igw", "active")]
    assert list(n.public_ips()) == ["web"]


def test_a_changed_route_is_modified_in_place(api):
    applied(api, internet())
    before = Net(api)
    data = internet()
    routes = data["vpcs"][0]["route_tables"][0]["routes"]
    routes[1]["destination"] = "10.2.0.0/24"
    routes.append({"destination": "::/0", "target": "internet_gateway"})
    assert applied(api, data) == ["changed route table demo/public: routes"]
    after = Net(api)
    assert after.tables["public"]["id"] == before.tables["public"]["id"]
    assert after.routes("public")[1:] == [("0.0.0.0/0", "igw/demo-igw", "active"),
                                          ("10.2.0.0/24", "instance/appliance", "active"),
                                          ("::/0", "igw/demo-igw", "active")]
    # Routes in another order, or spelled otherwise, are the same routes.
    routes.reverse()
    routes[0]["destination"] = "0::/0"
    assert apply(api, data) == []


def test_the_main_table_changes_only_where_the_file_names_it(api):
    applied(api, internet())
    data = internet()
    data["vpcs"][0]["route_tables"].append({"name": "main", "routes": [
        {"destination": "192.168.0.0/16", "target": "instance/appliance"}]})
    assert applied(api, data) == ["changed route table demo/main: routes"]
    n = Net(api)
    assert n.tables["main"]["id"] == n.vpc["main_route_table_id"] and set(n.tables) == {"main", "public"}
    assert n.routes("main") == [("10.0.0.0/16", "local", "active"),
                                ("192.168.0.0/16", "instance/appliance", "active")]
    # Named without routes, or not named at all: left as it is. Named with none: emptied.
    data["vpcs"][0]["route_tables"][-1] = {"name": "main"}
    assert apply(api, data) == []
    assert apply(api, internet()) == []
    assert len(Net(api).routes("main")) == 2
    data["vpcs"][0]["route_tables"][-1] = {"name": "main", "routes": []}
    assert applied(api, data) == ["changed route table demo/main: routes"]
    assert Net(api).routes("main") == [("10.0.0.0/16", "local", "active")]


def test_a_subnet_moves_off_a_table_before_it_is_deleted(api):
    applied(api, internet())
    before = Net(api)
    data = internet()
    vpc = data["vpcs"][0]
    vpc["route_tables"] = [{"name": "edge", "routes": [{"destination": "0.0.0.0/0", "target": "internet_gateway"}]}]
    vpc["subnets"][0]["route_table"] = "edge"
    changes = applied(api, data)
    n = Net(api)
    assert changes == [f"created route table demo/edge ({n.tables['edge']['id']})",
                       "changed subnet demo/app: route_table=edge",
                       f"deleted route table demo/public ({before.tables['public']['id']})"]
    assert n.table_of("app") == "edge" and n.subnets["app"]["id"] == before.subnets["app"]["id"]
    del vpc["subnets"][0]["route_table"]
    vpc["subnets"][1]["route_table"] = "edge"
    assert applied(api, data) == ["changed subnet demo/app: route_table=main",
                                  "changed subnet demo/db: route_table=edge"]
    vpc["route_tables"] = []
    del vpc["subnets"][1]["route_table"]
    changes = applied(api, data)
    assert changes == ["changed subnet demo/db: route_table=main",
                       f"deleted route table demo/edge ({n.tables['edge']['id']})"]
    assert set(Net(api).tables) == {"main"}


def test_removing_elastic_ip_releases_it(api):
    applied(api, internet())
    (eip,) = Net(api).eips
    data = internet()
    del data["vpcs"][0]["instances"][0]["elastic_ip"]
    assert applied(api, data) == [f"released elastic IP 198.51.100.1 ({eip['id']}), disassociated from instance web"]
    assert Net(api).eips == []
    data["vpcs"][0]["instances"][2]["elastic_ip"] = True  # another instance, in the private subnet
    (line,) = applied(api, data)
    assert re.fullmatch(r"allocated elastic IP 198\.51\.100\.1 \(eipalloc-[0-9a-f]{17}\) to instance client", line)
    assert Net(api).public_ips() == {"client": "198.51.100.1"}


def test_a_re_created_instance_keeps_its_elastic_ip_and_its_routes(api):
    applied(api, internet())
    before = Net(api)
    data = internet()
    data["vpcs"][0]["instances"][0]["ip"] = "10.0.1.11"  # a new address: the instance is re-created
    data["vpcs"][0]["instances"][1]["ip"] = "10.0.1.20"  # and the appliance the table routes to
    changes = applied(api, data)
    (eip,) = before.eips
    assert changes[:2] == ["deleted instance web (10.0.1.10)", "deleted instance appliance (10.0.1.4)"]
    assert changes[-2:] == ["changed route table demo/public: routes",
                            f"associated elastic IP 198.51.100.1 ({eip['id']}) with instance web"]
    after = Net(api)
    assert after.eips[0]["id"] == eip["id"] and after.public_ips() == {"web": "198.51.100.1"}
    assert after.eips[0]["private_ip"] == "10.0.1.11"
    assert after.routes("public")[2] == ("10.1.0.0/24", "instance/appliance", "active")
    assert after.instances["appliance"]["eni_id"] != before.instances["appliance"]["eni_id"]


def test_removing_the_gateway_detaches_and_deletes_it_after_its_addresses_and_routes(api):
    applied(api, internet())
    before = Net(api)
    (igw,), (eip,) = before.gateways, before.eips
    main = before.tables["main"]  # a route to the gateway made by hand, in a table the file leaves as it is
    api.call("PATCH", f"/v1/route-tables/{main['id']}", {"routes": [
        *main["routes"], {"destination": "0.0.0.0/0", "gateway_id": igw["id"]},
        {"destination": "192.168.0.0/16", "network_interface_id": before.instances["appliance"]["eni_id"]}]})
    data = internet()
    vpc = data["vpcs"][0]
    del vpc["internet_gateway"]
    del vpc["instances"][0]["elastic_ip"]
    del vpc["route_tables"][0]["routes"][0]
    changes = applied(api, data)
    assert changes == [
        f"released elastic IP 198.51.100.1 ({eip['id']}), disassociated from instance web",
        "changed route table demo/public: routes",
        "changed route table demo/main: routes (those to internet gateway demo-igw removed)",
        f"deleted internet gateway demo/demo-igw ({igw['id']}, detached)"]
    n = Net(api)
    assert n.gateways == [] and n.eips == []
    assert n.routes("public") == [("10.0.0.0/16", "local", "active"), ("10.1.0.0/24", "instance/appliance", "active")]
    assert n.routes("main")[1:] == [("192.168.0.0/16", "instance/appliance", "active")]  # the others stay
    # And back: a new gateway, routed to again.
    changes = applied(api, internet())
    assert [c.split(" (")[0] for c in changes] == ["created internet gateway demo/demo-igw",
                                                   "changed route table demo/public: routes",
                                                   "allocated elastic IP 198.51.100.1"]


def test_a_named_gateway_is_renamed_in_place(api):
    applied(api, internet())
    (igw,) = Net(api).gateways
    data = internet()
    data["vpcs"][0]["internet_gateway"] = {"name": "gw"}
    assert applied(api, data) == ["changed internet gateway demo/gw: name (was demo-igw)"]
    assert [(g["id"], g["name"]) for g in Net(api).gateways] == [(igw["id"], "gw")]


def test_a_vpc_on_the_internet_is_deleted_whole(api):
    applied(api, internet())
    (igw,) = Net(api).gateways
    changes = applied(api, {"hosts": [{"name": "host-a"}], "vpcs": []})
    assert f"deleted internet gateway demo/demo-igw ({igw['id']}, detached)" in changes
    assert changes[-1].startswith("deleted VPC demo")
    for collection in ("vpcs", "subnets", "instances", "route-tables", "internet-gateways", "elastic-ips"):
        assert api.call("GET", f"/v1/{collection}") == [], collection


def test_a_vpc_whose_cidr_changes_is_re_created_with_its_gateway_and_keeps_its_address(api):
    applied(api, internet())
    before = Net(api)
    data = internet()
    data["vpcs"][0]["cidr"] = "10.0.0.0/17"
    changes = applied(api, data)
    assert f"deleted internet gateway demo/demo-igw ({before.gateways[0]['id']}, detached)" in changes
    after = Net(api)
    assert after.vpc["id"] != before.vpc["id"] and after.gateways[0]["vpc_id"] == after.vpc["id"]
    assert after.eips[0]["id"] == before.eips[0]["id"] and after.public_ips() == {"web": "198.51.100.1"}
    assert after.routes("public")[0] == ("10.0.0.0/17", "local", "active") and after.table_of("app") == "public"


def test_gateways_tables_and_addresses_made_by_hand_are_converged_too(api):
    applied(api, internet())
    before = Net(api)
    (igw,), (eip,) = before.gateways, before.eips
    # The gateway detached by hand (its address first), and strays of every kind.
    api.call("PATCH", f"/v1/elastic-ips/{eip['id']}", {"disassociate": True})
    api.call("PATCH", f"/v1/internet-gateways/{igw['id']}", {"detach": True})
    stray_igw = api.call("POST", "/v1/internet-gateways", {"name": "stray"})
    stray_eip = api.call("POST", "/v1/elastic-ips", {})
    second = api.call("POST", "/v1/route-tables", {"vpc_id": before.vpc["id"], "name": "public"})  # a second one
    changes = applied(api, internet())
    assert sorted(changes) == sorted([
        f"attached internet gateway demo/demo-igw ({igw['id']})",  # the one of its name, again
        f"released elastic IP {stray_eip['public_ip']} ({stray_eip['id']})",
        f"associated elastic IP 198.51.100.1 ({eip['id']}) with instance web",
        f"deleted route table demo/public ({second['id']})",
        f"deleted internet gateway stray ({stray_igw['id']})"]), changes
    after = Net(api)
    assert [g["id"] for g in after.gateways] == [igw["id"]]
    assert after.tables["public"]["id"] == before.tables["public"]["id"]
    assert after.routes("public")[1] == ("0.0.0.0/0", "igw/demo-igw", "active")
    assert after.public_ips() == {"web": "198.51.100.1"}


@st.composite
def internet_files(draw) -> dict:
    """A valid file of random routing over a fixed VPC: whether it has a gateway, which tables exist with
    which routes, which subnet uses which, who has an elastic IP."""
    gateway = draw(st.sampled_from([False, True, {"name": "gw"}]))
    instances = draw(st.lists(st.sampled_from(["i1", "i2", "i3"]), unique=True, max_size=3))
    targets = [f"instance/{i}" for i in instances] + (["internet_gateway"] if gateway else [])

    def routes(draw_):
        if not targets:
            return []
        destinations = draw_(st.lists(st.sampled_from(["0.0.0.0/0", "10.9.0.0/16", "::/0", "192.168.1.0/24"]),
                                      unique=True, max_size=3))
        return [{"destination": d, "target": draw_(st.sampled_from(targets))} for d in destinations]

    tables = draw(st.lists(st.sampled_from(["t1", "t2"]), unique=True, max_size=2))
    route_tables = [{"name": t, "routes": routes(draw)} for t in tables]
    if draw(st.booleans()):
        route_tables.append({"name": "main", "routes": routes(draw)})
    return {"hosts": [{"name": "host-a"}], "vpcs": [{
        "name": "demo", "cidr": "10.0.0.0/16", "internet_gateway": gateway, "route_tables": route_tables,
        "subnets": [{"name": s, "cidr": cidr, "route_table": draw(st.sampled_from(tables + ["main"]))}
                    for s, cidr in (("app", "10.0.1.0/24"), ("ops", "10.0.2.0/24"))],
        "instances": [{"name": i, "subnet": draw(st.sampled_from(["app", "ops"])), "host": "host-a",
                       "elastic_ip": bool(gateway) and draw(st.booleans())} for i in instances]}]}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(internet_files(), min_size=2, max_size=3))
def test_any_sequence_of_internet_files_converges(api, files):
    for data in files:
        apply(api, data)
        assert apply(api, data) == []
        n, (vpc,) = Net(api), data["vpcs"]
        gateway = vpc["internet_gateway"]
        assert [g["name"] for g in n.gateways] == ([] if not gateway else ["gw" if gateway is not True else "demo-igw"])
        assert set(n.tables) == {t["name"] for t in vpc["route_tables"]} | {"main"}
        for t in vpc["route_tables"]:
            assert sorted(n.routes(t["name"])[1:]) == sorted(
                (r["destination"], r["target"].replace("internet_gateway", f"igw/{n.gateways[0]['name']}")
                 if n.gateways else r["target"], "active") for r in t["routes"])
        assert {s["name"]: n.table_of(s["name"]) for s in vpc["subnets"]} == {
            s["name"]: s["route_table"] for s in vpc["subnets"]}
        assert sorted(n.public_ips()) == sorted(i["name"] for i in vpc["instances"] if i["elastic_ip"])


# --- NAT gateways, target groups, load balancers ------------------------------------------------------------


def hyperplane() -> dict:
    """configs/hyperplane.yaml, smaller: a public NAT gateway routed to from the private subnet, a target group
    of two instances and an address, and a load balancer in the public subnet."""
    return {
        "hosts": [{"name": "host-a"}, {"name": "host-b"}, {"name": "host-c"}],
        "vpcs": [{
            "name": "demo",
            "cidr": "10.0.0.0/16",
            "internet_gateway": True,
            "route_tables": [
                {"name": "public", "routes": [{"destination": "0.0.0.0/0", "target": "internet_gateway"}]},
                {"name": "private", "routes": [{"destination": "0.0.0.0/0", "target": "nat_gateway/nat"}]}],
            "subnets": [{"name": "public", "cidr": "10.0.1.0/24", "route_table": "public"},
                        {"name": "private", "cidr": "10.0.2.0/24", "route_table": "private"}],
            "nat_gateways": [{"name": "nat", "subnet": "public"}],
            "instances": [
                {"name": "web1", "subnet": "private", "host": "host-b", "ip": "10.0.2.11"},
                {"name": "web2", "subnet": "private", "host": "host-c", "ip": "10.0.2.12"},
                {"name": "client", "subnet": "private", "host": "host-a", "ip": "10.0.2.4"},
            ],
            "target_groups": [{"name": "web", "protocol": "tcp", "port": 80,
                               "targets": ["instance/web1", {"instance": "web2", "port": 8080},
                                           {"ip": "10.0.2.50"}],
                               "health_check": {"protocol": "http", "path": "/", "interval": 1,
                                                "healthy_threshold": 2, "unhealthy_threshold": 2, "timeout": 1}}],
            "load_balancers": [{"name": "lb", "subnets": ["public"], "private_ip": "10.0.1.100",
                                "listeners": [{"protocol": "tcp", "port": 80, "target_group": "web"}]}],
        }],
    }


class Lb:
    """The account's NAT gateways, target groups and load balancers by name, read back through the API."""

    def __init__(self, api):
        self.net = Net(api)
        self.nats = self.net.nats
        self.groups = {g["name"]: g for g in api.call("GET", "/v1/target-groups")}
        self.balancers = {b["name"]: b for b in api.call("GET", "/v1/load-balancers")}
        self.group_names = {g["id"]: n for n, g in self.groups.items()}
        self.instance_names = {i["id"]: n for n, i in self.net.instances.items()}

    def targets(self, group: str) -> list[tuple]:
        return sorted((self.instance_names.get(t["instance_id"], t["instance_id"]) if t["instance_id"] else t["ip"],
                       t["port"]) for t in self.groups[group]["targets"])

    def listeners(self, lb: str) -> list[tuple]:
        return [(li["protocol"], li["port"], self.group_names.get(li["target_group_id"], li["target_group_id"]))
                for li in self.balancers[lb]["listeners"]]

    def eips(self) -> dict:
        """Elastic IP name -> (public address, what it is associated with)."""
        return {e["name"]: (e["public_ip"], e["nat_gateway_id"] or e["instance_id"]) for e in self.net.eips}


def _ids(changes: list[str]) -> list[str]:
    return [re.sub(r"-[0-9a-f]{16,17}", "-ID", c) for c in changes]


def test_hyperplane_applies_then_a_second_apply_changes_nothing(api):
    changes = _ids(applied(api, hyperplane()))
    order = [changes.index(line) for line in (
        "created internet gateway demo/demo-igw (igw-ID)",
        "created subnet demo/public (10.0.1.0/24, route table public)",
        "created instance client (10.0.2.4 on host-a)",
        "allocated elastic IP 198.51.100.1 (eipalloc-ID) for NAT gateway demo/nat",
        "created NAT gateway demo/nat (nat-ID, 10.0.1.4 in subnet public, public 198.51.100.1)",
        "changed route table demo/private: routes",  # once the gateway exists
        "created target group demo/web (tg-ID, tcp/80, 3 targets)",
        "created load balancer demo/lb (nlb-ID, 10.0.1.100 in subnet public, lb-ID.elb.lab-1.vpc.internal)")]
    assert order == sorted(order), changes
    w = Lb(api)
    nat = w.nats["nat"]
    assert (nat["connectivity_type"], nat["private_ip"], nat["public_ip"]) == ("public", "10.0.1.4", "198.51.100.1")
    assert nat["subnet_id"] == w.net.subnets["public"]["id"]
    assert w.eips() == {"demo/nat": ("198.51.100.1", nat["id"])}
    assert w.net.routes("private") == [("10.0.0.0/16", "local", "active"), ("0.0.0.0/0", "nat_gateway/nat", "active")]
    web = w.groups["web"]
    assert (web["protocol"], web["port"]) == ("tcp", 80)
    assert w.targets("web") == [("10.0.2.50", 80), ("web1", 80), ("web2", 8080)]
    assert web["health_check"] == {"protocol": "http", "port": None, "path": "/", "interval": 1, "timeout": 1,
                                   "healthy_threshold": 2, "unhealthy_threshold": 2, "matcher": "200-399"}
    lb = w.balancers["lb"]
    assert (lb["private_ip"], lb["subnet_ids"]) == ("10.0.1.100", [w.net.subnets["public"]["id"]])
    assert w.listeners("lb") == [("tcp", 80, "web")]


def test_the_hyperplane_example_applies(api):
    topo = load_topology(CONFIGS / "hyperplane.yaml")
    changes = apply_topology(api, topo)
    assert apply_topology(api, topo) == []
    assert len([c for c in changes if c.startswith("created instance")]) == 5
    w = Lb(api)
    assert w.net.routes("private")[1:] == [("0.0.0.0/0", "nat_gateway/nat", "active")]
    assert w.net.routes("public")[1:] == [("0.0.0.0/0", "igw/demo-igw", "active")]
    assert w.targets("web") == [("web1", 80), ("web2", 80), ("web3", 80)]
    assert w.balancers["lb"]["private_ip"] == "10.0.1.100" and w.listeners("lb") == [("tcp", 80, "web")]
    assert {n: (i["private_ip"], i["host"]) for n, i in w.net.instances.items()} == {
        "web1": ("10.0.2.11", "host-b"), "web2": ("10.0.2.12", "host-c"), "web3": ("10.0.2.13", "host-a"),
        "client": ("10.0.2.4", "host-a"), "client2": ("10.0.2.5", "host-b")}
    groups = {g["name"]: g["id"] for g in api.call("GET", "/v1/security-groups")}
    assert all(w.net.instances[n]["security_group_ids"] == [groups["web"]] for n in ("web1", "web2", "web3"))


def test_targets_health_checks_and_listeners_are_modified_in_place(api):
    applied(api, hyperplane())
    before = Lb(api)
    data = hyperplane()
    vpc = data["vpcs"][0]
    vpc["target_groups"][0]["targets"] = [{"instance": "web2", "port": 8080}, "instance/client"]
    vpc["target_groups"][0]["health_check"]["interval"] = 5
    vpc["target_groups"].append({"name": "dns", "protocol": "udp", "port": 53, "targets": ["instance/client"]})
    vpc["load_balancers"][0]["listeners"].append({"protocol": "udp", "port": 53, "target_group": "dns"})
    changes = _ids(applied(api, data))
    assert changes == ["changed target group demo/web: targets, health_check",
                       "created target group demo/dns (tg-ID, udp/53, 1 target)",
                       "changed load balancer demo/lb: listeners"]
    after = Lb(api)
    assert after.groups["web"]["id"] == before.groups["web"]["id"]
    assert after.balancers["lb"]["id"] == before.balancers["lb"]["id"]
    assert after.targets("web") == [("client", 80), ("web2", 8080)]
    assert after.groups["web"]["health_check"]["interval"] == 5
    assert after.listeners("lb") == [("tcp", 80, "web"), ("udp", 53, "dns")]
    # Targets and listeners in another order, or spelled otherwise, are the same.
    vpc["target_groups"][0]["targets"] = [{"instance": "client", "port": 80}, {"instance": "web2", "port": 8080}]
    vpc["load_balancers"][0]["listeners"].reverse()
    assert apply(api, data) == []


def test_a_re_created_instance_is_named_again_by_its_target_group(api):
    applied(api, hyperplane())
    before = Lb(api)
    data = hyperplane()
    data["vpcs"][0]["instances"][0]["ip"] = "10.0.2.21"  # a new address: web1 is re-created
    changes = applied(api, data)
    assert changes == ["deleted instance web1 (10.0.2.11)", "created instance web1 (10.0.2.21 on host-b)",
                       "changed target group demo/web: targets"]
    after = Lb(api)
    assert after.groups["web"]["id"] == before.groups["web"]["id"]
    assert after.targets("web") == [("10.0.2.50", 80), ("web1", 80), ("web2", 8080)]
    assert after.instance_names[after.groups["web"]["targets"][0]["instance_id"]] == "web1"


def test_a_target_group_whose_port_changes_is_re_created_once_its_listener_moves(api):
    applied(api, hyperplane())
    old = Lb(api).groups["web"]
    data = hyperplane()
    data["vpcs"][0]["target_groups"][0]["port"] = 8000
    changes = applied(api, data)
    new = Lb(api).groups["web"]
    assert _ids(changes) == ["created target group demo/web (tg-ID, tcp/8000, 3 targets)",
                             "changed load balancer demo/lb: listeners",
                             "deleted target group demo/web (tg-ID)"]
    assert changes[-1] == f"deleted target group demo/web ({old['id']})" and new["id"] != old["id"]
    assert Lb(api).targets("web") == [("10.0.2.50", 8000), ("web1", 8000), ("web2", 8080)]
    assert Lb(api).listeners("lb") == [("tcp", 80, "web")]


def test_removing_the_load_balancer_and_its_target_group_deletes_them_in_order(api):
    applied(api, hyperplane())
    before = Lb(api)
    data = hyperplane()
    data["vpcs"][0]["load_balancers"] = []
    data["vpcs"][0]["target_groups"] = []
    assert applied(api, data) == [
        f"deleted load balancer demo/lb ({before.balancers['lb']['id']}, 10.0.1.100)",
        f"deleted target group demo/web ({before.groups['web']['id']})"]
    after = Lb(api)
    assert after.balancers == {} and after.groups == {}
    # Its ENI went with it: its address is free again.
    assert "10.0.1.100" not in {e["private_ip"] for e in api.call("GET", "/v1/network-interfaces")}


def test_a_load_balancer_whose_address_or_subnets_change_is_re_created(api):
    applied(api, hyperplane())
    first = Lb(api).balancers["lb"]
    data = hyperplane()
    lb = data["vpcs"][0]["load_balancers"][0]
    lb["private_ip"] = "10.0.1.101"
    changes = _ids(applied(api, data))
    assert changes == ["deleted load balancer demo/lb (nlb-ID, 10.0.1.100)",
                       "created load balancer demo/lb (nlb-ID, 10.0.1.101 in subnet public, "
                       "lb-ID.elb.lab-1.vpc.internal)"]
    second = Lb(api).balancers["lb"]
    assert second["id"] != first["id"]
    # Without an explicit address it keeps the one it has; in other subnets it is made again.
    del lb["private_ip"]
    assert apply(api, data) == []
    lb["subnets"] = ["private", "public"]
    changes = applied(api, data)
    third = Lb(api).balancers["lb"]
    assert changes[0] == f"deleted load balancer demo/lb ({second['id']}, 10.0.1.101)"
    assert (third["subnet_id"], third["private_ip"]) == (Lb(api).net.subnets["private"]["id"], "10.0.2.5")


def test_a_re_created_nat_gateway_keeps_its_elastic_ip_and_its_routes(api):
    applied(api, hyperplane())
    before = Lb(api)
    nat = before.nats["nat"]
    data = hyperplane()
    data["vpcs"][0]["nat_gateways"][0]["private_ip"] = "10.0.1.200"
    changes = applied(api, data)
    after = Lb(api)
    assert _ids(changes) == ["deleted NAT gateway demo/nat (nat-ID, 10.0.1.4)",
                             "created NAT gateway demo/nat (nat-ID, 10.0.1.200 in subnet public, public 198.51.100.1)",
                             "changed route table demo/private: routes"]
    assert after.nats["nat"]["id"] != nat["id"] and after.nats["nat"]["allocation_id"] == nat["allocation_id"]
    assert after.eips() == {"demo/nat": ("198.51.100.1", after.nats["nat"]["id"])}
    assert after.net.routes("private")[1] == ("0.0.0.0/0", "nat_gateway/nat", "active")
    # Without an explicit address it keeps the one it has.
    del data["vpcs"][0]["nat_gateways"][0]["private_ip"]
    assert apply(api, data) == []


def test_a_nat_gateway_made_private_gives_up_its_elastic_ip(api):
    applied(api, hyperplane())
    (eip,) = Net(api).eips
    data = hyperplane()
    data["vpcs"][0]["nat_gateways"][0]["connectivity"] = "private"
    changes = applied(api, data)
    assert changes[1] == f"released elastic IP 198.51.100.1 ({eip['id']})"
    assert _ids(changes) == ["deleted NAT gateway demo/nat (nat-ID, 10.0.1.4)",
                             "released elastic IP 198.51.100.1 (eipalloc-ID)",
                             "created NAT gateway demo/nat (nat-ID, 10.0.1.4 in subnet public, private)",
                             "changed route table demo/private: routes"]
    w = Lb(api)
    assert w.nats["nat"]["connectivity_type"] == "private" and w.nats["nat"]["public_ip"] is None
    assert w.net.eips == []
    # And public again: a new address.
    changes = _ids(applied(api, hyperplane()))
    assert "allocated elastic IP 198.51.100.1 (eipalloc-ID) for NAT gateway demo/nat" in changes


def test_removing_the_nat_gateway_and_the_internet_gateway(api):
    applied(api, hyperplane())
    before = Lb(api)
    data = hyperplane()
    vpc = data["vpcs"][0]
    vpc["nat_gateways"] = []
    vpc["route_tables"][1]["routes"] = []
    del vpc["internet_gateway"]
    del vpc["route_tables"][0]["routes"][0]
    changes = applied(api, data)
    (eip,), (igw,) = before.net.eips, before.net.gateways
    assert changes == [
        f"deleted NAT gateway demo/nat ({before.nats['nat']['id']}, 10.0.1.4)",
        f"released elastic IP 198.51.100.1 ({eip['id']})",
        "changed route table demo/public: routes", "changed route table demo/private: routes",
        f"deleted internet gateway demo/demo-igw ({igw['id']}, detached)"]
    w = Lb(api)
    assert w.nats == {} and w.net.eips == [] and w.net.gateways == []


def test_a_subnet_re_created_takes_its_nat_gateway_and_load_balancer_along(api):
    applied(api, hyperplane())
    before = Lb(api)
    data = hyperplane()
    data["vpcs"][0]["subnets"][0]["cidr"] = "10.0.3.0/24"
    data["vpcs"][0]["load_balancers"][0]["private_ip"] = "10.0.3.100"
    changes = applied(api, data)
    assert changes.index(f"deleted load balancer demo/lb ({before.balancers['lb']['id']}, 10.0.1.100)") < \
        changes.index("deleted subnet demo/public (10.0.1.0/24)")
    assert changes.index(f"deleted NAT gateway demo/nat ({before.nats['nat']['id']}, 10.0.1.4)") < \
        changes.index("deleted subnet demo/public (10.0.1.0/24)")
    w = Lb(api)
    assert (w.nats["nat"]["private_ip"], w.nats["nat"]["public_ip"]) == ("10.0.3.4", "198.51.100.1")
    assert w.balancers["lb"]["private_ip"] == "10.0.3.100" and w.listeners("lb") == [("tcp", 80, "web")]
    assert w.groups["web"]["id"] == before.groups["web"]["id"]


def test_a_vpc_with_hyperplane_is_deleted_whole(api):
    applied(api, hyperplane())
    changes = applied(api, {"hosts": [{"name": "host-a"}], "vpcs": []})
    assert changes[-1].startswith("deleted VPC demo")
    for collection in ("vpcs", "subnets", "instances", "nat-gateways", "target-groups", "load-balancers",
                       "elastic-ips", "internet-gateways", "network-interfaces"):
        assert api.call("GET", f"/v1/{collection}") == [], collection


def test_nat_gateways_target_groups_and_load_balancers_made_by_hand_are_converged_too(api):
    applied(api, hyperplane())
    before = Lb(api)
    vpc_id, public = before.net.vpc["id"], before.net.subnets["public"]["id"]
    stray_nat = api.call("POST", "/v1/nat-gateways", {"subnet_id": public, "name": "stray",
                                                      "connectivity_type": "private"})
    second_nat = api.call("POST", "/v1/nat-gateways", {"subnet_id": public, "name": "nat",
                                                       "connectivity_type": "private"})
    stray_eip = api.call("POST", "/v1/elastic-ips", {"name": "demo/nat"})  # named as the gateway's, unused
    stray_tg = api.call("POST", "/v1/target-groups", {"vpc_id": vpc_id, "name": "web", "port": 80})
    second_lb = api.call("POST", "/v1/load-balancers", {"name": "lb", "subnet_ids": [public], "listeners": [
        {"port": 80, "target_group_id": stray_tg["id"]}]})
    changes = applied(api, hyperplane())
    assert sorted(changes) == sorted([
        f"deleted load balancer demo/lb ({second_lb['id']}, {second_lb['private_ip']})",
        f"deleted NAT gateway demo/stray ({stray_nat['id']}, {stray_nat['private_ip']})",
        f"deleted NAT gateway demo/nat ({second_nat['id']}, {second_nat['private_ip']})",
        f"released elastic IP {stray_eip['public_ip']} ({stray_eip['id']})",
        f"deleted target group demo/web ({stray_tg['id']})"]), changes
    after = Lb(api)
    assert after.nats["nat"]["id"] == before.nats["nat"]["id"]
    assert after.groups["web"]["id"] == before.groups["web"]["id"]
    assert after.balancers["lb"]["id"] == before.balancers["lb"]["id"]
    assert after.eips() == before.eips()


@st.composite
def hyperplane_files(draw) -> dict:
    """A valid file of random NAT gateways, target groups and load balancers over a fixed VPC."""
    gateway = draw(st.booleans())
    nat = draw(st.sampled_from([None, "public", "private"] if gateway else [None, "private"]))
    nats = [] if nat is None else [{"name": "nat", "subnet": draw(st.sampled_from(["app", "ops"])),
                                    "connectivity": nat,
                                    **({"private_ip": "10.0.1.200"} if draw(st.booleans()) else {})}]
    if nats and nats[0].get("private_ip") and nats[0]["subnet"] == "ops":
        nats[0]["private_ip"] = "10.0.2.200"
    instances = draw(st.lists(st.sampled_from(["i1", "i2", "i3"]), unique=True, max_size=3))
    groups = []
    for name in draw(st.lists(st.sampled_from(["g1", "g2"]), unique=True, max_size=2)):
        chosen = draw(st.lists(st.sampled_from(instances), unique=True)) if instances else []
        targets = [draw(st.sampled_from([f"instance/{i}", {"instance": i, "port": 8080}])) for i in chosen]
        if draw(st.booleans()):
            targets.append({"ip": "10.0.1.50"})
        groups.append({"name": name, "protocol": draw(st.sampled_from(["tcp", "udp"])),
                       "port": draw(st.sampled_from([80, 81])), "targets": targets,
                       "health_check": {"interval": draw(st.sampled_from([1, 5]))}})
    balancers = []
    for name in draw(st.lists(st.sampled_from(["b1", "b2"]), unique=True, max_size=2)):
        chosen = draw(st.lists(st.sampled_from(groups), unique_by=lambda g: g["name"])) if groups else []
        listeners = [{"protocol": g["protocol"], "port": 80 + k, "target_group": g["name"]}
                     for k, g in enumerate(chosen)]
        balancers.append({"name": name, "subnets": draw(st.sampled_from([["app"], ["ops"], ["app", "ops"]])),
                          "listeners": listeners,
                          **({"private_ip": f"10.0.{1 if name == 'b1' else 2}.{110 if name == 'b1' else 120}"}
                             if draw(st.booleans()) else {})})
        if balancers[-1].get("private_ip") and balancers[-1]["subnets"][0] != (
                "app" if name == "b1" else "ops"):
            del balancers[-1]["private_ip"]
    routes = [{"destination": "0.0.0.0/0", "target": "nat_gateway/nat"}] if nats and draw(st.booleans()) else []
    return {"hosts": [{"name": "host-a"}], "vpcs": [{
        "name": "demo", "cidr": "10.0.0.0/16", "internet_gateway": gateway,
        "route_tables": [{"name": "private", "routes": routes}],
        "subnets": [{"name": "app", "cidr": "10.0.1.0/24"},
                    {"name": "ops", "cidr": "10.0.2.0/24", "route_table": "private"}],
        "instances": [{"name": i, "subnet": draw(st.sampled_from(["app", "ops"])), "host": "host-a"}
                      for i in instances],
        "nat_gateways": nats, "target_groups": groups, "load_balancers": balancers}]}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(hyperplane_files(), min_size=2, max_size=3))
def test_any_sequence_of_hyperplane_files_converges(api, files):
    for data in files:
        apply(api, data)
        assert apply(api, data) == []
        w, (vpc,) = Lb(api), data["vpcs"]
        assert {n: (x["connectivity_type"], w.net.subnets and x["subnet_id"]) for n, x in w.nats.items()} == {
            n["name"]: (n["connectivity"], w.net.subnets[n["subnet"]]["id"]) for n in vpc["nat_gateways"]}
        assert sorted(w.eips()) == (["demo/nat"] if any(n["connectivity"] == "public" for n in vpc["nat_gateways"])
                                    else [])
        assert {n: (g["protocol"], g["port"], len(g["targets"])) for n, g in w.groups.items()} == {
            g["name"]: (g["protocol"], g["port"], len(g["targets"])) for g in vpc["target_groups"]}
        assert {n: w.listeners(n) for n in w.balancers} == {
            b["name"]: [(li["protocol"], li["port"], li["target_group"]) for li in b["listeners"]]
            for b in vpc["load_balancers"]}
        for b in vpc["load_balancers"]:
            assert w.balancers[b["name"]]["subnet_ids"] == [w.net.subnets[s]["id"] for s in b["subnets"]]
            if b.get("private_ip"):
                assert w.balancers[b["name"]]["private_ip"] == b["private_ip"]


# --- IPv6, egress-only gateways, DHCP options and private DNS ------------------------------------------------
POOL_FIRST = "2001:db8:100::/56"  # the API's default pool's first /56


def dual() -> dict:
    """A dual-stack VPC (an amazon-provided /56): two subnets with /64s (by position and by index), one
    without; a TAP instance with an explicit interface part; the egress-only gateway routed to; a DHCP
    option set and a private zone."""
    return {
        "hosts": [{"name": "host-a"}, {"name": "host-b"}],
        "vpcs": [{
            "name": "six",
            "cidr": "10.0.0.0/16",
            "ipv6": True,
            "internet_gateway": True,
            "egress_only_gateway": True,
            "dhcp_options": {"domain_name": "corp.example", "domain_name_servers": ["AmazonProvidedDNS", "192.0.2.53"]},
            "dns_zones": [{"name": "corp.internal", "records": [
                {"name": "web.corp.internal", "type": "A", "values": ["10.0.1.10"]},
                {"name": "www.corp.internal", "type": "CNAME", "ttl": 60, "values": "web.corp.internal"}]}],
            "route_tables": [{"name": "main", "routes": [
                {"destination": "0.0.0.0/0", "target": "internet_gateway"},
                {"destination": "::/0", "target": "egress_only_gateway"}]}],
            "subnets": [{"name": "app", "cidr": "10.0.1.0/24", "ipv6": True},
                        {"name": "ops", "cidr": "10.0.2.0/24", "ipv6": True, "ipv6_index": 5},
                        {"name": "legacy", "cidr": "10.0.3.0/24"}],
            "instances": [
                {"name": "web", "subnet": "app", "host": "host-b", "ip": "10.0.1.10", "ipv6": "::10",
                 "interface": "tap"},
                {"name": "db", "subnet": "app", "host": "host-a"},
                {"name": "admin", "subnet": "ops", "host": "host-a", "security_groups": ["admin"]},
                {"name": "old", "subnet": "legacy", "host": "host-a"},
            ],
            "security_groups": [{"name": "admin", "ingress": [{"protocol": "tcp", "ports": 22, "cidr": "::/0"}]}],
        }],
    }


class Six:
    """The account's dual-stack resources by name, read back through the API."""

    def __init__(self, api):
        (self.vpc,) = api.call("GET", "/v1/vpcs")
        self.subnets = {s["name"]: s for s in api.call("GET", "/v1/subnets")}
        self.instances = {i["name"]: i for i in api.call("GET", "/v1/instances")}
        self.eigws = api.call("GET", "/v1/egress-only-internet-gateways")
        self.groups = {g["name"]: g for g in api.call("GET", "/v1/security-groups")}
        self.main = api.call("GET", f"/v1/route-tables/{self.vpc['main_route_table_id']}")
        self.dhcp = api.call("GET", "/v1/dhcp-options")
        self.zones = api.call("GET", "/v1/dns-zones")
        self.acl = api.call("GET", f"/v1/network-acls/{self.vpc['default_network_acl_id']}")

    def six(self, subnet: str) -> str | None:
        return self.subnets[subnet]["ipv6_cidr_block"]

    def ipv6(self) -> dict:
        return {n: (i["ipv6_address"], i["interface_type"]) for n, i in self.instances.items()}

    def routes(self) -> list[tuple]:
        return [(r["destination"], "local" if r["gateway_id"] == "local" else
                 "eigw" if r["egress_only_gateway_id"] else "igw" if r["gateway_id"] else "eni", r["state"])
                for r in self.main["routes"]]

    def egress(self, group: str) -> list[str]:
        return [r["cidr"] for r in self.groups[group]["egress"]]


def test_dual_stack_applies_then_a_second_apply_changes_nothing(api):
    changes = applied(api, dual())
    shown = [re.sub(r"-[0-9a-f]{16,17}", "-ID", c) for c in changes]
    for line in (f"created VPC six (10.0.0.0/16, {POOL_FIRST}, VNI 1)",
                 "created egress-only internet gateway six/six-eigw (eigw-ID)",
                 "created subnet six/app (10.0.1.0/24, 2001:db8:100::/64)",
                 "created subnet six/ops (10.0.2.0/24, 2001:db8:100:5::/64)", "created subnet six/legacy (10.0.3.0/24)",
                 "created instance web (10.0.1.10, 2001:db8:100::10, tap on host-b)",
                 "created instance db (10.0.1.4, 2001:db8:100::4 on host-a)",
                 "created instance old (10.0.3.4 on host-a)",
                 "created DHCP options six (dopt-ID: corp.example, AmazonProvidedDNS, 192.0.2.53) for VPC six",
                 "created DNS zone six/corp.internal (zone-ID, 2 record sets)", "changed route table six/main: routes"):
        assert line in shown, (line, changes)
    w = Six(api)
    assert (w.vpc["ipv6_cidr_block"], w.vpc["amazon_provided_ipv6_cidr_block"]) == (POOL_FIRST, True)
    assert (w.six("app"), w.six("ops"), w.six("legacy")) == ("2001:db8:100::/64", "2001:db8:100:5::/64", None)
    assert w.ipv6() == {"web": ("2001:db8:100::10", "tap"), "db": ("2001:db8:100::4", "tun"),
                        "admin": ("2001:db8:100:5::4", "tun"), "old": (None, "tun")}
    (eigw,) = w.eigws
    assert (eigw["name"], eigw["vpc_id"]) == ("six-eigw", w.vpc["id"])
    assert w.routes() == [("10.0.0.0/16", "local", "active"), (POOL_FIRST, "local", "active"),
                          ("0.0.0.0/0", "igw", "active"), ("::/0", "eigw", "active")]
    # The defaults with a block: all out to both families; a group without egress in the file the same.
    assert w.egress("default") == ["0.0.0.0/0", "::/0"] and w.egress("admin") == ["0.0.0.0/0", "::/0"]
    assert sorted((e["rule_number"], e["egress"], e["cidr"]) for e in w.acl["entries"]) == [
        (100, False, "0.0.0.0/0"), (100, True, "0.0.0.0/0"), (101, False, "::/0"), (101, True, "::/0")]
    (dopt,) = w.dhcp
    assert w.vpc["dhcp_options_id"] == dopt["id"]
    assert (dopt["name"], dopt["domain_name"], dopt["domain_name_servers"], dopt["ntp_servers"]) == (
        "six", "corp.example", ["AmazonProvidedDNS", "192.0.2.53"], [])
    (zone,) = w.zones
    assert (zone["name"], zone["vpc_ids"]) == ("corp.internal", [w.vpc["id"]])
    assert zone["records"] == [{"name": "web.corp.internal", "type": "A", "ttl": 300, "values": ["10.0.1.10"]},
                               {"name": "www.corp.internal", "type": "CNAME", "ttl": 60,
                                "values": ["web.corp.internal"]}]


def test_a_given_block_places_subnets_and_addresses_as_the_file_says(api):
    data = dual()
    vpc = data["vpcs"][0]
    del vpc["ipv6"]
    vpc["ipv6_cidr"] = "2001:db8:ab00::/56"
    vpc["subnets"][1] = {"name": "ops", "cidr": "10.0.2.0/24", "ipv6_cidr": "2001:db8:ab00:7::/64"}
    vpc["instances"][2]["ipv6"] = "2001:db8:ab00:7::99"
    vpc["route_tables"][0]["routes"].append({"destination": "2001:db8:ab00:7::/64", "target": "instance/web"})
    applied(api, data)
    w = Six(api)
    assert (w.vpc["ipv6_cidr_block"], w.six("app"), w.six("ops")) == (
        "2001:db8:ab00::/56", "2001:db8:ab00::/64", "2001:db8:ab00:7::/64")
    assert w.ipv6()["admin"] == ("2001:db8:ab00:7::99", "tun")
    assert w.ipv6()["web"] == ("2001:db8:ab00::10", "tap")
    assert w.routes()[-1] == ("2001:db8:ab00:7::/64", "eni", "active")
    # Another given block: the subnets with /64s and their instances are re-created in it.
    vpc["ipv6_cidr"] = "2001:db8:cd00::/56"
    vpc["subnets"][1]["ipv6_cidr"] = "2001:db8:cd00:7::/64"
    vpc["instances"][2]["ipv6"] = "2001:db8:cd00:7::99"
    vpc["route_tables"][0]["routes"][-1]["destination"] = "2001:db8:cd00:7::/64"
    changes = applied(api, data)
    assert "changed VPC six: IPv6 block 2001:db8:ab00::/56 removed" in changes
    assert "changed VPC six: IPv6 block 2001:db8:cd00::/56 added" in changes
    assert any(c.startswith("deleted subnet six/ops") for c in changes)
    assert not any(c.startswith("deleted subnet six/legacy") for c in changes)
    w = Six(api)
    assert (w.vpc["ipv6_cidr_block"], w.six("app"), w.six("ops")) == (
        "2001:db8:cd00::/56", "2001:db8:cd00::/64", "2001:db8:cd00:7::/64")
    assert w.ipv6() == {"web": ("2001:db8:cd00::10", "tap"), "db": ("2001:db8:cd00::4", "tun"),
                        "admin": ("2001:db8:cd00:7::99", "tun"), "old": (None, "tun")}


def test_ipv6_is_added_in_place_and_removed_by_re_creating_what_had_it(api):
    data = dual()
    v4 = copy.deepcopy(data)
    v4vpc = v4["vpcs"][0]
    for key in ("ipv6", "egress_only_gateway"):
        del v4vpc[key]
    v4vpc["route_tables"] = []
    for s in v4vpc["subnets"]:
        s.pop("ipv6", None), s.pop("ipv6_index", None)
    for i in v4vpc["instances"]:
        i.pop("ipv6", None)
    applied(api, v4)
    before = Six(api)
    assert before.vpc["ipv6_cidr_block"] is None and set(before.ipv6().values()) <= {(None, "tun"), (None, "tap")}
    assert before.egress("default") == ["0.0.0.0/0"] and before.egress("admin") == ["0.0.0.0/0"]
    # Added: the VPC and the subnets in place; instances that now get addresses are re-created.
    changes = applied(api, data)
    assert f"changed VPC six: IPv6 block {POOL_FIRST} added" in changes
    assert "changed subnet six/app: ipv6_cidr=2001:db8:100::/64" in changes
    assert "changed security group six/admin: egress" in changes  # the file's default: both families now
    assert "deleted instance db (10.0.1.4)" in changes and "deleted instance old (10.0.3.4)" not in changes
    after = Six(api)
    assert after.vpc["id"] == before.vpc["id"] and after.subnets["app"]["id"] == before.subnets["app"]["id"]
    assert after.instances["old"]["id"] == before.instances["old"]["id"]
    assert after.ipv6()["db"] == ("2001:db8:100::4", "tun")
    assert after.egress("default") == ["0.0.0.0/0", "::/0"]  # the API's doing: its default, unmodified
    # Removed: the subnets with /64s are re-created without, the block goes, and so does the gateway with
    # its routes (the main table, were the file to leave it as it is).
    v4vpc["route_tables"] = [{"name": "main"}]
    changes = applied(api, v4)
    shown = [re.sub(r"-[0-9a-f]{16,17}", "-ID", c) for c in changes]
    assert f"changed VPC six: IPv6 block {POOL_FIRST} removed" in changes
    assert "changed route table six/main: routes (those to egress-only internet gateway six-eigw removed)" in changes
    assert "deleted egress-only internet gateway six/six-eigw (eigw-ID)" in shown
    w = Six(api)
    assert w.vpc["ipv6_cidr_block"] is None and w.eigws == []
    assert (w.six("app"), w.six("ops")) == (None, None) and w.subnets["legacy"]["id"] == before.subnets["legacy"]["id"]
    assert all(x == (None, "tun") for n, x in w.ipv6().items() if n != "web")
    assert w.routes() == [("10.0.0.0/16", "local", "active"), ("0.0.0.0/0", "igw", "active")]


def test_an_instances_interface_or_address_change_re_creates_it(api):
    data = dual()
    applied(api, data)
    before = Six(api)
    data["vpcs"][0]["instances"][1]["interface"] = "tap"
    data["vpcs"][0]["instances"][2]["ipv6"] = "::20"
    changes = applied(api, data)
    assert "deleted instance db (10.0.1.4)" in changes and "deleted instance admin (10.0.2.4)" in changes
    assert "created instance admin (10.0.2.4, 2001:db8:100:5::20 on host-a)" in changes
    w = Six(api)
    assert w.ipv6()["db"] == ("2001:db8:100::4", "tap") and w.ipv6()["admin"] == ("2001:db8:100:5::20", "tun")
    assert w.instances["web"]["id"] == before.instances["web"]["id"]
    # An explicit address given out of the file (the API's choice) is kept: no change.
    del data["vpcs"][0]["instances"][2]["ipv6"]
    assert apply(api, data) == []


def test_dhcp_options_are_replaced_when_they_change_and_go_when_the_file_drops_them(api):
    data = dual()
    applied(api, data)
    (first,) = Six(api).dhcp
    data["vpcs"][0]["dhcp_options"] = {"ntp_servers": ["169.254.169.123"]}  # the region's domain, the resolver
    changes = applied(api, data)
    shown = [re.sub(r"-[0-9a-f]{16,17}", "-ID", c) for c in changes]
    assert shown == ["created DHCP options six (dopt-ID: lab-1.compute.internal, AmazonProvidedDNS) for VPC six",
                     f"deleted DHCP options {first['id']} (no VPC uses them)".replace(first["id"], "dopt-ID")]
    w = Six(api)
    (dopt,) = w.dhcp
    assert w.vpc["dhcp_options_id"] == dopt["id"] and dopt["ntp_servers"] == ["169.254.169.123"]
    del data["vpcs"][0]["dhcp_options"]
    assert applied(api, data) == ["changed VPC six: dhcp_options=default",
                                  f"deleted DHCP options {dopt['id']} (no VPC uses them)"]
    w = Six(api)
    assert w.vpc["dhcp_options_id"] is None and w.dhcp == []


def test_zones_are_changed_in_place_and_go_with_the_file_or_the_vpc(api):
    data = dual()
    applied(api, data)
    (zone,) = Six(api).zones
    records = data["vpcs"][0]["dns_zones"][0]["records"]
    records[0]["values"] = ["10.0.1.10", "10.0.1.11"]
    records[1]["name"] = "WWW.Corp.Internal."  # the same name as DNS compares names: no change for it
    assert applied(api, data) == ["changed DNS zone six/corp.internal: records"]
    (again,) = Six(api).zones
    assert again["id"] == zone["id"] and again["records"][0]["values"] == ["10.0.1.10", "10.0.1.11"]
    data["vpcs"][0]["dns_zones"] = [{"name": "other.internal"}]
    changes = applied(api, data)
    shown = [re.sub(r"-[0-9a-f]{16,17}", "-ID", c) for c in changes]
    assert shown == ["created DNS zone six/other.internal (zone-ID, 0 record sets)",
                     "deleted DNS zone six/corp.internal (zone-ID)"]
    # A zone shared by hand with another VPC is taken off this VPC's list, not deleted.
    other = api.call("POST", "/v1/vpcs", {"name": "by-hand", "cidr_block": "10.9.0.0/16"})
    (mine,) = api.call("GET", "/v1/dns-zones")
    api.call("PATCH", f"/v1/dns-zones/{mine['id']}", {"vpc_ids": mine["vpc_ids"] + [other["id"]]})
    data["vpcs"][0]["dns_zones"] = []
    data["vpcs"].append({"name": "by-hand", "cidr": "10.9.0.0/16", "dns_zones": [{"name": "other.internal"}]})
    assert apply(api, data) == [f"changed DNS zone other.internal ({mine['id']}): no longer associated with VPC six"]
    assert [z["vpc_ids"] for z in api.call("GET", "/v1/dns-zones")] == [[other["id"]]]
    # Deleting a VPC deletes its zones, its egress-only gateway and its (no longer used) DHCP options.
    data["vpcs"] = [data["vpcs"][1]]
    changes = apply(api, data)
    shown = [re.sub(r"-[0-9a-f]{16,17}", "-ID", c) for c in changes]
    assert "deleted egress-only internet gateway six/six-eigw (eigw-ID)" in shown
    assert "deleted VPC six (10.0.0.0/16)" in shown and "deleted DHCP options dopt-ID (no VPC uses them)" in shown
    assert api.call("GET", "/v1/dhcp-options") == [] and api.call("GET", "/v1/egress-only-internet-gateways") == []
    data["vpcs"] = []
    assert apply(api, data) == [f"deleted DNS zone by-hand/other.internal ({mine['id']})",
                                "deleted VPC by-hand (10.9.0.0/16)"]
    assert api.call("GET", "/v1/dns-zones") == []


def test_a_renamed_egress_only_gateway_is_renamed_in_place(api):
    data = dual()
    applied(api, data)
    (before,) = Six(api).eigws
    data["vpcs"][0]["egress_only_gateway"] = {"name": "v6-out"}
    assert applied(api, data) == ["changed egress-only internet gateway six/v6-out: name (was six-eigw)"]
    (after,) = Six(api).eigws
    assert after["id"] == before["id"] and after["name"] == "v6-out"


def test_the_dual_stack_vpc_is_deleted_whole(api):
    applied(api, dual())
    changes = applied(api, {"hosts": [{"name": "host-a"}], "vpcs": []})
    assert changes[-1] == "deleted DHCP options %s (no VPC uses them)" % changes[-1].split()[3]
    for collection in ("vpcs", "subnets", "instances", "egress-only-internet-gateways", "dns-zones", "dhcp-options",
                       "internet-gateways"):
        assert api.call("GET", f"/v1/{collection}") == [], collection


ZONES = [("x.internal", "10.0.0.9"), ("y.internal", "10.0.0.8"), ("x.internal", "10.0.0.7")]


@st.composite
def dual_stack_files(draw) -> dict:
    """A valid file of random IPv6 over a fixed VPC: its block (none, amazon-provided, one of two given),
    which subnets have /64s (at which index), the instances' interfaces and explicit interface parts, the
    egress-only gateway and routes to it, DHCP options and a zone."""
    block = draw(st.sampled_from([None, True, "2001:db8:ab00::/56", "2001:db8:cd00::/56"]))
    eigw = draw(st.booleans())
    subnets = []
    for n, (name, cidr) in enumerate((("app", "10.0.1.0/24"), ("ops", "10.0.2.0/24"))):
        s = {"name": name, "cidr": cidr}
        if block and draw(st.booleans()):
            s.update(ipv6=True, ipv6_index=draw(st.sampled_from([n, n + 10])))
        subnets.append(s)
    instances = []
    for name in draw(st.lists(st.sampled_from(["i1", "i2", "i3"]), unique=True, max_size=3)):
        subnet = draw(st.sampled_from(subnets))
        inst = {"name": name, "subnet": subnet["name"], "host": "host-a",
                "interface": draw(st.sampled_from(["tun", "tap"]))}
        if subnet.get("ipv6") and draw(st.booleans()):
            inst["ipv6"] = f"::{10 + int(name[1]):x}"
        instances.append(inst)
    routes = [{"destination": d, "target": "egress_only_gateway"}
              for d in draw(st.lists(st.sampled_from(["::/0", "2001:db8:ffff::/48"]), unique=True))] if eigw else []
    vpc = {"name": "six", "cidr": "10.0.0.0/16", "egress_only_gateway": eigw, "subnets": subnets,
           "instances": instances, "route_tables": [{"name": "main", "routes": routes}],
           "dns_zones": [{"name": z, "records": [{"name": f"a.{z}", "type": "A", "values": [v]}]}
                         for z, v in draw(st.lists(st.sampled_from(ZONES), unique_by=lambda zv: zv[0], max_size=2))]}
    if block is True:
        vpc["ipv6"] = True
    elif block:
        vpc["ipv6_cidr"] = block
    dhcp = draw(st.sampled_from([None, {}, {"domain_name": "corp.example"}, {"ntp_servers": ["192.0.2.1"]}]))
    if dhcp is not None:
        vpc["dhcp_options"] = dhcp
    return {"hosts": [{"name": "host-a"}], "vpcs": [vpc]}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(dual_stack_files(), min_size=2, max_size=3))
def test_any_sequence_of_dual_stack_files_converges(api, files):
    for data in files:
        apply(api, data)
        assert apply(api, data) == []
        w, (vpc,) = Six(api), data["vpcs"]
        block = w.vpc["ipv6_cidr_block"]
        assert (block is not None) == bool(vpc.get("ipv6") or vpc.get("ipv6_cidr"))
        assert block == vpc.get("ipv6_cidr", block)
        for s in vpc["subnets"]:
            want = None
            if s.get("ipv6"):
                net = ipaddress.IPv6Network(block)
                want = str(ipaddress.IPv6Network((int(net.network_address) + (s["ipv6_index"] << 64), 64)))
            assert w.six(s["name"]) == want, s
        subnets = {s["name"]: s for s in vpc["subnets"]}
        for i in vpc["instances"]:
            address, interface = w.ipv6()[i["name"]]
            assert interface == i["interface"]
            six = w.six(i["subnet"])
            assert (address is None) == (six is None)
            if "ipv6" in i:
                assert address == str(ipaddress.IPv6Network(six)[int(i["ipv6"][2:], 16)])
            assert subnets[i["subnet"]]
        assert [e["name"] for e in w.eigws] == (["six-eigw"] if vpc["egress_only_gateway"] else [])
        assert sorted(d for d, kind, state in w.routes() if kind == "eigw" and state == "active") == sorted(
            r["destination"] for r in vpc["route_tables"][0]["routes"])
        assert sorted(z["name"] for z in w.zones) == sorted(z["name"] for z in vpc["dns_zones"])
        if "dhcp_options" in vpc:
            (dopt,) = w.dhcp
            assert w.vpc["dhcp_options_id"] == dopt["id"]
            assert dopt["domain_name"] == vpc["dhcp_options"].get("domain_name", "lab-1.compute.internal")
        else:
            assert w.vpc["dhcp_options_id"] is None and w.dhcp == []

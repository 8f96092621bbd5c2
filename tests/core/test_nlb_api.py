"""Network load balancers through the API (their control-plane side): created in one transaction with their
private address in their first subnet and a requester-managed ENI, like a NAT gateway; the address rules
(first free, or the requested one: in the subnet, free, not reserved); what deleting one frees; the
target groups around them (an instance's target outliving the instance); the infrastructure view's
``load_balancers`` and ``target_groups`` with the targets' addresses resolved; and the data plane's
consumers of that view (mapping daemon, host agents), which must leave the load balancer's host-less ENI
alone.

Same harness as ``test_api.py`` (its fixtures: the real app, on SQLite and on etcd).
"""

from __future__ import annotations

import asyncio
import re

from test_api import Api, alice, api, app_and_cp, bob, store_url  # noqa: F401 (the fixtures)
from test_nat_gateway_api import data, data_plane_of, requester_managed_eni
from test_routes_api import vpc_with_gateway
from vswitch import addresses
from vswitch.host_policy import HostPolicy

HEALTH_CHECK = {"protocol": "http", "path": "/", "interval": 1, "healthy_threshold": 2, "unhealthy_threshold": 2,
                "timeout": 1}


def web_group(api: Api, token: str, w: dict, **fields) -> dict:
    """A target group of web (instance, port 80) and an address, with an HTTP health check."""
    return api.create(token, "target-groups", {
        "vpc_id": w["vpc"]["id"], "name": "web", "protocol": "tcp", "port": 80, "health_check": HEALTH_CHECK,
        "targets": [{"instance_id": w["web"]["id"], "port": 80}, {"ip": "10.0.1.50", "port": 8080}], **fields})


def nlb(api: Api, token: str, w: dict, tg: dict | None = None, **fields) -> dict:
    listeners = [{"protocol": "tcp", "port": 80, "target_group_id": tg["id"]}] if tg else []
    return api.create(token, "load-balancers", {"name": "lb", "subnet_ids": [w["subnet"]["id"]],
                                                "listeners": listeners, **fields})


# --- creating ----------------------------------------------------------------------------------------------
def test_a_load_balancer_gets_an_address_and_a_requester_managed_eni(api, alice):
    w = vpc_with_gateway(api, alice)  # web 10.0.1.4, db 10.0.1.5
    tg = web_group(api, alice, w)
    lb = nlb(api, alice, w, tg)
    vpc, subnet = w["vpc"]["id"], w["subnet"]["id"]
    assert lb["id"].startswith("nlb-") and lb["kind"] == "load-balancers"
    assert {k: lb[k] for k in ("name", "subnet_ids", "subnet_id", "vpc_id", "private_ip", "state")} == {
        "name": "lb", "subnet_ids": [subnet], "subnet_id": subnet, "vpc_id": vpc, "private_ip": "10.0.1.6",
        "state": "active"}
    assert lb["dns_name"] == f"lb-{lb['id'][4:]}.elb.lab-1.vpc.internal"
    assert api.get(alice, "load-balancers", lb["id"]) == lb

    eni = requester_managed_eni(api, alice, lb, "load_balancer_id", "network_load_balancer", w, "10.0.1.6")
    assert api.ids(alice, "network-interfaces", subnet_id=subnet) == [w["web"]["eni_id"], w["db"]["eni_id"], eni["id"]]
    # The address is taken: instances and NAT gateways draw from the same ENIs.
    app = api.create(alice, "instances", {"name": "app", "subnet_id": subnet, "host": "h1"})
    assert app["private_ip"] == "10.0.1.7"
    api.refused("POST", "/v1/instances", alice, {"name": "x", "subnet_id": subnet, "host": "h1",
                                                 "private_ip": "10.0.1.6"}, status=409, field="private_ip")
    nat = api.create(alice, "nat-gateways", {"subnet_id": subnet, "connectivity_type": "private"})
    assert nat["private_ip"] == "10.0.1.8"
    # One transaction: the load balancer and its ENI, with one audit record.
    creates = [a for a in api.ok("GET", "/v1/audit", alice) if a["resource"] == lb["id"]]
    assert [(a["action"], a["status"]) for a in creates] == [("CreateLoadBalancer", 201)]


def test_its_address_is_in_its_first_subnet(api, alice):
    w = vpc_with_gateway(api, alice)
    other = api.create(alice, "subnets", {"vpc_id": w["vpc"]["id"], "cidr_block": "10.0.2.0/24"})["id"]
    lb = api.create(alice, "load-balancers", {"name": "two", "subnet_ids": [other, w["subnet"]["id"]]})
    assert (lb["subnet_id"], lb["private_ip"]) == (other, "10.0.2.4")
    assert api.get(alice, "network-interfaces", lb["eni_id"])["subnet_id"] == other
    # An address of its second subnet is not its first subnet's.
    api.refused("POST", "/v1/load-balancers", alice, {"name": "x", "subnet_ids": [other, w["subnet"]["id"]],
                                                      "private_ip": "10.0.1.100"},
                status=422, field="private_ip", says=("outside subnet", other))


def test_the_private_address_rules(api, alice):
    w = vpc_with_gateway(api, alice)
    body = {"name": "lb", "subnet_ids": [w["subnet"]["id"]]}
    before = data(api)
    api.refused("POST", "/v1/load-balancers", alice, {**body, "private_ip": w["web"]["private_ip"]}, status=409,
                field="private_ip", says=("already in use",))
    api.refused("POST", "/v1/load-balancers", alice, {**body, "private_ip": "10.0.2.9"}, status=422,
                field="private_ip", says=("outside subnet",))
    for reserved in ("10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.255"):
        api.refused("POST", "/v1/load-balancers", alice, {**body, "private_ip": reserved}, status=422,
                    field="private_ip", says=("reserved",))
    api.refused("POST", "/v1/load-balancers", alice, {**body, "private_ip": "10.0.1"}, status=422,
                field="private_ip", says=("not an IPv4",))
    assert data(api) == before  # no ENI, no address taken
    lb = api.create(alice, "load-balancers", {**body, "private_ip": "10.0.1.100"})
    assert lb["private_ip"] == "10.0.1.100"
    assert api.get(alice, "network-interfaces", lb["eni_id"])["private_ip"] == "10.0.1.100"
    api.refused("POST", "/v1/load-balancers", alice, {**body, "name": "lb2", "private_ip": "10.0.1.100"},
                status=409, field="private_ip", says=("already in use",))
    # A full subnet has no address for a load balancer either: the error names its first subnet.
    small = api.create(alice, "subnets", {"vpc_id": w["vpc"]["id"], "cidr_block": "10.0.9.0/28"})["id"]
    for i in range(11):
        api.create(alice, "instances", {"name": f"f{i}", "subnet_id": small, "host": "h1"})
    api.refused("POST", "/v1/load-balancers", alice, {"name": "full", "subnet_ids": [small]},
                status=409, field="subnet_ids[0]", says=("no free address",))


def test_its_dns_name_is_a_dns_label_and_stays(api, alice):
    w = vpc_with_gateway(api, alice)
    lb = api.create(alice, "load-balancers", {"name": "My Web_LB.prod", "subnet_ids": [w["subnet"]["id"]]})
    assert lb["dns_name"] == f"my-web-lb-prod-{lb['id'][4:]}.elb.lab-1.vpc.internal"
    assert all(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", label) for label in lb["dns_name"].split("."))
    renamed = api.patch(alice, "load-balancers", lb["id"], {"name": "other"})
    assert (renamed["dns_name"], renamed["private_ip"], renamed["eni_id"]) == (lb["dns_name"], lb["private_ip"],
                                                                              lb["eni_id"])
    # Its address and subnets are not for changing: re-create it.
    for field, value in (("private_ip", "10.0.1.99"), ("subnet_ids", [w["subnet"]["id"]])):
        api.refused("PATCH", f"/v1/load-balancers/{lb['id']}", alice, {field: value}, status=422, field=field)


def test_deleting_it_frees_its_address_and_eni(api, alice):
    w = vpc_with_gateway(api, alice)
    lb = nlb(api, alice, w, web_group(api, alice, w), private_ip="10.0.1.100")
    api.refused("DELETE", f"/v1/subnets/{w['subnet']['id']}", alice, status=409, says=(lb["id"],))
    api.refused("DELETE", f"/v1/vpcs/{w['vpc']['id']}", alice, status=409, says=(lb["id"], lb["eni_id"]))
    api.delete(alice, "load-balancers", lb["id"])
    api.gone(alice, "load-balancers", lb["id"])
    api.gone(alice, "network-interfaces", lb["eni_id"])
    view = api.infra()
    assert view["load_balancers"] == [] and lb["eni_id"] not in {e["id"] for e in view["enis"]}
    # Its address is free again, for anyone.
    assert api.create(alice, "instances", {"name": "app", "subnet_id": w["subnet"]["id"], "host": "h1",
                                           "private_ip": "10.0.1.100"})["private_ip"] == "10.0.1.100"
    assert nlb(api, alice, w)["private_ip"] == "10.0.1.6"


def test_another_account_does_not_see_its_eni(api, alice, bob):
    w = vpc_with_gateway(api, alice)
    lb = nlb(api, alice, w)
    api.refused("GET", f"/v1/network-interfaces/{lb['eni_id']}", bob, status=404)
    assert api.list(bob, "load-balancers") == [] and lb["eni_id"] not in api.ids(bob, "network-interfaces")


# --- target groups -------------------------------------------------------------------------------------------
def test_an_instances_target_outlives_the_instance(api, alice):
    w = vpc_with_gateway(api, alice)
    tg = web_group(api, alice, w)
    api.delete(alice, "instances", w["web"]["id"])  # allowed: its target stays in the group, unused
    assert api.get(alice, "target-groups", tg["id"])["targets"] == tg["targets"]
    # An update may keep it as it is; a new or changed target must name a live instance.
    kept = api.patch(alice, "target-groups", tg["id"], {"targets": tg["targets"] + [
        {"instance_id": w["db"]["id"], "port": 80}], "health_check": {**HEALTH_CHECK, "interval": 2}})
    assert len(kept["targets"]) == 3 and kept["health_check"]["interval"] == 2
    api.refused("PATCH", f"/v1/target-groups/{tg['id']}", alice, {"targets": [
        {"instance_id": w["web"]["id"], "port": 8080}]}, status=404, field="targets[0].instance_id",
        says=(w["web"]["id"], "not found"))


# --- what the data plane reads -------------------------------------------------------------------------------
def test_the_infrastructure_view_carries_load_balancers_and_target_groups(api, alice):
    w = vpc_with_gateway(api, alice)
    tg = web_group(api, alice, w)
    udp = api.create(alice, "target-groups", {"vpc_id": w["vpc"]["id"], "name": "dns", "protocol": "udp",
                                              "port": 53, "targets": [{"instance_id": w["db"]["id"], "port": 5353}]})
    lb = api.create(alice, "load-balancers", {
        "name": "lb", "subnet_ids": [w["subnet"]["id"]], "private_ip": "10.0.1.100",
        "listeners": [{"protocol": "tcp", "port": 80, "target_group_id": tg["id"]},
                      {"protocol": "udp", "port": 53, "target_group_id": udp["id"]}]})
    view = api.infra()
    vni, vpc, account = w["vpc"]["vni"], w["vpc"]["id"], api.account_id(alice)
    assert view["load_balancers"] == [{
        "id": lb["id"], "account": account, "vpc_id": vpc, "vni": vni, "subnet_id": w["subnet"]["id"],
        "private_ip": "10.0.1.100", "eni_id": lb["eni_id"],
        "listeners": [{"protocol": "tcp", "port": 80, "target_group_id": tg["id"]},
                      {"protocol": "udp", "port": 53, "target_group_id": udp["id"]}]}]
    health_check = {"protocol": "http", "port": None, "path": "/", "interval": 1.0, "timeout": 1.0,
                    "healthy_threshold": 2, "unhealthy_threshold": 2, "matcher": "200-399"}
    groups = {g["id"]: g for g in view["target_groups"]}
    assert groups == {
        tg["id"]: {"id": tg["id"], "account": account, "vpc_id": vpc, "vni": vni, "protocol": "tcp", "port": 80,
                   "health_check": health_check,
                   "targets": [{"id": w["web"]["id"], "ip": "10.0.1.4", "port": 80},
                               {"id": "10.0.1.50", "ip": "10.0.1.50", "port": 8080}]},
        udp["id"]: {"id": udp["id"], "account": account, "vpc_id": vpc, "vni": vni, "protocol": "udp", "port": 53,
                    "health_check": udp["health_check"],
                    "targets": [{"id": w["db"]["id"], "ip": "10.0.1.5", "port": 5353}]}}
    enis = {e["id"]: e for e in view["enis"]}
    assert enis[lb["eni_id"]] == {
        "id": lb["eni_id"], "vni": vni, "vpc_id": vpc, "private_ip": "10.0.1.100", "prefixlen": 24, "host": None,
        "underlay_ip": None, "instance": "", "instance_id": None, "account": account, "source_dest_check": False,
        "interface_type": "network_load_balancer", "subnet_id": w["subnet"]["id"], "security_group_ids": [],
        "connection_tracking": None, "nat_gateway_id": None, "load_balancer_id": lb["id"],
        "ipv6_address": None, "ipv6_prefixlen": None}
    assert enis[w["web"]["eni_id"]]["load_balancer_id"] is None

    # A deleted instance's target is left out; the others stay.
    api.delete(alice, "instances", w["web"]["id"])
    groups = {g["id"]: g for g in api.infra()["target_groups"]}
    assert groups[tg["id"]]["targets"] == [{"id": "10.0.1.50", "ip": "10.0.1.50", "port": 8080}]
    # A re-created instance of that name is another instance: the group names the new one when told so.
    web = api.create(alice, "instances", {"name": "web", "subnet_id": w["subnet"]["id"], "host": "h1",
                                          "private_ip": "10.0.1.40"})
    api.patch(alice, "target-groups", tg["id"], {"targets": [{"instance_id": web["id"], "port": 80}]})
    groups = {g["id"]: g for g in api.infra()["target_groups"]}
    assert groups[tg["id"]]["targets"] == [{"id": web["id"], "ip": "10.0.1.40", "port": 80}]


def test_the_data_plane_leaves_the_load_balancers_eni_alone(api, alice, tmp_path):
    w = vpc_with_gateway(api, alice)
    lb = nlb(api, alice, w, web_group(api, alice, w), private_ip="10.0.1.100")
    view = api.infra()
    assert {e["id"]: e["host"] for e in view["enis"]}[lb["eni_id"]] is None
    vni = w["vpc"]["vni"]
    hosts = {h["name"]: h["underlay_ip"] for h in view["hosts"]}

    # The mapping daemon maps the instances' ENIs only; a stale entry for the load balancer's address goes.
    # A host agent attaches its own instances' ENIs, never a load balancer's.
    table, attached, pending = asyncio.run(data_plane_of(view, tmp_path, stale=(vni, "10.0.1.100")))
    assert table == {vni: {
        "10.0.1.4": (hosts["h1"], addresses.eni_number(w["web"]["eni_id"])),
        "10.0.1.5": (hosts["h2"], addresses.eni_number(w["db"]["eni_id"]))}}
    assert not any(pending.values())
    assert attached == {"h1": [w["web"]["eni_id"]], "h2": [w["db"]["eni_id"]]}
    # A host's policy compiles with the host-less ENI in the view (it is nobody's security group member).
    HostPolicy().apply(view, {})

"""Route tables and elastic IPs through the API: the implicit local route, the route rules, blackholes
after a target goes, elastic IPs (allocate, associate, move, disassociate, release; the pool; accounts;
the internet gateway they need), and what the infrastructure view tells the data plane.

Same harness as ``test_api.py`` (its fixtures: the real app, on SQLite and on etcd).
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import threading

import pytest

from test_api import Api, alice, api, app_and_cp, bob, store_url  # noqa: F401 (the fixtures)
from vswitch.addresses import key
from vswitch.routes import RouteTable

NO_TARGET = {"gateway_id": None, "nat_gateway_id": None, "network_interface_id": None,
             "egress_only_gateway_id": None}


def shown(destination: str, state: str = "active", **target) -> dict:
    """A route as the API answers it."""
    return {"destination": destination, **NO_TARGET, **target, "state": state}


def local(cidr: str) -> dict:
    return shown(cidr, gateway_id="local")


def vpc_with_gateway(api: Api, token: str, cidr: str = "10.0.0.0/16", attached: bool = True) -> dict:
    """A VPC, a subnet (its second /24: 10.0.1.0/24), an internet gateway (attached or not), two instances."""
    vpc = api.create(token, "vpcs", {"cidr_block": cidr})
    net = ipaddress.IPv4Network(cidr)
    subnet = api.create(token, "subnets", {"vpc_id": vpc["id"], "cidr_block": str(
        ipaddress.IPv4Network((int(net.network_address) + 256, 24)))})
    igw = api.create(token, "internet-gateways", {"vpc_id": vpc["id"]} if attached else {})
    web = api.create(token, "instances", {"name": "web", "subnet_id": subnet["id"], "host": "h1"})
    db = api.create(token, "instances", {"name": "db", "subnet_id": subnet["id"], "host": "h2"})
    return {"vpc": vpc, "subnet": subnet, "igw": igw["id"], "web": web, "db": db, "rtb": vpc["main_route_table_id"]}


def states(api: Api, token: str, rtb: str) -> dict[str, str]:
    return {x["destination"]: x["state"] for x in api.get(token, "route-tables", rtb)["routes"]}


def view_table(api: Api, rtb: str) -> dict:
    return next(t for t in api.infra()["route_tables"] if t["id"] == rtb)


# --- route tables ----------------------------------------------------------------------------------------
def test_every_table_shows_its_local_route_first_and_round_trips(api, alice):
    w = vpc_with_gateway(api, alice)
    assert api.get(alice, "route-tables", w["rtb"])["routes"] == [local("10.0.0.0/16")]
    routes = [{"destination": "0.0.0.0/0", "gateway_id": w["igw"]},
              {"destination": "::/0", "gateway_id": w["igw"]},
              {"destination": "192.168.0.0/16", "network_interface_id": w["web"]["eni_id"]}]
    rtb = api.create(alice, "route-tables", {"vpc_id": w["vpc"]["id"], "routes": routes})
    expected = [local("10.0.0.0/16"), shown("0.0.0.0/0", gateway_id=w["igw"]), shown("::/0", gateway_id=w["igw"]),
                shown("192.168.0.0/16", network_interface_id=w["web"]["eni_id"])]
    assert rtb["routes"] == expected
    assert api.get(alice, "route-tables", rtb["id"]) == rtb
    assert [x for x in api.list(alice, "route-tables") if x["id"] == rtb["id"]] == [rtb]
    # What GET answers may be sent back as it is: the local route and the states are read-only.
    again = api.patch(alice, "route-tables", rtb["id"], {"routes": rtb["routes"]})
    assert again["routes"] == expected
    # Leaving the local route out does not remove it.
    assert api.patch(alice, "route-tables", rtb["id"], {"routes": routes[:1]})["routes"] == expected[:2]
    # It is not stored as a route.
    stored_key = f"/res/{api.account_id(alice)}/{rtb['id']}"
    stored = api.run(lambda: api.cp.store.get(stored_key))
    assert b"local" not in stored.value and b"state" not in stored.value


def test_route_rules(api, alice):
    w = vpc_with_gateway(api, alice)
    eni, vpc = w["web"]["eni_id"], w["vpc"]["id"]
    nat = api.create(alice, "nat-gateways", {"subnet_id": w["subnet"]["id"], "connectivity_type": "private"})["id"]
    path = f"/v1/route-tables/{w['rtb']}"

    def refused(routes, status, field, *says):
        api.refused("PATCH", path, alice, {"routes": routes}, status=status, field=field, says=says)
        api.refused("POST", "/v1/route-tables", alice, {"vpc_id": vpc, "routes": routes}, status=status,
                    field=field, says=says)

    refused([{"destination": "10.0.0.0/16", "gateway_id": w["igw"]}], 422, "routes[0].destination",
            "VPC's CIDR", "local route")
    refused([{"destination": "10.0.0.0/16", "network_interface_id": eni}], 422, "routes[0].destination", "local")
    refused([{"destination": "10.1.0.0/16", "gateway_id": "local"}], 422, "routes[0].destination", "10.0.0.0/16")
    # More specific than local: only a whole subnet's CIDR, to an ENI or a NAT gateway.
    refused([{"destination": "10.0.1.0/24", "gateway_id": w["igw"]}], 422, "routes[0].destination",
            "more specific")
    refused([{"destination": "10.0.9.0/24", "network_interface_id": eni}], 422, "routes[0].destination",
            "more specific")
    refused([{"destination": "10.0.1.128/25", "nat_gateway_id": nat}], 422, "routes[0].destination")
    refused([{"destination": "0.0.0.0/0", "gateway_id": w["igw"]}, {"destination": "0.0.0.0/0", "nat_gateway_id": nat}],
            422, "routes[1].destination", "two routes")
    refused([{"destination": "0.0.0.0/0", "egress_only_gateway_id": "eigw-0123456789abcdef0"}], 422,
            "routes[0].destination", "IPv6")
    refused([{"destination": "::/0", "egress_only_gateway_id": "eigw-0123456789abcdef0"}], 404,
            "routes[0].egress_only_gateway_id", "not found")
    refused([{"destination": "0.0.0.0/0", "gateway_id": "igw-0123456789abcdef0"}], 404, "routes[0].gateway_id")
    refused([{"destination": "0.0.0.0/0", "gateway_id": "locale"}], 422, "routes[0].gateway_id", "'local'")
    refused([{"destination": "0.0.0.0/0"}], 422, "routes[0]", "exactly one target")
    spare = api.create(alice, "internet-gateways", {})["id"]
    refused([{"destination": "0.0.0.0/0", "gateway_id": spare}], 422, "routes[0].gateway_id", "not attached")
    assert api.get(alice, "route-tables", w["rtb"])["routes"] == [local("10.0.0.0/16")]  # nothing changed
    # What is accepted: wider than the VPC, both families, a subnet's CIDR to an ENI or NAT gateway.
    ok = [{"destination": "10.0.0.0/8", "gateway_id": w["igw"]},
          {"destination": "2001:db8::/32", "gateway_id": w["igw"]},
          {"destination": "10.0.1.0/24", "network_interface_id": eni}]
    assert [x["destination"] for x in api.patch(alice, "route-tables", w["rtb"], {"routes": ok})["routes"]] == \
        ["10.0.0.0/16", "10.0.0.0/8", "2001:db8::/32", "10.0.1.0/24"]
    ok[2] = {"destination": "10.0.1.0/24", "nat_gateway_id": nat}
    assert api.patch(alice, "route-tables", w["rtb"], {"routes": ok})["routes"][-1]["nat_gateway_id"] == nat
    # Host bits are refused before any rule.
    api.refused("PATCH", path, alice, {"routes": [{"destination": "0.0.0.1/0", "gateway_id": w["igw"]}]},
                status=422, field="routes[0].destination", says=("host bits",))


def test_a_route_whose_target_goes_stays_as_a_blackhole(api, alice):
    w = vpc_with_gateway(api, alice)
    eip = api.create(alice, "elastic-ips", {})["id"]
    nat = api.create(alice, "nat-gateways", {"subnet_id": w["subnet"]["id"], "allocation_id": eip})["id"]
    eni = w["web"]["eni_id"]
    routes = [{"destination": "0.0.0.0/0", "gateway_id": w["igw"]},
              {"destination": "::/0", "gateway_id": w["igw"]},
              {"destination": "192.168.0.0/16", "network_interface_id": eni},
              {"destination": "172.16.0.0/12", "nat_gateway_id": nat}]
    api.patch(alice, "route-tables", w["rtb"], {"routes": routes})
    everything = {"10.0.0.0/16": "active", "0.0.0.0/0": "active", "::/0": "active", "192.168.0.0/16": "active",
                  "172.16.0.0/12": "active"}
    assert states(api, alice, w["rtb"]) == everything

    api.delete(alice, "instances", w["web"]["id"])  # its ENI goes with it: allowed, the route stays
    api.delete(alice, "nat-gateways", nat)  # its address is disassociated: the gateway may be detached below
    everything.update({"192.168.0.0/16": "blackhole", "172.16.0.0/12": "blackhole"})
    assert states(api, alice, w["rtb"]) == everything
    # A detached gateway's routes are blackholes too; attached again, they work again.
    api.patch(alice, "internet-gateways", w["igw"], {"detach": True})
    assert states(api, alice, w["rtb"]) == {**everything, "0.0.0.0/0": "blackhole", "::/0": "blackhole"}
    api.patch(alice, "internet-gateways", w["igw"], {"vpc_id": w["vpc"]["id"]})
    assert states(api, alice, w["rtb"]) == everything
    api.patch(alice, "internet-gateways", w["igw"], {"detach": True})
    api.delete(alice, "internet-gateways", w["igw"])
    gone = {**everything, "0.0.0.0/0": "blackhole", "::/0": "blackhole"}
    assert states(api, alice, w["rtb"]) == gone
    table = api.get(alice, "route-tables", w["rtb"])
    assert [x["network_interface_id"] for x in table["routes"]] == [None, None, None, eni, None]  # kept as it was

    # The infrastructure view says the same, and the data path's table reads it.
    view = view_table(api, w["rtb"])
    assert view == {"id": w["rtb"], "account": api.account_id(alice), "vpc_id": w["vpc"]["id"], "main": True,
                    "routes": [
                        {"destination": "10.0.0.0/16", "target_type": "local", "target_id": None, "state": "active"},
                        {"destination": "0.0.0.0/0", "target_type": "igw", "target_id": w["igw"], "state": "blackhole"},
                        {"destination": "::/0", "target_type": "igw", "target_id": w["igw"], "state": "blackhole"},
                        {"destination": "192.168.0.0/16", "target_type": "eni", "target_id": eni,
                         "state": "blackhole"},
                        {"destination": "172.16.0.0/12", "target_type": "nat", "target_id": nat,
                         "state": "blackhole"}]}
    compiled = RouteTable.compile(view["routes"])
    assert not compiled.lookup(key("192.168.1.1")).active and compiled.lookup(key("10.0.1.4")).active

    # The table can still change: blackhole routes may be kept as they are (renamed, or sent back whole)…
    assert api.patch(alice, "route-tables", w["rtb"], {"name": "main"})["routes"] == table["routes"]
    assert api.patch(alice, "route-tables", w["rtb"], {"routes": table["routes"]})["routes"] == table["routes"]
    kept = table["routes"][1:4] + [{"destination": "198.18.0.0/15", "network_interface_id": w["db"]["eni_id"]}]
    assert states(api, alice, w["rtb"]) == gone
    assert api.patch(alice, "route-tables", w["rtb"], {"routes": kept})["routes"][-1]["state"] == "active"
    # …but a new or changed route needs a live target.
    api.refused("PATCH", f"/v1/route-tables/{w['rtb']}", alice, {"routes": [
        {"destination": "192.168.0.0/24", "network_interface_id": eni}]}, status=404,
        field="routes[0].network_interface_id")
    api.refused("POST", "/v1/route-tables", alice, {"vpc_id": w["vpc"]["id"], "routes": [
        {"destination": "0.0.0.0/0", "gateway_id": w["igw"]}]}, status=404, field="routes[0].gateway_id")


# --- elastic IPs -------------------------------------------------------------------------------------------
def test_elastic_ip_allocate_associate_move_disassociate_release(api, alice):
    w = vpc_with_gateway(api, alice)
    web, db = w["web"], w["db"]
    first = api.create(alice, "elastic-ips", {"name": "front"})
    assert first["id"].startswith("eipalloc-") and first["kind"] == "elastic-ips"
    assert {k: first[k] for k in ("name", "public_ip", "instance_id", "eni_id", "private_ip", "vpc_id")} == {
        "name": "front", "public_ip": "198.51.100.1", "instance_id": None, "eni_id": None, "private_ip": None,
        "vpc_id": None}
    second = api.create(alice, "elastic-ips", {"instance_id": db["id"]})  # associated at once
    assert (second["public_ip"], second["instance_id"], second["eni_id"], second["private_ip"], second["vpc_id"]) == \
        ("198.51.100.2", db["id"], db["eni_id"], db["private_ip"], w["vpc"]["id"])

    assoc = api.patch(alice, "elastic-ips", first["id"], {"instance_id": web["id"]})
    assert (assoc["instance_id"], assoc["eni_id"], assoc["private_ip"], assoc["vpc_id"], assoc["public_ip"]) == \
        (web["id"], web["eni_id"], web["private_ip"], w["vpc"]["id"], "198.51.100.1")
    assert api.get(alice, "elastic-ips", first["id"]) == assoc
    assert api.patch(alice, "elastic-ips", first["id"], {"instance_id": web["id"]})["instance_id"] == web["id"]
    # One per instance: a second is refused, naming the first.
    api.refused("PATCH", f"/v1/elastic-ips/{first['id']}", alice, {"instance_id": db["id"]}, status=409,
                field="instance_id", says=(second["id"], "198.51.100.2", "disassociate"))
    api.refused("POST", "/v1/elastic-ips", alice, {"instance_id": web["id"]}, status=409, field="instance_id",
                says=(first["id"],))
    api.refused("PATCH", f"/v1/elastic-ips/{first['id']}", alice, {"instance_id": db["id"], "disassociate": True},
                status=422, says=("not both",), field="body")
    # Moving one: an update of its instance.
    api.patch(alice, "elastic-ips", second["id"], {"disassociate": True})
    moved = api.patch(alice, "elastic-ips", first["id"], {"instance_id": db["id"], "name": "moved"})
    assert (moved["instance_id"], moved["eni_id"], moved["name"]) == (db["id"], db["eni_id"], "moved")
    assert api.list(alice, "elastic-ips", vpc_id=w["vpc"]["id"]) == [moved]
    assert [x["id"] for x in api.list(alice, "elastic-ips")] == [first["id"], second["id"]]

    # Released only once disassociated; its address is then free for the next allocation.
    api.refused("DELETE", f"/v1/elastic-ips/{first['id']}", alice, status=409,
                says=(first["id"], db["id"], "disassociate"))
    off = api.patch(alice, "elastic-ips", first["id"], {"disassociate": True})
    assert (off["instance_id"], off["eni_id"], off["private_ip"], off["vpc_id"]) == (None, None, None, None)
    assert off["public_ip"] == "198.51.100.1"
    api.delete(alice, "elastic-ips", first["id"])
    api.gone(alice, "elastic-ips", first["id"])
    assert api.create(alice, "elastic-ips", {})["public_ip"] == "198.51.100.1"
    assert [(a["action"], a["status"]) for a in api.audit(alice)][-4:] == [
        ("DeleteElasticIp", 409), ("ModifyElasticIp", 200), ("DeleteElasticIp", 204), ("CreateElasticIp", 201)]


def test_associating_needs_an_attached_internet_gateway(api, alice):
    w = vpc_with_gateway(api, alice, attached=False)
    says = ("instance_id", w["vpc"]["id"], "is not attached to any internet gateway")
    api.refused("POST", "/v1/elastic-ips", alice, {"instance_id": w["web"]["id"]}, status=409, field="instance_id",
                says=says)
    eip = api.create(alice, "elastic-ips", {})
    api.refused("PATCH", f"/v1/elastic-ips/{eip['id']}", alice, {"instance_id": w["web"]["id"]}, status=409,
                field="instance_id", says=says)
    api.patch(alice, "internet-gateways", w["igw"], {"vpc_id": w["vpc"]["id"]})
    assert api.patch(alice, "elastic-ips", eip["id"], {"instance_id": w["web"]["id"]})["instance_id"] == w["web"]["id"]
    # The gateway cannot go while the VPC has associated addresses (the cloud's DependencyViolation).
    api.refused("PATCH", f"/v1/internet-gateways/{w['igw']}", alice, {"detach": True}, status=409, field="detach",
                says=(eip["id"], eip["public_ip"], "disassociate"))
    api.patch(alice, "elastic-ips", eip["id"], {"disassociate": True})
    assert api.patch(alice, "internet-gateways", w["igw"], {"detach": True})["vpc_id"] is None


def test_deleting_an_instance_disassociates_its_address_in_the_same_transaction(api, alice):
    w = vpc_with_gateway(api, alice)
    eip = api.create(alice, "elastic-ips", {"instance_id": w["web"]["id"]})
    assert [p["allocation_id"] for p in api.infra()["public_ips"]] == [eip["id"]]
    before = api.state()
    api.delete(alice, "instances", w["web"]["id"])
    after = api.state()
    assert after["revision"] == before["revision"] + 1  # one transaction
    now = api.get(alice, "elastic-ips", eip["id"])
    assert (now["instance_id"], now["eni_id"], now["private_ip"], now["vpc_id"]) == (None, None, None, None)
    assert now["public_ip"] == eip["public_ip"] and now["updated"] >= eip["created"]  # still allocated
    assert api.infra()["public_ips"] == []
    api.delete(alice, "elastic-ips", eip["id"])
    api.delete(alice, "instances", w["db"]["id"])
    api.delete(alice, "subnets", w["subnet"]["id"])
    api.patch(alice, "internet-gateways", w["igw"], {"detach": True})
    api.delete(alice, "vpcs", w["vpc"]["id"])


def test_the_pool_is_shared_by_accounts_and_can_run_out(api, alice, bob, monkeypatch):
    monkeypatch.setattr(api.cp, "public_ip_pool", ipaddress.IPv4Network("192.0.2.8/30"))  # .9 and .10
    a = api.create(alice, "elastic-ips", {})
    b = api.create(bob, "elastic-ips", {})
    assert (a["public_ip"], b["public_ip"]) == ("192.0.2.9", "192.0.2.10")
    for token in (alice, bob):
        before = api.state()
        api.refused("POST", "/v1/elastic-ips", token, {}, status=409, says=("192.0.2.8/30", "no free address"))
        assert api.state()["data"] == before["data"]
    api.delete(alice, "elastic-ips", a["id"])
    assert api.create(bob, "elastic-ips", {})["public_ip"] == "192.0.2.9"
    assert [x["public_ip"] for x in api.list(bob, "elastic-ips")] == ["192.0.2.10", "192.0.2.9"]
    assert api.list(alice, "elastic-ips") == []


def test_elastic_ips_of_another_account_are_not_there(api, alice, bob):
    a = vpc_with_gateway(api, alice)
    b = vpc_with_gateway(api, bob)
    mine = api.create(alice, "elastic-ips", {"instance_id": a["web"]["id"]})
    theirs = api.create(bob, "elastic-ips", {})
    assert mine["public_ip"] != theirs["public_ip"]
    for method, body in (("GET", None), ("PATCH", {"disassociate": True}), ("DELETE", None)):
        api.refused(method, f"/v1/elastic-ips/{mine['id']}", bob, body, status=404, field=None, says=(mine["id"],))
    api.refused("PATCH", f"/v1/elastic-ips/{theirs['id']}", bob, {"instance_id": a["web"]["id"]}, status=404,
                field="instance_id", says=("not found",))
    api.refused("POST", "/v1/elastic-ips", bob, {"instance_id": a["db"]["id"]}, status=404, field="instance_id")
    assert [x["id"] for x in api.list(bob, "elastic-ips")] == [theirs["id"]]
    assert api.patch(bob, "elastic-ips", theirs["id"], {"instance_id": b["web"]["id"]})["vpc_id"] == b["vpc"]["id"]
    assert api.get(alice, "elastic-ips", mine["id"]) == mine


# --- the infrastructure view ------------------------------------------------------------------------------
def test_the_infrastructure_view_carries_tables_gateways_and_public_addresses(api, alice, bob):
    a = vpc_with_gateway(api, alice)
    b = vpc_with_gateway(api, bob, "10.0.0.0/16", attached=False)  # the same CIDR, another account
    public = api.create(alice, "route-tables", {"vpc_id": a["vpc"]["id"], "name": "public", "routes": [
        {"destination": "0.0.0.0/0", "gateway_id": a["igw"]}]})
    s2 = api.create(alice, "subnets", {"vpc_id": a["vpc"]["id"], "cidr_block": "10.0.2.0/24",
                                       "route_table_id": public["id"]})
    eip = api.create(alice, "elastic-ips", {"instance_id": a["web"]["id"]})
    api.create(alice, "elastic-ips", {})  # not associated: not in the view
    view = api.infra()
    for old in ("revision", "hosts", "vpcs", "enis", "subnets", "security_groups", "network_acls", "flow_logs"):
        assert old in view
    subnets = {s["id"]: s for s in view["subnets"]}
    assert subnets[a["subnet"]["id"]]["route_table_id"] == a["rtb"]  # the main table, by default
    assert subnets[s2["id"]]["route_table_id"] == public["id"]
    assert subnets[b["subnet"]["id"]]["route_table_id"] == b["rtb"]
    assert set(subnets[s2["id"]]) == {"id", "account", "vpc_id", "cidr_block", "network_acl_id", "route_table_id",
                                      "ipv6_cidr_block"}
    tables = {t["id"]: t for t in view["route_tables"]}
    assert set(tables) == {a["rtb"], b["rtb"], public["id"]}
    assert tables[public["id"]] == {
        "id": public["id"], "account": api.account_id(alice), "vpc_id": a["vpc"]["id"], "main": False,
        "routes": [{"destination": "10.0.0.0/16", "target_type": "local", "target_id": None, "state": "active"},
                   {"destination": "0.0.0.0/0", "target_type": "igw", "target_id": a["igw"], "state": "active"}]}
    assert tables[b["rtb"]]["routes"] == [
        {"destination": "10.0.0.0/16", "target_type": "local", "target_id": None, "state": "active"}]
    assert view["internet_gateways"] == [{"id": a["igw"], "account": api.account_id(alice), "vpc_id": a["vpc"]["id"]}]
    vni = api.get(alice, "vpcs", a["vpc"]["id"])["vni"]
    assert view["public_ips"] == [{"public_ip": eip["public_ip"], "private_ip": a["web"]["private_ip"],
                                   "eni_id": a["web"]["eni_id"], "vni": vni, "vpc_id": a["vpc"]["id"],
                                   "allocation_id": eip["id"], "account": api.account_id(alice),
                                   "nat_gateway_id": None}]
    # Every table of the view compiles for the data path.
    for t in view["route_tables"]:
        assert RouteTable.compile(t["routes"]).lookup(key("10.0.0.5")).target_type == "local"


def test_concurrent_allocations_in_several_accounts_get_distinct_addresses(api):
    tokens = [api.account(f"acct{i}") for i in range(3)]
    start = threading.Barrier(12)

    def allocate(i: int):
        start.wait()
        return api.call("POST", "/v1/elastic-ips", tokens[i % 3], {}, via_testclient=True)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(allocate, range(12)))
    assert [r.status_code for r in replies] == [201] * 12, [r.text for r in replies if r.status_code != 201]
    assert sorted(ipaddress.IPv4Address(r.json()["public_ip"]) for r in replies) == \
        [ipaddress.IPv4Address("198.51.100.0") + k for k in range(1, 13)]  # the first 12, no gap


def test_the_pool_is_configurable():
    from vswitch.config import ControlPlaneConfig
    from vswitch.controlplane.service import ControlPlane

    base = {"unix_socket": "/tmp/s", "admin_token_file": "/tmp/t"}
    assert ControlPlaneConfig(**base).public_ip_pool == "198.51.100.0/24"
    assert ControlPlaneConfig(**base, public_ip_pool="203.0.113.0/28").public_ip_pool == "203.0.113.0/28"
    for bad in ("203.0.113.1/28", "2001:db8::/64", "banana"):
        with pytest.raises(ValueError):
            ControlPlaneConfig(**base, public_ip_pool=bad)
    assert ControlPlane(None).public_ip_pool == ipaddress.IPv4Network("198.51.100.0/24")
    assert ControlPlane(None, public_ip_pool="203.0.113.0/28").public_ip_pool.num_addresses == 16

"""IPv6 dual stack through the API: VPC blocks (the region's pool, given ones, the global index, adding
and removing them), subnets' /64s, instances' addresses, the defaults that follow (the default group's
egress, the default ACL's rule 101, new groups' egress), the IPv6 local route and its rules, egress-only
internet gateways, and what the infrastructure view tells the data plane.

Same harness as ``test_api.py`` (its fixtures: the real app, on SQLite and on etcd).
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import threading

import pytest

from test_api import Api, alice, api, app_and_cp, bob, store_url  # noqa: F401 (the fixtures)
from test_routes_api import local, shown
from vswitch import addresses

POOL = ipaddress.IPv6Network("2001:db8:100::/40")  # the control plane's default pool
FIRST, SECOND = (str(n) for n, _ in zip(POOL.subnets(new_prefix=56), range(2)))  # 2001:db8:100::/56, …:100::/56
GIVEN = "2001:db8:ab00::/56"  # outside the pool
ALL_V4 = {"protocol": "-1", "from_port": -1, "to_port": -1, "cidr": "0.0.0.0/0", "source_group_id": None,
          "description": None}
ALL_V6 = {**ALL_V4, "cidr": "::/0"}


def entry(rule: int, egress: bool, cidr: str) -> dict:
    return {"rule_number": rule, "egress": egress, "protocol": "-1", "action": "allow", "cidr": cidr,
            "from_port": -1, "to_port": -1}


V4_ACL = [entry(100, False, "0.0.0.0/0"), entry(100, True, "0.0.0.0/0")]
DUAL_ACL = [entry(100, False, "0.0.0.0/0"), entry(101, False, "::/0"),
            entry(100, True, "0.0.0.0/0"), entry(101, True, "::/0")]


def sixty_four(block: str, n: int) -> str:
    """The n-th /64 of a /56."""
    net = ipaddress.IPv6Network(block)
    return str(ipaddress.IPv6Network((int(net.network_address) + (n << 64), 64)))


def dual_stack(api: Api, token: str, cidr: str = "10.0.0.0/16") -> dict:
    """A VPC with an amazon-provided /56, a subnet 10.0.1.0/24 with its /64 number 1, and two instances."""
    vpc = api.create(token, "vpcs", {"cidr_block": cidr, "amazon_provided_ipv6_cidr_block": True})
    net = ipaddress.IPv4Network(cidr)
    subnet = api.create(token, "subnets", {
        "vpc_id": vpc["id"], "cidr_block": str(ipaddress.IPv4Network((int(net.network_address) + 256, 24))),
        "ipv6_cidr_block": sixty_four(vpc["ipv6_cidr_block"], 1)})
    web = api.create(token, "instances", {"name": "web", "subnet_id": subnet["id"], "host": "h1"})
    db = api.create(token, "instances", {"name": "db", "subnet_id": subnet["id"], "host": "h2"})
    return {"vpc": vpc, "subnet": subnet, "web": web, "db": db, "rtb": vpc["main_route_table_id"]}


# --- VPC blocks -------------------------------------------------------------------------------------------
def test_a_vpc_gets_the_next_free_block_of_the_pool_or_the_one_it_gives(api, alice, bob):
    plain = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})
    assert (plain["ipv6_cidr_block"], plain["amazon_provided_ipv6_cidr_block"]) == (None, False)
    a = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16", "amazon_provided_ipv6_cidr_block": True})
    assert (a["ipv6_cidr_block"], a["amazon_provided_ipv6_cidr_block"]) == (FIRST, True)
    b = api.create(bob, "vpcs", {"cidr_block": "10.0.0.0/16", "amazon_provided_ipv6_cidr_block": True})
    assert b["ipv6_cidr_block"] == SECOND  # the pool is the region's: accounts share it
    given = api.create(alice, "vpcs", {"cidr_block": "10.1.0.0/16", "ipv6_cidr_block": GIVEN})
    assert (given["ipv6_cidr_block"], given["amazon_provided_ipv6_cidr_block"]) == (GIVEN, False)
    assert api.get(alice, "vpcs", given["id"]) == given
    # A /56 is one VPC's, whoever's; the message does not say whose.
    for token, block in ((bob, GIVEN), (bob, FIRST), (alice, SECOND)):
        err = api.refused("POST", "/v1/vpcs", token, {"cidr_block": "10.2.0.0/16", "ipv6_cidr_block": block},
                          status=409, field="ipv6_cidr_block", says=("in use by another VPC", block))
        assert a["id"] not in err["message"] and b["id"] not in err["message"]
    # Its shape: a /56, a network address, IPv6; one way to get it.
    for block, says in (("2001:db8:ab00::/64", "/56"), ("2001:db8:ab00::/48", "/56"),
                        ("2001:db8:ab00::1/56", "host bits"), ("10.0.0.0/16", "not an IPv6"), ("x", "not an IPv6")):
        api.refused("POST", "/v1/vpcs", alice, {"cidr_block": "10.2.0.0/16", "ipv6_cidr_block": block}, status=422,
                    field="ipv6_cidr_block", says=(says,))
    api.refused("POST", "/v1/vpcs", alice, {"cidr_block": "10.2.0.0/16", "ipv6_cidr_block": "2001:db8:cd00::/56",
                                            "amazon_provided_ipv6_cidr_block": True}, status=422,
                field="amazon_provided_ipv6_cidr_block", says=("not both",))
    # Deleting a VPC frees its block: the pool hands it out again, first.
    api.delete(alice, "vpcs", a["id"])
    again = api.create(bob, "vpcs", {"cidr_block": "10.0.0.0/16", "amazon_provided_ipv6_cidr_block": True})
    assert again["ipv6_cidr_block"] == FIRST
    api.delete(alice, "vpcs", given["id"])
    assert api.create(bob, "vpcs", {"cidr_block": "10.9.0.0/16", "ipv6_cidr_block": GIVEN})["ipv6_cidr_block"] == GIVEN


def test_concurrent_vpcs_in_several_accounts_get_distinct_blocks(api):
    tokens = [api.account(f"acct{i}") for i in range(3)]
    start = threading.Barrier(12)

    def create(i: int):
        start.wait()
        body = {"cidr_block": "10.0.0.0/16", "amazon_provided_ipv6_cidr_block": True} if i % 4 else \
            {"cidr_block": "10.0.0.0/16", "ipv6_cidr_block": GIVEN}  # three ask for the same given block
        return api.call("POST", "/v1/vpcs", tokens[i % 3], body, via_testclient=True)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(create, range(12)))
    given = [r for i, r in enumerate(replies) if i % 4 == 0]
    assert sorted(r.status_code for r in given) == [201, 409, 409]
    made = [r.json()["ipv6_cidr_block"] for r in replies if r.status_code == 201]
    assert len(made) == 10 and len(set(made)) == 10
    first_nine = [str(n) for n, _ in zip(POOL.subnets(new_prefix=56), range(9))]
    assert sorted(b for b in made if b != GIVEN) == sorted(first_nine)


def test_an_exhausted_pool_answers_409(api, alice):
    pool = api.cp.ipv6_pool
    api.cp.ipv6_pool = ipaddress.IPv6Network("2001:db8:200::/55")  # two /56s
    try:
        blocks = [api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16", "amazon_provided_ipv6_cidr_block": True})
                  ["ipv6_cidr_block"] for _ in range(2)]
        assert blocks == ["2001:db8:200::/56", "2001:db8:200:100::/56"]
        api.refused("POST", "/v1/vpcs", alice, {"cidr_block": "10.0.0.0/16", "amazon_provided_ipv6_cidr_block": True},
                    status=409, field="amazon_provided_ipv6_cidr_block", says=("no free /56", "2001:db8:200::/55"))
        plain = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})
        api.refused("PATCH", f"/v1/vpcs/{plain['id']}", alice, {"amazon_provided_ipv6_cidr_block": True},
                    status=409, field="amazon_provided_ipv6_cidr_block")
    finally:
        api.cp.ipv6_pool = pool


def test_a_block_is_added_to_a_vpc_and_removed_once_no_subnet_has_one(api, alice, bob):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16", "name": "v"})
    path = f"/v1/vpcs/{vpc['id']}"
    added = api.patch(alice, "vpcs", vpc["id"], {"amazon_provided_ipv6_cidr_block": True})
    assert (added["ipv6_cidr_block"], added["amazon_provided_ipv6_cidr_block"], added["name"]) == (FIRST, True, "v")
    # One block a VPC: another is refused; the same one given again changes nothing.
    api.refused("PATCH", path, alice, {"amazon_provided_ipv6_cidr_block": True}, status=409,
                field="amazon_provided_ipv6_cidr_block", says=("already has", FIRST, "disassociate"))
    api.refused("PATCH", path, alice, {"ipv6_cidr_block": GIVEN}, status=409, field="ipv6_cidr_block",
                says=("already has", FIRST))
    assert api.patch(alice, "vpcs", vpc["id"], {"ipv6_cidr_block": FIRST})["ipv6_cidr_block"] == FIRST
    api.refused("PATCH", path, alice, {"disassociate_ipv6_cidr_block": True, "ipv6_cidr_block": GIVEN}, status=422,
                field="disassociate_ipv6_cidr_block", says=("not both",))
    # Not while a subnet has a /64 of it.
    subnet = api.create(alice, "subnets", {"vpc_id": vpc["id"], "cidr_block": "10.0.1.0/24",
                                           "ipv6_cidr_block": sixty_four(FIRST, 0)})
    api.refused("PATCH", path, alice, {"disassociate_ipv6_cidr_block": True}, status=409,
                field="disassociate_ipv6_cidr_block", says=(subnet["id"], sixty_four(FIRST, 0)))
    assert api.patch(alice, "subnets", subnet["id"], {"disassociate_ipv6_cidr_block": True})["ipv6_cidr_block"] is None
    removed = api.patch(alice, "vpcs", vpc["id"], {"disassociate_ipv6_cidr_block": True})
    assert (removed["ipv6_cidr_block"], removed["amazon_provided_ipv6_cidr_block"]) == (None, False)
    assert api.patch(alice, "vpcs", vpc["id"], {"disassociate_ipv6_cidr_block": True})["ipv6_cidr_block"] is None
    # The block is free again, for anyone; a given block can be added too.
    assert api.create(bob, "vpcs", {"cidr_block": "10.0.0.0/16",
                                    "amazon_provided_ipv6_cidr_block": True})["ipv6_cidr_block"] == FIRST
    api.refused("PATCH", path, alice, {"ipv6_cidr_block": FIRST}, status=409, field="ipv6_cidr_block",
                says=("in use",))
    assert api.patch(alice, "vpcs", vpc["id"], {"ipv6_cidr_block": GIVEN})["ipv6_cidr_block"] == GIVEN
    keys = api.run(lambda: api.cp.store.range("/ipv6-blocks/"))
    assert sorted(x.key for x in keys) == sorted([f"/ipv6-blocks/{FIRST}", f"/ipv6-blocks/{GIVEN}"])


def test_a_block_is_refused_while_a_route_lies_inside_it(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})
    igw = api.create(alice, "internet-gateways", {"vpc_id": vpc["id"]})["id"]
    api.patch(alice, "route-tables", vpc["main_route_table_id"], {"routes": [
        {"destination": "::/0", "gateway_id": igw}, {"destination": "2001:db8:ab00:1::/64", "gateway_id": igw}]})
    api.refused("PATCH", f"/v1/vpcs/{vpc['id']}", alice, {"ipv6_cidr_block": GIVEN}, status=409,
                field="ipv6_cidr_block", says=(vpc["main_route_table_id"], "2001:db8:ab00:1::/64"))
    api.patch(alice, "route-tables", vpc["main_route_table_id"],
              {"routes": [{"destination": "::/0", "gateway_id": igw}]})
    assert api.patch(alice, "vpcs", vpc["id"], {"ipv6_cidr_block": GIVEN})["ipv6_cidr_block"] == GIVEN


# --- the defaults that come with a block --------------------------------------------------------------------
def groups_and_acl(api: Api, token: str, vpc_id: str) -> tuple[list, list]:
    vpc = api.get(token, "vpcs", vpc_id)
    return (api.get(token, "security-groups", vpc["default_security_group_id"])["egress"],
            api.get(token, "network-acls", vpc["default_network_acl_id"])["entries"])


def test_default_group_and_acl_rules_follow_the_block(api, alice):
    plain = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
    assert groups_and_acl(api, alice, plain) == ([ALL_V4], V4_ACL)
    assert api.create(alice, "security-groups", {"vpc_id": plain, "name": "a"})["egress"] == [ALL_V4]
    dual = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16", "amazon_provided_ipv6_cidr_block": True})["id"]
    assert groups_and_acl(api, alice, dual) == ([ALL_V4, ALL_V6], DUAL_ACL)
    # A new group: all out to both families, unless its body says otherwise.
    assert api.create(alice, "security-groups", {"vpc_id": dual, "name": "a"})["egress"] == [ALL_V4, ALL_V6]
    assert api.create(alice, "security-groups", {"vpc_id": dual, "name": "b", "egress": []})["egress"] == []
    # Added later: the defaults gain their ::/0 rules; other groups stay as they are.
    api.patch(alice, "vpcs", plain, {"ipv6_cidr_block": GIVEN})
    assert groups_and_acl(api, alice, plain) == ([ALL_V4, ALL_V6], DUAL_ACL)
    assert [g["egress"] for g in api.list(alice, "security-groups", vpc_id=plain, name="a")] == [[ALL_V4]]
    # Removing the block leaves them (harmless without IPv6); adding one again adds nothing twice.
    api.patch(alice, "vpcs", plain, {"disassociate_ipv6_cidr_block": True})
    api.patch(alice, "vpcs", plain, {"amazon_provided_ipv6_cidr_block": True})
    assert groups_and_acl(api, alice, plain) == ([ALL_V4, ALL_V6], DUAL_ACL)


def test_a_modified_default_direction_is_left_alone(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})
    narrow = [{**ALL_V4, "cidr": "10.0.0.0/8"}]
    api.patch(alice, "security-groups", vpc["default_security_group_id"], {"egress": narrow})
    # The ACL's inbound direction is changed; its outbound one is still the default.
    inbound = [{"rule_number": 10, "action": "deny", "cidr": "192.0.2.0/24"}, {**V4_ACL[0]}]
    api.patch(alice, "network-acls", vpc["default_network_acl_id"], {"entries": inbound + [V4_ACL[1]]})
    api.patch(alice, "vpcs", vpc["id"], {"amazon_provided_ipv6_cidr_block": True})
    egress, entries = groups_and_acl(api, alice, vpc["id"])
    assert egress == narrow
    assert [(e["rule_number"], e["egress"], e["cidr"]) for e in entries] == [
        (10, False, "192.0.2.0/24"), (100, False, "0.0.0.0/0"), (100, True, "0.0.0.0/0"), (101, True, "::/0")]


# --- subnets ----------------------------------------------------------------------------------------------
def test_a_subnet_block_is_a_64_of_its_vpcs_block(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16", "ipv6_cidr_block": GIVEN})["id"]
    plain = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
    first = api.create(alice, "subnets", {"vpc_id": vpc, "cidr_block": "10.0.1.0/24",
                                          "ipv6_cidr_block": sixty_four(GIVEN, 1)})
    assert first["ipv6_cidr_block"] == "2001:db8:ab00:1::/64"
    assert api.get(alice, "subnets", first["id"]) == first
    assert api.create(alice, "subnets", {"vpc_id": vpc, "cidr_block": "10.0.9.0/24"})["ipv6_cidr_block"] is None

    def refused(vpc_id, block, status, *says):
        api.refused("POST", "/v1/subnets", alice, {"vpc_id": vpc_id, "cidr_block": "10.0.2.0/24",
                                                   "ipv6_cidr_block": block}, status=status,
                    field="ipv6_cidr_block", says=says)

    refused(vpc, "2001:db8:ab01::/64", 422, "outside", GIVEN)
    refused(vpc, "2001:db8:ab00:1::/64", 409, "overlaps", first["id"])
    refused(plain, "2001:db8:ab00:2::/64", 422, "has no IPv6 CIDR block", plain)
    refused(vpc, "2001:db8:ab00::/56", 422, "/64")
    refused(vpc, "2001:db8:ab00:2::/65", 422, "/64")
    refused(vpc, "2001:db8:ab00:2::1/64", 422, "host bits")
    refused(vpc, "10.0.2.0/24", 422, "not an IPv6")
    assert len(api.list(alice, "subnets", vpc_id=vpc)) == 2


def test_a_subnet_gains_a_block_and_loses_it_once_no_eni_has_an_address_in_it(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16", "ipv6_cidr_block": GIVEN})["id"]
    subnet = api.create(alice, "subnets", {"vpc_id": vpc, "cidr_block": "10.0.1.0/24", "name": "s"})
    other = api.create(alice, "subnets", {"vpc_id": vpc, "cidr_block": "10.0.2.0/24",
                                          "ipv6_cidr_block": sixty_four(GIVEN, 2)})
    path = f"/v1/subnets/{subnet['id']}"
    before = api.create(alice, "instances", {"name": "before", "subnet_id": subnet["id"], "host": "h1"})
    assert before["ipv6_address"] is None
    api.refused("PATCH", path, alice, {"ipv6_cidr_block": sixty_four(GIVEN, 2)}, status=409,
                field="ipv6_cidr_block", says=("overlaps", other["id"]))
    gained = api.patch(alice, "subnets", subnet["id"], {"ipv6_cidr_block": sixty_four(GIVEN, 1)})
    assert (gained["ipv6_cidr_block"], gained["name"]) == (sixty_four(GIVEN, 1), "s")
    # An ENI made before keeps none (assigning one is explicit, as in the cloud); a new one gets one.
    assert api.get(alice, "instances", before["id"])["ipv6_address"] is None
    after = api.create(alice, "instances", {"name": "after", "subnet_id": subnet["id"], "host": "h1"})
    assert after["ipv6_address"] == "2001:db8:ab00:1::4"
    assert api.patch(alice, "subnets", subnet["id"], {"ipv6_cidr_block": sixty_four(GIVEN, 1)}) == \
        {**gained, "updated": api.get(alice, "subnets", subnet["id"])["updated"]}  # the same block: no change
    api.refused("PATCH", path, alice, {"ipv6_cidr_block": sixty_four(GIVEN, 3)}, status=409,
                field="ipv6_cidr_block", says=("already has", "disassociate"))
    api.refused("PATCH", path, alice, {"disassociate_ipv6_cidr_block": True}, status=409,
                field="disassociate_ipv6_cidr_block", says=(after["eni_id"], "2001:db8:ab00:1::4"))
    api.delete(alice, "instances", after["id"])
    assert api.patch(alice, "subnets", subnet["id"], {"disassociate_ipv6_cidr_block": True})["ipv6_cidr_block"] is None
    assert api.patch(alice, "subnets", subnet["id"], {"ipv6_cidr_block": sixty_four(GIVEN, 3)})["ipv6_cidr_block"] \
        == sixty_four(GIVEN, 3)


# --- instances and ENIs -----------------------------------------------------------------------------------
def test_instance_ipv6_addresses(api, alice):
    w = dual_stack(api, alice)
    net = ipaddress.IPv6Network(w["subnet"]["ipv6_cidr_block"])
    base, sid = {"subnet_id": w["subnet"]["id"], "host": "h1"}, w["subnet"]["id"]
    assert (w["web"]["ipv6_address"], w["db"]["ipv6_address"]) == (str(net[4]), str(net[5]))
    explicit = api.create(alice, "instances", {**base, "name": "x", "ipv6_address": str(net[0x10]).upper()})
    assert explicit["ipv6_address"] == str(net[0x10])  # recorded in its canonical form
    for name, address, status, says in (
            ("r0", str(net[0]), 422, "reserved"), ("r3", str(net[3]), 422, "reserved"),
            ("rl", str(net[-1]), 422, "reserved"), ("out", "2001:db8:ff00::4", 422, "outside"),
            ("dup", str(net[5]), 409, "in use"), ("bad", "10.0.1.9", 422, "not an IPv6")):
        api.refused("POST", "/v1/instances", alice, {**base, "name": name, "ipv6_address": address}, status=status,
                    field="ipv6_address", says=(says,))
    api.delete(alice, "instances", w["web"]["id"])
    assert api.create(alice, "instances", {**base, "name": "next"})["ipv6_address"] == str(net[4])  # reused
    # Records: the instance and its ENI carry the address; every ENI its MAC address.
    eni = api.get(alice, "network-interfaces", explicit["eni_id"])
    assert eni["ipv6_address"] == str(net[0x10])
    assert eni["mac_address"] == addresses.mac_text(addresses.eni_mac(addresses.eni_number(eni["id"])))
    assert eni["mac_address"].startswith("02:")
    # A subnet without a block: no address, and none can be asked for.
    plain = api.create(alice, "subnets", {"vpc_id": w["vpc"]["id"], "cidr_block": "10.0.2.0/24"})["id"]
    assert api.create(alice, "instances", {"name": "v4", "subnet_id": plain, "host": "h1"})["ipv6_address"] is None
    api.refused("POST", "/v1/instances", alice, {"name": "v4b", "subnet_id": plain, "host": "h1",
                                                 "ipv6_address": str(net[0x20])}, status=422, field="ipv6_address",
                says=("no IPv6 CIDR block",))
    # NAT gateways and load balancers are IPv4-only; their ENIs have a MAC address too.
    nat = api.create(alice, "nat-gateways", {"subnet_id": sid, "connectivity_type": "private"})
    lb = api.create(alice, "load-balancers", {"name": "lb", "subnet_ids": [sid]})
    for eni_id in (nat["eni_id"], lb["eni_id"]):
        e = api.get(alice, "network-interfaces", eni_id)
        assert e["ipv6_address"] is None and e["mac_address"].startswith("02:")


# --- routes -----------------------------------------------------------------------------------------------
def test_the_ipv6_local_route_is_listed_second_and_round_trips(api, alice):
    w = dual_stack(api, alice)
    block = w["vpc"]["ipv6_cidr_block"]
    assert api.get(alice, "route-tables", w["rtb"])["routes"] == [local("10.0.0.0/16"), local(block)]
    igw = api.create(alice, "internet-gateways", {"vpc_id": w["vpc"]["id"]})["id"]
    eigw = api.create(alice, "egress-only-internet-gateways", {"vpc_id": w["vpc"]["id"]})["id"]
    routes = [{"destination": "0.0.0.0/0", "gateway_id": igw}, {"destination": "::/0", "egress_only_gateway_id": eigw},
              {"destination": w["subnet"]["ipv6_cidr_block"], "network_interface_id": w["web"]["eni_id"]}]
    rtb = api.create(alice, "route-tables", {"vpc_id": w["vpc"]["id"], "routes": routes})
    expected = [local("10.0.0.0/16"), local(block), shown("0.0.0.0/0", gateway_id=igw),
                shown("::/0", egress_only_gateway_id=eigw),
                shown(w["subnet"]["ipv6_cidr_block"], network_interface_id=w["web"]["eni_id"])]
    assert rtb["routes"] == expected
    assert api.patch(alice, "route-tables", rtb["id"], {"routes": rtb["routes"]})["routes"] == expected
    assert api.patch(alice, "route-tables", rtb["id"], {"routes": routes[:1]})["routes"] == expected[:3]
    # Removing the VPC's block (no subnet has one any more) removes its local route.
    for i in ("web", "db"):
        api.delete(alice, "instances", w[i]["id"])
    api.patch(alice, "subnets", w["subnet"]["id"], {"disassociate_ipv6_cidr_block": True})
    api.patch(alice, "vpcs", w["vpc"]["id"], {"disassociate_ipv6_cidr_block": True})
    assert api.get(alice, "route-tables", rtb["id"])["routes"] == expected[:1] + expected[2:3]


def test_ipv6_route_rules(api, alice):
    w = dual_stack(api, alice)
    block, vpc = w["vpc"]["ipv6_cidr_block"], w["vpc"]["id"]
    eni = w["web"]["eni_id"]
    eigw = api.create(alice, "egress-only-internet-gateways", {"vpc_id": vpc})["id"]
    igw = api.create(alice, "internet-gateways", {"vpc_id": vpc})["id"]
    nat = api.create(alice, "nat-gateways", {"subnet_id": w["subnet"]["id"], "connectivity_type": "private"})["id"]
    other = sixty_four(block, 7)  # no subnet's

    def refused(routes, status, field, *says):
        api.refused("PATCH", f"/v1/route-tables/{w['rtb']}", alice, {"routes": routes}, status=status, field=field,
                    says=says)
        api.refused("POST", "/v1/route-tables", alice, {"vpc_id": vpc, "routes": routes}, status=status, field=field,
                    says=says)

    refused([{"destination": block, "gateway_id": igw}], 422, "routes[0].destination", "IPv6 block", "local route")
    refused([{"destination": block, "network_interface_id": eni}], 422, "routes[0].destination", "local route")
    refused([{"destination": other, "network_interface_id": eni}], 422, "routes[0].destination", "more specific")
    refused([{"destination": w["subnet"]["ipv6_cidr_block"], "nat_gateway_id": nat}], 422, "routes[0].destination",
            "IPv4-only")
    refused([{"destination": w["subnet"]["ipv6_cidr_block"], "gateway_id": igw}], 422, "routes[0].destination",
            "more specific")
    refused([{"destination": "2001:db8:ffff::/48", "gateway_id": "local"}], 422, "routes[0].destination",
            "10.0.0.0/16", block)
    refused([{"destination": "0.0.0.0/0", "egress_only_gateway_id": eigw}], 422, "routes[0].destination", "IPv6")
    # Accepted: ::/0 to the internet gateway or the egress-only one; a subnet's /64 to an ENI; wider blocks.
    for target in ({"gateway_id": igw}, {"egress_only_gateway_id": eigw}):
        api.patch(alice, "route-tables", w["rtb"], {"routes": [{"destination": "::/0", **target}]})
    ok = [{"destination": "2001:db8::/32", "gateway_id": igw},
          {"destination": w["subnet"]["ipv6_cidr_block"], "network_interface_id": eni},
          {"destination": "64:ff9b::/96", "nat_gateway_id": nat}]  # outside the block: NAT64's prefix
    assert [x["destination"] for x in api.patch(alice, "route-tables", w["rtb"], {"routes": ok})["routes"]] == \
        ["10.0.0.0/16", block, "2001:db8::/32", w["subnet"]["ipv6_cidr_block"], "64:ff9b::/96"]


# --- egress-only internet gateways -------------------------------------------------------------------------
def test_egress_only_gateways(api, alice, bob):
    w = dual_stack(api, alice)
    vpc = w["vpc"]["id"]
    eigw = api.create(alice, "egress-only-internet-gateways", {"vpc_id": vpc, "name": "out"})
    assert eigw["id"].startswith("eigw-") and len(eigw["id"]) == len("eigw-") + 17
    assert {k: eigw[k] for k in ("kind", "vpc_id", "name")} == {
        "kind": "egress-only-internet-gateways", "vpc_id": vpc, "name": "out"}
    api.refused("POST", "/v1/egress-only-internet-gateways", alice, {"vpc_id": vpc}, status=409, field="vpc_id",
                says=("already has", eigw["id"]))
    api.refused("POST", "/v1/egress-only-internet-gateways", alice, {}, status=422, field="vpc_id",
                says=("required",))
    api.refused("POST", "/v1/egress-only-internet-gateways", alice, {"vpc_id": "vpc-0123456789abcdef0"}, status=404,
                field="vpc_id")
    api.refused("POST", "/v1/egress-only-internet-gateways", alice, {"vpc_id": w["subnet"]["id"]}, status=422,
                field="vpc_id", says=("expected a vpc- id",))
    api.refused("PATCH", f"/v1/egress-only-internet-gateways/{eigw['id']}", alice, {"vpc_id": vpc}, status=422,
                field="vpc_id", says=("Extra inputs",))  # it stays in its VPC
    assert api.patch(alice, "egress-only-internet-gateways", eigw["id"], {"name": "v6"})["name"] == "v6"
    api.gone(bob, "egress-only-internet-gateways", eigw["id"])
    rtb = api.create(alice, "route-tables", {"vpc_id": vpc, "routes": [
        {"destination": "::/0", "egress_only_gateway_id": eigw["id"]}]})
    api.refused("DELETE", f"/v1/vpcs/{vpc}", alice, status=409, says=(eigw["id"],))
    # Deleting it is allowed: its routes become blackholes; a new one may take its place in the VPC.
    api.delete(alice, "egress-only-internet-gateways", eigw["id"])
    assert api.get(alice, "route-tables", rtb["id"])["routes"][-1] == shown(
        "::/0", "blackhole", egress_only_gateway_id=eigw["id"])
    assert api.patch(alice, "route-tables", rtb["id"], {"routes": [
        {"destination": "::/0", "egress_only_gateway_id": eigw["id"]}]})["routes"][-1]["state"] == "blackhole"
    api.refused("PATCH", f"/v1/route-tables/{rtb['id']}", alice, {"routes": [
        {"destination": "::/1", "egress_only_gateway_id": eigw["id"]}]}, status=404,
        field="routes[0].egress_only_gateway_id")
    api.create(alice, "egress-only-internet-gateways", {"vpc_id": vpc})
    audit = {e["action"] for e in api.audit(alice)}
    assert {"CreateEgressOnlyInternetGateway", "ModifyEgressOnlyInternetGateway",
            "DeleteEgressOnlyInternetGateway"} <= audit


# --- the infrastructure view --------------------------------------------------------------------------------
def test_the_infrastructure_view_carries_ipv6_and_egress_only_gateways(api, alice, bob):
    w = dual_stack(api, alice)
    vpc, block = w["vpc"], w["vpc"]["ipv6_cidr_block"]
    plain = api.create(alice, "subnets", {"vpc_id": vpc["id"], "cidr_block": "10.0.2.0/24"})
    old = api.create(bob, "vpcs", {"cidr_block": "10.0.0.0/16"})
    eigw = api.create(alice, "egress-only-internet-gateways", {"vpc_id": vpc["id"]})["id"]
    api.patch(alice, "route-tables", w["rtb"], {"routes": [{"destination": "::/0", "egress_only_gateway_id": eigw}]})
    tap = api.create(alice, "instances", {"name": "vm", "subnet_id": w["subnet"]["id"], "host": "h2",
                                          "interface_type": "tap", "ipv6_address": sixty_four(block, 1)[:-3] + "a"})
    view = api.infra()
    vpcs = {v["id"]: v for v in view["vpcs"]}
    assert vpcs[vpc["id"]]["ipv6_cidr_block"] == block
    assert vpcs[vpc["id"]]["ipv6_subnets"] == [w["subnet"]["ipv6_cidr_block"]]
    assert sorted(vpcs[vpc["id"]]["subnets"]) == ["10.0.1.0/24", "10.0.2.0/24"]
    assert (vpcs[old["id"]]["ipv6_cidr_block"], vpcs[old["id"]]["ipv6_subnets"]) == (None, [])
    subnets = {s["id"]: s for s in view["subnets"]}
    assert subnets[w["subnet"]["id"]]["ipv6_cidr_block"] == w["subnet"]["ipv6_cidr_block"]
    assert subnets[plain["id"]]["ipv6_cidr_block"] is None
    enis = {e["id"]: e for e in view["enis"]}
    assert (enis[w["web"]["eni_id"]]["ipv6_address"], enis[w["web"]["eni_id"]]["ipv6_prefixlen"]) == (
        w["web"]["ipv6_address"], 64)
    assert {k: enis[tap["eni_id"]][k] for k in ("ipv6_address", "ipv6_prefixlen", "interface_type", "prefixlen")} == {
        "ipv6_address": str(ipaddress.IPv6Network(w["subnet"]["ipv6_cidr_block"])[10]), "ipv6_prefixlen": 64,
        "interface_type": "tap", "prefixlen": 24}
    (table,) = [t for t in view["route_tables"] if t["id"] == w["rtb"]]
    assert table["routes"] == [
        {"destination": "10.0.0.0/16", "target_type": "local", "target_id": None, "state": "active"},
        {"destination": block, "target_type": "local", "target_id": None, "state": "active"},
        {"destination": "::/0", "target_type": "eigw", "target_id": eigw, "state": "active"}]
    assert view["egress_only_gateways"] == [{"id": eigw, "account": api.account_id(alice), "vpc_id": vpc["id"],
                                             "vni": vpc["vni"]}]
    assert view["internet_gateways"] == []
    api.delete(alice, "egress-only-internet-gateways", eigw)
    view = api.infra()
    assert view["egress_only_gateways"] == []
    (table,) = [t for t in view["route_tables"] if t["id"] == w["rtb"]]
    assert table["routes"][-1] == {"destination": "::/0", "target_type": "eigw", "target_id": eigw,
                                   "state": "blackhole"}


def test_records_made_before_ipv6_read_with_its_fields_at_their_defaults(api, alice):
    """Records stored before these fields existed answer as if they had them (None, no block)."""
    w = dual_stack(api, alice)
    account = api.account_id(alice)

    async def strip():
        import json
        for rid, fields in ((w["vpc"]["id"], ("ipv6_cidr_block", "amazon_provided_ipv6_cidr_block")),
                            (w["subnet"]["id"], ("ipv6_cidr_block",)), (w["web"]["id"], ("ipv6_address",)),
                            (w["web"]["eni_id"], ("ipv6_address", "mac_address"))):
            from vswitch.store import Txn
            key = f"/res/{account}/{rid}"
            rec = json.loads((await api.cp.store.get(key)).value)
            for f in fields:
                del rec[f]
            await api.cp.store.commit(Txn(puts={key: json.dumps(rec).encode()}))

    api.run(strip)
    assert api.get(alice, "vpcs", w["vpc"]["id"])["ipv6_cidr_block"] is None
    assert api.get(alice, "subnets", w["subnet"]["id"])["ipv6_cidr_block"] is None
    assert api.get(alice, "instances", w["web"]["id"])["ipv6_address"] is None
    eni = api.get(alice, "network-interfaces", w["web"]["eni_id"])
    assert eni["ipv6_address"] is None and eni["mac_address"].startswith("02:")
    view = api.infra()
    assert [v["ipv6_cidr_block"] for v in view["vpcs"]] == [None]
    assert {e["id"]: e["ipv6_prefixlen"] for e in view["enis"]}[w["web"]["eni_id"]] is None


@pytest.mark.parametrize("body", [{"amazon_provided_ipv6_cidr_block": "maybe"}, {"ipv6_cidr_block": 56},
                                  {"disassociate_ipv6_cidr_block": "x"}])
def test_ipv6_fields_are_typed(api, alice, body):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
    field = next(iter(body))
    api.refused("PATCH", f"/v1/vpcs/{vpc}", alice, body, status=422, field=field)
    api.refused("POST", "/v1/subnets", alice, {"vpc_id": vpc, "cidr_block": "10.0.1.0/24", **body}, status=422,
                field=field)

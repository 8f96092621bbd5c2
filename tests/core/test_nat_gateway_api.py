"""NAT gateways through the API (their control-plane side): created in one transaction with their private
address, their requester-managed ENI and their elastic IP's association; the body's rules (public needs an
elastic IP, private takes none); the internet gateway a public one needs; addresses shared with
instances; what deleting one leaves (the address allocated, routes as blackholes); accounts; the
infrastructure view; and the data plane's consumers of that view (mapping daemon, host agents, edge),
which must carry on with an ENI that has no host and no instance.

Same harness as ``test_api.py`` (its fixtures: the real app, on SQLite and on etcd).
"""

from __future__ import annotations

import asyncio
import ipaddress

from agents.host_agent import HostAgent
from agents.mapping_daemon import MappingDaemon
from test_api import Api, alice, api, app_and_cp, bob, store_url  # noqa: F401 (the fixtures)
from test_routes_api import states, vpc_with_gateway
from vswitch import addresses, config, instance_ns
from vswitch.host_policy import HostPolicy
from vswitch.igw import InternetGateway


def public_nat(api: Api, token: str, w: dict, **fields) -> tuple[dict, dict]:
    """A public NAT gateway in ``w``'s subnet with a fresh elastic IP: (its record, the EIP as allocated)."""
    eip = api.create(token, "elastic-ips", {"name": "nat"})
    nat = api.create(token, "nat-gateways", {"subnet_id": w["subnet"]["id"], "allocation_id": eip["id"], **fields})
    return nat, eip


def requester_managed_eni(api: Api, token: str, owner: dict, owner_field: str, interface_type: str, w: dict,
                          private_ip: str) -> dict:
    """``owner``'s ENI (a NAT gateway's or a load balancer's), checked: requester-managed in ``w``'s subnet
    at ``private_ip``, with no host, instance or group, pointing back at ``owner`` (its ``owner_field``)
    and naming it in its description. Returns it."""
    eni = api.get(token, "network-interfaces", owner["eni_id"])
    assert {k: eni[k] for k in ("subnet_id", "vpc_id", "private_ip", "host", "instance_id", owner_field,
                                "interface_type", "security_group_ids", "source_dest_check", "requester_managed")} == {
        "subnet_id": w["subnet"]["id"], "vpc_id": w["vpc"]["id"], "private_ip": private_ip, "host": None,
        "instance_id": None, owner_field: owner["id"], "interface_type": interface_type, "security_group_ids": [],
        "source_dest_check": False, "requester_managed": True}
    assert owner["id"] in eni["description"]
    return eni


def data(api: Api) -> dict:
    """The store's resource records and address/VNI keys (not the audit log): what a refusal must not change."""
    async def read():
        return {x.key: x.value for prefix in ("/res/", "/public-ips/", "/vni/") for x in await api.cp.store.range(prefix)}
    return api.run(read)


# --- creating ----------------------------------------------------------------------------------------------
def test_a_public_nat_gateway_gets_an_address_an_eni_and_its_elastic_ip(api, alice):
    w = vpc_with_gateway(api, alice)  # web 10.0.1.4, db 10.0.1.5
    nat, eip = public_nat(api, alice, w, name="egress")
    vpc, subnet = w["vpc"]["id"], w["subnet"]["id"]
    assert nat["id"].startswith("nat-") and nat["kind"] == "nat-gateways"
    assert {k: nat[k] for k in ("name", "subnet_id", "vpc_id", "connectivity_type", "private_ip", "public_ip",
                                "allocation_id", "state")} == {
        "name": "egress", "subnet_id": subnet, "vpc_id": vpc, "connectivity_type": "public",
        "private_ip": "10.0.1.6", "public_ip": eip["public_ip"], "allocation_id": eip["id"], "state": "available"}
    assert api.get(alice, "nat-gateways", nat["id"]) == nat

    eni = requester_managed_eni(api, alice, nat, "nat_gateway_id", "nat_gateway", w, "10.0.1.6")
    assert api.ids(alice, "network-interfaces", subnet_id=subnet) == [w["web"]["eni_id"], w["db"]["eni_id"], eni["id"]]

    shown = api.get(alice, "elastic-ips", eip["id"])
    assert {k: shown[k] for k in ("public_ip", "nat_gateway_id", "eni_id", "private_ip", "vpc_id", "instance_id")} == {
        "public_ip": eip["public_ip"], "nat_gateway_id": nat["id"], "eni_id": eni["id"], "private_ip": "10.0.1.6",
        "vpc_id": vpc, "instance_id": None}
    # The gateway's address is taken: the next instance gets the one after it, and nobody can ask for it.
    assert api.create(alice, "instances", {"name": "app", "subnet_id": subnet, "host": "h1"})["private_ip"] == "10.0.1.7"
    api.refused("POST", "/v1/instances", alice, {"name": "x", "subnet_id": subnet, "host": "h1",
                                                 "private_ip": "10.0.1.6"}, status=409, field="private_ip")
    # One transaction: the gateway, its ENI and the elastic IP's association, with one audit record.
    creates = [a for a in api.ok("GET", "/v1/audit", alice) if a["resource"] == nat["id"]]
    assert [(a["action"], a["status"]) for a in creates] == [("CreateNatGateway", 201)]


def test_a_private_nat_gateway_needs_no_elastic_ip_nor_internet_gateway(api, alice):
    w = vpc_with_gateway(api, alice, attached=False)
    nat = api.create(alice, "nat-gateways", {"subnet_id": w["subnet"]["id"], "connectivity_type": "private",
                                             "private_ip": "10.0.1.200"})
    assert {k: nat[k] for k in ("connectivity_type", "private_ip", "public_ip", "allocation_id", "state")} == {
        "connectivity_type": "private", "private_ip": "10.0.1.200", "public_ip": None, "allocation_id": None,
        "state": "available"}
    eni = api.get(alice, "network-interfaces", nat["eni_id"])
    assert (eni["private_ip"], eni["host"], eni["nat_gateway_id"]) == ("10.0.1.200", None, nat["id"])
    api.delete(alice, "nat-gateways", nat["id"])
    api.gone(alice, "network-interfaces", nat["eni_id"])


def test_the_body_rules(api, alice):
    w = vpc_with_gateway(api, alice)
    eip = api.create(alice, "elastic-ips", {})["id"]
    subnet = w["subnet"]["id"]
    before = data(api)
    for body, field, says in (
            ({"subnet_id": subnet}, "allocation_id", "required for a public NAT gateway"),
            ({"subnet_id": subnet, "connectivity_type": "public"}, "allocation_id", "required"),
            ({"subnet_id": subnet, "connectivity_type": "private", "allocation_id": eip}, "allocation_id",
             "private NAT gateway takes no elastic IP"),
            ({"subnet_id": subnet, "connectivity_type": "bridged"}, "connectivity_type", "'public' or 'private'"),
            ({"subnet_id": subnet, "allocation_id": w["igw"]}, "allocation_id", "eipalloc-"),
            ({"subnet_id": subnet, "allocation_id": eip, "private_ip": "10.0.1"}, "private_ip", "not an IPv4"),
            ({"subnet_id": subnet, "allocation_id": eip, "public_ip": "198.51.100.9"}, "public_ip", "not permitted"),
    ):
        api.refused("POST", "/v1/nat-gateways", alice, body, status=422, field=field, says=(says,))
    assert data(api) == before  # nothing written but the audit records


def test_a_public_nat_gateway_needs_an_attached_internet_gateway(api, alice):
    w = vpc_with_gateway(api, alice, attached=False)
    eip = api.create(alice, "elastic-ips", {})
    before = data(api)
    api.refused("POST", "/v1/nat-gateways", alice, {"subnet_id": w["subnet"]["id"], "allocation_id": eip["id"]},
                status=409, field="subnet_id", says=(w["vpc"]["id"], "no internet gateway attached"))
    assert data(api) == before  # no ENI, no association, no address taken
    api.patch(alice, "internet-gateways", w["igw"], {"vpc_id": w["vpc"]["id"]})
    nat = api.create(alice, "nat-gateways", {"subnet_id": w["subnet"]["id"], "allocation_id": eip["id"]})
    assert nat["public_ip"] == eip["public_ip"]


def test_an_elastic_ip_already_associated_is_refused(api, alice):
    w = vpc_with_gateway(api, alice)
    on_web = api.create(alice, "elastic-ips", {"instance_id": w["web"]["id"]})["id"]
    api.refused("POST", "/v1/nat-gateways", alice, {"subnet_id": w["subnet"]["id"], "allocation_id": on_web},
                status=409, field="allocation_id", says=("already associated", w["web"]["id"]))
    nat, eip = public_nat(api, alice, w)
    before = data(api)
    api.refused("POST", "/v1/nat-gateways", alice, {"subnet_id": w["subnet"]["id"], "allocation_id": eip["id"]},
                status=409, field="allocation_id", says=("already associated", nat["id"]))
    assert data(api) == before


def test_the_private_address_rules(api, alice):
    w = vpc_with_gateway(api, alice)
    eip = api.create(alice, "elastic-ips", {})["id"]
    body = {"subnet_id": w["subnet"]["id"], "allocation_id": eip}
    before = data(api)
    api.refused("POST", "/v1/nat-gateways", alice, {**body, "private_ip": w["web"]["private_ip"]}, status=409,
                field="private_ip", says=("already in use",))
    api.refused("POST", "/v1/nat-gateways", alice, {**body, "private_ip": "10.0.2.9"}, status=422,
                field="private_ip", says=("outside subnet",))
    for reserved in ("10.0.1.0", "10.0.1.1", "10.0.1.3", "10.0.1.255"):
        api.refused("POST", "/v1/nat-gateways", alice, {**body, "private_ip": reserved}, status=422,
                    field="private_ip", says=("reserved",))
    assert data(api) == before  # the elastic IP is still free
    assert api.create(alice, "nat-gateways", {**body, "private_ip": "10.0.1.254"})["private_ip"] == "10.0.1.254"
    # A full subnet has no address for a gateway either.
    small = api.create(alice, "subnets", {"vpc_id": w["vpc"]["id"], "cidr_block": "10.0.9.0/28"})["id"]
    for i in range(11):
        api.create(alice, "instances", {"name": f"f{i}", "subnet_id": small, "host": "h1"})
    api.refused("POST", "/v1/nat-gateways", alice, {"subnet_id": small, "connectivity_type": "private"},
                status=409, field="subnet_id", says=("no free address",))


def test_while_it_exists_its_address_and_its_network_stay(api, alice):
    w = vpc_with_gateway(api, alice)
    nat, eip = public_nat(api, alice, w)
    for method, path, body, field in (
            ("PATCH", f"/v1/elastic-ips/{eip['id']}", {"disassociate": True}, "disassociate"),
            ("PATCH", f"/v1/elastic-ips/{eip['id']}", {"instance_id": w["web"]["id"]}, "instance_id"),
            ("DELETE", f"/v1/elastic-ips/{eip['id']}", None, None)):
        api.refused(method, path, alice, body, status=409, field=field, says=(nat["id"], "delete the NAT gateway"))
    api.refused("PATCH", f"/v1/internet-gateways/{w['igw']}", alice, {"detach": True}, status=409, field="detach",
                says=(eip["public_ip"],))
    api.refused("DELETE", f"/v1/subnets/{w['subnet']['id']}", alice, status=409, says=(nat["id"],))
    api.refused("DELETE", f"/v1/vpcs/{w['vpc']['id']}", alice, status=409, says=(nat["id"], nat["eni_id"]))
    # Only its name changes.
    renamed = api.patch(alice, "nat-gateways", nat["id"], {"name": "renamed"})
    assert renamed == {**nat, "name": "renamed", "updated": renamed["updated"]}
    api.refused("PATCH", f"/v1/nat-gateways/{nat['id']}", alice, {"allocation_id": eip["id"]}, status=422,
                field="allocation_id")


def test_deleting_it_frees_its_address_and_eni_and_leaves_blackholes(api, alice):
    w = vpc_with_gateway(api, alice)
    nat, eip = public_nat(api, alice, w)
    private = api.create(alice, "route-tables", {"vpc_id": w["vpc"]["id"], "name": "private", "routes": [
        {"destination": "0.0.0.0/0", "nat_gateway_id": nat["id"]}]})
    assert states(api, alice, private["id"]) == {"10.0.0.0/16": "active", "0.0.0.0/0": "active"}
    api.delete(alice, "nat-gateways", nat["id"])
    api.gone(alice, "nat-gateways", nat["id"])
    api.gone(alice, "network-interfaces", nat["eni_id"])
    shown = api.get(alice, "elastic-ips", eip["id"])  # still the account's, disassociated
    assert shown["public_ip"] == eip["public_ip"]
    assert {k: shown[k] for k in ("nat_gateway_id", "instance_id", "eni_id", "private_ip", "vpc_id")} == dict.fromkeys(
        ("nat_gateway_id", "instance_id", "eni_id", "private_ip", "vpc_id"))
    assert states(api, alice, private["id"]) == {"10.0.0.0/16": "active", "0.0.0.0/0": "blackhole"}
    view = api.infra()
    assert nat["eni_id"] not in {e["id"] for e in view["enis"]} and view["nat_gateways"] == []
    assert eip["public_ip"] not in {p["public_ip"] for p in view["public_ips"]}
    # Its address, its elastic IP and the internet gateway are free again.
    again = api.create(alice, "nat-gateways", {"subnet_id": w["subnet"]["id"], "allocation_id": eip["id"]})
    assert again["private_ip"] == nat["private_ip"]
    api.delete(alice, "nat-gateways", again["id"])
    api.patch(alice, "elastic-ips", eip["id"], {"instance_id": w["web"]["id"]})
    api.patch(alice, "elastic-ips", eip["id"], {"disassociate": True})
    api.delete(alice, "elastic-ips", eip["id"])
    api.patch(alice, "internet-gateways", w["igw"], {"detach": True})


def test_another_accounts_elastic_ip_is_not_there(api, alice, bob):
    a, b = vpc_with_gateway(api, alice), vpc_with_gateway(api, bob)
    theirs = api.create(alice, "elastic-ips", {})["id"]
    nat, _ = public_nat(api, alice, a)
    before = data(api)
    err = api.refused("POST", "/v1/nat-gateways", bob, {"subnet_id": b["subnet"]["id"], "allocation_id": theirs},
                      status=404, field="allocation_id", says=(theirs, "not found"))
    assert api.account_id(alice) not in err["message"]
    assert data(api) == before
    api.refused("GET", f"/v1/network-interfaces/{nat['eni_id']}", bob, status=404)
    assert api.list(bob, "nat-gateways") == [] and nat["eni_id"] not in api.ids(bob, "network-interfaces")


# --- what the data plane reads -------------------------------------------------------------------------------
def nat_world(api: Api, alice: str) -> tuple[dict, dict, dict, dict]:
    """A VPC with web (elastic IP), db, a public and a private NAT gateway."""
    w = vpc_with_gateway(api, alice)
    web_eip = api.create(alice, "elastic-ips", {"instance_id": w["web"]["id"]})
    nat, eip = public_nat(api, alice, w)
    private = api.create(alice, "nat-gateways", {"subnet_id": w["subnet"]["id"], "connectivity_type": "private"})
    return w, web_eip, {**nat, "eip": eip}, private


def test_the_infrastructure_view_carries_nat_gateways_and_their_addresses(api, alice):
    w, web_eip, nat, private = nat_world(api, alice)
    view = api.infra()
    vni, vpc, account = w["vpc"]["vni"], w["vpc"]["id"], api.account_id(alice)
    assert sorted(view["nat_gateways"], key=lambda n: n["private_ip"]) == [  # the view's order: the store's
        {"id": nat["id"], "account": account, "vpc_id": vpc, "vni": vni, "subnet_id": w["subnet"]["id"],
         "private_ip": "10.0.1.6", "public_ip": nat["public_ip"], "allocation_id": nat["allocation_id"],
         "eni_id": nat["eni_id"], "connectivity_type": "public"},
        {"id": private["id"], "account": account, "vpc_id": vpc, "vni": vni, "subnet_id": w["subnet"]["id"],
         "private_ip": "10.0.1.7", "public_ip": None, "allocation_id": None, "eni_id": private["eni_id"],
         "connectivity_type": "private"}]
    public_ips = sorted(view["public_ips"], key=lambda p: p["public_ip"])
    assert public_ips == sorted([
        {"public_ip": web_eip["public_ip"], "private_ip": "10.0.1.4", "eni_id": w["web"]["eni_id"], "vni": vni,
         "vpc_id": vpc, "allocation_id": web_eip["id"], "account": account, "nat_gateway_id": None},
        {"public_ip": nat["public_ip"], "private_ip": "10.0.1.6", "eni_id": nat["eni_id"], "vni": vni,
         "vpc_id": vpc, "allocation_id": nat["allocation_id"], "account": account, "nat_gateway_id": nat["id"]},
    ], key=lambda p: p["public_ip"])
    enis = {e["id"]: e for e in view["enis"]}
    assert enis[nat["eni_id"]] == {
        "id": nat["eni_id"], "vni": vni, "vpc_id": vpc, "private_ip": "10.0.1.6", "prefixlen": 24, "host": None,
        "underlay_ip": None, "instance": "", "instance_id": None, "account": account, "source_dest_check": False,
        "interface_type": "nat_gateway", "subnet_id": w["subnet"]["id"], "security_group_ids": [],
        "connection_tracking": None, "nat_gateway_id": nat["id"], "load_balancer_id": None,
        "ipv6_address": None, "ipv6_prefixlen": None}
    assert enis[w["web"]["eni_id"]]["nat_gateway_id"] is None


async def data_plane_of(view: dict, tmp_path, stale: tuple[int, str]):
    """What the mapping daemon and the host agents h1 and h2 make of ``view``: the daemon's table (after a
    stale entry ``stale`` = (vni, address) was put in first), the ENIs each agent attached, and what each
    left pending."""
    hosts = {h["name"]: h["underlay_ip"] for h in view["hosts"]}
    daemon = MappingDaemon(config.MappingDaemonConfig(name="mapping", control_socket=str(tmp_path / "m.sock"),
                                                      listen="127.0.0.1:1"))
    daemon.service.put(*stale, "198.18.0.99", 0x99)
    await daemon.apply_desired(view)
    attached, pending = {}, {}
    for name in ("h1", "h2"):
        agent = HostAgent(config.HostAgentConfig(name=name, control_socket=str(tmp_path / f"{name}.sock"),
                                                 underlay_ip=hosts[name], mapping="127.0.0.1:1"))

        async def attach(e, vpc, view, name=name):
            attached.setdefault(name, []).append(e["id"])
        agent._attach_desired = attach
        await agent.converge(view)
        pending[name] = agent.pending
    return daemon.service.table, attached, pending


def test_the_data_plane_carries_on_with_host_less_enis(api, alice, tmp_path):
    w, web_eip, nat, private = nat_world(api, alice)
    view = api.infra()
    vni = w["vpc"]["vni"]
    hosts = {h["name"]: h["underlay_ip"] for h in view["hosts"]}

    # The mapping daemon maps the instances' ENIs only; a stale entry for the gateway's address goes.
    # A host agent attaches its own instances' ENIs, never a NAT gateway's.
    table, attached, pending = asyncio.run(data_plane_of(view, tmp_path, stale=(vni, "10.0.1.6")))
    assert table == {vni: {
        "10.0.1.4": (hosts["h1"], addresses.eni_number(w["web"]["eni_id"])),
        "10.0.1.5": (hosts["h2"], addresses.eni_number(w["db"]["eni_id"]))}}
    assert not any(pending.values())
    assert attached == {"h1": [w["web"]["eni_id"]], "h2": [w["db"]["eni_id"]]}

    # The edge binds the instance's elastic IP to its host, the gateway's to the gateway (its flows live
    # on Hyperplane nodes: no host).
    igw = InternetGateway()
    igw.update(view)
    bound = {str(ipaddress.IPv4Address(p)): (b.host, b.nat_gateway_id) for p, b in igw.by_public.items()}
    assert bound[web_eip["public_ip"]][1] is None and bound[web_eip["public_ip"]][0]
    assert sorted(bound) == sorted([web_eip["public_ip"], nat["public_ip"]])
    assert bound[nat["public_ip"]] == (None, nat["id"])
    assert igw.serves(vni, int(ipaddress.IPv4Address("203.0.113.10")))
    # A host's policy compiles with the host-less ENI in the view (it is nobody's security group member).
    HostPolicy().apply(view, {})


def test_an_instances_hosts_file_names_a_neighbour_without_an_instance_by_its_address(tmp_path, monkeypatch):
    monkeypatch.setattr(instance_ns, "NETNS_ETC", tmp_path)
    instance_ns.write_identity("ns", "web", "10.0.1.4", "10.0.0.0/16", "lab-1.compute.internal",
                               [("db", "10.0.1.5"), ("", "10.0.1.6")])  # "": a NAT gateway's ENI
    assert (tmp_path / "ns" / "hosts").read_text().splitlines() == [
        "127.0.0.1 localhost", "10.0.1.4 ip-10-0-1-4.lab-1.compute.internal web",
        "10.0.1.5 ip-10-0-1-5.lab-1.compute.internal db", "10.0.1.6 ip-10-0-1-6.lab-1.compute.internal"]

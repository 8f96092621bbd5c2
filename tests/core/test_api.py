"""The VPC API (vswitch.controlplane): every kind, every rule, accounts, audit, atomicity, the agents' view.

Every test runs twice: on a SQLite store and on a real etcd (the session's ``etcd_endpoint``, one key
prefix per test). The app is the real one, ``build_app(ControlPlane(store))``, driven through Starlette's
``TestClient``; the store is opened in the app's lifespan, so in the event loop that serves the requests
(aetcd's client must live in the loop that uses it).

Tests that first showed a bug keep its description in their docstring or name.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import ipaddress
import json
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from vswitch.controlplane import resources
from vswitch.controlplane.api import build_app
from vswitch.controlplane.service import ControlPlane
from vswitch.store import open_store

ADMIN = "admin-token"
HOSTS = {"h1": "192.168.50.1", "h2": "192.168.50.2"}
ANY = object()  # "the error may name any field (or none)"


# --- the app, on either store ---------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "etcd"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/control-plane.db"
    return f"etcd://{request.getfixturevalue('etcd_endpoint')}/test-api-{uuid.uuid4().hex[:12]}"


class Api:
    """The app under a TestClient, plus the helpers the tests share.

    The TestClient runs the app (its lifespan opens the store) in its event loop thread. Requests go
    through it (``via_testclient=True``), or, by default and 2-3 times faster, through an httpx
    AsyncClient on the app's ASGI interface run in that same loop: one hop between threads per request
    instead of several. Both reach the same app, store and loop.
    """

    def __init__(self, client: TestClient, cp: ControlPlane):
        self.client = client
        self.cp = cp
        self._ids: dict[str, str] = {}

        async def make():
            return httpx.AsyncClient(base_url="http://testserver", transport=httpx.ASGITransport(
                app=client.app, raise_app_exceptions=False, client=("testclient", 50000)))

        self.http: httpx.AsyncClient = self.run(make)

    def close(self) -> None:
        self.run(self.http.aclose)

    # -- plumbing
    def run(self, fn, *args):
        """Run ``await fn(*args)`` in the app's event loop (where the store lives)."""
        return self.client.portal.call(fn, *args)

    def call(self, method: str, path: str, token: str | None = ADMIN, body: Any = None,
             params: dict | None = None, request_id: str | None = None, via_testclient: bool = False):
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        if via_testclient:
            return self.client.request(method, path, json=body, params=params, headers=headers)
        return self.run(functools.partial(self.http.request, method, path, json=body, params=params,
                                          headers=headers))

    def ok(self, method: str, path: str, token: str | None = ADMIN, body: Any = None, params: dict | None = None,
           status: int | None = None, request_id: str | None = None) -> Any:
        r = self.call(method, path, token, body, params, request_id)
        expected = status or {"POST": 201, "DELETE": 204}.get(method, 200)
        assert r.status_code == expected, f"{method} {path} {body}: {r.status_code} {r.text}"
        return None if r.status_code == 204 else r.json()

    def refused(self, method: str, path: str, token: str | None, body: Any = None, *, status: int,
                field: Any = None, says: tuple[str, ...] = (), params: dict | None = None,
                request_id: str | None = None) -> dict:
        """Assert a refusal: its status, the error shape, the field it names (also in the message)."""
        r = self.call(method, path, token, body, params, request_id)
        assert r.status_code == status, f"{method} {path} {body}: {r.status_code} {r.text}"
        err = r.json()["error"]
        assert set(err) == {"status", "message", "field"} and err["status"] == status
        assert isinstance(err["message"], str) and err["message"]
        if field is not ANY:
            assert err["field"] == field, err
            if field is not None:
                assert field in err["message"], err
        for words in says:
            assert words in err["message"], err
        return err

    # -- shortcuts
    def create(self, token: str, collection: str, body: dict) -> dict:
        return self.ok("POST", f"/v1/{collection}", token, body)

    def get(self, token: str, collection: str, rid: str) -> dict:
        return self.ok("GET", f"/v1/{collection}/{rid}", token)

    def patch(self, token: str, collection: str, rid: str, body: dict) -> dict:
        return self.ok("PATCH", f"/v1/{collection}/{rid}", token, body)

    def delete(self, token: str, collection: str, rid: str) -> None:
        self.ok("DELETE", f"/v1/{collection}/{rid}", token)

    def list(self, token: str, collection: str, **filters) -> list[dict]:
        return self.ok("GET", f"/v1/{collection}", token, params=filters or None)

    def ids(self, token: str, collection: str, **filters) -> list[str]:
        return [x["id"] for x in self.list(token, collection, **filters)]

    def gone(self, token: str, collection: str, rid: str) -> None:
        self.refused("GET", f"/v1/{collection}/{rid}", token, status=404, says=(rid, "not found"))

    def account(self, name: str) -> str:
        """Create an account; return its token."""
        rec = self.create(ADMIN, "accounts", {"name": name})
        assert rec["name"] == name and rec["id"].startswith("acct-") and rec["token"]
        return rec["token"]

    def account_id(self, token: str) -> str:
        if token not in self._ids:
            self._ids[token] = self.ok("GET", "/v1/whoami", token)["account"]
        return self._ids[token]

    def audit(self, token: str = ADMIN) -> list[dict]:
        return self.ok("GET", "/v1/audit", token)

    def infra(self, **params) -> dict:
        return self.ok("GET", "/v1/infra/desired", ADMIN, params=params or None)

    def long_poll(self, after: int, wait: float) -> dict:
        r = self.call("GET", "/v1/infra/desired", params={"after": after, "wait": wait}, via_testclient=True)
        assert r.status_code == 200, r.text
        return r.json()

    def state(self) -> dict:
        """Everything in the store but the audit log, the store revision, and the audit log's size."""
        async def read():
            store = self.cp.store
            data = {x.key: (x.value, x.mod_revision) for x in await store.range("/")
                    if not x.key.startswith("/audit/")}
            return {"data": data, "revision": await store.revision(),
                    "audit": len(await store.range("/audit/"))}
        return self.run(read)


@pytest.fixture(scope="module")
def app_and_cp():
    """One app for the module (building it takes ~50 ms); each test gives it a fresh store."""
    cp = ControlPlane(None)  # the store is opened by each test's lifespan
    return build_app(cp), cp


def serve_store(app, cp: ControlPlane, store_url: str) -> None:
    """Open the store, with the ADMIN token, in the app's lifespan: in the TestClient's event loop,
    where the store is used."""
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        async with open_store(store_url) as store:
            cp.store = store
            await cp.ensure_admin_token(ADMIN)
            try:
                yield
            finally:
                cp.store = None

    app.router.lifespan_context = lifespan


@pytest.fixture
def api(app_and_cp, store_url):
    app, cp = app_and_cp
    serve_store(app, cp, store_url)
    with TestClient(app, raise_server_exceptions=False) as client:
        a = Api(client, cp)
        for name, ip in HOSTS.items():
            a.ok("POST", "/v1/hosts", ADMIN, {"name": name, "underlay_ip": ip})
        yield a
        a.close()


@pytest.fixture
def alice(api) -> str:
    return api.account("alice")


@pytest.fixture
def bob(api) -> str:
    return api.account("bob")


# --- a world: one resource of every kind, for one account -----------------------------------------------
def build_world(api: Api, token: str, n: int = 0) -> dict[str, str]:
    """One resource of every kind (and a few more) in one VPC 10.<n>.0.0/16: collection -> id."""
    w: dict[str, str] = {}
    w["dhcp-options"] = api.create(token, "dhcp-options", {"name": "corp", "domain_name": "corp.example",
                                                            "domain_name_servers": ["10.0.0.2"]})["id"]
    vpc = api.create(token, "vpcs", {"name": "main", "cidr_block": f"10.{n}.0.0/16",
                                     "dhcp_options_id": w["dhcp-options"]})
    w["vpcs"] = vpc["id"]
    w["main-route-table"] = vpc["main_route_table_id"]
    w["default-acl"] = vpc["default_network_acl_id"]
    w["default-sg"] = vpc["default_security_group_id"]
    w["subnets"] = api.create(token, "subnets", {"vpc_id": vpc["id"], "cidr_block": f"10.{n}.1.0/24",
                                                 "name": "web"})["id"]
    w["security-groups"] = api.create(token, "security-groups", {
        "vpc_id": vpc["id"], "name": "web", "description": "web servers",
        "ingress": [{"protocol": "tcp", "from_port": 80, "to_port": 80, "cidr": "0.0.0.0/0"}]})["id"]
    inst = api.create(token, "instances", {"name": "web-1", "subnet_id": w["subnets"], "host": "h1",
                                           "security_group_ids": [w["security-groups"]]})
    w["instances"], w["network-interfaces"] = inst["id"], inst["eni_id"]
    w["network-acls"] = api.create(token, "network-acls", {"vpc_id": vpc["id"], "name": "strict", "entries": [
        {"rule_number": 10, "action": "deny", "cidr": "192.0.2.0/24"}]})["id"]
    w["internet-gateways"] = api.create(token, "internet-gateways", {"vpc_id": vpc["id"], "name": "gw"})["id"]
    w["egress-only-internet-gateways"] = api.create(token, "egress-only-internet-gateways", {
        "vpc_id": vpc["id"], "name": "v6-out"})["id"]
    # A second VPC (one egress-only gateway a VPC: a fresh one goes there), with its own defaults.
    spare = api.create(token, "vpcs", {"name": "spare", "cidr_block": f"10.{n}.0.0/16"})
    w["spare-vpc"], w["spare-rtb"] = spare["id"], spare["main_route_table_id"]
    w["spare-acl"], w["spare-sg"] = spare["default_network_acl_id"], spare["default_security_group_id"]
    w["elastic-ips"] = api.create(token, "elastic-ips", {"name": "web", "instance_id": w["instances"]})["id"]
    w["nat-eip"] = api.create(token, "elastic-ips", {"name": "nat"})["id"]
    nat = api.create(token, "nat-gateways", {"subnet_id": w["subnets"], "name": "nat", "allocation_id": w["nat-eip"]})
    w["nat-gateways"], w["nat-eni"] = nat["id"], nat["eni_id"]
    w["route-tables"] = api.create(token, "route-tables", {"vpc_id": vpc["id"], "name": "public", "routes": [
        {"destination": "0.0.0.0/0", "gateway_id": w["internet-gateways"]},
        {"destination": "::/0", "egress_only_gateway_id": w["egress-only-internet-gateways"]}]})["id"]
    w["target-groups"] = api.create(token, "target-groups", {
        "vpc_id": vpc["id"], "name": "web", "protocol": "tcp", "port": 80,
        "targets": [{"instance_id": w["instances"], "port": 80}]})["id"]
    nlb = api.create(token, "load-balancers", {
        "name": "web", "subnet_ids": [w["subnets"]],
        "listeners": [{"protocol": "tcp", "port": 80, "target_group_id": w["target-groups"]}]})
    w["load-balancers"], w["nlb-eni"] = nlb["id"], nlb["eni_id"]
    w["flow-logs"] = api.create(token, "flow-logs", {"resource_id": vpc["id"], "traffic_type": "ALL"})["id"]
    w["dns-zones"] = api.create(token, "dns-zones", {
        "name": "corp.internal", "vpc_ids": [vpc["id"]],
        "records": [{"name": "web.corp.internal", "type": "A", "values": [inst["private_ip"]]}]})["id"]
    return w


def every_resource(w: dict[str, str]) -> list[tuple[str, str]]:
    """(collection, id) of every resource of a world, the VPC's own defaults included."""
    out = [(c, rid) for c, rid in w.items() if c in resources.KINDS]
    return out + [("route-tables", w["main-route-table"]), ("network-acls", w["default-acl"]),
                  ("security-groups", w["default-sg"]), ("elastic-ips", w["nat-eip"]),
                  ("network-interfaces", w["nat-eni"]), ("network-interfaces", w["nlb-eni"]),
                  ("vpcs", w["spare-vpc"]), ("route-tables", w["spare-rtb"]), ("network-acls", w["spare-acl"]),
                  ("security-groups", w["spare-sg"])]


# For each kind: a fresh resource's body (in a world), a change to it, and what the change must show.
SPECS: dict[str, tuple] = {
    "vpcs": (lambda w: {"cidr_block": "10.200.0.0/16", "name": "extra"},
             lambda w: {"name": "renamed", "dhcp_options_id": w["dhcp-options"]},
             lambda w: {"name": "renamed", "dhcp_options_id": w["dhcp-options"]}),
    "subnets": (lambda w: {"vpc_id": w["vpcs"], "cidr_block": "10.0.2.0/24"},
                lambda w: {"name": "renamed", "route_table_id": w["route-tables"],
                           "network_acl_id": w["network-acls"]},
                lambda w: {"name": "renamed", "route_table_id": w["route-tables"],
                           "network_acl_id": w["network-acls"]}),
    "instances": (lambda w: {"name": "extra-1", "subnet_id": w["subnets"], "host": "h1"},
                  lambda w: {"name": "extra-2", "source_dest_check": False,
                             "security_group_ids": [w["security-groups"], w["default-sg"]]},
                  lambda w: {"name": "extra-2", "source_dest_check": False,
                             "security_group_ids": [w["security-groups"], w["default-sg"]]}),
    "security-groups": (lambda w: {"vpc_id": w["vpcs"], "name": "extra"},
                        lambda w: {"description": "db", "ingress": [{
                            "protocol": "udp", "from_port": 53, "to_port": 53, "cidr": None,
                            "source_group_id": w["security-groups"], "description": None}]},
                        lambda w: {"description": "db", "ingress": [{
                            "protocol": "udp", "from_port": 53, "to_port": 53, "cidr": None,
                            "source_group_id": w["security-groups"], "description": None}]}),
    "network-acls": (lambda w: {"vpc_id": w["vpcs"], "name": "extra"},
                     lambda w: {"entries": [{"rule_number": 5, "egress": True, "protocol": "tcp", "action": "allow",
                                             "cidr": "10.0.0.0/8", "from_port": 443, "to_port": 443}]},
                     lambda w: {"name": "extra", "entries": [{
                         "rule_number": 5, "egress": True, "protocol": "tcp", "action": "allow",
                         "cidr": "10.0.0.0/8", "from_port": 443, "to_port": 443}]}),
    "route-tables": (lambda w: {"vpc_id": w["vpcs"], "name": "extra"},
                     lambda w: {"routes": [{
                         "destination": "10.99.0.0/16", "network_interface_id": w["network-interfaces"],
                         "gateway_id": None, "nat_gateway_id": None, "egress_only_gateway_id": None}]},
                     lambda w: {"main": False, "routes": [{  # the implicit local route first, and states
                         "destination": "10.0.0.0/16", "gateway_id": "local", "nat_gateway_id": None,
                         "network_interface_id": None, "egress_only_gateway_id": None, "state": "active"}, {
                         "destination": "10.99.0.0/16", "network_interface_id": w["network-interfaces"],
                         "gateway_id": None, "nat_gateway_id": None, "egress_only_gateway_id": None,
                         "state": "active"}]}),
    "egress-only-internet-gateways": (lambda w: {"vpc_id": w["spare-vpc"], "name": "extra"},
                                      lambda w: {"name": "renamed"},
                                      lambda w: {"name": "renamed", "vpc_id": w["spare-vpc"]}),
    "internet-gateways": (lambda w: {"name": "extra"},
                          lambda w: {"name": "renamed"},
                          lambda w: {"name": "renamed", "vpc_id": None}),
    "elastic-ips": (lambda w: {"name": "extra"},
                    lambda w: {"name": "renamed"},
                    lambda w: {"name": "renamed", "instance_id": None, "vpc_id": None}),
    "nat-gateways": (lambda w: {"subnet_id": w["subnets"], "name": "extra", "connectivity_type": "private"},
                     lambda w: {"name": "renamed"},
                     lambda w: {"name": "renamed", "vpc_id": w["vpcs"], "subnet_id": w["subnets"]}),
    "target-groups": (lambda w: {"vpc_id": w["vpcs"], "name": "extra", "protocol": "udp", "port": 53},
                      lambda w: {"targets": [{"instance_id": None, "ip": "10.0.1.50", "port": 53}],
                                 "health_check": {"protocol": "tcp", "interval": 5}},
                      lambda w: {"targets": [{"instance_id": None, "ip": "10.0.1.50", "port": 53}]}),
    "load-balancers": (lambda w: {"name": "extra", "subnet_ids": [w["subnets"]]},
                       lambda w: {"listeners": [{"protocol": "tcp", "port": 8080,
                                                 "target_group_id": w["target-groups"]}]},
                       lambda w: {"vpc_id": w["vpcs"], "listeners": [{
                           "protocol": "tcp", "port": 8080, "target_group_id": w["target-groups"]}]}),
    "flow-logs": (lambda w: {"resource_id": w["subnets"], "traffic_type": "REJECT"},
                  lambda w: {"name": "renamed"},
                  lambda w: {"name": "renamed", "resource_id": w["subnets"], "traffic_type": "REJECT"}),
    "dhcp-options": (lambda w: {"name": "extra"},
                     lambda w: {"name": "renamed"},
                     lambda w: {"name": "renamed", "domain_name": "lab-1.compute.internal",
                                "domain_name_servers": ["AmazonProvidedDNS"]}),
    "dns-zones": (lambda w: {"name": "extra.internal"},
                  lambda w: {"vpc_ids": [w["vpcs"]],
                             "records": [{"name": "db.extra.internal", "type": "CNAME", "ttl": 300,
                                          "values": ["db.example"]}]},
                  lambda w: {"vpc_ids": [w["vpcs"]], "records": [{
                      "name": "db.extra.internal", "type": "CNAME", "ttl": 300, "values": ["db.example"]}]}),
}


@pytest.mark.parametrize("collection", sorted(SPECS))
def test_create_describe_list_modify_delete(api, alice, collection):
    w = build_world(api, alice)
    body, change, shows = SPECS[collection]
    kind = resources.KINDS[collection]
    before = api.ids(alice, collection)

    rec = api.create(alice, collection, body(w))
    assert rec["id"].startswith(kind.prefix + "-") and rec["kind"] == collection
    assert rec["account"] == api.account_id(alice) and isinstance(rec["created"], float)
    for k, v in body(w).items():
        assert rec[k] == v, k
    assert api.get(alice, collection, rec["id"]) == rec
    assert api.ids(alice, collection) == before + [rec["id"]]  # in creation order

    changed = api.patch(alice, collection, rec["id"], change(w))
    for k, v in shows(w).items():
        assert changed[k] == v, k
    assert changed["id"] == rec["id"] and changed["created"] == rec["created"] and changed["updated"] >= rec["created"]
    assert api.get(alice, collection, rec["id"]) == changed
    assert api.list(alice, collection)[-1] == changed

    api.delete(alice, collection, rec["id"])
    api.gone(alice, collection, rec["id"])
    assert api.ids(alice, collection) == before
    api.refused("DELETE", f"/v1/{collection}/{rec['id']}", alice, status=404)
    api.refused("PATCH", f"/v1/{collection}/{rec['id']}", alice, {}, status=404)
    for c, rid in every_resource(w):  # the rest of the world is untouched
        api.get(alice, c, rid)


def test_network_interfaces_come_with_instances_and_are_read_only(api, alice):
    # With the kinds in SPECS (tested above), this covers every kind of the registry.
    assert set(SPECS) | {"network-interfaces"} == set(resources.KINDS)
    kind = resources.KINDS["network-interfaces"]
    assert kind.create is None and kind.update is None
    w = build_world(api, alice)
    inst = api.get(alice, "instances", w["instances"])
    eni = api.get(alice, "network-interfaces", inst["eni_id"])
    assert eni["kind"] == "network-interfaces" and len(eni["id"]) == len("eni-") + 16
    assert {k: eni[k] for k in ("subnet_id", "vpc_id", "host", "private_ip", "security_group_ids",
                                "source_dest_check", "interface_type")} == \
        {k: inst[k] for k in ("subnet_id", "vpc_id", "host", "private_ip", "security_group_ids",
                              "source_dest_check", "interface_type")}
    assert eni["instance_id"] == inst["id"]
    # The NAT gateway's and the load balancer's ENIs come with them (their shapes: test_nat_gateway_api.py,
    # test_nlb_api.py).
    nat_eni = api.get(alice, "network-interfaces", w["nat-eni"])
    assert nat_eni["nat_gateway_id"] == w["nat-gateways"] and nat_eni["instance_id"] is None
    nlb_eni = api.get(alice, "network-interfaces", w["nlb-eni"])
    assert nlb_eni["load_balancer_id"] == w["load-balancers"] and nlb_eni["instance_id"] is None
    assert api.list(alice, "network-interfaces") == [eni, nat_eni, nlb_eni]
    for e in (eni, nat_eni, nlb_eni):
        for method, path in (("POST", "/v1/network-interfaces"), ("PATCH", f"/v1/network-interfaces/{e['id']}"),
                             ("DELETE", f"/v1/network-interfaces/{e['id']}")):
            assert api.call(method, path, alice, {"subnet_id": w["subnets"]}).status_code == 405
        assert api.get(alice, "network-interfaces", e["id"]) == e


def test_list_filters(api, alice):
    v1 = api.create(alice, "vpcs", {"cidr_block": "10.1.0.0/16", "name": "one"})["id"]
    v2 = api.create(alice, "vpcs", {"cidr_block": "10.2.0.0/16", "name": "two"})["id"]
    s1 = api.create(alice, "subnets", {"vpc_id": v1, "cidr_block": "10.1.1.0/24", "name": "a"})["id"]
    s1b = api.create(alice, "subnets", {"vpc_id": v1, "cidr_block": "10.1.2.0/24", "name": "b"})["id"]
    s2 = api.create(alice, "subnets", {"vpc_id": v2, "cidr_block": "10.2.1.0/24", "name": "a"})["id"]
    i1 = api.create(alice, "instances", {"name": "i1", "subnet_id": s1, "host": "h1"})
    i2 = api.create(alice, "instances", {"name": "i2", "subnet_id": s1b, "host": "h2"})
    i3 = api.create(alice, "instances", {"name": "i3", "subnet_id": s2, "host": "h2"})
    g = api.create(alice, "security-groups", {"vpc_id": v2, "name": "a"})["id"]

    assert api.ids(alice, "vpcs") == [v1, v2]
    assert api.ids(alice, "vpcs", name="two") == [v2]
    assert api.ids(alice, "subnets", vpc_id=v1) == [s1, s1b]
    assert api.ids(alice, "subnets", vpc_id=v2) == [s2]
    assert api.ids(alice, "subnets", name="a") == [s1, s2]
    assert api.ids(alice, "subnets", vpc_id=v2, name="a") == [s2]
    assert api.ids(alice, "subnets", vpc_id=v2, name="b") == []
    assert api.ids(alice, "instances", subnet_id=s1b) == [i2["id"]]
    assert api.ids(alice, "instances", vpc_id=v1) == [i1["id"], i2["id"]]
    assert api.ids(alice, "instances", host="h2") == [i2["id"], i3["id"]]
    assert api.ids(alice, "instances", host="h2", vpc_id=v2) == [i3["id"]]
    assert api.ids(alice, "instances", name="i1") == [i1["id"]]
    assert api.ids(alice, "network-interfaces", host="h1") == [i1["eni_id"]]
    assert api.ids(alice, "network-interfaces", subnet_id=s2) == [i3["eni_id"]]
    assert api.ids(alice, "network-interfaces", vpc_id=v1) == [i1["eni_id"], i2["eni_id"]]
    sgs = api.list(alice, "security-groups", vpc_id=v2)
    assert [x["name"] for x in sgs] == ["default", "a"] and sgs[1]["id"] == g
    assert api.ids(alice, "security-groups", name="default") == [
        api.get(alice, "vpcs", v)["default_security_group_id"] for v in (v1, v2)]
    assert [x["main"] for x in api.list(alice, "route-tables", vpc_id=v1)] == [True]
    assert api.ids(alice, "subnets", vpc_id="vpc-00000000000000000") == []
    assert api.ids(alice, "instances", host="nowhere") == []


# --- rules --------------------------------------------------------------------------------------------
def test_vpc_cidr_must_be_a_network_from_16_to_28(api, alice):
    for cidr in ("10.0.0.0/16", "10.1.0.0/28", "172.16.0.0/20"):
        assert api.create(alice, "vpcs", {"cidr_block": cidr})["cidr_block"] == cidr
    for cidr, says in (("10.0.0.0/8", "/8"), ("10.0.0.0/15", "/15"), ("10.0.0.0/29", "/29"),
                       ("10.0.0.0/32", "/32"), ("10.0.0.1/16", "host bits"), ("10.0.1.0/16", "10.0.0.0/16"),
                       ("banana", "not an IPv4 CIDR"), ("10.0.0.0/33", "not an IPv4 CIDR"),
                       ("fd00::/48", "not an IPv4 CIDR")):
        api.refused("POST", "/v1/vpcs", alice, {"cidr_block": cidr}, status=422, field="cidr_block", says=(says,))
    api.refused("POST", "/v1/vpcs", alice, {}, status=422, field="cidr_block", says=("required",))
    assert len(api.list(alice, "vpcs")) == 3


def test_subnet_inside_its_vpc_and_not_overlapping_a_sibling(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
    other = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]  # VPCs may overlap each other
    first = api.create(alice, "subnets", {"vpc_id": vpc, "cidr_block": "10.0.1.0/24"})
    assert (first["route_table_id"], first["network_acl_id"]) == (
        api.get(alice, "vpcs", vpc)["main_route_table_id"], api.get(alice, "vpcs", vpc)["default_network_acl_id"])
    for cidr in ("10.1.0.0/24", "11.0.0.0/16", "192.168.0.0/24"):
        api.refused("POST", "/v1/subnets", alice, {"vpc_id": vpc, "cidr_block": cidr}, status=422,
                    field="cidr_block", says=("outside", vpc))
    for cidr in ("10.0.1.128/25", "10.0.0.0/16", "10.0.1.0/24", "10.0.0.0/23"):
        api.refused("POST", "/v1/subnets", alice, {"vpc_id": vpc, "cidr_block": cidr}, status=409,
                    field="cidr_block", says=("overlaps", first["id"]))
    for cidr, says in (("10.0.2.0/29", "/29"), ("10.0.2.1/24", "host bits")):
        api.refused("POST", "/v1/subnets", alice, {"vpc_id": vpc, "cidr_block": cidr}, status=422,
                    field="cidr_block", says=(says,))
    api.create(alice, "subnets", {"vpc_id": vpc, "cidr_block": "10.0.2.0/24"})
    api.create(alice, "subnets", {"vpc_id": vpc, "cidr_block": "10.0.255.240/28"})
    api.create(alice, "subnets", {"vpc_id": other, "cidr_block": "10.0.1.0/24"})  # only siblings count
    assert len(api.list(alice, "subnets", vpc_id=vpc)) == 3


def test_instance_addresses(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
    subnet = api.create(alice, "subnets", {"vpc_id": vpc, "cidr_block": "10.0.1.0/24"})["id"]

    def launch(name, ip=None, host="h1", subnet_id=subnet):
        body = {"name": name, "subnet_id": subnet_id, "host": host}
        if ip:
            body["private_ip"] = ip
        return api.create(alice, "instances", body)

    assert launch("a")["private_ip"] == "10.0.1.4"  # the first free address from .4
    assert launch("b", "10.0.1.6")["private_ip"] == "10.0.1.6"
    c = launch("c")
    assert c["private_ip"] == "10.0.1.5"
    assert launch("d")["private_ip"] == "10.0.1.7"
    assert launch("e", "10.0.1.254")["private_ip"] == "10.0.1.254"
    base = {"name": "x", "subnet_id": subnet, "host": "h1"}
    api.refused("POST", "/v1/instances", alice, {**base, "private_ip": "10.0.1.6"}, status=409,
                field="private_ip", says=("in use",))
    for ip in ("10.0.2.4", "10.1.1.4", "192.168.0.1"):
        api.refused("POST", "/v1/instances", alice, {**base, "private_ip": ip}, status=422, field="private_ip",
                    says=("outside", subnet))
    for ip in ("10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.255"):
        api.refused("POST", "/v1/instances", alice, {**base, "private_ip": ip}, status=422, field="private_ip",
                    says=("reserved",))
    api.refused("POST", "/v1/instances", alice, {**base, "private_ip": "10.0.1.300"}, status=422,
                field="private_ip")
    api.refused("POST", "/v1/instances", alice, {**base, "host": "h9"}, status=422, field="host",
                says=("unknown host", "h9"))
    api.delete(alice, "instances", c["id"])
    assert launch("f")["private_ip"] == "10.0.1.5"  # a freed address is reused
    assert sorted(x["private_ip"] for x in api.list(alice, "network-interfaces")) == \
        ["10.0.1.254", "10.0.1.4", "10.0.1.5", "10.0.1.6", "10.0.1.7"]

    small = api.create(alice, "subnets", {"vpc_id": vpc, "cidr_block": "10.0.2.0/28"})["id"]
    ips = [launch(f"s{i}", subnet_id=small)["private_ip"] for i in range(11)]
    assert ips == [f"10.0.2.{k}" for k in range(4, 15)]  # .0-.3 and .15 are reserved
    api.refused("POST", "/v1/instances", alice, {**base, "subnet_id": small}, status=409, field="subnet_id",
                says=("no free address",))


def test_deleting_a_vpc_with_dependents_is_refused_listing_them(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})
    s1 = api.create(alice, "subnets", {"vpc_id": vpc["id"], "cidr_block": "10.0.1.0/24"})["id"]
    s2 = api.create(alice, "subnets", {"vpc_id": vpc["id"], "cidr_block": "10.0.2.0/24"})["id"]
    api.refused("DELETE", f"/v1/vpcs/{vpc['id']}", alice, status=409, says=("still used by 2", s1, s2))
    api.delete(alice, "subnets", s1)
    api.refused("DELETE", f"/v1/vpcs/{vpc['id']}", alice, status=409, says=("still used by 1", s2))
    api.delete(alice, "subnets", s2)
    api.delete(alice, "vpcs", vpc["id"])
    api.gone(alice, "vpcs", vpc["id"])
    for collection, rid in (("route-tables", vpc["main_route_table_id"]),
                            ("network-acls", vpc["default_network_acl_id"]),
                            ("security-groups", vpc["default_security_group_id"])):
        api.gone(alice, collection, rid)  # the VPC's own defaults go with it
    for collection in resources.KINDS:
        assert api.list(alice, collection) == []


def test_deleting_used_resources_is_refused(api, alice):
    w = build_world(api, alice)
    api.refused("DELETE", f"/v1/subnets/{w['subnets']}", alice, status=409,
                says=(w["instances"], w["nat-gateways"], w["load-balancers"]))
    api.refused("DELETE", f"/v1/security-groups/{w['security-groups']}", alice, status=409,
                says=("still used", w["network-interfaces"]))
    api.refused("DELETE", f"/v1/target-groups/{w['target-groups']}", alice, status=409,
                says=(w["load-balancers"],))
    api.refused("DELETE", f"/v1/dhcp-options/{w['dhcp-options']}", alice, status=409, says=(w["vpcs"],))
    api.refused("DELETE", f"/v1/internet-gateways/{w['internet-gateways']}", alice, status=409,
                says=("attached", w["vpcs"], "detach"))
    # A group named in another group's rule is in use too.
    g = api.create(alice, "security-groups", {"vpc_id": w["vpcs"], "name": "peer"})["id"]
    user = api.create(alice, "security-groups", {"vpc_id": w["vpcs"], "name": "user", "ingress": [
        {"protocol": "tcp", "from_port": 22, "to_port": 22, "source_group_id": g}]})["id"]
    api.refused("DELETE", f"/v1/security-groups/{g}", alice, status=409, says=(user,))
    # Tables and ACLs associated with a subnet.
    api.patch(alice, "subnets", w["subnets"], {"route_table_id": w["route-tables"],
                                               "network_acl_id": w["network-acls"]})
    api.refused("DELETE", f"/v1/route-tables/{w['route-tables']}", alice, status=409, says=(w["subnets"],))
    api.refused("DELETE", f"/v1/network-acls/{w['network-acls']}", alice, status=409, says=(w["subnets"],))
    # Once unused, they go.
    api.delete(alice, "load-balancers", w["load-balancers"])
    api.delete(alice, "target-groups", w["target-groups"])
    api.delete(alice, "instances", w["instances"])
    api.delete(alice, "security-groups", w["security-groups"])
    api.delete(alice, "security-groups", user)
    api.delete(alice, "security-groups", g)
    api.patch(alice, "subnets", w["subnets"], {"route_table_id": w["main-route-table"],
                                               "network_acl_id": w["default-acl"]})
    api.delete(alice, "route-tables", w["route-tables"])
    api.delete(alice, "network-acls", w["network-acls"])


def test_the_vpcs_default_group_acl_and_main_table_cannot_be_deleted(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})
    for collection, rid, says in (("security-groups", vpc["default_security_group_id"], "default"),
                                  ("network-acls", vpc["default_network_acl_id"], "default"),
                                  ("route-tables", vpc["main_route_table_id"], "main")):
        api.refused("DELETE", f"/v1/{collection}/{rid}", alice, status=409, says=(rid, says, vpc["id"]))
        api.get(alice, collection, rid)


def test_unknown_fields_are_refused_naming_them(api, alice):
    w = build_world(api, alice)
    for collection, (body, change, _) in SPECS.items():
        before = api.list(alice, collection)
        api.refused("POST", f"/v1/{collection}", alice, {**body(w), "colour": "blue"}, status=422,
                    field="colour", says=("Extra inputs",))
        rid = before[0]["id"]
        api.refused("PATCH", f"/v1/{collection}/{rid}", alice, {**change(w), "colour": "blue"}, status=422,
                    field="colour")
        assert api.list(alice, collection) == before
    # Fields that exist but cannot change, and unknown fields in nested objects.
    api.refused("PATCH", f"/v1/subnets/{w['subnets']}", alice, {"cidr_block": "10.0.9.0/24"}, status=422,
                field="cidr_block")
    api.refused("PATCH", f"/v1/instances/{w['instances']}", alice, {"private_ip": "10.0.1.9"}, status=422,
                field="private_ip")
    api.refused("PATCH", f"/v1/vpcs/{w['vpcs']}", alice, {"vni": 7}, status=422, field="vni")
    api.refused("POST", "/v1/security-groups", alice, {"vpc_id": w["vpcs"], "name": "x", "ingress": [
        {"cidr": "0.0.0.0/0", "port": 22}]}, status=422, field="ingress[0].port")
    api.refused("POST", "/v1/accounts", ADMIN, {"name": "carol", "admin": True}, status=422, field="admin")
    api.refused("POST", "/v1/hosts", ADMIN, {"name": "h3", "underlay_ip": "192.168.50.3", "rack": 4},
                status=422, field="rack")


def test_ids_of_the_wrong_kind_are_refused(api, alice):
    w = build_world(api, alice)
    s, v, sg, tg, igw, eni = (w["subnets"], w["vpcs"], w["security-groups"], w["target-groups"],
                              w["internet-gateways"], w["network-interfaces"])
    for method, path, body, field in (
        ("POST", "/v1/subnets", {"vpc_id": s, "cidr_block": "10.0.5.0/24"}, "vpc_id"),
        ("POST", "/v1/subnets", {"vpc_id": v, "cidr_block": "10.0.5.0/24", "route_table_id": w["network-acls"]},
         "route_table_id"),
        ("POST", "/v1/instances", {"name": "x", "subnet_id": v, "host": "h1"}, "subnet_id"),
        ("POST", "/v1/instances", {"name": "x", "subnet_id": s, "host": "h1",
                                   "security_group_ids": [w["network-acls"]]}, "security_group_ids[0]"),
        ("POST", "/v1/security-groups", {"vpc_id": sg, "name": "x"}, "vpc_id"),
        ("POST", "/v1/security-groups", {"vpc_id": v, "name": "x", "ingress": [{"source_group_id": v}]},
         "ingress[0].source_group_id"),
        ("POST", "/v1/network-acls", {"vpc_id": w["network-acls"]}, "vpc_id"),
        ("POST", "/v1/route-tables", {"vpc_id": v, "routes": [
            {"destination": "0.0.0.0/0", "gateway_id": w["nat-gateways"]}]}, "routes[0].gateway_id"),
        ("POST", "/v1/route-tables", {"vpc_id": v, "routes": [
            {"destination": "0.0.0.0/0", "network_interface_id": w["instances"]}]}, "routes[0].network_interface_id"),
        ("POST", "/v1/internet-gateways", {"vpc_id": igw}, "vpc_id"),
        ("POST", "/v1/nat-gateways", {"subnet_id": v, "connectivity_type": "private"}, "subnet_id"),
        ("POST", "/v1/nat-gateways", {"subnet_id": s, "allocation_id": w["instances"]}, "allocation_id"),
        ("POST", "/v1/target-groups", {"vpc_id": v, "name": "x", "port": 80,
                                       "targets": [{"instance_id": eni, "port": 80}]}, "targets[0].instance_id"),
        ("POST", "/v1/load-balancers", {"name": "x", "subnet_ids": [v]}, "subnet_ids[0]"),
        ("POST", "/v1/load-balancers", {"name": "x", "subnet_ids": [s], "listeners": [
            {"port": 81, "target_group_id": w["load-balancers"]}]}, "listeners[0].target_group_id"),
        ("POST", "/v1/vpcs", {"cidr_block": "10.9.0.0/16", "dhcp_options_id": v}, "dhcp_options_id"),
        ("POST", "/v1/dns-zones", {"name": "x.internal", "vpc_ids": [s]}, "vpc_ids[0]"),
        ("PATCH", f"/v1/subnets/{s}", {"route_table_id": v}, "route_table_id"),
        ("PATCH", f"/v1/instances/{w['instances']}", {"security_group_ids": [tg]}, "security_group_ids[0]"),
        ("PATCH", f"/v1/internet-gateways/{igw}", {"vpc_id": s}, "vpc_id"),
    ):
        api.refused(method, path, alice, body, status=422, field=field, says=("expected a",))
    # A flow log's resource is a VPC, a subnet or an ENI (the message names the field).
    api.refused("POST", "/v1/flow-logs", alice, {"resource_id": igw}, status=422, field=ANY,
                says=("resource_id", "vpc-, subnet- or eni-"))
    # In a path, an id of another kind is simply not there: it is never read, changed or deleted.
    for method in ("GET", "PATCH", "DELETE"):
        api.refused(method, f"/v1/security-groups/{v}", alice, {} if method == "PATCH" else None, status=404)
        api.refused(method, f"/v1/subnets/{sg}", alice, {} if method == "PATCH" else None, status=404)
    for c, rid in every_resource(w):
        api.get(alice, c, rid)


def test_references_across_vpcs_are_refused(api, alice):
    w = build_world(api, alice, 0)
    v2 = api.create(alice, "vpcs", {"cidr_block": "10.1.0.0/16"})
    s2 = api.create(alice, "subnets", {"vpc_id": v2["id"], "cidr_block": "10.1.1.0/24"})["id"]
    tg2 = api.create(alice, "target-groups", {"vpc_id": v2["id"], "name": "tg2", "port": 80})["id"]
    for method, path, body, field in (
        ("POST", "/v1/subnets", {"vpc_id": v2["id"], "cidr_block": "10.1.2.0/24", "route_table_id": w["route-tables"]},
         "route_table_id"),
        ("POST", "/v1/subnets", {"vpc_id": v2["id"], "cidr_block": "10.1.2.0/24", "network_acl_id": w["network-acls"]},
         "network_acl_id"),
        ("PATCH", f"/v1/subnets/{s2}", {"route_table_id": w["main-route-table"]}, "route_table_id"),
        ("PATCH", f"/v1/subnets/{s2}", {"network_acl_id": w["default-acl"]}, "network_acl_id"),
        ("POST", "/v1/instances", {"name": "x", "subnet_id": s2, "host": "h1",
                                   "security_group_ids": [w["security-groups"]]}, "security_group_ids[0]"),
        ("POST", "/v1/instances", {"name": "x", "subnet_id": s2, "host": "h1",
                                   "security_group_ids": [v2["default_security_group_id"], w["default-sg"]]},
         "security_group_ids[1]"),
        ("PATCH", f"/v1/instances/{w['instances']}", {"security_group_ids": [v2["default_security_group_id"]]},
         "security_group_ids[0]"),
        ("POST", "/v1/security-groups", {"vpc_id": v2["id"], "name": "x",
                                         "ingress": [{"source_group_id": w["security-groups"]}]},
         "ingress[0].source_group_id"),
        ("PATCH", f"/v1/security-groups/{v2['default_security_group_id']}",
         {"egress": [{"cidr": "0.0.0.0/0"}, {"source_group_id": w["default-sg"]}]}, "egress[1].source_group_id"),
        ("POST", "/v1/target-groups", {"vpc_id": v2["id"], "name": "x", "port": 80,
                                       "targets": [{"instance_id": w["instances"], "port": 80}]},
         "targets[0].instance_id"),
        ("PATCH", f"/v1/target-groups/{tg2}", {"targets": [{"instance_id": w["instances"], "port": 80}]},
         "targets[0].instance_id"),
        ("POST", "/v1/load-balancers", {"name": "x", "subnet_ids": [s2], "listeners": [
            {"port": 80, "target_group_id": w["target-groups"]}]}, "listeners[0].target_group_id"),
        ("PATCH", f"/v1/load-balancers/{w['load-balancers']}", {"listeners": [
            {"protocol": "tcp", "port": 80, "target_group_id": tg2}]},
         "listeners[0].target_group_id"),
        ("POST", "/v1/load-balancers", {"name": "x", "subnet_ids": [w["subnets"], s2]}, "subnet_ids"),
    ):
        says = "one VPC" if field == "subnet_ids" else "another VPC"
        api.refused(method, path, alice, body, status=422, field=field, says=(says,))


@pytest.mark.parametrize("field", ["gateway_id", "nat_gateway_id", "network_interface_id", "egress_only_gateway_id"])
def test_route_targets_in_another_vpc_are_refused(api, alice, field):
    w = build_world(api, alice, 0)
    v2 = api.create(alice, "vpcs", {"cidr_block": "10.1.0.0/16"})["id"]
    s2 = api.create(alice, "subnets", {"vpc_id": v2, "cidr_block": "10.1.1.0/24"})["id"]
    targets = {"gateway_id": lambda: api.create(alice, "internet-gateways", {"vpc_id": v2})["id"],
               "nat_gateway_id": lambda: api.create(alice, "nat-gateways", {"subnet_id": s2,
                                                                             "connectivity_type": "private"})["id"],
               "network_interface_id": lambda: api.create(alice, "instances", {"name": "b", "subnet_id": s2,
                                                                               "host": "h1"})["eni_id"],
               "egress_only_gateway_id": lambda: api.create(alice, "egress-only-internet-gateways",
                                                            {"vpc_id": v2})["id"]}
    target = targets[field]()
    destination = "::/0" if field == "egress_only_gateway_id" else "0.0.0.0/0"
    route = {"destination": destination, field: target}
    api.refused("POST", "/v1/route-tables", alice, {"vpc_id": w["vpcs"], "routes": [route]}, status=422,
                field=f"routes[0].{field}", says=("another VPC",))
    api.refused("PATCH", f"/v1/route-tables/{w['route-tables']}", alice, {"routes": [route]}, status=422,
                field=f"routes[0].{field}", says=("another VPC",))
    routes = api.create(alice, "route-tables", {"vpc_id": v2, "routes": [route]})["routes"]
    assert [(x["destination"], x["gateway_id"] if x["gateway_id"] == "local" else x[field]) for x in routes] == \
        [("10.1.0.0/16", "local"), (destination, target)]


def test_duplicate_names_are_refused_where_names_are_identities(api, alice, bob):
    w = build_world(api, alice)
    api.refused("POST", "/v1/instances", alice, {"name": "web-1", "subnet_id": w["subnets"], "host": "h1"},
                status=409, field="name")
    other = api.create(alice, "instances", {"name": "web-2", "subnet_id": w["subnets"], "host": "h1"})["id"]
    api.refused("PATCH", f"/v1/instances/{other}", alice, {"name": "web-1"}, status=409, field="name")
    api.patch(alice, "instances", other, {"name": "web-2"})  # its own name is no clash
    api.refused("POST", "/v1/security-groups", alice, {"vpc_id": w["vpcs"], "name": "web"}, status=409,
                field="name", says=(w["vpcs"],))
    api.refused("POST", "/v1/security-groups", alice, {"vpc_id": w["vpcs"], "name": "default"}, status=409,
                field="name")
    g = api.create(alice, "security-groups", {"vpc_id": w["vpcs"], "name": "db"})["id"]
    api.refused("PATCH", f"/v1/security-groups/{g}", alice, {"name": "web"}, status=409, field="name")
    v2 = api.create(alice, "vpcs", {"cidr_block": "10.1.0.0/16"})["id"]
    api.create(alice, "security-groups", {"vpc_id": v2, "name": "web"})  # group names are per VPC
    b = build_world(api, bob)  # instance names are per account
    assert api.get(bob, "instances", b["instances"])["name"] == "web-1"
    api.refused("POST", "/v1/accounts", ADMIN, {"name": "alice"}, status=409, field="name")


def test_internet_gateways_one_per_vpc_and_detach_before_delete(api, alice):
    v1 = api.create(alice, "vpcs", {"cidr_block": "10.1.0.0/16"})["id"]
    v2 = api.create(alice, "vpcs", {"cidr_block": "10.2.0.0/16"})["id"]
    g1 = api.create(alice, "internet-gateways", {"vpc_id": v1})["id"]
    api.refused("POST", "/v1/internet-gateways", alice, {"vpc_id": v1}, status=409, field="vpc_id",
                says=("already has", g1))
    g2 = api.create(alice, "internet-gateways", {})["id"]
    assert api.get(alice, "internet-gateways", g2)["vpc_id"] is None
    api.refused("PATCH", f"/v1/internet-gateways/{g2}", alice, {"vpc_id": v1}, status=409, field="vpc_id",
                says=(g1,))
    api.refused("PATCH", f"/v1/internet-gateways/{g1}", alice, {"vpc_id": v2}, status=409, field="vpc_id",
                says=("detach",))
    api.refused("DELETE", f"/v1/internet-gateways/{g1}", alice, status=409, says=("attached", v1))
    api.refused("DELETE", f"/v1/vpcs/{v1}", alice, status=409, says=(g1,))
    assert api.patch(alice, "internet-gateways", g1, {"detach": True})["vpc_id"] is None
    assert api.patch(alice, "internet-gateways", g2, {"vpc_id": v1})["vpc_id"] == v1
    api.delete(alice, "internet-gateways", g1)
    assert api.patch(alice, "internet-gateways", g2, {"detach": True, "name": "spare"})["vpc_id"] is None
    api.delete(alice, "vpcs", v1)


def test_listeners_and_target_groups_must_agree_on_the_protocol(api, alice):
    w = build_world(api, alice)
    udp = api.create(alice, "target-groups", {"vpc_id": w["vpcs"], "name": "dns", "protocol": "udp", "port": 53})
    api.refused("POST", "/v1/load-balancers", alice, {"name": "x", "subnet_ids": [w["subnets"]], "listeners": [
        {"protocol": "tcp", "port": 53, "target_group_id": udp["id"]}]}, status=422, field="listeners[0].protocol",
        says=("udp", "tcp"))
    api.refused("PATCH", f"/v1/load-balancers/{w['load-balancers']}", alice, {"listeners": [
        {"protocol": "tcp", "port": 80, "target_group_id": w["target-groups"]},
        {"protocol": "udp", "port": 53, "target_group_id": w["target-groups"]}]}, status=422,
        field="listeners[1].protocol")
    api.refused("PATCH", f"/v1/load-balancers/{w['load-balancers']}", alice, {"listeners": [
        {"protocol": "tcp", "port": 80, "target_group_id": w["target-groups"]},
        {"protocol": "tcp", "port": 80, "target_group_id": w["target-groups"]}]}, status=409,
        field="listeners[1].port")
    nlb = api.patch(alice, "load-balancers", w["load-balancers"], {"listeners": [
        {"protocol": "tcp", "port": 80, "target_group_id": w["target-groups"]},
        {"protocol": "udp", "port": 53, "target_group_id": udp["id"]}]})
    assert [li["protocol"] for li in nlb["listeners"]] == ["tcp", "udp"]
    api.refused("DELETE", f"/v1/target-groups/{udp['id']}", alice, status=409, says=(w["load-balancers"],))


def test_flow_log_resources(api, alice):
    w = build_world(api, alice)
    for rid in (w["vpcs"], w["subnets"], w["network-interfaces"]):
        fl = api.create(alice, "flow-logs", {"resource_id": rid, "log_format": "${srcaddr} ${dstaddr} ${action}"})
        assert fl["resource_id"] == rid and fl["max_aggregation_interval"] == 600
    for rid in (w["internet-gateways"], w["instances"], w["security-groups"], "vpc-nope"):
        api.refused("POST", "/v1/flow-logs", alice, {"resource_id": rid}, status=422, field=ANY,
                    says=("resource_id",))
    api.refused("POST", "/v1/flow-logs", alice, {"resource_id": "vpc-0123456789abcdef0"}, status=404,
                field="resource_id")
    api.refused("POST", "/v1/flow-logs", alice, {"resource_id": w["vpcs"], "log_format": "${colour}"},
                status=422, field="log_format", says=("colour",))


def test_flow_log_wrong_kind_resource_id_names_the_field(api, alice):
    w = build_world(api, alice)
    api.refused("POST", "/v1/flow-logs", alice, {"resource_id": w["internet-gateways"]}, status=422,
                field="resource_id", says=("vpc-, subnet- or eni-",))


def test_a_missing_or_unknown_token_is_401(api, alice):
    vpc = "vpc-0123456789abcdef0"
    for method, path, body in (("GET", "/v1/vpcs", None), ("POST", "/v1/vpcs", {"cidr_block": "10.0.0.0/16"}),
                               ("GET", f"/v1/vpcs/{vpc}", None), ("PATCH", f"/v1/vpcs/{vpc}", {"name": "x"}),
                               ("DELETE", f"/v1/vpcs/{vpc}", None), ("GET", "/v1/audit", None),
                               ("POST", "/v1/vpcs", {"cidr_block": "10.0.0.0/8", "bogus": 1})):
        api.refused(method, path, None, body, status=401, field=None)
        api.refused(method, path, "not-a-token", body, status=401, field=None, says=("token",))
    r = api.client.get("/v1/vpcs", headers={"Authorization": f"Basic {alice}"})
    assert r.status_code == 401
    assert api.list(alice, "vpcs") == []
    assert api.ok("GET", "/v1/whoami", alice) == {"account": api.account_id(alice), "admin": False,
                                                  "region": "lab-1"}
    assert api.ok("GET", "/v1/whoami", ADMIN)["admin"] is True


def test_only_an_admin_manages_accounts_hosts_and_sees_the_infrastructure(api, alice):
    api.refused("POST", "/v1/accounts", alice, {"name": "mallory"}, status=403, says=("admin",))
    api.refused("GET", "/v1/accounts", alice, status=403)
    api.refused("POST", "/v1/hosts", alice, {"name": "h3", "underlay_ip": "192.168.50.3"}, status=403)
    api.refused("DELETE", "/v1/hosts/h1", alice, status=403)
    api.refused("GET", "/v1/infra/desired", alice, status=403, says=("admin",))
    assert [a["name"] for a in api.ok("GET", "/v1/accounts", ADMIN)] == ["alice"]
    assert {h["name"] for h in api.ok("GET", "/v1/hosts", alice)} == set(HOSTS)
    api.ok("POST", "/v1/hosts", ADMIN, {"name": "h3", "underlay_ip": "192.168.50.3"})
    api.ok("DELETE", "/v1/hosts/h3", ADMIN)
    api.refused("DELETE", "/v1/hosts/h3", ADMIN, status=404, says=("h3",))
    assert {h["name"] for h in api.ok("GET", "/v1/hosts", ADMIN)} == set(HOSTS)


def test_accounts_are_isolated_for_every_kind(api, alice, bob):
    a = build_world(api, alice, 0)
    for collection in resources.KINDS:  # bob has nothing yet, and sees nothing
        assert api.list(bob, collection) == []
    snapshot = {rid: api.get(alice, c, rid) for c, rid in every_resource(a)}
    assert {c for c, _ in every_resource(a)} == set(resources.KINDS)
    for collection, rid in every_resource(a):
        kind = resources.KINDS[collection]
        api.refused("GET", f"/v1/{collection}/{rid}", bob, status=404, field=None, says=(rid, "not found"))
        if kind.update is not None:
            api.refused("PATCH", f"/v1/{collection}/{rid}", bob, {}, status=404, field=None)
        if kind.create is not None:
            api.refused("DELETE", f"/v1/{collection}/{rid}", bob, status=404, field=None)
        else:  # an ENI: read-only for everyone
            assert api.call("DELETE", f"/v1/{collection}/{rid}", bob).status_code == 405
        assert api.list(bob, collection, vpc_id=a["vpcs"]) == []
    b = build_world(api, bob, 0)  # the same names and addresses: no clash across accounts
    for collection in resources.KINDS:
        mine, theirs = set(api.ids(alice, collection)), set(api.ids(bob, collection))
        assert mine and theirs and not mine & theirs, collection
        assert mine == {rid for c, rid in every_resource(a) if c == collection}
        assert theirs == {rid for c, rid in every_resource(b) if c == collection}
    for collection, rid in every_resource(a):  # untouched
        assert api.get(alice, collection, rid) == snapshot[rid]


def test_another_accounts_ids_as_references_answer_404_naming_the_field(api, alice, bob):
    a = build_world(api, alice, 0)
    b = build_world(api, bob, 1)
    spare_igw = api.create(bob, "internet-gateways", {})["id"]
    cases = [
        ("POST", "/v1/vpcs", {"cidr_block": "10.5.0.0/16", "dhcp_options_id": a["dhcp-options"]}, "dhcp_options_id"),
        ("POST", "/v1/subnets", {"vpc_id": a["vpcs"], "cidr_block": "10.0.9.0/24"}, "vpc_id"),
        ("POST", "/v1/subnets", {"vpc_id": b["vpcs"], "cidr_block": "10.1.9.0/24", "route_table_id": a["route-tables"]},
         "route_table_id"),
        ("POST", "/v1/subnets", {"vpc_id": b["vpcs"], "cidr_block": "10.1.9.0/24", "network_acl_id": a["network-acls"]},
         "network_acl_id"),
        ("POST", "/v1/instances", {"name": "x", "subnet_id": a["subnets"], "host": "h1"}, "subnet_id"),
        ("POST", "/v1/instances", {"name": "x", "subnet_id": b["subnets"], "host": "h1",
                                   "security_group_ids": [a["security-groups"]]}, "security_group_ids[0]"),
        ("POST", "/v1/security-groups", {"vpc_id": a["vpcs"], "name": "x"}, "vpc_id"),
        ("POST", "/v1/security-groups", {"vpc_id": b["vpcs"], "name": "x", "ingress": [
            {"source_group_id": a["security-groups"]}]}, "ingress[0].source_group_id"),
        ("POST", "/v1/network-acls", {"vpc_id": a["vpcs"]}, "vpc_id"),
        ("POST", "/v1/route-tables", {"vpc_id": a["vpcs"]}, "vpc_id"),
        ("POST", "/v1/route-tables", {"vpc_id": b["vpcs"], "routes": [
            {"destination": "0.0.0.0/0", "gateway_id": a["internet-gateways"]}]}, "routes[0].gateway_id"),
        ("POST", "/v1/route-tables", {"vpc_id": b["vpcs"], "routes": [
            {"destination": "0.0.0.0/0", "nat_gateway_id": a["nat-gateways"]}]}, "routes[0].nat_gateway_id"),
        ("POST", "/v1/route-tables", {"vpc_id": b["vpcs"], "routes": [
            {"destination": "10.9.0.0/16", "network_interface_id": a["network-interfaces"]}]},
         "routes[0].network_interface_id"),
        ("POST", "/v1/route-tables", {"vpc_id": b["vpcs"], "routes": [
            {"destination": "::/0", "egress_only_gateway_id": a["egress-only-internet-gateways"]}]},
         "routes[0].egress_only_gateway_id"),
        ("POST", "/v1/egress-only-internet-gateways", {"vpc_id": a["vpcs"]}, "vpc_id"),
        ("POST", "/v1/internet-gateways", {"vpc_id": a["vpcs"]}, "vpc_id"),
        ("POST", "/v1/nat-gateways", {"subnet_id": a["subnets"], "connectivity_type": "private"}, "subnet_id"),
        ("POST", "/v1/nat-gateways", {"subnet_id": b["subnets"], "allocation_id": a["nat-eip"]}, "allocation_id"),
        ("POST", "/v1/target-groups", {"vpc_id": a["vpcs"], "name": "x", "port": 80}, "vpc_id"),
        ("POST", "/v1/target-groups", {"vpc_id": b["vpcs"], "name": "x", "port": 80,
                                       "targets": [{"instance_id": a["instances"], "port": 80}]},
         "targets[0].instance_id"),
        ("POST", "/v1/load-balancers", {"name": "x", "subnet_ids": [a["subnets"]]}, "subnet_ids[0]"),
        ("POST", "/v1/load-balancers", {"name": "x", "subnet_ids": [b["subnets"]], "listeners": [
            {"port": 81, "target_group_id": a["target-groups"]}]}, "listeners[0].target_group_id"),
        ("POST", "/v1/flow-logs", {"resource_id": a["vpcs"]}, "resource_id"),
        ("POST", "/v1/flow-logs", {"resource_id": a["subnets"]}, "resource_id"),
        ("POST", "/v1/flow-logs", {"resource_id": a["network-interfaces"]}, "resource_id"),
        ("POST", "/v1/dns-zones", {"name": "x.internal", "vpc_ids": [b["vpcs"], a["vpcs"]]}, "vpc_ids[1]"),
        ("PATCH", f"/v1/vpcs/{b['vpcs']}", {"dhcp_options_id": a["dhcp-options"]}, "dhcp_options_id"),
        ("PATCH", f"/v1/subnets/{b['subnets']}", {"route_table_id": a["route-tables"]}, "route_table_id"),
        ("PATCH", f"/v1/subnets/{b['subnets']}", {"network_acl_id": a["network-acls"]}, "network_acl_id"),
        ("PATCH", f"/v1/instances/{b['instances']}", {"security_group_ids": [a["security-groups"]]},
         "security_group_ids[0]"),
        ("PATCH", f"/v1/security-groups/{b['security-groups']}", {"ingress": [{"source_group_id": a["default-sg"]}]},
         "ingress[0].source_group_id"),
        ("PATCH", f"/v1/route-tables/{b['route-tables']}", {"routes": [
            {"destination": "0.0.0.0/0", "gateway_id": a["internet-gateways"]}]}, "routes[0].gateway_id"),
        ("PATCH", f"/v1/internet-gateways/{spare_igw}", {"vpc_id": a["vpcs"]}, "vpc_id"),
        ("PATCH", f"/v1/target-groups/{b['target-groups']}", {"targets": [{"instance_id": a["instances"], "port": 80}]},
         "targets[0].instance_id"),
        ("PATCH", f"/v1/load-balancers/{b['load-balancers']}", {"listeners": [
            {"protocol": "tcp", "port": 80, "target_group_id": a["target-groups"]}]}, "listeners[0].target_group_id"),
        ("PATCH", f"/v1/dns-zones/{b['dns-zones']}", {"vpc_ids": [a["vpcs"]]}, "vpc_ids[0]"),
        ("POST", "/v1/elastic-ips", {"instance_id": a["instances"]}, "instance_id"),
        ("PATCH", f"/v1/elastic-ips/{b['elastic-ips']}", {"instance_id": a["instances"]}, "instance_id"),
    ]
    named = json.dumps(cases)  # every kind that another resource can refer to is tried
    assert all(a[c] in named for c in set(resources.KINDS) - {"flow-logs", "dns-zones", "load-balancers",
                                                               "elastic-ips"})
    before = {c: api.list(bob, c) for c in resources.KINDS}
    for method, path, body, field in cases:
        err = api.refused(method, path, bob, body, status=404, field=field, says=("not found",))
        assert "another account" not in err["message"] and api.account_id(alice) not in err["message"]
    assert {c: api.list(bob, c) for c in resources.KINDS} == before


# --- audit ------------------------------------------------------------------------------------------------
def test_every_mutating_call_is_audited(api, alice, bob):
    t0 = time.time()
    me, other = api.account_id(alice), api.account_id(bob)

    def call(token, method, path, body, rid, status):
        r = api.call(method, path, token, body, request_id=rid)
        assert r.status_code == status, r.text
        assert r.headers["X-Request-Id"] == rid
        return None if status == 204 or status >= 400 else r.json()

    vpc = call(alice, "POST", "/v1/vpcs", {"cidr_block": "10.0.0.0/16"}, "t-create-vpc", 201)["id"]
    call(alice, "POST", "/v1/vpcs", {"cidr_block": "10.0.0.0/8"}, "t-bad-cidr", 422)
    call(alice, "POST", "/v1/subnets", {"vpc_id": "vpc-0123456789abcdef0", "cidr_block": "10.0.1.0/24"},
         "t-no-vpc", 404)
    subnet = call(alice, "POST", "/v1/subnets", {"vpc_id": vpc, "cidr_block": "10.0.1.0/24"}, "t-subnet", 201)["id"]
    call(alice, "POST", "/v1/subnets", {"vpc_id": vpc, "cidr_block": "10.0.1.0/25"}, "t-overlap", 409)
    call(alice, "DELETE", f"/v1/vpcs/{vpc}", None, "t-delete-used", 409)
    call(alice, "PATCH", f"/v1/vpcs/{vpc}", {"name": "prod"}, "t-modify", 200)
    call(alice, "PATCH", f"/v1/vpcs/{vpc}", {"colour": "red"}, "t-modify-bad", 422)
    call(alice, "POST", "/v1/accounts", {"name": "mallory"}, "t-forbidden", 403)
    call(alice, "DELETE", f"/v1/subnets/{subnet}", None, "t-delete", 204)
    call(bob, "DELETE", f"/v1/vpcs/{vpc}", None, "t-bob-delete", 404)
    call(bob, "POST", "/v1/vpcs", {"cidr_block": "10.0.0.0/16"}, "t-bob-create", 201)
    call(alice, "GET", f"/v1/vpcs/{vpc}", None, "t-read", 200)
    call(alice, "GET", "/v1/vpcs/vpc-0123456789abcdef0", None, "t-read-missing", 404)
    call(None, "POST", "/v1/vpcs", {"cidr_block": "10.0.0.0/16"}, "t-anonymous", 401)

    expected = {  # request id -> (account, action, resource, status)
        "t-create-vpc": (me, "CreateVpc", vpc, 201),
        "t-bad-cidr": (me, "CreateVpc", None, 422),
        "t-no-vpc": (me, "CreateSubnet", None, 404),
        "t-subnet": (me, "CreateSubnet", subnet, 201),
        "t-overlap": (me, "CreateSubnet", None, 409),
        "t-delete-used": (me, "DeleteVpc", vpc, 409),
        "t-modify": (me, "ModifyVpc", vpc, 200),
        "t-modify-bad": (me, "ModifyVpc", vpc, 422),
        "t-forbidden": (me, "CreateAccount", None, 403),
        "t-delete": (me, "DeleteSubnet", subnet, 204),
        "t-bob-delete": (other, "DeleteVpc", vpc, 404),
        "t-bob-create": (other, "CreateVpc", ANY, 201),
    }
    everything = api.audit(ADMIN)
    by_rid = {e["request_id"]: e for e in everything if e["request_id"].startswith("t-")}
    assert set(by_rid) == set(expected)  # reads and anonymous calls are not audited; every write is
    for rid, (account, action, resource, status) in expected.items():
        e = by_rid[rid]
        assert set(e) >= {"time", "account", "action", "resource", "request_id", "source", "status"}
        assert (e["account"], e["action"], e["status"]) == (account, action, status), e
        assert resource is ANY or e["resource"] == resource, e
        assert t0 <= e["time"] <= time.time() and e["source"] == "testclient"
        assert (e["message"] == "ok") == (status < 400), e
    assert by_rid["t-overlap"]["message"].startswith("cidr_block:") and subnet in by_rid["t-overlap"]["message"]
    times = [e["time"] for e in everything]
    assert times == sorted(times)
    assert {e["account"] for e in everything} >= {"admin", me, other}  # the admin sees every account's
    assert {e["action"] for e in everything if e["account"] == "admin"} >= {"CreateAccount", "RegisterHost"}

    mine = api.audit(alice)
    assert mine and all(e["account"] == me for e in mine)
    assert [e for e in everything if e["account"] == me] == mine
    theirs = api.audit(bob)
    assert {e["request_id"] for e in theirs} == {"t-bob-delete", "t-bob-create"}
    assert api.ok("GET", "/v1/audit", alice, params={"limit": 2}) == mine[-2:]
    assert api.ok("GET", "/v1/audit", alice, params={"since": mine[-1]["time"]}) == mine[-1:]


def test_request_ids_are_echoed_or_made_up(api, alice):
    r = api.call("POST", "/v1/vpcs", alice, {"cidr_block": "10.0.0.0/16"}, request_id="not a valid id!")
    assert r.status_code == 201
    made_up = r.headers["X-Request-Id"]
    assert made_up != "not a valid id!" and made_up.startswith("req-")
    r = api.call("POST", "/v1/vpcs", alice, {"cidr_block": "10.0.0.0/16"})
    assert r.headers["X-Request-Id"].startswith("req-") and r.headers["X-Request-Id"] != made_up
    ids = [e["request_id"] for e in api.audit(alice)]
    assert ids == [made_up, r.headers["X-Request-Id"]]
    assert api.call("GET", "/v1/vpcs", alice, request_id="read-1").headers["X-Request-Id"] == "read-1"


# --- atomicity and concurrency ----------------------------------------------------------------------------
def test_a_refused_request_writes_nothing_but_its_audit_record(api, alice, bob):
    w = build_world(api, alice)
    v2 = api.create(alice, "vpcs", {"cidr_block": "10.1.0.0/16"})
    udp = api.create(alice, "target-groups", {"vpc_id": w["vpcs"], "name": "dns", "protocol": "udp", "port": 53})["id"]
    ip = api.get(alice, "instances", w["instances"])["private_ip"]
    refusals = [
        (alice, "POST", "/v1/vpcs", {"cidr_block": "10.0.0.0/8"}, 422),
        (alice, "POST", "/v1/vpcs", {"cidr_block": "10.0.0.0/16", "dhcp_options_id": "dopt-0123456789abcdef0"}, 404),
        (alice, "POST", "/v1/subnets", {"vpc_id": w["vpcs"], "cidr_block": "10.0.1.0/25"}, 409),
        (alice, "POST", "/v1/instances", {"name": "x", "subnet_id": w["subnets"], "host": "h1", "private_ip": ip},
         409),
        (alice, "POST", "/v1/instances", {"name": "x", "subnet_id": w["subnets"], "host": "h9"}, 422),
        (alice, "POST", "/v1/instances", {"name": "x", "subnet_id": w["subnets"], "host": "h1",
                                          "security_group_ids": [v2["default_security_group_id"]]}, 422),
        (alice, "DELETE", f"/v1/vpcs/{w['vpcs']}", None, 409),
        (alice, "DELETE", f"/v1/security-groups/{w['default-sg']}", None, 409),
        (alice, "PATCH", f"/v1/subnets/{w['subnets']}", {"route_table_id": v2["main_route_table_id"]}, 422),
        (alice, "PATCH", f"/v1/instances/{w['instances']}", {"host": "h9"}, 422),
        (alice, "PATCH", f"/v1/load-balancers/{w['load-balancers']}", {"listeners": [
            {"port": 53, "protocol": "tcp", "target_group_id": udp}]}, 422),
        (alice, "POST", "/v1/internet-gateways", {"vpc_id": w["vpcs"]}, 409),
        (alice, "POST", "/v1/egress-only-internet-gateways", {"vpc_id": w["vpcs"]}, 409),
        (alice, "PATCH", f"/v1/vpcs/{w['vpcs']}", {"ipv6_cidr_block": "2001:db8:ffff:ff00::/56",
                                                   "amazon_provided_ipv6_cidr_block": True}, 422),
        (bob, "DELETE", f"/v1/vpcs/{v2['id']}", None, 404),
        (bob, "POST", "/v1/subnets", {"vpc_id": w["vpcs"], "cidr_block": "10.0.9.0/24"}, 404),
        (alice, "POST", "/v1/accounts", {"name": "mallory"}, 403),
        (ADMIN, "POST", "/v1/accounts", {"name": "alice"}, 409),
        (ADMIN, "DELETE", "/v1/hosts/h9", None, 404),
    ]
    for token, method, path, body, status in refusals:
        before = api.state()
        r = api.call(method, path, token, body)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        after = api.state()
        assert after["data"] == before["data"], f"{method} {path} wrote more than its audit record"
        assert after["audit"] == before["audit"] + 1
        assert after["revision"] == before["revision"] + 1  # one transaction: the audit record alone


def test_concurrent_creates_get_distinct_addresses(api, alice):
    w = build_world(api, alice)
    taken = [api.get(alice, "instances", w["instances"])["private_ip"],
             api.get(alice, "nat-gateways", w["nat-gateways"])["private_ip"],
             api.get(alice, "load-balancers", w["load-balancers"])["private_ip"]]
    start = threading.Barrier(20)

    def launch(i: int):
        start.wait()
        return api.call("POST", "/v1/instances", alice, {"name": f"c{i}", "subnet_id": w["subnets"], "host": "h2"},
                        via_testclient=True)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(launch, range(20)))
    assert [r.status_code for r in replies] == [201] * 20, [r.text for r in replies if r.status_code != 201]
    ips = [r.json()["private_ip"] for r in replies]
    assert len(set(ips)) == 20 and not set(taken) & set(ips)
    assert sorted(ipaddress.IPv4Address(ip) for ip in ips + taken) == \
        [ipaddress.IPv4Address("10.0.1.0") + k for k in range(4, 27)]  # the first 23 free, no gap
    enis = api.list(alice, "network-interfaces", subnet_id=w["subnets"])
    assert sorted(e["private_ip"] for e in enis) == sorted(ips + taken)


def test_concurrent_vpcs_in_several_accounts_get_distinct_vnis(api):
    tokens = [api.account(f"acct{i}") for i in range(4)]
    start = threading.Barrier(16)

    def create(i: int):
        start.wait()
        return api.call("POST", "/v1/vpcs", tokens[i % 4], {"cidr_block": "10.0.0.0/16"}, via_testclient=True)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(create, range(16)))
    assert [r.status_code for r in replies] == [201] * 16
    assert len({r.json()["vni"] for r in replies}) == 16


# --- the infrastructure view ------------------------------------------------------------------------------
def test_infra_desired_lists_hosts_vpcs_and_every_eni(api, alice, bob):
    a = build_world(api, alice, 0)
    b = build_world(api, bob, 0)
    s2 = api.create(bob, "subnets", {"vpc_id": b["vpcs"], "cidr_block": "10.0.2.0/24"})["id"]
    moved = api.create(bob, "instances", {"name": "db", "subnet_id": s2, "host": "h2", "private_ip": "10.0.2.10",
                                          "source_dest_check": False, "interface_type": "tap"})
    view = api.infra()
    assert isinstance(view["revision"], int) and view["revision"] > 0
    assert sorted((h["name"], h["underlay_ip"]) for h in view["hosts"]) == sorted(HOSTS.items())
    vpcs = {v["id"]: v for v in view["vpcs"]}
    assert set(vpcs) == {a["vpcs"], b["vpcs"], a["spare-vpc"], b["spare-vpc"]}
    assert vpcs[a["vpcs"]]["subnets"] == ["10.0.1.0/24"]
    assert sorted(vpcs[b["vpcs"]]["subnets"]) == ["10.0.1.0/24", "10.0.2.0/24"]
    for v in vpcs.values():
        assert v["cidr_block"] == "10.0.0.0/16"
        assert v["vni"] == api.get(alice if v["id"] in (a["vpcs"], a["spare-vpc"]) else bob, "vpcs", v["id"])["vni"]
        assert (v["ipv6_cidr_block"], v["ipv6_subnets"]) == (None, [])
    # The world's VPC has a set (its resolver named directly); the spare VPC the default options.
    assert vpcs[a["vpcs"]]["dhcp_options"] == {"domain_name": "corp.example", "domain_name_servers": ["10.0.0.2"],
                                               "ntp_servers": []}
    assert vpcs[a["spare-vpc"]]["dhcp_options"] == {"domain_name": "lab-1.compute.internal",
                                                    "domain_name_servers": ["10.0.0.2"], "ntp_servers": []}
    assert sorted((g["vpc_id"], g["account"]) for g in view["egress_only_gateways"]) == sorted(
        [(a["vpcs"], api.account_id(alice)), (b["vpcs"], api.account_id(bob))])
    enis = {e["id"]: e for e in view["enis"]}
    assert set(enis) == {a["network-interfaces"], b["network-interfaces"], moved["eni_id"], a["nat-eni"], b["nat-eni"],
                         a["nlb-eni"], b["nlb-eni"]}
    e = enis[moved["eni_id"]]
    assert e == {"id": moved["eni_id"], "vni": vpcs[b["vpcs"]]["vni"], "vpc_id": b["vpcs"], "private_ip": "10.0.2.10",
                 "prefixlen": 24, "host": "h2", "underlay_ip": HOSTS["h2"], "instance": "db",
                 "instance_id": moved["id"], "account": api.account_id(bob), "source_dest_check": False,
                 "interface_type": "tap", "subnet_id": moved["subnet_id"],
                 "security_group_ids": moved["security_group_ids"],
                 "connection_tracking": {"tcp_established_timeout": 432000, "udp_stream_timeout": 180,
                                         "udp_timeout": 30, "max_tracked_flows": 65536}, "nat_gateway_id": None,
                 "load_balancer_id": None, "ipv6_address": None, "ipv6_prefixlen": None}
    # Policy travels with the view: every group, ACL, subnet (with its ACL) and flow log.
    groups = {g["id"]: g for g in view["security_groups"]}
    assert set(moved["security_group_ids"]) <= set(groups)
    assert all(set(g) == {"id", "account", "vpc_id", "ingress", "egress"} for g in groups.values())
    subnets = {s["id"]: s for s in view["subnets"]}
    acls = {a["id"]: a for a in view["network_acls"]}
    assert subnets[moved["subnet_id"]]["network_acl_id"] in acls
    default_acl = acls[subnets[moved["subnet_id"]]["network_acl_id"]]
    # A VPC without IPv6: rule 100 alone (rule 101, for ::/0, comes with an IPv6 block: test_ipv6_api.py).
    assert sorted((x["rule_number"], x["egress"], x["cidr"]) for x in default_acl["entries"]) == [
        (100, False, "0.0.0.0/0"), (100, True, "0.0.0.0/0")]
    assert (enis[a["network-interfaces"]]["host"], enis[a["network-interfaces"]]["underlay_ip"]) == ("h1", HOSTS["h1"])
    assert enis[a["network-interfaces"]]["account"] == api.account_id(alice)


def test_infra_desired_long_poll(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
    rev = api.infra()["revision"]
    assert api.infra(after=rev - 1, wait=2)["revision"] == rev  # something newer exists already: at once

    # A write during the wait answers promptly.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        poll = pool.submit(api.long_poll, rev, 2)
        time.sleep(0.3)
        assert not poll.done()
        wrote = time.monotonic()
        subnet = api.create(alice, "subnets", {"vpc_id": vpc, "cidr_block": "10.0.1.0/24"})["id"]
        view = poll.result(timeout=5)
        answered = time.monotonic()
    assert answered - wrote < 1.0, f"answered {answered - wrote:.2f} s after the write"
    assert answered - started < 2.0
    assert view["revision"] > rev
    assert [v["subnets"] for v in view["vpcs"]] == [["10.0.1.0/24"]], subnet

    # Without a write it answers after about `wait` seconds; a refused request (audit only) is no write.
    rev = view["revision"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        poll = pool.submit(api.long_poll, rev, 2)
        time.sleep(0.3)
        api.refused("POST", "/v1/subnets", alice, {"vpc_id": vpc, "cidr_block": "10.0.1.0/24"}, status=409,
                    field="cidr_block")
        view = poll.result(timeout=5)
        took = time.monotonic() - started
    assert 1.9 <= took < 3.0, took
    assert view["revision"] == rev


def test_a_vpc_delete_refusal_lists_each_dependent_once(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
    igw = api.create(alice, "internet-gateways", {"vpc_id": vpc})["id"]
    err = api.refused("DELETE", f"/v1/vpcs/{vpc}", alice, status=409)
    assert err["message"].count(igw) == 1 and "used by 1 resource" in err["message"], err["message"]


# Kinds whose records hold lists of nested objects with defaulted fields: (field, value for a world).
NESTED = {
    "security-groups": ("ingress", lambda w: [{"cidr": "10.0.0.0/8"}]),
    "network-acls": ("entries", lambda w: [{"rule_number": 5, "action": "allow", "cidr": "10.0.0.0/8"}]),
    "route-tables": ("routes", lambda w: [{"destination": "192.0.2.0/24",
                                            "network_interface_id": w["network-interfaces"]}]),
    "target-groups": ("targets", lambda w: [{"instance_id": w["instances"], "port": 8080}]),
    "dns-zones": ("records", lambda w: [{"name": "a.extra.internal", "type": "A", "values": ["10.0.1.5"]}]),
}


@pytest.mark.parametrize("collection", sorted(NESTED))
def test_patched_nested_objects_are_stored_like_created_ones(api, alice, collection):
    w = build_world(api, alice)
    field, value = NESTED[collection]
    body = SPECS[collection][0](w)
    # Another name where names must be unique (a zone's name is its domain: two zones in no VPC may share it).
    renamed = {"name": "other"} if "name" in body and collection != "dns-zones" else {}
    created = api.create(alice, collection, {**body, field: value(w), **renamed})
    patched = api.patch(alice, collection, api.create(alice, collection, body)["id"], {field: value(w)})
    assert patched[field] == created[field]


def test_patching_listeners_without_a_protocol_is_not_a_server_error(api, alice):
    w = build_world(api, alice)
    listeners = [{"port": 8080, "target_group_id": w["target-groups"]}]
    assert api.create(alice, "load-balancers", {"name": "x", "subnet_ids": [w["subnets"]],
                                                "listeners": listeners})["listeners"][0]["protocol"] == "tcp"
    r = api.call("PATCH", f"/v1/load-balancers/{w['load-balancers']}", alice, {"listeners": listeners})
    assert r.status_code == 200, r.text
    assert r.json()["listeners"][0]["protocol"] == "tcp"


def test_acl_entry_protocol_above_255_is_refused():
    from pydantic import ValidationError
    from vswitch.controlplane.resources import AclEntry
    with pytest.raises(ValidationError, match="out of range 0..255"):
        AclEntry(rule_number=1, action="allow", cidr="0.0.0.0/0", protocol="300")
    assert AclEntry(rule_number=1, action="allow", cidr="0.0.0.0/0", protocol="255").protocol == "255"


def test_health_check_matcher_codes_are_200_to_599_low_end_first():
    from pydantic import ValidationError
    from vswitch.controlplane.resources import HealthCheck
    assert HealthCheck(matcher="200-399,404").matcher == "200-399,404"
    for bad in ("100", "399-200", "200-600"):
        with pytest.raises(ValidationError):
            HealthCheck(matcher=bad)

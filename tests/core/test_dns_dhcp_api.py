"""DHCP option sets and private DNS zones through the API: a VPC's set (at creation, changed, back to
"default"), a set in use, the effective options in the infrastructure view, and a zone's rules (record
names in the zone, values that fit their type, one record set a name and type, CNAMEs alone, VPCs of
the account, one zone of a name a VPC) and its form in the view.

Same harness as ``test_api.py`` (its fixtures: the real app, on SQLite and on etcd).
"""

from __future__ import annotations

import pytest

from test_api import Api, alice, api, app_and_cp, bob, store_url  # noqa: F401 (the fixtures)


def dopt(api: Api, token: str, **body) -> str:
    return api.create(token, "dhcp-options", body)["id"]


# --- DHCP options ------------------------------------------------------------------------------------------
def test_a_vpcs_dhcp_options_are_set_changed_and_cleared(api, alice, bob):
    corp = dopt(api, alice, name="corp", domain_name="corp.example", domain_name_servers=["10.0.0.2"])
    lab = dopt(api, alice, name="lab")
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16", "dhcp_options_id": corp})
    assert vpc["dhcp_options_id"] == corp
    # "default" (the cloud's word) is no set: at creation as when absent, and by an update.
    assert api.create(alice, "vpcs", {"cidr_block": "10.1.0.0/16", "dhcp_options_id": "default"})[
        "dhcp_options_id"] is None
    assert api.create(alice, "vpcs", {"cidr_block": "10.1.0.0/16"})["dhcp_options_id"] is None
    assert api.patch(alice, "vpcs", vpc["id"], {"dhcp_options_id": lab})["dhcp_options_id"] == lab
    api.refused("DELETE", f"/v1/dhcp-options/{lab}", alice, status=409, says=("still used", vpc["id"]))
    api.delete(alice, "dhcp-options", corp)  # no longer used
    cleared = api.patch(alice, "vpcs", vpc["id"], {"dhcp_options_id": "default", "name": "v"})
    assert (cleared["dhcp_options_id"], cleared["name"]) == (None, "v")
    assert api.patch(alice, "vpcs", vpc["id"], {"name": "w"})["dhcp_options_id"] is None  # absent: no change
    api.delete(alice, "dhcp-options", lab)
    # Refusals name the field.
    path = f"/v1/vpcs/{vpc['id']}"
    for body, status, says in (({"dhcp_options_id": "defaults"}, 422, "'default'"),
                               ({"dhcp_options_id": vpc["id"]}, 422, "expected a dopt- id"),
                               ({"dhcp_options_id": "dopt-0123456789abcdef0"}, 404, "not found")):
        api.refused("PATCH", path, alice, body, status=status, field="dhcp_options_id", says=(says,))
        api.refused("POST", "/v1/vpcs", alice, {"cidr_block": "10.2.0.0/16", **body}, status=status,
                    field="dhcp_options_id", says=(says,))
    theirs = dopt(api, bob, name="theirs")
    api.refused("PATCH", path, alice, {"dhcp_options_id": theirs}, status=404, field="dhcp_options_id")


def test_the_effective_dhcp_options_are_in_the_infrastructure_view(api, alice):
    full = dopt(api, alice, domain_name="corp.example", domain_name_servers=["AmazonProvidedDNS", "192.0.2.53"],
                ntp_servers=["169.254.169.123"])
    bare = dopt(api, alice, domain_name_servers=["192.0.2.53"])  # the API fills in the region's domain
    v1 = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16", "dhcp_options_id": full})["id"]
    v2 = api.create(alice, "vpcs", {"cidr_block": "172.16.0.0/20", "dhcp_options_id": bare})["id"]
    v3 = api.create(alice, "vpcs", {"cidr_block": "192.168.8.0/24"})["id"]
    vpcs = {v["id"]: v["dhcp_options"] for v in api.infra()["vpcs"]}
    assert vpcs == {
        v1: {"domain_name": "corp.example", "domain_name_servers": ["10.0.0.2", "192.0.2.53"],
             "ntp_servers": ["169.254.169.123"]},
        v2: {"domain_name": "lab-1.compute.internal", "domain_name_servers": ["192.0.2.53"], "ntp_servers": []},
        v3: {"domain_name": "lab-1.compute.internal", "domain_name_servers": ["192.168.8.2"], "ntp_servers": []}}
    api.patch(alice, "vpcs", v1, {"dhcp_options_id": "default"})
    assert {v["id"]: v["dhcp_options"] for v in api.infra()["vpcs"]}[v1] == {
        "domain_name": "lab-1.compute.internal", "domain_name_servers": ["10.0.0.2"], "ntp_servers": []}


def test_dhcp_option_values_are_checked(api, alice):
    for body, field in (({"domain_name_servers": ["ns.example"]}, "domain_name_servers[0]"),
                        ({"domain_name_servers": ["1.1.1.1"] * 5}, "domain_name_servers"),
                        ({"ntp_servers": ["2001:db8::1"]}, "ntp_servers[0]"),
                        ({"domain_name": "bad_domain"}, "domain_name")):
        api.refused("POST", "/v1/dhcp-options", alice, body, status=422, field=field)


# --- DNS zones ---------------------------------------------------------------------------------------------
def record(name: str, kind: str, *values: str, ttl: int = 300) -> dict:
    return {"name": name, "type": kind, "ttl": ttl, "values": list(values)}


def test_record_names_are_the_apex_or_under_it(api, alice):
    good = [record("corp.internal", "TXT", "v=spf1 -all"), record("WEB.Corp.Internal.", "A", "10.0.1.4"),
            record("a.b.corp.internal", "AAAA", "2001:db8::1")]
    zone = api.create(alice, "dns-zones", {"name": "Corp.Internal.", "records": good})
    assert zone["records"] == good
    for i, name in ((0, "internal"), (0, "xcorp.internal"), (0, "corp.internal.example"), (0, "other.test")):
        api.refused("POST", "/v1/dns-zones", alice,
                    {"name": "corp.internal", "records": [record(name, "A", "10.0.0.1")]},
                    status=422, field=f"records[{i}].name", says=(name, "corp.internal"))
    api.refused("PATCH", f"/v1/dns-zones/{zone['id']}", alice,
                {"records": good + [record("x.example", "A", "10.0.0.1")]},
                status=422, field="records[3].name", says=("x.example",))
    assert api.get(alice, "dns-zones", zone["id"])["records"] == good


@pytest.mark.parametrize("kind, bad, good", [
    ("A", ["2001:db8::1", "10.0.0.256", "web"], ["10.0.0.1", "192.0.2.7"]),
    ("AAAA", ["10.0.0.1", "2001:db8::g"], ["2001:db8::1", "::1"]),
    ("PTR", ["not a name", "-bad.example"], ["web.corp.internal", "db.corp.internal."]),
    ("CNAME", ["under_score.example"], ["web.corp.internal"]),
    ("TXT", ["x" * 256], ["anything at all: spaces, \"quotes\", ü", "v=spf1 -all"]),
])
def test_record_values_fit_their_type(api, alice, kind, bad, good):
    values = good[:1] if kind == "CNAME" else good
    zone = api.create(alice, "dns-zones", {"name": "corp.internal",
                                           "records": [record("x.corp.internal", kind, *values)]})
    assert zone["records"][0]["values"] == values
    for value in bad:
        # Too long for any type is the item's own limit (its index named); the type's rules name the list.
        field = "records[1].values[0]" if len(value) > 255 else "records[1].values"
        api.refused("POST", "/v1/dns-zones", alice, {"name": "corp.internal", "records": [
            record("ok.corp.internal", "A", "10.0.0.1"), record("x.corp.internal", kind, value)]},
            status=422, field=field, says=() if len(value) > 255 else ("values[0]", kind))


def test_address_values_are_recorded_in_their_canonical_form(api, alice):
    zone = api.create(alice, "dns-zones", {"name": "corp.internal", "records": [
        record("six.corp.internal", "AAAA", "2001:DB8:0:0::0001")]})
    assert zone["records"][0]["values"] == ["2001:db8::1"]


def test_record_sets_are_one_a_name_and_type_and_cnames_stand_alone(api, alice):
    base = {"name": "corp.internal"}
    for records, i, says in (
            ([record("a.corp.internal", "A", "10.0.0.1"), record("A.corp.internal.", "A", "10.0.0.2")], 1,
             "a second A record set"),
            ([record("a.corp.internal", "A", "10.0.0.1"), record("a.corp.internal", "CNAME", "b.corp.internal")], 1,
             "CNAME"),
            ([record("a.corp.internal", "CNAME", "b.corp.internal"), record("a.corp.internal", "TXT", "x")], 1,
             "CNAME"),
            ([record("corp.internal.", "CNAME", "b.example")], 0, "apex")):
        api.refused("POST", "/v1/dns-zones", alice, {**base, "records": records}, status=422,
                    field=f"records[{i}].name", says=(says,))
    api.refused("POST", "/v1/dns-zones", alice, {**base, "records": [
        record("a.corp.internal", "CNAME", "b.corp.internal", "c.corp.internal")]}, status=422,
        field="records[0].values", says=("exactly one",))
    # Several types at one name, and several values in one set, are fine.
    api.create(alice, "dns-zones", {**base, "records": [
        record("a.corp.internal", "A", "10.0.0.1", "10.0.0.2"), record("a.corp.internal", "AAAA", "2001:db8::1"),
        record("a.corp.internal", "TXT", "x")]})


def test_a_zones_vpcs_are_the_accounts_each_once_and_one_zone_of_a_name_a_vpc(api, alice, bob):
    v1 = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
    v2 = api.create(alice, "vpcs", {"cidr_block": "10.1.0.0/16"})["id"]
    theirs = api.create(bob, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
    zone = api.create(alice, "dns-zones", {"name": "corp.internal", "vpc_ids": [v1]})
    api.refused("POST", "/v1/dns-zones", alice, {"name": "other.internal", "vpc_ids": [v1, v1]}, status=422,
                field="vpc_ids[1]", says=("twice",))
    api.refused("POST", "/v1/dns-zones", alice, {"name": "other.internal", "vpc_ids": [v2, theirs]}, status=404,
                field="vpc_ids[1]", says=("not found",))
    api.refused("POST", "/v1/dns-zones", alice, {"name": "CORP.internal.", "vpc_ids": [v2, v1]}, status=409,
                field="vpc_ids[1]", says=(zone["id"], v1))
    other = api.create(alice, "dns-zones", {"name": "corp.internal", "vpc_ids": [v2]})  # another VPC: fine
    api.refused("PATCH", f"/v1/dns-zones/{other['id']}", alice, {"vpc_ids": [v2, v1]}, status=409, field="vpc_ids[1]")
    assert api.patch(alice, "dns-zones", zone["id"], {"vpc_ids": [v1, v2][:1]})["vpc_ids"] == [v1]  # its own: fine
    sub = api.create(alice, "dns-zones", {"name": "dev.corp.internal", "vpc_ids": [v1, v2]})  # a sub-domain: fine
    api.refused("DELETE", f"/v1/vpcs/{v1}", alice, status=409, says=(zone["id"], sub["id"]))


def test_zones_in_the_infrastructure_view(api, alice):
    vpc = api.create(alice, "vpcs", {"cidr_block": "10.0.0.0/16"})["id"]
    zone = api.create(alice, "dns-zones", {"name": "Corp.Internal.", "vpc_ids": [vpc], "records": [
        record("WEB.corp.internal.", "A", "10.0.1.4", ttl=60),
        record("www.corp.internal", "CNAME", "Web.Corp.Internal."),
        record("corp.internal", "TXT", "Hi")]})
    rev = api.create(alice, "dns-zones", {"name": "1.0.10.in-addr.arpa", "vpc_ids": [vpc], "records": [
        record("4.1.0.10.in-addr.arpa.", "PTR", "WEB.corp.internal.")]})
    zones = {z["id"]: z for z in api.infra()["dns_zones"]}
    assert zones[zone["id"]] == {
        "id": zone["id"], "account": api.account_id(alice), "name": "corp.internal", "vpc_ids": [vpc],
        "records": [{"name": "web.corp.internal", "type": "A", "ttl": 60, "values": ["10.0.1.4"]},
                    {"name": "www.corp.internal", "type": "CNAME", "ttl": 300, "values": ["web.corp.internal"]},
                    {"name": "corp.internal", "type": "TXT", "ttl": 300, "values": ["Hi"]}]}
    assert zones[rev["id"]]["records"] == [{"name": "4.1.0.10.in-addr.arpa", "type": "PTR", "ttl": 300,
                                            "values": ["web.corp.internal"]}]
    # The API answers the records as they were given.
    assert api.get(alice, "dns-zones", zone["id"])["name"] == "Corp.Internal."

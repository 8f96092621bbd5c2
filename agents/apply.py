"""``vpc apply FILE``: make an account's VPCs, subnets and instances what a topology file says.

Idempotent: what already is as the file says is left alone, so applying twice changes nothing. A
changed file converges: resources it no longer names are deleted (instances first, then subnets, then
VPCs), changed ones are modified in place when the API allows it (an instance's host, its
source/destination check) and re-created when it does not (a subnet's CIDR, an instance's address or
subnet), and new ones are created. Names are the identity: a VPC by its name, a subnet by (VPC name,
subnet name), an instance by its name. Hosts must be registered (the lab does it for its hosts).
"""

from __future__ import annotations

from vswitch.controlplane.client import ApiClient
from vswitch.topology import Topology


def apply_topology(api: ApiClient, topo: Topology) -> list[str]:
    """Converge; returns a line per change made (empty: nothing to do)."""
    changes: list[str] = []
    vpcs = {v.get("name"): v for v in api.call("GET", "/v1/vpcs")}
    subnets = {(s["vpc_id"], s.get("name")): s for s in api.call("GET", "/v1/subnets")}
    instances = {i["name"]: i for i in api.call("GET", "/v1/instances")}
    want_vpcs = {v.name: v for v in topo.vpcs}
    want_subnets = {(v.name, s.name): s for v in topo.vpcs for s in v.subnets}
    want_instances = {i.name: (v, i) for v in topo.vpcs for i in v.instances}
    subnet_names = {s["id"]: (vpc_name, s.get("name")) for vpc_name, vpc in vpcs.items()
                    for (vid, _), s in subnets.items() if vid == vpc["id"]}
    subnets_by_name = {subnet_names[s["id"]]: s for s in subnets.values() if s["id"] in subnet_names}

    def keep_vpc(name: str) -> bool:
        return name in want_vpcs and str(want_vpcs[name].cidr) == vpcs[name]["cidr_block"]

    def keep_subnet(key) -> bool:
        return (key in want_subnets and keep_vpc(key[0])
                and str(want_subnets[key].cidr) == subnets_by_name[key]["cidr_block"])

    # 1. deletions, dependents first
    for name, inst in instances.items():
        where = subnet_names.get(inst["subnet_id"])
        want = want_instances.get(name)
        same = (want is not None and where == (want[0].name, want[1].subnet) and keep_subnet(where)
                and (not want[1].ip_given or str(want[1].ip) == inst["private_ip"]))
        if not same:
            api.call("DELETE", f"/v1/instances/{inst['id']}")
            changes.append(f"deleted instance {name} ({inst['private_ip']})")
    instances = {i["name"]: i for i in api.call("GET", "/v1/instances")}
    for key, s in subnets_by_name.items():
        if not keep_subnet(key):
            api.call("DELETE", f"/v1/subnets/{s['id']}")
            changes.append(f"deleted subnet {key[0]}/{key[1]} ({s['cidr_block']})")
    for name, vpc in vpcs.items():
        if not keep_vpc(name):
            for s in api.call("GET", "/v1/security-groups", params={"vpc_id": vpc["id"]}):
                if not s.get("default"):
                    api.call("DELETE", f"/v1/security-groups/{s['id']}")
            api.call("DELETE", f"/v1/vpcs/{vpc['id']}")
            changes.append(f"deleted VPC {name} ({vpc['cidr_block']})")

    # 2. creations and changes, dependencies first
    vpcs = {v.get("name"): v for v in api.call("GET", "/v1/vpcs")}
    for name, v in want_vpcs.items():
        if name not in vpcs:
            vpcs[name] = api.call("POST", "/v1/vpcs", {"name": name, "cidr_block": str(v.cidr)})
            changes.append(f"created VPC {name} ({v.cidr}, VNI {vpcs[name]['vni']})")
    have = {(s["vpc_id"], s.get("name")): s for s in api.call("GET", "/v1/subnets")}
    subnet_ids = {}
    for (vpc_name, name), s in want_subnets.items():
        vpc_id = vpcs[vpc_name]["id"]
        found = have.get((vpc_id, name))
        if found is None:
            found = api.call("POST", "/v1/subnets", {"vpc_id": vpc_id, "name": name, "cidr_block": str(s.cidr)})
            changes.append(f"created subnet {vpc_name}/{name} ({s.cidr})")
        subnet_ids[(vpc_name, name)] = found["id"]
    for name, (v, i) in want_instances.items():
        found = instances.get(name)
        if found is None:
            body = {"name": name, "subnet_id": subnet_ids[(v.name, i.subnet)], "host": i.host,
                    "source_dest_check": i.source_dest_check}
            if i.ip_given:
                body["private_ip"] = str(i.ip)
            created = api.call("POST", "/v1/instances", body)
            changes.append(f"created instance {name} ({created['private_ip']} on {i.host})")
            continue
        patch = {}
        if found["host"] != i.host:
            patch["host"] = i.host
        if found["source_dest_check"] != i.source_dest_check:
            patch["source_dest_check"] = i.source_dest_check
        if patch:
            api.call("PATCH", f"/v1/instances/{found['id']}", patch)
            changes.append(f"changed instance {name}: " + ", ".join(f"{k}={v}" for k, v in patch.items()))
    return changes

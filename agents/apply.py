"""``vpc apply FILE``: make an account's VPCs, subnets, instances, their policy, their way to the
internet, their load balancers, their IPv6 blocks and their names (DHCP options, private zones) what a
topology file says.

Idempotent: what already is as the file says is left alone, so applying twice changes nothing. A
changed file converges: resources it no longer names are deleted, changed ones are modified in place
when the API allows it (an instance's host, source/destination check, groups and connection tracking;
a group's rules and description; an ACL's entries; a route table's routes; a subnet's ACL and route
table; a gateway's name; a target group's targets and health check; a load balancer's listeners) and
re-created when it does not (a subnet's CIDR, an instance's address or subnet; any change to a flow
log, which has no update for its fields; a NAT gateway's subnet, connectivity or explicit address; a
target group's protocol or port; a load balancer's subnets or explicit address), and new ones are
created. Rules, entries, routes, targets, listeners, an instance's groups and a zone's records are
compared as the API records them, normalized (``tcp`` is ``6``, an empty description is none; a
table's implicit local routes and each route's ``state`` left out; names as DNS compares them) and in
any order.

IPv6: a VPC's /56 is added, removed or replaced in place (``ipv6: true`` keeps any block the VPC has); a
subnet's /64 is added in place, and one that must go or change re-creates the subnet (the API removes a
/64 only once no ENI has an address in it, and a VPC's block only once no subnet has a /64). An
instance is re-created when its interface type or its IPv6 address is not the file's: an address in a
subnet with a /64 (the file's, when it gives one), none in another. The egress-only gateway is the VPC's
(at most one): renamed in place, made, or deleted with the routes to it. A VPC's DHCP option set is
replaced by a new one (sets cannot change) named after the VPC when its options are not the file's, and
dropped ("default") when the file gives none; a set a VPC leaves is deleted once no VPC uses it. A
zone is the one of its name associated with the VPC, its records changed in place; a zone of the VPC
the file does not name is deleted, or, when other VPCs have it too, leaves the VPC.

Names are the identity: a VPC by its name, a subnet, group, network ACL, route table, flow log, NAT
gateway, target group or load balancer by (VPC name, its name), an instance by its name. A flow log
belongs to the VPC of the resource it watches. The VPC's default group, default ACL and main route table are the file's ``default`` and ``main``: never
created or deleted here, and their rules (entries, routes) are changed only where the file names them
with rules (entries, routes). A VPC's internet gateway is the one attached to it (at most one), named
as the file says; a detached gateway of that name is attached again rather than a new one made, and
other detached gateways are deleted. An instance's elastic IP is the one associated with it; one that
was associated with it before the instance had to be re-created (or is named after it, as the ones made
here are) is associated again, so a re-created instance keeps its public address. A public NAT
gateway's elastic IP is named ``VPC/NAME`` after it, and a re-created gateway takes it again. Elastic IPs
the file does not ask for are disassociated and released (a NAT gateway's only once its gateway is
deleted: the API refuses before). A NAT gateway or a load balancer without an explicit address keeps
the one it has. Deleting an instance leaves its targets in the target groups (the API's rule); the
groups are then changed to name the instance the file names. Hosts must be registered (the lab does it
for its hosts).

Order, so that every reference exists when it is made and nothing is deleted while in use:

1. flow logs the file does not name (or whose VPC goes); load balancers, target groups of VPCs that go
   and NAT gateways that go (before their subnets; a NAT gateway's elastic IP is then disassociated);
   instances; elastic IPs the file does not ask for (before any gateway is detached); subnets; then
   VPCs (with their zones, egress-only gateway, groups, ACLs and route tables, and their gateway
   detached and deleted);
2. VPCs, with their IPv6 blocks; their DHCP option sets (the ones left unused deleted); their zones;
   gateways, created attached, and egress-only gateways; groups, created without the rules that name
   groups; ACLs with their entries; route tables, with the routes whose targets exist; subnets, with
   their ACL, route table and /64; every group's rules, now that all groups exist; instances, with
   their groups; NAT gateways, with their elastic IPs; every table's routes, now that every instance's
   ENI and every NAT gateway exists; elastic IPs, allocated and associated; target groups, now that
   their instances exist; load balancers, now that their target groups exist;
3. target groups the file no longer names (no listener names them any more); groups, ACLs and route
   tables the file no longer names (no instance or subnet uses them any more); gateways the file no
   longer gives, once no route names them; flow logs.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from vswitch.controlplane import resources
from vswitch.controlplane.client import ApiClient
from vswitch.topology import (DEFAULT, EGRESS_ONLY_GATEWAY, INTERNET_GATEWAY, MAIN, NAT_GATEWAY, DnsZone, FlowLog,
                               NetworkAclEntry, Route, SecurityGroupRule, Target, Topology, Vpc)


def apply_topology(api: ApiClient, topo: Topology) -> list[str]:
    """Converge; returns a line per change made (empty: nothing to do)."""
    changes: list[str] = []
    vpcs = {v.get("name"): v for v in api.call("GET", "/v1/vpcs")}
    subnets = {(s["vpc_id"], s.get("name")): s for s in api.call("GET", "/v1/subnets")}
    instances = {i["name"]: i for i in api.call("GET", "/v1/instances")}
    want_vpcs = {v.name: v for v in topo.vpcs}
    want_subnets = {(v.name, s.name): s for v in topo.vpcs for s in v.subnets}
    want_instances = {i.name: (v, i) for v in topo.vpcs for i in v.instances}
    want_nats = {(v.name, n.name): n for v in topo.vpcs for n in v.nat_gateways}
    want_lbs = {(v.name, b.name): b for v in topo.vpcs for b in v.load_balancers}
    subnet_names = {s["id"]: (vpc_name, s.get("name")) for vpc_name, vpc in vpcs.items()
                    for (vid, _), s in subnets.items() if vid == vpc["id"]}
    subnets_by_name = {subnet_names[s["id"]]: s for s in subnets.values() if s["id"] in subnet_names}

    def keep_vpc(name: str) -> bool:
        return name in want_vpcs and str(want_vpcs[name].cidr) == vpcs[name]["cidr_block"]

    def block_after(name: str) -> ipaddress.IPv6Network | None:
        """A kept VPC's IPv6 /56 once converged, when known now: the file's, or the amazon-provided one it
        has (None: no IPv6, or one still to be made, which no subnet can have a /64 of yet)."""
        want, have = want_vpcs[name], vpcs[name].get("ipv6_cidr_block")
        if not want.ipv6:
            return None
        return want.ipv6_cidr or (ipaddress.IPv6Network(have) if have else None)

    def subnet_block(key) -> ipaddress.IPv6Network | None:
        return want_subnets[key].ipv6_block(block_after(key[0]))

    def keep_subnet(key) -> bool:
        # An IPv6 /64 is added in place; one that must go or change re-creates the subnet.
        return (key in want_subnets and keep_vpc(key[0])
                and str(want_subnets[key].cidr) == subnets_by_name[key]["cidr_block"]
                and subnets_by_name[key].get("ipv6_cidr_block") in (None, str(subnet_block(key))))

    def same_ipv6(inst: dict, want) -> bool:
        """The instance has the IPv6 address the file asks for: one (the file's, if it gives one) in a
        subnet with IPv6, none in another."""
        v, i = want
        if want_subnets[(v.name, i.subnet)].ipv6_index is None:
            return inst.get("ipv6_address") is None
        if inst.get("ipv6_address") is None:
            return False
        return i.ipv6 is None or str(i.ipv6_address(subnet_block((v.name, i.subnet)))) == inst["ipv6_address"]

    # 1. deletions, dependents first
    # A flow log belongs to the VPC of what it watches, as that is now (its target may go below).
    vpc_names = {v["id"]: name for name, v in vpcs.items()}
    owner = {**vpc_names, **{s["id"]: vpc_names.get(s["vpc_id"]) for s in subnets.values()},
             **{i["eni_id"]: vpc_names.get(i["vpc_id"]) for i in instances.values()}}
    want_flow_logs = {(v.name, f.name) for v in topo.vpcs for f in v.flow_logs}
    flow_log_keys: dict[str, tuple[str, str]] = {}
    for fl in api.call("GET", "/v1/flow-logs"):
        vpc_name = owner.get(fl["resource_id"])
        key = (vpc_name, fl.get("name"))
        if vpc_name is not None and key in want_flow_logs and keep_vpc(vpc_name):
            flow_log_keys[fl["id"]] = key
            continue
        api.call("DELETE", f"/v1/flow-logs/{fl['id']}")
        changes.append(f"deleted flow log {vpc_name}/{fl.get('name') or fl['id']}" if vpc_name is not None
                       else f"deleted flow log {fl.get('name') or fl['id']} (what it watched is gone)")

    # Load balancers, then the target groups of VPCs that go, then NAT gateways: before the subnets and
    # VPCs they are in. One is kept when the file names it (the oldest of its name) as it is: the same
    # subnets, connectivity and, when the file gives one, address; else it goes (and is re-created below).
    kept_lbs: set[tuple] = set()
    for lb in api.call("GET", "/v1/load-balancers"):
        vpc_name = vpc_names.get(lb["vpc_id"])
        key = (vpc_name, lb.get("name"))
        want = want_lbs.get(key)
        where = [subnet_names.get(s) for s in lb["subnet_ids"]]
        if (want is not None and key not in kept_lbs and where == [(vpc_name, s) for s in want.subnets]
                and all(keep_subnet(x) for x in where)
                and (want.private_ip is None or str(want.private_ip) == lb.get("private_ip"))):
            kept_lbs.add(key)
            continue
        api.call("DELETE", f"/v1/load-balancers/{lb['id']}")
        changes.append(f"deleted load balancer {vpc_name}/{lb.get('name')} ({lb['id']}, {lb.get('private_ip')})")
    for tg in api.call("GET", "/v1/target-groups"):
        vpc_name = vpc_names.get(tg["vpc_id"])
        if not keep_vpc(vpc_name):  # the others: once the load balancers have left them (step 3)
            api.call("DELETE", f"/v1/target-groups/{tg['id']}")
            changes.append(f"deleted target group {vpc_name}/{tg.get('name')} ({tg['id']})")
    kept_nats: dict[tuple, dict] = {}
    for nat in api.call("GET", "/v1/nat-gateways"):
        vpc_name = vpc_names.get(nat["vpc_id"])
        key = (vpc_name, nat.get("name"))
        want = want_nats.get(key)
        where = subnet_names.get(nat["subnet_id"])
        if (want is not None and key not in kept_nats and where == (vpc_name, want.subnet) and keep_subnet(where)
                and nat.get("connectivity_type") == want.connectivity
                and (want.private_ip is None or str(want.private_ip) == nat.get("private_ip"))):
            kept_nats[key] = nat
            continue
        api.call("DELETE", f"/v1/nat-gateways/{nat['id']}")  # its elastic IP stays, disassociated: below
        changes.append(f"deleted NAT gateway {vpc_name}/{nat.get('name') or nat['id']} ({nat['id']}, "
                       f"{nat.get('private_ip')})")

    # An elastic IP belongs to the instance it is on, as that is now (deleting it disassociates the
    # address), else to the instance it is named after.
    instance_names = {i["id"]: name for name, i in instances.items()}
    eip_owner = {e["id"]: (instance_names.get(e["instance_id"]), True) if e.get("instance_id")
                 else (e.get("name"), False) for e in api.call("GET", "/v1/elastic-ips")}
    for name, inst in instances.items():
        where = subnet_names.get(inst["subnet_id"])
        want = want_instances.get(name)
        same = (want is not None and where == (want[0].name, want[1].subnet) and keep_subnet(where)
                and (not want[1].ip_given or str(want[1].ip) == inst["private_ip"])
                and inst.get("interface_type", "tun") == want[1].interface and same_ipv6(inst, want))
        if not same:
            api.call("DELETE", f"/v1/instances/{inst['id']}")
            changes.append(f"deleted instance {name} ({inst['private_ip']})")
    instances = {i["name"]: i for i in api.call("GET", "/v1/instances")}
    kept_eips = _release_elastic_ips(
        api, changes, eip_owner, instances,
        {name for name, (_, i) in want_instances.items() if i.elastic_ip}
        | {_nat_eip_name(*key) for key, n in want_nats.items() if n.connectivity == "public"},
        {nat["id"]: _nat_eip_name(*key) for key, nat in kept_nats.items()})
    for key, s in subnets_by_name.items():
        if not keep_subnet(key):
            api.call("DELETE", f"/v1/subnets/{s['id']}")
            changes.append(f"deleted subnet {key[0]}/{key[1]} ({s['cidr_block']})")
    zones = api.call("GET", "/v1/dns-zones")
    doomed_dhcp: set[str] = set()  # option sets that were a VPC's: deleted once no VPC uses them
    for name, vpc in vpcs.items():
        if not keep_vpc(name):
            zones = _leave_zones(api, changes, name, vpc["id"], zones, keep=[])
            for eigw in api.call("GET", "/v1/egress-only-internet-gateways", params={"vpc_id": vpc["id"]}):
                api.call("DELETE", f"/v1/egress-only-internet-gateways/{eigw['id']}")
                changes.append(f"deleted egress-only internet gateway {name}/{eigw.get('name') or eigw['id']} "
                               f"({eigw['id']})")
            if vpc.get("dhcp_options_id"):
                doomed_dhcp.add(vpc["dhcp_options_id"])
            groups = api.call("GET", "/v1/security-groups", params={"vpc_id": vpc["id"]})
            _delete_groups(api, [g for g in groups if not g.get("default")], [g for g in groups if g.get("default")])
            for acl in api.call("GET", "/v1/network-acls", params={"vpc_id": vpc["id"]}):
                if not acl.get("default"):
                    api.call("DELETE", f"/v1/network-acls/{acl['id']}")
            for table in api.call("GET", "/v1/route-tables", params={"vpc_id": vpc["id"]}):
                if not table.get("main"):
                    api.call("DELETE", f"/v1/route-tables/{table['id']}")
            for igw in api.call("GET", "/v1/internet-gateways", params={"vpc_id": vpc["id"]}):
                _delete_gateway(api, changes, name, igw)
            api.call("DELETE", f"/v1/vpcs/{vpc['id']}")
            changes.append(f"deleted VPC {name} ({vpc['cidr_block']})")

    # 2. creations and changes, dependencies first
    vpcs = {v.get("name"): v for v in api.call("GET", "/v1/vpcs")}
    for name, v in want_vpcs.items():
        if name not in vpcs:
            body = {"name": name, "cidr_block": str(v.cidr), **_ipv6_body(v)}
            vpcs[name] = api.call("POST", "/v1/vpcs", body)
            changes.append(f"created VPC {name} ({v.cidr}" + (f", {vpcs[name]['ipv6_cidr_block']}" if v.ipv6 else "")
                           + f", VNI {vpcs[name]['vni']})")
        else:
            vpcs[name] = _converge_vpc_ipv6(api, changes, v, vpcs[name])
    region = None
    for name, v in want_vpcs.items():
        if v.dhcp_options is not None and region is None:
            region = api.call("GET", "/v1/whoami").get("region")
        vpcs[name] = _converge_dhcp(api, changes, v, vpcs[name], region, doomed_dhcp)
    if doomed_dhcp:
        used = {x.get("dhcp_options_id") for x in api.call("GET", "/v1/vpcs")}
        for dopt_id in sorted(doomed_dhcp - used):
            api.call("DELETE", f"/v1/dhcp-options/{dopt_id}")
            changes.append(f"deleted DHCP options {dopt_id} (no VPC uses them)")
    for name, v in want_vpcs.items():
        zones = _converge_zones(api, changes, v, vpcs[name]["id"], zones)
    gateways = api.call("GET", "/v1/internet-gateways")
    detached = [g for g in gateways if not g.get("vpc_id")]  # the ones no VPC of the file takes again go
    routing = {name: _Routing(api, v, vpcs[name], changes, gateways) for name, v in want_vpcs.items()}
    for rt in routing.values():
        rt.converge_gateway(detached)
        rt.converge_egress_only_gateway()
    policies = {name: _Policy(api, v, vpcs[name], changes) for name, v in want_vpcs.items()}
    for p in policies.values():
        p.create_groups()
        p.converge_acls()
    enis = {name: i["eni_id"] for name, i in instances.items()}
    for rt in routing.values():
        rt.create_tables(enis)
    have = {(s["vpc_id"], s.get("name")): s for s in api.call("GET", "/v1/subnets")}
    subnet_ids = {}
    subnet_blocks = {}  # the subnets' IPv6 /64s, now that every VPC has its /56
    for (vpc_name, name), s in want_subnets.items():
        vpc_id = vpcs[vpc_name]["id"]
        block = vpcs[vpc_name].get("ipv6_cidr_block")
        subnet_blocks[(vpc_name, name)] = six = s.ipv6_block(ipaddress.IPv6Network(block) if block else None)
        ids = {"network_acl_id": policies[vpc_name].acl_ids[s.network_acl],
               "route_table_id": routing[vpc_name].table_ids[s.route_table]}
        found = have.get((vpc_id, name))
        if found is None:
            found = api.call("POST", "/v1/subnets", {"vpc_id": vpc_id, "name": name, "cidr_block": str(s.cidr),
                                                     **ids, **({"ipv6_cidr_block": str(six)} if six else {})})
            changes.append(f"created subnet {vpc_name}/{name} (" + ", ".join(
                [str(s.cidr)] + ([str(six)] if six else [])
                + ([f"network ACL {s.network_acl}"] if s.network_acl != DEFAULT else [])
                + ([f"route table {s.route_table}"] if s.route_table != MAIN else [])) + ")")
        else:
            patch = {k: x for k, x in ids.items() if found.get(k) != x}
            if six is not None and found.get("ipv6_cidr_block") is None:  # a /64 added (step 1 removed others)
                patch["ipv6_cidr_block"] = str(six)
            if patch:
                api.call("PATCH", f"/v1/subnets/{found['id']}", patch)
                changes.append(f"changed subnet {vpc_name}/{name}: " + ", ".join(
                    {"network_acl_id": f"network_acl={s.network_acl}", "route_table_id": f"route_table={s.route_table}",
                     "ipv6_cidr_block": f"ipv6_cidr={six}"}[k] for k in patch))
        subnet_ids[(vpc_name, name)] = found["id"]
    for p in policies.values():
        p.converge_rules()
    for name, (v, i) in want_instances.items():
        group_ids = [policies[v.name].group_ids[g] for g in i.security_groups]
        tracking = dataclasses.asdict(i.connection_tracking)
        found = instances.get(name)
        if found is None:
            body = {"name": name, "subnet_id": subnet_ids[(v.name, i.subnet)], "host": i.host,
                    "source_dest_check": i.source_dest_check, "security_group_ids": group_ids,
                    "connection_tracking": tracking, "interface_type": i.interface}
            if i.ip_given:
                body["private_ip"] = str(i.ip)
            if i.ipv6 is not None:
                body["ipv6_address"] = str(i.ipv6_address(subnet_blocks[(v.name, i.subnet)]))
            created = api.call("POST", "/v1/instances", body)
            changes.append(f"created instance {name} (" + ", ".join(
                [created["private_ip"]] + ([created["ipv6_address"]] if created.get("ipv6_address") else [])
                + ([i.interface] if i.interface != "tun" else [])) + f" on {i.host})")
            continue
        patch, shown = {}, []
        if found["host"] != i.host:
            patch["host"] = i.host
            shown.append(f"host={i.host}")
        if found["source_dest_check"] != i.source_dest_check:
            patch["source_dest_check"] = i.source_dest_check
            shown.append(f"source_dest_check={i.source_dest_check}")
        if sorted(found["security_group_ids"]) != sorted(group_ids):
            patch["security_group_ids"] = group_ids
            shown.append(f"security_groups={','.join(i.security_groups)}")
        if found.get("connection_tracking") != tracking:
            patch["connection_tracking"] = tracking
            old = found.get("connection_tracking") or {}
            shown.append("connection_tracking(" + ", ".join(
                f"{k}={x}" for k, x in tracking.items() if old.get(k) != x) + ")")
        if patch:
            api.call("PATCH", f"/v1/instances/{found['id']}", patch)
            changes.append(f"changed instance {name}: " + ", ".join(shown))
    instances = {i["name"]: i for i in api.call("GET", "/v1/instances")}
    enis = {name: i["eni_id"] for name, i in instances.items()}
    for rt in routing.values():
        rt.create_nat_gateways(subnet_ids, kept_eips)
    for rt in routing.values():
        rt.converge_routes(enis)
    _associate_elastic_ips(api, changes, instances, kept_eips,
                           [name for name, (_, i) in want_instances.items() if i.elastic_ip])
    balancing = [_Balancing(api, v, vpcs[name], changes) for name, v in want_vpcs.items()]
    for b in balancing:
        b.converge_target_groups(instances)
        b.converge_load_balancers(subnet_ids)

    # 3. what no longer has users, and flow logs (their targets exist now)
    for b in balancing:
        b.delete_unnamed()
    for p in policies.values():
        p.delete_unnamed()
    for rt in routing.values():
        rt.delete_unnamed()
    for igw in detached:
        _delete_gateway(api, changes, None, igw)
    flow_logs = api.call("GET", "/v1/flow-logs")
    for v in topo.vpcs:
        for f in v.flow_logs:
            kind, _, target = f.resource.partition("/")
            resource_id = {"vpc": lambda: vpcs[v.name]["id"], "subnet": lambda: subnet_ids[(v.name, target)],
                           "instance": lambda: enis[target]}[kind]()
            want = {"resource_id": resource_id, "traffic_type": f.traffic_type, "log_format": f.log_format,
                    "max_aggregation_interval": f.interval}
            existing = [fl for fl in flow_logs if flow_log_keys.get(fl["id"]) == (v.name, f.name)]
            for extra in existing[1:]:  # made by hand under the same name
                api.call("DELETE", f"/v1/flow-logs/{extra['id']}")
                changes.append(f"deleted flow log {v.name}/{f.name} ({extra['id']}, a second one of that name)")
            if existing:
                differ = [k for k, x in want.items() if existing[0].get(k) != x]
                if not differ:
                    continue
                api.call("DELETE", f"/v1/flow-logs/{existing[0]['id']}")
            api.call("POST", "/v1/flow-logs", {"name": f.name, **want})
            if existing:
                changes.append(f"re-created flow log {v.name}/{f.name}: " + ", ".join(
                    _flow_log_field(f, k) for k in differ) + " (a flow log cannot be modified)")
            else:
                changes.append(f"created flow log {v.name}/{f.name} ({f.resource}, {f.traffic_type}, "
                               f"every {f.interval} s)")
    return changes


class _Policy:
    """One VPC's security groups and network ACLs, converged in the steps ``apply_topology`` orders."""

    def __init__(self, api: ApiClient, vpc: Vpc, record: dict, changes: list[str]):
        self.api, self.vpc, self.changes = api, vpc, changes
        self.groups = {g["id"]: g for g in api.call("GET", "/v1/security-groups", params={"vpc_id": record["id"]})}
        self.acls = api.call("GET", "/v1/network-acls", params={"vpc_id": record["id"]})
        self.record = record
        default_sg = record["default_security_group_id"]
        self.group_ids = {DEFAULT: default_sg}
        self.group_ids.update({g["name"]: g["id"] for g in self.groups.values() if g["id"] != default_sg})
        self.acl_ids = {DEFAULT: record["default_network_acl_id"]}
        for acl in self.acls:  # the oldest of a name (the API lets names repeat); the others go
            if acl["id"] != record["default_network_acl_id"]:
                self.acl_ids.setdefault(acl.get("name"), acl["id"])

    def create_groups(self) -> None:
        """The groups the file names and the account lacks, without the rules that name groups (the
        groups they name may not exist yet: ``converge_rules`` adds them)."""
        for g in self.vpc.security_groups:
            if g.name in self.group_ids:
                continue
            body = {"vpc_id": self.record["id"], "name": g.name, "description": g.description,
                    **{d: [_rule_body(r, {}) for r in getattr(g, d) if r.source_group is None]
                       for d in ("ingress", "egress")}}
            rec = self.api.call("POST", "/v1/security-groups", body)
            self.groups[rec["id"]] = rec
            self.group_ids[g.name] = rec["id"]
            self.changes.append(f"created security group {self.vpc.name}/{g.name} ({rec['id']})")

    def converge_rules(self) -> None:
        for g in self.vpc.security_groups:
            rec = self.groups[self.group_ids[g.name]]
            patch = {}
            for d in ("ingress", "egress"):
                rules = getattr(g, d)
                if rules is None:  # the default group, this direction not named: left as it is
                    continue
                want = [_rule_body(r, self.group_ids) for r in rules]
                if _rules_key(want) != _rules_key(rec[d]):
                    patch[d] = want
            if (g.name != DEFAULT or g.description is not None) and \
                    (rec.get("description") or None) != (g.description or None):
                patch["description"] = g.description or ""  # null would mean "no change"
            if patch:
                self.groups[rec["id"]] = self.api.call("PATCH", f"/v1/security-groups/{rec['id']}", patch)
                self.changes.append(f"changed security group {self.vpc.name}/{g.name}: {', '.join(patch)}")

    def converge_acls(self) -> None:
        by_id = {a["id"]: a for a in self.acls}
        for a in self.vpc.network_acls:
            want = None if a.entries is None else [_entry_body(e) for e in a.entries]
            acl_id = self.acl_ids.get(a.name)
            if acl_id is None:
                rec = self.api.call("POST", "/v1/network-acls", {"vpc_id": self.record["id"], "name": a.name,
                                                                 "entries": want or []})
                self.acl_ids[a.name] = rec["id"]
                self.changes.append(f"created network ACL {self.vpc.name}/{a.name} ({rec['id']})")
            elif want is not None and _entries_key(want) != _entries_key(by_id[acl_id]["entries"]):
                self.api.call("PATCH", f"/v1/network-acls/{acl_id}", {"entries": want})
                self.changes.append(f"changed network ACL {self.vpc.name}/{a.name}: entries")

    def delete_unnamed(self) -> None:
        """The groups and ACLs the file does not name: no instance or subnet of the VPC uses them now."""
        named = {g.name for g in self.vpc.security_groups} | {DEFAULT}
        default_sg = self.group_ids[DEFAULT]
        doomed = [g for g in self.groups.values() if g["id"] != default_sg and g["name"] not in named]
        _delete_groups(self.api, doomed, [])
        for g in doomed:
            self.changes.append(f"deleted security group {self.vpc.name}/{g['name']} ({g['id']})")
        named = {a.name for a in self.vpc.network_acls}
        kept = {self.acl_ids[n] for n in named | {DEFAULT} if n in self.acl_ids}
        for acl in self.acls:
            if acl["id"] not in kept:
                self.api.call("DELETE", f"/v1/network-acls/{acl['id']}")
                self.changes.append(f"deleted network ACL {self.vpc.name}/{acl.get('name')} ({acl['id']})")


class _Routing:
    """One VPC's internet gateway and route tables, converged in the steps ``apply_topology`` orders."""

    def __init__(self, api: ApiClient, vpc: Vpc, record: dict, changes: list[str], gateways: list[dict]):
        self.api, self.vpc, self.record, self.changes = api, vpc, record, changes
        self.gateway = next((g for g in gateways if g.get("vpc_id") == record["id"]), None)  # at most one
        self.tables = {t["id"]: t for t in api.call("GET", "/v1/route-tables", params={"vpc_id": record["id"]})}
        self.table_ids = {MAIN: record["main_route_table_id"]}
        for t in self.tables.values():  # the oldest of a name (the API lets names repeat); the others go
            if not t.get("main"):
                self.table_ids.setdefault(t.get("name"), t["id"])
        # The NAT gateways left by step 1 are the file's, one a name.
        self.nat_ids = {n.get("name"): n["id"] for n in api.call("GET", "/v1/nat-gateways")
                        if n["vpc_id"] == record["id"]}
        self.eigw = next(iter(api.call("GET", "/v1/egress-only-internet-gateways",
                                       params={"vpc_id": record["id"]})), None)  # at most one

    def converge_gateway(self, detached: list[dict]) -> None:
        """The file's gateway attached to the VPC: the one attached, renamed if need be; else a detached one
        of its name, attached again; else a new one. One the file no longer gives goes in
        ``delete_unnamed``, once no route names it."""
        want = self.vpc.internet_gateway
        if want is None:
            return
        where = f"{self.vpc.name}/{want.name}"
        if self.gateway is not None:
            if self.gateway.get("name") != want.name:
                old = self.gateway.get("name")
                self.gateway = self.api.call("PATCH", f"/v1/internet-gateways/{self.gateway['id']}",
                                             {"name": want.name})
                self.changes.append(f"changed internet gateway {where}: name (was {old})")
            return
        again = next((g for g in detached if g.get("name") == want.name), None)
        if again is not None:
            detached.remove(again)
            self.gateway = self.api.call("PATCH", f"/v1/internet-gateways/{again['id']}",
                                         {"vpc_id": self.record["id"]})
            self.changes.append(f"attached internet gateway {where} ({again['id']})")
        else:
            self.gateway = self.api.call("POST", "/v1/internet-gateways",
                                         {"name": want.name, "vpc_id": self.record["id"]})
            self.changes.append(f"created internet gateway {where} ({self.gateway['id']})")

    def converge_egress_only_gateway(self) -> None:
        """The file's egress-only gateway: the VPC's, renamed if need be, else a new one. One the file no
        longer gives goes in ``delete_unnamed``, once no route names it."""
        want = self.vpc.egress_only_gateway
        if want is None:
            return
        where = f"{self.vpc.name}/{want.name}"
        if self.eigw is None:
            self.eigw = self.api.call("POST", "/v1/egress-only-internet-gateways",
                                      {"vpc_id": self.record["id"], "name": want.name})
            self.changes.append(f"created egress-only internet gateway {where} ({self.eigw['id']})")
        elif self.eigw.get("name") != want.name:
            old = self.eigw.get("name")
            self.eigw = self.api.call("PATCH", f"/v1/egress-only-internet-gateways/{self.eigw['id']}",
                                      {"name": want.name})
            self.changes.append(f"changed egress-only internet gateway {where}: name (was {old})")

    def create_nat_gateways(self, subnet_ids: dict[tuple[str, str], str], kept_eips: dict[str, dict]) -> None:
        """The NAT gateways the file names and the VPC lacks (its subnets and gateway exist now); a public
        one with the elastic IP it had (named ``VPC/NAME``), else a new one."""
        for n in self.vpc.nat_gateways:
            if n.name in self.nat_ids:
                continue
            where = f"{self.vpc.name}/{n.name}"
            body = {"subnet_id": subnet_ids[(self.vpc.name, n.subnet)], "name": n.name,
                    "connectivity_type": n.connectivity}
            if n.private_ip is not None:
                body["private_ip"] = str(n.private_ip)
            if n.connectivity == "public":
                eip = kept_eips.get(_nat_eip_name(self.vpc.name, n.name))
                if eip is None:
                    eip = self.api.call("POST", "/v1/elastic-ips", {"name": _nat_eip_name(self.vpc.name, n.name)})
                    self.changes.append(f"allocated elastic IP {eip['public_ip']} ({eip['id']}) for NAT gateway "
                                        f"{where}")
                body["allocation_id"] = eip["id"]
            rec = self.api.call("POST", "/v1/nat-gateways", body)
            self.nat_ids[n.name] = rec["id"]
            self.changes.append(f"created NAT gateway {where} ({rec['id']}, {rec['private_ip']} in subnet {n.subnet}"
                                + (f", public {rec['public_ip']}" if rec.get("public_ip") else ", private") + ")")

    def _route_body(self, route: Route, enis: dict[str, str]) -> dict | None:
        """A route as the API takes it; None while its instance (NAT gateway) has no ENI (is not made) yet."""
        if route.target == INTERNET_GATEWAY:
            return {"destination": route.destination, "gateway_id": self.gateway["id"]}
        if route.target == EGRESS_ONLY_GATEWAY:
            return {"destination": route.destination, "egress_only_gateway_id": self.eigw["id"]}
        kind, _, name = route.target.partition("/")
        if kind == NAT_GATEWAY:
            nat = self.nat_ids.get(name)
            return None if nat is None else {"destination": route.destination, "nat_gateway_id": nat}
        eni = enis.get(name)
        return None if eni is None else {"destination": route.destination, "network_interface_id": eni}

    def create_tables(self, enis: dict[str, str]) -> None:
        """The tables the file names and the VPC lacks, with the routes whose targets exist (the others
        are added by ``converge_routes``, once every instance and NAT gateway exists)."""
        for t in self.vpc.route_tables:
            if t.name in self.table_ids:
                continue
            routes = [body for route in t.routes if (body := self._route_body(route, enis)) is not None]
            rec = self.api.call("POST", "/v1/route-tables", {"vpc_id": self.record["id"], "name": t.name,
                                                             "routes": routes})
            self.tables[rec["id"]] = rec
            self.table_ids[t.name] = rec["id"]
            self.changes.append(f"created route table {self.vpc.name}/{t.name} ({rec['id']})")

    def converge_routes(self, enis: dict[str, str]) -> None:
        for t in self.vpc.route_tables:
            if t.routes is None:  # the main table named without routes: left as it is
                continue
            want = [self._route_body(route, enis) for route in t.routes]
            rec = self.tables[self.table_ids[t.name]]
            if _routes_key(want) != _routes_key(rec["routes"]):
                self.tables[rec["id"]] = self.api.call("PATCH", f"/v1/route-tables/{rec['id']}", {"routes": want})
                self.changes.append(f"changed route table {self.vpc.name}/{t.name}: routes")

    def delete_unnamed(self) -> None:
        """The tables the file does not name (no subnet uses them now); then the gateways the file no
        longer gives: the routes to one go first (from the main table, when the file leaves that as it
        is), then an internet gateway is detached (no elastic IP of the VPC is associated any more), and
        each is deleted."""
        kept = {self.table_ids[n] for n in {t.name for t in self.vpc.route_tables} | {MAIN} if n in self.table_ids}
        for t in list(self.tables.values()):
            if t["id"] not in kept:
                self.api.call("DELETE", f"/v1/route-tables/{t['id']}")
                self.changes.append(f"deleted route table {self.vpc.name}/{t.get('name')} ({t['id']})")
                del self.tables[t["id"]]
        if self.vpc.egress_only_gateway is None and self.eigw is not None:
            shown = self.eigw.get("name") or self.eigw["id"]
            self._drop_routes("egress_only_gateway_id", self.eigw["id"], f"egress-only internet gateway {shown}")
            self.api.call("DELETE", f"/v1/egress-only-internet-gateways/{self.eigw['id']}")
            self.changes.append(f"deleted egress-only internet gateway {self.vpc.name}/{shown} ({self.eigw['id']})")
            self.eigw = None
        if self.vpc.internet_gateway is not None or self.gateway is None:
            return
        self._drop_routes("gateway_id", self.gateway["id"],
                          f"internet gateway {self.gateway.get('name') or self.gateway['id']}")
        _delete_gateway(self.api, self.changes, self.vpc.name, self.gateway)
        self.gateway = None

    def _drop_routes(self, field: str, target: str, shown: str) -> None:
        """Remove the routes to ``target`` (in the route field ``field``) from every table of the VPC."""
        for t in self.tables.values():
            routes = [{"destination": x["destination"], **{f: x.get(f) for f, _ in resources.ROUTE_TARGETS}}
                      for x in t["routes"] if x.get("gateway_id") != "local"]
            kept_routes = [x for x in routes if x.get(field) != target]
            if len(kept_routes) != len(routes):
                self.tables[t["id"]] = self.api.call("PATCH", f"/v1/route-tables/{t['id']}", {"routes": kept_routes})
                self.changes.append(f"changed route table {self.vpc.name}/{t.get('name')}: routes (those to {shown} "
                                    "removed)")


def _ipv6_body(v: Vpc) -> dict:
    """The fields of a VPC body that give it the file's IPv6 /56 (none: no IPv6)."""
    if v.ipv6_cidr is not None:
        return {"ipv6_cidr_block": str(v.ipv6_cidr)}
    return {"amazon_provided_ipv6_cidr_block": True} if v.ipv6 else {}


def _converge_vpc_ipv6(api: ApiClient, changes: list[str], v: Vpc, record: dict) -> dict:
    """A kept VPC's IPv6 /56 as the file says (step 1 removed the subnets' /64s that must go): removed,
    added, or replaced by the file's; ``ipv6: true`` keeps any block the VPC has. Returns the record."""
    have = record.get("ipv6_cidr_block")
    drop = have is not None and (not v.ipv6 or (v.ipv6_cidr is not None and str(v.ipv6_cidr) != have))
    if drop:
        record = api.call("PATCH", f"/v1/vpcs/{record['id']}", {"disassociate_ipv6_cidr_block": True})
        changes.append(f"changed VPC {v.name}: IPv6 block {have} removed")
    if v.ipv6 and record.get("ipv6_cidr_block") is None:
        record = api.call("PATCH", f"/v1/vpcs/{record['id']}", _ipv6_body(v))
        changes.append(f"changed VPC {v.name}: IPv6 block {record['ipv6_cidr_block']} added")
    return record


def _converge_dhcp(api: ApiClient, changes: list[str], v: Vpc, record: dict, region: str | None,
                   doomed: set[str]) -> dict:
    """The VPC's DHCP option set as the file says: the one it has when its options are the file's, else a
    new one (sets cannot be changed), named after the VPC; none ("default") when the file gives none. A
    set the VPC leaves goes into ``doomed`` (deleted once no VPC uses it). Returns the VPC's record."""
    have = record.get("dhcp_options_id")
    want = v.dhcp_options
    if want is None:
        if have is None:
            return record
        record = api.call("PATCH", f"/v1/vpcs/{record['id']}", {"dhcp_options_id": "default"})
        changes.append(f"changed VPC {v.name}: dhcp_options=default")
        doomed.add(have)
        return record
    wanted = {"domain_name": want.domain_name or f"{region}.compute.internal",
              "domain_name_servers": list(want.domain_name_servers), "ntp_servers": list(want.ntp_servers)}
    if have is not None:
        found = api.call("GET", f"/v1/dhcp-options/{have}")
        if all(found.get(k) == x for k, x in wanted.items()):
            return record
    body = {"name": v.name, "domain_name_servers": wanted["domain_name_servers"], "ntp_servers": wanted["ntp_servers"],
            **({"domain_name": want.domain_name} if want.domain_name else {})}
    made = api.call("POST", "/v1/dhcp-options", body)
    record = api.call("PATCH", f"/v1/vpcs/{record['id']}", {"dhcp_options_id": made["id"]})
    changes.append(f"created DHCP options {v.name} ({made['id']}: {made['domain_name']}, "
                   f"{', '.join(made['domain_name_servers'])}) for VPC {v.name}")
    if have is not None:
        doomed.add(have)
    return record


def _records_key(records: list[dict]) -> list:
    """A zone's records as a sorted list of normalized tuples: equal keys, same records (names compare
    in lower case without the trailing dot, as DNS does; a record set's values in any order)."""
    def value(kind: str, x: str) -> str:
        return resources.dns_name(x) if kind in ("CNAME", "PTR") else x
    return sorted(repr((resources.dns_name(r["name"]), r["type"], r["ttl"],
                        sorted(value(r["type"], x) for x in r["values"]))) for r in records)


def _zone_body(zone: DnsZone) -> list[dict]:
    return [{"name": r.name, "type": r.type, "ttl": r.ttl, "values": list(r.values)} for r in zone.records]


def _leave_zones(api: ApiClient, changes: list[str], vpc_name: str, vpc_id: str, zones: list[dict],
                 keep: list[str]) -> list[dict]:
    """The zones associated with the VPC but those in ``keep`` (ids) no longer are: deleted when it was
    their only VPC, else the VPC is taken off their list. Returns the zones as they are now."""
    out = []
    for z in zones:
        if vpc_id not in z["vpc_ids"] or z["id"] in keep:
            out.append(z)
        elif z["vpc_ids"] == [vpc_id]:
            api.call("DELETE", f"/v1/dns-zones/{z['id']}")
            changes.append(f"deleted DNS zone {vpc_name}/{z['name']} ({z['id']})")
        else:
            z = api.call("PATCH", f"/v1/dns-zones/{z['id']}", {"vpc_ids": [x for x in z["vpc_ids"] if x != vpc_id]})
            changes.append(f"changed DNS zone {z['name']} ({z['id']}): no longer associated with VPC {vpc_name}")
            out.append(z)
    return out


def _converge_zones(api: ApiClient, changes: list[str], v: Vpc, vpc_id: str, zones: list[dict]) -> list[dict]:
    """The file's zones of the VPC: each the zone of its name associated with the VPC, its records changed
    in place if need be, else a new one associated with the VPC alone; the VPC's other zones are left
    (``_leave_zones``). Returns the zones as they are now."""
    mine = {resources.dns_name(z["name"]): z for z in zones if vpc_id in z["vpc_ids"]}
    kept = []
    for zone in v.dns_zones:
        records = _zone_body(zone)
        found = mine.get(resources.dns_name(zone.name))
        if found is None:
            found = api.call("POST", "/v1/dns-zones", {"name": zone.name, "vpc_ids": [vpc_id], "records": records})
            zones = [*zones, found]
            changes.append(f"created DNS zone {v.name}/{zone.name} ({found['id']}, {len(records)} record set"
                           f"{'s' if len(records) != 1 else ''})")
        elif _records_key(records) != _records_key(found["records"]):
            found = api.call("PATCH", f"/v1/dns-zones/{found['id']}", {"records": records})
            zones = [found if z["id"] == found["id"] else z for z in zones]
            changes.append(f"changed DNS zone {v.name}/{zone.name}: records")
        kept.append(found["id"])
    return _leave_zones(api, changes, v.name, vpc_id, zones, kept)


def _delete_gateway(api: ApiClient, changes: list[str], vpc_name: str | None, igw: dict) -> None:
    """Detach an internet gateway (from ``vpc_name``'s VPC) if it is attached, and delete it."""
    if igw.get("vpc_id"):
        api.call("PATCH", f"/v1/internet-gateways/{igw['id']}", {"detach": True})
    shown = f"{vpc_name}/{igw.get('name') or igw['id']}" if vpc_name else igw.get("name") or igw["id"]
    api.call("DELETE", f"/v1/internet-gateways/{igw['id']}")
    changes.append(f"deleted internet gateway {shown} ({igw['id']}" + (", detached)" if igw.get("vpc_id") else ")"))


def _release_elastic_ips(api: ApiClient, changes: list[str], owner: dict[str, tuple[str | None, bool]],
                         instances: dict[str, dict], wanted: set[str], nat_owners: dict[str, str]) -> dict[str, dict]:
    """Keep one elastic IP for each owner in ``wanted`` — an instance by name, a public NAT gateway by
    ``_nat_eip_name`` —: the one on it, else the one that was on it before it was deleted (``owner``:
    allocation id -> (instance name, whether it was associated with it); else its name), else one named
    after it; disassociate and release every other. A NAT gateway's address is never touched here (the
    API refuses: it goes with its gateway, which step 1 deleted if it goes); ``nat_owners`` (NAT gateway
    id -> its name here) says whose it is. Returns the kept ones by owner."""
    names = {i["id"]: name for name, i in instances.items()}
    kept: dict[str, dict] = {}
    eips = api.call("GET", "/v1/elastic-ips")
    for e in sorted(eips, key=lambda e: (not (e.get("instance_id") or e.get("nat_gateway_id")),
                                         not owner.get(e["id"], (None, False))[1])):
        if e.get("nat_gateway_id"):
            if e["nat_gateway_id"] in nat_owners:
                kept.setdefault(nat_owners[e["nat_gateway_id"]], e)
            continue
        who = owner.get(e["id"], (None, False))[0]
        if who in wanted and who not in kept:
            kept[who] = e
            continue
        if e.get("instance_id"):
            api.call("PATCH", f"/v1/elastic-ips/{e['id']}", {"disassociate": True})
        api.call("DELETE", f"/v1/elastic-ips/{e['id']}")
        changes.append(f"released elastic IP {e['public_ip']} ({e['id']})" + (
            f", disassociated from instance {names.get(e['instance_id'], e['instance_id'])}"
            if e.get("instance_id") else ""))
    return kept


def _associate_elastic_ips(api: ApiClient, changes: list[str], instances: dict[str, dict], kept: dict[str, dict],
                           wanted: list[str]) -> None:
    """Each instance in ``wanted`` without an elastic IP gets its kept one associated again, or a new one."""
    on = {e["instance_id"] for e in api.call("GET", "/v1/elastic-ips") if e.get("instance_id")}
    for name in wanted:
        inst = instances[name]
        if inst["id"] in on:
            continue
        if name in kept:
            e = api.call("PATCH", f"/v1/elastic-ips/{kept[name]['id']}", {"instance_id": inst["id"], "name": name})
            changes.append(f"associated elastic IP {e['public_ip']} ({e['id']}) with instance {name}")
        else:
            e = api.call("POST", "/v1/elastic-ips", {"name": name, "instance_id": inst["id"]})
            changes.append(f"allocated elastic IP {e['public_ip']} ({e['id']}) to instance {name}")


def _nat_eip_name(vpc: str, nat: str) -> str:
    """The name of a NAT gateway's elastic IP: ``VPC/NAME`` (no instance's name has a '/')."""
    return f"{vpc}/{nat}"


class _Balancing:
    """One VPC's target groups and load balancers, converged in the steps ``apply_topology`` orders."""

    def __init__(self, api: ApiClient, vpc: Vpc, record: dict, changes: list[str]):
        self.api, self.vpc, self.record, self.changes = api, vpc, record, changes
        self.groups = api.call("GET", "/v1/target-groups", params={"vpc_id": record["id"]})  # oldest first
        # The load balancers left by step 1 are the file's, one a name, in their subnets and address.
        self.balancers = {b.get("name"): b for b in api.call("GET", "/v1/load-balancers",
                                                             params={"vpc_id": record["id"]})}
        self.group_ids: dict[str, str] = {}  # the file's name -> the group kept or made

    def converge_target_groups(self, instances: dict[str, dict]) -> None:
        """Each group the file names: the oldest of its name, protocol and port, its targets and health
        check changed in place if need be; else a new one (one of its name but another protocol or port
        goes in ``delete_unnamed``, once no listener names it)."""
        for g in self.vpc.target_groups:
            where = f"{self.vpc.name}/{g.name}"
            targets = [_target_body(t, instances) for t in g.targets]
            health_check = dataclasses.asdict(g.health_check)
            found = next((x for x in self.groups if x.get("name") == g.name and x["protocol"] == g.protocol
                          and x["port"] == g.port and x["id"] not in self.group_ids.values()), None)
            if found is None:
                found = self.api.call("POST", "/v1/target-groups", {
                    "vpc_id": self.record["id"], "name": g.name, "protocol": g.protocol, "port": g.port,
                    "targets": targets, "health_check": health_check})
                self.changes.append(f"created target group {where} ({found['id']}, {g.protocol}/{g.port}, "
                                    f"{len(targets)} target{'s' if len(targets) != 1 else ''})")
            else:
                patch = {}
                if _targets_key(targets) != _targets_key(found["targets"]):
                    patch["targets"] = targets
                if found.get("health_check") != health_check:
                    patch["health_check"] = health_check
                if patch:
                    found = self.api.call("PATCH", f"/v1/target-groups/{found['id']}", patch)
                    self.changes.append(f"changed target group {where}: {', '.join(patch)}")
            self.group_ids[g.name] = found["id"]

    def converge_load_balancers(self, subnet_ids: dict[tuple[str, str], str]) -> None:
        for b in self.vpc.load_balancers:
            where = f"{self.vpc.name}/{b.name}"
            listeners = [{"protocol": li.protocol, "port": li.port, "target_group_id": self.group_ids[li.target_group]}
                         for li in b.listeners]
            found = self.balancers.get(b.name)
            if found is None:
                body = {"name": b.name, "subnet_ids": [subnet_ids[(self.vpc.name, s)] for s in b.subnets],
                        "listeners": listeners}
                if b.private_ip is not None:
                    body["private_ip"] = str(b.private_ip)
                rec = self.api.call("POST", "/v1/load-balancers", body)
                self.balancers[b.name] = rec
                self.changes.append(f"created load balancer {where} ({rec['id']}, {rec.get('private_ip')} in subnet "
                                    f"{b.subnets[0]}, {rec.get('dns_name')})")
            elif _listeners_key(listeners) != _listeners_key(found["listeners"]):
                self.balancers[b.name] = self.api.call("PATCH", f"/v1/load-balancers/{found['id']}",
                                                       {"listeners": listeners})
                self.changes.append(f"changed load balancer {where}: listeners")

    def delete_unnamed(self) -> None:
        """The target groups the file does not name (or names with another protocol or port, or names
        twice by hand): no listener names them any more."""
        kept = set(self.group_ids.values())
        for g in self.groups:
            if g["id"] not in kept:
                self.api.call("DELETE", f"/v1/target-groups/{g['id']}")
                self.changes.append(f"deleted target group {self.vpc.name}/{g.get('name')} ({g['id']})")


def _target_body(target: Target, instances: dict[str, dict]) -> dict:
    if target.instance is not None:
        return {"instance_id": instances[target.instance]["id"], "port": target.port}
    return {"ip": str(target.ip), "port": target.port}


def _targets_key(targets: list[dict]) -> list:
    """A group's targets as a sorted list of (instance id, address, port): equal keys, same targets."""
    return sorted(repr((t.get("instance_id"), t.get("ip"), t["port"])) for t in targets)


def _listeners_key(listeners: list[dict]) -> list:
    return sorted(repr((li["protocol"], li["port"], li["target_group_id"])) for li in listeners)


def _delete_groups(api: ApiClient, doomed: list[dict], others: list[dict]) -> None:
    """Delete ``doomed`` groups. A group that another group's rule names cannot be deleted, so the rules
    naming them go first from the doomed groups themselves and from ``others``."""
    ids = {g["id"] for g in doomed}
    for g in [*doomed, *others]:
        patch = {}
        for d in ("ingress", "egress"):
            rules = [r for r in g[d] if r.get("source_group_id") not in ids - {g["id"]}]
            if len(rules) != len(g[d]):
                patch[d] = rules
        if patch:
            api.call("PATCH", f"/v1/security-groups/{g['id']}", patch)
    for g in doomed:
        api.call("DELETE", f"/v1/security-groups/{g['id']}")


def _rule_body(rule: SecurityGroupRule, group_ids: dict[str, str]) -> dict:
    return {"protocol": rule.protocol, "from_port": rule.from_port, "to_port": rule.to_port, "cidr": rule.cidr,
            "source_group_id": None if rule.source_group is None else group_ids[rule.source_group],
            "description": rule.description}


def _entry_body(entry: NetworkAclEntry) -> dict:
    return {"rule_number": entry.rule, "egress": entry.egress, "protocol": entry.protocol, "action": entry.action,
            "cidr": entry.cidr, "from_port": entry.from_port, "to_port": entry.to_port}


def _protocol(value: str) -> int:
    return resources._protocol_number(str(value))


def _rules_key(rules: list[dict]) -> list:
    """Security group rules as a sorted list of normalized tuples: equal keys, same rules."""
    return sorted((repr((_protocol(r.get("protocol", "-1")), r.get("from_port", -1), r.get("to_port", -1),
                         r.get("cidr"), r.get("source_group_id"), r.get("description") or None))
                   for r in rules))


def _routes_key(routes: list[dict]) -> list:
    """A table's routes as a sorted list of (destination, target field, target id), without the implicit
    local route and each route's ``state``: equal keys, same routes."""
    out = []
    for x in routes:
        if x.get("gateway_id") == "local":
            continue
        field = next((f for f, _ in resources.ROUTE_TARGETS if x.get(f)), None)
        out.append(repr((str(ipaddress.ip_network(x["destination"])), field, x.get(field))))
    return sorted(out)


def _entries_key(entries: list[dict]) -> list:
    return sorted((repr((e["rule_number"], bool(e.get("egress")), _protocol(e.get("protocol", "-1")), e["action"],
                         e["cidr"], e.get("from_port", -1), e.get("to_port", -1)))
                   for e in entries))


def _flow_log_field(f: FlowLog, api_field: str) -> str:
    """A flow log field that changed, in the file's words."""
    return {"resource_id": f"resource={f.resource}", "traffic_type": f"traffic_type={f.traffic_type}",
            "max_aggregation_interval": f"interval={f.interval}",
            "log_format": f"log_format={f.log_format or '(default)'}"}[api_field]

"""The firewall state and route tables of one host's ENIs, compiled from the control plane's desired view.

For each ENI the agent serves: its security groups (``SecurityGroupPolicy``: the groups' rules, with
group peers resolved to the private addresses of their members, IPv4 and, for members that have one,
IPv6: ``enis[].ipv6_address``), its subnet's network ACL
(``NetworkAclPolicy``), its subnet's route table (``RouteTable``) and its connection-tracking
settings. Pure: the agent hands in the view and its ``Eni`` objects, nothing here does I/O.

Compiled objects are reused while their inputs are unchanged, and only then. That matters beyond
saving work: a flow remembers the ACL object that allowed it (``firewall.py``), so a new object makes
every flow ask the ACL again — right when the ACL changed, wasted work when it did not.
"""

from __future__ import annotations

import dataclasses

import orjson

from .conntrack import Timeouts
from .policy import NetworkAclPolicy, SecurityGroupPolicy
from .routes import RouteTable

DEFAULT_MAX_FLOWS = 65536


def timeouts_of(spec: dict | None) -> tuple[Timeouts, int]:
    """The ENI's ``connection_tracking`` record → (Timeouts, flow table size)."""
    spec = spec or {}
    timeouts = Timeouts(tcp_established=spec.get("tcp_established_timeout", 432000),
                        udp_stream=spec.get("udp_stream_timeout", 180),
                        udp_single=spec.get("udp_timeout", 30))
    return timeouts, spec.get("max_tracked_flows", DEFAULT_MAX_FLOWS)


@dataclasses.dataclass
class Applied:
    """What ``apply`` changed, for the agent's log."""

    groups_compiled: int = 0
    acls_compiled: int = 0
    enis_changed: list[str] = dataclasses.field(default_factory=list)


class _Compiled:
    """Compiled objects by key, each kept with the inputs (serialized) it was compiled from: a lookup
    compiles again only when those changed. ``keep`` after a complete pass drops what nobody asked for."""

    def __init__(self) -> None:
        self._old: dict = {}
        self._new: dict = {}
        self.compiled = 0

    def get(self, key, inputs: bytes, compile):
        cached = self._new.get(key) or self._old.get(key)
        if cached is None or cached[0] != inputs:
            cached = (inputs, compile())
            self.compiled += 1
        self._new[key] = cached
        return cached[1]

    def keep(self, only_used: bool) -> None:
        if only_used:
            self._old = self._new
        else:
            self._old.update(self._new)
        self._new = {}
        self.compiled = 0


def _serialized(value) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


class HostPolicy:
    def __init__(self) -> None:
        self._sg = _Compiled()  # by inputs (groups + members)
        self._acl = _Compiled()  # by ACL id
        self._rtb = _Compiled()  # by route table id

    def apply(self, view: dict, enis: dict[str, object], complete: bool = True) -> Applied:
        """Give every ``Eni`` in ``enis`` (by id) the policy the view says. ENIs missing from the view
        keep theirs (the agent detaches them separately). ``complete``: ``enis`` are all the host's
        ENIs, so compiled objects nobody uses any more can go; else (one ENI being attached) keep them."""
        done = Applied()
        records = {e["id"]: e for e in view["enis"]}
        groups = {g["id"]: g for g in view.get("security_groups", ())}
        acls = {a["id"]: a for a in view.get("network_acls", ())}
        subnets = {s["id"]: s for s in view.get("subnets", ())}
        tables = {t["id"]: t for t in view.get("route_tables", ())}
        members: dict[str, list[str]] = {}  # group id -> its members' private addresses, IPv4 and IPv6
        for e in view["enis"]:
            own = [e["private_ip"], e["ipv6_address"]] if e.get("ipv6_address") else [e["private_ip"]]
            for g in e.get("security_group_ids") or ():
                members.setdefault(g, []).extend(own)
        for eni_id, eni in enis.items():
            rec = records.get(eni_id)
            if rec is None:
                continue
            ids = tuple(rec.get("security_group_ids") or ())
            mine = [groups[g] for g in ids if g in groups]
            peers = sorted({r["source_group_id"] for g in mine for r in g["ingress"] + g["egress"]
                            if r.get("source_group_id")})
            peer_members = {p: sorted(members.get(p, ())) for p in peers}
            inputs = _serialized([mine, peer_members])
            sg = self._sg.get(inputs, inputs, lambda: SecurityGroupPolicy.compile(mine, peer_members))

            subnet = subnets.get(rec.get("subnet_id")) or {}
            acl_rec = acls.get(subnet.get("network_acl_id"))
            acl = None if acl_rec is None else self._acl.get(
                acl_rec["id"], _serialized(acl_rec["entries"]), lambda: NetworkAclPolicy.compile(acl_rec))
            table = tables.get(subnet.get("route_table_id"))
            eni.routes = None if table is None else self._rtb.get(
                table["id"], _serialized(table["routes"]), lambda: RouteTable.compile(table["routes"]))

            timeouts, max_flows = timeouts_of(rec.get("connection_tracking"))
            if eni.sg is not sg or eni.acl is not acl or eni.sg_ids != ids or \
                    eni.ct.timeouts != timeouts or eni.ct.max_flows != max_flows:
                eni.sg, eni.acl, eni.sg_ids = sg, acl, ids
                eni.ct.configure(timeouts, max_flows)
                done.enis_changed.append(eni_id)
        done.groups_compiled, done.acls_compiled = self._sg.compiled, self._acl.compiled
        for cache in (self._sg, self._acl, self._rtb):
            cache.keep(only_used=complete)
        return done

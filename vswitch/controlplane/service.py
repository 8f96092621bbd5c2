"""The control plane's logic: accounts, resources with their rules, and the audit log, over a ``Store``.

Every mutating request becomes ONE store transaction: the resource records it changes, its audit record
and a bump of ``/meta/serial``. The transaction compares ``/meta/serial`` with the revision the request
read, so two writers (two requests, or two control planes sharing etcd) can never both commit a
decision made on the same state: the loser re-reads and re-validates. A request therefore happens
completely or not at all, and a 2xx answer means it is durable in the store.

Store layout (values are JSON)::

    /accounts/<acct-id>            {id, name, created}
    /tokens/<sha256(token)>        {account, admin}
    /hosts/<name>                  {name, underlay_ip}           (physical hosts; admin-managed)
    /vni/<n>                       {vpc, account}               (VNIs are global)
    /public-ips/<address>          {allocation_id, account}     (elastic IPs: the region's pool is global)
    /ipv6-blocks/<cidr>            {vpc, account, cidr}         (VPCs' IPv6 /56s: unique across accounts)
    /res/<acct-id>/<resource-id>   {id, kind, account, created, ...fields}
    /audit/<time-ns>-<request-id>  {time, account, action, resource, request_id, source, status, message}
    /meta/serial                   bumped by every write

Flow log records are not in the store: each delivered window is a gzip file under ``flow_log_dir``, in
the cloud's S3 layout (``put_flow_log_records``).

Another account's resource answers 404, exactly like one that does not exist, so ids do not leak.

IPv6 (dual stack; the cloud's sizes and reservations):
- A VPC has at most one IPv6 block, a /56: ``ipv6_cidr_block`` (given: any /56 no VPC of ANY account
  has, 409 otherwise) or ``amazon_provided_ipv6_cidr_block: true`` (the next free /56 of the region's
  pool ``ipv6_pool``, default 2001:db8:100::/40, documentation space; 409 when exhausted), at creation
  or later by an update (409 if it has one already, unless the same block is given again). Blocks are
  claimed in the global index ``/ipv6-blocks/``. ``disassociate_ipv6_cidr_block: true`` removes it,
  refused (409) while a subnet has an IPv6 block; a block is refused (409) while a route of the VPC's
  tables lies inside it. The record shows ``ipv6_cidr_block`` (None without) and
  ``amazon_provided_ipv6_cidr_block``.
- When a VPC gets its block, the cloud's defaults follow, per direction only where they are still the
  defaults (as the cloud does: a modified direction is left alone): the default security group's
  egress gains allow-all to ``::/0``, and the default network ACL gains the allow-all ``::/0`` entries
  (rule 101) inbound and outbound. A VPC without IPv6 has neither. A new group of a VPC with IPv6
  gets allow-all egress to 0.0.0.0/0 AND ::/0 when its body gives no egress. Removing the block leaves
  those rules (harmless without IPv6).
- A subnet's ``ipv6_cidr_block`` is a /64 inside its VPC's /56 (422 outside, or when the VPC has none;
  409 when a sibling has it), at creation or later by an update (409 if it has another one);
  ``disassociate_ipv6_cidr_block: true`` removes it, refused (409) while an ENI in it has an IPv6
  address.
- An instance created in a subnet with an IPv6 block gets ``ipv6_address`` (on it and its ENI):
  ``InstanceCreate.ipv6_address`` (422 outside the /64 or reserved, 409 taken; 422 in a subnet without
  IPv6), else the first free one from ``::4`` (the first four addresses and the last are reserved, ``::1``
  the router, as for IPv4). ENIs made before the subnet had its block keep none; NAT gateways and load
  balancers are IPv4-only (None). Every ENI record shows ``mac_address``, its stable MAC
  (``vswitch.addresses.eni_mac``).

Route tables (the cloud's rules; the data path's lookup is ``vswitch/routes.py``):
- Every table has the implicit ``local`` route for its VPC's CIDR, and one for its VPC's IPv6 block
  when it has one. They are not stored: records and the infrastructure view list them first (IPv4,
  then IPv6; ``gateway_id: "local"``), and a body may send them back unchanged.
- A route for the VPC's CIDR or IPv6 block itself is refused (a local route cannot be replaced). A route
  more specific than a local route (inside the VPC's CIDR) is accepted only for a whole subnet's CIDR and
  to a network interface or a NAT gateway (the cloud's "middlebox" routing); inside the IPv6 block, only
  for a whole subnet's /64 and to a network interface (NAT gateways are IPv4-only). Routes wider than
  the VPC's CIDR (10.0.0.0/8, 0.0.0.0/0, ::/0) are fine: the longest prefix wins, for each family.
- Targets must exist in the account and the table's VPC (an internet gateway: attached to it). An
  egress-only gateway takes IPv6 destinations only. Deleting a target (an instance, hence its ENI; a
  NAT gateway; an egress-only gateway; a detached internet gateway) is allowed and leaves its routes in
  place: they read ``"state": "blackhole"`` (computed when read: target missing, or an internet gateway
  no longer attached to the VPC) and drop traffic. A table update may keep such a route as it is; a new
  or changed route needs a live target.

Egress-only internet gateways (``egress-only-internet-gateways``, ``eigw-…``): outbound-only IPv6 to
the internet. Created in a VPC (``vpc_id``, required; at most one a VPC, 409 otherwise) it stays in for
life; its name changes. Deleting it is allowed: routes to it become blackholes. A VPC with one cannot
be deleted (it is a dependent, as an internet gateway is).

DHCP options (``dhcp-options``, ``dopt-…``) and private DNS zones (``dns-zones``, ``zone-…``):
- A VPC's ``dhcp_options_id`` names a set of the account, at creation or by an update; ``"default"``
  (the cloud's word) means no set, and is recorded as None. A set in use by a VPC cannot be deleted
  (409). What a VPC's instances get (the infrastructure view's ``dhcp_options``): the set's domain name
  (a set made without one has ``<region>.compute.internal``, as a VPC without a set), its name servers
  with ``AmazonProvidedDNS`` meaning the VPC's resolver (its CIDR's base + 2), its NTP servers.
- A zone's ``vpc_ids`` are VPCs of the account, each once; two zones of one name are not associated
  with the same VPC (409). Its records: every name is the zone's apex or a name under it
  (case-insensitive, the trailing dot optional); values fit the type (A: IPv4, AAAA: IPv6, CNAME and
  PTR: a domain name, CNAME exactly one, TXT: a string of at most 255 characters); one record set a
  (name, type); a CNAME's name has no other record and is not the apex.

Elastic IPs (``elastic-ips``, ``eipalloc-…``): a public IPv4 address from the region's pool
(``public_ip_pool``, default 198.51.100.0/24: the first free address, network and broadcast skipped;
an exhausted pool answers 409), allocated to an account until released. Associating one with an
instance needs an internet gateway attached to the instance's VPC (409 otherwise, as the cloud's
"Network vpc-… is not attached to any internet gateway"); the record then names ``instance_id``,
``eni_id``, ``private_ip`` and ``vpc_id``. An instance has at most one: associating a second answers
409 naming the first (disassociate it first); moving an address to another instance is an update of
its ``instance_id``. Deleting the instance disassociates its address in the same transaction.
Releasing (DELETE) an associated address is refused (409: disassociate first), and so is detaching an
internet gateway from a VPC that still has associated addresses, both as in the cloud.

NAT gateways (``nat-gateways``, ``nat-…``): created in one transaction with their address and ENI.
- ``connectivity_type`` ``public`` (default) needs ``allocation_id``, an unassociated elastic IP of the
  account (422 without it; 409 if it is associated; 404 if it is not the account's), and an internet
  gateway attached to the VPC (409 otherwise, as the cloud's "Network vpc-… has no Internet gateway
  attached"). ``private`` takes no elastic IP (422) and needs no gateway.
- ``private_ip``: the requested address (422 outside the subnet or reserved, 409 taken), else the
  subnet's first free one, as for instances: the two draw from the same ENIs, so neither takes the other's.
- The gateway's ENI is requester-managed: ``interface_type: "nat_gateway"``, ``nat_gateway_id``,
  ``host: None`` and ``instance_id: None`` (no host agent attaches it: Hyperplane nodes will carry its
  flows), no security groups, ``source_dest_check: False`` (it forwards others' packets). It is
  read-only like every ENI and goes with its gateway.
- The elastic IP's record names ``nat_gateway_id``, ``eni_id``, ``private_ip`` and ``vpc_id`` (and
  ``instance_id: None``). While the gateway exists its address cannot be moved, disassociated or
  released (409: delete the NAT gateway), and the VPC's internet gateway cannot be detached.
- The record: ``subnet_id, vpc_id, connectivity_type, private_ip, public_ip, allocation_id, eni_id,
  state: "available"``. Deleting it deletes its ENI and disassociates its elastic IP (which stays
  allocated to the account); routes to it stay, and read ``"state": "blackhole"``.

Load balancers (``load-balancers``, ``nlb-…``) and target groups (``target-groups``, ``tg-…``):
- A load balancer's subnets belong to one VPC; its listeners name target groups of that VPC, of their
  protocol, one listener a (protocol, port). A target group in use by a listener cannot be deleted.
- It is created in one transaction with its address and ENI, like a NAT gateway: ``private_ip`` (the
  requested address, 422 outside its FIRST subnet or reserved, 409 taken; else that subnet's first free
  one) is held by a requester-managed ENI (``interface_type: "network_load_balancer"``,
  ``load_balancer_id``, ``host: None``, ``instance_id: None``, no security groups,
  ``source_dest_check: False``), read-only like every ENI, that goes with it.
- The record adds ``vpc_id, subnet_id`` (the first subnet's), ``private_ip, eni_id, state: "active"``
  and ``dns_name``: ``NAME-<id digits>.elb.<region>.vpc.internal``, fixed at creation. Its name and
  listeners change; its subnets and address do not (re-create it). A subnet it names cannot be deleted.
- Targets are instances of the group's VPC (``instance_id``) or addresses (``ip``), each with a port.
  Deleting an instance is allowed and leaves its targets in the groups that name it, unused: the
  infrastructure view leaves them out, and an update of the group may keep them as they are (only new
  or changed targets are checked).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import dataclasses
import gzip
import hashlib
import ipaddress
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from .. import addresses, flowlog
from ..store import Conflict, Store, Txn
from . import resources as r
from .ids import kind_of, new_id

RETRIES = 20
DEFAULT_FLOW_LOG_DIR = "/var/lib/userspace-vpc/control-plane/flow-logs"  # vpc-control-plane's StateDirectory=
DEFAULT_PUBLIC_IP_POOL = "198.51.100.0/24"  # TEST-NET-2 (RFC 5737): documentation addresses
DEFAULT_IPV6_POOL = "2001:db8:100::/40"  # inside 2001:db8::/32 (RFC 3849): documentation addresses
VPC_IPV6_PREFIX, SUBNET_IPV6_PREFIX = 56, 64
# A stored route's target field → the target type the data path and the infrastructure view name.
TARGET_TYPES = dict(r.ROUTE_TARGETS)
UNASSOCIATED = {"instance_id": None, "nat_gateway_id": None, "eni_id": None, "private_ip": None, "vpc_id": None}


class ApiError(Exception):
    """A request refused with a clear reason: ``status`` is the HTTP status, ``field`` what it names."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = f"{field}: {message}" if field else message


def not_found(resource_id: str, field: str | None = None) -> ApiError:
    return ApiError(404, f"{resource_id} not found", field)


@dataclasses.dataclass(frozen=True)
class Caller:
    account: str
    admin: bool
    request_id: str = ""
    source: str = ""


def _dumps(v: Any) -> bytes:
    return json.dumps(v, sort_keys=True, separators=(",", ":")).encode()


def token_key(token: str) -> str:
    return "/tokens/" + hashlib.sha256(token.encode()).hexdigest()


class Snapshot:
    """One account's resources as read at one revision, with the lookups the rules need."""

    def __init__(self, records: dict[str, dict], serial: int):
        self.by_id = records
        self.serial = serial

    def get(self, resource_id: str, prefix: str | None = None, field: str | None = None) -> dict:
        rec = self.by_id.get(resource_id)
        if rec is None or (prefix and kind_of(resource_id) != prefix):
            raise not_found(resource_id, field)
        return rec

    def of(self, prefix: str, **match) -> list[dict]:
        return [x for x in self.by_id.values() if kind_of(x["id"]) == prefix
                and all(x.get(k) == v for k, v in match.items())]


class ControlPlane:
    def __init__(self, store: Store, region: str = "lab-1", flow_log_dir: str | None = None,
                 public_ip_pool: str = DEFAULT_PUBLIC_IP_POOL, ipv6_pool: str = DEFAULT_IPV6_POOL):
        self.store = store
        self.region = region
        self._flow_log_dir = flow_log_dir  # None: see the flow_log_dir property
        self.public_ip_pool = ipaddress.IPv4Network(public_ip_pool)  # elastic IPs: the region's pool
        self.ipv6_pool = ipaddress.IPv6Network(ipv6_pool)  # VPCs' amazon-provided /56s: the region's pool
        if self.ipv6_pool.prefixlen > VPC_IPV6_PREFIX:
            raise ValueError(f"the IPv6 pool {ipv6_pool} is smaller than a /{VPC_IPV6_PREFIX}")
        # Writers in this process take turns; the serial compare then only arbitrates between processes.
        self._writing: asyncio.Lock | None = None
        self._writing_loop = None

    # --- plumbing --------------------------------------------------------------------------------
    async def _snapshot(self, account: str) -> Snapshot:
        serial = await self.store.get("/meta/serial")
        records = await self.store.range(f"/res/{account}/")
        return Snapshot({json.loads(x.value)["id"]: json.loads(x.value) for x in records},
                        serial.mod_revision if serial else 0)

    async def _write(self, caller: Caller, action: str, decide, status: int = 200) -> Any:
        """Run ``decide(snapshot) -> (puts, deletes, result, resource_id)`` and commit it with its audit
        record, retrying on a concurrent write. ``decide`` raises ApiError to refuse."""
        loop = asyncio.get_running_loop()
        if self._writing_loop is not loop:  # a lock serves one event loop
            self._writing, self._writing_loop = asyncio.Lock(), loop
        async with self._writing:
            return await self._write_once(caller, action, decide, status)

    async def _write_once(self, caller: Caller, action: str, decide, status: int) -> Any:
        for _ in range(RETRIES):
            snap = await self._snapshot(caller.account)
            puts, deletes, result, resource_id = await decide(snap)
            txn = Txn(compares=[("/meta/serial", snap.serial)],
                      puts={k: _dumps(v) for k, v in puts.items()}, deletes=list(deletes))
            txn.puts["/meta/serial"] = b""
            txn.puts[self._audit_key(caller)] = _dumps(self._audit(caller, action, resource_id, status, "ok"))
            try:
                await self.store.commit(txn)
                return result
            except Conflict:
                continue
        raise ApiError(503, "too many concurrent writes; try again")

    def _audit_key(self, caller: Caller) -> str:
        return f"/audit/{time.time_ns():020d}-{caller.request_id or secrets.token_hex(4)}"

    def _audit(self, caller: Caller, action: str, resource: str | None, status: int, message: str) -> dict:
        return {"time": time.time(), "account": caller.account, "action": action, "resource": resource,
                "request_id": caller.request_id, "source": caller.source, "status": status, "message": message}

    async def record_refusal(self, caller: Caller, action: str, resource: str | None, status: int,
                             message: str) -> None:
        """Audit a mutating call that was refused (4xx): nothing else is written."""
        await self.store.commit(Txn(puts={self._audit_key(caller): _dumps(
            self._audit(caller, action, resource, status, message))}))

    def _rec(self, caller: Caller, kind: r.Kind, rid: str, fields: dict) -> dict:
        return {"id": rid, "kind": kind.collection, "account": caller.account, "created": time.time(), **fields}

    def _key(self, caller: Caller, rid: str) -> str:
        return f"/res/{caller.account}/{rid}"

    # --- accounts and tokens ---------------------------------------------------------------------
    async def ensure_admin_token(self, token: str) -> None:
        if await self.store.get(token_key(token)) is None:
            await self.store.commit(Txn(puts={token_key(token): _dumps({"account": "admin", "admin": True})}))

    async def authenticate(self, token: str) -> tuple[str, bool] | None:
        rec = await self.store.get(token_key(token))
        if rec is None:
            return None
        v = json.loads(rec.value)
        return v["account"], v["admin"]

    async def create_account(self, caller: Caller, name: str, token: str | None = None) -> dict:
        if not caller.admin:
            raise ApiError(403, "only an admin token can create accounts")
        account = "acct-" + secrets.token_hex(6)
        token = token or secrets.token_urlsafe(24)

        async def decide(snap):
            existing = [json.loads(x.value) for x in await self.store.range("/accounts/")]
            if any(a["name"] == name for a in existing):
                raise ApiError(409, f"an account named {name!r} exists", "name")
            rec = {"id": account, "name": name, "created": time.time()}
            return {f"/accounts/{account}": rec, token_key(token): {"account": account, "admin": False}}, [], \
                {**rec, "token": token}, account

        return await self._write(caller, "CreateAccount", decide, 201)

    async def list_accounts(self, caller: Caller) -> list[dict]:
        if not caller.admin:
            raise ApiError(403, "only an admin token can list accounts")
        return [json.loads(x.value) for x in await self.store.range("/accounts/")]

    # --- hosts -------------------------------------------------------------------------------------
    async def register_host(self, caller: Caller, body: r.HostCreate) -> dict:
        if not caller.admin:
            raise ApiError(403, "only an admin token can register hosts")

        async def decide(snap):
            rec = {"name": body.name, "underlay_ip": body.underlay_ip}
            return {f"/hosts/{body.name}": rec}, [], rec, body.name

        return await self._write(caller, "RegisterHost", decide, 201)

    async def list_hosts(self) -> list[dict]:
        return [json.loads(x.value) for x in await self.store.range("/hosts/")]

    async def deregister_host(self, caller: Caller, name: str) -> None:
        if not caller.admin:
            raise ApiError(403, "only an admin token can deregister hosts")

        async def decide(snap):
            if await self.store.get(f"/hosts/{name}") is None:
                raise ApiError(404, f"host {name} not found")
            on_it = [json.loads(x.value)["id"] for x in await self.store.range("/res/")
                     if b'"host"' in x.value and json.loads(x.value).get("host") == name]
            if on_it:
                raise ApiError(409, f"host {name} still holds {len(on_it)} instance(s) and ENI(s): "
                                    f"{', '.join(on_it[:10])}; move or delete them first")
            return {}, [f"/hosts/{name}"], None, name

        await self._write(caller, "DeregisterHost", decide, 204)

    # --- what the agents need ----------------------------------------------------------------------
    async def infra_view(self, caller: Caller) -> dict:
        """Everything the data plane needs, across accounts: hosts, VPCs and every ENI with its host,
        the policy (groups, ACLs, flow logs), route tables (each subnet names its ``route_table_id``;
        a table's ``routes`` are ``{destination, target_type, target_id, state}``, its local route
        first), attached internet gateways, associated elastic IPs (``public_ips``: an instance's, or a
        NAT gateway's with its ``nat_gateway_id``), NAT gateways (``nat_gateways``), load balancers
        (``load_balancers``: ``{id, account, vpc_id, vni, subnet_id, private_ip, eni_id, listeners:
        [{protocol, port, target_group_id}]}``) and target groups (``target_groups``: ``{id, account,
        vpc_id, vni, protocol, port, health_check, targets: [{id, ip, port}]}``, a target's ``id`` its
        instance's id and ``ip`` that instance's ENI's address, or both the target's address; targets
        whose instance is gone are left out). A NAT gateway's or a load balancer's ENI is among ``enis``
        with ``host``/``underlay_ip`` None (and its ``nat_gateway_id``/``load_balancer_id``): no host
        attaches it, nothing maps it.

        IPv6, gateways and names: a VPC adds ``ipv6_cidr_block`` (None without), ``ipv6_subnets`` (its
        subnets' /64s) and ``dhcp_options``, what its instances are told, always present:
        ``{domain_name, domain_name_servers: [IPv4], ntp_servers: [IPv4]}`` (no set: the region's
        ``<region>.compute.internal`` and the VPC's resolver, its CIDR's base + 2, which also stands for
        ``AmazonProvidedDNS``); a subnet adds ``ipv6_cidr_block``; an ENI adds ``ipv6_address`` and
        ``ipv6_prefixlen`` (64, or both None). A table's routes include the IPv6 local route (second,
        ``target_type: "local"``) and routes to egress-only gateways (``target_type: "eigw"``).
        ``egress_only_gateways``: ``{id, account, vpc_id, vni}``. ``dns_zones``: ``{id, account, name,
        vpc_ids, records: [{name, type, ttl, values}]}``, names in lower case without the trailing dot
        (and CNAME and PTR values likewise).

        Host agents take their own ENIs from it; the mapping daemon derives (VPC, address) → host.
        ``revision`` is the write serial it reflects at least: pass it to ``wait_for_change``.
        """
        if not caller.admin:
            raise ApiError(403, "the infrastructure view needs an admin (infrastructure) token")
        serial = await self.store.get("/meta/serial")
        hosts = {h["name"]: h for h in await self.list_hosts()}
        recs = [json.loads(x.value) for x in await self.store.range("/res/")]
        by_id = {x["id"]: x for x in recs}
        vpcs = []
        for v in recs:
            if kind_of(v["id"]) != "vpc":
                continue
            subnets = [s for s in recs if kind_of(s["id"]) == "subnet" and s["vpc_id"] == v["id"]]
            vpcs.append({"id": v["id"], "vni": v["vni"], "cidr_block": v["cidr_block"],
                         "subnets": [s["cidr_block"] for s in subnets],
                         "ipv6_cidr_block": v.get("ipv6_cidr_block"),
                         "ipv6_subnets": [s["ipv6_cidr_block"] for s in subnets if s.get("ipv6_cidr_block")],
                         "dhcp_options": self._dhcp_options(v, by_id.get(v.get("dhcp_options_id") or ""))})
        enis = []
        for e in recs:
            if kind_of(e["id"]) != "eni":
                continue
            inst, subnet, vpc = by_id.get(e["instance_id"], {}), by_id[e["subnet_id"]], by_id[e["vpc_id"]]
            enis.append({"id": e["id"], "vni": vpc["vni"], "vpc_id": vpc["id"], "private_ip": e["private_ip"],
                         "prefixlen": int(subnet["cidr_block"].split("/")[1]), "host": e["host"],
                         "underlay_ip": hosts.get(e["host"], {}).get("underlay_ip"),
                         "instance": inst.get("name", ""), "instance_id": e["instance_id"],
                         "account": e["account"], "source_dest_check": e["source_dest_check"],
                         "interface_type": e["interface_type"], "subnet_id": e["subnet_id"],
                         "security_group_ids": e["security_group_ids"],
                         "connection_tracking": e.get("connection_tracking"),
                         "nat_gateway_id": e.get("nat_gateway_id"),
                         "load_balancer_id": e.get("load_balancer_id"),
                         "ipv6_address": e.get("ipv6_address"),
                         "ipv6_prefixlen": SUBNET_IPV6_PREFIX if e.get("ipv6_address") else None})

        def of(prefix: str, *fields: str) -> list[dict]:
            return [{f: x.get(f) for f in ("id", "account", *fields)} for x in recs if kind_of(x["id"]) == prefix]

        route_tables = [{"id": t["id"], "account": t["account"], "vpc_id": t["vpc_id"], "main": t["main"],
                         "routes": [{"destination": x["destination"], "target_type": x["target_type"],
                                     "target_id": x["target_id"], "state": x["state"]}
                                    for x in _effective_routes(by_id, t)]}
                        for t in recs if kind_of(t["id"]) == "rtb"]
        public_ips = []
        for a in recs:
            eni = by_id.get(a.get("eni_id")) if kind_of(a["id"]) == "eipalloc" else None
            vpc = by_id.get(eni["vpc_id"]) if eni else None
            if vpc is not None:
                public_ips.append({"public_ip": a["public_ip"], "private_ip": eni["private_ip"], "eni_id": eni["id"],
                                   "vni": vpc["vni"], "vpc_id": vpc["id"], "allocation_id": a["id"],
                                   "account": a["account"], "nat_gateway_id": a.get("nat_gateway_id")})
        nat_gateways = [{"id": n["id"], "account": n["account"], "vpc_id": n["vpc_id"],
                         "vni": by_id[n["vpc_id"]]["vni"], "subnet_id": n["subnet_id"],
                         "private_ip": n.get("private_ip"), "public_ip": n.get("public_ip"),
                         "allocation_id": n.get("allocation_id"), "eni_id": n.get("eni_id"),
                         "connectivity_type": n.get("connectivity_type", "public")}
                        for n in recs if kind_of(n["id"]) == "nat"]
        load_balancers = [{"id": b["id"], "account": b["account"], "vpc_id": b["vpc_id"],
                           "vni": by_id[b["vpc_id"]]["vni"], "subnet_id": b.get("subnet_id", b["subnet_ids"][0]),
                           "private_ip": b.get("private_ip"), "eni_id": b.get("eni_id"),
                           "listeners": [{"protocol": li["protocol"], "port": li["port"],
                                          "target_group_id": li["target_group_id"]} for li in b["listeners"]]}
                          for b in recs if kind_of(b["id"]) == "nlb"]
        target_groups = []
        for g in recs:
            if kind_of(g["id"]) != "tg":
                continue
            targets = []
            for t in g["targets"]:
                if t.get("instance_id"):
                    inst = by_id.get(t["instance_id"])
                    eni = by_id.get(inst["eni_id"]) if inst is not None else None
                    if eni is None:  # the instance is gone: its target stays in the group, unused
                        continue
                    targets.append({"id": inst["id"], "ip": eni["private_ip"], "port": t["port"]})
                else:
                    targets.append({"id": t["ip"], "ip": t["ip"], "port": t["port"]})
            target_groups.append({"id": g["id"], "account": g["account"], "vpc_id": g["vpc_id"],
                                  "vni": by_id[g["vpc_id"]]["vni"], "protocol": g["protocol"], "port": g["port"],
                                  "health_check": g["health_check"], "targets": targets})
        egress_only_gateways = [{"id": g["id"], "account": g["account"], "vpc_id": g["vpc_id"],
                                 "vni": by_id[g["vpc_id"]]["vni"]}
                                for g in recs if kind_of(g["id"]) == "eigw" and g["vpc_id"] in by_id]
        dns_zones = [{"id": z["id"], "account": z["account"], "name": r.dns_name(z["name"]),
                      "vpc_ids": list(z["vpc_ids"]),
                      "records": [{"name": r.dns_name(x["name"]), "type": x["type"], "ttl": x["ttl"],
                                   "values": [r.dns_name(y) for y in x["values"]] if x["type"] in ("CNAME", "PTR")
                                   else list(x["values"])} for x in z["records"]]}
                     for z in recs if kind_of(z["id"]) == "zone"]
        return {"revision": serial.mod_revision if serial else 0, "hosts": list(hosts.values()),
                "vpcs": vpcs, "enis": enis,
                "subnets": of("subnet", "vpc_id", "cidr_block", "network_acl_id", "route_table_id",
                              "ipv6_cidr_block"),
                "security_groups": of("sg", "vpc_id", "ingress", "egress"),
                "network_acls": of("acl", "vpc_id", "entries"),
                "flow_logs": of("fl", "resource_id", "traffic_type", "log_format", "max_aggregation_interval"),
                "route_tables": route_tables,
                "internet_gateways": [x for x in of("igw", "vpc_id") if x["vpc_id"]],
                "public_ips": public_ips, "nat_gateways": nat_gateways,
                "load_balancers": load_balancers, "target_groups": target_groups,
                "egress_only_gateways": egress_only_gateways, "dns_zones": dns_zones}

    def _dhcp_options(self, vpc: dict, dopt: dict | None) -> dict:
        """The DHCP options a VPC's instances get (see ``infra_view``)."""
        resolver = str(ipaddress.IPv4Network(vpc["cidr_block"]).network_address + 2)
        default_domain = f"{self.region}.compute.internal"
        if dopt is None or kind_of(dopt["id"]) != "dopt":
            return {"domain_name": default_domain, "domain_name_servers": [resolver], "ntp_servers": []}
        return {"domain_name": dopt.get("domain_name") or default_domain,
                "domain_name_servers": [resolver if x == "AmazonProvidedDNS" else x
                                        for x in dopt.get("domain_name_servers") or ["AmazonProvidedDNS"]],
                "ntp_servers": list(dopt.get("ntp_servers") or [])}

    async def wait_for_change(self, after: int, timeout: float) -> None:
        """Return once a write newer than serial revision ``after`` exists, or after ``timeout``."""
        serial = await self.store.get("/meta/serial")
        if serial is not None and serial.mod_revision > after:
            return

        async def first_change():
            async with contextlib.aclosing(self.store.watch("/meta/serial", after + 1)) as events:
                async for _ in events:
                    return

        try:
            await asyncio.wait_for(first_change(), timeout)
        except asyncio.TimeoutError:
            pass

    # --- resources: read ---------------------------------------------------------------------------
    async def get(self, caller: Caller, collection: str, rid: str) -> dict:
        kind = r.KINDS[collection]
        if kind_of(rid) != kind.prefix:
            raise not_found(rid)
        if kind.prefix == "rtb":  # its routes' states depend on other records
            snap = await self._snapshot(caller.account)
            return _present(snap.by_id, snap.get(rid, kind.prefix))
        rec = await self.store.get(self._key(caller, rid))
        if rec is None:
            raise not_found(rid)
        return _present({}, json.loads(rec.value))

    async def list(self, caller: Caller, collection: str, filters: dict[str, str]) -> list[dict]:
        kind = r.KINDS[collection]
        snap = await self._snapshot(caller.account)
        return sorted((_present(snap.by_id, x) for x in snap.of(kind.prefix)
                       if all(str(x.get(k)) == v for k, v in filters.items())), key=lambda x: x["created"])

    async def audit_log(self, caller: Caller, since: float = 0, limit: int = 1000) -> list[dict]:
        out = []
        for x in await self.store.range("/audit/"):
            a = json.loads(x.value)
            if a["time"] >= since and (caller.admin or a["account"] == caller.account):
                out.append(a)
        return out[-limit:]

    # --- flow log records ----------------------------------------------------------------------------
    @property
    def flow_log_dir(self) -> str:
        """Where delivered flow log files go: the configured directory, else ``flow-logs`` next to a
        SQLite store's file, else DEFAULT_FLOW_LOG_DIR. Resolved on use: tests and the fuzz harness
        give the control plane its store after constructing it."""
        if self._flow_log_dir:
            return self._flow_log_dir
        from ..store.sqlite import SqliteStore
        if isinstance(self.store, SqliteStore):
            return str(Path(self.store.path).parent / "flow-logs")
        return DEFAULT_FLOW_LOG_DIR

    async def _flow_log_anywhere(self, fl_id: str) -> dict:
        """A flow log of any account (the agents deliver for every account)."""
        if kind_of(fl_id) == "fl":
            suffix = "/" + fl_id
            for x in await self.store.range("/res/"):
                if x.key.endswith(suffix):
                    return json.loads(x.value)
        raise not_found(fl_id)

    async def put_flow_log_records(self, caller: Caller, fl_id: str, records: list[str], window_start: float,
                                   window_end: float, host: str) -> dict:
        """Deliver one capture window's records of a flow log (admin: the host agents): one gzip file in
        the cloud's S3 layout under ``flow_log_dir``, named after the window's end (UTC)::

            AWSLogs/<account>/vpcflowlogs/<region>/YYYY/MM/DD/
                <account>_vpcflowlogs_<region>_<fl-id>_<YYYYMMDDTHHmmZ>_<hash>.log.gz

        holding the header line (the format's field names), then one record per line. ``hash`` is made
        from the host, the window and the records, so a delivery repeated after a lost answer rewrites
        the same file instead of duplicating its records. The file is written whole under a temporary
        name, synced, then renamed: a reader never sees half of it. Only the audit record goes to the
        store, and it does not bump ``/meta/serial``: deliveries change no resource, so agents' long
        polls are not woken by them.
        """
        if not caller.admin:
            raise ApiError(403, "delivering flow log records needs an admin (infrastructure) token")
        rec = await self._flow_log_anywhere(fl_id)
        spec = flowlog.FlowLogSpec.from_resource(rec)
        if not records:
            raise ApiError(422, "no records", "records")
        for i, line in enumerate(records):
            if not isinstance(line, str) or "\n" in line or "\r" in line \
                    or len(line.split(" ")) != len(spec.fields):
                raise ApiError(422, f"expected {len(spec.fields)} values separated by single spaces "
                                    f"({flowlog.header(spec)}), got {str(line)[:200]!r}", f"records[{i}]")
        if not 0 <= window_start <= window_end:
            raise ApiError(422, f"window_start {window_start} must be >= 0 and <= window_end {window_end}",
                           "window_start")
        text = flowlog.header(spec) + "\n" + "\n".join(records) + "\n"
        digest = hashlib.sha256(f"{host}\0{window_start!r}\0{window_end!r}\0".encode() + text.encode())
        when = time.gmtime(int(window_end))
        account, region = rec["account"], self.region
        key = (f"AWSLogs/{account}/vpcflowlogs/{region}/{time.strftime('%Y/%m/%d', when)}/"
               f"{account}_vpcflowlogs_{region}_{fl_id}_{time.strftime('%Y%m%dT%H%MZ', when)}_"
               f"{digest.hexdigest()[:8]}.log.gz")
        try:
            await asyncio.to_thread(_write_gzip_atomically, Path(self.flow_log_dir) / key, text)
        except OSError as e:
            raise ApiError(503, f"cannot write flow log records under {self.flow_log_dir}: "
                                f"{e.strerror or e}") from None
        await self.store.commit(Txn(puts={self._audit_key(caller): _dumps(self._audit(
            caller, "PutFlowLogRecords", fl_id, 201, f"ok: {len(records)} records from {host}"))}))
        return {"flow_log_id": fl_id, "key": key, "records": len(records)}

    async def flow_log_records(self, caller: Caller, fl_id: str, start: float | None = None,
                               end: float | None = None, limit: int = 10000) -> dict:
        """The delivered records of one of the caller's flow logs, oldest first, the newest ``limit``:
        ``{"flow_log_id", "fields": [...], "records": [[value, ...], ...]}``. With ``start``/``end``
        (Unix seconds), the records whose [start, end] overlaps [start, end]."""
        rec = await self.get(caller, "flow-logs", fl_id)
        fields = list(flowlog.FlowLogSpec.from_resource(rec).fields)
        rows = await asyncio.to_thread(_read_flow_log_files, Path(self.flow_log_dir), rec["account"], fl_id,
                                       fields, start, end, max(1, limit))
        return {"flow_log_id": fl_id, "fields": fields, "records": rows}

    # --- resources: write --------------------------------------------------------------------------
    async def create(self, caller: Caller, collection: str, body: r.Body) -> dict:
        kind = r.KINDS[collection]
        rule = getattr(self, "_create_" + kind.prefix)

        async def decide(snap):
            rid = new_id(kind.prefix)
            puts, deletes, rec = await rule(caller, snap, rid, body)
            puts[self._key(caller, rid)] = rec
            return puts, deletes, _present(snap.by_id, rec), rid

        return await self._write(caller, f"Create{_action(kind)}", decide, 201)

    async def update(self, caller: Caller, collection: str, rid: str, body: r.Body) -> dict:
        kind = r.KINDS[collection]
        rule = getattr(self, "_update_" + kind.prefix, None)
        # Fields the caller sent, each dumped whole (nested defaults included); null means "no change".
        changes = {k: v for k, v in body.model_dump().items() if k in body.model_fields_set and v is not None}

        async def decide(snap):
            old = snap.get(rid, kind.prefix)
            puts: dict = {}
            if rule is not None:
                rec = await rule(caller, snap, old, changes, puts)
            else:
                rec = {**old, **changes}
            rec["updated"] = time.time()
            puts[self._key(caller, rid)] = rec
            deletes = [k for k, v in puts.items() if v is None]  # a rule's None: delete that key
            return {k: v for k, v in puts.items() if v is not None}, deletes, _present(snap.by_id, rec), rid

        return await self._write(caller, f"Modify{_action(kind)}", decide)

    async def delete(self, caller: Caller, collection: str, rid: str) -> None:
        kind = r.KINDS[collection]
        rule = getattr(self, "_delete_" + kind.prefix, None)

        async def decide(snap):
            rec = snap.get(rid, kind.prefix)
            puts, deletes = {}, [self._key(caller, rid)]
            if rule is not None:  # returns more keys to delete; may add records to change to ``puts``
                deletes += await rule(caller, snap, rec, puts)
            return puts, deletes, None, rid

        await self._write(caller, f"Delete{_action(kind)}", decide, 204)

    # --- rules, one kind at a time ------------------------------------------------------------------
    @staticmethod
    def _refuse_dependents(what: str, dependents: list[dict]) -> None:
        if dependents:
            names = ", ".join(d["id"] for d in dependents[:10])
            raise ApiError(409, f"{what} is still used by {len(dependents)} resource(s): {names}")

    @staticmethod
    def _dhcp_options_id(snap, value: str | None) -> str | None:
        """A body's ``dhcp_options_id`` as recorded: a set of the account, or None for "default"."""
        if value in (None, "default"):
            return None
        snap.get(value, "dopt", "dhcp_options_id")
        return value

    @staticmethod
    def _ipv6_request(fields: dict, allowed: tuple[str, ...]) -> str | None:
        """Which of the IPv6 block fields a body sets (``allowed``, in order): at most one (422)."""
        asked = [f for f in allowed if fields.get(f)]
        if len(asked) > 1:
            raise ApiError(422, f"give one of {', '.join(allowed[:-1])} or {allowed[-1]}, not both", asked[1])
        return asked[0] if asked else None

    async def _take_ipv6_block(self, caller, vpc_id: str, given: str | None) -> tuple[str, dict]:
        """A /56 for VPC ``vpc_id``: ``given`` unless another VPC (of any account) has it, else the next
        free one of the region's pool. Returns it and the store record that claims it."""
        taken = {json.loads(x.value)["cidr"] for x in await self.store.range("/ipv6-blocks/")}
        if given is not None:
            if given in taken:
                raise ApiError(409, f"{given} is in use by another VPC", "ipv6_cidr_block")
            block = given
        else:
            block = next((str(n) for n in self.ipv6_pool.subnets(new_prefix=VPC_IPV6_PREFIX)
                          if str(n) not in taken), None)
            if block is None:
                raise ApiError(409, f"the region's IPv6 pool ({self.ipv6_pool}) has no free /{VPC_IPV6_PREFIX}",
                               "amazon_provided_ipv6_cidr_block")
        return block, {f"/ipv6-blocks/{block}": {"vpc": vpc_id, "account": caller.account, "cidr": block}}

    @staticmethod
    def _default_acl_entries(ipv6: bool) -> list[dict]:
        """A default network ACL's entries: allow all, rule 100 for IPv4 and, with IPv6, rule 101 for ::/0."""
        cidrs = ((100, "0.0.0.0/0"), (101, "::/0")) if ipv6 else ((100, "0.0.0.0/0"),)
        return [{"rule_number": number, "egress": e, "protocol": "-1", "action": "allow", "cidr": cidr,
                 "from_port": -1, "to_port": -1} for e in (False, True) for number, cidr in cidrs]

    def _ipv6_defaults(self, caller, snap, vpc: dict, puts: dict) -> None:
        """A VPC got its IPv6 block: its default group's egress and its default ACL gain their ::/0 rules,
        in each direction still as the VPC was made (the cloud leaves a modified one alone)."""
        sg = snap.by_id.get(vpc["default_security_group_id"])
        if sg is not None and sg["egress"] == r.ALLOW_ALL_EGRESS:
            puts[self._key(caller, sg["id"])] = {**sg, "egress": r.ALLOW_ALL_EGRESS + r.ALLOW_ALL_EGRESS_IPV6,
                                                 "updated": time.time()}
        acl = snap.by_id.get(vpc["default_network_acl_id"])
        if acl is None:
            return
        v4, both = self._default_acl_entries(False), self._default_acl_entries(True)
        entries, changed = [], False
        for egress in (False, True):
            mine = [e for e in acl["entries"] if e["egress"] == egress]
            if mine == [e for e in v4 if e["egress"] == egress]:
                mine, changed = [e for e in both if e["egress"] == egress], True
            entries += mine
        if changed:
            puts[self._key(caller, acl["id"])] = {**acl, "entries": entries, "updated": time.time()}

    @staticmethod
    def _refuse_ipv6_users(recs: list[dict], field: str, what: str, advice: str, asked: str) -> None:
        """409 while any of ``recs`` has its IPv6 ``field`` set: "``what``: id (value), ...; ``advice``"."""
        users = [x for x in recs if x.get(field)]
        if users:
            names = ", ".join(f"{x['id']} ({x[field]})" for x in users[:10])
            raise ApiError(409, f"{what}: {names}; {advice}", asked)

    @staticmethod
    def _refuse_routes_inside(snap, vpc: dict, block: str, field: str) -> None:
        net = ipaddress.IPv6Network(block)
        for t in snap.of("rtb", vpc_id=vpc["id"]):
            for route in t["routes"]:
                d = ipaddress.ip_network(route["destination"])
                if d.version == 6 and d.subnet_of(net):
                    raise ApiError(409, f"route table {t['id']} has a route for {d}, inside {block}: the block's "
                                        "local route would take its place; remove the route first", field)

    async def _create_vpc(self, caller, snap, rid, body: r.VpcCreate):
        dhcp = self._dhcp_options_id(snap, body.dhcp_options_id)
        asked = self._ipv6_request(body.model_dump(), ("ipv6_cidr_block", "amazon_provided_ipv6_cidr_block"))
        taken = {int(x.key.rsplit("/", 1)[1]) for x in await self.store.range("/vni/")}
        vni = next(n for n in range(1, len(taken) + 2) if n not in taken)
        block, puts = (None, {}) if asked is None else await self._take_ipv6_block(caller, rid, body.ipv6_cidr_block)
        rtb, acl, sg = new_id("rtb"), new_id("acl"), new_id("sg")
        puts.update({
            f"/vni/{vni}": {"vpc": rid, "account": caller.account},
            self._key(caller, rtb): self._rec(caller, r.KINDS["route-tables"], rtb, {
                "vpc_id": rid, "name": "main", "main": True, "routes": []}),
            self._key(caller, acl): self._rec(caller, r.KINDS["network-acls"], acl, {
                "vpc_id": rid, "name": "default", "default": True,
                "entries": self._default_acl_entries(block is not None)}),
            self._key(caller, sg): self._rec(caller, r.KINDS["security-groups"], sg, {
                "vpc_id": rid, "name": "default", "default": True,
                "description": "default VPC security group",
                "ingress": [{"protocol": "-1", "from_port": -1, "to_port": -1, "cidr": None,
                             "source_group_id": sg, "description": None}],
                "egress": r.ALLOW_ALL_EGRESS + (r.ALLOW_ALL_EGRESS_IPV6 if block else [])}),
        })
        rec = self._rec(caller, r.KINDS["vpcs"], rid, {
            "name": body.name, "cidr_block": body.cidr_block, "dhcp_options_id": dhcp,
            "ipv6_cidr_block": block, "amazon_provided_ipv6_cidr_block": asked == "amazon_provided_ipv6_cidr_block",
            "vni": vni, "main_route_table_id": rtb, "default_network_acl_id": acl,
            "default_security_group_id": sg})
        return puts, [], rec

    async def _update_vpc(self, caller, snap, old, changes, puts):
        rec = {**old, "ipv6_cidr_block": old.get("ipv6_cidr_block"),
               "amazon_provided_ipv6_cidr_block": old.get("amazon_provided_ipv6_cidr_block", False)}
        if changes.get("name"):
            rec["name"] = changes["name"]
        if "dhcp_options_id" in changes:
            rec["dhcp_options_id"] = self._dhcp_options_id(snap, changes["dhcp_options_id"])
        asked = self._ipv6_request(changes, ("ipv6_cidr_block", "amazon_provided_ipv6_cidr_block",
                                             "disassociate_ipv6_cidr_block"))
        have = rec["ipv6_cidr_block"]
        if asked == "disassociate_ipv6_cidr_block":
            self._refuse_ipv6_users(snap.of("subnet", vpc_id=old["id"]), "ipv6_cidr_block",
                                    f"subnet(s) of {old['id']} have IPv6 blocks", "disassociate them first", asked)
            if have is not None:
                puts[f"/ipv6-blocks/{have}"] = None
            rec.update(ipv6_cidr_block=None, amazon_provided_ipv6_cidr_block=False)
        elif asked is not None:
            if have is not None:
                if asked == "ipv6_cidr_block" and changes["ipv6_cidr_block"] == have:
                    return rec  # as it is
                raise ApiError(409, f"{old['id']} already has the IPv6 block {have} (one a VPC); disassociate "
                                    "it first", asked)
            block, claim = await self._take_ipv6_block(caller, old["id"], changes.get("ipv6_cidr_block"))
            self._refuse_routes_inside(snap, old, block, asked)
            puts.update(claim)
            rec.update(ipv6_cidr_block=block, amazon_provided_ipv6_cidr_block=asked != "ipv6_cidr_block")
            self._ipv6_defaults(caller, snap, old, puts)
        return rec

    async def _delete_vpc(self, caller, snap, vpc, puts):
        own = {vpc["main_route_table_id"], vpc["default_network_acl_id"], vpc["default_security_group_id"]}
        dependents = [x for x in snap.by_id.values() if x["id"] not in own and (
            x.get("vpc_id") == vpc["id"] or vpc["id"] in (x.get("vpc_ids") or ())
            or x.get("resource_id") == vpc["id"])]
        self._refuse_dependents(vpc["id"], dependents)
        block = [f"/ipv6-blocks/{vpc['ipv6_cidr_block']}"] if vpc.get("ipv6_cidr_block") else []
        return [self._key(caller, x) for x in own] + [f"/vni/{vpc['vni']}"] + block

    def _check_subnet_cidr(self, snap, vpc: dict, cidr: str, exclude: str | None = None) -> None:
        net = ipaddress.IPv4Network(cidr)
        if not net.subnet_of(ipaddress.IPv4Network(vpc["cidr_block"])):
            raise ApiError(422, f"{cidr} is outside VPC {vpc['id']} ({vpc['cidr_block']})", "cidr_block")
        for s in snap.of("subnet", vpc_id=vpc["id"]):
            if s["id"] != exclude and net.overlaps(ipaddress.IPv4Network(s["cidr_block"])):
                raise ApiError(409, f"{cidr} overlaps subnet {s['id']} ({s['cidr_block']})", "cidr_block")

    def _same_vpc(self, snap, vpc_id: str, rid: str, prefix: str, field: str) -> dict:
        rec = snap.get(rid, prefix, field)
        if rec.get("vpc_id") != vpc_id:
            raise ApiError(422, f"{rid} belongs to another VPC ({rec.get('vpc_id')})", field)
        return rec

    def _check_subnet_ipv6(self, snap, vpc: dict, cidr: str, exclude: str | None = None) -> None:
        block = vpc.get("ipv6_cidr_block")
        if block is None:
            raise ApiError(422, f"VPC {vpc['id']} has no IPv6 CIDR block: give it one first", "ipv6_cidr_block")
        if not ipaddress.IPv6Network(cidr).subnet_of(ipaddress.IPv6Network(block)):
            raise ApiError(422, f"{cidr} is outside VPC {vpc['id']}'s IPv6 block ({block})", "ipv6_cidr_block")
        for s in snap.of("subnet", vpc_id=vpc["id"]):
            if s["id"] != exclude and s.get("ipv6_cidr_block") == cidr:
                raise ApiError(409, f"{cidr} overlaps subnet {s['id']} ({s['ipv6_cidr_block']})", "ipv6_cidr_block")

    async def _create_subnet(self, caller, snap, rid, body: r.SubnetCreate):
        vpc = snap.get(body.vpc_id, "vpc", "vpc_id")
        self._check_subnet_cidr(snap, vpc, body.cidr_block)
        if body.ipv6_cidr_block is not None:
            self._check_subnet_ipv6(snap, vpc, body.ipv6_cidr_block)
        fields = body.model_dump()
        fields["route_table_id"] = body.route_table_id or vpc["main_route_table_id"]
        fields["network_acl_id"] = body.network_acl_id or vpc["default_network_acl_id"]
        self._same_vpc(snap, vpc["id"], fields["route_table_id"], "rtb", "route_table_id")
        self._same_vpc(snap, vpc["id"], fields["network_acl_id"], "acl", "network_acl_id")
        return {}, [], self._rec(caller, r.KINDS["subnets"], rid, fields)

    async def _update_subnet(self, caller, snap, old, changes, puts):
        for field, prefix in (("route_table_id", "rtb"), ("network_acl_id", "acl")):
            if changes.get(field):
                self._same_vpc(snap, old["vpc_id"], changes[field], prefix, field)
        ipv6 = ("ipv6_cidr_block", "disassociate_ipv6_cidr_block")
        rec = {**old, "ipv6_cidr_block": old.get("ipv6_cidr_block"),
               **{k: v for k, v in changes.items() if k not in ipv6}}
        asked, have = self._ipv6_request(changes, ipv6), rec["ipv6_cidr_block"]
        if asked == "disassociate_ipv6_cidr_block":
            self._refuse_ipv6_users(snap.of("eni", subnet_id=old["id"]), "ipv6_address",
                                    f"ENI(s) of {old['id']} have IPv6 addresses", "delete their instances first",
                                    asked)
            rec["ipv6_cidr_block"] = None
        elif asked is not None and changes["ipv6_cidr_block"] != have:
            if have is not None:
                raise ApiError(409, f"{old['id']} already has the IPv6 block {have}; disassociate it first", asked)
            self._check_subnet_ipv6(snap, snap.get(old["vpc_id"], "vpc"), changes["ipv6_cidr_block"], old["id"])
            rec["ipv6_cidr_block"] = changes["ipv6_cidr_block"]
        return rec

    async def _delete_subnet(self, caller, snap, subnet, puts):
        sid = subnet["id"]
        self._refuse_dependents(sid, snap.of("i", subnet_id=sid) + snap.of("nat", subnet_id=sid)
                                + [x for x in snap.of("nlb") if sid in x["subnet_ids"]])
        return []

    async def _host(self, name: str, field: str = "host") -> dict:
        rec = await self.store.get(f"/hosts/{name}")
        if rec is None:
            raise ApiError(422, f"unknown host {name!r} (register it first: POST /v1/hosts)", field)
        return json.loads(rec.value)

    def _groups(self, snap, vpc_id: str, ids: list[str]) -> list[str]:
        for i, g in enumerate(ids):
            self._same_vpc(snap, vpc_id, g, "sg", f"security_group_ids[{i}]")
        if len(set(ids)) != len(ids):
            raise ApiError(422, "a group appears twice", "security_group_ids")
        return ids

    @staticmethod
    def _private_ip(snap, subnet: dict, requested: str | None, subnet_field: str = "subnet_id") -> str:
        """An ENI's address in ``subnet``: ``requested`` if it is free (422 outside the subnet or
        reserved, 409 taken), else the first free one from .4 (409 naming ``subnet_field`` when there is
        none). Taken: the addresses of the subnet's ENIs, whoever's (instances', NAT gateways', load
        balancers')."""
        net = ipaddress.IPv4Network(subnet["cidr_block"])
        reserved = {net.network_address + k for k in range(4)} | {net.broadcast_address}
        taken = {x["private_ip"] for x in snap.of("eni", subnet_id=subnet["id"])}
        if requested:
            ip = ipaddress.IPv4Address(requested)
            if ip not in net:
                raise ApiError(422, f"{ip} is outside subnet {subnet['id']} ({net})", "private_ip")
            if ip in reserved:
                raise ApiError(422, f"{ip} is reserved in {net} (.0-.3 and the last address)", "private_ip")
            if str(ip) in taken:
                raise ApiError(409, f"{ip} is already in use in {subnet['id']}", "private_ip")
            return str(ip)
        ip = next((a for a in net.hosts() if a not in reserved and str(a) not in taken), None)
        if ip is None:
            raise ApiError(409, f"subnet {subnet['id']} has no free address", subnet_field)
        return str(ip)

    @staticmethod
    def _ipv6_address(snap, subnet: dict, requested: str | None) -> str | None:
        """An ENI's IPv6 address in ``subnet`` (None when it has no IPv6 block): ``requested`` if it is
        free (422 outside the /64 or reserved, 409 taken), else the first free one from ::4."""
        block = subnet.get("ipv6_cidr_block")
        if block is None:
            if requested:
                raise ApiError(422, f"subnet {subnet['id']} has no IPv6 CIDR block", "ipv6_address")
            return None
        net = ipaddress.IPv6Network(block)
        first, last = net.network_address, net.broadcast_address
        taken = {x.get("ipv6_address") for x in snap.of("eni", subnet_id=subnet["id"])}
        if requested:
            ip = ipaddress.IPv6Address(requested)
            if ip not in net:
                raise ApiError(422, f"{ip} is outside subnet {subnet['id']}'s IPv6 block ({net})", "ipv6_address")
            if int(ip) - int(first) < 4 or ip == last:
                raise ApiError(422, f"{ip} is reserved in {net} (the first four addresses and the last)",
                               "ipv6_address")
            if str(ip) in taken:
                raise ApiError(409, f"{ip} is already in use in {subnet['id']}", "ipv6_address")
            return str(ip)
        ip = first + 4
        while str(ip) in taken:
            ip += 1
        if ip >= last:
            raise ApiError(409, f"subnet {subnet['id']} has no free IPv6 address", "subnet_id")
        return str(ip)

    async def _create_i(self, caller, snap, rid, body: r.InstanceCreate):
        subnet = snap.get(body.subnet_id, "subnet", "subnet_id")
        vpc = snap.get(subnet["vpc_id"], "vpc")
        await self._host(body.host)
        if snap.of("i", name=body.name):
            raise ApiError(409, f"an instance named {body.name!r} exists", "name")
        ip = self._private_ip(snap, subnet, body.private_ip)
        ipv6 = self._ipv6_address(snap, subnet, body.ipv6_address)
        groups = self._groups(snap, vpc["id"], body.security_group_ids or [vpc["default_security_group_id"]])
        eni = new_id("eni")
        common = {"subnet_id": subnet["id"], "vpc_id": vpc["id"], "host": body.host, "private_ip": str(ip),
                  "ipv6_address": ipv6, "security_group_ids": groups, "source_dest_check": body.source_dest_check,
                  "interface_type": body.interface_type, "connection_tracking": body.connection_tracking.model_dump()}
        puts = {self._key(caller, eni): self._rec(caller, r.KINDS["network-interfaces"], eni,
                                                   {**common, "instance_id": rid, "mac_address": _mac(eni)})}
        rec = self._rec(caller, r.KINDS["instances"], rid, {"name": body.name, **common, "eni_id": eni})
        return puts, [], rec

    async def _update_i(self, caller, snap, old, changes, puts):
        if changes.get("host"):
            await self._host(changes["host"])
        if changes.get("name") and any(x["id"] != old["id"] for x in snap.of("i", name=changes["name"])):
            raise ApiError(409, f"an instance named {changes['name']!r} exists", "name")
        if changes.get("security_group_ids"):
            self._groups(snap, old["vpc_id"], changes["security_group_ids"])
        rec = {**old, **changes}
        eni = dict(snap.get(old["eni_id"], "eni"))
        for k in ("host", "security_group_ids", "source_dest_check", "connection_tracking"):
            if k in rec:
                eni[k] = rec[k]
        puts[self._key(caller, eni["id"])] = eni
        return rec

    async def _delete_i(self, caller, snap, inst, puts):
        # Its ENI goes with it; a route that targets the ENI stays and becomes a blackhole, as in the cloud.
        # Its elastic IP stays allocated to the account, disassociated. Target groups that name it keep
        # its targets, unused (the infrastructure view leaves them out).
        for eip in snap.of("eipalloc", instance_id=inst["id"]):
            puts[self._key(caller, eip["id"])] = {**eip, **UNASSOCIATED, "updated": time.time()}
        return [self._key(caller, inst["eni_id"])]

    def _check_rules(self, snap, vpc_id: str, rules: list[dict], field: str, self_id: str) -> None:
        for i, rule in enumerate(rules):
            g = rule.get("source_group_id")
            if g and g != self_id:
                self._same_vpc(snap, vpc_id, g, "sg", f"{field}[{i}].source_group_id")

    async def _create_sg(self, caller, snap, rid, body: r.SecurityGroupCreate):
        vpc = snap.get(body.vpc_id, "vpc", "vpc_id")
        if snap.of("sg", vpc_id=body.vpc_id, name=body.name):
            raise ApiError(409, f"VPC {body.vpc_id} has a group named {body.name!r}", "name")
        fields = body.model_dump()
        if body.egress is None:  # all outbound: IPv4, and IPv6 in a VPC with an IPv6 block
            fields["egress"] = r.ALLOW_ALL_EGRESS + (r.ALLOW_ALL_EGRESS_IPV6 if vpc.get("ipv6_cidr_block") else [])
        for field in ("ingress", "egress"):
            self._check_rules(snap, body.vpc_id, fields[field], field, rid)
        return {}, [], self._rec(caller, r.KINDS["security-groups"], rid, {**fields, "default": False})

    async def _update_sg(self, caller, snap, old, changes, puts):
        if changes.get("name") and any(x["id"] != old["id"] for x in
                                       snap.of("sg", vpc_id=old["vpc_id"], name=changes["name"])):
            raise ApiError(409, f"VPC {old['vpc_id']} has a group named {changes['name']!r}", "name")
        rec = {**old, **changes}
        for field in ("ingress", "egress"):
            self._check_rules(snap, old["vpc_id"], rec[field], field, old["id"])
        return rec

    async def _delete_sg(self, caller, snap, sg, puts):
        if sg.get("default"):
            raise ApiError(409, f"{sg['id']} is the default group of {sg['vpc_id']}; it goes with the VPC")
        users = [x for x in snap.of("eni") if sg["id"] in x["security_group_ids"]]
        users += [x for x in snap.of("sg") if x["id"] != sg["id"] and any(
            rule.get("source_group_id") == sg["id"] for rule in x["ingress"] + x["egress"])]
        self._refuse_dependents(sg["id"], users)
        return []

    async def _create_acl(self, caller, snap, rid, body: r.NetworkAclCreate):
        snap.get(body.vpc_id, "vpc", "vpc_id")
        return {}, [], self._rec(caller, r.KINDS["network-acls"], rid, {**body.model_dump(), "default": False})

    async def _delete_acl(self, caller, snap, acl, puts):
        if acl.get("default"):
            raise ApiError(409, f"{acl['id']} is the default network ACL of {acl['vpc_id']}")
        self._refuse_dependents(acl["id"], snap.of("subnet", network_acl_id=acl["id"]))
        return []

    def _routes(self, snap, vpc: dict, routes: list[dict], old: list[dict] = ()) -> list[dict]:
        """The user routes to store from a body's ``routes`` (see the module's docstring for the rules):
        the local route dropped (it is implicit), ``state`` dropped (computed when read). A route kept
        exactly as it is in ``old`` is not checked again: its target may be gone (a blackhole)."""
        net = ipaddress.IPv4Network(vpc["cidr_block"])
        net6 = ipaddress.IPv6Network(vpc["ipv6_cidr_block"]) if vpc.get("ipv6_cidr_block") else None
        out, seen = [], set()
        for i, route in enumerate(routes):
            where, dest = f"routes[{i}]", route["destination"]
            if route.get("gateway_id") == "local":
                if dest not in (vpc["cidr_block"], vpc.get("ipv6_cidr_block")):
                    also = f" or its IPv6 block {net6}" if net6 else ""
                    raise ApiError(422, f"the local route's destination is the VPC's CIDR {vpc['cidr_block']}{also}, "
                                        f"not {dest}", f"{where}.destination")
                continue
            if dest in seen:
                raise ApiError(422, f"two routes for {dest}", f"{where}.destination")
            seen.add(dest)
            stored = {"destination": dest, **{field: route.get(field) for field, _ in r.ROUTE_TARGETS}}
            out.append(stored)
            if stored in old:
                continue
            field, prefix = next((f, p) for f, p in r.ROUTE_TARGETS if stored[f])
            target, d = stored[field], ipaddress.ip_network(dest)
            if d.version == 4 and d.subnet_of(net):
                if d == net:
                    raise ApiError(422, f"{dest} is the VPC's CIDR: its route is the local route, which "
                                        "cannot be replaced", f"{where}.destination")
                if prefix not in ("eni", "nat") or dest not in {
                        s["cidr_block"] for s in snap.of("subnet", vpc_id=vpc["id"])}:
                    raise ApiError(422, f"{dest} is more specific than the local route ({net}): only a route "
                                        "for a whole subnet's CIDR to a network interface or a NAT gateway "
                                        "may be", f"{where}.destination")
            if net6 is not None and d.version == 6 and d.subnet_of(net6):
                if d == net6:
                    raise ApiError(422, f"{dest} is the VPC's IPv6 block: its route is the local route, which "
                                        "cannot be replaced", f"{where}.destination")
                if prefix != "eni" or dest not in {
                        s.get("ipv6_cidr_block") for s in snap.of("subnet", vpc_id=vpc["id"])}:
                    raise ApiError(422, f"{dest} is more specific than the IPv6 local route ({net6}): only a "
                                        "route for a whole subnet's IPv6 CIDR to a network interface may be "
                                        "(NAT gateways are IPv4-only)", f"{where}.destination")
            if prefix == "eigw" and d.version != 6:
                raise ApiError(422, f"an egress-only internet gateway takes IPv6 destinations, not {dest}",
                               f"{where}.destination")
            if prefix == "igw":
                igw = snap.get(target, prefix, f"{where}.{field}")
                if igw.get("vpc_id") is None:
                    raise ApiError(422, f"{target} is not attached to {vpc['id']}", f"{where}.{field}")
            self._same_vpc(snap, vpc["id"], target, prefix, f"{where}.{field}")
        return out

    async def _create_rtb(self, caller, snap, rid, body: r.RouteTableCreate):
        vpc = snap.get(body.vpc_id, "vpc", "vpc_id")
        fields = body.model_dump()
        fields["routes"] = self._routes(snap, vpc, fields["routes"])
        return {}, [], self._rec(caller, r.KINDS["route-tables"], rid, {**fields, "main": False})

    async def _update_rtb(self, caller, snap, old, changes, puts):
        rec = {**old, **changes}
        if "routes" in changes:
            rec["routes"] = self._routes(snap, snap.get(old["vpc_id"], "vpc"), changes["routes"], old["routes"])
        return rec

    async def _delete_rtb(self, caller, snap, rtb, puts):
        if rtb.get("main"):
            raise ApiError(409, f"{rtb['id']} is the main route table of {rtb['vpc_id']}")
        self._refuse_dependents(rtb["id"], snap.of("subnet", route_table_id=rtb["id"]))
        return []

    def _attach_igw(self, snap, igw_id: str, vpc_id: str) -> None:
        snap.get(vpc_id, "vpc", "vpc_id")
        other = [x for x in snap.of("igw", vpc_id=vpc_id) if x["id"] != igw_id]
        if other:
            raise ApiError(409, f"{vpc_id} already has internet gateway {other[0]['id']}", "vpc_id")

    async def _create_igw(self, caller, snap, rid, body: r.InternetGatewayCreate):
        if body.vpc_id:
            self._attach_igw(snap, rid, body.vpc_id)
        return {}, [], self._rec(caller, r.KINDS["internet-gateways"], rid, body.model_dump())

    async def _update_igw(self, caller, snap, old, changes, puts):
        rec = dict(old)
        if changes.get("name"):
            rec["name"] = changes["name"]
        if changes.get("detach"):
            mapped = snap.of("eipalloc", vpc_id=old["vpc_id"]) if old.get("vpc_id") else []
            if mapped:
                names = ", ".join(f"{x['id']} ({x['public_ip']})" for x in mapped[:10])
                raise ApiError(409, f"network {old['vpc_id']} has mapped public address(es): {names}; "
                                    f"disassociate them (or delete their NAT gateways) before detaching "
                                    f"{old['id']}", "detach")
            rec["vpc_id"] = None
        elif changes.get("vpc_id"):
            if old.get("vpc_id") and old["vpc_id"] != changes["vpc_id"]:
                raise ApiError(409, f"{old['id']} is attached to {old['vpc_id']}; detach it first", "vpc_id")
            self._attach_igw(snap, old["id"], changes["vpc_id"])
            rec["vpc_id"] = changes["vpc_id"]
        return rec

    async def _delete_igw(self, caller, snap, igw, puts):
        if igw.get("vpc_id"):
            raise ApiError(409, f"{igw['id']} is attached to {igw['vpc_id']}; detach it first")
        return []

    async def _create_eigw(self, caller, snap, rid, body: r.EgressOnlyInternetGatewayCreate):
        snap.get(body.vpc_id, "vpc", "vpc_id")
        other = snap.of("eigw", vpc_id=body.vpc_id)
        if other:
            raise ApiError(409, f"{body.vpc_id} already has egress-only internet gateway {other[0]['id']}", "vpc_id")
        return {}, [], self._rec(caller, r.KINDS["egress-only-internet-gateways"], rid, body.model_dump())

    async def _create_nat(self, caller, snap, rid, body: r.NatGatewayCreate):
        subnet = snap.get(body.subnet_id, "subnet", "subnet_id")
        vpc = snap.get(subnet["vpc_id"], "vpc")
        eip = None
        if body.connectivity_type == "public":  # the body's rule: allocation_id is there
            eip = snap.get(body.allocation_id, "eipalloc", "allocation_id")
            if not snap.of("igw", vpc_id=vpc["id"]):
                raise ApiError(409, f"network {vpc['id']} has no internet gateway attached: a public NAT "
                                    "gateway needs one (attach one, or create a private NAT gateway)", "subnet_id")
            if eip.get("eni_id"):
                raise ApiError(409, f"{eip['id']} ({eip['public_ip']}) is already associated with "
                                    f"{eip.get('nat_gateway_id') or eip.get('instance_id')}", "allocation_id")
        ip = self._private_ip(snap, subnet, body.private_ip)
        eni = new_id("eni")
        puts = {self._key(caller, eni): self._rec(caller, r.KINDS["network-interfaces"], eni, {
            "subnet_id": subnet["id"], "vpc_id": vpc["id"], "host": None, "private_ip": ip, "ipv6_address": None,
            "mac_address": _mac(eni),
            "security_group_ids": [], "source_dest_check": False, "interface_type": "nat_gateway",
            "connection_tracking": None, "instance_id": None, "nat_gateway_id": rid, "requester_managed": True,
            "description": f"Interface for NAT Gateway {rid}"})}
        if eip is not None:
            puts[self._key(caller, eip["id"])] = {**eip, **UNASSOCIATED, "nat_gateway_id": rid, "eni_id": eni,
                                                  "private_ip": ip, "vpc_id": vpc["id"], "updated": time.time()}
        return puts, [], self._rec(caller, r.KINDS["nat-gateways"], rid, {
            **body.model_dump(), "subnet_id": subnet["id"], "vpc_id": vpc["id"], "private_ip": ip,
            "public_ip": eip["public_ip"] if eip else None, "eni_id": eni, "state": "available"})

    async def _delete_nat(self, caller, snap, nat, puts):
        # Its address stays allocated to the account, disassociated; its ENI goes; routes to it stay
        # (blackholes, computed when read).
        for eip in snap.of("eipalloc", nat_gateway_id=nat["id"]):
            puts[self._key(caller, eip["id"])] = {**eip, **UNASSOCIATED, "updated": time.time()}
        return [self._key(caller, nat["eni_id"])] if nat.get("eni_id") else []

    def _association(self, snap, instance_id: str, eip_id: str) -> dict:
        """The fields of an elastic IP associated with ``instance_id``, or an ApiError saying why not."""
        inst = snap.get(instance_id, "i", "instance_id")
        if not snap.of("igw", vpc_id=inst["vpc_id"]):
            raise ApiError(409, f"network {inst['vpc_id']} is not attached to any internet gateway",
                           "instance_id")
        other = [x for x in snap.of("eipalloc", instance_id=inst["id"]) if x["id"] != eip_id]
        if other:
            raise ApiError(409, f"{inst['id']} already has elastic IP {other[0]['id']} ({other[0]['public_ip']}); "
                                "disassociate it first", "instance_id")
        return {**UNASSOCIATED, "instance_id": inst["id"], "eni_id": inst["eni_id"],
                "private_ip": inst["private_ip"], "vpc_id": inst["vpc_id"]}

    @staticmethod
    def _refuse_if_nat(eip: dict, field: str | None = None) -> None:
        """A NAT gateway's address stays with it until the gateway is deleted (as in the cloud)."""
        if eip.get("nat_gateway_id"):
            raise ApiError(409, f"{eip['id']} ({eip['public_ip']}) is in use by NAT gateway "
                                f"{eip['nat_gateway_id']}; delete the NAT gateway first", field)

    async def _create_eipalloc(self, caller, snap, rid, body: r.ElasticIpCreate):
        association = self._association(snap, body.instance_id, rid) if body.instance_id else UNASSOCIATED
        taken = {x.key.rsplit("/", 1)[1] for x in await self.store.range("/public-ips/")}
        ip = next((str(a) for a in self.public_ip_pool.hosts() if str(a) not in taken), None)
        if ip is None:
            raise ApiError(409, f"the region's public IPv4 pool ({self.public_ip_pool}) has no free address")
        puts = {f"/public-ips/{ip}": {"allocation_id": rid, "account": caller.account}}
        return puts, [], self._rec(caller, r.KINDS["elastic-ips"], rid,
                                   {"name": body.name, "public_ip": ip, **association})

    async def _update_eipalloc(self, caller, snap, old, changes, puts):
        rec = dict(old)
        if changes.get("name"):
            rec["name"] = changes["name"]
        if changes.get("disassociate"):
            self._refuse_if_nat(old, "disassociate")
            rec.update(UNASSOCIATED)
        elif changes.get("instance_id"):
            self._refuse_if_nat(old, "instance_id")
            rec.update(self._association(snap, changes["instance_id"], old["id"]))
        return rec

    async def _delete_eipalloc(self, caller, snap, eip, puts):
        self._refuse_if_nat(eip)
        if eip.get("instance_id"):
            raise ApiError(409, f"{eip['id']} ({eip['public_ip']}) is associated with {eip['instance_id']}; "
                                "disassociate it first")
        return [f"/public-ips/{eip['public_ip']}"]

    def _check_targets(self, snap, vpc_id: str, targets: list[dict], old: list[dict] = ()) -> None:
        """Instance targets name instances of the VPC. A target kept exactly as it is in ``old`` is not
        checked again: its instance may be gone (deleting an instance leaves its targets in place)."""
        for i, t in enumerate(targets):
            if t.get("instance_id") and t not in old:
                self._same_vpc(snap, vpc_id, t["instance_id"], "i", f"targets[{i}].instance_id")

    async def _create_tg(self, caller, snap, rid, body: r.TargetGroupCreate):
        snap.get(body.vpc_id, "vpc", "vpc_id")
        fields = body.model_dump()
        self._check_targets(snap, body.vpc_id, fields["targets"])
        return {}, [], self._rec(caller, r.KINDS["target-groups"], rid, fields)

    async def _update_tg(self, caller, snap, old, changes, puts):
        rec = {**old, **changes}
        self._check_targets(snap, old["vpc_id"], rec["targets"], old["targets"])
        return rec

    async def _delete_tg(self, caller, snap, tg, puts):
        self._refuse_dependents(tg["id"], [x for x in snap.of("nlb")
                                           if any(li["target_group_id"] == tg["id"] for li in x["listeners"])])
        return []

    def _check_listeners(self, snap, vpc_id: str, listeners: list[dict]) -> None:
        seen = set()
        for i, li in enumerate(listeners):
            if (li["protocol"], li["port"]) in seen:
                raise ApiError(409, f"two listeners on {li['protocol']}/{li['port']}", f"listeners[{i}].port")
            seen.add((li["protocol"], li["port"]))
            tg = self._same_vpc(snap, vpc_id, li["target_group_id"], "tg", f"listeners[{i}].target_group_id")
            if tg["protocol"] != li["protocol"]:
                raise ApiError(422, f"{tg['id']} is {tg['protocol']}, the listener {li['protocol']}",
                               f"listeners[{i}].protocol")

    async def _create_nlb(self, caller, snap, rid, body: r.LoadBalancerCreate):
        subnets = [snap.get(s, "subnet", f"subnet_ids[{i}]") for i, s in enumerate(body.subnet_ids)]
        vpcs = {s["vpc_id"] for s in subnets}
        if len(vpcs) != 1:
            raise ApiError(422, "all subnets of a load balancer belong to one VPC", "subnet_ids")
        vpc_id = vpcs.pop()
        fields = {**body.model_dump(), "vpc_id": vpc_id}
        self._check_listeners(snap, vpc_id, fields["listeners"])
        subnet = subnets[0]  # its address is in its first subnet
        ip = self._private_ip(snap, subnet, body.private_ip, "subnet_ids[0]")
        eni = new_id("eni")
        puts = {self._key(caller, eni): self._rec(caller, r.KINDS["network-interfaces"], eni, {
            "subnet_id": subnet["id"], "vpc_id": vpc_id, "host": None, "private_ip": ip, "ipv6_address": None,
            "mac_address": _mac(eni),
            "security_group_ids": [], "source_dest_check": False, "interface_type": "network_load_balancer",
            "connection_tracking": None, "instance_id": None, "nat_gateway_id": None, "load_balancer_id": rid,
            "requester_managed": True, "description": f"ELB net/{body.name}/{rid}"})}
        return puts, [], self._rec(caller, r.KINDS["load-balancers"], rid, {
            **fields, "subnet_id": subnet["id"], "private_ip": ip, "eni_id": eni,
            "dns_name": self._dns_name(body.name, rid), "state": "active"})

    def _dns_name(self, name: str, rid: str) -> str:
        """``NAME-<id digits>.elb.<region>.vpc.internal``: the name made a DNS label (lower case, other
        characters as '-', at most 32), fixed when the load balancer is made (a rename keeps it)."""
        label = "".join(c if c.isascii() and c.isalnum() else "-" for c in name.lower())
        label = "-".join(part for part in label.split("-") if part)[:32].strip("-")
        return f"{label}-{rid.split('-', 1)[1]}.elb.{self.region}.vpc.internal"

    async def _delete_nlb(self, caller, snap, nlb, puts):
        # Its ENI goes with it, and with it its address.
        return [self._key(caller, nlb["eni_id"])] if nlb.get("eni_id") else []

    async def _update_nlb(self, caller, snap, old, changes, puts):
        rec = {**old, **changes}
        self._check_listeners(snap, old["vpc_id"], rec["listeners"])
        return rec

    async def _create_fl(self, caller, snap, rid, body: r.FlowLogCreate):
        snap.get(body.resource_id, None, "resource_id")
        return {}, [], self._rec(caller, r.KINDS["flow-logs"], rid, body.model_dump())

    async def _create_dopt(self, caller, snap, rid, body: r.DhcpOptionsCreate):
        fields = body.model_dump()
        fields["domain_name"] = body.domain_name or f"{self.region}.compute.internal"
        return {}, [], self._rec(caller, r.KINDS["dhcp-options"], rid, fields)

    async def _delete_dopt(self, caller, snap, dopt, puts):
        self._refuse_dependents(dopt["id"], snap.of("vpc", dhcp_options_id=dopt["id"]))
        return []

    @staticmethod
    def _check_zone_vpcs(snap, rid: str, name: str, vpc_ids: list[str]) -> None:
        """VPCs of the account, each once, none with another zone of the same name."""
        for i, v in enumerate(vpc_ids):
            snap.get(v, "vpc", f"vpc_ids[{i}]")
            if v in vpc_ids[:i]:
                raise ApiError(422, f"{v} appears twice", f"vpc_ids[{i}]")
            clash = [z for z in snap.of("zone") if z["id"] != rid and v in z["vpc_ids"]
                     and r.dns_name(z["name"]) == r.dns_name(name)]
            if clash:
                raise ApiError(409, f"{v} already has a private zone named {clash[0]['name']} ({clash[0]['id']})",
                               f"vpc_ids[{i}]")

    @staticmethod
    def _check_zone_records(name: str, records: list[dict]) -> None:
        """Names in the zone, one record set a (name, type), a CNAME alone at its name and not the apex."""
        problem = r.zone_records_problem(name, records)
        if problem is not None:
            raise ApiError(422, problem[1], f"records[{problem[0]}].name")

    async def _create_zone(self, caller, snap, rid, body: r.DnsZoneCreate):
        fields = body.model_dump()
        self._check_zone_vpcs(snap, rid, body.name, fields["vpc_ids"])
        self._check_zone_records(body.name, fields["records"])
        return {}, [], self._rec(caller, r.KINDS["dns-zones"], rid, fields)

    async def _update_zone(self, caller, snap, old, changes, puts):
        if "vpc_ids" in changes:
            self._check_zone_vpcs(snap, old["id"], old["name"], changes["vpc_ids"])
        if "records" in changes:
            self._check_zone_records(old["name"], changes["records"])
        return {**old, **changes}


def _effective_routes(by_id: dict[str, dict], table: dict) -> list[dict]:
    """A route table's routes as they act: the local route first, then the stored ones, each with its
    ``target_type``, ``target_id`` and ``state`` (``blackhole``: the target is gone, or an internet
    gateway is no longer attached to the table's VPC), and the stored fields. A stored route for the
    VPC's CIDR (refused now; accepted before the local route was explicit) is shadowed by the local one."""
    vpc = by_id.get(table["vpc_id"])
    out, local = [], []
    if vpc is not None:
        local = [x for x in (vpc["cidr_block"], vpc.get("ipv6_cidr_block")) if x]
        out += [{"destination": x, "target_type": "local", "target_id": None, "state": "active"} for x in local]
    for route in table["routes"]:
        if route["destination"] in local:
            continue
        field = next((f for f, _ in r.ROUTE_TARGETS if route.get(f)), None)
        target_type = TARGET_TYPES.get(field)
        target = by_id.get(route[field]) if field else None
        alive = target is not None and kind_of(target["id"]) == target_type and (
            target_type != "igw" or target.get("vpc_id") == table["vpc_id"])
        out.append({**route, "target_type": target_type, "target_id": route.get(field) if field else None,
                    "state": "active" if alive else "blackhole"})
    return out


# Fields newer than some stored records, with the value an older record means.
_LATER_FIELDS = {"vpc": {"ipv6_cidr_block": None, "amazon_provided_ipv6_cidr_block": False},
                 "subnet": {"ipv6_cidr_block": None}, "i": {"ipv6_address": None}, "eni": {"ipv6_address": None}}


def _mac(eni_id: str) -> str:
    return addresses.mac_text(addresses.eni_mac(addresses.eni_number(eni_id)))


def _present(by_id: dict[str, dict], rec: dict) -> dict:
    """A record as the API answers it: a route table's ``routes`` with the local routes first and each
    route's ``state`` (computed now, from the account's records ``by_id``); other kinds as stored (with
    the fields newer than the record at their defaults)."""
    kind = kind_of(rec["id"])
    if kind != "rtb":
        later = _LATER_FIELDS.get(kind)
        if later and not later.keys() <= rec.keys():
            rec = {**later, **rec}
        if kind == "eni" and "mac_address" not in rec:
            rec = {**rec, "mac_address": _mac(rec["id"])}
        return rec
    routes = []
    for x in _effective_routes(by_id, rec):
        route = {"destination": x["destination"], **{field: x.get(field) for field, _ in r.ROUTE_TARGETS}}
        if x["target_type"] == "local":
            route["gateway_id"] = "local"
        routes.append({**route, "state": x["state"]})
    return {**rec, "routes": routes}


def _action(kind: r.Kind) -> str:
    """``network-acls`` → ``NetworkAcl`` (audit action names, as in the cloud's API)."""
    singular = kind.collection[:-1] if kind.collection.endswith("s") else kind.collection
    return "".join(p.capitalize() for p in singular.split("-"))


# --- flow log files (blocking I/O: run in a thread) ----------------------------------------------------
def _write_gzip_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # not *.log.gz: readers skip it
    try:
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                gz.write(text.encode())
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)  # the rename is durable once the directory is
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_minute(name: str) -> int | None:
    """The Unix time of the YYYYMMDDTHHmmZ part of a flow log file's name (its window's end, minute)."""
    try:
        return calendar.timegm(time.strptime(name.rsplit("_", 2)[1], "%Y%m%dT%H%MZ"))
    except (IndexError, ValueError):
        return None


def _read_flow_log_files(base: Path, account: str, fl_id: str, fields: list[str], start: float | None,
                         end: float | None, limit: int) -> list[list[str]]:
    files = []
    for path in (base / "AWSLogs" / account / "vpcflowlogs").glob(f"*/*/*/*/{account}_vpcflowlogs_*_{fl_id}_*.log.gz"):
        minute = _file_minute(path.name)
        # Records end before their window does, and the file's minute is the window end's: none can
        # reach ``start`` when the minute is a full minute before it.
        if minute is None or (start is not None and minute + 60 <= start):
            continue
        try:
            files.append((minute, path.stat().st_mtime_ns, path.name, path))
        except OSError:
            continue  # removed meanwhile
    files.sort()
    at_start = fields.index("start") if "start" in fields else None
    at_end = fields.index("end") if "end" in fields else None
    chunks, total = [], 0
    for minute, _, _, path in reversed(files):  # newest first, until ``limit`` records are found
        try:
            with gzip.open(path, "rt") as f:
                lines = f.read().splitlines()
        except (OSError, EOFError, UnicodeDecodeError):
            continue  # unreadable: skipped rather than failing every read of the flow log
        if not lines:
            continue
        names = lines[0].split(" ")
        pick = None if names == fields else [names.index(x) if x in names else None for x in fields]
        rows = []
        for line in lines[1:]:
            values = line.split(" ")
            if len(values) != len(names):
                continue
            row = values if pick is None else [values[i] if i is not None else "-" for i in pick]
            first = _int_or(row[at_start] if at_start is not None else "-", minute)
            last = _int_or(row[at_end] if at_end is not None else "-", minute + 59)
            if (start is None or last >= start) and (end is None or first <= end):
                rows.append(row)
        chunks.append(rows)
        total += len(rows)
        if total >= limit:
            break
    out = [row for rows in reversed(chunks) for row in rows]
    return out[-limit:]


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default

"""Resource kinds of the VPC API: request bodies, references between resources, and the shape rules.

Each kind is a ``Kind``: its URL collection, its id prefix, the pydantic models of its create and
update bodies (``extra="forbid"``: an unknown field is a 422 naming it), and which fields refer to
other resources. Rules that need the rest of the account's state (CIDR containment, overlaps, free
addresses, dependents) live in ``service.py``; here are the rules a body can be checked against alone.

The data plane serves every kind here (route tables, gateways, load balancers, flow logs, DNS zones, DHCP
options); a few fields are accepted but not served yet: README's "Not yet" lines list them.

IPv6 (dual stack, the cloud's sizes): a VPC's IPv6 block is a /56 (``ipv6_cidr_block``, or
``amazon_provided_ipv6_cidr_block: true`` for the next free one of the region's pool), a subnet's a /64
inside it, an ENI's ``ipv6_address`` one address of its subnet's /64.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .ids import kind_of

MIN_PREFIX, MAX_PREFIX = 16, 28


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def ref(prefix: str, also: tuple[str, ...] = ()):
    """A field holding the id of a resource of one kind: ``vpc_id: Ref("vpc")``; ``also``: literal
    values accepted too (a route's ``gateway_id`` may be ``local``)."""

    def check(value: str) -> str:
        if value not in also and kind_of(value) != prefix:
            alternatives = "".join(f" or {a!r}" for a in also)
            raise ValueError(f"expected a {prefix}- id{alternatives}, got {value!r}")
        return value

    return Annotated[str, AfterValidator(check)]


VpcId = ref("vpc")
SubnetId = ref("subnet")
SgId = ref("sg")
RtbId = ref("rtb")
AclId = ref("acl")
IgwId = ref("igw")
IgwOrLocal = ref("igw", also=("local",))  # a route's gateway_id: an internet gateway, or the local route
NatId = ref("nat")
EniId = ref("eni")
EigwId = ref("eigw")
InstanceId = ref("i")
TgId = ref("tg")
EipId = ref("eipalloc")
DoptId = ref("dopt")
# A VPC's DHCP options: a set's id, or "default" (the cloud's word: no set, the default options).
DoptOrDefault = ref("dopt", also=("default",))


def _block(value: str, version: int):
    """``value`` as an IPv4 or IPv6 network; a ValueError that says what is wrong with it."""
    network, interface = (ipaddress.IPv4Network, ipaddress.IPv4Interface) if version == 4 else (
        ipaddress.IPv6Network, ipaddress.IPv6Interface)
    try:
        return network(value)
    except ValueError:
        try:
            host = interface(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv{version} CIDR block") from None
        raise ValueError(f"{value} has host bits set; did you mean {host.network}?") from None


def _network(value: str, low: int = MIN_PREFIX, high: int = MAX_PREFIX) -> str:
    net = _block(value, 4)
    if not low <= net.prefixlen <= high:
        raise ValueError(f"prefix /{net.prefixlen} out of range /{low} to /{high}")
    return str(net)


def _any_cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR block (host bits must be zero)") from None


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def _ipv6_block(prefixlen: int):
    """An IPv6 CIDR block of exactly ``/prefixlen`` (the cloud's sizes: /56 a VPC, /64 a subnet)."""

    def check(value: str) -> str:
        net = _block(value, 6)
        if net.prefixlen != prefixlen:
            raise ValueError(f"an IPv6 block here is a /{prefixlen}, not /{net.prefixlen}")
        return str(net)

    return Annotated[str, AfterValidator(check)]


def _ipv6(value: str) -> str:
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv6 address") from None


VpcCidr = Annotated[str, AfterValidator(_network)]
VpcIpv6Cidr = _ipv6_block(56)
SubnetIpv6Cidr = _ipv6_block(64)
IPv6 = Annotated[str, AfterValidator(_ipv6)]
AnyCidr = Annotated[str, AfterValidator(_any_cidr)]
IPv4 = Annotated[str, AfterValidator(_ipv4)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:/=+@-]*$")]
HostName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9-]*$")]
Protocol = Annotated[str, Field(pattern=r"^(-1|all|tcp|udp|icmp|icmpv6|[0-9]{1,3})$")]


def _protocol_number(p: str) -> int:
    return {"-1": -1, "all": -1, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}.get(p, None) or int(p)


# --- VPCs and subnets --------------------------------------------------------------------------------
class VpcCreate(Body):
    """A VPC. IPv6: ``ipv6_cidr_block`` (a /56 no other VPC of any account has) or
    ``amazon_provided_ipv6_cidr_block: true`` (the next free /56 of the region's pool), not both."""
    name: Optional[Name] = None
    cidr_block: VpcCidr
    dhcp_options_id: Optional[DoptOrDefault] = None  # "default" (or absent): no set, the default options
    amazon_provided_ipv6_cidr_block: bool = False
    ipv6_cidr_block: Optional[VpcIpv6Cidr] = None


class VpcUpdate(Body):
    """``dhcp_options_id``: associate a set, or ``"default"`` to go back to the default options.
    IPv6: add a block to a VPC that has none (``ipv6_cidr_block`` or ``amazon_provided_ipv6_cidr_block:
    true``), or remove it (``disassociate_ipv6_cidr_block: true``, once no subnet has an IPv6 block)."""
    name: Optional[Name] = None
    dhcp_options_id: Optional[DoptOrDefault] = None
    amazon_provided_ipv6_cidr_block: bool = False
    ipv6_cidr_block: Optional[VpcIpv6Cidr] = None
    disassociate_ipv6_cidr_block: bool = False


class SubnetCreate(Body):
    vpc_id: VpcId
    cidr_block: VpcCidr
    name: Optional[Name] = None
    route_table_id: Optional[RtbId] = None  # default: the VPC's main table
    network_acl_id: Optional[AclId] = None  # default: the VPC's default ACL
    ipv6_cidr_block: Optional[SubnetIpv6Cidr] = None  # a /64 of the VPC's /56


class SubnetUpdate(Body):
    """IPv6: add a /64 to a subnet that has none (``ipv6_cidr_block``), or remove it
    (``disassociate_ipv6_cidr_block: true``, once no ENI of the subnet has an IPv6 address)."""
    name: Optional[Name] = None
    route_table_id: Optional[RtbId] = None
    network_acl_id: Optional[AclId] = None
    ipv6_cidr_block: Optional[SubnetIpv6Cidr] = None
    disassociate_ipv6_cidr_block: bool = False


# --- hosts (admin) and instances ---------------------------------------------------------------------
class HostCreate(Body):
    name: HostName
    underlay_ip: IPv4


class ConnectionTracking(Body):
    """Per-ENI idle timeouts (the cloud's ranges) and the size of its flow table (ours: the cloud's
    limit depends on the instance size; 65,536 flows cost about 25 MB here)."""
    tcp_established_timeout: int = Field(432000, ge=60, le=432000)
    udp_stream_timeout: int = Field(180, ge=60, le=180)
    udp_timeout: int = Field(30, ge=30, le=60)
    max_tracked_flows: int = Field(65536, ge=1, le=2_000_000)


class InstanceCreate(Body):
    name: HostName
    subnet_id: SubnetId
    host: HostName
    private_ip: Optional[IPv4] = None  # default: the first free address from .4
    # Only in a subnet with an IPv6 block, which gives every new instance one: this address, else the
    # first free one from ::4.
    ipv6_address: Optional[IPv6] = None
    security_group_ids: Optional[list[SgId]] = Field(None, max_length=5)  # default: the VPC's default
    source_dest_check: bool = True
    interface_type: Literal["tun", "tap"] = "tun"
    connection_tracking: ConnectionTracking = Field(default_factory=ConnectionTracking)


class InstanceUpdate(Body):
    name: Optional[HostName] = None
    host: Optional[HostName] = None  # moving an instance to another host
    security_group_ids: Optional[list[SgId]] = Field(None, min_length=1, max_length=5)
    source_dest_check: Optional[bool] = None
    connection_tracking: Optional[ConnectionTracking] = None


# --- security groups ---------------------------------------------------------------------------------
class SgRule(Body):
    protocol: Protocol = "-1"
    from_port: int = Field(-1, ge=-1, le=65535)  # for ICMP: the type (-1 = all)
    to_port: int = Field(-1, ge=-1, le=65535)  # for ICMP: the code (-1 = all)
    cidr: Optional[AnyCidr] = None
    source_group_id: Optional[SgId] = None
    description: Optional[str] = Field(None, max_length=255)

    @model_validator(mode="after")
    def _check(self):
        if (self.cidr is None) == (self.source_group_id is None):
            raise ValueError("a rule names exactly one peer: cidr or source_group_id")
        proto = _protocol_number(self.protocol)
        if not -1 <= proto <= 255:
            raise ValueError(f"protocol {self.protocol} out of range 0..255")
        if proto in (6, 17):
            if not 0 <= self.from_port <= self.to_port:
                raise ValueError("tcp/udp rules need 0 <= from_port <= to_port")
        elif proto in (1, 58):
            if self.from_port > 255 or self.to_port > 255:
                raise ValueError("icmp rules carry the type in from_port and the code in to_port (-1..255)")
        elif (self.from_port, self.to_port) != (-1, -1):
            raise ValueError("ports apply to tcp, udp and icmp only")
        return self


ALLOW_ALL_EGRESS = [{"protocol": "-1", "from_port": -1, "to_port": -1, "cidr": "0.0.0.0/0",
                     "source_group_id": None, "description": None}]
ALLOW_ALL_EGRESS_IPV6 = [{**ALLOW_ALL_EGRESS[0], "cidr": "::/0"}]  # added in a VPC with an IPv6 block


# Rules per group and direction: the cloud's default quota is 60, raisable to 1,000 (rules per group ×
# groups per ENI ≤ 1,000). We allow the raised figure: rules cost the first packet of a flow only.
MAX_SG_RULES = 1000


class SecurityGroupCreate(Body):
    vpc_id: VpcId
    name: Name
    description: Optional[str] = Field(None, max_length=255)
    ingress: list[SgRule] = Field(default_factory=list, max_length=MAX_SG_RULES)  # new group: no inbound
    egress: Optional[list[SgRule]] = Field(None, max_length=MAX_SG_RULES)  # new group: outbound allow-all


class SecurityGroupUpdate(Body):
    name: Optional[Name] = None
    description: Optional[str] = Field(None, max_length=255)
    ingress: Optional[list[SgRule]] = Field(None, max_length=MAX_SG_RULES)
    egress: Optional[list[SgRule]] = Field(None, max_length=MAX_SG_RULES)


# --- network ACLs ------------------------------------------------------------------------------------
class AclEntry(Body):
    rule_number: int = Field(ge=1, le=32766)
    egress: bool = False
    protocol: Protocol = "-1"
    action: Literal["allow", "deny"]
    cidr: AnyCidr
    from_port: int = Field(-1, ge=-1, le=65535)
    to_port: int = Field(-1, ge=-1, le=65535)

    @model_validator(mode="after")
    def _check(self):
        if not -1 <= _protocol_number(self.protocol) <= 255:
            raise ValueError(f"protocol {self.protocol} out of range 0..255")
        return self


def _unique_entries(entries: list[AclEntry]) -> list[AclEntry]:
    seen = set()
    for e in entries:
        if (e.rule_number, e.egress) in seen:
            raise ValueError(f"rule {e.rule_number} ({'egress' if e.egress else 'ingress'}) appears twice")
        seen.add((e.rule_number, e.egress))
    return entries


AclEntries = Annotated[list[AclEntry], AfterValidator(_unique_entries), Field(max_length=40)]


class NetworkAclCreate(Body):
    vpc_id: VpcId
    name: Optional[Name] = None
    entries: AclEntries = Field(default_factory=list)  # a new ACL denies everything


class NetworkAclUpdate(Body):
    name: Optional[Name] = None
    entries: Optional[AclEntries] = None


# --- route tables and gateways -----------------------------------------------------------------------
ROUTE_TARGETS = (("gateway_id", "igw"), ("nat_gateway_id", "nat"), ("network_interface_id", "eni"),
                 ("egress_only_gateway_id", "eigw"))  # a route's target field → the kind it names


class Route(Body):
    """A route: a destination and exactly one target. A table's records list the implicit ``local``
    route first (``gateway_id: "local"``, the VPC's CIDR) and every route with its ``state``: a body may
    send both back unchanged (the local route and ``state`` are read-only and ignored)."""
    destination: AnyCidr
    gateway_id: Optional[IgwOrLocal] = None
    nat_gateway_id: Optional[NatId] = None
    network_interface_id: Optional[EniId] = None
    egress_only_gateway_id: Optional[EigwId] = None
    state: Optional[Literal["active", "blackhole"]] = None  # read-only: computed when read

    @model_validator(mode="after")
    def _one_target(self):
        targets = [t for t in (self.gateway_id, self.nat_gateway_id, self.network_interface_id,
                               self.egress_only_gateway_id) if t]
        if len(targets) != 1:
            raise ValueError("a route has exactly one target: gateway_id, nat_gateway_id, "
                             "network_interface_id or egress_only_gateway_id")
        return self


class RouteTableCreate(Body):
    vpc_id: VpcId
    name: Optional[Name] = None
    routes: list[Route] = Field(default_factory=list, max_length=50)


class RouteTableUpdate(Body):
    name: Optional[Name] = None
    routes: Optional[list[Route]] = Field(None, max_length=50)


class EgressOnlyInternetGatewayCreate(Body):
    """An egress-only internet gateway: outbound IPv6 to the internet, no inbound connection. It belongs
    to one VPC for its whole life (at most one a VPC); routes name it for IPv6 destinations only."""
    vpc_id: VpcId
    name: Optional[Name] = None


class EgressOnlyInternetGatewayUpdate(Body):
    name: Optional[Name] = None


class InternetGatewayCreate(Body):
    name: Optional[Name] = None
    vpc_id: Optional[VpcId] = None  # attached to at most one VPC


class InternetGatewayUpdate(Body):
    name: Optional[Name] = None
    vpc_id: Optional[VpcId] = None  # attach; detach with "detach": true
    detach: bool = False


class ElasticIpCreate(Body):
    """Allocate a public IPv4 address from the region's pool; with ``instance_id``, associate it at once."""
    name: Optional[Name] = None
    instance_id: Optional[InstanceId] = None


class ElasticIpUpdate(Body):
    name: Optional[Name] = None
    instance_id: Optional[InstanceId] = None  # associate (or move from the instance it is on)
    disassociate: bool = False

    @model_validator(mode="after")
    def _one_change(self):
        if self.disassociate and self.instance_id:
            raise ValueError("either instance_id (associate) or disassociate, not both")
        return self


class NatGatewayCreate(Body):
    """A NAT gateway in a subnet. ``public`` (the default): its traffic reaches the internet from the
    elastic IP ``allocation_id`` (required; the VPC needs an attached internet gateway). ``private``:
    it translates to its private address only, for other VPCs and networks (no elastic IP)."""
    subnet_id: SubnetId
    name: Optional[Name] = None
    connectivity_type: Literal["public", "private"] = "public"
    allocation_id: Optional[EipId] = Field(None, validate_default=True)
    private_ip: Optional[IPv4] = None  # default: the subnet's first free address, as for instances

    @field_validator("allocation_id")
    @classmethod
    def _allocation_for_public_only(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        kind = info.data.get("connectivity_type")  # absent: it was invalid, and is reported already
        if kind == "public" and value is None:
            raise ValueError('required for a public NAT gateway (connectivity_type "public"): '
                             "allocate an elastic IP and name it here")
        if kind == "private" and value is not None:
            raise ValueError("a private NAT gateway takes no elastic IP")
        return value


class NatGatewayUpdate(Body):
    name: Optional[Name] = None


# --- load balancers ----------------------------------------------------------------------------------
def _http_matcher(value: str) -> str:
    from ..nlb import parse_matcher  # the data plane's own reading: what it would refuse, we refuse
    parse_matcher(value)
    return value


class HealthCheck(Body):
    protocol: Literal["tcp", "http"] = "tcp"
    port: Optional[int] = Field(None, ge=1, le=65535)  # default: the target's port
    path: str = Field("/", max_length=1024)
    interval: float = Field(30, ge=0.1, le=300)  # short intervals are allowed for labs and tests
    timeout: Optional[float] = Field(None, gt=0, le=120)  # default 10 s TCP, 6 s HTTP
    healthy_threshold: int = Field(5, ge=2, le=10)
    unhealthy_threshold: int = Field(2, ge=2, le=10)
    matcher: Annotated[str, Field(pattern=r"^[0-9]{3}(-[0-9]{3})?(,[0-9]{3}(-[0-9]{3})?)*$"),
                       AfterValidator(_http_matcher)] = "200-399"


class Target(Body):
    instance_id: Optional[InstanceId] = None
    ip: Optional[IPv4] = None
    port: int = Field(ge=1, le=65535)

    @model_validator(mode="after")
    def _one(self):
        if (self.instance_id is None) == (self.ip is None):
            raise ValueError("a target is an instance_id or an ip")
        return self


class TargetGroupCreate(Body):
    vpc_id: VpcId
    name: Name
    protocol: Literal["tcp", "udp"] = "tcp"
    port: int = Field(ge=1, le=65535)
    targets: list[Target] = Field(default_factory=list, max_length=100)
    health_check: HealthCheck = Field(default_factory=HealthCheck)


class TargetGroupUpdate(Body):
    name: Optional[Name] = None
    targets: Optional[list[Target]] = Field(None, max_length=100)
    health_check: Optional[HealthCheck] = None


class Listener(Body):
    protocol: Literal["tcp", "udp"] = "tcp"
    port: int = Field(ge=1, le=65535)
    target_group_id: TgId


class LoadBalancerCreate(Body):
    """A network load balancer in one or more subnets of a VPC. Its address (``private_ip``, default the
    first free one, as for instances) is in its FIRST subnet, held by a requester-managed ENI."""
    name: Name
    subnet_ids: list[SubnetId] = Field(min_length=1, max_length=10)
    listeners: list[Listener] = Field(default_factory=list, max_length=50)
    private_ip: Optional[IPv4] = None  # in subnet_ids[0]; default: its first free address


class LoadBalancerUpdate(Body):
    name: Optional[Name] = None
    listeners: Optional[list[Listener]] = Field(None, max_length=50)


# --- flow logs, DHCP options, private DNS ------------------------------------------------------------
FLOW_LOG_FIELDS = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end "
    "action log-status vpc-id subnet-id instance-id tcp-flags type pkt-srcaddr pkt-dstaddr "
    "flow-direction traffic-path").split()


def log_format_fields(value: str) -> list[str]:
    """The field names of a flow log format (``${name}`` tokens separated by spaces), unchecked."""
    return value.replace("${", " ").replace("}", " ").split()


def _log_format(value: str) -> str:
    fields = log_format_fields(value)
    unknown = [f for f in fields if f not in FLOW_LOG_FIELDS]
    if not fields or unknown:
        raise ValueError(f"unknown flow log fields {unknown}; known: {' '.join(FLOW_LOG_FIELDS)}")
    return value


def _flow_log_target(value: str) -> str:
    if kind_of(value) not in ("vpc", "subnet", "eni"):
        raise ValueError(f"expected a vpc-, subnet- or eni- id, got {value!r}")
    return value


class FlowLogCreate(Body):
    resource_id: Annotated[str, AfterValidator(_flow_log_target)]
    traffic_type: Literal["ACCEPT", "REJECT", "ALL"] = "ALL"
    log_format: Optional[Annotated[str, AfterValidator(_log_format)]] = None  # default: version 2
    max_aggregation_interval: int = Field(600, ge=1, le=600)  # 60 or 600 in the cloud; shorter for labs
    name: Optional[Name] = None


class FlowLogUpdate(Body):
    name: Optional[Name] = None


DnsServer = Annotated[str, AfterValidator(lambda v: v if v == "AmazonProvidedDNS" else _ipv4(v))]
DOMAIN_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
DomainName = Annotated[str, Field(min_length=1, max_length=253, pattern=DOMAIN_PATTERN)]


class DhcpOptionsCreate(Body):
    name: Optional[Name] = None
    domain_name: Optional[DomainName] = None  # default <region>.compute.internal
    domain_name_servers: list[DnsServer] = Field(default_factory=lambda: ["AmazonProvidedDNS"], max_length=4)
    ntp_servers: list[IPv4] = Field(default_factory=list, max_length=4)


class DhcpOptionsUpdate(Body):
    name: Optional[Name] = None


_DOMAIN = re.compile(DOMAIN_PATTERN)


def dns_name(value: str) -> str:
    """A domain name as DNS compares it: lower case, without the trailing dot."""
    return value.lower().rstrip(".")


def record_name_problem(zone: str, name: str) -> str | None:
    """Why a record ``name`` cannot be in zone ``zone`` (None: it can): it is the zone's apex or a name
    under it, compared case-insensitively, the trailing dot optional."""
    z, n = dns_name(zone), dns_name(name)
    if n == z or n.endswith("." + z):
        return None
    return f"{name} is neither the zone's apex {zone} nor a name under it"


def zone_records_problem(zone: str, records: list[dict]) -> tuple[int, str] | None:
    """The first record of zone ``zone`` that breaks the rules a zone's records keep together, as
    (index, why), else None: names in the zone (``record_name_problem``), one record set a (name, type),
    a CNAME alone at its name and not at the apex."""
    seen: dict[str, list[tuple[str, int]]] = {}  # name -> (type, index) of its record sets
    for i, x in enumerate(records):
        problem = record_name_problem(zone, x["name"])
        if problem:
            return i, problem
        n = dns_name(x["name"])
        if x["type"] == "CNAME" and n == dns_name(zone):
            return i, f"a CNAME record cannot be at the zone's apex {zone}"
        for kind, j in seen.get(n, []):
            if kind == x["type"]:
                return i, (f"a second {kind} record set for {x['name']} (the first is records[{j}]): give one "
                           "record set all its values")
            if "CNAME" in (kind, x["type"]):
                return i, (f"{x['name']} has a CNAME record and another record (records[{j}]): a CNAME's name "
                           "has no other record")
        seen.setdefault(n, []).append((x["type"], i))
    return None


class DnsRecord(Body):
    """A record set: its ``values`` fit its ``type`` — A: IPv4 addresses, AAAA: IPv6 addresses (both
    recorded in their canonical form), CNAME (exactly one) and PTR: domain names, TXT: any string of at
    most 255 characters."""
    name: DomainName
    type: Literal["A", "AAAA", "CNAME", "TXT", "PTR"]
    ttl: int = Field(300, ge=0, le=2147483647)
    values: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(min_length=1, max_length=20)

    @field_validator("values")
    @classmethod
    def _values_fit_the_type(cls, values: list[str], info: ValidationInfo) -> list[str]:
        kind = info.data.get("type")  # absent: it was invalid, and is reported already
        out = []
        for i, v in enumerate(values):
            if kind in ("A", "AAAA"):
                family = ipaddress.IPv4Address if kind == "A" else ipaddress.IPv6Address
                try:
                    v = str(family(v))
                except ValueError:
                    raise ValueError(f"values[{i}] {v!r} is not an IPv{4 if kind == 'A' else 6} address "
                                     f"(an {kind} record holds those)") from None
            elif kind in ("CNAME", "PTR") and (len(v) > 253 or not _DOMAIN.match(v)):
                raise ValueError(f"values[{i}] {v!r} is not a domain name (a {kind} record holds one)")
            out.append(v)
        if kind == "CNAME" and len(out) != 1:
            raise ValueError(f"a CNAME record has exactly one value, not {len(out)}")
        return out


class DnsZoneCreate(Body):
    name: DomainName
    vpc_ids: list[VpcId] = Field(default_factory=list, max_length=20)
    records: list[DnsRecord] = Field(default_factory=list, max_length=1000)


class DnsZoneUpdate(Body):
    vpc_ids: Optional[list[VpcId]] = Field(None, max_length=20)
    records: Optional[list[DnsRecord]] = Field(None, max_length=1000)


# --- the registry ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Kind:
    collection: str  # URL path segment: /v1/<collection>
    prefix: str  # id prefix
    create: type[Body] | None  # None: created only as a side effect (ENIs)
    update: type[Body] | None
    refs: tuple[str, ...] = ()  # fields that hold ids of other resources (lists allowed)


KINDS: dict[str, Kind] = {k.collection: k for k in (
    Kind("vpcs", "vpc", VpcCreate, VpcUpdate, ("dhcp_options_id",)),
    Kind("subnets", "subnet", SubnetCreate, SubnetUpdate, ("vpc_id", "route_table_id", "network_acl_id")),
    Kind("instances", "i", InstanceCreate, InstanceUpdate, ("subnet_id", "security_group_ids")),
    Kind("network-interfaces", "eni", None, None),
    Kind("security-groups", "sg", SecurityGroupCreate, SecurityGroupUpdate, ("vpc_id",)),
    Kind("network-acls", "acl", NetworkAclCreate, NetworkAclUpdate, ("vpc_id",)),
    Kind("route-tables", "rtb", RouteTableCreate, RouteTableUpdate, ("vpc_id",)),
    Kind("internet-gateways", "igw", InternetGatewayCreate, InternetGatewayUpdate, ("vpc_id",)),
    Kind("egress-only-internet-gateways", "eigw", EgressOnlyInternetGatewayCreate, EgressOnlyInternetGatewayUpdate,
         ("vpc_id",)),
    Kind("nat-gateways", "nat", NatGatewayCreate, NatGatewayUpdate, ("subnet_id", "allocation_id")),
    Kind("elastic-ips", "eipalloc", ElasticIpCreate, ElasticIpUpdate, ("instance_id",)),
    Kind("target-groups", "tg", TargetGroupCreate, TargetGroupUpdate, ("vpc_id",)),
    Kind("load-balancers", "nlb", LoadBalancerCreate, LoadBalancerUpdate, ("subnet_ids",)),
    Kind("flow-logs", "fl", FlowLogCreate, FlowLogUpdate, ("resource_id",)),
    Kind("dhcp-options", "dopt", DhcpOptionsCreate, DhcpOptionsUpdate),
    Kind("dns-zones", "zone", DnsZoneCreate, DnsZoneUpdate, ("vpc_ids",)),
)}
BY_PREFIX = {k.prefix: k for k in KINDS.values()}

"""The topology file: which hosts exist, which VPCs, subnets and instances run on them, each VPC's
policy (security groups, network ACLs, connection tracking per instance, flow logs), its way to the
internet (an internet gateway, route tables, elastic IPs, NAT gateways, an egress-only gateway), its load
balancers (target groups, network load balancers), its IPv6 blocks and its names (DHCP options, private
DNS zones).

A YAML file such as ``configs/demo.yaml``, ``configs/policy.yaml``, ``configs/internet.yaml`` or
``configs/hyperplane.yaml``::

    hosts: [{name: host-a}, {name: host-b, offload: false}]
    underlay_mtu: 9000                      # optional, 1280..65535
    vpcs:
      - name: demo
        cidr: 10.0.0.0/16                   # /16 .. /28
        vni: 7                              # optional: else the smallest free positive number
        ipv6: true                          # optional: an amazon-provided /56; or ipv6_cidr: 2001:db8:ab00::/56
        internet_gateway: true              # optional: or {name: gw}; absent or false: none
        egress_only_gateway: true           # optional: or {name: out}; absent or false: none
        dhcp_options: {domain_name: corp.example, domain_name_servers: [AmazonProvidedDNS, 192.0.2.53]}
        dns_zones:                          # optional: private zones of this VPC
          - name: corp.internal
            records: [{name: web.corp.internal, type: A, values: [10.0.1.10]},
                      {name: www.corp.internal, type: CNAME, ttl: 60, values: [web.corp.internal]}]
        route_tables:                       # optional
          - name: public
            routes:                         # optional: else none but the implicit local routes
              - {destination: 0.0.0.0/0, target: internet_gateway}
              - {destination: "::/0", target: egress_only_gateway}
              - {destination: 10.1.0.0/24, target: instance/db}
          - name: main                      # the VPC's main table: sets its routes
            routes: [{destination: 192.168.0.0/16, target: instance/db}]
        subnets:
          - {name: app, cidr: 10.0.1.0/24, route_table: public, ipv6: true}   # optional: else the main table
          - {name: ops, cidr: 10.0.2.0/24, network_acl: strict}   # optional: else the default ACL
        instances:
          - {name: web, subnet: app, host: host-b, ip: 10.0.1.10, security_groups: [web, default],
             elastic_ip: true, ipv6: "::10"}   # optional: else none; else the API's IPv6 address
          - {name: client, subnet: app, host: host-a, source_dest_check: false, interface: tap}
          - name: db
            subnet: ops
            host: host-b
            connection_tracking: {tcp_established_timeout: 3600, max_tracked_flows: 10000}
        security_groups:                    # optional
          - name: web
            description: web servers        # optional
            ingress:                        # optional: else none (a new group admits nothing)
              - {protocol: tcp, ports: 8080, cidr: 10.0.1.0/24}
              - {protocol: tcp, ports: 8000-8100, source_group: admin}
              - {protocol: icmp, icmp_type: 8, cidr: 0.0.0.0/0}
            egress: [{cidr: 10.0.0.0/16}]   # optional: else all outbound (the API's default)
          - {name: admin}
        network_acls:                       # optional
          - name: strict
            entries:                        # optional: else none (a new ACL denies everything)
              - {rule: 100, action: allow, protocol: tcp, ports: 80, cidr: 0.0.0.0/0}
              - {rule: 100, egress: true, action: allow, cidr: 0.0.0.0/0}
        flow_logs:                          # optional
          - {name: all, resource: vpc, interval: 60}
          - {name: rejects, resource: instance/web, traffic_type: REJECT, interval: 1,
             log_format: "${version} ${srcaddr} ${dstaddr} ${dstport} ${action}"}
        nat_gateways:                       # optional
          - {name: nat, subnet: app}        # public (the default): an elastic IP; the VPC needs its gateway
          - {name: inner, subnet: ops, connectivity: private, private_ip: 10.0.2.200}
        target_groups:                      # optional
          - name: web
            protocol: tcp                   # tcp (the default) or udp
            port: 8080                      # a target's port when it gives none
            targets: [instance/web, {instance: client, port: 8081}, {ip: 10.0.1.50}]
            health_check: {protocol: http, path: /, interval: 1, healthy_threshold: 2,
                           unhealthy_threshold: 2, timeout: 1}   # optional: the API's defaults
        load_balancers:                     # optional
          - name: lb
            subnets: [app]                  # its address is in the first
            private_ip: 10.0.1.100          # optional: else the API's choice, the first free one
            listeners: [{protocol: tcp, port: 80, target_group: web}]

Rules: names (hosts, VPCs, subnets, instances, groups, ACLs, flow logs, route tables, gateways, target
groups, load balancers) are 1-20 characters of a-z, 0-9 and '-' starting with a letter; instance names
are unique across the whole file, as instances are addressed by name alone; groups, ACLs, flow logs,
route tables, NAT gateways, target groups and load balancers are named per VPC. CIDRs are network
addresses with a /16../28 prefix; subnets lie inside their VPC and do not overlap. Two VPCs may use the
same CIDR: they are told apart by VNI, and addresses are unique only per VPC. An instance without
``ip`` gets the first free address from .4 up in its subnet, in file order, after the explicit ones
(instances', NAT gateways', load balancers') are placed; the other four of the cloud's five reserved addresses are .0-.3
and the broadcast (``reserved_addresses``). ENI ids are derived from the VPC and instance names.

Policy. Keys follow the API's field names, except where the file names things instead of ids
(``source_group``, ``security_groups``, ``network_acl``, ``resource``) and a few short forms
(``ports``, ``icmp_type``/``icmp_code``, ``rule``, ``interval``):

- A security group rule has a ``protocol`` (``all``, the default, or -1; ``tcp``, ``udp``, ``icmp``,
  ``icmpv6``; or a number 0-255), ports, exactly one peer — ``cidr`` (IPv4 or IPv6) or
  ``source_group`` (a group of this VPC by name) — and an optional ``description``. Ports:
  ``ports: 80`` or ``ports: 8000-8100`` for tcp and udp (absent: every port, 0-65535); ``icmp_type``
  and ``icmp_code`` for icmp and icmpv6 (absent or -1: every type, every code); or the API's own
  ``from_port``/``to_port``, taken as they are. A group's ``ingress`` absent is no inbound rule and its
  ``egress`` absent is the API's default, all outbound.
- ``default`` is reserved: it is the VPC's default group, which every VPC has and ``vpc apply`` never
  creates or deletes. ``security_groups: [default]`` on an instance (the default) means that group; a
  ``security_groups`` entry named ``default`` sets its ``ingress``, ``egress`` and ``description``,
  each only when given. What no entry sets stays as it is (the API creates it with: all traffic in
  from members of the group itself, all traffic out), also when a later file drops the entry.
- A network ACL entry has ``rule`` (the API's ``rule_number``, 1-32766, unique per direction),
  ``action`` (allow or deny), ``egress`` (false, the default: inbound), ``cidr``, and protocol and
  ports as a rule's (absent ports: every port). ``default`` is the VPC's default ACL (allow all), as
  for groups: an entry named ``default`` replaces its ``entries`` when it gives them. A subnet's
  ``network_acl`` absent is ``default``.
- An instance's ``security_groups`` are 1-5 group names (absent: ``[default]``); its
  ``connection_tracking`` takes the API's keys and ranges — ``tcp_established_timeout`` (60-432000 s),
  ``udp_stream_timeout`` (60-180 s), ``udp_timeout`` (30-60 s), ``max_tracked_flows`` — and the API's
  defaults for those it leaves out.
- A flow log watches a ``resource`` of its VPC — ``vpc``, ``subnet/NAME`` or ``instance/NAME`` — with
  ``traffic_type`` (ACCEPT, REJECT or ALL, the default), ``interval`` (the API's
  ``max_aggregation_interval``, 1-600 s, default 600) and ``log_format`` (``${field}`` names; absent:
  the default, version 2).

The internet. Keys name things as the rest of the file does (``route_table`` as ``network_acl``, a
route's ``target`` as a flow log's ``resource``); the cloud's rules are the API's:

- ``internet_gateway: true`` gives the VPC an internet gateway, attached to it, named ``VPC-igw``
  (``demo-igw``); ``{name: gw}`` names it. Absent or false: the VPC has none (``vpc apply`` detaches
  and deletes one it finds).
- A route table has ``routes``, each a ``destination`` (a CIDR, IPv4 or IPv6, normalized as the API
  records it; one route a destination per table; at most 50, the API's limit) and a ``target``:
  ``internet_gateway`` (the VPC's, which it must then have), ``egress_only_gateway`` (likewise; IPv6
  destinations only), ``instance/NAME`` (that instance's ENI, an instance of the VPC) or
  ``nat_gateway/NAME`` (a NAT gateway of the VPC). Every table also has the implicit local route for
  the VPC's CIDR (and one for its IPv6 /56), which the file does not list: a route for the VPC's CIDR
  itself is refused, and one inside it only for a whole subnet's CIDR to an instance or a NAT gateway
  (the API's rules). A table's ``routes`` absent is none.
- ``main`` is reserved, as ``default`` is for groups: it is the VPC's main table, which every VPC has
  and ``vpc apply`` never creates or deletes. A ``route_tables`` entry named ``main`` replaces its
  routes when it gives them; what no entry sets stays as it is (but for routes to a gateway that
  ``vpc apply`` deletes: they go with it). A subnet's ``route_table`` absent is ``main``.
- An instance's ``elastic_ip: true`` gives it an elastic IP (a public address from the region's pool),
  associated with it; its VPC must have an internet gateway.
- A NAT gateway has a ``name``, a ``subnet`` of the VPC, a ``connectivity`` (the API's
  ``connectivity_type``): ``public``, the default, with an elastic IP of its own (``vpc apply``
  allocates it; the VPC must have an internet gateway), or ``private``; and an optional ``private_ip``
  in its subnet (absent: the API's choice, the first free address when it is made).

IPv6 (dual stack; the API's rules: a VPC's block is a /56, a subnet's a /64 of it, addresses ::0-::3 and
the last of a /64 reserved):

- ``ipv6: true`` gives the VPC an amazon-provided /56 (the region pool's next free one, known once
  ``vpc apply`` makes it; a VPC that has one keeps it); ``ipv6_cidr: 2001:db8:ab00::/56`` gives it that
  /56 (not both). Absent: no IPv6 (``vpc apply`` removes a block the VPC has). With a block, a group
  whose ``egress`` the file leaves out gets all outbound to 0.0.0.0/0 and ::/0 (the API's default), and
  the API gives the default group and ACL their ::/0 rules.
- A subnet's ``ipv6: true`` gives it a /64: the VPC's /56's ``ipv6_index``-th (0-255; absent: the
  subnet's position in the file's list); or ``ipv6_cidr: <a /64>``, only when the VPC's /56 is given.
  /64s do not repeat. Absent: none. A subnet's /64 is added in place; one that must go or change makes
  ``vpc apply`` re-create the subnet and its instances.
- An instance in a subnet with a /64 gets an IPv6 address: its ``ipv6`` — the whole address (only when
  the file gives the /64) or its interface part, such as ``::10`` (the /64's ::10) — else the API's
  choice (the first free one from ::4). Not reserved, unique in the subnet. ``interface: tun`` (the
  default) or ``tap`` is the API's ``interface_type``.
- ``egress_only_gateway: true`` gives the VPC an egress-only internet gateway named ``VPC-eigw``
  (``{name: out}`` names it); a route's ``target: egress_only_gateway`` names it, for IPv6 destinations
  only. Routes inside the VPC's /56 (when the file gives it) follow the API's local-route rules: not the
  /56 itself; inside it only a whole subnet's /64, to an instance.

Names. ``dhcp_options`` (the API's ``DhcpOptionsCreate`` keys: ``domain_name``, ``domain_name_servers``
— IPv4 addresses or ``AmazonProvidedDNS``, the default —, ``ntp_servers``) gives the VPC an option set of
its own, named after it (absent: the default options). ``dns_zones`` are private zones associated with
the VPC, each a ``name`` and ``records`` (``name``, ``type`` — A, AAAA, CNAME, TXT or PTR —, ``ttl``,
default 300, and ``values``, a list or one value), with the API's rules: names the zone's apex or under
it, values that fit the type, one record set a name and type, a CNAME alone at its name; zone names do
not repeat in a VPC.

Load balancers. The API's rules, with names instead of ids:

- A target group has a ``name``, a ``protocol`` (``tcp``, the default, or ``udp``), a ``port``, its
  ``targets`` and a ``health_check`` (the API's keys, ranges and defaults: ``protocol`` tcp or http,
  ``port``, ``path``, ``interval``, ``timeout``, ``healthy_threshold``, ``unhealthy_threshold``,
  ``matcher``). A target is ``instance/NAME`` (an instance of the VPC, on the group's port), or
  ``{instance: NAME, port: P}``, or ``{ip: ADDRESS, port: P}`` (an address inside the VPC's CIDR); a
  target without ``port`` has the group's; the same target (and port) only once; at most 100.
- A load balancer has a ``name``, ``subnets`` (1-10 subnets of the VPC, each once: its address is in
  the first), ``listeners`` (each a ``protocol``, tcp or udp, a ``port`` and a ``target_group`` of the
  VPC of the same protocol; one listener a protocol and port) and an optional ``private_ip`` (in its
  first subnet; absent: the API's choice, the first free address when it is made).
- Explicit addresses of instances, NAT gateways and load balancers are unique in the VPC; an instance
  without ``ip`` gets the first address none of them asked for.

The order of rules, entries, routes and an instance's groups carries no meaning.

Parsing is two passes. Pydantic checks the shape (known keys, types, each value on its own; for
``connection_tracking``, the API's own ``ConnectionTracking``) and reports every problem it finds; only
a well-shaped file reaches the second pass, which checks what spans several values (duplicates,
references, containment), fills in the defaults that depend on the rest of the file (VNIs, instance
addresses, ENI ids, gateway names), and validates the bodies ``vpc apply`` would send with the API's own
models (``vswitch.controlplane.resources``: ``SecurityGroupUpdate`` with its ``SgRule``,
``NetworkAclUpdate`` with its ``AclEntry``, ``InstanceUpdate``, ``FlowLogCreate``, ``RouteTableUpdate``
with its ``Route``, ``NatGatewayCreate``, ``TargetGroupCreate`` with its ``Target`` and ``HealthCheck``,
``LoadBalancerCreate`` with its ``Listener``, ``DhcpOptionsCreate``, ``DnsZoneCreate`` with its
``DnsRecord``), naming each of the API's complaints by its place in the file, so that a file the API
would refuse fails before any call. Nothing is half-accepted: any problem raises ``TopologyError``
listing all problems found, one per line, each starting with the field's path
(``vpcs[0].subnets[1].cidr: ...``) so the reader can find it in the file.

The result is plain frozen dataclasses; pydantic stays inside this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import reprlib
from typing import Annotated, Any, Literal

import pydantic
import yaml

from . import addresses
from .controlplane import resources as api
from .geneve import MAX_VNI

MIN_PREFIX, MAX_PREFIX = 16, 28  # the cloud's limits, for VPCs and subnets alike
FIRST_HOST_OFFSET = 4  # .0 network, .1 router, .2 DNS, .3 reserved


class TopologyError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    offload: bool = True  # the host's agent uses TUN offloads (virtio header, TSO super-packets)


DEFAULT = "default"  # the name of a VPC's default security group and default network ACL
MAIN = "main"  # the name of a VPC's main route table


SUBNET_IPV6_PREFIX = 64  # a subnet's IPv6 block; a VPC's is a /56: 256 of them


@dataclasses.dataclass(frozen=True)
class Subnet:
    name: str
    cidr: ipaddress.IPv4Network
    network_acl: str = DEFAULT  # a network ACL of the VPC by name
    route_table: str = MAIN  # a route table of the VPC by name
    ipv6_index: int | None = None  # its /64 is the VPC /56's n-th (0-255); None: no IPv6
    ipv6_cidr: ipaddress.IPv6Network | None = None  # that /64, when the VPC's /56 is given in the file

    def ipv6_block(self, vpc_block: ipaddress.IPv6Network | None) -> ipaddress.IPv6Network | None:
        """The subnet's /64 in a VPC whose /56 is ``vpc_block`` (None: no IPv6, or no block to be in)."""
        if self.ipv6_index is None or vpc_block is None:
            return None
        return ipaddress.IPv6Network((int(vpc_block.network_address) + (self.ipv6_index << 64), SUBNET_IPV6_PREFIX))


_CT = api.ConnectionTracking()  # the API's defaults


@dataclasses.dataclass(frozen=True)
class ConnectionTracking:
    """An instance's conntrack settings: the API's ``ConnectionTracking``, every field filled in."""
    tcp_established_timeout: int = _CT.tcp_established_timeout
    udp_stream_timeout: int = _CT.udp_stream_timeout
    udp_timeout: int = _CT.udp_timeout
    max_tracked_flows: int = _CT.max_tracked_flows


@dataclasses.dataclass(frozen=True)
class Instance:
    name: str
    vpc: str
    subnet: str
    host: str
    ip: ipaddress.IPv4Address
    eni_id: str
    source_dest_check: bool = True
    ip_given: bool = True  # False: assigned here (first free); `vpc apply` then keeps what the API chose
    security_groups: tuple[str, ...] = (DEFAULT,)  # groups of the VPC by name
    connection_tracking: ConnectionTracking = ConnectionTracking()
    elastic_ip: bool = False  # an elastic IP associated with it (its VPC has an internet gateway)
    interface: str = "tun"  # the API's interface_type: "tun" (packets) or "tap" (frames: a VM)
    # An explicit IPv6 address (its subnet has IPv6): the whole address when the subnet's /64 is known
    # from the file, else its interface part (the low 64 bits, such as ::10). None: in a subnet with IPv6,
    # the API's choice (the first free one from ::4), kept by `vpc apply`.
    ipv6: ipaddress.IPv6Address | None = None

    def ipv6_address(self, subnet_block: ipaddress.IPv6Network | None) -> ipaddress.IPv6Address | None:
        """The explicit IPv6 address in the subnet whose /64 is ``subnet_block``."""
        if self.ipv6 is None or subnet_block is None:
            return self.ipv6
        if int(self.ipv6) >> 64 == 0:  # the interface part
            return subnet_block.network_address + int(self.ipv6)
        return self.ipv6


@dataclasses.dataclass(frozen=True)
class SecurityGroupRule:
    """A rule as the API records it (``SgRule``), with the peer group by name instead of by id."""
    protocol: str = "-1"  # the API's spelling: "-1"/"all", "tcp", "udp", "icmp", "icmpv6" or a number
    from_port: int = -1  # icmp: the type
    to_port: int = -1  # icmp: the code
    cidr: str | None = None
    source_group: str | None = None  # a group of the VPC by name ("default": its default group)
    description: str | None = None


ALLOW_ALL_EGRESS = tuple(SecurityGroupRule(r["protocol"], r["from_port"], r["to_port"], r["cidr"])
                         for r in api.ALLOW_ALL_EGRESS)  # a new group's egress when none is given
ALLOW_ALL_EGRESS_DUAL = ALLOW_ALL_EGRESS + tuple(  # the same in a VPC with IPv6: ::/0 too
    SecurityGroupRule(r["protocol"], r["from_port"], r["to_port"], r["cidr"]) for r in api.ALLOW_ALL_EGRESS_IPV6)


@dataclasses.dataclass(frozen=True)
class SecurityGroup:
    name: str
    description: str | None = None
    # None only for the default group: that direction (or description) is left as it is.
    ingress: tuple[SecurityGroupRule, ...] | None = ()
    egress: tuple[SecurityGroupRule, ...] | None = ALLOW_ALL_EGRESS


@dataclasses.dataclass(frozen=True)
class NetworkAclEntry:
    """An entry as the API records it (``AclEntry``; ``rule`` is its ``rule_number``)."""
    rule: int
    action: str  # "allow" or "deny"
    cidr: str
    egress: bool = False
    protocol: str = "-1"
    from_port: int = -1
    to_port: int = -1


@dataclasses.dataclass(frozen=True)
class NetworkAcl:
    name: str
    entries: tuple[NetworkAclEntry, ...] | None = ()  # None only for the default ACL: left as it is


@dataclasses.dataclass(frozen=True)
class FlowLog:
    name: str
    resource: str  # "vpc", "subnet/NAME" or "instance/NAME", in the flow log's VPC
    traffic_type: str = api.FlowLogCreate.model_fields["traffic_type"].default
    interval: int = api.FlowLogCreate.model_fields["max_aggregation_interval"].default  # seconds
    log_format: str | None = None  # None: the API's default (version 2)


INTERNET_GATEWAY = "internet_gateway"  # a route's target: the VPC's internet gateway
EGRESS_ONLY_GATEWAY = "egress_only_gateway"  # a route's target: the VPC's egress-only internet gateway


@dataclasses.dataclass(frozen=True)
class Route:
    destination: str  # a CIDR, IPv4 or IPv6, as the API records it (normalized)
    # INTERNET_GATEWAY, EGRESS_ONLY_GATEWAY, "instance/NAME" (its ENI, an instance of the table's VPC)
    # or "nat_gateway/NAME"
    target: str


@dataclasses.dataclass(frozen=True)
class RouteTable:
    name: str
    routes: tuple[Route, ...] | None = ()  # None only for the main table: left as it is


@dataclasses.dataclass(frozen=True)
class InternetGateway:
    name: str  # the gateway resource's name; the VPC it is attached to is its identity


@dataclasses.dataclass(frozen=True)
class EgressOnlyGateway:
    name: str  # the gateway resource's name; its VPC is its identity


@dataclasses.dataclass(frozen=True)
class DhcpOptions:
    """A VPC's DHCP option set: the API's ``DhcpOptionsCreate`` fields (``domain_name`` None: the API's
    default, ``<region>.compute.internal``)."""
    domain_name: str | None = None
    domain_name_servers: tuple[str, ...] = ("AmazonProvidedDNS",)
    ntp_servers: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DnsRecord:
    name: str
    type: str  # A, AAAA, CNAME, TXT or PTR
    values: tuple[str, ...]
    ttl: int = api.DnsRecord.model_fields["ttl"].default


@dataclasses.dataclass(frozen=True)
class DnsZone:
    """A private hosted zone associated with its VPC (and only it)."""
    name: str
    records: tuple[DnsRecord, ...] = ()


NAT_GATEWAY = "nat_gateway"  # a route's target: nat_gateway/NAME, a NAT gateway of the VPC


@dataclasses.dataclass(frozen=True)
class NatGateway:
    name: str
    subnet: str  # a subnet of the VPC by name
    connectivity: str = "public"  # "public": with an elastic IP (the VPC has an internet gateway); "private"
    private_ip: ipaddress.IPv4Address | None = None  # None: the API's choice, the subnet's first free address


_HC = api.HealthCheck()  # the API's defaults


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    """A target group's health check: the API's ``HealthCheck``, every field filled in."""
    protocol: str = _HC.protocol  # "tcp" or "http"
    port: int | None = _HC.port  # None: each target's port
    path: str = _HC.path
    interval: float = _HC.interval
    timeout: float | None = _HC.timeout  # None: the API's default for the protocol
    healthy_threshold: int = _HC.healthy_threshold
    unhealthy_threshold: int = _HC.unhealthy_threshold
    matcher: str = _HC.matcher


@dataclasses.dataclass(frozen=True)
class Target:
    """An instance of the VPC by name, or an address of the VPC, and its port (the group's when not given)."""
    port: int
    instance: str | None = None
    ip: ipaddress.IPv4Address | None = None


@dataclasses.dataclass(frozen=True)
class TargetGroup:
    name: str
    protocol: str  # "tcp" or "udp"
    port: int
    targets: tuple[Target, ...] = ()
    health_check: HealthCheck = HealthCheck()


@dataclasses.dataclass(frozen=True)
class Listener:
    protocol: str  # "tcp" or "udp": its target group's
    port: int
    target_group: str  # a target group of the VPC by name


@dataclasses.dataclass(frozen=True)
class LoadBalancer:
    name: str
    subnets: tuple[str, ...]  # subnets of the VPC by name; its address is in the first
    listeners: tuple[Listener, ...] = ()
    private_ip: ipaddress.IPv4Address | None = None  # None: the API's choice, the first subnet's first free one


@dataclasses.dataclass(frozen=True)
class Vpc:
    name: str
    cidr: ipaddress.IPv4Network
    vni: int
    subnets: tuple[Subnet, ...]
    instances: tuple[Instance, ...]
    security_groups: tuple[SecurityGroup, ...] = ()  # the default group only if the file names it
    network_acls: tuple[NetworkAcl, ...] = ()  # the default ACL only if the file names it
    flow_logs: tuple[FlowLog, ...] = ()
    internet_gateway: InternetGateway | None = None
    route_tables: tuple[RouteTable, ...] = ()  # the main table only if the file names it
    nat_gateways: tuple[NatGateway, ...] = ()
    target_groups: tuple[TargetGroup, ...] = ()
    load_balancers: tuple[LoadBalancer, ...] = ()
    ipv6: bool = False  # an IPv6 /56: ``ipv6_cidr``, else (None) an amazon-provided one
    ipv6_cidr: ipaddress.IPv6Network | None = None
    egress_only_gateway: EgressOnlyGateway | None = None
    dhcp_options: DhcpOptions | None = None  # None: the default options (no set)
    dns_zones: tuple[DnsZone, ...] = ()

    def subnet(self, name: str) -> Subnet:
        for s in self.subnets:
            if s.name == name:
                return s
        raise KeyError(f"VPC {self.name!r} has no subnet {name!r}")

    def security_group(self, name: str) -> SecurityGroup:
        for g in self.security_groups:
            if g.name == name:
                return g
        raise KeyError(f"VPC {self.name!r} names no security group {name!r}")

    def network_acl(self, name: str) -> NetworkAcl:
        for a in self.network_acls:
            if a.name == name:
                return a
        raise KeyError(f"VPC {self.name!r} names no network ACL {name!r}")

    def route_table(self, name: str) -> RouteTable:
        for t in self.route_tables:
            if t.name == name:
                return t
        raise KeyError(f"VPC {self.name!r} names no route table {name!r}")

    def nat_gateway(self, name: str) -> NatGateway:
        for n in self.nat_gateways:
            if n.name == name:
                return n
        raise KeyError(f"VPC {self.name!r} has no NAT gateway {name!r}")

    def target_group(self, name: str) -> TargetGroup:
        for g in self.target_groups:
            if g.name == name:
                return g
        raise KeyError(f"VPC {self.name!r} has no target group {name!r}")

    def load_balancer(self, name: str) -> LoadBalancer:
        for b in self.load_balancers:
            if b.name == name:
                return b
        raise KeyError(f"VPC {self.name!r} has no load balancer {name!r}")


@dataclasses.dataclass(frozen=True)
class Topology:
    hosts: tuple[Host, ...]
    vpcs: tuple[Vpc, ...]
    underlay_mtu: int = 65535

    def instances(self) -> list[Instance]:
        return [i for v in self.vpcs for i in v.instances]

    def instance(self, name: str) -> Instance:
        for i in self.instances():
            if i.name == name:
                return i
        raise KeyError(f"no instance {name!r}")

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r}")


def reserved_addresses(subnet: ipaddress.IPv4Network) -> frozenset[ipaddress.IPv4Address]:
    """The five addresses the cloud keeps in every subnet: network, router (+1), DNS (+2), one
    reserved for later (+3) and broadcast."""
    net = subnet.network_address
    return frozenset((net, net + 1, net + 2, net + 3, subnet.broadcast_address))


def load_topology(path) -> Topology:
    """Read and parse a topology file; every problem, including an unreadable file or bad YAML, is a
    ``TopologyError`` whose lines start with the file's name."""
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise TopologyError(f"{path}: cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise TopologyError(f"{path}: invalid YAML: {e}") from e
    try:
        return parse_topology(data)
    except TopologyError as e:
        raise TopologyError("\n".join(f"{path}: {line}" for line in str(e).splitlines())) from e


def parse_topology(data: object) -> Topology:
    """Validate an already-loaded YAML document and build the topology (see the module docstring)."""
    try:
        file = _TopologyFile.model_validate(data)
    except pydantic.ValidationError as e:
        raise TopologyError("\n".join(_describe(err) for err in e.errors())) from None
    return _Builder(file).build()


# --- pass 1: shape -----------------------------------------------------------------------------------
# Values arrive as YAML gives them: strict mode stops pydantic from turning 1 into True or "5" into 5.

_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid name: 1-20 characters of a-z, 0-9 and '-', "
                         "starting with a letter")
    return value


def _network(value: Any) -> ipaddress.IPv4Network:
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string such as 10.0.0.0/16, got {reprlib.repr(value)}")
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 CIDR such as 10.0.0.0/16") from None
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise ValueError(f"{value}: the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX}, not /{net.prefixlen}")
    if ipaddress.IPv4Interface(value).ip != net.network_address:
        raise ValueError(f"{value} is not a network address (host bits are set): did you mean {net}?")
    return net


def _address(value: Any) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise ValueError(f"expected an address string such as 10.0.1.4, got {reprlib.repr(value)}")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def _ipv6_network(prefixlen: int):
    def check(value: Any) -> ipaddress.IPv6Network:
        if not isinstance(value, str):
            raise ValueError(f"expected an IPv6 CIDR string such as 2001:db8:ab00::/{prefixlen}, "
                             f"got {reprlib.repr(value)}")
        try:
            net = ipaddress.IPv6Network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv6 CIDR such as 2001:db8:ab00::/{prefixlen}") from None
        if net.prefixlen != prefixlen:
            raise ValueError(f"{value}: the prefix must be /{prefixlen}, not /{net.prefixlen}")
        if ipaddress.IPv6Interface(value).ip != net.network_address:
            raise ValueError(f"{value} is not a network address (host bits are set): did you mean {net}?")
        return net
    return check


def _ipv6_address(value: Any) -> ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise ValueError(f"expected an IPv6 address string such as 2001:db8:ab00:1::10 or ::10, "
                         f"got {reprlib.repr(value)}")
    try:
        return ipaddress.IPv6Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv6 address") from None


_PROTOCOL = pydantic.TypeAdapter(api.Protocol)  # the API's spellings; its numbers go to 255


def _protocol(value: Any) -> str:
    """A protocol as YAML gives it (``tcp``, ``6``, ``-1``...) → the API's string for it."""
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    try:
        if text is not None and -1 <= api._protocol_number(_PROTOCOL.validate_python(text)) <= 255:
            return text
    except pydantic.ValidationError:
        pass
    raise ValueError(f"{reprlib.repr(value)} is not a protocol: all (or -1), tcp, udp, icmp, icmpv6 "
                     "or a number 0-255")


def _ports(value: Any) -> tuple[int, int]:
    """``80`` or ``"8000-8100"`` → (first, last)."""
    m = re.fullmatch(r"\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?", value) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        first = last = value
    elif m:
        first, last = int(m[1]), int(m[2] or m[1])
    else:
        raise ValueError(f"expected a port such as 80 or a range such as 8000-8100, got {reprlib.repr(value)}")
    if not 0 <= first <= last <= 65535:
        raise ValueError(f"{value}: ports are 0-65535, a range's first no higher than its last")
    return first, last


_Name = Annotated[str, pydantic.AfterValidator(_name)]
_Network = Annotated[ipaddress.IPv4Network, pydantic.PlainValidator(_network)]
_Address = Annotated[ipaddress.IPv4Address, pydantic.PlainValidator(_address)]
_Ipv6Network56 = Annotated[ipaddress.IPv6Network, pydantic.PlainValidator(_ipv6_network(56))]
_Ipv6Network64 = Annotated[ipaddress.IPv6Network, pydantic.PlainValidator(_ipv6_network(SUBNET_IPV6_PREFIX))]
_Ipv6Address = Annotated[ipaddress.IPv6Address, pydantic.PlainValidator(_ipv6_address)]
_Protocol = Annotated[str, pydantic.PlainValidator(_protocol)]
_Ports = Annotated[tuple[int, int], pydantic.PlainValidator(_ports)]
_IcmpNumber = Annotated[int, pydantic.Field(ge=-1, le=255)]


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)


class _HostFile(_Model):
    name: _Name
    offload: bool = True


class _SubnetFile(_Model):
    name: _Name
    cidr: _Network
    network_acl: str = DEFAULT
    route_table: str = MAIN
    ipv6: bool = False
    ipv6_index: int | None = pydantic.Field(None, ge=0, le=255)
    ipv6_cidr: _Ipv6Network64 | None = None


class _ConnectionTrackingFile(api.ConnectionTracking):
    """The API's model itself (its keys, ranges and defaults), read as strictly as the rest of the file."""
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)


class _InstanceFile(_Model):
    name: _Name
    subnet: str
    host: str
    ip: _Address | None = None
    source_dest_check: bool = True
    security_groups: list[str] | None = None
    connection_tracking: _ConnectionTrackingFile | None = None
    elastic_ip: bool = False
    interface: Literal["tun", "tap"] = "tun"
    ipv6: _Ipv6Address | None = None


class _PortsFile(_Model):
    """What a security group rule and a network ACL entry share: the protocol and its ports."""
    protocol: _Protocol = "-1"
    ports: _Ports | None = None
    from_port: int | None = None
    to_port: int | None = None
    icmp_type: _IcmpNumber | None = None
    icmp_code: _IcmpNumber | None = None

    @pydantic.model_validator(mode="after")
    def _one_way_to_give_ports(self):
        number = api._protocol_number(self.protocol)
        raw = self.from_port is not None or self.to_port is not None
        icmp = self.icmp_type is not None or self.icmp_code is not None
        if self.ports is not None and raw:
            raise ValueError("give ports or from_port/to_port, not both")
        if icmp and (raw or self.ports is not None):
            raise ValueError("give icmp_type/icmp_code or from_port/to_port, not both")
        if self.ports is not None and number not in (6, 17):
            raise ValueError(f"ports apply to tcp and udp only, not to protocol {self.protocol} "
                             "(icmp: icmp_type/icmp_code)")
        if icmp and number not in (1, 58):
            raise ValueError(f"icmp_type/icmp_code apply to icmp and icmpv6 only, not to protocol {self.protocol}")
        return self

    def port_range(self, every_port: tuple[int, int]) -> tuple[int, int]:
        """The API's (from_port, to_port); ``every_port`` when tcp/udp ports are not given."""
        if self.ports is not None:
            return self.ports
        for first, last in ((self.icmp_type, self.icmp_code), (self.from_port, self.to_port)):
            if first is not None or last is not None:
                return (-1 if first is None else first), (-1 if last is None else last)
        return every_port if api._protocol_number(self.protocol) in (6, 17) else (-1, -1)


class _RuleFile(_PortsFile):
    cidr: str | None = None
    source_group: str | None = None
    description: str | None = None

    @pydantic.model_validator(mode="after")
    def _one_peer(self):
        if (self.cidr is None) == (self.source_group is None):
            raise ValueError("a rule names exactly one peer: cidr or source_group")
        return self


class _GroupFile(_Model):
    name: _Name
    description: str | None = None
    ingress: list[_RuleFile] | None = None
    egress: list[_RuleFile] | None = None


class _AclEntryFile(_PortsFile):
    rule: int
    action: str
    cidr: str
    egress: bool = False


class _AclFile(_Model):
    name: _Name
    entries: list[_AclEntryFile] | None = None


class _FlowLogFile(_Model):
    name: _Name
    resource: str
    traffic_type: str = FlowLog.traffic_type
    interval: int = FlowLog.interval
    log_format: str | None = None


class _GatewayFile(_Model):
    name: _Name | None = None  # None: the default name, VPC-igw (VPC-eigw for the egress-only one)


def _gateway(value: Any) -> Any:
    """``internet_gateway``: true (a gateway of the default name), false (none) or ``{name: NAME}``."""
    if isinstance(value, bool):
        return _GatewayFile() if value else None
    if isinstance(value, dict):
        return value
    raise ValueError(f"expected true, false or a mapping such as {{name: gw}}, got {reprlib.repr(value)}")


class _RouteFile(_Model):
    destination: str
    target: str


class _RouteTableFile(_Model):
    name: _Name
    routes: list[_RouteFile] | None = None


class _NatGatewayFile(_Model):
    name: _Name
    subnet: str
    connectivity: str = NatGateway.connectivity
    private_ip: _Address | None = None


class _HealthCheckFile(api.HealthCheck):
    """The API's model itself (its keys, ranges and defaults), read as strictly as the rest of the file."""
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)


class _TargetFile(_Model):
    instance: str | None = None
    ip: _Address | None = None
    port: int | None = None  # None: the group's port

    @pydantic.model_validator(mode="after")
    def _one(self):
        if (self.instance is None) == (self.ip is None):
            raise ValueError("a target names exactly one of instance or ip")
        return self


def _target(value: Any) -> Any:
    """A target: ``instance/NAME`` (on the group's port), or a mapping ``{instance: NAME, port: P}`` or
    ``{ip: ADDRESS, port: P}``."""
    if isinstance(value, str):
        kind, _, name = value.partition("/")
        if kind == "instance" and name:
            return {"instance": name}
    elif isinstance(value, dict):
        return value
    raise ValueError(f"expected instance/NAME or a mapping such as {{instance: web, port: 8080}} or "
                     f"{{ip: 10.0.1.50, port: 80}}, got {reprlib.repr(value)}")


class _TargetGroupFile(_Model):
    name: _Name
    protocol: str = "tcp"
    port: int
    targets: list[Annotated[_TargetFile, pydantic.BeforeValidator(_target)]] = []
    health_check: _HealthCheckFile | None = None


class _ListenerFile(_Model):
    protocol: str = "tcp"
    port: int
    target_group: str


class _LoadBalancerFile(_Model):
    name: _Name
    subnets: list[str] = pydantic.Field(min_length=1)
    listeners: list[_ListenerFile] = []
    private_ip: _Address | None = None


class _DhcpOptionsFile(_Model):
    """The API's ``DhcpOptionsCreate`` fields (checked by it in pass 2), absent ones its defaults."""
    domain_name: str | None = None
    domain_name_servers: list[str] | None = None
    ntp_servers: list[str] | None = None


def _values(value: Any) -> Any:
    """A record's ``values``: a list, or one value alone."""
    return [value] if isinstance(value, str) else value


class _DnsRecordFile(_Model):
    name: str
    type: str
    ttl: int | None = None
    values: Annotated[list[str], pydantic.BeforeValidator(_values)]


class _DnsZoneFile(_Model):
    name: str
    records: list[_DnsRecordFile] = []


class _VpcFile(_Model):
    name: _Name
    cidr: _Network
    vni: int | None = pydantic.Field(None, ge=1, le=MAX_VNI)
    ipv6: bool = False
    ipv6_cidr: _Ipv6Network56 | None = None
    internet_gateway: Annotated[_GatewayFile | None, pydantic.BeforeValidator(_gateway)] = None
    egress_only_gateway: Annotated[_GatewayFile | None, pydantic.BeforeValidator(_gateway)] = None
    dhcp_options: _DhcpOptionsFile | None = None
    dns_zones: list[_DnsZoneFile] = []
    route_tables: list[_RouteTableFile] = []
    subnets: list[_SubnetFile] = []
    instances: list[_InstanceFile] = []
    security_groups: list[_GroupFile] = []
    network_acls: list[_AclFile] = []
    flow_logs: list[_FlowLogFile] = []
    nat_gateways: list[_NatGatewayFile] = []
    target_groups: list[_TargetGroupFile] = []
    load_balancers: list[_LoadBalancerFile] = []


class _TopologyFile(_Model):
    hosts: list[_HostFile] = pydantic.Field(min_length=1)
    vpcs: list[_VpcFile]
    underlay_mtu: int = pydantic.Field(65535, ge=1280, le=65535)


# Which model a list key holds, to name the allowed keys when an unknown one turns up.
_ITEM_MODEL = {"hosts": _HostFile, "vpcs": _VpcFile, "subnets": _SubnetFile, "instances": _InstanceFile,
               "security_groups": _GroupFile, "ingress": _RuleFile, "egress": _RuleFile,
               "network_acls": _AclFile, "entries": _AclEntryFile, "flow_logs": _FlowLogFile,
               "connection_tracking": _ConnectionTrackingFile, "internet_gateway": _GatewayFile,
               "route_tables": _RouteTableFile, "routes": _RouteFile, "nat_gateways": _NatGatewayFile,
               "target_groups": _TargetGroupFile, "targets": _TargetFile, "health_check": _HealthCheckFile,
               "load_balancers": _LoadBalancerFile, "listeners": _ListenerFile,
               "egress_only_gateway": _GatewayFile, "dhcp_options": _DhcpOptionsFile, "dns_zones": _DnsZoneFile,
               "records": _DnsRecordFile}


def _path(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "top level"


def _describe(err) -> str:
    """One pydantic error as ``path: problem``, with the offending value or key."""
    kind, loc = err["type"], err["loc"]
    if kind == "extra_forbidden":
        owner = next((_ITEM_MODEL[p] for p in reversed(loc[:-1]) if isinstance(p, str)), _TopologyFile)
        return f"{_path(loc[:-1])}: unknown key {loc[-1]!r} (allowed: {', '.join(owner.model_fields)})"
    if kind == "invalid_key":
        return f"{_path(loc[:-1])}: key {loc[-1]!r} is not a string"
    if kind == "missing":
        return f"{_path(loc)}: required"
    if kind == "value_error":
        return f"{_path(loc)}: {err['ctx']['error']}"
    if kind == "model_type":
        return f"{_path(loc)}: expected a mapping of keys to values, got {reprlib.repr(err['input'])}"
    return f"{_path(loc)}: {err['msg']}, got {reprlib.repr(err['input'])}"


# --- pass 2: the file as a whole -----------------------------------------------------------------


class _Builder:
    """Cross-checks a well-shaped file, collecting every problem before raising."""

    def __init__(self, file: _TopologyFile):
        self.file = file
        self.problems: list[str] = []
        self.vpc_names: dict[str, str] = {}  # name -> path of its first use
        self.instance_names: dict[str, str] = {}  # across the whole file: instances are named globally

    def build(self) -> Topology:
        hosts = self._hosts()
        vnis = self._vnis()
        vpcs = [self._vpc(f"vpcs[{v}]", vpc, vnis[v], set(hosts)) for v, vpc in enumerate(self.file.vpcs)]
        if self.problems:
            raise TopologyError("\n".join(self.problems))
        eni_ids = [i.eni_id for v in vpcs for i in v.instances]
        assert len(set(eni_ids)) == len(eni_ids), "ENI id collision"
        return Topology(tuple(hosts.values()), tuple(vpcs), self.file.underlay_mtu)

    def _hosts(self) -> dict[str, Host]:
        hosts: dict[str, Host] = {}
        where: dict[str, str] = {}
        for h, host in enumerate(self.file.hosts):
            path = f"hosts[{h}].name"
            if self._unique(path, "host name", host.name, where):
                hosts[host.name] = Host(host.name, host.offload)
        return hosts

    def _vnis(self) -> list[int]:
        """Explicit VNIs as given, then the smallest positive numbers left, in file order."""
        where: dict[int, str] = {}
        for v, vpc in enumerate(self.file.vpcs):
            if vpc.vni is not None:
                self._unique(f"vpcs[{v}].vni", "VNI", vpc.vni, where)
        taken, free, vnis = set(where), 1, []
        for vpc in self.file.vpcs:
            if vpc.vni is None:
                while free in taken:
                    free += 1
                taken.add(free)
            vnis.append(free if vpc.vni is None else vpc.vni)
        return vnis

    def _vpc(self, path: str, vpc: _VpcFile, vni: int, hosts: set[str]) -> Vpc:
        self._unique(f"{path}.name", "VPC name", vpc.name, self.vpc_names)
        if vpc.ipv6 and vpc.ipv6_cidr is not None:
            self.problems.append(f"{path}.ipv6_cidr: give ipv6: true (an amazon-provided /56) or ipv6_cidr "
                                 "(this /56), not both")
        group_names = list(dict.fromkeys([DEFAULT, *(g.name for g in vpc.security_groups)]))
        subnets = self._subnets(path, vpc)
        # Explicit addresses first, so automatic ones cannot take an address someone asked for.
        taken: dict[ipaddress.IPv4Address, str] = {}
        taken6: dict[tuple[str, int], str] = {}  # (subnet, interface part) -> path of its first use
        ipv6s: dict[int, ipaddress.IPv6Address] = {}
        for n, inst in enumerate(vpc.instances):
            ipath = f"{path}.instances[{n}]"
            self._unique(f"{ipath}.name", "instance name", inst.name, self.instance_names)
            if inst.host not in hosts:
                self.problems.append(f"{ipath}.host: unknown host {inst.host!r} (hosts: {', '.join(sorted(hosts))})")
            subnet = subnets.get(inst.subnet)
            if subnet is None:
                self.problems.append(f"{ipath}.subnet: unknown subnet {inst.subnet!r} in VPC {vpc.name!r} "
                                     f"(subnets: {', '.join(subnets) or 'none'})")
            elif inst.ip is not None:
                self._check_ip(f"{ipath}.ip", inst.ip, subnet, taken)
            if subnet is not None and inst.ipv6 is not None:
                ip6 = self._check_ipv6(f"{ipath}.ipv6", inst.ipv6, subnet, taken6)
                if ip6 is not None:
                    ipv6s[n] = ip6
            self._instance_groups(ipath, vpc, inst, group_names)
            if inst.elastic_ip and vpc.internet_gateway is None:
                self.problems.append(f"{ipath}.elastic_ip: an elastic IP needs the VPC's internet gateway, and "
                                     f"VPC {vpc.name!r} has none (give it internet_gateway: true)")
        # NAT gateways' and load balancers' explicit addresses are taken too, before instances get theirs.
        nat_gateways = self._nat_gateways(path, vpc, subnets, taken)
        for b, lb in enumerate(vpc.load_balancers):
            subnet = subnets.get(lb.subnets[0])
            if lb.private_ip is not None and subnet is not None:
                self._check_ip(f"{path}.load_balancers[{b}].private_ip", lb.private_ip, subnet, taken)
        ips = self._assign(path, vpc, subnets, taken)
        # An instance left without an address always comes with a reported problem, so build() raises.
        instances = tuple(
            Instance(inst.name, vpc.name, inst.subnet, inst.host, ips[n], _eni_id(vpc.name, inst.name),
                     inst.source_dest_check, ip_given=inst.ip is not None,
                     security_groups=tuple(inst.security_groups or (DEFAULT,)),
                     connection_tracking=ConnectionTracking(**(inst.connection_tracking or _CT).model_dump()),
                     elastic_ip=inst.elastic_ip, interface=inst.interface, ipv6=ipv6s.get(n))
            for n, inst in enumerate(vpc.instances) if n in ips)
        groups = self._groups(path, vpc, group_names)
        acls = self._acls(path, vpc)
        tables = self._route_tables(path, vpc, subnets)
        flow_logs = self._flow_logs(path, vpc)
        gateway = None if vpc.internet_gateway is None else \
            InternetGateway(vpc.internet_gateway.name or f"{vpc.name}-igw")
        egress_only = None if vpc.egress_only_gateway is None else \
            EgressOnlyGateway(vpc.egress_only_gateway.name or f"{vpc.name}-eigw")
        target_groups = self._target_groups(path, vpc)
        load_balancers = self._load_balancers(path, vpc, subnets, target_groups)
        return Vpc(vpc.name, vpc.cidr, vni, tuple(subnets.values()), instances, groups, acls, flow_logs,
                   gateway, tables, nat_gateways, target_groups, load_balancers,
                   ipv6=vpc.ipv6 or vpc.ipv6_cidr is not None, ipv6_cidr=vpc.ipv6_cidr,
                   egress_only_gateway=egress_only, dhcp_options=self._dhcp_options(path, vpc),
                   dns_zones=self._dns_zones(path, vpc))

    def _subnets(self, path: str, vpc: _VpcFile) -> dict[str, Subnet]:
        subnets: dict[str, Subnet] = {}
        where: dict[str, str] = {}
        indexes: dict[int, str] = {}  # the /64s given out, by index in the VPC's /56
        for s, sub in enumerate(vpc.subnets):
            spath = f"{path}.subnets[{s}]"
            if not self._unique(f"{spath}.name", "subnet name", sub.name, where):
                continue
            if not sub.cidr.subnet_of(vpc.cidr):
                self.problems.append(f"{spath}.cidr: {sub.cidr} is outside VPC {vpc.name!r} ({vpc.cidr})")
            for other in subnets.values():
                if sub.cidr.overlaps(other.cidr):
                    self.problems.append(f"{spath}.cidr: {sub.cidr} overlaps subnet {other.name!r} ({other.cidr})")
            acls = list(dict.fromkeys([DEFAULT, *(a.name for a in vpc.network_acls)]))
            if sub.network_acl not in acls:
                self.problems.append(f"{spath}.network_acl: unknown network ACL {sub.network_acl!r} in VPC "
                                     f"{vpc.name!r} (network ACLs: {', '.join(acls)})")
            tables = list(dict.fromkeys([MAIN, *(t.name for t in vpc.route_tables)]))
            if sub.route_table not in tables:
                self.problems.append(f"{spath}.route_table: unknown route table {sub.route_table!r} in VPC "
                                     f"{vpc.name!r} (route tables: {', '.join(tables)})")
            index, cidr6 = self._subnet_ipv6(spath, s, vpc, sub, indexes)
            subnets[sub.name] = Subnet(sub.name, sub.cidr, sub.network_acl, sub.route_table, index, cidr6)
        return subnets

    def _subnet_ipv6(self, path: str, position: int, vpc: _VpcFile, sub: _SubnetFile,
                     indexes: dict) -> tuple[int | None, ipaddress.IPv6Network | None]:
        """A subnet's /64: its index in the VPC's /56 (``ipv6_index``, else its position in the file; or
        from ``ipv6_cidr``) and, when the VPC's /56 is in the file, the /64 itself."""
        if not (sub.ipv6 or sub.ipv6_cidr is not None or sub.ipv6_index is not None):
            return None, None
        key = "ipv6_cidr" if sub.ipv6_cidr is not None else "ipv6" if sub.ipv6 else "ipv6_index"
        if sub.ipv6_index is not None and not sub.ipv6:
            self.problems.append(f"{path}.ipv6_index: the index of the subnet's /64 in the VPC's /56 comes with "
                                 "ipv6: true")
            return None, None
        if sub.ipv6_cidr is not None and sub.ipv6:
            self.problems.append(f"{path}.ipv6_cidr: give ipv6: true (its /64 by ipv6_index, default its "
                                 "position) or ipv6_cidr (this /64), not both")
            return None, None
        if not (vpc.ipv6 or vpc.ipv6_cidr is not None):
            self.problems.append(f"{path}.{key}: VPC {vpc.name!r} has no IPv6 block (give it ipv6: true or "
                                 "ipv6_cidr)")
            return None, None
        if sub.ipv6_cidr is not None:
            if vpc.ipv6_cidr is None:
                self.problems.append(f"{path}.ipv6_cidr: VPC {vpc.name!r}'s /56 is amazon-provided (ipv6: true), "
                                     "known only once it is made: give the subnet ipv6: true (and ipv6_index)")
                return None, None
            if not sub.ipv6_cidr.subnet_of(vpc.ipv6_cidr):
                self.problems.append(f"{path}.ipv6_cidr: {sub.ipv6_cidr} is outside VPC {vpc.name!r}'s IPv6 block "
                                     f"({vpc.ipv6_cidr})")
                return None, None
            index = (int(sub.ipv6_cidr.network_address) - int(vpc.ipv6_cidr.network_address)) >> 64
        else:
            index = position if sub.ipv6_index is None else sub.ipv6_index
            if index > 255:
                self.problems.append(f"{path}.ipv6_index: a /56 holds 256 /64s (0-255): give this subnet "
                                     "an ipv6_index")
                return None, None
        if not self._unique(f"{path}.{key}", "IPv6 /64 number", index, indexes):
            return None, None
        return index, Subnet(sub.name, sub.cidr, ipv6_index=index).ipv6_block(vpc.ipv6_cidr)

    # --- policy ------------------------------------------------------------------------------------

    def _instance_groups(self, path: str, vpc: _VpcFile, inst: _InstanceFile, group_names: list[str]) -> None:
        if inst.security_groups is None:
            return
        seen: dict[str, str] = {}
        for k, name in enumerate(inst.security_groups):
            gpath = f"{path}.security_groups[{k}]"
            if name not in group_names:
                self.problems.append(f"{gpath}: unknown group {name!r} in VPC {vpc.name!r} "
                                     f"(groups: {', '.join(group_names)})")
            else:
                self._unique(gpath, "group", name, seen)
        self._api_check(api.InstanceUpdate, {"security_group_ids": [_PLACEHOLDER["sg"]] * len(inst.security_groups)},
                        lambda loc: f"{path}.security_groups")

    def _groups(self, path: str, vpc: _VpcFile, group_names: list[str]) -> tuple[SecurityGroup, ...]:
        out = []
        where: dict[str, str] = {}
        for g, group in enumerate(vpc.security_groups):
            gpath = f"{path}.security_groups[{g}]"
            fresh = self._unique(f"{gpath}.name", "group name", group.name, where)
            given = {d: rules for d in ("ingress", "egress") if (rules := getattr(group, d)) is not None}
            for d, rules in given.items():
                for i, rule in enumerate(rules):
                    if rule.source_group is not None and rule.source_group not in group_names:
                        self.problems.append(f"{gpath}.{d}[{i}].source_group: unknown group {rule.source_group!r} "
                                             f"in VPC {vpc.name!r} (groups: {', '.join(group_names)})")
            # What `vpc apply` sends, a source group's id aside, checked by the API's model.
            body: dict[str, Any] = {d: [_rule_body(rule) for rule in rules] for d, rules in given.items()}
            if group.description is not None:
                body["description"] = group.description
            checked = self._api_check(api.SecurityGroupUpdate, body, lambda loc: _item_path(gpath, loc, given))
            if not fresh or checked is None:
                continue
            all_out = ALLOW_ALL_EGRESS_DUAL if vpc.ipv6 or vpc.ipv6_cidr is not None else ALLOW_ALL_EGRESS
            made = {d: None if group.name == DEFAULT else default
                    for d, default in (("ingress", ()), ("egress", all_out))}
            for d, rules in given.items():
                made[d] = tuple(SecurityGroupRule(r.protocol, r.from_port, r.to_port, r.cidr, f.source_group,
                                                  r.description) for r, f in zip(getattr(checked, d), rules))
            out.append(SecurityGroup(group.name, group.description, made["ingress"], made["egress"]))
        return tuple(out)

    def _acls(self, path: str, vpc: _VpcFile) -> tuple[NetworkAcl, ...]:
        out = []
        where: dict[str, str] = {}
        for a, acl in enumerate(vpc.network_acls):
            apath = f"{path}.network_acls[{a}]"
            fresh = self._unique(f"{apath}.name", "network ACL name", acl.name, where)
            if acl.entries is None:
                if fresh:
                    out.append(NetworkAcl(acl.name, None if acl.name == DEFAULT else ()))
                continue
            seen: dict[tuple[bool, int], str] = {}
            for i, e in enumerate(acl.entries):
                epath = f"{apath}.entries[{i}].rule"
                if (e.egress, e.rule) in seen:
                    self.problems.append(f"{epath}: duplicate {'egress' if e.egress else 'ingress'} rule number "
                                         f"{e.rule} (first used at {seen[e.egress, e.rule]})")
                seen.setdefault((e.egress, e.rule), epath)
            # The API's own check for duplicates is the one above, made with the entries' paths.
            checked = self._api_check(api.NetworkAclUpdate, {"entries": [_entry_body(e) for e in acl.entries]},
                                      lambda loc: _item_path(apath, loc, {"entries": acl.entries}),
                                      skip=lambda err: err["loc"] == ("entries",) and err["type"] == "value_error")
            if fresh and checked is not None:
                out.append(NetworkAcl(acl.name, tuple(
                    NetworkAclEntry(e.rule_number, e.action, e.cidr, e.egress, e.protocol, e.from_port, e.to_port)
                    for e in checked.entries)))
        return tuple(out)

    def _route_tables(self, path: str, vpc: _VpcFile, subnets: dict[str, Subnet]) -> tuple[RouteTable, ...]:
        out = []
        where: dict[str, str] = {}
        instances = [i.name for i in vpc.instances]
        subnet_cidrs = {str(s.cidr) for s in vpc.subnets} | {str(s.ipv6_cidr) for s in subnets.values() if s.ipv6_cidr}
        nat_gateways = list(dict.fromkeys(n.name for n in vpc.nat_gateways))
        for t, table in enumerate(vpc.route_tables):
            tpath = f"{path}.route_tables[{t}]"
            fresh = self._unique(f"{tpath}.name", "route table name", table.name, where)
            if table.routes is None:
                if fresh:
                    out.append(RouteTable(table.name, None if table.name == MAIN else ()))
                continue
            seen: dict[str, str] = {}
            routes = []
            for i, route in enumerate(table.routes):
                rpath = f"{tpath}.routes[{i}]"
                self._route_target(f"{rpath}.target", vpc, route.target, instances, nat_gateways)
                # The route `vpc apply` sends, the target's id aside, checked by the API's model.
                target = {"gateway_id": _PLACEHOLDER["igw"]} if route.target == INTERNET_GATEWAY \
                    else {"egress_only_gateway_id": _PLACEHOLDER["eigw"]} if route.target == EGRESS_ONLY_GATEWAY \
                    else {"nat_gateway_id": _PLACEHOLDER["nat"]} if route.target.startswith(f"{NAT_GATEWAY}/") \
                    else {"network_interface_id": _PLACEHOLDER["eni"]}
                checked = self._api_check(api.Route, {"destination": route.destination, **target},
                                          lambda loc: _item_path(tpath, ("routes", i, *loc), {"routes": table.routes}))
                if checked is None:
                    continue
                dest = ipaddress.ip_network(checked.destination)
                if self._unique(f"{rpath}.destination", "destination", checked.destination, seen):
                    self._local_route(f"{rpath}.destination", vpc, dest, route.target, subnet_cidrs)
                    if route.target == EGRESS_ONLY_GATEWAY and dest.version != 6:
                        self.problems.append(f"{rpath}.destination: an egress-only internet gateway takes IPv6 "
                                             f"destinations, not {dest}")
                routes.append(Route(checked.destination, route.target))
            # And the table's: how many routes it may hold (each route's problems are reported above).
            some_route = {"destination": "0.0.0.0/0", "gateway_id": _PLACEHOLDER["igw"]}
            checked = self._api_check(api.RouteTableUpdate, {"routes": [some_route] * len(table.routes)},
                                      lambda loc: f"{tpath}.routes")
            if fresh and checked is not None and len(routes) == len(table.routes):
                out.append(RouteTable(table.name, tuple(routes)))
        return tuple(out)

    def _route_target(self, path: str, vpc: _VpcFile, target: str, instances: list[str],
                      nat_gateways: list[str]) -> None:
        kind, _, name = target.partition("/")
        if target == INTERNET_GATEWAY:
            if vpc.internet_gateway is None:
                self.problems.append(f"{path}: {INTERNET_GATEWAY} is the VPC's internet gateway, and VPC "
                                     f"{vpc.name!r} has none (give it internet_gateway: true)")
        elif target == EGRESS_ONLY_GATEWAY:
            if vpc.egress_only_gateway is None:
                self.problems.append(f"{path}: {EGRESS_ONLY_GATEWAY} is the VPC's egress-only internet gateway, "
                                     f"and VPC {vpc.name!r} has none (give it egress_only_gateway: true)")
        elif kind in ("instance", NAT_GATEWAY) and name:
            names, what = (instances, "instance") if kind == "instance" else (nat_gateways, "NAT gateway")
            if name not in names:
                self.problems.append(f"{path}: unknown {what} {name!r} in VPC {vpc.name!r} "
                                     f"({what}s: {', '.join(names) or 'none'})")
        else:
            self.problems.append(f"{path}: {target!r} is not {INTERNET_GATEWAY}, {EGRESS_ONLY_GATEWAY}, "
                                 f"instance/NAME or {NAT_GATEWAY}/NAME")

    def _local_route(self, path: str, vpc: _VpcFile, dest, target: str, subnet_cidrs: set[str]) -> None:
        """The API's rules for routes inside the VPC's CIDR or its IPv6 block, when the file gives it (the
        implicit local routes')."""
        if dest.version == 6 and vpc.ipv6_cidr is not None and dest.subnet_of(vpc.ipv6_cidr):
            if dest == vpc.ipv6_cidr:
                self.problems.append(f"{path}: {dest} is the VPC's IPv6 block: its route is the local route, "
                                     "which cannot be replaced")
            elif not target.startswith("instance/") or str(dest) not in subnet_cidrs:
                self.problems.append(f"{path}: {dest} is more specific than the IPv6 local route ({vpc.ipv6_cidr}): "
                                     "only a route for a whole subnet's /64 to an instance may be (NAT gateways "
                                     "are IPv4-only)")
            return
        if dest.version != 4 or not dest.subnet_of(vpc.cidr):
            return
        if dest == vpc.cidr:
            self.problems.append(f"{path}: {dest} is the VPC's CIDR: its route is the local route, which "
                                 "cannot be replaced")
        elif not target.startswith(("instance/", f"{NAT_GATEWAY}/")) or str(dest) not in subnet_cidrs:
            self.problems.append(f"{path}: {dest} is more specific than the local route ({vpc.cidr}): only a "
                                 "route for a whole subnet's CIDR to an instance or a NAT gateway may be")

    # --- NAT gateways and load balancers ------------------------------------------------------------

    def _nat_gateways(self, path: str, vpc: _VpcFile, subnets: dict[str, Subnet],
                      taken: dict) -> tuple[NatGateway, ...]:
        out = []
        where: dict[str, str] = {}
        for n, nat in enumerate(vpc.nat_gateways):
            npath = f"{path}.nat_gateways[{n}]"
            fresh = self._unique(f"{npath}.name", "NAT gateway name", nat.name, where)
            subnet = subnets.get(nat.subnet)
            if subnet is None:
                self.problems.append(f"{npath}.subnet: unknown subnet {nat.subnet!r} in VPC {vpc.name!r} "
                                     f"(subnets: {', '.join(subnets) or 'none'})")
            elif nat.private_ip is not None:
                self._check_ip(f"{npath}.private_ip", nat.private_ip, subnet, taken)
            public = nat.connectivity == "public"
            if public and vpc.internet_gateway is None:
                self.problems.append(f"{npath}.connectivity: a public NAT gateway needs the VPC's internet gateway "
                                     f"(for its elastic IP), and VPC {vpc.name!r} has none (give it "
                                     "internet_gateway: true, or the gateway connectivity: private)")
            # What `vpc apply` sends, the ids aside, checked by the API's model.
            checked = self._api_check(api.NatGatewayCreate, {
                "subnet_id": _PLACEHOLDER["subnet"], "name": nat.name, "connectivity_type": nat.connectivity,
                "allocation_id": _PLACEHOLDER["eipalloc"] if public else None,
                "private_ip": None if nat.private_ip is None else str(nat.private_ip)},
                lambda loc: _loc_path(npath, loc, _NAT_KEYS))
            if fresh and checked is not None:
                out.append(NatGateway(nat.name, nat.subnet, checked.connectivity_type, nat.private_ip))
        return tuple(out)

    def _target_groups(self, path: str, vpc: _VpcFile) -> tuple[TargetGroup, ...]:
        out = []
        where: dict[str, str] = {}
        instances = [i.name for i in vpc.instances]
        for g, tg in enumerate(vpc.target_groups):
            gpath = f"{path}.target_groups[{g}]"
            fresh = self._unique(f"{gpath}.name", "target group name", tg.name, where)
            seen: dict[str, str] = {}
            targets = []
            for t, target in enumerate(tg.targets):
                tpath = f"{gpath}.targets[{t}]"
                port = tg.port if target.port is None else target.port
                if target.instance is not None:
                    if target.instance not in instances:
                        self.problems.append(f"{tpath}.instance: unknown instance {target.instance!r} in VPC "
                                             f"{vpc.name!r} (instances: {', '.join(instances) or 'none'})")
                    shown = f"instance/{target.instance} port {port}"
                else:
                    if target.ip not in vpc.cidr:
                        self.problems.append(f"{tpath}.ip: {target.ip} is outside VPC {vpc.name!r} ({vpc.cidr})")
                    shown = f"{target.ip} port {port}"
                self._unique(tpath, "target", shown, seen)
                targets.append(Target(port, target.instance, target.ip))
            # What `vpc apply` sends, the ids aside, checked by the API's model. A target without a port
            # has the group's, whose problems are reported at the group's port.
            body = {"vpc_id": _PLACEHOLDER["vpc"], "name": tg.name, "protocol": tg.protocol, "port": tg.port,
                    "targets": [{"instance_id": None if t.instance is None else _PLACEHOLDER["i"],
                                 "ip": None if t.ip is None else str(t.ip), "port": t.port} for t in targets],
                    "health_check": (tg.health_check or _HealthCheckFile()).model_dump()}
            checked = self._api_check(
                api.TargetGroupCreate, body, lambda loc: _loc_path(gpath, loc, _TARGET_GROUP_KEYS),
                skip=lambda err: err["loc"][:1] == ("targets",) and err["loc"][2:] == ("port",)
                and tg.targets[err["loc"][1]].port is None)
            if fresh and checked is not None:
                out.append(TargetGroup(tg.name, checked.protocol, checked.port, tuple(targets),
                                       HealthCheck(**checked.health_check.model_dump())))
        return tuple(out)

    def _load_balancers(self, path: str, vpc: _VpcFile, subnets: dict[str, Subnet],
                        target_groups: tuple[TargetGroup, ...]) -> tuple[LoadBalancer, ...]:
        out = []
        where: dict[str, str] = {}
        group_names = list(dict.fromkeys(g.name for g in vpc.target_groups))
        groups = {g.name: g for g in target_groups}
        for b, lb in enumerate(vpc.load_balancers):
            bpath = f"{path}.load_balancers[{b}]"
            fresh = self._unique(f"{bpath}.name", "load balancer name", lb.name, where)
            seen_subnets: dict[str, str] = {}
            for k, name in enumerate(lb.subnets):
                if name not in subnets:
                    self.problems.append(f"{bpath}.subnets[{k}]: unknown subnet {name!r} in VPC {vpc.name!r} "
                                         f"(subnets: {', '.join(subnets) or 'none'})")
                else:
                    self._unique(f"{bpath}.subnets[{k}]", "subnet", name, seen_subnets)
            seen: dict[str, str] = {}
            for k, li in enumerate(lb.listeners):
                lpath = f"{bpath}.listeners[{k}]"
                if li.target_group not in group_names:
                    self.problems.append(f"{lpath}.target_group: unknown target group {li.target_group!r} in VPC "
                                         f"{vpc.name!r} (target groups: {', '.join(group_names) or 'none'})")
                elif li.target_group in groups and li.protocol in ("tcp", "udp") and \
                        groups[li.target_group].protocol != li.protocol:
                    self.problems.append(f"{lpath}.protocol: target group {li.target_group!r} is "
                                         f"{groups[li.target_group].protocol}, the listener {li.protocol}")
                self._unique(f"{lpath}.port", "listener", f"{li.protocol}/{li.port}", seen)
            # What `vpc apply` sends, the ids aside, checked by the API's model (its address: above).
            checked = self._api_check(api.LoadBalancerCreate, {
                "name": lb.name, "subnet_ids": [_PLACEHOLDER["subnet"]] * len(lb.subnets),
                "listeners": [{"protocol": li.protocol, "port": li.port, "target_group_id": _PLACEHOLDER["tg"]}
                              for li in lb.listeners],
                "private_ip": None if lb.private_ip is None else str(lb.private_ip)},
                lambda loc: _loc_path(bpath, loc, _LOAD_BALANCER_KEYS))
            if fresh and checked is not None:
                out.append(LoadBalancer(lb.name, tuple(lb.subnets), tuple(
                    Listener(li.protocol, li.port, f.target_group) for li, f in zip(checked.listeners, lb.listeners)),
                    lb.private_ip))
        return tuple(out)

    def _flow_logs(self, path: str, vpc: _VpcFile) -> tuple[FlowLog, ...]:
        out = []
        where: dict[str, str] = {}
        subnets = [s.name for s in vpc.subnets]
        instances = [i.name for i in vpc.instances]
        for f, fl in enumerate(vpc.flow_logs):
            fpath = f"{path}.flow_logs[{f}]"
            fresh = self._unique(f"{fpath}.name", "flow log name", fl.name, where)
            kind, _, name = fl.resource.partition("/")
            if kind in ("subnet", "instance") and name:
                names = subnets if kind == "subnet" else instances
                if name not in names:
                    self.problems.append(f"{fpath}.resource: unknown {kind} {name!r} in VPC {vpc.name!r} "
                                         f"({kind}s: {', '.join(names) or 'none'})")
            elif fl.resource != "vpc":
                self.problems.append(f"{fpath}.resource: {fl.resource!r} is not vpc, subnet/NAME or instance/NAME")
            checked = self._api_check(api.FlowLogCreate, {
                "resource_id": _PLACEHOLDER["vpc"], "name": fl.name, "traffic_type": fl.traffic_type,
                "max_aggregation_interval": fl.interval, "log_format": fl.log_format},
                lambda loc: f"{fpath}.{_FLOW_LOG_KEYS.get(loc[0], loc[0])}")
            if fresh and checked is not None:
                out.append(FlowLog(fl.name, fl.resource, checked.traffic_type, checked.max_aggregation_interval,
                                   checked.log_format))
        return tuple(out)

    def _api_check(self, model: type[pydantic.BaseModel], body: dict, where, skip=lambda err: False):
        """Validate ``body`` with one of the API's models, as the API would; each complaint is reported
        at the file path ``where(api_loc)``. Returns the validated model, or None when refused."""
        try:
            return model.model_validate(body, strict=True)
        except pydantic.ValidationError as e:
            for err in e.errors():
                if not skip(err):
                    self.problems.append(f"{where(err['loc'])}: {_api_problem(err)}")
            return None

    def _check_ip(self, path: str, ip: ipaddress.IPv4Address, subnet: Subnet, taken: dict) -> None:
        if ip not in subnet.cidr:
            self.problems.append(f"{path}: {ip} is outside subnet {subnet.name!r} ({subnet.cidr})")
        elif ip in reserved_addresses(subnet.cidr):
            self.problems.append(f"{path}: {ip} is one of the 5 reserved addresses of subnet {subnet.name!r} "
                                 f"({subnet.cidr}: network, router, DNS, reserved, broadcast)")
        else:
            self._unique(path, "address", ip, taken, scope="in this VPC")

    def _check_ipv6(self, path: str, ip: ipaddress.IPv6Address, subnet: Subnet,
                    taken: dict) -> ipaddress.IPv6Address | None:
        """An instance's explicit IPv6 address: in its subnet's /64 (the whole address, when the file gives
        that /64; else its interface part, the low 64 bits), not reserved, unique. Returns it as
        ``Instance.ipv6`` holds it."""
        if subnet.ipv6_index is None:
            self.problems.append(f"{path}: subnet {subnet.name!r} has no IPv6 block (give it ipv6: true)")
            return None
        part = int(ip) & ((1 << 64) - 1)
        if int(ip) >> 64:
            if subnet.ipv6_cidr is None:
                self.problems.append(f"{path}: the /64 of subnet {subnet.name!r} is known only once `vpc apply` "
                                     f"makes its VPC (ipv6: true): give the interface part, such as ::{part:x}")
                return None
            if ip not in subnet.ipv6_cidr:
                self.problems.append(f"{path}: {ip} is outside subnet {subnet.name!r} ({subnet.ipv6_cidr})")
                return None
        if part < FIRST_HOST_OFFSET or part == (1 << 64) - 1:
            self.problems.append(f"{path}: {ip} is one of the 5 reserved addresses of the /64 of subnet "
                                 f"{subnet.name!r} (the first four and the last)")
            return None
        if (subnet.name, part) in taken:
            self.problems.append(f"{path}: duplicate IPv6 address {ip} in subnet {subnet.name!r} (first used at "
                                 f"{taken[subnet.name, part]})")
            return None
        taken[subnet.name, part] = path
        return subnet.ipv6_cidr.network_address + part if subnet.ipv6_cidr is not None else ipaddress.IPv6Address(part)

    def _dhcp_options(self, path: str, vpc: _VpcFile) -> DhcpOptions | None:
        if vpc.dhcp_options is None:
            return None
        given = vpc.dhcp_options.model_dump(exclude_none=True)
        checked = self._api_check(api.DhcpOptionsCreate, given, lambda loc: _loc_path(f"{path}.dhcp_options", loc, {}))
        if checked is None:
            return None
        return DhcpOptions(vpc.dhcp_options.domain_name, tuple(checked.domain_name_servers),
                           tuple(checked.ntp_servers))

    def _dns_zones(self, path: str, vpc: _VpcFile) -> tuple[DnsZone, ...]:
        out = []
        where: dict[str, str] = {}
        for z, zone in enumerate(vpc.dns_zones):
            zpath = f"{path}.dns_zones[{z}]"
            records = [{"name": x.name, "type": x.type, "values": x.values,
                        **({} if x.ttl is None else {"ttl": x.ttl})} for x in zone.records]
            checked = self._api_check(api.DnsZoneCreate, {"name": zone.name, "records": records},
                                      lambda loc: _loc_path(zpath, loc, {}))
            if checked is None:
                continue
            fresh = self._unique(f"{zpath}.name", "zone name", api.dns_name(zone.name), where)
            problem = api.zone_records_problem(zone.name, [x.model_dump() for x in checked.records])
            if problem is not None:
                self.problems.append(f"{zpath}.records[{problem[0]}].name: {problem[1]}")
            elif fresh:
                out.append(DnsZone(checked.name, tuple(DnsRecord(x.name, x.type, tuple(x.values), x.ttl)
                                                       for x in checked.records)))
        return tuple(out)

    def _assign(self, path: str, vpc: _VpcFile, subnets: dict[str, Subnet], taken: dict) -> dict:
        """Instance index -> address: explicit ones, then the first free from .4 up, in file order."""
        ips = {n: inst.ip for n, inst in enumerate(vpc.instances) if inst.ip is not None}
        cursor: dict[str, ipaddress.IPv4Address] = {}  # per subnet: every address below is taken
        for n, inst in enumerate(vpc.instances):
            subnet = subnets.get(inst.subnet)
            if inst.ip is not None or subnet is None:
                continue
            ip = cursor.get(subnet.name, subnet.cidr.network_address + FIRST_HOST_OFFSET)
            while ip in taken:
                ip += 1
            if ip >= subnet.cidr.broadcast_address:
                self.problems.append(f"{path}.instances[{n}]: no free address left for {inst.name!r} "
                                     f"in subnet {subnet.name!r} ({subnet.cidr})")
                continue
            taken[ip] = f"{path}.instances[{n}]"
            cursor[subnet.name] = ip + 1
            ips[n] = ip
        return ips

    def _unique(self, path: str, what: str, value, seen: dict, scope: str = "") -> bool:
        """Record ``value`` as first used at ``path``; on a repeat, report both places and return False."""
        if value in seen:
            shown = repr(value) if isinstance(value, str) else str(value)  # names quoted, numbers not
            self.problems.append(f"{path}: duplicate {what} {shown}{' ' + scope if scope else ''} "
                                 f"(first used at {seen[value]})")
            return False
        seen[value] = path
        return True


# Ids standing for the resources a file names, so that bodies can be checked before they exist.
_PLACEHOLDER = {"sg": "sg-" + "0" * 17, "vpc": "vpc-" + "0" * 17, "igw": "igw-" + "0" * 17,
                "subnet": "subnet-" + "0" * 17, "eipalloc": "eipalloc-" + "0" * 17, "nat": "nat-" + "0" * 17,
                "tg": "tg-" + "0" * 17, "i": "i-" + "0" * 17, "eigw": "eigw-" + "0" * 17,
                "eni": "eni-" + "0" * 16}
_FLOW_LOG_KEYS = {"max_aggregation_interval": "interval", "resource_id": "resource"}
# The file's keys for the API's fields, where they differ.
_NAT_KEYS = {"connectivity_type": "connectivity", "subnet_id": "subnet"}
_TARGET_GROUP_KEYS = {"instance_id": "instance"}
_LOAD_BALANCER_KEYS = {"subnet_ids": "subnets", "target_group_id": "target_group"}
# The file keys that can give an API body field of a rule or an entry, in the order they are looked for.
_FILE_KEYS = {"from_port": ("ports", "icmp_type", "from_port"), "to_port": ("ports", "icmp_code", "to_port"),
              "source_group_id": ("source_group",), "rule_number": ("rule",),
              "gateway_id": ("target",), "network_interface_id": ("target",), "egress_only_gateway_id": ("target",),
              "nat_gateway_id": ("target",)}


def _rule_body(rule: _RuleFile) -> dict:
    """A security group rule as the API's ``SgRule`` takes it."""
    first, last = rule.port_range(every_port=(0, 65535))
    return {"protocol": rule.protocol, "from_port": first, "to_port": last, "cidr": rule.cidr,
            "source_group_id": None if rule.source_group is None else _PLACEHOLDER["sg"],
            "description": rule.description}


def _entry_body(entry: _AclEntryFile) -> dict:
    """A network ACL entry as the API's ``AclEntry`` takes it (no ports given: -1, every port)."""
    first, last = entry.port_range(every_port=(-1, -1))
    return {"rule_number": entry.rule, "egress": entry.egress, "protocol": entry.protocol,
            "action": entry.action, "cidr": entry.cidr, "from_port": first, "to_port": last}


def _item_path(base: str, loc: tuple, lists: dict[str, list]) -> str:
    """The file path of an API complaint about a body of rule or entry lists: ``("ingress", 2,
    "from_port")`` → ``<base>.ingress[2].ports`` when the file gave ``ports``."""
    path = f"{base}.{loc[0]}"
    if len(loc) > 1 and isinstance(loc[1], int):
        path += f"[{loc[1]}]"
        if len(loc) > 2:
            item = lists[loc[0]][loc[1]]
            keys = _FILE_KEYS.get(loc[2], (loc[2],))
            key = next((k for k in keys if getattr(item, k, None) is not None), None)
            if key is not None:
                path += f".{key}"
    return path


def _loc_path(base: str, loc: tuple, keys: dict[str, str]) -> str:
    """The file path of an API complaint at ``loc`` in a body whose fields are the file's keys renamed
    (``keys``: API field → file key): ``("listeners", 0, "target_group_id")`` →
    ``<base>.listeners[0].target_group``."""
    path = base
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{keys.get(part, part)}"
    return path


def _api_problem(err) -> str:
    """One of the API model's complaints, worded as ``_describe`` words the file's."""
    if err["type"] == "value_error":
        return str(err["ctx"]["error"])
    shown = err["input"]
    if isinstance(shown, (list, dict)) or shown in _PLACEHOLDER.values():
        return err["msg"]  # a list (its length is the problem) or an id standing for a name
    return f"{err['msg']}, got {reprlib.repr(shown)}"


def _eni_id(vpc: str, instance: str) -> str:
    """Derived from the names, so every agent computes the same id and it survives restarts."""
    digest = hashlib.sha256(f"{vpc}/{instance}".encode()).digest()
    return addresses.eni_id(int.from_bytes(digest[:8], "big"))

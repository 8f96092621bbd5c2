"""What the data path knows about an ENI and its VPC on this host.

Plain objects, built by the agent from its configuration and shared by the egress and ingress paths.
Everything the per-packet code compares is pre-computed as an int.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from . import addresses
from .conntrack import ConnTrack
from .drops import new_counters
from .policy import NetworkAclPolicy, SecurityGroupPolicy
from .routes import RouteTable
from .topology import reserved_addresses

# Per-ENI traffic counters, by index into Eni.stats.
TX_PACKETS, TX_BYTES, RX_PACKETS, RX_BYTES = range(4)


@dataclasses.dataclass(eq=False)
class VpcView:
    """One VPC as a host sees it: its CIDR, reserved addresses, local ENIs and cached mappings."""

    vni: int
    cidr: ipaddress.IPv4Network
    reserved: frozenset[int]  # subnets' network/.1/.2/.3/broadcast, IPv6 ::0-3 and last; base + 2
    mappings: dict  # MappingCache.table(vni): key -> Mapping, shared with the cache
    local: dict = dataclasses.field(default_factory=dict)  # key -> Eni on this host
    # Load balancers (their flows live on Hyperplane nodes): address key -> load balancer id, and the
    # targets whose replies go back through them: target address key -> {(proto, port): load balancer id}.
    balancers: dict = dataclasses.field(default_factory=dict)
    lb_targets: dict = dataclasses.field(default_factory=dict)
    net: int = 0
    mask: int = 0
    # IPv6 (dual stack): the VPC's /56, if it has one. ``net6``/``mask6`` compare with address keys, so
    # they carry ``addresses.V6_TAG`` (an IPv4 key never matches them).
    cidr6: ipaddress.IPv6Network | None = None
    net6: int = -1
    mask6: int = 0

    def __post_init__(self) -> None:
        self.net = int(self.cidr.network_address)
        self.mask = int(self.cidr.netmask)
        self.set_reserved(self.reserved)
        self.set_ipv6(self.cidr6)

    def set_reserved(self, keys) -> None:
        """The subnets' reserved addresses, and the VPC resolver's (base + 2), which may lie in no subnet."""
        self.reserved = frozenset(keys) | {self.net + 2}

    def set_ipv6(self, cidr6) -> None:
        self.cidr6 = ipaddress.IPv6Network(cidr6) if cidr6 else None
        if self.cidr6 is None:
            self.net6, self.mask6 = -1, 0  # -1: no key & 0 equals it
        else:
            self.net6 = int(self.cidr6.network_address) | addresses.V6_TAG
            self.mask6 = int(self.cidr6.netmask) | addresses.V6_TAG


@dataclasses.dataclass(eq=False)
class Eni:
    id: str
    vni: int
    ipv4: ipaddress.IPv4Interface  # address and subnet prefix, e.g. 10.0.1.10/24
    instance: str = ""
    netns: str = ""
    source_dest_check: bool = True
    vpc: VpcView | None = None
    number: int = 0
    ipv4_key: int = 0
    stats: list = dataclasses.field(default_factory=lambda: [0, 0, 0, 0])
    drops: list = dataclasses.field(default_factory=new_counters)
    # The firewall's state (firewall.py). ``sg`` None: no policy at all (a static host config), open.
    sg: SecurityGroupPolicy | None = None
    sg_ids: tuple[str, ...] = ()
    acl: NetworkAclPolicy | None = None  # the subnet's network ACL
    ct: ConnTrack = dataclasses.field(default_factory=ConnTrack)
    flow_logs: list = dataclasses.field(default_factory=list)  # FlowLogAggregator, one per flow log covering it
    routes: RouteTable | None = None  # its subnet's route table, for destinations outside the VPC
    subnet_net: int = 0
    subnet_mask: int = 0
    # IPv6 (dual stack): its address and subnet (/64), or None. Keys and masks carry V6_TAG, so the
    # firewall's "does the peer cross the subnet" test reads ``key & subnet6_mask != subnet6_net`` for
    # IPv6 keys exactly as it does for IPv4 ones.
    ipv6: ipaddress.IPv6Interface | None = None
    ipv6_key: int = -1
    subnet6_net: int = -1
    subnet6_mask: int = 0
    interface_type: str = "tun"  # "tap": the instance is a VM; frames, and the host answers ARP/DHCP/ND
    mac: bytes = b""

    def __post_init__(self) -> None:
        self.number = addresses.eni_number(self.id)
        self.ipv4_key = addresses.key(self.ipv4.ip)
        self.subnet_net = int(self.ipv4.network.network_address)
        self.subnet_mask = int(self.ipv4.network.netmask)
        self.mac = addresses.eni_mac(self.number)
        self.set_ipv6(self.ipv6)

    def set_ipv6(self, ipv6) -> None:
        """Give the ENI an IPv6 address (``2001:db8:100::4/64``), or take it away (None)."""
        self.ipv6 = ipaddress.IPv6Interface(ipv6) if ipv6 else None
        if self.ipv6 is None:
            self.ipv6_key, self.subnet6_net, self.subnet6_mask = -1, -1, 0
        else:
            self.ipv6_key = addresses.key(self.ipv6.ip)
            self.subnet6_net = int(self.ipv6.network.network_address) | addresses.V6_TAG
            self.subnet6_mask = int(self.ipv6.network.netmask) | addresses.V6_TAG


def reserved_keys(subnets) -> frozenset[int]:
    """The five reserved addresses of every subnet, IPv4 (network, router, DNS, future, broadcast) or
    IPv6 (the first four and the last of the /64), as address keys."""
    return frozenset(addresses.key(a) for s in subnets for a in reserved_addresses(ipaddress.ip_network(s)))

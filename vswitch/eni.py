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
    reserved: frozenset[int]  # addresses nobody answers yet (subnet network/.1/.2/.3/broadcast)
    mappings: dict  # MappingCache.table(vni): key -> Mapping, shared with the cache
    local: dict = dataclasses.field(default_factory=dict)  # key -> Eni on this host
    # Load balancers (their flows live on Hyperplane nodes): address key -> load balancer id, and the
    # targets whose replies go back through them: target address key -> {(proto, port): load balancer id}.
    balancers: dict = dataclasses.field(default_factory=dict)
    lb_targets: dict = dataclasses.field(default_factory=dict)
    net: int = 0
    mask: int = 0

    def __post_init__(self) -> None:
        self.net = int(self.cidr.network_address)
        self.mask = int(self.cidr.netmask)


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

    def __post_init__(self) -> None:
        self.number = addresses.eni_number(self.id)
        self.ipv4_key = addresses.key(self.ipv4.ip)
        self.subnet_net = int(self.ipv4.network.network_address)
        self.subnet_mask = int(self.ipv4.network.netmask)


def reserved_keys(subnets) -> frozenset[int]:
    """The five reserved addresses of every subnet (network, router, DNS, future, broadcast)."""
    return frozenset(int(a) for s in subnets for a in reserved_addresses(ipaddress.ip_network(s)))

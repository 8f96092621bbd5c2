"""Why a packet was dropped: one enum feeds counters, status output, and (later) flow logs and trace.

Counters are a flat list indexed by the reason's value, so counting a drop on the hot path is one
list index and one add — no dict lookup, no allocation.
"""

from __future__ import annotations

import enum


class Drop(enum.IntEnum):
    # --- the way out of an ENI (egress) ---
    MALFORMED_PACKET = 0  # too short, bad version or header length
    SOURCE_CHECK = 1  # source address is not one of the ENI's own
    IPV6_NOT_ENABLED = 2  # IPv6, but the ENI (or its subnet) has no IPv6 address
    BROADCAST_MULTICAST = 3  # no broadcast or multicast inside a VPC
    NO_ROUTE = 4  # destination outside every route the VPC has
    RESERVED_ADDRESS = 5  # subnet network/router/DNS/reserved/broadcast addresses nobody answers yet
    NO_MAPPING_NO_EDGE = 6  # mapping miss and no edge configured to relay through
    TOO_BIG = 7  # larger than the underlay can carry
    # --- the way in from the underlay (ingress) ---
    MALFORMED_GENEVE = 8  # too short, wrong version, options past the end
    GENEVE_OAM = 9  # control packets are not data
    UNKNOWN_CRITICAL_OPTION = 10  # RFC 8926 §3.5: must drop what we cannot interpret
    UNSUPPORTED_PROTOCOL = 11  # inner protocol type neither IPv4 nor IPv6
    UNKNOWN_VNI = 12  # no ENI of that VPC lives on this host
    UNKNOWN_SOURCE = 13  # the mapping has no owner for the inner source (asked the daemon)
    OUTER_SOURCE_MISMATCH = 14  # the sending host does not own the inner source: spoofed
    SOURCE_ENI_MISMATCH = 15  # the Geneve source-ENI option names another ENI than the mapping
    UNKNOWN_DESTINATION = 16  # no ENI on this host owns the inner destination
    DELIVERY_FAILED = 17  # the ENI device refused the write (full queue, gone)
    # --- the edge ---
    EDGE_NO_MAPPING = 18  # nobody in the VPC owns the destination
    SEND_FAILED = 19  # the underlay socket refused the datagram
    # --- the firewall of an ENI, either way (firewall.py) ---
    SG_DENY = 20  # no security group rule of the ENI allows the flow's first packet
    NACL_DENY = 21  # the subnet's network ACL denies the packet (a numbered rule or the final *)
    CONNTRACK_INVALID = 22  # a tracked TCP flow's packet out of window or with invalid flags
    CONNTRACK_FULL = 23  # the ENI's flow table is full: new flows refused (conntrack_allowance_exceeded)
    NOT_A_FLOW_START = 24  # no tracked flow, and the packet cannot start one (a stray ACK or reply)
    # --- routes and the internet gateway ---
    BLACKHOLE_ROUTE = 25  # the matching route's target was deleted
    NO_INTERNET_GATEWAY = 26  # routed to the internet, but the VPC has no attached internet gateway
    NO_PUBLIC_ADDRESS = 27  # to or from the internet without a public (elastic) address
    # --- Hyperplane (NAT gateway, load balancer) ---
    NO_HYPERPLANE_NODE = 28  # no live node in the gateway's or load balancer's shard
    NAT_REFUSED = 29  # the NAT gateway refused the flow (port allocation, idle timeout, no flow...)
    NLB_REFUSED = 30  # the load balancer refused the flow (no listener, no targets, no flow...)
    # --- services the host answers itself (VPC resolver, DHCP, ARP, neighbour discovery) ---
    DNS_RATE_LIMITED = 31  # over 1,024 packets/s from one ENI to the VPC resolver
    DNS_REFUSED = 32  # to the resolver but not a query it serves: malformed, a response, not UDP port 53
    LINK_REFUSED = 33  # a TAP frame the host does not serve: malformed ARP/DHCP/ND, another EtherType
    # --- IPv6 at the edge ---
    EGRESS_ONLY = 34  # from the internet to an address behind an egress-only gateway, not a reply

    @property
    def label(self) -> str:
        return self.name.lower()


def new_counters() -> list[int]:
    return [0] * len(Drop)


def counters_as_dict(counters: list[int]) -> dict[str, int]:
    """Non-zero counters by reason name, for status output and metrics."""
    return {reason.label: counters[reason] for reason in Drop if counters[reason]}

"""The way out of an ENI: a packet read from an instance's TUN, to the underlay (or a local ENI).

Stages, each an early return with a reason (see ``Drop``):

  1. parse      IPv4 or IPv6 header present and long enough
  2. src/dst    source/destination check: the source must be the ENI's own address
  3. route      the VPC resolver's addresses (base + 2, 169.254.169.253, fd00:ec2::253) are this host's:
                ``RESOLVER``, before any policy. Inside the VPC (its IPv4 CIDR or IPv6 /56): the ``local``
                route (no broadcast, no multicast, not a reserved subnet address); outside it: the subnet's route table (``eni.routes``), longest prefix first —
                an internet gateway target goes to the edge (which translates IPv4, ``igw.py``), so does
                an egress-only gateway's (IPv6; the edge keeps its state), a NAT
                gateway target to the live Hyperplane node of the gateway's shard that holds flows to
                that remote address (``hyperplane.Fleet``), a blackhole route drops, ENI targets are
                not served yet: no route.
                An ENI without a route table (a static host config) reaches its VPC only.
  4. firewall   the ENI's security groups and, leaving the subnet, its network ACL (``firewall.py``)
  5. balancer   a load balancer's address, or a load balancer target's reply (client address
                preserved, so addressed to the client): to the live Hyperplane node of the balancer's shard
                that holds the flow, keyed by the client's address and port (``hyperplane.nlb_key``)
     local      an ENI of the same VPC on this host → its own firewall inbound, then deliver without
                encapsulation
  6. mapping    one dict lookup in the host's mapping cache; a miss goes to the edge, which knows
                every mapping, while the cache asks the mapping daemon (first packet never lost)
  7. encap      the shell writes the Geneve header kept in front of the read buffer and sends

IPv6 takes the same stages with its own keys (``addresses.V6_TAG``): an ENI without an IPv6 address
sends none, link-local and multicast destinations (router solicitations, MLD) are dropped as
multicast, and load balancers are IPv4 only.

``process`` returns the decision: an underlay address ``(ip, port)``, a local ``Eni``, ``RESOLVER``,
or None for a drop (``last_drop`` says why; the counters are already incremented). It never raises on packet contents.
With a ``trace`` list it is a dry run for ``vpc trace``: each stage appends its decision, and nothing is
counted, tracked, logged or asked.
"""

from __future__ import annotations

from .drops import Drop, new_counters
from .eni import TX_BYTES, TX_PACKETS, Eni
from .firewall import Firewall
from .hyperplane import Fleet
from .addresses import V6_TAG, eni_id, key, text
from .headers import _V4_ADDRS, v6_addresses
from .mapping import MappingCache

_BCAST = 0xFFFFFFFF
_MCAST_MASK, _MCAST_NET = 0xF0000000, 0xE0000000  # 224.0.0.0/4
_V6_MCAST_MASK, _V6_MCAST = V6_TAG | 0xFF << 120, V6_TAG | 0xFF << 120  # ff00::/8
_V6_LINK_LOCAL_MASK, _V6_LINK_LOCAL = V6_TAG | 0xFFC0 << 112, V6_TAG | 0xFE80 << 112  # fe80::/10
_RESOLVER_V4 = key("169.254.169.253")
_RESOLVER_V6 = key("fd00:ec2::253")
RESOLVER = "resolver"  # ``process``'s answer for a packet the host's VPC resolver serves


class EgressPath:
    def __init__(self, cache: MappingCache, edge: tuple[str, int] | None, firewall: Firewall | None = None,
                 fleet: Fleet | None = None):
        self.cache = cache
        self.edge = edge
        self.fleet = fleet or Fleet({}, 1, 0)
        self.firewall = firewall or Firewall()
        self.drops = new_counters()
        self.last_drop: Drop | None = None
        self.to_edge = 0  # packets relayed through the edge because of a mapping miss
        # Lookups of a remote destination the mapping cache answered (vpc_mapping_cache_hits_total); the
        # misses need no counter of their own: to_edge + drops[NO_MAPPING_NO_EDGE] (see vswitch/metrics.py)
        self.mapping_hits = 0

    def _drop(self, eni: Eni, reason: Drop, trace: list | None = None, target: Eni | None = None) -> None:
        """Count a drop at ``eni`` (or at ``target``, refused on the way in to it)."""
        self.last_drop = reason
        if trace is not None:
            trace.append({"step": "drop", "result": "deny", "reason": reason.label})
            return None
        self.drops[reason] += 1
        (target or eni).drops[reason] += 1
        return None

    def process(self, eni: Eni, buf, off: int, n: int, now: float, segments: int = 1, trace: list | None = None):
        # 1. parse
        if n < 20:
            return self._drop(eni, Drop.MALFORMED_PACKET, trace)
        version = buf[off] >> 4
        if version == 4:
            src, dst = _V4_ADDRS.unpack_from(buf, off + 12)
            own = eni.ipv4_key
        elif version == 6:
            if n < 40:
                return self._drop(eni, Drop.MALFORMED_PACKET, trace)
            if eni.ipv6_key < 0:  # no IPv6 address on this ENI: nothing IPv6 may leave it
                return self._drop(eni, Drop.IPV6_NOT_ENABLED, trace)
            src, dst = v6_addresses(buf, off)
            src, dst = src | V6_TAG, dst | V6_TAG
            own = eni.ipv6_key
        else:
            return self._drop(eni, Drop.MALFORMED_PACKET, trace)

        # 2. source/destination check
        if src != own and eni.source_dest_check:
            return self._drop(eni, Drop.SOURCE_CHECK, trace)
        if trace is not None:
            trace.append({"step": "source/destination check", "result": "allow",
                          "detail": f"{text(src)} is {eni.id}'s own address" if src == own
                          else f"disabled on {eni.id}"})

        # 3. route: the VPC itself, or the subnet's route table for what lies outside it. The VPC
        # resolver's addresses are served by this host, before any policy (the cloud neither filters
        # nor logs traffic to it).
        vpc = eni.vpc
        inside = dst & vpc.mask == vpc.net if version == 4 else dst & vpc.mask6 == vpc.net6
        if inside:
            if dst in vpc.reserved:
                if dst == vpc.net + 2:
                    return self._to_resolver(trace)
                return self._drop(eni, Drop.RESERVED_ADDRESS, trace)
            if trace is not None:
                trace.append({"step": "route", "result": "allow",
                              "rule": f"{vpc.cidr if version == 4 else vpc.cidr6} local"})
        else:
            if dst == _RESOLVER_V4 or dst == _RESOLVER_V6:
                return self._to_resolver(trace)
            if version == 4:
                if dst == _BCAST or dst & _MCAST_MASK == _MCAST_NET:
                    return self._drop(eni, Drop.BROADCAST_MULTICAST, trace)
            elif dst & _V6_MCAST_MASK == _V6_MCAST or dst & _V6_LINK_LOCAL_MASK == _V6_LINK_LOCAL:
                # Router solicitations, MLD reports: link chatter with nobody to answer on a TUN.
                return self._drop(eni, Drop.BROADCAST_MULTICAST, trace)
            route = self._route_out(eni, dst, trace)
            if route is None:
                return None

        # 4. the ENI's security groups and network ACL
        refused = self.firewall.admit(eni, buf, off, n, True, now, segments, trace)
        if refused is not None:
            return self._drop(eni, refused, trace)

        # 5. the internet gateway (the edge translates), a local ENI (through its own firewall),
        # 6. the mapping, or the edge on a miss
        if not inside:
            if route.target_type == "igw" or route.target_type == "eigw":
                target = self.edge
                if trace is not None:
                    trace.append({"step": "internet gateway" if route.target_type == "igw" else "egress-only gateway",
                                  "result": "allow",
                                  "detail": f"to the edge, which translates to the public address ({route.target_id})"
                                  if version == 4 else f"to the edge, on to the internet ({route.target_id})"})
            else:
                target = self.fleet.nat_node(route.target_id, buf[off + 9], dst)
                if target is None:
                    return self._drop(eni, Drop.NO_HYPERPLANE_NODE, trace)
                if trace is not None:
                    trace.append({"step": "NAT gateway", "result": "allow",
                                  "detail": f"to Hyperplane node {self.fleet.by_ip[target[0]]} of "
                                            f"{route.target_id}'s shard, which translates the source"})
        elif vpc.balancers and version == 4 and (target := self._balancer(vpc, buf, off, src, dst, trace)) is not False:
            if target is None:
                return self._drop(eni, Drop.NO_HYPERPLANE_NODE, trace)
        elif (target := vpc.local.get(dst)) is not None:
            if trace is not None:
                trace.append({"step": "mapping", "result": "allow", "detail": f"{target.id} on this host"})
            refused = self.firewall.admit(target, buf, off, n, False, now, segments, trace)
            if refused is not None:
                return self._drop(eni, refused, trace, target)
        else:
            m = vpc.mappings.get(dst)
            if m is not None:
                target = m.underlay
                if trace is None:
                    self.mapping_hits += 1
                else:
                    trace.append({"step": "mapping", "result": "allow",
                                  "detail": f"{text(dst)} is {eni_id(m.eni)} on host {m.host}"})
            else:
                if trace is not None:
                    trace.append({"step": "mapping", "result": "miss",
                                  "detail": "not cached: relayed through the edge, which knows every mapping"
                                  if self.edge else "not cached and no edge"})
                else:
                    self.cache.note_miss(vpc.vni, dst, now)
                if self.edge is None:
                    return self._drop(eni, Drop.NO_MAPPING_NO_EDGE, trace)
                if trace is None:
                    self.to_edge += 1
                target = self.edge
        if trace is None:
            stats = eni.stats
            stats[TX_PACKETS] += segments
            stats[TX_BYTES] += n
        return target

    def _to_resolver(self, trace):
        """A packet for the VPC resolver (base + 2, 169.254.169.253, fd00:ec2::253): the host answers it
        (``vpc_resolver.py``), so ``process`` returns ``RESOLVER`` and the shell hands it over."""
        if trace is not None:
            trace.append({"step": "VPC resolver", "result": "allow",
                          "detail": "answered by this host (not filtered by security groups or ACLs, not logged)"})
        return RESOLVER

    def _balancer(self, vpc, buf, off: int, src: int, dst: int, trace):
        """The node for a packet to a load balancer, or for a target's reply to its client (or to the
        balancer itself: a health check's answer); False if the packet is neither (the caller goes on),
        None if no node of the shard is alive. Flows are keyed by the client's address and port."""
        proto = buf[off + 9]
        ihl = (buf[off] & 0xF) * 4
        lb = None
        ports = vpc.lb_targets.get(src)
        if ports is not None:  # from a target's port: the reply direction
            lb = ports.get((proto, buf[off + ihl] << 8 | buf[off + ihl + 1]))
            client, port = dst, buf[off + ihl + 2] << 8 | buf[off + ihl + 3]
        if lb is None:
            lb = vpc.balancers.get(dst)
            if lb is None:
                return False  # neither: the target's other traffic, or nothing to do with a balancer
            client, port = src, buf[off + ihl] << 8 | buf[off + ihl + 1]
        target = self.fleet.nlb_node(lb, proto, client, port)
        if trace is not None and target is not None:
            trace.append({"step": "load balancer", "result": "allow",
                          "detail": f"to Hyperplane node {self.fleet.by_ip[target[0]]} of {lb}'s shard"})
        return target

    def _route_out(self, eni: Eni, dst: int, trace):
        """A destination outside the VPC: the subnet's route table decides. The route to an internet
        gateway, or None (the drop counted)."""
        route = eni.routes.lookup(dst) if eni.routes is not None else None
        if route is None:
            return self._drop(eni, Drop.NO_ROUTE, trace)
        if trace is not None:
            trace.append({"step": "route", "result": "allow" if route.active else "deny", "rule": str(route)})
        if not route.active:
            return self._drop(eni, Drop.BLACKHOLE_ROUTE, trace)
        kind = route.target_type
        if not ((kind == "igw" or kind == "eigw") and self.edge is not None or kind == "nat" and self.fleet):
            return self._drop(eni, Drop.NO_ROUTE, trace)  # ENI targets: not served yet
        return route

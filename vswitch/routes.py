"""A subnet's route table, compiled for longest-prefix-match lookups over address keys.

Semantics (the cloud's):
- A table is a list of routes: a destination CIDR and one target. Every table has a ``local`` route per
  VPC CIDR (the control plane puts it in the view it sends; here it is a route like any other).
- The route whose destination holds the address with the longest prefix wins. IPv4 and IPv6 are
  independent: 0.0.0.0/0 never matches an IPv6 address and ::/0 never an IPv4 one (an IPv6 key
  carries ``addresses.V6_TAG``, and each family has its own tables).
- Targets (``target_type``): ``local`` (the VPC itself, no id), ``igw`` (internet gateway), ``nat``
  (NAT gateway), ``eni`` (a network interface: an appliance instance), ``eigw`` (egress-only internet
  gateway, IPv6).
- ``state`` is ``active`` or ``blackhole``: a route whose target was deleted (or, for an internet
  gateway, detached) stays in the table, still matches by its prefix, and the caller drops what it
  matched (it does NOT fall through to a shorter route). ``Route.active`` is that state as a bool.
- No route matches: ``lookup`` answers None (the caller drops: no route).
- Two routes for one destination are refused (``ValueError``), as the control plane refuses them.

The compiled form is one tuple per family of (mask, {network: Route}), longest prefix first, one entry per
prefix length in use: a lookup is one ``&`` and one dict probe per prefix length until one hits, and
builds nothing (a table of 1,000 routes over 3 prefix lengths costs at most 3 probes).
"""

from __future__ import annotations

import dataclasses
import ipaddress

from .addresses import V6_TAG

TARGET_TYPES = ("local", "igw", "nat", "eni", "eigw")
STATES = ("active", "blackhole")


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One route: ``destination`` (a CIDR, normalised), its target and its state."""

    destination: str
    target_type: str
    target_id: str | None
    state: str = "active"
    active: bool = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.target_type not in TARGET_TYPES:
            raise ValueError(f"route {self.destination}: target_type {self.target_type!r} is not one of "
                             f"{', '.join(TARGET_TYPES)}")
        if self.state not in STATES:
            raise ValueError(f"route {self.destination}: state {self.state!r} is not active or blackhole")
        if (self.target_type == "local") != (self.target_id is None):
            raise ValueError(f"route {self.destination}: a local route has no target_id, every other one has")
        object.__setattr__(self, "active", self.state == "active")

    def __str__(self) -> str:
        """``0.0.0.0/0 igw-0123…``, ``10.0.0.0/16 local``, ``… (blackhole)``: as traces name it."""
        text = f"{self.destination} {self.target_id or self.target_type}"
        return text if self.active else text + " (blackhole)"


def _mask_and_net(cidr: str) -> tuple[int, int, int]:
    """(family, mask, network) of a CIDR as compared with address keys (an IPv6 mask keeps the tag)."""
    net = ipaddress.ip_network(cidr)  # strict: host bits set is a ValueError
    if net.version == 4:
        return 0, int(net.netmask), int(net.network_address)
    return 1, int(net.netmask) | V6_TAG, int(net.network_address) | V6_TAG


class RouteTable:
    """Routes compiled for ``lookup``: the longest-prefix route holding an address key, or None."""

    __slots__ = ("_tables", "routes")

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes  # as given (the order the control plane listed them)
        by_mask: tuple[dict[int, dict[int, Route]], dict[int, dict[int, Route]]] = ({}, {})
        seen = set()
        for route in routes:
            family, mask, net = _mask_and_net(route.destination)
            if (family, net, mask) in seen:
                raise ValueError(f"two routes for {route.destination}")
            seen.add((family, net, mask))
            by_mask[family].setdefault(mask, {})[net] = route
        # Longer prefixes have larger masks within a family: sorted descending is longest first.
        self._tables = tuple(tuple(sorted(t.items(), reverse=True)) for t in by_mask)

    @classmethod
    def compile(cls, routes: list[dict]) -> "RouteTable":
        """``routes``: ``{"destination", "target_type", "target_id", "state"}`` each (the infra view's
        form; ``state`` defaults to active). Destinations are normalised (``10.0.0.0/16``, ``fd00::/56``)."""
        return cls(tuple(Route(str(ipaddress.ip_network(r["destination"])), r["target_type"],
                               r.get("target_id"), r.get("state", "active")) for r in routes))

    def lookup(self, key: int) -> Route | None:
        """The route for address key ``key`` (``addresses.key``): longest prefix of its family, or None.
        A blackhole route is returned like any other: check ``route.active``."""
        for mask, nets in self._tables[key >> 128]:
            route = nets.get(key & mask)
            if route is not None:
                return route
        return None

    def __len__(self) -> int:
        return len(self.routes)

    def __repr__(self) -> str:
        return f"RouteTable({', '.join(map(str, self.routes))})"

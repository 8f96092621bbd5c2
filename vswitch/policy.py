"""Security groups and network ACLs, compiled for the first packet of a flow.

Both are stateless here: the data path asks them only about a flow's first packet (conntrack lets the
later packets of an allowed flow through without asking), and recompiles them when a rule, a group's
membership or an attachment changes. Compiling does the work once so that a question costs a few dict
lookups, whatever the number of rules.

Rules, as the control plane stores them (``controlplane/resources.py``: ``SgRule``, ``AclEntry``):
- protocol: "-1" or "all" is every protocol (ports ignored); "tcp", "udp", "icmp", "icmpv6" or a number.
  A number is the same as its name ("6" is tcp, port range included).
- tcp, udp: ``from_port``..``to_port``, inclusive, tested against the destination port of the packet
  that starts the flow (for a security group: the ENI's port inbound, the peer's port outbound). A
  bound of -1 is open: ``AclEntry`` defaults to -1..-1, every port. ``from_port > to_port`` matches no port.
- icmp, icmpv6: ``from_port`` is the type and ``to_port`` the code, -1 for all. Type -1 means every
  type and code (the cloud requires the code to be -1 then; here the code is ignored). Values above
  255 match nothing.
- other protocols: ports do not apply; protocol and address decide.
- peer: an IPv4 or IPv6 CIDR, or (security groups only) another group, meaning the private addresses of
  its members. An IPv4 CIDR, 0.0.0.0/0 included, never matches an IPv6 address, nor the reverse.

The compiled form of one direction (``_Rules``) has one table per address family and protocol that
appears in a rule (plus one per family for every other protocol), holding the rules of that family
and protocol and the protocol-all rules.
A table is a short tuple of (mask, {network: port segments}), one entry per prefix length in use; the
port segments split 0..65535 (or ICMP's type << 8 | code) at every rule edge and name, per segment,
the first rule covering it. A lookup is then one dict probe and one bisection per prefix length, and
takes the lowest-ranked rule found: 1,000 rules cost about what 10 do when they share prefix lengths.

Which rule is "first": a network ACL's lowest rule number, and its decision (allow or deny) is final,
the cloud's rule. Security groups only allow and are a union, so any allowing rule would do; the
one named (in flow logs and traces) is the first in the order the groups and their rules were given,
so the same packet always names the same rule.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from bisect import bisect_left, bisect_right

from .addresses import V6_TAG, key
from .headers import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP

_ALL = -1  # the protocol number of "-1"/"all" rules
_PROTOCOLS = {"-1": _ALL, "all": _ALL, "tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP,
              "icmpv6": PROTO_ICMPV6}
_NAMES = {_ALL: "all", PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", PROTO_ICMPV6: "icmpv6"}
_TOP = 0xFFFF  # the highest port, and the highest ICMP type << 8 | code
_EVERY = (0, _TOP)
_EMPTY = (1, 0)  # lo > hi: covers nothing
# A peer's mask carries V6_TAG so an IPv4 rule never matches an IPv6 key (whose tag bit is set) and the
# reverse: even 0.0.0.0/0 compares the tag. Indexed by the key's family bit (key >> 128).
_HOST_MASK = (0xFFFFFFFF | V6_TAG, (V6_TAG - 1) | V6_TAG)


@dataclasses.dataclass(frozen=True)
class Match:
    """The rule that decided a packet, as flow logs and traces name it, and whether it allows."""

    rule: str
    allowed: bool


def _protocol(value: str) -> int:
    return _PROTOCOLS[value] if value in _PROTOCOLS else int(value)


def _span(proto: int, from_port: int, to_port: int) -> tuple[int, int]:
    """The rule's range over the packet's port number (ICMP: type << 8 | code), inclusive."""
    if proto == PROTO_TCP or proto == PROTO_UDP:
        return (0 if from_port < 0 else from_port), (_TOP if to_port < 0 else to_port)
    if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
        icmp_type, code = from_port, to_port
        if icmp_type > 0xFF or code > 0xFF:
            return _EMPTY
        if icmp_type < 0:
            return _EVERY
        if code < 0:
            return icmp_type << 8, icmp_type << 8 | 0xFF
        return icmp_type << 8 | code, icmp_type << 8 | code
    return _EVERY


def _what(proto: int, from_port: int, to_port: int) -> str:
    """``tcp 22-22``, ``icmp 8/all``, ``all``, ``proto 47``: the rule's protocol and ports for people."""
    name = _NAMES.get(proto, f"proto {proto}")
    if proto == PROTO_TCP or proto == PROTO_UDP:
        return f"{name} {from_port}-{to_port}"
    if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
        if from_port < 0:
            return f"{name} all"
        return f"{name} {from_port}/{'all' if to_port < 0 else to_port}"
    return name


def _sg_rule_name(group_id: str, direction: str, i: int, proto: int, rule: dict) -> str:
    """``sg-… ingress #2 tcp 22-22 from 10.0.0.0/16 (ssh)``: #n counts the direction's rules from 1."""
    peer = rule["cidr"] or rule["source_group_id"]
    name = (f"{group_id} {direction} #{i + 1} {_what(proto, rule['from_port'], rule['to_port'])} "
            f"{'from' if direction == 'ingress' else 'to'} {peer}")
    return f"{name} ({rule['description']})" if rule["description"] else name


def _cidr(cidr: str) -> tuple[int, int, int]:
    """(mask, network, prefix length) of a CIDR, as compared with address keys."""
    net = ipaddress.ip_network(cidr)
    tag = V6_TAG if net.version == 6 else 0
    return int(net.netmask) | V6_TAG, int(net.network_address) | tag, net.prefixlen


def _segments(ranges: list[tuple[int, int, int]], miss: int) -> tuple[list[int], tuple[int, ...]]:
    """Port ranges (lo, hi, rank) of one network → (starts, owners): the ports from ``starts[i]`` up to
    the next start are covered first by rule ``owners[i]`` (``miss``: by none).

    0 is always a start, so a port finds its segment by one bisection; the last segment starts above
    every range and belongs to ``miss``, so a port out of range (an ICMP type of -1) matches no rule.
    Painting costs rules × segments; a policy has at most a few hundred rules per direction.
    """
    cuts = sorted({0, _TOP + 1}.union(*((lo, hi + 1) for lo, hi, _ in ranges)))
    owners = [miss] * len(cuts)
    for lo, hi, rank in ranges:
        for i in range(bisect_left(cuts, lo), bisect_left(cuts, hi + 1)):
            if rank < owners[i]:
                owners[i] = rank
    # Neighbouring segments with one owner are one segment: fewer steps for the bisection.
    starts, firsts = [], []
    for cut, owner in zip(cuts, owners):
        if not firsts or firsts[-1] != owner:
            starts.append(cut)
            firsts.append(owner)
    return starts, tuple(firsts)


def _table(entries, miss: int) -> tuple:
    """Entries (rank, proto, mask, net, lo, hi) → ((mask, {net: (starts, owners)}), ...), longest prefix
    first (any order gives the same answer: the lookup takes the lowest rank of all)."""
    by_mask: dict[int, dict[int, list]] = {}
    for rank, _, mask, net, lo, hi in entries:
        if lo <= hi:
            by_mask.setdefault(mask, {}).setdefault(net, []).append((lo, hi, rank))
    return tuple((mask, {net: _segments(ranges, miss) for net, ranges in nets.items()})
                 for mask, nets in sorted(by_mask.items(), reverse=True))


class _Rules:
    """One direction's rules (an SG's ingress or egress, an ACL's inbound or outbound entries), indexed
    for ``first``: the lowest-ranked rule matching a protocol, an address and a port."""

    __slots__ = ("_tables", "_default", "_matches", "_miss")

    def __init__(self, entries: list[tuple[int, int, int, int, int, int]], matches: list) -> None:
        """``entries``: (rank, proto, mask, net, lo, hi), one per rule and peer network; ``matches``: the
        answer per rank, and one more, the answer when no rule matches."""
        self._matches = matches
        self._miss = miss = len(matches) - 1
        # Tables by protocol and family (proto << 1 | key >> 128): an IPv4 packet never walks the prefix
        # lengths of IPv6 rules, which could never match it anyway.
        families = [[e for e in entries if e[3] >> 128 == f] for f in (0, 1)]
        self._tables = {p << 1 | f: _table([e for e in families[f] if e[1] == p or e[1] == _ALL], miss)
                        for p in {e[1] for e in entries if e[1] != _ALL} for f in (0, 1)}
        self._default = tuple(_table([e for e in family if e[1] == _ALL], miss) for family in families)

    def first(self, proto: int, addr: int, port: int):
        best = self._miss
        family = addr >> 128
        for mask, nets in self._tables.get(proto << 1 | family, self._default[family]):
            segments = nets.get(addr & mask)
            if segments is not None:
                rank = segments[1][bisect_right(segments[0], port) - 1]
                if rank < best:
                    best = rank
        return self._matches[best]


class SecurityGroupPolicy:
    """The security groups of one ENI: allow rules only, all rules of all groups unioned.

    ``evaluate`` answers for the packet that would start a flow; ``is_untracked`` says whether such a
    flow may skip connection tracking.
    """

    __slots__ = ("_ingress", "_egress", "_untracked")

    def __init__(self, ingress: _Rules, egress: _Rules, untracked: tuple[bytes, bytes]) -> None:
        self._ingress = ingress
        self._egress = egress
        self._untracked = untracked

    @classmethod
    def compile(cls, groups: list[dict], members: dict[str, list[str]]) -> "SecurityGroupPolicy":
        """``groups``: the SG records attached to the ENI; ``members``: group id → the private addresses
        of the ENIs in that group, for rules whose peer is a group (a group missing here has none).

        The defaults (a new group: no inbound, all outbound; a VPC's default group: all inbound from
        itself) are rules in the records, not code here.
        """
        rules = []
        open_to_all = []  # per direction, per family: protocols allowed on every port to /0
        for direction in ("ingress", "egress"):
            entries, matches, wide = [], [], (set(), set())
            for group in groups:
                for i, rule in enumerate(group[direction]):
                    proto = _protocol(rule["protocol"])
                    lo, hi = _span(proto, rule["from_port"], rule["to_port"])
                    rank = len(matches)
                    matches.append(Match(_sg_rule_name(group["id"], direction, i, proto, rule), True))
                    if rule["cidr"]:
                        mask, net, prefix = _cidr(rule["cidr"])
                        entries.append((rank, proto, mask, net, lo, hi))
                        if prefix == 0 and (lo, hi) == _EVERY:
                            wide[net >> 128].add(proto)
                    else:
                        for address in members.get(rule["source_group_id"], ()):
                            k = key(address)
                            entries.append((rank, proto, _HOST_MASK[k >> 128], k, lo, hi))
            matches.append(None)  # no rule allows
            rules.append(_Rules(entries, matches))
            open_to_all.append(wide)

        def untracked(family: int) -> bytes:
            inbound, outbound = open_to_all[0][family], open_to_all[1][family]
            return bytes((_ALL in inbound or p in inbound) and (_ALL in outbound or p in outbound)
                         and p != PROTO_ICMP and p != PROTO_ICMPV6 for p in range(256))

        return cls(rules[0], rules[1], (untracked(0), untracked(1)))

    def evaluate(self, outbound: bool, proto: int, remote: int, local_port: int, remote_port: int,
                 icmp_type: int = -1, icmp_code: int = -1) -> Match | None:
        """The first rule allowing the flow's first packet, or None: no rule allows it (drop).

        ``remote`` is the peer's address key (``addresses.key``): the source inbound, the destination
        outbound. Port ranges test the destination port: ``local_port`` inbound, ``remote_port``
        outbound. ICMP packets (protocols 1 and 58) give their type and code (0..255) instead.
        """
        if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            port = icmp_type << 8 | icmp_code
        else:
            port = remote_port if outbound else local_port
        return (self._egress if outbound else self._ingress).first(proto, remote, port)

    def is_untracked(self, proto: int, remote: int) -> bool:
        """Whether a flow of ``proto`` with the peer ``remote`` needs no connection tracking.

        The rule (the reference's, and the cloud's wording): the ENI's groups have an inbound rule AND
        an outbound rule, each of which alone allows this protocol (or all protocols) on every port
        (0-65535; ports do not apply to other protocols) from/to the whole address family of ``remote``:
        0.0.0.0/0 for IPv4, ::/0 for IPv6. Rules that only together cover everything (two /1 halves,
        split port ranges) and group peers do not count. ICMP and ICMPv6 are always tracked.

        An untracked flow has no conntrack entry, so each of its packets is evaluated afresh and
        removing the allow-all rule cuts it at once; a tracked flow survives until it times out.
        """
        return bool(self._untracked[remote >> 128][proto])


class NetworkAclPolicy:
    """A subnet's network ACL: numbered rules, lowest first, the first match decides (allow or deny);
    when none matches, the final ``*`` rule denies. Stateless: replies need rules of their own."""

    __slots__ = ("_ingress", "_egress")

    def __init__(self, ingress: _Rules, egress: _Rules) -> None:
        self._ingress = ingress
        self._egress = egress

    @classmethod
    def compile(cls, acl: dict) -> "NetworkAclPolicy":
        """``acl``: the record (its ``id`` and ``entries``). A new ACL has no entries: it denies all."""
        rules = []
        for egress in (False, True):
            direction = "egress" if egress else "ingress"
            entries, matches = [], []
            for rank, e in enumerate(sorted((e for e in acl["entries"] if e["egress"] == egress),
                                            key=lambda e: e["rule_number"])):
                proto = _protocol(e["protocol"])
                mask, net, _ = _cidr(e["cidr"])
                entries.append((rank, proto, mask, net, *_span(proto, e["from_port"], e["to_port"])))
                matches.append(Match(f"{acl['id']} {direction} rule {e['rule_number']} {e['action']}",
                                     e["action"] == "allow"))
            matches.append(Match(f"{acl['id']} {direction} rule * deny", False))
            rules.append(_Rules(entries, matches))
        return cls(rules[0], rules[1])

    def evaluate(self, egress: bool, proto: int, src: int, dst: int, sport: int, dport: int,
                 icmp_type: int = -1, icmp_code: int = -1) -> Match:
        """The rule deciding a packet crossing the subnet boundary (``egress``: leaving the subnet).

        The CIDR matches the source inbound and the destination outbound, as in the cloud; port ranges
        match the destination port, so ``sport`` never decides (it is taken so callers pass the
        five-tuple as it is). ICMP packets give their type and code (0..255) instead of ports.
        """
        if proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            dport = icmp_type << 8 | icmp_code
        if egress:
            return self._egress.first(proto, dst, dport)
        return self._ingress.first(proto, src, dport)

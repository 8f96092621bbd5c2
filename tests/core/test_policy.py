"""vswitch.policy: every semantic of security groups and network ACLs, then both evaluators against a
plain reference implementation (a loop over the rules, ``ipaddress`` for CIDRs) on random rules and packets."""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from vswitch.addresses import key as K, text
from vswitch.controlplane.resources import ALLOW_ALL_EGRESS
from vswitch.policy import Match, NetworkAclPolicy, SecurityGroupPolicy

TCP, UDP, ICMP, ICMPV6, GRE = 6, 17, 1, 58, 47


def rule(protocol="-1", from_port=-1, to_port=-1, cidr=None, group=None, description=None):
    """An SG rule as the control plane stores it (``SgRule.model_dump()``)."""
    return {"protocol": protocol, "from_port": from_port, "to_port": to_port, "cidr": cidr,
            "source_group_id": group, "description": description}


def sg(gid, ingress=(), egress=()):
    return {"id": gid, "ingress": list(ingress), "egress": list(egress)}


def entry(number, action, cidr="0.0.0.0/0", protocol="-1", from_port=-1, to_port=-1, egress=False):
    """A network ACL entry as the control plane stores it (``AclEntry.model_dump()``)."""
    return {"rule_number": number, "egress": egress, "protocol": protocol, "action": action, "cidr": cidr,
            "from_port": from_port, "to_port": to_port}


def sgp(*groups, members=None):
    return SecurityGroupPolicy.compile(list(groups), members or {})


def inbound(policy, proto, src, port=0, icmp=(-1, -1)):
    """A flow's first packet arriving at the ENI from ``src`` for its local ``port``."""
    return policy.evaluate(False, proto, K(src), port, 40000, *icmp)


def outbound(policy, proto, dst, port=0, icmp=(-1, -1)):
    """A flow's first packet leaving the ENI for ``dst``:``port``."""
    return policy.evaluate(True, proto, K(dst), 40000, port, *icmp)


# --- security groups: the defaults are data ----------------------------------------------------------

def test_new_group_allows_no_inbound_and_all_outbound_ipv4():
    p = sgp(sg("sg-new", egress=ALLOW_ALL_EGRESS))
    for proto in (TCP, UDP, GRE, 0, 255):
        assert inbound(p, proto, "10.0.1.5", 22) is None
        assert outbound(p, proto, "8.8.8.8", 53) == Match("sg-new egress #1 all to 0.0.0.0/0", True)
    assert inbound(p, ICMP, "10.0.1.5", icmp=(8, 0)) is None
    assert outbound(p, ICMP, "10.0.1.5", icmp=(8, 0)).allowed
    # 0.0.0.0/0 is IPv4 only.
    assert outbound(p, TCP, "2001:db8::1", 443) is None


def test_default_group_allows_all_inbound_from_its_members():
    default = sg("sg-def", ingress=[rule(group="sg-def")], egress=ALLOW_ALL_EGRESS)
    p = sgp(default, members={"sg-def": ["10.0.1.4", "10.0.2.9"]})
    assert inbound(p, TCP, "10.0.2.9", 5432) == Match("sg-def ingress #1 all from sg-def", True)
    assert inbound(p, ICMP, "10.0.1.4", icmp=(8, 0)).allowed
    assert inbound(p, GRE, "10.0.2.9").allowed
    assert inbound(p, TCP, "10.0.2.10", 5432) is None
    assert inbound(p, TCP, "10.0.2.8", 5432) is None


def test_no_groups_allow_nothing():
    p = sgp()
    assert inbound(p, TCP, "10.0.0.1", 22) is None and outbound(p, TCP, "10.0.0.1", 22) is None
    assert not p.is_untracked(TCP, K("10.0.0.1"))


# --- security groups: protocols ---------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["-1", "all"])
def test_protocol_all_matches_every_protocol_and_port(protocol):
    p = sgp(sg("sg-1", ingress=[rule(protocol, cidr="0.0.0.0/0")]))
    for proto in (0, ICMP, TCP, UDP, GRE, ICMPV6, 255):
        for port in (0, 1, 65535):
            assert inbound(p, proto, "10.0.0.1", port, icmp=(port & 0xFF, 0)).allowed


@pytest.mark.parametrize("protocol, number", [("tcp", TCP), ("6", TCP), ("udp", UDP), ("17", UDP)])
def test_tcp_and_udp_by_name_or_number(protocol, number):
    p = sgp(sg("sg-1", ingress=[rule(protocol, 80, 80, cidr="0.0.0.0/0")]))
    assert inbound(p, number, "10.0.0.1", 80).allowed
    assert inbound(p, number, "10.0.0.1", 81) is None
    other = UDP if number == TCP else TCP
    assert inbound(p, other, "10.0.0.1", 80) is None


def test_other_protocol_by_number_ignores_ports():
    p = sgp(sg("sg-1", ingress=[rule("47", cidr="10.0.0.0/8")]))
    assert inbound(p, GRE, "10.9.9.9", 0) == Match("sg-1 ingress #1 proto 47 from 10.0.0.0/8", True)
    assert inbound(p, GRE, "10.9.9.9", 1234).allowed
    for proto in (TCP, UDP, ICMP, 46, 48):
        assert inbound(p, proto, "10.9.9.9", 0) is None


def test_protocol_zero_is_a_protocol_not_all():
    p = sgp(sg("sg-1", ingress=[rule("0", cidr="0.0.0.0/0")]))
    assert inbound(p, 0, "10.0.0.1").allowed
    assert inbound(p, TCP, "10.0.0.1", 22) is None


# --- security groups: ports -------------------------------------------------------------------------

def test_port_range_edges():
    p = sgp(sg("sg-1", ingress=[rule("tcp", 1000, 2000, cidr="0.0.0.0/0")]))
    assert [inbound(p, TCP, "10.0.0.1", port) is not None for port in (999, 1000, 1500, 2000, 2001)] == \
        [False, True, True, True, False]


def test_full_and_single_port_ranges():
    p = sgp(sg("sg-1", ingress=[rule("udp", 0, 65535, cidr="0.0.0.0/0"), rule("tcp", 22, 22, cidr="0.0.0.0/0")]))
    assert inbound(p, UDP, "10.0.0.1", 0).allowed and inbound(p, UDP, "10.0.0.1", 65535).allowed
    assert inbound(p, TCP, "10.0.0.1", 22) == Match("sg-1 ingress #2 tcp 22-22 from 0.0.0.0/0", True)
    assert inbound(p, TCP, "10.0.0.1", 21) is None and inbound(p, TCP, "10.0.0.1", 23) is None


def test_inbound_tests_the_local_port_and_outbound_the_remote_port():
    p = sgp(sg("sg-1", ingress=[rule("tcp", 22, 22, cidr="0.0.0.0/0")],
               egress=[rule("tcp", 443, 443, cidr="0.0.0.0/0")]))
    # Inbound: the peer is the source; the port that matters is ours (the destination).
    assert p.evaluate(False, TCP, K("1.2.3.4"), 22, 50000).allowed
    assert p.evaluate(False, TCP, K("1.2.3.4"), 50000, 22) is None
    # Outbound: the peer is the destination, and so is its port.
    assert p.evaluate(True, TCP, K("1.2.3.4"), 50000, 443).allowed
    assert p.evaluate(True, TCP, K("1.2.3.4"), 443, 50000) is None
    # Each direction has its own rules.
    assert p.evaluate(True, TCP, K("1.2.3.4"), 50000, 22) is None
    assert p.evaluate(False, TCP, K("1.2.3.4"), 443, 50000) is None


def test_overlapping_ranges_name_the_first_rule_covering_the_port():
    p = sgp(sg("sg-1", ingress=[rule("tcp", 100, 200, cidr="0.0.0.0/0"), rule("tcp", 0, 65535, cidr="0.0.0.0/0"),
                                rule("tcp", 150, 150, cidr="0.0.0.0/0")]))
    assert inbound(p, TCP, "1.1.1.1", 150).rule.startswith("sg-1 ingress #1 ")
    assert inbound(p, TCP, "1.1.1.1", 99).rule.startswith("sg-1 ingress #2 ")
    assert inbound(p, TCP, "1.1.1.1", 201).rule.startswith("sg-1 ingress #2 ")


# --- security groups: ICMP --------------------------------------------------------------------------

def test_icmp_type_and_code():
    p = sgp(sg("sg-1", ingress=[rule("icmp", 8, -1, cidr="0.0.0.0/0"), rule("icmp", 3, 4, cidr="0.0.0.0/0")]))
    assert inbound(p, ICMP, "1.1.1.1", icmp=(8, 0)) == Match("sg-1 ingress #1 icmp 8/all from 0.0.0.0/0", True)
    assert inbound(p, ICMP, "1.1.1.1", icmp=(8, 255)).allowed  # code -1: every code of type 8
    assert inbound(p, ICMP, "1.1.1.1", icmp=(0, 0)) is None
    assert inbound(p, ICMP, "1.1.1.1", icmp=(3, 4)) == Match("sg-1 ingress #2 icmp 3/4 from 0.0.0.0/0", True)
    assert inbound(p, ICMP, "1.1.1.1", icmp=(3, 3)) is None
    assert inbound(p, ICMP, "1.1.1.1", icmp=(4, 4)) is None
    assert inbound(p, ICMP, "1.1.1.1", icmp=(3, 5)) is None
    # The ports of an ICMP packet mean nothing: only type and code are tested.
    assert p.evaluate(False, ICMP, K("1.1.1.1"), 8 << 8, 8 << 8, 0, 0) is None


def test_icmp_all_types_and_icmpv6_is_another_protocol():
    p = sgp(sg("sg-1", ingress=[rule("icmp", -1, -1, cidr="0.0.0.0/0"), rule("icmpv6", 128, -1, cidr="::/0")]))
    for t, c in ((0, 0), (3, 4), (8, 0), (255, 255)):
        assert inbound(p, ICMP, "1.1.1.1", icmp=(t, c)) == Match("sg-1 ingress #1 icmp all from 0.0.0.0/0", True)
        assert inbound(p, ICMPV6, "1.1.1.1", icmp=(t, c)) is None
    assert inbound(p, ICMPV6, "2001:db8::1", icmp=(128, 0)) == Match("sg-1 ingress #2 icmpv6 128/all from ::/0", True)
    assert inbound(p, ICMPV6, "2001:db8::1", icmp=(129, 0)) is None
    assert inbound(p, ICMP, "2001:db8::1", icmp=(128, 0)) is None  # icmp rule is IPv4-only: 0.0.0.0/0


def test_icmpv6_type_and_code_rules():
    p = sgp(sg("sg-1", ingress=[rule("icmpv6", 2, 0, cidr="::/0"), rule("icmpv6", 1, -1, cidr="2001:db8::/32"),
                                rule(cidr="fd00::/8")]))
    assert inbound(p, ICMPV6, "2001:db9::1", icmp=(2, 0)) == Match("sg-1 ingress #1 icmpv6 2/0 from ::/0", True)
    assert inbound(p, ICMPV6, "2001:db9::1", icmp=(2, 1)) is None
    assert inbound(p, ICMPV6, "2001:db8::1", icmp=(1, 4)) == \
        Match("sg-1 ingress #2 icmpv6 1/all from 2001:db8::/32", True)
    assert inbound(p, ICMPV6, "2001:db9::1", icmp=(1, 4)) is None
    assert inbound(p, ICMPV6, "fd00::1", icmp=(135, 0)) == Match("sg-1 ingress #3 all from fd00::/8", True)
    # An "icmp" rule is protocol 1 whatever its CIDR: ICMPv6 (58) never matches it, nor ICMP an "icmpv6" one.
    q = sgp(sg("sg-2", ingress=[rule("icmp", -1, -1, cidr="::/0"), rule("icmpv6", -1, -1, cidr="0.0.0.0/0")]))
    for t, c in ((128, 0), (2, 0), (8, 0), (0, 0)):
        assert inbound(q, ICMPV6, "2001:db9::1", icmp=(t, c)) is None
        assert inbound(q, ICMP, "10.0.0.1", icmp=(t, c)) is None


def test_acl_default_entries_cover_both_families():
    """The default ACL (service.py): rules 100 (0.0.0.0/0) and 101 (::/0) allow, both directions."""
    p = acl(*(entry(n, "allow", cidr=c, egress=e) for e in (False, True) for n, c in ((100, "0.0.0.0/0"),
                                                                                       (101, "::/0"))))
    for proto, icmp in ((TCP, (-1, -1)), (UDP, (-1, -1)), (GRE, (-1, -1)), (ICMPV6, (128, 0)), (ICMPV6, (2, 0))):
        assert acl_in(p, proto, "2001:db8::1", 80, icmp, dst="2001:db8:1::4").rule == "acl-1 ingress rule 101 allow"
        assert acl_out(p, proto, "2001:db8::1", 80, icmp, src="2001:db8:1::4").rule == "acl-1 egress rule 101 allow"
        assert acl_in(p, proto, "10.9.9.9", 80, icmp).rule == "acl-1 ingress rule 100 allow"
    only_v4 = acl(entry(100, "allow"), entry(100, "allow", egress=True))
    assert acl_in(only_v4, TCP, "2001:db8::1", 80, dst="2001:db8:1::4").rule == "acl-1 ingress rule * deny"
    assert acl_out(only_v4, ICMPV6, "2001:db8::1", icmp=(128, 0), src="2001:db8:1::4").rule == \
        "acl-1 egress rule * deny"


def test_icmp_all_types_ignores_the_code():
    """Type -1 is every type and code; the cloud requires the code to be -1 then, the API here does not."""
    p = sgp(sg("sg-1", ingress=[rule("icmp", -1, 4, cidr="0.0.0.0/0")]))
    assert inbound(p, ICMP, "1.1.1.1", icmp=(8, 0)).allowed


# --- security groups: peers -------------------------------------------------------------------------

@pytest.mark.parametrize("cidr, inside, outside", [
    ("10.0.0.0/24", ["10.0.0.0", "10.0.0.255", "10.0.0.77"], ["9.255.255.255", "10.0.1.0", "::a00:1"]),
    ("10.0.0.7/32", ["10.0.0.7"], ["10.0.0.6", "10.0.0.8", "::ffff:10.0.0.7"]),
    ("0.0.0.0/0", ["0.0.0.0", "255.255.255.255"], ["::", "::1", "2001:db8::1"]),
    ("128.0.0.0/1", ["128.0.0.0", "255.255.255.255"], ["127.255.255.255", "0.0.0.0"]),
    ("::/0", ["::", "::1", "2001:db8::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"], ["0.0.0.0", "10.0.0.1"]),
    ("2001:db8::/64", ["2001:db8::", "2001:db8::ffff:ffff:ffff:ffff"], ["2001:db8:0:1::", "2001:db7:ffff:ffff::"]),
    ("::a00:0/120", ["::a00:1"], ["10.0.0.1"]),  # an IPv4-compatible IPv6 block is still IPv6
    ("2001:db8::5/128", ["2001:db8::5"], ["2001:db8::4", "2001:db8::6"]),
])
def test_cidr_edges_and_families(cidr, inside, outside):
    p = sgp(sg("sg-1", ingress=[rule(cidr=cidr)]))
    for address in inside:
        assert inbound(p, TCP, address, 22).allowed, address
    for address in outside:
        assert inbound(p, TCP, address, 22) is None, address


def test_group_peer_means_the_private_addresses_of_its_members():
    web = sg("sg-web", ingress=[rule("tcp", 443, 443, group="sg-lb"), rule("tcp", 22, 22, group="sg-gone")])
    members = {"sg-lb": ["10.0.1.10", "10.0.2.10", "2001:db8::10"], "sg-web": ["10.0.3.3"]}
    p = sgp(web, members=members)
    assert inbound(p, TCP, "10.0.2.10", 443) == Match("sg-web ingress #1 tcp 443-443 from sg-lb", True)
    assert inbound(p, TCP, "2001:db8::10", 443).allowed
    assert inbound(p, TCP, "10.0.2.11", 443) is None
    assert inbound(p, TCP, "10.0.3.3", 443) is None  # a member of another group
    assert inbound(p, TCP, "10.0.2.10", 22) is None  # sg-gone has no members
    # Membership is data: a recompile with the new members is the new policy.
    p = sgp(web, members={"sg-lb": ["10.0.2.11"]})
    assert inbound(p, TCP, "10.0.2.10", 443) is None and inbound(p, TCP, "10.0.2.11", 443).allowed


def test_groups_are_unioned_and_the_first_allowing_rule_is_named():
    a = sg("sg-a", ingress=[rule("tcp", 22, 22, cidr="10.0.0.0/8", description="ssh from the VPN")])
    b = sg("sg-b", ingress=[rule("tcp", 0, 65535, cidr="0.0.0.0/0")])
    c = sg("sg-c", ingress=[rule("udp", 53, 53, cidr="10.0.0.2/32")])
    p = sgp(a, b, c)
    assert inbound(p, TCP, "10.1.1.1", 22) == \
        Match("sg-a ingress #1 tcp 22-22 from 10.0.0.0/8 (ssh from the VPN)", True)
    assert inbound(p, TCP, "11.1.1.1", 22) == Match("sg-b ingress #1 tcp 0-65535 from 0.0.0.0/0", True)
    assert inbound(p, UDP, "10.0.0.2", 53) == Match("sg-c ingress #1 udp 53-53 from 10.0.0.2/32", True)
    assert inbound(p, UDP, "10.0.0.3", 53) is None
    assert inbound(sgp(b, a), TCP, "10.1.1.1", 22) == Match("sg-b ingress #1 tcp 0-65535 from 0.0.0.0/0", True)


# --- security groups: untracked flows ---------------------------------------------------------------

ALL_V4, ALL_V6 = rule(cidr="0.0.0.0/0"), rule(cidr="::/0")


def test_untracked_when_both_directions_allow_everything_to_the_family():
    p = sgp(sg("sg-1", ingress=[ALL_V4], egress=[ALL_V4]))
    for proto in (TCP, UDP, GRE, 0, 255):
        assert p.is_untracked(proto, K("8.8.8.8"))
    assert not p.is_untracked(ICMP, K("8.8.8.8")) and not p.is_untracked(ICMPV6, K("8.8.8.8"))
    assert not p.is_untracked(TCP, K("2001:db8::1"))  # 0.0.0.0/0 does not cover ::/0
    p = sgp(sg("sg-1", ingress=[ALL_V4, ALL_V6], egress=[ALL_V4, ALL_V6]))
    assert p.is_untracked(TCP, K("2001:db8::1")) and not p.is_untracked(ICMPV6, K("2001:db8::1"))


def test_untracked_across_groups_and_per_protocol():
    p = sgp(sg("sg-a", ingress=[rule("tcp", 0, 65535, cidr="0.0.0.0/0")]), sg("sg-b", egress=ALLOW_ALL_EGRESS))
    assert p.is_untracked(TCP, K("1.1.1.1"))
    assert not p.is_untracked(UDP, K("1.1.1.1"))
    p = sgp(sg("sg-a", ingress=[rule("47", cidr="0.0.0.0/0")], egress=[rule("47", cidr="0.0.0.0/0")]))
    assert p.is_untracked(GRE, K("1.1.1.1")) and not p.is_untracked(TCP, K("1.1.1.1"))


@pytest.mark.parametrize("ingress", [
    [],  # a new group: outbound only
    [rule("tcp", 1, 65535, cidr="0.0.0.0/0")],  # not every port
    [rule("tcp", 0, 1023, cidr="0.0.0.0/0"), rule("tcp", 1024, 65535, cidr="0.0.0.0/0")],  # two rules together
    [rule(cidr="0.0.0.0/1"), rule(cidr="128.0.0.0/1")],  # two halves
    [rule(group="sg-1")],  # the default group: a group peer, however large
    [rule("icmp", -1, -1, cidr="0.0.0.0/0"), rule("udp", 0, 65535, cidr="0.0.0.0/0")],  # not tcp
])
def test_tracked_unless_one_rule_allows_everything(ingress):
    p = sgp(sg("sg-1", ingress=ingress, egress=ALLOW_ALL_EGRESS), members={"sg-1": ["1.1.1.1"]})
    assert not p.is_untracked(TCP, K("1.1.1.1"))


# --- network ACLs -----------------------------------------------------------------------------------

def acl(*entries, aid="acl-1"):
    return NetworkAclPolicy.compile({"id": aid, "entries": list(entries)})


def acl_in(policy, proto, src, dport=0, icmp=(-1, -1), dst="10.0.1.4", sport=40000):
    return policy.evaluate(False, proto, K(src), K(dst), sport, dport, *icmp)


def acl_out(policy, proto, dst, dport=0, icmp=(-1, -1), src="10.0.1.4", sport=40000):
    return policy.evaluate(True, proto, K(src), K(dst), sport, dport, *icmp)


def test_default_acl_allows_everything_ipv4_and_a_new_acl_denies_everything():
    default = acl(entry(100, "allow"), entry(100, "allow", egress=True))
    assert acl_in(default, TCP, "1.2.3.4", 22) == Match("acl-1 ingress rule 100 allow", True)
    assert acl_out(default, UDP, "1.2.3.4", 53) == Match("acl-1 egress rule 100 allow", True)
    assert acl_in(default, TCP, "2001:db8::1", 22, dst="2001:db8::4") == Match("acl-1 ingress rule * deny", False)
    new = acl()
    assert acl_in(new, TCP, "1.2.3.4", 22) == Match("acl-1 ingress rule * deny", False)
    assert acl_out(new, ICMP, "1.2.3.4", icmp=(8, 0)) == Match("acl-1 egress rule * deny", False)


def test_acl_lowest_number_first_whatever_the_order_given():
    p = acl(entry(200, "allow"), entry(100, "deny", cidr="10.0.0.0/8"), entry(150, "allow", cidr="10.1.0.0/16"))
    assert acl_in(p, TCP, "10.1.2.3", 80) == Match("acl-1 ingress rule 100 deny", False)
    assert acl_in(p, TCP, "11.0.0.1", 80) == Match("acl-1 ingress rule 200 allow", True)


def test_acl_first_match_wins_allow_or_deny():
    deny_first = acl(entry(10, "deny", protocol="tcp", from_port=22, to_port=22), entry(20, "allow"))
    assert acl_in(deny_first, TCP, "1.1.1.1", 22) == Match("acl-1 ingress rule 10 deny", False)
    assert acl_in(deny_first, TCP, "1.1.1.1", 23) == Match("acl-1 ingress rule 20 allow", True)
    allow_first = acl(entry(10, "allow", protocol="tcp", from_port=22, to_port=22), entry(20, "deny"))
    assert acl_in(allow_first, TCP, "1.1.1.1", 22) == Match("acl-1 ingress rule 10 allow", True)
    assert acl_in(allow_first, UDP, "1.1.1.1", 22) == Match("acl-1 ingress rule 20 deny", False)


def test_acl_ingress_matches_the_source_and_egress_the_destination():
    p = acl(entry(100, "allow", cidr="192.0.2.0/24"), entry(100, "allow", cidr="198.51.100.0/24", egress=True))
    assert acl_in(p, TCP, "192.0.2.9", 80, dst="10.0.1.4").allowed
    assert not acl_in(p, TCP, "10.0.1.4", 80, dst="192.0.2.9").allowed
    assert not acl_in(p, TCP, "198.51.100.1", 80).allowed  # an egress entry never applies inbound
    assert acl_out(p, TCP, "198.51.100.1", 80, src="10.0.1.4").allowed
    assert not acl_out(p, TCP, "10.0.1.4", 80, src="198.51.100.1").allowed
    assert not acl_out(p, TCP, "192.0.2.9", 80).allowed


def test_acl_ports_match_the_destination_port():
    p = acl(entry(100, "allow", protocol="tcp", from_port=1024, to_port=65535),
            entry(100, "allow", protocol="tcp", from_port=32768, to_port=61000, egress=True))
    assert acl_in(p, TCP, "1.1.1.1", dport=1024, sport=80).allowed
    assert acl_in(p, TCP, "1.1.1.1", dport=65535, sport=80).allowed
    assert not acl_in(p, TCP, "1.1.1.1", dport=1023, sport=40000).allowed  # the source port never decides
    assert acl_out(p, TCP, "1.1.1.1", dport=32768).allowed and acl_out(p, TCP, "1.1.1.1", dport=61000).allowed
    assert not acl_out(p, TCP, "1.1.1.1", dport=32767).allowed and not acl_out(p, TCP, "1.1.1.1", dport=61001).allowed


def test_acl_port_bounds_of_minus_one_are_open_and_reversed_ranges_match_nothing():
    p = acl(entry(1, "allow", protocol="udp"), entry(2, "allow", protocol="tcp", from_port=-1, to_port=80),
            entry(3, "allow", protocol="tcp", from_port=9000, to_port=-1),
            entry(4, "allow", protocol="tcp", from_port=500, to_port=400))
    assert acl_in(p, UDP, "1.1.1.1", 0).rule == "acl-1 ingress rule 1 allow"
    assert acl_in(p, UDP, "1.1.1.1", 65535).allowed
    assert acl_in(p, TCP, "1.1.1.1", 0).rule == acl_in(p, TCP, "1.1.1.1", 80).rule == "acl-1 ingress rule 2 allow"
    assert acl_in(p, TCP, "1.1.1.1", 9000).rule == acl_in(p, TCP, "1.1.1.1", 65535).rule == "acl-1 ingress rule 3 allow"
    for port in (81, 400, 450, 500, 8999):
        assert acl_in(p, TCP, "1.1.1.1", port).rule == "acl-1 ingress rule * deny"


def test_acl_icmp_type_and_code_and_out_of_range_values():
    p = acl(entry(1, "deny", protocol="icmp", from_port=8, to_port=3), entry(2, "allow", protocol="icmp", from_port=8),
            entry(3, "allow", protocol="icmp", from_port=3, to_port=300),
            entry(4, "allow", protocol="icmp", from_port=300))
    assert acl_in(p, ICMP, "1.1.1.1", icmp=(8, 3)).rule == "acl-1 ingress rule 1 deny"
    assert acl_in(p, ICMP, "1.1.1.1", icmp=(8, 0)).rule == "acl-1 ingress rule 2 allow"
    # Codes and types above 255 exist nowhere: 3/300 must not spill into type 4 (3 << 8 | 300).
    for t, c in ((3, 44), (4, 44), (3, 255), (255, 255)):
        assert acl_in(p, ICMP, "1.1.1.1", icmp=(t, c)).rule == "acl-1 ingress rule * deny"
    assert acl_in(p, ICMPV6, "1.1.1.1", icmp=(8, 0)).rule == "acl-1 ingress rule * deny"


def test_acl_families_are_separate():
    p = acl(entry(100, "allow"), entry(101, "allow", cidr="::/0"), entry(50, "deny", cidr="2001:db8::/32"))
    assert acl_in(p, TCP, "2001:db8::1", 80, dst="2001:db8:1::4").rule == "acl-1 ingress rule 50 deny"
    assert acl_in(p, TCP, "2001:db9::1", 80, dst="2001:db8:1::4").rule == "acl-1 ingress rule 101 allow"
    assert acl_in(p, TCP, "32.1.13.184", 80).rule == "acl-1 ingress rule 100 allow"  # 0x20010db8 is IPv4 here


def test_acl_other_protocols_ignore_ports():
    p = acl(entry(100, "allow", protocol="47", from_port=5, to_port=6))
    assert acl_in(p, GRE, "1.1.1.1", 0).allowed and acl_in(p, GRE, "1.1.1.1", 999).allowed
    assert not acl_in(p, TCP, "1.1.1.1", 5).allowed


# --- both evaluators against a plain reference implementation ---------------------------------------

NUMBERS = {"-1": -1, "all": -1, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
PROTOCOLS = ["-1", "all", "tcp", "udp", "icmp", "icmpv6", "6", "17", "1", "58", "47", "0"]
PACKET_PROTOCOLS = [0, 1, 6, 17, 47, 58, 255]
ADDRESSES = ["0.0.0.0", "10.0.0.0", "10.0.0.1", "10.0.0.255", "10.0.1.0", "10.1.2.3", "9.255.255.255",
             "192.168.1.1", "255.255.255.255", "::", "::1", "::a00:1", "::ffff:10.0.0.1", "2001:db8::",
             "2001:db8::1", "2001:db8::ffff:ffff:ffff:ffff", "2001:db8:0:1::", "fd00::4",
             "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
PORTS = [0, 1, 21, 22, 23, 53, 80, 443, 1023, 1024, 32768, 61000, 65534, 65535]
ICMP_VALUES = [-1, 0, 3, 4, 8, 11, 255]
GROUPS = ["sg-a", "sg-b", "sg-c"]
WIDE = [ALL_V4, ALL_V6, rule("tcp", 0, 65535, cidr="0.0.0.0/0"), rule("udp", 0, 65535, cidr="::/0"),
        rule("tcp", 0, 65534, cidr="0.0.0.0/0"), rule("47", cidr="0.0.0.0/0"), rule("icmp", -1, -1, cidr="0.0.0.0/0")]

# Generators draw from a few shared strategies and pick from lists by index: building a new strategy
# per draw costs hypothesis a validation each time, which made these tests several times slower.
INDEX = st.integers(0, 1 << 16)
COIN = st.integers(0, 3)  # 0 one time in four
PORT = st.integers(0, 65535)


def pick(draw, items):
    return items[draw(INDEX) % len(items)]


def any_port(draw) -> int:
    return pick(draw, PORTS) if draw(COIN) else draw(PORT)


def cidr(draw) -> str:
    address = ipaddress.ip_address(pick(draw, ADDRESSES))
    top = address.max_prefixlen
    prefix = pick(draw, [0, 1, top - 1, top]) if draw(COIN) else draw(INDEX) % (top + 1)
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def protocol_ports(draw, acl_ports: bool):
    """(protocol, from_port, to_port) as the API accepts them: SgRule's checks, or AclEntry's (none:
    -1 bounds, reversed ranges and ports on other protocols all pass)."""
    protocol = pick(draw, PROTOCOLS)
    number = protocol_number(protocol)
    if number in (6, 17):
        a, b = any_port(draw), any_port(draw)
        if acl_ports:
            return protocol, (-1 if draw(COIN) == 0 else a), (-1 if draw(COIN) == 0 else b)
        return protocol, min(a, b), max(a, b)
    if number in (1, 58):
        values = ICMP_VALUES + [256, 300] if acl_ports else ICMP_VALUES  # AclEntry lets values above 255 in
        return protocol, pick(draw, values), pick(draw, values)
    if acl_ports and draw(COIN) == 0:
        return protocol, any_port(draw), any_port(draw)
    return protocol, -1, -1


def sg_rule(draw) -> dict:
    if draw(COIN) == 0:  # the rules that make flows untracked, and near misses
        return pick(draw, WIDE)
    protocol, from_port, to_port = protocol_ports(draw, acl_ports=False)
    if draw(COIN):
        return rule(protocol, from_port, to_port, cidr=cidr(draw), description=pick(draw, [None, "d"]))
    return rule(protocol, from_port, to_port, group=pick(draw, GROUPS + ["sg-z"]))


@st.composite
def sg_cases(draw):
    """Up to three groups of up to six rules per direction, members for some of the groups, 20 packets."""
    groups = [sg(g, [sg_rule(draw) for _ in range(draw(INDEX) % 7)], [sg_rule(draw) for _ in range(draw(INDEX) % 7)])
              for g in GROUPS[:draw(INDEX) % 4]]
    members = {g: [pick(draw, ADDRESSES) for _ in range(draw(INDEX) % 5)] for g in GROUPS if draw(COIN)}
    rules = [r for g in groups for r in g["ingress"] + g["egress"]]
    rnd = draw(st.randoms(use_true_random=True))
    return groups, members, [packet(rnd, rules, members) for _ in range(20)]


@st.composite
def acl_cases(draw):
    """An ACL of up to twelve entries (rule numbers unique per direction), 20 packets."""
    entries, seen = [], set()
    for _ in range(draw(INDEX) % 13):
        number = pick(draw, [1, 100, 101, 200, 32766]) if draw(COIN) else draw(INDEX) % 32766 + 1
        egress = draw(COIN) < 2
        if (number, egress) not in seen:
            seen.add((number, egress))
            protocol, from_port, to_port = protocol_ports(draw, acl_ports=True)
            action = pick(draw, ["allow", "deny"])
            entries.append(entry(number, action, cidr(draw), protocol, from_port, to_port, egress))
    rnd = draw(st.randoms(use_true_random=True))
    return {"id": "acl-r", "entries": entries}, [packet(rnd, entries) for _ in range(20)]


def near(low: int, high: int, top: int) -> list[int]:
    """The ends of [low, high] and their outside neighbours, within 0..top."""
    return [v for v in (low - 1, low, high, high + 1) if 0 <= v <= top]


def packet(rnd, rules, members=None):
    """(proto, src, dst, sport, dport, icmp type, icmp code). Three in four are aimed at one rule: its
    protocol, addresses at or just outside the ends of its CIDR (or a group member), ports and ICMP
    values at or next to its bounds; so most packets land on a rule's edge, inside or out.

    Packets come from a seeded ``random.Random`` rather than hypothesis draws: 20 packets per example
    are cheap probes, a draw each would cost more than everything else, and the rules are what is
    worth shrinking."""
    protos, addresses, port_values = PACKET_PROTOCOLS, ADDRESSES, PORTS
    if rules and rnd.randrange(4):
        r = rnd.choice(rules)
        if protocol_number(r["protocol"]) != -1:
            protos = [protocol_number(r["protocol"])]
        if r["cidr"] is not None:
            net = ipaddress.ip_network(r["cidr"])
            family = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
            ends = near(int(net.network_address), int(net.broadcast_address), (1 << net.max_prefixlen) - 1)
            addresses = [str(family(a)) for a in ends]
        elif members:  # its group's members, or any group's
            addresses = members.get(r["source_group_id"]) or [a for m in members.values() for a in m] or ADDRESSES
        port_values = [v for b in (r["from_port"], r["to_port"]) if b >= 0 for v in near(b, b, 65535)] or PORTS
    icmp_values = [v for v in port_values if v <= 255] or [0, 3, 8]

    def address():
        return rnd.choice(addresses if rnd.randrange(4) else ADDRESSES)

    def port():
        return rnd.choice(port_values) if rnd.randrange(4) else rnd.randrange(65536)

    def icmp():
        return rnd.choice(icmp_values) if rnd.randrange(4) else rnd.randrange(256)

    return rnd.choice(protos), address(), address(), port(), port(), icmp(), icmp()


def in_cidr(address: int, cidr: str) -> bool:
    """``ipaddress`` decides, by a road other than masks: mixed families are simply never ``in``."""
    return ipaddress.ip_address(text(address)) in ipaddress.ip_network(cidr)


def ports_match(number: int, from_port: int, to_port: int, port: int, icmp_type: int, icmp_code: int) -> bool:
    if number in (6, 17):
        return (from_port == -1 or from_port <= port) and (to_port == -1 or port <= to_port)
    if number in (1, 58):
        if from_port > 255 or to_port > 255:
            return False
        return from_port == -1 or (from_port == icmp_type and to_port in (-1, icmp_code))
    return True


def protocol_number(protocol: str) -> int:
    return NUMBERS[protocol] if protocol in NUMBERS else int(protocol)


def reference_sg(groups, members, outbound, proto, remote, lport, rport, icmp_type, icmp_code):
    """The first allowing rule, as "<group> <direction> #<n> ", or None: a loop over every rule."""
    direction = "egress" if outbound else "ingress"
    port = rport if outbound else lport
    for g in groups:
        for i, r in enumerate(g[direction]):
            number = protocol_number(r["protocol"])
            if number != -1 and (number != proto or
                                 not ports_match(number, r["from_port"], r["to_port"], port, icmp_type, icmp_code)):
                continue
            if r["cidr"] is not None:
                peer = in_cidr(remote, r["cidr"])
            else:
                peer = remote in [K(m) for m in members.get(r["source_group_id"], [])]
            if peer:
                return f"{g['id']} {direction} #{i + 1} "
    return None


def reference_untracked(groups, proto, remote) -> bool:
    def wide(direction):
        for g in groups:
            for r in g[direction]:
                number = protocol_number(r["protocol"])
                if r["cidr"] is None or number not in (-1, proto):
                    continue
                net = ipaddress.ip_network(r["cidr"])
                v6 = remote >= 1 << 128
                if net.prefixlen == 0 and (net.version == 6) == v6 and \
                        (number not in (6, 17) or (r["from_port"], r["to_port"]) == (0, 65535)):
                    return True
        return False
    return proto not in (1, 58) and wide("ingress") and wide("egress")


@settings(max_examples=300, deadline=None)
@given(sg_cases())
def test_security_groups_agree_with_the_reference(case):
    groups, members, pkts = case
    policy = SecurityGroupPolicy.compile(groups, members)
    for proto, _, remote, lport, rport, icmp_type, icmp_code in pkts:
        remote = K(remote)
        for outbound in (False, True):
            got = policy.evaluate(outbound, proto, remote, lport, rport, icmp_type, icmp_code)
            want = reference_sg(groups, members, outbound, proto, remote, lport, rport, icmp_type, icmp_code)
            if want is None:
                assert got is None
            else:
                assert got is not None and got.allowed and got.rule.startswith(want), (got, want)
        assert policy.is_untracked(proto, remote) == reference_untracked(groups, proto, remote)


def reference_acl(record, egress, proto, src, dst, sport, dport, icmp_type, icmp_code) -> Match:
    direction = "egress" if egress else "ingress"
    for e in sorted(record["entries"], key=lambda e: e["rule_number"]):
        number = protocol_number(e["protocol"])
        if e["egress"] != egress or number not in (-1, proto) or not in_cidr(dst if egress else src, e["cidr"]):
            continue
        if number == -1 or ports_match(number, e["from_port"], e["to_port"], dport, icmp_type, icmp_code):
            return Match(f"{record['id']} {direction} rule {e['rule_number']} {e['action']}", e["action"] == "allow")
    return Match(f"{record['id']} {direction} rule * deny", False)


@settings(max_examples=300, deadline=None)
@given(acl_cases())
def test_network_acls_agree_with_the_reference(case):
    record, pkts = case
    policy = NetworkAclPolicy.compile(record)
    for proto, src, dst, sport, dport, icmp_type, icmp_code in pkts:
        for egress in (False, True):
            args = (egress, proto, K(src), K(dst), sport, dport, icmp_type, icmp_code)
            assert policy.evaluate(*args) == reference_acl(record, *args)

"""vswitch.neighbour through LinkServices: neighbour solicitation → advertisement, DAD, router solicitation →
advertisement, RFC 4861 validity checks. Messages are built and parsed by hand from the RFC's layouts."""

from __future__ import annotations

import struct

import pytest

from test_link_services import (LEASE, LEASE4, LINK_LOCAL, MAC, OTHER_MAC, V6, check_ipv6, handled, icmp6_frame,
                                one_reply, refused, silent)
from vswitch import neighbour
from vswitch.addresses import GATEWAY_MAC
from vswitch.link_services import PASS, Lease, router_advertisement

PREFIX = "2001:db8:100:1::"
R, S, O = 0x80000000, 0x40000000, 0x20000000


def solicited_node(address) -> str:
    return str(V6("ff02::1:ff00:0") + (int(V6(address)) & 0xFFFFFF))


def ns(target, src=LINK_LOCAL, dst=None, slla: bytes | None = MAC, hop_limit: int = 255, extra: bytes = b"") -> bytes:
    options = (b"\x01\x01" + slla if slla else b"") + extra
    return icmp6_frame(135, bytes(4) + V6(target).packed + options, src=src, dst=dst or solicited_node(target),
                       hop_limit=hop_limit)


def rs(src=LINK_LOCAL, slla: bytes | None = MAC, hop_limit: int = 255, dst="ff02::2") -> bytes:
    return icmp6_frame(133, bytes(4) + (b"\x01\x01" + slla if slla else b""), src=src, dst=dst, hop_limit=hop_limit)


def options(buf: bytes) -> list[tuple[int, bytes]]:
    out = []
    while buf:
        assert buf[1] > 0
        out.append((buf[0], buf[2:buf[1] * 8]))
        buf = buf[buf[1] * 8:]
    return out


def check_na(frame: bytes, target, mac: bytes, flags: int, to=LINK_LOCAL, to_mac: bytes = MAC) -> None:
    e, ip, icmp = check_ipv6(frame, 58)
    assert (e.dst, e.src) == (to_mac, mac)
    assert (V6(ip.src), V6(ip.dst), ip.hlim) == (V6("fe80::1"), V6(to), 255)
    assert icmp[:2] == bytes((136, 0)) and struct.unpack("!I", icmp[4:8])[0] == flags
    assert V6(icmp[8:24]) == V6(target)
    assert options(icmp[24:]) == [(2, mac)]


@pytest.mark.parametrize("target,mac,flags", [
    ("fe80::1", GATEWAY_MAC, R | S | O),  # the router's link-local address: the default route's next hop
    (PREFIX + "1", GATEWAY_MAC, R | S | O),  # the subnet router
    (PREFIX, GATEWAY_MAC, R | S),  # Subnet-Router anycast: no override (RFC 4861 §7.2.7)
    (PREFIX + "9", OTHER_MAC, S | O),  # another ENI the resolver knows
    (PREFIX + "77", GATEWAY_MAC, S | O),  # an address nobody has (yet): the data path decides
    ("2001:db8:100:1:ffff:ffff:ffff:ffff", GATEWAY_MAC, S | O),
])
def test_neighbour_solicitation_is_advertised(target, mac, flags):
    check_na(one_reply(ns(target)), target, mac, flags)


def test_the_resolver_is_asked_with_tagged_ipv6_keys():
    from vswitch.link_services import LinkServices
    asked = []
    ls = LinkServices(LEASE, lambda k: asked.append(k))
    frame = ns(PREFIX + "9")
    ls.handle(frame, len(frame), 0)
    assert asked == [int(V6(PREFIX + "9")) | (1 << 128)]
    check_na(ls.replies[0], PREFIX + "9", GATEWAY_MAC, S | O)


def test_unicast_solicitations_from_the_global_address_and_without_a_mac():
    # neighbour unreachability detection: unicast to the target, often without a source link-layer option,
    # so the answer goes to the frame's source MAC
    frame = ns("fe80::1", dst="fe80::1", slla=None)
    check_na(one_reply(frame), "fe80::1", GATEWAY_MAC, R | S | O)
    frame = ns(PREFIX + "9", src=PREFIX + "4", dst=PREFIX + "9", slla=None)
    check_na(one_reply(frame), PREFIX + "9", OTHER_MAC, S | O, to=PREFIX + "4")
    # the link-layer option wins over the frame's source
    other = b"\x02\x11\x22\x33\x44\x55"
    check_na(one_reply(ns("fe80::1", slla=other)), "fe80::1", GATEWAY_MAC, R | S | O, to_mac=other)
    # unknown options are skipped
    check_na(one_reply(ns("fe80::1", extra=b"\x0e\x01" + bytes(6))), "fe80::1", GATEWAY_MAC, R | S | O)


@pytest.mark.parametrize("target,src,label", [
    (PREFIX + "4", LINK_LOCAL, "nd_unanswered"),  # its own address
    (PREFIX + "4", "::", "nd_dad_probe"),  # duplicate address detection of its own address
    (str(LINK_LOCAL), "::", "nd_dad_probe"),
    ("fe80::1", "::", "nd_dad_probe"),  # DAD is never answered, whatever the target
    ("fe80::2", LINK_LOCAL, "nd_unanswered"),  # no other node on the link
    ("2001:db8:100:2::1", LINK_LOCAL, "nd_unanswered"),  # outside the /64
    ("2001:db8::1", PREFIX + "4", "nd_unanswered"),
])
def test_neighbour_solicitations_left_unanswered(target, src, label):
    slla = None if src == "::" else MAC
    assert silent(ns(target, src=src, slla=slla)).served == {label: 1}


@pytest.mark.parametrize("frame", [
    ns("fe80::1", hop_limit=254),  # may have come through a router (RFC 4861 §7.1.1)
    ns("fe80::1", hop_limit=64),
    ns("ff02::1"),  # a multicast target
    ns(PREFIX + "4", src="::", dst="ff02::1", slla=None),  # DAD not to the solicited-node address
    ns(PREFIX + "4", src="::", slla=MAC),  # DAD with a source link-layer option
    ns("fe80::1", extra=b"\x0e\x00" + bytes(6)),  # an option of length 0
    ns("fe80::1", extra=b"\x0e\x02" + bytes(6)),  # an option past the end
    icmp6_frame(135, bytes(4) + V6("fe80::1").packed[:15], dst=solicited_node("fe80::1")),  # too short
], ids=["hop 254", "hop 64", "multicast target", "dad dst", "dad slla", "option 0", "option past", "short"])
def test_invalid_neighbour_solicitations_are_refused(frame):
    refused(frame)


def test_checksum_and_code_are_checked():
    frame = bytearray(ns("fe80::1"))
    frame[56] ^= 1  # the ICMPv6 checksum
    refused(bytes(frame))
    frame = bytearray(ns("fe80::1"))
    frame[55] = 1  # code 1, checksum fixed up: still not a valid ND message
    frame[56:58] = struct.pack("!H", (struct.unpack("!H", frame[56:58])[0] - 1) % 0xFFFF)
    refused(bytes(frame))


def check_ra(frame: bytes, to, to_mac: bytes, lease: Lease = LEASE) -> None:
    e, ip, icmp = check_ipv6(frame, 58)
    assert (e.dst, e.src) == (to_mac, GATEWAY_MAC)
    assert (V6(ip.src), V6(ip.dst), ip.hlim) == (V6("fe80::1"), V6(to), 255)
    kind, code, _, hop, flags, lifetime, reachable, retrans = struct.unpack("!BBHBBHII", icmp[:16])
    assert (kind, code, hop, lifetime, reachable, retrans) == (134, 0, 64, 1800, 0, 0)
    assert flags == 0xC0  # managed and other configuration: DHCPv6; no preference, no home agent
    opts = options(icmp[16:])
    assert [t for t, _ in opts] == [1, 5, 3]
    assert opts[0][1] == GATEWAY_MAC
    assert opts[1][1] == struct.pack("!HI", 0, lease.mtu)
    plen, pflags, valid, preferred, reserved = struct.unpack("!BBIII", opts[2][1][:14])
    assert (plen, pflags, valid, preferred, reserved) == (64, 0x80, 2592000, 604800, 0)  # on-link, not SLAAC
    assert V6(opts[2][1][14:30]) == lease.ipv6.network.network_address


def test_router_solicitation_is_answered_unicast():
    check_ra(one_reply(rs()), LINK_LOCAL, MAC)
    check_ra(one_reply(rs(slla=None)), LINK_LOCAL, MAC)  # to the frame's source MAC
    check_ra(one_reply(rs(dst="fe80::1")), LINK_LOCAL, MAC)


def test_router_solicitation_from_unspecified_is_answered_to_all_nodes():
    check_ra(one_reply(rs(src="::", slla=None)), "ff02::1", b"\x33\x33\x00\x00\x00\x01")


@pytest.mark.parametrize("frame", [rs(hop_limit=1), rs(src="::"), icmp6_frame(133, b"")],
                         ids=["hop 1", "unspecified with slla", "short"])
def test_invalid_router_solicitations_are_refused(frame):
    refused(frame)


def test_unsolicited_router_advertisement():
    check_ra(router_advertisement(LEASE), "ff02::1", b"\x33\x33\x00\x00\x00\x01")
    jumbo = Lease(**{**LEASE.__dict__, "mtu": 1500, "ipv6": "2001:db8:7::9/64"})
    check_ra(neighbour.router_advertisement(jumbo), "ff02::1", b"\x33\x33\x00\x00\x00\x01", jumbo)
    with pytest.raises(ValueError):
        router_advertisement(LEASE4)


def test_without_ipv6_neighbour_discovery_is_the_data_paths():
    assert handled(ns("fe80::1"), LEASE4)[:2] == (PASS, [])
    assert handled(rs(), LEASE4)[:2] == (PASS, [])

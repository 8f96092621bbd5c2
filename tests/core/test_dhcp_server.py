"""vswitch.dhcp_server through LinkServices: DORA, renew/rebind/init-reboot, NAK, INFORM, release, refusals.

Requests are dpkt's DHCP messages (as a client builds them); replies are parsed with dpkt and by hand
(option order, end option, padding), every field and option and both checksums checked.
"""

from __future__ import annotations

import ipaddress
import struct

import dpkt
import pytest

from test_link_services import (BROADCAST, LEASE, LEASE4, MAC, OTHER_MAC, V4, check_ipv4_udp, handled, one_reply,
                                refused, services, silent, udp4_frame)
from vswitch import dhcp_server
from vswitch.addresses import GATEWAY_MAC
from vswitch.link_services import ANSWERED, Lease

XID = 0x3903F326
PRL = bytes((1, 3, 6, 12, 15, 26, 28, 42, 51, 58, 59))  # what busybox udhcpc asks for, roughly

ESSENTIAL = {1: V4("255.255.255.0").packed, 3: V4("10.0.1.1").packed, 6: V4("10.0.0.2").packed,
             15: b"ec2.internal", 12: b"ip-10-0-1-5", 26: struct.pack("!H", 9001), 28: V4("10.0.1.255").packed,
             42: V4("169.254.169.123").packed}
LEASED = {51: struct.pack("!I", 3600), 58: struct.pack("!I", 1800), 59: struct.pack("!I", 3150)}


def request(kind: int, *, opts=(), flags: int = 0x8000, ciaddr: str = "0.0.0.0", chaddr: bytes = MAC,
            src: str = "0.0.0.0", dst: str = "255.255.255.255", dst_mac: bytes = BROADCAST, **fields) -> bytes:
    msg = dpkt.dhcp.DHCP(op=1, xid=XID, secs=3, flags=flags, ciaddr=int(V4(ciaddr)), chaddr=chaddr + bytes(10),
                         opts=[(53, bytes((kind,))), *opts], **fields)
    return udp4_frame(src, dst, 68, 67, bytes(msg), dst_mac=dst_mac)


def raw_options(frame: bytes) -> list[tuple[int, bytes]]:
    """The reply's options in order, by hand; asserts the end option and zero padding to 300 bytes."""
    msg = frame[42:]
    assert len(msg) >= 300 and msg[236:240] == b"\x63\x82\x53\x63"
    out, i = [], 240
    while msg[i] != 255:
        out.append((msg[i], msg[i + 2:i + 2 + msg[i + 1]]))
        i += 2 + msg[i + 1]
    assert msg[i + 1:] == bytes(len(msg) - i - 1)
    return out


def reply(frame: bytes, *, kind: int, broadcast: bool, to: str = "255.255.255.255", lease: Lease = LEASE):
    """Check the reply to ``frame``: addressing, BOOTP fields; return (dhcp, ordered options)."""
    out = one_reply(frame, lease)
    e, ip, udp = check_ipv4_udp(out)
    assert e.dst == (BROADCAST if broadcast else MAC)
    assert (ip.src, ip.dst, udp.sport, udp.dport) == (V4("10.0.1.1").packed, V4(to).packed, 67, 68)
    d = dpkt.dhcp.DHCP(udp.data)
    assert (d.op, d.hrd, d.hln, d.hops, d.xid, d.secs, d.siaddr, d.giaddr) == (2, 1, 6, 0, XID, 0, 0, 0)
    assert d.chaddr == MAC and d.sname == bytes(64) and d.file == bytes(128) and d.magic == 0x63825363
    opts = raw_options(out)
    assert opts == d.opts  # dpkt agrees with the hand parse
    assert opts[:2] == [(53, bytes((kind,))), (54, V4("10.0.1.1").packed)]
    assert len({code for code, _ in opts}) == len(opts)  # each option once
    return d, opts


def assert_offers_everything(opts, leased: bool = True, ntp: bool = True) -> None:
    expected = {**ESSENTIAL, **(LEASED if leased else {})}
    if not ntp:
        del expected[42]
    assert {c: v for c, v in opts[2:] if c != 61} == expected


def test_discover_offer_request_ack_broadcast():
    ls = services()
    discover = request(1, opts=[(55, PRL), (57, struct.pack("!H", 576)), (61, b"\x01" + MAC)])
    assert ls.handle(discover, len(discover), 10.0) == ANSWERED
    offer, = ls.replies
    ls.replies.clear()
    d, opts = reply(discover, kind=2, broadcast=True)
    assert one_reply(discover) == offer  # stateless: the same request, the same answer
    assert (d.yiaddr, d.ciaddr, d.flags) == (int(V4("10.0.1.5")), 0, 0x8000)
    assert_offers_everything(opts)
    assert [c for c, _ in opts] == [53, 54, 51, 58, 59, 1, 3, 6, 12, 15, 26, 28, 42, 61]  # the list's order
    assert dict(opts)[61] == b"\x01" + MAC  # RFC 6842 echo
    assert ls.leased_at is None  # an offer is not a lease

    req = request(3, opts=[(50, V4("10.0.1.5").packed), (54, V4("10.0.1.1").packed), (55, PRL),
                           (61, b"\x01" + MAC)])
    assert ls.handle(req, len(req), 11.5) == ANSWERED and ls.leased_at == 11.5
    d, opts = reply(req, kind=5, broadcast=True)
    assert (d.yiaddr, d.ciaddr, d.flags) == (int(V4("10.0.1.5")), 0, 0x8000)
    assert_offers_everything(opts)
    assert ls.served == {"dhcp_offer": 1, "dhcp_ack": 1}


def test_dora_without_the_broadcast_flag_is_still_broadcast_until_the_client_has_an_address():
    # RFC 2131 §4.1 would allow unicast to yiaddr, but a client without an address reads raw frames anyway,
    # and broadcast reaches every client whatever its kernel does with unicast to an unconfigured address
    d, opts = reply(request(1, flags=0), kind=2, broadcast=True)
    assert d.flags == 0 and d.yiaddr == int(V4("10.0.1.5"))
    assert [c for c, _ in opts] == [53, 54, 51, 58, 59, 1, 3, 6, 15, 12, 26, 28, 42]  # no list: our order
    d, _ = reply(request(3, flags=0, opts=[(50, V4("10.0.1.5").packed), (54, V4("10.0.1.1").packed)]),
                 kind=5, broadcast=True)
    assert d.yiaddr == int(V4("10.0.1.5"))


def test_renewing_is_unicast_to_ciaddr():
    renew = request(3, flags=0, ciaddr="10.0.1.5", src="10.0.1.5", dst="10.0.1.1", dst_mac=GATEWAY_MAC)
    ls = services()
    assert ls.handle(renew, len(renew), 1800.0) == ANSWERED and ls.leased_at == 1800.0
    d, opts = reply(renew, kind=5, broadcast=False, to="10.0.1.5")
    assert (d.yiaddr, d.ciaddr, d.flags) == (int(V4("10.0.1.5")), int(V4("10.0.1.5")), 0)
    assert_offers_everything(opts)


def test_rebinding_is_answered_to_ciaddr_and_the_broadcast_flag_wins():
    rebind = request(3, flags=0, ciaddr="10.0.1.5", src="10.0.1.5")
    d, _ = reply(rebind, kind=5, broadcast=False, to="10.0.1.5")
    assert d.ciaddr == int(V4("10.0.1.5"))
    d, _ = reply(request(3, ciaddr="10.0.1.5", src="10.0.1.5"), kind=5, broadcast=True)
    assert d.flags == 0x8000


def test_init_reboot_for_the_lease_is_acked_and_for_another_address_naked():
    d, opts = reply(request(3, opts=[(50, V4("10.0.1.5").packed)]), kind=5, broadcast=True)
    assert d.yiaddr == int(V4("10.0.1.5"))
    assert_offers_everything(opts)
    ls = services()
    nak = request(3, flags=0, opts=[(50, V4("192.168.1.20").packed), (61, b"\x01" + MAC), (55, PRL)])
    assert ls.handle(nak, len(nak), 5.0) == ANSWERED and ls.leased_at is None and ls.served == {"dhcp_nak": 1}
    d, opts = reply(nak, kind=6, broadcast=True)  # a NAK is always broadcast (§4.1)
    assert (d.yiaddr, d.ciaddr) == (0, 0)
    assert [c for c, _ in opts] == [53, 54, 56, 61]  # RFC 2131 table 3: nothing about a lease
    assert dict(opts)[61] == b"\x01" + MAC


def test_renewing_another_address_and_selecting_a_wrong_one_are_naked():
    renew = request(3, flags=0, ciaddr="10.0.1.6", src="10.0.1.6", dst="10.0.1.1", dst_mac=GATEWAY_MAC)
    d, _ = reply(renew, kind=6, broadcast=True)
    assert d.ciaddr == 0 and d.yiaddr == 0
    reply(request(3, opts=[(50, V4("10.0.1.6").packed), (54, V4("10.0.1.1").packed)]), kind=6, broadcast=True)


def test_selecting_another_servers_offer_gets_no_answer():
    ls = silent(request(3, opts=[(50, V4("10.0.1.5").packed), (54, V4("10.0.1.2").packed)]))
    assert ls.served == {"dhcp_other_server": 1} and ls.leased_at is None


def test_inform_gets_options_without_an_address_or_lease():
    inform = request(8, flags=0, ciaddr="10.0.1.5", src="10.0.1.5", opts=[(55, bytes((6, 15, 1)))])
    d, opts = reply(inform, kind=5, broadcast=False, to="10.0.1.5")
    assert (d.yiaddr, d.ciaddr) == (0, int(V4("10.0.1.5")))
    assert [c for c, _ in opts][2:5] == [6, 15, 1]
    assert_offers_everything(opts, leased=False)
    ls = services()
    ls.handle(inform, len(inform), 3.0)
    assert ls.leased_at is None and ls.served == {"dhcp_inform": 1}


def test_release_and_decline_are_answered_silently():
    release = request(7, flags=0, ciaddr="10.0.1.5", src="10.0.1.5", dst="10.0.1.1", dst_mac=GATEWAY_MAC,
                      opts=[(54, V4("10.0.1.1").packed)])
    assert silent(release).served == {"dhcp_release": 1}
    decline = request(4, opts=[(50, V4("10.0.1.5").packed), (54, V4("10.0.1.1").packed)])
    assert silent(decline).served == {"dhcp_decline": 1}


def test_leases_without_optional_values_leave_their_options_out():
    bare = Lease(MAC, "10.0.1.5/24", "10.0.1.1", (), "", (), "", lease_time=600, mtu=1500)
    _, opts = reply(request(1), kind=2, broadcast=True, lease=bare)
    assert dict(opts) == {53: b"\x02", 54: V4("10.0.1.1").packed, 51: struct.pack("!I", 600),
                          58: struct.pack("!I", 300), 59: struct.pack("!I", 525), 1: V4("255.255.255.0").packed,
                          3: V4("10.0.1.1").packed, 26: struct.pack("!H", 1500), 28: V4("10.0.1.255").packed}
    _, opts = reply(request(1), kind=2, broadcast=True, lease=LEASE4)
    assert_offers_everything(opts, ntp=False)


def test_many_dns_servers_are_split_into_several_options():
    many = tuple(V4("10.0.0.0") + i for i in range(70))  # 280 bytes: over one option's 255
    lease = Lease(**{**LEASE.__dict__, "dns_servers": many})
    out = one_reply(request(1), lease)
    codes = [c for c, _ in raw_options(out)]
    assert codes.count(6) == 2
    assert dhcp_server.parse_options(out[42 + 240:])[6] == b"".join(a.packed for a in many)  # RFC 3396
    assert dhcp_server.option(6, b"") == b"\x06\x00"


def test_pad_options_are_skipped():
    padded = DISCOVER[42:42 + 240] + b"\x00\x00\x35\x01\x01\x00\x37\x01\x0f\xff" + bytes(50)
    _, opts = reply(udp4_frame("0.0.0.0", "255.255.255.255", 68, 67, padded), kind=2, broadcast=True)
    assert [c for c, _ in opts][5] == 15


def test_options_concatenated_by_the_client_are_joined():
    d, opts = reply(request(1, opts=[(55, bytes((15,))), (55, bytes((6,)))]), kind=2, broadcast=True)
    assert [c for c, _ in opts][5:7] == [15, 6]


def _patched(frame: bytes, at: int, data: bytes) -> bytes:
    """``frame`` with the DHCP message's bytes at ``at`` replaced, the UDP checksum cleared (optional)."""
    msg = bytearray(frame[42:])
    msg[at:at + len(data)] = data
    return udp4_frame("0.0.0.0", "255.255.255.255", 68, 67, bytes(msg))


DISCOVER = request(1)


@pytest.mark.parametrize("frame", [
    request(1, chaddr=OTHER_MAC),  # another VM's MAC: spoofing
    _patched(DISCOVER, 0, b"\x02"),  # a BOOTREPLY
    _patched(DISCOVER, 1, b"\x06"),  # htype IEEE 802
    _patched(DISCOVER, 2, b"\x10"),  # hlen 16
    _patched(DISCOVER, 24, V4("10.0.1.200").packed),  # giaddr: relayed
    _patched(DISCOVER, 236, b"\x63\x82\x53\x00"),  # no magic cookie
    udp4_frame("0.0.0.0", "255.255.255.255", 68, 67, DISCOVER[42:42 + 239]),  # cut inside the cookie
    udp4_frame("0.0.0.0", "255.255.255.255", 68, 67, DISCOVER[42:42 + 240] + b"\xff"),  # no message type
    udp4_frame("0.0.0.0", "255.255.255.255", 68, 67, DISCOVER[42:-1]),  # no end option
    udp4_frame("0.0.0.0", "255.255.255.255", 68, 67, DISCOVER[42:42 + 240] + b"\x35\x05\x01"),  # truncated
    request(2), request(5), request(6), request(13),  # server messages, leasequery
    request(1, opts=[(53, b"\x01")]),  # message type twice: concatenated to two bytes
    request(3, flags=0),  # a REQUEST naming no address at all
    request(3, opts=[(50, b"\x0a\x00\x01")]),  # requested address of 3 bytes
    request(3, opts=[(50, V4("10.0.1.5").packed), (54, b"\x0a")]),  # server identifier of 1 byte
], ids=["spoofed chaddr", "bootreply", "htype", "hlen", "giaddr", "cookie", "short", "no type", "no end",
        "truncated", "offer", "ack", "nak", "leasequery", "two types", "no address", "bad 50", "bad 54"])
def test_malformed_dhcp_is_refused(frame):
    refused(frame)


def test_broken_ip_under_dhcp_is_refused():
    frame = bytearray(DISCOVER)
    frame[24] ^= 0xFF  # IPv4 header checksum
    refused(bytes(frame))
    refused(udp4_frame("0.0.0.0", "255.255.255.255", 68, 67, DISCOVER[42:], more_fragments=True))
    refused(DISCOVER[:14 + 16 + 30])  # IPv4 total length past the end of the frame


def test_dhcp_recognised_by_ports_whatever_the_destination():
    d, _ = reply(udp4_frame("0.0.0.0", "10.0.1.1", 68, 67, DISCOVER[42:], dst_mac=GATEWAY_MAC), kind=2,
                 broadcast=True)
    assert d.yiaddr == int(V4("10.0.1.5"))
    # other ports are the data path's, including a server's reply sent by an instance
    for sport, dport in ((67, 68), (68, 68), (67, 67), (1068, 67)):
        assert handled(udp4_frame("10.0.1.5", "255.255.255.255", sport, dport, DISCOVER[42:]))[0] == 0


def test_udp_checksum_of_the_request_is_not_checked():
    # a virtio NIC with checksum offload hands over a partial checksum: DHCP still works
    frame = bytearray(DISCOVER)
    frame[40:42] = b"\x12\x34"
    assert len(one_reply(bytes(frame))) > 300


def test_replies_match_an_independent_build():
    """The OFFER, byte for byte, against one dpkt builds from the same fields (options in our order)."""
    out = one_reply(request(1, opts=[(55, PRL)]))
    d = dpkt.dhcp.DHCP(udp_data := out[42:])
    expect = dpkt.dhcp.DHCP(op=2, xid=XID, flags=0x8000, yiaddr=int(V4("10.0.1.5")), chaddr=MAC + bytes(10),
                            opts=d.opts)
    built = bytes(expect)
    assert udp_data == built + bytes(max(0, 300 - len(built)))
    ip = dpkt.ip.IP(src=V4("10.0.1.1").packed, dst=V4("255.255.255.255").packed, p=17, ttl=64, df=1,
                    data=dpkt.udp.UDP(sport=67, dport=68, ulen=8 + len(udp_data), data=udp_data))
    assert out == BROADCAST + GATEWAY_MAC + b"\x08\x00" + bytes(ip)
    assert [c for c, _ in d.opts] == [53, 54, 51, 58, 59, 1, 3, 6, 12, 15, 26, 28, 42]
    assert ipaddress.IPv4Address(d.yiaddr) == V4("10.0.1.5")

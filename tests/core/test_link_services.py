"""vswitch.link_services: what a host answers itself on a TAP ENI — dispatch, ARP, link chatter, fuzzing.

DHCPv4, neighbour discovery and DHCPv6 have their own modules (test_dhcp_server, test_neighbour,
test_dhcpv6_server), which import the lease and the frame builders below. Requests are built as a client
would (dpkt, or struct by hand from the RFCs), replies are parsed with dpkt or by hand and their checksums
checked with a deliberately naive one's-complement sum, not with the code under test.
"""

from __future__ import annotations

import ipaddress
import struct

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import imported_modules
from vswitch import addresses, arp, dhcp_server, dhcpv6_server, ethernet, headers, link_services, neighbour
from vswitch.addresses import GATEWAY_MAC, V6_TAG
from vswitch.drops import Drop
from vswitch.link_services import ANSWERED, DROPPED, PASS, Lease, LinkServices

V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address
BROADCAST = b"\xff" * 6
MAC = addresses.eni_mac(0xABC)  # 02:00:00:00:0a:bc
OTHER_MAC = addresses.eni_mac(0xDEF)  # another ENI of the VPC, on some host
LINK_LOCAL = V6("fe80::ff:fe00:abc")  # the instance's own link-local address (whatever it chose)
LEASE = Lease(mac=MAC, ipv4=ipaddress.IPv4Interface("10.0.1.5/24"), router=V4("10.0.1.1"),
              dns_servers=(V4("10.0.0.2"),), domain_name="ec2.internal", ntp_servers=(V4("169.254.169.123"),),
              hostname="ip-10-0-1-5", ipv6=ipaddress.IPv6Interface("2001:db8:100:1::4/64"))
LEASE4 = Lease(mac=MAC, ipv4=ipaddress.IPv4Interface("10.0.1.5/24"), router=V4("10.0.1.1"),
               dns_servers=(V4("10.0.0.2"),), domain_name="ec2.internal", ntp_servers=(), hostname="ip-10-0-1-5")
KNOWN = {int(V4("10.0.1.9")): OTHER_MAC, int(V6("2001:db8:100:1::9")) | V6_TAG: OTHER_MAC}
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def services(lease: Lease = LEASE) -> LinkServices:
    return LinkServices(lease, KNOWN.get)


def handled(frame: bytes, lease: Lease = LEASE, now: float = 100.0) -> tuple[int, list[bytes], LinkServices]:
    ls = services(lease)
    verdict = ls.handle(bytearray(frame), len(frame), now)  # a reused receive buffer, as the agent has
    return verdict, ls.replies, ls


def refused(frame: bytes, lease: Lease = LEASE) -> None:
    verdict, replies, ls = handled(frame, lease)
    assert (verdict, replies, ls.last_drop) == (DROPPED, [], Drop.LINK_REFUSED)
    assert ls.drops[Drop.LINK_REFUSED] == 1 and sum(ls.drops) == 1


def one_reply(frame: bytes, lease: Lease = LEASE) -> bytes:
    verdict, replies, ls = handled(frame, lease)
    assert verdict == ANSWERED and ls.last_drop is None and len(replies) == 1
    return replies[0]


def silent(frame: bytes, lease: Lease = LEASE) -> LinkServices:
    verdict, replies, ls = handled(frame, lease)
    assert (verdict, replies, ls.last_drop) == (ANSWERED, [], None)
    return ls


# --- frames a client sends ---------------------------------------------------------------------------

def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def arp_frame(op: int = 1, target: str = "10.0.1.1", sender: str = "10.0.1.5", sha: bytes = MAC,
              dst_mac: bytes = BROADCAST, **kw) -> bytes:
    a = dpkt.arp.ARP(op=op, sha=sha, spa=V4(sender).packed, tha=bytes(6), tpa=V4(target).packed, **kw)
    return eth(dst_mac, sha, 0x0806, bytes(a))


def udp4_frame(src: str, dst: str, sport: int, dport: int, payload: bytes, dst_mac: bytes = BROADCAST,
               src_mac: bytes = MAC, **ip) -> bytes:
    return eth(dst_mac, src_mac, 0x0800, headers.ipv4_packet(src, dst, headers.UDP(sport, dport, payload), **ip))


def icmp6_frame(icmp_type: int, body: bytes, src=LINK_LOCAL, dst="ff02::2", dst_mac: bytes | None = None,
                hop_limit: int = 255, src_mac: bytes = MAC) -> bytes:
    dst = V6(dst)
    packet = headers.ipv6_packet(str(src), str(dst), headers.ICMP(icmp_type, 0, body), hop_limit=hop_limit)
    return eth(dst_mac or ethernet.multicast_mac(dst) if dst.is_multicast else dst_mac or GATEWAY_MAC,
               src_mac, 0x86DD, packet)


def udp6_frame(src, dst, sport: int, dport: int, payload: bytes, src_mac: bytes = MAC) -> bytes:
    packet = headers.ipv6_packet(str(src), str(dst), headers.UDP(sport, dport, payload), hop_limit=1)
    return eth(ethernet.multicast_mac(V6(dst)), src_mac, 0x86DD, packet)


# --- checking replies --------------------------------------------------------------------------------

def ones_sum_ok(data: bytes) -> bool:
    """A naive RFC 1071 check: the 16-bit one's-complement sum over data with its checksum is 0xffff."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def check_ipv4_udp(frame: bytes) -> tuple[dpkt.ethernet.Ethernet, dpkt.ip.IP, dpkt.udp.UDP]:
    e = dpkt.ethernet.Ethernet(frame)
    assert e.type == 0x0800 and e.src == GATEWAY_MAC
    ip = e.data
    assert isinstance(ip, dpkt.ip.IP) and ip.v == 4 and ip.hl == 5 and ip.len == len(frame) - 14
    assert ip.p == 17 and ip.ttl > 0 and not ip.mf and ip.offset == 0  # no fragment
    assert ones_sum_ok(frame[14:34])
    udp = ip.data
    assert udp.ulen == ip.len - 20
    assert udp.sum != 0 and ones_sum_ok(ip.src + ip.dst + struct.pack("!BBH", 0, 17, udp.ulen) + frame[34:])
    return e, ip, udp


def check_ipv6(frame: bytes, next_header: int) -> tuple[dpkt.ethernet.Ethernet, dpkt.ip6.IP6, bytes]:
    """Ethernet, IPv6 and the upper-layer bytes of a reply, its checksum verified over the pseudo-header."""
    e = dpkt.ethernet.Ethernet(frame)
    assert e.type == 0x86DD and e.src in (GATEWAY_MAC, OTHER_MAC)
    ip = e.data
    assert isinstance(ip, dpkt.ip6.IP6) and ip.v == 6 and ip.nxt == next_header and ip.plen == len(frame) - 54
    upper = frame[54:]
    assert ones_sum_ok(ip.src + ip.dst + struct.pack("!IxxxB", len(upper), next_header) + upper)
    if ip.dst[0] == 0xFF:
        assert e.dst == b"\x33\x33" + ip.dst[12:]
    return e, ip, upper


# --- the pure core -----------------------------------------------------------------------------------

def test_pure_cores_import_no_io():
    for module in (ethernet, arp, dhcp_server, neighbour, dhcpv6_server, link_services):
        assert not imported_modules(module) & {"asyncio", "socket", "fcntl", "os", "time", "select", "logging",
                                               "structlog"}, module.__name__


def test_lease_converts_text_and_refuses_nonsense():
    lease = Lease(MAC, "10.0.1.5/24", "10.0.1.1", ["10.0.0.2"], "ec2.internal", [], "h", ipv6="2001:db8::4/64",
                  dns_servers6=["fd00:ec2::253"])
    assert lease.ipv4 == ipaddress.IPv4Interface("10.0.1.5/24") and lease.router == V4("10.0.1.1")
    assert lease.dns_servers == (V4("10.0.0.2"),) and lease.ntp_servers == ()
    assert lease.ipv6 == ipaddress.IPv6Interface("2001:db8::4/64") and lease.dns_servers6 == (V6("fd00:ec2::253"),)
    assert LEASE.lease_time == 3600 and LEASE.mtu == 9001 and LEASE.dns_servers6 == (V6("fd00:ec2::253"),)
    assert LEASE4.ipv6 is None
    for bad in ({"mac": b"\x01" * 6}, {"mac": b"\x02" * 5}, {"mtu": 100}, {"lease_time": 0}):
        with pytest.raises(ValueError):
            Lease(**{**LEASE.__dict__, **bad})


# --- dispatch ----------------------------------------------------------------------------------------

def test_ip_packets_pass_to_the_data_path():
    tcp = eth(GATEWAY_MAC, MAC, 0x0800, headers.ipv4_packet("10.0.1.5", "10.0.2.7", headers.TCP(1234, 80)))
    udp = udp4_frame("10.0.1.5", "10.0.0.2", 5353, 53, b"query", dst_mac=GATEWAY_MAC)
    udp6 = udp6_frame("2001:db8:100:1::4", "2001:db8:100:2::7", 5000, 53, b"x")
    echo6 = icmp6_frame(128, b"\x00\x01\x00\x01", src="2001:db8:100:1::4", dst="2001:db8:100:2::7", hop_limit=64)
    short_ip = eth(GATEWAY_MAC, MAC, 0x0800, b"\x45")  # the data path counts malformed IP packets itself
    spoofed_mac = eth(GATEWAY_MAC, OTHER_MAC, 0x0800, headers.ipv4_packet("10.0.1.5", "10.0.2.7", headers.TCP(1, 2)))
    for frame in (tcp, udp, udp6, echo6, short_ip, spoofed_mac):
        verdict, replies, ls = handled(frame)
        assert (verdict, replies, ls.last_drop, sum(ls.drops), ls.served) == (PASS, [], None, 0, {})


def test_ipv6_passes_untouched_when_the_lease_has_none():
    for frame in (icmp6_frame(133, bytes(4)), udp6_frame(LINK_LOCAL, "ff02::1:2", 546, 547, b"\x01abc"),
                  icmp6_frame(143, bytes(4), dst="ff02::16", hop_limit=1)):
        assert handled(frame, LEASE4)[:2] == (PASS, [])


@pytest.mark.parametrize("frame", [
    b"", b"\xff" * 13,
    eth(BROADCAST, MAC, 0x8100, b"\x00\x05\x08\x06" + arp_frame()[14:]),  # 802.1Q-tagged ARP
    eth(BROADCAST, MAC, 0x88A8, b"\x00\x05\x81\x00\x00\x05\x08\x00" + bytes(40)),  # 802.1ad
    eth(b"\x01\x80\xc2\x00\x00\x0e", MAC, 0x88CC, bytes(40)),  # LLDP
    eth(b"\x01\x80\xc2\x00\x00\x00", MAC, 38, b"\x42\x42\x03" + bytes(35)),  # 802.3 length + LLC (STP)
    eth(BROADCAST, MAC, 0x8035, bytes(28)),  # RARP
], ids=["empty", "13 bytes", "802.1Q", "802.1ad", "LLDP", "802.3 STP", "RARP"])
def test_frames_the_host_does_not_serve_are_refused(frame):
    refused(frame)


def test_drops_accumulate_and_replies_wait_for_the_caller():
    ls = services()
    for _ in range(3):
        assert ls.handle(b"\x00" * 12 + b"\x81\x00" + bytes(46), 60, 1.0) == DROPPED
    assert ls.drops[Drop.LINK_REFUSED] == 3 and ls.last_drop is Drop.LINK_REFUSED
    frame = arp_frame()
    buf = bytearray(frame + b"\xee" * 100)  # a receive buffer bigger than the frame: only n bytes count
    assert ls.handle(buf, len(frame), 2.0) == ANSWERED and ls.handle(memoryview(buf), len(frame), 2.0) == ANSWERED
    assert len(ls.replies) == 2 and ls.replies[0] == ls.replies[1] and ls.served == {"arp_reply": 2}


def test_link_chatter_is_answered_silently():
    mld2 = (b"\x3a\x00\x05\x02\x00\x00\x01\x00", 143)  # hop-by-hop header: Router Alert (MLD), then ICMPv6
    report = bytes((143, 0, 0, 0)) + struct.pack("!HH", 0, 1) + bytes((4, 0, 0, 0)) + V6("ff02::fb").packed
    hbh = mld2[0] + report
    ip = headers.IPv6(V6("::"), V6("ff02::16"), 0, hbh, hop_limit=1).emit()
    icmp_off = 40 + 8  # patch in a correct ICMPv6 checksum over the report
    body = bytearray(ip)
    csum = headers.checksum(report, headers.pseudo_header_sum(V6("::").packed, V6("ff02::16").packed, 58,
                                                              len(report)))
    body[icmp_off + 2:icmp_off + 4] = struct.pack("!H", csum)
    ls = silent(eth(b"\x33\x33\x00\x00\x00\x16", MAC, 0x86DD, bytes(body)))
    assert ls.served == {"icmpv6_chatter": 1}
    unsolicited_na = icmp6_frame(136, struct.pack("!I", 0x20000000) + LEASE.ipv6.ip.packed, dst="ff02::1")
    own_ra = icmp6_frame(134, bytes(12), dst="ff02::1")
    echo_all_nodes = icmp6_frame(128, bytes(4), dst="ff02::1", hop_limit=64)
    for frame in (unsolicited_na, own_ra, echo_all_nodes):
        silent(frame)
    igmp = eth(b"\x01\x00\x5e\x00\x00\x16", MAC, 0x0800, headers.ipv4_packet(
        "10.0.1.5", "224.0.0.22", bytes((0x22, 0, 0, 0, 0, 0, 0, 0)), proto=2, ttl=1))
    assert silent(igmp).served == {"igmp_chatter": 1}


def test_broken_ipv6_extension_headers_are_the_data_paths():
    ns = struct.pack("!I", 0) + V6("fe80::1").packed
    icmp = headers.ICMP(135, 0, ns).emit((LINK_LOCAL.packed, V6("ff02::1:ff00:1").packed))
    past_end = b"\x3a\x05" + bytes(6) + icmp  # claims 48 bytes of options
    endless = b"\x3c\x00" + bytes(6)  # destination options, nine times over: past the walk's bound
    for payload in (past_end, endless * 9 + icmp):
        packet = headers.IPv6(LINK_LOCAL, V6("ff02::1:ff00:1"), 60, payload, hop_limit=255).emit()
        frame = eth(b"\x33\x33\xff\x00\x00\x01", MAC, 0x86DD, packet)
        assert handled(frame)[:2] == (PASS, [])
    packet = headers.IPv6(LINK_LOCAL, V6("ff02::1:ff00:1"), 60, b"\x3a\x00" + bytes(6) + icmp, hop_limit=255).emit()
    check = one_reply(eth(b"\x33\x33\xff\x00\x00\x01", MAC, 0x86DD, packet))  # one header is fine
    assert dpkt.ethernet.Ethernet(check).data.data.type == 136


def test_update_changes_the_answers():
    ls = services()
    frame = arp_frame(target="10.0.9.1", sender="10.0.9.5")
    assert ls.handle(frame, len(frame), 0) == ANSWERED and ls.replies == []
    ls.update(Lease(**{**LEASE.__dict__, "ipv4": ipaddress.IPv4Interface("10.0.9.5/24"), "router": V4("10.0.9.1")}))
    assert ls.handle(frame, len(frame), 0) == ANSWERED and len(ls.replies) == 1


# --- ARP ---------------------------------------------------------------------------------------------

def check_arp_reply(reply: bytes, target: str, mac: bytes, request_sender: str = "10.0.1.5") -> None:
    assert len(reply) == 60 and reply[42:] == bytes(18)  # padded to the minimum frame
    e = dpkt.ethernet.Ethernet(reply)
    assert (e.dst, e.src, e.type) == (MAC, mac, 0x0806)
    a = e.data
    assert (a.hrd, a.pro, a.hln, a.pln, a.op) == (1, 0x0800, 6, 4, 2)
    assert (a.sha, a.spa, a.tha, a.tpa) == (mac, V4(target).packed, MAC, V4(request_sender).packed)


def test_arp_for_the_router_gets_the_gateway_mac():
    check_arp_reply(one_reply(arp_frame(target="10.0.1.1")), "10.0.1.1", GATEWAY_MAC)
    # unicast (the kernel re-checks a stale entry by asking the MAC it has), same answer
    check_arp_reply(one_reply(arp_frame(target="10.0.1.1", dst_mac=GATEWAY_MAC)), "10.0.1.1", GATEWAY_MAC)


def test_arp_for_another_eni_gets_its_mac_and_unknown_subnet_addresses_the_gateway():
    asked = []
    ls = LinkServices(LEASE, lambda k: asked.append(k) or KNOWN.get(k))
    for target, mac in (("10.0.1.9", OTHER_MAC), ("10.0.1.77", GATEWAY_MAC), ("10.0.1.2", GATEWAY_MAC),
                        ("10.0.1.254", GATEWAY_MAC)):
        frame = arp_frame(target=target)
        assert ls.handle(frame, len(frame), 0) == ANSWERED
        check_arp_reply(ls.replies.pop(), target, mac)
    assert asked == [int(V4(a)) for a in ("10.0.1.9", "10.0.1.77", "10.0.1.2", "10.0.1.254")]
    # without a resolver every subnet address is the gateway's
    plain = LinkServices(LEASE)
    frame = arp_frame(target="10.0.1.9")
    plain.handle(frame, len(frame), 0)
    check_arp_reply(plain.replies[0], "10.0.1.9", GATEWAY_MAC)
    # an RFC 5227 probe for another address (sender 0.0.0.0) is answered: that address is taken
    probe = one_reply(arp_frame(target="10.0.1.9", sender="0.0.0.0"))
    check_arp_reply(probe, "10.0.1.9", OTHER_MAC, request_sender="0.0.0.0")


@pytest.mark.parametrize("target,sender,label", [
    ("10.0.1.5", "0.0.0.0", "arp_unanswered"),  # RFC 5227 probe for its own address: silence means free
    ("10.0.1.5", "10.0.1.5", "arp_announcement"),  # gratuitous ARP
    ("10.0.1.9", "10.0.1.9", "arp_announcement"),  # announcing someone else's address: not answered either
    ("10.0.2.1", "10.0.1.5", "arp_unanswered"),  # outside the subnet
    ("8.8.8.8", "10.0.1.5", "arp_unanswered"),
    ("10.0.1.0", "10.0.1.5", "arp_unanswered"),  # the subnet's network and broadcast addresses
    ("10.0.1.255", "10.0.1.5", "arp_unanswered"),
])
def test_arp_left_unanswered(target, sender, label):
    assert silent(arp_frame(target=target, sender=sender)).served == {label: 1}


def test_arp_replies_from_the_instance_are_ignored():
    assert silent(arp_frame(op=2, target="10.0.1.1", dst_mac=GATEWAY_MAC)).served == {"arp_reply_ignored": 1}
    assert silent(arp_frame(op=2, target="10.0.1.5", sender="10.0.1.5")).served == {"arp_reply_ignored": 1}


@pytest.mark.parametrize("frame", [
    arp_frame(hrd=6),  # IEEE 802 hardware
    arp_frame(pro=0x86DD),
    arp_frame()[:14 + 27],  # one byte short
    arp_frame(op=3),  # RARP request
    arp_frame(op=8),  # InARP
    arp_frame(sha=b"\x01\x00\x5e\x00\x00\x01"),  # a multicast sender
    arp_frame()[:16] + b"\x08\x04" + arp_frame()[18:],  # hardware length 8
    arp_frame()[:16] + b"\x06\x10" + arp_frame()[18:],  # protocol length 16
], ids=["htype", "ptype", "short", "rarp", "inarp", "multicast sender", "hlen", "plen"])
def test_malformed_arp_is_refused(frame):
    refused(frame)


def test_arp_frames_padded_by_a_nic_are_served():
    check_arp_reply(one_reply(ethernet.pad(arp_frame())), "10.0.1.1", GATEWAY_MAC)


# --- fuzzing: no bytes make handle raise -------------------------------------------------------------

def _valid_frames() -> list[bytes]:
    dhcp = dpkt.dhcp.DHCP(op=1, xid=9, chaddr=MAC + bytes(10), opts=[(53, b"\x03"), (50, V4("10.0.1.5").packed),
                                                                       (54, V4("10.0.1.1").packed)])
    ns = struct.pack("!I", 0) + V6("fe80::1").packed + b"\x01\x01" + MAC
    solicit = b"\x01\x00\x00\x07" + dhcpv6_server.option(1, b"\x00\x03\x00\x01" + MAC) + dhcpv6_server.option(
        3, struct.pack("!III", 1, 0, 0)) + dhcpv6_server.option(14, b"")
    return [
        arp_frame(), arp_frame(target="10.0.1.9"),
        udp4_frame("0.0.0.0", "255.255.255.255", 68, 67, bytes(dhcp)),
        icmp6_frame(135, ns, dst="ff02::1:ff00:1"),
        icmp6_frame(133, bytes(4) + b"\x01\x01" + MAC),
        udp6_frame(LINK_LOCAL, "ff02::1:2", 546, 547, solicit),
    ]


VALID = _valid_frames()


def _check_never_raises(frame: bytes) -> None:
    for lease in (LEASE, LEASE4):
        ls = services(lease)
        verdict = ls.handle(frame, len(frame), 0.0)
        assert verdict in (PASS, ANSWERED, DROPPED)
        if verdict == DROPPED:
            assert ls.last_drop is Drop.LINK_REFUSED and ls.drops[Drop.LINK_REFUSED] == 1 and not ls.replies
        else:
            assert ls.last_drop is None and sum(ls.drops) == 0
        if verdict == PASS:
            assert not ls.replies and frame[12:14] in (b"\x08\x00", b"\x86\xdd")
        for reply in ls.replies:
            assert dpkt.ethernet.Ethernet(reply).src in (GATEWAY_MAC, OTHER_MAC) and len(reply) >= 42


@FAST
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(frame):
    _check_never_raises(frame)


@FAST
@given(st.sampled_from([b"\x08\x06", b"\x08\x00", b"\x86\xdd"]), st.binary(max_size=300))
def test_arbitrary_payloads_of_served_ethertypes_never_raise(ethertype, payload):
    _check_never_raises(BROADCAST + MAC + ethertype + payload)


@FAST
@given(st.sampled_from(VALID), st.data())
def test_mutated_valid_frames_never_raise(frame, data):
    frame = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(14, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame) + 8))
    frame = bytes(frame[:cut]) + (b"\x00" * (cut - len(frame)) if cut > len(frame) else b"")
    _check_never_raises(frame)


def test_the_valid_frames_are_served():
    for frame in VALID:
        assert len(one_reply(frame)) >= 60

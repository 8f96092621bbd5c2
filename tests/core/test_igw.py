"""vswitch.igw: 1:1 NAT at the edge, checksums kept valid, PMTU's ICMP, errors translated back."""

import ipaddress
import struct

from hypothesis import given, settings, strategies as st

from vswitch.drops import Drop
from vswitch.headers import ICMP, TCP, UDP, checksum, ipv4_packet, pseudo_header_sum
from vswitch.igw import InternetGateway, frag_needed

PRIVATE, PUBLIC, REMOTE, HOST = "10.0.1.10", "198.51.100.7", "203.0.113.10", "198.18.0.12"
ENI = "eni-00000000000000b1"


def K(a):
    return int(ipaddress.IPv4Address(a))


def view(attached=True, eip=True):
    return {"vpcs": [{"id": "vpc-1", "vni": 7, "cidr_block": "10.0.0.0/16"}],
            "internet_gateways": [{"id": "igw-1", "vpc_id": "vpc-1"}] if attached else [],
            "enis": [{"id": ENI, "vni": 7, "private_ip": PRIVATE, "prefixlen": 24, "underlay_ip": HOST}],
            "public_ips": [{"public_ip": PUBLIC, "private_ip": PRIVATE, "eni_id": ENI, "vni": 7,
                            "vpc_id": "vpc-1", "allocation_id": "eipalloc-1", "account": "a"}] if eip else []}


def gateway(**kw):
    g = InternetGateway()
    g.update(view(**kw))
    return g


def valid(pkt: bytes) -> bool:
    """IPv4 header checksum and the transport checksum (TCP, UDP unless 0, ICMP) all verify."""
    ihl = (pkt[0] & 0xF) * 4
    if checksum(pkt[:ihl]) != 0:
        return False
    body, proto = pkt[ihl:], pkt[9]
    if proto == 1:
        return checksum(body) == 0
    if proto == 17 and struct.unpack_from("!H", body, 6)[0] == 0:
        return True
    return checksum(body, pseudo_header_sum(pkt[12:16], pkt[16:20], proto, len(body))) == 0


def addrs(pkt):
    return str(ipaddress.IPv4Address(bytes(pkt[12:16]))), str(ipaddress.IPv4Address(bytes(pkt[16:20])))


def test_outbound_takes_the_public_address_with_valid_checksums():
    g = gateway()
    for l4 in (TCP(40000, 80, seq=1, flags=TCP.SYN), UDP(40000, 53, b"query"), ICMP(8, 0, b"\x00\x01\x00\x01hi")):
        pkt = bytearray(ipv4_packet(PRIVATE, REMOTE, l4))
        assert g.outbound(7, pkt) is None
        assert addrs(pkt) == (PUBLIC, REMOTE) and valid(pkt)
    assert g.counters["out"] == 3


def test_zero_udp_checksum_stays_zero():
    g = gateway()
    pkt = bytearray(ipv4_packet(PRIVATE, REMOTE, UDP(1, 2, b"x")))
    pkt[26:28] = b"\0\0"
    assert g.outbound(7, pkt) is None and pkt[26:28] == b"\0\0"


def test_no_gateway_or_no_public_address_is_a_counted_reason():
    pkt = bytearray(ipv4_packet(PRIVATE, REMOTE, UDP(1, 2, b"x")))
    assert gateway(attached=False).outbound(7, bytearray(pkt)) is Drop.NO_INTERNET_GATEWAY
    assert gateway(eip=False).outbound(7, bytearray(pkt)) is Drop.NO_PUBLIC_ADDRESS
    other = bytearray(ipv4_packet("10.0.1.11", REMOTE, UDP(1, 2, b"x")))
    assert gateway().outbound(7, other) is Drop.NO_PUBLIC_ADDRESS
    assert gateway().outbound(8, bytearray(pkt)) is Drop.NO_INTERNET_GATEWAY
    assert gateway().outbound(7, bytearray(b"\x45" + bytes(10))) is Drop.MALFORMED_PACKET


def test_serves_only_destinations_outside_the_vpc():
    g = gateway()
    assert g.serves(7, K(REMOTE)) and not g.serves(7, K("10.0.9.9")) and not g.serves(8, K(REMOTE))


def test_too_big_with_df_is_answered_from_the_subnet_router():
    g = gateway()
    pkt = bytearray(ipv4_packet(PRIVATE, REMOTE, TCP(40000, 80, seq=5, flags=TCP.ACK, payload=b"x" * 3000)))
    assert pkt[6] & 0x40  # ipv4_packet sets DF
    answer = g.outbound(7, pkt)
    assert isinstance(answer, bytes) and valid(answer)
    assert addrs(answer) == ("10.0.1.1", PRIVATE)
    assert (answer[20], answer[21], struct.unpack_from("!H", answer, 26)[0]) == (3, 4, 1500)
    assert answer[28:28 + 20 + 8] == bytes(pkt[:28])  # the original header and 8 bytes, untranslated
    assert g.counters["too_big"] == 1
    no_df = bytearray(pkt)
    no_df[6] &= ~0x40
    no_df[10:12] = b"\0\0"
    no_df[10:12] = struct.pack("!H", checksum(no_df[:20]))
    assert g.outbound(7, no_df) is Drop.TOO_BIG
    exactly = bytearray(ipv4_packet(PRIVATE, REMOTE, UDP(1, 2, b"x" * (1500 - 28))))
    assert g.outbound(7, exactly) is None


def test_inbound_finds_the_private_address_and_its_host():
    g = gateway()
    pkt = bytearray(ipv4_packet(REMOTE, PUBLIC, TCP(80, 40000, seq=9, ack=2, flags=TCP.SYN | TCP.ACK)))
    b = g.inbound(pkt)
    assert (b.vni, b.host, b.eni) == (7, HOST, 0xB1)
    assert addrs(pkt) == (REMOTE, PRIVATE) and valid(pkt)
    assert g.inbound(bytearray(ipv4_packet(REMOTE, "198.51.100.8", UDP(1, 2, b"x")))) is Drop.NO_PUBLIC_ADDRESS
    assert gateway(attached=False).inbound(bytearray(ipv4_packet(REMOTE, PUBLIC, UDP(1, 2)))) is Drop.NO_PUBLIC_ADDRESS


def test_inbound_icmp_error_quoting_our_packet_is_translated_inside_too():
    g = gateway()
    sent = bytearray(ipv4_packet(PRIVATE, REMOTE, UDP(40000, 33434, b"probe")))
    g.outbound(7, sent)  # as it left: from the public address
    error = bytearray(ipv4_packet("203.0.113.1", PUBLIC, ICMP(11, 0, b"\0\0\0\0" + bytes(sent[:28]))))
    assert valid(error)
    assert g.inbound(error) is not None
    assert addrs(error) == ("203.0.113.1", PRIVATE) and valid(error)
    quoted = error[28:48]
    assert addrs(quoted) == (PRIVATE, REMOTE) and checksum(quoted) == 0


def test_frag_needed_quotes_options_too():
    pkt = bytearray(ipv4_packet(PRIVATE, REMOTE, UDP(1, 2, b"x" * 100)))
    answer = frag_needed(pkt, K("10.0.1.1"), 1500)
    assert len(answer) == 20 + 8 + 28 and valid(answer)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["tcp", "udp", "icmp"]), st.integers(1, 65535), st.integers(1, 65535),
       st.binary(max_size=300), st.integers(0, 0xFFFFFFFF))
def test_round_trip_keeps_every_checksum_valid(proto, sport, dport, payload, remote):
    g = gateway()
    dst = str(ipaddress.IPv4Address(remote))
    if g.serves(7, remote) is False:
        return
    l4 = {"tcp": TCP(sport, dport, seq=remote, payload=payload, flags=TCP.ACK),
          "udp": UDP(sport, dport, payload), "icmp": ICMP(8, 0, payload)}[proto]
    pkt = bytearray(ipv4_packet(PRIVATE, dst, l4))
    assert g.outbound(7, pkt) is None and valid(pkt)
    back = bytearray(ipv4_packet(dst, PUBLIC, l4))
    assert g.inbound(back) is not None and valid(back) and addrs(back) == (dst, PRIVATE)


def partial_tcp(src, dst, payload=b"x" * 100):
    """A TCP packet as TSO leaves it: the pseudo-header sum (folded, not complemented) in the field."""
    pkt = bytearray(ipv4_packet(src, dst, TCP(40000, 80, seq=1, flags=TCP.ACK, payload=payload)))
    s = pseudo_header_sum(pkt[12:16], pkt[16:20], 6, len(pkt) - 20)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    pkt[36:38] = struct.pack("!H", s)
    return pkt


def test_partial_checksums_move_with_the_address_and_complete_correctly():
    from vswitch.offload import complete_checksum
    g = gateway()
    out = partial_tcp(PRIVATE, REMOTE)
    assert g.outbound(7, out, partial=True) is None and checksum(out[:20]) == 0
    complete_checksum(out, 20, 16)
    assert addrs(out) == (PUBLIC, REMOTE) and valid(out)
    back = partial_tcp(REMOTE, PUBLIC)
    assert g.inbound(back, partial=True) is not None
    complete_checksum(back, 20, 16)
    assert addrs(back) == (REMOTE, PRIVATE) and valid(back)


def test_a_super_packet_is_judged_by_its_segment_size():
    g = gateway()
    big = partial_tcp(PRIVATE, REMOTE, b"x" * 20000)
    assert g.outbound(7, bytearray(big), partial=True, segment=20 + 20 + 1448) is None
    answer = g.outbound(7, bytearray(big), partial=True, segment=20 + 20 + 8948)
    assert isinstance(answer, bytes) and answer[20:22] == bytes([3, 4])

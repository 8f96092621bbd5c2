"""IPv6 on the data path: the way out of an ENI, the way in from the underlay, and the edge's internet and
egress-only gateways (``vswitch.egress``, ``vswitch.ingress``, ``vswitch.igw``, ``vswitch.egress_only``)."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from vswitch import addresses, geneve
from vswitch.drops import Drop
from vswitch.egress import RESOLVER, EgressPath
from vswitch.eni import Eni, VpcView, reserved_keys
from vswitch.geneve import Geneve
from vswitch.headers import ICMP, TCP, UDP, checksum, ipv4_packet, ipv6_packet, pseudo_header_sum
from vswitch.igw import InternetGateway, packet_too_big
from vswitch.ingress import IngressPath
from vswitch.mapping import MappingCache
from vswitch.routes import RouteTable

HOST_A, HOST_B, EDGE_IP = "198.18.0.11", "198.18.0.12", "198.18.0.3"
EDGE = (EDGE_IP, 6081)
VPC6, SUBNET6 = "2001:db8:100::/56", "2001:db8:100:1::/64"
CLIENT6, WEB6, REMOTE6 = "2001:db8:100:1::4", "2001:db8:100:1::10", "2001:db8:ff::10"
ENI_CLIENT, ENI_WEB = "eni-00000000000000c1", "eni-00000000000000b1"


def K(a):
    return addresses.key(a)


def routes(*extra):
    return RouteTable.compile([{"destination": "10.0.0.0/16", "target_type": "local", "target_id": None,
                                "state": "active"},
                               {"destination": VPC6, "target_type": "local", "target_id": None, "state": "active"},
                               *extra])


EIGW_ROUTE = {"destination": "::/0", "target_type": "eigw", "target_id": "eigw-1", "state": "active"}


class Host:
    """A host as the agent builds it: a dual-stack VPC, the client ENI here, web on host B."""

    def __init__(self, client_ipv6=CLIENT6 + "/64", table=None):
        self.cache = MappingCache()
        self.vpc = VpcView(1, ipaddress.IPv4Network("10.0.0.0/16"), reserved_keys(["10.0.1.0/24", SUBNET6]),
                           self.cache.table(1), cidr6=VPC6)
        self.egress = EgressPath(self.cache, EDGE)
        self.ingress = IngressPath(self.cache, {1: self.vpc}, EDGE_IP)
        self.client = Eni(ENI_CLIENT, 1, ipaddress.IPv4Interface("10.0.1.4/24"), vpc=self.vpc, ipv6=client_ipv6)
        self.client.routes = table if table is not None else routes(EIGW_ROUTE)
        self.vpc.local[self.client.ipv4_key] = self.client
        if self.client.ipv6 is not None:
            self.vpc.local[self.client.ipv6_key] = self.client
        self.cache.apply({"op": "snapshot", "vni": 1, "entries": [
            ["10.0.1.4", HOST_A, ENI_CLIENT], [CLIENT6, HOST_A, ENI_CLIENT],
            ["10.0.1.10", HOST_B, ENI_WEB], [WEB6, HOST_B, ENI_WEB]]})

    def send(self, packet, eni=None):
        eni = eni or self.client
        head = geneve.prefix(1, eni.number, False, geneve.PROTO_IPV6)
        buf = bytearray(head + packet + b"\xa5" * 32)
        return self.egress.process(eni, buf, len(head), len(packet), 0.0)

    def receive(self, packet, outer=HOST_B, eni=ENI_WEB):
        d = Geneve(1, geneve.PROTO_IPV6, (geneve.source_eni_option(addresses.eni_number(eni)),), packet).emit()
        buf = bytearray(d) + b"\x5a" * 32
        return self.ingress.process(buf, len(d), outer, 0.0)


def udp6(src=CLIENT6, dst=WEB6, payload=b"hi"):
    return ipv6_packet(src, dst, UDP(40000, 80, payload))


def dropped(h, reason, path="egress"):
    p = getattr(h, path)
    return p.last_drop is reason and p.drops[reason] == 1 and sum(p.drops) == 1


# --- the way out ------------------------------------------------------------------------------------

def test_ipv6_to_another_host_uses_the_mapping():
    h = Host()
    assert h.send(udp6()) == (HOST_B, 6081)
    assert h.client.stats[0] == 1 and sum(h.egress.drops) == 0


def test_ipv6_and_ipv4_of_one_eni_share_it():
    h = Host()
    assert h.vpc.local[K(CLIENT6)] is h.vpc.local[K("10.0.1.4")] is h.client
    assert h.send(ipv4_packet("10.0.1.4", "10.0.1.10", UDP(1, 2))) == (HOST_B, 6081)


def test_an_eni_without_ipv6_sends_none():
    h = Host(client_ipv6=None)
    assert h.send(udp6()) is None and dropped(h, Drop.IPV6_NOT_ENABLED)


@pytest.mark.parametrize("src", ["2001:db8:100:1::5", "fe80::1", "::", "2001:db8:ff::1"])
def test_ipv6_source_check(src):
    h = Host()
    assert h.send(udp6(src=src)) is None and dropped(h, Drop.SOURCE_CHECK)


@pytest.mark.parametrize("dst", ["ff02::2", "ff02::16", "fe80::1", "ff05::1:3"])
def test_multicast_and_link_local_are_link_chatter(dst):
    h = Host()
    assert h.send(udp6(dst=dst)) is None and dropped(h, Drop.BROADCAST_MULTICAST)


@pytest.mark.parametrize("dst", ["2001:db8:100:1::", "2001:db8:100:1::1", "2001:db8:100:1::2",
                                 "2001:db8:100:1::3", "2001:db8:100:1:ffff:ffff:ffff:ffff"])
def test_reserved_subnet_addresses(dst):
    h = Host()
    assert h.send(udp6(dst=dst)) is None and dropped(h, Drop.RESERVED_ADDRESS)


def test_outside_the_vpc_follows_the_route_table_to_the_edge():
    h = Host()
    steps = []
    buf = bytearray(geneve.prefix(1, h.client.number, False, geneve.PROTO_IPV6) + udp6(dst=REMOTE6))
    assert h.egress.process(h.client, buf, 20, len(buf) - 20, 0.0, trace=steps) == EDGE
    assert any(s["step"] == "egress-only gateway" for s in steps)
    assert h.send(udp6(dst=REMOTE6)) == EDGE


def test_no_ipv6_route_outside_the_vpc():
    h = Host(table=routes())
    assert h.send(udp6(dst=REMOTE6)) is None and dropped(h, Drop.NO_ROUTE)


def test_ipv4_default_route_does_not_cover_ipv6():
    h = Host(table=routes({"destination": "0.0.0.0/0", "target_type": "igw", "target_id": "igw-1",
                           "state": "active"}))
    assert h.send(udp6(dst=REMOTE6)) is None and dropped(h, Drop.NO_ROUTE)


@pytest.mark.parametrize("packet", [
    ipv4_packet("10.0.1.4", "10.0.0.2", UDP(5353, 53, b"q")),
    ipv4_packet("10.0.1.4", "169.254.169.253", UDP(5353, 53, b"q")),
    ipv6_packet(CLIENT6, "fd00:ec2::253", UDP(5353, 53, b"q")),
])
def test_the_vpc_resolver_is_served_by_the_host_before_any_policy(packet):
    h = Host()
    assert h.send(packet) is RESOLVER
    assert sum(h.egress.drops) == 0


def test_the_resolver_answers_only_the_vpcs_own_base_plus_two():
    h = Host()
    assert h.send(ipv4_packet("10.0.1.4", "10.0.1.2", UDP(5353, 53, b"q"))) is None
    assert dropped(h, Drop.RESERVED_ADDRESS)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120))
def test_random_ipv6_bytes_never_raise(tail):
    h = Host()
    assert h.send(bytes([0x60]) + tail) in (None, EDGE, (HOST_B, 6081), RESOLVER) or True


# --- the way in ----------------------------------------------------------------------------------------

def test_ipv6_from_its_owner_is_delivered():
    h = Host()
    assert h.receive(udp6(src=WEB6, dst=CLIENT6)) is h.client
    assert h.ingress.inner_off > 0 and sum(h.ingress.drops) == 0


def test_ipv6_spoofed_source_is_refused():
    h = Host()
    assert h.receive(udp6(src=WEB6, dst=CLIENT6), outer="198.18.0.66") is None
    assert dropped(h, Drop.OUTER_SOURCE_MISMATCH, "ingress")


def test_ipv6_from_the_internet_through_the_edge():
    h = Host()
    assert h.receive(udp6(src=REMOTE6, dst=CLIENT6), outer=EDGE_IP, eni="eni-0000000000000000") is h.client


def test_ipv6_inner_header_must_be_ipv6():
    h = Host()
    assert h.receive(ipv4_packet("10.0.1.10", "10.0.1.4", UDP(1, 2)) + bytes(20)) is None
    assert dropped(h, Drop.MALFORMED_PACKET, "ingress")


# --- the edge: internet gateway and egress-only gateway --------------------------------------------

def edge_view(igw=False, eigw=True):
    return {"vpcs": [{"id": "vpc-1", "vni": 1, "cidr_block": "10.0.0.0/16", "ipv6_cidr_block": VPC6}],
            "internet_gateways": [{"id": "igw-1", "vpc_id": "vpc-1"}] if igw else [],
            "egress_only_gateways": [{"id": "eigw-1", "vpc_id": "vpc-1", "vni": 1}] if eigw else [],
            "enis": [], "public_ips": []}


def gateway(**kw):
    g = InternetGateway()
    g.update(edge_view(**kw))
    return g


def tcp6(src, dst, sport, dport, flags, seq=1000, ack=0, payload=b""):
    return bytearray(ipv6_packet(src, dst, TCP(sport, dport, seq=seq, ack=ack, flags=flags, window=64000,
                                               payload=payload)))


def test_serves_ipv6_outside_the_vpc_only_with_a_gateway():
    assert gateway().serves(1, K(REMOTE6)) and not gateway().serves(1, K(WEB6))
    assert not gateway(eigw=False).serves(1, K(REMOTE6))
    assert gateway(igw=True, eigw=False).serves(1, K(REMOTE6))


def test_egress_only_admits_replies_and_refuses_new_inbound_flows():
    g = gateway()
    syn = tcp6(CLIENT6, REMOTE6, 40000, 80, TCP.SYN)
    assert g.outbound(1, syn) is None
    assert bytes(syn) == bytes(tcp6(CLIENT6, REMOTE6, 40000, 80, TCP.SYN))  # no translation
    assert g.inbound6(tcp6(REMOTE6, CLIENT6, 80, 40000, TCP.SYN | TCP.ACK, seq=5000, ack=1001)) == 1
    # the internet opening a connection of its own: refused, counted
    assert g.inbound6(tcp6(REMOTE6, CLIENT6, 5555, 22, TCP.SYN)) is Drop.EGRESS_ONLY
    assert g.inbound6(udp6(src=REMOTE6, dst=CLIENT6)) is Drop.EGRESS_ONLY
    assert g.egress_only.counters["refused"] == 2


def test_egress_only_admits_icmpv6_echo_replies_and_errors_about_its_flows():
    g = gateway()
    echo = bytearray(ipv6_packet(CLIENT6, REMOTE6, ICMP(128, 0, b"\x12\x34\x00\x01ping")))
    assert g.outbound(1, echo) is None
    assert g.inbound6(ipv6_packet(REMOTE6, CLIENT6, ICMP(129, 0, b"\x12\x34\x00\x01ping"))) == 1
    assert g.inbound6(ipv6_packet(REMOTE6, CLIENT6, ICMP(128, 0, b"\x43\x21\x00\x01ping"))) is Drop.EGRESS_ONLY
    sent = tcp6(CLIENT6, REMOTE6, 40001, 443, TCP.SYN)
    g.outbound(1, sent)
    ptb = ipv6_packet("2001:db8:ff::1", CLIENT6, ICMP(2, 0, struct.pack("!I", 1280) + bytes(sent)))
    assert g.inbound6(ptb) == 1


def test_an_internet_gateway_admits_inbound_ipv6_without_state():
    g = gateway(igw=True)
    assert g.inbound6(tcp6(REMOTE6, CLIENT6, 5555, 22, TCP.SYN)) == 1
    assert g.egress_only.tables == {}


def test_inbound_ipv6_outside_every_vpc_block():
    assert gateway().inbound6(udp6(src=REMOTE6, dst="2001:db8:200::4")) is Drop.NO_PUBLIC_ADDRESS


def test_without_a_gateway_ipv6_is_refused_at_the_edge():
    assert gateway(eigw=False).outbound(1, bytearray(udp6(dst=REMOTE6))) is Drop.NO_INTERNET_GATEWAY


def test_too_big_is_answered_with_packet_too_big_from_the_subnet_router():
    g = gateway()
    big = tcp6(CLIENT6, REMOTE6, 40000, 80, TCP.ACK, payload=b"x" * 1600)
    answer = g.outbound(1, big)
    assert isinstance(answer, bytes)
    assert ipaddress.IPv6Address(answer[8:24]) == ipaddress.IPv6Address("2001:db8:100:1::1")
    assert ipaddress.IPv6Address(answer[24:40]) == ipaddress.IPv6Address(CLIENT6)
    assert answer[6] == 58 and answer[40] == 2 and answer[41] == 0
    assert struct.unpack_from("!I", answer, 44)[0] == 1500
    assert len(answer) <= 1280
    body = answer[40:]
    assert checksum(body, pseudo_header_sum(answer[8:24], answer[24:40], 58, len(body))) == 0
    assert answer[48:88] == bytes(big[:40])  # the quoted packet starts with its header
    assert g.outbound(1, tcp6(CLIENT6, REMOTE6, 40000, 80, TCP.ACK), segment=1600)  # a super-packet's segment


def test_packet_too_big_quotes_at_most_what_fits_1280():
    big = bytes(ipv6_packet(CLIENT6, REMOTE6, UDP(1, 2, b"y" * 8000)))
    assert len(packet_too_big(big, K("2001:db8:100:1::1") & ~addresses.V6_TAG, 1500)) == 1280

"""vswitch.egress: every decision and drop of the way out of an ENI, wired as the host agent wires it."""

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vswitch import addresses, geneve
from vswitch.drops import Drop
from vswitch.egress import EgressPath
from vswitch.eni import RX_BYTES, RX_PACKETS, TX_BYTES, TX_PACKETS, Eni, VpcView, reserved_keys
from vswitch.headers import ICMP, TCP, UDP, ipv4_packet, ipv6_packet
from vswitch.mapping import MappingCache

HOST_A, HOST_B = "198.18.0.11", "198.18.0.12"
EDGE = ("198.18.0.1", 6081)
ENI_CLIENT = "eni-00000000000000c1"
ENI_PEER = "eni-00000000000000c2"
ENI_WEB = "eni-00000000000000b1"
SUBNETS = ["10.0.1.0/24", "10.0.2.0/24"]


class Host:
    """Host A as ``HostAgent.__init__`` and ``attach`` build it: one VPC, two local ENIs, one remote."""

    def __init__(self, edge=EDGE, client_sdc=True, offload=False):
        self.cache = MappingCache()
        self.vpc = VpcView(1, ipaddress.IPv4Network("10.0.0.0/16"), reserved_keys(SUBNETS), self.cache.table(1))
        self.vpcs = {1: self.vpc}
        self.egress = EgressPath(self.cache, edge)
        self.client = self.attach(ENI_CLIENT, "10.0.1.4/24", client_sdc)
        self.peer = self.attach(ENI_PEER, "10.0.2.5/24", True)
        self.cache.apply({"op": "snapshot", "vni": 1, "entries": [
            ["10.0.1.10", HOST_B, ENI_WEB], ["10.0.1.4", HOST_A, ENI_CLIENT], ["10.0.2.5", HOST_A, ENI_PEER]]})
        self.offload = offload

    def attach(self, eni_id, ip, sdc):
        eni = Eni(eni_id, 1, ipaddress.IPv4Interface(ip), "inst", "ns", sdc, self.vpc)
        self.vpc.local[eni.ipv4_key] = eni
        return eni

    def buffer(self, eni, packet, slack=64):
        """The EniPort buffer: the Geneve prefix, then the packet as readv leaves it, then stale bytes."""
        head = geneve.prefix(eni.vni, eni.number, self.offload)
        if self.offload:
            head += bytes(12)
        return bytearray(head + packet + b"\xa5" * slack), len(head)

    def send(self, eni, packet, now=0.0, segments=1):
        buf, off = self.buffer(eni, packet)
        return self.egress.process(eni, buf, off, len(packet), now, segments)


def udp(src, dst, payload=b"hi"):
    return ipv4_packet(src, dst, UDP(40000, 80, payload))


def assert_dropped(h, eni, reason, before_stats=None):
    assert h.egress.last_drop is reason
    assert h.egress.drops[reason] == 1 and sum(h.egress.drops) == 1
    assert eni.drops[reason] == 1 and sum(eni.drops) == 1
    assert eni.stats == (before_stats or [0, 0, 0, 0])


# --- success ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("offload", [False, True])
def test_remote_mapping_returns_its_underlay(offload):
    h = Host(offload=offload)
    pkt = udp("10.0.1.4", "10.0.1.10")
    target = h.send(h.client, pkt, segments=1)
    m = h.cache.lookup(1, addresses.key("10.0.1.10"))
    assert target == (HOST_B, 6081)
    assert target is m.underlay
    assert h.client.stats == [1, len(pkt), 0, 0]
    assert h.egress.last_drop is None and sum(h.egress.drops) == 0 and sum(h.client.drops) == 0
    assert h.cache.queries == [] and h.cache.misses == 0 and h.egress.to_edge == 0


def test_local_eni_is_returned_itself():
    h = Host()
    pkt = ipv4_packet("10.0.1.4", "10.0.2.5", TCP(40000, 22))
    target = h.send(h.client, pkt)
    assert target is h.peer
    assert h.client.stats[TX_PACKETS] == 1 and h.client.stats[TX_BYTES] == len(pkt)
    assert h.peer.stats == [0, 0, 0, 0]  # delivery is counted by whoever writes it, not by egress
    back = h.send(h.peer, ipv4_packet("10.0.2.5", "10.0.1.4", TCP(22, 40000, flags=TCP.SYN | TCP.ACK)))
    assert back is h.client


def test_local_wins_over_a_mapping():
    h = Host()
    h.cache.apply({"op": "set", "vni": 1, "addr": "10.0.2.5", "host": HOST_B, "eni": ENI_PEER})
    assert h.send(h.client, udp("10.0.1.4", "10.0.2.5")) is h.peer


def test_miss_with_edge_goes_to_the_edge_and_asks_the_daemon():
    h = Host()
    pkt = udp("10.0.1.4", "10.0.1.77")
    assert h.send(h.client, pkt, now=10.0) == EDGE
    assert h.cache.queries == [{"op": "query", "vni": 1, "addr": "10.0.1.77"}]
    assert h.egress.to_edge == 1 and h.cache.misses == 1
    assert h.client.stats == [1, len(pkt), 0, 0]
    assert h.egress.last_drop is None and sum(h.egress.drops) == 0
    # The second packet within the retry interval also goes to the edge but does not ask again.
    assert h.send(h.client, pkt, now=10.5) == EDGE
    assert len(h.cache.queries) == 1 and h.egress.to_edge == 2
    assert h.send(h.client, pkt, now=11.0) == EDGE
    assert len(h.cache.queries) == 2
    # The answer arrives: the next packet goes direct.
    h.cache.apply({"op": "set", "vni": 1, "addr": "10.0.1.77", "host": HOST_B, "eni": ENI_WEB})
    assert h.send(h.client, pkt, now=11.1) == (HOST_B, 6081)
    assert h.egress.to_edge == 3 and h.cache.hits_by_query == 1


def test_miss_without_edge_drops():
    h = Host(edge=None)
    target = h.send(h.client, udp("10.0.1.4", "10.0.1.77"), now=3.0)
    assert target is None
    assert_dropped(h, h.client, Drop.NO_MAPPING_NO_EDGE)
    assert h.cache.queries == [{"op": "query", "vni": 1, "addr": "10.0.1.77"}]  # so the next one can go
    assert h.egress.to_edge == 0


def test_mapping_changes_reach_the_data_path():
    h = Host(edge=None)
    pkt = udp("10.0.1.4", "10.0.1.10")
    h.cache.apply({"op": "set", "vni": 1, "addr": "10.0.1.10", "host": "198.18.0.99", "eni": ENI_WEB})
    assert h.send(h.client, pkt) == ("198.18.0.99", 6081)
    h.cache.apply({"op": "snapshot", "vni": 1, "entries": [["10.0.1.10", HOST_B, ENI_WEB]]})
    assert h.send(h.client, pkt) == (HOST_B, 6081)
    h.cache.apply({"op": "unset", "vni": 1, "addr": "10.0.1.10"})
    assert h.send(h.client, pkt) is None and h.egress.last_drop is Drop.NO_MAPPING_NO_EDGE


def test_segments_and_bytes_accumulate():
    h = Host()
    big = ipv4_packet("10.0.1.4", "10.0.1.10", TCP(1, 2, flags=TCP.ACK, payload=bytes(5000)))
    small = udp("10.0.1.4", "10.0.1.77")
    h.send(h.client, big, segments=4)
    h.send(h.client, small, segments=1)
    h.send(h.client, udp("10.0.1.4", "8.8.8.8"), segments=7)  # dropped: not counted
    assert h.client.stats[TX_PACKETS] == 5
    assert h.client.stats[TX_BYTES] == len(big) + len(small)
    assert h.client.stats[RX_PACKETS] == h.client.stats[RX_BYTES] == 0


def test_n_not_the_buffer_decides_the_length():
    h = Host()
    pkt = udp("10.0.1.4", "10.0.1.10")
    buf, off = h.buffer(h.client, pkt, slack=1000)
    assert h.egress.process(h.client, buf, off, len(pkt), 0.0) == (HOST_B, 6081)
    assert h.client.stats[TX_BYTES] == len(pkt)
    # and at offset 0 of a bare buffer
    assert h.egress.process(h.client, memoryview(pkt), 0, len(pkt), 0.0) == (HOST_B, 6081)


def test_source_dest_check_off_lets_other_sources_through():
    h = Host(client_sdc=False)
    assert h.send(h.client, udp("10.0.9.9", "10.0.1.10")) == (HOST_B, 6081)
    assert h.send(h.client, udp("192.168.7.1", "10.0.2.5")) is h.peer
    assert sum(h.client.drops) == 0 and h.client.stats[TX_PACKETS] == 2


# --- drops ------------------------------------------------------------------------------------------

V4 = udp("10.0.1.4", "10.0.1.10")


def with_first_byte(pkt, b):
    return bytes([b]) + pkt[1:]


@pytest.mark.parametrize("pkt", [
    b"",
    V4[:1],
    V4[:19],
    with_first_byte(V4, 0x05),  # version 0
    with_first_byte(V4, 0x55),  # version 5
    with_first_byte(V4, 0xF5),
    with_first_byte(V4, 0x65)[:39],  # IPv6 shorter than its header
])
def test_malformed(pkt):
    h = Host()
    assert h.send(h.client, pkt) is None
    assert_dropped(h, h.client, Drop.MALFORMED_PACKET)


@pytest.mark.parametrize("pkt", [
    ipv6_packet("fd00::4", "fd00::10", ICMP(128, 0, b"\x00\x01\x00\x01")),
    ipv6_packet("fd00::4", "fd00::10", UDP(1, 2)),
    with_first_byte(V4, 0x65) + bytes(20),  # 40 bytes with version 6
])
def test_ipv6_not_enabled(pkt):
    h = Host()
    assert h.send(h.client, pkt) is None
    assert_dropped(h, h.client, Drop.IPV6_NOT_ENABLED)


@pytest.mark.parametrize("src", ["10.0.1.5", "10.0.2.5", "0.0.0.0", "8.8.8.8", "10.0.1.10"])
def test_source_check(src):
    h = Host()
    assert h.send(h.client, udp(src, "10.0.1.10")) is None
    assert_dropped(h, h.client, Drop.SOURCE_CHECK)
    assert h.cache.queries == []


@pytest.mark.parametrize("dst", ["255.255.255.255", "224.0.0.1", "224.0.0.251", "239.255.255.250", "239.0.0.0"])
def test_broadcast_multicast(dst):
    h = Host()
    assert h.send(h.client, udp("10.0.1.4", dst)) is None
    assert_dropped(h, h.client, Drop.BROADCAST_MULTICAST)


@pytest.mark.parametrize("dst", ["8.8.8.8", "10.1.0.1", "9.255.255.255", "10.255.255.255", "0.0.0.0",
                                 "223.255.255.255", "240.0.0.1", "255.255.255.254", "192.168.1.1"])
def test_no_route_outside_the_vpc(dst):
    h = Host()
    assert h.send(h.client, udp("10.0.1.4", dst)) is None
    assert_dropped(h, h.client, Drop.NO_ROUTE)
    assert h.cache.queries == [] and h.egress.to_edge == 0


@pytest.mark.parametrize("dst", ["10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.255",
                                 "10.0.2.0", "10.0.2.1", "10.0.2.2", "10.0.2.3", "10.0.2.255"])
def test_reserved_addresses(dst):
    h = Host()
    assert h.send(h.client, udp("10.0.1.4", dst)) is None
    assert_dropped(h, h.client, Drop.RESERVED_ADDRESS)
    assert h.cache.queries == []


def test_reserved_keys():
    keys = reserved_keys(["10.0.1.0/24", "10.0.4.0/22"])
    want = ["10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.255",
            "10.0.4.0", "10.0.4.1", "10.0.4.2", "10.0.4.3", "10.0.7.255"]
    assert keys == frozenset(addresses.key(a) for a in want)


def test_first_usable_address_is_not_reserved():
    h = Host()
    assert h.send(h.client, udp("10.0.1.4", "10.0.1.254")) == EDGE
    assert h.send(h.client, udp("10.0.1.4", "10.0.3.1")) == EDGE  # in the VPC, in no subnet yet


def test_drops_accumulate_per_reason_on_path_and_eni():
    h = Host(edge=None)
    h.send(h.client, b"")
    h.send(h.client, udp("10.0.1.9", "10.0.1.10"))
    h.send(h.peer, udp("10.0.2.5", "8.8.8.8"))
    h.send(h.peer, udp("10.0.2.5", "8.8.8.8"))
    assert h.egress.last_drop is Drop.NO_ROUTE
    assert h.egress.drops[Drop.MALFORMED_PACKET] == 1
    assert h.egress.drops[Drop.SOURCE_CHECK] == 1
    assert h.egress.drops[Drop.NO_ROUTE] == 2
    assert h.client.drops[Drop.MALFORMED_PACKET] == h.client.drops[Drop.SOURCE_CHECK] == 1
    assert h.client.drops[Drop.NO_ROUTE] == 0 and h.peer.drops[Drop.NO_ROUTE] == 2
    assert h.send(h.client, V4) == (HOST_B, 6081)
    assert h.egress.last_drop is Drop.NO_ROUTE  # last_drop is only written on a drop


# --- arbitrary input --------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=80), st.booleans(), st.booleans(), st.booleans(), st.integers(1, 50))
def test_random_bytes_never_raise(pkt, offload, edge, sdc, segments):
    h = Host(edge=EDGE if edge else None, client_sdc=sdc, offload=offload)
    buf, off = h.buffer(h.client, pkt, slack=0)
    target = h.egress.process(h.client, buf, off, len(pkt), 0.0, segments)
    if target is None:
        assert h.egress.last_drop is not None
        assert sum(h.egress.drops) == 1 and h.client.drops[h.egress.last_drop] == 1
        assert h.client.stats == [0, 0, 0, 0]
    else:
        assert target in (EDGE, (HOST_B, 6081)) or target is h.client or target is h.peer
        assert h.client.stats == [segments, len(pkt), 0, 0]
        assert sum(h.egress.drops) == 0


@settings(max_examples=150, deadline=None)
def near(*texts):
    """Addresses around the interesting ones, or anywhere."""
    base = [int(ipaddress.IPv4Address(t)) for t in texts]
    return st.one_of(st.sampled_from(base), st.builds(lambda b, d: (b + d) % (1 << 32), st.sampled_from(base),
                                                      st.integers(-300, 300)), st.integers(0, 0xFFFFFFFF))


@given(near("10.0.1.4", "10.0.2.5"),
       near("10.0.1.4", "10.0.1.10", "10.0.2.5", "10.0.1.0", "10.0.2.255", "10.0.0.0", "10.1.0.0", "224.0.0.0",
            "239.255.255.255", "255.255.255.255"),
       st.booleans())
def test_decision_matches_a_model(src, dst, edge):
    h = Host(edge=EDGE if edge else None, client_sdc=True)
    s, d = str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst))
    target = h.send(h.client, udp(s, d))
    vpc_net = ipaddress.IPv4Network("10.0.0.0/16")
    if s != "10.0.1.4":
        expected = Drop.SOURCE_CHECK
    elif ipaddress.IPv4Address(d) not in vpc_net:
        expected = Drop.BROADCAST_MULTICAST if (d == "255.255.255.255" or ipaddress.IPv4Address(d).is_multicast) \
            else Drop.NO_ROUTE
    elif addresses.key(d) in reserved_keys(SUBNETS):
        expected = Drop.RESERVED_ADDRESS
    elif d in ("10.0.1.4", "10.0.2.5"):
        expected = h.vpc.local[addresses.key(d)]
    elif d == "10.0.1.10":
        expected = (HOST_B, 6081)
    else:
        expected = EDGE if edge else Drop.NO_MAPPING_NO_EDGE
    if isinstance(expected, Drop):
        assert target is None and h.egress.last_drop is expected
    else:
        assert target == expected


def test_model_covers_the_source_being_right():
    # The model test draws random sources; make sure the interesting branch runs too.
    h = Host()
    for d, want in (("10.0.1.10", (HOST_B, 6081)), ("10.0.2.5", h.peer), ("10.0.1.4", h.client),
                    ("10.0.200.1", EDGE)):
        assert h.send(h.client, udp("10.0.1.4", d)) == want

"""vswitch.ingress: Geneve datagrams from the underlay to an ENI on this host, and every drop."""

import ipaddress
import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vswitch import addresses, geneve
from vswitch.drops import Drop
from vswitch.eni import RX_BYTES, RX_PACKETS, Eni, VpcView, reserved_keys
from vswitch.geneve import Geneve, Option
from vswitch.headers import ICMP, TCP, UDP, ipv4_packet, ipv6_packet
from vswitch.ingress import IngressPath, inner_addresses
from vswitch.mapping import MappingCache

HOST_A, HOST_B, EDGE_IP, STRANGER = "198.18.0.11", "198.18.0.12", "198.18.0.1", "198.18.0.66"
ENI_CLIENT, ENI_WEB, ENI_DB = 0xC1, 0xB1, 0xB2
VNET = bytes([1, 0, 54, 0, 0, 0, 34, 0, 16, 0])


class HostB:
    """Host B as the host agent builds it: VPC 1 with two local ENIs; VPC 2 has no ENI here."""

    def __init__(self, edge_ip=EDGE_IP):
        self.cache = MappingCache()
        self.vpc = VpcView(1, ipaddress.IPv4Network("10.0.0.0/16"), reserved_keys(["10.0.1.0/24"]),
                           self.cache.table(1))
        self.ingress = IngressPath(self.cache, {1: self.vpc}, edge_ip)
        self.web = self.attach(ENI_WEB, "10.0.1.10/24")
        self.db = self.attach(ENI_DB, "10.0.1.11/24")
        self.cache.apply({"op": "snapshot", "vni": 1, "entries": [
            ["10.0.1.4", HOST_A, addresses.eni_id(ENI_CLIENT)],
            ["10.0.1.10", HOST_B, addresses.eni_id(ENI_WEB)],
            ["10.0.1.11", HOST_B, addresses.eni_id(ENI_DB)],
            ["10.0.1.50", HOST_A, addresses.eni_id(0xC5)],  # remote, destination not here
        ]})

    def attach(self, number, ip):
        eni = Eni(addresses.eni_id(number), 1, ipaddress.IPv4Interface(ip), vpc=self.vpc)
        self.vpc.local[eni.ipv4_key] = eni
        return eni

    def receive(self, datagram, outer=HOST_A, now=0.0, slack=100):
        buf = bytearray(datagram) + b"\x5a" * slack  # the agent's receive buffer is larger than n
        return self.ingress.process(buf, len(datagram), outer, now), buf


def inner(src="10.0.1.4", dst="10.0.1.10", payload=b"ping"):
    return ipv4_packet(src, dst, UDP(5000, 80, payload))


def datagram(pkt=None, vni=1, eni=ENI_CLIENT, proto=geneve.PROTO_IPV4, extra=(), oam=False):
    opts = (() if eni is None else (geneve.source_eni_option(eni),)) + tuple(extra)
    return Geneve(vni, proto, opts, inner() if pkt is None else pkt, oam=oam).emit()


def assert_dropped(h, reason):
    assert h.ingress.last_drop is reason
    assert h.ingress.drops[reason] == 1 and sum(h.ingress.drops) == 1
    for eni in (h.web, h.db):
        assert eni.stats == [0, 0, 0, 0]
        assert sum(eni.drops) == 0  # ingress drops are counted on the path only


# --- delivery ---------------------------------------------------------------------------------------

def test_delivered_to_the_destination_eni():
    h = HostB()
    pkt = inner()
    eni, buf = h.receive(datagram(pkt))
    assert eni is h.web
    assert h.ingress.inner_off == geneve.INNER_OFFSET_PLAIN and h.ingress.vnet_off == -1
    assert bytes(buf[h.ingress.inner_off:h.ingress.inner_off + len(pkt)]) == pkt
    assert h.web.stats[RX_PACKETS] == 1 and h.web.stats[RX_BYTES] == len(pkt)
    assert h.db.stats == [0, 0, 0, 0]
    assert h.ingress.last_drop is None and sum(h.ingress.drops) == 0
    assert h.cache.queries == [] and h.ingress.from_edge == 0
    eni, _ = h.receive(datagram(inner(dst="10.0.1.11")))
    assert eni is h.db


def test_delivered_with_offload_header():
    h = HostB()
    pkt = inner(payload=bytes(3000))
    d = datagram(pkt, extra=(geneve.offload_option(VNET),))
    eni, buf = h.receive(d)
    assert eni is h.web
    assert h.ingress.inner_off == geneve.INNER_OFFSET_OFFLOAD
    assert h.ingress.vnet_off == geneve.VNET_OFFSET
    assert bytes(buf[h.ingress.vnet_off:h.ingress.vnet_off + 10]) == VNET
    assert bytes(buf[h.ingress.inner_off:len(d)]) == pkt
    assert h.web.stats == [0, 0, 1, len(pkt)]


@pytest.mark.parametrize("offload", [False, True])
def test_delivered_from_the_senders_buffer_layout(offload):
    # Exactly what host A's EniPort sends: the prefix, (virtio header + padding,) the packet.
    h = HostB()
    pkt = inner()
    head = geneve.prefix(1, ENI_CLIENT, offload) + (VNET if offload else b"")
    eni, buf = h.receive(head + pkt)
    assert eni is h.web
    assert h.ingress.inner_off == (geneve.INNER_OFFSET_OFFLOAD if offload else geneve.INNER_OFFSET_PLAIN)
    assert h.ingress.vnet_off == (geneve.VNET_OFFSET if offload else -1)
    assert bytes(buf[h.ingress.inner_off:len(head) + len(pkt)]) == pkt


def test_unknown_non_critical_options_are_skipped():
    h = HostB()
    d = datagram(extra=(Option(0x0101, 0x05, bytes(8)), Option(geneve.OPTION_CLASS, 0x02, b"")))
    eni, _ = h.receive(d)
    assert eni is h.web and h.ingress.inner_off == 20 + 12 + 4


def vnet_gso(gso_type, hdr_len, gso_size):
    return struct.pack("<BBHHHH", 1, gso_type, hdr_len, gso_size, 0, 0)


@pytest.mark.parametrize("payload, gso_type, gso_size, segments", [
    (4000, 1, 1000, 4),  # TCPV4 super-packet: ceil(4000 / 1000)
    (4001, 1, 1000, 5),
    (4000, 0x81, 1000, 4),  # TCPV4 | ECN
    (4000, 0, 1000, 1),  # no GSO: one packet whatever gso_size says
    (4000, 0x80, 1000, 1),  # ECN alone is not GSO
    (4000, 1, 0, 1),  # nonsensical gso_size 0
])
def test_super_packets_count_their_segments(payload, gso_type, gso_size, segments):
    h = HostB()
    pkt = ipv4_packet("10.0.1.4", "10.0.1.10", TCP(1, 2, flags=TCP.ACK, payload=bytes(payload)))
    d = datagram(pkt, extra=(geneve.offload_option(vnet_gso(gso_type, 40, gso_size)),))
    eni, _ = h.receive(d)
    assert eni is h.web
    assert h.web.stats[RX_PACKETS] == segments and h.web.stats[RX_BYTES] == len(pkt)


def test_local_to_local_through_the_underlay():
    # A packet from an ENI on this very host (e.g. hairpinned through the edge) passes the same checks.
    h = HostB()
    assert h.receive(datagram(inner("10.0.1.11", "10.0.1.10"), eni=ENI_DB), outer=HOST_B)[0] is h.web


# --- drops ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [
    b"",
    datagram()[:7],
    bytes([0x40]) + datagram()[1:],  # version 1
    bytes([0x05]) + datagram()[1:20],  # options run past the end
    bytes([0x02]) + datagram()[1:8] + b"\x01\x01\x01\x05" + bytes(4),  # option data past the options
])
def test_malformed_geneve(d):
    h = HostB()
    assert h.receive(d)[0] is None
    assert_dropped(h, Drop.MALFORMED_GENEVE)


def test_oam():
    h = HostB()
    assert h.receive(datagram(oam=True))[0] is None
    assert_dropped(h, Drop.GENEVE_OAM)


@pytest.mark.parametrize("option", [Option(0x0101, 0x80, b""), Option(geneve.OPTION_CLASS, 0x83, bytes(4)),
                                    Option(geneve.OPTION_CLASS, geneve.OPT_OFFLOAD, bytes(4))])
def test_unknown_critical_option(option):
    h = HostB()
    assert h.receive(datagram(extra=(option,)))[0] is None
    assert_dropped(h, Drop.UNKNOWN_CRITICAL_OPTION)


@pytest.mark.parametrize("vni", [0, 2, geneve.MAX_VNI])
def test_unknown_vni(vni):
    h = HostB()
    assert h.receive(datagram(vni=vni))[0] is None
    assert_dropped(h, Drop.UNKNOWN_VNI)


@pytest.mark.parametrize("proto", [0x6558, 0x0806, 0x0000, 0x0801])
def test_unsupported_protocol(proto):
    h = HostB()
    assert h.receive(datagram(proto=proto))[0] is None
    assert_dropped(h, Drop.UNSUPPORTED_PROTOCOL)


@pytest.mark.parametrize("pkt", [
    b"",
    inner()[:19],
    bytes([0x65]) + inner()[1:],  # IPv6 version nibble under protocol IPv4
    bytes([0x05]) + inner()[1:],
    ipv6_packet("fd00::4", "fd00::10", UDP(1, 2)),
])
def test_malformed_inner(pkt):
    h = HostB()
    assert h.receive(datagram(pkt))[0] is None
    assert_dropped(h, Drop.MALFORMED_PACKET)


def test_ipv6_to_an_address_nobody_here_holds():
    """IPv6 is decapsulated like IPv4 (tests/core/test_dual_stack.py); this VPC has no IPv6 owner."""
    h = HostB()
    pkt = ipv6_packet("fd00::4", "fd00::10", ICMP(128, 0, b"\x00\x01\x00\x01"))
    assert h.receive(datagram(pkt, proto=geneve.PROTO_IPV6), outer=EDGE_IP)[0] is None
    assert_dropped(h, Drop.UNKNOWN_DESTINATION)


def test_unknown_source_rechecked_without_holding_is_dropped_without_asking_again():
    """hold=False is the re-check of a released packet: the daemon already answered (or time ran
    out), so it is dropped, not held again, and no new query goes out."""
    h = HostB()
    d = datagram(inner(src="10.0.1.77"))
    assert h.ingress.process(bytearray(d), len(d), HOST_A, 5.0, hold=False) is None
    assert_dropped(h, Drop.UNKNOWN_SOURCE)
    assert h.cache.queries == []
    assert h.ingress.held == {} and h.ingress.held_total == 0
    h.ingress.process(bytearray(d), len(d), HOST_A, 5.5, hold=False)
    assert h.cache.queries == [] and h.ingress.drops[Drop.UNKNOWN_SOURCE] == 2
    # Once the daemon answers, the same datagram is delivered.
    h.cache.apply({"op": "set", "vni": 1, "addr": "10.0.1.77", "host": HOST_A, "eni": addresses.eni_id(ENI_CLIENT)})
    assert h.receive(d)[0] is h.web


UNKNOWN = addresses.key("10.0.1.77")


def answer(h, host=HOST_A, eni=ENI_CLIENT, addr="10.0.1.77"):
    h.cache.apply({"op": "set", "vni": 1, "addr": addr, "host": host, "eni": addresses.eni_id(eni)})


def test_unknown_source_is_held_while_the_daemon_is_asked():
    h = HostB()
    d = datagram(inner(src="10.0.1.77"))
    eni, buf = h.receive(d, now=5.0)
    assert eni is None
    assert h.ingress.last_drop is None and sum(h.ingress.drops) == 0  # held, not dropped
    assert h.ingress.held_total == 1 and list(h.ingress.held) == [(1, UNKNOWN)]
    assert h.cache.queries == [{"op": "query", "vni": 1, "addr": "10.0.1.77"}]
    assert h.web.stats == [0, 0, 0, 0]
    # The agent reuses its receive buffer: the held copy must not change with it.
    buf[:] = bytes(len(buf))
    assert h.ingress.release(5.1) == []  # no answer yet, not timed out
    assert h.ingress.held_total == 1 and (1, UNKNOWN) in h.ingress.held
    answer(h)
    out = h.ingress.release(5.2)
    assert out == [(h.web, d, geneve.INNER_OFFSET_PLAIN, -1)]
    assert h.ingress.held == {} and sum(h.ingress.drops) == 0
    assert h.web.stats == [0, 0, 1, len(d) - geneve.INNER_OFFSET_PLAIN]
    assert h.ingress.release(9.0) == []


def test_held_packets_keep_their_offload_offsets():
    h = HostB()
    d = datagram(inner(src="10.0.1.77"), extra=(geneve.offload_option(VNET),))
    assert h.receive(d)[0] is None
    answer(h)
    [(eni, datagram_, inner_off, vnet_off)] = h.ingress.release(0.1)
    assert (eni, datagram_, inner_off, vnet_off) == (h.web, d, geneve.INNER_OFFSET_OFFLOAD, geneve.VNET_OFFSET)
    assert datagram_[vnet_off:vnet_off + 10] == VNET


def test_held_packets_are_checked_again_on_release():
    h = HostB()
    good, other = datagram(inner(src="10.0.1.77")), datagram(inner(src="10.0.1.77", dst="10.0.1.11"))
    h.receive(good, outer=HOST_A)
    h.receive(other, outer=STRANGER)
    h.receive(datagram(inner(src="10.0.1.77"), eni=0x99), outer=HOST_A)
    h.receive(datagram(inner(src="10.0.1.77", dst="10.0.1.99")), outer=HOST_A)
    assert h.ingress.held_total == 4 and sum(h.ingress.drops) == 0
    answer(h)
    out = h.ingress.release(0.5)
    assert out == [(h.web, good, 20, -1)]
    assert h.ingress.drops[Drop.OUTER_SOURCE_MISMATCH] == 1
    assert h.ingress.drops[Drop.SOURCE_ENI_MISMATCH] == 1
    assert h.ingress.drops[Drop.UNKNOWN_DESTINATION] == 1
    assert sum(h.ingress.drops) == 3 and h.ingress.held == {}


def test_held_packets_dropped_when_the_daemon_knows_no_owner():
    h = HostB()
    h.receive(datagram(inner(src="10.0.1.77")))
    h.receive(datagram(inner(src="10.0.1.77")))
    h.cache.apply({"op": "unset", "vni": 1, "addr": "10.0.1.77"})
    assert h.ingress.release(0.2) == []
    assert h.ingress.drops[Drop.UNKNOWN_SOURCE] == 2 and sum(h.ingress.drops) == 2
    assert h.ingress.last_drop is Drop.UNKNOWN_SOURCE and h.ingress.held == {}


def test_held_packets_time_out():
    h = HostB()
    h.receive(datagram(inner(src="10.0.1.77")), now=10.0)
    h.receive(datagram(inner(src="10.0.1.77")), now=10.5)
    assert h.ingress.release(10.0 + h.ingress.HOLD_TIME - 0.01) == []
    assert h.ingress.held_total == 2 and sum(h.ingress.drops) == 0
    assert h.ingress.release(10.0 + h.ingress.HOLD_TIME) == []
    assert h.ingress.drops[Drop.UNKNOWN_SOURCE] == 2 and h.ingress.held == {}


def test_hold_is_bounded_per_source_and_in_sources():
    h = HostB()
    d = datagram(inner(src="10.0.1.77"))
    for _ in range(h.ingress.MAX_HELD_PER_SOURCE):
        assert h.receive(d)[0] is None and h.ingress.last_drop is None
    assert h.receive(d)[0] is None
    assert_dropped(h, Drop.UNKNOWN_SOURCE)
    assert len(h.ingress.held[(1, UNKNOWN)]) == h.ingress.MAX_HELD_PER_SOURCE
    assert h.ingress.held_total == h.ingress.MAX_HELD_PER_SOURCE
    h2 = HostB()
    h2.ingress.MAX_HELD_SOURCES = 3
    for i in range(3):
        h2.receive(datagram(inner(src=f"10.0.2.{i + 4}")))
    assert len(h2.ingress.held) == 3 and sum(h2.ingress.drops) == 0
    assert h2.receive(datagram(inner(src="10.0.2.100")))[0] is None
    assert_dropped(h2, Drop.UNKNOWN_SOURCE)
    assert len(h2.ingress.held) == 3
    assert h2.receive(datagram(inner(src="10.0.2.4")))[0] is None  # a source already waiting may add more
    assert len(h2.ingress.held[(1, addresses.key("10.0.2.4"))]) == 2
    assert IngressPath.MAX_HELD_SOURCES == 256 and IngressPath.MAX_HELD_PER_SOURCE == 8


@pytest.mark.parametrize("outer", [STRANGER, HOST_B, "10.0.1.4"])
def test_outer_source_mismatch(outer):
    h = HostB()
    assert h.receive(datagram(), outer=outer)[0] is None
    assert_dropped(h, Drop.OUTER_SOURCE_MISMATCH)
    assert h.cache.queries == []


@pytest.mark.parametrize("eni", [None, ENI_WEB, 0xC5, 0, (1 << 64) - 1])
def test_source_eni_mismatch(eni):
    h = HostB()
    assert h.receive(datagram(eni=eni))[0] is None
    assert_dropped(h, Drop.SOURCE_ENI_MISMATCH)


def test_wrong_length_eni_option_counts_as_missing():
    h = HostB()
    bad = Option(geneve.OPTION_CLASS, geneve.OPT_SOURCE_ENI, ENI_CLIENT.to_bytes(4, "big"))
    assert h.receive(datagram(eni=None, extra=(bad,)))[0] is None
    assert_dropped(h, Drop.SOURCE_ENI_MISMATCH)


@pytest.mark.parametrize("dst", ["10.0.1.50", "10.0.1.99", "10.0.1.4", "8.8.8.8", "10.0.1.255"])
def test_unknown_destination(dst):
    h = HostB()
    assert h.receive(datagram(inner(dst=dst)))[0] is None
    assert_dropped(h, Drop.UNKNOWN_DESTINATION)


# --- relayed by the edge ----------------------------------------------------------------------------

def test_edge_relayed_unknown_source_is_accepted():
    h = HostB()
    eni, _ = h.receive(datagram(inner(src="10.0.1.77"), eni=0x77), outer=EDGE_IP)
    assert eni is h.web
    assert h.ingress.from_edge == 1 and sum(h.ingress.drops) == 0


def test_edge_relayed_known_source_is_accepted_with_the_right_eni():
    h = HostB()
    assert h.receive(datagram(), outer=EDGE_IP)[0] is h.web
    assert h.ingress.from_edge == 1


@pytest.mark.parametrize("eni", [None, ENI_WEB, 0x77])
def test_edge_relayed_known_source_still_checks_the_eni(eni):
    h = HostB()
    assert h.receive(datagram(eni=eni), outer=EDGE_IP)[0] is None
    assert_dropped(h, Drop.SOURCE_ENI_MISMATCH)


def test_edge_relayed_checks_destination_and_decap():
    h = HostB()
    assert h.receive(datagram(inner(src="10.0.1.77", dst="10.0.1.99"), eni=0x77), outer=EDGE_IP)[0] is None
    assert h.ingress.last_drop is Drop.UNKNOWN_DESTINATION
    assert h.receive(datagram(vni=2), outer=EDGE_IP)[0] is None
    assert h.ingress.last_drop is Drop.UNKNOWN_VNI


def test_without_an_edge_nobody_is_trusted():
    h = HostB(edge_ip=None)
    d = datagram(inner(src="10.0.1.77"))
    assert h.ingress.process(bytearray(d), len(d), EDGE_IP, 0.0, hold=False) is None
    assert_dropped(h, Drop.UNKNOWN_SOURCE)
    assert h.ingress.from_edge == 0
    assert h.receive(d, outer=EDGE_IP)[0] is None and (1, UNKNOWN) in h.ingress.held


def test_edge_relayed_packets_are_never_held():
    h = HostB()
    h.receive(datagram(inner(src="10.0.1.77", dst="10.0.1.99"), eni=0x77), outer=EDGE_IP)
    assert h.ingress.held == {} and h.ingress.last_drop is Drop.UNKNOWN_DESTINATION


# --- the decision table -----------------------------------------------------------------------------

SOURCES = {"client": "10.0.1.4", "unknown": "10.0.1.77"}
OUTERS = {"owner": HOST_A, "edge": EDGE_IP, "stranger": STRANGER}
ENIS = {"right": ENI_CLIENT, "wrong": 0xDEAD, "none": None}
DESTS = {"local": "10.0.1.10", "remote": "10.0.1.50"}


def expected(src, outer, eni, dst):
    if outer == "edge":
        if src == "client" and eni != "right":
            return Drop.SOURCE_ENI_MISMATCH
    elif src == "unknown":
        return "held"
    elif outer != "owner":
        return Drop.OUTER_SOURCE_MISMATCH
    elif eni != "right":
        return Drop.SOURCE_ENI_MISMATCH
    return "web" if dst == "local" else Drop.UNKNOWN_DESTINATION


@pytest.mark.parametrize("src, outer, eni, dst", list(itertools.product(SOURCES, OUTERS, ENIS, DESTS)))
def test_decision_table(src, outer, eni, dst):
    h = HostB()
    got, _ = h.receive(datagram(inner(SOURCES[src], DESTS[dst]), eni=ENIS[eni]), outer=OUTERS[outer])
    want = expected(src, outer, eni, dst)
    if want == "web":
        assert got is h.web and sum(h.ingress.drops) == 0
    elif want == "held":
        assert got is None and h.ingress.last_drop is None and sum(h.ingress.drops) == 0
        assert h.ingress.held_total == 1
        # Without holding, the same packet is an UNKNOWN_SOURCE drop.
        h2 = HostB()
        d = datagram(inner(SOURCES[src], DESTS[dst]), eni=ENIS[eni])
        assert h2.ingress.process(bytearray(d), len(d), OUTERS[outer], 0.0, hold=False) is None
        assert_dropped(h2, Drop.UNKNOWN_SOURCE)
    else:
        assert got is None
        assert_dropped(h, want)


# --- inner_addresses and arbitrary input ------------------------------------------------------------

def test_inner_addresses():
    pkt = inner("10.0.1.4", "10.0.1.10")
    buf = b"\x00" * 20 + pkt
    assert inner_addresses(buf, 20, len(buf), geneve.PROTO_IPV4) == (addresses.key("10.0.1.4"),
                                                                      addresses.key("10.0.1.10"))
    assert inner_addresses(buf, 20, 39, geneve.PROTO_IPV4) is Drop.MALFORMED_PACKET
    assert inner_addresses(buf, 20, len(buf), geneve.PROTO_IPV6) is Drop.MALFORMED_PACKET  # an IPv4 packet
    six = b"\x00" * 20 + ipv6_packet("fd00::4", "fd00::10", UDP(1, 2))
    assert inner_addresses(six, 20, len(six), geneve.PROTO_IPV6) == (addresses.key("fd00::4"),
                                                                      addresses.key("fd00::10"))
    assert inner_addresses(six, 20, 59, geneve.PROTO_IPV6) is Drop.MALFORMED_PACKET
    assert inner_addresses(buf, 20, len(buf), 0x1234) is Drop.UNSUPPORTED_PROTOCOL


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=80), st.sampled_from([HOST_A, EDGE_IP, STRANGER]))
def test_random_bytes_never_raise(data, outer):
    h = HostB()
    got = h.ingress.process(bytearray(data) + bytearray(16), len(data), outer, 0.0)
    if got is None:
        if h.ingress.held_total:
            assert h.ingress.last_drop is None and sum(h.ingress.drops) == 0
            assert h.ingress.release(5.0) == [] and h.ingress.held == {}  # timed out: dropped
        assert h.ingress.last_drop is not None and sum(h.ingress.drops) == 1
    else:
        assert got in (h.web, h.db)


@FUZZ
@given(st.sampled_from([0, 1, 2]), st.sampled_from([geneve.PROTO_IPV4, geneve.PROTO_IPV6, 0x6558]),
       st.one_of(st.none(), st.sampled_from([ENI_CLIENT, ENI_WEB])), st.binary(max_size=60),
       st.sampled_from([HOST_A, EDGE_IP, STRANGER]))
def test_random_inner_packets_never_raise(vni, proto, eni, pkt, outer):
    h = HostB()
    d = datagram(pkt, vni=vni, eni=eni, proto=proto)
    got, _ = h.receive(d, outer=outer)
    assert got is None or got in (h.web, h.db)
    assert (got is None) == (sum(h.ingress.drops) + h.ingress.held_total == 1)
    h.ingress.release(100.0)


@FUZZ
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.binary(max_size=40))
def test_random_addresses_never_raise(src, dst, payload):
    h = HostB()
    pkt = ipv4_packet(str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst)), UDP(1, 2, payload))
    got, _ = h.receive(datagram(pkt))
    if got is not None:
        assert src == addresses.key("10.0.1.4") and got.ipv4_key == dst

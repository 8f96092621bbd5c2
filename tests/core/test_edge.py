"""vswitch.edge: the relay for packets a host could not map, alone and between two hosts' data paths."""

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vswitch import addresses, geneve
from vswitch.drops import Drop
from vswitch.edge import EdgeRelay
from vswitch.egress import EgressPath
from vswitch.eni import Eni, VpcView, reserved_keys
from vswitch.geneve import Geneve, Option
from vswitch.headers import ICMP, UDP, ipv4_packet, ipv6_packet
from vswitch.ingress import IngressPath
from vswitch.mapping import MappingCache, MappingService, decode, encode

HOST_A, HOST_B, HOST_C, EDGE_IP, STRANGER = "198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.1", "198.18.0.66"
ENI_CLIENT, ENI_WEB, ENI_OTHER = 0xC1, 0xB1, 0xD1


def entries(*rows):
    return [[a, h, addresses.eni_id(e)] for a, h, e in rows]


def edge_cache(port=6081):
    c = MappingCache(port=port)
    c.subscribe_message(None)
    c.apply({"op": "snapshot", "vni": 1, "entries": entries(
        ("10.0.1.4", HOST_A, ENI_CLIENT), ("10.0.1.10", HOST_B, ENI_WEB))})
    # VPC 2 reuses the same addresses with other owners: VNIs keep them apart.
    c.apply({"op": "snapshot", "vni": 2, "entries": entries(
        ("10.0.1.4", HOST_B, ENI_OTHER), ("10.0.1.10", HOST_C, 0xE1))})
    c.apply({"op": "snapshot", "vni": 3, "entries": []})
    return c


def inner(src="10.0.1.4", dst="10.0.1.10"):
    return ipv4_packet(src, dst, ICMP(8, 0, b"\x00\x01\x00\x01ping"))


def datagram(pkt=None, vni=1, eni=ENI_CLIENT, proto=geneve.PROTO_IPV4, extra=(), oam=False):
    opts = (() if eni is None else (geneve.source_eni_option(eni),)) + tuple(extra)
    return Geneve(vni, proto, opts, inner() if pkt is None else pkt, oam=oam).emit()


def relay(d, outer=HOST_A, port=6081):
    r = EdgeRelay(edge_cache(port))
    buf = bytearray(d) + b"\x77" * 50
    before = bytes(buf)
    target = r.process(buf, len(d), outer)
    assert bytes(buf) == before  # the edge forwards the datagram unchanged
    return r, target


def assert_dropped(r, reason):
    assert r.last_drop is reason
    assert r.drops[reason] == 1 and sum(r.drops) == 1
    assert r.relayed == 0


# --- forwarding -------------------------------------------------------------------------------------

def test_forwards_to_the_destination_owner():
    r, target = relay(datagram())
    assert target == (HOST_B, 6081)
    assert target is r.cache.lookup(1, addresses.key("10.0.1.10")).underlay
    assert r.relayed == 1 and r.last_drop is None and sum(r.drops) == 0


def test_forwards_with_the_cache_port():
    assert relay(datagram(), port=7081)[1] == (HOST_B, 7081)


def test_vnis_keep_same_addresses_apart():
    _, target = relay(datagram(vni=2, eni=ENI_OTHER), outer=HOST_B)
    assert target == (HOST_C, 6081)
    r, target = relay(datagram(vni=2, eni=ENI_CLIENT), outer=HOST_A)  # VPC 1's owner, in VPC 2
    assert target is None and r.last_drop is Drop.OUTER_SOURCE_MISMATCH


@pytest.mark.parametrize("offload", [False, True])
def test_forwards_the_senders_layout(offload):
    pkt = inner()
    d = geneve.prefix(1, ENI_CLIENT, offload) + (bytes(10) if offload else b"") + pkt
    assert relay(d)[1] == (HOST_B, 6081)


def test_skips_unknown_non_critical_options():
    assert relay(datagram(extra=(Option(0x0101, 0x01, bytes(4)),)))[1] == (HOST_B, 6081)


def test_follows_pushes():
    r = EdgeRelay(edge_cache())
    d = bytearray(datagram(inner(dst="10.0.1.20")))
    assert r.process(d, len(d), HOST_A) is None and r.last_drop is Drop.EDGE_NO_MAPPING
    r.cache.apply({"op": "set", "vni": 1, "addr": "10.0.1.20", "host": HOST_C, "eni": addresses.eni_id(5)})
    assert r.process(d, len(d), HOST_A) == (HOST_C, 6081)
    r.cache.apply({"op": "set", "vni": 9, "addr": "10.0.1.4", "host": HOST_A, "eni": addresses.eni_id(ENI_CLIENT)})
    r.cache.apply({"op": "set", "vni": 9, "addr": "10.0.1.10", "host": HOST_B, "eni": addresses.eni_id(ENI_WEB)})
    d9 = bytearray(datagram(vni=9))
    assert r.process(d9, len(d9), HOST_A) == (HOST_B, 6081)  # a VPC it first heard of by a push
    assert r.relayed == 2


# --- drops ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("outer", [STRANGER, HOST_B, EDGE_IP])
def test_forged_outer_source(outer):
    r, target = relay(datagram(), outer=outer)
    assert target is None
    assert_dropped(r, Drop.OUTER_SOURCE_MISMATCH)


def test_unknown_source():
    r, target = relay(datagram(inner(src="10.0.1.77")))
    assert target is None
    assert_dropped(r, Drop.UNKNOWN_SOURCE)
    assert r.cache.queries == []  # the edge holds every mapping: nothing to ask


@pytest.mark.parametrize("eni", [None, ENI_WEB, 0, (1 << 64) - 1])
def test_source_eni_mismatch(eni):
    r, target = relay(datagram(eni=eni))
    assert target is None
    assert_dropped(r, Drop.SOURCE_ENI_MISMATCH)


@pytest.mark.parametrize("dst", ["10.0.1.99", "10.0.2.1", "8.8.8.8"])
def test_no_mapping_for_the_destination(dst):
    r, target = relay(datagram(inner(dst=dst)))
    assert target is None
    assert_dropped(r, Drop.EDGE_NO_MAPPING)


@pytest.mark.parametrize("vni", [0, 4, geneve.MAX_VNI])
def test_unknown_vni(vni):
    r, target = relay(datagram(vni=vni))
    assert target is None
    assert_dropped(r, Drop.UNKNOWN_VNI)


def test_empty_vpc_is_known_but_has_no_owner():
    r, _ = relay(datagram(vni=3))
    assert_dropped(r, Drop.UNKNOWN_SOURCE)


@pytest.mark.parametrize("d, reason", [
    (b"", Drop.MALFORMED_GENEVE),
    (bytes([0x80]) + datagram()[1:], Drop.MALFORMED_GENEVE),
    (bytes([0x3F]) + datagram()[1:], Drop.MALFORMED_GENEVE),
    (datagram(oam=True), Drop.GENEVE_OAM),
    (datagram(extra=(Option(0x0101, 0x81, b""),)), Drop.UNKNOWN_CRITICAL_OPTION),
    (datagram(proto=0x6558), Drop.UNSUPPORTED_PROTOCOL),
    (datagram(ipv6_packet("fd00::4", "fd00::10", UDP(1, 2)), proto=geneve.PROTO_IPV6), Drop.UNKNOWN_SOURCE),
    (datagram(inner()[:19]), Drop.MALFORMED_PACKET),
])
def test_malformed(d, reason):
    r, target = relay(d)
    assert target is None
    assert_dropped(r, reason)


def test_drops_accumulate():
    r = EdgeRelay(edge_cache())
    for outer in (STRANGER, STRANGER, HOST_A):
        d = bytearray(datagram())
        r.process(d, len(d), outer)
    assert r.drops[Drop.OUTER_SOURCE_MISMATCH] == 2 and r.relayed == 1
    assert r.last_drop is Drop.OUTER_SOURCE_MISMATCH


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=80), st.sampled_from([HOST_A, HOST_B, STRANGER]))
def test_random_bytes_never_raise(data, outer):
    r = EdgeRelay(edge_cache())
    target = r.process(bytearray(data), len(data), outer)
    assert target is None or target in ((HOST_B, 6081), (HOST_C, 6081), (HOST_A, 6081))
    assert (target is None) == (sum(r.drops) == 1)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([1, 2, 3, 4]), st.sampled_from(["10.0.1.4", "10.0.1.10", "10.0.1.77"]),
       st.sampled_from(["10.0.1.4", "10.0.1.10", "10.0.1.77"]),
       st.sampled_from([None, ENI_CLIENT, ENI_WEB, ENI_OTHER, 0xE1]), st.sampled_from([HOST_A, HOST_B, HOST_C]))
def test_decision_matches_the_mappings(vni, src, dst, eni, outer):
    cache = edge_cache()
    r = EdgeRelay(cache)
    d = bytearray(datagram(inner(src, dst), vni=vni, eni=eni))
    target = r.process(d, len(d), outer)
    table = cache.tables.get(vni)
    owner = table.get(addresses.key(src)) if table is not None else None
    if table is None:
        want = Drop.UNKNOWN_VNI
    elif owner is None:
        want = Drop.UNKNOWN_SOURCE
    elif owner.host != outer:
        want = Drop.OUTER_SOURCE_MISMATCH
    elif owner.eni != (-1 if eni is None else eni):
        want = Drop.SOURCE_ENI_MISMATCH
    elif table.get(addresses.key(dst)) is None:
        want = Drop.EDGE_NO_MAPPING
    else:
        want = table[addresses.key(dst)].underlay
    if isinstance(want, Drop):
        assert target is None and r.last_drop is want
    else:
        assert target == want and r.relayed == 1


# --- two hosts and the edge -------------------------------------------------------------------------

class Host:
    def __init__(self, ip, edge):
        self.ip = ip
        self.cache = MappingCache()
        self.vpc = VpcView(1, ipaddress.IPv4Network("10.0.0.0/16"), reserved_keys(["10.0.1.0/24"]),
                           self.cache.table(1))
        self.egress = EgressPath(self.cache, (edge, 6081) if edge else None)
        self.ingress = IngressPath(self.cache, {1: self.vpc}, edge)

    def attach(self, number, ip):
        eni = Eni(addresses.eni_id(number), 1, ipaddress.IPv4Interface(ip), vpc=self.vpc)
        self.vpc.local[eni.ipv4_key] = eni
        return eni

    def send(self, eni, packet, now=0.0):
        """Egress as the agent does it: returns (datagram, target) with the prefix in front."""
        buf = bytearray(geneve.prefix(1, eni.number, False) + packet + bytes(100))
        target = self.egress.process(eni, buf, geneve.INNER_OFFSET_PLAIN, len(packet), now)
        return bytes(buf[:geneve.INNER_OFFSET_PLAIN + len(packet)]), target


def network():
    service = MappingService()
    service.put(1, "10.0.1.4", HOST_A, ENI_CLIENT)
    service.put(1, "10.0.1.10", HOST_B, ENI_WEB)
    a, b, edge = Host(HOST_A, EDGE_IP), Host(HOST_B, EDGE_IP), EdgeRelay(MappingCache())
    client, web = a.attach(ENI_CLIENT, "10.0.1.4/24"), b.attach(ENI_WEB, "10.0.1.10/24")
    for conn, cache, vnis in (("a", a.cache, [1]), ("b", b.cache, [1]), ("edge", edge.cache, None)):
        for _, message in service.handle(conn, decode(encode(cache.subscribe_message(vnis)))):
            cache.apply(decode(encode(message)))
    return service, a, b, edge, client, web


def test_first_packet_through_the_edge_then_direct():
    service, a, b, edge, client, web = network()
    # Host A has not learned web's mapping yet (say the push was lost): its first packet goes to the edge.
    a.cache.apply({"op": "unset", "vni": 1, "addr": "10.0.1.10"})
    pkt = inner("10.0.1.4", "10.0.1.10")
    d, target = a.send(client, pkt)
    assert target == (EDGE_IP, 6081)
    assert edge.process(bytearray(d), len(d), HOST_A) == (HOST_B, 6081)
    got = b.ingress.process(bytearray(d), len(d), EDGE_IP, 0.0)
    assert got is web and bytes(d[b.ingress.inner_off:]) == pkt
    # The reply goes direct: host B knows the client. Host A does not know web yet: it holds the reply.
    reply = inner("10.0.1.10", "10.0.1.4")
    d2, target2 = b.send(web, reply)
    assert target2 == (HOST_A, 6081)
    assert a.ingress.process(bytearray(d2), len(d2), HOST_B, 0.01) is None
    assert a.ingress.last_drop is None and a.ingress.held_total == 1
    assert a.ingress.release(0.02) == []
    # Host A's query (one for both the egress miss and the held reply) is answered ...
    queries = a.cache.take_queries()
    assert queries == [{"op": "query", "vni": 1, "addr": "10.0.1.10"}]
    for q in queries:
        for _, message in service.handle("a", decode(encode(q))):
            a.cache.apply(decode(encode(message)))
    assert a.cache.hits_by_query == 1
    # ... the held reply is delivered, and the next packet goes direct.
    [(eni, held, inner_off, vnet_off)] = a.ingress.release(0.03)
    assert eni is client and held == d2 and (inner_off, vnet_off) == (geneve.INNER_OFFSET_PLAIN, -1)
    assert client.stats[2:] == [1, len(reply)]
    assert a.send(client, pkt)[1] == (HOST_B, 6081)
    assert a.egress.to_edge == 1 and edge.relayed == 1 and b.ingress.from_edge == 1


def test_spoofed_source_cannot_be_laundered_through_the_edge():
    service, a, b, edge, client, web = network()
    # A rogue instance on host C claims the client's address; host C sends to the edge.
    forged = geneve.prefix(1, ENI_CLIENT, False) + inner("10.0.1.4", "10.0.1.10")
    assert edge.process(bytearray(forged), len(forged), HOST_C) is None
    assert edge.last_drop is Drop.OUTER_SOURCE_MISMATCH
    # Sent to host B directly instead, it is dropped there.
    assert b.ingress.process(bytearray(forged), len(forged), HOST_C, 0.0) is None
    assert b.ingress.last_drop is Drop.OUTER_SOURCE_MISMATCH
    # Only the edge's address is trusted for the host check, and the ENI is still checked.
    wrong_eni = geneve.prefix(1, 0x1234, False) + inner("10.0.1.4", "10.0.1.10")
    assert b.ingress.process(bytearray(wrong_eni), len(wrong_eni), EDGE_IP, 0.0) is None
    assert b.ingress.last_drop is Drop.SOURCE_ENI_MISMATCH

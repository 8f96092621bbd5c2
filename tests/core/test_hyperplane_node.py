"""vswitch.hyperplane (the fleet: liveness, owners, messages) and vswitch.hyperplane_node (a node's NAT gateway
and load balancer data path), with packets built by hand and virtual time."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from test_igw import valid
from vswitch import geneve, hyperplane
from vswitch.drops import Drop
from vswitch.headers import ICMP, TCP, UDP, checksum, ipv4_packet
from vswitch.hyperplane import DEAD_AFTER, Fleet
from vswitch.hyperplane_node import NodeCore, tcp_reset

NODES = {"hp-1": "198.18.0.21", "hp-2": "198.18.0.22", "hp-3": "198.18.0.23"}
EDGE, HOST_A, HOST_B = "198.18.0.3", "198.18.0.11", "198.18.0.12"
CLIENT, WEB1, WEB2, NAT_IP, LB_IP = "10.0.2.4", "10.0.2.11", "10.0.2.12", "10.0.1.4", "10.0.1.100"
REMOTE = "203.0.113.10"
ENI = {CLIENT: "eni-00000000000000c1", WEB1: "eni-00000000000000a1", WEB2: "eni-00000000000000a2",
       NAT_IP: "eni-00000000000000f1", LB_IP: "eni-00000000000000f2"}
HOSTS = {CLIENT: HOST_A, WEB1: HOST_B, WEB2: HOST_A, NAT_IP: None, LB_IP: None}


def K(a):
    return int(ipaddress.IPv4Address(a))


def view(health_check=None):
    def eni(ip, subnet):
        return {"id": ENI[ip], "vni": 7, "private_ip": ip, "prefixlen": 24, "underlay_ip": HOSTS[ip],
                "subnet_id": subnet}
    return {"hosts": [{"name": "a", "underlay_ip": HOST_A}, {"name": "b", "underlay_ip": HOST_B}],
            "enis": [eni(CLIENT, "private"), eni(WEB1, "private"), eni(WEB2, "private"), eni(NAT_IP, "public"),
                     eni(LB_IP, "public")],
            "subnets": [{"id": "public", "route_table_id": "rtb-pub"}, {"id": "private", "route_table_id": "rtb-priv"}],
            "route_tables": [
                {"id": "rtb-pub", "routes": [{"destination": "10.0.0.0/16", "target_type": "local", "target_id": None,
                                              "state": "active"},
                                             {"destination": "0.0.0.0/0", "target_type": "igw", "target_id": "igw-1",
                                              "state": "active"}]},
                {"id": "rtb-priv", "routes": [{"destination": "10.0.0.0/16", "target_type": "local",
                                               "target_id": None, "state": "active"},
                                              {"destination": "0.0.0.0/0", "target_type": "nat",
                                               "target_id": "nat-1", "state": "active"}]}],
            "nat_gateways": [{"id": "nat-1", "vni": 7, "subnet_id": "public", "private_ip": NAT_IP,
                              "eni_id": ENI[NAT_IP], "connectivity_type": "public"}],
            "target_groups": [{"id": "tg-1", "vni": 7, "protocol": "tcp", "port": 80,
                               "health_check": health_check or {"protocol": "tcp", "interval": 1, "timeout": 0.5,
                                                                "healthy_threshold": 2, "unhealthy_threshold": 2},
                               "targets": [{"id": "i-web1", "ip": WEB1, "port": 80},
                                           {"id": "i-web2", "ip": WEB2, "port": 80}]}],
            "load_balancers": [{"id": "nlb-1", "vni": 7, "private_ip": LB_IP, "eni_id": ENI[LB_IP],
                                "listeners": [{"protocol": "tcp", "port": 80, "target_group_id": "tg-1"}]}]}


def fleet(alive=NODES, now=0.0):
    f = Fleet(NODES, 2, 6081)
    for ip in (NODES[n] for n in alive):
        f.heard(ip, now)
    return f


def node(name="hp-1", f=None, **kw):
    core = NodeCore(name, f or fleet(), EDGE, 6081, seed=1)
    core.update(view(**kw))
    return core


def datagram(src, dst, l4, eni=None, **ip):
    """A Geneve datagram as a host (or the edge, eni 0) sends it: our fixed layout, no offloads."""
    eni_number = int(ENI[src][4:], 16) if eni is None else eni
    return bytearray(geneve.prefix(7, eni_number, False) + ipv4_packet(src, dst, l4, **ip))


def inner(buf):
    return bytes(buf[geneve.INNER_OFFSET_PLAIN:])


def addrs(pkt):
    ihl = (pkt[0] & 0xF) * 4
    sport, dport = struct.unpack_from("!HH", pkt, ihl)
    return (str(ipaddress.IPv4Address(bytes(pkt[12:16]))), sport, str(ipaddress.IPv4Address(bytes(pkt[16:20]))),
            dport)


def send(core, buf, outer, now=1.0):
    return core.process(buf, len(buf), outer, now)


# --- the fleet ---------------------------------------------------------------------------------------
def test_nodes_live_while_heard_and_die_after_silence():
    f = Fleet(NODES, 2, 6081)
    assert f.heard(NODES["hp-1"], 0.0) and f.heard(NODES["hp-2"], 0.0)
    assert not f.heard("198.18.0.99", 0.0)  # not a fleet address
    assert f.alive == {"hp-1", "hp-2"}
    f.heard(NODES["hp-1"], 0.4)
    assert not f.check(0.45)
    assert f.check(DEAD_AFTER + 0.01) and f.alive == {"hp-1"}


def test_a_flow_moves_to_its_secondary_when_the_primary_dies_and_back_when_it_returns():
    f = fleet(now=0.0)
    primary, secondary = f.owners("nat-1", hyperplane.nat_key(6, K(REMOTE)))
    assert primary and secondary and primary != secondary
    assert f.nat_node("nat-1", 6, K(REMOTE)) == (NODES[primary], 6081)
    for name in NODES:
        if name != primary:
            f.heard(NODES[name], 1.0)
    f.check(1.0)
    assert f.nat_node("nat-1", 6, K(REMOTE)) == (NODES[secondary], 6081)  # the cached answer was dropped
    f.heard(NODES[primary], 1.1)
    assert f.nat_node("nat-1", 6, K(REMOTE)) == (NODES[primary], 6081)
    f2 = fleet(alive=())
    assert f2.nat_node("nat-1", 6, K(REMOTE)) is None


def test_messages_round_trip_and_garbage_is_refused():
    hb = hyperplane.heartbeat("hp-1")
    assert hyperplane.is_oam(hb) and hyperplane.parse_message(hb, len(hb)) == (hyperplane.HEARTBEAT, "hp-1")
    msg = hyperplane.flows_message("hp-1", "nat", "nat-1", [[6, 1, 2, 3, 4, 5, 300.0, 0]])
    kind, body = hyperplane.parse_message(msg, len(msg))
    assert kind == hyperplane.FLOWS and body["flows"] == [[6, 1, 2, 3, 4, 5, 300.0, 0]]
    bad = bytearray(msg)
    bad[20] = 0xFF
    assert hyperplane.parse_message(bad, len(bad)) is None
    assert hyperplane.parse_message(b"\x00\x80", 2) is None


# --- NAT gateway --------------------------------------------------------------------------------------
def test_nat_out_and_back_with_valid_checksums_and_a_copy_on_the_secondary():
    f = fleet()
    primary, secondary = f.owners("nat-1", hyperplane.nat_key(6, K(REMOTE)))
    core = node(primary, f)
    out = datagram(CLIENT, REMOTE, TCP(40000, 80, seq=100, flags=TCP.SYN))
    assert send(core, out, HOST_A) == (EDGE, 6081)
    pkt = inner(out)
    src, nat_port, dst, dport = addrs(pkt)
    assert (src, dst, dport) == (NAT_IP, REMOTE, 80) and 1024 <= nat_port <= 65535 and valid(pkt)
    assert struct.unpack_from("!Q", out, 12)[0] == int(ENI[NAT_IP][4:], 16)  # the gateway's ENI sends it on
    ((to, kind, resource, record),) = core.replicate
    assert (to, kind, resource) == (secondary, "nat", "nat-1")
    # The reply from the internet, through the edge (which made the EIP the gateway's private address).
    back = datagram(REMOTE, NAT_IP, TCP(80, nat_port, seq=7, ack=101, flags=TCP.SYN | TCP.ACK), eni=0)
    assert send(core, back, EDGE) == (HOST_A, 6081)
    assert addrs(inner(back)) == (REMOTE, 80, CLIENT, 40000) and valid(inner(back))
    # The secondary, given the copy, translates the flow's next packet the same way.
    standby = node(secondary, f)
    assert standby.import_flows(kind, resource, [record], 1.0) == 1
    again = datagram(REMOTE, NAT_IP, TCP(80, nat_port, seq=8, ack=101, flags=TCP.ACK), eni=0)
    assert send(standby, again, EDGE, now=2.0) == (HOST_A, 6081)
    assert addrs(inner(again))[2:] == (CLIENT, 40000)


def test_nat_udp_and_ping():
    core = node()
    for l4 in (UDP(5353, 53, b"query"), ICMP(8, 0, b"\x12\x34\x00\x01ping")):
        buf = datagram(CLIENT, REMOTE, l4)
        assert send(core, buf, HOST_A) == (EDGE, 6081)
        assert addrs(inner(buf))[0] == NAT_IP and valid(inner(buf))
    ident = struct.unpack_from("!H", inner(buf), 24)[0]
    reply = datagram(REMOTE, NAT_IP, ICMP(0, 0, struct.pack("!HH", ident, 1) + b"ping"), eni=0)
    assert send(core, reply, EDGE) == (HOST_A, 6081)
    assert inner(reply)[16:20] == ipaddress.IPv4Address(CLIENT).packed and valid(inner(reply))
    assert struct.unpack_from("!H", inner(reply), 24)[0] == 0x1234


@pytest.mark.parametrize("outer, src, eni, reason", [
    (HOST_B, CLIENT, None, Drop.OUTER_SOURCE_MISMATCH),  # another host claims the client
    (HOST_A, CLIENT, 0xBAD, Drop.SOURCE_ENI_MISMATCH),
    (HOST_A, "10.0.2.99", 0, Drop.UNKNOWN_SOURCE),
])
def test_spoofed_senders_are_dropped(outer, src, eni, reason):
    core = node()
    buf = bytearray(geneve.prefix(7, eni if eni is not None else int(ENI[src][4:], 16), False)
                    + ipv4_packet(src, REMOTE, UDP(1, 2, b"x")))
    assert send(core, buf, outer) is None and core.last_drop is reason


def test_internet_packets_without_a_flow_are_refused_and_stray_tcp_gets_nothing():
    core = node()
    buf = datagram(REMOTE, NAT_IP, TCP(80, 40000, flags=TCP.ACK), eni=0)
    assert send(core, buf, EDGE) is None and core.last_drop is Drop.NAT_REFUSED
    assert core.nat_refusals == {"in_no_flow": 1}


def test_oversized_df_packets_get_fragmentation_needed_from_the_subnet_router():
    core = node()
    buf = datagram(CLIENT, REMOTE, UDP(1, 2, bytes(3000)))
    assert send(core, buf, HOST_A) is None and core.last_drop is Drop.TOO_BIG
    ((icmp, to),) = core.outbox
    assert to == (HOST_A, 6081)
    pkt = icmp[geneve.INNER_OFFSET_PLAIN:]
    assert pkt[12:16] == ipaddress.IPv4Address("10.0.2.1").packed and pkt[20:22] == b"\x03\x04"
    assert struct.unpack_from("!H", pkt, 26)[0] == 1500


# --- load balancer ------------------------------------------------------------------------------------
def test_client_to_balancer_to_target_and_the_reply_back_as_the_balancer():
    core = node()
    syn = datagram(CLIENT, LB_IP, TCP(40000, 80, seq=5, flags=TCP.SYN))
    where = send(core, syn, HOST_A)
    src, sport, dst, dport = addrs(inner(syn))
    assert (src, sport, dport) == (CLIENT, 40000, 80) and dst in (WEB1, WEB2) and valid(inner(syn))
    assert where == (HOSTS[dst], 6081)
    reply = datagram(dst, CLIENT, TCP(80, 40000, seq=9, ack=6, flags=TCP.SYN | TCP.ACK))
    assert send(core, reply, HOSTS[dst]) == (HOST_A, 6081)
    assert addrs(inner(reply)) == (LB_IP, 80, CLIENT, 40000) and valid(inner(reply))
    # Sticky: the flow's next packet goes to the same target.
    ack = datagram(CLIENT, LB_IP, TCP(40000, 80, seq=6, ack=10, flags=TCP.ACK))
    send(core, ack, HOST_A)
    assert addrs(inner(ack))[2] == dst


def test_a_target_talking_to_a_client_directly_is_relayed_unchanged():
    core = node()
    buf = datagram(WEB1, CLIENT, TCP(80, 40001, seq=9, ack=6, flags=TCP.ACK))
    before = inner(buf)
    assert send(core, buf, HOST_B) == (HOST_A, 6081) and inner(buf) == before


def test_a_stray_tcp_packet_to_the_balancer_is_answered_with_a_reset():
    core = node()
    buf = datagram(CLIENT, LB_IP, TCP(40000, 80, seq=5, ack=77, flags=TCP.ACK))
    assert send(core, buf, HOST_A) is None and core.last_drop is Drop.NLB_REFUSED
    ((rst, to),) = core.outbox
    pkt = rst[geneve.INNER_OFFSET_PLAIN:]
    assert to == (HOST_A, 6081) and addrs(pkt) == (LB_IP, 80, CLIENT, 40000) and valid(pkt)
    assert pkt[33] == 0x04 and struct.unpack_from("!I", pkt, 24)[0] == 77  # RST, seq = the segment's ack


def test_tcp_reset_for_a_syn_acknowledges_it():
    rst = tcp_reset(ipv4_packet(CLIENT, LB_IP, TCP(1, 2, seq=10, flags=TCP.SYN)))
    assert rst[33] == 0x14 and struct.unpack_from("!I", rst, 28)[0] == 11 and valid(rst)
    assert tcp_reset(ipv4_packet(CLIENT, LB_IP, TCP(1, 2, flags=TCP.RST))) is None


def test_health_checks_go_from_the_balancer_and_their_answers_decide():
    f = fleet()
    shard = f.shard("nlb-1")
    core = node(shard[0], f)
    core.health(0.0)
    probes = {p.target_id: p for p in core.probes.values()}
    assert set(probes) == {"i-web1:80", "i-web2:80"} and len(core.outbox) == 2
    for key, p in list(core.probes.items()):
        _, lb_ip, port = key
        # The port was chosen so that the target's answer comes back to this very node.
        assert f.owners("nlb-1", hyperplane.nlb_key(6, lb_ip, port))[0] == core.name
    core.outbox.clear()
    # web1 accepts, web2 refuses; twice each (thresholds 2).
    for t in (0.0, 1.0):
        if t:
            core.health(t)
        for key, p in list(core.probes.items()):
            syn = p.probe.start()
            seq = struct.unpack_from("!I", syn, 24)[0]
            target = WEB1 if p.target_id == "i-web1:80" else WEB2
            flags = TCP.SYN | TCP.ACK if target == WEB1 else TCP.RST | TCP.ACK
            answer = datagram(target, LB_IP, TCP(80, key[2], seq=1000, ack=seq + 1, flags=flags))
            assert send(core, answer, HOSTS[target], now=t + 0.1) is None
    group = core.groups["tg-1"]
    assert group.state("i-web1:80").value == "healthy" and group.state("i-web2:80").value == "unhealthy"
    # New flows go to the healthy target only.
    for port in range(41000, 41020):
        syn = datagram(CLIENT, LB_IP, TCP(port, 80, seq=port, flags=TCP.SYN))
        send(core, syn, HOST_A, now=3.0)
        assert addrs(inner(syn))[2] == WEB1


def test_flows_replicate_to_the_other_owner_and_resync_sends_them_all():
    f = fleet()
    core = node("hp-1", f)
    for port in range(42000, 42050):
        send(core, datagram(CLIENT, LB_IP, TCP(port, 80, seq=port, flags=TCP.SYN)), HOST_A)
        send(core, datagram(CLIENT, f"203.0.113.{port % 200 + 1}", UDP(port, 53, b"q")), HOST_A)
    sent = len(core.replicate)
    assert sent == 100  # every new flow has exactly one other owner among 3 live nodes with shards of 2 ... or 0
    core.replicate.clear()
    core.resync(1.5)
    assert len(core.replicate) == sent
    other = node("hp-2", f)
    for to, kind, resource, record in core.replicate:
        if to == "hp-2":
            assert other.import_flows(kind, resource, [record], 1.5) == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([EDGE, HOST_A, HOST_B, "198.18.0.99"]))
def test_garbage_never_raises(data, outer):
    core = node()
    buf = bytearray(geneve.prefix(7, int(ENI[CLIENT][4:], 16), False)) + data
    core.process(buf, len(buf), outer, 1.0)
    core.process(bytearray(data), len(data), outer, 1.0)


def test_a_tcp_packet_after_the_idle_timeout_is_answered_with_a_reset():
    core = node()
    send(core, datagram(CLIENT, REMOTE, TCP(40000, 80, seq=1, flags=TCP.SYN)), HOST_A, now=1.0)
    late = datagram(CLIENT, REMOTE, TCP(40000, 80, seq=2, ack=50, flags=TCP.ACK))
    assert send(core, late, HOST_A, now=1.0 + 350) is None
    assert core.nat_refusals == {"out_idle_timeout": 1}
    ((rst, to),) = core.outbox
    pkt = rst[geneve.INNER_OFFSET_PLAIN:]
    assert to == (HOST_A, 6081) and addrs(pkt) == (REMOTE, 80, CLIENT, 40000) and pkt[33] == 0x04 and valid(pkt)
    assert core.nats["nat-1"].core.idle_timeouts == 1


def test_an_icmp_error_from_the_internet_reaches_the_instance_with_its_own_addresses_in_the_quote():
    core = node()
    out = datagram(CLIENT, REMOTE, UDP(5353, 9999, b"hello"))
    send(core, out, HOST_A)
    quoted = inner(out)[:28]  # what the remote got: the gateway's address and port
    nat_port = struct.unpack_from("!H", quoted, 20)[0]
    err = datagram(REMOTE, NAT_IP, ICMP(3, 3, bytes(4) + quoted), eni=0)  # port unreachable
    assert send(core, err, EDGE) == (HOST_A, 6081)
    pkt = inner(err)
    assert addrs(pkt)[::2] == (REMOTE, CLIENT) and valid(pkt)
    q = pkt[28:]
    assert q[12:16] == ipaddress.IPv4Address(CLIENT).packed and struct.unpack_from("!H", q, 20)[0] == 5353
    assert checksum(q[:20]) == 0 and nat_port != 0
    # An error quoting nothing of ours is refused.
    stray = datagram(REMOTE, NAT_IP, ICMP(3, 3, bytes(4) + ipv4_packet(REMOTE, "203.0.113.99", UDP(1, 2))[:28]), eni=0)
    assert send(core, stray, EDGE) is None and core.nat_refusals.get("in_icmp_error_unrelated") == 1

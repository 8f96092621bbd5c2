"""vswitch.vpc_resolver: the VPC's built-in resolver, through real packets.

Queries are built with dpkt and the project's header builders; replies are read back with dpkt (an
independent parser) after checking their IPv4 header and UDP checksums with ``dpkt.in_cksum``.
"""

from __future__ import annotations

import ipaddress
import struct

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import imported_modules
from vswitch import vpc_resolver
from vswitch.drops import Drop
from vswitch.headers import TCP, UDP, IPv4, ipv4_packet, ipv6_packet
from vswitch.vpc_resolver import RESOLVER_V4, RESOLVER_V6, Forward, VpcResolver

DNS = dpkt.dns.DNS
A, AAAA, CNAME, PTR, TXT, SOA, OPT, ANY = 1, 28, 5, 12, 16, 6, 41, 255
NOERR, FORMERR, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 3, 4, 5
CLIENT, CLIENT6 = "10.0.1.5", "2600:1f18:a::5"
BASE2 = "10.0.0.2"

VIEW = {
    "revision": 42,
    "vpcs": [
        {"id": "vpc-a", "vni": 100, "cidr_block": "10.0.0.0/16",
         "dhcp_options": {"domain_name": "corp.internal", "domain_name_servers": ["AmazonProvidedDNS"],
                          "ntp_servers": []}},
        {"id": "vpc-b", "vni": 200, "cidr_block": "10.1.0.0/20"},
    ],
    "enis": [
        {"id": "eni-a1", "vni": 100, "private_ip": "10.0.1.5", "instance": "web", "ipv6_address": CLIENT6},
        {"id": "eni-a2", "vni": 100, "private_ip": "10.0.2.9", "instance": "", "ipv6_address": "2600:1f18:a::9"},
        {"id": "eni-a3", "vni": 100, "private_ip": "10.0.3.7", "instance": "bad name"},  # not a label: ip- name only
        {"id": "eni-b1", "vni": 200, "private_ip": "10.1.3.4", "instance": "db", "ipv6_address": None},
        {"id": "eni-b2", "vni": 200, "private_ip": "10.1.3.5", "instance": "web"},  # same name, another VPC
    ],
    "load_balancers": [
        {"id": "nlb-1", "vni": 100, "private_ip": "10.0.3.3", "dns_name": "my-lb-0123.elb.lab-1.vpc.internal"},
        {"id": "nlb-2", "vni": 100, "private_ip": "10.0.3.4"},  # no dns_name: nothing
    ],
    "dns_zones": [
        {"id": "z-corp", "account": "111", "name": "corp.example.", "vpc_ids": ["vpc-a"], "records": [
            {"name": "www.corp.example", "type": "A", "ttl": 300, "values": ["10.0.1.5", "10.0.2.9"]},
            {"name": "Alias.Corp.Example.", "type": "CNAME", "ttl": 120, "values": ["www.corp.example"]},
            {"name": "app.corp.example", "type": "CNAME", "ttl": 120, "values": ["web.lab-1.compute.internal"]},
            {"name": "ext.corp.example", "type": "CNAME", "ttl": 120, "values": ["www.example.com"]},
            {"name": "loop1.corp.example", "type": "CNAME", "ttl": 5, "values": ["loop2.corp.example"]},
            {"name": "loop2.corp.example", "type": "CNAME", "ttl": 5, "values": ["loop1.corp.example"]},
            {"name": "gone.corp.example", "type": "CNAME", "values": ["nothing.corp.example"]},
            {"name": "corp.example", "type": "TXT", "ttl": 60, "values": ['"v=spf1 -all"', '"two" "str\\"ings"']},
            {"name": "big.corp.example", "type": "TXT", "ttl": 60, "values": [f'"{c * 200}"' for c in "abcd"]},
            {"name": "v6.corp.example", "type": "AAAA", "ttl": 60, "values": [CLIENT6]},
            {"name": "x.deep.corp.example", "type": "A", "values": ["10.0.9.9"]},  # deep: an empty non-terminal
            {"name": "hidden.dev.corp.example", "type": "A", "values": ["10.0.9.8"]},  # below the nested zone
            {"name": "elsewhere.example", "type": "A", "values": ["10.0.0.1"]},  # outside the zone: skipped
            {"name": "bad.corp.example", "type": "A", "values": ["not-an-address"]},  # skipped
        ]},
        {"id": "z-dev", "account": "111", "name": "dev.corp.example", "vpc_ids": ["vpc-a"], "records": [
            {"name": "api.dev.corp.example", "type": "A", "ttl": 30, "values": ["10.0.5.5"]}]},
        {"id": "z-b", "account": "222", "name": "only-b.example", "vpc_ids": ["vpc-b", "vpc-gone"], "records": [
            {"name": "db.only-b.example", "type": "A", "ttl": 30, "values": ["10.1.3.4"]}]},
        {"id": "z-rev", "account": "111", "name": "9.0.10.in-addr.arpa", "vpc_ids": ["vpc-a"], "records": [
            {"name": "9.9.0.10.in-addr.arpa", "type": "PTR", "ttl": 30, "values": ["x.deep.corp.example"]}]},
    ],
}


def make(**kw) -> VpcResolver:
    r = VpcResolver(**kw)
    r.update(VIEW)
    return r


def query(name: str, qtype: int = A, *, qid: int = 0x1234, edns: int | None = None, do: bool = False,
          opcode: int = 0, cls: int = 1, rd: int = 1, options: bytes = b"") -> bytes:
    q = DNS(id=qid, rd=rd, qd=[DNS.Q(name=name, type=qtype, cls=cls)])
    q.opcode = opcode
    if edns is not None:
        q.ar = [DNS.RR(name="", type=OPT, cls=edns, ttl=0x8000 if do else 0, rdata=options)]
    return bytes(q)


def packet(dns: bytes, *, src: str = CLIENT, dst: str = BASE2, sport: int = 40000, dport: int = 53) -> bytes:
    build = ipv6_packet if ":" in src else ipv4_packet
    return build(src, dst, UDP(sport, dport, dns))


def parse(reply: bytes, dns: bool = True) -> tuple[str, str, int, int, DNS | bytes]:
    """A reply packet's (source, destination, source port, destination port, DNS), checksums checked;
    the DNS message as bytes if not ``dns`` (an upstream's answer is relayed whatever it holds)."""
    if reply[0] >> 4 == 4:
        ip = dpkt.ip.IP(reply)
        ihl = ip.hl * 4
        assert ip.len == len(reply) and ip.p == 17 and dpkt.in_cksum(reply[:ihl]) == 0
        seg = reply[ihl:]
        pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, 17, len(seg))
    else:
        ip = dpkt.ip6.IP6(reply)
        assert ip.nxt == 17 and ip.plen == len(reply) - 40
        seg = reply[40:]
        pseudo = ip.src + ip.dst + struct.pack("!IxxxB", len(seg), 17)
    sport, dport, length, csum = struct.unpack_from("!HHHH", seg)
    assert length == len(seg) and csum != 0 and dpkt.in_cksum(pseudo + seg) == 0  # UDP checksum: always set
    src, dst = str(ipaddress.ip_address(ip.src)), str(ipaddress.ip_address(ip.dst))
    return src, dst, sport, dport, DNS(seg[8:]) if dns else seg[8:]


def ask(r: VpcResolver, name: str, qtype: int = A, *, eni: str = "eni-a1", vni: int = 100, src: str = CLIENT,
        dst: str = BASE2, sport: int = 40000, now: float = 0.0, **kw) -> DNS:
    """Ask, expect a local reply from the address asked to the asking port, return its DNS message."""
    out = r.handle(eni, vni, packet(query(name, qtype, **kw), src=src, dst=dst, sport=sport), now)
    assert isinstance(out, bytes), out
    rsrc, rdst, rsport, rdport, dns = parse(out)
    assert (rsrc, rdst, rsport, rdport) == (str(ipaddress.ip_address(dst)), str(ipaddress.ip_address(src)), 53, sport)
    assert (dns.id, dns.qr, dns.ra, dns.opcode) == (kw.get("qid", 0x1234), 1, 1, 0)
    assert [(q.name, q.type) for q in dns.qd] == [(name, qtype)]
    return dns


def value(rr) -> object:
    return {A: lambda: str(ipaddress.IPv4Address(rr.ip)), AAAA: lambda: str(ipaddress.IPv6Address(rr.ip6)),
            CNAME: lambda: rr.cname, PTR: lambda: rr.ptrname, TXT: lambda: rr.text,
            SOA: lambda: (rr.mname, rr.rname, rr.serial, rr.minimum)}[rr.type]()


def rrs(section) -> list[tuple]:
    return [(rr.name, rr.type, rr.ttl, value(rr)) for rr in section]


def forwarded(r: VpcResolver, name: str, qtype: int = A, **kw) -> DNS:
    eni, vni, src, dst, now = (kw.pop(k, d) for k, d in (("eni", "eni-a1"), ("vni", 100), ("src", CLIENT),
                                                          ("dst", BASE2), ("now", 0.0)))
    out = r.handle(eni, vni, packet(query(name, qtype, **kw), src=src, dst=dst), now)
    assert isinstance(out, Forward), out
    fq = DNS(out.payload)
    assert fq.qr == 0 and [(q.name, q.type) for q in fq.qd] == [(name, qtype)]
    return fq


def upstream_answer(fq: DNS, *answers, rcode: int = NOERR) -> bytes:
    r = DNS(id=fq.id, qd=fq.qd, an=list(answers))
    r.qr, r.ra, r.rcode = 1, 0, rcode  # RA clear: the lab's upstream is authoritative-only
    return bytes(r)


def a_rr(name: str, ip: str, ttl: int = 30):
    return DNS.RR(name=name, type=A, cls=1, ttl=ttl, ip=ipaddress.IPv4Address(ip).packed)


def negative_soa(dns: DNS, apex: str) -> None:
    assert rrs(dns.ns) == [(apex, SOA, 60, (apex, f"hostmaster.{apex}", 42, 60))]


# --- the pure core -----------------------------------------------------------------------------------

def test_pure_core_imports_no_io():
    assert not imported_modules(vpc_resolver) & {"asyncio", "socket", "fcntl", "os", "time", "logging", "structlog"}


# --- names the resolver owns ---------------------------------------------------------------------------

def test_private_hostname_a_record():
    dns = ask(make(), "ip-10-0-2-9.lab-1.compute.internal", rd=1)
    assert (dns.aa, dns.rd, dns.tc, dns.rcode) == (1, 1, 0, NOERR)
    assert rrs(dns.an) == [("ip-10-0-2-9.lab-1.compute.internal", A, 60, "10.0.2.9")]
    assert not dns.ar  # no OPT asked, none given
    via_link_local = ask(make(), "ip-10-0-2-9.lab-1.compute.internal", dst=RESOLVER_V4)  # replies from it
    assert rrs(via_link_local.an) == rrs(dns.an)


def test_names_are_case_insensitive_and_answers_echo_the_question():
    dns = ask(make(), "IP-10-0-1-5.Lab-1.COMPUTE.internal", rd=0)
    assert dns.rd == 0 and rrs(dns.an) == [("IP-10-0-1-5.Lab-1.COMPUTE.internal", A, 60, "10.0.1.5")]


def test_ptr_v4_in_the_vpc_its_gaps_and_outside():
    r = make()
    dns = ask(r, "5.1.0.10.in-addr.arpa", PTR)
    assert dns.aa and rrs(dns.an) == [("5.1.0.10.in-addr.arpa", PTR, 60, "ip-10-0-1-5.lab-1.compute.internal")]
    missing = ask(r, "99.1.0.10.in-addr.arpa", PTR)  # in the VPC, nobody: NXDOMAIN, never forwarded
    assert missing.rcode == NXDOMAIN and not missing.an
    negative_soa(missing, "0.10.in-addr.arpa")
    ent = ask(r, "1.0.10.in-addr.arpa", PTR)  # an ancestor of a record: exists, no data
    assert (ent.rcode, ent.an) == (NOERR, [])
    forwarded(r, "8.8.8.8.in-addr.arpa", PTR)  # outside the VPC: the world's
    # VPC B is a /20: its reverse zones are 16 /24s; 10.1.20.1 is outside it
    assert ask(r, "4.3.1.10.in-addr.arpa", PTR, eni="eni-b1", vni=200, src="10.1.3.4",
               dst="10.1.0.2").an[0].ptrname == "ip-10-1-3-4.lab-1.compute.internal"
    assert ask(r, "9.3.1.10.in-addr.arpa", PTR, eni="eni-b1", vni=200, src="10.1.3.4",
               dst="10.1.0.2").rcode == NXDOMAIN
    forwarded(r, "1.20.1.10.in-addr.arpa", PTR, eni="eni-b1", vni=200, src="10.1.3.4", dst="10.1.0.2")


def test_a_private_reverse_zone_overrides_the_built_in_one():
    r = make()
    dns = ask(r, "9.9.0.10.in-addr.arpa", PTR)
    assert rrs(dns.an) == [("9.9.0.10.in-addr.arpa", PTR, 30, "x.deep.corp.example")]
    assert ask(r, "1.9.0.10.in-addr.arpa", PTR).rcode == NXDOMAIN


def test_ptr_v6_names_the_instance_or_the_ip_hostname():
    r = make()
    name = ipaddress.IPv6Address(CLIENT6).reverse_pointer
    assert len(name.split(".")) == 34  # 32 nibbles
    dns = ask(r, name, PTR, src=CLIENT6, dst=RESOLVER_V6)
    assert rrs(dns.an) == [(name, PTR, 60, "web.lab-1.compute.internal")]
    nameless = ipaddress.IPv6Address("2600:1f18:a::9").reverse_pointer
    assert rrs(ask(r, nameless, PTR).an) == [(nameless, PTR, 60, "ip-10-0-2-9.lab-1.compute.internal")]
    # no IPv6 CIDR in the view: only the ENIs' own addresses are ours, the rest goes upstream
    forwarded(r, ipaddress.IPv6Address("2600:1f18:a::77").reverse_pointer, PTR)


def test_an_ipv6_cidr_in_the_view_makes_its_reverse_zone_ours():
    view = {**VIEW, "vpcs": [{**VIEW["vpcs"][0], "ipv6_cidr_block": "2600:1f18:a::/56"}, VIEW["vpcs"][1]]}
    r = VpcResolver()
    r.update(view)
    nx = ask(r, ipaddress.IPv6Address("2600:1f18:a:ff::77").reverse_pointer, PTR)  # in the /56, nobody's
    assert nx.rcode == NXDOMAIN
    negative_soa(nx, "0.0.a.0.0.0.8.1.f.1.0.0.6.2.ip6.arpa")  # cut at the /56's nibble boundary
    assert value(ask(r, ipaddress.IPv6Address(CLIENT6).reverse_pointer, PTR).an[0]) == "web.lab-1.compute.internal"
    forwarded(r, ipaddress.IPv6Address("2600:1f18:b::1").reverse_pointer, PTR)


def test_instance_names_per_vpc():
    r = make()
    assert rrs(ask(r, "web.lab-1.compute.internal").an) == [("web.lab-1.compute.internal", A, 60, "10.0.1.5")]
    assert rrs(ask(r, "web.lab-1.compute.internal", AAAA).an) == [("web.lab-1.compute.internal", AAAA, 60, CLIENT6)]
    b = dict(eni="eni-b1", vni=200, src="10.1.3.4", dst="10.1.0.2")
    assert value(ask(r, "web.lab-1.compute.internal", **b).an[0]) == "10.1.3.5"  # VPC B's own "web"
    nodata = ask(r, "db.lab-1.compute.internal", AAAA, **b)  # an instance without IPv6
    assert (nodata.rcode, nodata.an) == (NOERR, [])
    negative_soa(nodata, "lab-1.compute.internal")
    assert ask(r, "db.lab-1.compute.internal").rcode == NXDOMAIN  # VPC A has no "db"
    assert r.status()["skipped_records"] >= 1  # "bad name", the zone's two bad records


def test_dhcp_domain_serves_instance_names_and_forwards_the_rest():
    r = make()
    assert rrs(ask(r, "web.corp.internal").an) == [("web.corp.internal", A, 60, "10.0.1.5")]
    assert rrs(ask(r, "Web.Corp.Internal", AAAA).an) == [("Web.Corp.Internal", AAAA, 60, CLIENT6)]
    forwarded(r, "mail.corp.internal")  # not ours: the domain's owner may have it
    forwarded(r, "corp.internal", SOA)
    forwarded(r, "web.corp.internal", eni="eni-b1", vni=200, src="10.1.3.4", dst="10.1.0.2")  # not VPC B's


def test_load_balancer_name():
    r = make()
    dns = ask(r, "my-lb-0123.elb.lab-1.vpc.internal")
    assert dns.aa and rrs(dns.an) == [("my-lb-0123.elb.lab-1.vpc.internal", A, 60, "10.0.3.3")]
    gone = ask(r, "other-lb-9.elb.lab-1.vpc.internal")
    assert gone.rcode == NXDOMAIN
    negative_soa(gone, "elb.lab-1.vpc.internal")


def test_built_in_zones_are_authoritative():
    r = make()
    dns = ask(r, "nobody.lab-1.compute.internal")
    assert (dns.aa, dns.rcode, dns.an) == (1, NXDOMAIN, [])
    negative_soa(dns, "lab-1.compute.internal")
    apex = ask(r, "lab-1.compute.internal", SOA)
    assert rrs(apex.an) == [("lab-1.compute.internal", SOA, 60,
                             ("lab-1.compute.internal", "hostmaster.lab-1.compute.internal", 42, 60))]
    assert r.status()["nxdomain"] == 1 and r.status()["forwarded"] == 0


# --- private hosted zones ----------------------------------------------------------------------------

def test_private_zone_a_aaaa_txt():
    r = make()
    assert rrs(ask(r, "WWW.corp.example").an) == [("WWW.corp.example", A, 300, "10.0.1.5"),
                                                 ("WWW.corp.example", A, 300, "10.0.2.9")]
    assert rrs(ask(r, "v6.corp.example", AAAA).an) == [("v6.corp.example", AAAA, 60, CLIENT6)]
    txt = ask(r, "corp.example", TXT)
    assert rrs(txt.an) == [("corp.example", TXT, 60, ["v=spf1 -all"]), ("corp.example", TXT, 60, ["two", 'str"ings'])]


def test_private_zone_nxdomain_and_nodata():
    r = make()
    nx = ask(r, "nope.corp.example")
    assert (nx.aa, nx.rcode, nx.an) == (1, NXDOMAIN, [])
    negative_soa(nx, "corp.example")
    nodata = ask(r, "www.corp.example", AAAA)
    assert (nodata.rcode, nodata.an) == (NOERR, [])
    negative_soa(nodata, "corp.example")
    ent = ask(r, "deep.corp.example")  # above x.deep: exists
    assert (ent.rcode, ent.an) == (NOERR, [])
    forwarded(r, "elsewhere.example")  # a record outside its zone was skipped: the name is the world's
    assert ask(r, "bad.corp.example").rcode == NXDOMAIN


def test_cname_chased_through_our_zones():
    r = make()
    dns = ask(r, "alias.CORP.example")
    assert rrs(dns.an) == [("alias.CORP.example", CNAME, 120, "www.corp.example"),
                           ("www.corp.example", A, 300, "10.0.1.5"), ("www.corp.example", A, 300, "10.0.2.9")]
    across = ask(r, "app.corp.example")  # into the built-in zone
    assert rrs(across.an) == [("app.corp.example", CNAME, 120, "web.lab-1.compute.internal"),
                              ("web.lab-1.compute.internal", A, 60, "10.0.1.5")]
    assert rrs(ask(r, "alias.corp.example", CNAME).an) == [("alias.corp.example", CNAME, 120, "www.corp.example")]
    nx = ask(r, "gone.corp.example")  # the chain ends at a missing name: its NXDOMAIN (RFC 6604)
    assert nx.rcode == NXDOMAIN and [rr.type for rr in nx.an] == [CNAME]
    nodata = ask(r, "alias.corp.example", TXT)  # the target has no TXT
    assert nodata.rcode == NOERR and [rr.type for rr in nodata.an] == [CNAME]


def test_cname_out_of_our_zones_or_looping_stops():
    r = make()
    ext = ask(r, "ext.corp.example")
    assert (ext.rcode, rrs(ext.an)) == (NOERR, [("ext.corp.example", CNAME, 120, "www.example.com")])
    loop = ask(r, "loop1.corp.example")
    assert loop.rcode == NOERR and [value(rr) for rr in loop.an] == ["loop2.corp.example", "loop1.corp.example"]


def test_nested_zones_most_specific_wins():
    r = make()
    assert rrs(ask(r, "api.dev.corp.example").an) == [("api.dev.corp.example", A, 30, "10.0.5.5")]
    hidden = ask(r, "hidden.dev.corp.example")  # the parent's record below the child's apex: not seen
    assert hidden.rcode == NXDOMAIN
    negative_soa(hidden, "dev.corp.example")


def test_zone_not_associated_with_this_vpc_is_forwarded():
    r = make()
    forwarded(r, "db.only-b.example")
    b = ask(r, "db.only-b.example", eni="eni-b1", vni=200, src="10.1.3.4", dst="10.1.0.2")
    assert rrs(b.an) == [("db.only-b.example", A, 30, "10.1.3.4")]
    forwarded(r, "www.corp.example", eni="eni-b1", vni=200, src="10.1.3.4", dst="10.1.0.2")


def test_any_returns_every_rrset_of_the_name():
    dns = ask(make(), "corp.example", ANY)
    assert sorted({rr.type for rr in dns.an}) == [SOA, TXT]


def test_update_replaces_everything():
    r = make()
    r.update({**VIEW, "enis": [e for e in VIEW["enis"] if e["id"] != "eni-a2"], "dns_zones": []})
    assert ask(r, "ip-10-0-2-9.lab-1.compute.internal").rcode == NXDOMAIN
    forwarded(r, "www.corp.example")


# --- EDNS, truncation, header-only errors -------------------------------------------------------------

def test_edns_opt_echoed_with_do():
    dns = ask(make(), "web.lab-1.compute.internal", edns=4096, do=True, options=b"\x00\x0a\x00\x08cookie!!")
    assert [(rr.type, rr.cls, rr.ttl, rr.rdata) for rr in dns.ar] == [(OPT, 1232, 0x8000, b"")]
    assert len(dns.an) == 1


def test_truncation_without_edns_and_room_with_it():
    r = make()
    small = ask(r, "big.corp.example", TXT)
    assert small.tc == 1 and len(bytes(small)) <= 512 and 0 < len(small.an) < 4
    assert all(len(rr.text[0]) == 200 for rr in small.an)  # whole RRs only
    large = ask(r, "big.corp.example", TXT, edns=4096)
    assert large.tc == 0 and len(large.an) == 4 and len(bytes(large)) <= 1232
    tight = ask(r, "big.corp.example", TXT, edns=100)  # below 512 counts as 512
    assert tight.tc == 1 and len(bytes(tight)) <= 512 and tight.ar[0].type == OPT


def test_edns_version_other_than_zero_is_badvers():
    q = DNS(id=7, qd=[DNS.Q(name="web.lab-1.compute.internal", type=A)],
            ar=[DNS.RR(name="", type=OPT, cls=1232, ttl=1 << 16)])
    _, _, _, _, dns = parse(make().handle("eni-a1", 100, packet(bytes(q)), 0.0))
    assert (dns.rcode, dns.an, dns.ar[0].ttl >> 24) == (0, [], 1)  # extended rcode 16 = BADVERS


@pytest.mark.parametrize("opcode, qd, rcode", [(dpkt.dns.DNS_NOTIFY, 1, NOTIMP), (dpkt.dns.DNS_UPDATE, 1, NOTIMP),
                                               (0, 0, FORMERR), (0, 2, FORMERR)])
def test_header_we_do_not_serve_gets_a_header_only_error(opcode, qd, rcode):
    q = DNS(id=99, rd=1, qd=[DNS.Q(name=f"n{i}.example", type=A) for i in range(qd)])
    q.opcode = opcode
    r = make()
    _, _, _, _, dns = parse(r.handle("eni-a1", 100, packet(bytes(q)), 0.0))
    assert (dns.id, dns.qr, dns.opcode, dns.rcode, dns.rd, dns.qd, dns.an) == (99, 1, opcode, rcode, 1, [], [])
    assert r.status()["answered_local"] == 1


def test_other_classes_are_refused_with_an_answer():
    dns = ask(make(), "version.bind", TXT, cls=3)
    assert (dns.rcode, dns.aa, dns.an) == (REFUSED, 0, [])


# --- what is not served --------------------------------------------------------------------------------

def _refused_packets() -> dict[str, tuple[int, bytes]]:
    q = query("web.lab-1.compute.internal")
    response = DNS(q)
    response.qr = 1
    frag = IPv4(ipaddress.IPv4Address(CLIENT), ipaddress.IPv4Address(BASE2), 17,
                UDP(40000, 53, q).emit(ipaddress.IPv4Address(CLIENT).packed, ipaddress.IPv4Address(BASE2).packed),
                more_fragments=True).emit()
    good = packet(q)
    bad_csum = good[:10] + bytes([good[10] ^ 0xFF]) + good[11:]
    ext = bytearray(packet(q, src=CLIENT6, dst=RESOLVER_V6))
    ext[6] = 0  # hop-by-hop options header in front of UDP
    return {
        "tcp": (100, ipv4_packet(CLIENT, BASE2, TCP(40000, 53))),
        "other port": (100, packet(q, dport=5353)),
        "not a resolver address": (100, packet(q, dst="10.0.0.3")),
        "another vpc's base + 2": (100, packet(q, dst="10.1.0.2")),
        "unknown vni": (999, good),
        "a response": (100, packet(bytes(response))),
        "fragment": (100, frag),
        "bad ip checksum": (100, bad_csum),
        "ipv6 extension header": (100, bytes(ext)),
        "ipv6 to another address": (100, packet(q, src=CLIENT6, dst="fd00:ec2::254")),
        "short dns": (100, packet(q[:11])),
        "question past the end": (100, packet(q[:20])),
        "empty": (100, b""),
        "garbage": (100, b"\x99" * 40),
    }


@pytest.mark.parametrize("case", list(_refused_packets()))
def test_refused_and_counted(case):
    vni, pkt = _refused_packets()[case]
    r = make()
    assert r.handle("eni-a1", vni, pkt, 0.0) is None
    assert r.last_drop == Drop.DNS_REFUSED and r.drops[Drop.DNS_REFUSED] == 1
    assert r.status()["refused"] == 1 and r.status()["queries"] == 1


# --- forwarding upstream -------------------------------------------------------------------------------

@pytest.mark.parametrize("src, dst", [(CLIENT, BASE2), (CLIENT, RESOLVER_V4), (CLIENT6, RESOLVER_V6)])
def test_forward_round_trip_restores_id_and_addressing(src, dst):
    r = make()
    fq = forwarded(r, "www.example.com", src=src, dst=dst, qid=0xBEEF, edns=1232)
    assert fq.rd == 1 and fq.ar[0].type == OPT
    eni, reply = r.upstream_reply(upstream_answer(fq, a_rr("www.example.com", "93.184.216.34")), 0.5)
    rsrc, rdst, sport, dport, dns = parse(reply)
    assert eni == "eni-a1" and (rsrc, rdst, sport, dport) == (dst, src, 53, 40000)
    assert (dns.id, dns.rcode) == (0xBEEF, NOERR) and rrs(dns.an) == [("www.example.com", A, 30, "93.184.216.34")]
    assert dns.ra == 1  # the instance asked a recursive resolver, whatever the upstream says of itself
    assert r.upstream_reply(upstream_answer(fq), 0.6) is None  # answered: no longer pending
    s = r.status()
    assert (s["forwarded"], s["upstream_answers"], s["pending"], s["upstream_unmatched"]) == (1, 1, 0, 1)


def test_forward_keeps_options_caps_the_size_and_counts_upstream_nxdomain():
    r = make()
    fq = forwarded(r, "nx.example.com", edns=4096, do=True, options=b"\x00\x0a\x00\x08cookie!!")
    assert [(rr.cls, rr.ttl, rr.rdata) for rr in fq.ar] == [(1232, 0x8000, b"\x00\x0a\x00\x08cookie!!")]
    _, reply = r.upstream_reply(upstream_answer(fq, rcode=NXDOMAIN), 1.0)
    assert parse(reply)[4].rcode == NXDOMAIN and r.status()["nxdomain"] == 1


def test_retransmission_reuses_the_pending_entry_and_ids_are_unique():
    r = make()
    first, again = forwarded(r, "a.example.com"), forwarded(r, "a.example.com", now=1.0)
    assert first.id == again.id and r.status()["pending"] == 1
    ids = {forwarded(r, f"n{i}.example.com", qid=i).id for i in range(300)}
    assert len(ids) == 300 and first.id not in ids and r.status()["pending"] == 301


def test_expired_forwards_are_forgotten():
    r = make(forward_timeout=5.0)
    old = forwarded(r, "old.example.com", now=0.0)
    young = forwarded(r, "young.example.com", now=3.0)
    assert r.expire(5.0) == 0 and r.expire(5.5) == 1 and r.status()["pending"] == 1
    assert r.upstream_reply(upstream_answer(old), 5.5) is None
    assert r.upstream_reply(upstream_answer(young), 8.5) is None  # past its time, even if not swept yet
    assert r.status()["pending"] == 0 and r.status()["expired"] == 2


def test_unknown_id_other_question_and_garbage_are_ignored():
    r = make()
    fq = forwarded(r, "q.example.com")
    other = DNS(id=(fq.id + 1) % 65536, qd=fq.qd)
    other.qr = 1
    assert r.upstream_reply(bytes(other), 0.1) is None
    spoof = DNS(id=fq.id, qd=[DNS.Q(name="evil.example.com", type=A)])
    spoof.qr = 1
    assert r.upstream_reply(bytes(spoof), 0.1) is None and r.status()["pending"] == 1  # the real one may come
    for junk in (b"", b"\x00", fq.pack()[:11], bytes(DNS(id=fq.id, qd=fq.qd))):  # the last: QR clear
        assert r.upstream_reply(junk, 0.1) is None
    s = r.status()
    assert (s["upstream_unmatched"], s["upstream_malformed"], s["pending"]) == (2, 4, 1)
    assert r.upstream_reply(upstream_answer(fq, a_rr("Q.example.com", "192.0.2.1")), 0.2) is not None  # case


def test_the_oldest_pending_is_evicted_when_full():
    r = make(max_pending=2)
    first = forwarded(r, "one.example.com", now=0.0)
    forwarded(r, "two.example.com", now=0.1)
    forwarded(r, "three.example.com", now=0.2)
    assert r.status()["pending"] == 2 and r.status()["evicted"] == 1
    assert r.upstream_reply(upstream_answer(first), 0.3) is None


def test_upstream_reply_too_big_for_the_client_is_truncated():
    r = make()
    fq = forwarded(r, "many.example.com")  # no EDNS: 512 bytes
    big = upstream_answer(fq, *[a_rr("many.example.com", f"192.0.2.{i}") for i in range(40)])
    assert len(big) > 512
    _, reply = r.upstream_reply(big, 0.1)
    dns = parse(reply)[4]
    assert (dns.id, dns.tc, dns.an, [q.name for q in dns.qd]) == (0x1234, 1, [], ["many.example.com"])


def test_upstream_reply_with_types_dpkt_cannot_parse_is_relayed_whole():
    r = make()
    fq = forwarded(r, "svc.example.com", 65)  # HTTPS
    answer = bytearray(bytes(upstream_answer(fq)))
    struct.pack_into("!H", answer, 6, 1)
    answer += b"\xc0\x0c" + struct.pack("!HHIH", 65, 1, 300, 3) + b"\x00\x01\x00"
    with pytest.raises(dpkt.UnpackError):
        DNS(bytes(answer))
    _, reply = r.upstream_reply(bytes(answer), 0.1)
    assert reply.endswith(bytes(answer[4:])) and reply[30] == answer[2] and reply[31] == answer[3] | 0x80 and struct.unpack_from("!H", reply, 28)[0] == 0x1234


# --- rate limiting ---------------------------------------------------------------------------------------

def test_rate_limit_in_virtual_time():
    r = make()
    pkt = packet(query("web.lab-1.compute.internal"))
    assert all(isinstance(r.handle("eni-a1", 100, pkt, 10.0), bytes) for _ in range(1024))
    assert r.handle("eni-a1", 100, pkt, 10.0) is None
    assert r.last_drop == Drop.DNS_RATE_LIMITED and r.drops[Drop.DNS_RATE_LIMITED] == 1
    assert isinstance(r.handle("eni-a1", 100, pkt, 10.0 + 1 / 1024), bytes)  # one token back per 1/1024 s
    assert r.handle("eni-a1", 100, pkt, 10.0 + 1 / 1024) is None
    assert r.handle("eni-a1", 100, pkt, 9.0) is None  # time going backwards refills nothing
    passed = sum(isinstance(r.handle("eni-a1", 100, pkt, 100.0), bytes) for _ in range(2000))
    assert passed == 1024  # a long pause refills the burst, no more
    s = r.status()
    assert (s["rate_limited"], s["queries"]) == (3 + 976, 1024 + 1 + 1 + 1 + 1 + 2000)


def test_rate_limit_is_per_eni_and_counts_everything_sent():
    r = make()
    junk = b"\x45" + b"\x00" * 30
    assert all(r.handle("eni-a1", 100, junk, 0.0) is None for _ in range(1024))
    assert r.drops[Drop.DNS_REFUSED] == 1024 and r.handle("eni-a1", 100, junk, 0.0) is None
    assert r.last_drop == Drop.DNS_RATE_LIMITED
    out = r.handle("eni-a2", 100, packet(query("web.lab-1.compute.internal"), src="10.0.2.9"), 0.0)
    assert isinstance(out, bytes)


def test_update_forgets_the_buckets_of_gone_enis():
    r = make()
    pkt = packet(query("web.lab-1.compute.internal"))
    assert sum(r.handle("eni-a1", 100, pkt, 0.0) is not None for _ in range(1100)) == 1024
    r.update({**VIEW, "enis": VIEW["enis"][1:]})
    r.update(VIEW)  # back, with a fresh bucket
    assert sum(r.handle("eni-a1", 100, pkt, 0.0) is not None for _ in range(1100)) == 1024


def test_counters_add_up():
    r = make()
    ask(r, "web.lab-1.compute.internal")
    ask(r, "nobody.lab-1.compute.internal")
    forwarded(r, "www.example.com")
    r.handle("eni-a1", 100, b"junk", 0.0)
    s = r.status()
    assert s["queries"] == s["answered_local"] + s["forwarded"] + s["refused"] + s["rate_limited"] == 4
    assert (s["answered_local"], s["nxdomain"], s["forwarded"], s["refused"], s["pending"]) == (2, 1, 1, 1, 1)


# --- nothing a packet holds can raise ---------------------------------------------------------------------

FUZZ = make(rate=1e12, burst=1e12)
SEEDS = [
    packet(query("web.lab-1.compute.internal")),
    packet(query("alias.corp.example", edns=1232, do=True), dst=RESOLVER_V4),
    packet(query(ipaddress.IPv6Address(CLIENT6).reverse_pointer, PTR, edns=512), src=CLIENT6, dst=RESOLVER_V6),
    packet(query("www.example.com")),
]
FUZZ_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_output(out) -> None:
    """Whatever comes out is a well-formed packet (good checksums) holding a response, or a query to
    forward. Its DNS is not read with dpkt: a question with non-UTF-8 labels is echoed, dpkt refuses it."""
    assert out is None or isinstance(out, (Forward, bytes))
    if isinstance(out, bytes):
        assert parse(out, dns=False)[4][2] & 0x80  # QR
    if isinstance(out, Forward):
        assert len(out.payload) >= 12 and not out.payload[2] & 0x80


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    buf = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["set", "cut", "insert"]))
        at = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "set" and buf:
            buf[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del buf[at:at + draw(st.integers(1, 8))]
        else:
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(buf)


@FUZZ_SETTINGS
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data):
    check_output(FUZZ.handle("eni-a1", 100, data, 0.0))
    assert FUZZ.upstream_reply(data, 0.0) is None


@FUZZ_SETTINGS
@given(mutated(SEEDS))
def test_mutated_queries_never_raise(pkt):
    check_output(FUZZ.handle("eni-a1", 100, pkt, 0.0))


@FUZZ_SETTINGS
@given(st.binary(max_size=300), st.sampled_from([(CLIENT, BASE2), (CLIENT6, RESOLVER_V6)]))
def test_arbitrary_dns_in_good_packets_never_raises(dns, addresses):
    check_output(FUZZ.handle("eni-a1", 100, packet(dns, src=addresses[0], dst=addresses[1]), 0.0))


@FUZZ_SETTINGS
@given(st.data())
def test_mutated_upstream_replies_never_raise(data):
    r = make()
    fq = forwarded(r, "www.example.com", edns=1232)
    good = upstream_answer(fq, a_rr("www.example.com", "192.0.2.1"))
    out = r.upstream_reply(data.draw(mutated([good])), 0.1)
    if out is not None:
        eni, (src, dst, sport, dport, dns) = out[0], parse(out[1], dns=False)
        assert (eni, src, dst, sport, dport, dns[:2]) == ("eni-a1", BASE2, CLIENT, 53, 40000, b"\x12\x34")

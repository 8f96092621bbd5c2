"""agents.internet_dns: the lab internet's resolver answers its zone and nothing else."""

import dpkt
from hypothesis import given, strategies as st

from agents.internet_dns import answer

ZONE = {"www.example.test": "203.0.113.10"}


def query(name, qtype=dpkt.dns.DNS_A, opcode=dpkt.dns.DNS_QUERY):
    return bytes(dpkt.dns.DNS(id=0x1234, opcode=opcode, rd=1,
                              qd=[dpkt.dns.DNS.Q(name=name, type=qtype, cls=dpkt.dns.DNS_IN)]))


def test_a_record_of_the_zone():
    r = dpkt.dns.DNS(answer(query("WWW.Example.test"), ZONE))  # names are case-insensitive
    assert (r.id, r.qr, r.aa, r.rcode) == (0x1234, dpkt.dns.DNS_R, 1, dpkt.dns.DNS_RCODE_NOERR)
    assert [(a.type, a.rdata) for a in r.an] == [(dpkt.dns.DNS_A, bytes([203, 0, 113, 10]))]


def test_unknown_name_other_type_other_opcode():
    assert dpkt.dns.DNS(answer(query("nope.example.test"), ZONE)).rcode == dpkt.dns.DNS_RCODE_NXDOMAIN
    nodata = dpkt.dns.DNS(answer(query("www.example.test", dpkt.dns.DNS_AAAA), ZONE))
    assert nodata.rcode == dpkt.dns.DNS_RCODE_NOERR and not nodata.an
    notimp = dpkt.dns.DNS(answer(query("www.example.test", opcode=dpkt.dns.DNS_UPDATE), ZONE))
    assert notimp.rcode == dpkt.dns.DNS_RCODE_NOTIMP


@given(st.binary(max_size=300))
def test_garbage_is_ignored_never_raises(data):
    out = answer(data, ZONE)
    assert out is None or isinstance(out, bytes)

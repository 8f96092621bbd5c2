"""The lab internet's DNS resolver: ``python -m agents.internet_dns ADDRESS NAME=IP...``.

A stand-in for the public DNS an instance reaches through its internet gateway: it answers A queries
for the names it is given (and their subdomains: no), NXDOMAIN for other names, NOTIMP for anything
but a standard query, over UDP port 53 on ADDRESS. Enough for `dig @203.0.113.53 www.example.test`
and for resolvers that forward to it; not a recursive resolver. ``answer`` is the pure part.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys

import dpkt

TTL = 60


def answer(query: bytes, zone: dict[str, str]) -> bytes | None:
    """The response to one DNS message, or None if it is not a parseable query (dropped, as resolvers
    do with garbage). ``zone``: lower-case fully qualified name without the final dot → IPv4 address."""
    try:
        q = dpkt.dns.DNS(query)
    except (dpkt.UnpackError, ValueError, IndexError):
        return None
    if q.qr != dpkt.dns.DNS_Q:
        return None
    r = dpkt.dns.DNS(id=q.id, qr=dpkt.dns.DNS_R, opcode=q.opcode, rd=q.rd, ra=0, aa=1, qd=q.qd, an=[])
    if q.opcode != dpkt.dns.DNS_QUERY or len(q.qd) != 1:
        r.rcode = dpkt.dns.DNS_RCODE_NOTIMP
        return bytes(r)
    question = q.qd[0]
    name = question.name.rstrip(".").lower()
    if name not in zone:
        r.rcode = dpkt.dns.DNS_RCODE_NXDOMAIN
    elif question.type == dpkt.dns.DNS_A and question.cls == dpkt.dns.DNS_IN:
        r.an.append(dpkt.dns.DNS.RR(name=question.name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN, ttl=TTL,
                                    ip=ipaddress.IPv4Address(zone[name]).packed))
    # A known name asked for another type: NOERROR with no answer (NODATA), as DNS says.
    return bytes(r)


class _Server(asyncio.DatagramProtocol):
    def __init__(self, zone: dict[str, str]):
        self.zone = zone

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        reply = answer(data, self.zone)
        if reply is not None:
            self.transport.sendto(reply, addr)


async def serve(address: str, zone: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _Server(zone), local_addr=(address, 53))
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.exit(__doc__)
    zone = {}
    for item in args[1:]:
        name, _, ip = item.partition("=")
        zone[name.rstrip(".").lower()] = str(ipaddress.IPv4Address(ip))
    asyncio.run(serve(args[0], zone))


if __name__ == "__main__":
    main()

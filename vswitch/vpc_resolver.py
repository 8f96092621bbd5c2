"""The VPC resolver ("AmazonProvidedDNS"): the pure core a host agent runs for the ENIs it serves.

An instance asks 169.254.169.253, its VPC's base address + 2 (10.0.0.2 in 10.0.0.0/16) or fd00:ec2::253;
the host agent hands every such packet here and writes back what comes out. No I/O, no clock: time is
the ``now`` each call passes, so rate limits and timeouts are tested in virtual time::

    instance ──IP/UDP:53──▶ handle(eni_id, vni, packet, now)
                     │ token bucket of the ENI (1,024/s, burst 1,024) ── empty ──▶ None  DNS_RATE_LIMITED
                     │ IPv4/IPv6 to a resolver address, UDP to 53, a query ── no ──▶ None  DNS_REFUSED
                     │ (odd header: opcode ≠ QUERY ▶ NOTIMP, counts ≠ 1/0/0/≤1 ▶ FORMERR reply)
                     │ most specific zone of the VPC at or above the name?
                     ├─ yes ─▶ answer / NODATA / NXDOMAIN (CNAMEs chased through our zones) ─▶ bytes
                     └─ no ──▶ Forward(the query, fresh id) ──▶ host agent ──▶ upstream resolver
                                                                                 │
    instance ◀── (eni_id, reply packet, its own id) ◀── upstream_reply(payload, now) ◀─┘
                                     (unknown/expired id or another question ▶ None, counted)

Zones of a VPC (``update``), the most specific apex answering, a private hosted zone overriding the
built-in names below its apex:
- ``<region>.compute.internal``: ``ip-10-0-1-5`` A of every ENI, ``<instance>`` A/AAAA (TTL 60);
- ``elb.<region>.vpc.internal``: load balancers' ``dns_name`` A;
- the reverse zones of the VPC's CIDR (and of ``ipv6_cidr_block`` if the view has one), cut at octet
  (nibble) boundaries, so only addresses inside it are ours (``/17`` → 128 ``/24`` zones); an ENI
  address outside them gets a one-name zone of its own. PTR → ``ip-…`` name (IPv4) or, for an IPv6
  address, the instance name if it has one;
- private hosted zones associated with the VPC (A, AAAA, CNAME, TXT, PTR);
- the DHCP options' domain name(s), if not the region's: instance names only, *not* authoritative —
  another name there is forwarded (the real domain is somebody's on the internet).
In an authoritative zone a missing name is NXDOMAIN, a name with other types (or an empty non-terminal,
an ancestor of a record) is NODATA, both with the zone's SOA for negative caching (RFC 2308).

Choices (Unbound's, where there was room):
- Discarded (None, ``DNS_REFUSED``): anything not UDP/53 to a resolver address, IPv4 fragments or a bad
  IPv4 header checksum, a response (QR set: never answer answers, no loops), a message we cannot read
  to the end of its question and OPT (Unbound would FORMERR it; silence gives garbage nothing to
  reflect). A readable header we do not serve is answered header-only, as Unbound does:
  opcode ≠ QUERY → NOTIMP; TC set, qdcount ≠ 1, an/ns records or more than one additional → FORMERR.
  Class other than IN (or ANY) → REFUSED. EDNS version ≠ 0 → BADVERS. The UDP checksum is not
  checked: the instance may have left it partial for offload (virtio NEEDS_CSUM) and the packet did
  not cross a wire.
- Replies: RA always (we recurse), AA on our own answers, RD/CD copied, the question echoed as asked
  (answer owners point at it, so they echo its case). With an OPT in the query, one in the reply
  (size 1232, DO copied). Size limit 512, or the client's EDNS size capped at 1232; RRs that do not fit
  are left off from the end and TC is set (TCP is not served yet: a client retrying over TCP fails).
- A CNAME target outside our zones is left to the client, as an authoritative server does; chains stop
  after 8 links or on a loop, returning what was followed. No wildcards: ``*`` is an ordinary label.
- Forwarding sends the question re-encoded (no trailing junk) with the client's flags and OPT options
  (size capped at 1232, the DNS flag-day size) under a random id (``secrets``: an upstream answer must
  not be guessable) unique among pending ones. A retransmission of a pending query (same ENI, address,
  port, id and question) reuses its entry. When ``max_pending`` are pending, the oldest is forgotten
  (its instance retries), so a flood from one ENI cannot lock the others out for ``forward_timeout``.
- An upstream reply is relayed byte for byte but its id, after its question is checked against the
  pending one (case-insensitively): it may carry any RR type. If it exceeds the client's limit it is
  cut to header + question with TC.
- Built by hand, not with ``dpkt.dns.DNS`` (used for its constants, and by the tests as an independent
  parser): dpkt rejects whole messages with RR types it does not know (HTTPS, RRSIG, TSIG…), decodes
  names to text (a label holding a '.' or non-UTF-8 bytes cannot be echoed back exactly) and does not
  check label lengths when packing. Names here are tuples of raw labels.
Counters: ``queries`` is every packet handed to ``handle``; each ends as exactly one of
``answered_local``, ``forwarded``, ``refused`` or ``rate_limited``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import secrets
import struct
from typing import Any

from dpkt import dns as D

from .drops import Drop, new_counters
from .headers import PROTO_UDP, IPv4, IPv6, UDP, checksum

RESOLVER_V4 = "169.254.169.253"
RESOLVER_V6 = "fd00:ec2::253"
PRIVATE_TTL = 60  # private hostnames and instance names; also the SOA's and negative answers' TTL
EDNS_SIZE = 1232
MAX_CHAIN = 8
DEFAULT_ZONE_TTL = 300
BADVERS = 16

Labels = tuple[bytes, ...]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")  # type, class, TTL, rdata length
_QTAIL = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_QR, _OPCODE, _AA, _TC, _RD, _RA, _CD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
_DO = 0x8000  # in the OPT's TTL field
_V4_RESOLVER = int(ipaddress.IPv4Address(RESOLVER_V4))
_V6_RESOLVER = ipaddress.IPv6Address(RESOLVER_V6)
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")  # an instance name must be one host label to become a name
_TXT = re.compile(r'"((?:[^"\\]|\\.)*)"')
_MALFORMED = (ValueError, IndexError, struct.error)  # all a packet can make our parsers raise


class _Malformed(ValueError):
    """Bytes that are not a DNS message we can read."""


@dataclasses.dataclass(slots=True, frozen=True)
class Forward:
    """Send ``payload`` (a DNS query under a fresh id) to the upstream resolver."""

    payload: bytes


def _lower(labels: Labels) -> Labels:
    return tuple(label.lower() for label in labels)


def _wire(labels: Labels) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def _read_name(buf: bytes, off: int) -> tuple[Labels, int]:
    """The labels of the name at ``off`` and the offset after it. A pointer must point before the
    piece of name that holds it (as dpkt checks), so no chain of pointers can loop."""
    labels, size, end, start = [], 1, -1, off
    while True:
        n = buf[off]
        if n >= 0xC0:
            if end < 0:
                end = off + 2
            ptr = (n & 0x3F) << 8 | buf[off + 1]
            if ptr >= start:
                raise _Malformed("compression pointer not backwards")
            start = off = ptr
        elif n >= 0x40:
            raise _Malformed("unknown label type")
        elif n == 0:
            return tuple(labels), end if end >= 0 else off + 1
        else:
            size += n + 1
            if off + 1 + n > len(buf) or size > 255:
                raise _Malformed("label past the end or name over 255 bytes")
            labels.append(buf[off + 1:off + 1 + n])
            off += 1 + n


def _labels(name: Any) -> Labels | None:
    """A configured name (trailing dot optional) as labels, or None if it cannot be a DNS name."""
    if not isinstance(name, str) or not name.isascii() or any(c.isspace() for c in name):
        return None
    parts = name[:-1].split(".") if name.endswith(".") else name.split(".")
    labels = tuple(p.encode() for p in parts)
    if not all(0 < len(label) < 64 for label in labels) or len(_wire(labels)) > 255:
        return None
    return labels


def _txt(value: str) -> bytes:
    """A TXT value as Route 53 writes it (``"one" "two"``, ``\\"`` escapes) or bare text: its strings."""
    parts = [re.sub(r"\\(.)", r"\1", p) for p in _TXT.findall(value)] if value.startswith('"') else [value]
    raw = [p.encode() for p in parts] or [b""]
    chunks = [r[i:i + 255] for r in raw for i in range(0, max(len(r), 1), 255)]
    return b"".join(bytes((len(c),)) + c for c in chunks)


def _reverse(address: Address, bits: int | None = None) -> Labels:
    """The reverse name of ``address`` (in-addr.arpa or nibble ip6.arpa), of its first ``bits`` only."""
    labels = tuple(p.encode() for p in address.reverse_pointer.split("."))
    width = 8 if address.version == 4 else 4
    return labels[(address.max_prefixlen - (address.max_prefixlen if bits is None else bits)) // width:]


@dataclasses.dataclass(slots=True)
class _Query:
    id: int
    flags: int
    labels: Labels  # as asked, case kept
    key: Labels  # lower case, for lookups
    qtype: int
    qclass: int
    question: bytes  # re-encoded without compression: echoed in replies, sent upstream
    opt: tuple[int, int, bytes] | None  # the OPT's UDP size, TTL field (ext. rcode, version, DO) and options

    @property
    def limit(self) -> int:
        return 512 if self.opt is None else min(max(self.opt[0], 512), EDNS_SIZE)


def _parse_query(dns: bytes) -> _Query | int:
    """The query in ``dns``, or the rcode of a header-only error reply; raises on what is unreadable."""
    _, flags, qd, an, ns, ar = _HEADER.unpack_from(dns)
    if flags & _QR:
        raise _Malformed("a response")
    if flags & _OPCODE:
        return D.DNS_RCODE_NOTIMP
    if flags & _TC or qd != 1 or an or ns or ar > 1:
        return D.DNS_RCODE_FORMERR
    labels, off = _read_name(dns, 12)
    qtype, qclass = _QTAIL.unpack_from(dns, off)
    opt = None
    if ar:
        owner, off = _read_name(dns, off + 4)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(dns, off)
        if off + 10 + rdlen > len(dns):
            raise _Malformed("additional record past the end")
        if rtype == D.DNS_OPT:
            if owner:
                return D.DNS_RCODE_FORMERR  # RFC 6891: the OPT's owner is the root
            opt = (rclass, ttl, dns[off + 10:off + 10 + rdlen])
    question = _wire(labels) + _QTAIL.pack(qtype, qclass)
    return _Query(_U16.unpack_from(dns)[0], flags, labels, _lower(labels), qtype, qclass, question, opt)


class _Writer:
    """A reply being written: header, question, then RRs with name compression, cut to fit ``limit``."""

    def __init__(self, q: _Query):
        self.buf = bytearray(12) + q.question
        self.ptrs: dict[Labels, int] = {}
        self.counts = [0, 0]  # answer, authority
        self.limit = q.limit - (11 if q.opt else 0)  # room for the OPT we add at the end
        self.truncated = False
        at = 12
        for i, label in enumerate(q.labels):  # owners equal to the question point at it: its case echoed
            self.ptrs[q.labels[i:]] = at
            at += 1 + len(label)

    def name(self, labels: Labels) -> None:
        """Compressed against names written before, case-sensitively: every name keeps its own case."""
        for i, label in enumerate(labels):
            at = self.ptrs.get(labels[i:])
            if at is not None:
                self.buf += _U16.pack(0xC000 | at)
                return
            if len(self.buf) < 0x3FFF:
                self.ptrs[labels[i:]] = len(self.buf)
            self.buf += bytes((len(label),)) + label
        self.buf.append(0)

    def rr(self, section: int, owner: Labels, rtype: int, ttl: int, value: Any) -> None:
        if self.truncated:
            return
        mark = len(self.buf)
        self.name(owner)
        self.buf += _RR.pack(rtype, D.DNS_IN, ttl, 0)
        start = len(self.buf)
        if rtype in (D.DNS_CNAME, D.DNS_PTR):
            self.name(value)
        elif rtype == D.DNS_SOA:
            self.name(value[0])
            self.name(value[1])
            self.buf += struct.pack("!5I", *value[2:])
        else:
            self.buf += value
        _U16.pack_into(self.buf, start - 2, len(self.buf) - start)
        if len(self.buf) > self.limit:  # later RRs never follow, so pointers into the cut are never used
            del self.buf[mark:]
            self.truncated = True
        else:
            self.counts[section] += 1

    def finish(self, q: _Query, rcode: int) -> bytes:
        flags = _QR | _RA | (q.flags & (_RD | _CD)) | (rcode & 0xF) | (_TC if self.truncated else 0)
        if rcode in (D.DNS_RCODE_NOERR, D.DNS_RCODE_NXDOMAIN):
            flags |= _AA
        if q.opt is not None:
            self.buf += b"\x00" + _RR.pack(D.DNS_OPT, EDNS_SIZE, (rcode >> 4) << 24 | (q.opt[1] & _DO), 0)
        _HEADER.pack_into(self.buf, 0, q.id, flags, 1, *self.counts, int(q.opt is not None))
        return bytes(self.buf)


@dataclasses.dataclass(slots=True)
class _Zone:
    apex: Labels  # as configured: the owner of its SOA
    authoritative: bool  # False for a DHCP domain: names we do not have there are forwarded
    private: bool  # a private hosted zone: built-in names are never added to it
    soa: tuple | None = None  # (mname, rname, serial, refresh, retry, expire, minimum)
    rrsets: dict[Labels, dict[int, list[tuple[int, Any]]]] = dataclasses.field(default_factory=dict)
    nodes: set[Labels] = dataclasses.field(default_factory=set)  # owners and ancestors: names that exist

    def add(self, owner: Labels, rtype: int, ttl: int, value: Any) -> None:
        key = _lower(owner)
        rrs = self.rrsets.setdefault(key, {}).setdefault(rtype, [])
        if all(v != value for _, v in rrs):
            rrs.append((ttl, value))
        shortest = len(self.apex) + (0 if self.authoritative else 1)  # a DHCP domain's apex is not ours
        self.nodes.update(key[i:] for i in range(len(key) - shortest + 1))


@dataclasses.dataclass(slots=True)
class _Vpc:
    dns_v4: int  # base address + 2
    zones: dict[Labels, _Zone]

    def zone(self, key: Labels) -> _Zone | None:
        """The most specific zone at or above ``key``."""
        for i in range(len(key)):
            zone = self.zones.get(key[i:])
            if zone is not None:
                return zone
        return None


@dataclasses.dataclass(slots=True)
class _Pending:
    eni_id: str
    orig_id: int
    question: tuple[Labels, int, int]  # lower-case name, type, class
    asked: Address  # the resolver address it asked: the reply comes from it, in its IP version
    client: Address
    port: int
    limit: int  # the client's reply size limit
    since: float
    dedup: tuple


def _packet(asked: Address, client: Address, port: int, dns: bytes) -> bytes:
    udp = UDP(53, port, dns).emit(asked.packed, client.packed)
    if asked.version == 4:
        return IPv4(asked, client, PROTO_UDP, udp).emit()
    return IPv6(asked, client, PROTO_UDP, udp).emit()


class VpcResolver:
    def __init__(self, region: str = "lab-1", rate: float = 1024.0, burst: float = 1024.0,
                 forward_timeout: float = 5.0, max_pending: int = 4096):
        self.region, self.rate, self.burst, self.forward_timeout = region, rate, burst, forward_timeout
        self.max_pending = max(1, min(max_pending, 65536))  # ids are 16 bits
        self.drops = new_counters()
        self.last_drop: Drop | None = None
        self.counters = dict.fromkeys(("queries", "answered_local", "forwarded", "upstream_answers", "nxdomain",
                                       "expired", "evicted", "upstream_unmatched", "upstream_malformed",
                                       "skipped_records"), 0)
        self._vpcs: dict[int, _Vpc] = {}
        self._buckets: dict[str, list[float]] = {}  # ENI → [tokens, last refill]
        self._pending: dict[int, _Pending] = {}  # by upstream id, oldest first
        self._by_client: dict[tuple, int] = {}  # (ENI, address, port, id, question) → upstream id

    # --- the infrastructure view -----------------------------------------------------------------
    def update(self, view: dict) -> None:
        """Rebuild every VPC's zones from the control plane's infrastructure view; a record that cannot
        be a DNS record (an instance name with a space, a bad address) is skipped, counted in
        ``skipped_records`` (of this view, not a running total)."""
        self.counters["skipped_records"] = 0
        compute = _labels(f"{self.region}.compute.internal")
        serial = int(view.get("revision") or 1) & 0xFFFFFFFF

        def authority(apex: Labels, private: bool = False) -> _Zone:
            zone = _Zone(apex, authoritative=True, private=private,
                         soa=(apex, (b"hostmaster",) + apex, serial, 7200, 900, 1209600, PRIVATE_TTL))
            zone.add(apex, D.DNS_SOA, PRIVATE_TTL, zone.soa)
            return zone

        def skip() -> None:
            self.counters["skipped_records"] += 1

        vpcs, by_id, nets, domains = {}, {}, {}, {}
        for v in view.get("vpcs", []):
            net = ipaddress.IPv4Network(v["cidr_block"], strict=False)
            vpc = vpcs[v["vni"]] = by_id[v["id"]] = _Vpc(int(net.network_address) + 2, {})
            nets[v["vni"]] = [net] + ([ipaddress.IPv6Network(v["ipv6_cidr_block"], strict=False)]
                                      if v.get("ipv6_cidr_block") else [])
            names = ((v.get("dhcp_options") or {}).get("domain_name") or "").split()
            domains[v["vni"]] = [d for d in map(_labels, names) if d and _lower(d) != _lower(compute)]
            for d in domains[v["vni"]]:  # first: a private zone or a built-in one at the same apex wins
                vpc.zones[_lower(d)] = _Zone(d, authoritative=False, private=False)
        for z in view.get("dns_zones", []):
            apex = _labels(z.get("name"))
            if apex is None:
                skip()
                continue
            zone = authority(apex, private=True)
            for r in z.get("records", []):
                try:
                    self._zone_record(zone, r)
                except (ValueError, TypeError, KeyError):
                    skip()
            for vpc_id in z.get("vpc_ids", []):
                if vpc_id in by_id:  # one zone object shared: nothing is ever added to a private zone later
                    by_id[vpc_id].zones[_lower(apex)] = zone
        for vni, vpc in vpcs.items():  # built-in zones: the region's names are not for customers to shadow
            apexes = [compute, _labels(f"elb.{self.region}.vpc.internal")]
            for net in nets[vni]:
                width = 8 if net.version == 4 else 4
                cut = -(-net.prefixlen // width) * width
                apexes += [_reverse(s.network_address, cut) for s in net.subnets(new_prefix=cut)]
            vpc.zones.update((_lower(apex), authority(apex)) for apex in apexes)

        def add(vpc: _Vpc, owner: Labels, rtype: int, value: Any, reverse: bool = False) -> None:
            zone = vpc.zone(_lower(owner))
            if zone is None and reverse:  # an ENI address outside the VPC's CIDR: a zone of its own
                zone = vpc.zones[_lower(owner)] = authority(owner)
            if zone is not None and not zone.private:  # under a private zone's apex, the zone answers
                zone.add(owner, rtype, PRIVATE_TTL, value)

        for e in view.get("enis", []):
            vpc = vpcs.get(e.get("vni"))
            try:
                ip4 = ipaddress.IPv4Address(e["private_ip"])
                ip6 = ipaddress.IPv6Address(e["ipv6_address"]) if e.get("ipv6_address") else None
            except (ValueError, TypeError, KeyError):
                skip()
                continue
            if vpc is None:
                continue
            host = (f"ip-{str(ip4).replace('.', '-')}".encode(),) + compute
            add(vpc, host, D.DNS_A, ip4.packed)
            add(vpc, _reverse(ip4), D.DNS_PTR, host, reverse=True)
            name = e.get("instance") or ""
            if name and not _LABEL.fullmatch(name):
                skip()
                name = ""
            for domain in [compute, *domains[e["vni"]]] if name else []:
                add(vpc, (name.encode(),) + domain, D.DNS_A, ip4.packed)
                if ip6 is not None:
                    add(vpc, (name.encode(),) + domain, D.DNS_AAAA, ip6.packed)
            if ip6 is not None:
                add(vpc, _reverse(ip6), D.DNS_PTR, (name.encode(),) + compute if name else host, reverse=True)
        for lb in view.get("load_balancers", []):
            vpc, owner = vpcs.get(lb.get("vni")), _labels(lb.get("dns_name"))
            if vpc is not None and owner is not None and lb.get("private_ip"):
                try:
                    add(vpc, owner, D.DNS_A, ipaddress.IPv4Address(lb["private_ip"]).packed)
                except ValueError:
                    skip()
        self._vpcs = vpcs
        enis = {e.get("id") for e in view.get("enis", [])}
        self._buckets = {k: b for k, b in self._buckets.items() if k in enis}  # gone ENIs: forget

    @staticmethod
    def _zone_record(zone: _Zone, r: dict) -> None:
        owner, rtype = _labels(r["name"]), r["type"]
        if owner is None or len(owner) < len(zone.apex) or _lower(owner[-len(zone.apex):]) != _lower(zone.apex):
            raise ValueError(f"{r['name']!r} is not a name in zone {zone.apex!r}")
        ttl = max(0, min(int(r.get("ttl", DEFAULT_ZONE_TTL)), 2**31 - 1))
        values = list(r["values"])[:1] if rtype == "CNAME" else list(r["values"])  # one CNAME per name
        for value in values:
            if rtype == "A":
                zone.add(owner, D.DNS_A, ttl, ipaddress.IPv4Address(value).packed)
            elif rtype == "AAAA":
                zone.add(owner, D.DNS_AAAA, ttl, ipaddress.IPv6Address(value).packed)
            elif rtype in ("CNAME", "PTR") and _labels(value) is not None:
                zone.add(owner, D.DNS_CNAME if rtype == "CNAME" else D.DNS_PTR, ttl, _labels(value))
            elif rtype == "TXT" and isinstance(value, str):
                zone.add(owner, D.DNS_TXT, ttl, _txt(value))
            else:
                raise ValueError(f"unsupported record {rtype} {value!r}")

    # --- queries from instances --------------------------------------------------------------------
    def handle(self, eni_id: str, vni: int, packet, now: float) -> bytes | Forward | None:
        """A packet an instance sent to a resolver address: the reply packet to write back to it, a query
        to forward upstream, or None (dropped: ``last_drop`` says why)."""
        self.counters["queries"] += 1
        if not self._take(eni_id, now):
            return self._drop(Drop.DNS_RATE_LIMITED)
        try:
            out = self._serve(eni_id, vni, bytes(packet), now)
        except _MALFORMED:  # _Malformed, HeaderError, UnicodeError… are ValueErrors
            out = None
        return self._drop(Drop.DNS_REFUSED) if out is None else out

    def _take(self, eni_id: str, now: float) -> bool:
        bucket = self._buckets.get(eni_id)
        if bucket is None:
            bucket = self._buckets[eni_id] = [self.burst, now]
        elif now > bucket[1]:  # a clock going backwards refills nothing
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] < 1:
            return False
        bucket[0] -= 1
        return True

    def _drop(self, reason: Drop) -> None:
        self.last_drop = reason
        self.drops[reason] += 1

    def _serve(self, eni_id: str, vni: int, buf: bytes, now: float) -> bytes | Forward | None:
        vpc = self._vpcs.get(vni)
        if vpc is None or not buf:
            return None
        if buf[0] >> 4 == 4:
            ip = IPv4.parse(buf)
            if checksum(buf[:20 + len(ip.options)]) or ip.more_fragments or ip.frag_offset \
                    or ip.proto != PROTO_UDP or int(ip.dst) not in (_V4_RESOLVER, vpc.dns_v4):
                return None
        else:
            ip = IPv6.parse(buf)  # raises unless version 6
            if ip.next_header != PROTO_UDP or ip.dst != _V6_RESOLVER:  # extension headers: not served
                return None
        udp = UDP.parse(ip.payload)
        if udp.dport != 53:
            return None
        q = _parse_query(udp.payload)
        if isinstance(q, int):  # header only, as Unbound does: the rest may be anything
            qid, flags = struct.unpack_from("!HH", udp.payload)
            dns = _HEADER.pack(qid, _QR | _RA | (flags & (_OPCODE | _RD | _CD)) | q, 0, 0, 0, 0)
        else:
            w = _Writer(q)
            if q.opt is not None and (q.opt[1] >> 16) & 0xFF:
                rcode = BADVERS  # we speak EDNS version 0 only (RFC 6891)
            elif q.qclass not in (D.DNS_IN, D.DNS_ANY):
                rcode = D.DNS_RCODE_REFUSED
            else:
                rcode = self._answer(vpc, q, w)
            if rcode is None:
                return self._forward(eni_id, q, ip.dst, ip.src, udp.sport, now)
            dns = w.finish(q, rcode)
            self.counters["nxdomain"] += rcode == D.DNS_RCODE_NXDOMAIN
        self.counters["answered_local"] += 1
        return _packet(ip.dst, ip.src, udp.sport, dns)

    def _answer(self, vpc: _Vpc, q: _Query, w: _Writer) -> int | None:
        """Write the answer to ``q`` from the VPC's zones into ``w``: its rcode, or None to forward."""
        zone = vpc.zone(q.key)
        owner, key, seen = q.labels, q.key, set()
        while zone is not None:
            rrsets = zone.rrsets.get(key)
            if rrsets is None and key not in zone.nodes:
                if not zone.authoritative:  # a DHCP domain's name we do not have: ask the world
                    return None if not seen else D.DNS_RCODE_NOERR
                self._negative(w, zone)
                return D.DNS_RCODE_NXDOMAIN
            rrsets = rrsets or {}
            types = list(rrsets) if q.qtype == D.DNS_ANY else [q.qtype] if q.qtype in rrsets else []
            for rtype in types:
                for ttl, value in rrsets[rtype]:
                    w.rr(0, owner, rtype, ttl, value)
            if types:
                return D.DNS_RCODE_NOERR
            if D.DNS_CNAME not in rrsets or q.qtype == D.DNS_ANY:
                self._negative(w, zone)  # NODATA
                return D.DNS_RCODE_NOERR
            ttl, target = rrsets[D.DNS_CNAME][0]
            w.rr(0, owner, D.DNS_CNAME, ttl, target)
            seen.add(key)
            owner, key = target, _lower(target)
            if key in seen or len(seen) >= MAX_CHAIN:
                break
            zone = vpc.zone(key)
        return D.DNS_RCODE_NOERR if seen else None

    @staticmethod
    def _negative(w: _Writer, zone: _Zone) -> None:
        if zone.soa is not None:
            w.rr(1, zone.apex, D.DNS_SOA, min(PRIVATE_TTL, zone.soa[6]), zone.soa)

    def _forward(self, eni_id: str, q: _Query, asked: Address, client: Address, port: int,
                 now: float) -> Forward:
        dedup = (eni_id, client, port, q.id, q.key, q.qtype, q.qclass)
        new_id = self._by_client.get(dedup)
        if new_id is None:  # not a retransmission of a pending query
            if len(self._pending) >= self.max_pending:
                self._forget(next(iter(self._pending)))
                self.counters["evicted"] += 1
            new_id = secrets.randbelow(65536)
            while new_id in self._pending:
                new_id = secrets.randbelow(65536)
            self._pending[new_id] = _Pending(eni_id, q.id, (q.key, q.qtype, q.qclass), asked, client, port,
                                             q.limit, now, dedup)
            self._by_client[dedup] = new_id
        opt = b""
        if q.opt is not None:
            size, ttl, options = q.opt
            opt = b"\x00" + _RR.pack(D.DNS_OPT, min(max(size, 512), EDNS_SIZE), ttl, len(options)) + options
        self.counters["forwarded"] += 1
        return Forward(_HEADER.pack(new_id, q.flags, 1, 0, 0, int(bool(opt))) + q.question + opt)

    def _forget(self, new_id: int) -> _Pending:
        p = self._pending.pop(new_id)
        del self._by_client[p.dedup]
        return p

    # --- answers from upstream ---------------------------------------------------------------------
    def upstream_reply(self, payload, now: float) -> tuple[str, bytes] | None:
        """An upstream answer: (ENI, the reply packet to write to it, with its instance's id), or None
        for garbage or an answer to nothing pending (an unknown or expired id, another question)."""
        try:
            dns = bytes(payload)
            new_id, flags, qd = struct.unpack_from("!HHH", dns)
            if not flags & _QR:
                raise _Malformed("not a response")
            p = self._pending.get(new_id)
            if p is not None and now - p.since > self.forward_timeout:
                self._forget(new_id)  # expired, not swept yet
                self.counters["expired"] += 1
                p = None
            if p is None or qd != 1:
                self.counters["upstream_unmatched"] += 1
                return None
            labels, off = _read_name(dns, 12)
            qtail = dns[off:off + 4]
            if (_lower(labels), *_QTAIL.unpack(qtail)) != p.question:  # a spoof: the real answer may follow
                self.counters["upstream_unmatched"] += 1
                return None
        except _MALFORMED:
            self.counters["upstream_malformed"] += 1
            return None
        self._forget(new_id)
        # The instance asked a recursive resolver: RA is ours to set, whatever the upstream said of itself.
        flags |= _RA
        if len(dns) > p.limit:
            dns = _HEADER.pack(p.orig_id, flags | _TC, 1, 0, 0, 0) + _wire(labels) + qtail
        else:
            dns = struct.pack("!HH", p.orig_id, flags) + dns[4:]
        self.counters["upstream_answers"] += 1
        self.counters["nxdomain"] += flags & 0xF == D.DNS_RCODE_NXDOMAIN
        return p.eni_id, _packet(p.asked, p.client, p.port, dns)

    def expire(self, now: float) -> int:
        """Forget forwards pending longer than ``forward_timeout`` (their instances retry): how many."""
        n = 0
        while self._pending:
            new_id, p = next(iter(self._pending.items()))
            if now - p.since <= self.forward_timeout:  # oldest first: the rest are younger
                break
            self._forget(new_id)
            n += 1
        self.counters["expired"] += n
        return n

    def status(self) -> dict:
        return {**self.counters, "refused": self.drops[Drop.DNS_REFUSED],
                "rate_limited": self.drops[Drop.DNS_RATE_LIMITED], "pending": len(self._pending),
                "vpcs": len(self._vpcs)}

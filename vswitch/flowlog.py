"""VPC flow logs: per-ENI aggregation of the packets a flow log covers into cloud-style records.

One ``FlowLogAggregator`` per (flow log, ENI). The data path calls ``add`` for every packet (or
super-packet) that the ENI sends or receives and that the security group and network ACL decided on;
``flush`` closes the capture window and returns the records as text. No I/O, no clock: time comes in as
``now`` (monotonic seconds) and, at ``flush``, ``wall`` (the Unix time that corresponds to ``now``).

Records
    One line per record, fields separated by one space, ``-`` for a field that does not apply. The
    default (version 2) format is::

        version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status
        2 acct-0a1b2c3d4e5f eni-0123456789abcdef 10.0.1.4 10.0.1.10 40512 80 6 7 1204 1718000000 1718000003 ACCEPT OK

    A custom format (``${field} ${field} ...``) picks any of ``resources.FLOW_LOG_FIELDS`` in any order.
    ``version`` is the highest version among the format's fields: 2 for the default fields, 3 with
    vpc-id, subnet-id, instance-id, tcp-flags, type, pkt-srcaddr or pkt-dstaddr, 5 with flow-direction
    or traffic-path (the cloud's numbering; nothing here is from version 4).

    - A record is one (direction, action, protocol, source, destination, source port, destination
      port) of one ENI in one window. Both directions of a connection are separate records, as are its
      accepted and rejected packets.
    - packets counts segments: a TSO super-packet of 40 segments counts 40 (the caller passes the
      count); bytes are IP bytes (headers included) of all of them.
    - start / end: Unix seconds (whole, rounded down) of the record's first and last packet in the
      window. NODATA and SKIPDATA records carry the window's bounds instead.
    - ICMP and ICMPv6 records carry ports 0 0 (the cloud's records do): the data path may pass the
      echo identifier as a port, and one record per identifier would be noise.
    - tcp-flags: the OR of FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32 over the record's packets (ECE,
      CWR and NS are masked off); 0 for protocols other than TCP, which have no flags (the cloud writes
      0 too, never ``-``, when it recorded no flags).
    - type IPv4 / IPv6; flow-direction ingress (towards the ENI) / egress; traffic-path for egress:
      ``1`` ("through another resource in the same VPC") inside the VPC's CIDR of the destination's
      family (``EniIdentity.vpc_cidr``, ``vpc_cidr6``), ``8`` ("through an internet gateway", the
      cloud's Nitro numbering) beyond it — the only way out so far; ``-`` for ingress (the cloud defines
      it for egress only).
    - IPv6 addresses are written in their RFC 5952 text (``2001:db8::4``), as ``addresses.text`` gives.
    - srcaddr/dstaddr and pkt-srcaddr/pkt-dstaddr are equal: without NAT the packet's addresses are the
      flow's. They are computed separately so that NAT can make them differ.
    - account-id, interface-id, vpc-id, subnet-id, instance-id: the ENI's (``EniIdentity``).

log-status
    OK        a flow record.
    NODATA    the window had no record to write: ``2 <account> <eni> - - - - - - - <start> <end> - NODATA``.
              Packets that the flow log's traffic_type filters out (REJECT-only log, accepted packets)
              are no traffic for that flow log.
    SKIPDATA  the table of the window was full (``max_records`` distinct records): packets of further
              records were counted, not recorded. One SKIPDATA record per window in which that happened,
              after the OK records. It carries what identifies the ENI (version, account-id,
              interface-id, vpc-id, subnet-id, instance-id), the window's bounds as start and end, and
              ``-`` in every other field, packets and bytes included, exactly like the cloud's. How much
              was skipped is in ``stats()`` (packets and bytes, per window and in total) for the agent's
              status, not in the record. The same record shape marks batches the agent could not deliver
              (``skipdata_records``, used by ``flowlog_shipper``).

Windows
    A window starts when the aggregator is made or flushed, and ends at the next ``flush`` (the caller
    flushes when ``due(now)``: ``interval`` seconds after the window started). Records are sorted by
    their first packet, then by their key, so that one input always yields one output.

What is logged, and what is not (as in the cloud)
    - Packets that security groups or network ACLs let through (ACCEPT) or drop (REJECT), in both
      directions.
    - Not logged: packets dropped for other reasons (a spoofed source, no route, no mapping, malformed,
      too big: see ``drops.py``, which counts them), and traffic to or from the VPC's reserved
      addresses: the router (.1), the DNS resolver (base + 2), DHCP, and the instance metadata service
      (169.254.169.254). The caller does not call ``add`` for them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Iterable, Sequence

from . import addresses
from .controlplane.ids import kind_of
from .controlplane.resources import FLOW_LOG_FIELDS, log_format_fields

DEFAULT_LOG_FORMAT = ("${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} "
                      "${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}")
TRAFFIC_TYPES = ("ACCEPT", "REJECT", "ALL")
MAX_INTERVAL = 600

_V3 = ("vpc-id", "subnet-id", "instance-id", "tcp-flags", "type", "pkt-srcaddr", "pkt-dstaddr")
_V5 = ("flow-direction", "traffic-path")
FIELD_VERSION = {f: 5 if f in _V5 else 3 if f in _V3 else 2 for f in FLOW_LOG_FIELDS}

# Fields that name the ENI rather than a flow: NODATA and SKIPDATA records carry these.
IDENTITY_FIELDS = ("version", "account-id", "interface-id", "vpc-id", "subnet-id", "instance-id")

TCP_FLAG_MASK = 0x3F  # FIN, SYN, RST, PSH, ACK, URG: the flags the records report
_TCP = 6
ABSENT = "-"


@dataclasses.dataclass(frozen=True)
class FlowLogSpec:
    """A flow log as the data path needs it. Raises ValueError, naming the field, for a bad one."""

    id: str
    account: str
    traffic_type: str = "ALL"  # ACCEPT, REJECT or ALL
    log_format: str | None = None  # None: the default, version 2
    interval: int = MAX_INTERVAL  # max_aggregation_interval, seconds
    fields: tuple[str, ...] = dataclasses.field(init=False)
    version: int = dataclasses.field(init=False)

    def __post_init__(self):
        if kind_of(self.id) != "fl":
            raise ValueError(f"id: expected a fl- id, got {self.id!r}")
        if not isinstance(self.account, str) or not self.account:
            raise ValueError(f"account: expected an account id, got {self.account!r}")
        if self.traffic_type not in TRAFFIC_TYPES:
            raise ValueError(f"traffic_type: one of {', '.join(TRAFFIC_TYPES)}, got {self.traffic_type!r}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) \
                or not 1 <= self.interval <= MAX_INTERVAL:
            raise ValueError(f"interval: whole seconds from 1 to {MAX_INTERVAL}, got {self.interval!r}")
        fmt = DEFAULT_LOG_FORMAT if self.log_format is None else self.log_format
        fields = tuple(log_format_fields(fmt)) if isinstance(fmt, str) else ()
        unknown = [f for f in fields if f not in FIELD_VERSION]
        if not fields or unknown:
            raise ValueError(f"log_format: unknown fields {unknown} in {fmt!r}; known: {' '.join(FLOW_LOG_FIELDS)}")
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "version", max(FIELD_VERSION[f] for f in fields))

    @classmethod
    def from_resource(cls, rec: dict) -> FlowLogSpec:
        """From a flow log record of the API (``/v1/flow-logs``)."""
        return cls(id=rec["id"], account=rec["account"], traffic_type=rec.get("traffic_type", "ALL"),
                   log_format=rec.get("log_format"), interval=rec.get("max_aggregation_interval", MAX_INTERVAL))


@dataclasses.dataclass(frozen=True)
class EniIdentity:
    eni_id: str
    account: str
    vpc_id: str
    subnet_id: str
    instance_id: str = ""  # "" for an ENI without an instance: written as "-"
    vpc_cidr: str = ""  # the VPC's IPv4 block: egress beyond it went through the internet gateway
    vpc_cidr6: str = ""  # the VPC's IPv6 block (dual stack), the same for IPv6 destinations


def header(spec: FlowLogSpec) -> str:
    """The header line of a delivered file: the format's field names."""
    return " ".join(spec.fields)


def _line(fields: Sequence[str], values: dict[str, str]) -> str:
    return " ".join(values.get(f, ABSENT) for f in fields)


def _marker(identity: dict[str, str], start: int, end: int, status: str) -> dict[str, str]:
    return {**identity, "start": str(start), "end": str(end), "log-status": status}


class FlowLogAggregator:
    """The records of one flow log for one ENI, one capture window at a time."""

    def __init__(self, spec: FlowLogSpec, eni: EniIdentity, now: float, max_records: int = 10_000):
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
            raise ValueError(f"max_records: a whole number >= 1, got {max_records!r}")
        self.spec = spec
        self.eni = eni
        # (net, mask) per address family, indexed by key >> 128, compared with address keys (IPv6 ones
        # carry V6_TAG, and so does the IPv6 net). Without a CIDR of its family every destination counts
        # as inside (mask 0 matches all).
        self._vpc = tuple(
            (int(net.network_address) | tag, int(net.netmask) | tag) if net else (0, 0)
            for net, tag in ((ipaddress.IPv4Network(eni.vpc_cidr) if eni.vpc_cidr else None, 0),
                             (ipaddress.IPv6Network(eni.vpc_cidr6) if eni.vpc_cidr6 else None, addresses.V6_TAG)))
        self.max_records = max_records
        self._log_accepted = spec.traffic_type in ("ACCEPT", "ALL")
        self._log_rejected = spec.traffic_type in ("REJECT", "ALL")
        self._identity = {"version": str(spec.version), "account-id": eni.account or ABSENT,
                          "interface-id": eni.eni_id or ABSENT, "vpc-id": eni.vpc_id or ABSENT,
                          "subnet-id": eni.subnet_id or ABSENT, "instance-id": eni.instance_id or ABSENT}
        # key (egress, accepted, proto, src, dst, sport, dport) -> [packets, bytes, tcp flags, first, last]
        self._flows: dict[tuple, list] = {}
        self._skipped_packets = 0
        self._skipped_bytes = 0
        self.window_start = now
        self.last_window: tuple[float, float] | None = None  # Unix bounds of the window ``flush`` closed
        self.totals = {"windows": 0, "records": 0, "skipdata_windows": 0, "skipped_packets": 0,
                       "skipped_bytes": 0}

    # --- the hot path ------------------------------------------------------------------------------
    def add(self, egress: bool, accepted: bool, proto: int, src: int, dst: int, sport: int, dport: int,
            packets: int, nbytes: int, tcp_flags: int, now: float) -> None:
        """Count ``packets`` packets of ``nbytes`` bytes (a super-packet: its segments and their bytes).

        Called per packet: one dict lookup, and a list only for a record not seen yet in this window.
        Arguments are not checked (the data path has parsed them); tcp_flags is the TCP header's flag
        byte for TCP and anything for the others.
        """
        if not (self._log_accepted if accepted else self._log_rejected):
            return
        if proto == 1 or proto == 58:  # ICMP, ICMPv6 (literals: no global lookups per packet)
            sport = dport = 0
        key = (egress, accepted, proto, src, dst, sport, dport)
        flow = self._flows.get(key)
        if flow is not None:
            flow[0] += packets
            flow[1] += nbytes
            flow[2] |= tcp_flags
            flow[4] = now
        elif len(self._flows) < self.max_records:
            self._flows[key] = [packets, nbytes, tcp_flags, now, now]
        else:
            self._skipped_packets += packets
            self._skipped_bytes += nbytes

    # --- the window --------------------------------------------------------------------------------
    def due(self, now: float) -> bool:
        return now - self.window_start >= self.spec.interval

    def flush(self, now: float, wall: float) -> list[str]:
        """End the window [window_start, now): its records as lines, then start the next window."""
        offset = wall - now  # monotonic -> Unix
        start, end = int(self.window_start + offset), int(wall)
        fields = self.spec.fields
        names: dict[int, str] = {}  # address text, once per address: records of one ENI share addresses
        out = [_line(fields, self._flow_values(key, flow, offset, names))
               for key, flow in sorted(self._flows.items(), key=lambda kv: (kv[1][3], kv[0]))]
        if self._skipped_packets or self._skipped_bytes:
            out.append(_line(fields, _marker(self._identity, start, end, "SKIPDATA")))
            self.totals["skipdata_windows"] += 1
            self.totals["skipped_packets"] += self._skipped_packets
            self.totals["skipped_bytes"] += self._skipped_bytes
        elif not out:
            out.append(_line(fields, _marker(self._identity, start, end, "NODATA")))
        self.totals["windows"] += 1
        self.totals["records"] += len(out)
        self.last_window = (self.window_start + offset, wall)
        self._flows = {}
        self._skipped_packets = self._skipped_bytes = 0
        self.window_start = now
        return out

    def stats(self) -> dict:
        """The open window's size and what was skipped in it, and totals over closed windows."""
        return {"flows": len(self._flows), "skipped_packets": self._skipped_packets,
                "skipped_bytes": self._skipped_bytes, "totals": dict(self.totals)}

    def _flow_values(self, key: tuple, flow: list, offset: float, names: dict[int, str]) -> dict[str, str]:
        egress, accepted, proto, src, dst, sport, dport = key
        packets, nbytes, flags, first, last = flow
        src_text = names.get(src) or names.setdefault(src, addresses.text(src))
        dst_text = names.get(dst) or names.setdefault(dst, addresses.text(dst))
        # The addresses in the packet; they differ from srcaddr/dstaddr only behind NAT, which the data
        # path does not do yet.
        pkt_src_text, pkt_dst_text = src_text, dst_text
        vpc_net, vpc_mask = self._vpc[dst >> 128]  # the VPC's block of the destination's family
        return {**self._identity, "srcaddr": src_text, "dstaddr": dst_text, "srcport": str(sport),
                "dstport": str(dport), "protocol": str(proto), "packets": str(packets), "bytes": str(nbytes),
                "start": str(int(first + offset)), "end": str(int(last + offset)),
                "action": "ACCEPT" if accepted else "REJECT", "log-status": "OK",
                "tcp-flags": str(flags & TCP_FLAG_MASK) if proto == _TCP else "0",
                "type": "IPv6" if src & addresses.V6_TAG else "IPv4",
                "pkt-srcaddr": pkt_src_text, "pkt-dstaddr": pkt_dst_text,
                "flow-direction": "egress" if egress else "ingress",
                "traffic-path": ("8" if dst & vpc_mask != vpc_net else "1") if egress else ABSENT}


Identity = tuple[tuple[str, str], ...]  # ((field, value), ...) of the IDENTITY_FIELDS a format has


def record_identities(fields: Sequence[str], records: Iterable[str]) -> list[Identity]:
    """The ENIs that ``records`` (lines in the format ``fields``) are about, by the identity fields they
    carry, in order of appearance. Lines without one value per field are ignored."""
    fields = tuple(fields)
    where = [(f, i) for i, f in enumerate(fields) if f in IDENTITY_FIELDS]
    seen: dict[Identity, None] = {}
    for line in records:
        values = line.split(" ")
        if len(values) == len(fields):
            seen.setdefault(tuple((f, values[i]) for f, i in where), None)
    return list(seen)


def skipdata_record(fields: Sequence[str], identity: Identity, start: float, end: float) -> str:
    """A SKIPDATA record for one ENI: records of it between the Unix times ``start`` and ``end`` are lost."""
    return _line(fields, _marker(dict(identity), int(start), int(end), "SKIPDATA"))


def skipdata_records(fields: Sequence[str], records: Iterable[str], start: float, end: float) -> list[str]:
    """SKIPDATA records standing for ``records`` lost between ``start`` and ``end``: one per ENI."""
    return [skipdata_record(fields, ident, start, end) for ident in record_identities(fields, records)]

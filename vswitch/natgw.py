"""NAT gateway flow state: the source translation a Hyperplane node applies for one NAT gateway.

The shell calls, per packet (``now`` in seconds, addresses as IPv4 ints):

  translate_out(proto, src, sport, dst, dport, now)   from the VPC to the internet: (public_ip, nat_port)
                                                      to rewrite the source with, or a ``NatDrop``
  translate_in(proto, nat_port, remote, remote_port, now)
                                                      a reply from the internet: (src, sport) to rewrite
                                                      the destination with, or None (drop)
  fragment_out(proto) / fragment_in(proto, remote, ip_id, now)
                                                      non-first fragments (no ports), see below
  expire(now)                                         a slice of the idle-flow sweep, now and then

Translation (the reference's NAT gateway, ``vpc-behaviour.md``):
- TCP, UDP and ICMP; anything else is dropped (UNSUPPORTED_PROTOCOL). ICMP: the echo identifier plays
  the source port (``sport``, and ``nat_port`` in replies) and the destination port is 0, so pings to
  one host get distinct identifiers as connections get distinct ports. The shell passes ICMP queries
  (echo) only; an ICMP error from outside is mapped by the connection it quotes (``translate_in`` with
  the quoted tuple reversed, ``refresh=False``).
- A flow is its inside 5-tuple (proto, src, sport, dst, dport); the same tuple keeps its mapping while
  it lives. A new flow gets a source port from ``port_range`` (1024–65535) that no live flow to the same
  (proto, dst, dport) uses — so replies, keyed by (proto, remote, remote_port, nat_port), are never
  ambiguous — up to ``max_per_destination`` (55,000) flows per (proto, dst, dport); past that, or with
  the range used up, the flow is refused: PORT_ALLOCATION, counted in ``ErrorPortAllocation``. Ports are
  random (RFC 6056): eight random probes, then a walk from a random port to the first free one.
  The mapping is endpoint-dependent ("symmetric NAT", RFC 4787), as the cloud's NAT gateway is: the
  same (src, sport) to another destination gets its own, independent port.
- Idle timeout 350 s: a flow with no packet either way for that long has ended (a flow idle for exactly
  the timeout has expired, as in ``conntrack``), its port is free for the destination again, and
  ``IdleTimeoutCount`` counts it. A later TCP packet from the inside that is not a SYN gets
  IDLE_TIMEOUT if it finds its expired flow still in the table, NOT_A_FLOW_START if there is none
  (never was, or ``expire`` swept it); both have ``.rst`` set: the shell answers with a TCP RST (not
  a FIN) to the sender, which is what the reference does. A RST without a flow is dropped
  silently (STRAY_RST: a RST is never answered with a RST). A SYN, a UDP datagram or an echo request
  without a flow starts one. The RST verdicts need ``tcp_flags``; without them (None) any TCP packet
  may start a flow. Packets from outside without a flow are dropped (None); no RST.
- TCP state is minimal: each side's FIN and any RST are remembered. With ``tcp_closed_timeout`` set, a
  flow that saw a RST or both FINs expires that long after its last packet instead of 350 s, freeing
  its port sooner; by default (None) it is off and every flow keeps the reference's single 350 s
  timeout (which also keeps a port from going to a new connection while the server may still be in
  TIME_WAIT for the old one). A SYN on a flow that saw FINs or a RST (the client reusing its port)
  reuses the mapping and forgets them.

Fragments (the reference: UDP fragments are forwarded, TCP and ICMP fragments dropped):
- A *first* fragment (offset 0, more-fragments set) carries the ports and is translated like any packet
  when it is UDP; the shell passes ``first_fragment=True`` (out) or ``fragment_id=`` its IP id (in).
  A TCP or ICMP fragment, first or not, is dropped: FRAGMENT.
- Outbound non-first UDP fragments: ``fragment_out`` gives the public address. Only the source address
  changes in them — the ports are in the first fragment, whose UDP checksum the shell adjusts for the
  whole datagram — so no state is needed and none is kept. Caveat, shared with Linux's NAT: the IP id
  is not rewritten, so two instances fragmenting to one remote with the same id at the same moment
  would collide at the far end.
- Inbound non-first UDP fragments carry no ports, so the inside address comes from the datagram's
  first fragment: ``translate_in(..., fragment_id=ip_id)`` remembers (remote, ip_id) → inside address
  for ``fragment_timeout`` (30 s, Linux's ``ipfrag_time``), and ``fragment_in`` looks it up. A
  non-first fragment that overtakes its first fragment finds nothing and is dropped (None): the core
  buffers nothing (a shell could). At most ``max_fragments`` datagrams are remembered, the oldest
  forgotten first.

Replication (Hyperplane keeps every flow on a primary and a secondary node): ``export`` gives a flow as a
``NatFlow``, a flat tuple of ints that goes into JSON as a list —
``(proto, src, sport, dst, dport, nat_port, remaining, tcp)``: the inside 5-tuple, the port, the seconds of
idle time left (relative, so the two nodes' clocks need not agree) and the TCP bits (FIN out 1, FIN in 2,
RST 4). ``import_`` installs one on the secondary; it replaces the secondary's own flow under the same
tuple, and any flow holding the same port for the same destination (the primary allocates; its word
wins). When to send (every new flow, and again well before ``remaining`` runs out on the copy) is the
shell's choice, as is which node is primary: ``hyperplane_shard.owners`` over the flow's remote address
(``flow_hash(proto, remote, 0, 0, 0)``), which every packet of the flow carries, fragments included.

Memory and time (CPython 3.11, measured by ``flow_memory_bytes``): about 330 bytes per flow — the
inside-key dict slot and its packed 104-bit key, a slotted record, its float deadline, and the port in the
destination's table — so 1M flows ≈ 330 MB. A translation of a known flow is one dict lookup (out) or two
(in, via the destination); a new flow costs a few random draws. Expired flows are treated as absent on
lookup; ``expire`` reclaims the rest in slices of ``budget`` entries per call, and a destination whose
ports are all taken reclaims its own expired flows before refusing one (at most once per its earliest
deadline, so refusals under load stay cheap). ``max_flows`` bounds the table as a whole (TABLE_FULL).

IPv4 only: the NAT gateway translates IPv4 (NAT64 is not modelled). One public address per gateway.
Pure: no clock, no I/O; randomness from a ``random.Random`` seeded by the caller (``seed``).
"""

from __future__ import annotations

import enum
import random
import tracemalloc
from typing import NamedTuple, Sequence

from .headers import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from .sweep import Sweep

_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_FIN_OUT, _FIN_IN, _RESET = 1, 2, 4  # ``_Flow.tcp`` bits
_INF = float("inf")
_PROBES = 8  # random ports tried before walking


class NatDrop(enum.IntEnum):
    """Why ``translate_out`` (or ``fragment_out``) refused a packet."""

    PORT_ALLOCATION = 0  # no free source port for the destination (ErrorPortAllocation)
    TABLE_FULL = 1  # ``max_flows`` flows live
    IDLE_TIMEOUT = 2  # a TCP packet, not a SYN, of a flow that idled out: answer RST
    NOT_A_FLOW_START = 3  # a TCP packet, not a SYN, with no flow: answer RST
    STRAY_RST = 4  # a TCP RST with no flow: drop, never answer a RST with a RST
    FRAGMENT = 5  # a TCP or ICMP fragment
    UNSUPPORTED_PROTOCOL = 6  # neither TCP, UDP nor ICMP

    @property
    def rst(self) -> bool:
        """The shell answers the packet with a TCP RST to its sender."""
        return self is NatDrop.IDLE_TIMEOUT or self is NatDrop.NOT_A_FLOW_START

    @property
    def label(self) -> str:
        return self.name.lower()


class NatFlow(NamedTuple):
    """One flow as ``export`` gives it and ``import_`` takes it (also ``flows`` for status output)."""

    proto: int
    src: int  # inside address and port (ICMP: the echo identifier)
    sport: int
    dst: int  # remote address and port (ICMP: 0)
    dport: int
    nat_port: int  # the public source port (ICMP: identifier)
    remaining: float  # seconds of idle time left
    tcp: int = 0  # FIN out 1, FIN in 2, RST 4


class _Dest:
    """The flows to one (proto, remote address, remote port), by their public port."""

    __slots__ = ("key", "flows", "next_expiry")

    def __init__(self, key: int):
        self.key = key  # proto << 48 | address << 16 | port
        self.flows: dict[int, _Flow] = {}
        self.next_expiry = _INF  # no flow expires before this: a lower bound, for ``_reclaim``


class _Flow:
    __slots__ = ("src", "sport", "nat_port", "dest", "expires", "tcp")

    def __init__(self, src: int, sport: int, nat_port: int, dest: _Dest, expires: float, tcp: int = 0):
        self.src = src
        self.sport = sport
        self.nat_port = nat_port
        self.dest = dest
        self.expires = expires
        self.tcp = tcp


def _out_key(proto: int, src: int, sport: int, dst: int, dport: int) -> int:
    return proto << 96 | src << 64 | dst << 32 | sport << 16 | dport


class NatGateway:
    """The flows of one NAT gateway on one node. Not thread-safe: call it from the event loop's thread."""

    FULL_SWEEP = 16  # entries examined for expiry when the table is full, before refusing a flow

    def __init__(self, public_ip: int, port_range: tuple[int, int] = (1024, 65535),
                 max_per_destination: int = 55000, idle_timeout: float = 350.0, *,
                 tcp_closed_timeout: float | None = None, max_flows: int = 1_000_000,
                 fragment_timeout: float = 30.0, max_fragments: int = 4096, seed: int | None = None):
        lo, hi = port_range
        if not 1 <= lo <= hi <= 0xFFFF:
            raise ValueError(f"port range must lie in 1..65535, got {lo}..{hi}")
        if max_per_destination < 1 or max_flows < 1 or max_fragments < 1:
            raise ValueError("max_per_destination, max_flows and max_fragments must be at least 1")
        if not idle_timeout > 0 or not fragment_timeout > 0 or (
                tcp_closed_timeout is not None and not 0 < tcp_closed_timeout <= idle_timeout):
            raise ValueError("timeouts must be positive (tcp_closed_timeout at most idle_timeout)")
        self.public_ip = public_ip
        self.port_range = (lo, hi)
        self.max_per_destination = max_per_destination
        self.idle_timeout = idle_timeout
        self.tcp_closed_timeout = tcp_closed_timeout
        self.max_flows = max_flows
        self.fragment_timeout = fragment_timeout
        self.max_fragments = max_fragments
        self._span = hi - lo + 1
        self._limit = min(max_per_destination, self._span)
        self._rng = random.Random(seed)
        self._out: dict[int, _Flow] = {}  # inside 5-tuple (packed) → flow
        self._dests: dict[int, _Dest] = {}
        self._frags: dict[int, tuple[int, float]] = {}  # remote << 16 | ip id → (inside address, deadline)
        self._sweep = Sweep()
        self.created = False  # the last ``translate_out`` created its flow: the shell replicates it
        # CloudWatch's NAT gateway metric names.
        self.attempts = 0  # ConnectionAttemptCount: flows asked for
        self.established = 0  # ConnectionEstablishedCount: flows created
        self.port_allocation_errors = 0  # ErrorPortAllocation
        self.idle_timeouts = 0  # IdleTimeoutCount
        self.packets_out = 0  # PacketsOutToDestination
        self.packets_in = 0  # PacketsInFromDestination
        self.drops: dict[str, int] = {}  # by reason: NatDrop labels, and "in_no_flow", "in_fragment"...
        self.import_conflicts = 0  # imported flows that displaced another flow's port

    def __len__(self) -> int:
        """Flows in the table, including expired ones not yet swept."""
        return len(self._out)

    def stats(self) -> dict:
        return {"ActiveConnectionCount": len(self._out), "ConnectionAttemptCount": self.attempts,
                "ConnectionEstablishedCount": self.established,
                "ErrorPortAllocation": self.port_allocation_errors, "IdleTimeoutCount": self.idle_timeouts,
                "PacketsOutToDestination": self.packets_out, "PacketsInFromDestination": self.packets_in,
                "PacketsDropCount": sum(self.drops.values()), "drops": dict(self.drops),
                "destinations": len(self._dests), "fragments": len(self._frags),
                "import_conflicts": self.import_conflicts}

    def _drop(self, reason: NatDrop | str):
        label = reason if isinstance(reason, str) else reason.label
        self.drops[label] = self.drops.get(label, 0) + 1
        return reason

    # --- per packet ----------------------------------------------------------------------------
    def translate_out(self, proto: int, src: int, sport: int, dst: int, dport: int, now: float, *,
                      tcp_flags: int | None = None, first_fragment: bool = False) -> tuple[int, int] | NatDrop:
        """The public (address, port) for a packet from the VPC, creating its flow if it starts one."""
        self.created = False
        if proto == PROTO_ICMP:
            dport = 0
        elif proto != PROTO_TCP and proto != PROTO_UDP:
            return self._drop(NatDrop.UNSUPPORTED_PROTOCOL)
        if first_fragment and proto != PROTO_UDP:
            return self._drop(NatDrop.FRAGMENT)
        key = proto << 96 | src << 64 | dst << 32 | sport << 16 | dport
        f = self._out.get(key)
        timed_out = False
        if f is not None:
            if now < f.expires:
                if proto == PROTO_TCP and tcp_flags is not None and tcp_flags & (_FIN | _SYN | _RST):
                    self._tcp(f, tcp_flags, True)
                    f.expires = e = now + self._timeout(f)
                    if e < f.dest.next_expiry:  # a closed flow's shorter timeout
                        f.dest.next_expiry = e
                else:
                    f.expires = now + self._timeout(f)
                self.packets_out += 1
                return self.public_ip, f.nat_port
            self._remove(key, f)
            self.idle_timeouts += 1
            timed_out = True
        if proto == PROTO_TCP and tcp_flags is not None and tcp_flags & (_FIN | _SYN | _RST | _ACK) != _SYN:
            if tcp_flags & _RST:
                return self._drop(NatDrop.STRAY_RST)
            return self._drop(NatDrop.IDLE_TIMEOUT if timed_out else NatDrop.NOT_A_FLOW_START)
        self.attempts += 1
        if len(self._out) >= self.max_flows:
            self.expire(now, self.FULL_SWEEP)
            if len(self._out) >= self.max_flows:
                return self._drop(NatDrop.TABLE_FULL)
        dkey = proto << 48 | dst << 16 | dport
        d = self._dests.get(dkey)
        if d is None:
            d = self._dests[dkey] = _Dest(dkey)
        elif len(d.flows) >= self._limit:
            self._reclaim(d, now)
            if len(d.flows) >= self._limit:
                self.port_allocation_errors += 1
                return self._drop(NatDrop.PORT_ALLOCATION)
        port = self._free_port(d.flows)
        f = _Flow(src, sport, port, d, now + self.idle_timeout)
        self._out[key] = d.flows[port] = f
        if f.expires < d.next_expiry:
            d.next_expiry = f.expires
        self.established += 1
        self.packets_out += 1
        self.created = True
        return self.public_ip, port

    def translate_in(self, proto: int, dst_port: int, remote: int, remote_port: int, now: float, *,
                     tcp_flags: int | None = None, fragment_id: int | None = None,
                     refresh: bool = True) -> tuple[int, int] | None:
        """The inside (address, port) for a packet from ``remote`` to the public address's ``dst_port``
        (ICMP: the echo reply's identifier; ``remote_port`` is ignored), or None: no live flow, drop.
        ``fragment_id``: the packet is a first fragment with this IP id. ``refresh=False`` for ICMP
        errors, which do not keep a flow alive."""
        if proto == PROTO_ICMP:
            remote_port = 0
        elif proto != PROTO_TCP and proto != PROTO_UDP:
            self._drop("in_unsupported_protocol")
            return None
        if fragment_id is not None and proto != PROTO_UDP:
            self._drop("in_fragment")
            return None
        d = self._dests.get(proto << 48 | remote << 16 | remote_port)
        f = d.flows.get(dst_port) if d is not None else None
        if f is None:
            self._drop("in_no_flow")
            return None
        if now >= f.expires:
            self._remove(_out_key(proto, f.src, f.sport, remote, remote_port), f)
            self.idle_timeouts += 1
            self._drop("in_no_flow")
            return None
        if refresh:
            if proto == PROTO_TCP and tcp_flags is not None and tcp_flags & (_FIN | _RST):
                self._tcp(f, tcp_flags, False)
            f.expires = e = now + self._timeout(f)
            if e < f.dest.next_expiry:
                f.dest.next_expiry = e
        if fragment_id is not None:
            self._remember_fragment(remote << 16 | fragment_id, f.src, now)
        self.packets_in += 1
        return f.src, f.sport

    def fragment_out(self, proto: int) -> int | NatDrop:
        """The new source address of a non-first fragment from the VPC: UDP ones are forwarded."""
        if proto != PROTO_UDP:
            return self._drop(NatDrop.FRAGMENT)
        self.packets_out += 1
        return self.public_ip

    def fragment_in(self, proto: int, remote: int, ip_id: int, now: float) -> int | None:
        """The inside address of a non-first fragment from ``remote``, learnt from its datagram's first
        fragment; None: drop (not UDP, or the first fragment was not seen, or too long ago)."""
        if proto != PROTO_UDP:
            self._drop("in_fragment")
            return None
        entry = self._frags.get(remote << 16 | ip_id)
        if entry is None or now >= entry[1]:
            self._drop("in_fragment_unmatched")
            return None
        self.packets_in += 1
        return entry[0]

    def _remember_fragment(self, key: int, src: int, now: float) -> None:
        frags = self._frags
        frags.pop(key, None)  # re-inserted last: the dict stays in deadline order
        while len(frags) >= self.max_fragments:
            del frags[next(iter(frags))]
        frags[key] = (src, now + self.fragment_timeout)

    # --- flow state ----------------------------------------------------------------------------
    def _timeout(self, f: _Flow) -> float:
        tcp = f.tcp
        if tcp and self.tcp_closed_timeout is not None and (tcp & _RESET or tcp == _FIN_OUT | _FIN_IN):
            return self.tcp_closed_timeout
        return self.idle_timeout

    def _tcp(self, f: _Flow, flags: int, outbound: bool) -> None:
        if flags & _RST:
            f.tcp |= _RESET
        elif flags & _SYN:
            f.tcp = 0  # the client starts over on the same tuple
        elif flags & _FIN:
            f.tcp |= _FIN_OUT if outbound else _FIN_IN

    def _free_port(self, used: dict[int, _Flow]) -> int:
        """A port of the range no flow in ``used`` has; the caller made sure one exists."""
        lo, span, rng = self.port_range[0], self._span, self._rng
        for _ in range(_PROBES):
            port = lo + int(rng.random() * span)
            if port not in used:
                return port
        start = int(rng.random() * span)
        for i in range(span):
            port = lo + (start + i) % span
            if port not in used:
                return port
        raise AssertionError("no free port although the destination is below its limit")

    def _remove(self, key: int, f: _Flow) -> None:
        del self._out[key]
        d = f.dest
        del d.flows[f.nat_port]
        if not d.flows:
            del self._dests[d.key]

    def _reclaim(self, d: _Dest, now: float) -> None:
        """Remove the expired flows of a full destination, if its earliest deadline has passed."""
        if now < d.next_expiry:
            return
        proto, dst, dport = d.key >> 48, (d.key >> 16) & 0xFFFFFFFF, d.key & 0xFFFF
        earliest = _INF
        for f in list(d.flows.values()):
            if now >= f.expires:
                del self._out[_out_key(proto, f.src, f.sport, dst, dport)]
                del d.flows[f.nat_port]
                self.idle_timeouts += 1
            elif f.expires < earliest:
                earliest = f.expires
        d.next_expiry = earliest  # ``d`` stays in ``_dests`` even if empty: the caller adds to it

    def expire(self, now: float, budget: int = 1000) -> list[NatFlow]:
        """Remove expired flows, examining at most ``budget`` entries (``conntrack.ConnTrack.expire``'s
        incremental pass), and forget stale fragment entries. Returns the flows removed (``remaining``
        ≤ 0), for the shell to drop their replicas or log them."""
        removed: list[NatFlow] = []
        out = self._out
        for key in self._sweep.expired(out, now, budget):
            f = out[key]
            removed.append(self._record(key, f, now))
            self._remove(key, f)
        self.idle_timeouts += len(removed)
        frags = self._frags
        while frags:
            first = next(iter(frags))
            if now < frags[first][1]:
                break
            del frags[first]
        return removed

    # --- replication and status ----------------------------------------------------------------
    @staticmethod
    def _record(key: int, f: _Flow, now: float) -> NatFlow:
        return NatFlow(key >> 96, f.src, f.sport, (key >> 32) & 0xFFFFFFFF, key & 0xFFFF, f.nat_port,
                       f.expires - now, f.tcp)

    def export(self, proto: int, src: int, sport: int, dst: int, dport: int, now: float) -> NatFlow | None:
        """The live flow of an inside 5-tuple (ICMP: ``sport`` the identifier, ``dport`` 0), for its replica."""
        if proto == PROTO_ICMP:
            dport = 0
        key = _out_key(proto, src, sport, dst, dport)
        f = self._out.get(key)
        if f is None or now >= f.expires:
            return None
        return self._record(key, f, now)

    def import_(self, record: NatFlow | Sequence, now: float) -> bool:
        """Install a flow exported by another node (a ``NatFlow`` or the same 8 values as a list).
        False (nothing changed) if it has expired or does not fit this gateway's range."""
        proto, src, sport, dst, dport, nat_port, remaining, tcp = record
        lo, hi = self.port_range
        if remaining <= 0 or not lo <= nat_port <= hi or proto not in (PROTO_TCP, PROTO_UDP, PROTO_ICMP):
            return False
        key = _out_key(proto, src, sport, dst, dport)
        old = self._out.get(key)
        if old is not None:
            self._remove(key, old)
        dkey = proto << 48 | dst << 16 | dport
        d = self._dests.get(dkey)
        if d is None:
            d = self._dests[dkey] = _Dest(dkey)
        other = d.flows.get(nat_port)
        if other is not None:
            self.import_conflicts += 1
            self._remove(_out_key(proto, other.src, other.sport, dst, dport), other)
            d = self._dests.setdefault(dkey, d)  # removing the last flow took ``d`` out of the table
        f = _Flow(src, sport, nat_port, d, now + remaining, tcp)
        self._out[key] = d.flows[nat_port] = f
        d.next_expiry = min(d.next_expiry, f.expires)
        return True

    def flows(self, now: float) -> list[NatFlow]:
        """Every flow (expired ones not yet swept included, with ``remaining`` ≤ 0), for status output
        and for handing a whole table to a new secondary."""
        return [self._record(key, f, now) for key, f in self._out.items()]


def flow_memory_bytes(n: int = 100_000) -> float:
    """Bytes per flow as tracemalloc sees a gateway grow by ``n`` TCP flows, 1,000 per destination."""
    gw = NatGateway(0xCB007101, max_flows=n, seed=1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            gw.translate_out(PROTO_TCP, 0x0A000100 + i % 200, 32768 + i % 28000, 0x08080000 + i // 1000,
                             443, i * 0.001, tcp_flags=_SYN)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    if len(gw) != n:
        raise RuntimeError("the measurement's flows were not all created")
    return used / n

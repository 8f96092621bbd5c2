"""Connection tracking for stateful security groups: one ``ConnTrack`` per ENI.

Called on the hot path once per packet, in either direction (``outbound``: leaving the ENI):

  lookup(pkt, outbound, now)   ESTABLISHED  a packet of a known flow (either direction): state, idle
                                            timer and counter updated. One dict lookup.
                               NEW          no flow: the caller evaluates the security-group rules and,
                                            if they allow the packet, calls ``create``
                               INVALID      a tracked TCP flow's packet that is out of window or has a flag
                                            combination TCP never sends: drop it (Linux conntrack's INVALID)
  create(pkt, outbound, now)   start tracking; False (and counted) when the table is full or the packet
                               cannot start a flow: drop it

Rules are evaluated only for a flow's first packet, by the caller; this module knows no rules. It
reads no clock (time is ``now``, in seconds) and does no I/O.

The flow key (design notes §4) is oriented to the ENI: (protocol, local address, remote address,
local port, remote port), so both directions of a flow find one dict entry. It is packed into one
int rather than a tuple of five ints (~190 bytes): memory per flow is what limits the table.
``FlowKey`` is its unpacked form for the slow path (``remove_if``, ``entries``), addresses as
``addresses.key`` gives them (IPv6 ones carry ``V6_TAG``). Dual stack, one table for both families:
  IPv4  proto << 96 | local << 64 | remote << 32 | local port << 16 | remote port        < 2^104
  IPv6  proto << 289 | 1 << 288 | local << 160 | remote << 32 | local port << 16 | remote port
        (local and remote the 128-bit addresses; bit 288 is the local key's V6_TAG)     ≥ 2^288
so no IPv6 key equals an IPv4 one (``::a.b.c.d`` is not ``a.b.c.d``), and the wire's source and
destination, adjacent in the IPv6 header, shift into place as one 256-bit int (``lookup_wire``).
- TCP, UDP: the ports.
- ICMP queries (echo 8/0, timestamp 13/14, information 15/16, address mask 17/18): local port = the
  identifier, remote port = 0 if the local side sent the request, 1 if the remote side did. Linux keys
  ICMP by type as well, so a request from the far side is not mistaken for the reply to ours.
- ICMP errors (3, 4, 5, 11, 12) have no flow of their own: they are ESTABLISHED (related) when the
  packet they quote belongs to a live flow and they go back to that packet's sender, else NEW and
  ``create`` refuses them. They do not refresh the flow. Other ICMP messages (router advertisements,
  unsolicited replies) cannot start a flow either.
- ICMPv6 (RFC 4443), in IPv6 packets only: echo request 128 / reply 129 are queries keyed like ICMP
  echo; the errors destination unreachable 1, packet too big 2, time exceeded 3 and parameter problem
  4 are related or NEW like ICMP errors (a packet too big about a live flow passes: path MTU discovery);
  neighbour discovery and every other ICMPv6 message have no flow. ICMP (1) in an IPv6 packet and
  ICMPv6 (58) in an IPv4 one are other protocols.
- Other protocols: addresses and protocol only (ports 0).
- Non-first fragments carry no ports: NEW, and ``create`` refuses them (no reassembly here).

Idle timeouts by state (``Timeouts``): TCP SYN_SENT, SYN_RECV and CLOSING (a FIN seen) use
``tcp_transitory`` (Linux: 120 s for SYN_SENT, FIN_WAIT, TIME_WAIT); ESTABLISHED ``tcp_established``;
TIME_WAIT (both FINs acknowledged) and CLOSE (reset) ``tcp_closed``. Linux keeps TIME_WAIT 120 s; here
the connection is over, the entry only lets a retransmitted last FIN/ACK through, and 120 s would let
short connections fill the table (65,536 entries / 120 s ≈ 550 connections/s; with 10 s, 6,500/s).
A new SYN on a TIME_WAIT or CLOSE entry ends it (as Linux does) and is NEW, so the rules decide
again. UDP: ``udp_single`` until the other side answers, then ``udp_stream``. ICMP ``icmp``, others
``other``. A flow idle for exactly its timeout has expired (Linux's ``nf_ct_is_expired`` too).

TCP state, simplified from Linux ``nf_conntrack_proto_tcp.c``:
- flags: Linux's ``tcp_valid_flags`` (ECE, CWR, PSH ignored): SYN, SYN+ACK, RST, RST+ACK, FIN+ACK, ACK,
  and SYN, FIN+ACK, ACK with URG. Anything else — no flags, SYN+FIN, SYN+RST, FIN without ACK,
  FIN+RST — is INVALID in every state.
- handshake: only the originator's SYN starts a flow (``create``; no mid-stream pickup outside a grace
  period, below); a SYN+ACK from the other side that acknowledges it → SYN_RECV; the originator's ACK →
  ESTABLISHED. A bare SYN from the other side before that (simultaneous open, Linux's SYN_SENT2) is
  INVALID: that end then answers our SYN with a SYN+ACK and the handshake completes the ordinary way.
- SYN_SENT accepts only: the originator's SYN again (re-seeds its side: a retransmission or a new
  attempt), that SYN+ACK, a RST from the other side acknowledging the SYN ("connection refused", RFC
  9293 §3.10.7.3), a RST from the originator at its next sequence number.
- FIN from a side sets its FIN bit; an ACK covering a side's FIN (ack = its last sequence + 1) marks it
  acknowledged. Any FIN → CLOSING; both acknowledged → TIME_WAIT. An in-window RST → CLOSE.
- a retransmitted SYN (in SYN_RECV) or SYN+ACK (later, when the originator's ACK was lost after us)
  passes if in window; any other SYN or SYN+ACK on a live connection is INVALID.

TCP window check, a simplified Linux ``tcp_in_window`` (no SACK blocks, no RST-vs-max-ACK check). Per
side X the flow keeps, all modulo 2^32:
  end[X]     the highest sequence number X has sent, + 1 (seq + payload, SYN and FIN count one each)
  maxend[X]  the right edge of the window the other side offered X: the highest ack + window it sent
  maxwin[X]  2^b, b the bit length of the largest window X advertised (scaled, RFC 7323, once both
             SYNs offered scaling): at most twice Linux's exact maximum, and b is a small int that
             CPython shares, where the exact window would cost an int object (28 bytes) per side
A packet from S to R with sequence number seq, acknowledgment ack (end[R] if the ACK flag is clear)
and end = seq + its length passes iff
  I    seq ≤ maxend[S]                         S sends nothing beyond the window R offered
  II   end ≥ end[S] − maxwin[R]                nothing older than a full window (retransmissions pass)
  III  ack ≤ end[R]                            S acknowledges nothing R has not sent
  IV   ack ≥ end[R] − max(maxwin[S], 66000)    nor anything absurdly old (Linux's MAXACKWINDOW)
where a ≤ b means (b − a) mod 2^32 < 2^31, TCP's own comparison (RFC 9293 §3.4), so sequence
numbers wrap. Then end[S] and maxend[R] (ack + window) advance and maxwin[S] grows to the window.
A side that has not sent its SYN has no window yet: its packets are INVALID. Checks I and III are
exact, II and IV accept up to twice Linux's distance into the past. Linux also widens maxwin[R] when S
sends past maxend[S], for ACKs it never saw (asymmetric routing); every packet of an ENI passes its
tracker, so S cannot have learnt of a window this tracker did not see, and that rule is left out.

Mid-stream pickup (Linux's ``nf_conntrack_tcp_loose``, bounded in time). A tracker that lost its table —
its host agent restarted while its instance's connections went on — would refuse every established
connection's next packet as no flow start. ``allow_pickup(until)`` (or ``ConnTrack(pickup_until=...)``)
opens a grace period: while ``now < until``, ``create`` also accepts a TCP ACK (with or without data; not
SYN+ACK, FIN or RST, as in Linux) — the caller has evaluated the security-group rules for it as for any
first packet — and starts an ESTABLISHED flow, oriented as if that packet's sender had opened it. Its
window state comes from that packet, as Linux initialises a picked-up connection, but window checks
stay on (Linux marks such flows "be liberal" and checks nothing):
  - the window scales were in the SYNs we never saw: both are taken as 14, the largest (RFC 7323), so
    windows read large rather than small: accept, do not cut;
  - the sender S: end[S] = seq + payload, maxwin[S] from its window; maxend[S], the edge the other side
    offered, is unknown until that side speaks: end[S] + 65535·2^14, the largest window there is;
  - the other side R: end[R] = the ack (R sent at least that), maxend[R] = ack + S's window, maxwin[R]
    unknown ("not seen", 0): R's first packet sets it ("learnt"), then is checked like any other;
  - check III cannot be exact: R may have sent data before the pickup that this tracker never saw
    (retransmissions fill holes, then one cumulative ACK jumps past them). On a picked-up flow an ack
    beyond end[R] passes if it is within the window S itself offered R (ack ≤ maxend[R]: R sends nothing
    beyond it, check I), and moves end[R] there. Checks I, II and IV apply as for any flow.
Outside the grace period a mid-stream packet is refused as before; flows picked up keep these rules for
their life. UDP and ICMP need no pickup: any UDP datagram and any ICMP(v6) echo request starts a flow
(an echo reply whose request was not seen is still refused: the next request starts the flow).

The table is bounded (``max_flows``). Expired flows are treated as absent: ``lookup`` removes the one
it finds, ``expire`` sweeps a slice of the table per call (like Linux's gc worker), and a full table
examines a few entries before refusing a new flow. Flows already in the table keep working.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import random
import struct
import tracemalloc
from typing import Callable, NamedTuple

from .addresses import V6_TAG
from .headers import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP, _PORTS, _U16
from .sweep import Sweep

_M32 = 0xFFFFFFFF  # also the largest IPv4 address key: any larger key is an IPv6 one (V6_TAG)
_SRC32 = _M32 << 32  # the source in the wire's 64-bit (src, dst) field: the remote's place, inbound
_M128 = V6_TAG - 1
_M129 = V6_TAG | _M128  # an IPv6 address key: the tag and 128 address bits
_V6_KEYS = 1 << 104  # every IPv4 flow key is below, every IPv6 one above (≥ 2^288)
_HALF = 0x80000000  # a ≤ b modulo 2^32 iff (b − a) & _M32 < _HALF
_MAXACKWINDOW = 66000  # Linux's floor for check IV: a little over the largest unscaled window
_MAX_WSCALE = 14  # RFC 7323 §2.3
_FIN, _SYN, _RST, _PSH, _ACK, _URG = TCP.FIN, TCP.SYN, TCP.RST, TCP.PSH, TCP.ACK, TCP.URG
_ECE, _CWR = 0x40, 0x80  # ECN (RFC 3168)


class Verdict(enum.IntEnum):
    ESTABLISHED = 0  # a packet of a known flow (either direction), in a valid state
    NEW = 1  # no flow: the caller evaluates the rules, then calls ``create`` if they allow it
    INVALID = 2  # a tracked TCP flow's packet out of window or with an invalid flag combination: drop


class State(enum.IntEnum):
    """A flow's state; each maps to one of the ``Timeouts``."""

    TCP_SYN_SENT = 0  # the originator's SYN seen
    TCP_SYN_RECV = 1  # the other side's SYN+ACK seen
    TCP_ESTABLISHED = 2  # the originator acknowledged the SYN+ACK
    TCP_CLOSING = 3  # a FIN seen, not both FINs acknowledged
    TCP_TIME_WAIT = 4  # both FINs acknowledged
    TCP_CLOSE = 5  # reset (or refused)
    UDP_SINGLE = 6  # only the originator has sent
    UDP_STREAM = 7  # the other side has answered
    ICMP = 8  # an ICMP query and its replies
    OTHER = 9  # another protocol, by addresses + protocol


# Hot-path aliases: a module global is one dict lookup, an enum attribute more.
_ESTABLISHED, _NEW, _INVALID = Verdict
(_SYN_SENT, _SYN_RECV, _TCP_ESTABLISHED, _CLOSING, _TIME_WAIT, _CLOSE,
 _UDP_SINGLE, _UDP_STREAM, _ICMP, _OTHER) = State

_STATE_TIMEOUT = {
    State.TCP_SYN_SENT: "tcp_transitory", State.TCP_SYN_RECV: "tcp_transitory",
    State.TCP_ESTABLISHED: "tcp_established", State.TCP_CLOSING: "tcp_transitory",
    State.TCP_TIME_WAIT: "tcp_closed", State.TCP_CLOSE: "tcp_closed",
    State.UDP_SINGLE: "udp_single", State.UDP_STREAM: "udp_stream", State.ICMP: "icmp", State.OTHER: "other",
}

# Allowed ranges in seconds. The first three are the reference's; the rest are ours (the reference
# fixes "other" at 600 s and documents no ICMP or TCP handshake/closing timeouts).
_TIMEOUT_RANGES = {
    "tcp_established": (60, 432000),
    "udp_stream": (60, 180),
    "udp_single": (30, 60),
    "other": (60, 600),
    "icmp": (10, 60),  # Linux's nf_conntrack_icmp_timeout is 30 s
    "tcp_transitory": (30, 600),  # Linux: SYN_SENT, FIN_WAIT and TIME_WAIT 120 s, SYN_RECV 60 s
    "tcp_closed": (1, 120),  # Linux's CLOSE is 10 s
}


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Idle timeouts in seconds, per ENI. Frozen: one instance can be shared (it is the default)."""

    tcp_established: float = 432000
    udp_stream: float = 180
    udp_single: float = 30
    other: float = 600
    icmp: float = 30
    tcp_transitory: float = 120  # SYN_SENT, SYN_RECV, CLOSING
    tcp_closed: float = 10  # TIME_WAIT, CLOSE

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            lo, hi = _TIMEOUT_RANGES[field.name]
            value = getattr(self, field.name)
            # ``not lo <= value <= hi`` also rejects NaN.
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"timeout {field.name}={value!r} is outside {lo}..{hi} s")


@dataclasses.dataclass(slots=True)
class PacketInfo:
    """What the tracker needs from one IPv4 or IPv6 packet; ``packet_info`` fills it from the wire.
    ``src`` and ``dst`` are address keys (``addresses.key``: IPv6 ones carry ``V6_TAG``).

    ``wscale`` and ``fragment`` go beyond the five-tuple because tracking needs them: a SYN's window
    scale option says how to read every later window of that side, and a non-first fragment has no
    ports at all.
    """

    proto: int
    src: int
    dst: int
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0  # the flag byte: FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32, ECE 64, CWR 128
    seq: int = 0
    ack: int = 0
    window: int = 0
    payload_len: int = 0
    icmp_type: int = -1  # ICMP, or ICMPv6 in an IPv6 packet
    icmp_code: int = -1
    icmp_id: int = 0
    inner: "PacketInfo | None" = None  # ICMP(v6) errors: the quoted packet's header, as its sender sent it
    wscale: int = -1  # a SYN's window scale option (0..14), -1 when absent
    fragment: bool = False  # a non-first fragment: no transport header, never tracked


class FlowKey(NamedTuple):
    """A flow's identity, oriented to the ENI (the same for both directions)."""

    proto: int
    local: int
    remote: int
    local_port: int  # TCP/UDP port; ICMP query identifier; else 0
    remote_port: int  # TCP/UDP port; ICMP: 0 if the local side asked, 1 if the remote side did; else 0


class FlowEntry(NamedTuple):
    """One flow as status output and trace show it."""

    key: FlowKey
    state: State
    outbound: bool  # the local side sent the first packet
    packets: int  # accepted packets, both directions
    expires: float  # ``now`` at which it expires unless another packet arrives


# --- classifying packets ---------------------------------------------------------------------------

_K_BAD, _K_SYN, _K_SYNACK, _K_RST, _K_FIN, _K_ACK = range(6)


def _tcp_kinds() -> bytes:
    """Flag byte → kind, one index per packet. The valid combinations are Linux's ``tcp_valid_flags``
    (``nf_conntrack_proto_tcp.c``), which ignores ECE, CWR and PSH; everything else is ``_K_BAD``."""
    valid = {_SYN: _K_SYN, _SYN | _URG: _K_SYN, _SYN | _ACK: _K_SYNACK, _RST: _K_RST, _RST | _ACK: _K_RST,
             _FIN | _ACK: _K_FIN, _FIN | _ACK | _URG: _K_FIN, _ACK: _K_ACK, _ACK | _URG: _K_ACK}
    return bytes(valid.get(b & ~(_ECE | _CWR | _PSH), _K_BAD) for b in range(256))


_TCP_KIND = _tcp_kinds()

_I_OTHER, _I_REQUEST, _I_REPLY, _I_ERROR = range(4)
_ICMP_KIND = bytes(
    _I_REQUEST if t in (8, 13, 15, 17) else _I_REPLY if t in (0, 14, 16, 18)
    else _I_ERROR if t in (3, 4, 5, 11, 12) else _I_OTHER
    for t in range(256)
)
# ICMPv6 (RFC 4443): echo is the only query; errors 1-4; neighbour discovery, MLD and the rest: other.
_ICMP6_KIND = bytes(
    _I_REQUEST if t == 128 else _I_REPLY if t == 129 else _I_ERROR if 1 <= t <= 4 else _I_OTHER
    for t in range(256)
)


def _icmp_kind(pkt: PacketInfo) -> int:
    """The ``_I_*`` kind of an ICMP packet in IPv4 or an ICMPv6 packet in IPv6; -1 for anything else."""
    proto = pkt.proto
    if proto == PROTO_ICMP and pkt.src <= _M32:
        return _ICMP_KIND[pkt.icmp_type & 0xFF]
    if proto == PROTO_ICMPV6 and pkt.src > _M32:
        return _ICMP6_KIND[pkt.icmp_type & 0xFF]
    return -1


def _key(pkt: PacketInfo, outbound: bool) -> int | None:
    """The packed flow key of ``pkt`` seen from the ENI, or None if it can have no flow of its own
    (an ICMP(v6) error or another non-query ICMP(v6) message, a non-first fragment)."""
    if pkt.fragment:
        return None
    proto = pkt.proto
    if outbound:
        local, remote, lport, rport = pkt.src, pkt.dst, pkt.sport, pkt.dport
    else:
        local, remote, lport, rport = pkt.dst, pkt.src, pkt.dport, pkt.sport
    if proto != PROTO_TCP and proto != PROTO_UDP:
        # ``_icmp_kind``, inlined (the family of ``local`` is the packet's).
        if proto == PROTO_ICMP and local <= _M32:
            kind = _ICMP_KIND[pkt.icmp_type & 0xFF]
        elif proto == PROTO_ICMPV6 and local > _M32:
            kind = _ICMP6_KIND[pkt.icmp_type & 0xFF]
        else:
            kind = -1
        if kind == _I_REQUEST:
            lport, rport = pkt.icmp_id, 0 if outbound else 1
        elif kind == _I_REPLY:
            lport, rport = pkt.icmp_id, 1 if outbound else 0
        elif kind >= 0:
            return None
        else:
            lport = rport = 0
    if local > _M32:  # IPv6: ``local`` carries V6_TAG, which lands on bit 288
        return proto << 289 | local << 160 | (remote & _M128) << 32 | lport << 16 | rport
    return proto << 96 | local << 64 | remote << 32 | lport << 16 | rport


def _flow_key(key: int) -> FlowKey:
    if key >= _V6_KEYS:
        return FlowKey(key >> 289, (key >> 160) & _M129, (key >> 32) & _M128 | V6_TAG, (key >> 16) & 0xFFFF,
                       key & 0xFFFF)
    return FlowKey(key >> 96, (key >> 64) & _M32, (key >> 32) & _M32, (key >> 16) & 0xFFFF, key & 0xFFFF)


# --- flow records ----------------------------------------------------------------------------------
# Slots and plain ints: no per-flow dict. Small ints (< 257) are shared by CPython, so states, flags
# and scales cost nothing beyond their slot.

class _Flow:
    """A UDP, ICMP or other-protocol flow."""

    __slots__ = ("state", "orig_out", "expires", "packets", "mark_out", "mark_in")

    def __init__(self, state: int, orig_out: bool, expires: float):
        self.state = state
        self.orig_out = orig_out  # the originator is the local side
        self.expires = expires
        self.packets = 1
        # Per direction, a value the caller keeps with the flow (Linux's ctmark): the firewall stores
        # the network ACL that last allowed that direction, so a stateless ACL is evaluated once per
        # flow and direction, and again only after the ACL changed (``firewall.py``).
        self.mark_out = self.mark_in = None


_FIN_OUT, _FIN_IN, _ACKED_OUT, _ACKED_IN = 1, 2, 4, 8  # ``fins``: FIN sent by local/remote, acknowledged
_ALL_FINS = 15


class _TcpFlow(_Flow):
    """A TCP flow: the per-side window state of the module docstring, l_ local and r_ remote;
    ``*_winbits`` is b of maxwin = 2^b, 0 for a side not seen yet."""

    __slots__ = ("l_end", "l_maxend", "l_winbits", "r_end", "r_maxend", "r_winbits", "scales", "fins")

    def __init__(self, orig_out: bool, expires: float):
        super().__init__(_SYN_SENT, orig_out, expires)
        self.l_end = self.l_maxend = self.l_winbits = self.r_end = self.r_maxend = self.r_winbits = 0
        # In SYN_SENT the originator's window scale offer (-1: none); from SYN_RECV on the agreed
        # shifts, local | remote << 4 (both 0 unless both sides offered scaling).
        self.scales = -1
        self.fins = 0


class _PickedUpTcpFlow(_TcpFlow):
    """A TCP flow picked up mid-stream (``ConnTrack.allow_pickup``): its start was never seen. No slot of
    its own: the class is the mark, tested only where a check fails (the hot path pays nothing)."""

    __slots__ = ()


_PICKUP_MAXEND = 0xFFFF << _MAX_WSCALE  # the largest window TCP can offer: the sender's guess until R speaks


def _pick_up(pkt: PacketInfo, outbound: bool, expires: float) -> _PickedUpTcpFlow:
    """An ESTABLISHED flow from an ACK in the middle of a connection (the module docstring's pickup)."""
    f = _PickedUpTcpFlow(outbound, expires)
    f.state = _TCP_ESTABLISHED
    f.scales = _MAX_WSCALE | _MAX_WSCALE << 4
    win = pkt.window << _MAX_WSCALE
    end = (pkt.seq + pkt.payload_len) & _M32
    bits = (win or 1).bit_length()
    ack, maxend = pkt.ack & _M32, (end + _PICKUP_MAXEND) & _M32
    offered = (ack + (win or 1)) & _M32  # a zero window still admits a 1-byte probe
    if outbound:
        f.l_end, f.l_maxend, f.l_winbits = end, maxend, bits
        f.r_end, f.r_maxend = ack, offered
    else:
        f.r_end, f.r_maxend, f.r_winbits = end, maxend, bits
        f.l_end, f.l_maxend = ack, offered
    return f


def _init_side(f: _TcpFlow, pkt: PacketInfo, outbound: bool) -> None:
    """Seed the window state of the side that sent SYN (or SYN+ACK) ``pkt``: its window is unscaled."""
    end = (pkt.seq + pkt.payload_len + 1) & _M32
    bits = (pkt.window or 1).bit_length()  # never 0: that means "side not seen yet"
    if outbound:
        f.l_end = f.l_maxend = end
        f.l_winbits = bits
    else:
        f.r_end = f.r_maxend = end
        f.r_winbits = bits


def _in_window(f: _TcpFlow, outbound: bool, flags: int, seq: int, ack: int, window: int, payload_len: int) -> bool:
    """Checks I–IV of the module docstring for a packet's TCP fields; if they pass, update the window
    state and return True. Scalars, not a PacketInfo: the wire fast path (``lookup_wire``) has no object."""
    if outbound:
        s_end, s_maxend, s_bits, scale = f.l_end, f.l_maxend, f.l_winbits, f.scales & 15
        r_end, r_maxend, r_bits = f.r_end, f.r_maxend, f.r_winbits
    else:
        s_end, s_maxend, s_bits, scale = f.r_end, f.r_maxend, f.r_winbits, f.scales >> 4
        r_end, r_maxend, r_bits = f.l_end, f.l_maxend, f.l_winbits
    if not s_bits:
        if f.__class__ is not _PickedUpTcpFlow:
            return False  # this side never sent its SYN: there is nothing to check its packets against
        # The other side of a picked-up flow, heard for the first time: learn its window, then check.
        s_bits = ((window if flags & _SYN else window << scale) or 1).bit_length()
        if outbound:
            f.l_winbits = s_bits
        else:
            f.r_winbits = s_bits
    end = (seq + payload_len + (flags & _FIN) + ((flags & _SYN) >> 1)) & _M32  # FIN and SYN count one
    has_ack = flags & _ACK
    if not has_ack:
        ack = r_end
    if (s_maxend - seq) & _M32 >= _HALF:  # I
        return False
    if r_bits and (end - s_end + (1 << r_bits)) & _M32 >= _HALF:  # II
        return False
    if (r_end - ack) & _M32 > (1 << s_bits if s_bits > 16 else _MAXACKWINDOW):  # III, IV; 2^16 < 66000
        # A picked-up flow: R's data from before the pickup was never seen, so III cannot be exact. An
        # ack beyond end[R] but within the window S offered R (R sends nothing beyond it) moves end[R].
        if (f.__class__ is not _PickedUpTcpFlow or (ack - r_end) & _M32 >= _HALF
                or (r_maxend - ack) & _M32 >= _HALF):
            return False
        if outbound:
            f.r_end = ack
        else:
            f.l_end = ack
    win = window if flags & _SYN else window << scale  # a SYN's window is never scaled
    if win >> s_bits:
        s_bits = win.bit_length()
        if outbound:
            f.l_winbits = s_bits
        else:
            f.r_winbits = s_bits
    if 0 < (end - s_end) & _M32 < _HALF:
        if outbound:
            f.l_end = end
        else:
            f.r_end = end
    if has_ack:
        edge = (ack + win) & _M32
        if (edge - r_maxend) & _M32 < _HALF:
            edge = edge if win else (edge + 1) & _M32  # a zero window still admits a 1-byte probe
            if outbound:
                f.r_maxend = edge
            else:
                f.l_maxend = edge
    return True


# --- the tracker -----------------------------------------------------------------------------------

class ConnTrack:
    """The tracked flows of one ENI. Not thread-safe: call it from the event loop's thread only."""

    FULL_SWEEP = 16  # entries examined for expiry when the table is full, before refusing a flow

    def __init__(self, timeouts: Timeouts = Timeouts(), max_flows: int = 65536,
                 pickup_until: float = float("-inf")):
        self.configure(timeouts, max_flows)
        self.pickup_until = pickup_until  # ``create`` picks up TCP mid-stream while now < this (allow_pickup)
        self.picked_up = 0  # TCP flows started mid-stream during a pickup grace period
        self._flows: dict[int, _Flow] = {}
        self._sweep = Sweep()
        self.limit_hits = 0  # flows refused because the table was full (conntrack_allowance_exceeded)
        self.invalid = 0  # INVALID verdicts
        self.invalid_starts = 0  # packets that cannot start a flow (create returned False)
        self.created = 0
        self.expired = 0
        self.flow: _Flow | None = None  # the flow of the last ESTABLISHED verdict or ``create`` (None if related)

    def configure(self, timeouts: Timeouts, max_flows: int) -> None:
        """New timeouts and limit for this ENI. Flows keep their current deadline until their next
        packet; a lower limit refuses new flows until the table has shrunk below it."""
        timeouts.validate()
        if max_flows < 1:
            raise ValueError(f"max_flows must be at least 1, got {max_flows}")
        self.timeouts = timeouts
        self.max_flows = max_flows
        self._timeout = tuple(getattr(timeouts, _STATE_TIMEOUT[s]) for s in State)

    def __len__(self) -> int:
        """Flows in the table, including expired ones not yet swept."""
        return len(self._flows)

    def stats(self) -> dict[str, int]:
        return {"flows": len(self._flows), "limit_hits": self.limit_hits, "invalid": self.invalid,
                "invalid_starts": self.invalid_starts, "created": self.created, "expired": self.expired,
                "picked_up": self.picked_up}

    def allow_pickup(self, until: float) -> None:
        """Until ``now`` reaches ``until``, let ``create`` start an ESTABLISHED flow from a TCP ACK in the
        middle of a connection (the module docstring's mid-stream pickup): for a table that lost its flows
        while their connections went on, e.g. its host agent restarted."""
        self.pickup_until = until

    # --- per packet ----------------------------------------------------------------------------
    def lookup(self, pkt: PacketInfo, outbound: bool, now: float) -> Verdict:
        proto = pkt.proto
        if (proto == PROTO_TCP or proto == PROTO_UDP) and not pkt.fragment and pkt.src <= _M32:
            # ``_key`` inlined for the common case (IPv4).
            if outbound:
                key = proto << 96 | pkt.src << 64 | pkt.dst << 32 | pkt.sport << 16 | pkt.dport
            else:
                key = proto << 96 | pkt.dst << 64 | pkt.src << 32 | pkt.dport << 16 | pkt.sport
        else:
            key = _key(pkt, outbound)
            if key is None:
                return self._related(pkt, outbound, now)
        # _live(), inlined: this is the per-packet path and a call costs more than these lines.
        f = self._flows.get(key)
        if f is None:
            return _NEW
        if now >= f.expires:
            del self._flows[key]
            self.expired += 1
            return _NEW
        if proto == PROTO_TCP:
            if f.state == _TCP_ESTABLISHED and _TCP_KIND[pkt.tcp_flags & 0xFF] == _K_ACK:
                # The bulk of TCP: data and ACKs of an established connection; no state change.
                if not _in_window(f, outbound, pkt.tcp_flags, pkt.seq, pkt.ack, pkt.window, pkt.payload_len):
                    return self._invalid()
                f.expires = now + self._timeout[_TCP_ESTABLISHED]
                f.packets += 1
                self.flow = f
                return _ESTABLISHED
            return self._tcp(f, key, pkt, outbound, now)
        state = f.state
        if state == _UDP_SINGLE and outbound != f.orig_out:
            f.state = state = _UDP_STREAM
        f.expires = now + self._timeout[state]
        f.packets += 1
        self.flow = f
        return _ESTABLISHED

    def lookup_wire(self, buf, off: int, n: int, outbound: bool, now: float) -> Verdict | None:
        """``lookup`` for the IPv4 or IPv6 packet at ``buf[off:off + n]``, for the bulk of traffic — an
        unfragmented UDP packet, ICMP(v6) echo or TCP ACK of a known, established flow — without
        building a ``PacketInfo`` (that costs more than the lookup). None: no fast answer (a new flow, a
        handshake, ICMP, options or IPv6 extension headers we do not read here...): parse with
        ``packet_info`` and call ``lookup``, which gives the same verdict for these packets."""
        if n < 28:
            return None
        vihl, total, frag, proto, addrs, ports = _WIRE.unpack_from(buf, off)
        if vihl == 0x45 and not frag & 0x1FFF and total <= n and total >= 28:
            if proto == PROTO_TCP:
                left = total - 20  # the transport's bytes
                if left < 20:
                    return None
                seq, ack, doff, flags, window = _TCP_AFTER_PORTS.unpack_from(buf, off + 24)
                if _TCP_KIND[flags] != _K_ACK:
                    return None
            elif proto == PROTO_ICMP:
                # An echo request or reply (ping): ``_key``'s (identifier, who asked), already local-oriented.
                icmp_type = ports >> 24
                if icmp_type == 8:
                    ports = _U16.unpack_from(buf, off + 24)[0] << 16 | (0 if outbound else 1)
                elif icmp_type == 0:
                    ports = _U16.unpack_from(buf, off + 24)[0] << 16 | (1 if outbound else 0)
                else:
                    return None
            elif proto != PROTO_UDP:
                return None
            # The key of ``_key`` from the wire's (src, dst) and (sport, dport) pairs: outbound they are
            # already (local, remote); inbound each pair is swapped (ICMP's pair is local-oriented already).
            # Two wide fields instead of four narrow ones: this line is most of the cost of a lookup.
            if outbound:
                key = proto << 96 | addrs << 32 | ports
            elif proto == PROTO_ICMP:
                key = proto << 96 | (addrs & _M32) << 64 | addrs & _SRC32 | ports
            else:
                key = proto << 96 | (addrs & _M32) << 64 | addrs & _SRC32 | (ports & 0xFFFF) << 16 | ports >> 16
        else:
            # IPv6 is tested here, not first: IPv4 pays nothing for it. Only a transport header right
            # after the fixed header (no extension headers: those take the parsed path).
            if vihl >> 4 != 6 or n < 48:
                return None
            # ``_key``'s IPv6 layout: the two addresses, in (local, remote) order, are one 256-bit field.
            if outbound:  # already in order on the wire
                left, proto, addrs, ports = _WIRE6_OUT.unpack_from(buf, off)
            else:
                left, proto, src, dst, ports = _WIRE6.unpack_from(buf, off)
                addrs = dst + src
            if left > n - 40 or left < 8:
                return None
            if proto == PROTO_TCP:
                if left < 20:
                    return None
                seq, ack, doff, flags, window = _TCP_AFTER_PORTS.unpack_from(buf, off + 44)
                if _TCP_KIND[flags] != _K_ACK:
                    return None
                base = _K6_TCP
            elif proto == PROTO_UDP:
                base = _K6_UDP
            elif proto == PROTO_ICMPV6:
                icmp_type = ports >> 24
                if icmp_type == 128:
                    ports = _U16.unpack_from(buf, off + 44)[0] << 16 | (0 if outbound else 1)
                elif icmp_type == 129:
                    ports = _U16.unpack_from(buf, off + 44)[0] << 16 | (1 if outbound else 0)
                else:
                    return None
                base = _K6_ICMP
            else:
                return None
            if outbound or proto == PROTO_ICMPV6:  # ICMPv6's (identifier, who asked) is local-oriented already
                key = base | int.from_bytes(addrs, "big") << 32 | ports
            else:
                key = base | int.from_bytes(addrs, "big") << 32 | (ports & 0xFFFF) << 16 | ports >> 16
        f = self._flows.get(key)
        if f is None or now >= f.expires:
            return None
        state = f.state
        if proto == PROTO_TCP:
            if state != _TCP_ESTABLISHED:
                return None
            doff = (doff >> 4) * 4
            if doff < 20 or doff > left:
                return None
            if not _in_window(f, outbound, flags, seq, ack, window, left - doff):
                return self._invalid()
        elif state == _UDP_SINGLE and outbound != f.orig_out:
            f.state = state = _UDP_STREAM
        f.expires = now + self._timeout[state]
        f.packets += 1
        self.flow = f
        return _ESTABLISHED

    def create(self, pkt: PacketInfo, outbound: bool, now: float) -> bool:
        """Track the flow that ``pkt`` starts; call after ``lookup`` said NEW and the rules allowed it.
        An existing entry under the same key is replaced."""
        key = _key(pkt, outbound)
        proto = pkt.proto
        icmp = _icmp_kind(pkt)
        kind = _TCP_KIND[pkt.tcp_flags & 0xFF] if proto == PROTO_TCP else -1
        pickup = kind == _K_ACK and now < self.pickup_until
        if (key is None
                or proto == PROTO_TCP and kind != _K_SYN and not pickup
                or icmp >= 0 and icmp != _I_REQUEST):
            # A stray ACK, a SYN+ACK, an unsolicited reply, an ICMP error: Linux would not start a
            # connection either (no mid-stream pickup outside a grace period: ``allow_pickup``).
            self.invalid_starts += 1
            return False
        flows = self._flows
        if len(flows) >= self.max_flows and key not in flows:
            self.expire(now, self.FULL_SWEEP)
            if len(flows) >= self.max_flows:
                self.limit_hits += 1
                return False
        if pickup:
            f = _pick_up(pkt, outbound, now + self._timeout[_TCP_ESTABLISHED])
            self.picked_up += 1
        elif proto == PROTO_TCP:
            f = _TcpFlow(outbound, now + self._timeout[_SYN_SENT])
            _init_side(f, pkt, outbound)
            f.scales = pkt.wscale
        else:
            state = _UDP_SINGLE if proto == PROTO_UDP else _ICMP if icmp >= 0 else _OTHER
            f = _Flow(state, outbound, now + self._timeout[state])
        flows[key] = self.flow = f
        self.created += 1
        return True

    def _related(self, pkt: PacketInfo, outbound: bool, now: float) -> Verdict:
        """An ICMP or ICMPv6 error is related to the flow of the packet it quotes, if it goes back to
        that packet's sender (Linux checks the outer destination too). It does not refresh the flow."""
        inner = pkt.inner
        if inner is None or inner.src != pkt.dst:
            return _NEW
        key = _key(inner, not outbound)  # the quoted packet travelled the other way
        if key is None or self._live(key, now) is None:
            return _NEW
        self.flow = None  # related to a flow, not of it
        return _ESTABLISHED

    def peek(self, pkt: PacketInfo, outbound: bool, now: float) -> FlowEntry | None:
        """The live flow ``pkt`` belongs to, changing nothing (for ``vpc trace``)."""
        key = _key(pkt, outbound)
        f = self._flows.get(key) if key is not None else None
        if f is None or now >= f.expires:
            return None
        return FlowEntry(_flow_key(key), State(f.state), f.orig_out, f.packets, f.expires)

    def _live(self, key: int, now: float):
        """The flow under ``key`` if it has not expired (an expired one is removed)."""
        f = self._flows.get(key)
        if f is not None and now >= f.expires:
            del self._flows[key]
            self.expired += 1
            return None
        return f

    def _tcp(self, f: _TcpFlow, key: int, pkt: PacketInfo, outbound: bool, now: float) -> Verdict:
        kind = _TCP_KIND[pkt.tcp_flags & 0xFF]
        if not kind:
            return self._invalid()
        state = f.state
        from_orig = outbound == f.orig_out
        orig_end = f.l_end if f.orig_out else f.r_end  # the originator's SYN + 1 until it sends data
        if state == _SYN_SENT:
            if kind == _K_SYN and from_orig:
                _init_side(f, pkt, outbound)  # a retransmission, or a new attempt with a new ISN
                f.scales = pkt.wscale
                return self._accept(f, _SYN_SENT, now)
            if kind == _K_SYNACK and not from_orig and pkt.ack == orig_end:
                offer, answer = f.scales, pkt.wscale
                if offer >= 0 and answer >= 0:
                    f.scales = offer | answer << 4 if f.orig_out else answer | offer << 4
                else:
                    f.scales = 0
                _init_side(f, pkt, outbound)
                state = _SYN_RECV  # and the window check below, which records the offered window
            elif kind == _K_RST and (not from_orig and pkt.tcp_flags & _ACK and pkt.ack == orig_end
                                     or from_orig and pkt.seq == orig_end):
                f.scales = 0
                return self._accept(f, _CLOSE, now)
            else:
                return self._invalid()
        elif kind == _K_SYN:
            if state >= _TIME_WAIT:
                # Port reuse after the end of a connection: Linux too drops the old entry. NEW, so the
                # rules decide on the new connection.
                del self._flows[key]
                return _NEW
            if not (state == _SYN_RECV and from_orig):  # else a retransmission: window check
                return self._invalid()
        elif kind == _K_SYNACK:
            if from_orig:
                return self._invalid()
            if state == _SYN_RECV:
                if pkt.ack != orig_end:
                    return self._invalid()
                _init_side(f, pkt, outbound)  # a retransmission, or the peer started over
        if not _in_window(f, outbound, pkt.tcp_flags, pkt.seq, pkt.ack, pkt.window, pkt.payload_len):
            return self._invalid()
        if kind == _K_RST:
            state = _CLOSE
        elif kind >= _K_FIN and state != _CLOSE:  # FIN or ACK
            if state == _SYN_RECV and from_orig:
                state = _TCP_ESTABLISHED
            fins = f.fins
            if kind == _K_FIN:
                fins |= _FIN_OUT if outbound else _FIN_IN
            if fins:
                # This packet acknowledges the other side's FIN if it acknowledges everything that
                # side sent (check III makes ack ≤ its end, and the FIN is its last).
                other_end = f.r_end if outbound else f.l_end
                if fins & (_FIN_IN if outbound else _FIN_OUT) and pkt.ack == other_end:
                    fins |= _ACKED_IN if outbound else _ACKED_OUT
                f.fins = fins
                state = _TIME_WAIT if fins == _ALL_FINS else _CLOSING
        return self._accept(f, state, now)

    def _accept(self, f: _Flow, state: int, now: float) -> Verdict:
        f.state = state
        f.expires = now + self._timeout[state]
        f.packets += 1
        self.flow = f
        return _ESTABLISHED

    def _invalid(self) -> Verdict:
        self.invalid += 1
        return _INVALID

    # --- housekeeping --------------------------------------------------------------------------
    def expire(self, now: float, budget: int = 1000) -> int:
        """Remove expired flows, examining at most ``budget`` entries (``sweep.Sweep``: O(budget) however
        large the table). Returns the number removed (≤ budget). Lookups remove the expired flows they
        meet, so this only reclaims memory and room from idle flows."""
        flows = self._flows
        doomed = self._sweep.expired(flows, now, budget)
        for key in doomed:
            del flows[key]
        self.expired += len(doomed)
        return len(doomed)

    def remove_if(self, predicate: Callable[[FlowKey], bool]) -> int:
        """Drop the flows whose key matches, e.g. untracked flows whose allow-all rule was removed."""
        doomed = [key for key in self._flows if predicate(_flow_key(key))]
        for key in doomed:
            del self._flows[key]
        return len(doomed)

    def entries(self) -> list[FlowEntry]:
        """All flows (expired ones not yet swept included), for status output and trace."""
        return [FlowEntry(_flow_key(key), State(f.state), f.orig_out, f.packets, f.expires)
                for key, f in self._flows.items()]


# --- parsing ---------------------------------------------------------------------------------------
#
# Only what tracking needs, from fixed offsets (RFC 791, 793, 768, 792, 8200, 4443):
#   IPv4: version/IHL @0, total length @2, flags/fragment offset @6, protocol @9, addresses @12
#   IPv6: version @0 (high nibble), payload length @4, next header @6, addresses @8; then extension
#         headers: next header @0 and length in 8 bytes, not counting the first 8, @1 (hop-by-hop 0,
#         routing 43, destination options 60); fragment 44: next header @0, offset << 3 | M @2, 8 bytes
#   TCP:  ports @0, seq @4, ack @8, data offset @12 (high nibble), flags @13, window @14
#   UDP:  ports @0          ICMP, ICMPv6: type @0, code @1, identifier @4 (echo) or the quoted packet @8 (errors)

_IP = struct.Struct("!BxHxxHxBxxII")  # version/IHL, total length, flags/fragment, protocol, src, dst
_TCP = struct.Struct("!HHIIBBH")  # ports, seq, ack, data offset byte, flags, window
_WIRE = struct.Struct("!BxHxxHxB2xQI")  # version/IHL, total length, fragment, protocol, src+dst, sport+dport
_TCP_AFTER_PORTS = struct.Struct("!IIBBH")  # seq, ack, data offset byte, flags, window
_QUOTED_TCP = struct.Struct("!HHI")  # ports and seq: the 8 bytes an ICMP error quotes
_ICMP_HEADER = 8
_IP6 = struct.Struct("!IHBx16s16s")  # version/class/label, payload length, next header, src, dst
_WIRE6 = struct.Struct("!4xHBx16s16sI")  # payload length, next header, src, dst, sport+dport (ICMPv6: type...)
_WIRE6_OUT = struct.Struct("!4xHBx32sI")  # the same, src+dst as one field
_K6_TCP, _K6_UDP, _K6_ICMP = ((p << 1 | 1) << 288 for p in (PROTO_TCP, PROTO_UDP, PROTO_ICMPV6))
_FRAGMENT = 44
_EXTENSIONS = frozenset((0, 43, _FRAGMENT, 60))  # hop-by-hop, routing, fragment, destination options
_MAX_EXTENSIONS = 8  # a longer chain is malformed (RFC 8200 §4.1: each at most once, destination options twice)


def packet_info(buf, off: int, n: int) -> PacketInfo | None:
    """Parse the IPv4 or IPv6 packet at ``buf[off:off + n]`` (the caller guarantees those bytes
    exist). None if it is malformed: too short, neither IPv4 nor IPv6, inconsistent lengths, a
    truncated extension header chain or transport header, or an ICMP(v6) error without the quoted IP
    header and 8 bytes RFC 792 requires (RFC 4443: as much of the packet as fits; we need as much)."""
    if n < 20:
        return None
    vihl, total, frag, proto, src, dst = _IP.unpack_from(buf, off)
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or ihl < 20 or total < ihl or total > n:
        # IPv6 is tested here, not first: IPv4 pays nothing for it.
        return _packet_info6(buf, off, n) if vihl >> 4 == 6 else None  # bytes after ``total``: link padding
    left = total - ihl
    if frag & 0x1FFF:
        return PacketInfo(proto, src, dst, payload_len=left, fragment=True)
    return _transport(buf, off + ihl, left, proto, src, dst, PROTO_ICMP, _ICMP_KIND, _quoted)


def _transport(buf, l4: int, left: int, proto: int, src: int, dst: int, icmp: int, icmp_kind: bytes, quoted):
    """The transport header at ``l4`` (``left`` bytes to the packet's end), either family: ``icmp`` is the
    family's ICMP protocol (1 or 58), ``icmp_kind`` its type table and ``quoted`` its quote parser."""
    if proto == PROTO_TCP:
        if left < 20:
            return None
        sport, dport, seq, ack, doff, flags, window = _TCP.unpack_from(buf, l4)
        doff = (doff >> 4) * 4
        if doff < 20 or doff > left:
            return None
        wscale = _wscale(buf, l4 + 20, l4 + doff) if flags & _SYN else -1
        return PacketInfo(proto, src, dst, sport, dport, flags, seq, ack, window, left - doff, wscale=wscale)
    if proto == PROTO_UDP:
        if left < 8:
            return None
        sport, dport = _PORTS.unpack_from(buf, l4)
        return PacketInfo(proto, src, dst, sport, dport, payload_len=left - 8)
    if proto == icmp:
        if left < _ICMP_HEADER:
            return None
        icmp_type, code = buf[l4], buf[l4 + 1]
        kind = icmp_kind[icmp_type]
        pkt = PacketInfo(proto, src, dst, payload_len=left - _ICMP_HEADER, icmp_type=icmp_type, icmp_code=code)
        if kind == _I_REQUEST or kind == _I_REPLY:
            pkt.icmp_id = _U16.unpack_from(buf, l4 + 4)[0]
        elif kind == _I_ERROR:
            pkt.inner = quoted(buf, l4 + _ICMP_HEADER, left - _ICMP_HEADER)
            if pkt.inner is None:
                return None
        return pkt
    return PacketInfo(proto, src, dst, payload_len=left)


def _quoted(buf, off: int, n: int) -> PacketInfo | None:
    """The packet an ICMP error quotes: its IP header and first 8 bytes, as its sender sent them.
    Its own total length is not checked: the quote is usually truncated."""
    if n < 20:
        return None
    vihl, _total, frag, proto, src, dst = _IP.unpack_from(buf, off)
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or ihl < 20 or ihl + 8 > n:
        return None
    if frag & 0x1FFF:
        return PacketInfo(proto, src, dst, fragment=True)
    return _quoted_transport(buf, off + ihl, proto, src, dst, PROTO_ICMP, _ICMP_KIND)


def _quoted_transport(buf, l4: int, proto: int, src: int, dst: int, icmp: int, icmp_kind: bytes) -> PacketInfo:
    """The quoted packet's first 8 transport bytes at ``l4`` (the caller checked they are there), either
    family: ``icmp`` is the family's ICMP protocol (1 or 58), ``icmp_kind`` its type table."""
    if proto == PROTO_TCP:
        sport, dport, seq = _QUOTED_TCP.unpack_from(buf, l4)
        return PacketInfo(proto, src, dst, sport, dport, seq=seq)
    if proto == PROTO_UDP:
        sport, dport = _PORTS.unpack_from(buf, l4)
        return PacketInfo(proto, src, dst, sport, dport)
    if proto == icmp:
        icmp_type = buf[l4]
        icmp_id = _U16.unpack_from(buf, l4 + 4)[0] if icmp_kind[icmp_type] in (_I_REQUEST, _I_REPLY) else 0
        return PacketInfo(proto, src, dst, icmp_type=icmp_type, icmp_code=buf[l4 + 1], icmp_id=icmp_id)
    return PacketInfo(proto, src, dst)


def _extensions(buf, i: int, end: int, nh: int):
    """Walk the IPv6 extension headers from ``buf[i]`` (``nh``: the first one's type) up to ``end``:
    (upper-layer protocol, its offset, whether the packet is a non-first fragment). A non-first
    fragment ends the walk at its fragment header: what follows is the middle of a datagram. None if
    the chain runs past ``end``, is longer than ``_MAX_EXTENSIONS`` or has a hop-by-hop header
    anywhere but first (RFC 8200 §4.1)."""
    count = 0
    while nh in _EXTENSIONS:
        if count == _MAX_EXTENSIONS or (nh == 0 and count) or i + 8 > end:
            return None
        count += 1
        if nh == _FRAGMENT:
            nh, frag = buf[i], _U16.unpack_from(buf, i + 2)[0]
            i += 8
            if frag & 0xFFF8:  # offset > 0; offset 0 is the first fragment (or an atomic one)
                return nh, i, True
        else:
            nh, i = buf[i], i + (buf[i + 1] + 1) * 8
            if i > end:
                return None
    return nh, i, False


def _packet_info6(buf, off: int, n: int) -> PacketInfo | None:
    """``packet_info`` for IPv6 (RFC 8200): the payload length must fit in ``n`` (what follows it is
    padding); extension headers are walked to the transport header, which is read as for IPv4 (TCP,
    UDP) or as ICMPv6 (RFC 4443). The first fragment of a datagram is parsed like a whole packet (RFC
    7112: it carries the transport header), a later one is ``fragment`` without ports."""
    if n < 40:
        return None
    plen = _U16.unpack_from(buf, off + 4)[0]
    if plen > n - 40:
        return None
    end = off + 40 + plen
    head = _ip6_head(buf, off, end)
    if head is None:
        return None
    nh, src, dst, l4, fragment = head
    if fragment:
        return PacketInfo(nh, src, dst, payload_len=end - l4, fragment=True)
    return _transport(buf, l4, end - l4, nh, src, dst, PROTO_ICMPV6, _ICMP6_KIND, _quoted6)


def _ip6_head(buf, off: int, end: int):
    """The IPv6 header at ``off`` and its extension headers up to ``end``: (upper-layer protocol, source
    and destination keys, the transport's offset, whether a non-first fragment), or None if it is not
    IPv6 or its chain is malformed (``_extensions``). Shared by packets and the packets errors quote."""
    vtf, _plen, nh, src, dst = _IP6.unpack_from(buf, off)
    if vtf >> 28 != 6:
        return None
    l4, fragment = off + 40, False
    if nh in _EXTENSIONS:
        walked = _extensions(buf, l4, end, nh)
        if walked is None:
            return None
        nh, l4, fragment = walked
    return nh, int.from_bytes(src, "big") | V6_TAG, int.from_bytes(dst, "big") | V6_TAG, l4, fragment


def _quoted6(buf, off: int, n: int) -> PacketInfo | None:
    """The packet an ICMPv6 error quotes (``_quoted`` for IPv6): its header, extension headers and
    first 8 bytes of transport, as its sender sent them. Its payload length is not checked: the quote
    is usually truncated."""
    if n < 48:
        return None
    end = off + n
    head = _ip6_head(buf, off, end)
    if head is None:
        return None
    nh, src, dst, l4, fragment = head
    if fragment:
        return PacketInfo(nh, src, dst, fragment=True)
    if l4 + 8 > end:
        return None
    return _quoted_transport(buf, l4, nh, src, dst, PROTO_ICMPV6, _ICMP6_KIND)


def _wscale(buf, i: int, end: int) -> int:
    """The window scale option (kind 3, length 3) among TCP options ``buf[i:end]``, capped at 14 as
    RFC 7323 says; -1 if absent. Malformed options end the search (Linux ignores them too)."""
    while i < end:
        kind = buf[i]
        if kind == 0:  # end of options
            break
        if kind == 1:  # no-op
            i += 1
            continue
        if i + 1 >= end:
            break
        length = buf[i + 1]
        if length < 2 or i + length > end:
            break
        if kind == 3 and length == 3:
            return min(buf[i + 2], _MAX_WSCALE)
        i += length
    return -1


# --- memory ----------------------------------------------------------------------------------------

def _fill(ct: ConnTrack, n: int) -> None:
    """Take ``n`` TCP connections through their handshake into ESTABLISHED (a TCP flow is the largest
    record). Distinct times and random ISNs, so nothing is shared between flows that would not be in
    real traffic."""
    rng = random.Random(1)
    local = 0x0A00010A
    for i in range(n):
        remote, port = 0x0A000200 + i // 28000, 32768 + i % 28000
        isn_l, isn_r, now = rng.getrandbits(32), rng.getrandbits(32), i * 0.001
        next_l, next_r = (isn_l + 1) & _M32, (isn_r + 1) & _M32
        syn = PacketInfo(PROTO_TCP, local, remote, port, 443, _SYN, isn_l, 0, 64240, wscale=7)
        ct.create(syn, True, now)
        ct.lookup(PacketInfo(PROTO_TCP, remote, local, 443, port, _SYN | _ACK, isn_r, next_l, 65160,
                             wscale=7), False, now)
        ct.lookup(PacketInfo(PROTO_TCP, local, remote, port, 443, _ACK, next_l, next_r, 502), True, now)
    if len(ct) != n or ct.invalid:
        raise RuntimeError("the measurement's connections did not all get established")


def flow_memory_bytes(n: int = 100_000) -> float:
    """Bytes per tracked flow, as tracemalloc sees the table grow by ``n`` established TCP flows.
    Counts everything a flow holds: its dict slot, key, record, ints and float."""
    ct = ConnTrack(max_flows=n)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _fill(ct, n)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return used / n


def flow_table_rss(n: int = 1_000_000) -> int:
    """Bytes of resident memory this process gains while ``n`` established TCP flows fill one table:
    what the operating system charges, allocator overhead included (run it in a fresh process)."""
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    ct = ConnTrack(max_flows=n)
    before = rss()
    _fill(ct, n)
    return rss() - before

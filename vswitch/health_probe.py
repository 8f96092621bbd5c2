"""A health check of one load balancer target, as a userspace TCP client: IPv4 packets in and out.

Why: the network load balancer's data path runs on Hyperplane nodes, which sit on the underlay only and
have no socket inside the VPC. A target is an instance at a private VPC address, reachable only through
the overlay, so the node cannot ``connect()`` to it. Instead ``HealthProbe`` speaks just enough TCP to
check it: it produces complete IPv4 packets (from the load balancer's private address), which the
node's shell encapsulates in Geneve to the target's host, and it takes the target's replies, which
come back to the node as raw IPv4 packets. ``nlb.HealthCheck`` decides when a probe starts and what
its results add up to; this module is one probe.

A pure core like ``nlb``: bytes in, bytes out, ``now`` passed in (seconds); no I/O, no clock. The shell
calls ``start()`` and sends the SYN, hands every IPv4 packet of the probe's 4-tuple to ``receive``,
calls ``poll`` when ``next_poll`` comes, sends whatever they return, and reads ``result`` once
``done`` (then ``HealthCheck.record(probe.result, now)``)::

    load balancer (probe)                      target
      start()    SYN seq=ISN, MSS 1460  ───────▶
                                        ◀─────── SYN-ACK seq=IRS ack=ISN+1      (RST: "refused")
    tcp:         RST seq=ISN+1          ───────▶                                 healthy: "connected"
    http:        ACK|PSH "GET path…"    ───────▶
                                        ◀─────── "HTTP/1.1 200 OK\\r\\n…" (one or more segments)
                 ACK                    ───────▶  (while the status line is incomplete)
                 RST seq=ISN+1+len(req) ───────▶  status in the matcher: healthy "http 200",
                                                  otherwise unhealthy "http 503", "no status line"
    FIN or RST before the status line: unhealthy ("closed", "reset"); nothing decided by the
    deadline (``now + timeout`` at construction): unhealthy "timeout" (with a RST if connected).

The RST releases the target's socket at once (no FIN handshake, no TIME_WAIT on either side); for a TCP
check the target's application never sees the connection (it is reset in SYN-RECV), as for a port scan.

Details:
- Packets out: IPv4 header of 20 bytes, DF, TTL 64, a per-probe ident counter, valid IPv4 and TCP
  checksums; TCP window 64240, no window scaling, SACK or timestamps; the SYN carries MSS 1460.
- Packets in are ignored (``receive`` returns []) unless they are IPv4 TCP from the target's address and
  port to the load balancer's address and the probe port, unfragmented, with consistent lengths, a valid
  IPv4 header checksum and a valid TCP checksum (``partial=True``: the transport checksum was left for
  offload to complete, virtio NEEDS_CSUM, and is not checked). Malformed input never raises.
- SYN-SENT: only a SYN-ACK or a RST acknowledging exactly ISN+1 counts (anything else is ignored). The
  SYN is retransmitted once, ``RTO`` (1 s) after it was sent, if nothing came.
- HTTP: the request (``nlb.http_request(path, host)``; host defaults to the target's address, with
  ``:port`` unless the port is 80) goes in segments of the target's MSS (536 if none, 1460 at most), the last
  with PSH. It is sent again once, ``RTO`` after it was sent, if the target has not acknowledged all of
  it, and again whenever the target repeats its SYN-ACK (our ACK was lost). The answer is taken in
  sequence: a segment starting past what has been received is not kept (the target retransmits it; a
  duplicate ACK asks for it), an old or overlapping one contributes only its new bytes, and every
  segment of data or FIN is acknowledged. The decision comes with the first line (up to "\\n"),
  ``MAX_HEAD`` bytes at most; a FIN right after "HTTP/1.1 200" (no line end) still counts.
- A RST from the target is accepted when its sequence number is within our receive window.
- Once done, the probe answers a segment of its 4-tuple as a closed port does (RFC 793): a RST, never
  to a RST. So a late SYN-ACK (after a timeout) or a target that missed our RST is cleaned up, if the
  shell keeps routing the 4-tuple here for a while.

Not done: retransmission beyond the one of the SYN and the one of the request (a target that loses more
times out); window handling (the target's window is not read; ours is fixed: more than 64240 bytes
before the status line is never needed, ``MAX_HEAD`` ends the check first); congestion control, SACK,
urgent data, ICMP errors (an unreachable target times out); IPv4 only.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
from typing import Sequence

from .headers import PROTO_TCP, IPv4, TCP, checksum, pseudo_header_sum
from .nlb import http_request, http_status, matches, parse_matcher

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_TCP = struct.Struct("!HHIIHHHH")
_H = struct.Struct("!H")
_I = struct.Struct("!I")
_M32 = 0xFFFFFFFF


def _diff(a: int, b: int) -> int:
    """``a - b`` in sequence space (RFC 1982): negative when ``a`` comes before ``b``."""
    return ((a - b + 0x80000000) & _M32) - 0x80000000


def _address(value) -> int:
    return int(ipaddress.IPv4Address(value))


class _Segment:
    __slots__ = ("seq", "ack", "flags", "window", "options", "payload")

    def __init__(self, seq, ack, flags, window, options, payload):
        self.seq, self.ack, self.flags, self.window = seq, ack, flags, window
        self.options, self.payload = options, payload

    @property
    def length(self) -> int:
        """Sequence space it takes: its data, and one each for SYN and FIN."""
        return len(self.payload) + bool(self.flags & SYN) + bool(self.flags & FIN)


def _mss_option(options: bytes) -> int | None:
    """The MSS option's value, None when absent or the options are malformed."""
    i, n = 0, len(options)
    while i < n:
        kind = options[i]
        if kind == 0:
            return None
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n or options[i + 1] < 2 or i + options[i + 1] > n:
            return None
        if kind == 2 and options[i + 1] == 4:
            return _H.unpack_from(options, i + 2)[0]
        i += options[i + 1]
    return None


class HealthProbe:
    """One health-check attempt of one target (module docstring)."""

    RTO = 1.0  # the retransmission timeout of the SYN and of the request (Linux's initial RTO)
    WINDOW = 64240  # the receive window we advertise
    MSS = 1460  # the MSS we advertise, and the largest segment we send
    DEFAULT_PEER_MSS = 536  # RFC 879: a target's MSS when its SYN-ACK gives none
    MIN_PEER_MSS = 48  # a smaller MSS option is taken as this (Linux's tcp_min_snd_mss)
    MAX_HEAD = 4096  # bytes of the answer that may come before the status line ends
    TTL = 64

    def __init__(self, kind: str, src, sport: int, dst, dport: int, now: float, timeout: float,
                 path: str = "/", host: str = "", matcher: str | Sequence[tuple[int, int]] = "200-399",
                 isn: int | None = None):
        """``src``, ``dst``: the load balancer's and the target's IPv4 addresses (int, or text);
        ``sport``: the probe's port (the shell's choice, unique among its live probes to the target);
        ``matcher``: text ("200-399,404") or ranges as ``nlb.parse_matcher`` gives them; ``isn``: the
        initial sequence number (random if None)."""
        if kind not in ("tcp", "http"):
            raise ValueError(f"a health probe is tcp or http, got {kind!r}")
        if not (0 < sport < 65536 and 0 < dport < 65536):
            raise ValueError(f"ports are 1-65535, got {sport} and {dport}")
        if not timeout > 0:
            raise ValueError(f"a probe's timeout must be positive, got {timeout}")
        self.kind = kind
        self.src, self.sport = _address(src), sport
        self.dst, self.dport = _address(dst), dport
        self._src4, self._dst4 = _I.pack(self.src), _I.pack(self.dst)
        self._src_addr, self._dst_addr = ipaddress.IPv4Address(self.src), ipaddress.IPv4Address(self.dst)
        self.started = now
        self.deadline = now + timeout
        self.ranges = parse_matcher(matcher) if isinstance(matcher, str) else tuple(matcher)
        if not host:
            text = str(ipaddress.IPv4Address(self.dst))
            host = text if dport == 80 else f"{text}:{dport}"
        self.request = http_request(path, host) if kind == "http" else b""
        self.isn = (secrets.randbits(32) if isn is None else isn) & _M32
        self._ident = self.isn >> 16

        self.state = "syn_sent"  # → "established" (http only) → "done"
        self.result: bool | None = None
        self.reason = ""
        self.status: int | None = None
        self.snd_nxt = (self.isn + 1) & _M32  # the next sequence number we send
        self.snd_una = self.isn  # the oldest one the target has not acknowledged
        self.irs = 0  # the target's initial sequence number
        self.rcv_nxt = 0  # the next sequence number we expect from the target
        self.peer_mss = self.DEFAULT_PEER_MSS
        self._head = bytearray()  # the answer so far, in sequence
        self._retx_at = now + self.RTO  # when the outstanding SYN or request is sent again (once)

    # --- the interface ---------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def next_poll(self) -> float:
        """When the shell should call ``poll`` next: a retransmission or the deadline (inf once done)."""
        return float("inf") if self.done else min(self._retx_at, self.deadline)

    def start(self) -> bytes:
        """The SYN (the same bytes but for the IPv4 ident if called again)."""
        return self._syn()

    def poll(self, now: float) -> list[bytes]:
        """Timers: the deadline (then unhealthy, "timeout"), and the one retransmission of the SYN or of
        the request."""
        if self.done:
            return []
        if now >= self.deadline:
            return self._time_out()
        if now >= self._retx_at:
            self._retx_at = float("inf")
            if self.state == "syn_sent":
                return [self._syn()]
            if self.snd_una != self.snd_nxt:
                return self._send_request()
        return []

    def receive(self, pkt, now: float, *, partial: bool = False) -> list[bytes]:
        """A packet from the target (an IPv4 packet: bytes, bytearray or memoryview); returns the packets
        to send. ``partial``: its TCP checksum was left for offload (virtio NEEDS_CSUM): not checked.
        Anything that is not a valid segment of this probe is ignored."""
        seg = self._parse(pkt, partial)
        if seg is None:
            return []
        if not self.done and now >= self.deadline:
            out = self._time_out()
            if out:
                return out
        if self.done:
            return self._closed_reply(seg)
        if self.state == "syn_sent":
            return self._syn_sent(seg, now)
        return self._established(seg, now)

    def __repr__(self) -> str:
        return (f"HealthProbe({self.kind} {ipaddress.IPv4Address(self.dst)}:{self.dport} from port "
                f"{self.sport}, {self.state}, result={self.result}, reason={self.reason!r})")

    # --- states ----------------------------------------------------------------------------------
    def _finish(self, result: bool, reason: str) -> None:
        self.state = "done"
        self.result = result
        self.reason = reason
        self._head = bytearray()

    def _time_out(self) -> list[bytes]:
        connected = self.state == "established"
        self._finish(False, "timeout")
        return [self._reset()] if connected else []

    def _syn_sent(self, seg: _Segment, now: float) -> list[bytes]:
        if not seg.flags & ACK or seg.ack != self.snd_nxt:
            return []  # RFC 793: a RST without an acceptable ACK is dropped; so is a stray segment
        if seg.flags & RST:
            self._finish(False, "refused")
            return []
        if not seg.flags & SYN:
            return []
        self.irs = seg.seq
        self.rcv_nxt = (seg.seq + 1) & _M32  # data on a SYN-ACK is not taken (we sent no TFO cookie)
        self.snd_una = self.snd_nxt
        if self.kind == "tcp":
            self._finish(True, "connected")
            return [self._reset()]
        mss = _mss_option(seg.options)
        if mss is not None:
            self.peer_mss = max(mss, self.MIN_PEER_MSS)
        self.state = "established"
        self._retx_at = now + self.RTO
        return self._send_request()

    def _established(self, seg: _Segment, now: float) -> list[bytes]:
        flags = seg.flags
        if flags & RST:
            if 0 <= _diff(seg.seq, self.rcv_nxt) < self.WINDOW:
                self._finish(False, "reset")
            return []
        if flags & SYN:
            if flags & ACK and seg.seq == self.irs and seg.ack == (self.isn + 1) & _M32:
                return self._send_request()  # a repeated SYN-ACK: our ACK (and request) was lost
            return []
        if not flags & ACK or not 0 <= _diff(seg.ack, (self.isn + 1) & _M32) or _diff(seg.ack, self.snd_nxt) > 0:
            return []  # an acknowledgment of something we never sent: not of this connection
        if _diff(seg.ack, self.snd_una) > 0:
            self.snd_una = seg.ack
            if self.snd_una == self.snd_nxt:
                self._retx_at = float("inf")
        if not seg.length:
            return []  # a pure ACK
        offset = _diff(self.rcv_nxt, seg.seq)  # how much of the segment we already have
        if offset < 0:
            return [self._ack()]  # it starts past a gap: not kept; a duplicate ACK asks for the gap
        payload = seg.payload
        if offset < len(payload):
            new = payload[offset:]
            self._head += new[:self.MAX_HEAD - len(self._head)]
            self.rcv_nxt = (self.rcv_nxt + len(new)) & _M32
        fin = False
        if flags & FIN and offset <= len(payload):
            self.rcv_nxt = (self.rcv_nxt + 1) & _M32
            fin = True
        return self._decide(fin) or [self._ack()]

    def _decide(self, fin: bool) -> list[bytes]:
        """A decision from the answer so far: [the RST] when decided, [] when still undecided."""
        head = bytes(self._head)
        end = head.find(b"\n")
        if end >= 0:
            self.status = http_status(head[:end + 1])
        elif fin:
            self.status = http_status(head)
            if self.status is None:
                self._finish(False, "closed")
                return [self._reset()]
        elif len(head) >= self.MAX_HEAD:
            self.status = None
        else:
            return []
        if self.status is None:
            self._finish(False, "no status line")
        else:
            self._finish(matches(self.ranges, self.status), f"http {self.status}")
        return [self._reset()]

    def _closed_reply(self, seg: _Segment) -> list[bytes]:
        """RFC 793's answer of a closed port: never to a RST."""
        if seg.flags & RST:
            return []
        if seg.flags & ACK:
            return [self._packet(RST, seg.ack, 0)]
        return [self._packet(RST | ACK, 0, (seg.seq + seg.length) & _M32)]

    # --- packets out -----------------------------------------------------------------------------
    def _syn(self) -> bytes:
        return self._packet(SYN, self.isn, 0, options=struct.pack("!BBH", 2, 4, self.MSS))

    def _ack(self) -> bytes:
        return self._packet(ACK, self.snd_nxt, self.rcv_nxt)

    def _reset(self) -> bytes:
        """The RST that releases the target's socket: at the sequence number it expects next."""
        return self._packet(RST | ACK, self.snd_nxt, self.rcv_nxt)

    def _send_request(self) -> list[bytes]:
        """The request from its first byte, in segments of the target's MSS, the last one with PSH."""
        req = self.request
        size = min(self.peer_mss, self.MSS)
        first = (self.isn + 1) & _M32
        out = []
        for i in range(0, len(req), size):
            flags = ACK | PSH if i + size >= len(req) else ACK
            out.append(self._packet(flags, (first + i) & _M32, self.rcv_nxt, req[i:i + size]))
        self.snd_nxt = (first + len(req)) & _M32
        return out

    def _packet(self, flags: int, seq: int, ack: int, payload: bytes = b"", options: bytes = b"") -> bytes:
        segment = TCP(self.sport, self.dport, seq, ack if flags & ACK else 0, flags, self.WINDOW, payload, options)
        self._ident = (self._ident + 1) & 0xFFFF
        return IPv4(self._src_addr, self._dst_addr, PROTO_TCP, segment.emit(self._src4, self._dst4), self.TTL,
                    self._ident).emit()

    # --- packets in ------------------------------------------------------------------------------
    def _parse(self, pkt, partial: bool) -> _Segment | None:
        """The TCP segment of a packet of this probe's connection, or None."""
        try:
            buf = bytes(memoryview(pkt).cast("B"))
        except (TypeError, ValueError):
            return None
        if len(buf) < 40 or buf[0] >> 4 != 4:
            return None
        ihl = (buf[0] & 0xF) * 4
        total = _H.unpack_from(buf, 2)[0]
        if ihl < 20 or total < ihl + 20 or total > len(buf):
            return None
        if _H.unpack_from(buf, 6)[0] & 0x3FFF or buf[9] != PROTO_TCP:
            return None  # a fragment (MF or an offset), or not TCP
        src, dst = struct.unpack_from("!II", buf, 12)
        if src != self.dst or dst != self.src or checksum(buf[:ihl]) != 0:
            return None
        tcp = buf[ihl:total]
        sport, dport, seq, ack, off_flags, window, _sum, _urg = _TCP.unpack_from(tcp)
        doff = (off_flags >> 12) * 4
        if sport != self.dport or dport != self.sport or doff < 20 or doff > len(tcp):
            return None
        if not partial and checksum(tcp, pseudo_header_sum(self._dst4, self._src4, PROTO_TCP, len(tcp))) != 0:
            return None
        return _Segment(seq, ack, off_flags & 0x3F, window, tcp[20:doff], tcp[doff:])

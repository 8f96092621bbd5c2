"""Network load balancer decisions: which target a flow goes to, and whether targets are healthy.

Three parts, each a plain object driven by the shell with ``now`` (seconds):

  pick(flow_hash, targets)                  the target for a new flow: rendezvous over target ids
  Listener.forward(src, sport, dst, now)    per packet to a listener: the flow's target, or an ``NlbDrop``
  HealthCheck / TargetGroup                 per-target health state machines and their schedule

Picking (the reference: "target per flow by a hash of protocol, source IP/port, destination IP/port and,
for TCP, the SYN's sequence number"). ``Listener`` hashes ``hyperplane_shard.flow_hash(proto, client,
nlb_address, client_port, listener_port, extra=SYN seq for TCP, 0 for UDP)`` and ``pick`` takes the
target whose id scores highest for that hash (rendezvous, ``hyperplane_shard.score``). The same flow
picks the same target while the set is unchanged; a target added takes about 1/n of new flows from the
others evenly; a target removed sends only its own flows elsewhere. Scores use the target's *id* (the
shell's name for instance-or-address + port), so a target keeps its flows' hashes across address changes.

Flows (``Listener``): the first packet picks, and the flow table keeps the choice for the flow's life —
later packets go to the same target whatever happens to the others. A flow is (client address, client
port, load balancer address) on the listener's (protocol, port).
- Idle timeout: TCP 350 s, UDP 120 s (the reference's), measured from the last packet either way
  (the shell calls ``forward`` for client packets and ``reply`` for the target's, which come back
  through the node that holds the flow). A flow idle for exactly its timeout has expired.
- TCP: only a SYN starts a flow (when the shell gives ``tcp_flags``; None lets any packet start one).
  A later TCP packet without a flow — late data after the idle timeout (IDLE_TIMEOUT), or never seen
  (NOT_A_FLOW_START) — is answered with a RST (``NlbDrop.rst``), as the reference does; a RST without
  a flow is dropped silently (STRAY_RST). UDP: a datagram without a flow starts a new one.
- A target that turns unhealthy gets no new flows, and its existing flows are reset: the shell calls
  ``reset_unhealthy(now)`` after a health change and sends RSTs (TCP) for the flows it returns; a packet of
  such a flow that arrives before that is refused with TARGET_UNHEALTHY (``rst``) — UDP instead picks a
  new target (its next packet is a new flow).
- Fail open: with no healthy target, new flows go to every target (initial and unhealthy alike) and
  flows on unhealthy targets are not reset — the reference's NLB sends to all. Targets still in
  ``initial`` get new flows only then; flows they got while failing open stay when others turn
  healthy (only *unhealthy* targets' flows are reset).
- Deregistration (``TargetGroup.set_targets`` without a target): no new flows; its existing flows run on
  until they idle out (the cloud's deregistration delay and connection termination are not modelled;
  ``reset_target`` cuts them on demand).
- ``max_flows`` bounds a listener's table (TABLE_FULL). Memory is one dict slot, an 80-bit key and a
  small record per flow (≈160 bytes measured with tracemalloc); ``reset_unhealthy`` and ``reset_target`` walk the whole table
  (rare events: a few hundred ms for 1M flows).
Replication, as in ``natgw``: ``export`` gives ``NlbFlow(src, sport, dst, target_id, remaining)``, and
``import_`` installs it on the secondary (the Hyperplane node pair owning a flow is
``hyperplane_shard.owners`` over ``flow_hash(proto, client, 0, client_port, 0)``, which both directions
carry).

Health checks (``HealthCheck``, one per target; the API's ``HealthCheck`` model in
``controlplane/resources.py`` has the same fields and defaults). The reference's values: TCP or HTTP;
interval 30 s (5–300; the API also allows down to 0.1 s for labs); timeout 10 s for TCP, 6 s for HTTP;
healthy threshold 5, unhealthy threshold 2 (2–10 each); HTTP matcher 200–399 (codes 200–599, as the
cloud's NLB accepts; ``parse_matcher`` reads "200-399,404").
- States: ``initial`` (registered, never decided) → ``healthy`` after ``healthy_threshold`` consecutive
  successes, ``unhealthy`` after ``unhealthy_threshold`` consecutive failures; from then on between the
  two by the same rule. A success resets the failure streak and the reverse, so a flapping target
  (alternating results) keeps its state. ``record`` returns the new state when it changes.
- Schedule: ``due(now)`` says a probe should start; ``start(now)`` returns the probe's deadline (``now +
  timeout``) and sets the next one ``interval`` after this start. One probe at a time: while one is in
  flight nothing is due, so the shell must ``record`` every probe it starts — a failure once the
  deadline passes without an answer (the connect or read timeout). ``next_due`` arms the shell's timer.
- A TCP probe succeeds when the connection is accepted; an HTTP probe when the status of its answer to
  ``http_request(path, host)`` (``http_status``) is in the matcher.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Iterable, Mapping, NamedTuple, Sequence

from .headers import PROTO_TCP, PROTO_UDP
from .hyperplane_shard import flow_hash, score
from .sweep import Sweep

_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_NINF = float("-inf")
IDLE_TIMEOUTS = {"tcp": 350.0, "udp": 120.0}
DEFAULT_TIMEOUTS = {"tcp": 10.0, "http": 6.0}


# --- targets and picking ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    id: str  # the shell's stable name: "i-0123…:80", "10.0.1.5:80"
    address: int
    port: int


def pick(flow_hash_value: int, targets: Iterable[Target]) -> Target | None:
    """The target for a flow: the highest rendezvous score of ``flow_hash_value`` and a target's id
    (ties, which need equal 64-bit scores, by id). None when there is no target."""
    chosen, top = None, (-1, "")
    for t in targets:
        s = (score(flow_hash_value, t.id), t.id)
        if s > top:
            chosen, top = t, s
    return chosen


# --- health checks ---------------------------------------------------------------------------------

class TargetState(enum.StrEnum):
    INITIAL = "initial"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


_MATCHER = re.compile(r"^[0-9]{3}(-[0-9]{3})?(,[0-9]{3}(-[0-9]{3})?)*$")


def parse_matcher(text: str) -> tuple[tuple[int, int], ...]:
    """"200-399,404" → ((200, 399), (404, 404)). Codes 200–599; a range's low end at most its high."""
    text = text.replace(" ", "")
    if not _MATCHER.match(text):
        raise ValueError(f"an HTTP matcher is codes and ranges separated by commas (200-399,404), got {text!r}")
    ranges = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        lo, hi = int(lo), int(hi or lo)
        if not 200 <= lo <= hi <= 599:
            raise ValueError(f"HTTP matcher {part!r}: codes are 200-599, low end first")
        ranges.append((lo, hi))
    return tuple(ranges)


def matches(ranges: Sequence[tuple[int, int]], status: int | None) -> bool:
    return status is not None and any(lo <= status <= hi for lo, hi in ranges)


def http_request(path: str, host: str) -> bytes:
    """The request an HTTP health check sends (the cloud's user agent, one request per connection)."""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ELB-HealthChecker/2.0\r\n"
            f"Connection: close\r\n\r\n").encode()


_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: |\r|\n|$)")


def http_status(head: bytes) -> int | None:
    """The status code of an HTTP/1.x answer's first bytes, None if they are not a status line."""
    m = _STATUS.match(head)
    return int(m.group(1)) if m else None


class HealthCheck:
    """One target's health: its state machine and its probe schedule (module docstring)."""

    def __init__(self, interval: float = 30.0, timeout: float | None = None, healthy_threshold: int = 5,
                 unhealthy_threshold: int = 2, *, protocol: str = "tcp", matcher: str = "200-399",
                 path: str = "/", port: int | None = None):
        if protocol not in DEFAULT_TIMEOUTS:
            raise ValueError(f"health check protocol is tcp or http, got {protocol!r}")
        timeout = DEFAULT_TIMEOUTS[protocol] if timeout is None else timeout
        if not interval > 0 or not timeout > 0 or healthy_threshold < 1 or unhealthy_threshold < 1:
            raise ValueError("interval and timeout must be positive, thresholds at least 1")
        self.protocol = protocol
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.matcher = parse_matcher(matcher)
        self.path = path
        self.port = port  # None: the target's port
        self.state = TargetState.INITIAL
        self.successes = 0  # the current streak of successes
        self.failures = 0  # the current streak of failures
        self.next_due = _NINF  # the first probe is due at once
        self.in_flight = False

    @classmethod
    def from_spec(cls, spec: Mapping | None) -> "HealthCheck":
        """From the API's ``HealthCheck`` record (``model_dump()``); missing fields take the defaults."""
        spec = dict(spec or {})
        return cls(spec.get("interval", 30.0), spec.get("timeout"), spec.get("healthy_threshold", 5),
                   spec.get("unhealthy_threshold", 2), protocol=spec.get("protocol", "tcp"),
                   matcher=spec.get("matcher", "200-399"), path=spec.get("path", "/"), port=spec.get("port"))

    def due(self, now: float) -> bool:
        return not self.in_flight and now >= self.next_due

    def start(self, now: float) -> float:
        """A probe starts: returns its deadline; the next is due ``interval`` after ``now``."""
        self.in_flight = True
        self.next_due = now + self.interval
        return now + self.timeout

    def record(self, success: bool, now: float) -> TargetState | None:
        """A probe's result; the new state if it changed. ``now`` is when the result came (unused by
        the state machine, kept for the shape of the interface and for logs)."""
        self.in_flight = False
        if success:
            self.failures = 0
            self.successes += 1
            if self.state is not TargetState.HEALTHY and self.successes >= self.healthy_threshold:
                self.state = TargetState.HEALTHY
                return self.state
        else:
            self.successes = 0
            self.failures += 1
            if self.state is not TargetState.UNHEALTHY and self.failures >= self.unhealthy_threshold:
                self.state = TargetState.UNHEALTHY
                return self.state
        return None

    def http_ok(self, status: int | None) -> bool:
        """Whether an HTTP probe's answer (``http_status``; None: none or not HTTP) is a success."""
        return matches(self.matcher, status)

    def reconfigure(self, other: "HealthCheck") -> None:
        """Take ``other``'s settings, keeping this target's state, streaks and schedule."""
        for name in ("protocol", "interval", "timeout", "healthy_threshold", "unhealthy_threshold",
                     "matcher", "path", "port"):
            setattr(self, name, getattr(other, name))


class HealthChange(NamedTuple):
    target_id: str
    old: TargetState
    new: TargetState


class _Member:
    __slots__ = ("target", "check")

    def __init__(self, target: Target, check: HealthCheck):
        self.target = target
        self.check = check


class TargetGroup:
    """The targets behind listeners, with one ``HealthCheck`` each built from the group's ``health_check``
    (the API's record). Listeners share a group; its health decides their new flows."""

    def __init__(self, targets: Iterable[Target] = (), health_check: Mapping | None = None):
        self._spec = dict(health_check or {})
        HealthCheck.from_spec(self._spec)  # refuse a bad spec now, not at the first target
        self.members: dict[str, _Member] = {}
        self.healthy_count = 0
        self._eligible: tuple[Target, ...] = ()
        self.set_targets(targets)

    def set_targets(self, targets: Iterable[Target]) -> None:
        """The registered targets from now on. A target id kept keeps its health (its address or port may
        change); a new one starts ``initial``, its first probe due at once; one left out is deregistered."""
        members: dict[str, _Member] = {}
        for t in targets:
            if t.id in members:
                raise ValueError(f"target {t.id!r} is registered twice")
            m = self.members.get(t.id)
            if m is None:
                m = _Member(t, HealthCheck.from_spec(self._spec))
            else:
                m.target = t
            members[t.id] = m
        self.members = members  # flows on a target left out keep its member: they run on (draining)
        self._refresh()

    def set_health_check(self, health_check: Mapping | None) -> None:
        """New health check settings for every target; states and schedules are kept."""
        model = HealthCheck.from_spec(health_check)
        self._spec = dict(health_check or {})
        for m in self.members.values():
            m.check.reconfigure(model)

    def _refresh(self) -> None:
        healthy = tuple(m.target for m in self.members.values() if m.check.state is TargetState.HEALTHY)
        self.healthy_count = len(healthy)
        # Fail open: with nothing healthy, everything registered is eligible.
        self._eligible = healthy or tuple(m.target for m in self.members.values())

    def eligible(self) -> tuple[Target, ...]:
        """The targets new flows may go to: the healthy ones, or all of them if none is (fail open)."""
        return self._eligible

    def pick(self, flow_hash_value: int) -> Target | None:
        return pick(flow_hash_value, self._eligible)

    def state(self, target_id: str) -> TargetState:
        return self.members[target_id].check.state

    def check(self, target_id: str) -> HealthCheck:
        return self.members[target_id].check

    def due(self, now: float) -> list[Target]:
        """The targets whose probe should start now (then ``check(id).start(now)``)."""
        return [m.target for m in self.members.values() if m.check.due(now)]

    def next_due(self) -> float:
        """When the next probe is due (inf with no target; a probe in flight is not counted)."""
        return min((m.check.next_due for m in self.members.values() if not m.check.in_flight),
                   default=float("inf"))

    def record(self, target_id: str, success: bool, now: float) -> HealthChange | None:
        """A probe's result for a registered target; the change, if its state changed. After a change
        the shell calls ``reset_unhealthy`` on the group's listeners."""
        check = self.members[target_id].check
        old = check.state
        new = check.record(success, now)
        if new is None:
            return None
        self._refresh()
        return HealthChange(target_id, old, new)


# --- listeners and their flows ---------------------------------------------------------------------

class NlbDrop(enum.IntEnum):
    """Why ``Listener.forward`` refused a packet."""

    NO_TARGETS = 0  # the target group has no registered target
    TABLE_FULL = 1  # the listener's ``max_flows`` flows live
    IDLE_TIMEOUT = 2  # TCP, not a SYN, of a flow that idled out: answer RST
    NOT_A_FLOW_START = 3  # TCP, not a SYN, with no flow: answer RST
    STRAY_RST = 4  # a TCP RST with no flow: drop silently
    TARGET_UNHEALTHY = 5  # TCP of a flow whose target turned unhealthy (flow removed): answer RST

    @property
    def rst(self) -> bool:
        """The shell answers the packet with a TCP RST to the client."""
        return self in (NlbDrop.IDLE_TIMEOUT, NlbDrop.NOT_A_FLOW_START, NlbDrop.TARGET_UNHEALTHY)

    @property
    def label(self) -> str:
        return self.name.lower()


class NlbFlow(NamedTuple):
    """One flow as ``export``, ``flows``, ``expire`` and the resets give it, and ``import_`` takes it."""

    src: int  # client address and port
    sport: int
    dst: int  # the load balancer's address (the listener's port is the listener's)
    target_id: str
    remaining: float  # seconds of idle time left


class _Flow:
    __slots__ = ("member", "expires")

    def __init__(self, member: _Member, expires: float):
        self.member = member
        self.expires = expires


class Listener:
    """A listener's flow table: (protocol, port) → a target group. Not thread-safe."""

    FULL_SWEEP = 16

    def __init__(self, protocol: str, port: int, group: TargetGroup, *, idle_timeout: float | None = None,
                 max_flows: int = 1_000_000):
        if protocol not in IDLE_TIMEOUTS:
            raise ValueError(f"a listener's protocol is tcp or udp, got {protocol!r}")
        self.protocol = protocol
        self.proto = PROTO_TCP if protocol == "tcp" else PROTO_UDP
        self.port = port
        self.group = group
        self.idle_timeout = IDLE_TIMEOUTS[protocol] if idle_timeout is None else idle_timeout
        self.max_flows = max_flows
        self._flows: dict[int, _Flow] = {}
        self._sweep = Sweep()
        self.created = False  # the last ``forward`` created its flow: the shell replicates it
        self.new_flows = 0
        self.idle_timeouts = 0
        self.resets = 0  # flows removed because their target turned unhealthy (or ``reset_target``)
        self.drops: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._flows)

    def stats(self) -> dict:
        return {"flows": len(self._flows), "new_flows": self.new_flows, "idle_timeouts": self.idle_timeouts,
                "resets": self.resets, "drops": dict(self.drops)}

    def _drop(self, reason: NlbDrop) -> NlbDrop:
        self.drops[reason.label] = self.drops.get(reason.label, 0) + 1
        return reason

    def forward(self, src: int, sport: int, dst: int, now: float, *, tcp_flags: int | None = None,
                seq: int = 0) -> Target | NlbDrop:
        """The target for a packet from client ``src:sport`` to the load balancer's ``dst`` on this
        listener's port. ``tcp_flags`` and ``seq`` (the SYN's sequence number) for TCP."""
        self.created = False
        tcp = self.proto == PROTO_TCP
        key = src << 48 | dst << 16 | sport
        flows = self._flows
        f = flows.get(key)
        timed_out = False
        if f is not None:
            if now < f.expires:
                m = f.member
                if m.check.state is not TargetState.UNHEALTHY or not self.group.healthy_count:
                    f.expires = now + self.idle_timeout
                    return m.target
                del flows[key]  # its target turned unhealthy while others are healthy: reset
                self.resets += 1
                if tcp:
                    return self._drop(NlbDrop.TARGET_UNHEALTHY)
            else:
                del flows[key]
                self.idle_timeouts += 1
                timed_out = True
        if tcp and tcp_flags is not None and tcp_flags & (_FIN | _SYN | _RST | _ACK) != _SYN:
            if tcp_flags & _RST:
                return self._drop(NlbDrop.STRAY_RST)
            return self._drop(NlbDrop.IDLE_TIMEOUT if timed_out else NlbDrop.NOT_A_FLOW_START)
        if len(flows) >= self.max_flows:
            self.expire(now, self.FULL_SWEEP)
            if len(flows) >= self.max_flows:
                return self._drop(NlbDrop.TABLE_FULL)
        target = self.group.pick(flow_hash(self.proto, src, dst, sport, self.port, seq if tcp else 0))
        if target is None:
            return self._drop(NlbDrop.NO_TARGETS)
        flows[key] = _Flow(self.group.members[target.id], now + self.idle_timeout)
        self.new_flows += 1
        self.created = True
        return target

    def reply(self, client: int, client_port: int, dst: int, target_id: str, now: float) -> bool:
        """A target's reply to a client (client address preserved, so it comes back through the node):
        whether the client's flow on this listener goes to that target. Keeps the flow alive."""
        f = self._flows.get(client << 48 | dst << 16 | client_port)
        if f is None or now >= f.expires or f.member.target.id != target_id:
            return False
        f.expires = now + self.idle_timeout
        return True

    # --- resets and expiry ---------------------------------------------------------------------
    def _remove_if(self, doomed, now: float) -> list[NlbFlow]:
        removed = []
        for key, f in list(self._flows.items()):
            if doomed(f.member):
                del self._flows[key]
                removed.append(self._record(key, f, now))
        self.resets += len(removed)
        return removed

    def reset_unhealthy(self, now: float) -> list[NlbFlow]:
        """Remove and return the flows on unhealthy targets, unless the group is failing open (nothing
        healthy): the shell resets them (TCP RST to both ends). Call after a ``HealthChange``."""
        if not self.group.healthy_count:
            return []
        return self._remove_if(lambda m: m.check.state is TargetState.UNHEALTHY, now)

    def reset_target(self, target_id: str, now: float) -> list[NlbFlow]:
        """Remove and return every flow on one target (e.g. after its deregistration)."""
        return self._remove_if(lambda m: m.target.id == target_id, now)

    def expire(self, now: float, budget: int = 1000) -> list[NlbFlow]:
        """Remove idle flows, examining at most ``budget`` entries per call (``ConnTrack.expire``'s
        incremental pass); returns them."""
        flows = self._flows
        removed = [self._record(key, flows.pop(key), now) for key in self._sweep.expired(flows, now, budget)]
        self.idle_timeouts += len(removed)
        return removed

    # --- replication and status ----------------------------------------------------------------
    @staticmethod
    def _record(key: int, f: _Flow, now: float) -> NlbFlow:
        return NlbFlow(key >> 48, key & 0xFFFF, (key >> 16) & 0xFFFFFFFF, f.member.target.id, f.expires - now)

    def export(self, src: int, sport: int, dst: int, now: float) -> NlbFlow | None:
        key = src << 48 | dst << 16 | sport
        f = self._flows.get(key)
        if f is None or now >= f.expires:
            return None
        return self._record(key, f, now)

    def import_(self, record: NlbFlow | Sequence, now: float) -> bool:
        """Install a flow exported by another node; False if it expired or its target is not registered
        in this node's group."""
        src, sport, dst, target_id, remaining = record
        m = self.group.members.get(target_id)
        if remaining <= 0 or m is None:
            return False
        self._flows[src << 48 | dst << 16 | sport] = _Flow(m, now + remaining)
        return True

    def flows(self, now: float) -> list[NlbFlow]:
        """Every flow (expired ones not yet swept included), for status output and full resyncs."""
        return [self._record(key, f, now) for key, f in self._flows.items()]

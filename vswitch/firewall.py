"""An ENI's firewall: its security groups (stateful, via its ``ConnTrack``) and its subnet's network ACL.

The egress path calls ``admit`` for a packet leaving an ENI (``outbound``), the ingress path — and a
delivery between two ENIs of one host — for a packet arriving at one. Per direction, in the cloud's
order (the reference's "security groups" and "network ACLs")::

    leaving an ENI:   conntrack ─ known flow ──────────────────────────┐
                          └ new ─ security group (egress rules) ─ deny │
                                        └ allow ──────────────────────┤
                                                   network ACL (outbound), if the peer is outside
                                                   the subnet ─ deny      the subnet
                                                        └ allow ─ track the flow (unless untracked) ─ pass
    arriving:         network ACL (inbound), if the peer is outside the subnet ─ deny
                          └ allow ─ conntrack ─ known flow ─ pass
                                        └ new ─ security group (ingress rules) ─ deny
                                                      └ allow ─ track (unless untracked) ─ pass

Cost per packet. Security-group rules are read only for a flow's first packet; later packets of a
tracked flow pass on its conntrack entry (``ConnTrack.lookup_wire``: no parsing into objects). A
network ACL is stateless, but its answer for a flow direction cannot change unless the ACL does, so
the flow keeps (in its ``mark_out``/``mark_in``) the compiled ACL that last allowed that direction:
while the subnet's ACL is that same object the packet passes without evaluating; a changed ACL is a
new object and is evaluated again, on the flow's next packet. A flow that never leaves the subnet is
marked ``INSIDE`` at once. Untracked flows (allow-all both ways, ``SecurityGroupPolicy.is_untracked``)
have no entry: each packet asks ``is_untracked`` (one bytes index), so removing the rule cuts them on
their next packet, while tracked flows survive rule changes until they time out.

Dual stack: IPv4 and IPv6 packets take the same steps (one conntrack table, one compiled policy, whose
rules match addresses of their own family only: 0.0.0.0/0 never admits IPv6, ::/0 never IPv4). Whether
a packet crosses the subnet boundary is read against the ENI's subnet of the packet's family
(``subnet_net``/``subnet_mask``, ``subnet6_net``/``subnet6_mask``).

Flow logs see every decision here (``FlowLogAggregator.add``): ACCEPT when the packet passes,
REJECT when a security group or network ACL denies it. An ENI with flow logs takes the parsed path
for every packet (the logs need its ports and flags).

``admit`` with a ``trace`` list is a dry run: it records each decision (the rule named as flow logs
name it) and changes nothing — no conntrack entry, no counter, no flow-log record.
"""

from __future__ import annotations

from .addresses import V6_TAG
from .conntrack import PacketInfo, Verdict, packet_info
from .drops import Drop
from .headers import PROTO_TCP

_ESTABLISHED, _NEW, _INVALID = Verdict
INSIDE = "inside the subnet"  # the mark of a flow direction that never crosses the subnet boundary


class Firewall:
    """Admits packets at ENIs. Holds no state: what it consults lives on each ``Eni`` (its ``sg``,
    ``acl``, ``ct`` and ``flow_logs``), so one serves a whole host (the paths share it)."""

    def admit(self, eni, buf, off: int, n: int, outbound: bool, now: float, segments: int = 1,
              trace: list | None = None) -> Drop | None:
        """None if the packet at ``buf[off:off + n]`` may pass ``eni`` in that direction, else why not.
        The caller counts the drop. ``segments``: the packets a super-packet carries (flow logs)."""
        if eni.sg is None:  # an ENI configured without policy (static host configs): open
            return None
        known = None
        if trace is None and not eni.flow_logs:
            # The bulk of traffic: a known flow, straight from the wire.
            verdict = eni.ct.lookup_wire(buf, off, n, outbound, now)
            if verdict is _ESTABLISHED:
                known = eni.ct.flow
                mark = known.mark_out if outbound else known.mark_in
                if mark is INSIDE or mark is eni.acl:
                    return None
                # The ACL changed since this direction last passed it (or never has): ask it below.
            elif verdict is _INVALID:
                return Drop.CONNTRACK_INVALID
        pkt = packet_info(buf, off, n)
        if pkt is None:
            return Drop.MALFORMED_PACKET
        return self.decide(eni, pkt, outbound, now, segments, n, trace, known)

    def decide(self, eni, pkt: PacketInfo, outbound: bool, now: float, segments: int, n: int,
               trace: list | None = None, known=None) -> Drop | None:
        """The parsed path: every packet that the fast path did not pass. ``known``: the flow the fast
        path already found (and updated) for this packet."""
        ct, acl, sg = eni.ct, eni.acl, eni.sg
        remote = pkt.dst if outbound else pkt.src
        if remote & V6_TAG:  # the ENI's IPv6 subnet; none (mask 0, net -1): everything crosses
            crosses = remote & eni.subnet6_mask != eni.subnet6_net
        else:
            crosses = remote & eni.subnet_mask != eni.subnet_net
        direction = "egress" if outbound else "ingress"

        # Inbound, the network ACL comes first: the packet crosses the boundary before it reaches the ENI.
        if not outbound and crosses and not self._acl_allows(eni, acl, pkt, False, known, trace):
            return self._reject(eni, pkt, outbound, segments, n, now, Drop.NACL_DENY, trace)

        flow = known
        if known is not None:
            verdict = _ESTABLISHED
        elif trace is not None:
            entry = ct.peek(pkt, outbound, now)
            verdict = _ESTABLISHED if entry is not None else _NEW
            trace.append({"step": "connection tracking", "result": "tracked flow" if entry else "new flow",
                          "detail": (f"{entry.state.name.lower()}: it passes whatever the rules say"
                                     if entry else "the security group rules decide")})
        else:
            verdict = ct.lookup(pkt, outbound, now)
            if verdict is _INVALID:
                return Drop.CONNTRACK_INVALID
            if verdict is _ESTABLISHED:
                flow = ct.flow

        untracked = False
        if verdict is _NEW:
            untracked = sg.is_untracked(pkt.proto, remote)
            if untracked and trace is None:
                pass  # allowed both ways to the whole address family: no rule to look up per packet
            else:
                # Local and remote ports; ICMP's type and code (the evaluator picks what the protocol uses).
                match = sg.evaluate(outbound, pkt.proto, remote, pkt.sport if outbound else pkt.dport,
                                    pkt.dport if outbound else pkt.sport, pkt.icmp_type, pkt.icmp_code)
                if trace is not None:
                    trace.append({"step": f"security group ({direction})",
                                  "result": "allow" if match else "deny",
                                  "rule": match.rule if match else f"no {direction} rule of "
                                                                  f"{', '.join(eni.sg_ids) or 'its groups'} matches",
                                  "detail": "untracked: allowed to and from everywhere" if untracked else None})
                if match is None:
                    return self._reject(eni, pkt, outbound, segments, n, now, Drop.SG_DENY, trace)

        if outbound and crosses and not self._acl_allows(eni, acl, pkt, True, flow, trace):
            return self._reject(eni, pkt, outbound, segments, n, now, Drop.NACL_DENY, trace)

        if verdict is _NEW and not untracked and trace is None:
            hits = ct.limit_hits
            if not ct.create(pkt, outbound, now):
                return Drop.CONNTRACK_FULL if ct.limit_hits != hits else Drop.NOT_A_FLOW_START
            flow = ct.flow
            if not crosses:
                flow.mark_out = flow.mark_in = INSIDE
        if flow is not None and crosses:
            if outbound:
                flow.mark_out = acl
            else:
                flow.mark_in = acl
        if trace is None and eni.flow_logs:
            self._log(eni, pkt, outbound, True, segments, n, now)
        return None

    def _acl_allows(self, eni, acl, pkt: PacketInfo, egress: bool, flow, trace: list | None) -> bool:
        if acl is None:
            if trace is not None:
                trace.append({"step": f"network ACL ({'outbound' if egress else 'inbound'})", "result": "allow",
                              "rule": "no network ACL on the subnet"})
            return True
        if flow is not None and (flow.mark_out if egress else flow.mark_in) is acl:
            return True  # this direction of the flow passed this very ACL already
        match = acl.evaluate(egress, pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport,
                             pkt.icmp_type, pkt.icmp_code)
        if trace is not None:
            trace.append({"step": f"network ACL ({'outbound' if egress else 'inbound'})",
                          "result": "allow" if match.allowed else "deny", "rule": match.rule})
        return match.allowed

    def _reject(self, eni, pkt, outbound, segments, n, now, reason: Drop, trace) -> Drop:
        if trace is None and eni.flow_logs:
            self._log(eni, pkt, outbound, False, segments, n, now)
        return reason

    @staticmethod
    def _log(eni, pkt: PacketInfo, outbound: bool, accepted: bool, segments: int, n: int, now: float) -> None:
        # A super-packet is logged as the packets it carries, each with its own headers on the wire.
        nbytes = n + (segments - 1) * (n - pkt.payload_len) if segments > 1 else n
        flags = pkt.tcp_flags if pkt.proto == PROTO_TCP else 0
        for log in eni.flow_logs:
            log.add(outbound, accepted, pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport, segments, nbytes,
                    flags, now)

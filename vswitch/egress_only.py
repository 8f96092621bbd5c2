"""The egress-only internet gateway (IPv6): outbound-initiated flows only, on the Blackfoot edge.

IPv6 addresses in a VPC are public: nothing is translated. An internet gateway lets the internet reach
them (security groups decide); an egress-only gateway lets instances reach the internet and hear back,
and nothing else in. The edge therefore keeps state for VPCs whose only door to the IPv6 internet is an
egress-only gateway: the flows their instances started, in a ``ConnTrack`` per VPC (the same tracker
the ENIs use, oriented with "local" = the VPC's side)::

    instance ─► edge  outbound   tracked (a flow's first packet creates it; later ones refresh it)
    internet ─► edge  inbound    admitted only as a packet of a tracked flow (a reply, or an ICMPv6
                                 error about one of its packets), else dropped: ``Drop.EGRESS_ONLY``

Pure: packets and ``now`` in, decisions out. Outbound packets are never refused here: a packet that
cannot start a flow (a stray ACK after the state expired) is forwarded untracked, as the cloud's
gateway forwards everything out, and its answer is then refused on the way in.
"""

from __future__ import annotations

from .conntrack import ConnTrack, Verdict, packet_info

MAX_FLOWS = 262_144  # per VPC


class EgressOnlyGateway:
    def __init__(self, max_flows: int = MAX_FLOWS):
        self.max_flows = max_flows
        self.tables: dict[int, ConnTrack] = {}  # VNI -> its flows
        self.counters = {"out": 0, "in": 0, "refused": 0, "untracked_out": 0}

    def keep(self, vnis) -> None:
        """Keep the state of these VPCs (those with an egress-only gateway and no internet gateway)."""
        self.tables = {v: self.tables.get(v) or ConnTrack(max_flows=self.max_flows) for v in vnis}

    def outbound(self, vni: int, pkt, now: float) -> None:
        """An IPv6 packet of VPC ``vni`` leaving for the internet: track its flow."""
        ct = self.tables.get(vni)
        if ct is None:
            return
        self.counters["out"] += 1
        info = packet_info(pkt, 0, len(pkt))
        if info is None:
            self.counters["untracked_out"] += 1
            return
        if ct.lookup(info, True, now) is Verdict.NEW and not ct.create(info, True, now):
            self.counters["untracked_out"] += 1

    def inbound(self, vni: int, pkt, now: float) -> bool:
        """Whether an IPv6 packet from the internet to VPC ``vni`` may enter: always when the VPC has an
        internet gateway (no table here), else only as part of a flow the VPC started."""
        ct = self.tables.get(vni)
        if ct is None:
            return True
        info = packet_info(pkt, 0, len(pkt))
        if info is not None and ct.lookup(info, False, now) is Verdict.ESTABLISHED:
            self.counters["in"] += 1
            return True
        self.counters["refused"] += 1
        return False

    def expire(self, now: float, budget: int = 2000) -> None:
        for ct in self.tables.values():
            ct.expire(now, budget)

    def status(self) -> dict:
        return {**self.counters, "flows": {str(v): len(ct) for v, ct in self.tables.items()}}

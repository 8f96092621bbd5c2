"""The way in from the underlay: a Geneve datagram to an ENI on this host.

Stages, each an early return with a reason (see ``Drop``):

  1. decap      a well-formed Geneve header, no OAM, no critical option we do not understand
  2. VNI        a VPC with at least one ENI on this host
  3. inner      an IPv4 or IPv6 packet behind it, as the Geneve protocol type says
  4. source     the outer source must be the host that the mapping says owns the inner source, and the
                SOURCE_ENI option must name that owner's ENI. Packets relayed by the edge are trusted for
                the host check (the edge checked the original sender), not for the ENI check; so are
                packets from Hyperplane nodes (``relays``: NAT gateway replies from the internet).
                An unknown source is not dropped at once: the reply to a first packet that went through
                the edge often arrives before this host has learned the replier's mapping. Such packets
                are held (a few per source, for HOLD_TIME) while the cache asks the daemon, and checked
                again by ``release`` when the answer arrives.
  5. dest       an ENI on this host owns the inner destination
  6. firewall   entering its subnet, the network ACL; then the ENI's security groups (``firewall.py``)
  7. deliver    the shell writes the inner packet (with its virtio header) to that ENI's TUN

``process`` returns the destination ``Eni`` or None for a drop (``last_drop`` says why). On success,
``inner_off`` and ``vnet_off`` (-1 if absent) locate the packet and its virtio header in the buffer.
With a ``trace`` list it is a dry run (``vpc trace``): decisions are appended, nothing is counted,
held, tracked or logged.
"""

from __future__ import annotations

from . import geneve
from .offload import wire_segments
from .drops import Drop, new_counters
from .eni import RX_BYTES, RX_PACKETS, Eni, VpcView
from .firewall import Firewall
from .addresses import V6_TAG
from .headers import _V4_ADDRS, v6_addresses
from .mapping import MappingCache


def inner_addresses(buf, off: int, n: int, protocol: int):
    """(source key, destination key) of the inner packet (IPv6 keys carry ``V6_TAG``), or a Drop."""
    if protocol == geneve.PROTO_IPV4:
        if n - off < 20 or buf[off] >> 4 != 4:
            return Drop.MALFORMED_PACKET
        return _V4_ADDRS.unpack_from(buf, off + 12)
    if protocol == geneve.PROTO_IPV6:
        if n - off < 40 or buf[off] >> 4 != 6:
            return Drop.MALFORMED_PACKET
        src, dst = v6_addresses(buf, off)
        return src | V6_TAG, dst | V6_TAG
    return Drop.UNSUPPORTED_PROTOCOL


class IngressPath:
    HOLD_TIME = 1.0  # seconds a packet from an unknown source waits for its mapping
    MAX_HELD_PER_SOURCE = 8
    MAX_HELD_SOURCES = 256

    def __init__(self, cache: MappingCache, vpcs: dict[int, VpcView], edge_ip: str | None,
                 firewall: Firewall | None = None):
        self.cache = cache
        self.firewall = firewall or Firewall()
        self.vpcs = vpcs
        self.edge_ip = edge_ip
        self.relays: frozenset[str] = frozenset((edge_ip,)) if edge_ip else frozenset()  # + the fleet's nodes
        self.drops = new_counters()
        self.last_drop: Drop | None = None
        self.inner_off = 0
        self.vnet_off = -1
        self._hdr = [0, 0, 0, 0]
        self.from_edge = 0
        # (vni, source key) -> [(datagram copy, outer ip, when held)]
        self.held: dict[tuple[int, int], list[tuple[bytes, str, float]]] = {}
        self.held_total = 0  # packets ever held

    def _drop(self, reason: Drop, trace: list | None = None, eni: Eni | None = None) -> None:
        self.last_drop = reason
        if trace is not None:
            trace.append({"step": "drop", "result": "deny", "reason": reason.label})
            return None
        self.drops[reason] += 1
        if eni is not None:
            eni.drops[reason] += 1
        return None

    def process(self, buf, n: int, outer_ip: str, now: float, hold: bool = True,
                trace: list | None = None) -> Eni | None:
        # 1. decap
        hdr = self._hdr
        inner = geneve.decode_into(buf, n, hdr)
        if inner < 0:
            return self._drop(Drop(-1 - inner), trace)
        # 2. VNI
        vpc = self.vpcs.get(hdr[geneve.DECODE_VNI])
        if vpc is None:
            return self._drop(Drop.UNKNOWN_VNI, trace)
        # 3. inner packet
        addrs = inner_addresses(buf, inner, n, hdr[geneve.DECODE_PROTO])
        if addrs.__class__ is Drop:
            return self._drop(addrs, trace)
        src, dst = addrs
        # 4. source: the sender must own the inner source
        owner = vpc.mappings.get(src)
        relayed = outer_ip in self.relays
        if relayed:
            if owner is not None and owner.eni != hdr[geneve.DECODE_ENI]:
                return self._drop(Drop.SOURCE_ENI_MISMATCH, trace)
        elif owner is None:
            if not hold or trace is not None:  # a held packet checked again, or a dry run
                return self._drop(Drop.UNKNOWN_SOURCE, trace)
            self.cache.note_miss(vpc.vni, src, now)
            if self._hold(vpc.vni, src, buf, n, outer_ip, now):
                return None
            return self._drop(Drop.UNKNOWN_SOURCE)
        elif owner.host != outer_ip:
            return self._drop(Drop.OUTER_SOURCE_MISMATCH, trace)
        elif owner.eni != hdr[geneve.DECODE_ENI]:
            return self._drop(Drop.SOURCE_ENI_MISMATCH, trace)
        # 5. destination ENI on this host
        eni = vpc.local.get(dst)
        if eni is None:
            return self._drop(Drop.UNKNOWN_DESTINATION, trace)
        if trace is not None:
            trace.append({"step": "underlay", "result": "allow",
                          "detail": f"from host {outer_ip}{' (a relay)' if relayed else ''}, to {eni.id}"})
        vnet = hdr[geneve.DECODE_VNET]
        # A super-packet counts as the packets it carries (gso_type is the virtio header's 2nd byte).
        segments = wire_segments(buf, vnet, inner, n) if vnet >= 0 and buf[vnet + 1] else 1
        # 6. the destination's network ACL and security groups
        refused = self.firewall.admit(eni, buf, inner, n - inner, False, now, segments, trace)
        if refused is not None:
            return self._drop(refused, trace, eni)
        if trace is not None:
            return eni
        if relayed:
            self.from_edge += 1
        self.inner_off = inner
        self.vnet_off = vnet
        stats = eni.stats
        stats[RX_PACKETS] += segments
        stats[RX_BYTES] += n - inner
        return eni

    # --- packets waiting for their source's mapping -------------------------------------------------
    def _hold(self, vni: int, src: int, buf, n: int, outer_ip: str, now: float) -> bool:
        queue = self.held.get((vni, src))
        if queue is None:
            if len(self.held) >= self.MAX_HELD_SOURCES:
                return False
            queue = self.held[(vni, src)] = []
        elif len(queue) >= self.MAX_HELD_PER_SOURCE:
            return False
        queue.append((bytes(buf[:n]), outer_ip, now))
        self.held_total += 1
        self.last_drop = None
        return True

    def release(self, now: float) -> list[tuple[Eni, bytes, int, int]]:
        """Check held packets again: those whose source the cache now knows, or that the daemon
        answered (or that waited too long). Returns what to deliver: (ENI, datagram, inner offset,
        virtio header offset); the rest is dropped and counted as UNKNOWN_SOURCE or the like."""
        out = []
        for (vni, src), queue in list(self.held.items()):
            known = self.cache.lookup(vni, src) is not None
            answered = (vni, src) not in self.cache.pending
            if not (known or answered or now - queue[0][2] >= self.HOLD_TIME):
                continue
            del self.held[(vni, src)]
            for datagram, outer_ip, _ in queue:
                eni = self.process(datagram, len(datagram), outer_ip, now, hold=False)
                if eni is not None:
                    out.append((eni, datagram, self.inner_off, self.vnet_off))
        return out

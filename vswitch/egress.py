"""The way out of an ENI: a packet read from an instance's TUN, to the underlay (or a local ENI).

Stages, each an early return with a reason (see ``Drop``):

  1. parse      IPv4 or IPv6 header present and long enough
  2. src/dst    source/destination check: the source must be the ENI's own address
  3. route      the destination must be inside the VPC (route tables arrive later): no broadcast,
                no multicast, not a reserved subnet address
  4. local      an ENI of the same VPC on this host → deliver without encapsulation
  5. mapping    one dict lookup in the host's mapping cache; a miss goes to the edge, which knows
                every mapping, while the cache asks the mapping daemon (first packet never lost)
  6. encap      the shell writes the Geneve header kept in front of the read buffer and sends

``process`` returns the decision: an underlay address ``(ip, port)``, a local ``Eni``, or None for a drop
(``last_drop`` says why; the counters are already incremented). It never raises on packet contents.
"""

from __future__ import annotations

from .drops import Drop, new_counters
from .eni import TX_BYTES, TX_PACKETS, Eni
from .headers import _V4_ADDRS
from .mapping import MappingCache

_BCAST = 0xFFFFFFFF
_MCAST_MASK, _MCAST_NET = 0xF0000000, 0xE0000000  # 224.0.0.0/4


class EgressPath:
    def __init__(self, cache: MappingCache, edge: tuple[str, int] | None):
        self.cache = cache
        self.edge = edge
        self.drops = new_counters()
        self.last_drop: Drop | None = None
        self.to_edge = 0  # packets relayed through the edge because of a mapping miss

    def _drop(self, eni: Eni, reason: Drop) -> None:
        self.drops[reason] += 1
        eni.drops[reason] += 1
        self.last_drop = reason
        return None

    def process(self, eni: Eni, buf, off: int, n: int, now: float, segments: int = 1):
        # 1. parse
        if n < 20:
            return self._drop(eni, Drop.MALFORMED_PACKET)
        version = buf[off] >> 4
        if version == 4:
            src, dst = _V4_ADDRS.unpack_from(buf, off + 12)
        elif version == 6:
            if n < 40:
                return self._drop(eni, Drop.MALFORMED_PACKET)
            # No IPv6 addresses on ENIs yet (dual stack is a later issue): nothing can pass.
            return self._drop(eni, Drop.IPV6_NOT_ENABLED)
        else:
            return self._drop(eni, Drop.MALFORMED_PACKET)

        # 2. source/destination check
        if src != eni.ipv4_key and eni.source_dest_check:
            return self._drop(eni, Drop.SOURCE_CHECK)

        # 3. route within the VPC
        vpc = eni.vpc
        if dst & vpc.mask != vpc.net:
            if dst == _BCAST or dst & _MCAST_MASK == _MCAST_NET:
                return self._drop(eni, Drop.BROADCAST_MULTICAST)
            return self._drop(eni, Drop.NO_ROUTE)
        if dst in vpc.reserved:
            return self._drop(eni, Drop.RESERVED_ADDRESS)

        # 4. a local ENI, 5. the mapping, or the edge on a miss
        target = vpc.local.get(dst)
        if target is None:
            m = vpc.mappings.get(dst)
            if m is not None:
                target = m.underlay
            else:
                self.cache.note_miss(vpc.vni, dst, now)
                if self.edge is None:
                    return self._drop(eni, Drop.NO_MAPPING_NO_EDGE)
                self.to_edge += 1
                target = self.edge
        stats = eni.stats
        stats[TX_PACKETS] += segments
        stats[TX_BYTES] += n
        return target

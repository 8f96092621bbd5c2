"""The Blackfoot edge as a pure core: the relay for packets a host could not map.

The edge subscribes to every VPC's mappings. A host with a mapping miss sends the encapsulated packet
here unchanged; the edge checks that the sending host owns the inner source (so the edge cannot be
used to launder spoofed packets — receivers trust its outer address), then forwards the very same
datagram to the host that owns the inner destination. The sender learns the mapping from the daemon
meanwhile, so later packets go direct.

A NAT gateway's packets to the internet come from a Hyperplane node (a ``relays`` address) with the
gateway's private address as source, which no host owns: they are let through to the internet gateway.

``process`` returns the underlay address to forward to, ``INTERNET`` for a packet of a VPC with an
internet gateway to an address outside it (the caller hands it to ``igw.InternetGateway``; ``vni``,
``inner_off`` and ``vnet_off`` locate it), or None (``last_drop`` says why).
"""

from __future__ import annotations

from . import geneve
from .drops import Drop, new_counters
from .ingress import inner_addresses
from .mapping import MappingCache


INTERNET = "internet"


class EdgeRelay:
    def __init__(self, cache: MappingCache, igw=None):
        self.cache = cache
        self.igw = igw
        self.relays: frozenset[str] = frozenset()  # Hyperplane nodes' underlay addresses
        self.vni = 0
        self.inner_off = 0
        self.vnet_off = -1
        self.drops = new_counters()
        self.last_drop: Drop | None = None
        self.relayed = 0
        self._hdr = [0, 0, 0, 0]

    def _drop(self, reason: Drop, trace: list | None = None) -> None:
        self.last_drop = reason
        if trace is not None:
            trace.append({"step": "drop", "result": "deny", "reason": reason.label})
            return None
        self.drops[reason] += 1
        return None

    def process(self, buf, n: int, outer_ip: str, trace: list | None = None):
        """With a ``trace`` list: a dry run for ``vpc trace`` (decisions appended, nothing counted)."""
        hdr = self._hdr
        inner = geneve.decode_into(buf, n, hdr)
        if inner < 0:
            return self._drop(Drop(-1 - inner), trace)
        table = self.cache.tables.get(hdr[geneve.DECODE_VNI])
        if table is None:
            return self._drop(Drop.UNKNOWN_VNI, trace)
        addrs = inner_addresses(buf, inner, n, hdr[geneve.DECODE_PROTO])
        if addrs.__class__ is Drop:
            return self._drop(addrs, trace)
        src, dst = addrs
        owner = table.get(src)
        if owner is None:
            vni = hdr[geneve.DECODE_VNI]
            if outer_ip in self.relays and self.igw is not None and self.igw.nat_source(vni, src):
                if self.igw.serves(vni, dst):
                    self.vni, self.inner_off, self.vnet_off = vni, inner, hdr[geneve.DECODE_VNET]
                    return INTERNET
                return self._drop(Drop.NO_ROUTE, trace)
            return self._drop(Drop.UNKNOWN_SOURCE, trace)
        if owner.host != outer_ip:
            return self._drop(Drop.OUTER_SOURCE_MISMATCH, trace)
        if owner.eni != hdr[geneve.DECODE_ENI]:
            return self._drop(Drop.SOURCE_ENI_MISMATCH, trace)
        target = table.get(dst)
        if target is None:
            vni = hdr[geneve.DECODE_VNI]
            if self.igw is not None and self.igw.serves(vni, dst):
                self.vni, self.inner_off, self.vnet_off = vni, inner, hdr[geneve.DECODE_VNET]
                return INTERNET
            return self._drop(Drop.EDGE_NO_MAPPING, trace)
        if trace is not None:
            trace.append({"step": "edge relay", "result": "allow", "detail": f"to host {target.host}"})
        else:
            self.relayed += 1
        return target.underlay

"""Blackfoot edge agent: relays what hosts could not map, and is the VPCs' internet gateway.
``vpc-edge --config edge.toml``.

Knows every mapping (subscribes to all VPCs) and forwards each relayed Geneve datagram unchanged to the
host that owns the inner destination; see ``vswitch.edge`` for the checks. With ``internet_device`` it
also owns a TUN on the internet side: packets routed to the internet are finished (offloaded
super-packets cut into segments), translated to their public source (``vswitch.igw``) and written to
it; packets for public addresses read from it are translated back and encapsulated to their host.
"""

from __future__ import annotations

import asyncio
import os
import struct

from agents import daemon
from agents.host_agent import BATCH
from agents.trace import datagram_request
from vswitch import addresses, config, control, geneve, logs, offload, tun
from vswitch.controlplane.client import DesiredStateWatcher
from vswitch.drops import Drop, counters_as_dict, new_counters
from vswitch.edge import INTERNET, EdgeRelay
from vswitch.hyperplane import HEARTBEAT_INTERVAL, Fleet
from vswitch.igw import INTERNET_MTU, InternetGateway
from vswitch.mapping import MappingCache
from vswitch.mapping_client import MappingClient
from vswitch.underlay import UnderlaySocket

ZERO_VNET = bytes(geneve.VNET_HDR_LEN)
_I = struct.Struct("!I")


class EdgeAgent:
    def __init__(self, cfg: config.EdgeConfig):
        self.cfg = cfg
        self.log = logs.get("edge").bind(name=cfg.name)
        self.cache = MappingCache(port=cfg.underlay_port)
        self.igw = InternetGateway()
        self.relay = EdgeRelay(self.cache, self.igw if cfg.internet_device else None)
        self.fleet = Fleet({n.name: n.underlay_ip for n in cfg.hyperplane}, cfg.hyperplane_shard_size,
                           cfg.underlay_port)
        self.relay.relays = frozenset(self.fleet.by_ip)
        self.mapping = MappingClient(config.split_endpoint(cfg.mapping), self.cache, None, tls=cfg.tls)
        self.internet = None
        self.internet_drops = new_counters()
        self.desired = None
        self.super_packets_in = 0
        self._prefixes: dict[int, bytes] = {}  # VNI -> the Geneve header the edge sends internet packets with
        self._prefixes6: dict[int, bytes] = {}  # the same for IPv6 packets
        self._ibuf = bytearray(65536)
        self._iview = memoryview(self._ibuf)

    async def start(self) -> None:
        self.underlay = UnderlaySocket(self.cfg.underlay_ip, self.cfg.underlay_port, self.relay.drops)
        asyncio.get_running_loop().add_reader(self.underlay.fileno, self._on_underlay)
        self.control = await control.serve(self.cfg.control_socket, self.handle_control)  # keep a reference
        self.mapping_task = asyncio.create_task(self.mapping.run())
        if self.fleet:
            self._check_fleet()
        if self.cfg.internet_device:
            self.internet = tun.open_tun(self.cfg.internet_device, offload=True)
            routed = [self.cfg.public_pool, *([self.cfg.ipv6_pool] if self.cfg.ipv6_pool else [])]
            await asyncio.to_thread(tun.configure_here, self.cfg.internet_device, INTERNET_MTU, routed)
            asyncio.get_running_loop().add_reader(self.internet.fd, self._on_internet)
            self._expire_egress_only()
        if self.cfg.control_plane:
            token = config.read_token(self.cfg.token_file) if self.cfg.token_file else ""
            self.desired = DesiredStateWatcher(self.cfg.control_plane, token, self._on_view, tls=self.cfg.tls)
            self.desired_task = asyncio.create_task(self.desired.run())
        try:
            await asyncio.wait_for(self.mapping.synced.wait(), 5)
            if self.desired is not None:
                await asyncio.wait_for(self.desired.synced.wait(), 5)
        except asyncio.TimeoutError:
            self.log.warning("mapping or desired state preload timed out")
        self.log.info("ready", mappings=self.cache.size(), internet=self.cfg.internet_device)

    async def _on_view(self, view: dict) -> None:
        self.igw.update(view)

    def _expire_egress_only(self) -> None:
        """Every second: forget the egress-only gateways' idle flows (a slice of each table)."""
        self.igw.egress_only.expire(asyncio.get_running_loop().time())
        asyncio.get_running_loop().call_later(1.0, self._expire_egress_only)

    def _on_underlay(self) -> None:
        self.igw.now = asyncio.get_running_loop().time()
        self.underlay.receive(self._relay, BATCH)
        self.underlay.flush()

    def _check_fleet(self) -> None:
        if self.fleet.check(asyncio.get_running_loop().time()):
            self.log.info("hyperplane fleet changed", alive=sorted(self.fleet.alive))
        asyncio.get_running_loop().call_later(HEARTBEAT_INTERVAL, self._check_fleet)

    def _relay(self, buf, n: int, outer_ip: str) -> None:
        if buf[1] & 0x80 and self.fleet.heard(outer_ip, asyncio.get_running_loop().time()):
            return  # a Hyperplane node's heartbeat
        target = self.relay.process(buf, n, outer_ip)
        if target is INTERNET:
            self._to_internet(buf, n, outer_ip)
        elif target is not None:
            self.underlay.send(buf[:n], target)

    # --- the internet gateway --------------------------------------------------------------------
    def _to_internet(self, buf, n: int, outer_ip: str) -> None:
        relay, vni = self.relay, self.relay.vni
        inner, vnet = relay.inner_off, relay.vnet_off
        if self.internet.vnet_hdr:
            # With offloads on the internet TUN: a super-packet is translated once and written whole, with
            # its virtio header; the kernel cuts it for the 1500-byte link (and completes checksums).
            head = bytes(buf[vnet:vnet + geneve.VNET_HDR_LEN]) if vnet >= 0 else ZERO_VNET
            pkt = bytearray(buf[inner:n])
            gso = head[1] & ~offload.GSO_ECN
            if gso != offload.GSO_NONE and gso != (offload.GSO_TCPV6 if pkt[0] >> 4 == 6 else offload.GSO_TCPV4):
                self.internet_drops[Drop.MALFORMED_PACKET] += 1  # UDP offloads: not through the gateway
                return
            self._out(vni, pkt, outer_ip, head, bool(head[0] & offload.F_NEEDS_CSUM),
                      offload.segment_size(buf, vnet, inner, n))
            return
        try:  # without: finish the super-packet here, segment by segment
            if vnet >= 0 and offload.needs_work(buf[vnet:vnet + geneve.VNET_HDR_LEN]):
                packets = offload.finish(buf[vnet:vnet + geneve.VNET_HDR_LEN], buf[inner:n])
            else:
                packets = (buf[inner:n],)
        except offload.OffloadError:
            self.internet_drops[Drop.MALFORMED_PACKET] += 1
            return
        for p in packets:
            if self._out(vni, bytearray(p), outer_ip):
                return  # one answer per super-packet is enough

    def _out(self, vni: int, pkt: bytearray, outer_ip: str, head: bytes | None = None, partial: bool = False,
             segment: int = 0) -> bool:
        """Translate one packet and write it to the internet TUN (behind ``head``, its virtio header, if the
        TUN takes one). True if it was too big: the ICMP answer went back to the sender's host instead."""
        verdict = self.igw.outbound(vni, pkt, partial, segment)
        if verdict is None:
            try:
                if head is None:
                    os.write(self.internet.fd, pkt)
                else:
                    os.writev(self.internet.fd, (head, pkt))
            except OSError:
                self.internet_drops[Drop.DELIVERY_FAILED] += 1
            return False
        if verdict.__class__ is bytes:  # too big: PMTU's answer goes back to the sender's host
            proto = geneve.PROTO_IPV6 if verdict[0] >> 4 == 6 else geneve.PROTO_IPV4
            self.underlay.send(geneve.prefix(vni, 0, False, proto) + verdict, (outer_ip, self.cfg.underlay_port))
            return True
        self.internet_drops[verdict] += 1
        return False

    def _on_internet(self) -> None:
        """Packets for public addresses, from the internet side (with offloads: whole super-packets,
        forwarded whole inside Geneve's OFFLOAD option, as hosts do between themselves). Read behind
        room for the Geneve header, translated in place, sent from the same buffer: no copies."""
        fd, buf, view, vnet = self.internet.fd, self._ibuf, self._iview, self.internet.vnet_hdr
        self.igw.now = asyncio.get_running_loop().time()
        start = geneve.VNET_OFFSET if vnet else geneve.INNER_OFFSET_PLAIN  # where the read lands
        inner = geneve.INNER_OFFSET_OFFLOAD if vnet else geneve.INNER_OFFSET_PLAIN
        iov = (view[start:],)
        for _ in range(BATCH):
            try:
                end = start + os.readv(fd, iov)
            except OSError:
                break
            if vnet and buf[start + 1]:
                self.super_packets_in += 1  # the kernel handed over a GSO super-packet
            if end - inner >= 40 and buf[inner] >> 4 == 6:
                self._from_internet6(view, start, inner, end, vnet)
                continue
            b = self.igw.inbound(view[inner:end], bool(vnet and buf[start] & offload.F_NEEDS_CSUM))
            if b.__class__ is Drop:
                self.internet_drops[b] += 1
                continue
            prefix = self._prefixes.get(b.vni)
            if prefix is None:  # built once per VPC: emitting a Geneve header costs more than the rest
                prefix = self._prefixes[b.vni] = geneve.prefix(b.vni, 0, bool(vnet))
            buf[:start] = prefix
            if b.host is not None:
                target = (b.host, self.cfg.underlay_port)
            else:  # a NAT gateway's address: to the node of its shard that holds flows with this remote
                target = self.fleet.nat_node(b.nat_gateway_id, buf[inner + 9], _I.unpack_from(buf, inner + 12)[0])
                if target is None:
                    self.internet_drops[Drop.NO_HYPERPLANE_NODE] += 1
                    continue
            self.underlay.send(view[:end], target)
        self.underlay.flush()

    def _from_internet6(self, view, start: int, inner: int, end: int, vnet: bool) -> None:
        """An IPv6 packet for a VPC address (no translation): to the host that holds it."""
        vni = self.igw.inbound6(view[inner:end])
        if vni.__class__ is Drop:
            self.internet_drops[vni] += 1
            return
        dst = int.from_bytes(view[inner + 24:inner + 40], "big") | addresses.V6_TAG
        table = self.cache.tables.get(vni)
        m = table.get(dst) if table is not None else None
        if m is None:
            self.internet_drops[Drop.EDGE_NO_MAPPING] += 1
            return
        prefix = self._prefixes6.get(vni)
        if prefix is None:
            prefix = self._prefixes6[vni] = geneve.prefix(vni, 0, bool(vnet), geneve.PROTO_IPV6)
        view[:start] = prefix
        self.underlay.send(view[:end], m.underlay)

    def trace(self, request: dict) -> dict:
        """``trace`` {datagram (base64 Geneve), outer_ip}: that datagram arriving from a host, as a dry
        run of the relay and the internet gateway. Returns the steps and where it would go."""
        try:
            buf, outer_ip = datagram_request(request)
        except ValueError as e:
            return {"error": f"trace {e}"}
        steps: list = []
        target = self.relay.process(buf, len(buf), outer_ip, trace=steps)
        if target is None:
            return {"steps": steps, "delivered": False}
        if target is not INTERNET:
            return {"steps": steps, "underlay": target[0], "datagram": request["datagram"],
                    "outer_ip": self.cfg.underlay_ip}  # relayed: the receiver sees the edge as the sender
        pkt = bytearray(buf[self.relay.inner_off:])
        v6 = pkt[0] >> 4 == 6
        src = addresses.text(int.from_bytes(pkt[8:24], "big") | addresses.V6_TAG if v6 else int.from_bytes(pkt[12:16], "big"))
        verdict = self.igw.outbound(self.relay.vni, pkt, count=False)
        if verdict is None and v6:
            egress_only = self.relay.vni in self.igw.egress_only.tables
            steps.append({"step": "egress-only gateway" if egress_only else "internet gateway", "result": "allow",
                          "detail": f"IPv6 {src} leaves unchanged" + (
                              " (its flow is tracked: answers may come back, nothing else in)" if egress_only else "")})
            steps.append({"step": "delivery", "result": "allow", "detail": f"to the internet ({self.cfg.internet_device})"})
            return {"steps": steps, "delivered": True}
        if verdict is None:
            steps.append({"step": "internet gateway", "result": "allow",
                          "detail": f"source {src} becomes {addresses.text(int.from_bytes(pkt[12:16], 'big'))}"})
            steps.append({"step": "delivery", "result": "allow", "detail": f"to the internet ({self.cfg.internet_device})"})
            return {"steps": steps, "delivered": True}
        if verdict.__class__ is bytes:
            steps.append({"step": "internet gateway", "result": "deny", "reason": "too_big",
                          "detail": ("ICMPv6 packet too big" if v6 else "ICMP fragmentation needed")
                          + " (MTU 1500) goes back to the instance"})
        else:
            steps.append({"step": "internet gateway", "result": "deny", "reason": verdict.label,
                          "detail": f"{src} has no public address" if verdict is Drop.NO_PUBLIC_ADDRESS else None})
        return {"steps": steps, "delivered": False}

    def handle_control(self, request: dict) -> dict:
        if request.get("op") == "trace":
            return self.trace(request)
        return {"role": "edge", "name": self.cfg.name, "ready": self.mapping.synced.is_set(),
                "pid": os.getpid(), "underlay": f"{self.cfg.underlay_ip}:{self.cfg.underlay_port}",
                "relayed": self.relay.relayed, "drops": counters_as_dict(self.relay.drops),
                "hyperplane": self.fleet.status(asyncio.get_running_loop().time()) if self.fleet else None,
                "mapping": self.mapping.status(),
                "internet": {"device": self.cfg.internet_device, **self.igw.counters,
                             "egress_only": self.igw.egress_only.status(),
                             "public_addresses": len(self.igw.by_public), "super_packets_in": self.super_packets_in,
                             "drops": counters_as_dict(self.internet_drops)},
                "desired_state": self.desired.status() if self.desired else None}


async def run(cfg: config.EdgeConfig) -> None:
    edge = EdgeAgent(cfg)
    await edge.start()
    daemon.started(cfg, edge)
    await daemon.until_signalled()


def main(argv: list[str] | None = None) -> None:
    daemon.run(argv, config.EdgeConfig, run, __doc__)


if __name__ == "__main__":
    main()

"""Hyperplane node: NAT gateway and load balancer flows. ``vpc-hyperplane --config hyperplane.toml``.

Composition root only: the packet work is ``vswitch.hyperplane_node.NodeCore``; this shell owns the
underlay socket, the desired-state watcher, and three timers:

- heartbeats (``HEARTBEAT_INTERVAL``) to every host, the edge and the other nodes: how they all know
  who is alive, and so which node holds which flow (``vswitch.hyperplane``);
- the live-set check: when a node dies or comes back, every flow is copied to the other owner it now
  has (a new secondary starts empty), and every ``RESYNC`` seconds anyway, so the copies' idle timers
  stay ahead of the flows';
- the idle-flow sweep.

Replication: a new flow's record goes to its other owner in a ``FLOWS`` message right after the
batch that created it — before the reply to its first packet can come back, since that reply passes
through this node first. A record is ~100 bytes of JSON; up to ``RECORDS_PER_MESSAGE`` per datagram.
"""

from __future__ import annotations

import asyncio
import os

from agents import daemon
from agents.host_agent import BATCH
from vswitch import config, control, hyperplane, logs
from vswitch.controlplane.client import DesiredStateWatcher
from vswitch.drops import counters_as_dict
from vswitch.hyperplane import FLOWS, HEARTBEAT, HEARTBEAT_INTERVAL, Fleet
from vswitch.hyperplane_node import NodeCore
from vswitch.underlay import UnderlaySocket

RESYNC = 30.0  # seconds between full copies of the flow tables to their secondaries
RECORDS_PER_MESSAGE = 200


class HyperplaneAgent:
    def __init__(self, cfg: config.HyperplaneConfig):
        self.cfg = cfg
        self.log = logs.get("hyperplane").bind(node=cfg.name)
        self.fleet = Fleet({n.name: n.underlay_ip for n in cfg.hyperplane}, cfg.hyperplane_shard_size,
                           cfg.underlay_port)
        self.core = NodeCore(cfg.name, self.fleet, cfg.edge, cfg.underlay_port, cfg.seed)
        self.heartbeat = hyperplane.heartbeat(cfg.name)
        self.peers = [(n.underlay_ip, cfg.underlay_port) for n in cfg.hyperplane if n.name != cfg.name]
        self.hosts: list[tuple[str, int]] = []
        self.desired = None
        self.errors = 0
        self.messages_in = 0
        self.records_out = 0
        self._now = 0.0
        self._last_resync = 0.0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.underlay = UnderlaySocket(self.cfg.underlay_ip, self.cfg.underlay_port, self.core.drops)
        loop.add_reader(self.underlay.fileno, self._on_underlay)
        self.control = await control.serve(self.cfg.control_socket, self.handle_control)
        token = config.read_token(self.cfg.token_file) if self.cfg.token_file else ""
        self.desired = DesiredStateWatcher(self.cfg.control_plane, token, self._on_view, tls=self.cfg.tls)
        self.desired_task = asyncio.create_task(self.desired.run())
        self._last_resync = loop.time()
        self.fleet.heard(self.cfg.underlay_ip, loop.time())  # itself: alive
        self._beat()
        self._sweep()
        try:
            await asyncio.wait_for(self.desired.synced.wait(), 10)
        except asyncio.TimeoutError:
            self.log.warning("no desired state from the control plane yet")
        self.log.info("ready", nat_gateways=len(self.core.nats))

    async def _on_view(self, view: dict) -> None:
        self.core.update(view)
        self.hosts = sorted({(h["underlay_ip"], self.cfg.underlay_port) for h in view.get("hosts", ())
                             if h.get("underlay_ip")})

    # --- timers ----------------------------------------------------------------------------------
    def _beat(self) -> None:
        """Heartbeats out; and the live-set check, with a full resync when it changed."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.fleet.heard(self.cfg.underlay_ip, now)
        send = self.underlay.send
        for target in (*self.hosts, (self.cfg.edge, self.cfg.underlay_port), *self.peers):
            send(self.heartbeat, target)
        self.underlay.flush()
        if self.fleet.check(now) or now - self._last_resync >= RESYNC:
            self.log.info("resync", alive=sorted(self.fleet.alive))
            self._last_resync = now
            self.core.resync(now)
        self.core.health(now)
        for target, old, new, reason in self.core.health_events:
            self.log.info("target health", target=target, old=old, new=new, reason=reason)
        self.core.health_events.clear()
        self._flush_outputs()
        loop.call_later(HEARTBEAT_INTERVAL, self._beat)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self.core.expire(loop.time())
        loop.call_later(0.25, self._sweep)

    # --- packets ---------------------------------------------------------------------------------
    def _on_underlay(self) -> None:
        self._now = asyncio.get_running_loop().time()
        self.underlay.receive(self._handle, BATCH)
        self._flush_outputs()

    def _handle(self, buf, n: int, outer_ip: str) -> None:
        try:
            if buf[1] & 0x80:
                self._control_message(buf, n, outer_ip)
                return
            target = self.core.process(buf, n, outer_ip, self._now)
            if target is not None:
                self.underlay.send(buf[:n], target)
        except Exception:  # a bug must not take the node down; counted and logged
            self.errors += 1
            if self.errors <= 10:
                self.log.exception("unexpected error on the data path")

    def _control_message(self, buf, n: int, outer_ip: str) -> None:
        if outer_ip not in self.fleet.by_ip:
            return
        msg = hyperplane.parse_message(buf, n)
        if msg is None:
            return
        kind, body = msg
        if kind == HEARTBEAT:
            self.fleet.heard(outer_ip, self._now)
        elif kind == FLOWS:
            self.messages_in += 1
            self.core.import_flows(str(body.get("kind")), str(body.get("id")), body["flows"], self._now)

    def _flush_outputs(self) -> None:
        core = self.core
        for datagram, target in core.outbox:
            self.underlay.send(datagram, target)
        core.outbox.clear()
        if core.replicate:
            groups: dict[tuple[str, str, str], list] = {}
            for node, kind, resource, record in core.replicate:
                groups.setdefault((node, kind, resource), []).append(record)
            core.replicate.clear()
            for (node, kind, resource), records in groups.items():
                target = (self.fleet.nodes[node], self.cfg.underlay_port)
                for i in range(0, len(records), RECORDS_PER_MESSAGE):
                    chunk = records[i:i + RECORDS_PER_MESSAGE]
                    self.underlay.send(hyperplane.flows_message(self.cfg.name, kind, resource, chunk), target)
                    self.records_out += len(chunk)
        self.underlay.flush()

    # --- control ---------------------------------------------------------------------------------
    def handle_control(self, request: dict) -> dict:
        """``status``, or ``shards``: every resource's shard as this node computes it."""
        if request.get("op") == "shards":
            return self.core.shards()
        now = asyncio.get_running_loop().time()
        return {"role": "hyperplane", "name": self.cfg.name, "pid": os.getpid(),
                "ready": bool(self.desired and self.desired.synced.is_set()),
                "underlay": f"{self.cfg.underlay_ip}:{self.cfg.underlay_port}",
                "fleet": self.fleet.status(now), **self.core.status(now),
                "drops": counters_as_dict(self.core.drops), "errors": self.errors,
                "replication": {"records_out": self.records_out, "messages_in": self.messages_in},
                "desired_state": self.desired.status() if self.desired else None}


async def run(cfg: config.HyperplaneConfig) -> None:
    agent = HyperplaneAgent(cfg)
    await agent.start()
    daemon.started(cfg, agent)
    await daemon.until_signalled()


def main(argv: list[str] | None = None) -> None:
    daemon.run(argv, config.HyperplaneConfig, run, __doc__)


if __name__ == "__main__":
    main()

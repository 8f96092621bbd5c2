"""Blackfoot edge agent: relays what hosts could not map. ``python -m agents.edge_agent --config edge.toml``.

Knows every mapping (subscribes to all VPCs) and forwards each relayed Geneve datagram unchanged to the
host that owns the inner destination; see ``vswitch.edge`` for the checks. The internet side (internet
gateway, public addresses) arrives with route tables.
"""

from __future__ import annotations

import asyncio
import os

from agents import daemon
from agents.host_agent import BATCH
from vswitch import config, control, logs
from vswitch.drops import counters_as_dict
from vswitch.edge import EdgeRelay
from vswitch.mapping import MappingCache
from vswitch.mapping_client import MappingClient
from vswitch.underlay import UnderlaySocket


class EdgeAgent:
    def __init__(self, cfg: config.EdgeConfig):
        self.cfg = cfg
        self.log = logs.get("edge").bind(name=cfg.name)
        self.cache = MappingCache(port=cfg.underlay_port)
        self.relay = EdgeRelay(self.cache)
        self.mapping = MappingClient(config.split_endpoint(cfg.mapping), self.cache, None)

    async def start(self) -> None:
        self.underlay = UnderlaySocket(self.cfg.underlay_ip, self.cfg.underlay_port, self.relay.drops)
        asyncio.get_running_loop().add_reader(self.underlay.fileno, self._on_underlay)
        self.control = await control.serve(self.cfg.control_socket, self.handle_control)  # keep a reference
        self.mapping_task = asyncio.create_task(self.mapping.run())
        try:
            await asyncio.wait_for(self.mapping.synced.wait(), 5)
        except asyncio.TimeoutError:
            self.log.warning("mapping preload timed out")
        self.log.info("ready", mappings=self.cache.size())

    def _on_underlay(self) -> None:
        self.underlay.receive(self._relay, BATCH)
        self.underlay.flush()

    def _relay(self, buf, n: int, outer_ip: str) -> None:
        target = self.relay.process(buf, n, outer_ip)
        if target is not None:
            self.underlay.send(buf[:n], target)

    def handle_control(self, request: dict) -> dict:
        return {"role": "edge", "name": self.cfg.name, "ready": self.mapping.synced.is_set(),
                "pid": os.getpid(), "underlay": f"{self.cfg.underlay_ip}:{self.cfg.underlay_port}",
                "relayed": self.relay.relayed, "drops": counters_as_dict(self.relay.drops),
                "mapping": self.mapping.status()}


async def run(cfg: config.EdgeConfig) -> None:
    edge = EdgeAgent(cfg)
    await edge.start()
    await daemon.until_signalled()


def main(argv: list[str] | None = None) -> None:
    daemon.run(argv, config.EdgeConfig, run, __doc__)


if __name__ == "__main__":
    main()

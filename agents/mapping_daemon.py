"""Mapping daemon: the authoritative (VPC, address) → (host, ENI) table.

``python -m agents.mapping_daemon --config mapping.toml``. Serves the line-JSON protocol of
``vswitch.mapping`` over TCP; pushes every change to the subscribers of that VPC as it happens. The
table is written atomically to ``state_file`` on each change so a restarted daemon serves what it had.
"""

from __future__ import annotations

import asyncio
import os

import orjson

from agents import daemon as _daemon
from vswitch import addresses, config, control, logs
from vswitch.controlplane.client import DesiredStateWatcher
from vswitch.mapping import MappingService, ProtocolError, decode, encode


class MappingDaemon:
    def __init__(self, cfg: config.MappingDaemonConfig):
        self.cfg = cfg
        self.log = logs.get("mapping-daemon")
        self.service = MappingService(self._load())
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.protocol_errors = 0
        self.pushed = 0
        self.desired = None

    def _load(self) -> list:
        if not self.cfg.state_file or not os.path.exists(self.cfg.state_file):
            return []
        try:
            with open(self.cfg.state_file, "rb") as f:
                return [tuple(e) for e in orjson.loads(f.read())]
        except (OSError, orjson.JSONDecodeError, TypeError) as e:
            self.log.error("state file unreadable; starting empty", error=str(e))
            return []

    def _save(self) -> None:
        if not self.cfg.state_file:
            return
        tmp = self.cfg.state_file + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(self.service.export()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.cfg.state_file)

    def _dispatch(self, conn, message: dict) -> int:
        """Handle one message; send what it produces. Returns how many messages were pushed."""
        out = self.service.handle(conn, message)
        if message["op"] in ("put", "delete"):
            self._changed(out)
        else:
            self._send(out)
        return len(out)

    def _changed(self, out) -> None:
        """The table changed: persist it, then push what changed."""
        self._save()
        self.pushed += len(out)
        self._send(out)

    def _send(self, out) -> None:
        for target, msg in out:
            w = self.writers.get(target)
            if w is not None:
                w.write(encode(msg))

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = id(writer)
        self.writers[conn] = writer
        peer = writer.get_extra_info("peername")
        try:
            while line := await reader.readline():
                try:
                    message = decode(line)
                    self._dispatch(conn, message)
                    if message["op"] in ("put", "delete"):
                        writer.write(encode({"op": "ok"}))
                except ProtocolError as e:
                    self.protocol_errors += 1
                    writer.write(encode({"op": "error", "message": str(e)}))
                await writer.drain()
        except (ConnectionError, ValueError) as e:  # ValueError: a line longer than the limit
            self.log.warning("client dropped", peer=peer, error=str(e))
        finally:
            self.service.disconnect(conn)
            self.writers.pop(conn, None)
            writer.close()

    async def apply_desired(self, view: dict) -> None:
        """Make the table exactly the desired state's ENIs (each change is pushed to subscribers)."""
        desired = {(e["vni"], addr): (e["underlay_ip"], addresses.eni_number(e["id"]))
                   for e in view["enis"] if e["underlay_ip"]
                   for addr in (e["private_ip"], e.get("ipv6_address")) if addr}
        out = []
        for (vni, addr), (host, eni) in desired.items():
            out += self.service.put(vni, addr, host, eni)
        for vni, table in list(self.service.table.items()):
            for addr in list(table):
                if (vni, addr) not in desired:
                    out += self.service.delete(vni, addr)
        if out:
            self._changed(out)

    def handle_control(self, request: dict) -> dict:
        """``status``, or ``put``/``delete`` from a local operator (deployments without a control plane)."""
        if request.get("op") in ("put", "delete"):
            try:
                return {"ok": True, "pushed": self._dispatch("control", request)}
            except ProtocolError as e:
                return {"error": str(e)}
        return {"role": "mapping-daemon", "name": self.cfg.name, "ready": True, "pid": os.getpid(),
                "listen": self.cfg.listen, "entries": sum(len(t) for t in self.service.table.values()),
                "vpcs": len(self.service.table), "subscribers": len(self.service.subscribers),
                "pushed": self.pushed, "protocol_errors": self.protocol_errors,
                "desired_state": self.desired.status() if self.desired else None}


async def run(cfg: config.MappingDaemonConfig) -> None:
    daemon = MappingDaemon(cfg)
    host, port = config.split_endpoint(cfg.listen)
    server = await asyncio.start_server(daemon.on_client, host, port, limit=1 << 20)
    daemon.control = await control.serve(cfg.control_socket, daemon.handle_control)  # keep: unreferenced, it closes
    if cfg.control_plane:
        token = config.read_token(cfg.token_file) if cfg.token_file else ""
        daemon.desired = DesiredStateWatcher(cfg.control_plane, token, daemon.apply_desired)
        daemon.desired_task = asyncio.create_task(daemon.desired.run())
    daemon.log.info("ready", listen=cfg.listen, entries=daemon.handle_control({})["entries"])
    _daemon.started(cfg, daemon)
    await _daemon.until_signalled()
    server.close()


def main(argv: list[str] | None = None) -> None:
    _daemon.run(argv, config.MappingDaemonConfig, run, __doc__)


if __name__ == "__main__":
    main()

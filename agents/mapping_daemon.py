"""Mapping daemon: the authoritative (VPC, address) → (host, ENI) table.

``vpc-mapping-daemon --config mapping-daemon.toml``. Serves the line-JSON protocol of
``vswitch.mapping`` over TCP; pushes every change to the subscribers of that VPC as it happens. The
table is written atomically to ``state_file`` on each change so a restarted daemon serves what it had.

With ``tls`` in its config the TCP listener is mutual TLS (``vswitch.pki``): a peer without a certificate
of the deployment's CA is refused at the handshake (counted in ``tls_refused``; logged at most once a
minute per peer address). The certificate's role (its OU) then says what the peer may do:

    subscribe, query, ping   host, edge, hyperplane, control-plane, admin
    put, delete              admin, control-plane (the agents only read; the table normally follows
                             the control plane's desired state, which the daemon fetches itself)

A ``mapping`` certificate (the daemon's own) is refused as a client. A refused operation answers
``{"op": "error"}`` and is counted in ``forbidden``. The control socket (a Unix socket: filesystem
permissions) keeps its local ``put``/``delete`` for operators. Without ``tls`` the listener is plain TCP
and open to whoever reaches it, as before.
"""

from __future__ import annotations

import asyncio
import os
import time

import orjson

from agents import daemon as _daemon
from vswitch import addresses, config, control, logs, pki
from vswitch.controlplane.client import DesiredStateWatcher
from vswitch.mapping import MappingService, ProtocolError, decode, encode

READ_ROLES = frozenset({"host", "edge", "hyperplane", "control-plane", "admin"})  # subscribe, query, ping
WRITE_ROLES = frozenset({"admin", "control-plane"})  # and put, delete
REFUSAL_LOG_INTERVAL = 60.0  # seconds: at most one log line per refused peer address in this time


class MappingDaemon:
    def __init__(self, cfg: config.MappingDaemonConfig):
        self.cfg = cfg
        self.log = logs.get("mapping-daemon")
        self.service = MappingService(self._load(), clock=time.time)  # pushes carry "ts": the push lag
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.protocol_errors = 0
        self.pushed = 0
        self.desired = None
        self.tls = pki.server_context(cfg.tls) if cfg.tls else None  # refuses a daemon with bad credentials
        self.tls_refused = 0  # handshakes refused (no certificate, another CA, expired, not TLS) or roles refused
        self.forbidden = 0  # operations the peer's role may not do
        self._refusals_logged: dict[str, tuple[float, int]] = {}  # peer address -> (last logged, since then)

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

    def refused(self, peer, reason: str) -> None:
        """A peer failed the TLS handshake or has a role with no business here: count it, log it rarely."""
        self.tls_refused += 1
        address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        now = time.monotonic()
        last, quiet = self._refusals_logged.get(address, (None, 0))
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            self._refusals_logged[address] = (last, quiet + 1)
            return
        if len(self._refusals_logged) >= 4096:  # many addresses: forget the old ones
            self._refusals_logged = {a: v for a, v in self._refusals_logged.items()
                                     if now - v[0] < REFUSAL_LOG_INTERVAL}
        self._refusals_logged[address] = (now, 0)
        self.log.warning("peer refused", peer=address, reason=reason, refused_since_last_line=quiet)

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        role = None  # plain TCP: no roles
        if self.tls is not None:
            cert = writer.get_extra_info("peercert")
            role = pki.peer_role(cert)
            if role not in READ_ROLES:
                self.refused(peer, f"certificate {pki.peer_name(cert)!r} has role {role!r}, which may not use "
                                   "the mapping service")
                writer.close()
                return
        conn = id(writer)
        self.writers[conn] = writer
        try:
            while line := await reader.readline():
                try:
                    message = decode(line)
                    if role is not None and message["op"] in ("put", "delete") and role not in WRITE_ROLES:
                        self.forbidden += 1
                        writer.write(encode({"op": "error", "message": f"role {role!r} may not {message['op']}"}))
                    else:
                        self._dispatch(conn, message)
                        if message["op"] in ("put", "delete"):
                            writer.write(encode({"op": "ok"}))
                except ProtocolError as e:
                    self.protocol_errors += 1
                    writer.write(encode({"op": "error", "message": str(e)}))
                await writer.drain()
        except (OSError, ValueError) as e:  # ValueError: a line longer than the limit; OSError: also TLS errors
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
                "tls": self.tls is not None, "tls_refused": self.tls_refused, "forbidden": self.forbidden,
                "desired_state": self.desired.status() if self.desired else None}


async def run(cfg: config.MappingDaemonConfig) -> None:
    daemon = MappingDaemon(cfg)
    host, port = config.split_endpoint(cfg.listen)
    if daemon.tls is not None:  # mutual TLS: the handler sees only peers with a certificate of the CA
        server = await pki.start_tls_server(daemon.on_client, host, port, daemon.tls, daemon.refused, limit=1 << 20)
    else:
        server = await asyncio.start_server(daemon.on_client, host, port, limit=1 << 20)
    daemon.control = await control.serve(cfg.control_socket, daemon.handle_control)  # keep: unreferenced, it closes
    if cfg.control_plane:
        token = config.read_token(cfg.token_file) if cfg.token_file else ""
        daemon.desired = DesiredStateWatcher(cfg.control_plane, token, daemon.apply_desired, tls=cfg.tls)
        daemon.desired_task = asyncio.create_task(daemon.desired.run())
    daemon.log.info("ready", listen=cfg.listen, entries=daemon.handle_control({})["entries"])
    _daemon.started(cfg, daemon)
    await _daemon.until_signalled()
    server.close()


def main(argv: list[str] | None = None) -> None:
    _daemon.run(argv, config.MappingDaemonConfig, run, __doc__)


if __name__ == "__main__":
    main()

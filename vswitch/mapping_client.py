"""The asyncio shell around ``MappingCache``: keep a connection to the mapping daemon.

Subscribes on every (re)connect — the snapshot replaces what the cache held for those VPCs — applies
pushes as they arrive, and sends the queries the data path queued on misses. While the daemon is down
the cache is left as it is: agents keep forwarding on what they know.

With ``tls`` (a ``config.TlsConfig``) the connection is mutual TLS (``vswitch.pki``): the client presents
its certificate and accepts only a daemon whose certificate chains to the CA, names the address it was
reached at (IP SAN) and has the role ``mapping``. A daemon that refuses us (no or wrong certificate)
closes the connection at once: such a connection counts as a failed attempt, retried with the backoff.
"""

from __future__ import annotations

import asyncio

from . import logs, pki
from .mapping import MappingCache, ProtocolError, decode, encode


class MappingClient:
    BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0

    def __init__(self, endpoint: tuple[str, int], cache: MappingCache, vnis: list[int] | None,
                 on_change=None, tls=None):
        self.endpoint = endpoint
        self.tls = tls  # config.TlsConfig: mutual TLS to the daemon; None: plain TCP
        self.cache = cache
        self.vnis = vnis  # None: every VPC (the edge)
        self.on_change = on_change  # called after each applied message from the daemon
        self.connected = False
        self.connects = 0
        self.protocol_errors = 0
        self.callback_errors = 0
        self.synced = asyncio.Event()  # set once the first snapshots arrived
        self._writer: asyncio.StreamWriter | None = None
        self._log = logs.get("mapping-client")

    def resubscribe(self, vnis: list[int]) -> None:
        """Follow a changed set of VPCs: the daemon answers with their snapshots."""
        self.vnis = vnis
        if self._writer is not None:
            self._writer.write(encode(self.cache.subscribe_message(vnis)))

    def flush_queries(self) -> None:
        """Send queued miss queries; dropped while disconnected (they are asked again later)."""
        queries = self.cache.take_queries()
        if self._writer is not None and queries:
            self._writer.write(b"".join(encode(q) for q in queries))

    async def run(self) -> None:
        backoff = self.BACKOFF_MIN
        while True:
            try:
                reader, writer = await self._connect()
            except (OSError, asyncio.TimeoutError, pki.PkiError) as e:  # ssl.SSLError is an OSError
                self._log.warning("mapping daemon unreachable", endpoint=self.endpoint, error=str(e))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.BACKOFF_MAX)
                continue
            heard = False  # anything from the daemon on this connection (a refused TLS peer hears nothing)
            self.connects += 1
            self._writer, self.connected = writer, True
            self._log.info("mapping daemon connected", endpoint=self.endpoint)
            try:
                subscribe = self.cache.subscribe_message(self.vnis)
                writer.write(encode(subscribe) + encode({"op": "ping"}))
                self.flush_queries()
                while line := await reader.readline():
                    heard = True
                    try:
                        message = decode(line)
                        self.cache.apply(message)
                        if self.on_change is not None:
                            self._notify()
                    except ProtocolError as e:
                        self.protocol_errors += 1
                        self._log.warning("bad message from mapping daemon", error=str(e))
                        continue
                    # The daemon answers in order: the pong follows every snapshot we asked for.
                    if message["op"] == "pong":
                        self.synced.set()
            except (ConnectionError, OSError) as e:
                self._log.warning("mapping daemon connection lost", error=str(e))
            finally:
                self._writer, self.connected = None, False
                writer.close()
            self._log.warning("mapping daemon disconnected; forwarding on cached mappings")
            await asyncio.sleep(self.BACKOFF_MIN if heard else backoff)
            backoff = self.BACKOFF_MIN if heard else min(backoff * 2, self.BACKOFF_MAX)

    async def _connect(self):
        if self.tls is None:
            return await asyncio.open_connection(*self.endpoint)
        context = pki.client_context(self.tls)  # read on each attempt: renewed files are picked up
        reader, writer = await asyncio.open_connection(*self.endpoint, ssl=context, ssl_handshake_timeout=10)
        role = pki.peer_role(writer.get_extra_info("peercert"))
        if role != "mapping":
            writer.close()
            raise ConnectionRefusedError(f"the server's certificate has role {role!r}, not 'mapping'")
        return reader, writer

    def _notify(self) -> None:
        try:
            self.on_change()
        except Exception:  # the listener's bug must not end the connection to the daemon
            self.callback_errors += 1
            self._log.exception("mapping change listener failed")

    def status(self) -> dict:
        c = self.cache
        return {"connected": self.connected, "connects": self.connects, "entries": c.size(),
                "misses": c.misses, "answered_misses": c.hits_by_query, "updates": c.updates,
                "protocol_errors": self.protocol_errors, "callback_errors": self.callback_errors}

"""The mapping protocol over mutual TLS on loopback (no root): only peers with a certificate of the
deployment's CA get past the handshake, and their role says what they may do. Runs on asyncio's loop
and on uvloop (the daemons' loop)."""

from __future__ import annotations

import asyncio
import ssl
import time

import pytest
import uvloop

from agents.mapping_daemon import MappingDaemon
from vswitch import addresses, config, pki
from vswitch.mapping import MappingCache, encode
from vswitch.mapping_client import MappingClient

ENI_A = "eni-000000000000000a"
LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


def tls(directory, name) -> config.TlsConfig:
    return config.TlsConfig(ca=str(directory / "ca.crt"), cert=str(directory / f"{name}.crt"),
                            key=str(directory / f"{name}.key"))


@pytest.fixture
def creds(tmp_path):
    d, other = tmp_path / "pki", tmp_path / "self-made"
    pki.init(d)
    pki.issue(d, "mapping", "mapping", ips=["127.0.0.1"])
    for role, name in (("host", "host-a"), ("edge", "edge"), ("admin", "admin"), ("mapping", "mapping-2")):
        pki.issue(d, role, name, ips=["127.0.0.1"])
    pki.init(other)  # a CA the daemon does not trust, with a perfectly formed host certificate
    pki.issue(other, "host", "host-a", ips=["127.0.0.1"])
    return d, other


async def start_daemon(tmp_path, d):
    cfg = config.MappingDaemonConfig(name="mapping", control_socket=str(tmp_path / "m.sock"),
                                     listen="127.0.0.1:1", tls=tls(d, "mapping"))
    daemon = MappingDaemon(cfg)
    server = await pki.start_tls_server(daemon.on_client, "127.0.0.1", 0, daemon.tls, daemon.refused)
    return daemon, server, server.sockets[0].getsockname()[:2]


async def wait_for(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def subscribe(endpoint, context: ssl.SSLContext | None) -> list[bytes] | None:
    """Subscribe to every VPC and ping; the lines the daemon answered, or None if it refused us."""
    try:
        reader, writer = await asyncio.open_connection(*endpoint, ssl=context)
    except (OSError, ssl.SSLError):
        return None
    try:
        writer.write(encode({"op": "subscribe", "vnis": "*"}) + encode({"op": "ping"}))
        lines = []
        while line := await asyncio.wait_for(reader.readline(), 3):
            lines.append(line)
            if b'"pong"' in line:
                return lines
        return None  # closed on us
    except (OSError, ssl.SSLError):  # the server's alert: certificate required / unknown CA
        return None
    finally:
        writer.close()


def client_context(ca_file: str, cert=None) -> ssl.SSLContext:
    """A client that verifies the daemon against our CA, presenting ``cert`` (a TlsConfig) or nothing."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca_file)
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


@pytest.mark.parametrize("loop", LOOPS)
def test_only_certificates_of_the_ca_subscribe(tmp_path, creds, loop):
    d, other = creds

    async def scenario():
        daemon, server, endpoint = await start_daemon(tmp_path, d)
        daemon.handle_control({"op": "put", "vni": 1, "addr": "10.0.1.4", "host": "198.18.0.11", "eni": ENI_A})
        ca = str(d / "ca.crt")
        # Refused: plain TCP, TLS without a certificate, a self-made certificate of another CA, and a
        # valid certificate whose role (the daemon's own) has no business subscribing.
        assert await subscribe(endpoint, None) is None
        assert await subscribe(endpoint, client_context(ca)) is None
        assert await subscribe(endpoint, client_context(ca, tls(other, "host-a"))) is None
        assert await subscribe(endpoint, client_context(ca, tls(d, "mapping-2"))) is None
        await wait_for(lambda: daemon.tls_refused == 4)
        assert daemon.service.subscribers == {}
        # Refusals from one address are logged once in a while, not once each.
        assert daemon._refusals_logged["127.0.0.1"][1] == 3
        # A valid host certificate subscribes, through the agents' own client.
        cache = MappingCache()
        client = MappingClient(endpoint, cache, [1], tls=tls(d, "host-a"))
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.synced.wait(), 3)
        assert cache.lookup(1, addresses.key("10.0.1.4")).host == "198.18.0.11"
        assert daemon.handle_control({})["tls"] and daemon.handle_control({})["tls_refused"] == 4
        task.cancel()
        server.close()

    LOOPS[loop](scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_roles_decide_who_writes(tmp_path, creds, loop):
    d, _ = creds

    async def ask(endpoint, who, message) -> bytes:
        reader, writer = await asyncio.open_connection(*endpoint, ssl=pki.client_context(tls(d, who)))
        writer.write(encode(message))
        try:
            return await asyncio.wait_for(reader.readline(), 3)
        finally:
            writer.close()

    async def scenario():
        daemon, server, endpoint = await start_daemon(tmp_path, d)
        put = {"op": "put", "vni": 1, "addr": "10.0.1.9", "host": "198.18.0.66", "eni": ENI_A}
        for who in ("host-a", "edge"):  # agents read, never write
            assert b"may not put" in await ask(endpoint, who, put)
        assert b"may not delete" in await ask(endpoint, "host-a", {"op": "delete", "vni": 1, "addr": "10.0.1.4"})
        assert daemon.service.table.get(1, {}) == {} and daemon.forbidden == 3
        assert b'"ok"' in await ask(endpoint, "admin", put)
        assert daemon.service.table[1]["10.0.1.9"] == ("198.18.0.66", 0xA)
        assert b'"pong"' in await ask(endpoint, "edge", {"op": "ping"})
        server.close()

    LOOPS[loop](scenario())


def test_client_refuses_a_daemon_that_is_not_the_mapping_daemon(tmp_path, creds):
    """A valid certificate of another role (a host's) at the daemon's address does not get the agents."""
    d, _ = creds

    async def scenario():
        cfg = config.MappingDaemonConfig(name="impostor", control_socket=str(tmp_path / "i.sock"),
                                         listen="127.0.0.1:1", tls=tls(d, "edge"))
        impostor = MappingDaemon(cfg)
        server = await pki.start_tls_server(impostor.on_client, "127.0.0.1", 0, impostor.tls, impostor.refused)
        client = MappingClient(server.sockets[0].getsockname()[:2], MappingCache(), [1], tls=tls(d, "host-a"))
        task = asyncio.create_task(client.run())
        await asyncio.sleep(0.5)
        assert not client.synced.is_set() and client.connects == 0
        task.cancel()
        server.close()

    asyncio.run(scenario())

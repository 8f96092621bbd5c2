"""The mapping daemon and client over real TCP on loopback (no root): preload, push latency, misses,
restarts and bad input."""

from __future__ import annotations

import asyncio
import time

import pytest

from agents.mapping_daemon import MappingDaemon
from vswitch import addresses, config
from vswitch.mapping import MappingCache
from vswitch.mapping_client import MappingClient

ENI_A, ENI_B = "eni-000000000000000a", "eni-000000000000000b"


async def start_daemon(tmp_path, state_file=None):
    # `listen` is not used here: the test serves on an ephemeral port of its own.
    cfg = config.MappingDaemonConfig(name="mapping", control_socket=str(tmp_path / "m.sock"),
                                     listen="127.0.0.1:1", state_file=state_file)
    daemon = MappingDaemon(cfg)
    server = await asyncio.start_server(daemon.on_client, "127.0.0.1", 0)
    return daemon, server, server.sockets[0].getsockname()[:2]


async def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


def test_preload_push_within_100ms_and_miss(tmp_path):
    async def scenario():
        daemon, server, endpoint = await start_daemon(tmp_path)
        daemon.handle_control({"op": "put", "vni": 1, "addr": "10.0.1.4", "host": "198.18.0.11", "eni": ENI_A})
        daemon.handle_control({"op": "put", "vni": 2, "addr": "10.0.1.4", "host": "198.18.0.99", "eni": ENI_B})
        cache = MappingCache()
        client = MappingClient(endpoint, cache, [1])
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.synced.wait(), 2)
        # Preloaded: the VPC it asked for, not the other one.
        assert cache.lookup(1, addresses.key("10.0.1.4")).host == "198.18.0.11"
        assert cache.lookup(2, addresses.key("10.0.1.4")) is None
        # A change is pushed: measure how long it takes to land in the cache.
        t0 = time.monotonic()
        daemon.handle_control({"op": "put", "vni": 1, "addr": "10.0.1.10", "host": "198.18.0.12", "eni": ENI_B})
        await wait_for(lambda: cache.lookup(1, addresses.key("10.0.1.10")) is not None)
        assert time.monotonic() - t0 < 0.1
        daemon.handle_control({"op": "delete", "vni": 1, "addr": "10.0.1.10"})
        await wait_for(lambda: cache.lookup(1, addresses.key("10.0.1.10")) is None)
        # A miss asks the daemon once; the answer fills the cache.
        daemon.service.table[1]["10.0.1.20"] = ("198.18.0.13", 0x20)  # known to the daemon, not pushed
        cache.note_miss(1, addresses.key("10.0.1.20"), now=0.0)
        client.flush_queries()
        await wait_for(lambda: cache.lookup(1, addresses.key("10.0.1.20")) is not None)
        assert cache.hits_by_query == 1
        task.cancel()
        server.close()

    asyncio.run(scenario())


def test_daemon_down_keeps_cache_and_resynchronises(tmp_path):
    async def scenario():
        state = str(tmp_path / "mappings.json")
        daemon, server, endpoint = await start_daemon(tmp_path, state)
        daemon.handle_control({"op": "put", "vni": 1, "addr": "10.0.1.4", "host": "198.18.0.11", "eni": ENI_A})
        cache = MappingCache()
        client = MappingClient(endpoint, cache, [1])
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.synced.wait(), 2)
        server.close()
        for w in list(daemon.writers.values()):
            w.close()
        await wait_for(lambda: not client.connected)
        assert cache.lookup(1, addresses.key("10.0.1.4")) is not None  # still forwarding on the cache
        # A new daemon on the same port reloads its state file; the client reconnects and resyncs.
        daemon2 = MappingDaemon(daemon.cfg)
        assert daemon2.service.table[1]["10.0.1.4"] == ("198.18.0.11", 0xA)
        server2 = await asyncio.start_server(daemon2.on_client, *endpoint)
        await wait_for(lambda: client.connected, timeout=5)
        daemon2.handle_control({"op": "put", "vni": 1, "addr": "10.0.1.5", "host": "198.18.0.12", "eni": ENI_B})
        await wait_for(lambda: cache.lookup(1, addresses.key("10.0.1.5")) is not None)
        task.cancel()
        server2.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("line", [b"not json\n", b"[1,2]\n", b'{"op": "put", "vni": -1}\n',
                                  b'{"op": "subscribe", "vnis": "all"}\n', b'{"op": "nope"}\n', b"\xff\xfe\n"])
def test_bad_messages_get_an_error_and_the_daemon_keeps_serving(tmp_path, line):
    async def scenario():
        daemon, server, endpoint = await start_daemon(tmp_path)
        reader, writer = await asyncio.open_connection(*endpoint)
        writer.write(line + b'{"op": "ping"}\n')
        first = await asyncio.wait_for(reader.readline(), 2)
        second = await asyncio.wait_for(reader.readline(), 2)
        assert b'"error"' in first and b"pong" in second
        assert daemon.protocol_errors == 1
        writer.close()
        server.close()

    asyncio.run(scenario())

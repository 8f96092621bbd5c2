"""A daemon's local control socket: one JSON request per line on a Unix socket, one JSON answer.

Used by ``vpc status`` and the lab's readiness checks (counters for machines: ``vswitch/metrics.py``).
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Awaitable, Callable

import orjson

Handler = Callable[[dict], Awaitable[dict] | dict]


async def serve(path: str, handler: Handler) -> asyncio.AbstractServer:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = orjson.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    answer = handler(request)
                    if asyncio.iscoroutine(answer):
                        answer = await answer
                except Exception as e:  # a bad request gets an error answer, never a dead daemon
                    answer = {"error": f"{type(e).__name__}: {e}"}
                writer.write(orjson.dumps(answer, option=orjson.OPT_NON_STR_KEYS) + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(on_client, path=path)
    os.chmod(path, 0o600)
    return server


def request(path: str, message: dict, timeout: float = 2.0) -> dict:
    """Blocking client for the CLI: send one request, return the answer. Raises OSError on failure."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(orjson.dumps(message) + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"{path}: closed before answering")
            data += chunk
    return orjson.loads(data)

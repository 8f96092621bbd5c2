"""Knock on the mapping daemon from a namespace on the underlay: may this caller subscribe?

    python mapping_probe.py HOST PORT CA NAME=CERT:KEY|NAME=none|NAME=plain …

For each attempt, in order: connect (``plain``: TCP without TLS; ``none``: TLS, no client certificate;
else TLS with that certificate and key), verify the daemon against CA, subscribe to every VPC and ping.
Prints one JSON object: NAME -> "subscribed" (the daemon answered the ping) or "refused: WHY".
Standard library only, like any client a process on the underlay could write.
"""

import asyncio
import json
import ssl
import sys


async def attempt(host: str, port: int, ca: str, how: str) -> str:
    context = None
    if how != "plain":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca)
        if how != "none":
            cert, key = how.split(":")
            context.load_cert_chain(cert, key)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), 5)
    except (OSError, asyncio.TimeoutError) as e:
        return f"refused: {e}"
    try:
        writer.write(b'{"op": "subscribe", "vnis": "*"}\n{"op": "ping"}\n')
        while line := await asyncio.wait_for(reader.readline(), 5):
            if b'"pong"' in line:
                return "subscribed"
        return "refused: closed"
    except (OSError, asyncio.TimeoutError) as e:
        return f"refused: {e}"
    finally:
        writer.close()


async def main(host: str, port: int, ca: str, attempts: list[str]) -> None:
    results = {}
    for item in attempts:
        name, _, how = item.partition("=")
        results[name] = await attempt(host, port, ca, how)
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]))

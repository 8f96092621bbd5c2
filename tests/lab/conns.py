"""Many TCP connections at once, for NAT gateway tests.

    python conns.py serve ADDRESS PORT OUTFILE    accept connections; append "peer_ip peer_port" per
                                                  connection to OUTFILE, answer each line with "ok"
    python conns.py open ADDRESS PORT N           open N connections at once, hold them all open until
                                                  every one is up, send a line on each, read "ok";
                                                  prints "opened N ok M"
"""

import asyncio
import sys


async def serve(address: str, port: int, outfile: str) -> None:
    out = open(outfile, "a", buffering=1)

    async def handle(reader, writer):
        peer = writer.get_extra_info("peername")
        out.write(f"{peer[0]} {peer[1]}\n")
        try:
            while await reader.readline():
                writer.write(b"ok\n")
                await writer.drain()
        except OSError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, address, port, backlog=4096)
    async with server:
        await server.serve_forever()


async def open_many(address: str, port: int, n: int) -> None:
    results = await asyncio.gather(*(asyncio.wait_for(asyncio.open_connection(address, port), 20)
                                     for _ in range(n)), return_exceptions=True)
    conns = [r for r in results if not isinstance(r, BaseException)]
    ok = 0
    for reader, writer in conns:
        writer.write(b"hello\n")
    for reader, writer in conns:
        try:
            if await asyncio.wait_for(reader.readline(), 20) == b"ok\n":
                ok += 1
        except (OSError, asyncio.TimeoutError):
            pass
        writer.close()
    errors = sorted({type(r).__name__ for r in results if isinstance(r, BaseException)})
    print(f"opened {len(conns)} ok {ok} errors {errors}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    else:
        asyncio.run(open_many(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))

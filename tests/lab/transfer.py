"""A long TCP transfer with a known checksum, for tests that disturb the path under it.

    python transfer.py recv PORT                      accept one connection, read it to its end; print one
                                                      JSON line: bytes, sha256, seconds, and the longest
                                                      pause between two reads (max_gap) and when (gap_at)
    python transfer.py send ADDRESS PORT BYTES RATE   send BYTES of ``payload(PORT, BYTES)`` paced at RATE
                                                      bytes/s (catching up after a stall); print one JSON
                                                      line: bytes, sha256, seconds
"""

import hashlib
import json
import random
import socket
import sys
import time

CHUNK = 1 << 16


def payload(seed: int, total: int):
    """The bytes a sender sends: 64 KiB chunks of one seeded random block, each stamped with its number."""
    block = random.Random(seed).randbytes(CHUNK)
    sent = i = 0
    while sent < total:
        chunk = (i.to_bytes(8, "big") + block[8:])[: total - sent]
        yield chunk
        sent += len(chunk)
        i += 1


def expected_sha256(seed: int, total: int) -> str:
    h = hashlib.sha256()
    for chunk in payload(seed, total):
        h.update(chunk)
    return h.hexdigest()


def receive(port: int) -> None:
    server = socket.create_server(("0.0.0.0", port))
    print("ready", flush=True)
    conn, _ = server.accept()
    conn.settimeout(120)
    h, n = hashlib.sha256(), 0
    start = last = time.monotonic()
    gap, gap_at = 0.0, 0.0
    while True:
        data = conn.recv(1 << 20)
        now = time.monotonic()
        if not data:
            break
        if now - last > gap:
            gap, gap_at = now - last, last - start
        last = now
        h.update(data)
        n += len(data)
    print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "seconds": round(last - start, 3),
                      "max_gap": round(gap, 3), "gap_at": round(gap_at, 3)}), flush=True)
    conn.close()


def send(address: str, port: int, total: int, rate: float) -> None:
    s = socket.create_connection((address, port), timeout=120)
    h, n = hashlib.sha256(), 0
    start = time.monotonic()
    for chunk in payload(port, total):
        s.sendall(chunk)
        h.update(chunk)
        n += len(chunk)
        ahead = n / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # the receiver closes once it has read everything
    print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "seconds": round(time.monotonic() - start, 3)}),
          flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        receive(int(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))

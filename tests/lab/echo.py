"""A TCP echo server and a client that keeps one connection busy, for firewall tests in instances.

    python echo.py serve PORT
    python echo.py talk ADDRESS PORT SECONDS     one connection; a line per round trip: ok, or why not
"""

import socket
import sys
import threading
import time


def serve(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port), reuse_port=True)

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def talk(address: str, port: int, seconds: float) -> None:
    s = socket.create_connection((address, port), timeout=3)
    s.settimeout(1.0)
    print("connected", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            s.sendall(b"ping\n")
            print("ok" if s.recv(64) == b"ping\n" else "garbled", flush=True)
        except OSError as e:  # timeout, reset
            print(f"lost {type(e).__name__}", flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        talk(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))

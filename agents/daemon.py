"""What every daemon's entry point shares: ``--config FILE``, ``--check-config``, logging, uvloop."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from typing import Awaitable, Callable

import uvloop

from vswitch import config, logs, metrics, netns


def run(argv: list[str] | None, model, runner: Callable[[object], Awaitable[None]], doc: str) -> None:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--config", required=True, help="the daemon's TOML configuration file")
    p.add_argument("--check-config", action="store_true", help="validate the file and exit")
    args = p.parse_args(argv)
    try:
        cfg = config.load(model, args.config)
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.check_config:
        print(f"{args.config}: ok")
        return
    if getattr(cfg, "netns", None):
        try:
            netns.enter(cfg.netns)  # before any thread exists: setns moves only the calling thread
        except OSError as e:
            print(f"error: {args.config}: netns {cfg.netns!r}: {e}", file=sys.stderr)
            sys.exit(2)
    logs.configure(cfg.log_file, cfg.log_level)
    uvloop.run(runner(cfg))


def started(cfg, component=None) -> None:
    """Call once the daemon serves: it starts the Prometheus endpoint (``cfg.metrics``; the metrics are
    read from ``component`` at scrape time) and tells systemd it is ready (``Type=notify``)."""
    metrics.serve(cfg, component)
    _stop_event()  # catch SIGTERM before saying ready: a stop right after READY=1 is then a clean one
    notify("READY=1", f"STATUS=serving ({getattr(cfg, 'name', '')})")


_stop: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None


def _stop_event() -> asyncio.Event:
    """The event SIGTERM and SIGINT set, made (and the handlers installed) once per event loop."""
    global _stop
    loop = asyncio.get_running_loop()
    if _stop is None or _stop[0] is not loop:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        _stop = (loop, stop)
    return _stop[1]


async def until_signalled() -> None:
    """Return on SIGTERM or SIGINT (also one received since ``started``)."""
    await _stop_event().wait()
    notify("STOPPING=1", "STATUS=stopping")


def notify(*lines: str) -> bool:
    """sd_notify(3): send ``READY=1``, ``STOPPING=1``, ``STATUS=…`` to the service manager when it asked
    for them (``$NOTIFY_SOCKET``, set by systemd for ``Type=notify`` units); a no-op elsewhere (the lab).

    A few lines of our own rather than a library: the protocol is one datagram on an AF_UNIX socket
    (a path, or an abstract name written with a leading '@'), and the PyPI ``sdnotify`` package is that
    same code, unreleased since 2017; python-systemd needs libsystemd's headers to build. Errors are
    swallowed, as sd_notify's are: readiness must never stop a daemon that otherwise works. Returns
    whether a datagram was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":  # vsock:… (systemd 253+, VMs) is not for us
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall("\n".join(lines).encode())
        return True
    except OSError:
        return False

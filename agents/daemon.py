"""What every daemon's entry point shares: ``--config FILE``, ``--check-config``, logging, uvloop."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Awaitable, Callable

import uvloop

from vswitch import config, logs, netns


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


async def until_signalled() -> None:
    """Return on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

"""Entering network namespaces with setns(2), without forking and without a new mount namespace.

``ip netns exec`` also unshares the mount namespace (to remount /sys), so a namespace created by a
program it started is mounted where nobody else can see it. Our daemons therefore enter their network
namespace themselves (``netns`` in their config), at start, while still single-threaded.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns_fd(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def enter(name: str) -> None:
    """Move this (single-threaded) process into network namespace ``name`` (/run/netns/NAME)."""
    with open(f"/run/netns/{name}") as target:
        setns_fd(target.fileno())

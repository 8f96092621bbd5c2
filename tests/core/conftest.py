"""Fixtures shared by the core tests: a real etcd, started once per session.

The etcd is Debian's etcd 3.4 (``scripts/setup`` installs it), on free loopback ports with a throwaway
data dir. Tests that use it take a key prefix of their own, so they never see each other's keys.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def etcd_endpoint():
    """A one-member etcd on loopback with a throwaway data dir: HOST:PORT of its client URL."""
    binary = shutil.which("etcd")
    if binary is None:
        pytest.fail("the etcd binary is missing: scripts/setup installs it (Debian package etcd-server)")
    workdir = tempfile.mkdtemp(prefix="test-store-etcd-")
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    with open(os.path.join(workdir, "etcd.log"), "wb") as log:
        proc = subprocess.Popen([binary, "--name", "t", "--data-dir", os.path.join(workdir, "data"),
                                 "--listen-client-urls", client, "--advertise-client-urls", client,
                                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                                 "--initial-cluster", f"t={peer}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(workdir, "etcd.log"), errors="replace") as f:
                    tail = f.read()[-2000:]
                pytest.fail(f"etcd did not become healthy (exit status {proc.poll()}); its log ends:\n{tail}")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as reply:
                    if b'"true"' in reply.read():
                        break
            except OSError:
                pass
            time.sleep(0.05)
        yield client.removeprefix("http://")
    finally:
        proc.kill()  # SIGKILL to its pid; a no-op if it has already exited
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)

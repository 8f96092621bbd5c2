"""Shared fixtures. Root tests (marked ``root``) build real labs in network namespaces.

Outside CI a root test is skipped when not running as root; in CI (``CI=true``) it fails instead,
so a missing privilege or tool can never pass silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REQUIRED_TOOLS = ("ip", "ping", "curl", "iperf3", "tshark", "dig", "udhcpc", "dhclient")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    root_items = [item for item in items if "root" in item.keywords]
    if root_items and IN_CI:
        raise pytest.UsageError(f"CI must run as root: {len(root_items)} tests need network namespaces")
    for item in root_items:
        item.add_marker(pytest.mark.skip(reason="needs root (network namespaces, TUN)"))


@pytest.fixture(scope="session")
def root_tools():
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"tools missing (scripts/setup installs them): {', '.join(missing)}")


def unique_lab_name() -> str:
    return "t" + uuid.uuid4().hex[:10]


class LabHandle:
    """A running lab plus helpers the tests use."""

    def __init__(self, lab, state):
        self.lab = lab
        self.state = state
        self.name = lab.name

    def ip(self, instance: str) -> str:
        return self.state["instances"][instance]["ip"]

    def run(self, instance: str, *cmd: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(self.lab.exec_argv(instance, list(cmd)), capture_output=True, text=True,
                              timeout=timeout, check=check)

    def spawn(self, instance: str, *cmd: str) -> subprocess.Popen:
        return self.lab.spawn(instance, list(cmd), f"spawn-{instance}-{uuid.uuid4().hex[:6]}")

    def wait_http(self, instance: str, url: str, what: str, timeout: float = 10) -> None:
        """Poll ``url`` with curl from ``instance`` until it answers; fail with ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.run(instance, "curl", "-s", "-m", "1", url).returncode:
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    def in_ns(self, netns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=timeout)

    def status(self, component: str) -> dict:
        from vswitch import control
        return control.request(self.state["components"][component]["socket"], {"op": "status"})

    def component(self, name: str) -> dict:
        return self.state["components"][name]


def start_lab(topology_path: str):
    from agents.lab import Lab
    from vswitch.topology import load_topology

    lab = Lab(unique_lab_name())
    try:
        state = lab.up(load_topology(topology_path), topology_path, say=lambda m: None)
    except BaseException:
        lab.down(quiet=True)
        raise
    return LabHandle(lab, state)


@pytest.fixture
def lab_factory(root_tools):
    """Start labs from topology files; every one is torn down after the test, also on failure."""
    made = []

    def make(topology_path: str) -> LabHandle:
        handle = start_lab(topology_path)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        handle.lab.down(quiet=True)


@pytest.fixture(scope="module")
def demo_lab(root_tools):
    """One demo lab shared by a module's tests (bringing a lab up takes ~2 s)."""
    handle = start_lab(os.path.join(os.path.dirname(__file__), "..", "configs", "demo.yaml"))
    yield handle
    handle.lab.down(quiet=True)

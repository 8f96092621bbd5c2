"""The five daemons of a deployment, by role: the name of each one's command (``vpc-ROLE``), systemd unit
(``vpc-ROLE.service``) and configuration file (``/etc/userspace-vpc/ROLE.toml``), and the module in
``agents/`` whose ``main`` it runs. The lab starts its daemons with these same commands."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROLES = {  # role -> module
    "control-plane": "control_plane",
    "mapping-daemon": "mapping_daemon",
    "edge": "edge_agent",
    "hyperplane": "hyperplane_agent",
    "host-agent": "host_agent",
}
BY_MODULE = {module: role for role, module in ROLES.items()}
CONFIG_DIR = "/etc/userspace-vpc"


def script(role: str) -> str:
    return f"vpc-{role}"


def scripts_dir() -> Path:
    """Where this Python's console scripts are (a virtual environment's bin/)."""
    return Path(sys.executable).parent


def command(role: str) -> list[str]:
    """The command line that starts ``role``: its console script next to this Python, else (the project
    not installed, only on the path) ``python -m agents.MODULE``."""
    path = scripts_dir() / script(role)
    if path.exists():
        return [str(path)]
    return [sys.executable, "-m", f"agents.{ROLES[role]}"]


def main(role: str, argv: list[str] | None = None) -> None:
    importlib.import_module(f"agents.{ROLES[role]}").main(argv)

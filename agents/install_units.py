"""``vpc install-units``: put the systemd units of ``configs/systemd/`` in place, with ``ExecStart=`` at the
real ``vpc-ROLE`` scripts, and the example configurations beside them, never over an existing file.

    PREFIX/etc/systemd/system/vpc-ROLE.service, vpc.target   the units (ours: replaced when changed)
    PREFIX/etc/userspace-vpc/examples/ROLE.toml              every role's example (kept if present)
    PREFIX/etc/userspace-vpc/ROLE.toml                       for each ``--role``: this machine's roles,
                                                             from the example (kept if present)
    PREFIX/etc/userspace-vpc/admin.token                     with ``--role control-plane``: a new random
                                                             admin token, unless one is there

A unit starts only where its ROLE.toml exists, so ``--role`` (or copying an example by hand) is what
decides the roles of a machine. ``--prefix`` other than / stages a tree (a package, a test): nothing is
reloaded, and ``--enable`` then makes its links with ``systemctl --root``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from agents import roles

SOURCE = Path(__file__).resolve().parent.parent / "configs" / "systemd"
UNIT_BIN = "/usr/local/bin/"  # what the shipped units' ExecStart= says; replaced by --bin
TARGET = "vpc.target"


class InstallError(RuntimeError):
    pass


def unit_name(role: str) -> str:
    return f"vpc-{role}.service"


def render_unit(text: str, bin_dir: Path) -> str:
    return text.replace(f"ExecStart={UNIT_BIN}", f"ExecStart={bin_dir}/")


def _write(path: Path, data: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.chmod(tmp, mode)  # whatever the umask
    tmp.replace(path)


def install(prefix: str = "/", bin_dir: str | None = None, enable: bool = False, for_roles: list[str] = (),
            say=print) -> list[str]:
    """Install; returns (and says) one line per thing done. Raises InstallError before changing anything
    when a script or a source file is missing."""
    root = Path(prefix)
    bin_path = Path(bin_dir).resolve() if bin_dir else roles.scripts_dir()
    for role in for_roles:
        if role not in roles.ROLES:
            raise InstallError(f"unknown role {role!r}; one of: {', '.join(roles.ROLES)}")
    missing = [str(bin_path / roles.script(r)) for r in roles.ROLES if not os.access(bin_path / roles.script(r), os.X_OK)]
    if missing:
        raise InstallError(f"not executable: {', '.join(missing)} (install the project: pip install .; or give --bin)")
    if not SOURCE.is_dir():
        raise InstallError(f"{SOURCE}: no units to install (run from the project's source tree)")
    done: list[str] = []

    def did(line: str) -> None:
        done.append(line)
        say(line)

    units = root / "etc/systemd/system"
    etc = root / roles.CONFIG_DIR.lstrip("/")
    (etc / "examples").mkdir(parents=True, exist_ok=True)
    units.mkdir(parents=True, exist_ok=True)
    for name in [*(unit_name(r) for r in roles.ROLES), TARGET]:
        text = render_unit((SOURCE / name).read_text(), bin_path)
        dest = units / name
        old = dest.read_text() if dest.exists() else None
        if old == text:
            did(f"unchanged {dest}")
            continue
        _write(dest, text)
        did(f"{'updated' if old is not None else 'installed'} {dest}")
    for role in roles.ROLES:
        src = (SOURCE / f"{role}.toml").read_text()
        places = [etc / "examples" / f"{role}.toml"] + ([etc / f"{role}.toml"] if role in for_roles else [])
        for dest in places:
            if dest.exists():
                did(f"kept {dest} (exists)")
            else:
                _write(dest, src, 0o644)  # no secret in it; the dynamic users must read it
                did(f"installed {dest}")
    if "control-plane" in for_roles:
        token = etc / "admin.token"
        if token.exists():
            did(f"kept {token} (exists)")
        else:
            _write(token, secrets.token_urlsafe(32) + "\n", 0o600)
            did(f"created {token}: copy it to every other machine of the deployment (mode 0600)")
    systemctl = shutil.which("systemctl")
    live = root.resolve() == Path("/") and systemctl is not None and Path("/run/systemd/system").is_dir()
    if live:
        _run([systemctl, "daemon-reload"])
        did("systemctl daemon-reload")
    if enable:
        if systemctl is None:
            raise InstallError("--enable: no systemctl on this machine")
        names = [TARGET, *(unit_name(r) for r in (for_roles or roles.ROLES))]
        _run([systemctl, *([] if root.resolve() == Path("/") else [f"--root={root}"]), "enable", *names])
        did(f"systemctl enable {' '.join(names)}" + ("" if root.resolve() == Path("/") else f" (in {root})"))
    if not enable:
        did(f"next: edit {etc}/ROLE.toml for this machine's roles, then `systemctl enable --now {TARGET}`")
    return done


def _run(argv: list[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode:
        raise InstallError(f"`{' '.join(argv)}` failed: {p.stderr.strip() or p.stdout.strip()}")

"""Deployment on real machines (issue 7): the daemons' commands, ``--check-config``, readiness (sd_notify),
the systemd units of ``configs/systemd/`` and ``vpc install-units``. No root needed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from agents import daemon, install_units, roles
from vswitch import config

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "configs" / "systemd"
BIN = roles.scripts_dir()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MODELS = {"control-plane": config.ControlPlaneConfig, "mapping-daemon": config.MappingDaemonConfig,
          "edge": config.EdgeConfig, "hyperplane": config.HyperplaneConfig, "host-agent": config.HostAgentConfig}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections, each a list of (key, value) in order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(sections, section: str, key: str) -> list[str]:
    return [v for k, v in sections.get(section, []) if k == key]


# --- the commands ---------------------------------------------------------------------------------------
def test_every_role_has_a_console_script_that_runs_its_module():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for role, module in roles.ROLES.items():
        assert scripts[f"vpc-{role}"] == f"agents.{module}:main"
        assert os.access(BIN / f"vpc-{role}", os.X_OK), "reinstall the project: pip install -e '.[test]'"
        # The lab starts each daemon with that same script (agents/lab.py _start).
        assert roles.command(role) == [str(BIN / f"vpc-{role}")]


def test_the_lab_recognises_a_daemon_started_by_its_script(tmp_path):
    """Lab._alive finds a daemon by its config path on /proc/PID/cmdline: still true through the script's
    interpreter line."""
    from agents.lab import _alive
    cfg = tmp_path / "mapping.toml"
    cfg.write_text(tomli_w.dumps({"name": "m", "control_socket": str(tmp_path / "m.sock"),
                                  "listen": f"127.0.0.1:{free_port()}"}))
    p = subprocess.Popen([*roles.command("mapping-daemon"), "--config", str(cfg)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10  # the new command line shows once exec has set it up
        while not _alive(p.pid, str(cfg)):
            assert time.monotonic() < deadline and p.poll() is None, "not recognised"
            time.sleep(0.01)
        assert not _alive(p.pid, str(tmp_path / "other.toml"))
    finally:
        p.terminate()
        p.wait(10)


# --- --check-config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", roles.ROLES)
def test_every_example_config_passes_check_config(role):
    path = SYSTEMD / f"{role}.toml"
    for argv in ([str(BIN / f"vpc-{role}")], [str(BIN / "vpc"), "agent", role]):
        p = subprocess.run([*argv, "--config", str(path), "--check-config"], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0 and p.stdout.strip() == f"{path}: ok", (argv, p.stdout, p.stderr)


def _mutate(role: str, change) -> dict:
    data = tomllib.loads((SYSTEMD / f"{role}.toml").read_text())
    change(data)
    return data


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _drop(key):
    return lambda d: d.pop(key)


def _fleet_ip(value):
    return lambda d: d["hyperplane"][0].__setitem__("underlay_ip", value)


# role -> cases: (what is wrong, the change, what the message must say)
BAD = {
    "control-plane": [("wrong type", _set("listen", 8080), "listen: "),
                      ("missing field", _drop("admin_token_file"), "admin_token_file: Field required"),
                      ("unknown key", _set("listen_address", "192.0.2.1:8080"),
                       "listen_address: Extra inputs are not permitted"),
                      ("bad store", _set("store", "etcd://192.0.2.1"), "store: "),
                      ("no listener", lambda d: (d.pop("listen"), d.pop("unix_socket")), "set listen, unix_socket")],
    "mapping-daemon": [("wrong type", _set("metrics", 9101), "metrics: "),
                       ("missing field", _drop("listen"), "listen: Field required"),
                       ("unknown key", _set("state_dri", "/var/lib/x"), "state_dri: Extra inputs are not permitted"),
                       ("unknown tls key", _set("tls", {"ca": "a", "cert": "b", "key": "c", "pasword": "d"}),
                        "tls.pasword: Extra inputs are not permitted")],
    "edge": [("wrong type", _set("underlay_port", "6081x"), "underlay_port: "),
             ("missing field", _drop("underlay_ip"), "underlay_ip: Field required"),
             ("unknown key", _set("internet_devices", "igw0"), "internet_devices: Extra inputs are not permitted")],
    "hyperplane": [("wrong type", _set("hyperplane_shard_size", "two"), "hyperplane_shard_size: "),
                   ("missing field", _drop("edge"), "edge: Field required"),
                   ("unknown key", _set("mapping", "192.0.2.1:6080"), "mapping: Extra inputs are not permitted"),
                   ("bad fleet address", _fleet_ip("192.0.2.300"), "hyperplane.0.underlay_ip: "),
                   ("not in its fleet", _set("name", "hp-9"), "name 'hp-9' is not in the hyperplane fleet list")],
    "host-agent": [("wrong type", _set("hyperplane", "hp-1"), "hyperplane: "),
                   ("missing field", _drop("mapping"), "mapping: Field required"),
                   ("unknown key", _set("underlay_mtu", 9001), "underlay_mtu: Extra inputs are not permitted"),
                   ("bad address", _set("underlay_ip", "192.0.2.256"), "underlay_ip: ")],
}


@pytest.mark.parametrize("role,case", [(r, c) for r, cases in BAD.items() for c in cases],
                         ids=[f"{r}-{c[0]}" for r, cases in BAD.items() for c in cases])
def test_a_bad_field_is_named(tmp_path, role, case):
    _what, change, message = case
    path = tmp_path / f"{role}.toml"
    path.write_text(tomli_w.dumps(_mutate(role, change)))
    with pytest.raises(config.ConfigError) as e:
        config.load(MODELS[role], str(path))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


@pytest.mark.parametrize("role", roles.ROLES)
def test_check_config_refuses_a_bad_file_with_exit_2_and_the_field(tmp_path, role):
    _what, change, message = BAD[role][0]  # a wrong type
    path = tmp_path / f"{role}.toml"
    path.write_text(tomli_w.dumps(_mutate(role, change)))
    p = subprocess.run([str(BIN / "vpc"), "agent", role, "--config", str(path), "--check-config"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith(f"error: {path}: ") and message in p.stderr, p.stderr
    assert p.stdout == ""


def test_check_config_refuses_a_file_that_is_not_toml_or_not_there(tmp_path):
    role = "mapping-daemon"
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    p = subprocess.run([str(BIN / f"vpc-{role}"), "--config", str(broken), "--check-config"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and f"{broken}: " in p.stderr and "line 1" in p.stderr, p.stderr
    p = subprocess.run([str(BIN / f"vpc-{role}"), "--config", str(tmp_path / "absent.toml"), "--check-config"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "absent.toml: No such file or directory" in p.stderr, p.stderr


# --- readiness: sd_notify -------------------------------------------------------------------------------
def _notify_socket(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(30)
    return s


def _messages(sock: socket.socket, want: bytes) -> list[bytes]:
    """Datagrams until one has the line ``want``."""
    got = []
    while True:
        got.append(sock.recv(4096))
        if want in got[-1].split(b"\n"):
            return got


def _daemon_config(role: str, tmp_path: Path, port: int) -> Path:
    if role == "mapping-daemon":
        body = {"name": "mapping", "control_socket": str(tmp_path / "m.sock"), "listen": f"127.0.0.1:{port}",
                "state_file": str(tmp_path / "mappings.json")}
    else:
        body = {"name": "cp", "listen": f"127.0.0.1:{port}", "store": f"sqlite:///{tmp_path / 'cp.db'}",
                "admin_token_file": str(tmp_path / "admin.token"), "flow_log_dir": str(tmp_path / "flow-logs")}
    path = tmp_path / f"{role}.toml"
    path.write_text(tomli_w.dumps(body))
    return path


@pytest.mark.parametrize("role", ["mapping-daemon", "control-plane"])
def test_a_daemon_tells_systemd_it_is_ready_once_it_listens_and_when_it_stops(tmp_path, role):
    port = free_port()
    cfg = _daemon_config(role, tmp_path, port)
    sock = _notify_socket(str(tmp_path / "notify.sock"))
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    p = subprocess.Popen([str(BIN / f"vpc-{role}"), "--config", str(cfg)], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        ready = _messages(sock, b"READY=1")
        # Ready means serving: the port accepts at once, with no retry.
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        assert any(line.startswith(b"STATUS=") for m in ready for line in m.split(b"\n")), ready
        p.send_signal(signal.SIGTERM)
        assert b"STOPPING=1" in b"\n".join(_messages(sock, b"STOPPING=1"))
        assert p.wait(20) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        sock.close()


def test_notify_reaches_an_abstract_socket_and_is_quiet_without_one(monkeypatch):
    name = f"vpc-test-notify-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert daemon.notify("READY=1", "STATUS=serving")
        assert s.recv(4096) == b"READY=1\nSTATUS=serving"
    finally:
        s.close()
    assert not daemon.notify("READY=1")  # nobody listens any more: no error, just False
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not daemon.notify("READY=1")  # the lab: no service manager


# --- the units ------------------------------------------------------------------------------------------
SERVICES = [f"vpc-{r}.service" for r in roles.ROLES]


def test_every_role_has_a_unit_with_readiness_restart_and_directories():
    for role in roles.ROLES:
        u = unit(SYSTEMD / f"vpc-{role}.service")
        assert values(u, "Service", "Type") == ["notify"]
        assert values(u, "Service", "ExecStart") == [f"/usr/local/bin/vpc-{role} --config /etc/userspace-vpc/{role}.toml"]
        assert values(u, "Service", "Restart") == ["on-failure"] and values(u, "Service", "RestartSec") == ["1"]
        assert values(u, "Service", "RestartPreventExitStatus") == ["2"]  # a bad config: no retry loop
        assert values(u, "Service", "StateDirectory") == [f"userspace-vpc/{role}"]
        assert values(u, "Service", "RuntimeDirectory") == [f"userspace-vpc/{role}"]
        assert values(u, "Service", "NoNewPrivileges") == ["yes"]
        assert values(u, "Unit", "ConditionPathExists") == [f"/etc/userspace-vpc/{role}.toml"]
        assert "network-online.target" in " ".join(values(u, "Unit", "After"))
        assert "network-online.target" in " ".join(values(u, "Unit", "Wants"))
        assert values(u, "Unit", "Requires") == [] and values(u, "Unit", "BindsTo") == []
        assert values(u, "Install", "WantedBy") == ["vpc.target"]
    target = unit(SYSTEMD / "vpc.target")
    assert set(" ".join(values(target, "Unit", "Wants")).split()) == set(SERVICES)
    assert values(target, "Install", "WantedBy") == ["multi-user.target"]


def test_capabilities_are_what_each_role_needs():
    caps = {"control-plane": "", "mapping-daemon": "", "hyperplane": "", "edge": "CAP_NET_ADMIN",
            "host-agent": "CAP_NET_ADMIN CAP_SYS_ADMIN"}
    for role, want in caps.items():
        u = unit(SYSTEMD / f"vpc-{role}.service")
        assert values(u, "Service", "CapabilityBoundingSet") == [want], role
        assert values(u, "Service", "AmbientCapabilities") == [want], role
        if role == "host-agent":  # root (namespaces), in the machine's mount namespace
            assert values(u, "Service", "User") == ["root"]
            for private in ("ProtectSystem", "PrivateTmp", "PrivateDevices", "DynamicUser", "ProtectHome",
                            "ProtectKernelTunables", "ReadWritePaths"):
                assert values(u, "Service", private) == [], private
        else:
            assert values(u, "Service", "DynamicUser") == ["yes"], role
    for role in ("edge", "hyperplane", "host-agent"):  # ordered after, never blocked by, the others
        u = unit(SYSTEMD / f"vpc-{role}.service")
        for dep in ("After", "Wants"):
            assert {"vpc-mapping-daemon.service", "vpc-control-plane.service"} <= set(
                " ".join(values(u, "Unit", dep)).split()), (role, dep)


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if IN_CI:
            pytest.fail("systemd-analyze missing (scripts/setup installs the systemd package)")
        pytest.skip("systemd-analyze missing (apt-get install systemd)")
    return found


def _verify(analyze: str, path: Path) -> subprocess.CompletedProcess:
    # --man=no: the units' Documentation= is not looked up; systemd-analyze only warns (exit 0) about
    # unknown keys or bad values, so any output at all is a failure.
    return subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=120,
                          cwd=path.parent)


def test_install_units_then_systemd_analyze_verify_passes_on_each(tmp_path):
    analyze = _systemd_analyze()
    lines = install_units.install(str(tmp_path), str(BIN), say=lambda _line: None)
    units = tmp_path / "etc/systemd/system"
    for name in [*SERVICES, "vpc.target"]:
        path = units / name
        assert f"installed {path}" in lines
        if name.endswith(".service"):
            assert f"ExecStart={BIN}/{name.removesuffix('.service')} --config" in path.read_text()
        p = _verify(analyze, path)
        assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), (name, p.stdout, p.stderr)
    # The check has teeth: a typo is reported.
    bad = units / "vpc-broken.service"
    bad.write_text((units / "vpc-edge.service").read_text().replace("Restart=on-failure", "Restart=on-falure"))
    p = _verify(analyze, bad)
    assert "restart" in (p.stdout + p.stderr).lower(), (p.stdout, p.stderr)


def test_install_units_never_overwrites_a_config_and_makes_a_token(tmp_path):
    etc = tmp_path / "etc/userspace-vpc"
    etc.mkdir(parents=True)
    (etc / "host-agent.toml").write_text("# mine\n")
    out = []
    install_units.install(str(tmp_path), str(BIN), for_roles=["host-agent", "control-plane"], say=out.append)
    assert (etc / "host-agent.toml").read_text() == "# mine\n"
    assert f"kept {etc / 'host-agent.toml'} (exists)" in out
    assert (etc / "control-plane.toml").read_text() == (SYSTEMD / "control-plane.toml").read_text()
    assert not (etc / "edge.toml").exists()  # not a role of this machine: its unit's condition keeps it off
    for role in roles.ROLES:
        assert (etc / "examples" / f"{role}.toml").read_text() == (SYSTEMD / f"{role}.toml").read_text()
    token = etc / "admin.token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text().strip()) >= 32
    before = token.read_text()
    out.clear()
    install_units.install(str(tmp_path), str(BIN), for_roles=["control-plane"], say=out.append)
    assert token.read_text() == before and f"unchanged {tmp_path / 'etc/systemd/system/vpc.target'}" in out
    assert not any(line.startswith("systemctl daemon-reload") for line in out)  # not the live root


def test_vpc_install_units_command_and_a_missing_script(tmp_path):
    p = subprocess.run([str(BIN / "vpc"), "install-units", "--prefix", str(tmp_path), "--bin", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "not executable" in p.stderr and "vpc-control-plane" in p.stderr, p.stderr
    assert not (tmp_path / "etc").exists()  # refused before changing anything
    p = subprocess.run([str(BIN / "vpc"), "install-units", "--prefix", str(tmp_path), "--role", "edge"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"installed {tmp_path / 'etc/userspace-vpc/edge.toml'}" in p.stdout
    assert f"ExecStart={BIN}/vpc-edge " in (tmp_path / "etc/systemd/system/vpc-edge.service").read_text()


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="no systemctl")
def test_install_units_enable_links_the_target_and_the_roles(tmp_path):
    install_units.install(str(tmp_path), str(BIN), enable=True, for_roles=["host-agent"], say=lambda _l: None)
    units = tmp_path / "etc/systemd/system"
    assert (units / "multi-user.target.wants/vpc.target").is_symlink()
    assert (units / "vpc.target.wants/vpc-host-agent.service").is_symlink()


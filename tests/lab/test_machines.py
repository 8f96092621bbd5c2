"""Three machines, no lab: each daemon started from its config file by the command line its systemd unit
runs (``vpc-<role> --config FILE``), inside a network namespace standing for a machine on a shared
underlay bridge. The control plane keeps its state in etcd; the control channels are mutual TLS with
certificates from ``vpc pki``. curl works between instances on different machines.

    <p>.net   bridge br0: the underlay network, 192.0.2.0/24 (documentation space), MTU 1500 like most
              VMs' networks: the host agents give instances an MTU of 1436 (``eni_mtu``) so that nothing
              is fragmented on the underlay
    <p>.m1    192.0.2.1  etcd, control plane (TCP 8443, TLS; a Unix socket for the test's admin calls),
                         mapping daemon (TCP 6080, TLS), edge (relay only)
    <p>.m2    192.0.2.2  host agent host-a (instance client)
    <p>.m3    192.0.2.3  host agent host-b (instance web)
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import tomli_w

from agents.lab import terminate
from vswitch.topology import parse_topology

pytestmark = pytest.mark.root
BIN = Path(sys.executable).parent
MACHINES = {"m1": "192.0.2.1", "m2": "192.0.2.2", "m3": "192.0.2.3"}
HOSTS = {"host-a": "m2", "host-b": "m3"}
UNDERLAY_MTU, ENI_MTU = 1500, 1436  # 1436 = 1500 - 64 (outer IPv4 20, UDP 8, Geneve 8 + options 28)
TOPOLOGY = {"hosts": [{"name": "host-a"}, {"name": "host-b"}],
            "vpcs": [{"name": "prod", "cidr": "10.0.0.0/16", "subnets": [{"name": "app", "cidr": "10.0.1.0/24"}],
                      "instances": [{"name": "web", "subnet": "app", "host": "host-b", "ip": "10.0.1.10"},
                                    {"name": "client", "subnet": "app", "host": "host-a"}]}]}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p


class Deployment:
    def __init__(self, tmp: Path):
        self.prefix = "mm" + uuid.uuid4().hex[:8]
        self.dir = tmp
        self.pki = tmp / "pki"
        self.procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []

    def ns(self, machine: str) -> str:
        return f"{self.prefix}.{machine}"

    # --- the machines and their network -------------------------------------------------------------
    def network(self) -> None:
        net = self.ns("net")
        self._netns(net)
        sh("ip", "-n", net, "link", "add", "br0", "mtu", str(UNDERLAY_MTU), "type", "bridge")
        sh("ip", "-n", net, "link", "set", "br0", "up")
        for i, (m, ip) in enumerate(MACHINES.items()):
            self._netns(self.ns(m))
            sh("ip", "-n", self.ns(m), "link", "add", "eth0", "mtu", str(UNDERLAY_MTU), "type", "veth", "peer",
               "name", f"p{i}", "netns", net, "mtu", str(UNDERLAY_MTU))
            sh("ip", "-n", net, "link", "set", f"p{i}", "master", "br0", "up")
            sh("ip", "-n", self.ns(m), "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", self.ns(m), "link", "set", "eth0", "up")
            sh("ip", "-n", self.ns(m), "link", "set", "lo", "up")

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)

    # --- daemons, as systemd starts them ------------------------------------------------------------
    def start(self, machine: str, argv: list[str], name: str) -> subprocess.Popen:
        out = open(self.dir / f"{name}.out", "wb")
        # nsenter --net, not `ip netns exec`: a machine is its network namespace only. (`ip netns exec` also
        # gives the program a mount namespace of its own, where the namespaces a host agent makes for its
        # instances would stay invisible to the rest of this machine.)
        p = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.ns(machine)}", *argv], stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.procs.append(p)
        return p

    def config(self, role: str, body: dict) -> str:
        path = self.dir / f"{role}.toml"
        path.write_text(tomli_w.dumps(body))
        return str(path)

    def daemon(self, machine: str, role: str, name: str, body: dict) -> subprocess.Popen:
        """``vpc-<role> --config FILE``: the unit's ExecStart, in the machine's namespace."""
        path = self.config(name, body)
        check = sh(str(BIN / f"vpc-{role}"), "--config", path, "--check-config", check=False)
        assert check.returncode == 0, check.stderr
        return self.start(machine, [str(BIN / f"vpc-{role}"), "--config", path], name)

    def tls(self, name: str, ip: str, role: str) -> dict:
        sh(str(BIN / "vpc"), "pki", "issue", role, name, "--ip", ip, "--dir", str(self.pki))
        return {"ca": str(self.pki / "ca.crt"), "cert": str(self.pki / f"{name}.crt"),
                "key": str(self.pki / f"{name}.key")}

    def wait_socket(self, path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert proc.poll() is None, (self.dir / f"{path.stem}.out").read_text()[-2000:]
            assert time.monotonic() < deadline, f"{path} did not appear"
            time.sleep(0.05)

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                terminate(p.pid)  # only processes this test started, by pid
        for ns in sh("ip", "netns", "list", check=False).stdout.split("\n"):
            name = ns.split(" ")[0]
            if name.startswith(self.prefix + ".") and name not in self.namespaces:
                self.namespaces.append(name)  # instances the host agents made
        for ns in self.namespaces:
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                terminate(int(pid), grace=0.5)
            sh("ip", "netns", "del", ns, check=False)
        for etc in Path("/etc/netns").glob(f"{self.prefix}.*"):
            shutil.rmtree(etc, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment(root_tools, tmp_path_factory):
    if shutil.which("etcd") is None:
        pytest.fail("etcd is missing: scripts/setup installs it")
    d = Deployment(tmp_path_factory.mktemp("machines"))
    try:
        d.network()
        m1 = MACHINES["m1"]
        sh(str(BIN / "vpc"), "pki", "init", "--dir", str(d.pki))
        etcd = d.start("m1", ["etcd", "--name", "m1", "--data-dir", str(d.dir / "etcd"),
                              "--listen-client-urls", f"http://{m1}:2379", "--advertise-client-urls", f"http://{m1}:2379",
                              "--listen-peer-urls", f"http://{m1}:2380",
                              "--initial-advertise-peer-urls", f"http://{m1}:2380",
                              "--initial-cluster", f"m1=http://{m1}:2380"], "etcd")
        admin_token = d.dir / "admin.token"
        api_socket = d.dir / "api.sock"
        cp = d.daemon("m1", "control-plane", "control-plane", {
            "listen": f"{m1}:8443", "unix_socket": str(api_socket), "store": f"etcd://{m1}:2379",
            "admin_token_file": str(admin_token), "flow_log_dir": str(d.dir / "flow-logs"),
            "tls": d.tls("control-plane", m1, "control-plane")})
        d.wait_socket(api_socket, cp)
        from vswitch.controlplane.client import ApiClient
        deadline = time.monotonic() + 30
        while True:  # etcd may still be electing itself
            try:
                admin = ApiClient(f"unix://{api_socket}", admin_token.read_text().strip())
                admin.call("GET", "/v1/hosts")
                break
            except Exception:
                assert etcd.poll() is None and cp.poll() is None, (d.dir / "control-plane.out").read_text()[-2000:]
                assert time.monotonic() < deadline
                time.sleep(0.2)
        for host, machine in HOSTS.items():
            admin.call("POST", "/v1/hosts", {"name": host, "underlay_ip": MACHINES[machine]})
        account = admin.call("POST", "/v1/accounts", {"name": "prod"})
        control_plane = f"https://{m1}:8443"
        infra = {"control_plane": control_plane, "token_file": str(admin_token)}
        d.daemon("m1", "mapping-daemon", "mapping", {
            "name": "mapping", "control_socket": str(d.dir / "mapping.sock"), "listen": f"{m1}:6080",
            "state_file": str(d.dir / "mappings.json"), "tls": d.tls("mapping", m1, "mapping"), **infra})
        d.daemon("m1", "edge", "edge", {
            "name": "edge", "control_socket": str(d.dir / "edge.sock"), "underlay_ip": m1, "mapping": f"{m1}:6080",
            "tls": d.tls("edge", m1, "edge"), **infra})
        for host, machine in HOSTS.items():
            ip = MACHINES[machine]
            d.daemon(machine, "host-agent", host, {
                "name": host, "control_socket": str(d.dir / f"{host}.sock"), "underlay_ip": ip,
                "mapping": f"{m1}:6080", "edge": m1, "instance_netns_prefix": f"{d.prefix}.i.", "eni_mtu": ENI_MTU,
                "tls": d.tls(host, ip, "host"), **infra})
        from agents.apply import apply_topology
        d.api = ApiClient(f"unix://{api_socket}", account["token"])
        apply_topology(d.api, parse_topology(TOPOLOGY))
        d.admin = admin
        yield d
    finally:
        d.down()


def in_instance(d: Deployment, name: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", f"{d.prefix}.i.{name}", *cmd], capture_output=True, text=True,
                          timeout=timeout)


def test_curl_between_instances_on_different_machines(deployment):
    d = deployment
    deadline = time.monotonic() + 30
    while not all(Path(f"/run/netns/{d.prefix}.i.{n}").exists() for n in ("client", "web")) or \
            in_instance(d, "client", "ip", "addr", "show", "eth0").returncode:
        assert time.monotonic() < deadline, "instances not attached: " + "".join(
            (d.dir / f"{h}.out").read_text()[-1000:] for h in HOSTS)
        time.sleep(0.1)
    www = d.dir / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("hello from machine 3\n")
    server = subprocess.Popen(["ip", "netns", "exec", f"{d.prefix}.i.web", sys.executable, "-m", "http.server", "80",
                               "--directory", str(www)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    d.procs.append(server)
    deadline = time.monotonic() + 20
    while True:
        p = in_instance(d, "client", "curl", "-sS", "-m", "2", "http://10.0.1.10/")
        if p.returncode == 0:
            break
        assert time.monotonic() < deadline, p.stderr
        time.sleep(0.2)
    assert p.stdout == "hello from machine 3\n"
    assert in_instance(d, "web", "ping", "-c", "2", "-W", "2", "10.0.1.4").returncode == 0
    assert f"mtu {ENI_MTU} " in in_instance(d, "client", "ip", "link", "show", "eth0").stdout
    # A bulk transfer across the 1500-byte underlay: a 4 MiB file, byte for byte.
    (www / "big").write_bytes(bytes(range(256)) * 16384)
    p = in_instance(d, "client", "sh", "-c", "curl -sS -m 20 http://10.0.1.10/big | sha256sum")
    assert p.stdout.split()[0] == hashlib.sha256(bytes(range(256)) * 16384).hexdigest(), p.stderr


def test_the_state_lives_in_etcd(deployment):
    d = deployment
    vpcs = d.api.call("GET", "/v1/vpcs")
    assert [v["name"] for v in vpcs] == ["prod"]
    read = ("import asyncio, json\n"
            "from vswitch.store import open_store\n"
            "async def main():\n"
            "    s = open_store('etcd://192.0.2.1:2379')\n"
            "    print(json.dumps([kv.key for kv in await s.range('/res/')]))\n"
            "    await s.close()\n"
            "asyncio.run(main())\n")
    p = subprocess.run(["ip", "netns", "exec", d.ns("m1"), sys.executable, "-c", read], capture_output=True,
                       text=True, timeout=30, cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stderr
    assert any(v["id"] in p.stdout for v in vpcs), p.stdout


def test_a_process_on_the_underlay_without_credentials_is_refused(deployment):
    """From machine 3 (on the underlay), without a certificate: the mapping daemon and the control
    plane's TCP listener refuse at the TLS handshake, so nothing is read or pushed."""
    d = deployment
    probe = (
        "import socket, ssl, sys\n"
        "for port in (6080, 8443):\n"
        "    s = socket.create_connection(('192.0.2.1', port), timeout=3)\n"
        "    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
        "    try:\n"
        "        t = ctx.wrap_socket(s)\n"
        "        t.sendall(b'{\"op\": \"subscribe\", \"vnis\": null}\\n' if port == 6080 else b'GET /v1/infra/desired HTTP/1.0\\r\\n\\r\\n')\n"
        "        data = t.recv(4096)\n"
        "        print(port, 'read', len(data))\n"
        "    except (ssl.SSLError, OSError) as e:\n"
        "        print(port, 'refused', type(e).__name__)\n"
        "    s = socket.create_connection(('192.0.2.1', port), timeout=3)\n"
        "    s.sendall(b'{\"op\": \"subscribe\", \"vnis\": null}\\n')\n"
        "    try:\n"
        "        data = s.recv(4096)\n"
        "        print(port, 'plain', len(data), data[:40])\n"
        "    except OSError as e:\n"
        "        print(port, 'plain refused', type(e).__name__)\n")
    p = subprocess.run(["ip", "netns", "exec", d.ns("m3"), sys.executable, "-c", probe], capture_output=True,
                       text=True, timeout=60)
    lines = p.stdout.split("\n")
    assert p.returncode == 0, p.stderr
    for port in ("6080", "8443"):
        # TLS 1.3 finishes the client's side of the handshake before the server checks the (missing)
        # certificate: the server then closes, and not one byte of state is read.
        tls = next(line for line in lines if line.startswith(port + " ") and "plain" not in line)
        assert "refused" in tls or tls == f"{port} read 0", lines
        plain = next(line for line in lines if line.startswith(port + " plain"))
        assert "refused" in plain or plain == f"{port} plain 0 b''", lines

"""The lab: a whole VPC deployment on one machine, in network namespaces.

    <lab>.underlay          bridge br0 (jumbo MTU): the "physical network" between hosts
    <lab>.mapping           the mapping daemon                      198.18.0.2
    <lab>.edge              the Blackfoot edge agent                198.18.0.3
    <lab>.hp.<node>         Hyperplane nodes (NAT gateways, load balancers)  198.18.0.21, .22, …
    <lab>.host.<host>       one host agent per host                 198.18.0.11, .12, …
    <lab>.inst.<instance>   one instance each; its ENI (a TUN device, or a TAP for a "VM") belongs to its
                            host's agent; a TAP instance runs a real DHCP client (busybox udhcpc)
    <lab>.internet          the internet: 203.0.113.0/24 and 2001:db8:ff::/64, a web server and a DNS
                            resolver, behind the edge

The underlay uses 198.18.0.0/24 (RFC 2544, benchmarking) and exists only inside these namespaces:
nothing is added to the root namespace. Every name starts with the lab name and a dot, so several
labs (and test runs) coexist and ``down`` finds everything of its own, even after a crash or kill -9.

Namespaces and links are made with the ``ip`` command: the lab is orchestration, like a script, and
``ip`` output is what a user debugging it reads. Agents themselves use netlink (pyroute2).

Credentials: ``up`` creates a CA in ``/run/vpc/<lab>/pki`` (``vswitch.pki``), issues every component a
certificate of its role (SAN: its underlay address) and writes ``tls = {ca, cert, key}`` into every
daemon's config, so the mapping daemon's channel (198.18.0.2:6080) is mutual TLS: a process on the
underlay without a certificate of the lab's CA cannot subscribe. ``pki/lab.admin.crt`` (role admin) is
the user's. The control plane still listens only on its Unix socket.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import tomli_w

from agents import roles
from vswitch import control, instance_ns, pki
from vswitch.topology import Topology

STATE_ROOT = Path(os.environ.get("VPC_STATE_ROOT", "/run/vpc"))
UNDERLAY = ipaddress.ip_network("198.18.0.0/24")
MAPPING_IP, EDGE_IP, FIRST_HOST = UNDERLAY[2], UNDERLAY[3], 11
FIRST_NODE, HYPERPLANE_NODES, SHARD_SIZE = 21, 4, 3  # the fleet: each resource's shard is 3 of 4 nodes
MAPPING_PORT = 6080
METRICS_PORT = 9100  # every daemon in a namespace serves Prometheus metrics on its underlay IP, this port
# Each component's certificate role (vswitch/pki.py), and the name of the user's (admin) certificate:
# a dot, which no topology name has, so it never collides with a component's.
PKI_ROLES = {"control_plane": "control-plane", "mapping_daemon": "mapping", "edge_agent": "edge",
             "hyperplane_agent": "hyperplane", "host_agent": "host"}
ADMIN_CERT = "lab.admin"
LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")
REGION = "lab-1"  # private hostnames are ip-10-0-1-5.lab-1.compute.internal
# The "internet": a namespace on the far side of the edge, documentation ranges only (RFC 5737).
INTERNET = ipaddress.ip_network("203.0.113.0/24")
INTERNET_ROUTER, INTERNET_EDGE = INTERNET[1], INTERNET[254]  # its side of the link, and the edge's
INTERNET_WEB = INTERNET[10]  # a web server (port 80) in the internet namespace
INTERNET_DNS = INTERNET[53]  # its DNS resolver (agents/internet_dns.py)
INTERNET_ZONE = {"www.example.test": str(INTERNET_WEB), "example.test": str(INTERNET_WEB),
                 "dns.example.test": str(INTERNET_DNS)}
PUBLIC_POOL = "198.51.100.0/24"  # elastic IPs (the control plane's pool)
# IPv6 (documentation space, RFC 3849): the VPCs' /56 blocks (the control plane's default pool) and the
# internet's own /64, where the web server answers too.
IPV6_POOL = "2001:db8:100::/40"
INTERNET6 = ipaddress.ip_network("2001:db8:ff::/64")
INTERNET6_ROUTER, INTERNET6_EDGE, INTERNET6_WEB = INTERNET6[1], INTERNET6[0xFE], INTERNET6[0x10]
DHCP_CLIENT_SCRIPT = Path(__file__).resolve().parent / "dhcp_client.sh"
INTERNET_MTU = 1500
READY_TIMEOUT = 30.0


class LabError(RuntimeError):
    pass


def default_lab() -> str:
    return os.environ.get("VPC_LAB", "vpc")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(args, capture_output=True, text=True)
    if check and p.returncode:
        raise LabError(f"`{' '.join(args)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


@dataclasses.dataclass
class Component:
    name: str  # mapping, edge, host-a …
    role: str  # mapping_daemon, edge_agent, host_agent (the module in agents/)
    netns: str
    underlay_ip: str
    config: str
    socket: str
    log: str
    pid: int = 0
    metrics: str = ""  # HOST:PORT of its Prometheus endpoint, reached from its namespace ("" for none)


class Lab:
    def __init__(self, name: str | None = None):
        name = name or default_lab()
        if not LAB_NAME.match(name):
            raise LabError(f"lab name {name!r}: 1–16 lowercase letters and digits, starting with a letter")
        self.name = name
        self.dir = STATE_ROOT / name
        self.state_file = self.dir / "lab.json"

    # --- names ---------------------------------------------------------------------------------
    def ns(self, kind: str, name: str = "") -> str:
        return f"{self.name}.{kind}.{name}" if name else f"{self.name}.{kind}"

    def namespaces(self) -> list[str]:
        """Every namespace of this lab that exists now."""
        out = run("ip", "netns", "list").stdout.split("\n")
        names = [line.split()[0] for line in out if line.strip()]
        return [n for n in names if n.startswith(self.name + ".")]

    def exists(self) -> bool:
        return self.dir.exists() or bool(self.namespaces())

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise LabError(f"lab {self.name!r} is not up (no {self.state_file}); start it with `vpc up`") from None

    def _save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    # --- up ------------------------------------------------------------------------------------
    def up(self, topo: Topology, topology_file: str = "", say=print) -> dict:
        if os.geteuid() != 0:
            raise LabError("the lab creates network namespaces: run it as root")
        if self.exists():
            raise LabError(f"lab {self.name!r} is already up (or left over): run `vpc down --lab {self.name}` first")
        self.dir.mkdir(parents=True)
        state = {"lab": self.name, "topology": topology_file, "started": time.time(),
                 "components": {}, "instances": {}, "extra_pids": []}
        self._save(state)
        try:
            self._build(topo, state, say)
        except BaseException:
            say("lab: set-up failed; removing what was made")
            self.down(quiet=True)
            raise
        return state

    def _build(self, topo: Topology, state: dict, say) -> None:
        pki.init(self.pki_dir)  # the lab's CA; components' certificates are issued with their configs
        pki.issue(self.pki_dir, "admin", ADMIN_CERT)
        mtu = str(topo.underlay_mtu)
        u = self.ns("underlay")
        self._netns_add(u)
        run("ip", "-n", u, "link", "add", "br0", "mtu", mtu, "type", "bridge")
        run("ip", "-n", u, "link", "set", "br0", "up")

        comps: list[Component] = []

        def component(name: str, role: str, netns: str, ip, ipv6: bool = False) -> Component:
            c = Component(name, role, netns, str(ip), str(self.dir / f"{name}.toml"),
                          str(self.dir / f"{name}.sock"), str(self.dir / f"{name}.log"))
            comps.append(c)
            if netns:
                c.metrics = f"{ip}:{METRICS_PORT}"
                self._netns_add(netns, ipv6)
                port = f"p{len(comps)}"
                run("ip", "-n", netns, "link", "add", "ul0", "mtu", mtu, "type", "veth",
                    "peer", "name", port, "netns", u, "mtu", mtu)
                run("ip", "-n", u, "link", "set", port, "master", "br0", "up")
                run("ip", "-n", netns, "addr", "add", f"{ip}/{UNDERLAY.prefixlen}", "dev", "ul0")
                run("ip", "-n", netns, "link", "set", "ul0", "up")
            return c

        # The control plane listens on a Unix socket only: reachable from the CLI and from every
        # namespace (they share the filesystem), with no address in any of them.
        cp = component("control-plane", "control_plane", "", "-")
        cp.socket = str(self.api_socket)
        cp.metrics = f"127.0.0.1:{_free_port()}"  # no namespace: loopback of the root namespace
        self._write_config(cp, {"unix_socket": cp.socket, "store": f"sqlite:///{self.dir / 'control-plane.db'}",
                                "admin_token_file": str(self.admin_token_file), "region": REGION, "ipv6_pool": IPV6_POOL,
                                "flow_log_dir": str(self.dir / "flow-logs")})
        self._start(cp, state)
        self._wait_ready([cp])
        admin = self.api(admin=True)
        for i, h in enumerate(topo.hosts):
            admin.call("POST", "/v1/hosts", {"name": h.name, "underlay_ip": str(UNDERLAY[FIRST_HOST + i])})
        account = admin.call("POST", "/v1/accounts", {"name": "default"})
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(account["token"] + "\n")

        mapping = component("mapping", "mapping_daemon", self.ns("mapping"), MAPPING_IP)
        edge = component("edge", "edge_agent", self.ns("edge"), EDGE_IP, ipv6=True)  # routes the VPCs' IPv6
        hosts = {h.name: component(h.name, "host_agent", self.ns("host", h.name), UNDERLAY[FIRST_HOST + i])
                 for i, h in enumerate(topo.hosts)}
        fleet = [{"name": f"hp-{i + 1}", "underlay_ip": str(UNDERLAY[FIRST_NODE + i])} for i in range(HYPERPLANE_NODES)]
        nodes = [component(n["name"], "hyperplane_agent", self.ns("hp", n["name"]), n["underlay_ip"]) for n in fleet]
        endpoint = f"{MAPPING_IP}:{MAPPING_PORT}"
        infra = {"control_plane": f"unix://{self.api_socket}", "token_file": str(self.admin_token_file)}
        hyperplane = {"hyperplane": fleet, "hyperplane_shard_size": SHARD_SIZE}
        self._write_config(mapping, {"listen": endpoint, "state_file": str(self.dir / "mappings.json"), **infra})
        self._start(mapping, state)
        self._wait_ready([mapping])
        self._internet(edge.netns, state)
        self._write_config(edge, {"underlay_ip": edge.underlay_ip, "mapping": endpoint, "internet_device": "igw0",
                                  "public_pool": PUBLIC_POOL, "ipv6_pool": IPV6_POOL, **infra, **hyperplane})
        self._start(edge, state)
        for c in nodes:
            self._write_config(c, {"underlay_ip": c.underlay_ip, "edge": str(EDGE_IP), **infra, **hyperplane})
            self._start(c, state)
        for h in topo.hosts:
            c = hosts[h.name]
            # The VPC resolver recurses through the internet's resolver: hosts reach it through the edge's
            # namespace (its kernel forwards), as the cloud's resolvers reach the internet.
            run("ip", "-n", c.netns, "route", "add", f"{INTERNET_DNS}/32", "via", str(EDGE_IP))
            self._write_config(c, {"underlay_ip": c.underlay_ip, "mapping": endpoint, "edge": str(EDGE_IP),
                                   "offload": h.offload, "instance_netns_prefix": self.ns("inst") + ".",
                                   "region": REGION, "dns_upstream": f"{INTERNET_DNS}:53", **infra, **hyperplane})
            self._start(c, state)
        self._wait_ready(comps)

        from agents.apply import apply_topology
        for line in apply_topology(self.api(), topo):
            say(f"  {line}")
        self.wait_converged()
        state["instances"] = self.instances()
        self._save(state)
        self._boot_vms(state)

    def _boot_vms(self, state: dict, timeout: float = 15.0) -> None:
        """TAP instances stand for virtual machines: as a VM would at boot, each runs a DHCP client
        (busybox udhcpc; ISC dhclient -6 too when it has IPv6; both with ``agents/dhcp_client.sh``) on
        its ENI; wait until each has its addresses."""
        vms = {name: i for name, i in state["instances"].items() if i.get("interface_type") == "tap"}
        for name, i in vms.items():
            self.spawn(name, ["udhcpc", "-f", "-i", "eth0", "-s", str(DHCP_CLIENT_SCRIPT), "-t", "10", "-T", "1",
                              "-A", "1", "-O", "mtu", "-O", "ntpsrv", "-x", f"hostname:{name}"], f"dhcp-{name}")
            if i.get("ipv6"):  # and ISC dhclient for its IPv6 address (lease and pid files: the lab's)
                self.spawn(name, ["dhclient", "-6", "-d", "-v", "-lf", str(self.dir / f"dhclient6-{name}.leases"),
                                  "-pf", str(self.dir / f"dhclient6-{name}.pid"), "-sf", str(DHCP_CLIENT_SCRIPT),
                                  "eth0"], f"dhcp6-{name}")
        deadline = time.monotonic() + timeout
        for name, i in vms.items():
            wanted = [("-4", f"inet {i['ip']}/")] + ([("-6", f"inet6 {i['ipv6']}/")] if i.get("ipv6") else [])
            for family, line in wanted:
                while line not in run("ip", "-n", i["netns"], family, "addr", "show", "eth0", check=False).stdout:
                    if time.monotonic() > deadline:
                        raise LabError(f"TAP instance {name} got no DHCP{'v6' if family == '-6' else ''} lease in "
                                       f"{timeout:.0f} s; see {self.dir / f'dhcp-{name}.out'}")
                    time.sleep(0.1)

    @property
    def pki_dir(self) -> Path:
        """The lab's CA and every component's certificate (``vpc pki``'s layout)."""
        return self.dir / "pki"

    def credential(self, name: str) -> dict:
        """``tls`` for a config: the lab's CA, and the certificate and key issued as ``name``."""
        return {"ca": str(self.pki_dir / pki.CA_CERT), "cert": str(self.pki_dir / f"{name}.crt"),
                "key": str(self.pki_dir / f"{name}.key")}

    # --- the API ---------------------------------------------------------------------------------
    @property
    def api_socket(self) -> Path:
        return self.dir / "api.sock"

    @property
    def admin_token_file(self) -> Path:
        return self.dir / "admin.token"

    @property
    def token_file(self) -> Path:
        """The default account's token: the CLI finds it here by the lab's name."""
        return self.dir / "token"

    def api(self, admin: bool = False):
        from vswitch.controlplane.client import ApiClient
        path = self.admin_token_file if admin else self.token_file
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            raise LabError(f"lab {self.name!r} is not up (no {path}); start it with `vpc up`") from None
        return ApiClient(f"unix://{self.api_socket}", token)

    def instances(self) -> dict:
        """Every instance of the default account, as the API describes it, with its namespace."""
        api = self.api()
        vpcs = {v["id"]: v for v in api.call("GET", "/v1/vpcs")}
        subnets = {s["id"]: s for s in api.call("GET", "/v1/subnets")}
        return {i["name"]: {"vpc": vpcs[i["vpc_id"]].get("name") or i["vpc_id"], "vni": vpcs[i["vpc_id"]]["vni"],
                            "subnet": subnets[i["subnet_id"]].get("name") or i["subnet_id"],
                            "ip": i["private_ip"], "ipv6": i.get("ipv6_address"), "host": i["host"],
                            "eni": i["eni_id"], "id": i["id"], "interface_type": i.get("interface_type", "tun"),
                            "netns": self.ns("inst", i["name"])}
                for i in api.call("GET", "/v1/instances")}

    def wait_converged(self, timeout: float = 30.0) -> None:
        """Until every instance the API knows is attached on its host, and nothing else is."""
        deadline = time.monotonic() + timeout
        while True:
            want = {(i["host"], i["eni"]) for i in self.instances().values()}
            have, problems = set(), {}
            for name, c in self.state()["components"].items():
                if c["role"] == "host_agent":
                    st = control.request(c["socket"], {"op": "status"}, timeout=5)
                    have |= {(name, e["id"]) for e in st["enis"]}
                    problems.update(st.get("pending") or {})
            if want == have:
                return
            if time.monotonic() > deadline:
                raise LabError(f"instances not attached after {timeout:.0f} s: missing {sorted(want - have)}, "
                               f"extra {sorted(have - want)}; {problems}")
            time.sleep(0.05)

    def _internet(self, edge_ns: str, state: dict) -> None:
        """The internet namespace, linked to the edge's (MTU 1500), with a web server on INTERNET_WEB
        and a DNS resolver for INTERNET_ZONE on INTERNET_DNS.

            internet ns  eth0 203.0.113.1/24 (+ .10, .53)  ── veth ──  wan0 203.0.113.254/24  edge ns
                              2001:db8:ff::1/64 (+ ::10)                2001:db8:ff::fe/64
                         route 198.51.100.0/24 via .254            default via .1; 198.51.100.0/24 → igw0
                               2001:db8:100::/40 via ::fe          default via ::1; 2001:db8:100::/40 → igw0
                               198.18.0.0/24 via .254 (the VPC resolver's questions come from hosts)
        The edge namespace's kernel forwards between wan0 and the edge agent's TUN igw0.
        """
        inet = self.ns("internet")
        self._netns_add(inet, ipv6=True)
        mtu = str(INTERNET_MTU)
        run("ip", "-n", edge_ns, "link", "add", "wan0", "mtu", mtu, "type", "veth", "peer", "name", "eth0",
            "netns", inet, "mtu", mtu)
        for a in (INTERNET_ROUTER, INTERNET_WEB, INTERNET_DNS):
            run("ip", "-n", inet, "addr", "add", f"{a}/{INTERNET.prefixlen}", "dev", "eth0")
        for a in (INTERNET6_ROUTER, INTERNET6_WEB):
            run("ip", "-n", inet, "addr", "add", f"{a}/{INTERNET6.prefixlen}", "dev", "eth0", "nodad")
        run("ip", "-n", inet, "link", "set", "eth0", "up")
        run("ip", "-n", inet, "link", "set", "lo", "up")
        run("ip", "-n", inet, "route", "add", PUBLIC_POOL, "via", str(INTERNET_EDGE))
        run("ip", "-n", inet, "route", "add", IPV6_POOL, "via", str(INTERNET6_EDGE))
        # Answers to the VPC resolver's questions go back to the host that asked, through the edge.
        run("ip", "-n", inet, "route", "add", str(UNDERLAY), "via", str(INTERNET_EDGE))
        run("ip", "-n", edge_ns, "addr", "add", f"{INTERNET_EDGE}/{INTERNET.prefixlen}", "dev", "wan0")
        run("ip", "-n", edge_ns, "addr", "add", f"{INTERNET6_EDGE}/{INTERNET6.prefixlen}", "dev", "wan0", "nodad")
        run("ip", "-n", edge_ns, "link", "set", "wan0", "up")
        run("ip", "-n", edge_ns, "route", "add", "default", "via", str(INTERNET_ROUTER))
        run("ip", "-n", edge_ns, "-6", "route", "add", "default", "via", str(INTERNET6_ROUTER))
        run("ip", "netns", "exec", edge_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1")
        www = self.dir / "internet-www"
        www.mkdir()
        (www / "index.html").write_text("hello from the internet\n")
        servers = {"internet-web": [sys.executable, "-m", "http.server", "80", "--bind", str(INTERNET_WEB),
                                    "--directory", str(www)],
                   "internet-web6": [sys.executable, "-m", "http.server", "80", "--bind", str(INTERNET6_WEB),
                                     "--directory", str(www)],
                   "internet-dns": [sys.executable, "-m", "agents.internet_dns", str(INTERNET_DNS),
                                    *(f"{name}={ip}" for name, ip in INTERNET_ZONE.items())]}
        for name, argv in servers.items():
            with open(self.dir / f"{name}.out", "ab") as out:
                p = subprocess.Popen(["ip", "netns", "exec", inet, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=Path(__file__).resolve().parent.parent)
            state["extra_pids"].append([p.pid, _starttime(p.pid)])
        self._save(state)

    def _netns_add(self, name: str, ipv6: bool = False) -> None:
        try:
            if not instance_ns.create(name, ipv6=ipv6):
                raise LabError(f"network namespace {name} exists already")
        except OSError as e:
            raise LabError(str(e)) from None

    def _write_config(self, c: Component, extra: dict) -> None:
        body = {"name": c.name, "log_file": c.log, **extra}
        if c.metrics:
            body["metrics"] = c.metrics
        if not (self.pki_dir / f"{c.name}.crt").exists():  # its credential: role and underlay address
            pki.issue(self.pki_dir, PKI_ROLES[c.role], c.name, [c.underlay_ip] if c.underlay_ip != "-" else [])
        body["tls"] = self.credential(c.name)
        if c.role != "control_plane":  # it answers on its API socket instead, in the root namespace
            body["control_socket"] = c.socket
            body["netns"] = c.netns
        Path(c.config).write_text(tomli_w.dumps(body))

    def _start(self, c: Component, state: dict) -> None:
        out = open(self.dir / f"{c.name}.out", "ab")
        with out:
            # Not `ip netns exec`: the daemon enters its namespace itself (see vswitch/netns.py). The same
            # command line as a real machine's systemd unit: `vpc-ROLE --config FILE` (agents/roles.py);
            # the config path on it is what _alive recognises the process by.
            p = subprocess.Popen([*roles.command(roles.BY_MODULE[c.role]), "--config", c.config],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        c.pid = p.pid
        self._procs = getattr(self, "_procs", {})
        self._procs[c.name] = p
        state["components"][c.name] = dataclasses.asdict(c)
        self._save(state)

    def _wait_ready(self, comps: list[Component]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        pending = list(comps)
        while pending:
            c = pending[0]
            proc = self._procs[c.name]
            if proc.poll() is not None:
                tail = (self.dir / f"{c.name}.out").read_text(errors="replace")[-2000:]
                raise LabError(f"{c.name} exited with {proc.returncode} while starting:\n{tail}")
            if self._probe(c).get("ready"):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise LabError(f"{c.name} not ready after {READY_TIMEOUT:.0f} s; see {c.log}")
            time.sleep(0.05)

    def restart(self, name: str) -> int:
        """Start a component again from its config file, as systemd would after a crash; returns its pid."""
        state = self.state()
        c = Component(**state["components"][name])
        if _alive(c.pid, c.config):
            terminate(c.pid)
        self._start(c, state)
        self._wait_ready([c])
        return c.pid

    def _probe(self, c) -> dict:
        """A component's own account of its health: its control socket, or the API's /healthz."""
        role, sock = (c.role, c.socket) if isinstance(c, Component) else (c["role"], c["socket"])
        try:
            if role == "control_plane":
                from vswitch.controlplane.client import ApiClient
                with ApiClient(f"unix://{sock}", timeout=2).http as http:
                    answer = http.get("/healthz").json()
                return {"ready": bool(answer.get("ok")), **answer}
            return control.request(sock, {"op": "status"}, timeout=2)
        except (OSError, ValueError, httpx.HTTPError) as e:
            return {"error": str(e)}

    # --- use -----------------------------------------------------------------------------------
    def exec_argv(self, instance: str, cmd: list[str]) -> list[str]:
        if not cmd:
            raise LabError("nothing to run: vpc exec INSTANCE -- COMMAND [ARGS…]")
        netns = self.ns("inst", instance)
        if not (Path("/run/netns") / netns).exists():
            prefix = self.ns("inst") + "."
            there = sorted(n[len(prefix):] for n in self.namespaces() if n.startswith(prefix))
            raise LabError(f"no instance {instance!r} in lab {self.name!r}; there are: {', '.join(there) or 'none'}")
        return ["ip", "netns", "exec", netns, *cmd]

    def spawn(self, instance: str, cmd: list[str], log_name: str) -> subprocess.Popen:
        """Start a background program in an instance; ``down`` ends it."""
        with open(self.dir / f"{log_name}.out", "ab") as out:
            p = subprocess.Popen(self.exec_argv(instance, cmd), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        state = self.state()
        state["extra_pids"].append([p.pid, _starttime(p.pid)])
        self._save(state)
        return p

    def scrape(self, name: str) -> dict:
        """Every sample component ``name``'s metrics endpoint serves (``vswitch.metrics.scrape``), read from
        inside its namespace."""
        from vswitch import metrics
        c = self.state()["components"][name]
        if not c.get("metrics"):
            raise LabError(f"{name} serves no metrics (a lab started before they existed?)")
        return metrics.scrape(c["metrics"], c["netns"] or None)

    def metrics(self, state: dict | None = None) -> dict:
        """A short summary of every component's metrics (``vswitch.metrics.summary``), scraped in parallel;
        None for a component without an endpoint."""
        from concurrent.futures import ThreadPoolExecutor

        from vswitch import metrics
        comps = (state or self.state())["components"]
        wanted = {n: c for n, c in comps.items() if c.get("metrics")}
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(wanted)))) as pool:
            futures = {n: pool.submit(metrics.scrape_summary, c["metrics"], c["netns"] or None)
                       for n, c in wanted.items()}
        return {n: futures[n].result() if n in futures else None for n in comps}

    def status(self) -> dict:
        state = self.state()
        comps = {}
        scraped = self.metrics(state)
        for name, c in state["components"].items():
            alive = _alive(c["pid"], c["config"])
            detail = self._probe(c)
            health = ("ready" if detail.get("ready") else "starting") if "error" not in detail else (
                "unreachable" if alive else "dead")
            comps[name] = {"role": c["role"], "netns": c["netns"], "underlay_ip": c["underlay_ip"],
                           "pid": c["pid"], "alive": alive, "health": health, "detail": detail,
                           "metrics": scraped.get(name)}
        try:
            instances = self.instances()
        except Exception:  # the control plane is down: show what the lab knew at start
            instances = state["instances"]
        return {"lab": self.name, "topology": state["topology"], "components": comps, "instances": instances}

    # --- down ----------------------------------------------------------------------------------
    def down(self, quiet: bool = False) -> list[str]:
        """Remove every process, namespace, link and file of this lab. Safe to repeat, and after a crash."""
        removed = []
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            state = {}
        victims = [(c["pid"], c["config"]) for c in state.get("components", {}).values()]
        victims += [(pid, started) for pid, started in state.get("extra_pids", [])]
        for pid, marker in victims:
            if _alive(pid, marker):
                terminate(pid)
                removed.append(f"process {pid}")
        for ns in self.namespaces():
            # Anything still running inside our namespaces was started by us (through this lab).
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                terminate(int(pid), grace=0.5)
                removed.append(f"process {pid}")
            run("ip", "netns", "del", ns, check=False)
            removed.append(f"netns {ns}")
        etc_dir = instance_ns.NETNS_ETC  # instances' hosts and resolv.conf, also after a crash
        for etc in etc_dir.glob(f"{self.name}.*") if etc_dir.exists() else ():
            shutil.rmtree(etc, ignore_errors=True)
            removed.append(f"dir {etc}")
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
            removed.append(f"dir {self.dir}")
        return removed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _starttime(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, marker: str | int | None) -> bool:
    """Is ``pid`` still the process we started? Pids are reused, so check its command line (str marker)
    or its start time (int marker)."""
    if isinstance(marker, int):
        return _starttime(pid) == marker
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker is None or marker.encode() in cmdline


def terminate(pid: int, grace: float = 3.0) -> None:
    """End one process we started, by pid: SIGTERM, then SIGKILL after ``grace``; reap it if it is our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            pass
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass

"""The lab: a whole VPC deployment on one machine, in network namespaces.

    <lab>.underlay          bridge br0 (jumbo MTU): the "physical network" between hosts
    <lab>.mapping           the mapping daemon                      198.18.0.2
    <lab>.edge              the Blackfoot edge agent                198.18.0.3
    <lab>.host.<host>       one host agent per host                 198.18.0.11, .12, …
    <lab>.inst.<instance>   one instance each; its ENI (a TUN device) belongs to its host's agent

The underlay uses 198.18.0.0/24 (RFC 2544, benchmarking) and exists only inside these namespaces:
nothing is added to the root namespace. Every name starts with the lab name and a dot, so several
labs (and test runs) coexist and ``down`` finds everything of its own, even after a crash or kill -9.

Namespaces and links are made with the ``ip`` command: the lab is orchestration, like a script, and
``ip`` output is what a user debugging it reads. Agents themselves use netlink (pyroute2).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

from vswitch import control
from vswitch.topology import Topology

STATE_ROOT = Path(os.environ.get("VPC_STATE_ROOT", "/run/vpc"))
UNDERLAY = ipaddress.ip_network("198.18.0.0/24")
MAPPING_IP, EDGE_IP, FIRST_HOST = UNDERLAY[2], UNDERLAY[3], 11
MAPPING_PORT = 6080
LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")
REGION = "lab-1"  # private hostnames are ip-10-0-1-5.lab-1.compute.internal
NETNS_ETC = Path("/etc/netns")  # `ip netns exec` bind-mounts files from here over /etc
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
        mtu = str(topo.underlay_mtu)
        u = self.ns("underlay")
        self._netns_add(u)
        run("ip", "-n", u, "link", "add", "br0", "mtu", mtu, "type", "bridge")
        run("ip", "-n", u, "link", "set", "br0", "up")

        comps: list[Component] = []

        def component(name: str, role: str, netns: str, ip) -> Component:
            c = Component(name, role, netns, str(ip), str(self.dir / f"{name}.toml"),
                          str(self.dir / f"{name}.sock"), str(self.dir / f"{name}.log"))
            comps.append(c)
            self._netns_add(netns)
            port = f"p{len(comps)}"
            run("ip", "-n", netns, "link", "add", "ul0", "mtu", mtu, "type", "veth",
                "peer", "name", port, "netns", u, "mtu", mtu)
            run("ip", "-n", u, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", netns, "addr", "add", f"{ip}/{UNDERLAY.prefixlen}", "dev", "ul0")
            run("ip", "-n", netns, "link", "set", "ul0", "up")
            return c

        mapping = component("mapping", "mapping_daemon", self.ns("mapping"), MAPPING_IP)
        edge = component("edge", "edge_agent", self.ns("edge"), EDGE_IP)
        hosts = {h.name: component(h.name, "host_agent", self.ns("host", h.name), UNDERLAY[FIRST_HOST + i])
                 for i, h in enumerate(topo.hosts)}
        for vpc in topo.vpcs:
            for inst in vpc.instances:
                self._netns_add(self.ns("inst", inst.name))
                self._instance_etc(vpc, inst)

        endpoint = f"{MAPPING_IP}:{MAPPING_PORT}"
        self._write_config(mapping, {"listen": endpoint, "state_file": str(self.dir / "mappings.json")})
        self._start(mapping, state)
        self._wait_ready([mapping])
        for vpc in topo.vpcs:  # the desired state: who holds which address (later: the control plane)
            for inst in vpc.instances:
                answer = control.request(mapping.socket, {"op": "put", "vni": vpc.vni, "addr": str(inst.ip),
                                                          "host": hosts[inst.host].underlay_ip, "eni": inst.eni_id})
                if "error" in answer:
                    raise LabError(f"mapping daemon refused {inst.name}: {answer['error']}")

        self._write_config(edge, {"underlay_ip": edge.underlay_ip, "mapping": endpoint})
        self._start(edge, state)
        for h in topo.hosts:
            c = hosts[h.name]
            mine = [(vpc, i) for vpc in topo.vpcs for i in vpc.instances if i.host == h.name]
            vpcs = {vpc.vni: vpc for vpc, _ in mine}
            self._write_config(c, {
                "underlay_ip": c.underlay_ip, "mapping": endpoint, "edge": str(EDGE_IP), "offload": h.offload,
                "vpcs": [{"vni": v.vni, "cidr": str(v.cidr), "subnets": [str(s.cidr) for s in v.subnets]}
                         for v in vpcs.values()],
                "enis": [{"id": i.eni_id, "vni": vpc.vni, "ip": f"{i.ip}/{vpc.subnet(i.subnet).cidr.prefixlen}",
                          "netns": self.ns("inst", i.name), "instance": i.name,
                          "source_dest_check": i.source_dest_check} for vpc, i in mine],
            })
            self._start(c, state)
        self._wait_ready(comps)
        for vpc in topo.vpcs:
            for i in vpc.instances:
                state["instances"][i.name] = {
                    "vpc": vpc.name, "vni": vpc.vni, "subnet": i.subnet, "ip": str(i.ip), "host": i.host,
                    "eni": i.eni_id, "netns": self.ns("inst", i.name)}
        self._save(state)

    def _netns_add(self, name: str) -> None:
        run("ip", "netns", "add", name)
        # IPv6 arrives with dual stack (a later issue); until then it would only add noise.
        run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1")
        run("ip", "-n", name, "link", "set", "lo", "up")

    def _instance_etc(self, vpc, inst) -> None:
        """The instance's own /etc/hosts and /etc/resolv.conf (seen by programs run with `ip netns exec`).

        Without them an instance inherits this machine's resolver, which lies outside the VPC: every
        reverse lookup (http.server does one at start) would wait for time-outs. The hosts file names
        every instance of the VPC, by name and by private hostname; the resolver is the VPC's (base + 2,
        answered once built-in DNS exists), with short time-outs meanwhile.
        """
        etc = NETNS_ETC / self.ns("inst", inst.name)
        etc.mkdir(parents=True, exist_ok=True)
        domain = f"{REGION}.compute.internal"
        lines = ["127.0.0.1 localhost"]
        for i in vpc.instances:
            lines.append(f"{i.ip} ip-{str(i.ip).replace('.', '-')}.{domain} {i.name}")
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        resolver = vpc.cidr.network_address + 2
        (etc / "resolv.conf").write_text(f"nameserver {resolver}\nsearch {domain}\noptions timeout:1 attempts:1\n")

    def _write_config(self, c: Component, extra: dict) -> None:
        body = {"name": c.name, "control_socket": c.socket, "log_file": c.log, **extra}
        Path(c.config).write_text(tomli_w.dumps(body))

    def _start(self, c: Component, state: dict) -> None:
        out = open(self.dir / f"{c.name}.out", "ab")
        with out:
            p = subprocess.Popen(
                ["ip", "netns", "exec", c.netns, sys.executable, "-m", f"agents.{c.role}", "--config", c.config],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
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
            try:
                if control.request(c.socket, {"op": "status"}, timeout=1).get("ready"):
                    pending.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LabError(f"{c.name} not ready after {READY_TIMEOUT:.0f} s; see {c.log}")
            time.sleep(0.05)

    # --- use -----------------------------------------------------------------------------------
    def instance(self, name: str) -> dict:
        instances = self.state()["instances"]
        if name not in instances:
            raise LabError(f"no instance {name!r} in lab {self.name!r}; there are: {', '.join(instances)}")
        return instances[name]

    def exec_argv(self, instance: str, cmd: list[str]) -> list[str]:
        if not cmd:
            raise LabError("nothing to run: vpc exec INSTANCE -- COMMAND [ARGS…]")
        return ["ip", "netns", "exec", self.instance(instance)["netns"], *cmd]

    def spawn(self, instance: str, cmd: list[str], log_name: str) -> subprocess.Popen:
        """Start a background program in an instance; ``down`` ends it."""
        with open(self.dir / f"{log_name}.out", "ab") as out:
            p = subprocess.Popen(self.exec_argv(instance, cmd), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        state = self.state()
        state["extra_pids"].append([p.pid, _starttime(p.pid)])
        self._save(state)
        return p

    def status(self) -> dict:
        state = self.state()
        comps = {}
        for name, c in state["components"].items():
            alive = _alive(c["pid"], c["config"])
            try:
                detail = control.request(c["socket"], {"op": "status"}, timeout=1)
                health = "ready" if detail.get("ready") else "starting"
            except OSError as e:
                detail, health = {"error": str(e)}, ("unreachable" if alive else "dead")
            comps[name] = {"role": c["role"], "netns": c["netns"], "underlay_ip": c["underlay_ip"],
                           "pid": c["pid"], "alive": alive, "health": health, "detail": detail}
        return {"lab": self.name, "topology": state["topology"], "components": comps,
                "instances": state["instances"]}

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
        for etc in NETNS_ETC.glob(f"{self.name}.*") if NETNS_ETC.exists() else ():
            shutil.rmtree(etc, ignore_errors=True)
            removed.append(f"dir {etc}")
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
            removed.append(f"dir {self.dir}")
        return removed


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

"""The topology file: which hosts exist, and which VPCs, subnets and instances run on them.

A YAML file such as ``configs/demo.yaml``::

    hosts: [{name: host-a}, {name: host-b, offload: false}]
    underlay_mtu: 9000                      # optional, 1280..65535
    vpcs:
      - name: demo
        cidr: 10.0.0.0/16                   # /16 .. /28
        vni: 7                              # optional: else the smallest free positive number
        subnets: [{name: app, cidr: 10.0.1.0/24}]
        instances:
          - {name: web, subnet: app, host: host-b, ip: 10.0.1.10}
          - {name: client, subnet: app, host: host-a, source_dest_check: false}

Rules: names (hosts, VPCs, subnets, instances) are 1-20 characters of a-z, 0-9 and '-' starting with
a letter; instance names are unique across the whole file, as instances are addressed by name alone.
CIDRs are network addresses with a /16../28 prefix; subnets lie inside their VPC and do not overlap.
Two VPCs may use the same CIDR: they are told apart by VNI, and addresses are unique only per VPC.
An instance without ``ip`` gets the first free address from .4 up in its subnet, in file order, after
the explicit ones are placed; the other four of the cloud's five reserved addresses are .0-.3 and the
broadcast (``reserved_addresses``). ENI ids are derived from the VPC and instance names.

Parsing is two passes. Pydantic checks the shape (known keys, types, each value on its own) and
reports every problem it finds; only a well-shaped file reaches the second pass, which checks what
spans several values (duplicates, references, containment) and fills in the defaults that depend on
the rest of the file (VNIs, instance addresses, ENI ids). Nothing is half-accepted: any problem raises
``TopologyError`` listing all problems found, one per line, each starting with the field's path
(``vpcs[0].subnets[1].cidr: ...``) so the reader can find it in the file.

The result is plain frozen dataclasses; pydantic stays inside this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import reprlib
from typing import Annotated, Any

import pydantic
import yaml

from . import addresses
from .geneve import MAX_VNI

MIN_PREFIX, MAX_PREFIX = 16, 28  # the cloud's limits, for VPCs and subnets alike
FIRST_HOST_OFFSET = 4  # .0 network, .1 router, .2 DNS, .3 reserved


class TopologyError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    offload: bool = True  # the host's agent uses TUN offloads (virtio header, TSO super-packets)


@dataclasses.dataclass(frozen=True)
class Subnet:
    name: str
    cidr: ipaddress.IPv4Network


@dataclasses.dataclass(frozen=True)
class Instance:
    name: str
    vpc: str
    subnet: str
    host: str
    ip: ipaddress.IPv4Address
    eni_id: str
    source_dest_check: bool = True
    ip_given: bool = True  # False: assigned here (first free); `vpc apply` then keeps what the API chose


@dataclasses.dataclass(frozen=True)
class Vpc:
    name: str
    cidr: ipaddress.IPv4Network
    vni: int
    subnets: tuple[Subnet, ...]
    instances: tuple[Instance, ...]

    def subnet(self, name: str) -> Subnet:
        for s in self.subnets:
            if s.name == name:
                return s
        raise KeyError(f"VPC {self.name!r} has no subnet {name!r}")


@dataclasses.dataclass(frozen=True)
class Topology:
    hosts: tuple[Host, ...]
    vpcs: tuple[Vpc, ...]
    underlay_mtu: int = 65535

    def instances(self) -> list[Instance]:
        return [i for v in self.vpcs for i in v.instances]

    def instance(self, name: str) -> Instance:
        for i in self.instances():
            if i.name == name:
                return i
        raise KeyError(f"no instance {name!r}")

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r}")


def reserved_addresses(subnet: ipaddress.IPv4Network) -> frozenset[ipaddress.IPv4Address]:
    """The five addresses the cloud keeps in every subnet: network, router (+1), DNS (+2), one
    reserved for later (+3) and broadcast."""
    net = subnet.network_address
    return frozenset((net, net + 1, net + 2, net + 3, subnet.broadcast_address))


def load_topology(path) -> Topology:
    """Read and parse a topology file; every problem, including an unreadable file or bad YAML, is a
    ``TopologyError`` whose lines start with the file's name."""
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise TopologyError(f"{path}: cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise TopologyError(f"{path}: invalid YAML: {e}") from e
    try:
        return parse_topology(data)
    except TopologyError as e:
        raise TopologyError("\n".join(f"{path}: {line}" for line in str(e).splitlines())) from e


def parse_topology(data: object) -> Topology:
    """Validate an already-loaded YAML document and build the topology (see the module docstring)."""
    try:
        file = _TopologyFile.model_validate(data)
    except pydantic.ValidationError as e:
        raise TopologyError("\n".join(_describe(err) for err in e.errors())) from None
    return _Builder(file).build()


# --- pass 1: shape -----------------------------------------------------------------------------------
# Values arrive as YAML gives them: strict mode stops pydantic from turning 1 into True or "5" into 5.

_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid name: 1-20 characters of a-z, 0-9 and '-', "
                         "starting with a letter")
    return value


def _network(value: Any) -> ipaddress.IPv4Network:
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string such as 10.0.0.0/16, got {reprlib.repr(value)}")
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 CIDR such as 10.0.0.0/16") from None
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise ValueError(f"{value}: the prefix must be /{MIN_PREFIX} to /{MAX_PREFIX}, not /{net.prefixlen}")
    if ipaddress.IPv4Interface(value).ip != net.network_address:
        raise ValueError(f"{value} is not a network address (host bits are set): did you mean {net}?")
    return net


def _address(value: Any) -> ipaddress.IPv4Address:
    if not isinstance(value, str):
        raise ValueError(f"expected an address string such as 10.0.1.4, got {reprlib.repr(value)}")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


_Name = Annotated[str, pydantic.AfterValidator(_name)]
_Network = Annotated[ipaddress.IPv4Network, pydantic.PlainValidator(_network)]
_Address = Annotated[ipaddress.IPv4Address, pydantic.PlainValidator(_address)]


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)


class _HostFile(_Model):
    name: _Name
    offload: bool = True


class _SubnetFile(_Model):
    name: _Name
    cidr: _Network


class _InstanceFile(_Model):
    name: _Name
    subnet: str
    host: str
    ip: _Address | None = None
    source_dest_check: bool = True


class _VpcFile(_Model):
    name: _Name
    cidr: _Network
    vni: int | None = pydantic.Field(None, ge=1, le=MAX_VNI)
    subnets: list[_SubnetFile] = []
    instances: list[_InstanceFile] = []


class _TopologyFile(_Model):
    hosts: list[_HostFile] = pydantic.Field(min_length=1)
    vpcs: list[_VpcFile]
    underlay_mtu: int = pydantic.Field(65535, ge=1280, le=65535)


# Which model a list key holds, to name the allowed keys when an unknown one turns up.
_ITEM_MODEL = {"hosts": _HostFile, "vpcs": _VpcFile, "subnets": _SubnetFile, "instances": _InstanceFile}


def _path(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "top level"


def _describe(err) -> str:
    """One pydantic error as ``path: problem``, with the offending value or key."""
    kind, loc = err["type"], err["loc"]
    if kind == "extra_forbidden":
        owner = next((_ITEM_MODEL[p] for p in reversed(loc[:-1]) if isinstance(p, str)), _TopologyFile)
        return f"{_path(loc[:-1])}: unknown key {loc[-1]!r} (allowed: {', '.join(owner.model_fields)})"
    if kind == "invalid_key":
        return f"{_path(loc[:-1])}: key {loc[-1]!r} is not a string"
    if kind == "missing":
        return f"{_path(loc)}: required"
    if kind == "value_error":
        return f"{_path(loc)}: {err['ctx']['error']}"
    if kind == "model_type":
        return f"{_path(loc)}: expected a mapping of keys to values, got {reprlib.repr(err['input'])}"
    return f"{_path(loc)}: {err['msg']}, got {reprlib.repr(err['input'])}"


# --- pass 2: the file as a whole -----------------------------------------------------------------


class _Builder:
    """Cross-checks a well-shaped file, collecting every problem before raising."""

    def __init__(self, file: _TopologyFile):
        self.file = file
        self.problems: list[str] = []
        self.vpc_names: dict[str, str] = {}  # name -> path of its first use
        self.instance_names: dict[str, str] = {}  # across the whole file: instances are named globally

    def build(self) -> Topology:
        hosts = self._hosts()
        vnis = self._vnis()
        vpcs = [self._vpc(f"vpcs[{v}]", vpc, vnis[v], set(hosts)) for v, vpc in enumerate(self.file.vpcs)]
        if self.problems:
            raise TopologyError("\n".join(self.problems))
        eni_ids = [i.eni_id for v in vpcs for i in v.instances]
        assert len(set(eni_ids)) == len(eni_ids), "ENI id collision"
        return Topology(tuple(hosts.values()), tuple(vpcs), self.file.underlay_mtu)

    def _hosts(self) -> dict[str, Host]:
        hosts: dict[str, Host] = {}
        where: dict[str, str] = {}
        for h, host in enumerate(self.file.hosts):
            path = f"hosts[{h}].name"
            if self._unique(path, "host name", host.name, where):
                hosts[host.name] = Host(host.name, host.offload)
        return hosts

    def _vnis(self) -> list[int]:
        """Explicit VNIs as given, then the smallest positive numbers left, in file order."""
        where: dict[int, str] = {}
        for v, vpc in enumerate(self.file.vpcs):
            if vpc.vni is not None:
                self._unique(f"vpcs[{v}].vni", "VNI", vpc.vni, where)
        taken, free, vnis = set(where), 1, []
        for vpc in self.file.vpcs:
            if vpc.vni is None:
                while free in taken:
                    free += 1
                taken.add(free)
            vnis.append(free if vpc.vni is None else vpc.vni)
        return vnis

    def _vpc(self, path: str, vpc: _VpcFile, vni: int, hosts: set[str]) -> Vpc:
        self._unique(f"{path}.name", "VPC name", vpc.name, self.vpc_names)
        subnets = self._subnets(path, vpc)
        # Explicit addresses first, so automatic ones cannot take an address someone asked for.
        taken: dict[ipaddress.IPv4Address, str] = {}
        for n, inst in enumerate(vpc.instances):
            ipath = f"{path}.instances[{n}]"
            self._unique(f"{ipath}.name", "instance name", inst.name, self.instance_names)
            if inst.host not in hosts:
                self.problems.append(f"{ipath}.host: unknown host {inst.host!r} (hosts: {', '.join(sorted(hosts))})")
            subnet = subnets.get(inst.subnet)
            if subnet is None:
                self.problems.append(f"{ipath}.subnet: unknown subnet {inst.subnet!r} in VPC {vpc.name!r} "
                                     f"(subnets: {', '.join(subnets) or 'none'})")
            elif inst.ip is not None:
                self._check_ip(f"{ipath}.ip", inst.ip, subnet, taken)
        ips = self._assign(path, vpc, subnets, taken)
        # An instance left without an address always comes with a reported problem, so build() raises.
        instances = tuple(
            Instance(inst.name, vpc.name, inst.subnet, inst.host, ips[n], _eni_id(vpc.name, inst.name),
                     inst.source_dest_check, ip_given=inst.ip is not None)
            for n, inst in enumerate(vpc.instances) if n in ips)
        return Vpc(vpc.name, vpc.cidr, vni, tuple(subnets.values()), instances)

    def _subnets(self, path: str, vpc: _VpcFile) -> dict[str, Subnet]:
        subnets: dict[str, Subnet] = {}
        where: dict[str, str] = {}
        for s, sub in enumerate(vpc.subnets):
            spath = f"{path}.subnets[{s}]"
            if not self._unique(f"{spath}.name", "subnet name", sub.name, where):
                continue
            if not sub.cidr.subnet_of(vpc.cidr):
                self.problems.append(f"{spath}.cidr: {sub.cidr} is outside VPC {vpc.name!r} ({vpc.cidr})")
            for other in subnets.values():
                if sub.cidr.overlaps(other.cidr):
                    self.problems.append(f"{spath}.cidr: {sub.cidr} overlaps subnet {other.name!r} ({other.cidr})")
            subnets[sub.name] = Subnet(sub.name, sub.cidr)
        return subnets

    def _check_ip(self, path: str, ip: ipaddress.IPv4Address, subnet: Subnet, taken: dict) -> None:
        if ip not in subnet.cidr:
            self.problems.append(f"{path}: {ip} is outside subnet {subnet.name!r} ({subnet.cidr})")
        elif ip in reserved_addresses(subnet.cidr):
            self.problems.append(f"{path}: {ip} is one of the 5 reserved addresses of subnet {subnet.name!r} "
                                 f"({subnet.cidr}: network, router, DNS, reserved, broadcast)")
        else:
            self._unique(path, "address", ip, taken, scope="in this VPC")

    def _assign(self, path: str, vpc: _VpcFile, subnets: dict[str, Subnet], taken: dict) -> dict:
        """Instance index -> address: explicit ones, then the first free from .4 up, in file order."""
        ips = {n: inst.ip for n, inst in enumerate(vpc.instances) if inst.ip is not None}
        cursor: dict[str, ipaddress.IPv4Address] = {}  # per subnet: every address below is taken
        for n, inst in enumerate(vpc.instances):
            subnet = subnets.get(inst.subnet)
            if inst.ip is not None or subnet is None:
                continue
            ip = cursor.get(subnet.name, subnet.cidr.network_address + FIRST_HOST_OFFSET)
            while ip in taken:
                ip += 1
            if ip >= subnet.cidr.broadcast_address:
                self.problems.append(f"{path}.instances[{n}]: no free address left for {inst.name!r} "
                                     f"in subnet {subnet.name!r} ({subnet.cidr})")
                continue
            taken[ip] = f"{path}.instances[{n}]"
            cursor[subnet.name] = ip + 1
            ips[n] = ip
        return ips

    def _unique(self, path: str, what: str, value, seen: dict, scope: str = "") -> bool:
        """Record ``value`` as first used at ``path``; on a repeat, report both places and return False."""
        if value in seen:
            shown = repr(value) if isinstance(value, str) else str(value)  # names quoted, numbers not
            self.problems.append(f"{path}: duplicate {what} {shown}{' ' + scope if scope else ''} "
                                 f"(first used at {seen[value]})")
            return False
        seen[value] = path
        return True


def _eni_id(vpc: str, instance: str) -> str:
    """Derived from the names, so every agent computes the same id and it survives restarts."""
    digest = hashlib.sha256(f"{vpc}/{instance}".encode()).digest()
    return addresses.eni_id(int.from_bytes(digest[:8], "big"))

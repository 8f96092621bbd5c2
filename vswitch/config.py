"""Daemon configuration files (TOML), validated with errors that name the bad field.

The lab writes these files; on real machines an operator does (``configs/systemd/`` has the units and examples). Every
daemon is started the same way: ``vpc-ROLE --config FILE`` (``agents/roles.py``), or ``vpc agent ROLE
--config FILE``; ``--check-config`` validates a file and names the bad field.
"""

from __future__ import annotations

import ipaddress
import tomllib
from typing import Annotated, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from . import addresses


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _endpoint(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT")
    ipaddress.ip_address(host)
    return value


Endpoint = Annotated[str, pydantic.AfterValidator(_endpoint)]
IPv4 = Annotated[str, pydantic.AfterValidator(lambda v: str(ipaddress.IPv4Address(v)))]


def _eni_id(value: str) -> str:
    addresses.eni_number(value)
    return value


class VpcConfig(_Strict):
    vni: int = Field(ge=1, le=(1 << 24) - 1)
    cidr: ipaddress.IPv4Network
    subnets: list[ipaddress.IPv4Network]


class EniConfig(_Strict):
    id: Annotated[str, pydantic.AfterValidator(_eni_id)]
    vni: int = Field(ge=1, le=(1 << 24) - 1)
    ip: ipaddress.IPv4Interface  # address with its subnet prefix
    netns: str
    instance: str = ""
    source_dest_check: bool = True
    ipv6: ipaddress.IPv6Interface | None = None  # dual stack: address with its subnet's /64
    interface_type: Literal["tun", "tap"] = "tun"  # tap: a VM's device; the host answers ARP, DHCP, ND


class FleetNode(_Strict):
    """One Hyperplane node, as every host, the edge and the nodes themselves list the fleet."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    underlay_ip: IPv4


class TlsConfig(_Strict):
    """Mutual TLS on a control channel (``vpc pki``): this daemon's certificate and key, and the CA that
    every peer's certificate must chain to."""

    ca: str  # PEM file of the deployment's CA
    cert: str  # PEM file of this daemon's certificate
    key: str  # PEM file of its private key


class DaemonConfig(_Strict):
    name: str
    control_socket: str
    log_file: str | None = None
    log_level: str = "info"
    netns: str | None = None  # run inside this network namespace (/run/netns/NAME; the lab's hosts)
    metrics: Endpoint | None = None  # serve Prometheus metrics on HOST:PORT
    tls: TlsConfig | None = None  # mutual TLS on its control channels (mapping daemon, control plane)
    state_dir: str | None = None  # where it keeps state across restarts (systemd's StateDirectory)


class HostAgentConfig(DaemonConfig):
    underlay_ip: IPv4
    underlay_port: int = Field(6081, gt=0, lt=65536)
    mapping: Endpoint  # the mapping daemon
    edge: IPv4 | None = None  # the Blackfoot edge's underlay address
    offload: bool = True  # TUN offloads (virtio header, TSO); off = one packet per read
    underlay_batching: bool = True  # UDP GSO/GRO trains on the underlay socket
    # With a control plane, ENIs come from its desired state (and `vpcs`/`enis` stay empty):
    control_plane: str | None = None  # unix:///path, http://host:port, or https://host:port (with tls)
    token_file: str | None = None  # the infrastructure (admin) token
    instance_netns_prefix: str = ""  # an instance's namespace is this + its name
    region: str = "lab-1"
    # The VPC resolver recurses through this resolver (HOST:PORT; absent: public names get SERVFAIL).
    dns_upstream: Endpoint | None = None
    # The instances' MTU: the cloud's 9001 needs an underlay of at least 9065 bytes (9001 + IPv4, UDP and
    # Geneve with its options: 64). On a 1500-byte underlay set 1436 on every host agent, or every large
    # packet is fragmented on the underlay.
    eni_mtu: int = Field(9001, ge=1280, le=9001)
    # The Hyperplane fleet (NAT gateways, load balancers) and the size of each resource's shard.
    hyperplane: list[FleetNode] = []
    hyperplane_shard_size: int = Field(3, ge=1, le=64)
    vpcs: list[VpcConfig] = []
    enis: list[EniConfig] = []


class MappingDaemonConfig(DaemonConfig):
    listen: Endpoint
    state_file: str | None = None  # survives a restart; written atomically on change
    control_plane: str | None = None  # mappings follow the control plane's desired state
    token_file: str | None = None


class EdgeConfig(DaemonConfig):
    underlay_ip: IPv4
    underlay_port: int = Field(6081, gt=0, lt=65536)
    mapping: Endpoint
    # The internet side (the internet gateway): a TUN in the edge's namespace, routed for the public
    # pool; the namespace's kernel forwards between it and the internet. Absent: relay only.
    internet_device: str | None = None
    public_pool: str = "198.51.100.0/24"
    ipv6_pool: str | None = None  # the VPCs' IPv6 blocks, routed to the internet device (no NAT)
    # Where the public addresses come from (the desired state); optional, like the host agent's.
    control_plane: str | None = None
    token_file: str | None = None
    hyperplane: list[FleetNode] = []
    hyperplane_shard_size: int = Field(3, ge=1, le=64)


class HyperplaneConfig(DaemonConfig):
    """A Hyperplane node: NAT gateway and load balancer flows of the resources whose shard holds it."""

    underlay_ip: IPv4
    underlay_port: int = Field(6081, gt=0, lt=65536)
    edge: IPv4  # the Blackfoot edge (NAT gateways' packets to and from the internet)
    hyperplane: list[FleetNode]  # the whole fleet, this node included (by name)
    hyperplane_shard_size: int = Field(3, ge=1, le=64)
    control_plane: str  # the desired state: NAT gateways, load balancers, ENIs, route tables
    token_file: str | None = None
    seed: int | None = None  # NAT port randomness; None: from the OS

    @pydantic.model_validator(mode="after")
    def _in_fleet(self):
        if self.name not in {n.name for n in self.hyperplane}:
            raise ValueError(f"name {self.name!r} is not in the hyperplane fleet list")
        return self


def _store_url(value: str) -> str:
    """What ``vswitch.store.open_store`` accepts, checked without opening anything."""
    scheme, sep, rest = value.partition("://")
    if scheme == "sqlite" and sep and rest.startswith("/"):
        return value
    if scheme == "etcd" and sep:
        endpoints = [e.strip() for e in rest.split("/", 1)[0].split(",") if e.strip()]
        for e in endpoints:
            host, colon, port = e.rpartition(":")
            if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"etcd endpoint {e!r} must be HOST:PORT")
        if endpoints:
            return value
    raise ValueError("must be sqlite:///ABSOLUTE/PATH or etcd://HOST:PORT[,HOST:PORT…][/PREFIX]")


class ControlPlaneConfig(_Strict):
    name: str = "control-plane"
    listen: Endpoint | None = None  # TCP HOST:PORT
    unix_socket: str | None = None  # and/or a Unix socket (the lab uses only this)
    store: Annotated[str, pydantic.AfterValidator(_store_url)] = \
        "sqlite:///var/lib/userspace-vpc/control-plane/control-plane.db"  # or etcd://HOST:PORT[,HOST:PORT]
    admin_token_file: str
    region: str = "lab-1"
    # Delivered flow log files (S3 layout); default: flow-logs next to a SQLite store's file, else
    # /var/lib/userspace-vpc/control-plane/flow-logs (both in the unit's StateDirectory=)
    flow_log_dir: str | None = None
    # Elastic IPs come from this region-wide IPv4 pool: first free, network and broadcast skipped
    public_ip_pool: Annotated[str, pydantic.AfterValidator(lambda v: str(ipaddress.IPv4Network(v)))] = \
        "198.51.100.0/24"
    # VPCs' amazon-provided IPv6 /56 blocks come from this region-wide pool (the edge routes it)
    ipv6_pool: Annotated[str, pydantic.AfterValidator(lambda v: str(ipaddress.IPv6Network(v)))] = \
        "2001:db8:100::/40"
    log_file: str | None = None
    log_level: str = "info"
    metrics: Endpoint | None = None  # serve Prometheus metrics on HOST:PORT
    tls: TlsConfig | None = None  # mutual TLS on the TCP listener (clients must present a certificate)

    @pydantic.model_validator(mode="after")
    def _somewhere(self):
        if not self.listen and not self.unix_socket:
            raise ValueError("set listen, unix_socket or both")
        return self


def load(model: type[BaseModel], path: str):
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as e:
        # Each problem starts with the field's path (``hyperplane.0.underlay_ip``); a check of the whole
        # file (no path) names its fields in its message.
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"] else err["msg"]
                    for err in e.errors()]
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None


def split_endpoint(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def read_token(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None

"""Instance network namespaces: what the host agent, as the "hypervisor", creates for an instance.

An instance here is a network namespace named ``<prefix><instance name>``. Its identity files go to
``/etc/netns/<namespace>/`` (``ip netns exec`` bind-mounts them over /etc): a hosts file with its own
names, and a resolv.conf naming the VPC resolver (base + 2, which the host agent answers; or what the
VPC's DHCP options say) with short time-outs, as a DHCP client would write it.

Blocking (runs ``ip``): call from a thread in asyncio code.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

NETNS_DIR = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if p.returncode:
        raise OSError(f"ip {' '.join(args)}: {p.stderr.strip()}")


def create(netns: str, ipv6: bool = False, solicit: bool = False) -> bool:
    """Create the namespace (loopback up). False if it already existed. Raises OSError naming the
    failed command. IPv6 stays off unless asked for (an instance with an IPv6 address, the edge, the
    internet): a kernel with IPv6 on chatters (router solicitations, MLD) on every link. With it on,
    duplicate address detection is off (the VPC hands out unique addresses), and so are router
    solicitations unless ``solicit`` (a TAP instance, whose host answers them; a TUN has no router)."""
    if (NETNS_DIR / netns).exists():
        return False
    _ip("netns", "add", netns)
    off = "0" if ipv6 else "1"
    _ip("netns", "exec", netns, "sysctl", "-qw", f"net.ipv6.conf.all.disable_ipv6={off}",
        f"net.ipv6.conf.default.disable_ipv6={off}", "net.ipv6.conf.default.accept_dad=0",
        f"net.ipv6.conf.default.router_solicitations={3 if solicit else 0}")
    _ip("-n", netns, "link", "set", "lo", "up")
    return True


def write_identity(netns: str, instance: str, ip: str, vpc_cidr: str, domain: str,
                   neighbours: list[tuple[str, str]] = (), nameservers: list[str] = (),
                   search: str | None = None) -> None:
    """hosts and resolv.conf for the instance; ``neighbours`` (name, ip) are the other ENIs of the VPC
    (name "" for one without an instance, e.g. a NAT gateway's: its private hostname only).
    ``nameservers`` and ``search``: the VPC's DHCP options (default: the VPC resolver and ``domain``),
    what a DHCP client would have written."""
    etc = NETNS_ETC / netns
    etc.mkdir(parents=True, exist_ok=True)
    lines = ["127.0.0.1 localhost"]
    for name, addr in [(instance, ip), *neighbours]:
        lines.append(f"{addr} ip-{addr.replace('.', '-')}.{domain}" + (f" {name}" if name else ""))
    (etc / "hosts").write_text("\n".join(lines) + "\n")
    servers = list(nameservers) or [str(ipaddress.ip_network(vpc_cidr).network_address + 2)]
    (etc / "resolv.conf").write_text("".join(f"nameserver {a}\n" for a in servers[:3])
                                     + f"search {search or domain}\noptions timeout:1 attempts:1\n")


def remove(netns: str) -> None:
    """End what runs inside (it belongs to the deleted instance), delete the namespace and its files."""
    if (NETNS_DIR / netns).exists():
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
    shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)

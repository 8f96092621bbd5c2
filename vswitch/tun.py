"""ENI devices: Linux TUN, opened with the virtio header and offloads when the kernel allows; TAP for
virtual machines (``open_tap``).

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(CSUM|TSO4|TSO6)`` one read returns a 10-byte
``struct virtio_net_hdr`` followed by up to ~64 KB of packet (a TSO "super-packet" with a partial
checksum); we forward it whole and the receiving kernel segments it or takes it as is. That moves
8x more bytes per system call than one MTU-sized packet per read (see the performance notes).
Support differs between kernels: ``open_tun`` probes and falls back to plain one-packet reads.

The device is created in the agent's namespace and then moved into the instance's; the agent keeps its
file descriptor, and configures the device through netlink inside the instance namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os

import pytun
from pyroute2 import IPRoute

from .netns import setns_fd

TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
VNET_HDR_LEN = 10
ENI_MTU = 9001
# Largest super-packet: header + Geneve (36) + outer UDP/IP (28) must fit a 65,535-byte IP datagram.
GSO_MAX_SIZE = 65000

@contextlib.contextmanager
def netns_iproute(netns: str):
    """A pyroute2 ``IPRoute`` whose netlink socket lives in network namespace ``netns``.

    Not ``IPRoute(netns=...)``: pyroute2 0.9 serves that by forking a child per request, which is not
    safe in an asyncio process (the child inherits the event loop's epoll and signal descriptors; an
    agent was seen to exit under it). ``setns(2)`` moves only the calling thread, and a socket keeps
    the namespace it was created in: enter, open the socket, come back. Blocking: use from a thread.
    """
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns}") as target:
        setns_fd(target.fileno())
        try:
            ipr = IPRoute()
        finally:
            setns_fd(home.fileno())
    with ipr:
        yield ipr


@dataclasses.dataclass
class TunDevice:
    device: pytun.TunTapDevice
    fd: int
    name: str
    vnet_hdr: bool  # reads start with a virtio header, writes must too

    def close(self) -> None:
        self.device.close()


def open_tun(name: str, offload: bool = True) -> TunDevice:
    """Create TUN ``name`` in the current namespace; with offloads if asked and the kernel allows."""
    if offload:
        dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR)
        try:
            fcntl.ioctl(dev.fileno(), TUNSETVNETHDRSZ, VNET_HDR_LEN.to_bytes(4, "little"))
            fcntl.ioctl(dev.fileno(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError:
            dev.close()  # the kernel refused: one packet per read it is
        else:
            return _ready(dev, name, True)
    dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    return _ready(dev, name, False)


def open_tap(name: str) -> TunDevice:
    """Create TAP ``name`` (Ethernet frames: a virtual machine's ``-netdev tap``) in the current
    namespace. No virtio header: a VM's traffic is not the fast path here, and the agent reads and
    writes whole frames, answering ARP, DHCP and neighbour discovery itself (``link_services.py``)."""
    return _ready(pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI), name, False)


def _ready(dev: pytun.TunTapDevice, name: str, vnet: bool) -> TunDevice:
    fd = dev.fileno()
    os.set_blocking(fd, False)
    os.set_inheritable(fd, False)
    return TunDevice(dev, fd, name, vnet)


def move_and_configure(name: str, netns: str, address: str | None, prefixlen: int, gateway: str,
                       ifname: str = "eth0", mtu: int = ENI_MTU, vnet_hdr: bool = True,
                       ipv6: str | None = None, ipv6_routes: tuple[str, ...] = (), mac: str | None = None) -> None:
    """Move the device into ``netns``, rename it, give it its address, MTU and default route, and with
    ``ipv6`` (``2001:db8:100:1::4/64``) its IPv6 address (no duplicate address detection: the VPC
    guarantees uniqueness) and routes to ``ipv6_routes`` through it. A TUN is point-to-point: no
    neighbour discovery, routes need no gateway. ``address`` None (a TAP ENI): only the link, with the
    ENI's ``mac`` (as a hypervisor gives a VM's NIC its ENI's MAC), whose instance configures itself
    with DHCP.

    Blocking (netlink): call it from a thread in asyncio code.
    """
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, net_ns_fd=netns)
    with netns_iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        attrs = {"ifname": ifname, "mtu": mtu}
        if vnet_hdr:
            attrs["gso_max_size"] = GSO_MAX_SIZE
        if mac:
            attrs["address"] = mac
        ipr.link("set", index=idx, **attrs)
        ipr.link("set", index=idx, state="up")
        if address is None:
            return
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
        ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=idx, flags=["onlink"])
        if ipv6:
            addr6, _, plen6 = ipv6.partition("/")
            ipr.addr("add", index=idx, address=addr6, prefixlen=int(plen6 or 64), flags=0x80)  # IFA_F_NODAD
            for dst in ipv6_routes:
                ipr.route("replace", dst=dst, oif=idx, family=10)


def set_ipv6_routes(netns: str, wanted: set[str], installed: set[str], ifname: str = "eth0") -> None:
    """Bring the instance's IPv6 routes through its ENI from ``installed`` to ``wanted`` (CIDRs), e.g.
    ::/0 appearing when its subnet's route table gains one. Blocking."""
    with netns_iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        for dst in wanted - installed:
            ipr.route("replace", dst=dst, oif=idx, family=10)
        for dst in installed - wanted:
            try:
                ipr.route("del", dst=dst, oif=idx, family=10)
            except Exception:  # already gone (the device was re-created): nothing to remove
                pass


def configure_here(name: str, mtu: int, routes: list[str]) -> None:
    """Bring TUN ``name`` up in the current namespace with ``mtu`` and routes to ``routes`` (CIDRs)
    through it: how the edge's internet device receives the traffic for public addresses. Blocking."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        # Super-packets the kernel hands it must fit one Geneve datagram, as for ENIs.
        ipr.link("set", index=idx, mtu=mtu, gso_max_size=GSO_MAX_SIZE)
        ipr.link("set", index=idx, state="up")
        for dst in routes:
            ipr.route("replace", dst=dst, oif=idx, family=10 if ":" in dst else 2)


def device_counters(netns: str, ifname: str = "eth0") -> dict:
    """The kernel's counters for an ENI device, read in the instance's namespace (blocking, ~15 ms).

    ``tx_dropped`` counts what the instance sent while the agent's queue was full: the kernel's drop,
    not ours, but the one a user chasing lost packets needs to see.
    """
    with netns_iproute(netns) as ipr:
        found = ipr.link("get", ifname=ifname)
    stats = found[0].get("IFLA_STATS64") if found else None
    keys = ("tx_packets", "tx_dropped", "rx_packets", "rx_dropped")
    return {k: stats[k] for k in keys} if stats else {}

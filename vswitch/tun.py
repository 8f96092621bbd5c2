"""ENI devices: Linux TUN, opened with the virtio header and offloads when the kernel allows; TAP for
virtual machines (``open_tap``).

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(CSUM|TSO4|TSO6)`` one read returns a 10-byte
``struct virtio_net_hdr`` followed by up to ~64 KB of packet (a TSO "super-packet" with a partial
checksum); we forward it whole and the receiving kernel segments it or takes it as is. That moves
8x more bytes per system call than one MTU-sized packet per read (see the performance notes).
Support differs between kernels: ``open_tun`` probes and falls back to plain one-packet reads.

The device is created in the agent's namespace and then moved into the instance's; the agent keeps its
file descriptor, and configures the device through netlink inside the instance namespace.

ENI devices are persistent (``TUNSETPERSIST``), as a hypervisor's NIC outlives its management daemon: an
agent stopped, crashed or upgraded leaves the instance its ``eth0``, addresses and routes (with no file
descriptor attached the link has no carrier and drops what the instance sends; TCP retransmits). The
device carries its ENI's id as its alias (``ifalias``); a restarted agent finds it in the instance's
namespace and attaches to it again (``reattach``) with the flags it was created with. A deliberate
detach clears the persistence before closing (``set_persist``), so the device goes with the descriptor;
deleting the instance's namespace (``vpc down``) deletes it too.
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
TUNSETPERSIST = 0x400454CB  # _IOW('T', 203, int): the device outlives its last file descriptor
IFLA_TUN_TYPE_TUN, IFLA_TUN_TYPE_TAP = 1, 2  # IFLA_TUN_TYPE in a tun link's IFLA_INFO_DATA (IFF_TUN, IFF_TAP)
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


def device_flags(tap: bool, vnet_hdr: bool) -> int:
    """The ``TUNSETIFF`` flags of an ENI device: TAP (frames) or TUN (IP packets), never the packet
    information header, the virtio header for an offloading TUN. Attaching to an existing device must
    use the flags it was created with (the kernel refuses TUN for a TAP and vice versa)."""
    if tap:
        return pytun.IFF_TAP | pytun.IFF_NO_PI
    return pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)


def _offload(fd: int) -> None:
    """The virtio header's size and the offloads a TUN with ``IFF_VNET_HDR`` takes; OSError if refused."""
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, VNET_HDR_LEN.to_bytes(4, "little"))
    fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)


def open_tun(name: str, offload: bool = True) -> TunDevice:
    """Create TUN ``name`` in the current namespace; with offloads if asked and the kernel allows."""
    if offload:
        dev = pytun.TunTapDevice(name=name, flags=device_flags(False, True))
        try:
            _offload(dev.fileno())
        except OSError:
            dev.close()  # the kernel refused: one packet per read it is
        else:
            return _ready(dev, name, True)
    dev = pytun.TunTapDevice(name=name, flags=device_flags(False, False))
    return _ready(dev, name, False)


def open_tap(name: str) -> TunDevice:
    """Create TAP ``name`` (Ethernet frames: a virtual machine's ``-netdev tap``) in the current
    namespace. No virtio header: a VM's traffic is not the fast path here, and the agent reads and
    writes whole frames, answering ARP, DHCP and neighbour discovery itself (``link_services.py``)."""
    return _ready(pytun.TunTapDevice(name=name, flags=device_flags(True, False)), name, False)


def set_persist(fd: int, on: bool) -> None:
    """Make the device of ``fd`` outlive its last descriptor (``on``), or not: cleared, the device is
    deleted when the descriptor closes."""
    fcntl.ioctl(fd, TUNSETPERSIST, 1 if on else 0)


def _ready(dev: pytun.TunTapDevice, name: str, vnet: bool) -> TunDevice:
    fd = dev.fileno()
    os.set_blocking(fd, False)
    os.set_inheritable(fd, False)
    return TunDevice(dev, fd, name, vnet)


def move_and_configure(name: str, netns: str, address: str | None, prefixlen: int, gateway: str,
                       ifname: str = "eth0", mtu: int = ENI_MTU, vnet_hdr: bool = True,
                       ipv6: str | None = None, ipv6_routes: tuple[str, ...] = (), mac: str | None = None,
                       alias: str | None = None) -> None:
    """Move the device into ``netns``, rename it, give it its address, MTU and default route, and with
    ``ipv6`` (``2001:db8:100:1::4/64``) its IPv6 address (no duplicate address detection: the VPC
    guarantees uniqueness) and routes to ``ipv6_routes`` through it. A TUN is point-to-point: no
    neighbour discovery, routes need no gateway. ``address`` None (a TAP ENI): only the link, with the
    ENI's ``mac`` (as a hypervisor gives a VM's NIC its ENI's MAC), whose instance configures itself
    with DHCP. ``alias``: the device's ifalias (the ENI's id).

    Blocking (netlink): call it from a thread in asyncio code.
    """
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, net_ns_fd=netns)
    with netns_iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        attrs = {"ifname": ifname, "mtu": mtu}
        if alias:  # the ENI's id: how a restarted agent knows the device is its ENI's (``reattach``)
            attrs["ifalias"] = alias
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


@dataclasses.dataclass(frozen=True)
class FoundDevice:
    """The device an instance's namespace holds under the ENI's name, as netlink describes it."""

    kind: str | None  # IFLA_INFO_KIND: "tun" for TUN and TAP devices
    tun_type: int = 0  # IFLA_TUN_TYPE: IFLA_TUN_TYPE_TUN or IFLA_TUN_TYPE_TAP
    vnet_hdr: bool = False  # created with IFF_VNET_HDR: attach with it again
    persist: bool = False
    carrier: bool = False  # a TUN/TAP has carrier while a descriptor is attached to it
    alias: str = ""
    mac: str | None = None
    addresses: frozenset[str] = frozenset()  # "address/prefixlen", IPv4 and global IPv6


REUSE, CREATE, REPLACE, BUSY = "reuse", "create", "replace", "busy"


def reuse_verdict(found: FoundDevice | None, eni_id: str, tap: bool, ipv4: str | None = None,
                  ipv6: str | None = None, mac: str | None = None) -> tuple[str, str]:
    """What to do with ``found``, the device in the instance's namespace, for ENI ``eni_id``: (action,
    why). REUSE: attach to it again (``reattach``). CREATE: nothing there, make the device as for a first
    attach. REPLACE: a persistent device nobody serves, but not this ENI's as it is now (another ENI's
    alias, TUN for TAP, the addresses changed while no agent ran): delete it, then create. BUSY: leave
    it (not a TUN/TAP, or a live process is attached to it, as while an instance moves between hosts):
    the attach fails and is retried. ``ipv4``/``ipv6`` ("address/prefixlen"): a TUN's addresses,
    ``ipv6`` None meaning none; a TAP's belong to its VM's DHCP client and only its ``mac`` is checked."""
    if found is None:
        return CREATE, "no device"
    if found.kind != "tun":
        return BUSY, f"a {found.kind or 'non-TUN'} device has the name"
    if found.carrier:
        return BUSY, "another process is attached to it"
    wanted = IFLA_TUN_TYPE_TAP if tap else IFLA_TUN_TYPE_TUN
    if found.alias != eni_id:
        return REPLACE, f"its alias is {found.alias!r}, not {eni_id}"
    if found.tun_type != wanted:
        return REPLACE, f"TUN type {found.tun_type}, wanted {wanted}"
    if not found.persist:
        return REPLACE, "not persistent"
    if tap:
        if mac is not None and (found.mac or "").lower() != mac.lower():
            return REPLACE, f"MAC {found.mac}, wanted {mac}"
        return REUSE, "this ENI's TAP"
    if ipv4 is not None and ipv4 not in found.addresses:
        return REPLACE, f"{ipv4} is not on it"
    global6 = {a for a in found.addresses if ":" in a}
    if global6 != ({ipv6} if ipv6 else set()):
        return REPLACE, f"IPv6 {sorted(global6)}, wanted {ipv6 or 'none'}"
    return REUSE, "this ENI's TUN"


def _inspect(ipr, ifname: str) -> tuple[FoundDevice | None, int]:
    """``ifname`` in the namespace of ``ipr``: what it is, and its index (None, 0 if absent)."""
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        return None, 0
    link = ipr.link("get", index=idx[0])[0]
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    tun_attr = (lambda name: data.get_attr(name)) if data is not None and not isinstance(data, (str, bytes)) \
        else (lambda name: None)
    addresses = frozenset(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx[0])
                          if a["scope"] == 0)  # global: not IPv6's link-local fe80::
    return FoundDevice(kind, tun_attr("IFLA_TUN_TYPE") or 0, bool(tun_attr("IFLA_TUN_VNET_HDR")),
                       bool(tun_attr("IFLA_TUN_PERSIST")), bool(link.get_attr("IFLA_CARRIER")),
                       link.get_attr("IFLA_IFALIAS") or "", link.get_attr("IFLA_ADDRESS"), addresses), idx[0]


def _routes6_through(ipr, idx: int) -> set[str]:
    """The IPv6 routes of the main table through device ``idx`` that were installed for the ENI: not the
    kernel's own (an address's prefix, fe80::/64: protocol kernel) nor router advertisements'."""
    routes = set()
    for r in ipr.get_routes(family=10, table=254):
        if r.get_attr("RTA_OIF") != idx or r["proto"] in (2, 9):  # RTPROT_KERNEL, RTPROT_RA
            continue
        dst = f"{r.get_attr('RTA_DST') or '::'}/{r['dst_len']}"
        if not dst.startswith(("fe80:", "ff")):
            routes.add(dst)
    return routes


def reattach(netns: str, eni_id: str, tap: bool, ipv4: str | None = None, ipv6: str | None = None,
             mac: str | None = None, ifname: str = "eth0", log=None) -> tuple[TunDevice, set[str]] | None:
    """Attach again to ENI ``eni_id``'s persistent device in ``netns`` (left there by an agent that
    stopped or crashed), as it is: its addresses and routes, and the flags it was created with. Returns
    the device and the IPv6 routes through it, or None when the ENI's device is to be made afresh
    (nothing there, or a stale device, deleted here: see ``reuse_verdict``). Raises OSError when the
    name is taken by a device this ENI cannot have (BUSY).

    ``TUNSETIFF`` finds a device by name in the namespace where ``/dev/net/tun`` was opened: so this
    thread enters the instance's namespace for the open (as ``netns_iproute`` does) and comes back; the
    descriptor keeps working from the agent's namespace. Blocking: call from a thread.
    """
    try:
        with netns_iproute(netns) as ipr:
            found, idx = _inspect(ipr, ifname)
            action, why = reuse_verdict(found, eni_id, tap, ipv4, ipv6, mac)
            if log is not None and action != CREATE:
                log(action, why)
            if action == CREATE:
                return None
            if action == BUSY:
                raise OSError(f"{ifname} in {netns}: {why}")
            if action == REPLACE:
                ipr.link("del", index=idx)
                return None
            routes6 = _routes6_through(ipr, idx)
    except FileNotFoundError:  # no such namespace (yet): nothing to attach to
        return None
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns}") as target:
        setns_fd(target.fileno())
        try:
            dev = pytun.TunTapDevice(name=ifname, flags=device_flags(tap, found.vnet_hdr))
        finally:
            setns_fd(home.fileno())
    try:
        if found.vnet_hdr:
            _offload(dev.fileno())
        with netns_iproute(netns) as ipr:  # still the device we inspected, not one TUNSETIFF just made
            again, idx_again = _inspect(ipr, ifname)
        if idx_again != idx or again is None or again.alias != eni_id:
            dev.close()  # (a device made by the open is not persistent: it goes with the descriptor)
            return None
    except BaseException:
        dev.close()
        raise
    return _ready(dev, ifname, found.vnet_hdr), routes6


def remove_orphan(netns: str, known_enis: set[str], ifname: str = "eth0") -> str | None:
    """Delete ``ifname`` in ``netns`` if it is an ENI device nobody serves whose ENI is not in
    ``known_enis`` (its instance was deleted while no agent ran); returns that ENI's id, else None.
    Blocking."""
    with netns_iproute(netns) as ipr:
        found, idx = _inspect(ipr, ifname)
        if (found is None or found.kind != "tun" or found.carrier or not found.persist
                or not found.alias.startswith("eni-") or found.alias in known_enis):
            return None
        ipr.link("del", index=idx)
        return found.alias


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

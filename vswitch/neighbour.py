"""IPv6 neighbour discovery (RFC 4861) on a TAP ENI: the host is the instance's only neighbour and router.

The router's link-local address is fe80::1 with the gateway MAC on every TAP ENI: a fixed, well-known
address (as a cloud's "fe80::1 is the default gateway"), so nothing has to be derived from a MAC and the
instance's default route is the same everywhere. The subnet router ``prefix::1`` and the Subnet-Router
anycast address ``prefix::`` (RFC 4291 §2.6.1) answer with the same MAC.

The ICMPv6 messages served, after the IPv6 header (hop limit 255, else they may come from off the link,
§7.1.1 / §6.1.1) and any hop-by-hop or destination options::

    Neighbour solicitation (135) and advertisement (136):
     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     Type      |     Code 0    |          Checksum             |
    |R|S|O|         Reserved (advertisement: flags; solicitation: 0)|
    |                  Target Address (16 bytes)                    |
    |   Options: type, length in 8-byte units (never 0), value ...  |

    Router solicitation (133) and advertisement (134):
    |     Type      |     Code 0    |          Checksum             |
    | 133: Reserved (4 bytes), then options                         |
    | 134: Cur Hop Limit |M|O| rsvd |       Router Lifetime         |
    |                      Reachable Time                           |
    |                      Retrans Timer                            |
    |   Options ...                                                 |

    Options: 1 source / 2 target link-layer address (len 1: 6-byte MAC); 5 MTU (len 1: 2 reserved, 4 MTU);
    3 prefix information (len 4: prefix length, L|A flags, valid and preferred lifetimes, 4 reserved,
    16-byte prefix).

Neighbour solicitations are answered for fe80::1 and the router addresses above (router flag set) and for
any other address of the /64 (the owning ENI's MAC when ``resolve_mac`` knows it, else the gateway MAC):
solicited and override flags set (override clear for the anycast address, §7.2.7). Not answered: the
instance's own address, link-local targets other than fe80::1 (no other node is on the link), addresses
outside the /64, and duplicate address detection probes (source ::), whatever their target.

Router solicitations get a router advertisement, unicast to the soliciting address or to ff02::1 when it
came from ::. It says: managed and other-configuration flags (the address, DNS and domain come from
DHCPv6), router lifetime 1800 s, the lease's MTU, the gateway MAC, and the /64 on-link (L=1) but not for
SLAAC (A=0): the ENI's address is assigned, as in the cloud. The agent sends one unsolicited
(``router_advertisement``) when the ENI attaches.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING, Callable

from .addresses import GATEWAY_MAC, V6_TAG
from .ethernet import (ALL_NODES, ROUTER_LINK_LOCAL, Malformed, icmpv6_checksum_ok, icmpv6_frame, ipv6_upper_layer,
                       multicast_mac)
from .headers import PROTO_ICMPV6, IPv6

if TYPE_CHECKING:
    from .link_services import Lease

ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT = 133, 134
NEIGHBOUR_SOLICITATION, NEIGHBOUR_ADVERTISEMENT, REDIRECT = 135, 136, 137
SOURCE_LL, TARGET_LL, PREFIX_INFO, MTU_OPTION = 1, 2, 3, 5
ND_HOP_LIMIT = 255

ROUTER_LIFETIME = 1800
CUR_HOP_LIMIT = 64
VALID_LIFETIME, PREFERRED_LIFETIME = 2592000, 604800  # RFC 4861 §6.2.1 defaults (30 and 7 days)
FLAG_MANAGED, FLAG_OTHER = 0x80, 0x40
FLAG_ON_LINK = 0x80  # prefix option; the autonomous flag (0x40) stays clear: no SLAAC
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80000000, 0x40000000, 0x20000000

_UNSPECIFIED = ipaddress.IPv6Address("::")
_SOLICITED_NODE = ipaddress.IPv6Network("ff02::1:ff00:0/104")
_RA = struct.Struct("!BBHII")


def _icmp(frame: bytes) -> tuple[IPv6, bytes]:
    """The IPv6 header and the ND message of a frame, validated as RFC 4861 §6.1.1 and §7.1.1 ask."""
    ip, nh, message = ipv6_upper_layer(frame)
    if nh != PROTO_ICMPV6 or len(message) < 8:
        raise Malformed("not an ICMPv6 message")
    if ip.hop_limit != ND_HOP_LIMIT:
        raise Malformed("neighbour discovery with hop limit below 255: not from the link")
    if message[1] != 0 or not icmpv6_checksum_ok(ip.src.packed, ip.dst.packed, message):
        raise Malformed("ICMPv6 code or checksum")
    return ip, message


def _options(buf: bytes) -> dict[int, bytes]:
    """ND options by type (the first of each), values after the type and length bytes."""
    opts: dict[int, bytes] = {}
    i = 0
    while i < len(buf):
        if i + 2 > len(buf) or buf[i + 1] == 0 or i + buf[i + 1] * 8 > len(buf):
            raise Malformed("ND option of length 0 or past the end")
        opts.setdefault(buf[i], buf[i + 2:i + buf[i + 1] * 8])
        i += buf[i + 1] * 8
    return opts


def _reply_mac(frame: bytes, opts: dict[int, bytes]) -> bytes:
    """Where to send an answer: the source link-layer option if any, else the frame's source MAC."""
    ll = opts.get(SOURCE_LL, b"")
    return ll[:6] if len(ll) >= 6 else frame[6:12]


def neighbour_owner(lease: Lease, resolve_mac: Callable[[int], bytes | None] | None,
                    target: ipaddress.IPv6Address) -> tuple[bytes, int] | None:
    """(MAC, advertisement flags beyond solicited) for a target the host answers for, or None."""
    assert lease.ipv6 is not None
    net = lease.ipv6.network
    if target == ROUTER_LINK_LOCAL or target == net.network_address + 1:
        return GATEWAY_MAC, NA_ROUTER | NA_OVERRIDE
    if target == net.network_address:
        return GATEWAY_MAC, NA_ROUTER  # anycast: others may answer too, so no override
    if target not in net or target == lease.ipv6.ip:
        return None
    return (resolve_mac(int(target) | V6_TAG) if resolve_mac else None) or GATEWAY_MAC, NA_OVERRIDE


def serve_neighbour_solicitation(lease: Lease, resolve_mac: Callable[[int], bytes | None] | None,
                                 frame: bytes) -> tuple[str, bytes | None]:
    ip, message = _icmp(frame)
    if message[0] != NEIGHBOUR_SOLICITATION or len(message) < 24:
        raise Malformed("not a neighbour solicitation")
    target = ipaddress.IPv6Address(message[8:24])
    if target.is_multicast:
        raise Malformed("neighbour solicitation for a multicast address")
    opts = _options(message[24:])
    if ip.src == _UNSPECIFIED:
        if ip.dst not in _SOLICITED_NODE or SOURCE_LL in opts:
            raise Malformed("duplicate address detection not to a solicited-node address, or with a MAC")
        return "nd_dad_probe", None  # the instance checks its own address is free: silence says it is
    owner = neighbour_owner(lease, resolve_mac, target)
    if owner is None:
        return "nd_unanswered", None
    mac, flags = owner
    body = struct.pack("!I", flags | NA_SOLICITED) + target.packed + bytes((TARGET_LL, 1)) + mac
    return "nd_neighbour_advertisement", icmpv6_frame(_reply_mac(frame, opts), mac, ROUTER_LINK_LOCAL, ip.src,
                                                      NEIGHBOUR_ADVERTISEMENT, body)


def serve_router_solicitation(lease: Lease, frame: bytes) -> tuple[str, bytes | None]:
    ip, message = _icmp(frame)
    if message[0] != ROUTER_SOLICITATION:
        raise Malformed("not a router solicitation")
    opts = _options(message[8:])
    if ip.src == _UNSPECIFIED:
        if SOURCE_LL in opts:
            raise Malformed("router solicitation from :: with a source link-layer option")
        return "nd_router_advertisement", router_advertisement(lease)
    return "nd_router_advertisement", router_advertisement(lease, ip.src, _reply_mac(frame, opts))


def router_advertisement(lease: Lease, dst: ipaddress.IPv6Address = ALL_NODES, dst_mac: bytes | None = None) -> bytes:
    """A whole router advertisement frame from fe80::1 (to all nodes unless told otherwise)."""
    if lease.ipv6 is None:
        raise ValueError("the lease has no IPv6 address")
    net = lease.ipv6.network
    body = (_RA.pack(CUR_HOP_LIMIT, FLAG_MANAGED | FLAG_OTHER, ROUTER_LIFETIME, 0, 0)
            + bytes((SOURCE_LL, 1)) + GATEWAY_MAC
            + struct.pack("!BBHI", MTU_OPTION, 1, 0, lease.mtu)
            + struct.pack("!BBBBIII", PREFIX_INFO, 4, net.prefixlen, FLAG_ON_LINK, VALID_LIFETIME,
                          PREFERRED_LIFETIME, 0) + net.network_address.packed)
    return icmpv6_frame(dst_mac or multicast_mac(dst), GATEWAY_MAC, ROUTER_LINK_LOCAL, dst,
                        ROUTER_ADVERTISEMENT, body)

"""The DHCPv4 server (RFC 2131, options RFC 2132) a host runs for each TAP ENI: one client, one fixed lease.

The instance's address is the ENI's, fixed by the control plane; DHCP only tells it. So the server keeps
no state: every answer follows from the lease and the message. The message rides UDP 68 → 67::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +---------------+---------------+---------------+---------------+
    |  op (1 req)   | htype (1 eth) |   hlen (6)    |     hops      |
    +---------------+---------------+---------------+---------------+
    |                     xid (transaction id)                      |
    +-------------------------------+-------------------------------+
    |             secs              |B|         flags (0)           |
    +-------------------------------+-------------------------------+
    |                ciaddr (client's current address)              |
    |                yiaddr ("your" address: the lease)             |
    |                siaddr (next boot server: 0)                   |
    |                giaddr (relay: 0, there are none)              |
    |                chaddr (client MAC, 16 bytes)                  |
    |                sname (64 bytes), file (128 bytes)             |
    +---------------------------------------------------------------+
    |                 magic cookie 99.130.83.99                     |
    +---------------+---------------+-------------------------------+
    |  code         |  length       |  value ... (0 pad, 255 end)   |
    +---------------+---------------+-------------------------------+

Answers: DISCOVER → OFFER; REQUEST → ACK for the lease's address (selecting with our server identifier,
init-reboot's requested address, renewing/rebinding's ciaddr), else NAK (a REQUEST selecting another
server's offer gets nothing); INFORM → ACK with options only (no yiaddr, no lease time, RFC 2131 §4.3.5);
RELEASE, DECLINE → nothing (the address stays the ENI's). Replies come from the router (.1, also the server
identifier) and the gateway MAC; they are broadcast (255.255.255.255, ff:ff:ff:ff:ff:ff) when the client
set the broadcast flag or has no ciaddr, and for every NAK (§4.1), else unicast to ciaddr and chaddr.
A reply echoes the client identifier (RFC 6842), puts the requested parameters in the order asked
(RFC 2132 §9.8) then every other one the lease has (RFC 2131 §4.3.1 allows it), and is padded to the
300-byte BOOTP minimum (RFC 1542 §2.1) that old clients expect.

Refused (Malformed): not a BOOTREQUEST for Ethernet, a chaddr other than the ENI's MAC (another VM
spoofing its neighbour), a relayed message (giaddr set), no magic cookie, no or unknown message type,
options running past the end or without the end option, a fragmented or badly checksummed IPv4 header.
The UDP checksum is not checked: a virtio NIC may hand over a partial one (checksum offload).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING

from .addresses import GATEWAY_MAC
from .ethernet import BROADCAST_MAC, ETH_HEADER, Malformed, ipv4_udp_frame
from .headers import IPv4, UDP, HeaderError, checksum

if TYPE_CHECKING:
    from .link_services import Lease

SERVER_PORT, CLIENT_PORT = 67, 68
BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MAGIC = b"\x63\x82\x53\x63"
BROADCAST_FLAG = 0x8000
MIN_BOOTP = 300

# Option codes (RFC 2132).
PAD, SUBNET_MASK, ROUTER, DNS, HOSTNAME, DOMAIN_NAME, MTU, BROADCAST = 0, 1, 3, 6, 12, 15, 26, 28
NTP, REQUESTED_ADDRESS, LEASE_TIME, MESSAGE_TYPE, SERVER_ID = 42, 50, 51, 53, 54
PARAMETER_LIST, MESSAGE, RENEWAL_TIME, REBINDING_TIME, CLIENT_ID, END = 55, 56, 58, 59, 61, 255

_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes, then the cookie
_FIXED = _BOOTP.size + len(MAGIC)
_ZERO = bytes(4)


def parse_options(buf: bytes) -> dict[int, bytes]:
    """Options by code; a code seen twice is concatenated (RFC 3396). Raises Malformed."""
    opts: dict[int, bytes] = {}
    i = 0
    while i < len(buf):
        code = buf[i]
        if code == PAD:
            i += 1
            continue
        if code == END:
            return opts
        if i + 2 > len(buf) or i + 2 + buf[i + 1] > len(buf):
            raise Malformed(f"DHCP option {code} runs past the end")
        opts[code] = opts.get(code, b"") + buf[i + 2:i + 2 + buf[i + 1]]
        i += 2 + buf[i + 1]
    raise Malformed("DHCP options without the end option")


def option(code: int, value: bytes) -> bytes:
    """One option; a value over 255 bytes is split into several of the same code (RFC 3396)."""
    return b"".join(bytes((code, len(value[i:i + 255]))) + value[i:i + 255]
                    for i in range(0, max(len(value), 1), 255))


def _parameters(lease: Lease) -> dict[int, bytes]:
    """What the instance learns, in the order sent when it does not ask for an order."""
    net = lease.ipv4.network
    params = {SUBNET_MASK: net.netmask.packed, ROUTER: lease.router.packed,
              DNS: b"".join(a.packed for a in lease.dns_servers),
              DOMAIN_NAME: lease.domain_name.encode("ascii", "ignore"),
              HOSTNAME: lease.hostname.encode("ascii", "ignore"),
              MTU: struct.pack("!H", lease.mtu), BROADCAST: net.broadcast_address.packed,
              NTP: b"".join(a.packed for a in lease.ntp_servers)}
    return {code: value for code, value in params.items() if value}


def _message(lease: Lease, req: tuple, opts: dict[int, bytes], kind: int, inform: bool = False) -> bytes:
    _op, _ht, _hl, _hops, xid, _secs, flags, ciaddr, _yi, _si, giaddr, chaddr, _sn, _f = req
    head = [option(MESSAGE_TYPE, bytes((kind,))), option(SERVER_ID, lease.router.packed)]
    if kind == NAK:
        yiaddr, ciaddr = _ZERO, _ZERO
        head.append(option(MESSAGE, b"requested address is not this ENI's"))
    else:
        yiaddr = _ZERO if inform else lease.ipv4.ip.packed
        if kind == OFFER:
            ciaddr = _ZERO
        if yiaddr != _ZERO:
            t = lease.lease_time
            head += [option(LEASE_TIME, struct.pack("!I", t)), option(RENEWAL_TIME, struct.pack("!I", t // 2)),
                     option(REBINDING_TIME, struct.pack("!I", t * 7 // 8))]
        params = _parameters(lease)
        for code in opts.get(PARAMETER_LIST, b""):
            if code in params:
                head.append(option(code, params.pop(code)))
        head += [option(code, value) for code, value in params.items()]
    if CLIENT_ID in opts:
        head.append(option(CLIENT_ID, opts[CLIENT_ID]))
    body = _BOOTP.pack(BOOTREPLY, 1, 6, 0, xid, 0, flags, ciaddr, yiaddr, _ZERO, giaddr, chaddr,
                       bytes(64), bytes(128)) + MAGIC + b"".join(head) + bytes((END,))
    return body + bytes(max(0, MIN_BOOTP - len(body)))


def serve(lease: Lease, frame: bytes) -> tuple[str, bytes | None]:
    """(what happened, reply frame or None) for a frame carrying UDP 68 → 67; raises Malformed."""
    try:
        ip = IPv4.parse(frame[ETH_HEADER:])
        udp = UDP.parse(ip.payload)
    except HeaderError as e:
        raise Malformed(str(e)) from None
    if checksum(frame[ETH_HEADER:ETH_HEADER + (frame[ETH_HEADER] & 0xF) * 4]) != 0:
        raise Malformed("IPv4 header checksum")
    if ip.more_fragments or ip.frag_offset or (udp.sport, udp.dport) != (CLIENT_PORT, SERVER_PORT):
        raise Malformed("not a whole DHCP request")
    msg = udp.payload
    if len(msg) < _FIXED or msg[_BOOTP.size:_FIXED] != MAGIC:
        raise Malformed("no DHCP magic cookie")
    req = _BOOTP.unpack_from(msg)
    op, htype, hlen, _hops, _xid, _secs, _flags, ciaddr, _yi, _si, giaddr, chaddr = req[:12]
    if (op, htype, hlen) != (BOOTREQUEST, 1, 6):
        raise Malformed("not a BOOTREQUEST from Ethernet")
    if chaddr[:6] != lease.mac:
        raise Malformed("chaddr is not the ENI's MAC")
    if giaddr != _ZERO:
        raise Malformed("relayed DHCP: the VPC has no relay agents")
    opts = parse_options(msg[_FIXED:])
    kind = opts.get(MESSAGE_TYPE, b"")
    if len(kind) != 1:
        raise Malformed("no DHCP message type")
    kind = kind[0]
    for code in (SERVER_ID, REQUESTED_ADDRESS):
        if code in opts and len(opts[code]) != 4:
            raise Malformed(f"DHCP option {code} is not an address")
    if kind == DISCOVER:
        return "dhcp_offer", _send(lease, req, _message(lease, req, opts, OFFER))
    if kind == REQUEST:
        if opts.get(SERVER_ID, lease.router.packed) != lease.router.packed:
            return "dhcp_other_server", None  # selecting someone else's offer (there is nobody else)
        wanted = opts.get(REQUESTED_ADDRESS) or (ciaddr if ciaddr != _ZERO else None)
        if wanted is None:
            raise Malformed("DHCP REQUEST names no address")
        if wanted != lease.ipv4.ip.packed:
            return "dhcp_nak", _send(lease, req, _message(lease, req, opts, NAK), broadcast=True)
        return "dhcp_ack", _send(lease, req, _message(lease, req, opts, ACK))
    if kind == INFORM:
        return "dhcp_inform", _send(lease, req, _message(lease, req, opts, ACK, inform=True))
    if kind == RELEASE:
        return "dhcp_release", None
    if kind == DECLINE:
        return "dhcp_decline", None
    raise Malformed(f"DHCP message type {kind} is not a client's")


def _send(lease: Lease, req: tuple, message: bytes, broadcast: bool = False) -> bytes:
    flags, ciaddr, chaddr = req[6], req[7], req[11]
    if broadcast or flags & BROADCAST_FLAG or ciaddr == _ZERO:
        dst, dst_mac = ipaddress.IPv4Address("255.255.255.255"), BROADCAST_MAC
    else:
        dst, dst_mac = ipaddress.IPv4Address(ciaddr), chaddr[:6]
    return ipv4_udp_frame(dst_mac, GATEWAY_MAC, lease.router, dst, SERVER_PORT, CLIENT_PORT, message)

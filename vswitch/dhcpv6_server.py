"""The stateful DHCPv6 server (RFC 8415) a host runs for each TAP ENI: one client, one fixed address.

Router advertisements set the managed flag, so the instance asks here for its address (IA_NA), its DNS
servers (option 23, RFC 3646) and its domain search list (option 24). As for DHCPv4 the address is the
ENI's, so the server keeps no state. Messages ride UDP 546 → 547 to ff02::1:2 from the client's link-local
address; answers go from fe80::1 and the gateway MAC back to that address and the frame's source MAC::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +---------------+-----------------------------------------------+
    |    msg-type   |               transaction-id                  |
    +---------------+---------------+-------------------------------+
    |          option-code          |          option-len           |
    |                 option-data (option-len bytes) ...            |

    IA_NA (3):  IAID (4) | T1 (4) | T2 (4) | options (IA Address, Status Code)
    IA Address (5):  IPv6 address (16) | preferred lifetime (4) | valid lifetime (4) | options
    Status Code (13):  status (2) | UTF-8 message
    Client / Server Identifier (1 / 2): a DUID; ours is DUID-LL (type 3, hardware 1, the gateway MAC)

Answers (§18.3): Solicit → Advertise with preference 255 so the client takes it at once (§18.2.1), or
Reply when the client asked for Rapid Commit (option 14); Request, Renew, Rebind → Reply; each gives the
first IA_NA the lease's address (preferred = half the lease time, valid = the lease time, T1/T2 at 0.5
and 0.8 of preferred), other addresses the client names in it with lifetimes 0 (drop them), further IA_NAs
and IA_TAs NoAddrsAvail and IA_PDs NoPrefixAvail. Confirm → Reply Success when every address is on the
/64, else NotOnLink (no addresses: no reply). Information-request → Reply with options only.
Release, Decline → Reply with status Success, as §18.3.7/8 ask (the address stays the ENI's).

Refused (Malformed), as §16 says to discard: options running past the end; no Client Identifier where one
is required; a Server Identifier that is not ours where one is required, or any where none may be; IA
options in an Information-request; messages only servers or relays send.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING

from .addresses import GATEWAY_MAC
from .ethernet import ROUTER_LINK_LOCAL, Malformed, ipv6_udp_frame, ipv6_upper_layer
from .headers import PROTO_UDP, UDP, HeaderError

if TYPE_CHECKING:
    from .link_services import Lease

CLIENT_PORT, SERVER_PORT = 546, 547
ALL_SERVERS = ipaddress.IPv6Address("ff02::1:2")  # All_DHCP_Relay_Agents_and_Servers

(SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE, RECONFIGURE,
 INFORMATION_REQUEST) = range(1, 12)

OPTION_CLIENTID, OPTION_SERVERID, OPTION_IA_NA, OPTION_IA_TA, OPTION_IAADDR = 1, 2, 3, 4, 5
OPTION_PREFERENCE, OPTION_STATUS_CODE, OPTION_RAPID_COMMIT = 7, 13, 14
OPTION_DNS_SERVERS, OPTION_DOMAIN_LIST, OPTION_IA_PD = 23, 24, 25
SUCCESS, NO_ADDRS_AVAIL, NOT_ON_LINK, NO_PREFIX_AVAIL = 0, 2, 4, 6

SERVER_DUID = struct.pack("!HH", 3, 1) + GATEWAY_MAC  # DUID-LL (RFC 8415 §11.4)

_OPT = struct.Struct("!HH")
_IA = struct.Struct("!4sII")
_IAADDR = struct.Struct("!16sII")


def parse_options(buf: bytes) -> list[tuple[int, bytes]]:
    """(code, data) in order; codes may repeat (several IA_NAs). Raises Malformed."""
    opts, i = [], 0
    while i < len(buf):
        if i + 4 > len(buf):
            raise Malformed("DHCPv6 option header past the end")
        code, length = _OPT.unpack_from(buf, i)
        if i + 4 + length > len(buf):
            raise Malformed(f"DHCPv6 option {code} past the end")
        opts.append((code, buf[i + 4:i + 4 + length]))
        i += 4 + length
    return opts


def option(code: int, data: bytes) -> bytes:
    return _OPT.pack(code, len(data)) + data


def _status(code: int, text: str = "") -> bytes:
    return option(OPTION_STATUS_CODE, struct.pack("!H", code) + text.encode())


def domain_list(names: str) -> bytes:
    """RFC 1035 §3.1 names, uncompressed (RFC 8415 §10); a space separates several, bad ones are left out."""
    out = []
    for name in names.split():
        labels = [label.encode("ascii", "ignore") for label in name.strip(".").split(".")]
        if all(0 < len(label) < 64 for label in labels) and len(name) < 254:
            out.append(b"".join(bytes((len(label),)) + label for label in labels) + b"\x00")
    return b"".join(out)


def _addresses(ia_data: bytes, fixed: int) -> list[bytes]:
    """The addresses an IA_NA (``fixed`` 12) or IA_TA (4) names."""
    if len(ia_data) < fixed:
        raise Malformed("IA option too short")
    found = []
    for code, data in parse_options(ia_data[fixed:]):
        if code == OPTION_IAADDR:
            if len(data) < _IAADDR.size:
                raise Malformed("IA Address option too short")
            found.append(data[:16])
    return found


def _identities(lease: Lease, opts: list[tuple[int, bytes]]) -> bytes:
    """The answer to each IA the client sent: the lease's address goes to its first IA_NA."""
    assert lease.ipv6 is not None
    mine, valid = lease.ipv6.ip.packed, lease.lease_time
    preferred = valid // 2
    out, given = [], False
    for code, data in opts:
        if code == OPTION_IA_NA:
            asked = _addresses(data, 12)
            if given:
                out.append(option(code, _IA.pack(data[:4], 0, 0) + _status(NO_ADDRS_AVAIL)))
                continue
            given = True
            body = [option(OPTION_IAADDR, _IAADDR.pack(mine, preferred, valid))]
            body += [option(OPTION_IAADDR, _IAADDR.pack(a, 0, 0)) for a in dict.fromkeys(asked) if a != mine]
            out.append(option(code, _IA.pack(data[:4], preferred // 2, preferred * 4 // 5) + b"".join(body)))
        elif code == OPTION_IA_TA:
            _addresses(data, 4)
            out.append(option(code, data[:4] + _status(NO_ADDRS_AVAIL)))
        elif code == OPTION_IA_PD:
            if len(data) < 12:
                raise Malformed("IA_PD option too short")
            out.append(option(code, _IA.pack(data[:4], 0, 0) + _status(NO_PREFIX_AVAIL)))
    return b"".join(out)


def serve(lease: Lease, frame: bytes) -> tuple[str, bytes | None]:
    """(what happened, reply frame or None) for a frame carrying UDP 546 → 547; raises Malformed."""
    assert lease.ipv6 is not None
    ip, nh, l4 = ipv6_upper_layer(frame)
    try:
        udp = UDP.parse(l4)
    except HeaderError as e:
        raise Malformed(str(e)) from None
    if nh != PROTO_UDP or (udp.sport, udp.dport) != (CLIENT_PORT, SERVER_PORT):
        raise Malformed("not UDP 546 → 547")
    if ip.src.is_unspecified or ip.src.is_multicast:
        raise Malformed("DHCPv6 client without a source address")
    msg = udp.payload
    if len(msg) < 4:
        raise Malformed("DHCPv6 message shorter than 4 bytes")
    kind, xid = msg[0], msg[1:4]
    opts = parse_options(msg[4:])
    codes = {code for code, _ in opts}
    client = next((data for code, data in opts if code == OPTION_CLIENTID), None)
    server = next((data for code, data in opts if code == OPTION_SERVERID), None)
    if kind not in (SOLICIT, REQUEST, CONFIRM, RENEW, REBIND, RELEASE, DECLINE, INFORMATION_REQUEST):
        raise Malformed(f"DHCPv6 message type {kind} is not a client's")
    if kind != INFORMATION_REQUEST and not client:
        raise Malformed("DHCPv6 message without a client identifier")
    if kind in (REQUEST, RENEW, RELEASE, DECLINE) and server != SERVER_DUID:
        raise Malformed("DHCPv6 message for another server")
    if kind in (SOLICIT, CONFIRM, REBIND) and server is not None:
        raise Malformed("DHCPv6 message that may not name a server does")
    if kind == INFORMATION_REQUEST and (server not in (None, SERVER_DUID)
                                        or codes & {OPTION_IA_NA, OPTION_IA_TA, OPTION_IA_PD}):
        raise Malformed("Information-request for another server or with IA options")

    head = option(OPTION_SERVERID, SERVER_DUID) + (option(OPTION_CLIENTID, client) if client else b"")
    dns = b"".join(a.packed for a in lease.dns_servers6)
    config = option(OPTION_DNS_SERVERS, dns) if dns else b""
    domains = domain_list(lease.domain_name)
    if domains:
        config += option(OPTION_DOMAIN_LIST, domains)
    if kind == SOLICIT and OPTION_RAPID_COMMIT in codes:
        label, body = "dhcpv6_rapid_commit", option(OPTION_RAPID_COMMIT, b"") + _identities(lease, opts) + config
    elif kind == SOLICIT:
        label, body = "dhcpv6_advertise", option(OPTION_PREFERENCE, b"\xff") + _identities(lease, opts) + config
    elif kind in (REQUEST, RENEW, REBIND):
        label, body = "dhcpv6_reply", _identities(lease, opts) + config
    elif kind == CONFIRM:
        asked = [a for code, data in opts if code in (OPTION_IA_NA, OPTION_IA_TA)
                 for a in _addresses(data, 12 if code == OPTION_IA_NA else 4)]
        if not asked:
            return "dhcpv6_confirm_empty", None  # §18.3.3: nothing to confirm, no Reply
        on_link = all(ipaddress.IPv6Address(a) in lease.ipv6.network for a in asked)
        label, body = "dhcpv6_confirm", _status(SUCCESS if on_link else NOT_ON_LINK)
    elif kind == INFORMATION_REQUEST:
        label, body = "dhcpv6_information", config
    else:  # Release, Decline
        label, body = "dhcpv6_release" if kind == RELEASE else "dhcpv6_decline", _status(SUCCESS)
    reply_type = ADVERTISE if label == "dhcpv6_advertise" else REPLY
    message = bytes((reply_type,)) + xid + head + body
    return label, ipv6_udp_frame(frame[6:12], GATEWAY_MAC, ROUTER_LINK_LOCAL, ip.src, SERVER_PORT, CLIENT_PORT,
                                 message)

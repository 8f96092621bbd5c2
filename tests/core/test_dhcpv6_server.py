"""vswitch.dhcpv6_server through LinkServices: Solicit/Advertise, Request/Reply, rapid commit, Renew, Rebind,
Confirm, Information-request, Release, Decline, refusals. Messages are built and parsed by hand (RFC 8415
§8, §21); dpkt has no DHCPv6."""

from __future__ import annotations

import struct

import pytest

from test_link_services import (LEASE, LINK_LOCAL, MAC, V6, check_ipv6, handled, one_reply, refused, services,
                                silent, udp6_frame)
from vswitch import dhcpv6_server
from vswitch.addresses import GATEWAY_MAC
from vswitch.link_services import ANSWERED, Lease

CLIENT_DUID = b"\x00\x01\x00\x01\x2c\x5e\x1a\x00" + MAC  # DUID-LLT, as dhclient and systemd make
SERVER_DUID = b"\x00\x03\x00\x01" + GATEWAY_MAC
IAID = b"\x0a\xbc\x00\x01"
XID = b"\x5a\x17\x03"
MINE = V6("2001:db8:100:1::4")


def opt(code: int, data: bytes = b"") -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def ia_na(iaid: bytes = IAID, *addresses) -> bytes:
    return opt(3, iaid + bytes(8) + b"".join(opt(5, V6(a).packed + bytes(8)) for a in addresses))


def message(kind: int, *options: bytes, client: bytes | None = CLIENT_DUID) -> bytes:
    body = (opt(1, client) if client is not None else b"") + opt(8, b"\x00\x00") + b"".join(options)
    return udp6_frame(LINK_LOCAL, "ff02::1:2", 546, 547, bytes((kind,)) + XID + body)


def parse(buf: bytes) -> list[tuple[int, bytes]]:
    out = []
    while buf:
        code, length = struct.unpack("!HH", buf[:4])
        assert 4 + length <= len(buf)
        out.append((code, buf[4:4 + length]))
        buf = buf[4 + length:]
    return out


def answer(frame: bytes, kind: int, lease: Lease = LEASE) -> dict[int, list[bytes]]:
    """Check a reply's addressing and header; its options by code."""
    e, ip, udp = check_ipv6(one_reply(frame, lease), 17)
    assert (e.dst, e.src) == (MAC, GATEWAY_MAC)
    assert (V6(ip.src), V6(ip.dst)) == (V6("fe80::1"), LINK_LOCAL)
    sport, dport, length = struct.unpack("!HHH", udp[:6])
    assert (sport, dport, length) == (547, 546, len(udp))
    assert udp[8] == kind and udp[9:12] == XID
    found: dict[int, list[bytes]] = {}
    for code, data in parse(udp[12:]):
        found.setdefault(code, []).append(data)
    assert found.pop(2) == [SERVER_DUID]
    return found


def check_config(found: dict[int, list[bytes]]) -> None:
    assert found.pop(23) == [V6("fd00:ec2::253").packed]
    assert found.pop(24) == [b"\x03ec2\x08internal\x00"]


def check_ia(data: bytes, iaid: bytes = IAID, others=()) -> None:
    assert data[:4] == iaid and struct.unpack("!II", data[4:12]) == (900, 1440)  # 0.5 and 0.8 of preferred
    addresses = parse(data[12:])
    assert addresses[0] == (5, MINE.packed + struct.pack("!II", 1800, 3600))
    assert addresses[1:] == [(5, V6(a).packed + bytes(8)) for a in others]  # lifetimes 0: drop them


def status(data: bytes) -> int:
    return struct.unpack("!H", data[:2])[0]


def test_solicit_advertise_request_reply():
    ls = services()
    solicit = message(1, ia_na(), opt(6, struct.pack("!HH", 23, 24)))
    assert ls.handle(solicit, len(solicit), 1.0) == ANSWERED and ls.leased6_at is None
    found = answer(solicit, 2)
    assert found.pop(1) == [CLIENT_DUID] and found.pop(7) == [b"\xff"]  # preference 255: take it at once
    check_ia(found.pop(3)[0])
    check_config(found)
    assert found == {}

    request = message(3, opt(2, SERVER_DUID), ia_na(IAID, MINE))
    assert ls.handle(request, len(request), 2.0) == ANSWERED and ls.leased6_at == 2.0
    found = answer(request, 7)
    assert found.pop(1) == [CLIENT_DUID]
    check_ia(found.pop(3)[0])
    check_config(found)
    assert found == {}
    assert ls.served == {"dhcpv6_advertise": 1, "dhcpv6_reply": 1}


def test_rapid_commit_gets_a_reply_at_once():
    ls = services()
    frame = message(1, ia_na(), opt(14))
    assert ls.handle(frame, len(frame), 3.0) == ANSWERED and ls.leased6_at == 3.0
    found = answer(frame, 7)
    assert found.pop(14) == [b""] and found.pop(1) == [CLIENT_DUID]
    check_ia(found.pop(3)[0])
    check_config(found)
    assert found == {}


def test_renew_and_rebind_drop_addresses_that_are_not_the_enis():
    for frame in (message(5, opt(2, SERVER_DUID), ia_na(IAID, MINE, "2001:db8:100:1::99")),
                  message(6, ia_na(IAID, "2001:db8:100:1::99", MINE))):
        found = answer(frame, 7)
        check_ia(found[3][0], others=["2001:db8:100:1::99"])


def test_several_ias_only_the_first_ia_na_gets_the_address():
    second = b"\x00\x00\x00\x02"
    frame = message(1, ia_na(), ia_na(second), opt(4, b"\x00\x00\x00\x03"), opt(25, b"\x00\x00\x00\x04" + bytes(8)))
    found = answer(frame, 2)
    first, other = found[3]
    check_ia(first)
    assert other[:12] == second + bytes(8) and [(c, status(d)) for c, d in parse(other[12:])] == [(13, 2)]
    ta, = found[4]
    assert ta[:4] == b"\x00\x00\x00\x03" and [(c, status(d)) for c, d in parse(ta[4:])] == [(13, 2)]
    pd, = found[25]
    assert pd[:12] == b"\x00\x00\x00\x04" + bytes(8) and [(c, status(d)) for c, d in parse(pd[12:])] == [(13, 6)]


def test_confirm_says_whether_the_addresses_are_on_link():
    found = answer(message(4, ia_na(IAID, MINE)), 7)
    assert [status(d) for d in found[13]] == [0] and 3 not in found
    found = answer(message(4, ia_na(IAID, "2001:db8:999::4")), 7)
    assert [status(d) for d in found[13]] == [4]  # NotOnLink: the instance moved, start over
    assert silent(message(4, ia_na())).served == {"dhcpv6_confirm_empty": 1}


def test_information_request_gets_options_only():
    found = answer(message(11, client=None), 7)
    check_config(found)
    assert found == {}
    found = answer(message(11, opt(2, SERVER_DUID)), 7)
    assert found.pop(1) == [CLIENT_DUID]
    check_config(found)


def test_release_and_decline_are_acknowledged():
    for kind, label in ((8, "dhcpv6_release"), (9, "dhcpv6_decline")):
        frame = message(kind, opt(2, SERVER_DUID), ia_na(IAID, MINE))
        found = answer(frame, 7)
        assert [status(d) for d in found[13]] == [0] and 3 not in found
        verdict, _, ls = handled(frame)
        assert ls.served == {label: 1} and ls.leased6_at is None


def test_domain_search_list_and_empty_dns():
    assert dhcpv6_server.domain_list("corp.example ec2.internal.") == b"\x04corp\x07example\x00\x03ec2\x08internal\x00"
    assert dhcpv6_server.domain_list("") == b"" and dhcpv6_server.domain_list("a..b " + "x" * 64) == b""
    bare = Lease(**{**LEASE.__dict__, "dns_servers6": (), "domain_name": ""})
    found = answer(message(11), 7, bare)
    assert found == {1: [CLIENT_DUID]}


OTHER_SERVER = b"\x00\x03\x00\x01\x02\x99\x99\x99\x99\x99"


@pytest.mark.parametrize("frame", [
    message(1, ia_na(), client=None),  # Solicit without a client identifier
    message(1, ia_na(), opt(2, SERVER_DUID)),  # Solicit naming a server
    message(3, ia_na()),  # Request naming none
    message(3, opt(2, OTHER_SERVER), ia_na()),  # Request for another server
    message(5, opt(2, OTHER_SERVER), ia_na()),
    message(8, ia_na()),  # Release without a server
    message(6, opt(2, SERVER_DUID), ia_na()),  # Rebind naming a server
    message(4, opt(2, SERVER_DUID), ia_na(IAID, MINE)),  # Confirm naming a server
    message(11, ia_na()),  # Information-request with an IA
    message(11, opt(2, OTHER_SERVER)),
    message(2, ia_na()), message(7), message(10), message(12), message(13), message(0), message(200),
    message(1, opt(3, b"\x00\x00")),  # IA_NA too short
    message(5, opt(2, SERVER_DUID), opt(3, IAID + bytes(8) + opt(5, bytes(10)))),  # IA Address too short
    message(1, opt(3, IAID + bytes(8) + b"\x00\x05\x00\x30")),  # IA Address past the end of its IA
    message(1, opt(25, b"\x00")),  # IA_PD too short
    udp6_frame(LINK_LOCAL, "ff02::1:2", 546, 547, b"\x01\x00"),  # shorter than a header
    udp6_frame(LINK_LOCAL, "ff02::1:2", 546, 547, b"\x01" + XID + b"\x00\x01\x00\x10ab"),  # option past the end
    udp6_frame(LINK_LOCAL, "ff02::1:2", 546, 547, b"\x01" + XID + opt(1, CLIENT_DUID) + b"\x00\x01\x00"),
    udp6_frame("::", "ff02::1:2", 546, 547, b"\x0b" + XID),  # from the unspecified address
], ids=["no client", "solicit+server", "request no server", "request other", "renew other", "release no server",
        "rebind+server", "confirm+server", "info+ia", "info other", "advertise", "reply", "reconfigure",
        "relay-forw", "relay-repl", "type 0", "type 200", "ia_na short", "iaaddr short", "iaaddr past",
        "ia_pd short", "header", "option past", "option header past", "unspecified source"])
def test_malformed_dhcpv6_is_refused(frame):
    refused(frame)


def test_bytes_after_the_ipv6_payload_are_ignored():
    check_config(answer(message(11, client=None) + bytes(30), 7))  # Ethernet padding, as a NIC may add

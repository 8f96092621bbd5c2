"""Addresses as integers: the data path compares and hashes ints, never address objects.

IPv6 keys carry a tag bit above the 128 address bits so one dictionary can hold both families
without ``::a.b.c.d`` colliding with ``a.b.c.d``.
"""

from __future__ import annotations

import ipaddress
import re

V6_TAG = 1 << 128
_ENI_HEX = re.compile(r"[0-9a-f]{1,16}")


def key(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    ip = ipaddress.ip_address(address)
    return int(ip) if ip.version == 4 else int(ip) | V6_TAG


def text(k: int) -> str:
    return str(ipaddress.IPv6Address(k & ~V6_TAG)) if k & V6_TAG else str(ipaddress.IPv4Address(k))


def eni_number(eni_id: str) -> int:
    """``eni-0123456789abcdef`` → its 64-bit number (carried in the Geneve SOURCE_ENI option)."""
    if not isinstance(eni_id, str) or not eni_id.startswith("eni-") or not _ENI_HEX.fullmatch(eni_id, 4):
        raise ValueError(f"not an ENI id (eni- and 1 to 16 lowercase hex digits): {eni_id!r}")
    return int(eni_id[4:], 16)


def eni_id(number: int) -> str:
    return f"eni-{number:016x}"


def eni_mac(number: int) -> bytes:
    """An ENI's stable MAC address: locally administered unicast (02:…) and the ENI number's low 40 bits,
    so it never changes while the ENI lives, wherever its instance moves."""
    return bytes((0x02,)) + (number & 0xFF_FFFF_FFFF).to_bytes(5, "big")


GATEWAY_MAC = bytes.fromhex("060000000001")  # the subnet router (.1, ::1, fe80::1) on every TAP ENI: never an ENI's (02:…)


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)

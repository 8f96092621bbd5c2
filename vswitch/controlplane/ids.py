"""Cloud-style resource ids: ``vpc-0a1b2c3d4e5f60718``.

Most kinds carry 17 hex digits as the reference cloud does; ENIs carry 16 because the ENI number
travels in the 64-bit Geneve SOURCE_ENI option (``vswitch.addresses.eni_number``).
"""

from __future__ import annotations

import re
import secrets

DIGITS = {"eni": 16}


def new_id(prefix: str) -> str:
    digits = DIGITS.get(prefix, 17)
    return f"{prefix}-{secrets.token_hex(9)[:digits]}"


def kind_of(resource_id: str) -> str | None:
    m = re.fullmatch(r"([a-z]+)-([0-9a-f]{16,17})", resource_id or "")
    return m.group(1) if m else None

"""Random identifiers that never look like a card number.

The alphabet has no 0/1/i/l/o and is mostly letters: an id never holds the long digit run of a
card number, which the API's PAN guard would refuse in a path (hex ids do, about 3 in 10,000);
a candidate that still would is drawn again.
"""

from __future__ import annotations

import secrets
from typing import Final

from hammerlock.security.pan import contains_pan

__all__ = ["ID_ALPHABET", "random_id", "random_text"]

ID_ALPHABET: Final = "abcdefghjkmnpqrstuvwxyz23456789"


def random_text(length: int, alphabet: str = ID_ALPHABET) -> str:
    """``length`` characters drawn uniformly from ``alphabet`` (at most 256 characters) with the
    operating system's CSPRNG: one read of random bytes, bytes past the largest multiple of the
    alphabet's size thrown away (no modulo bias)."""
    size = len(alphabet)
    if not 1 < size <= 256:
        raise ValueError("an alphabet of 2 to 256 characters")
    limit = 256 - 256 % size
    out: list[str] = []
    while len(out) < length:
        for byte in secrets.token_bytes(length + length // 2):
            if byte < limit:
                out.append(alphabet[byte % size])
                if len(out) == length:
                    break
    return "".join(out)


def random_id(prefix: str, length: int = 20) -> str:
    """``{prefix}_{length random characters}``, never holding a card-number-like digit run."""
    while True:
        candidate = random_text(length)
        if not contains_pan(candidate):
            return f"{prefix}_{candidate}"

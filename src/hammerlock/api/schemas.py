"""Shared request/response pieces: a strict base model, bounded strings and integers, lists."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Generic, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

__all__ = [
    "MAX_SAFE_INT",
    "NOTE_TEXT",
    "VISIBLE_TEXT",
    "ApiModel",
    "DateTime",
    "ListEnvelope",
    "Name",
    "Note",
    "Reason",
    "SafeInt",
    "ShortText",
]

MAX_SAFE_INT = 2**53 - 1

SafeInt = Annotated[int, Field(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT, strict=True)]
# No control characters: PostgreSQL text cannot hold NUL, and names end up in logs and consoles;
# nor bidirectional overrides or zero-width characters, which make a name display as another.
# (ZWNJ and ZWJ, U+200C/U+200D, stay allowed: Persian and Indic spelling and emoji sequences
# need them; so do the LRM/RLM marks, which override nothing.)
VISIBLE_TEXT = r"^[^\x00-\x1f\x7f\u200b\u202a-\u202e\u2060\u2066-\u2069\ufeff]+$"
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, strip_whitespace=True, pattern=VISIBLE_TEXT),
]
ShortText = Annotated[str, StringConstraints(max_length=1000, pattern=r"^[^\x00]*$")]
# Free text a person writes (a dispute's reason, a resolution's note): lines and tabs allowed,
# other control characters, bidirectional overrides and invisible characters not.
NOTE_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u202a-\u202e\u2060\u2066-\u2069\ufeff]*$"
Note = Annotated[str, StringConstraints(max_length=1000, pattern=NOTE_TEXT)]
Reason = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1000, strip_whitespace=True, pattern=NOTE_TEXT),
]

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _rfc3339_text(value: object) -> object:
    """Date-times arrive as RFC 3339 text: pydantic's lax mode would also take a number (or a
    string of digits) as Unix seconds, which no client of this API means."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("an RFC 3339 date-time with a timezone, e.g. 2026-12-05T12:00:00Z")
    return value


DateTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)]

T = TypeVar("T")


class ApiModel(BaseModel):
    """Unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=10_000)


class ListEnvelope(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = None

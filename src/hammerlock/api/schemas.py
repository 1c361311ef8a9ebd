"""Shared request/response pieces: a strict base model, bounded strings and integers, lists."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "MAX_SAFE_INT",
    "ApiModel",
    "ListEnvelope",
    "Name",
    "SafeInt",
    "ShortText",
]

MAX_SAFE_INT = 2**53 - 1

SafeInt = Annotated[int, Field(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT, strict=True)]
# No control characters: PostgreSQL text cannot hold NUL, and names end up in logs and consoles.
Name = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=200, strip_whitespace=True, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
]
ShortText = Annotated[str, StringConstraints(max_length=1000)]

T = TypeVar("T")


class ApiModel(BaseModel):
    """Unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=10_000)


class ListEnvelope(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = None

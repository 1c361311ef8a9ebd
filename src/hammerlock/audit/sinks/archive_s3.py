"""An :class:`~hammerlock.audit.sinks.archive.ArchiveStore` in S3 or an S3-compatible store.

Objects are ``<prefix><name>`` in one bucket, written with one ``PutObject`` each (atomic: a
reader sees the whole object or none) with a ``Content-MD5`` the store checks, and, when
``object_lock_days`` is set, under Object Lock in compliance mode until then (the bucket must
have been created with Object Lock; nobody can then delete or overwrite a sealed segment, the
account's root included). ``names`` lists the prefix, one level deep.

boto3 is blocking: every call runs in a worker thread. Credentials come from boto3's standard
chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role); this
module never reads, logs or repeats them. Failures surface as :class:`ArchiveStoreError`, an
``OSError``, which the archive sink turns into a retry (``SinkUnavailable``); a missing object
as ``FileNotFoundError``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

__all__ = ["ArchiveStoreError", "S3ArchiveStore"]

MAX_KEYS_LISTED = 1_000_000  # 100 years of segments sealed every minute is about 5e7: plenty
_CONNECT_TIMEOUT_S = 5
_READ_TIMEOUT_S = 60


class ArchiveStoreError(OSError):
    """The object store failed or refused (retry later; page someone if it lasts)."""


class S3ArchiveStore:
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        object_lock_days: int | None = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3ArchiveStore needs a bucket")
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self._lock_days = object_lock_days
        self._client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=botocore.config.Config(
                connect_timeout=_CONNECT_TIMEOUT_S,
                read_timeout=_READ_TIMEOUT_S,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    def __repr__(self) -> str:
        return f"S3ArchiveStore(s3://{self.bucket}/{self.prefix})"

    async def put(self, name: str, data: bytes) -> None:
        options: dict[str, Any] = {}
        if self._lock_days is not None:
            options["ObjectLockMode"] = "COMPLIANCE"
            options["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(
                days=self._lock_days
            )
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        await self._call(
            "put_object",
            Bucket=self.bucket,
            Key=self._key(name),
            Body=data,
            ContentMD5=md5,
            **options,
        )

    async def get(self, name: str) -> bytes:
        def fetch() -> bytes:
            try:
                answer = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
                return bytes(answer["Body"].read())
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in {"NoSuchKey", "404", "NotFound"}:
                    raise FileNotFoundError(f"s3://{self.bucket}/{self._key(name)}") from None
                raise _failure("get_object", exc) from None
            except botocore.exceptions.BotoCoreError as exc:
                raise _failure("get_object", exc) from None

        return await asyncio.to_thread(fetch)

    async def names(self) -> list[str]:
        def scan() -> list[str]:
            found: list[str] = []
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            try:
                for page in pages:
                    for item in page.get("Contents", []):
                        name = item["Key"][len(self.prefix) :]
                        if name and "/" not in name and not name.startswith("."):
                            found.append(name)
                    if len(found) > MAX_KEYS_LISTED:
                        raise ArchiveStoreError(f"more than {MAX_KEYS_LISTED} objects listed")
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                raise _failure("list_objects_v2", exc) from None
            return sorted(found)

        return await asyncio.to_thread(scan)

    def _key(self, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"archive object names are plain file names, not {name!r}")
        return self.prefix + name

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        def call() -> Any:
            try:
                return getattr(self._client, operation)(**kwargs)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                raise _failure(operation, exc) from None

        return await asyncio.to_thread(call)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _failure(operation: str, exc: Exception) -> ArchiveStoreError:
    # The message of a botocore error names the operation, bucket and error code; it never
    # carries the credentials (those sign the request, they are not part of it).
    if isinstance(exc, botocore.exceptions.ClientError):
        return ArchiveStoreError(f"s3 {operation}: {_code(exc)}")
    return ArchiveStoreError(f"s3 {operation}: {type(exc).__name__}: {exc}")

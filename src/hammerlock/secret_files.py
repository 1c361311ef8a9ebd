"""Secret files created once, atomically, readable by the owner only (mode 0600).

The content is written to a private temporary file, fsynced, then hard-linked into place: a
process starting at the same moment sees either no file or the whole secret, never a torn one,
and the first writer wins.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["create_once"]


def create_once(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` unless the file exists (then leave it untouched)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

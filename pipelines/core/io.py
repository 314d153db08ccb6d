"""Atomic file writes and content hashes: the bottom of the stack, so any module may use them.

Every file the project writes goes through :func:`atomic_path` (a temporary file beside the target,
renamed onto it only when complete), so a killed process never leaves a half-written file and a
reader never sees one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_link", "write_json", "write_csv",
           "file_sha256"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` for the block to create; renamed onto ``path`` only if the
    block succeeds.

    Readers never see a half-written file, and a failure leaves the old file (or none) in place. The
    writer creates the file itself, so it gets the usual permissions (umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_link(source: str | Path, path: str | Path) -> None:
    """``path`` becomes the same file as ``source`` (a hard link, renamed into place; a copy where the file
    system has no links). Safe because every writer here replaces files by renaming, never in place: a later
    write of ``source`` makes a new file and leaves ``path``'s content as it was."""
    import shutil

    with atomic_path(path) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB chunks (weights files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

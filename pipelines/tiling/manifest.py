"""The job's records: ``DIR/manifest.json`` (one entry per input) and a sidecar per scene in progress.

Both are rewritten whole and atomically (temporary file + rename), at most about once a second (and
at the end), so a job killed at any moment leaves records that a re-run can trust, losing at most the
last second of bookkeeping (those blocks are computed again); rewriting less often keeps the cost of
thousands of scenes or blocks linear:

- the manifest says, for people, dashboards and scripts, what happened to each input: its size and CRS,
  the output, the model (path and SHA-256) and settings, times, block counts and any error. Whether an
  output can be reused is decided by the output itself: every COG carries the fingerprint of the model
  and settings that made it (tag ``PIPELINES_FINGERPRINT``), so a re-run skips it when the fingerprint
  matches and refuses to reuse it (or, with ``--overwrite``, redoes it) when it does not, even if the
  manifest was lost or is a second behind;
- the sidecar ``DIR/.partial/NAME.json`` lists the blocks whose numerators are on disk
  (``DIR/.partial/NAME/<i>_<j>.npy``, each written atomically before it is listed), with the same
  fingerprint, so a killed scene resumes at the first block it had not finished.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from pipelines.core.io import write_json

__all__ = ["Manifest", "Sidecar", "now", "describe_change"]

VERSION = 1
SAVE_EVERY_S = 1.0


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _short(value):
    return f"{value[:10]}.." if isinstance(value, str) and len(value) > 24 else value


# settings a fingerprint names only when they differ from these, so outputs made before they existed still
# count as made with the same settings
IMPLIED = {"engine": "torch", "tta": "none"}


def describe_change(old: dict, new: dict) -> str:
    """``"tile 512 -> 256, model_sha256 3f2a.. -> 9c01.."``: what differs between two fingerprints."""
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, IMPLIED.get(key)), new.get(key, IMPLIED.get(key))
        if a != b:
            parts.append(f"{key} {_short(a)} -> {_short(b)}")
    return ", ".join(parts) or "nothing"


class Manifest:
    """``DIR/manifest.json``: ``{"version": 1, "updated": ..., "inputs": {path: entry}}``."""

    def __init__(self, folder: Path):
        self.path = folder / "manifest.json"
        self.data: dict[str, Any] = {"version": VERSION, "inputs": {}}
        self._lock = threading.Lock()  # the driver and its assembling thread both record
        self._saved = 0.0
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
            except (OSError, ValueError):
                loaded = None
            if isinstance(loaded, dict) and isinstance(loaded.get("inputs"), dict):
                self.data = loaded

    def get(self, path: str) -> dict:
        with self._lock:
            return dict(self.data["inputs"].get(path, {}))

    def update(self, path: str, now_: bool = False, **fields) -> dict:
        """Change ``path``'s entry; written if the last write is a second old (or ``now_``)."""
        with self._lock:
            entry = self.data["inputs"].setdefault(path, {"path": path})
            entry.update(fields)
            if now_ or time.monotonic() - self._saved > SAVE_EVERY_S:
                self._save()
            return dict(entry)

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        self.data["updated"] = now()
        write_json(self.path, self.data)
        self._saved = time.monotonic()


class Sidecar:
    """Blocks of one scene already on disk, valid only for the same fingerprint."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        self.fingerprint = fingerprint
        self.done: dict[str, str] = {}  # "i_j" -> "npy" | "empty"
        self.stale = False
        self._saved = 0.0
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("fingerprint") == fingerprint:
                self.done = dict(data.get("done", {}))
            else:
                self.stale = True

    @staticmethod
    def key(block: tuple[int, int]) -> str:
        return f"{block[0]}_{block[1]}"

    def mark(self, block: tuple[int, int], kind: str) -> None:
        """Record a block whose numerator is on disk (``npy``) or that had no valid pixel (``empty``)."""
        self.done[self.key(block)] = kind
        if time.monotonic() - self._saved > SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        write_json(self.path, {"fingerprint": self.fingerprint, "done": self.done})
        self._saved = time.monotonic()

"""The driver's files: the checkpoint of prepared claims and the per-claim CDI spec files, written atomically.

Atomic means: a temporary file in the same directory, fsync, rename over the target, fsync of the directory.
A reader (the driver after a crash, a container runtime watching the CDI directory) sees the old file or the
new one, never a torn one, and a rename that returned survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fracgpu.api.v1beta1.dra.checkpoint import Checkpoint
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.core.draprepare import cdi_file_name

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.json"


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_durably(path: Path) -> bool:
    """Remove ``path`` (True if it was there) and make the removal durable."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


class CheckpointStore:
    """``checkpoint.json`` in the driver's plugin directory."""

    def __init__(self, directory: str | os.PathLike[str], node: str) -> None:
        self.path = Path(directory) / CHECKPOINT_FILE
        self.node = node

    def load(self) -> Checkpoint:
        """The recorded claims; an empty checkpoint when there is none. A corrupt file (torn, edited, another
        node's) is moved aside with a time stamp and logged: the driver starts empty rather than not at all, and
        NodeUnprepareResources still removes a claim's CDI spec, whose path follows from the claim's uid."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Checkpoint(self.node)
        try:
            cp = Checkpoint.from_json(text)
            if cp.node != self.node:
                raise InvalidDocument(f"checkpoint.node: written on node {cp.node!r}, this is {self.node!r}")
            return cp
        except InvalidDocument as e:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("checkpoint unusable, moved aside; starting with no prepared claims path=%s aside=%s "
                      "error=%s", self.path, aside, e)
            return Checkpoint(self.node)

    def save(self, cp: Checkpoint) -> None:
        write_atomically(self.path, cp.to_json(), mode=0o600)


class CdiFiles:
    """One CDI spec file per prepared claim in the runtime's CDI directory (usually /var/run/cdi)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, uid: str) -> Path:
        return self.directory / cdi_file_name(uid)

    def write(self, uid: str, spec: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path(uid), json.dumps(spec, indent=1, sort_keys=True))

    def read(self, uid: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path(uid).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def remove(self, uid: str) -> bool:
        return remove_durably(self.path(uid))

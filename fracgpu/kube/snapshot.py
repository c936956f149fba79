"""Reading a snapshot file: a `kubectl get -o yaml` style List (or a stream of documents).

The objects are parsed by the core (`fracgpu.core.records`); this is the one file reader that
`fracgpu extender --snapshot`, `fracgpu simulate --snapshot` and `fracgpu inspect` share.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.core.records import SnapshotDoc, parse_list


class SnapshotError(Exception):
    """The snapshot file cannot be read; the message names the file and the problem."""


def read_snapshot(path: str | Path) -> SnapshotDoc:
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d is not None]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SnapshotError(f"snapshot {path}: {e}") from None
    try:
        return parse_list(docs if len(docs) != 1 else docs[0], where=str(path))
    except InvalidDocument as e:
        raise SnapshotError(str(e)) from None

"""Read plain Kubernetes JSON objects (dicts as the API server sends them). No I/O here."""

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = [
    "Obj",
    "ObjectRef",
    "annotations",
    "deletion_timestamp",
    "key",
    "labels",
    "meta",
    "name",
    "namespace",
    "resource_version",
    "uid",
]

Obj = dict[str, Any]
"""A Kubernetes object as plain JSON."""


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    value = obj.get("metadata")
    return value if isinstance(value, Mapping) else {}


def name(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("name") or "")


def namespace(obj: Mapping[str, Any]) -> str:
    """"" for cluster-scoped objects."""
    return str(meta(obj).get("namespace") or "")


def key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name): unique within one resource."""
    return namespace(obj), name(obj)


def uid(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("uid") or "")


def resource_version(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("resourceVersion") or "")


def deletion_timestamp(obj: Mapping[str, Any]) -> str | None:
    value = meta(obj).get("deletionTimestamp")
    return str(value) if value else None


def annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    value = meta(obj).get("annotations")
    return value if isinstance(value, Mapping) else {}


def labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    value = meta(obj).get("labels")
    return value if isinstance(value, Mapping) else {}


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectRef:
    """What an Event's ``involvedObject`` names."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    api_version: str = "v1"

    @classmethod
    def of(cls, obj: Mapping[str, Any], *, kind: str | None = None, api_version: str | None = None) -> "ObjectRef":
        """A reference to ``obj``; ``kind``/``api_version`` fill in for list items, which lack them."""
        return cls(
            kind=str(obj.get("kind") or kind or ""),
            name=name(obj),
            namespace=namespace(obj),
            uid=uid(obj),
            api_version=str(obj.get("apiVersion") or api_version or "v1"),
        )

    def to_json(self) -> Obj:
        out: Obj = {"kind": self.kind, "name": self.name, "apiVersion": self.api_version}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.uid:
            out["uid"] = self.uid
        return out

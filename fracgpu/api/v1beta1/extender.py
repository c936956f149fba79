"""The kube-scheduler extender wire format (k8s.io/kube-scheduler/extender/v1).

The Go types carry no JSON tags, so kube-scheduler sends the capitalised field names (`Pod`,
`Nodes`, `NodeNames`, `PodName`, ...) and absent fields as `null`; it decodes replies
case-insensitively. Decoding here is strict about types and required fields (every error names the
field), accepts keys in any case as Go's decoder does, and ignores fields it does not know so that a
newer kube-scheduler keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fracgpu.api.v1beta1.errors import InvalidDocument

MAX_SCORE = 10  # extenderv1.MaxExtenderPriority


def _fold(raw: Any, where: str) -> dict[str, Any]:
    """An object's keys folded to lower case, as Go's case-insensitive decoder matches them."""
    if not isinstance(raw, Mapping):
        raise InvalidDocument(f"{where}: expected a JSON object, got {_kind(raw)}")
    return {str(k).lower(): v for k, v in raw.items()}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _name_of(obj: Any, where: str) -> str:
    if not isinstance(obj, Mapping):
        raise InvalidDocument(f"{where}: expected an object, got {_kind(obj)}")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise InvalidDocument(f"{where}.metadata: expected an object, got {_kind(meta)}")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidDocument(f"{where}.metadata.name: expected a non-empty string, got {_kind(name)}")
    return name


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    """The body of filter and prioritize: the pod and the candidate nodes.

    With nodeCacheCapable the candidates come as `NodeNames`; otherwise as `Nodes.items`, full
    v1.Node objects that a filter reply must echo back (a subset of them).
    """

    pod: Mapping[str, Any]
    node_names: tuple[str, ...]
    nodes: tuple[Mapping[str, Any], ...] | None = None  # set when the request carried full Nodes

    @property
    def pod_namespace(self) -> str:
        meta: Mapping[str, Any] = self.pod["metadata"]
        return str(meta.get("namespace") or "default")

    @property
    def pod_name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @staticmethod
    def from_obj(raw: Any) -> ExtenderArgs:
        top = _fold(raw, "ExtenderArgs")
        pod: Any = top.get("pod")
        _name_of(pod, "ExtenderArgs.Pod")
        if not isinstance(pod.get("spec"), Mapping):
            raise InvalidDocument(f"ExtenderArgs.Pod.spec: expected an object, got {_kind(pod.get('spec'))}")
        names_raw = top.get("nodenames")
        nodes_raw = top.get("nodes")
        if names_raw is not None:
            if not isinstance(names_raw, list):
                raise InvalidDocument(f"ExtenderArgs.NodeNames: expected a list of names, got {_kind(names_raw)}")
            for i, n in enumerate(names_raw):
                if not isinstance(n, str) or not n:
                    raise InvalidDocument(f"ExtenderArgs.NodeNames[{i}]: expected a non-empty string, got {_kind(n)}")
            return ExtenderArgs(pod=pod, node_names=tuple(names_raw))
        if nodes_raw is None:
            raise InvalidDocument("ExtenderArgs: neither NodeNames nor Nodes is set")
        nodes = _fold(nodes_raw, "ExtenderArgs.Nodes")
        items = nodes.get("items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise InvalidDocument(f"ExtenderArgs.Nodes.items: expected a list, got {_kind(items)}")
        names = tuple(_name_of(item, f"ExtenderArgs.Nodes.items[{i}]") for i, item in enumerate(items))
        return ExtenderArgs(pod=pod, node_names=names, nodes=tuple(items))


@dataclass(frozen=True, slots=True)
class ExtenderFilterResult:
    """The filter reply. `node_names` are the kept nodes; with full Nodes in the request the same
    nodes go back as `Nodes.items` (the objects the request carried)."""

    node_names: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)
    unresolvable: Mapping[str, str] = field(default_factory=dict)
    error: str = ""

    def to_obj(self, request: ExtenderArgs | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Nodes": None,
            "NodeNames": list(self.node_names),
            "FailedNodes": dict(self.failed),
            "FailedAndUnresolvableNodes": dict(self.unresolvable),
            "Error": self.error,
        }
        if request is not None and request.nodes is not None:
            keep = set(self.node_names)
            items = []
            for name, n in zip(request.node_names, request.nodes, strict=True):
                if name in keep:
                    keep.discard(name)  # a node named twice comes back once
                    items.append(n)
            out["Nodes"] = {"metadata": {}, "items": items}
            out["NodeNames"] = None
        return out


@dataclass(frozen=True, slots=True)
class HostPriority:
    host: str
    score: int  # 0..MAX_SCORE

    def to_obj(self) -> dict[str, Any]:
        return {"Host": self.host, "Score": self.score}


def host_priority_list(items: Sequence[HostPriority]) -> list[dict[str, Any]]:
    return [p.to_obj() for p in items]


@dataclass(frozen=True, slots=True)
class ExtenderBindingArgs:
    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str

    @property
    def pod_key(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"

    @staticmethod
    def from_obj(raw: Any) -> ExtenderBindingArgs:
        top = _fold(raw, "ExtenderBindingArgs")
        values: dict[str, str] = {}
        for key, wire in (("podname", "PodName"), ("podnamespace", "PodNamespace"), ("poduid", "PodUID"),
                          ("node", "Node")):
            v = top.get(key)
            if not isinstance(v, str) or not v:
                raise InvalidDocument(f"ExtenderBindingArgs.{wire}: expected a non-empty string, got {_kind(v)}")
            values[key] = v
        return ExtenderBindingArgs(values["podname"], values["podnamespace"], values["poduid"], values["node"])


@dataclass(frozen=True, slots=True)
class ExtenderBindingResult:
    error: str = ""

    def to_obj(self) -> dict[str, Any]:
        return {"Error": self.error}

"""Indexes over the cached pods that the decisions look up per node or per group (lock held by the
caller): pods still `allocating` per node (the confusable rule), bound pods whose reservation
cannot be read per node (fail closed), and the pods of each zone group."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fracgpu.core import confusable

_NONE: Mapping[str, confusable.AllocatingPod] = {}


class Allocating:
    """node -> pod -> its confusable-rule record, for pods in phase `allocating`."""

    def __init__(self) -> None:
        self._on_node: dict[str, dict[str, confusable.AllocatingPod]] = {}
        self._node_of: dict[str, str] = {}  # the reverse

    def __bool__(self) -> bool:
        return bool(self._on_node)

    def __len__(self) -> int:
        """Nodes with a pod allocating."""
        return len(self._on_node)

    def on(self, node: str) -> Mapping[str, confusable.AllocatingPod]:
        return self._on_node.get(node, _NONE)

    def of(self, key: str) -> confusable.AllocatingPod | None:
        node = self._node_of.get(key)
        return self._on_node.get(node, {}).get(key) if node is not None else None

    def set(self, key: str, node: str, res: confusable.AllocatingPod) -> None:
        self.unset(key)
        self._on_node.setdefault(node, {})[key] = res
        self._node_of[key] = node

    def unset(self, key: str) -> None:
        node = self._node_of.pop(key, None)
        if node is None:
            return
        on = self._on_node.get(node)
        if on is not None:
            on.pop(key, None)
            if not on:
                del self._on_node[node]


class Unreadable:
    """node -> bound pods on it whose fracgpu.io/assigned cannot be read: the node fails closed."""

    def __init__(self) -> None:
        self._on_node: dict[str, set[str]] = {}
        self._node_of: dict[str, str] = {}

    def __len__(self) -> int:
        """Pods with an unreadable reservation."""
        return len(self._node_of)

    def on(self, node: str) -> set[str]:
        return self._on_node.get(node, set())

    def mark(self, key: str, node: str) -> list[str]:
        """Record on which node (none: "") a pod holds an unreadable reservation; returns the
        nodes whose usability changes."""
        old = self._node_of.get(key, "")
        if old == node:
            return []
        changed: list[str] = []
        if old:
            del self._node_of[key]
            left = self._on_node.get(old)
            if left is not None:
                left.discard(key)
                if not left:
                    del self._on_node[old]
            changed.append(old)
        if node:
            self._node_of[key] = node
            self._on_node.setdefault(node, set()).add(key)
            changed.append(node)
        return changed


class Groups:
    """(namespace, group) -> the pods of a zone group."""

    def __init__(self) -> None:
        self._members: dict[tuple[str, str], set[str]] = {}

    def add(self, namespace: str, group: str, key: str) -> None:
        self._members.setdefault((namespace, group), set()).add(key)

    def discard(self, namespace: str, group: str, key: str) -> None:
        self._members.get((namespace, group), set()).discard(key)

    def members(self, namespace: str, group: str) -> Iterable[str]:
        return self._members.get((namespace, group), ())

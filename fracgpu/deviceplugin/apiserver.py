"""The plugin's narrow view of the API server (``ApiServer``), and an in-memory implementation of it.

Everything the plugin asks of the API server goes through ``ApiServer``; ``kubeapiserver`` implements
it over ``fracgpu.kube``; ``MemoryApiServer`` keeps the objects in memory (tests, benchmarks, and
running without a cluster).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fracgpu.deviceplugin.pods import NodePod, node_pod_from_dict
from fracgpu.kube import objects


@dataclass(frozen=True, slots=True)
class PodEvent:
    namespace: str
    name: str
    uid: str
    reason: str  # CamelCase, e.g. FracgpuAllocateRefused
    message: str
    type: str = "Warning"


class ApiServer(Protocol):
    def node_pods(self) -> list[NodePod]:
        """Pods bound to this node (all phases)."""
        ...

    def refresh(self) -> None:
        """Make node_pods() current now (a kubelet call found no pod; the watch may lag)."""
        ...

    def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        """Merge-patch the pod's annotations (None deletes a key). LookupError when the pod is gone."""
        ...

    def pod_event(self, event: PodEvent) -> None: ...

    def publish_node(self, annotations: Mapping[str, str], labels: Mapping[str, str]) -> None:
        """Merge-patch this node's annotations and labels."""
        ...

    def renew_lease(self) -> None:
        """Create or renew the heartbeat Lease fracgpu-node-<node>."""
        ...


class MemoryApiServer:
    """Pods and one node in memory. Thread-safe; records every write."""

    def __init__(self, node: str, pods: list[Mapping[str, Any]] | None = None) -> None:
        self.node = node
        self._lock = threading.Lock()
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[PodEvent] = []
        self.node_annotations: dict[str, str] = {}
        self.node_labels: dict[str, str] = {}
        self.node_writes = 0
        self.lease_renewals = 0
        self.fail_writes = False  # simulate an unreachable API server
        self._snapshot: list[NodePod] | None = None  # decoded pods, until the next change
        self._decoded: dict[str, NodePod] = {}  # per pod, until that pod changes
        for p in pods or []:
            self.put_pod(p)

    def put_pod(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            key = "/".join(objects.key(pod))
            self.pods[key] = copy.deepcopy(dict(pod))
            self._decoded.pop(key, None)
            self._snapshot = None

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self.pods.pop(f"{namespace}/{name}", None)
            self._decoded.pop(f"{namespace}/{name}", None)
            self._snapshot = None

    def annotations(self, namespace: str, name: str) -> dict[str, str]:
        with self._lock:
            return dict(objects.annotations(self.pods[f"{namespace}/{name}"]))

    def node_pods(self) -> list[NodePod]:
        with self._lock:
            if self._snapshot is None:
                out = []
                for key, p in self.pods.items():
                    if (p.get("spec") or {}).get("nodeName") != self.node:
                        continue
                    if key not in self._decoded:
                        self._decoded[key] = node_pod_from_dict(p)
                    out.append(self._decoded[key])
                self._snapshot = out
            return self._snapshot

    def refresh(self) -> None:
        pass

    def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        with self._lock:
            if self.fail_writes:
                raise ConnectionError("API server unreachable")
            pod = self.pods.get(f"{namespace}/{name}")
            if pod is None:
                raise LookupError(f"pod {namespace}/{name} not found")
            self._snapshot = None
            self._decoded.pop(f"{namespace}/{name}", None)
            current = pod["metadata"].setdefault("annotations", {})
            for k, v in annotations.items():
                if v is None:
                    current.pop(k, None)
                else:
                    current[k] = v

    def pod_event(self, event: PodEvent) -> None:
        with self._lock:
            self.events.append(event)

    def publish_node(self, annotations: Mapping[str, str], labels: Mapping[str, str]) -> None:
        with self._lock:
            if self.fail_writes:
                raise ConnectionError("API server unreachable")
            self.node_annotations.update(annotations)
            self.node_labels.update(labels)
            self.node_writes += 1

    def renew_lease(self) -> None:
        with self._lock:
            if self.fail_writes:
                raise ConnectionError("API server unreachable")
            self.lease_renewals += 1

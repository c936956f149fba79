"""``ApiServer`` over the real API server, through ``fracgpu.kube`` (KubeWriter + a Reflector of this node's pods).

Pods bound to the node are watched (fieldSelector spec.nodeName=<node>) and decoded once per
event into ``NodePod``; ``node_pods()`` is a read of that cache, cheap enough to call before
every kubelet call. ``refresh()`` re-lists at once (the plugin calls it when a kubelet call finds
no pod: a pod bound a moment ago may not have reached the watch yet).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from fracgpu.api.v1beta1.names import DEFAULT_NAMESPACE, lease_name
from fracgpu.deviceplugin.apiserver import PodEvent
from fracgpu.deviceplugin.pods import NodePod, node_pod_from_dict
from fracgpu.kube import errors, objects
from fracgpu.kube.objects import ObjectRef
from fracgpu.kube.reflector import Reflector, WatchEvent
from fracgpu.kube.resources import PODS
from fracgpu.kube.writer import EVENT_WARNING, KubeWriter

log = logging.getLogger(__name__)


class KubeApiServer:
    def __init__(self, writer: KubeWriter, node: str, namespace: str = DEFAULT_NAMESPACE,
                 lease_duration_s: int = 40) -> None:
        self.writer = writer
        self.node = node
        self.namespace = namespace
        self.lease_duration_s = lease_duration_s
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], NodePod] = {}
        self._snapshot: list[NodePod] | None = None
        self._reflector = Reflector(writer.transport, PODS, self._on_event,
                                    field_selector=f"spec.nodeName={node}", name=f"pods-on-{node}")

    def start(self, timeout_s: float = 30.0) -> None:
        self._reflector.start()
        if not self._reflector.wait_synced(timeout_s):
            log.warning("pod list not synced yet node=%s; serving from a direct list", self.node)
            self.refresh()

    def stop(self) -> None:
        self._reflector.stop()

    def _on_event(self, event: WatchEvent) -> None:
        with self._lock:
            if event.type == "DELETED":
                self._pods.pop(event.key, None)
            else:
                self._pods[event.key] = node_pod_from_dict(event.object)
            self._snapshot = None

    # --- ApiServer ---

    def node_pods(self) -> list[NodePod]:
        with self._lock:
            if self._snapshot is None:
                self._snapshot = list(self._pods.values())
            return self._snapshot

    def refresh(self) -> None:
        try:
            items = self.writer.list_pods(node_name=self.node)
        except errors.KubeAPIError as e:
            log.warning("pod list failed node=%s error=%s", self.node, e)
            return
        with self._lock:
            self._pods = {objects.key(o): node_pod_from_dict(o) for o in items}
            self._snapshot = None

    def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        try:
            self.writer.patch_pod_annotations(namespace, name, annotations)
        except errors.NotFound:
            raise LookupError(f"pod {namespace}/{name} not found") from None

    def pod_event(self, event: PodEvent) -> None:
        ref = ObjectRef(kind="Pod", name=event.name, namespace=event.namespace, uid=event.uid)
        self.writer.create_event(ref, reason=event.reason, message=event.message,
                                 type=event.type or EVENT_WARNING)

    def publish_node(self, annotations: Mapping[str, str], labels: Mapping[str, str]) -> None:
        self.writer.patch_node_metadata(self.node, annotations=dict(annotations), labels=dict(labels))

    def renew_lease(self) -> None:
        self.writer.renew_lease(self.namespace, lease_name(self.node), holder=f"fracgpu-device-plugin/{self.node}",
                                duration_s=self.lease_duration_s)

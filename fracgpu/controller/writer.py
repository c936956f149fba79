"""The controller's writes over ``fracgpu.kube`` (no other API access); its leader Lease store is
``fracgpu.kube.leader.KubeLeaseStore``, shared with the extender (re-exported here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fracgpu.kube.leader import KubeLeaseStore
from fracgpu.kube.objects import ObjectRef
from fracgpu.kube.resources import JOBS
from fracgpu.kube.writer import KubeWriter

__all__ = ["JOBS", "ControllerWriter", "KubeLeaseStore"]


class ControllerWriter:
    """``loop.Writer`` over a ``KubeWriter``."""

    def __init__(self, writer: KubeWriter) -> None:
        self.writer = writer

    def evict(self, namespace: str, name: str, uid: str, grace_period_s: int | None) -> None:
        """policy/v1 Eviction of exactly this pod instance (uid precondition: never its successor)."""
        self.writer.evict_pod(namespace, name, grace_period_s=grace_period_s, uid=uid or None)

    def add_taint(self, node: str, key: str, effect: str) -> None:
        self.writer.add_node_taint(node, key, effect=effect)

    def remove_taint(self, node: str, key: str) -> None:
        self.writer.remove_node_taint(node, key)

    def record_event(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        self.writer.create_event(ref, reason=reason, message=message, type=type_)

    def create_job(self, namespace: str, body: Mapping[str, Any]) -> None:
        self.writer.create_object(JOBS, body, namespace=namespace)

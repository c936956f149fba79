"""The controller's writes over ``fracgpu.kube`` (no other API access); its leader Lease store is
``fracgpu.kube.leader.KubeLeaseStore``, shared with the extender (re-exported here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fracgpu.kube.leader import KubeLeaseStore
from fracgpu.kube.objects import ObjectRef
from fracgpu.kube.resources import PODS, Resource
from fracgpu.kube.writer import KubeWriter

__all__ = ["JOBS", "ControllerWriter", "KubeLeaseStore"]

JOBS = Resource("batch", "v1", "jobs", "Job", namespaced=True)


class ControllerWriter:
    """``loop.Writer`` over a ``KubeWriter``."""

    def __init__(self, writer: KubeWriter) -> None:
        self.writer = writer

    def evict(self, namespace: str, name: str, uid: str, grace_period_s: int | None) -> None:
        """policy/v1 Eviction of exactly this pod instance (uid precondition: never its successor)."""
        options: dict[str, Any] = {}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_period_s is not None:
            options["gracePeriodSeconds"] = grace_period_s
        body: dict[str, Any] = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        if options:
            body["deleteOptions"] = options
        self.writer.transport.request("POST", PODS.path(namespace, name, "eviction"), body=body)

    def add_taint(self, node: str, key: str, effect: str) -> None:
        self.writer.add_node_taint(node, key, effect=effect)

    def remove_taint(self, node: str, key: str) -> None:
        self.writer.remove_node_taint(node, key)

    def record_event(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        self.writer.create_event(ref, reason=reason, message=message, type=type_)

    def create_job(self, namespace: str, body: Mapping[str, Any]) -> None:
        self.writer.transport.request("POST", JOBS.path(namespace), body=dict(body))

"""The controller's writes and its leader Lease, over ``fracgpu.kube`` (no other API access)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fracgpu.controller import reconcile
from fracgpu.controller.leader import LeaseConflict
from fracgpu.kube import errors
from fracgpu.kube.objects import ObjectRef
from fracgpu.kube.resources import LEASES, PODS, Resource
from fracgpu.kube.writer import KubeWriter

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

    def record_event(self, ref: reconcile.ObjectRef, type_: str, reason: str, message: str) -> None:
        involved = ObjectRef(kind=ref.kind, name=ref.name, namespace=ref.namespace, uid=ref.uid)
        self.writer.create_event(involved, reason=reason, message=message, type=type_)

    def create_job(self, namespace: str, body: Mapping[str, Any]) -> None:
        self.writer.transport.request("POST", JOBS.path(namespace), body=dict(body))


class KubeLeaseStore:
    """``leader.LeaseStore`` for one Lease: conditional writes, 409 -> ``LeaseConflict``."""

    def __init__(self, writer: KubeWriter, namespace: str, name: str) -> None:
        self.writer = writer
        self.namespace = namespace
        self.name = name

    def get(self) -> Mapping[str, Any] | None:
        try:
            return self.writer.get_lease(self.namespace, self.name)
        except errors.NotFound:
            return None

    def create(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            return self.writer.transport.request("POST", LEASES.path(self.namespace), body=dict(body))
        except errors.Conflict as e:  # AlreadyExists is a Conflict
            raise LeaseConflict(str(e)) from e

    def replace(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            return self.writer.transport.request("PUT", LEASES.path(self.namespace, self.name), body=dict(body))
        except errors.Conflict as e:
            raise LeaseConflict(str(e)) from e

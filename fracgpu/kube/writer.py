"""KubeWriter: the typed writes (and the few direct reads) fracgpu makes to the API server.

Synchronous, thread-safe (one urllib3 pool underneath); async callers use
``await asyncio.to_thread(writer.bind_pod, ...)``. Objects in and out are plain JSON dicts.
Errors are ``fracgpu.kube.errors`` exceptions.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

from fracgpu.api.rfc3339 import format_micro_time, format_time, utc_now
from fracgpu.api.v1beta1.names import DRA_CLAIM_FINALIZER
from fracgpu.kube import errors, objects, pager
from fracgpu.kube.client import MERGE_PATCH, Transport
from fracgpu.kube.objects import Obj, ObjectRef
from fracgpu.kube.resources import EVENTS, LEASES, NAMESPACES, NODES, PODS, RESOURCECLAIMS, TENANTQUOTAS, Resource
from fracgpu.kube.retry import retry_on_conflict

__all__ = ["EVENT_NORMAL", "EVENT_WARNING", "KubeWriter"]

log = logging.getLogger(__name__)

EVENT_NORMAL: Final = "Normal"
EVENT_WARNING: Final = "Warning"


class KubeWriter:
    """Writes and reads through one ``Transport``; ``clock`` stamps Leases and Events."""

    def __init__(self, transport: Transport, *, component: str = "fracgpu", instance: str | None = None,
                 clock: Callable[[], datetime] = utc_now, conflict_retries: int = 5) -> None:
        self.transport = transport
        self.component = component
        self.instance = instance or socket.gethostname()
        self.clock = clock
        self.conflict_retries = conflict_retries

    # -- generic ----------------------------------------------------------------------------

    def get_object(self, resource: Resource, name: str, namespace: str | None = None) -> Obj:
        return self.transport.request("GET", resource.path(namespace, name))

    def list_objects(self, resource: Resource, *, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[Obj]:
        """All items (paginated under the hood), each with ``apiVersion``/``kind`` filled in."""
        return pager.list_all(self.transport, resource, namespace=namespace, label_selector=label_selector,
                              field_selector=field_selector)

    def create_object(self, resource: Resource, body: Mapping[str, Any], *, namespace: str | None = None) -> Obj:
        """POST; ``AlreadyExists`` if the name is taken."""
        return self.transport.request("POST", resource.path(namespace), body=dict(body))

    def replace_object(self, resource: Resource, body: Mapping[str, Any], *, namespace: str | None = None,
                       subresource: str | None = None) -> Obj:
        """PUT the whole object; a ``metadata.resourceVersion`` in it makes the write conditional (409)."""
        name = objects.name(body)
        return self.transport.request("PUT", resource.path(namespace, name, subresource), body=dict(body))

    def delete_object(self, resource: Resource, name: str, *, namespace: str | None = None,
                      uid: str | None = None, grace_period_s: int | None = None) -> Obj:
        """DELETE with DeleteOptions; ``uid`` is a precondition (never delete a successor of that name)."""
        options: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_period_s is not None:
            options["gracePeriodSeconds"] = grace_period_s
        return self.transport.request("DELETE", resource.path(namespace, name), body=options)

    def merge_patch(self, resource: Resource, name: str, patch: Mapping[str, Any], *,
                    namespace: str | None = None, subresource: str | None = None) -> Obj:
        return self.transport.request("PATCH", resource.path(namespace, name, subresource), body=dict(patch),
                                      content_type=MERGE_PATCH)

    # -- nodes ------------------------------------------------------------------------------

    def get_node(self, name: str) -> Obj:
        return self.get_object(NODES, name)

    def list_nodes(self, *, label_selector: str | None = None) -> list[Obj]:
        return self.list_objects(NODES, label_selector=label_selector)

    def patch_node_metadata(self, name: str, *, annotations: Mapping[str, str | None] | None = None,
                            labels: Mapping[str, str | None] | None = None) -> Obj:
        """Set annotations and labels of a Node in one merge patch; a value of None deletes the key."""
        metadata: dict[str, Any] = {}
        if annotations:
            metadata["annotations"] = dict(annotations)
        if labels:
            metadata["labels"] = dict(labels)
        if not metadata:
            return self.get_node(name)
        return self.merge_patch(NODES, name, {"metadata": metadata})

    def add_node_taint(self, name: str, key: str, *, effect: str = "NoSchedule", value: str | None = None) -> Obj:
        """Add (or update the value of) the taint ``key:effect``; read-modify-write, retried on 409."""

        def change(taints: list[Obj]) -> list[Obj] | None:
            wanted: Obj = {"key": key, "effect": effect}
            if value is not None:
                wanted["value"] = value
            for taint in taints:
                if taint.get("key") == key and taint.get("effect") == effect:
                    if taint.get("value") == value:
                        return None
                    return [wanted if t is taint else t for t in taints]
            return [*taints, {**wanted, "timeAdded": format_time(self.clock())}]

        return self._update_taints(name, change)

    def remove_node_taint(self, name: str, key: str, *, effect: str | None = None) -> Obj:
        """Remove the taints with ``key`` (and ``effect``, if given); retried on 409."""

        def change(taints: list[Obj]) -> list[Obj] | None:
            kept = [t for t in taints if not (t.get("key") == key and (effect is None or t.get("effect") == effect))]
            return None if len(kept) == len(taints) else kept

        return self._update_taints(name, change)

    def _update_taints(self, name: str, change: Callable[[list[Obj]], list[Obj] | None]) -> Obj:
        def update() -> Obj:
            node = self.get_node(name)
            spec = node.setdefault("spec", {})
            taints = change(list(spec.get("taints") or []))
            if taints is None:
                return node
            if taints:
                spec["taints"] = taints
            else:
                spec.pop("taints", None)
            return self.replace_object(NODES, node)

        return retry_on_conflict(update, retries=self.conflict_retries, what=f"taints of node {name}")

    # -- leases -----------------------------------------------------------------------------

    def get_lease(self, namespace: str, name: str) -> Obj:
        return self.get_object(LEASES, name, namespace)

    def renew_lease(self, namespace: str, name: str, *, holder: str, duration_s: int) -> Obj:
        """Create the Lease or renew it (holder, leaseDurationSeconds, renewTime); retried on 409."""

        def update() -> Obj:
            now = format_micro_time(self.clock())
            try:
                lease = self.get_lease(namespace, name)
            except errors.NotFound:
                return self.create_object(LEASES, {
                    "apiVersion": LEASES.api_version,
                    "kind": LEASES.kind,
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration_s,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
                }, namespace=namespace)  # AlreadyExists (a Conflict): another writer created it, read it
            spec = lease.setdefault("spec", {})
            if spec.get("holderIdentity") != holder:
                spec["holderIdentity"] = holder
                spec["acquireTime"] = now
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            spec["leaseDurationSeconds"] = duration_s
            spec["renewTime"] = now
            return self.replace_object(LEASES, lease, namespace=namespace)

        return retry_on_conflict(update, retries=self.conflict_retries, what=f"lease {namespace}/{name}")

    # -- pods -------------------------------------------------------------------------------

    def get_pod(self, namespace: str, name: str) -> Obj:
        return self.get_object(PODS, name, namespace)

    def list_pods(self, *, namespace: str | None = None, node_name: str | None = None,
                  label_selector: str | None = None, field_selector: str | None = None) -> list[Obj]:
        """Pods of one namespace (or all); ``node_name`` selects ``spec.nodeName`` server-side."""
        fields = [f for f in (f"spec.nodeName={node_name}" if node_name is not None else None, field_selector) if f]
        return self.list_objects(PODS, namespace=namespace, label_selector=label_selector,
                         field_selector=",".join(fields) or None)

    def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None], *,
                              resource_version: str | None = None) -> Obj:
        """Merge-patch pod annotations (None deletes); with ``resource_version``, 409 if the pod moved on."""
        metadata: dict[str, Any] = {"annotations": dict(annotations)}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return self.merge_patch(PODS, name, {"metadata": metadata}, namespace=namespace)

    def bind_pod(self, namespace: str, name: str, node: str, *, annotations: Mapping[str, str] | None = None,
                 uid: str | None = None) -> None:
        """Create the pod's Binding; the API server copies ``annotations`` onto the pod in the same write.

        Idempotent: if the pod is already bound to ``node`` with these annotations, this returns;
        bound elsewhere (or with other annotations) raises ``Conflict``.
        """
        metadata: Obj = {"name": name, "namespace": namespace}
        if annotations:
            metadata["annotations"] = dict(annotations)
        if uid:
            metadata["uid"] = uid
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": metadata,
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            self.transport.request("POST", PODS.path(namespace, name, "binding"), body=body)
        except errors.Conflict as exc:
            try:
                pod = self.get_pod(namespace, name)
            except errors.NotFound:
                raise exc from None
            bound_to = (pod.get("spec") or {}).get("nodeName")
            current = objects.annotations(pod)
            same = bound_to == node and all(current.get(k) == v for k, v in (annotations or {}).items())
            if not same or (uid and objects.uid(pod) != uid):
                raise
            log.debug("pod already bound pod=%s/%s node=%s", namespace, name, node)

    def evict_pod(self, namespace: str, name: str, *, grace_period_s: int | None = None,
                  uid: str | None = None) -> None:
        """policy/v1 Eviction; a PodDisruptionBudget refusal raises ``TooManyRequests`` with its message.

        ``uid`` is a precondition: only this instance of the pod is evicted (``Conflict`` otherwise).
        """
        body: Obj = {"apiVersion": "policy/v1", "kind": "Eviction",
                     "metadata": {"name": name, "namespace": namespace}}
        options: Obj = {}
        if grace_period_s is not None:
            options["gracePeriodSeconds"] = grace_period_s
        if uid:
            options["preconditions"] = {"uid": uid}
        if options:
            body["deleteOptions"] = options
        self.transport.request("POST", PODS.path(namespace, name, "eviction"), body=body)

    # -- events -----------------------------------------------------------------------------

    def create_event(self, involved: ObjectRef, *, reason: str, message: str, type: str = EVENT_NORMAL,
                     action: str | None = None) -> Obj:
        """A core/v1 Event about ``involved`` (cluster-scoped objects: in namespace "default")."""
        namespace = involved.namespace or "default"
        now = self.clock()
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{involved.name}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": involved.to_json(),
            "reason": reason,
            "message": message[:1024],
            "type": type,
            "count": 1,
            "firstTimestamp": format_time(now),
            "lastTimestamp": format_time(now),
            "source": {"component": self.component, "host": self.instance},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }
        if action:
            body["action"] = action
        return self.transport.request("POST", EVENTS.path(namespace), body=body)

    # -- tenant quotas ----------------------------------------------------------------------

    def get_tenant_quota(self, name: str) -> Obj:
        return self.get_object(TENANTQUOTAS, name)

    def list_tenant_quotas(self) -> list[Obj]:
        return self.list_objects(TENANTQUOTAS)

    def update_tenant_quota_status(self, name: str, status: Mapping[str, Any], *,
                                   resource_version: str | None = None) -> Obj:
        """Replace ``status`` through the /status subresource.

        With ``resource_version`` the write is conditional (``Conflict`` if the object moved on);
        without, it reads the current object and retries on conflict.
        """
        if resource_version is not None:
            return self.replace_object(TENANTQUOTAS, {
                "apiVersion": TENANTQUOTAS.api_version, "kind": TENANTQUOTAS.kind,
                "metadata": {"name": name, "resourceVersion": resource_version}, "status": dict(status)},
                subresource="status")

        def update() -> Obj:
            body = self.get_tenant_quota(name)
            body["status"] = dict(status)
            return self.replace_object(TENANTQUOTAS, body, subresource="status")

        return retry_on_conflict(update, retries=self.conflict_retries, what=f"status of TenantQuota {name}")

    # -- resource claims --------------------------------------------------------------------

    def allocate_claim(self, claim: Mapping[str, Any], status: Mapping[str, Any]) -> Obj:
        """Write a claim's allocation the way kube-scheduler does at PreBind: the finalizer
        ``resource.kubernetes.io/delete-protection`` first (the resourceclaim controller clears the
        allocation, then removes it, once the claim's last consumer is gone), then ``status``, each
        conditional on the resourceVersion read before it (409 if anyone changed the claim)."""
        namespace, _ = objects.key(claim)
        meta = dict(claim.get("metadata") or {})
        finalizers = list(meta.get("finalizers") or [])
        if DRA_CLAIM_FINALIZER not in finalizers:
            meta["finalizers"] = [*finalizers, DRA_CLAIM_FINALIZER]
            stored = self.replace_object(RESOURCECLAIMS, {**claim, "metadata": meta}, namespace=namespace)
            meta = dict(stored.get("metadata") or meta)
        return self.replace_object(RESOURCECLAIMS, {**claim, "metadata": meta, "status": dict(status)},
                                   namespace=namespace, subresource="status")

    def deallocate_claim(self, claim: Mapping[str, Any]) -> Obj:
        """Clear a claim's allocation and consumers (conditional on its resourceVersion): an allocation
        of fracgpu's that was cut short. The resourceclaim controller removes the finalizer."""
        namespace, _ = objects.key(claim)
        status = {k: v for k, v in dict(claim.get("status") or {}).items() if k not in ("allocation", "reservedFor")}
        return self.replace_object(RESOURCECLAIMS, {**claim, "status": status}, namespace=namespace,
                                   subresource="status")

    # -- namespaces -------------------------------------------------------------------------

    def list_namespaces(self, *, label_selector: str | None = None) -> list[Obj]:
        return self.list_objects(NAMESPACES, label_selector=label_selector)

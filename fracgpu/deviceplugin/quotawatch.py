"""``TenantQuotas`` fed from the API server: three list+watch reflectors (fracgpu.kube.reflector).

- TenantQuotas: all (cluster-scoped, few).
- Namespaces: all (their labels pick the TenantQuota, their annotations are the ``ns/`` quotas).
- Pods, cluster-wide (quota is cluster-wide), narrowed on the server by the field selector
  ``spec.schedulerName=fracgpu-scheduler,status.phase!=Succeeded,status.phase!=Failed``: only pods
  fracgpu placed can hold a reservation (the webhook sets that scheduler on every pod asking for
  vgpu-core and the admission policy refuses the ones that bypass it), and a pod that finishes
  leaves the selection (the watch sends a DELETED), which is exactly when it stops holding quota.
  Each pod is slimmed (``quota.slim_pod``) before the reflector keeps it: name, namespace, node,
  phase and the ``fracgpu.io/assigned`` annotation, so the per-node memory stays small.

The check is enforced once all three had their first full list (``TenantQuotas.mark_synced``).
"""

from __future__ import annotations

import logging
import threading

from fracgpu.api.v1beta1.names import SCHEDULER_NAME
from fracgpu.core.tenant import UNLIMITED, Limits
from fracgpu.deviceplugin.metrics import PluginMetrics
from fracgpu.deviceplugin.quota import TenantQuotas, slim_pod
from fracgpu.kube import objects
from fracgpu.kube.client import Transport
from fracgpu.kube.reflector import DELETED, Reflector, WatchEvent
from fracgpu.kube.resources import NAMESPACES, PODS, TENANTQUOTAS

log = logging.getLogger(__name__)

POD_FIELD_SELECTOR = f"spec.schedulerName={SCHEDULER_NAME},status.phase!=Succeeded,status.phase!=Failed"


class KubeTenantQuotas(TenantQuotas):
    def __init__(self, transport: Transport, default: Limits = UNLIMITED, metrics: PluginMetrics | None = None,
                 pod_field_selector: str = POD_FIELD_SELECTOR) -> None:
        super().__init__(default, metrics)
        self._pending = {"tenantquotas", "namespaces", "pods"}
        self._sync_lock = threading.Lock()
        self.reflectors = [
            Reflector(transport, TENANTQUOTAS, self._on_tenant_quota, name="quota-tenantquotas",
                      on_synced=lambda: self._on_synced("tenantquotas")),
            Reflector(transport, NAMESPACES, self._on_namespace, name="quota-namespaces",
                      on_synced=lambda: self._on_synced("namespaces")),
            Reflector(transport, PODS, self._on_pod, field_selector=pod_field_selector, name="quota-pods",
                      transform=slim_pod, on_synced=lambda: self._on_synced("pods")),
        ]

    def start(self) -> None:
        for r in self.reflectors:
            r.start()

    def stop(self) -> None:
        for r in self.reflectors:
            r.stop()

    def _on_synced(self, key: str) -> None:
        with self._sync_lock:
            self._pending.discard(key)
            done = not self._pending
        if done:
            self.mark_synced()

    def _on_tenant_quota(self, event: WatchEvent) -> None:
        if event.type == DELETED:
            self.delete_tenant_quota(objects.name(event.object))
        else:
            self.apply_tenant_quota(event.object)

    def _on_namespace(self, event: WatchEvent) -> None:
        if event.type == DELETED:
            self.delete_namespace(objects.name(event.object))
        else:
            self.apply_namespace(event.object)

    def _on_pod(self, event: WatchEvent) -> None:
        if event.type == DELETED:
            ns, name = event.key
            self.delete_pod(ns, name)
        else:
            self.apply_pod(event.object)

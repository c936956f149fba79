"""The extender's cache: list+watch (fracgpu.kube Reflector) of the objects placement needs.

Nodes, the plugins' heartbeat Leases (in fracgpu's namespace), Pods, Namespaces and TenantQuotas,
each turned into a slim record (fracgpu.core.records) and fed to the Scheduler on the reflector's
thread. Nodes are listed first, so that the first pod list already knows which nodes fracgpu
manages. The Scheduler is marked synced (and /readyz turns ready) after every resource's first
full list. 410 Gone and dropped watches are the Reflector's business (relist / resume).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.names import LEASE_PREFIX
from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core.records import namespace_record, node_record, pod_record
from fracgpu.extender.dracache import DraView
from fracgpu.extender.scheduler import Scheduler
from fracgpu.kube import objects
from fracgpu.kube.client import Transport
from fracgpu.kube.dralowering import has_claims
from fracgpu.kube.reflector import DELETED, Reflector, WatchEvent
from fracgpu.kube.resources import (
    LEASES,
    NAMESPACES,
    NODES,
    PODS,
    RESOURCECLAIMS,
    RESOURCECLAIMTEMPLATES,
    RESOURCESLICES,
    TENANTQUOTAS,
    Resource,
)
from fracgpu.kube.retry import Backoff

log = logging.getLogger(__name__)


class ClusterCache:
    """Owns the reflectors; `start()` returns at once, `synced` turns true after the first full sync."""

    def __init__(
        self,
        transport: Transport,
        scheduler: Scheduler,
        *,
        namespace: str,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] | None = None,
        watch_timeout_s: int = 300,
        dra: DraView | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.dra = dra  # set: the DRA side is read too (ResourceSlices, ResourceClaims, their templates)
        self._transport = transport
        self._namespace = namespace
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._watch_timeout_s = watch_timeout_s
        self._lock = threading.Lock()
        self._pending_sync: set[str] = set()
        self._started_rest = False
        self.reflectors: dict[str, Reflector] = {}
        self.synced = threading.Event()

    def _reflector(self, key: str, resource: Resource, handler: Callable[[WatchEvent], None],
                   namespace: str | None = None) -> Reflector:
        r = Reflector(
            self._transport, resource, handler, namespace=namespace, backoff=self._backoff, sleep=self._sleep,
            watch_timeout_s=self._watch_timeout_s, on_synced=lambda: self._on_synced(key),
            name=f"extender-{key}",
        )
        self.reflectors[key] = r
        self._pending_sync.add(key)
        return r

    def start(self) -> None:
        self._reflector("nodes", NODES, self._on_node).start()

    def stop(self) -> None:
        for r in list(self.reflectors.values()):
            r.stop()

    def _on_synced(self, key: str) -> None:
        start_rest = False
        with self._lock:
            self._pending_sync.discard(key)
            if key == "nodes" and not self._started_rest:
                self._started_rest = start_rest = True
            done = not self._pending_sync and self._started_rest
        if start_rest:
            # register every key before any starts: a fast first list must not find the set empty
            rest = [
                self._reflector("leases", LEASES, self._on_lease, namespace=self._namespace),
                self._reflector("namespaces", NAMESPACES, self._on_namespace),
                self._reflector("tenantquotas", TENANTQUOTAS, self._on_tenant_quota),
            ]
            if self.dra is not None:  # before the pods, so the first pod list finds their claims
                dra = self.dra
                rest += [
                    self._reflector("resourceslices", RESOURCESLICES,
                                    lambda e: dra.apply_slice(e.object, deleted=e.type == DELETED)),
                    self._reflector("resourceclaimtemplates", RESOURCECLAIMTEMPLATES,
                                    lambda e: dra.apply_template(e.object, deleted=e.type == DELETED)),
                    self._reflector("resourceclaims", RESOURCECLAIMS,
                                    lambda e: dra.apply_claim(e.object, deleted=e.type == DELETED)),
                ]
            rest.append(self._reflector("pods", PODS, self._on_pod))
            for r in rest:
                r.start()
            return
        if done and not self.synced.is_set():
            self.scheduler.mark_synced()
            self.synced.set()
            stats = self.scheduler.stats()
            log.info("cache synced nodes=%d pods=%d", stats.nodes, stats.pods)

    # ---- handlers (reflector threads) ---------------------------------------------------------
    def _on_node(self, event: WatchEvent) -> None:
        name = objects.name(event.object)
        if event.type == DELETED:
            self.scheduler.delete_node(name)
            if self.dra is not None:
                self.dra.delete_node(name)
            return
        if self.dra is not None and self.dra.apply_node(event.object):
            return
        rec = node_record(event.object, self.scheduler.cached_node(name))
        if rec.inventory_error:
            log.warning("node inventory invalid node=%s error=%s", name, rec.inventory_error)
        self.scheduler.apply_node(rec)

    def _on_lease(self, event: WatchEvent) -> None:
        name = objects.name(event.object)
        if not name.startswith(LEASE_PREFIX):
            return
        node = name[len(LEASE_PREFIX):]
        if event.type == DELETED:
            self.scheduler.delete_heartbeat(node)
        else:
            self.scheduler.apply_heartbeat(node)

    def _on_pod(self, event: WatchEvent) -> None:
        ns, name = objects.key(event.object)
        if event.type == DELETED:
            self.scheduler.delete_pod(f"{ns}/{name}")
            if self.dra is not None:
                self.dra.delete_pod(f"{ns}/{name}")
        elif self.dra is not None and has_claims(event.object):
            self.dra.apply_pod(event.object)
        else:
            rec = pod_record(event.object)
            if rec.node and rec.assignment_error and rec.wants_gpu:
                log.warning("pod reservation unreadable, its node takes no new GPU pod pod=%s node=%s error=%s",
                            rec.key, rec.node, rec.assignment_error)
            self.scheduler.apply_pod(rec)

    def _on_namespace(self, event: WatchEvent) -> None:
        if event.type == DELETED:
            self.scheduler.delete_namespace(objects.name(event.object))
        else:
            self.scheduler.apply_namespace(namespace_record(event.object))

    def _on_tenant_quota(self, event: WatchEvent) -> None:
        name = objects.name(event.object)
        if event.type == DELETED:
            self.scheduler.delete_tenant_quota(name)
            return
        try:
            self.scheduler.apply_tenant_quota(TenantQuota.from_dict(event.object))
        except InvalidDocument as e:
            log.warning("tenantquota invalid name=%s error=%s", name, e)

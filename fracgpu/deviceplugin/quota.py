"""The tenant-quota re-check Allocate makes (docs/architecture.md, "Quota enforcement", step 3).

The extender charges quota at bind; the plugin checks once more, at the pod's first Allocate,
that the tenant's quota is not exceeded. ``QuotaCheck`` is the seam the ledger calls;
``AllowAll`` is used without an API server (``--no-kube``, ``--quota-check off``).

``TenantQuotas`` is the real one. It keeps, from watch events (``quotawatch`` feeds it with
reflectors; tests may feed it objects directly), the TenantQuotas, the Namespaces and the
``fracgpu.io/assigned`` reservations of every live pod in the cluster, and decides with the core's
rules only: ``core.tenant.Tenants`` (who is the tenant, what are its limits, the cluster default
included) and ``core.quota.QuotaLedger`` (the charges; ``fits`` is the very check the extender's
bind makes, with the same wording). Nothing here is a second copy of those rules.

Semantics: the pod being admitted was charged at bind, so it is already part of its tenant's use
(``fits(..., pod=key)`` counts it exactly once, whether or not the cluster-wide watch has seen it
yet). It is refused only when the tenant's use *including it* is over the hard limit: the quota was
lowered after the bind, or a reservation the extender did not make appeared. The text is the
extender's: ``tenant tq/team-a: vgpu-memory 60Gi of 64Gi used, pod asks 8Gi`` (use of the other
pods, the limit, the pod's charge).

Until every cache has had its first full list the check fails open (counted in
``fracgpu_deviceplugin_quota_checks_total{outcome="unchecked"}``, with a warning): a refusal
fails the pod for good, and the extender has enforced the quota at bind already.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, TENANT_NS_PREFIX
from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core.pod import decode_pod
from fracgpu.core.quota import PodKey, QuotaLedger, Usage, charge_of
from fracgpu.core.records import namespace_record
from fracgpu.core.tenant import UNLIMITED, Limits, NamespaceInfo, QuotaError, Tenants, ns_tenant
from fracgpu.deviceplugin.metrics import PluginMetrics
from fracgpu.kube import objects

log = logging.getLogger(__name__)

ALLOWED = "allowed"
REFUSED = "refused"
UNCHECKED = "unchecked"


class QuotaCheck(Protocol):
    def check(self, pod: str, assignment: Assignment) -> str | None:
        """None when the pod's tenant may run it; else the reason, with the tenant's numbers."""
        ...


class AllowAll:
    def check(self, pod: str, assignment: Assignment) -> str | None:
        return None


def slim_pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a pod object the quota cache needs (a reflector keeps this, not the whole pod)."""
    meta = objects.meta(obj)
    assigned = objects.annotations(obj).get(ANN_ASSIGNED)
    spec = obj.get("spec")
    status = obj.get("status")
    out_meta: dict[str, Any] = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta}
    if isinstance(assigned, str):
        out_meta["annotations"] = {ANN_ASSIGNED: assigned}
    return {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": obj.get("kind", "Pod"),
        "metadata": out_meta,
        "spec": {"nodeName": spec.get("nodeName")} if isinstance(spec, Mapping) else {},
        "status": {"phase": status.get("phase")} if isinstance(status, Mapping) else {},
    }


class TenantQuotas:
    """Tenants, limits and cluster-wide use, kept current from watch events. Thread-safe."""

    def __init__(self, default: Limits = UNLIMITED, metrics: PluginMetrics | None = None) -> None:
        self.default = default
        self.metrics = metrics or PluginMetrics()
        self._lock = threading.Lock()
        self._quotas: dict[str, TenantQuota] = {}
        self._namespaces: dict[str, NamespaceInfo] = {}
        self._tenants: Tenants | None = None
        self._ledger = QuotaLedger(self._limits)
        self._texts: dict[PodKey, str] = {}  # raw reservation charged per pod (unchanged: not parsed again)
        self._synced = threading.Event()
        self.metrics.quota_synced.set(0)

    # --- inputs (reflector threads) ---

    def apply_tenant_quota(self, obj: Mapping[str, Any]) -> None:
        try:
            quota = TenantQuota.from_dict(obj)
        except InvalidDocument as e:
            # the CRD schema keeps these out; like the extender, an unreadable object is not applied
            # (the last readable version stays in force)
            log.warning("tenantquota invalid name=%s error=%s", objects.meta(obj).get("name"), e)
            return
        with self._lock:
            self._quotas[quota.name] = quota
            self._tenants = None

    def delete_tenant_quota(self, name: str) -> None:
        with self._lock:
            self._quotas.pop(name, None)
            self._tenants = None

    def apply_namespace(self, obj: Mapping[str, Any]) -> None:
        rec = namespace_record(obj)
        with self._lock:
            self._namespaces[rec.name] = NamespaceInfo(rec.name, rec.labels, rec.annotations)
            self._tenants = None

    def delete_namespace(self, name: str) -> None:
        with self._lock:
            self._namespaces.pop(name, None)
            self._tenants = None

    def apply_pod(self, obj: Mapping[str, Any]) -> None:
        """A pod's reservation counts until the pod is finished (core.pod.pod_finished) or gone."""
        pod = decode_pod(obj)
        key = PodKey(pod.namespace, pod.name)
        text = pod.annotations.get(ANN_ASSIGNED)
        node = pod.node
        with self._lock:
            if text is None or not node or pod.finished:
                self._release(key)
                return
            if self._texts.get(key) == text:
                return
            try:
                a = Assignment.from_json(text)
            except InvalidDocument:
                self._release(key)  # unreadable: this node's plugin refuses that pod itself
                return
            if a.node != node:
                self._release(key)  # as the extender: a reservation for another node holds nothing
                return
            self._ledger.charge(key, a.tenant, *charge_of(a))
            self._texts[key] = text

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._release(PodKey(namespace, name))

    def _release(self, key: PodKey) -> None:
        self._ledger.release(key)
        self._texts.pop(key, None)

    def mark_synced(self) -> None:
        """Every cache had its first full list: from now on the check is enforced."""
        if not self._synced.is_set():
            self._synced.set()
            self.metrics.quota_synced.set(1)
            log.info("quota caches synced tenantquotas=%d namespaces=%d", len(self._quotas), len(self._namespaces))

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    # --- lookups (lock held) ---

    def _index(self) -> Tenants:
        if self._tenants is None:
            self._tenants = Tenants(self._namespaces.values(), self._quotas.values(), self.default)
        return self._tenants

    def _limits(self, tenant: str) -> Limits | QuotaError:
        return self._index().limits(tenant)

    # --- views ---

    def used(self, tenant: str) -> Usage:
        with self._lock:
            return self._ledger.used(tenant)

    def limits(self, tenant: str) -> Limits | QuotaError:
        with self._lock:
            return self._limits(tenant)

    def tenant_of(self, namespace: str) -> str:
        with self._lock:
            return self._index().tenant_of(namespace)

    # --- QuotaCheck ---

    def check(self, pod: str, assignment: Assignment) -> str | None:
        namespace, _, name = pod.partition("/")
        why: str | None
        with self._lock:
            if not self._synced.is_set():
                self.metrics.quota_checks.labels(outcome=UNCHECKED).inc()
                log.warning("quota re-check skipped, caches not synced yet pod=%s", pod)
                return None
            tenant = assignment.tenant or self._index().tenant_of(namespace)
            if tenant.startswith(TENANT_NS_PREFIX) and tenant != ns_tenant(namespace):
                why = (f"reservation charges tenant {tenant}, but the pod is in namespace {namespace} "
                       "(the extender never writes that)")
            else:
                cores, memory = charge_of(assignment)
                outcome = self._ledger.fits(tenant, cores, memory, pod=PodKey(namespace, name))
                why = None if outcome.ok else outcome.reason
        self.metrics.quota_checks.labels(outcome=ALLOWED if why is None else REFUSED).inc()
        return why

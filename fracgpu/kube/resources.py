"""Descriptors of the resources fracgpu reads and writes, and their REST paths."""

from __future__ import annotations

import dataclasses
from typing import Final
from urllib.parse import quote

from fracgpu.api.v1beta1 import names

__all__ = [
    "CONFIGMAPS",
    "DEVICECLASSES",
    "EVENTS",
    "JOBS",
    "LEASES",
    "NAMESPACES",
    "NODES",
    "PODDISRUPTIONBUDGETS",
    "PODS",
    "RESOURCECLAIMS",
    "RESOURCECLAIMTEMPLATES",
    "RESOURCESLICES",
    "TENANTQUOTAS",
    "Resource",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """One REST resource: ``group`` is "" for the core group."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        """The REST path; a namespaced resource without ``namespace`` means all namespaces."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        elif not self.namespaced and namespace:
            raise ValueError(f"{self.plural} is cluster-scoped; got namespace {namespace!r}")
        path = f"{base}/{self.plural}"
        if name:
            if self.namespaced and not namespace:
                raise ValueError(f"{self.plural} {name!r} needs a namespace")
            path += f"/{quote(name, safe='')}"
            if subresource:
                path += f"/{subresource}"
        elif subresource:
            raise ValueError("a subresource needs a name")
        return path


NODES: Final = Resource("", "v1", "nodes", "Node", namespaced=False)
PODS: Final = Resource("", "v1", "pods", "Pod", namespaced=True)
NAMESPACES: Final = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
EVENTS: Final = Resource("", "v1", "events", "Event", namespaced=True)
CONFIGMAPS: Final = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)
LEASES: Final = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)
PODDISRUPTIONBUDGETS: Final = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget",
                                       namespaced=True)
JOBS: Final = Resource("batch", "v1", "jobs", "Job", namespaced=True)
TENANTQUOTAS: Final = Resource(names.GROUP, names.VERSION, names.TENANTQUOTA_PLURAL, names.TENANTQUOTA_KIND,
                               namespaced=False)
RESOURCESLICES: Final = Resource("resource.k8s.io", "v1", "resourceslices", "ResourceSlice", namespaced=False)
RESOURCECLAIMS: Final = Resource("resource.k8s.io", "v1", "resourceclaims", "ResourceClaim", namespaced=True)
RESOURCECLAIMTEMPLATES: Final = Resource("resource.k8s.io", "v1", "resourceclaimtemplates", "ResourceClaimTemplate",
                                         namespaced=True)
DEVICECLASSES: Final = Resource("resource.k8s.io", "v1", "deviceclasses", "DeviceClass", namespaced=False)

"""The plugin's Prometheus metrics, in a registry of their own (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fracgpu.deviceplugin.gpumetrics import GpuGauges


class PluginMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.allocate_seconds = Histogram(
            "fracgpu_deviceplugin_allocate_seconds", "Allocate latency per container request", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.preferred_seconds = Histogram(
            "fracgpu_deviceplugin_preferred_allocation_seconds", "GetPreferredAllocation latency", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.allocate_errors = Counter(
            "fracgpu_deviceplugin_allocate_errors_total", "Allocate refusals by reason code", ["code"], registry=r)
        self.repairs = Counter(
            "fracgpu_deviceplugin_reservation_repairs_total",
            "Reservation mismatches found against the kubelet's PodResources and Allocate calls, by kind",
            ["kind"], registry=r)
        self.gpus = GpuGauges(r)
        self.registrations = Counter("fracgpu_deviceplugin_registrations_total", "Registrations with the kubelet",
                                     registry=r)
        self.write_errors = Counter("fracgpu_deviceplugin_kube_write_errors_total",
                                    "Failed writes to the API server (retried)", registry=r)
        self.quota_checks = Counter(
            "fracgpu_deviceplugin_quota_checks_total",
            "Tenant-quota re-checks at a pod's first Allocate, by outcome (allowed, refused, unchecked: "
            "the quota caches were not synced yet, the pod was let through)", ["outcome"], registry=r)
        self.quota_synced = Gauge("fracgpu_deviceplugin_quota_synced",
                                  "1 when the tenant-quota caches (TenantQuotas, Namespaces, pods) are synced",
                                  registry=r)

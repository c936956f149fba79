"""The DRA driver's Prometheus metrics, in a registry of their own (no process-wide globals).

Labels are closed sets: call and outcome names below, GPU UUID and model; never a claim's name or uid.
The per-GPU gauges are the device plugin's (fracgpu.deviceplugin.gpumetrics): one dashboard for both paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fracgpu.api.v1beta1.dra.checkpoint import PreparedClaim
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core.draprepare import booked
from fracgpu.deviceplugin.gpumetrics import GpuGauges

PREFIX = "fracgpu_dra_driver_"

# per claim of a NodePrepareResources / NodeUnprepareResources call
OUTCOME_OK = "ok"  # prepared (or already prepared) / unprepared
OUTCOME_REFUSED = "refused"  # the claim cannot be prepared here as it stands (does not fit, not ours, replaced)
OUTCOME_ERROR = "error"  # something failed on the way (API read, CDI spec, checkpoint, a malformed request)
OUTCOMES = (OUTCOME_OK, OUTCOME_REFUSED, OUTCOME_ERROR)
CALLS = ("prepare", "unprepare")

PUBLISH_WRITTEN = "written"  # the pool differed and was written with the next generation
PUBLISH_UNCHANGED = "unchanged"  # the published slices were intact
PUBLISH_ERROR = "error"  # the check or the write failed; retried with backoff
PUBLISH_OUTCOMES = (PUBLISH_WRITTEN, PUBLISH_UNCHANGED, PUBLISH_ERROR)


class DriverMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.prepared_claims = Gauge(PREFIX + "prepared_claims", "Claims prepared on this node now (checkpoint)",
                                     registry=r)
        self.claims = Counter(
            PREFIX + "claims", "Claims in NodePrepareResources / NodeUnprepareResources calls, by call (prepare, "
            "unprepare) and outcome (ok, refused: cannot be prepared here as it stands, error: a failure on the "
            "way)", ["call", "outcome"], registry=r)
        self.prepare_seconds = Histogram(
            PREFIX + "prepare_seconds", "NodePrepareResources latency per call (claims read from the API server, "
            "CDI specs and checkpoint written)", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.publishes = Counter(
            PREFIX + "slice_publishes", "ResourceSlice checks of this node's pool, by outcome (written, unchanged, "
            "error)", ["outcome"], registry=r)
        self.pool_generation = Gauge(PREFIX + "pool_generation", "Generation of this node's pool as last published",
                                     registry=r)
        self.registered = Gauge(PREFIX + "registered",
                                "1 while the kubelet has accepted the plugin's registration", registry=r)
        self.gpus = GpuGauges(r)
        for call in CALLS:  # every series from the start: rate() needs the zero
            for outcome in OUTCOMES:
                if (call, outcome) != ("unprepare", OUTCOME_REFUSED):
                    self.claims.labels(call=call, outcome=outcome)
        for outcome in PUBLISH_OUTCOMES:
            self.publishes.labels(outcome=outcome)

    def count(self, call: str, outcomes: Iterable[str]) -> None:
        for outcome in outcomes:
            self.claims.labels(call=call, outcome=outcome).inc()

    def held(self, gpus: Sequence[GpuInfo], prepared: Mapping[str, PreparedClaim]) -> None:
        """The prepared-claims gauge and each GPU's cores and memory held by them (as NodePrepareResources
        counts them: adminAccess holds nothing)."""
        self.prepared_claims.set(len(prepared))
        self.gpus.set(gpus, booked(prepared))

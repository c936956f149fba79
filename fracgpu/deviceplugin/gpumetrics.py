"""The per-GPU gauges both node programs serve (the device plugin and the DRA driver: a node runs one of
them), so a dashboard reads a GPU's share and health alike on either path.

Labels are the GPU's UUID and model (a closed set per node); a GPU that leaves the inventory leaves the
exposition too, rather than keeping its last value forever.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Gauge

from fracgpu.api.v1beta1.inventory import GpuInfo


class GpuGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.cores = Gauge("fracgpu_gpu_allocated_cores", "vgpu-core reserved on the GPU", ["gpu", "model"],
                           registry=registry)
        self.memory = Gauge("fracgpu_gpu_allocated_memory_bytes", "VRAM reserved on the GPU", ["gpu", "model"],
                            registry=registry)
        self.healthy = Gauge("fracgpu_gpu_healthy", "1 when the GPU is healthy", ["gpu", "model"],
                             registry=registry)
        self._lock = threading.Lock()
        self._shown: set[tuple[str, str]] = set()

    def set(self, gpus: Sequence[GpuInfo], usage: Mapping[str, tuple[int, int]]) -> None:
        """Every GPU's (cores, memory bytes) held, from `usage` by UUID (absent: 0), and its health."""
        with self._lock:
            shown = set()
            for g in gpus:
                cores, memory = usage.get(g.uuid, (0, 0))
                self.cores.labels(gpu=g.uuid, model=g.model).set(cores)
                self.memory.labels(gpu=g.uuid, model=g.model).set(memory)
                self.healthy.labels(gpu=g.uuid, model=g.model).set(1 if g.healthy else 0)
                shown.add((g.uuid, g.model))
            for labels in self._shown - shown:
                for gauge in (self.cores, self.memory, self.healthy):
                    gauge.remove(*labels)
            self._shown = shown

"""The device plugin assembled: backend -> device state + health loop -> plugin -> gRPC server.

``DevicePluginApp`` is what ``main`` runs and what the tests start against an in-test kubelet, so
the tests exercise the real wiring. Threads: the health loop, the socket watcher, the node
reporter (Lease every ``lease_interval`` s, inventory annotation and labels when they change),
the background writer, and the gRPC workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from fracgpu.api.v1beta1.deviceplugin import api_pb2_grpc
from fracgpu.core.health import HealthTracker
from fracgpu.core.healthconfig import HealthConfig
from fracgpu.deviceplugin.apiserver import ApiServer
from fracgpu.deviceplugin.backends.base import GpuBackend
from fracgpu.deviceplugin.health import DeviceState, HealthMonitor
from fracgpu.deviceplugin.metrics import PluginMetrics
from fracgpu.deviceplugin.plugin import Plugin, PluginConfig
from fracgpu.deviceplugin.podresources import HoldingsSource
from fracgpu.deviceplugin.quota import QuotaCheck
from fracgpu.deviceplugin.server import PluginServer, ServerConfig
from fracgpu.deviceplugin.servicer import DevicePluginServicer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppConfig:
    plugin: PluginConfig
    server: ServerConfig
    health: HealthConfig = field(default_factory=HealthConfig)
    lease_interval: float = 10.0
    watch_interval: float = 0.5


class DevicePluginApp:
    def __init__(self, cfg: AppConfig, backend: GpuBackend, api: ApiServer, holdings: HoldingsSource,
                 quota: QuotaCheck | None = None, metrics: PluginMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.metrics = metrics or PluginMetrics()
        self.state = DeviceState(backend, HealthTracker(cfg.health))
        self._reported = threading.Event()
        self.monitor = HealthMonitor(self.state, cfg.health, clock=clock, on_change=self._reported.set)
        self.plugin = Plugin(cfg.plugin, self.state, api, holdings, quota, self.metrics)
        self.server = PluginServer(cfg.server, self._add_servicer, on_register=self.metrics.registrations.inc,
                                   wake=self.state.poke)
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def _add_servicer(self, server: grpc.Server, stop: threading.Event) -> None:
        servicer = DevicePluginServicer(self.plugin, stop, self.cfg.server.max_streams)
        api_pb2_grpc.add_DevicePluginServicer_to_server(servicer, server)

    def start(self) -> None:
        """Take the restart lock, recover state, serve and register; returns once registered (or the kubelet
        is absent). The lock comes first: a second plugin must not repair reservations the first still serves."""
        self.server.lock(cancel=self.stopping)
        self.plugin.start()
        self.plugin.publish_node()
        self.monitor.start()
        self.server.start()
        for name, target in (("fracgpu-watch", self._watch), ("fracgpu-report", self._report)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _watch(self) -> None:
        self.server.run(self.stopping, self.cfg.watch_interval)

    def _report(self) -> None:
        next_lease = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_lease:
                try:
                    self.plugin.api.renew_lease()
                except Exception as e:
                    self.metrics.write_errors.inc()
                    log.warning("lease renewal failed error=%s", e)
                next_lease = now + self.cfg.lease_interval
            self.plugin.publish_node()
            self._reported.wait(min(1.0, max(0.0, next_lease - time.monotonic())))
            self._reported.clear()

    def stop(self) -> None:
        """Clean shutdown (SIGTERM): stop serving, end streams, finish queued writes."""
        self.stopping.set()
        self._reported.set()
        self.state.poke()
        self.server.stop(grace=1.0)
        for t in self._threads:
            t.join(timeout=5)
        self.monitor.stop()
        self.plugin.flush()
        self.plugin.stop()

"""The DRA driver assembled: backend -> device state + health loop -> slices and kubelet plugin.

``DraDriverApp`` is what ``main`` runs and what the tests start against an in-test kubelet and the fake API
server, so the tests exercise the real wiring. Threads: the health loop (shared with the device plugin:
``fracgpu.deviceplugin.health``), the socket watcher, the slice publisher, and the gRPC workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import start_http_server

from fracgpu.api.v1beta1.dra.resource import Device
from fracgpu.api.v1beta1.names import DRA_SERVICES
from fracgpu.api.v1beta1.pluginregistration import api_pb2_grpc as reg_grpc
from fracgpu.core.draslices import SliceOptions, node_devices
from fracgpu.core.health import HealthTracker
from fracgpu.core.healthconfig import HealthConfig
from fracgpu.deviceplugin.backends.base import GpuBackend
from fracgpu.deviceplugin.health import DeviceState, HealthMonitor
from fracgpu.draplugin.driver import ClaimSource, Driver, DriverConfig
from fracgpu.draplugin.files import CdiFiles, CheckpointStore
from fracgpu.draplugin.metrics import PUBLISH_ERROR, PUBLISH_UNCHANGED, PUBLISH_WRITTEN, DriverMetrics
from fracgpu.draplugin.publisher import PublishError, SlicePublisher
from fracgpu.draplugin.server import KubeletPluginServer, ServerConfig
from fracgpu.draplugin.servicer import RegistrationServicer, RegistrationStatus, add_dra_services
from fracgpu.draplugin.sysfs import pcie_roots
from fracgpu.kube import errors
from fracgpu.kube.writer import KubeWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppConfig:
    driver: DriverConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    cdi_dir: str = "/var/run/cdi"  # where container runtimes read generated CDI specs
    slices: SliceOptions = field(default_factory=SliceOptions)
    health: HealthConfig = field(default_factory=HealthConfig)
    resync_interval: float = 30.0  # seconds between checks that the published slices are still there
    watch_interval: float = 0.5  # seconds between checks that our sockets are still there
    sysfs: str = "/sys"  # where PCIe roots are read


class DraDriverApp:
    def __init__(self, cfg: AppConfig, backend: GpuBackend, claims: ClaimSource, writer: KubeWriter | None,
                 clock: Callable[[], float] = time.monotonic, metrics: DriverMetrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or DriverMetrics()
        self.state = DeviceState(backend, HealthTracker(cfg.health))
        self.wake = threading.Event()
        self.monitor = HealthMonitor(self.state, cfg.health, clock=clock, on_change=self._on_devices)
        store = CheckpointStore(cfg.server.plugin_dir, cfg.driver.node)
        self._gauges_lock = threading.Lock()
        self.driver = Driver(cfg.driver, self.state.gpus, claims, store, CdiFiles(cfg.cdi_dir),
                             on_change=self._refresh_gauges)
        self.registration = RegistrationServicer(cfg.driver.driver, cfg.server.dra_socket, DRA_SERVICES,
                                                 on_status=self._on_registration)
        self.server = KubeletPluginServer(cfg.server, self._add_dra, self._add_registration,
                                          on_registration_served=self._on_registration_served)
        self._metrics_server: WSGIServer | None = None
        self.publisher = (SlicePublisher(writer, cfg.driver.node, self._devices, cfg.slices)
                          if writer is not None else None)
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._roots: tuple[tuple[tuple[str, str], ...], dict[str, str]] = ((), {})

    def _add_dra(self, server: grpc.Server) -> None:
        add_dra_services(server, self.driver, self.metrics)

    def _add_registration(self, server: grpc.Server) -> None:
        reg_grpc.add_RegistrationServicer_to_server(self.registration, server)

    def _on_registration(self, status: RegistrationStatus) -> None:
        self.metrics.registered.set(1 if status.registered else 0)
        # a (re)registration follows a kubelet start, and a starting kubelet wipes the node's slices
        self.wake.set()

    def _on_registration_served(self) -> None:
        # a new registration socket: not registered until the kubelet has found it and said so
        self.metrics.registered.set(0)

    def _on_devices(self) -> None:
        self.wake.set()
        self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        # read and set under one lock: a slower caller must not overwrite newer values with older ones
        with self._gauges_lock:
            self.metrics.held(self.state.gpus(), self.driver.prepared())

    def serve_metrics(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics over HTTP on `port` (0: any free one); the port bound. OSError when it cannot bind."""
        server, _ = start_http_server(port, addr=addr, registry=self.metrics.registry)
        self._metrics_server = server
        return int(server.server_port)

    def _devices(self, opts: SliceOptions) -> tuple[Device, ...]:
        gpus = self.state.gpus()
        key = tuple((g.uuid, g.pci_bus_id) for g in gpus)
        if key != self._roots[0]:  # sysfs is read when the GPU set changes, not at every sync
            self._roots = (key, pcie_roots(gpus, self.cfg.sysfs))
        return node_devices(gpus, pcie_roots=self._roots[1], unhealthy=opts.unhealthy,
                            allocator=opts.allocator)

    def start(self) -> None:
        self.server.take_lock()
        self.driver.load()
        self.monitor.start()
        self.server.start()
        targets: list[tuple[str, Callable[[], None]]] = [("fracgpu-dra-watch", self._watch)]
        if self.publisher is not None:
            targets.append(("fracgpu-dra-publish", self._publish))
        for name, target in targets:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _watch(self) -> None:
        self.server.run(self.stopping, self.cfg.watch_interval)

    def _publish(self) -> None:
        assert self.publisher is not None
        backoff = 1.0
        while not self.stopping.is_set():
            self.wake.clear()
            try:
                result = self.publisher.sync()
                delay, backoff = self.cfg.resync_interval, 1.0
                self.metrics.publishes.labels(
                    outcome=PUBLISH_WRITTEN if result.written or result.deleted else PUBLISH_UNCHANGED).inc()
                self.metrics.pool_generation.set(result.generation)
            except (PublishError, errors.KubeAPIError) as e:
                log.warning("publishing resource slices failed; retrying in %.0f s error=%s", backoff, e)
                delay, backoff = min(backoff, self.cfg.resync_interval), min(backoff * 2, self.cfg.resync_interval)
                self.metrics.publishes.labels(outcome=PUBLISH_ERROR).inc()
            except Exception:
                log.exception("publishing resource slices failed; retrying")
                delay = self.cfg.resync_interval
                self.metrics.publishes.labels(outcome=PUBLISH_ERROR).inc()
            self.wake.wait(delay)

    def stop(self) -> None:
        """Clean shutdown: deregister and stop serving. The slices stay: a restarted driver takes them over, and
        the kubelet removes them if the driver stays away."""
        self.stopping.set()
        self.wake.set()
        self.server.stop(grace=1.0)
        for t in self._threads:
            t.join(timeout=5)
        self.monitor.stop()
        self.metrics.registered.set(0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None

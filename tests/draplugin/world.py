"""A GPU node on the DRA path: simulated GPUs, the fake API server with resource.k8s.io/v1, an in-test kubelet."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from typing import Any

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import DRA_DRIVER
from fracgpu.core.draslices import device_names
from fracgpu.deviceplugin.backends.simulated import SimulatedBackend, parse_gpus
from fracgpu.draplugin.app import AppConfig, DraDriverApp
from fracgpu.draplugin.driver import DriverConfig, KubeClaims
from fracgpu.draplugin.server import ServerConfig
from fracgpu.kube.client import Transport, api_client_for_host
from fracgpu.kube.writer import KubeWriter
from tests.draplugin.kubelet import FakeDraKubelet
from tests.fakes.apiserver import DEFAULT_RESOURCES, FakeApiServer, ResourceType

NODE = "gpu-node-1"
GI = 1024**3
DRA_RESOURCES = (
    ResourceType("resource.k8s.io", "v1", "resourceslices", "ResourceSlice", namespaced=False),
    ResourceType("resource.k8s.io", "v1", "resourceclaims", "ResourceClaim", namespaced=True, status_subresource=True),
    ResourceType("resource.k8s.io", "v1", "deviceclasses", "DeviceClass", namespaced=False),
)


def gpus(n: int, memory: str = "80Gi") -> tuple[GpuInfo, ...]:
    return parse_gpus({"gpus": [{"uuid": f"GPU-{i:08x}-aaaa-bbbb-cccc-dddddddddddd", "model": "NVIDIA A100-SXM4-80GB",
                                 "memory": memory, "numa": i // 2, "pciBusId": f"00000000:{i + 7:02X}:00.0"}
                                for i in range(n)]})


def short_tmpdir() -> str:
    """A directory short enough for AF_UNIX socket paths (107 bytes), unlike pytest's tmp_path."""
    return tempfile.mkdtemp(prefix="fgdra-", dir="/tmp")


def api_server() -> FakeApiServer:
    server = FakeApiServer((*DEFAULT_RESOURCES, *DRA_RESOURCES)).start()
    server.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    return server


@dataclass
class DraWorld:
    dir: str
    apiserver: FakeApiServer
    backend: SimulatedBackend
    kubelet: FakeDraKubelet
    app: DraDriverApp | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def plugin_dir(self) -> str:
        return os.path.join(self.dir, "plugins", DRA_DRIVER)

    @property
    def registry_dir(self) -> str:
        return os.path.join(self.dir, "registry")

    @property
    def cdi_dir(self) -> str:
        return os.path.join(self.dir, "cdi")

    def writer(self) -> KubeWriter:
        return KubeWriter(Transport(api_client_for_host(self.apiserver.url)), component="test")

    def config(self, **overrides: Any) -> AppConfig:
        cfg = AppConfig(driver=DriverConfig(node=NODE),
                        server=ServerConfig(plugin_dir=self.plugin_dir, registry_dir=self.registry_dir, lock_timeout=1.0),
                        cdi_dir=self.cdi_dir, resync_interval=60.0, watch_interval=0.05, sysfs=os.path.join(self.dir, "sys"))
        return replace(cfg, **{**self.overrides, **overrides})

    def start_driver(self, **overrides: Any) -> DraDriverApp:
        writer = self.writer()
        app = DraDriverApp(self.config(**overrides), self.backend, KubeClaims(writer), writer)
        app.start()
        self.app = app
        return app

    def stop_driver(self) -> None:
        if self.app is not None:
            self.app.stop()
            self.app = None

    def restart_driver(self) -> DraDriverApp:
        """A driver restart as the kubelet sees it: the old plugin deregistered (its sockets gone), the new one
        registered."""
        self.stop_driver()
        assert self.kubelet.wait_for(lambda: DRA_DRIVER not in self.kubelet.plugins)
        app = self.start_driver()
        self.kubelet.wait_registered(DRA_DRIVER)
        return app

    def device(self, index: int) -> str:
        inventory = self.backend.inventory()
        return device_names(inventory)[inventory[index].uuid]

    def claim(self, name: str, shares: list[tuple[int, int | None, int | None]], *, namespace: str = "default",
              request: str = "gpu", driver: str = DRA_DRIVER, pool: str = NODE, allocated: bool = True,
              uid: str | None = None) -> str:
        """A ResourceClaim allocated as kube-scheduler writes it: (GPU index, cores, memory GiB) per device;
        None capacity = the device was allocated whole (no consumedCapacity)."""
        uid = uid or str(uuidlib.uuid4())
        results = []
        for index, cores, memory in shares:
            r: dict[str, Any] = {"request": request, "driver": driver, "pool": pool, "device": self.device(index)}
            if cores is not None or memory is not None:
                r["shareID"] = str(uuidlib.uuid4())
                r["consumedCapacity"] = {"cores": str(cores), "memory": f"{memory}Gi"}
            results.append(r)
        status: dict[str, Any] = {}
        if allocated:
            status = {"allocation": {"devices": {"results": results}}}
        self.apiserver.seed({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                             "metadata": {"name": name, "namespace": namespace, "uid": uid},
                             "spec": {"devices": {"requests": [{"name": request, "exactly": {
                                 "deviceClassName": "vgpu.fracgpu.io"}}]}},
                             "status": status})
        return uid

    def close(self) -> None:
        self.stop_driver()
        self.kubelet.stop()
        self.apiserver.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

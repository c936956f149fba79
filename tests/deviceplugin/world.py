"""A node for the device-plugin tests: simulated GPUs, pods in memory, an in-test kubelet, the plugin."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE, PHASE_ALLOCATING, RESOURCE_CORE, RESOURCE_MEMORY
from fracgpu.core.healthconfig import HealthConfig
from fracgpu.core.inventory import split_device_id
from fracgpu.core.pod import decode_pod
from fracgpu.core.quantity import format_bytes
from fracgpu.core.request import parse_pod_request
from fracgpu.core.reservation import build_assignment
from fracgpu.deviceplugin.apiserver import ApiServer, MemoryApiServer
from fracgpu.deviceplugin.app import AppConfig, DevicePluginApp
from fracgpu.deviceplugin.backends.simulated import SimulatedBackend, parse_gpus
from fracgpu.deviceplugin.metrics import PluginMetrics
from fracgpu.deviceplugin.plugin import PluginConfig
from fracgpu.deviceplugin.podresources import PodResourcesClient
from fracgpu.deviceplugin.quota import QuotaCheck
from fracgpu.deviceplugin.response import LimiterConfig
from fracgpu.deviceplugin.server import ServerConfig
from tests.deviceplugin.kubelet import Admission, Chooser, Container, FakeKubelet

NODE = "node-a"
GiB = 1024**3


def gpu_uuid(i: int) -> str:
    return f"GPU-{i:08d}-aaaa-bbbb-cccc-000000000000"


def gpus_doc(n: int = 4, memory: str = "80Gi") -> dict[str, Any]:
    """The simulated backend's document (also written to a file for a plugin run as a process)."""
    return {"gpus": [
        {"uuid": gpu_uuid(i), "model": "NVIDIA A100-SXM4-80GB", "memory": memory, "numa": i // 2,
         "pciBusId": f"0000:{i + 7:02x}:00.0", "nvlink": {gpu_uuid(j): 12 for j in range(n) if j != i}}
        for i in range(n)]}


def gpus(n: int = 4, memory: str = "80Gi") -> tuple[GpuInfo, ...]:
    return parse_gpus(gpus_doc(n, memory))


def pod_object(name: str, containers: list[Container], *, node: str = NODE, namespace: str = "default",
               memory: int | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    def spec(c: Container) -> dict[str, Any]:
        limits = {RESOURCE_CORE: str(c.cores)} if c.cores else {}
        if memory is not None and c.cores:
            limits[RESOURCE_MEMORY] = format_bytes(memory)
        out: dict[str, Any] = {"name": c.name, "image": "x", "resources": {"limits": limits}}
        if c.kind == "sidecar":
            out["restartPolicy"] = "Always"
        return out

    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}",
                     "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": dict(annotations or {})},
        "spec": {"nodeName": node, "schedulerName": "fracgpu-scheduler",
                 "initContainers": [spec(c) for c in containers if c.kind != "app"],
                 "containers": [spec(c) for c in containers if c.kind == "app"]},
        "status": {"phase": "Pending"},
    }


@dataclass
class World:
    dir: str  # the kubelet's device-plugins directory
    backend: SimulatedBackend
    cluster: MemoryApiServer
    kubelet: FakeKubelet
    lock_file: str = ""  # the restart lock, outside `dir` (as /var/lib/fracgpu on a node)
    quota: QuotaCheck | None = None
    app: DevicePluginApp | None = None
    metrics: PluginMetrics = field(default_factory=PluginMetrics)
    clock_at: float = 0.0
    pods: dict[str, list[Container]] = field(default_factory=dict)

    def clock(self) -> float:
        return self.clock_at

    def start_plugin(self, crosscheck_delay: float = 0.0, cluster: ApiServer | None = None,
                     limiter: LimiterConfig | None = None, cdi_kind: str = "",
                     device_list: tuple[str, ...] = ("envvar",)) -> DevicePluginApp:
        self.metrics = PluginMetrics()
        cfg = AppConfig(
            plugin=PluginConfig(node=NODE, crosscheck_delay=crosscheck_delay, retry_backoff=0.0, write_retries=2,
                                limiter=limiter, cdi_kind=cdi_kind, device_list=device_list),
            server=ServerConfig(socket_dir=self.dir, lock_file=self.lock_file, lock_timeout=5.0),
            health=HealthConfig(poll_interval=3600.0),
            watch_interval=0.05,
        )
        holdings = PodResourcesClient(self.kubelet.podresources_socket, RESOURCE_CORE)
        self.app = DevicePluginApp(cfg, self.backend, cluster or self.cluster, holdings, quota=self.quota,
                                   metrics=self.metrics, clock=self.clock)
        self.app.start()
        return self.app

    def stop_plugin(self) -> None:
        if self.app is not None:
            self.app.stop()
            self.app = None

    def two_running_lookalikes_after_a_lost_checkpoint(self) -> list[str]:
        """Pods p and q, 50 vgpu-core each on GPUs 1 and 2, admitted and running; then the kubelet
        forgets what it gave them (a lost checkpoint), as before a container restart. Returns p's IDs."""
        self.add_pod("p", [Container("main", 50)], [1])
        self.add_pod("q", [Container("main", 50)], [2])
        p_ids = self.admit("p").devices["main"]
        assert self.admit("q").error is None
        self.settle()
        self.kubelet.release("default/p")
        self.kubelet.release("default/q")
        return p_ids

    def settle(self) -> None:
        """Wait for the plugin's background writes and cross-checks."""
        assert self.app is not None
        self.app.plugin.flush()

    # --- pods ---

    def reservations(self) -> dict[str, Assignment]:
        out = {}
        for key, p in self.cluster.pods.items():
            text = (p["metadata"].get("annotations") or {}).get(ANN_ASSIGNED)
            if text:
                with contextlib.suppress(ValueError):
                    out[key] = Assignment.from_json(text)
        return out

    def add_pod(self, name: str, containers: list[Container], gpu_indexes: list[int] | None = None, *,
                memory: int | None = None, node: str = NODE, annotations: dict[str, str] | None = None,
                assigned_at: str = "2026-01-01T00:00:00Z", namespace: str = "default",
                tenant: str | None = None) -> dict[str, Any]:
        """A pod as the extender leaves it after bind: reserved on the given GPUs, phase allocating.

        `tenant` is what the reservation charges (default: the namespace's own tenant, ns/<namespace>).
        """
        obj = pod_object(name, containers, node=node, memory=memory, annotations=annotations, namespace=namespace)
        if gpu_indexes is not None:
            req = parse_pod_request(decode_pod(obj))
            assert req is not None
            held: dict[str, set[int]] = {}
            for a in self.reservations().values():
                for ids in (s.device_ids for s in a.gpus):
                    for i in ids:
                        sp = split_device_id(i)
                        assert sp is not None
                        held.setdefault(sp[0], set()).add(sp[1])
            inv = {g.uuid: g for g in self.backend.inventory()}
            chosen = [gpu_uuid(i) for i in gpu_indexes]
            a = build_assignment(req, node, tenant or f"ns/{namespace}", assigned_at,
                                 [(u, inv[u].memory) for u in chosen],
                                 [sum(1 << k for k in held.get(u, set())) for u in chosen])
            obj["metadata"]["annotations"][ANN_ASSIGNED] = a.to_json()
            obj["metadata"]["annotations"][ANN_PHASE] = PHASE_ALLOCATING
        self.cluster.put_pod(obj)
        self.pods[f"{namespace}/{name}"] = containers
        return obj

    def admit(self, name: str, chooser: Chooser | None = None, namespace: str = "default",
              record_after: float = 0.0) -> Admission:
        return self.kubelet.admit(f"{namespace}/{name}", self.pods[f"{namespace}/{name}"], chooser, record_after)

    def annotations(self, name: str, namespace: str = "default") -> dict[str, str]:
        return self.cluster.annotations(namespace, name)

    def assignment(self, name: str) -> Assignment:
        return Assignment.from_json(self.annotations(name)[ANN_ASSIGNED])


def short_tmpdir() -> str:
    """A socket directory short enough for AF_UNIX (107 bytes), unlike pytest's tmp_path."""
    import tempfile

    path = tempfile.mkdtemp(prefix="fgdp-", dir="/tmp")
    assert len(os.path.join(path, "fracgpu-vgpu-core.sock")) < 100
    return path


def lock_path(socket_dir: str) -> str:
    """The restart lock of a plugin serving `socket_dir`: in a state directory beside it (the kubelet
    empties its own directory), removed with it by `remove_dirs`."""
    state = socket_dir + "-state"
    os.makedirs(state, exist_ok=True)
    return os.path.join(state, "device-plugin.lock")


def remove_dirs(socket_dir: str) -> None:
    import shutil

    shutil.rmtree(socket_dir, ignore_errors=True)
    shutil.rmtree(socket_dir + "-state", ignore_errors=True)

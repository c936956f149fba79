"""An in-test kubelet over real unix-socket gRPC.

It serves Registration on kubelet.sock and PodResources on its own socket, and, as the kubelet's
device manager does, connects to a registered plugin, calls GetDevicePluginOptions, keeps a
ListAndWatch stream open, and admits pods one at a time: per container it takes devices from the
pod's init-container pool first, asks GetPreferredAllocation only for the shortfall (with
`must_include` = the pool IDs it keeps and `allocation_size` = the container's whole request),
uses a preferred answer exactly when it is the right size and available (else tops it up from the
available IDs), and calls Allocate once per container. Ordinary init containers add their IDs to
the pool; sidecars and app containers take theirs out of it. As the device manager, it records an
allocation (and so shows it in PodResources) only after Allocate has returned.

`restart_emptying_dir` is a kubelet start as upstream's device manager does it
(CleanupPluginDirectory): every file of the device-plugins directory is deleted except the
checkpoint `kubelet_internal_checkpoint` (directories stay), then kubelet.sock is served anew.
PodResources is served from the `pod-resources` subdirectory (on a node: /var/lib/kubelet/pod-resources),
which the cleanup leaves alone.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from fracgpu.api.v1beta1.deviceplugin import api_pb2, api_pb2_grpc
from fracgpu.api.v1beta1.podresources import api_pb2 as pr_pb2
from fracgpu.api.v1beta1.podresources import api_pb2_grpc as pr_grpc

# chooser(available, must_include, size, preferred) -> the IDs the kubelet hands over
Chooser = Callable[[list[str], list[str], int, list[str]], list[str]]

CHECKPOINT = "kubelet_internal_checkpoint"  # the device manager's checkpoint: the only file a kubelet start keeps


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    cores: int
    kind: str = "app"  # init | sidecar | app


@dataclass
class Admission:
    responses: dict[str, api_pb2.ContainerAllocateResponse] = field(default_factory=dict)
    devices: dict[str, list[str]] = field(default_factory=dict)
    preferred_calls: list[tuple[int, list[str], list[str]]] = field(default_factory=list)  # size, must, answer
    error: grpc.RpcError | None = None
    failed_container: str = ""


class FakeKubelet(api_pb2_grpc.RegistrationServicer, pr_grpc.PodResourcesListerServicer):
    def __init__(self, socket_dir: str, resource: str) -> None:
        self.socket_dir = socket_dir
        self.resource = resource
        self.registrations: list[api_pb2.RegisterRequest] = []
        self.options: api_pb2.DevicePluginOptions | None = None
        self._cond = threading.Condition()
        self.devices: dict[str, api_pb2.Device] = {}
        self.lists = 0  # ListAndWatch messages received on the current connection
        self.connections = 0
        self.stream_ended = threading.Event()
        self.allocated: dict[tuple[str, str], list[str]] = {}  # (pod key, container) -> ids
        self.podresources_enabled = True
        self.list_calls = 0  # PodResources List calls received
        self.list_gate: threading.Event | None = None  # when not None, List waits for it (a hung kubelet)
        self.lists_waiting = 0  # List calls waiting at the gate now
        self._server: grpc.Server | None = None
        self._pr_server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None
        self._stub: api_pb2_grpc.DevicePluginStub | None = None
        self._stream: threading.Thread | None = None

    @property
    def kubelet_socket(self) -> str:
        return os.path.join(self.socket_dir, "kubelet.sock")

    @property
    def podresources_socket(self) -> str:
        return os.path.join(self.socket_dir, "pod-resources", "kubelet.sock")

    # --- lifecycle ---

    def start(self) -> None:
        with open(os.path.join(self.socket_dir, CHECKPOINT), "a", encoding="utf-8"):
            pass
        os.makedirs(os.path.dirname(self.podresources_socket), exist_ok=True)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix://{self.kubelet_socket}")
        self._server.start()
        if self._pr_server is None:
            self._pr_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            pr_grpc.add_PodResourcesListerServicer_to_server(self, self._pr_server)
            self._pr_server.add_insecure_port(f"unix://{self.podresources_socket}")
            self._pr_server.start()

    def restart(self) -> None:
        """As a kubelet restart: kubelet.sock is removed and created anew, plugin connections dropped."""
        self.stop_registration()
        if os.path.exists(self.kubelet_socket):
            os.unlink(self.kubelet_socket)
        self.start()

    def restart_emptying_dir(self) -> list[str]:
        """A kubelet start: plugin connections dropped, every file of the directory but the checkpoint
        deleted (sockets, lock files, anything; directories stay), kubelet.sock served anew. Returns the
        names deleted."""
        self.stop_registration()
        removed = []
        for name in sorted(os.listdir(self.socket_dir)):
            path = os.path.join(self.socket_dir, name)
            if name == CHECKPOINT or stat.S_ISDIR(os.lstat(path).st_mode):
                continue
            os.unlink(path)
            removed.append(name)
        self.start()
        return removed

    def stop_registration(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None

    def stop(self) -> None:
        self.stop_registration()
        if self._pr_server is not None:
            self._pr_server.stop(0).wait()
            self._pr_server = None

    # --- Registration ---

    def Register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        if request.version != "v1beta1":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported version {request.version}")
        with self._cond:
            self.registrations.append(request)
        # the real kubelet connects back asynchronously, after answering
        threading.Thread(target=self._connect, args=(request.endpoint,), daemon=True).start()
        return api_pb2.Empty()

    def _connect(self, endpoint: str) -> None:
        with self._cond:
            if self._channel is not None:
                self._channel.close()
            self._channel, self._stub, self.lists = None, None, 0
        channel = grpc.insecure_channel(f"unix://{os.path.join(self.socket_dir, endpoint)}")
        stub = api_pb2_grpc.DevicePluginStub(channel)
        opts = stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
        with self._cond:
            self._channel, self._stub, self.options = channel, stub, opts
            self.connections += 1
            self._cond.notify_all()
        self.stream_ended.clear()
        try:
            for msg in stub.ListAndWatch(api_pb2.Empty()):
                with self._cond:
                    self.devices = {d.ID: d for d in msg.devices}
                    self.lists += 1
                    self._cond.notify_all()
        except grpc.RpcError:
            pass
        finally:
            self.stream_ended.set()
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_connected(self, registrations: int = 1, timeout: float = 5.0) -> None:
        ok = self.wait_for(lambda: self.connections >= registrations and self._stub is not None
                           and self.lists > 0, timeout)
        assert ok, "the plugin did not register and stream its devices"

    def healthy(self) -> set[str]:
        with self._cond:
            return {i for i, d in self.devices.items() if d.health == "Healthy"}

    # --- device manager ---

    def admit(self, pod: str, containers: list[Container], chooser: Chooser | None = None,
              record_after: float = 0.0) -> Admission:
        """Admit one pod as the device manager does; stops at the first refused container.

        `record_after`: seconds between Allocate's answer and the allocation showing in PodResources (a
        busy kubelet; upstream inserts it into its podDevices after the call returns).
        """
        assert self._stub is not None
        out = Admission()
        pool: list[str] = []
        for c in containers:
            if c.cores == 0:
                continue
            in_use = {i for ids in self.allocated.values() for i in ids}
            available = sorted(self.healthy() - in_use)
            got = sorted(pool)[: c.cores]
            need = c.cores - len(got)
            ids = list(got)
            if need > 0:
                if len(available) < need:
                    out.error, out.failed_container = None, c.name
                    raise AssertionError(f"kubelet: {need} devices unavailable for {pod}/{c.name}")
                offer = sorted(set(available) | set(got))
                resp = self._stub.GetPreferredAllocation(api_pb2.PreferredAllocationRequest(container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=offer, must_include_deviceIDs=got,
                                                                allocation_size=c.cores)]), timeout=5)
                preferred = list(resp.container_responses[0].deviceIDs)
                out.preferred_calls.append((c.cores, list(got), preferred))
                if chooser is not None:
                    ids = chooser(offer, got, c.cores, preferred)
                elif len(preferred) == c.cores and set(preferred) <= set(offer) and set(got) <= set(preferred):
                    ids = preferred
                else:  # top up from what is available, as the kubelet does
                    ids = list(got) + [i for i in available if i not in got][:need]
            try:
                resp2 = self._stub.Allocate(api_pb2.AllocateRequest(
                    container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)]), timeout=5)
            except grpc.RpcError as e:
                out.error, out.failed_container = e, c.name
                return out
            out.responses[c.name] = resp2.container_responses[0]
            out.devices[c.name] = ids
            time.sleep(record_after)
            self.allocated[(pod, c.name)] = ids
            pool = sorted(set(pool) | set(ids)) if c.kind == "init" else [i for i in pool if i not in ids]
        return out

    def allocate_raw(self, ids: list[str]) -> api_pb2.AllocateResponse:
        assert self._stub is not None
        return self._stub.Allocate(api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)]), timeout=5)

    def preferred_raw(self, available: list[str], must: list[str], size: int) -> list[str]:
        assert self._stub is not None
        resp = self._stub.GetPreferredAllocation(api_pb2.PreferredAllocationRequest(container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=available, must_include_deviceIDs=must,
                                                        allocation_size=size)]), timeout=5)
        return list(resp.container_responses[0].deviceIDs)

    def release(self, pod: str) -> None:
        for key in [k for k in self.allocated if k[0] == pod]:
            del self.allocated[key]

    # --- PodResources ---

    def Get(self, request: pr_pb2.GetPodResourcesRequest, context: grpc.ServicerContext) -> pr_pb2.GetPodResourcesResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by the plugin")

    def GetAllocatableResources(self, request: pr_pb2.AllocatableResourcesRequest,
                                context: grpc.ServicerContext) -> pr_pb2.AllocatableResourcesResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used by the plugin")

    def List(self, request: pr_pb2.ListPodResourcesRequest,
             context: grpc.ServicerContext) -> pr_pb2.ListPodResourcesResponse:
        with self._cond:
            self.list_calls += 1
            gate = self.list_gate
            if gate is not None:
                self.lists_waiting += 1
            self._cond.notify_all()
        if gate is not None:
            gate.wait(10)
            with self._cond:
                self.lists_waiting -= 1
                self._cond.notify_all()
        if not self.podresources_enabled:
            context.abort(grpc.StatusCode.UNAVAILABLE, "podresources disabled")
        pods: dict[str, list[pr_pb2.ContainerResources]] = {}
        for (pod, container), ids in sorted(self.allocated.items()):
            pods.setdefault(pod, []).append(pr_pb2.ContainerResources(
                name=container, devices=[pr_pb2.ContainerDevices(resource_name=self.resource, device_ids=ids)]))
        return pr_pb2.ListPodResourcesResponse(pod_resources=[
            pr_pb2.PodResources(namespace=k.split("/")[0], name=k.split("/")[1], containers=v)
            for k, v in pods.items()])

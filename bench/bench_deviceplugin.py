"""GetPreferredAllocation + Allocate latency over the real unix socket, as a ratio to an empty servicer.

A node with 8 simulated A100-80GB GPUs and 80 running pods (reserved and allocated); then 1,000
sequential admissions, as the kubelet admits one pod at a time: for each, the extender's
reservation is put in place (not timed), then GetPreferredAllocation and Allocate are called
over the plugin's socket and timed together; the pod then completes and leaves (not timed), so
the node stays at 80 running pods. The same two calls against a servicer that answers at once
(same socket kind, same messages) give the floor of gRPC + Python in the same run.

    python bench/bench_deviceplugin.py [--admissions 1000] [--running 80] [--seed 1]
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from fracgpu.api.v1beta1.deviceplugin import api_pb2, api_pb2_grpc
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE, PHASE_ALLOCATED, PHASE_ALLOCATING, RESOURCE_CORE
from fracgpu.core.inventory import split_device_id
from fracgpu.core.pod import decode_pod
from fracgpu.core.request import parse_pod_request
from fracgpu.core.reservation import build_assignment
from fracgpu.deviceplugin.apiserver import MemoryApiServer
from fracgpu.deviceplugin.app import AppConfig, DevicePluginApp
from fracgpu.deviceplugin.backends.simulated import SimulatedBackend
from fracgpu.deviceplugin.plugin import PluginConfig
from fracgpu.deviceplugin.podresources import NoHoldings
from fracgpu.deviceplugin.server import ServerConfig

ROOT = Path(__file__).resolve().parents[1]
GPUS = ROOT / "examples" / "gpus-8xA100.yaml"
NODE = "bench-node"


class EmptyServicer(api_pb2_grpc.DevicePluginServicer):
    def GetDevicePluginOptions(self, request: Any, context: Any) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions()

    def ListAndWatch(self, request: Any, context: Any) -> Iterator[api_pb2.ListAndWatchResponse]:
        yield api_pb2.ListAndWatchResponse()

    def PreStartContainer(self, request: Any, context: Any) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()

    def GetPreferredAllocation(self, request: Any, context: Any) -> api_pb2.PreferredAllocationResponse:
        return api_pb2.PreferredAllocationResponse(container_responses=[
            api_pb2.ContainerPreferredAllocationResponse(deviceIDs=[]) for _ in request.container_requests])

    def Allocate(self, request: Any, context: Any) -> api_pb2.AllocateResponse:
        return api_pb2.AllocateResponse(container_responses=[
            api_pb2.ContainerAllocateResponse() for _ in request.container_requests])


def pod(name: str, cores: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "bench", "uid": f"uid-{name}", "annotations": {},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": NODE, "containers": [
                {"name": "main", "resources": {"limits": {RESOURCE_CORE: str(cores)}}}]},
            "status": {"phase": "Pending"}}


class Node:
    """The extender's side of the bench: reservations on the GPUs with room."""

    def __init__(self, cluster: MemoryApiServer, backend: SimulatedBackend, rng: random.Random) -> None:
        self.cluster = cluster
        self.gpus = backend.inventory()
        self.rng = rng
        self.held: dict[str, set[int]] = {g.uuid: set() for g in self.gpus}

    def reserve(self, name: str, cores: int) -> list[str]:
        obj = pod(name, cores)
        req = parse_pod_request(decode_pod(obj))
        assert req is not None
        room = [g for g in self.gpus if 100 - len(self.held[g.uuid]) >= cores]
        g = self.rng.choice(room)
        a = build_assignment(req, NODE, "ns/bench", "2026-01-01T00:00:00Z", [(g.uuid, g.memory)],
                             [sum(1 << k for k in self.held[g.uuid])])
        for i in a.device_ids:
            sp = split_device_id(i)
            assert sp is not None
            self.held[sp[0]].add(sp[1])
        obj["metadata"]["annotations"] = {ANN_ASSIGNED: a.to_json(), ANN_PHASE: PHASE_ALLOCATING}
        self.cluster.put_pod(obj)
        return sorted(a.device_ids)

    def largest_free(self) -> int:
        return max(100 - len(h) for h in self.held.values())

    def finish(self, name: str, ids: list[str]) -> None:
        self.cluster.delete_pod("bench", name)
        for i in ids:
            sp = split_device_id(i)
            assert sp is not None
            self.held[sp[0]].discard(sp[1])


def admit(stub: api_pb2_grpc.DevicePluginStub, available: list[str], size: int) -> tuple[float, list[str]]:
    start = time.perf_counter()
    pref = stub.GetPreferredAllocation(api_pb2.PreferredAllocationRequest(container_requests=[
        api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=size)]))
    ids = list(pref.container_responses[0].deviceIDs) or available[:size]
    stub.Allocate(api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)]))
    return time.perf_counter() - start, ids


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def run(admissions: int, running: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    d = tempfile.mkdtemp(prefix="fgbench-", dir="/tmp")
    backend = SimulatedBackend.from_file(GPUS)
    cluster = MemoryApiServer(NODE)
    node = Node(cluster, backend, rng)
    all_ids = [f"{g.uuid}::{k}" for g in node.gpus for k in range(100)]
    server = ServerConfig(socket_dir=f"{d}/dp", lock_file=f"{d}/device-plugin.lock")  # the lock outside the socket dir
    app = DevicePluginApp(AppConfig(plugin=PluginConfig(node=NODE), server=server), backend, cluster, NoHoldings())
    empty = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    api_pb2_grpc.add_DevicePluginServicer_to_server(EmptyServicer(), empty)
    empty.add_insecure_port(f"unix://{d}/empty.sock")
    empty.start()
    try:
        app.start()
        ours = api_pb2_grpc.DevicePluginStub(grpc.insecure_channel(f"unix://{d}/dp/fracgpu-vgpu-core.sock"))
        base = api_pb2_grpc.DevicePluginStub(grpc.insecure_channel(f"unix://{d}/empty.sock"))
        in_use: set[str] = set()
        # 80 running pods: 5-30 vgpu-core each, admitted through the plugin (not timed)
        for i in range(running):
            size = rng.choice((5, 5, 10))  # 80 pods: about two thirds of the node's 800 vgpu-core
            reserved = node.reserve(f"run-{i}", size)
            _, ids = admit(ours, [x for x in all_ids if x not in in_use], size)
            assert sorted(ids) == reserved, "preferred allocation did not follow the reservation"
            in_use |= set(ids)
        app.plugin.flush()
        t_ours: list[float] = []
        t_base: list[float] = []
        for i in range(admissions):
            size = min(rng.choice((5, 10, 20, 25)), node.largest_free())
            name = f"adm-{i}"
            reserved = node.reserve(name, size)
            available = [x for x in all_ids if x not in in_use]
            dt, ids = admit(ours, available, size)
            assert sorted(ids) == reserved
            t_ours.append(dt)
            t_base.append(admit(base, available, size)[0])
            node.finish(name, ids)  # the pod completes; the node stays at `running` pods
        app.plugin.flush()
        allocated = sum(1 for p in cluster.pods.values()
                        if p["metadata"]["annotations"].get(ANN_PHASE) == PHASE_ALLOCATED)
    finally:
        app.stop()
        empty.stop(0)
        shutil.rmtree(d, ignore_errors=True)
    ms = 1000.0
    return {
        "ours_p50_ms": percentile(t_ours, 50) * ms, "ours_p99_ms": percentile(t_ours, 99) * ms,
        "ours_mean_ms": statistics.fmean(t_ours) * ms,
        "empty_p50_ms": percentile(t_base, 50) * ms, "empty_p99_ms": percentile(t_base, 99) * ms,
        "ratio_p50": percentile(t_ours, 50) / percentile(t_base, 50),
        "ratio_p99": percentile(t_ours, 99) / percentile(t_base, 99),
        "running_allocated": allocated,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--admissions", type=int, default=1000)
    ap.add_argument("--running", type=int, default=80)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(args.admissions, args.running, args.seed)
    print(f"{args.admissions} admissions (GetPreferredAllocation + Allocate), 8 GPUs, {args.running} running pods")
    print(f"  fracgpu  p50 {result['ours_p50_ms']:.3f} ms   p99 {result['ours_p99_ms']:.3f} ms   "
          f"mean {result['ours_mean_ms']:.3f} ms")
    print(f"  empty    p50 {result['empty_p50_ms']:.3f} ms   p99 {result['empty_p99_ms']:.3f} ms")
    print(f"  ratio    p50 {result['ratio_p50']:.2f}x   p99 {result['ratio_p99']:.2f}x")
    print(f"  running pods marked allocated: {result['running_allocated']}")


if __name__ == "__main__":
    main()

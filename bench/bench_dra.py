"""DRA allocator benchmark: what placing a claim costs next to placing a device-plugin pod on the same cluster.

    python bench/bench_dra.py [--nodes 1000] [--running 8000] [--pods 300]

One cluster of --nodes DRA nodes x 8 A100-80GB (ResourceSlices as `fracgpu dra-driver` publishes them) with
--running pods whose share claims are already allocated, fed to the extender's DraView as the watches
would. Then, for --pods pending pods (one 10-70 core share claim each), timed one by one:

- lowering: the claim's watch event (`DraView.apply_claim`, re-lowering the pod that names it);
- allocation: one allocator pass for that pod (`Allocator.run_once`: filter over every node, reserve, the
  claim written — the write itself is a no-op here: it is one API call whose cost is the API server's);
- the extender's `Scheduler.filter` alone for the same request as a device-plugin pod on the lowered
  cluster (the decision both paths share), as the yardstick.

Prints p50/p99 of each and the ratio allocation / filter measured in this one run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fracgpu.api.v1beta1.extender import ExtenderArgs
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import DRA_DEVICE_CLASS_SHARED, DRA_DRIVER, LABEL_DRA
from fracgpu.core.draslices import build_slices, device_names, node_devices
from fracgpu.extender.draallocator import Allocator
from fracgpu.extender.dracache import DraView
from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
from fracgpu.kube.objects import ObjectRef

GI = 1024**3
SHARES = (10, 20, 25, 30, 40, 50, 60, 70)


class NoopWriter:
    """Answers the claim writes as the API server would (the object as written), without a server, and
    hands them to the view as its claim watch would (at once)."""

    def __init__(self, view: DraView) -> None:
        self.view = view

    def allocate_claim(self, claim: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        written = {**claim, "status": dict(status)}
        self.view.apply_claim(written)
        return written

    def deallocate_claim(self, claim: Mapping[str, Any]) -> dict[str, Any]:
        return dict(claim)

    def create_event(self, involved: ObjectRef, *, reason: str, message: str, type: str = "Normal",
                     action: str | None = None) -> dict[str, Any]:
        return {}


def gpus(node: str) -> tuple[GpuInfo, ...]:
    return tuple(GpuInfo(uuid=f"GPU-{node}-{i}", index=i, model="A100-SXM4-80GB", memory=80 * GI, numa=i // 4)
                 for i in range(8))


def claim(name: str, cores: int, allocated: tuple[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "bench", "uid": f"uid-{name}"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
            "deviceClassName": DRA_DEVICE_CLASS_SHARED,
            "capacity": {"requests": {"cores": str(cores), "memory": f"{cores * 80 // 100}Gi"}}}}]}}}
    if allocated is not None:
        node, device = allocated
        out["status"] = {"allocation": {"devices": {"results": [{
            "request": "gpu", "driver": DRA_DRIVER, "pool": node, "device": device, "shareID": f"s-{name}",
            "consumedCapacity": {"cores": str(cores), "memory": str(cores * 80 // 100 * GI)}}]}}}
    return out


def pod(name: str, node: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}],
                            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "t"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "bench", "uid": f"uid-{name}",
                         "creationTimestamp": "2026-12-01T00:00:00Z"},
            "spec": spec, "status": {"phase": "Running" if node else "Pending",
                                     "resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": name}]}}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--running", type=int, default=8000)
    ap.add_argument("--pods", type=int, default=300)
    args = ap.parse_args(argv)
    rng = random.Random(1)
    scheduler = Scheduler(SchedulerConfig(heartbeat_stale_s=0), time.monotonic, wall=time.time)
    view = DraView(scheduler, time.monotonic)
    names = [f"n{i:05d}" for i in range(args.nodes)]
    free: dict[tuple[str, str], int] = {}
    start = time.perf_counter()
    for n in names:
        inv = gpus(n)
        for s in build_slices(n, node_devices(inv), 1):
            view.apply_slice(s.to_json())
        view.apply_node({"apiVersion": "v1", "kind": "Node",
                         "metadata": {"name": n, "labels": {LABEL_DRA: "true"}},
                         "status": {"allocatable": {"cpu": "128", "memory": "1Ti"}}})
        for dev in device_names(inv).values():
            free[(n, dev)] = 100
    placed = 0
    keys = list(free)
    while placed < args.running:
        cores = rng.choice(SHARES)
        n, dev = rng.choice(keys)
        if free[(n, dev)] < cores:
            continue
        free[(n, dev)] -= cores
        name = f"run{placed}"
        view.apply_claim(claim(name, cores, (n, dev)))
        view.apply_pod(pod(name, n))
        placed += 1
    scheduler.mark_synced()
    print(f"cluster: {args.nodes} nodes x 8 GPUs, {args.running} running claim pods, built in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    allocator = Allocator(scheduler, view, NoopWriter(view), clock=time.monotonic)
    # the policy builds its plan on the first decision: not a per-pod cost
    scheduler.filter(ExtenderArgs(pod=pod("warm-up") | {"spec": {"containers": [{"name": "c", "resources": {
        "requests": {"fracgpu.io/vgpu-core": "10"}}}]}}, node_names=tuple(names)))
    lowering: list[float] = []
    allocation: list[float] = []
    filtering: list[float] = []
    for i in range(args.pods):
        cores = rng.choice(SHARES)
        name = f"new{i}"
        view.apply_pod(pod(name))
        t0 = time.perf_counter()
        view.apply_claim(claim(name, cores))
        lowering.append(time.perf_counter() - t0)
        [waiting] = [w for w in view.waiting() if w.key == f"bench/{name}"]
        t0 = time.perf_counter()
        scheduler.filter(ExtenderArgs(pod=waiting.pod, node_names=tuple(names)))
        filtering.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        done = allocator.run_once()
        allocation.append(time.perf_counter() - t0)
        assert done == 1, f"pod {name} not placed"
    rows = [("lowering (claim event)", lowering), ("allocation pass (filter + reserve + write)", allocation),
            ("Scheduler.filter alone", filtering)]
    for label, xs in rows:
        print(f"{label}: p50 {pct(xs, 0.5):.2f} ms, p99 {pct(xs, 0.99):.2f} ms, mean {statistics.mean(xs) * 1000:.2f} ms")
    print(f"ratio allocation / filter: p50 {pct(allocation, 0.5) / pct(filtering, 0.5):.2f}, "
          f"p99 {pct(allocation, 0.99) / pct(filtering, 0.99):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Write examples/try-it/snapshot.yaml: a moment of a small cluster running examples/try-it/workload.yaml.

Three nodes (two A100s joined by NVLink, four T4s, one CPU-only node not opted in), with the
inventory annotation the device plugin writes; the workload's objects as the API server returns
them (uid, creationTimestamp, status); the first five pods bound with the reservation
(`fracgpu.io/assigned`) the extender writes, built by the same `build_assignment`; the rest pending.

    python scripts/make_try_it_snapshot.py          # regenerate
    python scripts/make_try_it_snapshot.py --check  # exit 1 when the file is stale
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fracgpu.api.v1beta1.inventory import GpuInfo, GpuLink, LinkClass, NodeInventoryDoc  # noqa: E402
from fracgpu.api.v1beta1.names import (  # noqa: E402
    ANN_ASSIGNED,
    ANN_INVENTORY,
    ANN_PHASE,
    LABEL_ENABLED,
    LABEL_GPU_COUNT,
    LABEL_GPU_MODEL,
    LABEL_ZONE,
    PHASE_ALLOCATED,
)
from fracgpu.api.v1beta1.tenantquota import TenantQuota  # noqa: E402
from fracgpu.core.records import pod_record  # noqa: E402
from fracgpu.core.reservation import build_assignment  # noqa: E402
from fracgpu.core.tenant import NamespaceInfo, Tenants  # noqa: E402

WORKLOAD = ROOT / "examples" / "try-it" / "workload.yaml"
SNAPSHOT = ROOT / "examples" / "try-it" / "snapshot.yaml"
GI = 1 << 30
A100 = ("A100-SXM4-80GB", 80 * GI)
T4 = ("Tesla-T4", 15360 * (1 << 20))  # NVML's 15360 MiB
# node -> (zone, CPUs, memory, GPU model and memory, GPU count); NVLink between every pair on gpu-a100
NODES = {"gpu-a100": ("zone-a", "64", "512Gi", A100, 2), "gpu-t4": ("zone-b", "32", "128Gi", T4, 4),
         "cpu-1": ("zone-a", "16", "64Gi", None, 0)}
# bound pods -> (node, GPU indices), in bind order
BOUND = {"research-train/trainer": ("gpu-a100", [1]), "research-infer/llm-0": ("gpu-a100", [0]),
         "web/api-0": ("gpu-t4", [0]), "web/api-1": ("gpu-t4", [0]), "web/batch": ("gpu-t4", [1])}
START = "2026-03-02T09:{:02d}:00Z"


def uuid(node: str, i: int) -> str:
    tag = sum(map(ord, node)) % 0xFFFF
    return f"GPU-{tag:04x}{i:04x}-0000-4000-8000-{i:012x}"


def node(name: str) -> dict[str, Any]:
    zone, cpu, memory, gpu, count = NODES[name]
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", LABEL_ZONE: zone}
    annotations: dict[str, str] = {}
    allocatable = {"cpu": cpu, "memory": memory, "pods": "110"}
    if gpu is not None:
        model, vram = gpu
        ids = [uuid(name, i) for i in range(count)]
        gpus = tuple(
            GpuInfo(uuid=u, index=i, model=model, memory=vram, numa=0, pci_bus_id=f"0000:{0x07 + 8 * i:02x}:00.0",
                    links=tuple(GpuLink(p, LinkClass.NVLINK, 12) for p in ids if p != u) if model == A100[0]
                    else ())
            for i, u in enumerate(ids))
        labels |= {LABEL_ENABLED: "true", LABEL_GPU_MODEL: model, LABEL_GPU_COUNT: str(count)}
        annotations[ANN_INVENTORY] = NodeInventoryDoc(gpus=gpus).to_json()
        allocatable["fracgpu.io/vgpu-core"] = str(100 * count)
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": f"00000000-0000-4000-8000-{sum(map(ord, name)):012d}",
                         "creationTimestamp": "2026-03-01T08:00:00Z", "labels": labels,
                         "annotations": annotations},
            "spec": {},
            "status": {"capacity": dict(allocatable), "allocatable": allocatable,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}


def build() -> str:
    workload = yaml.safe_load(WORKLOAD.read_text(encoding="utf-8"))["items"]
    quotas = [TenantQuota.from_dict(o) for o in workload if o["kind"] == "TenantQuota"]
    namespaces = [NamespaceInfo(o["metadata"]["name"], o["metadata"].get("labels", {}),
                                o["metadata"].get("annotations", {})) for o in workload if o["kind"] == "Namespace"]
    tenants = Tenants(namespaces, quotas)
    held: dict[str, int] = {}  # GPU uuid -> device ids taken (bit mask), as the extender tracks them
    items: list[dict[str, Any]] = [node(n) for n in NODES]
    for minute, src in enumerate(workload):  # one object a minute, in the file's order
        obj = copy.deepcopy(src)
        meta = obj["metadata"]
        meta["creationTimestamp"] = START.format(minute)
        meta["uid"] = f"00000000-0000-4000-8000-{len(items):012d}"
        if obj["kind"] == "Namespace":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj["status"] = {"phase": "Active"}
        if obj["kind"] == "Pod":
            key = f"{meta['namespace']}/{meta['name']}"
            if key in BOUND:
                where, indices = BOUND[key]
                req = pod_record(obj).request
                assert req is not None, key
                vram = NODES[where][3]
                assert vram is not None
                gpus = [(uuid(where, i), vram[1]) for i in indices]
                a = build_assignment(req, where, tenants.tenant_of(meta["namespace"]), START.format(minute + 1),
                                     gpus, [held.get(u, 0) for u, _ in gpus])
                for g in a.gpus:
                    for device in g.device_ids:
                        held[g.uuid] = held.get(g.uuid, 0) | 1 << int(device.rsplit("::", 1)[1])
                meta["annotations"] = {ANN_ASSIGNED: a.to_json(), ANN_PHASE: PHASE_ALLOCATED}
                obj["spec"]["nodeName"] = where
                obj["status"] = {"phase": "Running"}
            else:
                obj["status"] = {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}
        items.append(obj)
    head = ("# Generated by scripts/make_try_it_snapshot.py from examples/try-it/workload.yaml; do not edit.\n"
            "# A `kubectl get nodes,namespaces,tenantquotas,pods -A -o yaml` of a small cluster: see docs/try-it.md.\n")
    return head + yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    text = build()
    if argv == ["--check"]:
        if SNAPSHOT.read_text(encoding="utf-8") != text:
            print(f"{SNAPSHOT.relative_to(ROOT)} is stale: run python scripts/make_try_it_snapshot.py", file=sys.stderr)
            return 1
        return 0
    SNAPSHOT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Kubernetes objects as plain dicts, the way the API server (and kube-scheduler) sends them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from fracgpu.api.v1beta1.inventory import GpuInfo, NodeInventoryDoc
from fracgpu.api.v1beta1.names import (
    ANN_ASSIGNED,
    ANN_INVENTORY,
    ANN_PHASE,
    LABEL_ENABLED,
    LABEL_ZONE,
    SCHEDULER_NAME,
)

GI = 1024**3
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kube-scheduler"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def inventory(node: str, n: int = 8, model: str = "A100-SXM4-80GB", memory: int = 80 * GI) -> NodeInventoryDoc:
    return NodeInventoryDoc(
        gpus=tuple(GpuInfo(uuid=f"GPU-{node}-{i}", index=i, model=model, memory=memory, numa=i // 4)
                   for i in range(n))
    )


def node_obj(name: str, n: int = 8, *, zone: str = "", enabled: bool = True, inv: str | None = None,
             taints: list[dict[str, str]] | None = None, model: str = "A100-SXM4-80GB") -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if enabled:
        labels[LABEL_ENABLED] = "true"
    if zone:
        labels[LABEL_ZONE] = zone
    annotations = {ANN_INVENTORY: inv if inv is not None else inventory(name, n, model).to_json()}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"taints": taints or []},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110"}},
    }


def pod_obj(name: str, cores: int | str = 50, memory: str | None = "8Gi", *, namespace: str = "default",
            node: str = "", phase: str = "Pending", uid: str | None = None, created: str = "2026-11-22T22:17:15Z",
            annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None,
            init: list[tuple[str, int]] | None = None, containers: list[int] | None = None) -> dict[str, Any]:
    def res(c: int | str) -> dict[str, Any]:
        r: dict[str, Any] = {"fracgpu.io/vgpu-core": str(c), "cpu": "100m", "memory": "64Mi"}
        if memory is not None:
            r["fracgpu.io/vgpu-memory"] = memory
        return {"requests": r, "limits": dict(r)}

    apps: list[int | str] = list(containers) if containers is not None else [cores]
    spec: dict[str, Any] = {
        "schedulerName": SCHEDULER_NAME,
        "containers": [{"name": f"c{i}", "image": "x", "resources": res(c)} for i, c in enumerate(apps)],
    }
    if init:
        spec["initContainers"] = [
            {"name": f"i{i}", "image": "x", "resources": res(c), **({"restartPolicy": "Always"} if k == "sidecar" else {})}
            for i, (k, c) in enumerate(init)
        ]
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid or f"uid-{namespace}-{name}",
                     "creationTimestamp": created, "annotations": dict(annotations or {}),
                     "labels": dict(labels or {})},
        "spec": spec,
        "status": {"phase": phase},
    }


def bound_annotations(assigned_json: str, phase: str = "allocated") -> dict[str, str]:
    return {ANN_ASSIGNED: assigned_json, ANN_PHASE: phase}


def filter_args(pod: dict[str, Any], names: list[str], *, cache_capable: bool = True,
                nodes: list[dict[str, Any]] | None = None, verb: str = "filter") -> dict[str, Any]:
    """A captured kube-scheduler request with our pod and node names substituted in."""
    base = fixture(f"{verb}-nodenames.json" if cache_capable else f"{verb}-nodes.json")
    body = copy.deepcopy(base)
    body["Pod"] = pod
    if cache_capable:
        body["NodeNames"] = list(names)
    else:
        template = base["Nodes"]["items"][0]
        items = []
        by_name = {n["metadata"]["name"]: n for n in nodes or []}
        for n in names:
            item = copy.deepcopy(by_name.get(n, template))
            item["metadata"]["name"] = n
            items.append(item)
        body["Nodes"]["items"] = items
    return body


def bind_args(pod: dict[str, Any], node: str) -> dict[str, Any]:
    body = fixture("bind.json")
    body.update(PodName=pod["metadata"]["name"], PodNamespace=pod["metadata"]["namespace"],
                PodUID=pod["metadata"]["uid"], Node=node)
    return body

"""AdmissionReview requests shaped as the API server sends them (admission.k8s.io/v1, Pod CREATE)."""

from __future__ import annotations

import copy
from typing import Any

POD_GVK = {"group": "", "version": "v1", "kind": "Pod"}
POD_GVR = {"group": "", "version": "v1", "resource": "pods"}


def pod(*containers: dict[str, Any], annotations: dict[str, str] | None = None,
        scheduler: str = "default-scheduler", node_name: str | None = None,
        init: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """A Pod after the API server's defaulting, as the mutating webhook sees it."""
    spec: dict[str, Any] = {
        "containers": list(containers),
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "securityContext": {},
        "schedulerName": scheduler,
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300},
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    if init:
        spec["initContainers"] = list(init)
    if node_name is not None:
        spec["nodeName"] = node_name
    meta: dict[str, Any] = {"generateName": "train-", "namespace": "team-a", "creationTimestamp": None}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": {}}


def container(name: str = "main", **resources: str) -> dict[str, Any]:
    """A container whose limits (= requests, as the API server defaults them) are `resources`,
    keyed by short names: core -> fracgpu.io/vgpu-core, memory -> fracgpu.io/vgpu-memory."""
    names = {"core": "fracgpu.io/vgpu-core", "memory": "fracgpu.io/vgpu-memory", "cpu": "cpu"}
    amounts = {names[k]: v for k, v in resources.items()}
    return {
        "name": name,
        "image": "registry.example/train:1",
        "resources": {"limits": dict(amounts), "requests": dict(amounts)},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def review(obj: dict[str, Any], uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002",
           operation: str = "CREATE", kind: dict[str, str] | None = None,
           resource: dict[str, str] | None = None, sub_resource: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": uid,
        "kind": dict(kind or POD_GVK),
        "resource": dict(resource or POD_GVR),
        "requestKind": dict(kind or POD_GVK),
        "requestResource": dict(resource or POD_GVR),
        "namespace": "team-a",
        "operation": operation,
        "userInfo": {
            "username": "system:serviceaccount:kube-system:replicaset-controller",
            "uid": "b2a9b6f4-3c4e-4b7e-9d6e-1f0e6a1c9b11",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
        },
        "object": copy.deepcopy(obj),
        "oldObject": None,
        "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kube-controller-manager"},
    }
    if sub_resource:
        request["subResource"] = sub_resource
    return {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request}

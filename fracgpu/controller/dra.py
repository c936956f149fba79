"""The controller's DRA side: nodes whose GPUs are published as ResourceSlices and pods whose claims hold them,
lowered (``kube.dralowering``) into the same views the device-plugin path gives, so that one reconcile evicts
pods from failed GPUs on both paths — PDB-aware, through the Eviction API — and taints a broken node.

A DRA node's GPU health is its slices' (the driver taints a failed device ``gpu.fracgpu.io/unhealthy``); a DRA
pod's GPUs are its claims' allocation. Only bound pods are the controller's: a pod whose claims are allocated
but that no node runs yet holds nothing a failure could hurt. A DRA node writes no heartbeat Lease (the kubelet
removes a gone driver's slices), so it is never judged stale.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fracgpu.controller.views import node_view, pod_view
from fracgpu.core.dralower import LoweredNode, LoweredPod
from fracgpu.kube.dralowering import DraLowering, LoweredPodState, Obj, bound_node

if TYPE_CHECKING:
    from fracgpu.controller.loop import ClusterCache


class ControllerDra(DraLowering):
    def __init__(self, cache: ClusterCache) -> None:
        super().__init__()
        self.cache = cache

    def node_lowered(self, name: str, slices: list[Obj], lowered: LoweredNode) -> None:
        view = replace(node_view(lowered.obj, self.cache.taint_key), dra=True)
        if lowered.problem:  # slices that are not GPUs: reported as a bad inventory, no verdict
            view = replace(view, inventory=None, error=lowered.problem)
        self.cache.put_node(view)

    def pod_lowered(self, key: str, state: LoweredPodState, lowered: LoweredPod) -> None:
        self.cache.put_pod(key, pod_view(lowered.obj) if bound_node(state.raw) else None)

    def pod_gone(self, key: str) -> None:
        self.cache.put_pod(key, None)


__all__ = ["ControllerDra"]

"""One rule for when a pod holds nothing any more (docs/architecture.md, "Quota enforcement"), run
through every program that reads pods: Succeeded or Failed, or gone. A deletionTimestamp alone, or
containers that have all terminated in a Running pod, do not free the share.

Each case is one pod (60 vgpu-core on the only GPU of n1, reserved by the extender) as the API
server sends it; each program is asked the question it answers about such a pod.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.inventory import GpuInfo, NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_INVENTORY, ANN_PHASE, device_id
from fracgpu.controller.reconcile import victims
from fracgpu.controller.views import node_view, pod_view
from fracgpu.core.pod import decode_pod
from fracgpu.core.records import pod_record
from fracgpu.deviceplugin.pods import node_pod_from_dict
from fracgpu.deviceplugin.quota import TenantQuotas
from tests.extender.builders import node_obj, pod_obj
from tests.extender.conftest import build_world
from tests.extender.probe import room, scheduler_filter

GPU = "GPU-n1-0"  # the one GPU of tests.extender.builders.node_obj("n1", 1)
TENANT = "ns/team"


@dataclass(frozen=True)
class Case:
    name: str
    phase: str | None  # status.phase; None: not set
    deleting: bool = False  # metadata.deletionTimestamp set
    all_terminated: bool = False  # every container's status is terminated
    finished: bool = False


CASES = [
    Case("Pending", "Pending"),
    Case("Running", "Running"),
    Case("Unknown (node unreachable)", "Unknown"),
    Case("no phase yet", None),
    Case("Running, being deleted (grace period)", "Running", deleting=True),
    Case("Running, every container terminated (restartPolicy may restart them)", "Running", all_terminated=True),
    Case("Succeeded", "Succeeded", finished=True),
    Case("Failed", "Failed", finished=True),
    Case("Succeeded and being deleted", "Succeeded", deleting=True, finished=True),
    Case("Failed, every container terminated", "Failed", all_terminated=True, finished=True),
]


def reserved_pod(case: Case) -> dict[str, Any]:
    share = GpuShare(GPU, 60, 8 << 30, tuple(device_id(GPU, k) for k in range(60)))
    assignment = Assignment("n1", TENANT, "2026-01-01T00:00:00Z", (share,),
                            (ContainerShare("c0", "app", share.device_ids),))
    obj = pod_obj("p", 60, "8Gi", namespace="team", node="n1", phase=case.phase or "",
                  annotations={ANN_ASSIGNED: assignment.to_json(), ANN_PHASE: "allocated"})
    if case.phase is None:
        del obj["status"]["phase"]
    if case.deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    if case.all_terminated:
        obj["status"]["containerStatuses"] = [
            {"name": "c0", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]
    return obj


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_decoded_pod(case: Case) -> None:
    assert decode_pod(reserved_pod(case)).finished is case.finished


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_extender_gives_the_share_back(case: Case) -> None:
    world = build_world([node_obj("n1", 1), reserved_pod(case)])
    assert pod_record(reserved_pod(case)).finished is case.finished
    assert room(scheduler_filter(world.scheduler), "n1") == (100 if case.finished else 40)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_device_plugin_frees_the_devices(case: Case) -> None:
    assert node_pod_from_dict(reserved_pod(case)).terminated is case.finished


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_plugins_quota_cache_releases_the_charge(case: Case) -> None:
    quotas = TenantQuotas()
    quotas.apply_pod(reserved_pod(case))
    assert quotas.used(TENANT).cores == (0 if case.finished else 60)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_controller_evicts_from_a_failed_gpu(case: Case) -> None:
    inventory = NodeInventoryDoc((GpuInfo(GPU, 0, "A100-SXM4-80GB", 80 << 30, 0, healthy=False, reason="XID 79"),))
    node = node_view({"metadata": {"name": "n1", "annotations": {ANN_INVENTORY: inventory.to_json()}}}, "t")
    view = pod_view(reserved_pod(case))
    assert view is not None
    assert [v[0].key for v in victims(node, [view])] == ([] if case.finished else ["team/p"])

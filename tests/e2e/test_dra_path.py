"""The DRA path end to end, over the real wires (issue 17): `fracgpu dra-driver` publishes a node's GPUs as
ResourceSlices to the fake API server and serves an in-test kubelet over unix-socket gRPC; the extender's
cache lists and watches that server, and its allocator writes the claims' allocation; the kubelet then
prepares the claims through the driver. Each program sees the others only through the API server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fracgpu.api.v1beta1.names import DRA_DRIVER, LABEL_DRA
from tests.draplugin.conftest import world  # noqa: F401  (fixture)
from tests.draplugin.world import NODE, DraWorld
from tests.extender.draworld import GI, DraCluster, claim_pod, share_template, started, whole_template
from tests.fakes.apiserver import ResourceType


@pytest.fixture
def path(world: DraWorld) -> Iterator[tuple[DraWorld, DraCluster]]:  # noqa: F811
    """One node of four simulated 80 GiB GPUs on the DRA path, its driver registered with the kubelet,
    and the extender (cache and allocator) on the same API server."""
    world.apiserver.add_resource(ResourceType("resource.k8s.io", "v1", "resourceclaimtemplates",
                                              "ResourceClaimTemplate", namespaced=True))
    world.apiserver.patch_object("nodes", NODE, {"metadata": {"labels": {LABEL_DRA: "true"}}})
    world.start_driver()
    world.kubelet.wait_registered(DRA_DRIVER)
    for cluster in started(world.apiserver):
        cluster.settle(lambda c=cluster: len(c.view.devices(NODE)) == 4)  # type: ignore[misc]
        yield world, cluster


def prepared_env(node: DraWorld, claim: dict[str, object]) -> dict[str, str]:
    meta = claim["metadata"]
    assert isinstance(meta, dict)
    answer = node.kubelet.prepare(DRA_DRIVER, [(meta["namespace"], meta["name"], meta["uid"])])
    entry = answer.claims[meta["uid"]]
    assert entry.error == "", entry.error
    spec = json.loads((Path(node.cdi_dir) / f"fracgpu-claim-{meta['uid']}.json").read_text())
    (device,) = spec["devices"]
    return dict(line.split("=", 1) for line in device["containerEdits"]["env"])


def test_a_claim_fracgpu_allocates_is_prepared_with_its_share(path: tuple[DraWorld, DraCluster]) -> None:
    """Allocated by the extender, placed by kube-scheduler, prepared by the driver: the container's env
    carries the share the claim asked for, on the GPU the allocation names."""
    node, cluster = path
    node.apiserver.seed(share_template("half", 50, "40Gi"))
    pod = claim_pod("train", ["half"])
    cluster.create_pod(pod)
    cluster.settle(lambda: "default/train" in cluster.waiting())
    assert cluster.allocator.run_once() == 1
    assert cluster.schedule(pod) == NODE
    [claim] = cluster.claims_of(pod)
    [result] = claim["status"]["allocation"]["devices"]["results"]
    env = prepared_env(node, claim)
    gpu = next(g for g in node.backend.inventory() if node.device(g.index) == result["device"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == gpu.uuid
    assert (env["FRACGPU_CORE_PERCENT"], env["FRACGPU_VRAM_LIMIT"]) == ("50", str(40 * GI))
    assert env["FRACGPU_CLAIM"] == "default/train-c0"


def test_a_gpu_that_fails_is_not_allocated_again(path: tuple[DraWorld, DraCluster]) -> None:
    """The driver taints a failed GPU in its slice; the extender reads the taint as unhealthy and places
    the next claims on the other GPUs only."""
    node, cluster = path
    failed = node.backend.inventory()[0]
    node.backend.set_unhealthy(failed.uuid, "XID 79")
    cluster.settle(lambda: not next(g for g in cluster.view.devices(NODE).values() if g.uuid == failed.uuid).healthy)
    node.apiserver.seed(whole_template("one", 1))
    pods = [claim_pod(f"w{i}", ["one"]) for i in range(4)]
    for p in pods:
        cluster.create_pod(p)
    cluster.settle(lambda: {f"default/w{i}" for i in range(4)} <= cluster.waiting())
    assert cluster.allocator.run_once() == 3
    used = {r["device"] for p in pods for r in cluster.results(p)}
    assert len(used) == 3 and node.device(0) not in used
    [refused] = [p for p in pods if not cluster.results(p)]
    [told] = cluster.events(refused["metadata"]["name"])
    assert "unhealthy" in told, told

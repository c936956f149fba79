"""The plugin against the fake API server over the real REST wire: pods, phases, Events, node, Lease."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.api.v1beta1.names import (
    ANN_ASSIGNED,
    ANN_INVENTORY,
    ANN_PHASE,
    DEFAULT_NAMESPACE,
    LABEL_GPU_COUNT,
    LABEL_GPU_MODEL,
    PHASE_ALLOCATED,
    lease_name,
)
from fracgpu.deviceplugin.kubeapiserver import KubeApiServer
from fracgpu.kube import client, writer
from tests.deviceplugin.kubelet import Container
from tests.deviceplugin.world import NODE, World, gpu_uuid
from tests.fakes.apiserver import FakeApiServer
from tests.poll import wait_until


@pytest.fixture
def kube(world: World, apiserver: FakeApiServer) -> Iterator[tuple[World, FakeApiServer, KubeApiServer]]:
    """The plugin running against the fake API server (pods are built in `world.cluster`, then seeded)."""
    apiserver.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    cluster = KubeApiServer(writer.KubeWriter(client.Transport(apiserver.api_client())), NODE)
    cluster.start(timeout_s=5)
    world.start_plugin(cluster=cluster)
    world.kubelet.wait_connected()
    try:
        yield world, apiserver, cluster
    finally:
        world.stop_plugin()
        cluster.stop()


def test_publishes_inventory_labels_and_lease(kube: tuple[World, FakeApiServer, KubeApiServer]) -> None:
    world, api, _ = kube

    def inventory() -> NodeInventoryDoc | None:
        node = api.get_object("nodes", NODE)
        text = ((node or {}).get("metadata") or {}).get("annotations", {}).get(ANN_INVENTORY)
        return NodeInventoryDoc.from_json(text) if text else None

    def labels() -> dict[str, str]:
        return dict(((api.get_object("nodes", NODE) or {}).get("metadata") or {}).get("labels") or {})

    # written by the plugin's own threads (start, then the report loop): wait for them, bounded
    assert wait_until(lambda: inventory() is not None and LABEL_GPU_COUNT in labels())
    doc = inventory()
    assert doc is not None and [g.uuid for g in doc.gpus] == [gpu_uuid(i) for i in range(4)]
    assert labels()[LABEL_GPU_MODEL] == "A100-SXM4-80GB" and labels()[LABEL_GPU_COUNT] == "4"
    # the report loop renews the Lease at once, then every 10 s
    assert wait_until(lambda: api.get_object("leases", lease_name(NODE), DEFAULT_NAMESPACE) is not None)
    lease = api.get_object("leases", lease_name(NODE), DEFAULT_NAMESPACE)
    assert lease is not None and lease["spec"]["holderIdentity"] == f"fracgpu-device-plugin/{NODE}"
    assert lease["spec"]["leaseDurationSeconds"] == 40
    # only when it changes: once the first write is recorded, a publish without a change writes nothing
    assert world.app is not None
    plugin = world.app.plugin
    assert wait_until(lambda: not plugin.publish_node())

    def node_writes() -> int:
        return sum(1 for r in api.requests if r.resource == "nodes" and r.verb in ("patch", "update"))

    before = node_writes()
    assert not plugin.publish_node() and node_writes() == before
    # a health change reaches the annotation through the report loop alone
    world.backend.set_unhealthy(gpu_uuid(2), "test")
    assert world.kubelet.wait_for(lambda: len(world.kubelet.healthy()) == 300, timeout=5.0)
    assert wait_until(lambda: (d := inventory()) is not None and not d.gpus[2].healthy)
    doc = inventory()
    assert doc is not None and [(g.healthy, g.reason) for g in doc.gpus][2] == (False, "test")


def test_allocate_marks_the_pod_allocated_on_the_api_server(kube: tuple[World, FakeApiServer, KubeApiServer]) -> None:
    world, api, _ = kube
    api.seed(world.add_pod("p", [Container("main", 50)], [1]))  # seeded just now: the watch may lag
    adm = world.admit("p")
    assert adm.error is None, adm.error
    world.settle()
    pod = api.get_object("pods", "p", "default")
    assert pod is not None and pod["metadata"]["annotations"][ANN_PHASE] == PHASE_ALLOCATED


def test_a_refusal_is_an_event_on_the_pod(kube: tuple[World, FakeApiServer, KubeApiServer]) -> None:
    world, api, _ = kube
    api.seed(world.add_pod("rogue", [Container("main", 20)]))  # no reservation
    adm = world.admit("rogue")
    assert adm.error is not None
    world.settle()
    events = [e for e in api.list_objects("events", "default") if e["involvedObject"]["name"] == "rogue"]
    assert [e["reason"] for e in events] == ["FracgpuAllocateRefused"]
    assert "annotation fracgpu.io/assigned is missing" in events[0]["message"]
    assert events[0]["involvedObject"]["uid"] == "uid-default-rogue"


def test_a_move_is_recorded_on_the_api_server(kube: tuple[World, FakeApiServer, KubeApiServer]) -> None:
    world, api, _ = kube
    api.seed(world.add_pod("p", [Container("main", 30)], [0]))

    def gpu2(offer: list[str], must: list[str], size: int, preferred: list[str]) -> list[str]:
        return [i for i in offer if i.startswith(gpu_uuid(2))][:size]

    assert world.admit("p", chooser=gpu2).error is None
    world.settle()
    pod = api.get_object("pods", "p", "default")
    assert pod is not None
    assert [g["uuid"] for g in json.loads(pod["metadata"]["annotations"][ANN_ASSIGNED])["gpus"]] == [gpu_uuid(2)]

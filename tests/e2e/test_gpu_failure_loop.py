"""The whole self-heal loop across the three programs, over their real wires (issue 7).

One node with two simulated GPUs: the device plugin serves an in-test kubelet over unix-socket gRPC
and writes to the fake API server (inventory annotation, Lease, phases); the extender's cache lists
and watches that server and answers real HTTP; a controller replica reconciles from it. A GPU fails
in the backend, and each program must see it through the API server alone — never through each
other's objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_INVENTORY, LABEL_ENABLED, TAINT_GPU_FAILED
from fracgpu.deviceplugin.backends.simulated import SimulatedBackend
from fracgpu.deviceplugin.kubeapiserver import KubeApiServer
from fracgpu.extender.scheduler import SchedulerConfig
from fracgpu.kube import client, writer
from tests.controller.clock import FakeClock
from tests.controller.conftest import Replica
from tests.deviceplugin.conftest import world  # noqa: F401  (fixture)
from tests.deviceplugin.kubelet import Container
from tests.deviceplugin.world import NODE, World, gpu_uuid, gpus
from tests.extender.builders import filter_args, pod_obj
from tests.fakes.apiserver import FakeApiServer
from tests.poll import eventually
from tests.reliability.harness import HttpClient, LiveExtender

GPU0, GPU1 = gpu_uuid(0), gpu_uuid(1)


@dataclass
class Loop:
    world: World
    api: FakeApiServer
    extender: LiveExtender
    controller: Replica
    clock: FakeClock

    def fail(self, uuid: str, reason: str) -> None:
        self.world.backend.set_unhealthy(uuid, reason)

    def heal(self, uuid: str) -> None:
        self.world.backend.set_healthy(uuid)

    def publish(self) -> None:
        """The plugin's report tick: inventory annotation (when changed) and heartbeat."""
        assert self.world.app is not None
        self.world.app.plugin.publish_node()
        self.world.app.plugin.api.renew_lease()

    def inventory(self) -> NodeInventoryDoc:
        node = self.api.get_object("nodes", NODE)
        assert node is not None
        return NodeInventoryDoc.from_json(node["metadata"]["annotations"][ANN_INVENTORY])

    def extender_sees(self, healthy: set[str]) -> None:
        def seen() -> bool:
            rec = self.extender.scheduler.cached_node(NODE)
            inv = rec.inventory if rec is not None else None
            return inv is not None and {g.uuid for g in inv.gpus if g.healthy} == healthy

        eventually(seen, 5.0, f"the extender's cache to show {sorted(healthy)} healthy")

    def filter(self, cores: int) -> dict[str, Any]:
        pod = pod_obj(f"new-{cores}", cores, None)
        with HttpClient(self.extender.url) as http:
            status, out = http.post_json("/filter", filter_args(pod, [NODE]))
        assert status == 200, out
        assert isinstance(out, dict)
        return out

    def evicted(self) -> list[str]:
        return sorted(f"{q.namespace}/{q.name}" for q in self.api.requests if q.subresource == "eviction")

    def taints(self) -> list[str]:
        node = self.api.get_object("nodes", NODE)
        assert node is not None
        return [t["key"] for t in (node.get("spec") or {}).get("taints") or []]


@pytest.fixture
def loop(world: World,  # noqa: F811
          apiserver: FakeApiServer) -> Iterator[Loop]:
    """Node with 2 A100s, pod `on-0` holding 50 % of GPU-0 and `on-1` 50 % of GPU-1 (both admitted by
    the kubelet through the plugin); the extender and one controller replica watching the server."""
    world.backend = SimulatedBackend(gpus(2))
    apiserver.seed({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": NODE, "labels": {LABEL_ENABLED: "true"}},
                    "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110"}}})
    cluster = KubeApiServer(writer.KubeWriter(client.Transport(apiserver.api_client())), NODE)
    cluster.start(timeout_s=5)
    world.start_plugin(cluster=cluster)
    world.kubelet.wait_connected()
    for name, gpu in (("on-0", 0), ("on-1", 1)):
        apiserver.seed(world.add_pod(name, [Container("main", 50)], [gpu]))
    cluster.refresh()  # what its pod watch delivers a moment later
    for name in ("on-0", "on-1"):
        assert world.admit(name).error is None
    world.settle()
    clock = FakeClock()
    extender = LiveExtender(apiserver, SchedulerConfig()).start()
    controller = Replica(apiserver, "ctl-a", clock)
    out = Loop(world, apiserver, extender, controller, clock)
    out.publish()
    try:
        yield out
    finally:
        extender.kill()
        controller.close()
        world.stop_plugin()
        cluster.stop()


def test_a_failed_gpu_is_quarantined_its_pods_evicted_and_the_node_heals(loop: Loop) -> None:
    loop.extender_sees({GPU0, GPU1})
    assert loop.filter(40)["NodeNames"] == [NODE]
    loop.controller.round()
    assert loop.evicted() == []

    # GPU-1 fails: its 100 IDs go Unhealthy on the kubelet's stream, the annotation says why
    loop.fail(GPU1, "XID 79 (GPU has fallen off the bus)")
    assert loop.world.kubelet.wait_for(lambda: len(loop.world.kubelet.healthy()) == 100, timeout=1.0)
    loop.publish()
    assert [(g.uuid, g.healthy, g.reason) for g in loop.inventory().gpus] == [
        (GPU0, True, ""), (GPU1, False, "XID 79 (GPU has fallen off the bus)")]

    # exactly the pod on GPU-1 is evicted; the node is not tainted, GPU-0 keeps serving
    loop.controller.round()
    assert loop.evicted() == ["default/on-1"]
    assert loop.taints() == []
    loop.extender_sees({GPU0})
    assert loop.filter(40)["NodeNames"] == [NODE]  # fits beside on-0 on GPU-0
    refused = loop.filter(60)  # would need GPU-1
    assert refused["NodeNames"] == [] and NODE in {**refused["FailedNodes"], **refused["FailedAndUnresolvableNodes"]}

    # GPU-0 fails too: the node as a whole is broken, so it is tainted, and nothing is placed there
    loop.fail(GPU0, "XID 48 (double-bit ECC error)")
    assert loop.world.kubelet.wait_for(lambda: not loop.world.kubelet.healthy(), timeout=1.0)
    loop.publish()
    loop.controller.round()
    assert loop.evicted() == ["default/on-0", "default/on-1"]
    assert loop.taints() == [TAINT_GPU_FAILED]
    loop.extender_sees(set())
    broken = loop.filter(10)
    assert broken["NodeNames"] == [] and NODE in broken["FailedAndUnresolvableNodes"]

    # both recover: IDs healthy again, and the taint goes once the node has stayed healthy long enough
    loop.heal(GPU0)
    loop.heal(GPU1)
    assert loop.world.kubelet.wait_for(lambda: len(loop.world.kubelet.healthy()) == 200, timeout=1.0)
    loop.publish()
    loop.controller.round()
    assert loop.taints() == [TAINT_GPU_FAILED]  # not at once: the hold time guards against flapping
    loop.clock.advance(loop.controller.controller.cfg.taint_hold + 1)
    loop.publish()
    loop.controller.round()
    assert loop.taints() == []
    loop.extender_sees({GPU0, GPU1})
    # the evicted pods still hold their shares through their grace period (the kubelet holds the devices)
    held = loop.filter(60)
    assert held["NodeNames"] == [] and NODE in held["FailedNodes"], held
    for name in ("on-0", "on-1"):
        loop.api.delete_object("pods", name, "default")
    eventually(lambda: loop.filter(60)["NodeNames"] == [NODE], 5.0, "the freed shares to serve a new pod")

"""ResourceSlice publishing against the fake API server (real REST, the official client, field selectors)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from fracgpu.api.v1beta1.dra.resource import ResourceSlice
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import DRA_DRIVER, DRA_TAINT_UNHEALTHY
from fracgpu.core.draslices import SliceOptions, node_devices
from fracgpu.draplugin.publisher import PublishError, SlicePublisher
from fracgpu.kube.client import Transport
from fracgpu.kube.writer import KubeWriter
from tests.draplugin.kubelet import FakeDraKubelet
from tests.draplugin.world import NODE, DraWorld, gpus
from tests.fakes.apiserver import FakeApiServer

SLICE = f"{NODE}-{DRA_DRIVER}"


class Inventory:
    """The GPUs the publisher sees; tests change them as the health loop would."""

    def __init__(self, items: tuple[GpuInfo, ...]) -> None:
        self.gpus = items

    def devices(self, opts: SliceOptions) -> Any:
        return node_devices(self.gpus, unhealthy=opts.unhealthy)

    def fail(self, index: int, reason: str) -> None:
        self.gpus = tuple(replace(g, healthy=False, reason=reason) if g.index == index else g for g in self.gpus)


def slices(world: DraWorld) -> list[ResourceSlice]:
    return sorted((ResourceSlice.from_json(o) for o in world.apiserver.list_objects("resourceslices")),
                  key=lambda s: s.name)


def writes(world: DraWorld) -> list[str]:
    return [r.verb for r in world.apiserver.requests if r.resource == "resourceslices" and r.verb != "list"]


def test_first_sync_creates_the_pool_owned_by_the_node(world: DraWorld) -> None:
    inv = Inventory(gpus(4))
    result = SlicePublisher(world.writer(), NODE, inv.devices).sync()
    (s,) = slices(world)
    assert (s.name, s.spec.driver, s.spec.node_name, s.spec.pool.name) == (SLICE, DRA_DRIVER, NODE, NODE)
    assert (s.spec.pool.generation, s.spec.pool.resource_slice_count, result.generation) == (1, 1, 1)
    assert [d.attributes["index"].value for d in s.spec.devices] == [0, 1, 2, 3]
    node = world.apiserver.get_object("nodes", NODE)
    assert node is not None
    assert s.owner is not None and (s.owner.kind, s.owner.name, s.owner.uid) == ("Node", NODE, node["metadata"]["uid"])


def test_an_unchanged_pool_is_not_written_again(world: DraWorld) -> None:
    inv = Inventory(gpus(2))
    publisher = SlicePublisher(world.writer(), NODE, inv.devices)
    publisher.sync()
    world.apiserver.clear_requests()
    assert publisher.sync().written == 0
    assert SlicePublisher(world.writer(), NODE, inv.devices).sync().written == 0  # nor by a restarted driver
    assert writes(world) == []
    assert slices(world)[0].spec.pool.generation == 1


def test_a_failed_gpu_is_tainted_in_the_next_generation(world: DraWorld) -> None:
    inv = Inventory(gpus(2))
    publisher = SlicePublisher(world.writer(), NODE, inv.devices)
    publisher.sync()
    inv.fail(1, "XID 79: fallen off the bus")
    assert publisher.sync().generation == 2
    (s,) = slices(world)
    assert s.spec.pool.generation == 2
    dev = s.spec.devices[1]
    assert [(t.key, t.value, t.effect) for t in dev.taints] == [
        (DRA_TAINT_UNHEALTHY, "XID-79-fallen-off-the-bus", "NoSchedule")]
    assert dev.attributes["healthy"].value is False


def test_omit_leaves_a_failed_gpu_out_of_the_pool(world: DraWorld) -> None:
    inv = Inventory(gpus(3))
    inv.fail(0, "XID 48")
    SlicePublisher(world.writer(), NODE, inv.devices, SliceOptions(unhealthy="omit")).sync()
    assert [d.attributes["index"].value for d in slices(world)[0].spec.devices] == [1, 2]


def test_slices_wiped_by_the_kubelet_come_back_with_a_higher_generation(world: DraWorld) -> None:
    inv = Inventory(gpus(2))
    publisher = SlicePublisher(world.writer(), NODE, inv.devices)
    publisher.sync()
    assert world.apiserver.delete_object("resourceslices", SLICE)  # what the kubelet does at start
    assert publisher.sync().generation == 2
    assert slices(world)[0].spec.pool.generation == 2


def test_an_edited_slice_is_put_back(world: DraWorld) -> None:
    inv = Inventory(gpus(2))
    publisher = SlicePublisher(world.writer(), NODE, inv.devices)
    publisher.sync()
    world.apiserver.patch_object("resourceslices", SLICE, {"spec": {"devices": []}})
    publisher.sync()
    assert len(slices(world)[0].spec.devices) == 2


def test_stale_slices_of_this_node_and_driver_are_deleted_and_others_kept(world: DraWorld) -> None:
    def foreign(name: str, node: str, driver: str) -> dict[str, Any]:
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": name},
                "spec": {"driver": driver, "nodeName": node, "pool": {"name": node, "generation": 7,
                                                                      "resourceSliceCount": 1}, "devices": []}}

    world.apiserver.seed(foreign("old-layout", NODE, DRA_DRIVER), foreign("other-node", "n2", DRA_DRIVER),
                         foreign("nvidia", NODE, "gpu.nvidia.com"))
    result = SlicePublisher(world.writer(), NODE, Inventory(gpus(1)).devices).sync()
    assert [s.name for s in slices(world)] == sorted([SLICE, "other-node", "nvidia"])
    assert result.generation == 8  # above the generation the pool had
    assert result.deleted == 1


def test_more_gpus_than_one_slice_holds_are_cut_into_a_counted_pool(world: DraWorld) -> None:
    inv = Inventory(gpus(5))
    SlicePublisher(world.writer(), NODE, inv.devices, SliceOptions(devices_per_slice=2)).sync()
    got = slices(world)
    assert [s.name for s in got] == [f"{SLICE}-0", f"{SLICE}-1", f"{SLICE}-2"]
    assert {s.spec.pool.resource_slice_count for s in got} == {3}
    assert sum(len(s.spec.devices) for s in got) == 5


def test_taints_dropped_by_an_api_server_without_device_taints_make_failed_gpus_leave(world: DraWorld) -> None:
    def drop_taints(obj: dict[str, Any]) -> None:  # kube-apiserver with DRADeviceTaints off
        for dev in obj.get("spec", {}).get("devices", []):
            dev.pop("taints", None)

    world.apiserver.drop_on_write("resourceslices", drop_taints)
    inv = Inventory(gpus(2))
    publisher = SlicePublisher(world.writer(), NODE, inv.devices)
    publisher.sync()
    inv.fail(1, "XID 79")
    publisher.sync()
    assert publisher.opts.unhealthy == "omit"
    assert [d.attributes["index"].value for d in slices(world)[0].spec.devices] == [0]


def test_consumable_capacity_dropped_by_the_api_server_is_not_rewritten_forever(world: DraWorld) -> None:
    def drop_consumable(obj: dict[str, Any]) -> None:  # kube-apiserver with DRAConsumableCapacity off
        for dev in obj.get("spec", {}).get("devices", []):
            dev.pop("allowMultipleAllocations", None)
            for cap in dev.get("capacity", {}).values():
                cap.pop("requestPolicy", None)

    world.apiserver.drop_on_write("resourceslices", drop_consumable)
    publisher = SlicePublisher(world.writer(), NODE, Inventory(gpus(2)).devices)
    publisher.sync()
    assert publisher.dropped == ("allowMultipleAllocations", "requestPolicy")
    world.apiserver.clear_requests()
    publisher.sync()
    assert writes(world) == []


def test_an_api_error_is_a_publish_error_with_the_slice_name(world: DraWorld) -> None:
    world.apiserver.fail_next("create", "resourceslices", 403, message="forbidden by RBAC")
    with pytest.raises(PublishError, match=f"writing ResourceSlice {SLICE} failed: 403"):
        SlicePublisher(world.writer(), NODE, Inventory(gpus(1)).devices).sync()


def test_an_api_server_without_resource_v1_is_named(apiserver: FakeApiServer) -> None:
    writer = KubeWriter(Transport(apiserver.api_client()))  # the default fake serves no resource.k8s.io
    with pytest.raises(PublishError, match=r"does not serve resource.k8s.io/v1 resourceslices: the DRA path needs"):
        SlicePublisher(writer, NODE, Inventory(gpus(1)).devices).sync()


def test_the_running_driver_publishes_health_changes_and_republishes_after_a_wipe(node: DraWorld) -> None:
    # Bounded by half the resync interval, not by a guess at the machine's speed: a slice back within
    # that bound can only have come from the health change or the registration, never from the resync.
    bound_s = node.config().resync_interval / 2

    def wait_for(predicate: Any) -> None:
        deadline = time.monotonic() + bound_s
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert predicate()

    wait_for(lambda: len(slices(node)) == 1)
    node.backend.set_unhealthy(node.backend.inventory()[3].uuid, "XID 79")
    wait_for(lambda: bool(slices(node)) and bool(slices(node)[0].spec.devices[3].taints))
    generation = slices(node)[0].spec.pool.generation
    node.apiserver.delete_object("resourceslices", SLICE)
    node.kubelet.stop()  # a kubelet restart: it wipes the slices, then registers the plugin again
    node.kubelet = FakeDraKubelet(node.registry_dir)
    node.kubelet.start()
    wait_for(lambda: len(slices(node)) == 1)  # before the resync could: the registration woke the publisher
    assert slices(node)[0].spec.pool.generation > generation

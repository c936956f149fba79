"""Inventory -> ResourceSlices (fracgpu.core.draslices): the devices, names, policies, and upstream's rules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from fracgpu.api.v1beta1.dra import resource
from fracgpu.api.v1beta1.dra.resource import Attribute, Capacity, CapacityRange, Device, DeviceTaint, RequestPolicy
from fracgpu.api.v1beta1.inventory import GpuInfo, GpuLink, LinkClass
from fracgpu.api.v1beta1.names import DRA_ALLOCATORS, DRA_ATTR_ALLOCATOR
from fracgpu.core.draslicerules import validate_slice
from fracgpu.core.draslices import (
    ATTR_NUMA_NODE,
    ATTR_PCI_BUS_ID,
    ATTR_PCIE_ROOT,
    build_slices,
    device_names,
    dropped_fields,
    gpu_device,
    gpus_from_devices,
    node_devices,
    normalise_bdf,
    nvlink_domains,
    same_devices,
    slice_names,
    taint_value,
)

GI = 1024**3


def gpu(i: int, *, uuid: str = "", memory: int = 80 * GI, numa: int = 0, bus: str = "", healthy: bool = True,
        reason: str = "", nvlink: tuple[str, ...] = ()) -> GpuInfo:
    return GpuInfo(uuid=uuid or f"GPU-{i:08x}-0000-0000-0000-000000000000", index=i, model="A100-SXM4-80GB",
                   memory=memory, numa=numa, pci_bus_id=bus, healthy=healthy, reason=reason,
                   links=tuple(GpuLink(p, LinkClass.NVLINK, 4) for p in nvlink))


def attrs(dev: Device) -> dict[str, Any]:
    return {k: v.value for k, v in dev.attributes.items()}


# -- one device per GPU ------------------------------------------------------------------------------------


def test_a_healthy_gpu_is_a_shareable_device_with_the_vgpu_granularity() -> None:
    dev = gpu_device(gpu(0, bus="00000000:07:00.0", numa=1), "gpu-0", nvlink_domain=0, pcie_root="pci0000:00")
    assert dev is not None
    assert attrs(dev) == {"uuid": "GPU-00000000-0000-0000-0000-000000000000", "model": "A100-SXM4-80GB", "index": 0,
                          "healthy": True, "allocator": "fracgpu", "nvlinkDomain": 0, ATTR_PCI_BUS_ID: "0000:07:00.0",
                          ATTR_PCIE_ROOT: "pci0000:00", ATTR_NUMA_NODE: 1}
    assert dev.allow_multiple_allocations is True
    assert dev.capacity["cores"] == Capacity("100", RequestPolicy("100", CapacityRange("1", "100", "1")))
    assert dev.capacity["memory"] == Capacity("80Gi", RequestPolicy("80Gi", CapacityRange("1Mi", "80Gi")))
    assert dev.taints == ()


@pytest.mark.parametrize(("g", "absent"), [
    (gpu(0, numa=-1), ATTR_NUMA_NODE),  # no affinity: -1 would match every other NUMA-less device
    (gpu(0, bus=""), ATTR_PCI_BUS_ID),
    (gpu(0, bus="not-a-bdf"), ATTR_PCI_BUS_ID),
], ids=["numa-unknown", "no-bus", "bad-bus"])
def test_unknown_topology_is_left_out_not_guessed(g: GpuInfo, absent: str) -> None:
    dev = gpu_device(g, "gpu-0")
    assert dev is not None and absent not in dev.attributes and ATTR_PCIE_ROOT not in dev.attributes


@pytest.mark.parametrize(("unhealthy", "expect_device", "taints"), [
    ("taint", True, [("gpu.fracgpu.io/unhealthy", "XID-79-GPU-has-fallen-off-the-bus", "NoSchedule")]),
    ("omit", False, []),
])
def test_a_failed_gpu_is_tainted_or_left_out(unhealthy: Any, expect_device: bool, taints: list[tuple[str, ...]]) -> None:
    dev = gpu_device(gpu(0, healthy=False, reason="XID 79: GPU has fallen off the bus"), "gpu-0", unhealthy=unhealthy)
    assert (dev is not None) is expect_device
    if dev is not None:
        assert [(t.key, t.value, t.effect) for t in dev.taints] == taints
        assert dev.attributes["healthy"] == Attribute("bool", False)


@pytest.mark.parametrize("allocator", DRA_ALLOCATORS)
def test_every_device_names_its_allocator_and_reads_back_without_it(allocator: str) -> None:
    gpus = [gpu(i, healthy=i != 1, reason="XID 79" if i == 1 else "") for i in range(3)]
    devs = node_devices(gpus, allocator=allocator)
    assert [d.attributes[DRA_ATTR_ALLOCATOR] for d in devs] == [Attribute("string", allocator)] * 3
    assert all(validate_slice(s) == [] for s in build_slices("n1", devs, 1))
    # the attribute is the allocators' business: the inventory read back is the same for both values
    assert gpus_from_devices(devs) == gpus_from_devices(node_devices(gpus))
    assert [g.uuid for g in gpus_from_devices(devs)] == [g.uuid for g in gpus]


@pytest.mark.parametrize("allocator", ["", "scheduler", "Fracgpu"])
def test_an_unknown_allocator_is_refused_not_published(allocator: str) -> None:
    # a device whose allocator no DeviceClass and no fracgpu component knows would be allocated by nobody
    with pytest.raises(ValueError, match=f"allocator {allocator!r}: one of fracgpu, kube-scheduler"):
        node_devices([gpu(0)], allocator=allocator)


@pytest.mark.parametrize(("memory", "value", "minimum"), [
    (80 * GI, "80Gi", "1Mi"),
    (15843721216, "15472384Ki", "1Mi"),  # a T4: not a whole number of MiB
    (512 * 1024, "512Ki", "512Ki"),  # smaller than the 1 MiB minimum: the minimum is the capacity
])
def test_memory_policy_for_any_gpu_size(memory: int, value: str, minimum: str) -> None:
    dev = gpu_device(gpu(0, memory=memory), "gpu-0")
    assert dev is not None
    assert dev.capacity["memory"] == Capacity(value, RequestPolicy(value, CapacityRange(minimum, value)))
    assert validate_slice(build_slices("n", [dev], 1)[0]) == []


@pytest.mark.parametrize(("raw", "bdf"), [
    ("00000000:07:00.0", "0000:07:00.0"),
    ("0000:3B:00.0", "0000:3b:00.0"),
    (" 0001:af:1e.7 ", "0001:af:1e.7"),
    ("00010000:07:00.0", ""),  # an 8-digit domain that does not fit in 4
    ("07:00.0", ""),
    ("", ""),
])
def test_bus_ids_in_the_kernels_form(raw: str, bdf: str) -> None:
    assert normalise_bdf(raw) == bdf


@pytest.mark.parametrize(("reason", "value"), [
    ("XID 79: GPU has fallen off the bus", "XID-79-GPU-has-fallen-off-the-bus"),
    ("temperature 95C >= 90C (3 checks)", "temperature-95C-90C-3-checks"),
    ("--", ""),
    ("x" * 100, "x" * 63),
])
def test_taint_values_are_label_values(reason: str, value: str) -> None:
    assert taint_value(reason) == value


def test_device_names_are_stable_dns_labels_from_the_uuid() -> None:
    names = device_names([gpu(0, uuid="GPU-4B5C6D7E-0000-1111-2222-333344445555"),
                          gpu(1, uuid="MIG_weird/uuid with spaces and a very long tail that goes on and on and on"),
                          gpu(2, uuid="gpu-a"), gpu(3, uuid="GPU-A")])
    assert names["GPU-4B5C6D7E-0000-1111-2222-333344445555"] == "gpu-4b5c6d7e-0000-1111-2222-333344445555"
    weird = names["MIG_weird/uuid with spaces and a very long tail that goes on and on and on"]
    assert weird.startswith("mig-weird-uuid-with-spaces") and len(weird) <= 63
    assert names["gpu-a"] != names["GPU-A"]  # same lowercase form: both hashed, still distinct
    assert len(set(names.values())) == 4
    assert names == device_names([gpu(3, uuid="GPU-A"), gpu(2, uuid="gpu-a"),
                                  gpu(1, uuid="MIG_weird/uuid with spaces and a very long tail that goes on and on and on"),
                                  gpu(0, uuid="GPU-4B5C6D7E-0000-1111-2222-333344445555")])


def test_nvlink_domains_are_connected_components_and_lonely_gpus_have_none() -> None:
    g = [gpu(0, uuid="a", nvlink=("b",)), gpu(1, uuid="b"), gpu(2, uuid="c", nvlink=("d",)), gpu(3, uuid="d"),
         gpu(4, uuid="e"), gpu(5, uuid="f", nvlink=("zzz",))]  # a peer that is not on the node: no domain
    assert nvlink_domains(g) == {"a": 0, "b": 0, "c": 1, "d": 1}


def test_node_devices_in_index_order_with_pcie_roots() -> None:
    devs = node_devices([gpu(1, uuid="b"), gpu(0, uuid="a")], pcie_roots={"a": "pci0000:00"})
    assert [d.name for d in devs] == ["a", "b"]
    assert ATTR_PCIE_ROOT in devs[0].attributes and ATTR_PCIE_ROOT not in devs[1].attributes


# -- slices ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "per", "names"), [
    (0, 64, ["n1-gpu.fracgpu.io"]),  # an empty pool is still published: consumers see it is empty
    (8, 64, ["n1-gpu.fracgpu.io"]),
    (5, 2, ["n1-gpu.fracgpu.io-0", "n1-gpu.fracgpu.io-1", "n1-gpu.fracgpu.io-2"]),
])
def test_pool_layout(count: int, per: int, names: list[str]) -> None:
    from fracgpu.core.draslices import SliceOptions

    devs = node_devices([gpu(i) for i in range(count)])
    got = build_slices("n1", devs, 3, opts=SliceOptions(devices_per_slice=per))
    assert [s.name for s in got] == names
    assert {(s.spec.pool.name, s.spec.pool.generation, s.spec.pool.resource_slice_count) for s in got} == {
        ("n1", 3, len(names))}
    assert sum(len(s.spec.devices) for s in got) == count


def test_slice_names_of_very_long_node_names_stay_dns_subdomains() -> None:
    node = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(node) == 253
    for count in (1, 3):
        assert all(len(n) <= 253 for n in slice_names(node, count))
    for s in build_slices(node, node_devices([gpu(i) for i in range(3)]), 1):
        assert validate_slice(s) == []


# -- the published objects are what kube-apiserver accepts --------------------------------------------------


def fleet() -> list[resource.ResourceSlice]:
    g = [gpu(i, bus=f"00000000:{i + 7:02X}:00.0", numa=i // 4, nvlink=(f"GPU-{(i ^ 1):08x}-0000-0000-0000-000000000000",),
             healthy=i != 3, reason="XID 79" if i == 3 else "") for i in range(8)]
    owner = resource.OwnerReference("v1", "Node", "n1", "0b6a4f2c-1b1e-4c39-9a51-6d0fb1c4a111")
    return build_slices("n1", node_devices(g, pcie_roots={g[0].uuid: "pci0000:00"}), 4, owner=owner)


@pytest.mark.parametrize("version", ["1.34", "1.35", "1.36", "1.37"])
def test_published_slices_validate_against_the_resource_v1_schema(version: str) -> None:
    for s in fleet():
        kubernetes_validate.validate(s.to_json(), version, strict=True)


def test_published_slices_pass_the_api_servers_rules() -> None:
    for s in fleet():
        assert validate_slice(s) == []


def test_json_round_trip() -> None:
    for s in fleet():
        assert resource.ResourceSlice.from_json(s.to_json()) == s


def _slice(dev: Device) -> resource.ResourceSlice:
    return build_slices("n1", [dev], 1)[0]


_GOOD = gpu_device(gpu(0), "gpu-0")
assert _GOOD is not None
_CORES = _GOOD.capacity["cores"]


@pytest.mark.parametrize(("dev", "error"), [
    (replace(_GOOD, name="GPU_0"), "must be a DNS label"),
    (replace(_GOOD, attributes={**_GOOD.attributes, "bad name": Attribute.of(1)}), "must be a C identifier"),
    (replace(_GOOD, attributes={**_GOOD.attributes, "no/such/x": Attribute.of(1)}), "the domain must be"),
    (replace(_GOOD, attributes={**_GOOD.attributes, "gpu.fracgpu.io/x!": Attribute.of(1)}), "must be a C identifier"),
    (replace(_GOOD, attributes={**_GOOD.attributes, "model": Attribute.of("x" * 65)}), "longer than 64"),
    (replace(_GOOD, attributes={**_GOOD.attributes, "v": Attribute("version", "1.2")}), "not a semantic version"),
    (replace(_GOOD, attributes={f"a{i}": Attribute.of(i) for i in range(31)}), "at most 32 attributes and capacities"),
    (replace(_GOOD, allow_multiple_allocations=None), "allowMultipleAllocations must be true"),
    (replace(_GOOD, capacity={"cores": replace(_CORES, request_policy=RequestPolicy(
        "100", CapacityRange("1", "100", "1"), ("1", "100")))}), "exclusive"),
    (replace(_GOOD, capacity={"cores": replace(_CORES, request_policy=RequestPolicy(
        "100", CapacityRange("1", "100", "2")))}), "not min + a multiple of step"),
    (replace(_GOOD, capacity={"cores": replace(_CORES, request_policy=RequestPolicy(
        "0", CapacityRange("1", "100", "1")))}), "default: less than min"),
    (replace(_GOOD, capacity={"cores": replace(_CORES, request_policy=RequestPolicy(
        "100", CapacityRange("1", "200")))}), "validRange.max"),
    (replace(_GOOD, capacity={"cores": replace(_CORES, request_policy=RequestPolicy(
        None, CapacityRange("1", "100")))}), "default are required"),
    (replace(_GOOD, capacity={"cores": replace(_CORES, request_policy=RequestPolicy(
        "30", None, ("50", "10", "100")))}), "ascending"),
    (replace(_GOOD, capacity={"cores": replace(_CORES, request_policy=RequestPolicy(
        "30", None, ("10", "50", "100")))}), "not one of validValues"),
    (replace(_GOOD, capacity={"cores": Capacity("lots")}), "not a quantity"),
    (replace(_GOOD, taints=(DeviceTaint("gpu.fracgpu.io/unhealthy", "PreferNoSchedule"),)), "None, NoSchedule"),
    (replace(_GOOD, taints=(DeviceTaint("gpu.fracgpu.io/un healthy", "NoSchedule"),)), "must be a label name"),
    (replace(_GOOD, taints=(DeviceTaint("k", "NoSchedule", "a b"),)), "must be a label value"),
    (replace(_GOOD, taints=tuple(DeviceTaint(f"k{i}", "NoSchedule") for i in range(17))), "at most 16"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_validation_refuses_what_the_api_server_refuses(dev: Device, error: str) -> None:
    errs = validate_slice(_slice(dev))
    assert any(error in e for e in errs), errs


def test_validation_limits_devices_per_slice() -> None:
    devs = node_devices([gpu(i) for i in range(65)])
    tainted = replace(devs[0], taints=(DeviceTaint("k", "NoSchedule"),))
    from fracgpu.core.draslices import SliceOptions

    (s,) = build_slices("n1", [tainted, *devs[1:]], 1, opts=SliceOptions(devices_per_slice=200))
    assert any("at most 64 devices when a device has taints" in e for e in validate_slice(s))


# -- comparing -------------------------------------------------------------------------------------------


def test_same_devices_compares_quantities_by_value_and_ignores_time_added() -> None:
    dev = node_devices([gpu(0, healthy=False, reason="x")])[0]
    stored = replace(dev, capacity={"cores": dev.capacity["cores"], "memory": Capacity(
        "85899345920", RequestPolicy("85899345920", CapacityRange("1048576", "85899345920")))},
        taints=tuple(replace(t, time_added="2026-12-01T00:00:00Z") for t in dev.taints))
    assert same_devices([dev], [stored])
    assert not same_devices([dev], [replace(stored, taints=())])


def test_dropped_fields_names_what_the_api_server_did_not_keep() -> None:
    dev = node_devices([gpu(0, healthy=False, reason="x")])[0]
    stored = replace(dev, taints=(), allow_multiple_allocations=None,
                     capacity={k: replace(c, request_policy=None) for k, c in dev.capacity.items()})
    assert dropped_fields([dev], [stored]) == ["allowMultipleAllocations", "requestPolicy", "taints"]
    assert dropped_fields([dev], [dev]) == []

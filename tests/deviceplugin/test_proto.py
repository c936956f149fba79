"""The device-plugin and PodResources protos keep the kubelet's wire contract (freshness: tests/test_generated_code.py)."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from fracgpu.api.v1beta1.deviceplugin import api_pb2
from fracgpu.api.v1beta1.podresources import api_pb2 as pr_pb2

# Field numbers of the kubelet's device-plugin v1beta1 and PodResources v1 APIs (the wire contract).
WIRE: list[tuple[type[Message], dict[str, int]]] = [
    (api_pb2.RegisterRequest, {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4}),
    (api_pb2.DevicePluginOptions, {"pre_start_required": 1, "get_preferred_allocation_available": 2}),
    (api_pb2.Device, {"ID": 1, "health": 2, "topology": 3}),
    (api_pb2.NUMANode, {"ID": 1}),
    (api_pb2.ContainerPreferredAllocationRequest,
     {"available_deviceIDs": 1, "must_include_deviceIDs": 2, "allocation_size": 3}),
    (api_pb2.ContainerPreferredAllocationResponse, {"deviceIDs": 1}),
    (api_pb2.ContainerAllocateRequest, {"devices_ids": 1}),
    (api_pb2.ContainerAllocateResponse, {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5}),
    (api_pb2.Mount, {"container_path": 1, "host_path": 2, "read_only": 3}),
    (api_pb2.DeviceSpec, {"container_path": 1, "host_path": 2, "permissions": 3}),
    (api_pb2.PreStartContainerRequest, {"devices_ids": 1}),
    (api_pb2.CDIDevice, {"name": 1}),
    (pr_pb2.PodResources, {"name": 1, "namespace": 2, "containers": 3}),
    (pr_pb2.ContainerResources, {"name": 1, "devices": 2, "cpu_ids": 3, "memory": 4, "dynamic_resources": 5}),
    (pr_pb2.ContainerDevices, {"resource_name": 1, "device_ids": 2, "topology": 3}),
    (pr_pb2.DynamicResource, {"claim_name": 2, "claim_namespace": 3, "claim_resources": 4}),
    (pr_pb2.ClaimResource, {"cdi_devices": 1, "driver_name": 2, "pool_name": 3, "device_name": 4}),
    (pr_pb2.GetPodResourcesRequest, {"pod_name": 1, "pod_namespace": 2}),
]


@pytest.mark.parametrize(("message", "fields"), WIRE, ids=[m.DESCRIPTOR.name for m, _ in WIRE])
def test_wire_field_numbers(message: type[Message], fields: dict[str, int]) -> None:
    got = {f.name: f.number for f in message.DESCRIPTOR.fields}
    assert got == fields


def test_services_and_package() -> None:
    assert api_pb2.DESCRIPTOR.package == "v1beta1"
    assert set(api_pb2.DESCRIPTOR.services_by_name) == {"Registration", "DevicePlugin"}
    methods = [m.name for m in api_pb2.DESCRIPTOR.services_by_name["DevicePlugin"].methods]
    assert methods == ["GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate",
                       "PreStartContainer"]
    assert pr_pb2.DESCRIPTOR.package == "v1"
    assert [m.name for m in pr_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"].methods] == [
        "List", "GetAllocatableResources", "Get"]

"""The committed DRA and plugin-registration gRPC code keeps the kubelet's wire contract (freshness: tests/test_generated_code.py)."""

from __future__ import annotations

from types import ModuleType

import pytest
from google.protobuf.message import Message

from fracgpu.api.v1beta1.dra.kubeletv1 import api_pb2 as v1
from fracgpu.api.v1beta1.dra.kubeletv1beta1 import api_pb2 as v1beta1
from fracgpu.api.v1beta1.names import DRA_SERVICES, PLUGIN_TYPE_DRA
from fracgpu.api.v1beta1.pluginregistration import api_pb2 as reg

# Field numbers of k8s.io/kubelet/pkg/apis/dra/{v1,v1beta1}/api.proto and pluginregistration/v1/api.proto.
DRA_FIELDS: dict[str, dict[str, int]] = {
    "NodePrepareResourcesRequest": {"claims": 1},
    "NodePrepareResourcesResponse": {"claims": 1},
    "NodePrepareResourceResponse": {"devices": 1, "error": 2},
    "Device": {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4},
    "NodeUnprepareResourcesRequest": {"claims": 1},
    "NodeUnprepareResourcesResponse": {"claims": 1},
    "NodeUnprepareResourceResponse": {"error": 1},
    "Claim": {"namespace": 1, "uid": 2, "name": 3},
}
REG_FIELDS: list[tuple[type[Message], dict[str, int]]] = [
    (reg.PluginInfo, {"type": 1, "name": 2, "endpoint": 3, "supported_versions": 4}),
    (reg.RegistrationStatus, {"plugin_registered": 1, "error": 2}),
    (reg.RegistrationStatusResponse, {}),
    (reg.InfoRequest, {}),
]


@pytest.mark.parametrize("module", [v1, v1beta1], ids=["v1", "v1beta1"])
@pytest.mark.parametrize("message", sorted(DRA_FIELDS))
def test_dra_field_numbers(module: ModuleType, message: str) -> None:
    got = {f.name: f.number for f in module.DESCRIPTOR.message_types_by_name[message].fields}
    assert got == DRA_FIELDS[message]


@pytest.mark.parametrize(("message", "fields"), REG_FIELDS, ids=[m.DESCRIPTOR.name for m, _ in REG_FIELDS])
def test_registration_field_numbers(message: type[Message], fields: dict[str, int]) -> None:
    assert {f.name: f.number for f in message.DESCRIPTOR.fields} == fields


@pytest.mark.parametrize(("module", "version"), [(v1, "v1"), (v1beta1, "v1beta1")])
def test_method_paths_are_the_kubelets(module: ModuleType, version: str) -> None:
    service = module.DESCRIPTOR.services_by_name["DRAPlugin"]
    assert service.full_name == f"k8s.io.kubelet.pkg.apis.dra.{version}.DRAPlugin"
    assert [m.name for m in service.methods] == ["NodePrepareResources", "NodeUnprepareResources"]
    assert f"{version}.DRAPlugin" in DRA_SERVICES  # the name advertised in PluginInfo.supported_versions


def test_registration_service_and_constants() -> None:
    service = reg.DESCRIPTOR.services_by_name["Registration"]
    assert service.full_name == "pluginregistration.Registration"  # upstream's package, not "v1"
    assert [m.name for m in service.methods] == ["GetInfo", "NotifyRegistrationStatus"]
    assert PLUGIN_TYPE_DRA == "DRAPlugin"
    assert DRA_SERVICES == ("v1.DRAPlugin", "v1beta1.DRAPlugin")

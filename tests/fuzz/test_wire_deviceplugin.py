"""Hostile Allocate / GetPreferredAllocation messages to the device plugin over its real unix socket.

Random, duplicate, foreign, malformed and oversized device-ID lists, 0..6 container requests per
message, any allocation size: every refusal is INVALID_ARGUMENT or FAILED_PRECONDITION with a
message (never UNKNOWN/INTERNAL), a preferred answer only names offered IDs, and the plugin keeps
serving: a properly reserved pod is admitted afterwards, on IDs nobody else holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fracgpu.api.v1beta1.deviceplugin import api_pb2, api_pb2_grpc
from tests.deviceplugin.conftest import node, world  # noqa: F401  (the plugin's worlds, reused)
from tests.deviceplugin.kubelet import Container
from tests.deviceplugin.world import World, gpu_uuid

SETTINGS = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}


@pytest.fixture
def plugin(node: World) -> Iterator[tuple[World, api_pb2_grpc.DevicePluginStub]]:  # noqa: F811
    """The running plugin with one reserved pod waiting (10 vgpu-core on GPU 0) and a client of its own."""
    node.add_pod("waiting", [Container("main", 10)], [0])
    endpoint = node.kubelet.registrations[-1].endpoint
    channel = grpc.insecure_channel(f"unix://{os.path.join(node.dir, endpoint)}")
    try:
        yield node, api_pb2_grpc.DevicePluginStub(channel)
    finally:
        channel.close()


device_id = st.one_of(
    st.builds(lambda g, k: f"{gpu_uuid(g)}::{k}", st.integers(0, 3), st.integers(0, 99)),  # real
    st.builds(lambda g, k: f"{gpu_uuid(g)}::{k}", st.integers(0, 9), st.integers(-5, 200)),  # foreign GPU / bad k
    st.sampled_from(["", "::", "GPU-x::1", f"{gpu_uuid(0)}::", f"{gpu_uuid(0)}::01", f"{gpu_uuid(0)}::1e1",
                     f"{gpu_uuid(0)}", "::".join([gpu_uuid(0)] * 3), "\x00", "é" * 300]),
    st.text(max_size=60),
)
id_list = st.one_of(st.lists(device_id, max_size=40),
                    st.lists(device_id, min_size=1, max_size=5).map(lambda xs: xs * 3),  # duplicates
                    st.integers(0, 250).map(lambda n: [f"{gpu_uuid(n % 4)}::{n % 100}" for n in range(n)]))


def _refused(err: grpc.RpcError) -> None:
    assert err.code() in REFUSALS, (err.code(), err.details())
    assert err.details(), err.code()


@SETTINGS
@given(requests=st.lists(id_list, max_size=6))
def test_hostile_allocate(plugin: tuple[World, api_pb2_grpc.DevicePluginStub], requests: list[list[str]]) -> None:
    _, stub = plugin
    msg = api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)
                                                      for ids in requests])
    try:
        resp = stub.Allocate(msg, timeout=5)
    except grpc.RpcError as err:
        _refused(err)
        return
    # served: only when every container's IDs are exactly a waiting pod's (never for garbage)
    assert len(resp.container_responses) == len(requests)


@SETTINGS
@given(available=id_list, must=id_list, size=st.integers(-(2**31), 2**31 - 1) | st.integers(0, 120),
       count=st.integers(0, 4))
def test_hostile_preferred_allocation(plugin: tuple[World, api_pb2_grpc.DevicePluginStub], available: list[str],
                                      must: list[str], size: int, count: int) -> None:
    _, stub = plugin
    msg = api_pb2.PreferredAllocationRequest(container_requests=[
        api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=available, must_include_deviceIDs=must,
                                                    allocation_size=size) for _ in range(count)])
    try:
        resp = stub.GetPreferredAllocation(msg, timeout=5)
    except grpc.RpcError as err:
        _refused(err)
        return
    assert len(resp.container_responses) == count
    for r in resp.container_responses:
        # only offered IDs (the kubelet's must_include is part of its offer; a request that breaks that
        # contract gets its must_include back, which the kubelet then ignores as not available)
        assert set(r.deviceIDs) <= set(available) | set(must), "a preferred answer names only offered IDs"
        assert len(r.deviceIDs) == len(set(r.deviceIDs))


def test_oversized_messages_are_refused_and_the_plugin_keeps_serving(
        plugin: tuple[World, api_pb2_grpc.DevicePluginStub]) -> None:
    w, stub = plugin
    huge = [f"{gpu_uuid(0)}::{k % 100}-{k}" for k in range(120_000)]  # ~6 MB, over gRPC's 4 MiB default
    with pytest.raises(grpc.RpcError) as err:
        stub.Allocate(api_pb2.AllocateRequest(container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=huge)]), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the waiting pod is still admitted normally, on its own reservation
    adm = w.admit("waiting")
    assert adm.error is None
    assert set(adm.devices["main"]) == set(w.assignment("waiting").device_ids)


def test_after_the_storm_the_waiting_pod_is_admitted(plugin: tuple[World, api_pb2_grpc.DevicePluginStub]) -> None:
    w, stub = plugin
    for ids in ([gpu_uuid(0)] * 10, [f"{gpu_uuid(0)}::{k}" for k in range(10)] * 2, ["x"] * 500):
        with pytest.raises(grpc.RpcError) as err:
            stub.Allocate(api_pb2.AllocateRequest(container_requests=[
                api_pb2.ContainerAllocateRequest(devices_ids=ids)]), timeout=5)
        _refused(err.value)
    adm = w.admit("waiting")
    assert adm.error is None

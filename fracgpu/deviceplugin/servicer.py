"""The DevicePlugin gRPC service: thin, decodes the kubelet's calls and hands them to ``Plugin``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc

from fracgpu.api.v1beta1.deviceplugin import api_pb2, api_pb2_grpc
from fracgpu.deviceplugin.ledger import INVALID
from fracgpu.deviceplugin.plugin import AllocateRefused, Plugin

log = logging.getLogger(__name__)

# How often a ListAndWatch stream wakes to notice a gone kubelet or a stopping server.
STREAM_TICK = 0.5


def options() -> api_pb2.DevicePluginOptions:
    return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


class DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):
    def __init__(self, plugin: Plugin, stop: threading.Event) -> None:
        self.plugin = plugin
        self.stop = stop

    def GetDevicePluginOptions(self, request: api_pb2.Empty,
                               context: grpc.ServicerContext) -> api_pb2.DevicePluginOptions:
        return options()

    def ListAndWatch(self, request: api_pb2.Empty,
                     context: grpc.ServicerContext) -> Iterator[api_pb2.ListAndWatchResponse]:
        state = self.plugin.state
        seen = -1
        log.info("listandwatch opened")
        while not self.stop.is_set() and context.is_active():
            version = state.version
            if version != seen:
                seen = version
                yield api_pb2.ListAndWatchResponse(devices=self.plugin.devices())
            state.wait_change(seen, STREAM_TICK)
        log.info("listandwatch closed")

    def GetPreferredAllocation(self, request: api_pb2.PreferredAllocationRequest,
                               context: grpc.ServicerContext) -> api_pb2.PreferredAllocationResponse:
        responses = []
        for c in request.container_requests:
            if c.allocation_size < 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"allocation_size {c.allocation_size} is negative")
            ids = self.plugin.preferred(list(c.available_deviceIDs), list(c.must_include_deviceIDs),
                                        c.allocation_size)
            responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    def Allocate(self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext) -> api_pb2.AllocateResponse:
        responses = []
        for c in request.container_requests:
            try:
                responses.append(self.plugin.allocate(list(c.devices_ids)))
            except AllocateRefused as e:
                code = grpc.StatusCode.INVALID_ARGUMENT if e.refusal.code == INVALID else \
                    grpc.StatusCode.FAILED_PRECONDITION
                context.abort(code, f"fracgpu: {e.refusal.reason}")
        return api_pb2.AllocateResponse(container_responses=responses)

    def PreStartContainer(self, request: api_pb2.PreStartContainerRequest,
                          context: grpc.ServicerContext) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()

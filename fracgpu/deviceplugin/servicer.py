"""The DevicePlugin gRPC service: thin, decodes the kubelet's calls and hands them to ``Plugin``.

Each ListAndWatch stream holds a gRPC thread for its whole life. ``StreamSlots`` keeps at most
``max_streams`` open: a new stream ends the oldest (ABORTED). The kubelet opens one stream per
registration, so the newest is the live one; older ones are left over (a kubelet that went away
without closing) or stuck, and must not use up the threads the unary calls need.
"""

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


class StreamSlots:
    """The open ListAndWatch streams, oldest first; opening one past `cap` ends the oldest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._open: list[threading.Event] = []  # set = superseded: the stream must end

    def open(self) -> tuple[threading.Event, int]:
        """A new stream's flag and how many older streams it superseded."""
        mine = threading.Event()
        with self._lock:
            self._open.append(mine)
            over = self._open[: max(0, len(self._open) - self.cap)]
            del self._open[: len(over)]
        for old in over:
            old.set()
        return mine, len(over)

    def close(self, mine: threading.Event) -> None:
        with self._lock:
            if mine in self._open:
                self._open.remove(mine)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


def options() -> api_pb2.DevicePluginOptions:
    return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


class DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):
    def __init__(self, plugin: Plugin, stop: threading.Event, max_streams: int = 4) -> None:
        self.plugin = plugin
        self.stop = stop
        self.streams = StreamSlots(max_streams)

    def GetDevicePluginOptions(self, request: api_pb2.Empty,
                               context: grpc.ServicerContext) -> api_pb2.DevicePluginOptions:
        return options()

    def ListAndWatch(self, request: api_pb2.Empty,
                     context: grpc.ServicerContext) -> Iterator[api_pb2.ListAndWatchResponse]:
        state = self.plugin.state
        seen = -1
        mine, superseded = self.streams.open()
        if superseded:
            state.poke()  # wake the superseded streams so that they end (and free their threads) now
        log.info("listandwatch opened superseded=%d", superseded)
        try:
            while not self.stop.is_set() and not mine.is_set() and context.is_active():
                version = state.version
                if version != seen:
                    seen = version
                    yield api_pb2.ListAndWatchResponse(devices=self.plugin.devices())
                state.wait_change(seen, STREAM_TICK)
        finally:
            self.streams.close(mine)
        if mine.is_set():
            log.info("listandwatch closed: superseded by a newer stream")
            context.set_code(grpc.StatusCode.ABORTED)
            context.set_details(f"superseded by a newer ListAndWatch stream (at most {self.streams.cap} open)")
            return
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
        if not request.container_requests:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fracgpu: AllocateRequest has no container requests")
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

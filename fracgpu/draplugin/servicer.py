"""The gRPC services: plugin registration (kubelet -> plugins_registry socket) and DRAPlugin v1 / v1beta1.

Registration follows the kubelet's pluginwatcher: GetInfo answers type ``DRAPlugin``, the driver name, the
absolute path of the DRA socket and the DRA services served there, most preferred first; the kubelet answers
with NotifyRegistrationStatus, and keeps calling GetInfo to see the plugin is alive.

DRAPlugin: every claim of a request gets an entry in the answer (the kubelet calls again for missing ones);
a claim that cannot be prepared gets an error in its entry, which fails only that claim's pods. A request
that is malformed as a whole (a claim without uid, namespace or name, or with a uid that is not one) is
refused with INVALID_ARGUMENT. v1 and v1beta1 carry the same messages under two proto packages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import grpc

from fracgpu.api.v1beta1.dra.kubeletv1 import api_pb2 as v1_pb2
from fracgpu.api.v1beta1.dra.kubeletv1 import api_pb2_grpc as v1_grpc
from fracgpu.api.v1beta1.dra.kubeletv1beta1 import api_pb2 as v1beta1_pb2
from fracgpu.api.v1beta1.dra.kubeletv1beta1 import api_pb2_grpc as v1beta1_grpc
from fracgpu.api.v1beta1.names import PLUGIN_TYPE_DRA
from fracgpu.api.v1beta1.pluginregistration import api_pb2 as reg_pb2
from fracgpu.api.v1beta1.pluginregistration import api_pb2_grpc as reg_grpc
from fracgpu.core.draprepare import valid_uid
from fracgpu.core.draslicerules import dns_label, dns_subdomain
from fracgpu.draplugin.driver import ClaimRef, Driver
from fracgpu.draplugin.metrics import OUTCOME_ERROR, OUTCOME_OK, DriverMetrics

log = logging.getLogger(__name__)
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class RegistrationStatus:
    registered: bool
    error: str


class RegistrationServicer(reg_grpc.RegistrationServicer):
    def __init__(self, driver_name: str, endpoint: str, services: tuple[str, ...],
                 on_status: Callable[[RegistrationStatus], None] | None = None) -> None:
        self.driver_name = driver_name
        self.endpoint = endpoint
        self.services = services
        self.on_status = on_status
        self._lock = threading.Lock()
        self.status: RegistrationStatus | None = None
        self.info_calls = 0

    def GetInfo(self, request: reg_pb2.InfoRequest, context: grpc.ServicerContext) -> reg_pb2.PluginInfo:
        with self._lock:
            self.info_calls += 1
        return reg_pb2.PluginInfo(type=PLUGIN_TYPE_DRA, name=self.driver_name, endpoint=self.endpoint,
                                  supported_versions=list(self.services))

    def NotifyRegistrationStatus(self, request: reg_pb2.RegistrationStatus,
                                 context: grpc.ServicerContext) -> reg_pb2.RegistrationStatusResponse:
        status = RegistrationStatus(request.plugin_registered, request.error)
        with self._lock:
            self.status = status
        if status.registered:
            log.info("registered with the kubelet driver=%s endpoint=%s", self.driver_name, self.endpoint)
        else:
            log.error("the kubelet refused the registration driver=%s error=%s", self.driver_name, status.error)
        if self.on_status is not None:
            self.on_status(status)
        return reg_pb2.RegistrationStatusResponse()


def _refs(claims: Any) -> list[ClaimRef] | str:
    """The claims of a request, or why the request is malformed as a whole."""
    refs = []
    for i, c in enumerate(claims):
        if not c.uid or not c.namespace or not c.name:
            return f"claims[{i}]: namespace, uid and name are required"
        if not valid_uid(c.uid):
            return f"claims[{i}].uid {c.uid[:80]!r}: not a Kubernetes uid"
        if not dns_label(c.namespace) or not dns_subdomain(c.name):
            return f"claims[{i}]: {c.namespace[:80]!r}/{c.name[:260]!r} is not a namespace and object name"
        refs.append(ClaimRef(c.namespace, c.name, c.uid))
    return refs


class _DraService:
    """NodePrepareResources / NodeUnprepareResources over one generated proto module."""

    def __init__(self, driver: Driver, pb2: ModuleType, metrics: DriverMetrics) -> None:
        self.driver = driver
        self.pb2 = pb2
        self.metrics = metrics

    def _answer(self, call: str, request: Any, context: grpc.ServicerContext,
                act: Callable[[list[ClaimRef]], _R]) -> tuple[list[ClaimRef], _R]:
        """The request's claims and what the driver made of them: a malformed request is INVALID_ARGUMENT,
        a driver crash INTERNAL (the rest in its log); both counted as errors of every claim named."""
        refs = _refs(request.claims)
        if isinstance(refs, str):
            self.metrics.count(call, [OUTCOME_ERROR] * len(request.claims))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, refs)
        try:
            return refs, act(refs)
        except Exception:
            log.exception("%s of claims failed", call)
            self.metrics.count(call, [OUTCOME_ERROR] * len(set(ref.uid for ref in refs)))
            context.abort(grpc.StatusCode.INTERNAL, f"{call.rstrip('e')}ing the claims failed; see the driver's log")

    def NodePrepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.metrics.prepare_seconds.time():
            refs, results = self._answer("prepare", request, context, self.driver.prepare)
        self.metrics.count("prepare", [results[uid].outcome for uid in dict.fromkeys(ref.uid for ref in refs)])
        answer = self.pb2.NodePrepareResourcesResponse()
        for uid in dict.fromkeys(ref.uid for ref in refs):  # a claim named twice is answered once
            r = results[uid]
            entry = answer.claims[uid]
            entry.error = r.error
            for dev in r.devices:
                entry.devices.append(self.pb2.Device(request_names=[dev.request], pool_name=dev.pool,
                                                     device_name=dev.device, cdi_device_ids=list(dev.cdi_ids)))
        return answer

    def NodeUnprepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        refs, results = self._answer("unprepare", request, context, self.driver.unprepare)
        self.metrics.count("unprepare", [OUTCOME_ERROR if results[uid] else OUTCOME_OK
                                         for uid in dict.fromkeys(ref.uid for ref in refs)])
        answer = self.pb2.NodeUnprepareResourcesResponse()
        for ref in refs:
            answer.claims[ref.uid].error = results[ref.uid]
        return answer


class DraV1Servicer(_DraService, v1_grpc.DRAPluginServicer):
    def __init__(self, driver: Driver, metrics: DriverMetrics) -> None:
        _DraService.__init__(self, driver, v1_pb2, metrics)


class DraV1beta1Servicer(_DraService, v1beta1_grpc.DRAPluginServicer):
    def __init__(self, driver: Driver, metrics: DriverMetrics) -> None:
        _DraService.__init__(self, driver, v1beta1_pb2, metrics)


def add_dra_services(server: grpc.Server, driver: Driver, metrics: DriverMetrics) -> None:
    v1_grpc.add_DRAPluginServicer_to_server(DraV1Servicer(driver, metrics), server)
    v1beta1_grpc.add_DRAPluginServicer_to_server(DraV1beta1Servicer(driver, metrics), server)

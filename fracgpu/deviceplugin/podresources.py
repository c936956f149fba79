"""The kubelet's PodResources API (v1 List): which container holds which of our device IDs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

import grpc

from fracgpu.api.v1beta1.podresources import api_pb2, api_pb2_grpc

Holdings = Mapping[str, Mapping[str, tuple[str, ...]]]  # pod key -> container -> device IDs


class HoldingsSource(Protocol):
    def holdings(self) -> Holdings:
        """Raises grpc.RpcError / OSError when the kubelet cannot be asked."""
        ...


def holdings_from(response: api_pb2.ListPodResourcesResponse, resource: str) -> dict[str, dict[str, tuple[str, ...]]]:
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for pod in response.pod_resources:
        for c in pod.containers:
            ids = tuple(i for d in c.devices if d.resource_name == resource for i in d.device_ids)
            if ids:
                out.setdefault(f"{pod.namespace}/{pod.name}", {})[c.name] = ids
    return out


class PodResourcesUnavailable(OSError):
    """The kubelet's PodResources socket did not answer; one line that says which socket and why."""


class PodResourcesClient:
    def __init__(self, socket_path: str, resource: str, timeout: float = 5.0) -> None:
        self._path = socket_path
        self._target = f"unix://{socket_path}"
        self._resource = resource
        self._timeout = timeout

    def holdings(self) -> Holdings:
        try:
            with grpc.insecure_channel(self._target) as channel:
                stub = api_pb2_grpc.PodResourcesListerStub(channel)
                response = stub.List(api_pb2.ListPodResourcesRequest(), timeout=self._timeout)
        except grpc.RpcError as e:  # its str() is a multi-line dump with grpc's debug string
            raise PodResourcesUnavailable(self._why(e)) from None
        return holdings_from(response, self._resource)

    def _why(self, e: grpc.RpcError) -> str:
        code = e.code() if isinstance(e, grpc.Call) else None
        name = code.name if code is not None else "ERROR"
        if not os.path.exists(self._path):
            return (f"kubelet PodResources socket {self._path}: {name}, no such file (not on a kubelet node? "
                    "--pod-resources-socket none runs without the cross-check)")
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        return f"kubelet PodResources socket {self._path}: {name}: {' '.join(str(details).split())}"


class NoHoldings:
    """No kubelet PodResources socket (a test or a standalone run): nobody holds anything."""

    def holdings(self) -> Holdings:
        return {}

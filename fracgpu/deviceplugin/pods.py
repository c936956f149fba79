"""The slim view of a pod that the plugin needs, decoded once from the pod's JSON object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE
from fracgpu.core.pod import decode_pod
from fracgpu.core.request import ContainerDemand, RequestError, effective, parse_pod_request


@dataclass(frozen=True, slots=True)
class NodePod:
    namespace: str
    name: str
    uid: str = ""
    node: str = ""
    terminated: bool = False  # finished (core.pod.pod_finished): its devices are free again
    containers: tuple[ContainerDemand, ...] = ()  # every container, spec order (init, then app)
    request_error: str = ""  # the pod's GPU request could not be read
    assigned: str | None = None  # raw fracgpu.io/assigned
    phase: str = ""  # raw fracgpu.io/phase
    created: str = ""  # metadata.creationTimestamp, for a stable order

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def gpu_containers(self) -> tuple[ContainerDemand, ...]:
        return tuple(c for c in self.containers if c.cores > 0)

    @property
    def cores(self) -> int:
        """The pod's effective vgpu-core request (Kubernetes' rule over init, sidecar and app containers)."""
        return effective([(c.kind, c.cores) for c in self.containers if c.kind != "app"],
                         [c.cores for c in self.containers if c.kind == "app"])

    @property
    def memory(self) -> int | None:
        """The pod's effective vgpu-memory per GPU, None when no container sets it."""
        if not any(c.memory is not None for c in self.gpu_containers):
            return None
        return effective([(c.kind, c.memory or 0) for c in self.containers if c.kind != "app"],
                         [c.memory or 0 for c in self.containers if c.kind == "app"])


def node_pod_from_dict(obj: Mapping[str, Any]) -> NodePod:
    """Decode a pod object as the API server sends it. Never raises for a bad GPU request."""
    pod = decode_pod(obj)
    containers: tuple[ContainerDemand, ...] = ()
    error = ""
    try:
        request = parse_pod_request(pod)
        if request is not None:
            containers = request.containers
    except RequestError as e:
        error = str(e)
    return NodePod(
        namespace=pod.namespace,
        name=pod.name,
        uid=pod.uid,
        node=pod.node,
        terminated=pod.finished,
        containers=containers,
        request_error=error,
        assigned=pod.annotations.get(ANN_ASSIGNED),
        phase=pod.annotations.get(ANN_PHASE, ""),
        created=pod.created,
    )

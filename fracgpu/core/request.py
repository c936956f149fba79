"""A pod's GPU request, parsed and validated once from its decoded containers (core.pod).

Kubernetes' own rule (the upstream pod-requests helper) gives the pod's effective request from
init containers, restartable init containers (sidecars) and app containers; the same rule gives
vgpu-core, vgpu-memory, cpu and memory. Every bad value raises RequestError with a message a user
can act on.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fracgpu.api.v1beta1.names import (
    ANN_GPU_MODEL,
    ANN_TOPOLOGY,
    ANN_ZONE_POLICY,
    CORES_PER_GPU,
    LABEL_GROUP,
    MAX_GPU_MEMORY,
    RESOURCE_CORE,
    RESOURCE_MEMORY,
    TOPOLOGY_NONE,
    TOPOLOGY_PREFERRED,
    TOPOLOGY_REQUIRED,
    ZONE_NONE,
    ZONE_SAME,
    ZONE_SPREAD,
)
from fracgpu.core.pod import ContainerSpec, PodObject
from fracgpu.core.quantity import (
    MAX_QUANTITY,
    MAX_WHOLE_MILLI,
    QuantityError,
    format_bytes,
    format_bytes_human,
    parse_bytes,
    parse_count,
    parse_milli,
)

# Largest number of whole GPUs one pod may ask for; bigger is surely a typo and would only waste time.
MAX_GPUS = 64
_MODEL_ITEM = re.compile(r"^!?[A-Za-z0-9._*?\[\]-]+$")


class RequestError(ValueError):
    """The pod's GPU request is not valid; the message names the field and the value."""


@dataclass(frozen=True, slots=True)
class ModelRule:
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    text: str = ""

    def admits(self, model: str) -> bool:
        if any(fnmatch.fnmatchcase(model, p) for p in self.deny):
            return False
        return not self.allow or any(fnmatch.fnmatchcase(model, p) for p in self.allow)

    @staticmethod
    def parse(text: str) -> ModelRule:
        allow: list[str] = []
        deny: list[str] = []
        for raw in text.split(","):
            item = raw.strip()
            if not item or not _MODEL_ITEM.match(item):
                raise RequestError(
                    f"annotation {ANN_GPU_MODEL}: {text!r} is not a comma list of models or globs "
                    "(e.g. 'A100*,H100*' or '!T4')"
                )
            (deny if item.startswith("!") else allow).append(item.lstrip("!"))
        return ModelRule(tuple(allow), tuple(deny), text)


@dataclass(frozen=True, slots=True)
class ContainerDemand:
    name: str
    kind: str  # init | sidecar | app
    cores: int  # vgpu-core units this container asks for (0 = none)
    memory: int | None  # vgpu-memory bytes per GPU it asks for, None when not set


@dataclass(frozen=True, slots=True)
class GpuRequest:
    """What one pod needs from fracgpu. `cores` <= 100 is a share of one GPU; more is whole GPUs."""

    cores: int
    memory: int | None  # VRAM per GPU, None = the default share of the chosen GPU
    containers: tuple[ContainerDemand, ...] = ()
    model_rule: ModelRule = field(default_factory=ModelRule)
    topology: str = TOPOLOGY_PREFERRED
    group: str = ""
    zone_policy: str = ZONE_NONE
    cpu_milli: int = 0
    memory_bytes: int = 0  # host RAM
    # Units of one whole GPU; must match the ClusterState's (1000 in the trace simulator's milli-GPU).
    units_per_gpu: int = CORES_PER_GPU

    @property
    def gpu_count(self) -> int:
        return 1 if self.cores <= self.units_per_gpu else self.cores // self.units_per_gpu

    @property
    def cores_per_gpu(self) -> int:
        return min(self.cores, self.units_per_gpu)

    @property
    def is_share(self) -> bool:
        return self.cores < self.units_per_gpu

    def memory_on(self, gpu_memory: int) -> int:
        """VRAM this pod holds on a GPU of `gpu_memory` bytes."""
        if self.memory is not None:
            return self.memory
        return gpu_memory * self.cores_per_gpu // self.units_per_gpu


def validate_core_value(cores: int, where: str) -> None:
    if cores == 0:
        return
    if cores > CORES_PER_GPU and cores % CORES_PER_GPU != 0:
        raise RequestError(
            f"{where}: {RESOURCE_CORE} {cores} is neither a share of one GPU (1-100) "
            f"nor whole GPUs (a multiple of 100)"
        )
    if cores > MAX_GPUS * CORES_PER_GPU:
        raise RequestError(f"{where}: {RESOURCE_CORE} {cores} asks for more than {MAX_GPUS} GPUs")


def _amount(resources: Mapping[str, Any], name: str, where: str) -> Any:
    """Requests, falling back to limits (Kubernetes defaults requests of extended resources to limits)."""
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    if not isinstance(requests, Mapping) or not isinstance(limits, Mapping):
        raise RequestError(f"{where}: resources.requests and resources.limits must be maps")
    if name in requests:
        if name in limits and str(limits[name]) != str(requests[name]) and name.startswith("fracgpu.io/"):
            raise RequestError(
                f"{where}: {name} request {requests[name]!r} differs from its limit {limits[name]!r} "
                "(extended resources cannot be overcommitted)"
            )
        return requests[name]
    return limits.get(name)


def _container_demand(c: ContainerSpec) -> tuple[ContainerDemand, int, int]:
    name, kind = c.name, c.kind
    where = f"container {name}"
    resources = c.resources or {}
    if not isinstance(resources, Mapping):
        raise RequestError(f"{where}: resources must be a map")
    try:
        raw_cores = _amount(resources, RESOURCE_CORE, where)
        cores = 0 if raw_cores is None else parse_count(raw_cores, what=f"{where}: {RESOURCE_CORE}")
        raw_mem = _amount(resources, RESOURCE_MEMORY, where)
        memory = None if raw_mem is None else parse_bytes(raw_mem, what=f"{where}: {RESOURCE_MEMORY}",
                                                          maximum=MAX_GPU_MEMORY)
        raw_cpu = _amount(resources, "cpu", where)
        cpu = 0 if raw_cpu is None else parse_milli(raw_cpu, what=f"{where}: cpu")
        raw_ram = _amount(resources, "memory", where)
        ram = 0 if raw_ram is None else parse_bytes(raw_ram, what=f"{where}: memory")
    except QuantityError as e:
        raise RequestError(str(e)) from None
    validate_core_value(cores, where)
    if memory is not None and cores == 0:
        raise RequestError(f"{where}: {RESOURCE_MEMORY} is set without {RESOURCE_CORE}")
    if memory == 0:
        raise RequestError(f"{where}: {RESOURCE_MEMORY} must be more than 0")
    return ContainerDemand(name=name, kind=kind, cores=cores, memory=memory), cpu, ram


def effective(init: Sequence[tuple[str, int]], app: Sequence[int]) -> int:
    """Kubernetes' effective pod request for one resource.

    `init` is (kind, amount) in spec order, kind "init" or "sidecar". Sidecars run beside
    everything that starts after them, so they add to each later init container and to the app
    containers; the pod needs the larger of the init peak and the steady state.
    """
    sidecars = 0
    init_peak = 0
    for kind, amount in init:
        if kind == "sidecar":
            sidecars += amount
            init_peak = max(init_peak, sidecars)
        else:
            init_peak = max(init_peak, amount + sidecars)
    return max(sum(app) + sidecars, init_peak)


def effective_host(containers: Sequence[tuple[str, int, int]]) -> tuple[int, int]:
    """The effective (cpu milli, memory bytes) of containers given as (kind, cpu, memory) in spec order."""
    init = [c for c in containers if c[0] != "app"]
    app = [c for c in containers if c[0] == "app"]
    return (effective([(k, cpu) for k, cpu, _ in init], [cpu for _, cpu, _ in app]),
            effective([(k, mem) for k, _, mem in init], [mem for _, _, mem in app]))


def parse_pod_request(pod: PodObject) -> GpuRequest | None:
    """The GPU request of a decoded pod; None when it asks for no vgpu-core."""
    demands: list[ContainerDemand] = []
    host: list[tuple[str, int, int]] = []
    containers = pod.containers[:pod.shape_error_at] if pod.shape_error else pod.containers
    for c in containers:
        demand, cpu, ram = _container_demand(c)
        demands.append(demand)
        host.append((c.kind, cpu, ram))
    if pod.shape_error:
        raise RequestError(pod.shape_error)
    gpu_demands = [d for d in demands if d.cores > 0]
    if not gpu_demands:
        return None
    with_memory = [d for d in gpu_demands if d.memory is not None]
    if with_memory and len(with_memory) != len(gpu_demands):
        raise RequestError(
            f"pod: set {RESOURCE_MEMORY} on every container that asks for {RESOURCE_CORE}, or on none"
        )
    cores = effective([(d.kind, d.cores) for d in demands if d.kind != "app"],
                      [d.cores for d in demands if d.kind == "app"])
    validate_core_value(cores, "pod")
    memory: int | None = None
    if with_memory:
        memory = effective([(d.kind, d.memory or 0) for d in demands if d.kind != "app"],
                           [d.memory or 0 for d in demands if d.kind == "app"])
        if memory > MAX_GPU_MEMORY:
            raise RequestError(f"pod: {RESOURCE_MEMORY} adds up to {format_bytes_human(memory)}, more than a GPU "
                               f"has (at most {format_bytes(MAX_GPU_MEMORY)})")
    cpu_milli, memory_bytes = effective_host(host)
    # each container's amount is bounded, their sum must be too: the ledger adds it up in int64
    if cpu_milli > MAX_WHOLE_MILLI * 1000:
        whole = cpu_milli // 1000 if cpu_milli % 1000 == 0 else f"{cpu_milli}m"
        raise RequestError(f"pod: cpu adds up to {whole}, more than {MAX_WHOLE_MILLI}")
    if memory_bytes > MAX_QUANTITY:
        raise RequestError(f"pod: memory adds up to {format_bytes_human(memory_bytes)}, more than "
                           f"{format_bytes(MAX_QUANTITY)}")
    if pod.meta_maps_error:
        raise RequestError(pod.meta_maps_error)
    annotations, labels = pod.annotations, pod.labels
    rule = ModelRule()
    if ANN_GPU_MODEL in annotations:
        rule = ModelRule.parse(str(annotations[ANN_GPU_MODEL]))
    topology = str(annotations.get(ANN_TOPOLOGY, TOPOLOGY_PREFERRED))
    if topology not in (TOPOLOGY_REQUIRED, TOPOLOGY_PREFERRED, TOPOLOGY_NONE):
        raise RequestError(f"annotation {ANN_TOPOLOGY}: {topology!r} is not required, preferred or none")
    group = str(labels.get(LABEL_GROUP, ""))
    zone_policy = str(annotations.get(ANN_ZONE_POLICY, ZONE_NONE))
    if zone_policy not in (ZONE_SAME, ZONE_SPREAD, ZONE_NONE):
        raise RequestError(f"annotation {ANN_ZONE_POLICY}: {zone_policy!r} is not same, spread or none")
    return GpuRequest(
        cores=cores,
        memory=memory,
        containers=tuple(demands),
        model_rule=rule,
        topology=topology,
        group=group,
        zone_policy=zone_policy,
        cpu_milli=cpu_milli,
        memory_bytes=memory_bytes,
    )

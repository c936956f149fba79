"""The ledger's records: what it answers (Grant, Refusal, Repair), one pod's entry, and facts about entries.

Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import PHASE_ALLOCATED, PHASE_FAILED_PREFIX
from fracgpu.core.inventory import split_device_id
from fracgpu.core.request import ContainerDemand
from fracgpu.deviceplugin.pods import NodePod

# Refusal codes: how the servicer answers (gRPC status) and what the metric label says.
INVALID = "invalid"  # the request itself is malformed (unknown or repeated IDs): INVALID_ARGUMENT
NO_RESERVATION = "no-reservation"
BAD_RESERVATION = "bad-reservation"
AMBIGUOUS = "ambiguous"
WRONG_SIZE = "wrong-size"
UNSAFE = "unsafe"
QUOTA = "quota"
OVERBOOKED = "overbooked"  # the GPU's admitted pods leave no room for the pod's reservation
UNCONFIRMED = "unconfirmed"  # a running container allocated again: ask the kubelet's PodResources first

KubeletHoldings = Mapping[str, Mapping[str, tuple[str, ...]]]  # pod key -> container -> IDs (PodResources)


Admit = Callable[[str, Assignment], "str | None"]


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    reason: str
    pods: tuple[str, ...] = ()  # keys of the pods the refusal concerns (an Event goes to each)


@dataclass(frozen=True, slots=True)
class GpuLimit:
    gpu: GpuInfo
    cores: int  # vgpu-core of this GPU the container gets (100 = whole)
    memory: int  # VRAM bytes on this GPU


@dataclass(frozen=True, slots=True)
class Grant:
    """Allocate's answer for one container."""

    pod: str
    uid: str
    container: str
    device_ids: tuple[str, ...]
    limits: tuple[GpuLimit, ...]  # one per visible GPU, in index order
    moved: tuple[tuple[str, Assignment], ...] = ()  # (pod key, new reservation) to record
    pod_done: bool = False  # every GPU container of the pod is served now: mark it allocated
    again: bool = False  # a container of a running pod, allocated once more (the kubelet lost its record)


@dataclass(frozen=True, slots=True)
class Repair:
    pod: str
    kind: str  # "moved" | "swapped" | "unreserved-holder" | "conflict" | "phase"
    detail: str
    assignment: Assignment | None = None  # the corrected reservation to record, if any
    phase: str = ""  # the phase to record, if any


Moves = tuple[tuple[str, Assignment], ...]  # (pod key, new reservation) for each reservation that moves


@dataclass(slots=True)
class PodEntry:
    pod: NodePod
    assignment: Assignment | None
    invalid: str = ""  # why the reservation cannot be used; "" when it can
    checked: str = ""  # the part of `invalid` that depends on this pod alone (not on overlaps)
    served: dict[str, tuple[str, ...]] = field(default_factory=dict)  # container -> IDs the kubelet gave
    pending: str | None = None  # JSON of a reservation we moved and have not seen written back yet
    phase: str | None = None  # a phase we decided and have not seen written back yet
    key: str = field(default="", init=False)
    _ids_of: Assignment | None = field(default=None, init=False, repr=False, compare=False)
    _ids: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.key = self.pod.key

    @property
    def current_phase(self) -> str:
        return self.phase if self.phase is not None else self.pod.phase

    @property
    def usable(self) -> bool:
        return self.assignment is not None and not self.invalid and not self.pod.terminated

    def reserved(self) -> frozenset[str]:
        a = self.assignment
        if a is None or self.invalid:
            return frozenset()
        if self._ids_of is not a:  # cached per assignment object (a move replaces the object)
            self._ids_of, self._ids = a, a.device_ids
        return self._ids

    def held(self) -> set[str]:
        return {i for ids in self.served.values() for i in ids}

    def unserved(self) -> list[ContainerDemand]:
        return [c for c in self.pod.gpu_containers if c.name not in self.served]


def admitted(e: PodEntry) -> bool:
    """The kubelet admitted the pod: a container holds devices, or it is marked allocated."""
    return bool(e.served) or e.current_phase == PHASE_ALLOCATED


def admitting(e: PodEntry) -> bool:
    """The pod may still get Allocate calls: not marked allocated or failed by this plugin."""
    phase = e.current_phase
    return phase != PHASE_ALLOCATED and not phase.startswith(PHASE_FAILED_PREFIX)


def gpu_of(i: str) -> str:
    s = split_device_id(i)
    assert s is not None
    return s[0]


def id_order(i: str) -> tuple[str, int]:
    s = split_device_id(i)
    return (s[0], s[1]) if s is not None else (i, 0)


def shape(e: PodEntry) -> tuple[tuple[str, int], ...]:
    """What makes two waiting pods interchangeable (as fracgpu.core.confusable): the same GPUs, same VRAM each."""
    a = e.assignment
    return tuple(sorted((s.uuid, s.memory) for s in a.gpus)) if a else ()

"""A pod's charge against its tenant's quota: the amounts and the refusal (held until core.pod.pod_finished).

Pure. Units: `cores` are vgpu-core units summed over the pod's GPUs (a 3-GPU pod: 300); `memory` is
the VRAM charged, i.e. the VRAM per GPU x the number of GPUs (`Usage.for_pod` computes it).
"""

from __future__ import annotations

from dataclasses import dataclass

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.names import CORES_PER_GPU
from fracgpu.core.quantity import format_bytes_human
from fracgpu.core.tenant import Limits


@dataclass(frozen=True, slots=True, order=True)
class PodKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Usage:
    """VRAM bytes and vgpu-core units, summed over GPUs."""

    memory: int = 0
    cores: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.memory + other.memory, self.cores + other.cores)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.memory - other.memory, self.cores - other.cores)

    @staticmethod
    def for_pod(cores: int, memory_per_gpu: int) -> Usage:
        """A pod's charge: 250 cores is not valid, 300 is 3 GPUs -> 3 x memory_per_gpu."""
        gpus = 1 if cores <= CORES_PER_GPU else cores // CORES_PER_GPU
        return Usage(memory=memory_per_gpu * gpus, cores=cores)


def charge_of(assignment: Assignment) -> tuple[int, int]:
    """(cores, memory) a bound pod is charged, from its fracgpu.io/assigned reservation."""
    return sum(g.cores for g in assignment.gpus), sum(g.memory for g in assignment.gpus)


@dataclass(frozen=True, slots=True)
class Outcome:
    """ok, or why not. Quota refusals cannot be cured by preemption: report them as unresolvable."""

    ok: bool
    reason: str = ""


OK = Outcome(ok=True)


def _over(what: str, used: str, hard: str, ask: str) -> str:
    return f"{what} {used} of {hard} used, pod asks {ask}"


def refusal(tenant: str, used: Usage, limits: Limits, ask: Usage) -> str | None:
    """Why `ask` does not fit next to `used` under `limits`, or None when it fits.

    The text holds the tenant's and the pod's numbers only, so it is the same on every node:
    'tenant tq/team-a: vgpu-memory 60Gi of 64Gi used, pod asks 8Gi' (vgpu-core part after '; ').
    """
    parts: list[str] = []
    if limits.memory is not None and used.memory + ask.memory > limits.memory:
        parts.append(
            _over(
                "vgpu-memory",
                format_bytes_human(used.memory),
                format_bytes_human(limits.memory),
                format_bytes_human(ask.memory),
            )
        )
    if limits.cores is not None and used.cores + ask.cores > limits.cores:
        parts.append(_over("vgpu-core", str(used.cores), str(limits.cores), str(ask.cores)))
    return f"tenant {tenant}: {'; '.join(parts)}" if parts else None

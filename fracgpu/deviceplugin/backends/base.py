"""The one interface every GPU backend implements.

A backend answers three questions and nothing else:

- ``inventory()``: the GPUs it sees now, with their health (``GpuInfo.healthy`` / ``reason``);
- ``wait_events(timeout)``: what happened since the last call (XID, health changes, a GPU gone),
  blocking at most ``timeout`` seconds; the plugin turns these into a new ListAndWatch list;
- ``sample(uuid)``: one reading of a GPU's health counters (``fracgpu.core.health.GpuSample``),
  for the polling health policy (``fracgpu.core.health.HealthTracker``) to judge. Fields a
  backend cannot read are None; a read error goes in ``error``.

Health *policy* (which XIDs are fatal, thresholds, recovery runs) is not a backend's business:
the backend reports facts; the simulated backend's injected health and the NVML backend's
"GPU vanished / NVML error" are the only health it decides itself. A policy marks GPUs unhealthy
through ``fracgpu.deviceplugin.health.HealthMonitor``, which merges both.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core.health import GpuSample


class EventKind(StrEnum):
    XID = "xid"  # an XID error reported by the driver; `xid` holds its number
    UNHEALTHY = "unhealthy"  # the backend itself judged the GPU unhealthy; `reason` says why
    HEALTHY = "healthy"  # the GPU is healthy again
    GONE = "gone"  # the GPU disappeared (fell off the bus, driver lost it)


@dataclass(frozen=True, slots=True)
class GpuEvent:
    kind: EventKind
    uuid: str  # empty for a node-wide event
    reason: str = ""
    xid: int = 0


class BackendError(RuntimeError):
    """The backend cannot talk to the GPUs at all (NVML missing, driver gone); the message says why."""


class GpuBackend(Protocol):
    """GPUs of this node. Implementations must be safe to call from several threads."""

    name: str

    def inventory(self) -> tuple[GpuInfo, ...]:
        """The GPUs now, in index order, with health. Raises BackendError when the node is unreachable."""
        ...

    def wait_events(self, timeout: float) -> list[GpuEvent]:
        """Events since the last call; waits up to `timeout` seconds for the first one."""
        ...

    def sample(self, uuid: str) -> GpuSample:
        """One reading of the GPU's counters. Raises BackendError / KeyError for an unknown GPU."""
        ...

    def close(self) -> None:
        """Release the driver / stop background threads. Safe to call twice."""
        ...

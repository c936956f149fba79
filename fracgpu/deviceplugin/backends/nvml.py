"""The NVML backend, through ``pynvml`` (nvidia-ml-py).

The constructor takes the nvml module (``Nvml``: the pynvml calls it makes) so that tests inject a
fake of it. A GPU whose handle or UUID cannot be read is reported unhealthy with the NVML error, not
dropped (NVIDIA's plugin does the same); NVML failing as a whole raises BackendError. Only NVML's
own errors (``NVMLError``) count as GPU or driver faults: anything else is a bug here, and is raised
rather than blamed on a GPU (which would evict its pods).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from fracgpu.api.v1beta1.inventory import GpuInfo, GpuLink, LinkClass
from fracgpu.core.health import GpuSample
from fracgpu.core.inventory import normalise_model
from fracgpu.deviceplugin.backends.base import BackendError, EventKind, GpuEvent

log = logging.getLogger(__name__)

# nvmlGpuTopologyLevel_t values (nvml.h) -> link class
_TOPOLOGY_LINK = {
    0: LinkClass.PCIE_SWITCH,  # INTERNAL (same board)
    10: LinkClass.PCIE_SWITCH,  # SINGLE switch
    20: LinkClass.PCIE_SWITCH,  # MULTIPLE switches, no host bridge
    30: LinkClass.NUMA,  # HOSTBRIDGE
    40: LinkClass.NUMA,  # NODE (same NUMA node, across host bridges)
    50: LinkClass.SYSTEM,  # SYSTEM (across sockets)
}
_MAX_NVLINKS = 36  # NVML_NVLINK_MAX_LINKS
_XID_CRITICAL = 0x0000000000000008  # nvmlEventTypeXidCriticalError
_ERROR_TIMEOUT = 10  # NVML_ERROR_TIMEOUT
_ERROR_GPU_IS_LOST = 15  # NVML_ERROR_GPU_IS_LOST
_ERROR_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sysfs_numa(pci_bus_id: str) -> int:
    """The NUMA node of a PCI device from sysfs; -1 when unknown."""
    # NVML's bus id is 0000xxxx:bb:dd.f with an 8-digit domain; sysfs uses a 4-digit domain
    bus = pci_bus_id.lower()
    if len(bus.split(":")[0]) == 8:
        bus = bus[4:]
    try:
        return max(-1, int(Path(f"/sys/bus/pci/devices/{bus}/numa_node").read_text().strip()))
    except (OSError, ValueError):
        return -1


class Nvml(Protocol):
    """The pynvml calls this backend makes. Handles, event sets and structs are NVML's opaque objects.
    (``nvmlDeviceGetNumaNodeId`` is used when present: older pynvml releases lack it.)"""

    @property
    def NVMLError(self) -> type[Exception]:
        """Every NVML failure; ``.value`` is the nvmlReturn_t code."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any, /) -> str | bytes: ...
    def nvmlDeviceGetName(self, handle: Any, /) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any, /) -> Any: ...
    def nvmlDeviceGetPciInfo(self, handle: Any, /) -> Any: ...
    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int, /) -> int: ...
    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: Any, link: int, /) -> Any: ...
    def nvmlDeviceGetTopologyCommonAncestor(self, a: Any, b: Any, /) -> int: ...
    def nvmlEventSetCreate(self) -> Any: ...
    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: Any, /) -> None: ...
    def nvmlEventSetWait(self, event_set: Any, timeout_ms: int, /) -> Any: ...
    def nvmlEventSetFree(self, event_set: Any, /) -> None: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any, /) -> Any: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int, /) -> int: ...
    def nvmlDeviceGetTotalEccErrors(self, handle: Any, error_type: int, counter_type: int, /) -> int: ...
    def nvmlDeviceGetRetiredPages(self, handle: Any, cause: int, /) -> Sequence[int]: ...
    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: Any, /) -> int: ...
    def nvmlDeviceGetRemappedRows(self, handle: Any, /) -> tuple[int, int, int, int]: ...


class NvmlBackend:
    name = "nvml"

    def __init__(self, nvml: Nvml, numa_of: Callable[[str], int] = sysfs_numa) -> None:
        self._nvml = nvml
        self._numa_of = numa_of
        self._lock = threading.Lock()
        self._closed = False
        self._event_set: Any = None
        self._lost: dict[str, str] = {}  # uuid -> reason, GPUs NVML lost since start
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:  # also a missing library (NVMLError_LibraryNotFound)
            raise BackendError(f"NVML unavailable: {e}") from None
        self._handles: dict[str, Any] = {}
        self._scan()

    def _error(self, e: Exception) -> str:
        return f"NVML error: {e}"

    def _scan(self) -> tuple[GpuInfo, ...]:
        nv = self._nvml
        try:
            count = int(nv.nvmlDeviceGetCount())
        except self._nvml.NVMLError as e:
            raise BackendError(f"NVML cannot count GPUs: {e}") from None
        gpus: list[GpuInfo] = []
        handles: dict[str, Any] = {}
        bus_to_uuid: dict[str, str] = {}
        for i in range(count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(nv.nvmlDeviceGetUUID(h))
            except self._nvml.NVMLError as e:
                # a GPU we cannot even name: keep a placeholder so that indexes stay stable
                gpus.append(GpuInfo(uuid=f"GPU-index-{i}", index=i, model="unknown", memory=1, numa=-1,
                                    healthy=False, reason=self._error(e)))
                continue
            handles[uuid] = h
            reason = ""
            try:
                model = normalise_model(_text(nv.nvmlDeviceGetName(h)))
                memory = int(nv.nvmlDeviceGetMemoryInfo(h).total)
                bus = _text(nv.nvmlDeviceGetPciInfo(h).busId)
            except self._nvml.NVMLError as e:
                model, memory, bus, reason = "unknown", 1, "", self._error(e)
            bus_to_uuid[bus.lower()] = uuid
            numa = self._numa(h, bus)
            if uuid in self._lost:
                reason = self._lost[uuid]
            gpus.append(GpuInfo(uuid=uuid, index=i, model=model, memory=memory, numa=numa,
                                pci_bus_id=bus, healthy=not reason, reason=reason))
        links = self._links(handles, bus_to_uuid)
        self._handles = handles
        return tuple(
            GpuInfo(uuid=g.uuid, index=g.index, model=g.model, memory=g.memory, numa=g.numa,
                    pci_bus_id=g.pci_bus_id, healthy=g.healthy, reason=g.reason,
                    links=tuple(links.get(g.uuid, ())))
            for g in gpus
        )

    def _numa(self, handle: Any, bus: str) -> int:
        getter = getattr(self._nvml, "nvmlDeviceGetNumaNodeId", None)
        if getter is not None:
            try:
                return int(getter(handle))
            except self._nvml.NVMLError:
                pass
        return self._numa_of(bus) if bus else -1

    def _links(self, handles: dict[str, Any], bus_to_uuid: dict[str, str]) -> dict[str, list[GpuLink]]:
        nv = self._nvml
        lanes: dict[tuple[str, str], int] = {}
        for uuid, h in handles.items():
            for link in range(_MAX_NVLINKS):
                try:
                    if int(nv.nvmlDeviceGetNvLinkState(h, link)) != 1:  # NVML_FEATURE_ENABLED
                        continue
                    peer_bus = _text(nv.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId).lower()
                except self._nvml.NVMLError:
                    break  # not supported / no more links
                peer = bus_to_uuid.get(peer_bus)
                if peer is not None and peer != uuid:
                    lanes[(uuid, peer)] = lanes.get((uuid, peer), 0) + 1
        out: dict[str, list[GpuLink]] = {u: [] for u in handles}
        uuids = list(handles)
        for a in uuids:
            for b in uuids:
                if a == b:
                    continue
                n = max(lanes.get((a, b), 0), lanes.get((b, a), 0))
                if n:
                    out[a].append(GpuLink(peer=b, link=LinkClass.NVLINK, nvlinks=n))
                    continue
                try:
                    level = int(nv.nvmlDeviceGetTopologyCommonAncestor(handles[a], handles[b]))
                    out[a].append(GpuLink(peer=b, link=_TOPOLOGY_LINK.get(level, LinkClass.SYSTEM)))
                except self._nvml.NVMLError:
                    continue  # unknown: consumers fall back to NUMA facts
        return out

    # --- GpuBackend ---

    def inventory(self) -> tuple[GpuInfo, ...]:
        with self._lock:
            return self._scan()

    def wait_events(self, timeout: float) -> list[GpuEvent]:
        nv = self._nvml
        with self._lock:
            if self._event_set is None:
                try:
                    self._event_set = nv.nvmlEventSetCreate()
                    for h in self._handles.values():
                        nv.nvmlDeviceRegisterEvents(h, _XID_CRITICAL, self._event_set)
                except self._nvml.NVMLError as e:
                    log.warning("nvml events unavailable error=%s", e)
            event_set = self._event_set
        if event_set is None:
            threading.Event().wait(timeout)
            return []
        try:
            data = nv.nvmlEventSetWait(event_set, int(timeout * 1000))
        except self._nvml.NVMLError as e:
            if getattr(e, "value", None) == _ERROR_TIMEOUT:
                return []
            if getattr(e, "value", None) == _ERROR_GPU_IS_LOST:
                return self._mark_all_lost(str(e))
            return [GpuEvent(EventKind.UNHEALTHY, "", f"NVML event wait failed: {e}")]
        try:
            uuid = _text(nv.nvmlDeviceGetUUID(data.device))
        except self._nvml.NVMLError:
            uuid = ""
        return [GpuEvent(EventKind.XID, uuid, f"XID {int(data.eventData)}", xid=int(data.eventData))]

    def _mark_all_lost(self, reason: str) -> list[GpuEvent]:
        events = []
        with self._lock:
            for uuid, h in self._handles.items():
                try:
                    self._nvml.nvmlDeviceGetUUID(h)
                except self._nvml.NVMLError:
                    self._lost[uuid] = f"GPU is lost: {reason}"
                    events.append(GpuEvent(EventKind.GONE, uuid, self._lost[uuid]))
        return events

    def sample(self, uuid: str) -> GpuSample:
        nv = self._nvml
        h = self._handles[uuid]
        errors: list[str] = []

        def read(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except self._nvml.NVMLError as e:
                if getattr(e, "value", None) == _ERROR_GPU_IS_LOST:
                    raise
                if getattr(e, "value", None) != _ERROR_NOT_SUPPORTED:
                    errors.append(str(e))
                return None

        try:
            power = read(lambda: nv.nvmlDeviceGetPowerUsage(h))
            limit = read(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
            util = read(lambda: nv.nvmlDeviceGetUtilizationRates(h))
            mem = read(lambda: nv.nvmlDeviceGetMemoryInfo(h))
            temp = read(lambda: nv.nvmlDeviceGetTemperature(h, 0))  # NVML_TEMPERATURE_GPU
            # NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC
            ecc = read(lambda: nv.nvmlDeviceGetTotalEccErrors(h, 1, 0))
            sbe = read(lambda: nv.nvmlDeviceGetRetiredPages(h, 0))
            dbe = read(lambda: nv.nvmlDeviceGetRetiredPages(h, 1))
            pending = read(lambda: nv.nvmlDeviceGetRetiredPagesPendingStatus(h))
            remap = read(lambda: nv.nvmlDeviceGetRemappedRows(h))  # (corr, unc, pending, failure)
        except self._nvml.NVMLError as e:
            return GpuSample(lost=True, error=str(e))
        return GpuSample(
            temperature_c=None if temp is None else float(temp),
            power_w=None if power is None else float(power) / 1000.0,
            power_limit_w=None if limit is None else float(limit) / 1000.0,
            utilization_pct=None if util is None else float(util.gpu),
            memory_used=None if mem is None else int(mem.used),
            memory_total=None if mem is None else int(mem.total),
            ecc_uncorrectable=None if ecc is None else int(ecc),
            retired_pages=None if sbe is None and dbe is None else len(sbe or ()) + len(dbe or ()),
            retired_pages_pending=bool(pending),
            remapped_rows_pending=bool(remap[2]) if remap is not None else False,
            remapped_rows_failed=bool(remap[3]) if remap is not None else False,
            error="; ".join(errors),
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._event_set is not None:
                    self._nvml.nvmlEventSetFree(self._event_set)
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as e:
                log.warning("nvml shutdown failed error=%s", e)

"""The backends: the simulated one from YAML, the NVML one against a fake of the pynvml calls."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from fracgpu.api.v1beta1.inventory import LinkClass
from fracgpu.deviceplugin.backends.base import BackendError, EventKind
from fracgpu.deviceplugin.backends.nvml import NvmlBackend
from fracgpu.deviceplugin.backends.simulated import SimulatedBackend, SimulatedConfigError, derived_uuid, parse_gpus

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpus-8xA100.yaml"


# --- simulated ---


def test_the_example_file_has_eight_nvlinked_a100s() -> None:
    gpus = SimulatedBackend.from_file(EXAMPLE).inventory()
    assert [g.index for g in gpus] == list(range(8))
    assert {g.model for g in gpus} == {"A100-SXM4-80GB"}
    assert all(lk.link is LinkClass.NVLINK and lk.nvlinks == 12 for g in gpus for lk in g.links)
    assert [g.numa for g in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_links_fall_back_to_pcie_switch_numa_and_system() -> None:
    gpus = parse_gpus({"gpus": [
        {"uuid": "GPU-a", "memory": "16Gi", "numa": 0, "pcieSwitch": "s0"},
        {"uuid": "GPU-b", "memory": "16Gi", "numa": 0, "pcieSwitch": "s0"},
        {"uuid": "GPU-c", "memory": "16Gi", "numa": 0},
        {"uuid": "GPU-d", "memory": "16Gi", "numa": 1},
    ]})
    links = {lk.peer: lk.link for lk in gpus[0].links}
    assert links == {"GPU-b": LinkClass.PCIE_SWITCH, "GPU-c": LinkClass.NUMA, "GPU-d": LinkClass.SYSTEM}


BAD_FILES = [
    ("not a mapping", [], "expected a mapping with a list 'gpus'"),
    ("uuid missing", {"gpus": [{"memory": "1Gi"}]}, "gpus[0].uuid"),
    ("uuid with ::", {"gpus": [{"uuid": "a::b", "memory": "1Gi"}]}, "gpus[0].uuid"),
    ("duplicate uuid", {"gpus": [{"uuid": "a", "memory": "1Gi"}, {"uuid": "a", "memory": "1Gi"}]}, "duplicate"),
    ("bad memory", {"gpus": [{"uuid": "a", "memory": "lots"}]}, "not a quantity"),
    ("no memory", {"gpus": [{"uuid": "a"}]}, "memory must be more than 0"),
    ("unknown nvlink peer", {"gpus": [{"uuid": "a", "memory": "1Gi", "nvlink": ["b"]}]}, "unknown peer"),
    ("nvlink peer index out of range", {"gpus": [{"uuid": "a", "memory": "1Gi", "nvlink": [1]}]}, "unknown peer 1"),
    ("nvlink to itself by index", {"gpus": [{"uuid": "a", "memory": "1Gi", "nvlink": {0: 4}}]}, "unknown peer 0"),
    ("bad numa", {"gpus": [{"uuid": "a", "memory": "1Gi", "numa": "zero"}]}, "numa"),
    ("unquoted bus id", {"gpus": [{"uuid": "a", "memory": "1Gi", "pciBusId": 7.5}]}, "quote it"),
]


@pytest.mark.parametrize(("name", "doc", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_gpu_file_is_refused_with_a_clear_error(name: str, doc: Any, message: str) -> None:
    with pytest.raises(SimulatedConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_gpus(doc)


def test_a_gpu_without_a_pinned_uuid_gets_one_derived_from_the_node_name() -> None:
    doc = {"gpus": [{"memory": "80Gi", "nvlink": {1: 12}}, {"memory": "80Gi", "nvlink": [0]},
                    {"uuid": "GPU-pinned", "memory": "80Gi", "nvlink": ["GPU-pinned-too"]},
                    {"uuid": "GPU-pinned-too", "memory": "80Gi"}]}
    a, b = parse_gpus(doc, node="node-a"), parse_gpus(doc, node="node-b")
    assert [g.uuid for g in a[:2]] == [derived_uuid("node-a", 0), derived_uuid("node-a", 1)]
    assert not {g.uuid for g in a[:2]} & {g.uuid for g in b[:2]}
    assert [g.uuid for g in a[2:]] == [g.uuid for g in b[2:]] == ["GPU-pinned", "GPU-pinned-too"]
    assert parse_gpus(doc, node="node-a") == a  # the same on every restart
    assert derived_uuid("node-a", 0) == "GPU-" + str(uuid.uuid5(uuid.UUID("7d1c0e52-3b8f-4f6a-9a51-2f0d6c1e8b44"),
                                                                 "node-a/0"))
    assert {lk.peer: lk.nvlinks for lk in a[0].links if lk.link is LinkClass.NVLINK} == {a[1].uuid: 12}
    assert {lk.peer for lk in a[2].links if lk.link is LinkClass.NVLINK} == {"GPU-pinned-too"}


def test_a_file_edited_at_run_time_keeps_the_derived_uuids(tmp_path: Path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump({"gpus": [{"memory": "80Gi"}, {"memory": "80Gi"}]}))
    backend = SimulatedBackend.from_file(path, node="node-a")
    before = [g.uuid for g in backend.inventory()]
    path.write_text(yaml.safe_dump({"gpus": [{"memory": "80Gi", "healthy": False, "reason": "test"},
                                             {"memory": "80Gi"}]}))
    os.utime(path, (time.time() + 5, time.time() + 5))
    events = backend.wait_events(0.01)
    assert [(e.kind, e.uuid) for e in events] == [(EventKind.UNHEALTHY, before[0])]
    assert [g.uuid for g in backend.inventory()] == before


def test_faults_are_events(tmp_path: Path) -> None:
    b = SimulatedBackend(parse_gpus({"gpus": [{"uuid": "GPU-a", "memory": "1Gi"}, {"uuid": "GPU-b", "memory": "1Gi"}]}))
    b.set_unhealthy("GPU-a", "hot")
    b.inject_xid("GPU-b", 79)
    b.remove("GPU-b")
    kinds = [(e.kind, e.uuid) for e in b.wait_events(0)]
    assert kinds == [(EventKind.UNHEALTHY, "GPU-a"), (EventKind.XID, "GPU-b"), (EventKind.GONE, "GPU-b")]
    assert [(g.uuid, g.healthy, g.reason) for g in b.inventory()] == [("GPU-a", False, "hot")]
    b.fail_node("driver gone")
    with pytest.raises(BackendError, match="driver gone"):
        b.inventory()


def test_editing_the_file_injects_faults(tmp_path: Path) -> None:
    path = tmp_path / "gpus.yaml"
    doc: dict[str, list[dict[str, object]]] = {
        "gpus": [{"uuid": "GPU-a", "memory": "1Gi"}, {"uuid": "GPU-b", "memory": "1Gi"}]}
    path.write_text(yaml.safe_dump(doc))
    b = SimulatedBackend.from_file(path)
    doc["gpus"][0].update(healthy=False, reason="fan failure")
    del doc["gpus"][1]
    path.write_text(yaml.safe_dump(doc))
    import os

    os.utime(path, (1, 1))  # a different mtime even on coarse clocks
    events = b.wait_events(0)
    assert [(e.kind, e.uuid, e.reason) for e in events] == [
        (EventKind.UNHEALTHY, "GPU-a", "fan failure"), (EventKind.GONE, "GPU-b", "GPU is gone")]


# --- NVML, against a fake pynvml ---


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory: int = 80 * 1024**3
    bus: str = "00000000:07:00.0"
    numa: int = 0
    nvlinks: list[str] = field(default_factory=list)  # remote bus ids, one per active link
    broken: bool = False  # every read fails


@dataclass
class Ns:
    total: int = 0
    used: int = 0
    busId: str = ""
    gpu: int = 0
    eventData: int = 0
    device: Any = None


class FakeNvml:
    """The pynvml calls NvmlBackend makes, over a list of FakeGpu."""

    NVMLError = NVMLError

    def __init__(self, gpus: list[FakeGpu], fail_init: bool = False, topology: dict[tuple[int, int], int] | None = None):
        self.gpus = gpus
        self.fail_init = fail_init
        self.topology = topology or {}
        self.events: list[tuple[int, int]] = []  # (gpu index, xid)
        self.shutdown = False

    def _g(self, h: int) -> FakeGpu:
        g = self.gpus[h]
        if g.broken:
            raise NVMLError(15)
        return g

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError(9)  # driver not loaded

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._g(h).uuid

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self._g(h).name.encode()  # old bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Ns:
        return Ns(total=self._g(h).memory, used=1024)

    def nvmlDeviceGetPciInfo(self, h: int) -> Ns:
        return Ns(busId=self._g(h).bus)

    def nvmlDeviceGetNumaNodeId(self, h: int) -> int:
        return self._g(h).numa

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        if link >= len(self._g(h).nvlinks):
            raise NVMLError(3)  # not supported: no such link
        return 1

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: int, link: int) -> Ns:
        return Ns(busId=self._g(h).nvlinks[link])

    def nvmlDeviceGetTopologyCommonAncestor(self, a: int, b: int) -> int:
        return self.topology.get((min(a, b), max(a, b)), 50)

    def nvmlEventSetCreate(self) -> str:
        return "set"

    def nvmlDeviceRegisterEvents(self, h: int, kinds: int, event_set: str) -> None:
        pass

    def nvmlEventSetWait(self, event_set: str, timeout_ms: int) -> Ns:
        if not self.events:
            raise NVMLError(10)  # timeout
        idx, xid = self.events.pop(0)
        return Ns(eventData=xid, device=idx)

    def nvmlEventSetFree(self, event_set: str) -> None:
        pass

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._g(h)
        return 91

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._g(h)
        return 250_000

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return 700_000

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Ns:
        return Ns(gpu=37)

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> int:
        return 2

    def nvmlDeviceGetRetiredPages(self, h: int, cause: int) -> list[int]:
        raise NVMLError(3)  # not supported (Hopper uses row remapping)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: int) -> int:
        raise NVMLError(3)

    def nvmlDeviceGetRemappedRows(self, h: int) -> tuple[int, int, int, int]:
        return (0, 1, 0, 1)


def four_h100() -> FakeNvml:
    buses = [f"00000000:{b:02X}:00.0" for b in (0x07, 0x0F, 0x47, 0x4E)]
    gpus = [FakeGpu(uuid=f"GPU-h{i}", bus=buses[i], numa=i // 2) for i in range(4)]
    gpus[0].nvlinks = [buses[1]] * 6  # GPUs 0 and 1: 6 NVLinks; the others only PCIe
    gpus[1].nvlinks = [buses[0]] * 6
    return FakeNvml(gpus, topology={(0, 1): 10, (2, 3): 10, (0, 2): 40, (0, 3): 40, (1, 2): 50, (1, 3): 50})


def test_nvml_enumerates_gpus_with_model_memory_bus_numa_and_links() -> None:
    gpus = NvmlBackend(four_h100(), numa_of=lambda bus: -1).inventory()
    assert [(g.uuid, g.index, g.model, g.numa) for g in gpus] == [
        ("GPU-h0", 0, "H100-80GB-HBM3", 0), ("GPU-h1", 1, "H100-80GB-HBM3", 0),
        ("GPU-h2", 2, "H100-80GB-HBM3", 1), ("GPU-h3", 3, "H100-80GB-HBM3", 1)]
    assert gpus[0].memory == 80 * 1024**3 and gpus[0].pci_bus_id == "00000000:07:00.0"
    links = {lk.peer: (lk.link, lk.nvlinks) for lk in gpus[0].links}
    assert links == {"GPU-h1": (LinkClass.NVLINK, 6), "GPU-h2": (LinkClass.NUMA, 0),
                     "GPU-h3": (LinkClass.NUMA, 0)}
    assert {lk.peer: lk.link for lk in gpus[2].links}["GPU-h3"] is LinkClass.PCIE_SWITCH
    assert {lk.peer: lk.link for lk in gpus[1].links}["GPU-h2"] is LinkClass.SYSTEM


class OldDriverNvml(FakeNvml):
    def nvmlDeviceGetNumaNodeId(self, h: int) -> int:
        raise NVMLError(3)  # not supported by this driver


def test_nvml_numa_falls_back_to_sysfs_when_nvml_cannot_tell() -> None:
    nv = four_h100()
    old = OldDriverNvml(nv.gpus, topology=nv.topology)
    gpus = NvmlBackend(old, numa_of=lambda bus: 3 if bus.endswith("07:00.0") else -1).inventory()
    assert [g.numa for g in gpus] == [3, -1, -1, -1]


def test_nvml_unavailable_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="NVML unavailable"):
        NvmlBackend(FakeNvml([], fail_init=True))


def test_a_gpu_nvml_cannot_read_is_listed_unhealthy_not_dropped() -> None:
    nv = four_h100()
    nv.gpus[2].broken = True
    gpus = NvmlBackend(nv, numa_of=lambda bus: -1).inventory()
    assert len(gpus) == 4
    assert not gpus[2].healthy and "NVML error" in gpus[2].reason and gpus[2].uuid == "GPU-index-2"
    assert all(g.healthy for i, g in enumerate(gpus) if i != 2)


def test_nvml_xid_events_and_timeouts() -> None:
    nv = four_h100()
    b = NvmlBackend(nv, numa_of=lambda bus: -1)
    assert b.wait_events(0.01) == []  # NVML_ERROR_TIMEOUT
    nv.events.append((1, 79))
    [ev] = b.wait_events(0.01)
    assert (ev.kind, ev.uuid, ev.xid) == (EventKind.XID, "GPU-h1", 79)


def test_nvml_samples_for_the_health_policy() -> None:
    b = NvmlBackend(four_h100(), numa_of=lambda bus: -1)
    s = b.sample("GPU-h0")
    assert (s.temperature_c, s.power_w, s.power_limit_w, s.utilization_pct) == (91.0, 250.0, 700.0, 37.0)
    assert (s.ecc_uncorrectable, s.retired_pages, s.remapped_rows_failed, s.error) == (2, None, True, "")
    b.close()
    b.close()  # twice is fine


class Buggy(FakeNvml):
    """A pynvml whose answers this backend misreads (e.g. a changed struct): not NVML errors, our bugs."""

    def __init__(self, gpus: list[FakeGpu], broken: str) -> None:
        super().__init__(gpus)
        self.broken = broken

    def nvmlDeviceGetName(self, h: int) -> bytes:
        if self.broken == "name":
            raise AttributeError("'c_nvmlDevice_t' object has no attribute 'name'")
        return super().nvmlDeviceGetName(h)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        if self.broken == "temperature":
            raise TypeError("an integer is required")
        return super().nvmlDeviceGetTemperature(h, sensor)


@pytest.mark.parametrize(("broken", "call"), [
    ("name", lambda b: b.inventory()),
    ("temperature", lambda b: b.sample("GPU-h0")),
], ids=["inventory", "sample"])
def test_a_bug_is_raised_not_blamed_on_the_gpu(broken: str, call: Any) -> None:
    """Only NVMLError is a GPU fault: anything else would mark healthy GPUs unhealthy and evict their pods."""
    nvml = Buggy(four_h100().gpus, broken)
    with pytest.raises((AttributeError, TypeError)):
        call(NvmlBackend(nvml, numa_of=lambda bus: -1))  # inventory: the constructor's scan raises already


def test_a_lost_gpu_samples_as_lost() -> None:
    nv = four_h100()
    b = NvmlBackend(nv, numa_of=lambda bus: -1)
    nv.gpus[3].broken = True
    assert b.sample("GPU-h3").lost

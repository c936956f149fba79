"""A backend of GPUs described in a YAML file; faults can be injected while it runs.

File format (see examples/gpus-8xA100.yaml)::

    gpus:
      - uuid: GPU-0a1b...            # optional: pins the UUID (unique, no '::'); omitted: derived from
                                     # the node name and the GPU's index (see derived_uuid)
        model: NVIDIA A100-SXM4-80GB # NVML-style name, normalised like NVML's
        memory: 80Gi                 # a Kubernetes quantity or bytes
        numa: 0                      # optional, -1 when unknown
        pciBusId: "0000:07:00.0"     # optional
        pcieSwitch: sw0              # optional: GPUs with the same value share a PCIe switch
        nvlink: {1: 12}              # optional: NVLink peers (index in this list, or a pinned uuid) and lane
                                     # counts (a list means 1 lane each)
        healthy: true                # optional: edit to false (with reason) to inject a fault
        reason: ""

One file mounted on every node of a simulated fleet (manifests/simulated) must not give two nodes
the same GPU: real UUIDs are unique, and a UUID seen on two nodes is a fault. So a GPU without a
pinned ``uuid`` gets one derived from the node name: the same on every restart of that node (its
pods' reservations name it), different on every other node.

Faults, in-process (tests, demo): ``set_unhealthy``, ``set_healthy``, ``inject_xid``, ``remove``,
``fail_node``. Out of process: edit the file; ``wait_events`` notices a changed file within its
timeout and reports the differences (health changes, GPUs gone) as events.
"""

from __future__ import annotations

import os
import threading
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from fracgpu.api.v1beta1.inventory import GpuInfo, GpuLink, LinkClass
from fracgpu.core.health import GpuSample
from fracgpu.core.inventory import normalise_model
from fracgpu.core.quantity import QuantityError, parse_bytes
from fracgpu.deviceplugin.backends.base import BackendError, EventKind, GpuEvent


class SimulatedConfigError(ValueError):
    """The GPU file is not valid; the message names the entry and the field."""


_UUID_NAMESPACE = uuidlib.UUID("7d1c0e52-3b8f-4f6a-9a51-2f0d6c1e8b44")  # fracgpu's simulated GPUs


def derived_uuid(node: str, index: int) -> str:
    """The UUID of simulated GPU `index` on `node`: NVML's shape (GPU-8-4-4-4-12 hex), stable per (node, index)."""
    return f"GPU-{uuidlib.uuid5(_UUID_NAMESPACE, f'{node}/{index}')}"


def parse_gpus(doc: Any, where: str = "gpus file", node: str = "") -> tuple[GpuInfo, ...]:
    """GPUs from a parsed YAML document (see the module doc for the format).

    A GPU without a ``uuid`` gets ``derived_uuid(node, index)``; without a node every GPU must pin one.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("gpus"), list):
        raise SimulatedConfigError(f"{where}: expected a mapping with a list 'gpus'")
    raw: list[Mapping[str, Any]] = []
    for i, item in enumerate(doc["gpus"]):
        if not isinstance(item, Mapping):
            raise SimulatedConfigError(f"{where}: gpus[{i}] must be a mapping")
        raw.append(item)
    uuids: list[str] = []
    pinned: set[str] = set()
    for i, item in enumerate(raw):
        uuid = item.get("uuid")
        if uuid is None:
            if not node:
                raise SimulatedConfigError(f"{where}: gpus[{i}].uuid is missing, and no node name to derive it "
                                           "from (give --node-name, or pin a uuid)")
            uuid = derived_uuid(node, i)
        elif not isinstance(uuid, str) or not uuid or "::" in uuid or len(uuid) > 58:
            raise SimulatedConfigError(f"{where}: gpus[{i}].uuid must be a non-empty string without '::'"
                                       " of at most 58 characters")
        else:
            pinned.add(uuid)
        uuids.append(uuid)
    if len(set(uuids)) != len(uuids):
        raise SimulatedConfigError(f"{where}: duplicate uuid")
    nvlinks: dict[tuple[str, str], int] = {}
    for i, item in enumerate(raw):
        peers = item.get("nvlink") or {}
        if isinstance(peers, list):
            peers = {p: 1 for p in peers}
        if not isinstance(peers, Mapping):
            raise SimulatedConfigError(f"{where}: gpus[{i}].nvlink must be a list or a mapping")
        for ref, lanes in peers.items():
            # a peer is its index in the list (what works with derived UUIDs) or its pinned uuid
            if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(uuids):
                peer = uuids[ref]
            elif isinstance(ref, str) and ref in pinned:
                peer = ref
            else:
                peer = ""
            if not peer or peer == uuids[i]:
                raise SimulatedConfigError(f"{where}: gpus[{i}].nvlink: unknown peer {ref!r} (an index in 'gpus' "
                                           "or a pinned uuid)")
            if not isinstance(lanes, int) or lanes < 1:
                raise SimulatedConfigError(f"{where}: gpus[{i}].nvlink[{ref}]: lanes must be >= 1")
            key = (min(uuids[i], peer), max(uuids[i], peer))
            nvlinks[key] = max(nvlinks.get(key, 0), lanes)
    gpus: list[GpuInfo] = []
    for i, item in enumerate(raw):
        w = f"{where}: gpus[{i}]"
        model = item.get("model", "unknown")
        numa = item.get("numa", -1)
        if not isinstance(numa, int) or isinstance(numa, bool) or numa < -1:
            raise SimulatedConfigError(f"{w}.numa must be an integer >= -1")
        try:
            memory = parse_bytes(item.get("memory", 0), what=f"{w}.memory")
        except QuantityError as e:
            raise SimulatedConfigError(str(e)) from None
        if memory <= 0:
            raise SimulatedConfigError(f"{w}.memory must be more than 0")
        bus = item.get("pciBusId", "")
        if not isinstance(bus, str):
            raise SimulatedConfigError(f"{w}.pciBusId must be a string (quote it: \"0000:07:00.0\")")
        healthy = item.get("healthy", True)
        if not isinstance(healthy, bool):
            raise SimulatedConfigError(f"{w}.healthy must be true or false")
        links: list[GpuLink] = []
        for j, other in enumerate(raw):
            if j == i:
                continue
            key = (min(uuids[i], uuids[j]), max(uuids[i], uuids[j]))
            if key in nvlinks:
                links.append(GpuLink(peer=uuids[j], link=LinkClass.NVLINK, nvlinks=nvlinks[key]))
            elif item.get("pcieSwitch") is not None and item.get("pcieSwitch") == other.get("pcieSwitch"):
                links.append(GpuLink(peer=uuids[j], link=LinkClass.PCIE_SWITCH))
            elif numa >= 0 and numa == other.get("numa", -1):
                links.append(GpuLink(peer=uuids[j], link=LinkClass.NUMA))
            else:
                links.append(GpuLink(peer=uuids[j], link=LinkClass.SYSTEM))
        gpus.append(
            GpuInfo(
                uuid=uuids[i],
                index=i,
                model=normalise_model(str(model)),
                memory=memory,
                numa=numa,
                pci_bus_id=bus,
                healthy=healthy,
                reason="" if healthy else str(item.get("reason", "marked unhealthy in the GPU file")),
                links=tuple(links),
            )
        )
    return tuple(gpus)


class SimulatedBackend:
    """GPUs from a YAML file or a list; health and presence changeable at run time."""

    name = "simulated"

    def __init__(self, gpus: tuple[GpuInfo, ...], path: Path | None = None, node: str = "") -> None:
        self._cond = threading.Condition()
        self._gpus: dict[str, GpuInfo] = {g.uuid: g for g in gpus}
        self._events: list[GpuEvent] = []
        self._node_failure = ""
        self._path = path
        self._node = node
        self._mtime = self._stat()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], node: str = "") -> SimulatedBackend:
        """GPUs of `path`; those without a pinned uuid get one derived from `node`."""
        p = Path(path)
        return cls(cls._load(p, node), path=p, node=node)

    @staticmethod
    def _load(path: Path, node: str) -> tuple[GpuInfo, ...]:
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise SimulatedConfigError(f"{path}: {e}") from None
        return parse_gpus(doc, str(path), node)

    def _stat(self) -> float:
        if self._path is None:
            return 0.0
        try:
            return self._path.stat().st_mtime
        except OSError:
            return 0.0

    # --- GpuBackend ---

    def inventory(self) -> tuple[GpuInfo, ...]:
        with self._cond:
            if self._node_failure:
                raise BackendError(self._node_failure)
            return tuple(sorted(self._gpus.values(), key=lambda g: g.index))

    def wait_events(self, timeout: float) -> list[GpuEvent]:
        with self._cond:
            if not self._events:
                self._cond.wait(timeout)
            self._reload_if_changed()
            events, self._events = self._events, []
            return events

    def sample(self, uuid: str) -> GpuSample:
        with self._cond:
            if uuid not in self._gpus:
                raise KeyError(uuid)
            gpu = self._gpus[uuid]
            return GpuSample(temperature_c=40.0, power_w=60.0, power_limit_w=400.0, utilization_pct=0.0,
                             memory_used=0, memory_total=gpu.memory, ecc_uncorrectable=0, retired_pages=0)

    def close(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- fault injection ---

    def set_unhealthy(self, uuid: str, reason: str) -> None:
        with self._cond:
            self._gpus[uuid] = replace(self._gpus[uuid], healthy=False, reason=reason)
            self._push(GpuEvent(EventKind.UNHEALTHY, uuid, reason))

    def set_healthy(self, uuid: str) -> None:
        with self._cond:
            self._gpus[uuid] = replace(self._gpus[uuid], healthy=True, reason="")
            self._push(GpuEvent(EventKind.HEALTHY, uuid))

    def inject_xid(self, uuid: str, xid: int) -> None:
        """An XID event; whether it makes the GPU unhealthy is the health policy's call."""
        with self._cond:
            if uuid not in self._gpus:
                raise KeyError(uuid)
            self._push(GpuEvent(EventKind.XID, uuid, f"XID {xid}", xid=xid))

    def remove(self, uuid: str) -> None:
        with self._cond:
            del self._gpus[uuid]
            self._push(GpuEvent(EventKind.GONE, uuid, "GPU is gone"))

    def fail_node(self, reason: str) -> None:
        """NVML unreachable as a whole; '' heals it."""
        with self._cond:
            self._node_failure = reason
            self._push(GpuEvent(EventKind.UNHEALTHY if reason else EventKind.HEALTHY, "", reason))

    def _push(self, event: GpuEvent) -> None:
        self._events.append(event)
        self._cond.notify_all()

    def _reload_if_changed(self) -> None:
        mtime = self._stat()
        if self._path is None or mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            new = {g.uuid: g for g in self._load(self._path, self._node)}
        except SimulatedConfigError as e:
            self._events.append(GpuEvent(EventKind.UNHEALTHY, "", f"GPU file unreadable: {e}"))
            return
        for uuid, old in self._gpus.items():
            if uuid not in new:
                self._events.append(GpuEvent(EventKind.GONE, uuid, "GPU is gone"))
            elif old.healthy and not new[uuid].healthy:
                self._events.append(GpuEvent(EventKind.UNHEALTHY, uuid, new[uuid].reason))
            elif not old.healthy and new[uuid].healthy:
                self._events.append(GpuEvent(EventKind.HEALTHY, uuid))
        self._gpus = new

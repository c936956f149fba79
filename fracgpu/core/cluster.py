"""The cluster as the placement core sees it: per-node, per-GPU free capacity in numpy arrays.

One mutable ledger (ClusterState) that the extender's cache, the simulator and benchmarks fill the
same way; fit and ranking read it as whole arrays, so that ranking 5,000 nodes is a few vector
operations rather than 5,000 Python loops. Rows are nodes, columns are GPU slots (a node with
fewer GPUs than the widest node has absent slots: `present` is False there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fracgpu.api.v1beta1.inventory import GpuInfo, LinkClass
from fracgpu.api.v1beta1.names import CORES_PER_GPU
from fracgpu.core.inventory import link_between

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node's static facts: its GPUs (from the inventory), allocatable CPU/RAM, zone, usability."""

    name: str
    gpus: tuple[GpuInfo, ...]
    cpu_milli: int = 0  # allocatable; 0 with check_host=False in ClusterState means "not tracked"
    memory_bytes: int = 0
    zone: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    # Why no new pod may land here (stale heartbeat, broken inventory, tainted); empty when usable.
    unusable: str = ""
    # Fixed tie-break rank: lower wins. Never random, so the core's choice is the pod's placement.
    priority: int = 0


@dataclass(frozen=True, slots=True)
class GpuUse:
    """A pod's hold on one GPU, by the GPU's uuid."""

    uuid: str
    cores: int
    memory: int


@dataclass(frozen=True, slots=True)
class PodUse:
    """What one pod holds on its node: GPU shares and host CPU/RAM."""

    node: str
    gpus: tuple[GpuUse, ...] = ()
    cpu_milli: int = 0
    memory_bytes: int = 0


class ClusterState:
    """The mutable ledger of nodes and pods. Not thread-safe: callers hold their own lock."""

    def __init__(self, *, gpu_slots: int = 8, capacity: int = 64, units_per_gpu: int = CORES_PER_GPU) -> None:
        # Capacity units of one GPU: CORES_PER_GPU (100 vgpu-core) for the extender; the trace
        # simulator keeps the trace's exact 1000 milli-GPU instead of rounding them.
        self.units_per_gpu = units_per_gpu
        self._slots = max(1, gpu_slots)
        self._cap = max(1, capacity)
        self.specs: list[NodeSpec | None] = []
        self.index: dict[str, int] = {}
        self._free_rows: list[int] = []
        self.pods: dict[str, PodUse] = {}
        self._pods_on: dict[int, set[str]] = {}
        self._models: dict[str, int] = {}
        self.version = 0  # bumped on every change; caches key on it
        # best_linked_set answers per (row, usable slots, k); valid until a node's links change
        self.link_memo: dict[tuple[int, tuple[int, ...], int], tuple[tuple[int, ...], int]] = {}
        self._alloc(self._cap, self._slots)

    # ---- arrays -------------------------------------------------------------------------------
    def _alloc(self, rows: int, slots: int) -> None:
        def grow(name: str, shape: tuple[int, ...], dtype: type, fill: object) -> None:
            new: npt.NDArray[Any] = np.full(shape, fill, dtype=dtype)
            old = getattr(self, name, None)
            if old is not None:
                new[tuple(slice(0, s) for s in old.shape)] = old
            setattr(self, name, new)

        grow("present", (rows, slots), np.bool_, False)
        grow("healthy", (rows, slots), np.bool_, False)
        grow("free_cores", (rows, slots), np.int64, 0)
        grow("total_memory", (rows, slots), np.int64, 0)
        grow("free_memory", (rows, slots), np.int64, 0)
        grow("gpu_pods", (rows, slots), np.int64, 0)
        grow("model", (rows, slots), np.int64, -1)
        grow("numa", (rows, slots), np.int64, -1)
        grow("link", (rows, slots, slots), np.int8, int(LinkClass.SYSTEM))
        grow("best_link", (rows,), np.int8, -1)
        grow("active", (rows,), np.bool_, False)
        grow("usable", (rows,), np.bool_, False)
        grow("cpu_free", (rows,), np.int64, 0)
        grow("mem_free", (rows,), np.int64, 0)
        grow("cpu_total", (rows,), np.int64, 0)
        grow("mem_total", (rows,), np.int64, 0)
        grow("priority", (rows,), np.int64, 0)
        grow("gpu_count", (rows,), np.int64, 0)
        grow("row_version", (rows,), np.int64, 0)
        self._cap, self._slots = rows, slots

    # Declared for type checkers; created in _alloc.
    present: BoolArray
    healthy: BoolArray
    free_cores: IntArray
    total_memory: IntArray
    free_memory: IntArray
    gpu_pods: IntArray
    model: IntArray
    numa: IntArray
    link: npt.NDArray[np.int8]
    best_link: npt.NDArray[np.int8]
    active: BoolArray
    usable: BoolArray
    cpu_free: IntArray
    mem_free: IntArray
    cpu_total: IntArray
    mem_total: IntArray
    priority: IntArray
    gpu_count: IntArray
    # Bumped whenever a row's capacity or usage changes: per-node caches recompute only those rows.
    row_version: IntArray

    @property
    def rows(self) -> int:
        """Rows in use (some may be inactive holes left by removed nodes)."""
        return len(self.specs)

    @property
    def slots(self) -> int:
        return self._slots

    def model_id(self, model: str) -> int:
        if model not in self._models:
            self._models[model] = len(self._models)
        return self._models[model]

    def models(self) -> Mapping[str, int]:
        return self._models

    def gpu_uuid(self, row: int, slot: int) -> str:
        spec = self.specs[row]
        assert spec is not None
        return spec.gpus[slot].uuid

    # ---- nodes --------------------------------------------------------------------------------
    def upsert_node(self, spec: NodeSpec) -> None:
        """Add or replace a node's static facts; pods already on it are charged again."""
        row = self.index.get(spec.name)
        if row is None:
            row = self._free_rows.pop() if self._free_rows else len(self.specs)
            if row == len(self.specs):
                self.specs.append(None)
            self.index[spec.name] = row
        need_slots = max(self._slots, len(spec.gpus))
        if row >= self._cap or need_slots > self._slots:
            self._alloc(max(self._cap * 2, row + 1), need_slots)
        self.specs[row] = spec
        self._reset_row(row)
        for key in self._pods_on.get(row, set()):
            self._charge(row, self.pods[key], +1)
        self.version += 1

    def remove_node(self, name: str) -> None:
        row = self.index.pop(name, None)
        if row is None:
            return
        for key in self._pods_on.pop(row, set()):
            self.pods.pop(key, None)
        self.specs[row] = None
        self.row_version[row] += 1
        self.active[row] = False
        self.usable[row] = False
        self.present[row, :] = False
        self._free_rows.append(row)
        self.version += 1

    def set_unusable(self, name: str, reason: str) -> None:
        row = self.index.get(name)
        spec = self.specs[row] if row is not None else None
        if row is None or spec is None or spec.unusable == reason:
            return
        self.specs[row] = dataclasses.replace(spec, unusable=reason)
        self.usable[row] = not reason
        self.row_version[row] += 1
        self.version += 1

    def _reset_row(self, row: int) -> None:
        spec = self.specs[row]
        assert spec is not None
        old_links = self.link[row].copy()
        n = len(spec.gpus)
        self.present[row, :] = False
        self.present[row, :n] = True
        self.healthy[row, :] = False
        self.free_cores[row, :] = 0
        self.free_cores[row, :n] = self.units_per_gpu
        self.total_memory[row, :] = 0
        self.free_memory[row, :] = 0
        self.gpu_pods[row, :] = 0
        self.model[row, :] = -1
        self.numa[row, :] = -1
        self.link[row, :, :] = int(LinkClass.SYSTEM)
        for i, g in enumerate(spec.gpus):
            self.healthy[row, i] = g.healthy
            self.total_memory[row, i] = g.memory
            self.free_memory[row, i] = g.memory
            self.model[row, i] = self.model_id(g.model)
            self.numa[row, i] = g.numa
            for j, h in enumerate(spec.gpus):
                if i != j:
                    self.link[row, i, j] = int(link_between(g, h))
        self.best_link[row] = max(
            (int(self.link[row, i, j]) for i in range(n) for j in range(n) if i != j), default=-1
        )
        if self.link_memo and not np.array_equal(old_links, self.link[row]):
            self.link_memo = {key: v for key, v in self.link_memo.items() if key[0] != row}
        self.active[row] = True
        self.usable[row] = not spec.unusable
        self.cpu_total[row] = spec.cpu_milli
        self.mem_total[row] = spec.memory_bytes
        self.cpu_free[row] = spec.cpu_milli
        self.mem_free[row] = spec.memory_bytes
        self.priority[row] = spec.priority
        self.gpu_count[row] = n
        self.row_version[row] += 1

    # ---- pods ---------------------------------------------------------------------------------
    def _charge(self, row: int, use: PodUse, sign: int) -> None:
        spec = self.specs[row]
        assert spec is not None
        slot_of = {g.uuid: i for i, g in enumerate(spec.gpus)}
        for g in use.gpus:
            slot = slot_of.get(g.uuid)
            if slot is None:  # the GPU left the inventory; the pod still holds host resources
                continue
            self.free_cores[row, slot] -= sign * g.cores
            self.free_memory[row, slot] -= sign * g.memory
            self.gpu_pods[row, slot] += sign
        self.cpu_free[row] -= sign * use.cpu_milli
        self.mem_free[row] -= sign * use.memory_bytes
        self.row_version[row] += 1

    def add_pod(self, key: str, use: PodUse) -> Callable[[], None]:
        """Charge a pod (replacing an earlier record of it); returns an undo."""
        previous = self.pods.get(key)
        if previous is not None:
            self.remove_pod(key)
        self.pods[key] = use
        row = self.index.get(use.node)
        if row is not None:
            self._pods_on.setdefault(row, set()).add(key)
            self._charge(row, use, +1)
        self.version += 1

        def undo() -> None:
            self.remove_pod(key)
            if previous is not None:
                self.add_pod(key, previous)

        return undo

    def remove_pod(self, key: str) -> PodUse | None:
        use = self.pods.pop(key, None)
        if use is None:
            return None
        row = self.index.get(use.node)
        if row is not None:
            self._pods_on.get(row, set()).discard(key)
            self._charge(row, use, -1)
        self.version += 1
        return use

    def pods_on(self, node: str) -> list[str]:
        row = self.index.get(node)
        return sorted(self._pods_on.get(row, set())) if row is not None else []

    def rows_of(self, names: list[str] | None) -> tuple[IntArray, list[str]]:
        """Rows for the named nodes (all active nodes when None) and the names not known here."""
        if names is None:
            rows = np.flatnonzero(self.active[: self.rows])
            return rows.astype(np.int64), []
        found: list[int] = []
        unknown: list[str] = []
        for n in names:
            r = self.index.get(n)
            if r is None:
                unknown.append(n)
            else:
                found.append(r)
        return np.asarray(found, dtype=np.int64), unknown

    def name(self, row: int) -> str:
        spec = self.specs[row]
        assert spec is not None
        return spec.name

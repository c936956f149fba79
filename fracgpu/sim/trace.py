"""The openb trace (Alibaba cluster-trace-gpu-v2023, as used by the FGD paper): node and task lists.

Files are bundled in fracgpu/data/openb/ (see SOURCE.md there for provenance and license). A user
file in the same CSV format works too. GPU shares stay in the trace's exact unit, milli-GPU
(1000 per GPU): the simulator's ClusterState is built with units_per_gpu=1000, never rounded to
vgpu-core.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core.cluster import ClusterState, NodeSpec
from fracgpu.core.fragmentation import TaskShape
from fracgpu.core.quantity import MAX_QUANTITY
from fracgpu.core.request import MAX_GPUS, GpuRequest, ModelRule

MILLI = 1000  # the trace's units per GPU
MIB = 1 << 20
# Bounds of a row's numbers (the ledger keeps them in int64 arrays, and a node's GPUs are array columns).
MAX_MIB = MAX_QUANTITY // MIB
MAX_NODE_GPUS = MAX_GPUS
DEFAULT_TRACE = "default"
DEFAULT_NODES = "gpu_node"
VARIANTS = (
    "default",
    "cpu037", "cpu050", "cpu072", "cpu100", "cpu200", "cpu235", "cpu250", "cpu300",
    "gpushare20", "gpushare40", "gpushare60", "gpushare80", "gpushare100",
    "gpuspec05", "gpuspec10", "gpuspec20", "gpuspec25", "gpuspec33",
    "multigpu20", "multigpu30", "multigpu40", "multigpu50",
)  # fmt: skip


class TraceError(ValueError):
    """A trace file is missing or malformed; the message names the file, row and column."""


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int  # per GPU, clamped to 1000; 0 for CPU-only tasks
    gpu_spec: tuple[str, ...] = ()  # allowed models, empty = any

    @property
    def gpu_request(self) -> int:
        """Total milli-GPU the task asks for (what "arrived" counts)."""
        return self.num_gpu * self.gpu_milli

    @property
    def kind(self) -> str:
        if self.num_gpu == 0 or self.gpu_milli == 0:
            return "cpu-only"
        if self.num_gpu == 1 and self.gpu_milli < MILLI:
            return "share"
        return f"{self.num_gpu}-gpu"

    def shape(self) -> TaskShape:
        units = self.gpu_milli if self.num_gpu > 0 else 0
        return TaskShape(self.cpu_milli, units, self.num_gpu if units else 0, self.gpu_spec)

    def request(self) -> GpuRequest:
        cores = 0 if self.kind == "cpu-only" else self.num_gpu * self.gpu_milli
        rule = ModelRule(allow=self.gpu_spec, text="|".join(self.gpu_spec)) if self.gpu_spec else ModelRule()
        return GpuRequest(
            cores=cores,
            memory=None,
            model_rule=rule,
            cpu_milli=self.cpu_milli,
            memory_bytes=self.memory_mib * MIB,
            units_per_gpu=MILLI,
        )


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str


def data_path(name: str) -> Path:
    return Path(str(resources.files("fracgpu") / "data" / "openb" / name))


def resolve(arg: str, kind: str) -> Path:
    """A variant name ("default", "gpushare40", "gpu_node") or a CSV path."""
    p = Path(arg)
    if p.suffix == ".csv" or p.exists():
        if not p.exists():
            raise TraceError(f"{arg}: no such file")
        if p.is_dir():
            raise TraceError(f"{arg}: is a directory, not a CSV file")
        if not p.is_file():
            raise TraceError(f"{arg}: not a regular file; give a CSV file")
        return p
    bundled = data_path(f"openb_{kind}_list_{arg}.csv")
    if not bundled.exists():
        raise TraceError(f"{arg!r} is neither a CSV file nor a bundled {kind} list (e.g. {VARIANTS[1]})")
    return bundled


def _int(row: dict[str, str], col: str, where: str, maximum: int = MAX_QUANTITY) -> int:
    raw = row.get(col)
    if raw is None or raw == "":
        raise TraceError(f"{where}: missing column {col!r}")
    try:
        value = float(raw)
    except ValueError:  # "x"
        raise TraceError(f"{where}: {col}={raw!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > maximum:  # "nan", "inf", past the ledger's bound
        raise TraceError(f"{where}: {col}={raw!r} is out of range (at most {maximum})")
    if value < 0:
        raise TraceError(f"{where}: {col}={raw!r} is negative")
    return int(value)


TASK_COLUMNS = ("cpu_milli", "memory_mib", "num_gpu", "gpu_milli")  # name, gpu_spec and the rest are optional
NODE_COLUMNS = ("cpu_milli", "memory_mib", "gpu")  # sn and model are optional


def _rows(path: Path, needed: tuple[str, ...], kind: str) -> Iterator[tuple[int, dict[str, str]]]:
    """The CSV's rows with their line number, after checking its header; every way a file
    can be unreadable (a directory, binary data, no header) is a TraceError naming the file."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in needed if c not in header]
            if missing:
                got = f"its first line is {','.join(header)[:80]!r}" if header else "it is empty"
                raise TraceError(f"{path.name}: not an openb {kind} list: {got}; the first line must be a header "
                                 f"with the columns {','.join(needed)}")
            yield from enumerate(reader, start=2)
    except UnicodeDecodeError as e:
        raise TraceError(f"{path.name}: not a text CSV file (byte 0x{e.object[e.start]:02x} at offset "
                         f"{e.start} is not UTF-8)") from None
    except csv.Error as e:
        raise TraceError(f"{path.name}: not a CSV file ({e})") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read it: {e.strerror or e}") from None


def load_tasks(path: Path) -> list[Task]:
    out: list[Task] = []
    for i, row in _rows(path, TASK_COLUMNS, "pod"):
        where = f"{path.name}:{i}"
        num = _int(row, "num_gpu", where, MAX_GPUS)
        milli = min(MILLI, _int(row, "gpu_milli", where))  # the simulator clamps values above 1000
        spec = tuple(s for s in (row.get("gpu_spec") or "").split("|") if s)
        out.append(Task(row.get("name") or f"task-{i}", _int(row, "cpu_milli", where),
                        _int(row, "memory_mib", where, MAX_MIB), num, milli if num > 0 else 0, spec))
    return out


def load_nodes(path: Path) -> list[NodeRow]:
    out: list[NodeRow] = []
    for i, row in _rows(path, NODE_COLUMNS, "node"):
        where = f"{path.name}:{i}"
        out.append(NodeRow(row.get("sn") or f"node-{i}", _int(row, "cpu_milli", where),
                           _int(row, "memory_mib", where, MAX_MIB),
                           _int(row, "gpu", where, MAX_NODE_GPUS), row.get("model") or ""))
    return out


def build_cluster(nodes: list[NodeRow], priority: list[int] | None = None) -> ClusterState:
    """A ClusterState in milli-GPU. VRAM is not in the trace: GPU memory is 0 (not modelled)."""
    state = ClusterState(gpu_slots=max((n.gpus for n in nodes), default=1), capacity=len(nodes) + 1,
                         units_per_gpu=MILLI)
    for i, n in enumerate(nodes):
        gpus = tuple(GpuInfo(uuid=f"{n.name}/gpu{j}", index=j, model=n.model, memory=0, numa=-1)
                     for j in range(n.gpus))
        state.upsert_node(NodeSpec(name=n.name, gpus=gpus, cpu_milli=n.cpu_milli, memory_bytes=n.memory_mib * MIB,
                                   priority=priority[i] if priority is not None else i))
    return state

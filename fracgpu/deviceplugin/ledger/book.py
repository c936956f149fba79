"""The reservation records of one node: each pod's entry, kept in step with the API server's pods.

Pure: no I/O, no clock, no logging. The other ledger modules read a `Book`; `Ledger` is one.
"""

from __future__ import annotations

from collections.abc import Iterable

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, CORES_PER_GPU, PHASE_ALLOCATED
from fracgpu.deviceplugin.ledger.records import PodEntry, admitting
from fracgpu.deviceplugin.pods import NodePod


class Book:
    def __init__(self, node: str, gpus: Iterable[GpuInfo]) -> None:
        self.node = node
        self.gpus: dict[str, GpuInfo] = {}
        self.entries: dict[str, PodEntry] = {}
        self.foreign: dict[str, str] = {}  # device id -> holder key, held per PodResources by a pod we cannot use
        self._last_pods: list[NodePod] = []
        self._checked = False
        self.set_gpus(gpus)

    # --- inputs ---

    def set_gpus(self, gpus: Iterable[GpuInfo]) -> None:
        self.gpus = {g.uuid: g for g in gpus}
        self._last_pods = []  # re-check every reservation against the new GPU set
        self._checked = False

    def sync_pods(self, pods: Iterable[NodePod]) -> None:
        """Replace the pod set with the API server's view. Served containers are kept per pod UID."""
        pods = list(pods)
        if len(pods) == len(self._last_pods) and all(a is b for a, b in zip(pods, self._last_pods, strict=True)):
            return  # the same decoded objects as last time (a cache that did not change)
        self._last_pods = pods
        old = self.entries
        entries: dict[str, PodEntry] = {}
        for pod in sorted(pods, key=lambda p: (p.created, p.key)):
            if pod.node and pod.node != self.node:
                continue
            prev = old.get(pod.key)
            if prev is not None and prev.pod is pod and self._checked:
                prev.invalid = prev.checked  # unchanged pod: keep the entry, overlaps are checked again below
                entries[pod.key] = prev
                continue
            if prev is not None and prev.pod.uid != pod.uid:
                prev = None  # same name, a new pod
            assigned_text = pod.assigned
            pending = prev.pending if prev is not None else None
            if pending is not None and assigned_text != pending and prev is not None and prev.assignment:
                assignment: Assignment | None = prev.assignment  # our move is not written back yet
            else:
                pending = None
                assignment = None
                if assigned_text is not None:
                    try:
                        assignment = Assignment.from_json(assigned_text)
                    except InvalidDocument as e:
                        why = f"annotation {ANN_ASSIGNED} is not valid: {e}"
                        entries[pod.key] = PodEntry(pod, None, why, served=prev.served if prev else {}, checked=why)
                        continue
            phase = prev.phase if prev is not None and prev.phase != pod.phase else None
            entry = PodEntry(pod, assignment, served=dict(prev.served) if prev else {}, pending=pending, phase=phase)
            entry.invalid = entry.checked = self._check(entry)
            entries[pod.key] = entry
        self.entries = entries
        self._checked = True
        self._check_overlaps()

    def _check(self, e: PodEntry) -> str:
        pod, a = e.pod, e.assignment
        if pod.request_error:
            return f"the pod's GPU request is not valid: {pod.request_error}"
        if a is None:
            return f"no reservation: annotation {ANN_ASSIGNED} is missing (pods must be scheduled by fracgpu-scheduler)"
        if a.node != self.node:
            return f"reservation is for node {a.node!r}, not {self.node!r}"
        for share in a.gpus:
            if share.uuid not in self.gpus:
                return f"reserved GPU {share.uuid} is not on this node"
        cores = pod.cores
        if a.cores != cores:
            return f"reservation holds {a.cores} vgpu-core, the pod asks for {cores}"
        if cores > CORES_PER_GPU and any(s.cores != CORES_PER_GPU for s in a.gpus):
            return "reservation of a whole-GPU pod holds part of a GPU"
        if cores <= CORES_PER_GPU and len(a.gpus) != 1:
            return "reservation of a GPU share spans several GPUs"
        return ""

    def _check_overlaps(self) -> None:
        """A device ID reserved by two pods: the one holding it (or else the earlier one) keeps it."""
        owner: dict[str, PodEntry] = {}
        ordered = sorted(self.entries.values(),
                         key=lambda e: (not e.served, e.assignment.assigned_at if e.assignment else "", e.key))
        for e in ordered:
            if not e.usable:
                continue
            clash = next((owner[i] for i in e.reserved() if i in owner), None)
            if clash is not None:
                e.invalid = f"its reserved devices are also reserved by pod {clash.key}"
                continue
            for i in e.reserved():
                owner[i] = e

    def written(self, key: str, text: str) -> None:
        """A reservation we moved reached the API server."""
        e = self.entries.get(key)
        if e is not None and e.pending == text:
            e.pending = None

    # --- who has what ---

    def owners(self) -> dict[str, str]:
        """Device id -> key of the pod whose usable reservation holds it."""
        return {i: e.key for e in self.entries.values() if e.usable for i in e.reserved()}

    def holders(self) -> dict[str, str]:
        """Device id -> key of the pod the kubelet gave it to."""
        held = dict(self.foreign)
        for e in self.entries.values():
            for i in e.held():
                held[i] = e.key
        return held

    def waiting_for(self, size: int) -> list[PodEntry]:
        """Pods that may still be admitted, with a container of `size` devices not served yet."""
        return [e for e in self.entries.values()
                if e.usable and admitting(e) and any(c.cores == size for c in e.unserved())]

    def rerunning(self, size: int) -> list[PodEntry]:
        """Pods marked allocated with a GPU container of `size`: the kubelet may allocate any of them again."""
        return [e for e in self.entries.values() if e.usable and e.current_phase == PHASE_ALLOCATED
                and any(c.cores == size for c in e.pod.gpu_containers)]

    def usage(self, uuid: str, exclude: str) -> tuple[int, int]:
        """(vgpu-core, VRAM bytes) the usable reservations of pods other than `exclude` book on GPU `uuid`."""
        cores = memory = 0
        for e in self.entries.values():
            if e.key == exclude or not e.usable or e.assignment is None:
                continue
            for s in e.assignment.gpus:
                if s.uuid == uuid:
                    cores += s.cores
                    memory += s.memory
        return cores, memory

    def allocated(self) -> dict[str, tuple[int, int]]:
        """Per GPU: (reserved vgpu-core, reserved VRAM bytes) of usable reservations."""
        out = {u: (0, 0) for u in self.gpus}
        for e in self.entries.values():
            if not e.usable or e.assignment is None:
                continue
            for s in e.assignment.gpus:
                c, m = out.get(s.uuid, (0, 0))
                out[s.uuid] = (c + s.cores, m + s.memory)
        return out

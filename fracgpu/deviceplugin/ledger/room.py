"""Is there room on a GPU: for a share the kubelet moved outside the reservation, and for the reservation
itself next to the pods already admitted (Allocate is the last line). Pure.
"""

from __future__ import annotations

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.names import CORES_PER_GPU
from fracgpu.core.quantity import format_bytes
from fracgpu.deviceplugin.ledger.book import Book
from fracgpu.deviceplugin.ledger.records import UNSAFE, PodEntry, Refusal, admitted


def room_for_move(book: Book, entry: PodEntry, uuid: str, per_gpu: int) -> int | Refusal:
    """The VRAM the pod takes on GPU `uuid`, outside its reservation: the GPU must be healthy and have
    `per_gpu` vgpu-core and that VRAM left by the other reservations."""
    gpu = book.gpus[uuid]
    key = entry.key
    if not gpu.healthy:
        return Refusal(UNSAFE, f"GPU {uuid} is unhealthy", (key,))
    explicit = entry.pod.memory
    memory = explicit if explicit is not None else gpu.memory * per_gpu // CORES_PER_GPU
    used_cores, used_mem = book.usage(uuid, exclude=key)
    if used_cores + per_gpu > CORES_PER_GPU:
        return Refusal(UNSAFE, f"GPU {uuid} has {CORES_PER_GPU - used_cores} vgpu-core unreserved, "
                       f"the pod needs {per_gpu}", (key,))
    if used_mem + memory > gpu.memory:
        return Refusal(UNSAFE, f"GPU {uuid} has {gpu.memory - used_mem} bytes of VRAM unreserved, "
                       f"the pod needs {memory}", (key,))
    return memory


def overbooked(book: Book, entry: PodEntry, a: Assignment) -> str:
    """Why the pod's reservation `a` does not fit next to the pods already admitted on its GPUs; "" when it fits.

    The extender checked the same at bind; this is the last line against reservations it did not
    make or made from a wrong view (e.g. two reservations of one GPU's VRAM with disjoint IDs).
    Pods reserved but not admitted yet do not count: the first admitted keeps its GPU.
    """
    for share in a.gpus:
        gpu = book.gpus[share.uuid]
        cores = memory = 0
        names: list[str] = []
        for e in book.entries.values():
            if e.key == entry.key or not e.usable or e.assignment is None or not admitted(e):
                continue
            for s in e.assignment.gpus:
                if s.uuid == share.uuid:
                    cores += s.cores
                    memory += s.memory
                    names.append(e.key)
        if cores + share.cores > CORES_PER_GPU or memory + share.memory > gpu.memory:
            listed = ", ".join(sorted(names)[:4]) + (" ..." if len(names) > 4 else "")
            return (f"GPU {share.uuid} has no room for pod {entry.key}: pods admitted there ({listed}) book "
                    f"vgpu-memory {format_bytes(memory)} of {format_bytes(gpu.memory)}, vgpu-core {cores} of "
                    f"{CORES_PER_GPU}; the pod asks vgpu-memory {format_bytes(share.memory)}, "
                    f"vgpu-core {share.cores}")
    return ""

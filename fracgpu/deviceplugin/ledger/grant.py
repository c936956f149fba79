"""The placement of a container's grant: the pod's reservation after the kubelet's choice of IDs, the
reservations it displaces, and the per-GPU limits the container gets. Pure; commits nothing.

The kubelet may hand over IDs outside the pod's reservation (its own choice). The reservation then
follows them: on each GPU it keeps the IDs the kubelet gave, filled up with free ones; a GPU outside
the reservation must have room; a pod whose reserved (not held) IDs were taken gets other free IDs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.names import CORES_PER_GPU, device_id
from fracgpu.core.request import ContainerDemand
from fracgpu.deviceplugin.ledger.book import Book
from fracgpu.deviceplugin.ledger.records import UNSAFE, GpuLimit, Moves, PodEntry, Refusal, gpu_of, id_order
from fracgpu.deviceplugin.ledger.room import room_for_move

Placed = tuple[Assignment, Moves]  # the pod's reservation after the grant, and every reservation that moves


def place(book: Book, entry: PodEntry, ids: list[str], container: str = "") -> Placed | Refusal:
    """The pod's reservation after `container` gets `ids`, and other pods' reservations it displaces."""
    a = entry.assignment
    assert a is not None
    key = entry.key
    holders = book.holders()
    held = next(((i, holders[i]) for i in ids if holders.get(i, key) != key), None)
    if held is not None:
        return Refusal(UNSAFE, f"device {held[0]} is held by pod {held[1]}", (key,))
    per_gpu = min(a.cores, CORES_PER_GPU) if len(a.gpus) == 1 else CORES_PER_GPU
    by_gpu = _by_gpu(entry.held() | set(ids))
    refused = _too_many(by_gpu, per_gpu, len(a.gpus), key)
    if refused is not None:
        return refused
    reserved = {s.uuid: s for s in a.gpus}
    final = _gpus_after(a, by_gpu)
    if set(final) == set(reserved) and all(by_gpu.get(u, set()) <= set(reserved[u].device_ids) for u in final):
        return a, ()  # inside the reservation: nothing moves
    owners = book.owners()
    shares: list[GpuShare] = []
    for uuid in final:
        share = _share_on(book, entry, uuid, reserved.get(uuid), by_gpu.get(uuid, set()), per_gpu,
                          lambda i: owners.get(i, key) == key and holders.get(i, key) == key)
        if isinstance(share, Refusal):
            return share
        shares.append(share)
    new = replace(a, gpus=tuple(shares), containers=_containers(a.containers, entry, container, ids))
    displaced = _give_back(book, key, shares, owners, holders)
    if isinstance(displaced, Refusal):
        return displaced
    return new, ((key, new), *displaced)


def _by_gpu(ids: set[str]) -> dict[str, set[str]]:
    by_gpu: dict[str, set[str]] = {}
    for i in ids:
        by_gpu.setdefault(gpu_of(i), set()).add(i)
    return by_gpu


def _too_many(by_gpu: dict[str, set[str]], per_gpu: int, gpus: int, key: str) -> Refusal | None:
    """The pod would hold more devices of one GPU, or more GPUs, than it reserved."""
    for uuid, toks in by_gpu.items():
        if len(toks) > per_gpu:
            return Refusal(UNSAFE, f"the pod would hold {len(toks)} devices of GPU {uuid} but reserved {per_gpu} "
                           "on one GPU", (key,))
    if len(by_gpu) > gpus:
        return Refusal(UNSAFE, f"the devices span {len(by_gpu)} GPUs, the pod reserved {gpus}", (key,))
    return None


def _gpus_after(a: Assignment, by_gpu: dict[str, set[str]]) -> list[str]:
    """The pod's GPUs after the grant: those it holds devices of, then reserved ones up to its GPU count."""
    reserved = {s.uuid for s in a.gpus}
    final = [s.uuid for s in a.gpus if s.uuid in by_gpu] + sorted(u for u in by_gpu if u not in reserved)
    for s in a.gpus:
        if len(final) >= len(a.gpus):
            break
        if s.uuid not in final:
            final.append(s.uuid)
    return final


def _share_on(book: Book, entry: PodEntry, uuid: str, share: GpuShare | None, given: set[str], per_gpu: int,
              free: Callable[[str], bool]) -> GpuShare | Refusal:
    """The pod's share of GPU `uuid`: the IDs the kubelet `given` there, filled up to `per_gpu` with IDs
    of its old share, then any `free` ID of the GPU."""
    if share is not None:
        memory = share.memory
    else:
        room = room_for_move(book, entry, uuid, per_gpu)
        if isinstance(room, Refusal):
            return room
        memory = room
    picked = sorted(given, key=id_order)
    chosen = set(picked)
    fill = [i for i in (share.device_ids if share is not None else ()) if i not in chosen]
    fill += [device_id(uuid, k) for k in range(CORES_PER_GPU)]
    for i in fill:
        if len(picked) >= per_gpu:
            break
        if i in chosen or not free(i):
            continue
        picked.append(i)
        chosen.add(i)
    if len(picked) < per_gpu:
        return Refusal(UNSAFE, f"GPU {uuid} has no {per_gpu} free devices for the pod", (entry.key,))
    return GpuShare(uuid=uuid, cores=per_gpu, memory=memory, device_ids=tuple(picked))


def _give_back(book: Book, key: str, shares: list[GpuShare], owners: dict[str, str],
               holders: dict[str, str]) -> Moves | Refusal:
    """Pods whose reserved (not held) IDs the kubelet gave to this pod get other free IDs of that GPU."""
    taken = {i for s in shares for i in s.device_ids}
    displaced: dict[str, set[str]] = {}
    for i in taken:
        o = owners.get(i)
        if o is not None and o != key:
            displaced.setdefault(o, set()).add(i)
    if not displaced:
        return ()
    in_use = taken | set(holders)
    in_use |= {i for o, e in book.entries.items() if e.usable and o != key for i in e.reserved()}
    moved: list[tuple[str, Assignment]] = []
    for o, lost in sorted(displaced.items()):
        other = book.entries[o].assignment
        assert other is not None
        other_shares: list[GpuShare] = []
        for s in other.gpus:
            keep = [i for i in s.device_ids if i not in lost]
            for k in range(CORES_PER_GPU):
                if len(keep) >= s.cores:
                    break
                i = device_id(s.uuid, k)
                if i not in in_use:
                    keep.append(i)
                    in_use.add(i)
            if len(keep) < s.cores:
                return Refusal(UNSAFE, f"no free devices on GPU {s.uuid} to give back to pod {o}", (key,))
            other_shares.append(replace(s, device_ids=tuple(keep)))
        moved.append((o, replace(other, gpus=tuple(other_shares),
                                 containers=tuple(replace(c, device_ids=()) for c in other.containers))))
    return tuple(moved)


def _containers(shares: tuple[ContainerShare, ...], entry: PodEntry, container: str,
                ids: list[str]) -> tuple[ContainerShare, ...]:
    """Container shares after a move: the served ones record what they got, the others are cleared."""
    served = dict(entry.served)
    if container:
        served[container] = tuple(ids)
    out = []
    for c in shares:
        got = served.get(c.name)
        out.append(replace(c, device_ids=tuple(got) if got is not None else ()))
    return tuple(out)


def limits(book: Book, container: ContainerDemand, ids: list[str], a: Assignment) -> tuple[GpuLimit, ...]:
    """Per visible GPU, in index order: the vgpu-core and VRAM the container gets there."""
    counts: dict[str, int] = {}
    for i in ids:
        counts[gpu_of(i)] = counts.get(gpu_of(i), 0) + 1
    shares = {s.uuid: s for s in a.gpus}
    out = []
    for uuid in sorted(counts, key=lambda u: book.gpus[u].index):
        gpu, n = book.gpus[uuid], counts[uuid]
        share = shares.get(uuid)
        if container.memory is not None:
            memory = container.memory
        elif share is not None:
            memory = share.memory * n // share.cores
        else:
            memory = gpu.memory * n // CORES_PER_GPU
        out.append(GpuLimit(gpu=gpu, cores=n, memory=memory))
    return tuple(out)

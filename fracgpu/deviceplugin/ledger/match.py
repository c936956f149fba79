"""Which pod a kubelet call is for: the kubelet names no pod, so the ledger tells it by the device IDs.

Reserved IDs belong to exactly one pod, so IDs inside one pod's reservation name that pod. When the
kubelet chose other IDs, the pod is the one waiting whose container asks for exactly that many IDs
(interchangeable pods may be taken in either order). A container of a running pod allocated again
(the kubelet lost its device checkpoint) is matched by its own reservation. Pure.
"""

from __future__ import annotations

from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE, PHASE_ALLOCATED, PHASE_FAILED_PREFIX
from fracgpu.core.request import ContainerDemand
from fracgpu.deviceplugin.ledger.book import Book
from fracgpu.deviceplugin.ledger.records import (
    AMBIGUOUS,
    BAD_RESERVATION,
    NO_RESERVATION,
    UNCONFIRMED,
    UNSAFE,
    WRONG_SIZE,
    KubeletHoldings,
    PodEntry,
    Refusal,
    id_order,
    shape,
)

Match = tuple[PodEntry, ContainerDemand, bool]  # the pod, its container, allocated before (a running pod's)


def preferred(book: Book, available: list[str], must_include: list[str], size: int) -> list[str]:
    """The reserved IDs of the pod being admitted; a fair guess when no pod matches (advisory only)."""
    avail_set = set(available)
    must = list(dict.fromkeys(must_include))
    best: PodEntry | None = None
    best_score = -1
    must_set = set(must)
    for e in book.waiting_for(size):
        reserved = e.reserved()
        if not must_set <= reserved | e.held():
            continue
        score = len(reserved & avail_set)
        if score > best_score:
            best, best_score = e, score
    answer = list(must)
    taken = set(answer)
    if best is not None and best.assignment is not None:
        container = next(c for c in best.unserved() if c.cores == size)
        expected = next((s.device_ids for s in best.assignment.containers if s.name == container.name), ())
        order = list(expected) + sorted(best.reserved(), key=id_order)
    else:
        order = _preferred_again(book, avail_set, must_set, size)
    for i in order:
        if len(answer) >= size:
            break
        if i in avail_set and i not in taken:
            answer.append(i)
            taken.add(i)
    if len(answer) < size:
        owners = book.owners()
        for i in sorted(available, key=id_order):
            if len(answer) >= size:
                break
            if i not in taken and i not in owners:
                answer.append(i)
                taken.add(i)
    return answer[:size] if len(answer) >= size else answer


def _preferred_again(book: Book, available: set[str], must: set[str], size: int) -> list[str]:
    """A running container's own IDs when the kubelet offers all of them again (it lost its device checkpoint).

    Only when every running pod of that request is interchangeable, as Allocate requires (``_running``).
    """
    candidates = book.rerunning(size)
    if not candidates or len({shape(e) for e in candidates}) > 1:
        return []
    for e in candidates:
        if not must <= e.reserved() | e.held():
            continue
        expected = {c.name: c.device_ids for c in e.assignment.containers} if e.assignment else {}
        for c in e.pod.gpu_containers:
            ids = e.served.get(c.name) or expected.get(c.name, ())
            if c.cores == size and len(ids) == size and set(ids) <= available:
                return list(ids) + sorted(e.reserved(), key=id_order)
    return []


def identify(book: Book, ids: list[str], kubelet: KubeletHoldings | None) -> Match | Refusal:
    """The pod and container the kubelet allocates for, and whether that container was allocated before."""
    size = len(ids)
    idset = set(ids)
    waiting = book.waiting_for(size)
    overlapping = sorted(
        ((len(idset & e.reserved()), e) for e in waiting if idset & e.reserved()),
        key=lambda t: (-t[0], t[1].assignment.assigned_at if t[1].assignment else "", t[1].key),
    )
    chosen: PodEntry | None = None
    if overlapping:
        top = [e for n, e in overlapping if n == overlapping[0][0]]
        if len({shape(e) for e in top}) > 1:
            return Refusal(AMBIGUOUS, _ambiguous(size, top), tuple(e.key for e in top))
        chosen = top[0]
    elif waiting:
        if len({shape(e) for e in waiting}) > 1:
            return Refusal(AMBIGUOUS, _ambiguous(size, waiting), tuple(e.key for e in waiting))
        chosen = min(waiting, key=lambda e: (e.assignment.assigned_at if e.assignment else "", e.key))
    if chosen is None:
        return _running(book, ids, kubelet) or _why_nobody(book, ids)
    container = next(c for c in chosen.unserved() if c.cores == size)
    return chosen, container, False


def _running(book: Book, ids: list[str], kubelet: KubeletHoldings | None) -> Match | Refusal | None:
    """A container of a running pod allocated again: the IDs lie in that pod's reservation (None: no such pod).

    Served only when the kubelet holds none of the IDs (it lost its record: otherwise it would not hand
    them out) and no other running pod of that request could be the one meant (all interchangeable):
    the kubelet names no pod, and serving one pod's share to another would book one slice twice.
    Refusals here name no pod: a phase `failed:` on a running pod would be false.
    """
    size, idset = len(ids), set(ids)
    candidates = book.rerunning(size)
    owner = next((e for e in candidates if idset <= e.reserved() | e.held()), None)
    if owner is None:
        return None
    if len({shape(e) for e in candidates}) > 1:
        names = ", ".join(e.key for e in candidates[:4])
        return Refusal(AMBIGUOUS, f"the kubelet allocates a running container again (it lost its device "
                       f"checkpoint) and cannot be told which pod it is: {names} all run containers of "
                       f"{size} vgpu-core with different reservations", tuple(e.key for e in candidates))
    if kubelet is None:
        return Refusal(UNCONFIRMED, f"pod {owner.key} runs with these devices already, and the kubelet's "
                       "PodResources cannot be asked whether it still holds them")
    held_by = {i: key for key, containers in kubelet.items() for held in containers.values() for i in held}
    busy = sorted((i for i in ids if i in held_by), key=id_order)
    if busy:
        return Refusal(UNSAFE, f"device {busy[0]} is held by pod {held_by[busy[0]]} (the kubelet's PodResources); "
                       f"pod {owner.key} runs with these devices already")
    sized = [c for c in owner.pod.gpu_containers if c.cores == size]
    expected = {s.name: set(s.device_ids) for s in owner.assignment.containers} if owner.assignment else {}
    container = (next((c for c in sized if set(owner.served.get(c.name, ())) == idset), None)
                 or next((c for c in sized if expected.get(c.name) == idset), None)
                 or sized[0])
    return owner, container, True


def _why_nobody(book: Book, ids: list[str]) -> Refusal:
    size = len(ids)
    idset = set(ids)
    # a pod that would have matched but cannot be served: say why on that pod
    blocked = [e for e in book.entries.values()
               if not e.pod.terminated and e.invalid and any(c.cores == size for c in e.unserved())]
    if blocked:
        e = blocked[0]
        code = NO_RESERVATION if e.assignment is None and "missing" in e.invalid else BAD_RESERVATION
        return Refusal(code, f"pod {e.key}: {e.invalid}", tuple(b.key for b in blocked))
    owners = [e for e in book.entries.values() if e.usable and idset & e.reserved()]
    if owners:
        e = owners[0]
        phase = e.current_phase
        if phase.startswith(PHASE_FAILED_PREFIX):  # no pod named: its phase says it already
            return Refusal(UNSAFE, f"pod {e.key} reserved these devices but was refused before "
                           f"({ANN_PHASE} {phase})")
        sizes = sorted({c.cores for c in e.unserved()})
        if sizes and phase != PHASE_ALLOCATED:
            asks = ", ".join(map(str, sizes))
            return Refusal(WRONG_SIZE, f"pod {e.key} reserved these devices but none of its waiting containers "
                           f"asks for {size} vgpu-core (they ask for {asks})", (e.key,))
        # the pod runs: refusals name no pod (a phase `failed:` on it would be false)
        if not any(c.cores == size for c in e.pod.gpu_containers):
            asks = ", ".join(map(str, sorted({c.cores for c in e.pod.gpu_containers})))
            return Refusal(WRONG_SIZE, f"pod {e.key} reserved these devices but none of its containers asks for "
                           f"{size} vgpu-core (they ask for {asks})")
        return Refusal(UNSAFE, f"pod {e.key} reserved some of these devices and runs already; the others are "
                       "not in its reservation")
    running = book.rerunning(size)
    if running:
        names = ", ".join(e.key for e in running[:4])
        return Refusal(NO_RESERVATION, f"no pod on node {book.node} waits for {size} vgpu-core, and these devices "
                       f"are in no running pod's reservation (running: {names}; a kubelet that lost its device "
                       "checkpoint allocates running containers again)")
    return Refusal(NO_RESERVATION, f"no pod on node {book.node} waits for {size} vgpu-core with a reservation "
                   f"written by the extender (annotation {ANN_ASSIGNED})")


def _ambiguous(size: int, entries: list[PodEntry]) -> str:
    names = ", ".join(e.key for e in entries[:4])
    return (f"cannot tell which pod the kubelet admits: {names} all wait for {size} vgpu-core with "
            "different reservations")

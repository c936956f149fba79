"""Reconcile the ledger against the kubelet's PodResources: the kubelet is the truth about holdings. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from fracgpu.api.v1beta1.names import PHASE_ALLOCATED, PHASE_ALLOCATING
from fracgpu.deviceplugin.ledger.book import Book
from fracgpu.deviceplugin.ledger.grant import place
from fracgpu.deviceplugin.ledger.records import PodEntry, Refusal, Repair


def reconcile(book: Book, holdings: Mapping[str, Mapping[str, tuple[str, ...]]]) -> list[Repair]:
    """Adopt the kubelet's record of which container holds which IDs (pod key -> container -> IDs).

    Served containers follow the kubelet (an Allocate taken for an interchangeable pod is swapped
    back), and reservations follow the holdings.
    """
    repairs: list[Repair] = []
    held_by = {i: key for key, cs in holdings.items() for ids in cs.values() for i in ids}
    # 1. served containers follow the kubelet
    e: PodEntry | None
    for e in book.entries.values():
        kubelet = holdings.get(e.key)
        if kubelet is not None and e.usable:
            e.served.update({name: tuple(ids) for name, ids in kubelet.items()})
        lost = [n for n, ids in e.served.items() if any(held_by.get(i, e.key) != e.key for i in ids)]
        for n in lost:
            del e.served[n]
        if lost and e.current_phase == PHASE_ALLOCATED and e.unserved():
            e.phase = PHASE_ALLOCATING
            repairs.append(Repair(e.key, "swapped", "the kubelet gave its devices to an interchangeable pod",
                                  phase=PHASE_ALLOCATING))
        elif (not lost and kubelet is None and not e.served and e.usable
              and e.current_phase == PHASE_ALLOCATED and e.unserved()
              and any(held_by.get(i, e.key) != e.key for i in e.reserved())):
            # The same, seen after a restart (the plugin that served the Allocate died before its
            # cross-check): marked allocated, holds nothing, and another pod holds its reserved IDs,
            # so the kubelet never admitted it. Its Allocate is still to come.
            e.phase = PHASE_ALLOCATING
            repairs.append(Repair(e.key, "swapped", "marked allocated, but the kubelet holds nothing of it "
                                  "and gave its reserved devices to another pod", phase=PHASE_ALLOCATING))
    # 2. holders we cannot account for keep their devices
    book.foreign = {}
    for key, containers in sorted(holdings.items()):
        e = book.entries.get(key)
        if e is not None and e.usable:
            continue
        ids = {i for c in containers.values() for i in c}
        for i in ids:
            book.foreign[i] = key
        if e is None or not e.pod.terminated:
            why = "unknown to the API server" if e is None else e.invalid
            repairs.append(Repair(key, "unreserved-holder", f"holds {len(ids)} devices; {why}"))
    # 3. reservations follow the holdings
    for key in sorted(holdings):
        e = book.entries.get(key)
        if e is None or not e.usable or e.held() <= e.reserved():
            continue
        placed = place(book, e, [])
        if isinstance(placed, Refusal):
            repairs.append(Repair(key, "conflict", placed.reason))
            continue
        for k, a in placed[1]:
            book.entries[k].assignment = a
            book.entries[k].pending = a.to_json()
            repairs.append(Repair(k, "moved", "reservation follows the kubelet's devices", a))
    # 4. pods whose every GPU container holds its devices are allocated
    for key in sorted(holdings):
        e = book.entries.get(key)
        if e is not None and e.usable and not e.unserved() and e.current_phase != PHASE_ALLOCATED:
            e.phase = PHASE_ALLOCATED
            repairs.append(Repair(key, "phase", "every GPU container holds its devices", phase=PHASE_ALLOCATED))
    return repairs

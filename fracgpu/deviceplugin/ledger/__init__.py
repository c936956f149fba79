"""Which pod holds which device IDs on this node: the plugin's reservation ledger.

Modules: `records` (answers, entries), `book` (the records kept in step with the API server),
`match` (which pod a call is for), `grant` (the placement of a container's grant and the moves it
makes), `room` (room on a GPU), `holdings` (reconcile against PodResources); `Ledger` here ties them
to the kubelet's calls.

Pure: no I/O, no clock, no logging. The servicer feeds it pods (from the API server), the
kubelet's holdings (from PodResources) and the kubelet's calls, and carries out what it returns.

Two facts are kept apart:

- *reservations*: the device IDs the extender reserved for a pod (annotation fracgpu.io/assigned),
  possibly moved by this plugin when the kubelet handed over other IDs;
- *holdings*: the IDs the kubelet actually gave to a pod's containers (Allocate calls served here,
  and the kubelet's PodResources List, which survives a plugin restart).

How a call is matched to a pod (docs/architecture.md, flow step 5): the kubelet does not name the pod, so the
ledger identifies it by construction. Reserved IDs belong to exactly one pod, so IDs inside one
pod's reservation name that pod. When the kubelet chose other IDs, the pod is the one waiting
(`allocating`, a container not served yet) whose container asks for exactly that many IDs; the
extender never leaves two confusable such pods on one node, and interchangeable ones (same
shape on the same GPUs) may be taken in either order.

A kubelet that lost its device checkpoint calls Allocate again for containers that already run
(at their restart). Such a call is served from the running pod's own reservation when its IDs lie
inside that reservation, the kubelet's PodResources confirms that it holds none of them any more,
and no other running pod of the same request could be the one meant.

Allocate is the last line: before a pod is served, each of its GPUs must have room for its
reservation next to the pods already admitted there (cores and VRAM).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from fracgpu.api.v1beta1.names import PHASE_ALLOCATED
from fracgpu.core.inventory import split_device_id
from fracgpu.core.request import ContainerDemand
from fracgpu.deviceplugin.ledger import match
from fracgpu.deviceplugin.ledger.book import Book
from fracgpu.deviceplugin.ledger.grant import Placed, limits, place
from fracgpu.deviceplugin.ledger.holdings import reconcile
from fracgpu.deviceplugin.ledger.records import (
    AMBIGUOUS,
    BAD_RESERVATION,
    INVALID,
    NO_RESERVATION,
    OVERBOOKED,
    QUOTA,
    UNCONFIRMED,
    UNSAFE,
    WRONG_SIZE,
    Admit,
    GpuLimit,
    Grant,
    KubeletHoldings,
    PodEntry,
    Refusal,
    Repair,
)
from fracgpu.deviceplugin.ledger.room import overbooked

__all__ = [
    "AMBIGUOUS", "BAD_RESERVATION", "INVALID", "NO_RESERVATION", "OVERBOOKED", "QUOTA", "UNCONFIRMED", "UNSAFE",
    "WRONG_SIZE", "Admit", "GpuLimit", "Grant", "KubeletHoldings", "Ledger", "PodEntry", "Refusal", "Repair",
]


class Ledger(Book):
    """The records (`Book`) and what the servicer asks of them: the kubelet's three calls and PodResources."""

    # --- GetPreferredAllocation ---

    def waiting(self, size: int) -> bool:
        """Some pod waits for a container of `size` devices."""
        return bool(self.waiting_for(size))

    def preferred(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        """The reserved IDs of the pod being admitted; a fair guess when no pod matches (advisory only)."""
        return match.preferred(self, available, must_include, size)

    # --- Allocate ---

    def allocate(self, ids: list[str], admit: Admit | None = None,
                 kubelet: KubeletHoldings | None = None) -> Grant | Refusal:
        """Serve one container's Allocate, or say why not. Commits on success.

        `admit(pod key, reservation)` is asked once per pod, at its first container (the tenant
        quota re-check); a reason refuses the pod. `kubelet` is a fresh PodResources answer, needed
        only to serve a running container again (refusal code UNCONFIRMED without it).
        """
        malformed = self._malformed(ids)
        if malformed is not None:
            return malformed
        pick = match.identify(self, ids, kubelet)
        if isinstance(pick, Refusal):
            return pick
        entry, container, again = pick
        if admit is not None and not again and not entry.served and entry.assignment is not None:
            why = admit(entry.key, entry.assignment)
            if why is not None:
                return Refusal(QUOTA, why, (entry.key,))
        before = entry.served.pop(container.name, None)  # a container allocated again gives up its old IDs
        placed = self._place_with_room(entry, ids, container.name)
        if isinstance(placed, Refusal):
            if before is not None:
                entry.served[container.name] = before
            # a running pod's refusal names no pod: a phase `failed:` on it would be false
            return replace(placed, pods=()) if again else placed
        return self._commit(entry, container, ids, placed, again)

    def _malformed(self, ids: list[str]) -> Refusal | None:
        bad = [i for i in ids if (s := split_device_id(i)) is None or s[0] not in self.gpus]
        if bad:
            return Refusal(INVALID, f"unknown device IDs {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
        if len(set(ids)) != len(ids):
            return Refusal(INVALID, "a device ID appears twice in one container request")
        if not ids:
            return Refusal(INVALID, "empty container request")
        return None

    def _place_with_room(self, entry: PodEntry, ids: list[str], container: str) -> Placed | Refusal:
        """The placement, if the reservation it ends in has room next to the pods admitted on its GPUs."""
        placed = place(self, entry, ids, container)
        if isinstance(placed, Refusal):
            return placed
        over = overbooked(self, entry, placed[0])
        return Refusal(OVERBOOKED, over, (entry.key,)) if over else placed

    def _commit(self, entry: PodEntry, container: ContainerDemand, ids: list[str], placed: Placed,
                again: bool) -> Grant:
        new_assignment, moved = placed
        entry.served[container.name] = tuple(ids)
        for key, a in moved:
            e = self.entries[key]
            e.assignment = a
            e.pending = a.to_json()
        done = not entry.unserved() and entry.current_phase != PHASE_ALLOCATED
        if done:
            entry.phase = PHASE_ALLOCATED
        assert entry.assignment is not None
        return Grant(
            pod=entry.key,
            uid=entry.pod.uid,
            container=container.name,
            device_ids=tuple(ids),
            limits=limits(self, container, ids, new_assignment),
            moved=moved,
            pod_done=done,
            again=again,
        )

    # --- PodResources reconciliation ---

    def reconcile(self, holdings: Mapping[str, Mapping[str, tuple[str, ...]]]) -> list[Repair]:
        """Adopt the kubelet's record of which container holds which IDs (pod key -> container -> IDs).

        The kubelet is the truth about holdings: served containers follow it (an Allocate taken for
        an interchangeable pod is swapped back), and reservations follow the holdings.
        """
        return reconcile(self, holdings)

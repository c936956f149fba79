"""The assume state machine: each pod's reservation (its hold), the device IDs held on each GPU, and
the binds whose outcome is not known yet.

A reservation's life follows kube-scheduler's cache (pkg/scheduler/backend/cache: AssumePod,
FinishBinding, ForgetPod, the expiry of assumed pods), adapted to a Binding that may time out and
still land (docs/extender.md "Bind"):

- `assume` (the bind chose the node): assumed, one Binding in flight;
- `resend` (a retry of that bind while the outcome is not known): the very same Binding once more;
- `confirm` (the Binding returned success): bound; never expired from now on;
- `failed` with a definite refusal and no other Binding of it in flight or of unknown outcome:
  the caller releases it; with an unknown outcome: assumed, the TTL counting from now;
- `abandon` (the Binding was never sent): as a definite refusal;
- `expired`: assumed holds nothing resolved within the TTL (the caller releases them);
- the watch showing the pod bound with its reservation replaces the hold (`put`): no longer ours.

Bookkeeping only: the caller (the Scheduler) holds the lock; no I/O, no nodes, no quota here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.core.inventory import split_device_id


class BindRefused(Exception):
    """The pod cannot be reserved on the node; the message is returned to kube-scheduler."""


@dataclass(frozen=True, slots=True)
class GpuHold:
    uuid: str
    cores: int
    memory: int
    ids: int  # bit k set = device id <uuid>::<k> reserved


def gpu_holds(a: Assignment) -> tuple[GpuHold, ...]:
    out: list[GpuHold] = []
    for g in a.gpus:
        mask = 0
        for i in g.device_ids:
            parsed = split_device_id(i)
            if parsed is not None:
                mask |= 1 << parsed[1]
        out.append(GpuHold(g.uuid, g.cores, g.memory, mask))
    return tuple(out)


@dataclass(slots=True)
class Hold:
    """A pod's reservation, compact: 40,000 pods must not cost 40,000 x 50 device-id strings."""

    node: str
    gpus: tuple[GpuHold, ...]
    uid: str = ""  # the pod instance it is for ("" = not known)
    # set while the outcome of our Binding is not known: in flight, or it ended without a definite
    # answer (then the time it ended: the assume TTL counts from there)
    assumed_at: float | None = None
    assignment: Assignment | None = None  # kept only while assumed (identifies the bind; a retry re-sends it)
    inflight: int = 0  # Binding requests for this reservation running now
    unknown: bool = False  # an earlier Binding for it ended with an unknown outcome (it may still land)
    ours: bool = False  # taken by our bind, and the watch has not shown the pod bound yet


class Failure(Enum):
    """What a failed Binding means for its reservation."""

    STALE = "stale"  # not this reservation any more (released, or taken again since)
    RELEASE = "release"  # definitely refused and nothing else may land: give it back
    UNKNOWN = "unknown"  # this one may have landed: kept assumed, TTL from now
    MAY_LAND = "may_land"  # refused, but an earlier Binding of it may still land: kept


class Holds:
    """Every pod's hold, the device-ID masks per GPU, and the assumed set (lock held by the caller)."""

    def __init__(self) -> None:
        self._by_pod: dict[str, Hold] = {}
        # (node, GPU uuid) -> bit mask of device indices reserved. A GPU is (node, uuid): UUIDs are
        # unique on real hardware but not in a simulated fleet or a cloned VM image
        self._ids: dict[tuple[str, str], int] = {}
        self._assumed: set[str] = set()  # pods whose Binding's outcome is not known yet

    def get(self, key: str) -> Hold | None:
        return self._by_pod.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._by_pod

    def __len__(self) -> int:
        return len(self._by_pod)

    def __iter__(self) -> Iterator[Hold]:
        return iter(self._by_pod.values())

    @property
    def assumed(self) -> int:
        return len(self._assumed)

    def ids_on(self, node: str, uuid: str) -> int:
        """The device indices held on GPU `uuid` of `node`, as a bit mask."""
        return self._ids.get((node, uuid), 0)

    def put(self, key: str, hold: Hold) -> None:
        """The pod's hold from now on (an earlier one is dropped first)."""
        self.drop(key)
        self._by_pod[key] = hold
        if hold.assumed_at is not None:
            self._assumed.add(key)
        for g in hold.gpus:
            gpu = (hold.node, g.uuid)
            self._ids[gpu] = self._ids.get(gpu, 0) | g.ids

    def drop(self, key: str) -> Hold | None:
        """Forget the pod's hold and free its device IDs."""
        hold = self._by_pod.pop(key, None)
        self._assumed.discard(key)
        if hold is None:
            return None
        for g in hold.gpus:
            gpu = (hold.node, g.uuid)
            left = self._ids.get(gpu, 0) & ~g.ids
            if left:
                self._ids[gpu] = left
            else:
                self._ids.pop(gpu, None)
        return hold

    # ---- transitions ------------------------------------------------------------------------------
    def assume(self, key: str, assignment: Assignment, uid: str, now: float) -> Hold:
        hold = Hold(assignment.node, gpu_holds(assignment), uid=uid, assumed_at=now, assignment=assignment,
                    inflight=1, ours=True)
        self.put(key, hold)
        return hold

    def resend(self, key: str, node: str, uid: str) -> Assignment | None:
        """A bind of a pod that already holds a reservation: None when it is known bound there (a
        repeated bind: nothing to write), else the assignment to send again. Raises BindRefused."""
        hold = self._by_pod[key]
        if hold.node != node:
            raise BindRefused(f"pod {key} is already reserved on node {hold.node}")
        if hold.uid and uid != hold.uid:
            raise BindRefused(f"pod {key} is reserved on node {hold.node} for uid {hold.uid}, the bind "
                              f"names uid {uid}: a recreated pod is placed once the old one is gone")
        if hold.assumed_at is None:
            return None
        # the outcome of our Binding is not known (in flight, or it timed out): send the very same
        # Binding again; it lands once (a second one is a 409 the writer knows as its own)
        assert hold.assignment is not None
        hold.inflight += 1
        return hold.assignment

    def confirm(self, key: str, assignment: Assignment | None = None) -> None:
        hold = self._by_pod.get(key)
        if hold is None or (assignment is not None and hold.assignment is not assignment):
            return
        hold.inflight = max(0, hold.inflight - 1)
        hold.assumed_at = None
        hold.assignment = None
        hold.unknown = False
        self._assumed.discard(key)

    def failed(self, key: str, assignment: Assignment, *, unknown: bool, now: float) -> Failure:
        hold = self._by_pod.get(key)
        if hold is None or hold.assignment is not assignment:
            return Failure.STALE
        hold.inflight = max(0, hold.inflight - 1)
        if unknown:
            hold.unknown = True
            hold.assumed_at = now
            self._assumed.add(key)
            return Failure.UNKNOWN
        if not hold.unknown and not hold.inflight:
            return Failure.RELEASE
        return Failure.MAY_LAND

    def abandon(self, key: str, assignment: Assignment) -> bool:
        """This attempt's Binding was not sent, or was refused: whether the caller must release the
        reservation (it is still that reservation, and no other Binding of it may still land)."""
        hold = self._by_pod.get(key)
        if hold is None or hold.assignment is not assignment:
            return False
        hold.inflight = max(0, hold.inflight - 1)
        return not hold.unknown and not hold.inflight

    def expired(self, now: float, ttl_s: float) -> list[str]:
        """Assumed holds whose Binding ended with an unknown outcome more than `ttl_s` ago and that
        nothing resolved (the watch never showed the pod bound, no retry landed): the write was
        lost. A Binding in flight never expires: the writer's timeout ends it first."""
        out: list[str] = []
        for key in self._assumed:
            hold = self._by_pod[key]
            if hold.inflight == 0 and hold.assumed_at is not None and now - hold.assumed_at > ttl_s:
                out.append(key)
        return out

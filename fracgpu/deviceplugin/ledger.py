"""Which pod holds which device IDs on this node: the plugin's reservation ledger.

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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import (
    ANN_ASSIGNED,
    ANN_PHASE,
    CORES_PER_GPU,
    PHASE_ALLOCATED,
    PHASE_ALLOCATING,
    PHASE_FAILED_PREFIX,
    device_id,
)
from fracgpu.core.inventory import split_device_id
from fracgpu.core.quantity import format_bytes
from fracgpu.core.request import ContainerDemand
from fracgpu.deviceplugin.pods import NodePod

# Refusal codes: how the servicer answers (gRPC status) and what the metric label says.
INVALID = "invalid"  # the request itself is malformed (unknown or repeated IDs): INVALID_ARGUMENT
NO_RESERVATION = "no-reservation"
BAD_RESERVATION = "bad-reservation"
AMBIGUOUS = "ambiguous"
WRONG_SIZE = "wrong-size"
UNSAFE = "unsafe"
QUOTA = "quota"
OVERBOOKED = "overbooked"  # the GPU's admitted pods leave no room for the pod's reservation
UNCONFIRMED = "unconfirmed"  # a running container allocated again: ask the kubelet's PodResources first

KubeletHoldings = Mapping[str, Mapping[str, tuple[str, ...]]]  # pod key -> container -> IDs (PodResources)


Admit = Callable[[str, Assignment], "str | None"]


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    reason: str
    pods: tuple[str, ...] = ()  # keys of the pods the refusal concerns (an Event goes to each)


@dataclass(frozen=True, slots=True)
class GpuLimit:
    gpu: GpuInfo
    cores: int  # vgpu-core of this GPU the container gets (100 = whole)
    memory: int  # VRAM bytes on this GPU


@dataclass(frozen=True, slots=True)
class Grant:
    """Allocate's answer for one container."""

    pod: str
    uid: str
    container: str
    device_ids: tuple[str, ...]
    limits: tuple[GpuLimit, ...]  # one per visible GPU, in index order
    moved: tuple[tuple[str, Assignment], ...] = ()  # (pod key, new reservation) to record
    pod_done: bool = False  # every GPU container of the pod is served now: mark it allocated
    again: bool = False  # a container of a running pod, allocated once more (the kubelet lost its record)


@dataclass(frozen=True, slots=True)
class Repair:
    pod: str
    kind: str  # "moved" | "swapped" | "unreserved-holder" | "conflict" | "phase"
    detail: str
    assignment: Assignment | None = None  # the corrected reservation to record, if any
    phase: str = ""  # the phase to record, if any


@dataclass(slots=True)
class PodEntry:
    pod: NodePod
    assignment: Assignment | None
    invalid: str = ""  # why the reservation cannot be used; "" when it can
    checked: str = ""  # the part of `invalid` that depends on this pod alone (not on overlaps)
    served: dict[str, tuple[str, ...]] = field(default_factory=dict)  # container -> IDs the kubelet gave
    pending: str | None = None  # JSON of a reservation we moved and have not seen written back yet
    phase: str | None = None  # a phase we decided and have not seen written back yet
    key: str = field(default="", init=False)
    _ids_of: Assignment | None = field(default=None, init=False, repr=False, compare=False)
    _ids: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.key = self.pod.key

    @property
    def current_phase(self) -> str:
        return self.phase if self.phase is not None else self.pod.phase

    @property
    def usable(self) -> bool:
        return self.assignment is not None and not self.invalid and not self.pod.terminated

    def reserved(self) -> frozenset[str]:
        a = self.assignment
        if a is None or self.invalid:
            return frozenset()
        if self._ids_of is not a:  # cached per assignment object (a move replaces the object)
            self._ids_of, self._ids = a, a.device_ids
        return self._ids

    def held(self) -> set[str]:
        return {i for ids in self.served.values() for i in ids}

    def unserved(self) -> list[ContainerDemand]:
        return [c for c in self.pod.gpu_containers if c.name not in self.served]


class Ledger:
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

    def _owners(self) -> dict[str, str]:
        return {i: e.key for e in self.entries.values() if e.usable for i in e.reserved()}

    def _holders(self) -> dict[str, str]:
        held = dict(self.foreign)
        for e in self.entries.values():
            for i in e.held():
                held[i] = e.key
        return held

    # --- GetPreferredAllocation ---

    def waiting(self, size: int) -> bool:
        """Some pod waits for a container of `size` devices."""
        return any(e.usable and _admitting(e) and any(c.cores == size for c in e.unserved())
                   for e in self.entries.values())

    def preferred(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        """The reserved IDs of the pod being admitted; a fair guess when no pod matches (advisory only)."""
        avail_set = set(available)
        must = list(dict.fromkeys(must_include))
        best: PodEntry | None = None
        best_score = -1
        must_set = set(must)
        for e in self.entries.values():
            if not e.usable or not _admitting(e) or not any(c.cores == size for c in e.unserved()):
                continue
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
            order = list(expected) + sorted(best.reserved(), key=_id_order)
        else:
            order = self._preferred_again(avail_set, must_set, size)
        for i in order:
            if len(answer) >= size:
                break
            if i in avail_set and i not in taken:
                answer.append(i)
                taken.add(i)
        if len(answer) < size:
            owners = self._owners()
            for i in sorted(available, key=_id_order):
                if len(answer) >= size:
                    break
                if i not in taken and i not in owners:
                    answer.append(i)
                    taken.add(i)
        return answer[:size] if len(answer) >= size else answer

    def _preferred_again(self, available: set[str], must: set[str], size: int) -> list[str]:
        """A running container's own IDs when the kubelet offers all of them again (it lost its device checkpoint).

        Only when every running pod of that request is interchangeable, as Allocate requires (``_running``).
        """
        candidates = self._rerunning(size)
        if not candidates or len({_shape(e) for e in candidates}) > 1:
            return []
        for e in candidates:
            if not must <= e.reserved() | e.held():
                continue
            expected = {c.name: c.device_ids for c in e.assignment.containers} if e.assignment else {}
            for c in e.pod.gpu_containers:
                ids = e.served.get(c.name) or expected.get(c.name, ())
                if c.cores == size and len(ids) == size and set(ids) <= available:
                    return list(ids) + sorted(e.reserved(), key=_id_order)
        return []

    # --- Allocate ---

    def allocate(self, ids: list[str], admit: Admit | None = None,
                 kubelet: KubeletHoldings | None = None) -> Grant | Refusal:
        """Serve one container's Allocate, or say why not. Commits on success.

        `admit(pod key, reservation)` is asked once per pod, at its first container (the tenant
        quota re-check); a reason refuses the pod. `kubelet` is a fresh PodResources answer, needed
        only to serve a running container again (refusal code UNCONFIRMED without it).
        """
        bad = [i for i in ids if (s := split_device_id(i)) is None or s[0] not in self.gpus]
        if bad:
            return Refusal(INVALID, f"unknown device IDs {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
        if len(set(ids)) != len(ids):
            return Refusal(INVALID, "a device ID appears twice in one container request")
        if not ids:
            return Refusal(INVALID, "empty container request")
        pick = self._identify(ids, kubelet)
        if isinstance(pick, Refusal):
            return pick
        entry, container, again = pick
        if admit is not None and not again and not entry.served and entry.assignment is not None:
            why = admit(entry.key, entry.assignment)
            if why is not None:
                return Refusal(QUOTA, why, (entry.key,))
        before = entry.served.pop(container.name, None)  # a container allocated again gives up its old IDs
        placed = self._place(entry, ids, container.name)
        if not isinstance(placed, Refusal):
            over = self._overbooked(entry, placed[0])
            if over:
                placed = Refusal(OVERBOOKED, over, (entry.key,))
        if isinstance(placed, Refusal):
            if before is not None:
                entry.served[container.name] = before
            # a running pod's refusal names no pod: a phase `failed:` on it would be false
            return replace(placed, pods=()) if again else placed
        new_assignment, moved = placed
        # commit
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
            limits=self._limits(entry, container, ids, new_assignment),
            moved=moved,
            pod_done=done,
            again=again,
        )

    def _identify(self, ids: list[str],
                  kubelet: KubeletHoldings | None) -> tuple[PodEntry, ContainerDemand, bool] | Refusal:
        """The pod and container the kubelet allocates for, and whether that container was allocated before."""
        size = len(ids)
        idset = set(ids)
        waiting = [e for e in self.entries.values()
                   if e.usable and _admitting(e) and any(c.cores == size for c in e.unserved())]
        overlapping = sorted(
            ((len(idset & e.reserved()), e) for e in waiting if idset & e.reserved()),
            key=lambda t: (-t[0], t[1].assignment.assigned_at if t[1].assignment else "", t[1].key),
        )
        chosen: PodEntry | None = None
        if overlapping:
            top = [e for n, e in overlapping if n == overlapping[0][0]]
            if len({_shape(e) for e in top}) > 1:
                return Refusal(AMBIGUOUS, _ambiguous(size, top), tuple(e.key for e in top))
            chosen = top[0]
        elif waiting:
            if len({_shape(e) for e in waiting}) > 1:
                return Refusal(AMBIGUOUS, _ambiguous(size, waiting), tuple(e.key for e in waiting))
            chosen = min(waiting, key=lambda e: (e.assignment.assigned_at if e.assignment else "", e.key))
        if chosen is None:
            return self._running(ids, kubelet) or self._why_nobody(ids)
        container = next(c for c in chosen.unserved() if c.cores == size)
        return chosen, container, False

    def _rerunning(self, size: int) -> list[PodEntry]:
        """Pods marked allocated with a GPU container of `size`: the kubelet may allocate any of them again."""
        return [e for e in self.entries.values() if e.usable and e.current_phase == PHASE_ALLOCATED
                and any(c.cores == size for c in e.pod.gpu_containers)]

    def _running(self, ids: list[str],
                 kubelet: KubeletHoldings | None) -> tuple[PodEntry, ContainerDemand, bool] | Refusal | None:
        """A container of a running pod allocated again: the IDs lie in that pod's reservation (None: no such pod).

        Served only when the kubelet holds none of the IDs (it lost its record: otherwise it would not hand
        them out) and no other running pod of that request could be the one meant (all interchangeable):
        the kubelet names no pod, and serving one pod's share to another would book one slice twice.
        Refusals here name no pod: a phase `failed:` on a running pod would be false.
        """
        size, idset = len(ids), set(ids)
        candidates = self._rerunning(size)
        owner = next((e for e in candidates if idset <= e.reserved() | e.held()), None)
        if owner is None:
            return None
        if len({_shape(e) for e in candidates}) > 1:
            names = ", ".join(e.key for e in candidates[:4])
            return Refusal(AMBIGUOUS, f"the kubelet allocates a running container again (it lost its device "
                           f"checkpoint) and cannot be told which pod it is: {names} all run containers of "
                           f"{size} vgpu-core with different reservations", tuple(e.key for e in candidates))
        if kubelet is None:
            return Refusal(UNCONFIRMED, f"pod {owner.key} runs with these devices already, and the kubelet's "
                           "PodResources cannot be asked whether it still holds them")
        held_by = {i: key for key, containers in kubelet.items() for held in containers.values() for i in held}
        busy = sorted((i for i in ids if i in held_by), key=_id_order)
        if busy:
            return Refusal(UNSAFE, f"device {busy[0]} is held by pod {held_by[busy[0]]} (the kubelet's PodResources); "
                           f"pod {owner.key} runs with these devices already")
        sized = [c for c in owner.pod.gpu_containers if c.cores == size]
        expected = {s.name: set(s.device_ids) for s in owner.assignment.containers} if owner.assignment else {}
        container = (next((c for c in sized if set(owner.served.get(c.name, ())) == idset), None)
                     or next((c for c in sized if expected.get(c.name) == idset), None)
                     or sized[0])
        return owner, container, True

    def _why_nobody(self, ids: list[str]) -> Refusal:
        size = len(ids)
        idset = set(ids)
        # a pod that would have matched but cannot be served: say why on that pod
        blocked = [e for e in self.entries.values()
                   if not e.pod.terminated and e.invalid and any(c.cores == size for c in e.unserved())]
        if blocked:
            e = blocked[0]
            code = NO_RESERVATION if e.assignment is None and "missing" in e.invalid else BAD_RESERVATION
            return Refusal(code, f"pod {e.key}: {e.invalid}", tuple(b.key for b in blocked))
        owners = [e for e in self.entries.values() if e.usable and idset & e.reserved()]
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
        running = self._rerunning(size)
        if running:
            names = ", ".join(e.key for e in running[:4])
            return Refusal(NO_RESERVATION, f"no pod on node {self.node} waits for {size} vgpu-core, and these devices "
                           f"are in no running pod's reservation (running: {names}; a kubelet that lost its device "
                           "checkpoint allocates running containers again)")
        return Refusal(NO_RESERVATION, f"no pod on node {self.node} waits for {size} vgpu-core with a reservation "
                       f"written by the extender (annotation {ANN_ASSIGNED})")

    def _place(self, entry: PodEntry, ids: list[str],
               container: str = "") -> tuple[Assignment, tuple[tuple[str, Assignment], ...]] | Refusal:
        """The pod's reservation after the container gets `ids`, and other pods' reservations it displaces."""
        a = entry.assignment
        assert a is not None
        key = entry.key
        holders = self._holders()
        for i in ids:
            h = holders.get(i)
            if h is not None and h != key:
                return Refusal(UNSAFE, f"device {i} is held by pod {h}", (key,))
        per_gpu = min(a.cores, CORES_PER_GPU) if len(a.gpus) == 1 else CORES_PER_GPU
        by_gpu: dict[str, set[str]] = {}
        for i in entry.held() | set(ids):
            by_gpu.setdefault(_gpu_of(i), set()).add(i)
        for uuid, toks in by_gpu.items():
            if len(toks) > per_gpu:
                return Refusal(UNSAFE, f"the pod would hold {len(toks)} devices of GPU {uuid} but reserved {per_gpu} "
                               "on one GPU", (key,))
        if len(by_gpu) > len(a.gpus):
            return Refusal(UNSAFE, f"the devices span {len(by_gpu)} GPUs, the pod reserved {len(a.gpus)}", (key,))
        reserved = {s.uuid: s for s in a.gpus}
        final = [s.uuid for s in a.gpus if s.uuid in by_gpu] + sorted(u for u in by_gpu if u not in reserved)
        for s in a.gpus:
            if len(final) >= len(a.gpus):
                break
            if s.uuid not in final:
                final.append(s.uuid)
        if set(final) == set(reserved) and all(by_gpu.get(u, set()) <= set(reserved[u].device_ids) for u in final):
            return a, ()  # inside the reservation: nothing moves
        owners = self._owners()
        explicit = entry.pod.memory
        shares: list[GpuShare] = []
        for uuid in final:
            gpu = self.gpus[uuid]
            if uuid in reserved:
                memory = reserved[uuid].memory
            else:
                if not gpu.healthy:
                    return Refusal(UNSAFE, f"GPU {uuid} is unhealthy", (key,))
                memory = explicit if explicit is not None else gpu.memory * per_gpu // CORES_PER_GPU
                used_cores, used_mem = self._usage(uuid, exclude=key)
                if used_cores + per_gpu > CORES_PER_GPU:
                    return Refusal(UNSAFE, f"GPU {uuid} has {CORES_PER_GPU - used_cores} vgpu-core unreserved, "
                                   f"the pod needs {per_gpu}", (key,))
                if used_mem + memory > gpu.memory:
                    return Refusal(UNSAFE, f"GPU {uuid} has {gpu.memory - used_mem} bytes of VRAM unreserved, "
                                   f"the pod needs {memory}", (key,))
            picked = sorted(by_gpu.get(uuid, set()), key=_id_order)
            chosen = set(picked)
            fill = [i for i in (reserved[uuid].device_ids if uuid in reserved else ()) if i not in chosen]
            fill += [device_id(uuid, k) for k in range(CORES_PER_GPU)]
            for i in fill:
                if len(picked) >= per_gpu:
                    break
                if i in chosen or (owners.get(i, key) != key) or (holders.get(i, key) != key):
                    continue
                picked.append(i)
                chosen.add(i)
            if len(picked) < per_gpu:
                return Refusal(UNSAFE, f"GPU {uuid} has no {per_gpu} free devices for the pod", (key,))
            shares.append(GpuShare(uuid=uuid, cores=per_gpu, memory=memory, device_ids=tuple(picked)))
        new = replace(a, gpus=tuple(shares), containers=_containers(a.containers, entry, container, ids))
        moved: list[tuple[str, Assignment]] = [(key, new)]
        # pods whose reserved (not held) IDs the kubelet gave to this pod get other free IDs of that GPU
        taken = {i for s in shares for i in s.device_ids}
        displaced: dict[str, set[str]] = {}
        for i in taken:
            o = owners.get(i)
            if o is not None and o != key:
                displaced.setdefault(o, set()).add(i)
        if displaced:
            in_use = taken | set(holders)
            in_use |= {i for o, e in self.entries.items() if e.usable and o != key for i in e.reserved()}
            for o, lost in sorted(displaced.items()):
                other = self.entries[o]
                assert other.assignment is not None
                other_shares: list[GpuShare] = []
                for s in other.assignment.gpus:
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
                moved.append((o, replace(other.assignment, gpus=tuple(other_shares),
                                         containers=tuple(replace(c, device_ids=()) for c in
                                                          other.assignment.containers))))
        return new, tuple(moved)

    def _overbooked(self, entry: PodEntry, a: Assignment) -> str:
        """Why the pod's reservation `a` does not fit next to the pods already admitted on its GPUs; "" when it fits.

        The extender checked the same at bind; this is the last line against reservations it did not
        make or made from a wrong view (e.g. two reservations of one GPU's VRAM with disjoint IDs).
        Pods reserved but not admitted yet do not count: the first admitted keeps its GPU.
        """
        for share in a.gpus:
            gpu = self.gpus[share.uuid]
            cores = memory = 0
            names: list[str] = []
            for e in self.entries.values():
                if e.key == entry.key or not e.usable or e.assignment is None or not _admitted(e):
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

    def _usage(self, uuid: str, exclude: str) -> tuple[int, int]:
        cores = memory = 0
        for e in self.entries.values():
            if e.key == exclude or not e.usable or e.assignment is None:
                continue
            for s in e.assignment.gpus:
                if s.uuid == uuid:
                    cores += s.cores
                    memory += s.memory
        return cores, memory

    def _limits(self, entry: PodEntry, container: ContainerDemand, ids: list[str],
                a: Assignment) -> tuple[GpuLimit, ...]:
        counts: dict[str, int] = {}
        for i in ids:
            counts[_gpu_of(i)] = counts.get(_gpu_of(i), 0) + 1
        shares = {s.uuid: s for s in a.gpus}
        out = []
        for uuid in sorted(counts, key=lambda u: self.gpus[u].index):
            gpu, n = self.gpus[uuid], counts[uuid]
            share = shares.get(uuid)
            if container.memory is not None:
                memory = container.memory
            elif share is not None:
                memory = share.memory * n // share.cores
            else:
                memory = gpu.memory * n // CORES_PER_GPU
            out.append(GpuLimit(gpu=gpu, cores=n, memory=memory))
        return tuple(out)

    # --- PodResources reconciliation ---

    def reconcile(self, holdings: Mapping[str, Mapping[str, tuple[str, ...]]]) -> list[Repair]:
        """Adopt the kubelet's record of which container holds which IDs (pod key -> container -> IDs).

        The kubelet is the truth about holdings: served containers follow it (an Allocate taken for
        an interchangeable pod is swapped back), and reservations follow the holdings.
        """
        repairs: list[Repair] = []
        held_by = {i: key for key, cs in holdings.items() for ids in cs.values() for i in ids}
        # 1. served containers follow the kubelet
        e: PodEntry | None
        for e in self.entries.values():
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
        self.foreign = {}
        for key, containers in sorted(holdings.items()):
            e = self.entries.get(key)
            if e is not None and e.usable:
                continue
            ids = {i for c in containers.values() for i in c}
            for i in ids:
                self.foreign[i] = key
            if e is None or not e.pod.terminated:
                why = "unknown to the API server" if e is None else e.invalid
                repairs.append(Repair(key, "unreserved-holder", f"holds {len(ids)} devices; {why}"))
        # 3. reservations follow the holdings
        for key in sorted(holdings):
            e = self.entries.get(key)
            if e is None or not e.usable or e.held() <= e.reserved():
                continue
            placed = self._place(e, [])
            if isinstance(placed, Refusal):
                repairs.append(Repair(key, "conflict", placed.reason))
                continue
            for k, a in placed[1]:
                self.entries[k].assignment = a
                self.entries[k].pending = a.to_json()
                repairs.append(Repair(k, "moved", "reservation follows the kubelet's devices", a))
        # 4. pods whose every GPU container holds its devices are allocated
        for key in sorted(holdings):
            e = self.entries.get(key)
            if e is not None and e.usable and not e.unserved() and e.current_phase != PHASE_ALLOCATED:
                e.phase = PHASE_ALLOCATED
                repairs.append(Repair(key, "phase", "every GPU container holds its devices", phase=PHASE_ALLOCATED))
        return repairs

    def written(self, key: str, text: str) -> None:
        """A reservation we moved reached the API server."""
        e = self.entries.get(key)
        if e is not None and e.pending == text:
            e.pending = None

    # --- views ---

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


def _admitted(e: PodEntry) -> bool:
    """The kubelet admitted the pod: a container holds devices, or it is marked allocated."""
    return bool(e.served) or e.current_phase == PHASE_ALLOCATED


def _admitting(e: PodEntry) -> bool:
    """The pod may still get Allocate calls: not marked allocated or failed by this plugin."""
    phase = e.current_phase
    return phase != PHASE_ALLOCATED and not phase.startswith(PHASE_FAILED_PREFIX)


def _gpu_of(i: str) -> str:
    s = split_device_id(i)
    assert s is not None
    return s[0]


def _id_order(i: str) -> tuple[str, int]:
    s = split_device_id(i)
    return (s[0], s[1]) if s is not None else (i, 0)


def _shape(e: PodEntry) -> tuple[tuple[str, int], ...]:
    """What makes two waiting pods interchangeable (as fracgpu.core.confusable): the same GPUs, same VRAM each."""
    a = e.assignment
    return tuple(sorted((s.uuid, s.memory) for s in a.gpus)) if a else ()


def _ambiguous(size: int, entries: list[PodEntry]) -> str:
    names = ", ".join(e.key for e in entries[:4])
    return (f"cannot tell which pod the kubelet admits: {names} all wait for {size} vgpu-core with "
            "different reservations")


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

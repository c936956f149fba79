"""fracgpu's DRA allocator: allocates the claims of pending pods ahead of kube-scheduler (docs/dra.md
"Placement").

For each pod whose fracgpu claims all exist and none is allocated, in queue order (priority, then age),
the allocator asks the Scheduler exactly what the extender's HTTP verbs ask: `filter` over the DRA
nodes the pod may go to (its node selector, affinity and taint tolerations), then `reserve` on the node
kept — the same ranking, quota ledger, queue and zone rules, the same assume state. Then it writes each
claim's `status.allocation` (the finalizer first, each write conditional on the resourceVersion), and
`confirm`s, or hands the outcome to `binding_failed` as bind does. kube-scheduler then finds the claims
allocated and places the pod on their node (its Filter checks the allocation's node selector).

The devices carry `allocator: fracgpu` and the DeviceClasses select only `allocator: kube-scheduler`,
so the scheduler's own allocator never takes a share of a GPU this one allocates: one allocator per
device. A refusal is told to the pod as a Warning Event (reason `FailedGPUAllocation`), once per
change of text and at most every `tell_every_s`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fracgpu.api.v1beta1.extender import ExtenderArgs, ExtenderBindingArgs
from fracgpu.core.draallocation import allocated_claim, claim_allocations, placed_on
from fracgpu.core.nodematch import nodes_unavailable, refusal_of
from fracgpu.extender.dracache import DraView, Waiting
from fracgpu.extender.metrics import ExtenderMetrics
from fracgpu.extender.scheduler import BindRefused, Scheduler
from fracgpu.kube.dralowering import obj_key
from fracgpu.kube.objects import ObjectRef

log = logging.getLogger(__name__)

EVENT_REASON = "FailedGPUAllocation"
REVOKED = "node(s) where kube-scheduler undid this pod's allocation in the last 5 minutes"
NO_NODE = ("no node labelled fracgpu.io/dra=true publishes GPUs whose allocator is fracgpu (fracgpu dra-driver "
           "--allocator)")
PARTIAL_GRACE_S = 30.0  # a pod seen half-allocated this long (and not by a write in flight) is undone
# outcomes of one pod, the label of fracgpu_extender_dra_allocations_total
ALLOCATED, REFUSED, UNREADABLE, WRITE_FAILED = "allocated", "refused", "unreadable", "write_failed"

Obj = Mapping[str, Any]


class Lead(Protocol):
    """May this replica write allocations now (extender.leader.Leadership)."""

    def can_bind(self) -> bool: ...


class ClaimWriter(Protocol):
    """fracgpu.kube.KubeWriter's claim and event writes."""

    def allocate_claim(self, claim: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]: ...

    def deallocate_claim(self, claim: Mapping[str, Any]) -> dict[str, Any]: ...

    def create_event(self, involved: ObjectRef, *, reason: str, message: str, type: str = ...,
                     action: str | None = ...) -> dict[str, Any]: ...


def _sort_key(w: Waiting) -> tuple[int, str, str]:
    spec, meta = w.raw.get("spec") or {}, w.raw.get("metadata") or {}
    priority = spec.get("priority")
    return (-(priority if isinstance(priority, int) else 0), str(meta.get("creationTimestamp") or ""), w.key)


class Allocator:
    def __init__(self, scheduler: Scheduler, view: DraView, writer: ClaimWriter, *, clock: Callable[[], float],
                 leadership: Lead | None = None, new_share_id: Callable[[], str] = lambda: str(uuid.uuid4()),
                 interval_s: float = 1.0, tell_every_s: float = 60.0, metrics: ExtenderMetrics | None = None) -> None:
        self.scheduler = scheduler
        self.view = view
        self.writer = writer
        self.clock = clock
        self.leadership = leadership
        self.new_share_id = new_share_id
        self.interval_s = interval_s
        self.tell_every_s = tell_every_s
        self.metrics = metrics
        self._told: dict[str, tuple[str, float]] = {}  # pod key -> (last text, when)
        self._partial_since: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the loop -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="extender-dra-allocator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.view.changed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.view.changed.wait(self.interval_s)
            self.view.changed.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception:  # a bug must not end allocation for good; the next pass starts afresh
                log.exception("dra allocation pass failed")

    def run_once(self) -> int:
        """One pass over the waiting pods; returns how many pods got their claims allocated."""
        if not self.scheduler.synced or (self.leadership is not None and not self.leadership.can_bind()):
            return 0
        start = time.perf_counter()
        self._undo_partial()
        done = 0
        waiting = sorted(self.view.waiting(), key=_sort_key)
        for w in waiting:
            if self._stop.is_set():
                break
            outcome = self._allocate(w)
            done += outcome == ALLOCATED
            if self.metrics is not None and outcome:
                self.metrics.dra_allocations.labels(outcome).inc()
        keys = {w.key for w in waiting}
        self._told = {k: v for k, v in self._told.items() if k in keys}  # pods gone or placed: forgotten
        if self.metrics is not None:
            self.metrics.dra_waiting.set(len(waiting) - done)
            self.metrics.dra_pass.observe(time.perf_counter() - start)
        return done

    # ---- one pod ------------------------------------------------------------------------------
    def _allocate(self, w: Waiting) -> str:
        """One pod: its outcome (a label of fracgpu_extender_dra_allocations_total), or "" when there is
        nothing to count (reserved by an earlier pass, leadership lost)."""
        if w.problem:
            self._tell(w, w.problem)
            return UNREADABLE
        refused: list[str] = []
        names: list[str] = []
        revoked = self.view.revoked(w.key)
        node_refusal = refusal_of(w.raw)
        for facts in self.view.nodes():
            why = REVOKED if facts.name in revoked else node_refusal(facts)
            (refused.append(why) if why else names.append(facts.name))
        if not names:
            self._tell(w, nodes_unavailable(refused) if refused else NO_NODE)
            return REFUSED
        result = self.scheduler.filter(ExtenderArgs(pod=w.pod, node_names=tuple(names)))
        if result.error:
            self._tell(w, result.error)
            return REFUSED
        if not result.node_names:
            self._tell(w, nodes_unavailable([*refused, *result.failed.values(), *result.unresolvable.values()]))
            return REFUSED
        node = result.node_names[0]
        meta = w.raw.get("metadata") or {}
        ns, name, uid = str(meta.get("namespace") or "default"), str(meta.get("name")), str(meta.get("uid") or "")
        try:
            a = self.scheduler.reserve(ExtenderBindingArgs(name, ns, uid, node))
        except BindRefused as e:
            self._tell(w, str(e))
            return REFUSED
        if a is None:  # reserved by an earlier pass; its claims' writes are in flight or landed
            return ""
        if self.leadership is not None and not self.leadership.can_bind():
            self.scheduler.release(w.key, a)
            return ""
        try:
            placed = placed_on([(g.uuid, g.cores, g.memory) for g in a.gpus], self.view.devices(node))
            allocations = claim_allocations(w.claims, node, placed, self.view.devices(node), self.new_share_id)
        except (KeyError, ValueError) as e:
            self.scheduler.release(w.key, a)
            log.error("dra allocation does not match the claims pod=%s node=%s error=%s", w.key, node, e)
            return WRITE_FAILED
        written: list[dict[str, Any]] = []
        try:
            for claim, allocation in zip(w.claims, allocations, strict=True):
                status = allocated_claim(claim, allocation, name, uid)["status"]
                written.append(self.writer.allocate_claim(claim, status))
        except Exception as e:
            self._roll_back(w.key, written)
            answer = self.scheduler.binding_failed(w.key, a, e)
            log.warning("dra allocation failed pod=%s node=%s error=%s", w.key, node, answer)
            return WRITE_FAILED
        self.scheduler.confirm(w.key, a)
        self._told.pop(w.key, None)
        log.info("allocated pod=%s node=%s claims=%s gpus=%s", w.key, node, [obj_key(c) for c in w.claims],
                 [g.uuid for g in a.gpus])
        return ALLOCATED

    def _roll_back(self, key: str, written: list[dict[str, Any]]) -> None:
        """Claims allocated before a later claim's write failed: cleared, so the pod is whole again."""
        for claim in written:
            self.view.clearing(obj_key(claim))
            try:
                self.writer.deallocate_claim(claim)
            except Exception as e:  # left half-allocated: _undo_partial clears it later
                log.warning("dra roll back failed pod=%s claim=%s error=%s", key, obj_key(claim), e)

    def _undo_partial(self) -> None:
        """Pods half-allocated (a write cut short by a crash or a lost leadership) for a while: their
        allocated claims are cleared, and the pod waits again as a whole."""
        now = self.clock()
        seen = set()
        for p in self.view.partial():
            seen.add(p.key)
            since = self._partial_since.setdefault(p.key, now)
            if now - since < PARTIAL_GRACE_S:
                continue
            self._roll_back(p.key, [dict(c) for c in p.allocated])
            self._partial_since.pop(p.key, None)
        for key in set(self._partial_since) - seen:
            del self._partial_since[key]

    def _tell(self, w: Waiting, text: str) -> None:
        now = self.clock()
        last = self._told.get(w.key)
        if last is not None and last[0] == text and now - last[1] < self.tell_every_s:
            return
        self._told[w.key] = (text, now)
        ref = ObjectRef.of(w.raw, kind="Pod", api_version="v1")
        log.info("dra allocation refused pod=%s reason=%s", w.key, text)
        try:
            self.writer.create_event(ref, reason=EVENT_REASON, message=text, type="Warning")
        except Exception as e:
            log.warning("event not written pod=%s error=%s", w.key, e)


__all__ = ["EVENT_REASON", "Allocator", "ClaimWriter"]

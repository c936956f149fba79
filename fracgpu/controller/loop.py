"""The controller's I/O shell: keep a cache of views, elect a leader, execute plans. Thin on purpose.

``ClusterCache`` is fed by list+watch callbacks (any thread) and hands out a consistent ``World``.
``Controller.step()`` runs one round: while this replica leads, plan (pure, ``reconcile.plan``)
and execute — taints, untaints, evictions, events — re-checking leadership before every write.
``Controller.run(stop)`` paces rounds: the elector ticks every ``retry_period``; a round runs every
``resync`` seconds or sooner when the cache changed. Tests call ``step()`` with a fake clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol, TypeVar

from fracgpu.controller import reconcile, recovery
from fracgpu.controller.config import ControllerConfig
from fracgpu.controller.dra import ControllerDra
from fracgpu.controller.metrics import ControllerMetrics
from fracgpu.controller.reconcile import EvictionOutcome, Plan, RoundState
from fracgpu.controller.views import NodeView, PodView, World, heartbeat, node_view, pod_view
from fracgpu.kube import errors, objects
from fracgpu.kube.dralowering import has_claims
from fracgpu.kube.leader import Clock, LeaderElector
from fracgpu.kube.objects import ObjectRef

log = logging.getLogger(__name__)
_K = TypeVar("_K")
_V = TypeVar("_V")


class Writer(Protocol):
    """The writes the controller makes. Raise ``fracgpu.kube.errors.KubeAPIError`` subclasses."""

    def evict(self, namespace: str, name: str, uid: str, grace_period_s: int | None) -> None: ...

    def add_taint(self, node: str, key: str, effect: str) -> None: ...

    def remove_taint(self, node: str, key: str) -> None: ...

    def record_event(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None: ...

    def create_job(self, namespace: str, body: Mapping[str, Any]) -> None: ...


class ClusterCache:
    """Nodes, fracgpu pods and heartbeat Leases as views; thread-safe; ``changed`` is set on updates."""

    def __init__(self, taint_key: str, lease_namespace: str, *, dra: bool = False) -> None:
        self.taint_key = taint_key
        self.lease_namespace = lease_namespace
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeView] = {}
        self._pods: dict[tuple[str, str], PodView] = {}
        self._beats: dict[str, str] = {}
        self._jobs: dict[tuple[str, str], tuple[str, bool]] = {}  # recovery Job -> (node, running)
        # DRA nodes and claim pods, lowered into the same views (controller/dra.py); None: --dra off
        self.dra = ControllerDra(self) if dra else None

    def _put(self, table: dict[_K, _V], key: _K, value: _V | None) -> None:
        """Set or (None) remove one entry of a table under the lock, and wake a round."""
        with self._lock:
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        self.changed.set()

    def node(self, event: str, obj: Mapping[str, Any]) -> None:
        if self.dra is not None:
            if event == "DELETED":
                self.dra.delete_node(objects.name(obj))
            elif self.dra.apply_node(obj):
                return
        view = node_view(obj, self.taint_key)
        self._put(self._nodes, view.name, None if event == "DELETED" else view)

    def pod(self, event: str, obj: Mapping[str, Any]) -> None:
        key = objects.key(obj)
        if self.dra is not None and has_claims(obj):
            if event == "DELETED":
                self.dra.delete_pod("/".join(key))
            else:
                self.dra.apply_pod(obj)
            return
        self._put(self._pods, key, None if event == "DELETED" else pod_view(obj))

    def put_node(self, view: NodeView) -> None:
        """A node's view as the DRA side lowered it."""
        self._put(self._nodes, view.name, view)

    def put_pod(self, key: str, view: PodView | None) -> None:
        """A claim pod's view as the DRA side lowered it (None: not the controller's)."""
        ns, _, name = key.partition("/")
        self._put(self._pods, (ns, name), view)

    def lease(self, event: str, obj: Mapping[str, Any]) -> None:
        if objects.meta(obj).get("namespace", self.lease_namespace) != self.lease_namespace:
            return
        beat = heartbeat(obj)
        if beat is not None:
            self._put(self._beats, beat[0], None if event == "DELETED" else beat[1])

    def job(self, event: str, obj: Mapping[str, Any]) -> None:
        self._put(self._jobs, objects.key(obj), None if event == "DELETED" else recovery.job_state(obj))

    def replace(self, kind: str, objs: list[Mapping[str, Any]]) -> None:
        """A relist: the whole set of one kind ("nodes" | "pods" | "leases" | "jobs") at once."""
        with self._lock:
            if kind == "nodes":
                self._nodes = {v.name: v for v in (node_view(o, self.taint_key) for o in objs)}
            elif kind == "pods":
                pods = (pod_view(o) for o in objs)
                self._pods = {(p.namespace, p.name): p for p in pods if p is not None}
            elif kind == "leases":
                beats = (
                    heartbeat(o)
                    for o in objs
                    if objects.meta(o).get("namespace", self.lease_namespace) == self.lease_namespace
                )
                self._beats = dict(b for b in beats if b is not None)
            elif kind == "jobs":
                states = ((objects.key(o), recovery.job_state(o)) for o in objs)
                self._jobs = {k: st for k, st in states if st is not None}
            else:
                raise ValueError(f"unknown kind {kind!r}")
        self.changed.set()

    def world(self) -> World:
        with self._lock:
            jobs: dict[str, bool] = {}
            for node, running in self._jobs.values():
                jobs[node] = jobs.get(node, False) or running
            return World(
                nodes=dict(self._nodes),
                pods=tuple(self._pods.values()),
                heartbeats=dict(self._beats),
                recovery_jobs=jobs,
            )


class Controller:
    def __init__(
        self,
        cfg: ControllerConfig,
        cache: ClusterCache,
        writer: Writer,
        elector: LeaderElector,
        clock: Clock,
        metrics: ControllerMetrics,
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.writer = writer
        self.elector = elector
        self.clock = clock
        self.metrics = metrics
        self.state = RoundState()
        self._leading = False

    def elect(self) -> bool:
        """One election tick (acquire or renew); API errors keep the current standing."""
        try:
            self.elector.tick()
        except errors.KubeAPIError as e:
            self.metrics.errors.labels("lease").inc()
            log.warning("leader lease failed error=%r", e)
        leading = self.elector.is_leader()
        if leading != self._leading:
            log.info("leadership changed leader=%s identity=%s holder=%s", leading, self.elector.identity,
                     self.elector.holder)  # fmt: skip
            self._leading = leading
        self.metrics.is_leader.set(1 if leading else 0)
        return leading

    def step(self) -> Plan | None:
        """One reconcile round; None when this replica does not lead (its state is dropped)."""
        now = self.clock.monotonic()
        if not self.elector.is_leader(now):
            self.state = RoundState()
            return None
        self.cache.changed.clear()
        p = reconcile.plan(self.cache.world(), self.state, self.cfg, now)
        self.state = p.state
        self.metrics.set_gauges(p.gauges)
        for event in p.events:
            self._event(event)
        # in this order, each only while this replica still leads (a lost Lease stops the round)
        writes: list[Callable[[], None]] = [
            *(partial(self._taint, t) for t in p.taints),
            *(partial(self._untaint, u) for u in p.untaints),
            *(partial(self._evict, a) for a in p.evictions),
            *(partial(self._start_recovery, r) for r in p.recoveries),
        ]
        for write in writes:
            if not self._still_leader():
                return p
            write()
        return p

    def _taint(self, taint: reconcile.Taint) -> None:
        try:
            self.writer.add_taint(taint.node, self.cfg.taint_key, "NoSchedule")
        except errors.KubeAPIError as e:
            self._node_write_failed("taint", taint.node, e)
            return
        self.metrics.taints.inc()
        log.warning("node tainted node=%s key=%s reason=%r", taint.node, self.cfg.taint_key, taint.reason)
        self._event(taint.event)

    def _untaint(self, untaint: reconcile.Untaint) -> None:
        try:
            self.writer.remove_taint(untaint.node, self.cfg.taint_key)
        except errors.KubeAPIError as e:
            self._node_write_failed("untaint", untaint.node, e)
            return
        self.metrics.recoveries.inc()
        log.info("node recovered node=%s key=%s reason=%r", untaint.node, self.cfg.taint_key, untaint.reason)
        self._event(untaint.event)

    def _node_write_failed(self, kind: str, node: str, e: errors.KubeAPIError) -> None:
        self.metrics.errors.labels(kind).inc()
        log.warning("%s failed node=%s error=%r", kind, node, e)

    def _start_recovery(self, action: reconcile.StartRecovery) -> None:
        template = self.cfg.recovery_job
        assert template is not None  # plan only asks for recovery Jobs when a template is set
        body = recovery.build_job(template, action.node, self.cfg.recovery_namespace, self.cfg.taint_key)
        created, detail = True, ""
        try:
            self.writer.create_job(self.cfg.recovery_namespace, body)
        except errors.KubeAPIError as e:
            created, detail = False, str(e)
        self.metrics.recovery_jobs.labels("created" if created else "error").inc()
        log_fn = log.warning if created else log.error
        log_fn("recovery job node=%s created=%s reason=%r detail=%r", action.node, created, action.reason, detail)
        self.state, events = reconcile.after_recovery(
            self.state, action, created, detail, self.cfg, self.clock.monotonic()
        )
        for event in events:
            self._event(event)

    def _evict(self, action: reconcile.Evict) -> None:
        pod = action.pod
        detail = ""
        try:
            self.writer.evict(pod.namespace, pod.name, pod.uid, self.cfg.eviction_grace_period)
            outcome = EvictionOutcome.EVICTED
        except errors.TooManyRequests as e:
            outcome, detail = EvictionOutcome.BLOCKED, e.message
        except errors.NotFound:
            outcome = EvictionOutcome.GONE
        except errors.Conflict as e:  # uid precondition: a new pod of the same name; the old one is gone
            outcome, detail = (EvictionOutcome.GONE, "") if "UID" in e.message else (EvictionOutcome.ERROR, e.message)
        except errors.KubeAPIError as e:
            outcome, detail = EvictionOutcome.ERROR, str(e)
        self.metrics.evictions.labels(outcome.value).inc()
        log_fn = log.info if outcome in (EvictionOutcome.EVICTED, EvictionOutcome.GONE) else log.warning
        log_fn("eviction pod=%s node=%s result=%s reason=%r detail=%r", pod.key, pod.node, outcome.value,
               action.reason, detail)  # fmt: skip
        self.state, events = reconcile.after_eviction(
            self.state, action, outcome, detail, self.cfg, self.clock.monotonic()
        )
        for event in events:
            self._event(event)

    def _still_leader(self) -> bool:
        if self.elector.is_leader():
            return True
        log.warning("lost leadership mid-round; the rest of the plan is dropped")
        self.state = RoundState()
        return False

    def _event(self, event: reconcile.Event) -> None:
        try:
            self.writer.record_event(event.ref, event.type, event.reason, event.message)
        except errors.KubeAPIError as e:
            self.metrics.errors.labels("event").inc()
            log.debug("event failed reason=%s error=%r", event.reason, e)
            return
        self.metrics.events.labels(event.reason).inc()

    def run(self, stop: threading.Event) -> None:
        """Elect and reconcile until ``stop`` is set; releases the Lease on the way out."""
        next_elect = next_round = self.clock.monotonic()
        try:
            while not stop.is_set():
                now = self.clock.monotonic()
                if now >= next_elect:
                    self.elect()
                    next_elect = now + self.cfg.retry_period
                if now >= next_round or self.cache.changed.is_set():
                    self.cache.changed.clear()
                    try:
                        self.step()
                    except Exception:  # a bug must not end self-heal for the cluster: log, go on
                        log.exception("reconcile round failed")
                    next_round = now + self.cfg.resync
                wait = max(0.0, min(next_elect, next_round) - self.clock.monotonic())
                if self.cache.changed.wait(min(wait, self.cfg.resync)):
                    stop.wait(0.05)  # let a burst of watch events settle into one round
        finally:
            try:
                self.elector.release()
            except errors.KubeAPIError as e:
                log.warning("releasing the leader lease failed error=%r", e)
            self.metrics.is_leader.set(0)

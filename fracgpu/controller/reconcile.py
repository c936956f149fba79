"""The controller's decisions, pure: desired actions from the observed world and the `RoundState`.

``plan(world, state, cfg, now) -> Plan`` says what to do this round (evict, taint, untaint,
events) and the state to carry to the next round; ``after_eviction`` folds the outcome of one
eviction back into the state. The I/O loop (``loop.py``) only executes plans. No clock reads, no
logging, no API access here.

Rules:

- A pod is a victim when its reservation holds a GPU that the node's inventory marks unhealthy or
  no longer lists. Only victims are evicted; other pods on the node are left alone.
- At most ``max_evictions_per_node`` victims of a node are in flight (evicted or terminating) at once.
- A refused eviction (429: a PodDisruptionBudget) or a failed one is retried with exponential backoff,
  never forced; it is reported as a Warning Event at most every ``eviction_report_interval``.
- A node is tainted when its verdict (``core.health.node_verdict``) says it is broken as a whole;
  the taint goes once the node has been seen healthy for ``taint_hold`` seconds without a break,
  and only while its plugin heartbeats (a stale node's "healthy" is not news).
- A node whose plugin Lease has not changed for ``heartbeat_grace`` seconds of our own clock is
  reported stale (once), and reported again when it comes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final

from fracgpu.controller.config import ControllerConfig
from fracgpu.controller.views import NodeView, PodView, World
from fracgpu.core.health import node_verdict
from fracgpu.kube.objects import ObjectRef
from fracgpu.kube.retry import Backoff

# Event reasons (CamelCase, as Kubernetes components write them).
EV_EVICTED: Final = "GPUUnhealthyEvicted"
EV_EVICTION_BLOCKED: Final = "GPUEvictionBlocked"
EV_EVICTION_FAILED: Final = "GPUEvictionFailed"
EV_TAINTED: Final = "GPUNodeBroken"
EV_UNTAINTED: Final = "GPUNodeRecovered"
EV_HEARTBEAT_LOST: Final = "GPUPluginHeartbeatLost"
EV_HEARTBEAT_BACK: Final = "GPUPluginHeartbeatRestored"
EV_BAD_INVENTORY: Final = "GPUInventoryInvalid"
EV_RECOVERY_STARTED: Final = "GPURecoveryJobStarted"
EV_RECOVERY_FAILED: Final = "GPURecoveryJobFailed"

NORMAL: Final = "Normal"
WARNING: Final = "Warning"


@dataclass(frozen=True, slots=True)
class Event:
    ref: ObjectRef
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Evict:
    pod: PodView
    gpus: tuple[str, ...]  # the unhealthy or missing GPUs it holds
    reason: str  # why, for the Event and the log


@dataclass(frozen=True, slots=True)
class Taint:
    node: str
    reason: str
    event: Event  # to record once the taint is written


@dataclass(frozen=True, slots=True)
class Untaint:
    node: str
    reason: str
    event: Event  # to record once the taint is gone


@dataclass(frozen=True, slots=True)
class StartRecovery:
    node: str
    reason: str  # why the node is broken
    event: Event  # to record once the Job is created


@dataclass(frozen=True, slots=True)
class EvictionRecord:
    node: str
    attempts: int = 0  # refused or failed attempts so far
    next_at: float = 0.0  # not before this time
    evicted_at: float | None = None  # accepted: the pod is on its way out
    blocked_since: float | None = None
    reported_at: float | None = None  # last Warning Event about this pod


@dataclass(frozen=True, slots=True)
class Heartbeat:
    marker: str | None  # None: no Lease seen
    seen_at: float  # our clock, when the marker last changed
    stale: bool = False  # reported stale


@dataclass(frozen=True, slots=True)
class RoundState:
    """What the leader remembers between rounds. Lost on a leader change: every timer restarts (safe)."""

    healthy_since: Mapping[str, float] = field(default_factory=dict)  # tainted node -> healthy since
    evictions: Mapping[str, EvictionRecord] = field(default_factory=dict)  # pod uid -> record
    heartbeats: Mapping[str, Heartbeat] = field(default_factory=dict)  # node -> heartbeat
    bad_inventory: frozenset[str] = frozenset()  # nodes whose inventory error was reported
    broken_since: Mapping[str, float] = field(default_factory=dict)  # broken node -> since
    recovery_at: Mapping[str, float] = field(default_factory=dict)  # node -> last recovery Job attempt


@dataclass(frozen=True, slots=True)
class Gauges:
    unhealthy_gpus: int = 0
    broken_nodes: int = 0
    tainted_nodes: int = 0
    stale_nodes: int = 0
    blocked_evictions: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    evictions: tuple[Evict, ...] = ()
    taints: tuple[Taint, ...] = ()
    untaints: tuple[Untaint, ...] = ()
    recoveries: tuple[StartRecovery, ...] = ()
    events: tuple[Event, ...] = ()  # not tied to a write (heartbeats, bad inventories)
    state: RoundState = field(default_factory=RoundState)
    gauges: Gauges = field(default_factory=Gauges)

    @property
    def empty(self) -> bool:
        return not (self.evictions or self.taints or self.untaints or self.recoveries or self.events)


def node_ref(name: str) -> ObjectRef:
    return ObjectRef(kind="Node", name=name, uid=name)  # the kubelet's node events use the name as uid


def pod_ref(pod: PodView) -> ObjectRef:
    return ObjectRef(kind="Pod", name=pod.name, namespace=pod.namespace, uid=pod.uid)


def bad_gpus(node: NodeView) -> dict[str, str]:
    """uuid -> reason for every GPU of the node that pods must leave; {} without an inventory."""
    if node.inventory is None:
        return {}
    return {g.uuid: g.reason or "unhealthy" for g in node.inventory.gpus if not g.healthy}


def victims(node: NodeView, pods: Iterable[PodView]) -> list[tuple[PodView, tuple[str, ...], str]]:
    """Pods on ``node`` that hold an unhealthy or missing GPU, with those GPUs and a reason, by name."""
    if node.inventory is None:
        return []
    bad = bad_gpus(node)
    present = {g.uuid for g in node.inventory.gpus}
    out: list[tuple[PodView, tuple[str, ...], str]] = []
    for pod in pods:
        if pod.node != node.name or pod.finished:
            continue
        hit = sorted(u for u in pod.gpus if u in bad or u not in present)
        if hit:
            why = "; ".join(f"GPU {u} {'unhealthy: ' + bad[u] if u in bad else 'no longer on the node'}" for u in hit)
            out.append((pod, tuple(hit), why))
    out.sort(key=lambda v: (v[0].namespace, v[0].name))
    return out


def backoff(attempts: int, cfg: ControllerConfig) -> float:
    """Seconds before retry number ``attempts`` (>= 1): base, 2 x base, ... capped."""
    return Backoff(cfg.eviction_backoff, 2.0, cfg.eviction_backoff_max).delay(attempts - 1)


def plan(world: World, state: RoundState, cfg: ControllerConfig, now: float) -> Plan:
    evictions: list[Evict] = []
    taints: list[Taint] = []
    untaints: list[Untaint] = []
    recoveries: list[StartRecovery] = []
    events: list[Event] = []
    healthy_since = dict(state.healthy_since)
    broken_since: dict[str, float] = {}
    recovery_at = {n: t for n, t in state.recovery_at.items() if n in world.nodes}
    heartbeats: dict[str, Heartbeat] = {}
    bad_inventory: set[str] = set()

    # -- heartbeats: nodes with an inventory or a Lease are fracgpu nodes
    # (a DRA node has no Lease: its driver's slices are the kubelet's to remove)
    for name in sorted({n for n, v in world.nodes.items() if (v.inventory or v.error) and not v.dra}
                       | set(world.heartbeats)):
        if name not in world.nodes:
            continue  # a Lease of a deleted node: nothing to report on
        marker = world.heartbeats.get(name)
        prev = state.heartbeats.get(name)
        if prev is None or prev.marker != marker:
            hb = Heartbeat(marker, now, stale=prev is not None and prev.stale)
        else:
            hb = prev
        is_stale = now - hb.seen_at >= cfg.heartbeat_grace
        if is_stale and not hb.stale:
            what = "no heartbeat Lease" if marker is None else "heartbeat Lease not renewed"
            msg = f"fracgpu device plugin: {what} for {now - hb.seen_at:.0f}s (grace {cfg.heartbeat_grace:g}s)"
            events.append(Event(node_ref(name), WARNING, EV_HEARTBEAT_LOST, msg))
        elif not is_stale and hb.stale:
            events.append(Event(node_ref(name), NORMAL, EV_HEARTBEAT_BACK, "fracgpu device plugin heartbeats again"))
        heartbeats[name] = replace(hb, stale=is_stale)

    # -- per node: taint and evictions
    pods_on: dict[str, list[PodView]] = {}
    for pod in world.pods:
        pods_on.setdefault(pod.node, []).append(pod)
    records: dict[str, EvictionRecord] = {}  # kept only for pods that are still victims
    unhealthy = broken = tainted = 0
    for name in sorted(world.nodes):
        node = world.nodes[name]
        if node.error:
            bad_inventory.add(name)
            if name not in state.bad_inventory:
                events.append(Event(node_ref(name), WARNING, EV_BAD_INVENTORY, node.error))
        inv = node.inventory
        if inv is None:
            healthy_since.pop(name, None)
            tainted += node.tainted
            continue  # no inventory: no verdict; a taint we set stays until the plugin reports again
        unhealthy += len(bad_gpus(node))
        verdict = node_verdict(inv.node_healthy, inv.node_reason, inv.gpus, cfg.node_policy)
        stale = heartbeats.get(name, Heartbeat(None, now)).stale
        if verdict.broken:
            broken += 1
            healthy_since.pop(name, None)
            if not node.tainted:
                taints.append(
                    Taint(
                        name,
                        verdict.reason,
                        Event(
                            node_ref(name), WARNING, EV_TAINTED, f"tainted {cfg.taint_key}:NoSchedule: {verdict.reason}"
                        ),
                    )
                )
            tainted += 1
            since_broken = broken_since[name] = state.broken_since.get(name, now)
            last = recovery_at.get(name)
            if (
                cfg.recovery_job is not None
                and not world.recovery_jobs.get(name, False)
                and now - since_broken >= cfg.recovery_after
                and (last is None or now - last >= cfg.recovery_cooldown)
            ):
                msg = f"started recovery Job: broken for {now - since_broken:.0f}s: {verdict.reason}"
                recoveries.append(
                    StartRecovery(name, verdict.reason, Event(node_ref(name), WARNING, EV_RECOVERY_STARTED, msg))
                )
        elif node.tainted:
            since = healthy_since.setdefault(name, now)
            if now - since >= cfg.taint_hold and not stale:
                # healthy_since stays until the node is seen untainted: a failed write retries at once
                msg = f"removed taint {cfg.taint_key}: GPUs healthy for {now - since:.0f}s"
                untaints.append(
                    Untaint(name, f"healthy for {now - since:.0f}s", Event(node_ref(name), NORMAL, EV_UNTAINTED, msg))
                )
            else:
                tainted += 1
        else:
            healthy_since.pop(name, None)

        in_flight = 0
        ready: list[Evict] = []
        for pod, gpus, why in victims(node, pods_on.get(name, ())):
            rec = state.evictions.get(pod.uid)
            if rec is not None:
                records[pod.uid] = rec
            if pod.terminating or (rec is not None and rec.evicted_at is not None):
                in_flight += 1
            elif rec is None or rec.next_at <= now:
                ready.append(Evict(pod, gpus, why))
        evictions.extend(ready[: max(cfg.max_evictions_per_node - in_flight, 0)])

    blocked = sum(1 for r in records.values() if r.blocked_since is not None and r.evicted_at is None)
    return Plan(
        evictions=tuple(evictions),
        taints=tuple(taints),
        untaints=tuple(untaints),
        recoveries=tuple(recoveries),
        events=tuple(events),
        state=RoundState(
            broken_since=broken_since,
            recovery_at=recovery_at,
            healthy_since=healthy_since,
            evictions=records,
            heartbeats=heartbeats,
            bad_inventory=frozenset(bad_inventory),
        ),
        gauges=Gauges(
            unhealthy_gpus=unhealthy,
            broken_nodes=broken,
            tainted_nodes=tainted,
            stale_nodes=sum(1 for hb in heartbeats.values() if hb.stale),
            blocked_evictions=blocked,
        ),
    )


class EvictionOutcome(StrEnum):
    EVICTED = "evicted"  # 201: accepted
    BLOCKED = "blocked"  # 429: a PodDisruptionBudget refuses it now
    GONE = "gone"  # 404: the pod is already gone
    ERROR = "error"  # anything else


def after_eviction(
    state: RoundState, action: Evict, outcome: EvictionOutcome, detail: str, cfg: ControllerConfig, now: float
) -> tuple[RoundState, tuple[Event, ...]]:
    """Fold one eviction's outcome into the state; returns the Events to record for it."""
    pod = action.pod
    records = dict(state.evictions)
    rec = records.get(pod.uid, EvictionRecord(node=pod.node))
    events: tuple[Event, ...] = ()
    if outcome is EvictionOutcome.EVICTED:
        records[pod.uid] = replace(rec, evicted_at=now)
        events = (Event(pod_ref(pod), WARNING, EV_EVICTED, f"evicted by fracgpu: {action.reason}"),)
    elif outcome is EvictionOutcome.GONE:
        records.pop(pod.uid, None)
    else:
        attempts = rec.attempts + 1
        retry = backoff(attempts, cfg)
        blocked_since = rec.blocked_since if rec.blocked_since is not None else now
        rec = replace(rec, attempts=attempts, next_at=now + retry, blocked_since=blocked_since)
        if rec.reported_at is None or now - rec.reported_at >= cfg.eviction_report_interval:
            rec = replace(rec, reported_at=now)
            if outcome is EvictionOutcome.BLOCKED:
                reason = EV_EVICTION_BLOCKED
                what = f"eviction refused (disruption budget) for {now - blocked_since:.0f}s"
            else:
                reason = EV_EVICTION_FAILED
                what = f"eviction failed {attempts} time(s)"
            msg = f"{what}, retrying in {retry:.0f}s, never forced: {action.reason}" + (
                f" ({detail})" if detail else ""
            )
            events = (Event(pod_ref(pod), WARNING, reason, msg),)
        records[pod.uid] = rec
    return replace(state, evictions=records), events


def after_recovery(
    state: RoundState, action: StartRecovery, created: bool, detail: str, cfg: ControllerConfig, now: float
) -> tuple[RoundState, tuple[Event, ...]]:
    """Record a recovery Job attempt: the next one waits the cooldown, or the eviction backoff cap after a
    failed create (so a transient API error does not cost an hour)."""
    at = now if created else now - cfg.recovery_cooldown + cfg.eviction_backoff_max
    state = replace(state, recovery_at={**state.recovery_at, action.node: at})
    if created:
        return state, (action.event,)
    failed = Event(action.event.ref, WARNING, EV_RECOVERY_FAILED, f"could not create the recovery Job: {detail}")
    return state, (failed,)

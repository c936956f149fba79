"""controller.reconcile: the pure decisions, table-driven over small worlds built from values."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from fracgpu.api.v1beta1.inventory import GpuInfo, NodeInventoryDoc
from fracgpu.controller import reconcile as r
from fracgpu.controller.config import ControllerConfig
from fracgpu.controller.reconcile import EvictionOutcome, RoundState, plan
from fracgpu.controller.views import NodeView, PodView, World
from fracgpu.core.healthconfig import NodePolicy
from fracgpu.startup import ConfigError

CFG = ControllerConfig(taint_hold=60.0, max_evictions_per_node=2, heartbeat_grace=30.0)


def inv(*health: bool | str, node_ok: bool = True) -> NodeInventoryDoc:
    """GPUs GPU-0, GPU-1, ...; True = healthy, a string = unhealthy with that reason."""
    gpus = tuple(
        GpuInfo(
            uuid=f"GPU-{i}",
            index=i,
            model="A100",
            memory=80 << 30,
            numa=0,
            healthy=h is True,
            reason="" if h is True else str(h),
        )
        for i, h in enumerate(health)
    )
    return NodeInventoryDoc(gpus=gpus, node_healthy=node_ok, node_reason="" if node_ok else "NVML unreachable")


def pod(name: str, *gpus: int, node: str = "n1", terminating: bool = False, finished: bool = False) -> PodView:
    return PodView(
        namespace="ml",
        name=name,
        uid=f"uid-{name}",
        node=node,
        gpus=frozenset(f"GPU-{g}" for g in gpus),
        terminating=terminating,
        finished=finished,
    )


def world(*nodes: NodeView, pods: tuple[PodView, ...] = (), beats: dict[str, str] | None = None) -> World:
    beating = {n.name: "t0" for n in nodes} if beats is None else beats
    return World(nodes={n.name: n for n in nodes}, pods=pods, heartbeats=beating)


# --- evictions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvictCase:
    name: str
    node: NodeView
    pods: tuple[PodView, ...]
    evicted: tuple[str, ...]  # pod names evicted this round
    state: RoundState = field(default_factory=RoundState)


EVICT_CASES = [
    EvictCase("all healthy: nothing", NodeView("n1", inv(True, True)), (pod("a", 0), pod("b", 1)), ()),
    EvictCase("only the pods on the bad GPU", NodeView("n1", inv(True, "xid 79")), (pod("a", 0), pod("b", 1)), ("b",)),
    EvictCase("multi-GPU pod with one bad GPU", NodeView("n1", inv(True, "xid 48")), (pod("ab", 0, 1),), ("ab",)),
    EvictCase("GPU gone from the inventory", NodeView("n1", inv(True)), (pod("a", 0), pod("b", 1)), ("b",)),
    EvictCase("no inventory: no judgement", NodeView("n1", None), (pod("a", 0),), ()),
    EvictCase("pods of other nodes untouched", NodeView("n1", inv("xid 79")), (pod("a", 0, node="n2"),), ()),
    EvictCase("finished pods hold nothing", NodeView("n1", inv("xid 79")), (pod("a", 0, finished=True),), ()),
    # max 2 per node: c and d wait for the next round
    EvictCase("at most N at once, by name", NodeView("n1", inv("x")), tuple(pod(n, 0) for n in "dcab"), ("a", "b")),
    # one is already terminating: 2 - 1 = 1 more
    EvictCase(
        "terminating pods count as in flight",
        NodeView("n1", inv("x")),
        (pod("a", 0, terminating=True), pod("b", 0), pod("c", 0)),
        ("b",),
    ),
    EvictCase(
        "accepted but not yet terminating counts too",
        NodeView("n1", inv("x")),
        (pod("a", 0), pod("b", 0), pod("c", 0)),
        ("b",),
        RoundState(evictions={"uid-a": r.EvictionRecord(node="n1", evicted_at=0.0)}),
    ),
    EvictCase(
        "a refused pod waits for its backoff",
        NodeView("n1", inv("x")),
        (pod("a", 0), pod("b", 0)),
        ("b",),
        RoundState(evictions={"uid-a": r.EvictionRecord(node="n1", attempts=1, next_at=105.0, blocked_since=100.0)}),
    ),
]


@pytest.mark.parametrize("case", EVICT_CASES, ids=[c.name for c in EVICT_CASES])
def test_evictions(case: EvictCase) -> None:
    p = plan(world(case.node, pods=case.pods), case.state, CFG, now=100.0)
    assert tuple(e.pod.name for e in p.evictions) == case.evicted


def test_eviction_reason_names_the_gpu() -> None:
    p = plan(
        world(NodeView("n1", inv(True, "xid 79 (GPU has fallen off the bus)")), pods=(pod("b", 1),)), RoundState(), CFG, 0.0
    )
    (e,) = p.evictions
    assert e.gpus == ("GPU-1",)
    assert e.reason == "GPU GPU-1 unhealthy: xid 79 (GPU has fallen off the bus)"


# --- eviction outcomes ------------------------------------------------------------------------


def test_blocked_eviction_backs_off_and_reports_at_most_every_interval() -> None:
    cfg = ControllerConfig(eviction_backoff=5.0, eviction_backoff_max=20.0, eviction_report_interval=30.0)
    node = NodeView("n1", inv("xid 79"))
    w = world(node, pods=(pod("a", 0),))
    state, t = RoundState(), 0.0
    retries: list[float] = []
    reported: list[float] = []
    for _ in range(6):
        p = plan(w, state, cfg, t)
        assert len(p.evictions) == 1, t
        state, events = r.after_eviction(p.state, p.evictions[0], EvictionOutcome.BLOCKED, "budget", cfg, t)
        reported += [t for e in events if e.reason == r.EV_EVICTION_BLOCKED]
        rec = state.evictions["uid-a"]
        retries.append(rec.next_at - t)
        # nothing happens before the retry time
        assert plan(w, state, cfg, rec.next_at - 0.5).evictions == ()
        t = rec.next_at
    assert retries == [5.0, 10.0, 20.0, 20.0, 20.0, 20.0]  # doubling, capped at 20
    # attempts at 0, 5, 15, 35, 55, 75: reported when 30 s or more passed since the last report
    assert reported == [0.0, 35.0, 75.0]
    assert plan(w, state, cfg, t).gauges.blocked_evictions == 1


def test_accepted_eviction_is_not_repeated() -> None:
    w = world(NodeView("n1", inv("x")), pods=(pod("a", 0),))
    p = plan(w, RoundState(), CFG, 0.0)
    state, events = r.after_eviction(p.state, p.evictions[0], EvictionOutcome.EVICTED, "", CFG, 0.0)
    assert [e.reason for e in events] == [r.EV_EVICTED] and events[0].ref.kind == "Pod"
    assert plan(w, state, CFG, 1.0).evictions == ()


def test_gone_pod_is_forgotten() -> None:
    w = world(NodeView("n1", inv("x")), pods=(pod("a", 0),))
    p = plan(w, RoundState(), CFG, 0.0)
    state, events = r.after_eviction(p.state, p.evictions[0], EvictionOutcome.GONE, "", CFG, 0.0)
    assert events == () and state.evictions == {}


def test_records_of_recovered_gpus_are_dropped() -> None:
    node = NodeView("n1", inv("x"))
    p = plan(world(node, pods=(pod("a", 0),)), RoundState(), CFG, 0.0)
    state, _ = r.after_eviction(p.state, p.evictions[0], EvictionOutcome.BLOCKED, "", CFG, 0.0)
    healed = plan(world(replace(node, inventory=inv(True)), pods=(pod("a", 0),)), state, CFG, 1.0)
    assert healed.state.evictions == {}


# --- taints -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaintCase:
    name: str
    node: NodeView
    taint: bool
    reason: str = ""
    policy: NodePolicy = NodePolicy.ALL_GPUS


TAINT_CASES = [
    TaintCase("one GPU bad: healthy GPUs keep serving", NodeView("n1", inv(True, "x")), False),
    TaintCase("every GPU bad", NodeView("n1", inv("xid 79", "xid 48")), True, "every GPU unhealthy (2): xid 79"),
    TaintCase("NVML unreachable", NodeView("n1", inv(True, node_ok=False)), True, "NVML unreachable"),
    TaintCase("any-gpu policy", NodeView("n1", inv(True, "x")), True, "GPU unhealthy (1/2): x", NodePolicy.ANY_GPU),
    TaintCase("never policy", NodeView("n1", inv("x", "y")), False, policy=NodePolicy.NEVER),
    TaintCase("already tainted: no second taint", NodeView("n1", inv("x"), tainted=True), False),
    TaintCase("no inventory: no taint", NodeView("n1", None), False),
]


@pytest.mark.parametrize("case", TAINT_CASES, ids=[c.name for c in TAINT_CASES])
def test_taints(case: TaintCase) -> None:
    cfg = replace(CFG, node_policy=case.policy)
    p = plan(world(case.node), RoundState(), cfg, 0.0)
    assert [t.reason for t in p.taints] == ([case.reason] if case.taint else [])
    assert [t.event.reason for t in p.taints] == ([r.EV_TAINTED] if case.taint else [])
    assert p.events == ()


def run(inventories: list[NodeInventoryDoc], cfg: ControllerConfig = CFG, step: float = 10.0) -> list[str]:
    """One node, tainted at first, through successive inventories (one per `step` seconds, the plugin
    renewing its Lease each time); the taint writes take effect. What happened each round."""
    state, tainted, out = RoundState(), True, []
    for i, doc in enumerate(inventories):
        p = plan(world(NodeView("n1", doc, tainted=tainted), beats={"n1": f"renewal {i}"}), state, cfg, i * step)
        state = p.state
        tainted = (tainted or bool(p.taints)) and not p.untaints
        out.append("T" if p.taints else "U" if p.untaints else ".")
    return out


BROKEN, FINE = inv("x", "x"), inv(True, True)


def test_taint_goes_after_the_hold_time() -> None:
    # hold 60 s at 10 s per round: healthy first seen at t=10, untainted at t=70
    assert run([BROKEN, *[FINE] * 8]) == [".", ".", ".", ".", ".", ".", ".", "U", "."]


def test_a_break_restarts_the_hold() -> None:
    got = run([FINE] * 5 + [BROKEN] + [FINE] * 8)  # t=0..40 fine, 50 broken, 60.. fine again
    assert got == ["."] * 12 + ["U", "."]  # healthy again from t=60: untainted at t=120


def test_taint_then_recovery() -> None:
    got = run([FINE, BROKEN, BROKEN, *[FINE] * 8])
    # t=0 fine but tainted: hold starts; t=10 broken (already tainted: nothing); fine from t=30
    assert got == ["."] * 9 + ["U", "."]


def test_failed_untaint_retries_at_once() -> None:
    cfg = replace(CFG, taint_hold=0.0)
    view = NodeView("n1", FINE, tainted=True)
    p1 = plan(world(view), RoundState(), cfg, 0.0)
    p2 = plan(world(view), p1.state, cfg, 2.0)  # the write failed: still tainted
    assert len(p1.untaints) == len(p2.untaints) == 1


def test_zero_hold_untaints_at_once() -> None:
    assert run([FINE], replace(CFG, taint_hold=0.0)) == ["U"]


def test_stale_node_is_not_untainted() -> None:
    fine = NodeView("n1", inv(True), tainted=True)
    p = plan(world(fine, beats={}), RoundState(), replace(CFG, taint_hold=0.0), 100.0)
    state = p.state
    p = plan(world(fine, beats={}), state, replace(CFG, taint_hold=0.0), 200.0)
    assert p.untaints == () and p.gauges.stale_nodes == 1


# --- heartbeats -------------------------------------------------------------------------------


def test_heartbeat_lost_reported_once_then_restored() -> None:
    node = NodeView("n1", inv(True))
    state, reasons = RoundState(), []
    # renewals at t=0, 10, 20 then silence until t=90, then renewing again
    markers = ["a", "b", "c", "c", "c", "c", "c", "c", "c", "d", "e"]
    for i, marker in enumerate(markers):
        p = plan(world(node, beats={"n1": marker}), state, CFG, i * 10.0)
        state = p.state
        reasons.append(",".join(e.reason for e in p.events) or ".")
    # last change at t=20, grace 30: stale from t=50; renewed at t=90
    assert reasons == [".", ".", ".", ".", ".", r.EV_HEARTBEAT_LOST, ".", ".", ".", r.EV_HEARTBEAT_BACK, "."]


def test_node_without_any_lease_goes_stale_after_grace() -> None:
    node = NodeView("n1", inv(True))
    p = plan(world(node, beats={}), RoundState(), CFG, 0.0)
    assert p.events == ()
    p = plan(world(node, beats={}), p.state, CFG, 30.0)
    assert [e.reason for e in p.events] == [r.EV_HEARTBEAT_LOST]
    assert "no heartbeat Lease" in p.events[0].message


def test_nodes_without_fracgpu_are_ignored() -> None:
    p = plan(world(NodeView("cpu-node"), beats={}), RoundState(), CFG, 1000.0)
    p = plan(world(NodeView("cpu-node"), beats={}), p.state, CFG, 2000.0)
    assert p.empty and p.state.heartbeats == {}


def test_bad_inventory_reported_once() -> None:
    node = NodeView("n1", None, error="inventory: not JSON")
    p = plan(world(node), RoundState(), CFG, 0.0)
    assert [e.reason for e in p.events] == [r.EV_BAD_INVENTORY]
    assert plan(world(node), p.state, CFG, 1.0).events == ()


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_evictions_per_node": 0}, "max evictions per node"),
        ({"eviction_grace_period": -1}, "eviction grace period"),
        ({"renew_deadline": 20.0}, "renew deadline"),
        ({"resync": 0.0}, "resync"),
        ({"taint_key": "bad key!"}, "taint key"),
        ({"eviction_backoff": 10.0, "eviction_backoff_max": 5.0}, "eviction backoff max"),
    ],
)
def test_config_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ControllerConfig(**kwargs)  # type: ignore[arg-type]

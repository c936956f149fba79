"""The controller against the fake API server: real HTTP, real Eviction API, PDBs, Leases, Events.

Each replica lists the server before a round (what its watches would hold) and runs on a fake clock.
"""

from __future__ import annotations

import itertools
from typing import Any

from fracgpu.api.v1beta1.names import ANN_INVENTORY, TAINT_GPU_FAILED
from fracgpu.controller import reconcile as r
from fracgpu.core.health import GpuHealth, GpuSample, HealthTracker
from fracgpu.core.healthconfig import HealthConfig
from tests.controller.clock import FakeClock
from tests.controller.conftest import NS, MakeReplica, inventory, lease_obj, pdb_obj, pod_obj, with_cfg
from tests.fakes.apiserver import FakeApiServer


def set_inventory(server: FakeApiServer, node: str, inv: str) -> None:
    server.patch_object("nodes", node, {"metadata": {"annotations": {ANN_INVENTORY: inv}}})


def renew(server: FakeApiServer, node: str, clock: FakeClock) -> None:
    server.seed(lease_obj(node, clock.wall().strftime("%Y-%m-%dT%H:%M:%S.%fZ")))


def evictions(server: FakeApiServer) -> list[str]:
    return [f"{q.namespace}/{q.name}" for q in server.requests if q.subresource == "eviction"]


def terminating(server: FakeApiServer) -> set[str]:
    return {p["metadata"]["name"] for p in server.list_objects("pods") if p["metadata"].get("deletionTimestamp")}


def taints(server: FakeApiServer, node: str) -> list[dict[str, Any]]:
    obj = server.get_object("nodes", node)
    assert obj is not None
    return list((obj.get("spec") or {}).get("taints") or [])


def event_reasons(server: FakeApiServer, name: str | None = None) -> list[str]:
    """Reasons of the Events about ``name`` (any object when None), in the order they were written."""
    events = [e for ns in ("default", "ml") for e in server.list_objects("events", ns)]
    events.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
    return [e["reason"] for e in events if name is None or e["involvedObject"]["name"] == name]


def test_a_gpu_fails_exactly_its_pods_are_evicted(one_node_two_gpus: FakeApiServer, make_replica: MakeReplica) -> None:
    server = one_node_two_gpus
    ctl = make_replica()
    assert ctl.round() is not None and evictions(server) == []  # all healthy: leader, nothing to do
    set_inventory(server, "n1", inventory(True, "xid 79 (GPU has fallen off the bus)"))
    ctl.round()
    # b and c sit on GPU-1, d holds GPU-0 and GPU-1; a (GPU-0 only), e (GPU-0 of n2) and cpu-only stay
    assert sorted(evictions(server)) == ["ml/b", "ml/c", "ml/d"]
    assert terminating(server) == {"b", "c", "d"}
    assert taints(server, "n1") == []  # GPU-0 still serves
    assert event_reasons(server, "b") == [r.EV_EVICTED]
    assert ctl.metric("fracgpu_controller_evictions_total", result="evicted") == 3
    # the next rounds do not evict again
    ctl.clock.advance(2.0)
    ctl.round()
    assert len(evictions(server)) == 3


def test_pdb_refusal_is_retried_with_backoff_and_reported(
    one_node_two_gpus: FakeApiServer, make_replica: MakeReplica
) -> None:
    server = one_node_two_gpus
    server.seed(pdb_obj("keep-b", app="b", min_available=1))
    ctl = make_replica(cfg=with_cfg(eviction_backoff=5.0, eviction_backoff_max=40.0))
    set_inventory(server, "n1", inventory(True, "xid 48"))
    ctl.round()
    assert terminating(server) == {"c", "d"}  # b is held by its budget
    assert event_reasons(server, "b") == [r.EV_EVICTION_BLOCKED]
    assert ctl.metric("fracgpu_controller_evictions_total", result="blocked") == 1
    assert ctl.metric("fracgpu_controller_blocked_evictions") == 0  # gauges are of the round's start
    # before the backoff (5 s) nothing is retried; at 5 s it is, refused again (next in 10 s)
    for advance, attempts in ((4.0, 1), (1.0, 2), (9.0, 2), (1.0, 3)):
        ctl.clock.advance(advance)
        ctl.round()
        assert evictions(server).count("ml/b") == attempts, advance
    assert ctl.metric("fracgpu_controller_blocked_evictions") == 1
    assert event_reasons(server, "b") == [r.EV_EVICTION_BLOCKED]  # reported again only after 5 min
    # the budget is relaxed: the next retry (in 20 s) goes through; never a delete
    server.delete_object("poddisruptionbudgets", "keep-b", "ml")
    ctl.clock.advance(20.0)
    ctl.round()
    assert "b" in terminating(server)
    assert not [q for q in server.requests if q.method == "DELETE"]


def test_at_most_n_evictions_per_node(one_node_two_gpus: FakeApiServer, make_replica: MakeReplica) -> None:
    server = one_node_two_gpus
    ctl = make_replica(cfg=with_cfg(max_evictions_per_node=2, eviction_grace_period=7))
    set_inventory(server, "n1", inventory(True, "xid 79"))
    ctl.round()
    assert sorted(evictions(server)) == ["ml/b", "ml/c"]  # by name; d waits
    pod_b = server.get_object("pods", "b", "ml")
    assert pod_b is not None and pod_b["metadata"]["deletionGracePeriodSeconds"] == 7
    ctl.clock.advance(2.0)
    ctl.round()
    assert len(evictions(server)) == 2  # both still terminating
    server.finalize_pod("ml", "b")  # the kubelet is done with b
    ctl.clock.advance(2.0)
    ctl.round()
    assert sorted(evictions(server)) == ["ml/b", "ml/c", "ml/d"]


def test_all_gpus_fail_node_tainted_then_recovers_after_hold(
    one_node_two_gpus: FakeApiServer, make_replica: MakeReplica, clock: FakeClock
) -> None:
    server = one_node_two_gpus
    ctl = make_replica(cfg=with_cfg(taint_hold=60.0))
    set_inventory(server, "n1", inventory("xid 79", "xid 79"))
    ctl.round()
    assert [(t["key"], t["effect"]) for t in taints(server, "n1")] == [(TAINT_GPU_FAILED, "NoSchedule")]
    assert taints(server, "n2") == []
    assert r.EV_TAINTED in event_reasons(server, "n1")
    assert ctl.metric("fracgpu_controller_node_taints_total") == 1
    assert terminating(server) == {"a", "b", "c", "d"}
    # GPUs healthy again; the plugin keeps heartbeating every 10 s
    set_inventory(server, "n1", inventory(True, True))
    for _ in range(6):  # t = 10 .. 60 s after the first healthy round
        ctl.round()
        assert taints(server, "n1") != []
        clock.advance(10.0)
        renew(server, "n1", clock)
        renew(server, "n2", clock)
    ctl.round()  # 60 s healthy
    assert taints(server, "n1") == []
    assert r.EV_UNTAINTED in event_reasons(server, "n1")
    assert ctl.metric("fracgpu_controller_node_recoveries_total") == 1


def test_nvml_unreachable_taints_even_with_healthy_gpus(
    one_node_two_gpus: FakeApiServer, make_replica: MakeReplica
) -> None:
    server = one_node_two_gpus
    set_inventory(server, "n1", inventory(True, True, node_ok=False))
    make_replica().round()
    assert len(taints(server, "n1")) == 1
    assert evictions(server) == []  # GPUs not marked unhealthy: no pod is evicted for the node alone


def test_flapping_gpu_does_not_flap_the_node(
    one_node_two_gpus: FakeApiServer, make_replica: MakeReplica, clock: FakeClock
) -> None:
    """The plugin's health tracker feeds the inventory; a GPU that fails every few checks stays out."""
    server = one_node_two_gpus
    ctl = make_replica(cfg=with_cfg(taint_hold=60.0))
    health = HealthConfig(recovery_checks=5, max_recovery_checks=1000)
    tracker = HealthTracker(health)
    ok, xid = GpuSample(temperature_c=50), GpuSample(xids=(79,))
    # both GPUs: a fatal XID every 8 polls (2 s each), good in between
    history: list[tuple[bool, bool]] = []
    for poll in range(60):
        sample = xid if poll % 8 == 0 else ok
        for uuid in ("GPU-0", "GPU-1"):
            tracker.observe(uuid, sample, now=clock.monotonic())
        states = [tracker.state(u) for u in ("GPU-0", "GPU-1")]
        set_inventory(server, "n1", inventory(*(_as_health(s) for s in states)))
        renew(server, "n1", clock)
        ctl.round()
        history.append((all(not s.healthy for s in states), bool(taints(server, "n1"))))
        clock.advance(2.0)
    gpu_flips = sum(1 for (a, _), (b, _) in itertools.pairwise(history) if a != b)
    taint_flips = sum(1 for (_, a), (_, b) in itertools.pairwise(history) if a != b)
    # first failure: 5 good checks bring it back (poll 5), the second needs 10 (more than the 7
    # between XIDs), so from poll 8 on the GPUs stay unhealthy and the node stays tainted
    assert gpu_flips == 2
    # tainted at poll 0; the GPUs' short healthy spell (polls 5-7, 6 s) is far from the 60 s hold
    assert history[0] == (True, True) and taint_flips == 0
    assert ctl.metric("fracgpu_controller_node_recoveries_total") == 0


def _as_health(state: GpuHealth) -> bool | str:
    return True if state.healthy else state.reason


def test_two_controllers_only_the_leader_acts(
    one_node_two_gpus: FakeApiServer, make_replica: MakeReplica, clock: FakeClock
) -> None:
    server = one_node_two_gpus
    clock_b = FakeClock(start=clock.now + 1234.0)  # another process, another clock origin
    a, b = make_replica("ctl-a"), make_replica("ctl-b", clock_=clock_b)
    assert a.round() is not None
    assert b.round() is None
    set_inventory(server, "n1", inventory(True, "xid 79"))
    for _ in range(3):
        a.round()
        b.round()
        clock.advance(2.0)
        clock_b.advance(2.0)
    assert sorted(evictions(server)) == ["ml/b", "ml/c", "ml/d"]  # each once, by a
    assert a.metric("fracgpu_controller_is_leader") == 1 and b.metric("fracgpu_controller_is_leader") == 0
    # a hangs (no more rounds); b takes over only after the lease duration, then acts alone
    set_inventory(server, "n1", inventory("xid 79", "xid 79"))
    took_over = None
    for i in range(12):
        clock.advance(2.0)
        clock_b.advance(2.0)
        if b.round() is not None and took_over is None:
            took_over = i
        assert not (a.elector.is_leader() and b.elector.is_leader())
    # b last saw the Lease change at a's last renewal, 2 s before this loop; round i is 2 (i + 2) s
    # after it: the first round at or past the 15 s lease duration is i = 6 (16 s)
    assert took_over == 6
    assert len(taints(server, "n1")) == 1 and "ml/a" in evictions(server)
    assert a.controller.step() is None  # a wakes up: it is past its renew deadline and does nothing
    lease = server.get_object("leases", "fracgpu-controller", NS)
    assert lease is not None and lease["spec"]["holderIdentity"] == "ctl-b"


def test_plugin_that_stops_heartbeating_is_reported(
    one_node_two_gpus: FakeApiServer, make_replica: MakeReplica, clock: FakeClock
) -> None:
    server = one_node_two_gpus
    ctl = make_replica(cfg=with_cfg(heartbeat_grace=40.0))
    for _ in range(6):  # n1 keeps renewing every 10 s, n2's plugin has stopped
        ctl.round()
        clock.advance(10.0)
        renew(server, "n1", clock)
    ctl.round()
    assert event_reasons(server, "n2") == [r.EV_HEARTBEAT_LOST]
    assert event_reasons(server, "n1") == []
    assert ctl.metric("fracgpu_controller_stale_nodes") == 1
    renew(server, "n2", clock)
    clock.advance(2.0)
    ctl.round()
    assert event_reasons(server, "n2") == [r.EV_HEARTBEAT_LOST, r.EV_HEARTBEAT_BACK]
    assert ctl.metric("fracgpu_controller_stale_nodes") == 0
    event = next(e for e in server.list_objects("events", "default") if e["reason"] == r.EV_HEARTBEAT_LOST)
    assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "Node"


def test_failed_taint_write_is_counted_and_retried(
    one_node_two_gpus: FakeApiServer, make_replica: MakeReplica
) -> None:
    server = one_node_two_gpus
    ctl = make_replica()
    set_inventory(server, "n1", inventory("xid 79", "xid 79"))
    server.fail_next("update", "nodes", 500)
    ctl.round()
    assert taints(server, "n1") == [] and r.EV_TAINTED not in event_reasons(server, "n1")
    assert ctl.metric("fracgpu_controller_api_errors_total", action="taint") == 1
    ctl.clock.advance(2.0)
    ctl.round()
    assert len(taints(server, "n1")) == 1 and event_reasons(server, "n1") == [r.EV_TAINTED]


def test_eviction_never_hits_a_successor_pod_of_the_same_name(
    one_node_two_gpus: FakeApiServer, make_replica: MakeReplica
) -> None:
    """The cache still holds the old pod b; the pod now called b is a new one (new uid): not evicted."""
    server = one_node_two_gpus
    ctl = make_replica(cfg=with_cfg(max_evictions_per_node=10))
    ctl.round()
    set_inventory(server, "n1", inventory(True, "xid 79"))
    ctl.sync()
    server.delete_object("pods", "b", "ml")
    server.seed(pod_obj("b", "n1", 0))  # a new b, on the healthy GPU
    ctl.controller.elect()
    ctl.controller.step()  # acts on the stale view: evicts old b by uid
    assert terminating(server) == {"c", "d"}
    assert ctl.metric("fracgpu_controller_evictions_total", result="gone") == 1


def test_lease_errors_keep_the_leader_until_its_deadline(
    one_node_two_gpus: FakeApiServer, make_replica: MakeReplica, clock: FakeClock
) -> None:
    server = one_node_two_gpus
    ctl = make_replica()  # renew deadline 10 s
    assert ctl.round() is not None
    server.fail_next("get", "leases", 503, times=100)
    led = []
    for _ in range(6):
        clock.advance(2.0)
        led.append(ctl.round() is not None)
    assert led == [True, True, True, True, False, False]  # 2, 4, 6, 8 s lead; at 10 s it steps down
    assert ctl.metric("fracgpu_controller_api_errors_total", action="lease") == 6

"""Two extender replicas over real HTTP against the fake API server: only the Lease holder is Ready
and binds; when it dies the other takes over within the lease duration; a new leader binds only
once its cache holds every reservation committed before it took over. `audit` (from the pods'
annotations, not from either extender) finds no device ID held twice.

The election runs on an injected clock: the test calls `Leadership.tick()` where the program's
`Leadership.run()` would, and moves the clock by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api.v1beta1.names import DEFAULT_NAMESPACE
from fracgpu.core.records import pod_record
from fracgpu.extender.leader import DEFAULT_LEASE, CacheFence, LeaderConfig, Leadership, check_timing
from fracgpu.extender.main import main
from fracgpu.kube.client import Transport
from fracgpu.kube.leader import KubeLeaseStore, LeaderElector, LeaseTiming
from fracgpu.kube.writer import KubeWriter
from tests.controller.clock import FakeClock
from tests.extender.builders import bind_args, filter_args, node_obj, pod_obj
from tests.fakes.apiserver import FakeApiServer
from tests.reliability.harness import HttpClient, LiveExtender, audit, heartbeat_off

NS = DEFAULT_NAMESPACE
TIMING = LeaseTiming(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)


@dataclass
class Replica:
    name: str
    ext: LiveExtender
    lead: Leadership
    transports: tuple[Transport, ...]

    def tick(self) -> bool:
        return self.lead.tick()

    def ready(self) -> tuple[int, str]:
        with HttpClient(self.ext.url) as http:
            status, body = http.request("GET", "/readyz")
        return status, body.decode()

    def bind(self, pod: dict[str, Any], node: str = "n1") -> str:
        with HttpClient(self.ext.url) as http:
            status, out = http.post_json("/bind", bind_args(pod, node))
        assert status == 200, (status, out)
        return str(out["Error"])

    def filter(self, pod: dict[str, Any]) -> dict[str, Any]:
        with HttpClient(self.ext.url) as http:
            status, out = http.post_json("/filter", filter_args(pod, ["n1"]))
        assert status == 200, (status, out)
        assert isinstance(out, dict)
        return out

    def metric(self, name: str) -> float:
        with HttpClient(self.ext.url) as http:
            _, body = http.request("GET", "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def stop(self) -> None:
        self.ext.kill()
        for t in self.transports:
            t.close()


ReplicaFactory = Callable[[str], Replica]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def replicas(apiserver: FakeApiServer, clock: FakeClock) -> Iterator[ReplicaFactory]:
    """Extender replicas built as `fracgpu extender` builds them (LiveExtender), each with its own
    elector on the Lease fracgpu-extender and its own cache fence, on the shared fake clock."""
    made: list[Replica] = []

    def make(name: str) -> Replica:
        ext = LiveExtender(apiserver, heartbeat_off())
        writes, reads = Transport(apiserver.api_client()), Transport(apiserver.api_client())
        cfg = LeaderConfig(NS, name, timing=TIMING)
        elector = LeaderElector(KubeLeaseStore(KubeWriter(writes, component="fracgpu-extender"), NS, cfg.lease),
                                NS, cfg.lease, name, cfg.timing, clock)
        lead = Leadership(ext.cache.synced.is_set, elector, CacheFence(reads, ext.scheduler), cfg)
        ext.deps.leadership = lead  # the app reads its Deps per request
        replica = Replica(name, ext, lead, (writes, reads))
        made.append(replica)
        ext.start()
        return replica

    yield make
    for r in made:
        r.stop()


def world(apiserver: FakeApiServer, *pods: dict[str, Any], gpus: int = 1) -> None:
    apiserver.seed(node_obj("n1", gpus), *pods)


def bound_node(apiserver: FakeApiServer, name: str) -> str:
    pod = apiserver.get_object("pods", name, "default")
    assert pod is not None
    return str((pod.get("spec") or {}).get("nodeName") or "")


def test_only_the_leader_is_ready_and_binds(apiserver: FakeApiServer, replicas: ReplicaFactory) -> None:
    p1 = pod_obj("p1", 50)
    world(apiserver, p1)
    a, b = replicas("a"), replicas("b")
    status, why = a.ready()
    assert status == 503 and "not the leader" in why and "held by nobody" in why  # no election yet
    assert a.tick() and not b.tick()
    assert a.ready() == (200, "ok")
    status, why = b.ready()
    assert status == 503 and f"Lease {NS}/{DEFAULT_LEASE} is held by a" in why and "this replica: b" in why
    # the follower still answers filter from its warm cache ...
    assert b.filter(p1)["NodeNames"] == ["n1"]
    # ... but does not bind
    error = b.bind(p1)
    assert "does not bind" in error and "not the leader" in error
    assert bound_node(apiserver, "p1") == ""
    stats = b.ext.scheduler.stats()
    assert (stats.pods, stats.reservations) == (1, 0)  # p1 cached, nothing reserved
    assert a.bind(p1) == ""
    assert bound_node(apiserver, "p1") == "n1"
    assert (a.metric("fracgpu_extender_is_leader"), b.metric("fracgpu_extender_is_leader")) == (1, 0)
    assert audit(apiserver).problems == []


def test_failover_when_the_leader_dies_within_the_lease_duration(
        apiserver: FakeApiServer, replicas: ReplicaFactory, clock: FakeClock) -> None:
    pods = [pod_obj(f"p{i}", 25) for i in range(5)]
    world(apiserver, *pods)
    a, b = replicas("a"), replicas("b")
    assert a.tick() and not b.tick()
    for p in pods[:3]:
        assert a.bind(p) == ""
    clock.advance(2.0)
    assert a.tick() and not b.tick()  # a renews; b sees the renewal at t = 2
    a.ext.kill()  # a crash: the Lease is not given up
    took_over = None
    for second in range(1, 30):
        clock.advance(1.0)
        if b.tick() and took_over is None:
            took_over = second
    assert took_over == TIMING.lease_duration  # no sooner (two leaders), no later (lost time)
    assert b.ready() == (200, "ok")
    # b's cache knew a's binds: the next pods take other device IDs, and the GPU is not overbooked
    assert b.bind(pods[3]) == ""
    assert "vgpu-core" in b.bind(pods[4])  # 4 x 25 held: no room for a fifth
    report = audit(apiserver)
    assert report.problems == []
    assert report.placed == {"default/p0", "default/p1", "default/p2", "default/p3"}


def test_a_new_leader_binds_only_once_its_cache_holds_the_old_leaders_binds(
        apiserver: FakeApiServer, replicas: ReplicaFactory, clock: FakeClock) -> None:
    p1, p2 = pod_obj("p1", 60), pod_obj("p2", 60)  # one GPU: only one of them fits
    world(apiserver, p1, p2)
    a, b = replicas("a"), replicas("b")
    assert a.tick() and not b.tick()
    b.ext.cache.reflectors["pods"].stop()  # b's pod watch lags: it will not see a's bind for now
    assert a.bind(p1) == ""
    a.ext.kill()
    clock.advance(TIMING.lease_duration)
    assert not b.tick()
    assert b.lead.elector is not None and b.lead.elector.is_leader()  # b holds the Lease ...
    status, why = b.ready()
    assert status == 503 and "waiting for its cache" in why and "default/p1" in why  # ... but is not Ready
    error = b.bind(p2)
    assert "does not bind" in error and "default/p1" in error
    assert bound_node(apiserver, "p2") == ""
    # the lagging watch catches up (the event the cache would have handled)
    bound = apiserver.get_object("pods", "p1", "default")
    assert bound is not None
    b.ext.scheduler.apply_pod(pod_record(bound))
    clock.advance(TIMING.retry_period)
    assert b.tick()
    assert b.ready() == (200, "ok")
    assert "vgpu-core" in b.bind(p2)  # p1's share is known now: p2 does not fit
    report = audit(apiserver)
    assert report.problems == [] and report.placed == {"default/p1"}


def test_a_leader_that_shuts_down_hands_over_at_once(
        apiserver: FakeApiServer, replicas: ReplicaFactory, clock: FakeClock) -> None:
    world(apiserver, pod_obj("p1", 50))
    a, b = replicas("a"), replicas("b")
    assert a.tick() and not b.tick()
    a.lead.release()  # what `Leadership.run` does when the process is stopped (SIGTERM)
    assert a.ready()[0] == 503 and "not the leader" in a.ready()[1]
    clock.advance(TIMING.retry_period)
    assert b.tick()
    assert b.bind(pod_obj("p1", 50)) == ""
    assert audit(apiserver).problems == []


def test_a_leader_near_its_renew_deadline_starts_no_binding(
        apiserver: FakeApiServer, replicas: ReplicaFactory, clock: FakeClock) -> None:
    world(apiserver, pod_obj("p1", 50))
    (a,) = (replicas("a"),)
    assert a.tick()
    apiserver.fail_next("update", "leases", 500, times=10)  # renewals fail from now on
    clock.advance(TIMING.retry_period)
    assert a.tick()  # still leading on the last good renewal
    clock.advance(TIMING.renew_deadline - TIMING.retry_period - 1.0)  # 1 s of leadership left < 2 s margin
    assert not a.tick()
    assert "leadership ends too soon" in a.bind(pod_obj("p1", 50))
    clock.advance(1.0)
    assert not a.tick() and a.ready()[0] == 503
    assert bound_node(apiserver, "p1") == ""


async def test_the_election_loop_leads_and_gives_the_lease_up_when_cancelled(
        apiserver: FakeApiServer, clock: FakeClock) -> None:
    """`Leadership.run`, as `fracgpu extender` starts it (a task) and stops it (cancelled at shutdown)."""
    t = Transport(apiserver.api_client())
    try:
        cfg = LeaderConfig(NS, "solo", timing=LeaseTiming(15.0, 10.0, 0.01))
        elector = LeaderElector(KubeLeaseStore(KubeWriter(t, component="fracgpu-extender"), NS, cfg.lease),
                                NS, cfg.lease, "solo", cfg.timing, clock)
        lead = Leadership(lambda: True, elector, lambda: None, cfg)
        task = asyncio.create_task(lead.run())
        for _ in range(1000):
            if lead.can_bind():
                break
            await asyncio.sleep(0.005)
        assert lead.can_bind() and lead.not_ready() is None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        lease = apiserver.get_object("leases", DEFAULT_LEASE, NS)
        assert lease is not None and not lease["spec"].get("holderIdentity")  # handed over
        assert not lead.can_bind()
    finally:
        t.close()


def test_a_replica_takes_no_lease_before_its_cache_synced(apiserver: FakeApiServer, clock: FakeClock) -> None:
    t = Transport(apiserver.api_client())
    try:
        cfg = LeaderConfig(NS, "early", timing=TIMING)
        elector = LeaderElector(KubeLeaseStore(KubeWriter(t, component="fracgpu-extender"), NS, cfg.lease),
                                NS, cfg.lease, "early", TIMING, clock)
        lead = Leadership(lambda: False, elector, None, cfg)
        assert not lead.tick()
        assert lead.not_ready() == "cache not synced"
    finally:
        t.close()
    assert apiserver.get_object("leases", DEFAULT_LEASE, NS) is None


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--lease-duration", "10", "--renew-deadline", "10"], "renew deadline"),
        (["--retry-period", "0"], "retry period"),
        (["--bind-timeout", "8"], "could still land after another replica takes over"),
        (["--leader-elect", "maybe"], "is not true or false"),
    ],
)
def test_unsafe_election_settings_are_refused_at_start(
        flags: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*flags, "--kubeconfig", "/nonexistent"]) == 2
    assert error in capsys.readouterr().err


def test_the_default_timing_is_safe() -> None:
    assert check_timing(LeaderConfig(NS, "x")) is None

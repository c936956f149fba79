"""kube.leader (shared by the controller and the extender) over an in-memory Lease store with the API server's optimistic concurrency."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from fracgpu.kube.leader import LeaderElector, LeaseConflict, LeaseTiming
from tests.controller.clock import FakeClock

TIMING = LeaseTiming(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)


class MemoryLeaseStore:
    """One Lease with a resourceVersion: a replace with a stale version is a conflict, as on the server."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.rv = 0
        self.fail_next = False

    def get(self) -> Mapping[str, Any] | None:
        return copy.deepcopy(self.obj)

    def create(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        if self.obj is not None:
            raise LeaseConflict("already exists")
        return self._store(body)

    def replace(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        assert self.obj is not None
        if self.fail_next or body["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
            self.fail_next = False
            raise LeaseConflict("the object has been modified")
        return self._store(body)

    def _store(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(dict(body))
        obj["metadata"] = {**obj["metadata"], "resourceVersion": str(self.rv)}
        self.obj = obj
        return copy.deepcopy(obj)


def elector(store: MemoryLeaseStore, who: str, clock: FakeClock) -> LeaderElector:
    return LeaderElector(store, "fracgpu-system", "fracgpu-controller", who, TIMING, clock)


def test_first_replica_acquires_second_follows() -> None:
    store, clock = MemoryLeaseStore(), FakeClock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.tick() and not b.tick()
    assert store.obj is not None and store.obj["spec"]["holderIdentity"] == "a"
    assert b.holder == "a"
    for _ in range(20):  # a renews every 2 s: b never takes over
        clock.advance(2.0)
        assert a.tick() and not b.tick()
        assert a.is_leader() and not b.is_leader()


def test_takeover_only_after_lease_duration_and_never_two_leaders() -> None:
    store, clock = MemoryLeaseStore(), FakeClock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.tick()
    assert not b.tick()  # b sees the lease at t=0
    # a stops renewing (hung, partitioned). Step 1 s at a time and check the invariant.
    took_over_at = None
    for i in range(1, 30):
        clock.advance(1.0)
        if b.tick() and took_over_at is None:
            took_over_at = i
        assert not (a.is_leader() and b.is_leader()), i
    assert took_over_at == 15  # observed at t=0, lease 15 s
    assert not a.is_leader()  # a stepped down by itself at its renew deadline (10 s)
    assert store.obj is not None and store.obj["spec"]["leaseTransitions"] == 1
    # a wakes up: its renewal loses (b holds it now and renews in time)
    assert not a.tick()


def test_racing_acquire_only_one_wins() -> None:
    store, clock = MemoryLeaseStore(), FakeClock()
    assert elector(store, "a", clock).tick()
    clock.advance(100.0)  # expired for everyone
    b, c = elector(store, "b", clock), elector(store, "c", clock)
    # both read the same expired lease; both try to write it; the second write conflicts
    assert not b.tick() and not c.tick()  # first look: observed now, not yet expired for them
    clock.advance(16.0)
    got_b = b.tick()
    got_c = c.tick()
    assert (got_b, got_c) == (True, False)


def test_conflict_on_renewal_steps_down() -> None:
    store, clock = MemoryLeaseStore(), FakeClock()
    a = elector(store, "a", clock)
    assert a.tick()
    store.fail_next = True
    clock.advance(2.0)
    assert not a.tick() and not a.is_leader()


def test_release_hands_over_at_once() -> None:
    store, clock = MemoryLeaseStore(), FakeClock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.tick() and not b.tick()
    a.release()
    assert not a.is_leader()
    clock.advance(2.0)
    assert b.tick()

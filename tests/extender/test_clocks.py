"""Durations on the monotonic clock, timestamps on the wall clock.

An NTP step (or a VM resumed after a pause) moves the wall clock by hours in an instant. Heartbeat
staleness, the assume TTL and the stuck-allocating timeout are durations: a step must neither mark
every node stale nor expire every assumption nor lift the confusable rule; the monotonic clock
running past them must. Each case is judged from the HTTP answers of filter and bind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api.rfc3339 import format_time
from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.core.records import NODE_STALE_HEARTBEAT, pod_record
from fracgpu.extender.decide import reason_already_reserved
from fracgpu.extender.main import new_scheduler
from fracgpu.extender.scheduler import SchedulerConfig
from tests.extender.builders import GI, bind_args, bound_annotations, filter_args, node_obj, pod_obj
from tests.extender.conftest import ClientFactory, FakeClock, World, build_world

HOUR = 3600.0


@dataclass
class TwoClocks:
    """The process' two clocks: `mono` for durations (steady), `wall` for timestamps (may step)."""

    mono: FakeClock
    wall: FakeClock

    def tick(self, mono_s: float, wall_step_s: float = 0.0) -> None:
        self.mono.advance(mono_s)
        self.wall.advance(mono_s + wall_step_s)


def world_with(clocks: TwoClocks, objects: list[dict[str, Any]], config: SchedulerConfig) -> World:
    return build_world(objects, config=config, clock=clocks.mono, wall=clocks.wall)


def clocks() -> TwoClocks:
    return TwoClocks(FakeClock(5_000.0), FakeClock(1_800_000_000.0))  # monotonic: seconds since boot


STEPS = [pytest.param(+HOUR, id="wall +1h"), pytest.param(-HOUR, id="wall -1h")]


@pytest.mark.parametrize("step", STEPS)
async def test_a_wall_clock_step_marks_no_node_stale(serve: ClientFactory, step: float) -> None:
    c = clocks()
    world = world_with(c, [node_obj("n1", 1)], SchedulerConfig(heartbeat_stale_s=40, refresh_s=0))
    client = await serve(world)
    world.scheduler.apply_heartbeat("n1")  # a Lease renewal seen now
    c.tick(1, wall_step_s=step)
    out = await (await client.post("/filter", json=filter_args(pod_obj("p", 50), ["n1"]))).json()
    assert out["NodeNames"] == ["n1"], out
    c.tick(41)  # 42 s without a renewal on the monotonic clock: stale
    out = await (await client.post("/filter", json=filter_args(pod_obj("p", 50), ["n1"]))).json()
    assert out["FailedAndUnresolvableNodes"] == {"n1": NODE_STALE_HEARTBEAT}


@pytest.mark.parametrize("step", STEPS)
async def test_a_wall_clock_step_expires_no_assumption(serve: ClientFactory, step: float) -> None:
    """A Binding whose outcome is unknown keeps its reservation through a wall-clock step; 121 s on the
    monotonic clock (the assume TTL is 120 s) with the wall clock standing still end it."""
    c = clocks()
    a, b = pod_obj("a", 60), pod_obj("b", 60)
    world = world_with(c, [node_obj("n1", 1), a, b], SchedulerConfig(heartbeat_stale_s=0, refresh_s=0))
    client = await serve(world)
    world.binder.fail_with = TimeoutError("timed out")  # the write may still land: outcome unknown
    assert "outcome unknown" in (await (await client.post("/bind", json=bind_args(a, "n1"))).json())["Error"]
    world.binder.fail_with = None
    c.tick(1, wall_step_s=step)
    out = await (await client.post("/filter", json=filter_args(a, ["n1", "n2"]))).json()
    assert out["NodeNames"] == ["n1"] and out["FailedAndUnresolvableNodes"] == {
        "n2": reason_already_reserved("default/a", "n1")}
    assert (await (await client.post("/bind", json=bind_args(b, "n1"))).json())["Error"]  # a's share is held
    c.mono.advance(120)  # the wall clock stands still (or went back): only the monotonic one counts
    assert (await (await client.post("/bind", json=bind_args(b, "n1"))).json()) == {"Error": ""}


@pytest.mark.parametrize("step", STEPS)
async def test_a_wall_clock_step_does_not_lift_the_confusable_rule(serve: ClientFactory, step: float) -> None:
    """A pod the watch shows `allocating` (assigned 10 s ago by the wall clock) blocks a confusable
    pod through a wall-clock step; 300 s on the monotonic clock make it stuck, and it stops blocking."""
    c = clocks()
    ids = tuple(f"GPU-n1-0::{k}" for k in range(50))
    assigned = Assignment(node="n1", tenant="ns/default", assigned_at=format_time(c.wall() - 10),
                          gpus=(GpuShare("GPU-n1-0", 50, 8 * GI, ids),), containers=(ContainerShare("c0", "app", ids),))
    holder = pod_obj("holder", 50, "8Gi", node="n1", phase="Pending",
                     annotations=bound_annotations(assigned.to_json(), "allocating"))
    world = world_with(c, [node_obj("n1", 2), holder],
                       SchedulerConfig(heartbeat_stale_s=0, refresh_s=0, stuck_allocating_s=300))
    client = await serve(world)
    other = pod_obj("other", 50, "4Gi")  # same vgpu-core count, another VRAM limit: confusable
    c.tick(1, wall_step_s=step)
    world.scheduler.apply_pod(pod_record(holder))  # the watch shows it again after the step: same start
    out = await (await client.post("/filter", json=filter_args(other, ["n1"]))).json()
    assert out["NodeNames"] == [] and out["Error"].startswith("waiting for a pod still allocating"), out
    c.tick(290)  # 301 s since it was assigned, on the monotonic clock
    out = await (await client.post("/filter", json=filter_args(other, ["n1"]))).json()
    assert out["NodeNames"] == ["n1"], out


def test_the_extender_measures_durations_on_the_monotonic_clock() -> None:
    """What `fracgpu extender` runs: durations on time.monotonic, timestamps on time.time."""
    s = new_scheduler(SchedulerConfig())
    assert (s.clock, s.wall) == (time.monotonic, time.time)

"""Worlds for the extender tests: a Scheduler fed from plain objects, served over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fracgpu.core.records import parse_list
from fracgpu.extender.app import Deps, make_app
from fracgpu.extender.metrics import ExtenderMetrics
from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
from fracgpu.extender.snapshot import load_into


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@dataclass
class RecordingBinder:
    """Stands in for the API server's Binding endpoint; can be told to fail."""

    fail_with: Exception | None = None
    bindings: list[tuple[str, str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate: threading.Event | None = None  # when set, binds wait for it (to hold writes in flight)

    def bind_pod(self, namespace: str, name: str, node: str, *, annotations: Mapping[str, str] | None = None,
                 uid: str | None = None) -> None:
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail_with is not None:
            raise self.fail_with
        with self.lock:
            self.bindings.append((namespace, name, node, dict(annotations or {})))


@dataclass
class World:
    scheduler: Scheduler
    binder: RecordingBinder
    clock: FakeClock
    deps: Deps


def build_world(objects: list[dict[str, Any]], config: SchedulerConfig | None = None,
                clock: FakeClock | None = None, body_limit: int | None = None, wall: FakeClock | None = None,
                *, synced: bool = True) -> World:
    """`clock` measures durations; `wall` (default: the same clock) stamps and reads timestamps.
    Not `synced`: an extender that has not seen the cluster yet (objects are not fed)."""
    clock = clock or FakeClock()
    cfg = config or SchedulerConfig(heartbeat_stale_s=0)
    scheduler = Scheduler(cfg, clock, wall=wall or clock)
    if synced:
        load_into(scheduler, parse_list({"kind": "List", "items": objects}))
    binder = RecordingBinder()
    deps = Deps(scheduler=scheduler, binder=binder, metrics=ExtenderMetrics(scheduler))
    if body_limit is not None:
        deps.body_limit = body_limit
    return World(scheduler, binder, clock, deps)


ClientFactory = Callable[[World], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def serve(aiohttp_client: Any) -> ClientFactory:
    async def start(world: World) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(make_app(world.deps))
        return client

    return start

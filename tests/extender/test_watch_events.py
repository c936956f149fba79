"""What the pod watch shows after our bind, and what the reservation becomes (docs/extender.md "Bind").

Each case binds pod `p` (60 vgpu-core) to n1 over HTTP, then feeds one pod event as the watch
delivers it, and reads the outcome the way kube-scheduler would: the room filter finds on each
one-GPU node (tests/extender/probe.py) and whether binds succeed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api.v1beta1.names import ANN_ASSIGNED
from fracgpu.core.records import pod_record
from tests.extender.builders import bind_args, bound_annotations, node_obj, pod_obj
from tests.extender.conftest import ClientFactory, World, build_world
from tests.extender.probe import room, scheduler_filter

P = pod_obj("p", 60, "8Gi")


def p_as(*, node: str = "", uid: str | None = None, annotated: bool = False, world: World | None = None,
         phase: str = "Pending") -> dict[str, Any]:
    """Pod p as the watch shows it: bound to `node` or not, another instance (uid), with the
    reservation our Binding wrote or without it."""
    annotations = {}
    if annotated:
        assert world is not None
        [(*_, ann)] = world.binder.bindings
        annotations = bound_annotations(ann[ANN_ASSIGNED], "allocated")
    return pod_obj("p", 60, "8Gi", node=node, uid=uid, phase=phase, annotations=annotations)


@dataclass(frozen=True)
class Case:
    name: str
    event: Callable[[World], dict[str, Any]]
    rooms: tuple[int, int]  # (n1, n2) afterwards
    stats: tuple[int, int]  # (reservations, awaiting_watch) afterwards


CASES = [
    Case("bound with our reservation: charged once, no longer awaited",
         lambda w: p_as(node="n1", annotated=True, world=w, phase="Running"), (40, 100), (1, 0)),
    Case("bound to n1, the annotation not shown yet: what we reserved is kept",
         lambda w: p_as(node="n1", phase="Running"), (40, 100), (1, 1)),
    Case("still pending (an event from before the Binding): kept, not charged twice",
         lambda w: p_as(), (40, 100), (1, 1)),
    Case("bound to another node: our Binding did not land (nodeName is final)",
         lambda w: p_as(node="n2", phase="Running"), (100, 100), (0, 0)),
    Case("deleted and created again under its name: the old pod's reservation goes",
         lambda w: p_as(uid="uid-of-a-new-p"), (100, 100), (0, 0)),
    Case("ended: its share comes back",
         lambda w: p_as(node="n1", annotated=True, world=w, phase="Succeeded"), (100, 100), (0, 0)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_the_watch_after_our_bind(serve: ClientFactory, case: Case) -> None:
    world = build_world([node_obj("n1", 1), node_obj("n2", 1), P])
    client = await serve(world)
    assert await (await client.post("/bind", json=bind_args(P, "n1"))).json() == {"Error": ""}
    world.scheduler.apply_pod(pod_record(case.event(world)))
    ask = scheduler_filter(world.scheduler)
    assert (room(ask, "n1"), room(ask, "n2")) == case.rooms
    stats = world.scheduler.stats()
    assert (stats.reservations, stats.awaiting_watch) == case.stats


async def test_a_recreated_pod_is_placed_afresh(serve: ClientFactory) -> None:
    """The new instance (another uid) binds on its own; the old instance's bind is refused."""
    world = build_world([node_obj("n1", 1), node_obj("n2", 1), P])
    client = await serve(world)
    assert await (await client.post("/bind", json=bind_args(P, "n1"))).json() == {"Error": ""}
    new = p_as(uid="uid-of-a-new-p")
    world.scheduler.apply_pod(pod_record(new))
    assert await (await client.post("/bind", json=bind_args(new, "n2"))).json() == {"Error": ""}
    out = await (await client.post("/bind", json=bind_args(P, "n2"))).json()  # kube-scheduler, late, for the old one
    assert "for uid uid-of-a-new-p, the bind names uid uid-default-p" in out["Error"], out
    assert (room(scheduler_filter(world.scheduler), "n1"), room(scheduler_filter(world.scheduler), "n2")) == (100, 40)


def test_a_cpu_pod_on_a_node_fracgpu_does_not_manage_is_not_kept() -> None:
    """kube-scheduler's own pods, everywhere: the cache keeps only what placement needs."""
    world = build_world([node_obj("n1", 1)])
    cpu = pod_obj("web", 50, None, node="elsewhere", phase="Running")
    cpu["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
    world.scheduler.apply_pod(pod_record(cpu))
    on_n1 = pod_obj("web-2", 50, None, node="n1", phase="Running")
    on_n1["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
    world.scheduler.apply_pod(pod_record(on_n1))  # on a fracgpu node: its CPU counts
    assert world.scheduler.stats().pods == 1

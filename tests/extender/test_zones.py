"""Zone groups through the extender over real HTTP: pods with the same `fracgpu.io/group` label in a
namespace kept in one zone (`fracgpu.io/zone-policy: same`) or spread over zones (`spread`).

The pure rules are core/zone.py's (tests/core); here the extender's glue: which pods count as the
group's (bound ones, from the moment our bind reserves them, still after the watch shows them
bound, no longer once they are gone), where their zones come from (their nodes' labels), and how
the refusals reach kube-scheduler (FailedAndUnresolvableNodes, one text per cause).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_ZONE_POLICY, LABEL_GROUP
from fracgpu.core.records import pod_record
from fracgpu.extender.scheduler import SchedulerConfig
from tests.extender.builders import bind_args, bound_annotations, filter_args, node_obj, pod_obj
from tests.extender.conftest import ClientFactory, World, build_world

# two nodes in zone a, one in zone b, one without a zone label; one GPU each
NODES = {"a1": "a", "a2": "a", "b1": "b", "none": ""}
SAME_IN_A = "zone policy same: group g is in zone a"
SPREAD = "zone policy spread: group g has fewer pods in another zone that fits"


def member(name: str, policy: str, *, cores: int = 30, created: str = "2026-11-22T22:17:15Z",
           group: str = "g", namespace: str = "default") -> dict[str, Any]:
    return pod_obj(name, cores, "8Gi", namespace=namespace, created=created, labels={LABEL_GROUP: group},
                   annotations={ANN_ZONE_POLICY: policy})


def zone_world(*pods: dict[str, Any]) -> World:
    # k = every node: what filter keeps is where the pod fits and the zone rules allow
    return build_world([node_obj(n, 1, zone=z) for n, z in NODES.items()] + list(pods),
                       config=SchedulerConfig(k=len(NODES), heartbeat_stale_s=0))


async def bind(client: Any, pod: dict[str, Any], node: str) -> None:
    out = await (await client.post("/bind", json=bind_args(pod, node))).json()
    assert out == {"Error": ""}, out


async def filtered(client: Any, pod: dict[str, Any], full: frozenset[str] = frozenset()
                   ) -> tuple[set[str], dict[str, str]]:
    """The nodes kept and the unresolvable refusals (no node is full unless a test fills it)."""
    out = await (await client.post("/filter", json=filter_args(pod, list(NODES)))).json()
    assert out["Error"] == "" and set(out["FailedNodes"]) <= full, out
    return set(out["NodeNames"]), out["FailedAndUnresolvableNodes"]


@dataclass(frozen=True)
class Case:
    name: str
    placed: dict[str, str]  # group members bound first: pod name -> node
    policy: str  # the new pod's
    kept: set[str]
    refused: dict[str, str] = field(default_factory=dict)
    first_policy: str = ""  # the members' policy when it differs from the new pod's


CASES = [
    Case("same: the first pod goes anywhere", {}, "same", set(NODES)),
    Case("same: the rest follow the first into its zone", {"m0": "a2"}, "same", {"a1", "a2"},
         {"b1": SAME_IN_A, "none": SAME_IN_A}),
    Case("same: the oldest pod's policy wins over the new pod's", {"m0": "a2"}, "spread", {"a1", "a2"},
         {"b1": SAME_IN_A, "none": SAME_IN_A}, first_policy="same"),
    Case("spread: the zone with fewer group pods", {"m0": "a1"}, "spread", {"b1", "none"},
         {"a1": SPREAD, "a2": SPREAD}),
    Case("spread: a node without a zone label is a zone of its own", {"m0": "a1", "m1": "b1"}, "spread",
         {"none"}, {"a1": SPREAD, "a2": SPREAD, "b1": SPREAD}),
    Case("spread: every zone tied, every node", {"m0": "a1", "m1": "b1", "m2": "none"}, "spread", set(NODES)),
    Case("none: no zone rule", {"m0": "a1"}, "none", set(NODES)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_group_zone_rules_over_http(serve: ClientFactory, case: Case) -> None:
    placed = [member(name, case.first_policy or case.policy, created=f"2026-11-22T22:0{i}:00Z")
              for i, name in enumerate(case.placed)]
    new = member("new", case.policy)
    world = zone_world(*placed, new)
    client = await serve(world)
    for pod in placed:
        await bind(client, pod, case.placed[pod["metadata"]["name"]])
    kept, refused = await filtered(client, new)
    # the nodes of a zone full of the group (one GPU each, 30 vgpu-core per pod) still fit: only the
    # zone rule refuses
    assert (kept, refused) == (case.kept, case.refused)


async def test_spread_counts_only_zones_that_fit(serve: ClientFactory) -> None:
    """The fewest-pods zone is chosen among the zones where the pod fits: b1 and the zoneless node
    are full (another tenant's whole-GPU pods), so the pod joins its group in zone a."""
    m0, new = member("m0", "spread"), member("new", "spread")
    fillers = [pod_obj(f"whole-{n}", 100, None, namespace="other") for n in ("b1", "none")]
    world = zone_world(m0, new, *fillers)
    client = await serve(world)
    await bind(client, m0, "a1")
    for pod, node in zip(fillers, ("b1", "none"), strict=True):
        await bind(client, pod, node)
    assert await filtered(client, new, full=frozenset({"b1", "none"})) == ({"a1", "a2"}, {})


async def test_who_counts_as_the_group(serve: ClientFactory) -> None:
    """A bound member counts from our bind on (not when the Binding was refused), still once the watch
    shows it bound (the cache keeps a group pod's request), and no longer once it is gone. Pending members, other groups and the same
    group name in another namespace never count."""
    m0, new = member("m0", "same"), member("new", "same")
    pending = member("pending", "same", created="2026-01-01T00:00:00Z")  # older, but not placed
    other_group = member("x0", "same", group="other")
    elsewhere = member("y0", "same", namespace="team-b")
    world = zone_world(m0, new, pending, other_group, elsewhere)
    client = await serve(world)
    await bind(client, other_group, "b1")
    await bind(client, elsewhere, "b1")
    assert await filtered(client, new) == (set(NODES), {})
    world.binder.fail_with = RuntimeError("injected: the API server refused the Binding")
    out = await (await client.post("/bind", json=bind_args(m0, "a1"))).json()
    assert "injected" in out["Error"], out
    assert await filtered(client, new) == (set(NODES), {})  # a refused bind places nothing
    world.binder.fail_with = None
    await bind(client, m0, "a1")
    same_in_a = ({"a1", "a2"}, {"b1": SAME_IN_A, "none": SAME_IN_A})
    assert await filtered(client, new) == same_in_a
    # the watch shows m0 bound with its reservation (the cached record drops what a bound pod no
    # longer needs, but keeps a group pod's request)
    [(_, _, node, ann)] = [b for b in world.binder.bindings if b[1] == "m0"]
    seen = member("m0", "same")
    seen["spec"]["nodeName"] = node
    seen["status"]["phase"] = "Running"
    seen["metadata"]["annotations"].update(bound_annotations(ann[ANN_ASSIGNED], "allocated"))
    world.scheduler.apply_pod(pod_record(seen))
    assert await filtered(client, new) == same_in_a
    world.scheduler.delete_pod("default/m0")
    assert await filtered(client, new) == (set(NODES), {})

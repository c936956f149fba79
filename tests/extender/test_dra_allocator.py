"""fracgpu's DRA allocator against the fake API server (docs/dra.md "Placement").

The allocator writes claims' `status.allocation` ahead of kube-scheduler; these tests read what it wrote
from the API server, as kube-scheduler and the kubelet plugin would, never from the allocator's memory.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fracgpu.api.v1beta1.dra.resource import ResourceClaim
from fracgpu.api.v1beta1.names import (
    ANN_ZONE_POLICY,
    CORES_PER_GPU,
    DRA_CLAIM_FINALIZER,
    DRA_DRIVER,
    LABEL_GROUP,
    LABEL_ZONE,
    ZONE_SAME,
    ZONE_SPREAD,
)
from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core.cluster import ClusterState, GpuUse, NodeSpec, PodUse
from fracgpu.core.draallocation import node_selector
from fracgpu.core.draclaims import allocated_gpus
from fracgpu.core.draslices import device_names
from fracgpu.core.fit import FitOptions
from fracgpu.core.policies import live_default
from fracgpu.core.ranking import Weighted, rank
from fracgpu.core.records import node_priority
from fracgpu.core.request import GpuRequest
from fracgpu.core.workload import shape_of
from fracgpu.extender.leader import CacheFence
from fracgpu.extender.scheduler import SchedulerConfig
from fracgpu.kube.client import Transport
from fracgpu.kube.dralowering import dra_wanted
from fracgpu.kube.errors import Unavailable
from tests.extender.draworld import (
    DRA_RESOURCES,
    GI,
    DraCluster,
    claim_pod,
    dra_node,
    gpus,
    pool,
    share_template,
    started,
    whole_template,
)
from tests.fakes.apiserver import FakeApiServer


@pytest.fixture
def cluster(apiserver: FakeApiServer) -> Iterator[DraCluster]:
    yield from started(apiserver)


def with_nodes(world: DraCluster, nodes: dict[str, int], *, memory: int = 80 * GI) -> None:
    for name, n in nodes.items():
        world.apiserver.seed(dra_node(name), *pool(name, gpus(name, n, memory)))
    world.settle(lambda: all(world.view.devices(n) for n in nodes))


def place(world: DraCluster, *pods: dict[str, Any]) -> None:
    for p in pods:
        world.create_pod(p)
    keys = {f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods}
    world.settle(lambda: keys <= world.waiting())


def test_a_share_is_written_as_kube_scheduler_would_write_it(cluster: DraCluster) -> None:
    """Finalizer, one result with the consumed capacity and a share ID, the node selector, the pod as
    consumer; read back it is the share the pod asked for."""
    with_nodes(cluster, {"n1": 2})
    cluster.apiserver.seed(share_template("half", 50, "20Gi"))
    pod = claim_pod("train", ["half"])
    place(cluster, pod)
    assert cluster.allocator.run_once() == 1
    [claim] = cluster.claims_of(pod)
    assert DRA_CLAIM_FINALIZER in claim["metadata"]["finalizers"]
    [r] = claim["status"]["allocation"]["devices"]["results"]
    names = device_names(gpus("n1", 2))
    assert (r["request"], r["driver"], r["pool"]) == ("gpu", DRA_DRIVER, "n1")
    assert r["device"] in names.values()
    assert uuid.UUID(r["shareID"])
    assert r["consumedCapacity"] == {"cores": "50", "memory": str(20 * GI)}
    assert claim["status"]["allocation"]["nodeSelector"] == {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}
    pod_uid = cluster.apiserver.get_object("pods", "train", "default")["metadata"]["uid"]  # type: ignore[index]
    assert claim["status"]["reservedFor"] == [{"resource": "pods", "name": "train", "uid": pod_uid}]
    devices = {n: g for g in gpus("n1", 2) for u, n in names.items() if u == g.uuid}
    [share] = allocated_gpus(ResourceClaim.from_json(claim), "n1", devices, "claim")
    assert (share.cores, share.memory) == (50, 20 * GI)
    assert cluster.schedule(pod) == "n1"
    cluster.settle(cluster.caught_up)
    assert cluster.allocator.run_once() == 0  # nothing left to do: the pod holds its share


def test_placements_are_the_core_ranking(cluster: DraCluster) -> None:
    """Forty pods of shares and whole GPUs, allocated one at a time, against an independent
    live_default() ranking of the same state fed the same shapes (as tests/extender/test_policy.py
    does for the device-plugin path)."""
    nodes = {f"n{i}": 4 for i in range(4)}
    with_nodes(cluster, nodes)
    rng = random.Random(11)
    sizes = [23, 32, 47, 50, 65, 81, 100, 200]
    mine, histogram = live_default(100)
    mirror = ClusterState()
    for name, n in nodes.items():
        mirror.upsert_node(NodeSpec(name, gpus(name, n), 64000, 512 * GI, "", {}, "", node_priority(name)))
    for i in range(40):
        size = rng.choice(sizes)
        if size < 100:
            cluster.apiserver.seed(share_template(f"t{i}", size, f"{size * 80 // 100}Gi"))
            req = GpuRequest(cores=size, memory=size * 80 // 100 * GI)
        else:
            cluster.apiserver.seed(whole_template(f"t{i}", size // 100))
            req = GpuRequest(cores=size, memory=None)
        pod = claim_pod(f"p{i:02d}", [f"t{i}"])
        place(cluster, pod)
        expect = rank(mirror, req, [Weighted(mine)], opts=FitOptions(), limit=1).ranked
        done = cluster.allocator.run_once()
        if not expect:
            assert done == 0 and cluster.events(f"p{i:02d}")
            continue
        assert done == 1
        spec = mirror.specs[expect[0].row]
        assert spec is not None
        results = cluster.results(pod)
        names = device_names(spec.gpus)
        assert {r["pool"] for r in results} == {expect[0].node}, pod["metadata"]["name"]
        assert [r["device"] for r in results] == [names[spec.gpus[s].uuid] for s in expect[0].gpus]
        by_name = {names[g.uuid]: g for g in spec.gpus}
        mirror.add_pod(f"default/p{i:02d}", PodUse(expect[0].node, tuple(
            GpuUse(by_name[r["device"]].uuid, int(r["consumedCapacity"]["cores"]),
                   int(r["consumedCapacity"]["memory"])) for r in results), 0, 0))
        histogram.observe(shape_of(0, req.cores, 100))
        cluster.schedule(pod)
        cluster.settle(cluster.caught_up)


def burst(world: DraCluster, *, watch_between: bool) -> tuple[dict[str, tuple[str, ...]], dict[tuple[str, str], list[int]]]:
    """Thirty pods of 30- and 45-core shares on two nodes of two GPUs: where each went, and what each
    GPU's claims consume in the API server. One pass before the watch shows any allocation, or one pod
    at a time with the watch caught up in between."""
    with_nodes(world, {"n1": 2, "n2": 2})
    world.apiserver.seed(share_template("s30", 30, "20Gi"), share_template("s45", 45, "30Gi"))
    pods = [claim_pod(f"b{i:02d}", ["s30" if i % 2 else "s45"], created=f"2026-12-01T00:00:{i:02d}Z")
            for i in range(30)]
    place(world, *pods)
    if watch_between:
        while world.allocator.run_once():
            world.settle(world.caught_up)
    else:
        world.allocator.run_once()
        assert world.allocator.run_once() == 0  # a second pass before the watch catches up adds nothing
    used: dict[tuple[str, str], list[int]] = {}
    placed = {}
    for p in pods:
        results = world.results(p)
        placed[p["metadata"]["name"]] = tuple(f"{r['pool']}/{r['device']}" for r in results)
        for r in results:
            u = used.setdefault((r["pool"], r["device"]), [0, 0])
            u[0] += int(r["consumedCapacity"]["cores"])
            u[1] += int(r["consumedCapacity"]["memory"])
    return placed, used


def test_a_burst_never_over_commits_a_gpu(cluster: DraCluster) -> None:
    """Allocated in one pass while the watch has shown none of the allocations (the assume state holds
    them), no GPU's claims consume more than 100 cores or its memory in the API server, and the pods go
    exactly where they go when each allocation is seen back before the next."""
    placed, used = burst(cluster, watch_between=False)
    assert len(used) == 4
    assert all(c <= CORES_PER_GPU and m <= 80 * GI for c, m in used.values())
    refused = [n for n, p in placed.items() if not p]
    assert cluster.counted("allocated") == len(placed) - len(refused)
    assert cluster.counted("refused") == 2 * len(refused)  # the second pass refuses them again (told once)
    assert cluster.metrics.registry.get_sample_value("fracgpu_extender_dra_waiting_pods") == len(refused)
    assert refused and all(cluster.events(n)[0].startswith("0/2 nodes are available: 2 no single GPU with")
                           for n in refused)  # refused for room only: claims are never 'still allocating'
    other = FakeApiServer().start()
    try:
        for world in started(other):
            assert burst(world, watch_between=True)[0] == placed
    finally:
        other.stop()


def test_a_tenant_quota_holds_claims_as_it_holds_pods(cluster: DraCluster) -> None:
    """The namespace's tenant may use 100 cores: the second 60-core share is refused with the extender's
    own quota text, told to the pod as an Event; when the first pod ends, the second is allocated."""
    world, apiserver = cluster, cluster.apiserver
    if True:
        quota = {"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota", "metadata": {"name": "team-a"},
                 "spec": {"namespaceSelector": {"matchLabels": {"fracgpu.io/tenant": "team-a"}},
                          "hard": {"fracgpu.io/vgpu-core": "100"}}}
        TenantQuota.from_dict(quota)
        apiserver.seed({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "team-a", "labels": {"fracgpu.io/tenant": "team-a"}}}, quota)
        with_nodes(world, {"n1": 2})
        apiserver.seed(share_template("s60", 60, "10Gi", namespace="team-a"))
        first = claim_pod("first", ["s60"], namespace="team-a", created="2026-12-01T00:00:00Z")
        second = claim_pod("second", ["s60"], namespace="team-a", created="2026-12-01T00:01:00Z")
        place(world, first, second)
        assert world.allocator.run_once() == 1
        assert world.results(first) and not world.results(second)
        [told] = world.events("second")
        assert "team-a" in told and "100" in told and "60" in told, told
        world.schedule(first)
        world.end_pod(first)
        world.settle(lambda: "team-a/first" not in {k for k in world.waiting()} and world.caught_up())
        world.settle(lambda: world.allocator.run_once() == 1)
        assert world.results(second)


def test_nodes_the_pod_may_not_go_to_are_not_chosen(cluster: DraCluster) -> None:
    """nodeSelector, required node affinity and NoSchedule taints, as kube-scheduler reads them."""
    cluster.apiserver.seed(
        dra_node("tainted", taints=[{"key": "maintenance", "value": "now", "effect": "NoSchedule"}]),
        dra_node("other-zone", labels={"zone": "b"}), dra_node("good", labels={"zone": "a"}),
        *pool("tainted", gpus("tainted", 1)), *pool("other-zone", gpus("other-zone", 1)), *pool("good", gpus("good", 1)))
    cluster.settle(lambda: all(cluster.view.devices(n) for n in ("tainted", "other-zone", "good")))
    cluster.apiserver.seed(share_template("s10", 10, "1Gi"))
    picky = claim_pod("picky", ["s10"], spec={"nodeSelector": {"zone": "a"}})
    nowhere = claim_pod("nowhere", ["s10"], spec={"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["c"]}]}]}}}})
    place(cluster, picky, nowhere)
    assert cluster.allocator.run_once() == 1
    assert {r["pool"] for r in cluster.results(picky)} == {"good"}
    assert cluster.events("nowhere") == ["0/3 nodes are available: 2 node(s) didn't match Pod's node "
                                         "affinity/selector, 1 node(s) had untolerated taint {maintenance: now}"]


def test_an_allocation_kube_scheduler_undoes_moves_to_another_node(cluster: DraCluster) -> None:
    """kube-scheduler's PostFilter clears the allocation of a claim whose node cannot take the pod (CPU,
    ports: what fracgpu does not see); that node is then avoided for that pod."""
    with_nodes(cluster, {"n1": 1, "n2": 1})
    cluster.apiserver.seed(share_template("s10", 10, "1Gi"))
    pod = claim_pod("moved", ["s10"])
    place(cluster, pod)
    assert cluster.allocator.run_once() == 1
    [first] = {r["pool"] for r in cluster.results(pod)}
    cluster.settle(cluster.caught_up)
    [claim] = cluster.claims_of(pod)
    cluster.apiserver.seed({**claim, "status": {}})  # what PostFilter writes: allocation and reservedFor gone
    cluster.settle(lambda: "default/moved" in cluster.waiting())
    assert cluster.allocator.run_once() == 1
    assert {r["pool"] for r in cluster.results(pod)} == {"n1", "n2"} - {first}


def seen_up_to(world: DraCluster, rv: int) -> None:
    """Until the claim watch has delivered every change up to resourceVersion `rv`."""
    world.settle(lambda: int(world.cache.reflectors["resourceclaims"].resource_version or 0) >= rv)


def test_a_write_cut_short_leaves_no_half_allocation(cluster: DraCluster) -> None:
    """A pod with two claims whose second write fails: the first is rolled back, the pod waits whole,
    and the next pass allocates both."""
    with_nodes(cluster, {"n1": 4})
    cluster.apiserver.seed(whole_template("one", 1))
    pod = claim_pod("pair", ["one", "one"])
    place(cluster, pod)
    # the first claim carries the finalizer already, so its one write is its status; the second
    # claim's first write (its finalizer) is refused: the first claim's allocation must be undone
    patched = cluster.apiserver.patch_object("resourceclaims", "pair-c0",
                                             {"metadata": {"finalizers": [DRA_CLAIM_FINALIZER]}}, "default")
    seen_up_to(cluster, int(patched["metadata"]["resourceVersion"]))
    cluster.apiserver.fail_next("update", "resourceclaims", 403, times=1)
    assert cluster.allocator.run_once() == 0
    assert cluster.results(pod) == []
    # once the claim watch has shown the first claim allocated and cleared again, that clearing (ours)
    # is not taken for kube-scheduler refusing the node: the only node stays a candidate
    seen_up_to(cluster, int(cluster.apiserver.get_object("resourceclaims", "pair-c0", "default")[  # type: ignore[index]
        "metadata"]["resourceVersion"]))
    assert [r.verb for r in cluster.apiserver.requests if r.resource == "resourceclaims"][-3:] == [
        "update", "update", "update"]  # c0's allocation, c1's refused finalizer, c0 rolled back
    assert cluster.view.revoked("default/pair") == frozenset()
    assert cluster.allocator.run_once() == 1
    results = cluster.results(pod)
    assert len(results) == 2 and len({r["device"] for r in results}) == 2


def test_claims_fracgpu_cannot_read_are_told_not_guessed(cluster: DraCluster) -> None:
    with_nodes(cluster, {"n1": 1})
    cluster.apiserver.seed(share_template("no-memory", 50, None))
    pod = claim_pod("vague", ["no-memory"])
    place(cluster, pod)
    assert cluster.allocator.run_once() == 0
    [told] = cluster.events("vague")
    assert told.startswith("claims not understood:") and "without memory" in told
    assert cluster.results(pod) == []
    assert cluster.allocator.run_once() == 0 and len(cluster.events("vague")) == 1  # told once per text
    assert cluster.counted("unreadable") == 2 and cluster.counted("allocated") == 0


def test_nothing_is_allocated_before_the_cache_is_synced(apiserver: FakeApiServer) -> None:
    for rt in DRA_RESOURCES:
        apiserver.add_resource(rt)
    world = DraCluster(apiserver, SchedulerConfig(heartbeat_stale_s=40, refresh_s=0))
    assert world.allocator.run_once() == 0


@pytest.mark.parametrize(("served", "mode", "wanted"), [
    (True, "auto", True), (False, "auto", False), (True, "off", False), (False, "on", True)])
def test_dra_auto_follows_what_the_api_server_serves(apiserver: FakeApiServer, served: bool, mode: str,
                                                     wanted: bool) -> None:
    """--dra auto asks the API server's discovery for resource.k8s.io/v1 resourceclaims."""
    if served:
        for rt in DRA_RESOURCES:
            apiserver.add_resource(rt)
    assert dra_wanted(mode, Transport(apiserver.api_client(), timeout_s=5)) is wanted


@pytest.mark.parametrize(("policy", "second_zone"), [(ZONE_SAME, "a"), (ZONE_SPREAD, "b")])
def test_zone_groups_hold_for_claims(cluster: DraCluster, policy: str, second_zone: str) -> None:
    """Pods of one group (label fracgpu.io/group) with a zone policy: the second goes where the rule
    says, as for device-plugin pods (tests/extender/test_zones.py)."""
    zones = {"a1": "a", "a2": "a", "b1": "b"}
    for name, z in zones.items():
        cluster.apiserver.seed(dra_node(name, labels={LABEL_ZONE: z}), *pool(name, gpus(name, 1)))
    cluster.settle(lambda: all(cluster.view.devices(n) for n in zones))
    cluster.apiserver.seed(share_template("s10", 10, "1Gi"))
    meta = {"labels": {LABEL_GROUP: "g"}, "annotations": {ANN_ZONE_POLICY: policy}}
    first, second = (claim_pod(n, ["s10"], created=f"2026-12-01T00:00:0{i}Z") for i, n in enumerate(("m1", "m2")))
    for p in (first, second):
        p["metadata"].update(meta)
    first["spec"]["nodeSelector"] = {LABEL_ZONE: "a"}  # the group starts in zone a, whatever the ranking prefers
    place(cluster, first)
    assert cluster.allocator.run_once() == 1
    cluster.schedule(first)
    cluster.settle(cluster.caught_up)
    place(cluster, second)
    assert cluster.allocator.run_once() == 1
    [node] = {r["pool"] for r in cluster.results(second)}
    assert zones[node] == second_zone


def test_the_queue_takes_the_higher_priority_pod_first(cluster: DraCluster) -> None:
    """Two pods waiting for the one GPU: the higher priority goes first though it is younger, as
    kube-scheduler's queue orders pods."""
    with_nodes(cluster, {"n1": 1})
    cluster.apiserver.seed(whole_template("one", 1))
    old = claim_pod("old", ["one"], created="2026-12-01T00:00:00Z")
    urgent = claim_pod("urgent", ["one"], created="2026-12-01T00:05:00Z", priority=1000)
    place(cluster, old, urgent)
    assert cluster.allocator.run_once() == 1
    assert cluster.results(urgent) and not cluster.results(old)


def test_a_node_kube_scheduler_allocates_is_never_chosen(cluster: DraCluster) -> None:
    """A driver run with --allocator kube-scheduler hands its devices to the scheduler's first fit: fracgpu
    must not allocate them too (two allocators on one GPU race). Its claims still count for quotas."""
    cluster.apiserver.seed(dra_node("theirs"), *pool("theirs", gpus("theirs", 4), allocator="kube-scheduler"),
                           dra_node("mine"), *pool("mine", gpus("mine", 1)))
    cluster.settle(lambda: bool(cluster.view.devices("theirs")) and bool(cluster.view.devices("mine")))
    cluster.apiserver.seed(whole_template("one", 1))
    first, second = claim_pod("first", ["one"]), claim_pod("second", ["one"])
    place(cluster, first, second)
    assert cluster.allocator.run_once() == 1
    assert {r["pool"] for r in cluster.results(first)} == {"mine"}
    assert cluster.results(second) == []
    assert cluster.events("second") == ["0/1 nodes are available: 1 no whole free GPU"]  # "theirs" is not a candidate


class FlakyDiscovery:
    """An API server that cannot be reached `down` times, then serves resource.k8s.io/v1."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.asked = 0

    def request(self, method: str, path: str) -> dict[str, Any]:
        self.asked += 1
        if self.asked <= self.down:
            raise Unavailable(0, "Unreachable", f"{method} {path}: connection refused")
        return {"resources": [{"name": "resourceclaims"}]}


def test_dra_auto_waits_for_an_api_server_that_is_not_up_yet() -> None:
    waited: list[float] = []
    api = FlakyDiscovery(down=2)
    assert dra_wanted("auto", api, wait_s=60, sleep=waited.append) is True  # type: ignore[arg-type]
    assert (api.asked, waited) == (3, [1.0, 1.0])
    with pytest.raises(Unavailable):
        dra_wanted("auto", FlakyDiscovery(down=5), wait_s=0, sleep=waited.append)  # type: ignore[arg-type]


def test_the_allocator_thread_places_pods_as_their_claims_arrive(cluster: DraCluster) -> None:
    """Started as `fracgpu extender` starts it: woken by the cache's changes, no pass called by hand."""
    with_nodes(cluster, {"n1": 1})
    cluster.apiserver.seed(share_template("s10", 10, "1Gi"))
    cluster.allocator.start()
    try:
        pod = claim_pod("live", ["s10"])
        cluster.create_pod(pod)
        cluster.settle(lambda: bool(cluster.results(pod)))
    finally:
        cluster.allocator.stop()


def test_a_half_allocated_pod_is_cleared_after_a_grace_and_placed_whole(cluster: DraCluster) -> None:
    """A crash between the writes of a pod's two claims leaves one allocated: after 30 s it is cleared (not
    taken for kube-scheduler refusing the node) and the pod is allocated as a whole."""
    with_nodes(cluster, {"n1": 2})
    cluster.apiserver.seed(whole_template("one", 1))
    pod = claim_pod("half", ["one", "one"])
    cluster.create_pod(pod)
    [first, _] = cluster.claims_of(pod)
    device = device_names(gpus("n1", 2))["GPU-n1-0"]
    cluster.apiserver.seed({**first, "status": {"allocation": {
        "devices": {"results": [{"request": "gpus", "driver": DRA_DRIVER, "pool": "n1", "device": device,
                                 "shareID": str(uuid.uuid4()), "consumedCapacity": {"cores": "100",
                                                                                    "memory": str(80 * GI)}}]},
        "nodeSelector": node_selector("n1")}}})
    cluster.settle(lambda: [p.key for p in cluster.view.partial()] == ["default/half"])
    assert cluster.allocator.run_once() == 0 and len(cluster.results(pod)) == 1  # within the grace: left
    cluster.clock.advance(31)
    # cleared, then (as soon as the watch shows it) allocated whole on n1, the only node: had the clearing
    # been taken for a refusal of n1, no node would be left
    cluster.settle(lambda: cluster.allocator.run_once() >= 0 and len(cluster.results(pod)) == 2)
    assert cluster.counted("allocated") == 1


class Follower:
    def can_bind(self) -> bool:
        return False


def test_a_replica_that_does_not_lead_allocates_nothing(cluster: DraCluster) -> None:
    with_nodes(cluster, {"n1": 1})
    cluster.apiserver.seed(share_template("s10", 10, "1Gi"))
    place(cluster, claim_pod("p", ["s10"]))
    cluster.allocator.leadership = Follower()
    assert cluster.allocator.run_once() == 0
    assert [r for r in cluster.apiserver.requests if r.resource == "resourceclaims" and r.verb == "update"] == []


def test_an_event_that_cannot_be_written_does_not_stop_the_pass(cluster: DraCluster) -> None:
    with_nodes(cluster, {"n1": 1})
    cluster.apiserver.seed(share_template("no-memory", 50, None), share_template("s10", 10, "1Gi"))
    place(cluster, claim_pod("vague", ["no-memory"], created="2026-12-01T00:00:00Z"),
          claim_pod("fine", ["s10"], created="2026-12-01T00:01:00Z"))
    cluster.apiserver.fail_next("create", "events", 500, times=5)
    assert cluster.allocator.run_once() == 1
    assert cluster.counted("unreadable") == 1


def test_a_new_leader_allocates_only_once_its_cache_holds_the_old_leaders_allocations(cluster: DraCluster) -> None:
    """The fence a replica passes before it leads (extender.leader.CacheFence) also lists the claims: one the
    old leader allocated that this replica's claim watch has not shown yet keeps it from allocating, so it
    cannot give the same share away twice."""
    with_nodes(cluster, {"n1": 1})
    cluster.apiserver.seed(whole_template("one", 1))
    old, new = claim_pod("old", ["one"]), claim_pod("new", ["one"])
    place(cluster, old, new)
    fence = CacheFence(cluster.transport, cluster.scheduler, dra=cluster.view)
    assert fence() is None
    cluster.cache.reflectors["resourceclaims"].stop()  # this replica's claim watch lags from here
    [claim] = cluster.claims_of(old)
    device = device_names(gpus("n1", 1))["GPU-n1-0"]
    cluster.apiserver.seed({**claim, "status": {"allocation": {  # what the old leader wrote
        "devices": {"results": [{"request": "gpus", "driver": DRA_DRIVER, "pool": "n1", "device": device,
                                 "shareID": str(uuid.uuid4()),
                                 "consumedCapacity": {"cores": "100", "memory": str(80 * GI)}}]},
        "nodeSelector": node_selector("n1")}}})
    why = fence()
    assert why == "1 allocated claim(s) not in the cache yet, e.g. default/old-c0"
    stored = cluster.apiserver.get_object("resourceclaims", "old-c0", "default")
    assert stored is not None
    cluster.view.apply_claim(stored)  # the lagging watch catches up
    assert fence() is None
    assert cluster.allocator.run_once() == 0  # the one GPU is old's: new does not fit
    assert cluster.results(new) == []

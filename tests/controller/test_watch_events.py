"""The controller's cache as `fracgpu controller` feeds it: the real list+watch of the fake API server.

The other controller tests hand the cache whole lists (`ClusterCache.replace`); here every change
reaches it as a watch event (ADDED, MODIFIED, DELETED) through `main.watches`, so the event handlers
(`ClusterCache.node/pod/lease/job`) run as they do on a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from fracgpu.api.v1beta1.names import DEFAULT_RECOVERY_NAMESPACE, lease_name
from fracgpu.controller import main as cmain
from fracgpu.controller import recovery
from fracgpu.controller.config import ControllerConfig
from fracgpu.controller.loop import ClusterCache
from fracgpu.controller.views import World
from fracgpu.controller.writer import ControllerWriter
from fracgpu.kube.client import Transport, api_client_for_host
from fracgpu.kube.writer import KubeWriter
from tests.controller.conftest import NS, with_cfg
from tests.controller.test_recovery import TEMPLATE
from tests.fakes.apiserver import FakeApiServer
from tests.poll import wait_until as eventually

RECOVERY_NS = DEFAULT_RECOVERY_NAMESPACE
CFG = with_cfg(recovery_job=TEMPLATE, recovery_namespace=RECOVERY_NS)
WAIT_S = 10.0  # upper bound for the watch to deliver; never a timing assertion


@dataclass
class Watched:
    server: FakeApiServer
    cache: ClusterCache
    writer: ControllerWriter

    def world(self) -> World:
        return self.cache.world()


@pytest.fixture
def watched(one_node_two_gpus: FakeApiServer) -> Iterator[Watched]:
    """The controller's watches (recovery Jobs included) running against the server, synced."""
    cfg: ControllerConfig = CFG
    cache = ClusterCache(cfg.taint_key, cfg.namespace)
    transport = Transport(api_client_for_host(one_node_two_gpus.url))
    reflectors = cmain.watches(transport, cache, cfg, cmain.Options(cfg, "ctl").pod_field_selector)
    for r in reflectors:
        r.start()
    try:
        assert eventually(lambda: all(r.synced for r in reflectors))
        yield Watched(one_node_two_gpus, cache, ControllerWriter(KubeWriter(transport)))
    finally:
        for r in reflectors:
            r.stop()
        transport.close()


@dataclass(frozen=True)
class Gone:
    resource: str
    name: str
    namespace: str
    present: Callable[[World], bool]


GONE = [
    Gone("nodes", "n2", "", lambda w: "n2" in w.nodes),
    Gone("pods", "a", "ml", lambda w: any(p.name == "a" for p in w.pods)),
    Gone("leases", lease_name("n2"), NS, lambda w: "n2" in w.heartbeats),
]


@pytest.mark.parametrize("case", GONE, ids=[g.resource for g in GONE])
def test_a_deleted_object_leaves_the_world_and_wakes_a_round(watched: Watched, case: Gone) -> None:
    assert case.present(watched.world())
    watched.cache.changed.clear()
    assert watched.server.delete_object(case.resource, case.name, case.namespace)
    assert eventually(lambda: not case.present(watched.world()))
    assert watched.cache.changed.is_set()


def test_a_changed_node_is_seen_through_modified(watched: Watched) -> None:
    assert not watched.world().nodes["n1"].tainted
    watched.server.patch_object("nodes", "n1", {"spec": {"taints": [
        {"key": CFG.taint_key, "effect": "NoSchedule"}]}})
    assert eventually(lambda: watched.world().nodes["n1"].tainted)


def test_recovery_jobs_follow_the_watch_from_start_to_deletion(watched: Watched) -> None:
    """A running Job holds off a second one for its node; a finished one does not; a deleted one is forgotten."""
    assert watched.world().recovery_jobs == {}
    watched.writer.create_job(RECOVERY_NS, recovery.build_job(TEMPLATE, "n1", RECOVERY_NS, CFG.taint_key))
    assert eventually(lambda: watched.world().recovery_jobs == {"n1": True})
    (job,) = watched.server.list_objects("jobs", RECOVERY_NS)
    name = job["metadata"]["name"]
    watched.server.patch_object("jobs", name, {"status": {"conditions": [{"type": "Complete", "status": "True"}]}},
                                RECOVERY_NS)
    assert eventually(lambda: watched.world().recovery_jobs == {"n1": False})
    assert watched.server.delete_object("jobs", name, RECOVERY_NS)
    assert eventually(lambda: watched.world().recovery_jobs == {})


def test_jobs_that_are_not_recovery_jobs_are_not_watched_into_the_world(watched: Watched) -> None:
    labelled = recovery.build_job(TEMPLATE, "n1", RECOVERY_NS, CFG.taint_key)
    labelled["metadata"]["annotations"] = {}  # the label, but no node: someone else's Job
    watched.server.seed({**labelled, "metadata": {**labelled["metadata"], "name": "other"}})
    watched.writer.create_job(RECOVERY_NS, recovery.build_job(TEMPLATE, "n2", RECOVERY_NS, CFG.taint_key))
    # the watch delivers in order: when n2's Job is in, the other one has been seen (and left out)
    assert eventually(lambda: "n2" in watched.world().recovery_jobs)
    assert watched.world().recovery_jobs == {"n2": True}


def test_a_lease_of_another_namespace_is_no_heartbeat() -> None:
    """A Lease named like a heartbeat but outside fracgpu's namespace (a watch of every namespace) is ignored."""
    cache = ClusterCache(CFG.taint_key, CFG.namespace)
    lease = {"metadata": {"name": lease_name("n1"), "namespace": "elsewhere", "resourceVersion": "1"},
             "spec": {"holderIdentity": "x", "renewTime": "2026-01-01T00:00:00.000000Z"}}
    cache.lease("ADDED", lease)
    assert cache.world().heartbeats == {}
    cache.lease("ADDED", {**lease, "metadata": {**lease["metadata"], "namespace": CFG.namespace}})
    assert set(cache.world().heartbeats) == {"n1"}

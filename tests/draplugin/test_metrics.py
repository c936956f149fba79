"""The driver's /metrics as Prometheus reads it: the exposition served over real HTTP on its port, parsed with
prometheus_client's text parser, after real NodePrepareResources / NodeUnprepareResources calls from the
in-test kubelet, real health events of the backend and real slice writes to the fake API server."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from fracgpu.api.v1beta1.names import DRA_DRIVER
from tests.draplugin.kubelet import FakeDraKubelet
from tests.draplugin.world import GI, DraWorld

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
P = "fracgpu_dra_driver_"


class Scraper:
    """The driver's metrics server, started on a free loopback port, read as Prometheus reads it."""

    def __init__(self, world: DraWorld) -> None:
        assert world.app is not None
        self.port = world.app.serve_metrics(0, "127.0.0.1")

    def text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def __call__(self) -> Samples:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(self.text()) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def gpu(world: DraWorld, index: int) -> dict[str, str]:
    g = world.backend.inventory()[index]
    return {"gpu": g.uuid, "model": g.model}


def eventually(scrape: Callable[[], Samples], check: Callable[[Samples], bool], timeout: float = 5.0) -> Samples:
    """Scrape until `check` holds (a health event or a slice write lands on another thread)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape()
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def test_prepared_claims_and_held_capacity_follow_prepare_and_unprepare(node: DraWorld) -> None:
    scrape = Scraper(node)
    before = scrape()
    assert value(before, P + "prepared_claims") == 0
    assert value(before, "fracgpu_gpu_allocated_cores", **gpu(node, 0)) == 0
    assert value(before, P + "claims_total", call="prepare", outcome="ok") == 0

    a = node.claim("a", [(0, 50, 40)])
    b = node.claim("b", [(0, 20, 8), (1, 100, 80)])
    answer = node.kubelet.prepare(DRA_DRIVER, [("default", "a", a), ("default", "b", b)])
    assert answer.claims[a].error == answer.claims[b].error == ""
    s = scrape()
    assert value(s, P + "prepared_claims") == 2
    assert value(s, "fracgpu_gpu_allocated_cores", **gpu(node, 0)) == 70
    assert value(s, "fracgpu_gpu_allocated_memory_bytes", **gpu(node, 0)) == 48 * GI
    assert value(s, "fracgpu_gpu_allocated_cores", **gpu(node, 1)) == 100
    assert value(s, "fracgpu_gpu_allocated_memory_bytes", **gpu(node, 1)) == 80 * GI
    assert value(s, "fracgpu_gpu_allocated_cores", **gpu(node, 2)) == 0
    assert value(s, P + "claims_total", call="prepare", outcome="ok") == 2
    assert value(s, P + "prepare_seconds_count") == 1

    # the kubelet repeats a call (after its restart): answered from the checkpoint, held once
    node.kubelet.prepare(DRA_DRIVER, [("default", "a", a)])
    s = scrape()
    assert value(s, "fracgpu_gpu_allocated_cores", **gpu(node, 0)) == 70
    assert value(s, P + "claims_total", call="prepare", outcome="ok") == 3

    node.kubelet.unprepare(DRA_DRIVER, [("default", "a", a)])
    s = scrape()
    assert value(s, P + "prepared_claims") == 1
    assert value(s, "fracgpu_gpu_allocated_cores", **gpu(node, 0)) == 20
    assert value(s, "fracgpu_gpu_allocated_memory_bytes", **gpu(node, 0)) == 8 * GI
    assert value(s, P + "claims_total", call="unprepare", outcome="ok") == 1

    node.kubelet.unprepare(DRA_DRIVER, [("default", "b", b)])
    s = scrape()
    assert value(s, P + "prepared_claims") == 0
    assert value(s, "fracgpu_gpu_allocated_cores", **gpu(node, 1)) == 0
    assert value(s, P + "prepare_seconds_count") == 2


def test_refusals_and_failures_are_counted_apart_and_hold_nothing(node: DraWorld) -> None:
    scrape = Scraper(node)
    a = node.claim("a", [(0, 60, 40)])
    b = node.claim("b", [(0, 50, 10)])  # 110 cores: refused next to a
    node.claim("c", [(0, 10, 10)], uid="11111111-1111-1111-1111-111111111111")
    gone, replaced = "22222222-2222-2222-2222-222222222222", "33333333-3333-3333-3333-333333333333"
    node.kubelet.prepare(DRA_DRIVER, [("default", "a", a), ("default", "b", b), ("default", "gone", gone),
                                      ("default", "c", replaced)])
    node.apiserver.fail_next("get", "resourceclaims", 503, message="etcd leader changed")
    d = node.claim("d", [(1, 10, 10)])
    assert node.kubelet.prepare(DRA_DRIVER, [("default", "d", d)]).claims[d].error
    s = scrape()
    assert value(s, P + "claims_total", call="prepare", outcome="ok") == 1
    assert value(s, P + "claims_total", call="prepare", outcome="refused") == 2  # too big; replaced uid
    assert value(s, P + "claims_total", call="prepare", outcome="error") == 2  # not found; API server 503
    assert value(s, P + "prepared_claims") == 1
    assert value(s, "fracgpu_gpu_allocated_cores", **gpu(node, 0)) == 60
    assert value(s, "fracgpu_gpu_allocated_cores", **gpu(node, 1)) == 0
    # closed label sets: no claim's name or uid becomes a series
    text = scrape.text()
    for token in (a, b, gone, replaced, d, '"a"', "default/"):
        assert token not in text


def test_a_failing_gpu_shows_health_0_and_a_new_pool_generation(node: DraWorld) -> None:
    scrape = Scraper(node)
    s = eventually(scrape, lambda s: value(s, P + "pool_generation") == 1)
    assert value(s, P + "pool_generation") == 1
    assert value(s, P + "slice_publishes_total", outcome="written") == 1
    assert value(s, "fracgpu_gpu_healthy", **gpu(node, 2)) == 1

    node.backend.set_unhealthy(node.backend.inventory()[2].uuid, "XID 79")
    s = eventually(scrape, lambda s: value(s, P + "pool_generation") == 2
                   and value(s, "fracgpu_gpu_healthy", **gpu(node, 2)) == 0)
    assert value(s, "fracgpu_gpu_healthy", **gpu(node, 2)) == 0
    assert value(s, "fracgpu_gpu_healthy", **gpu(node, 1)) == 1
    assert value(s, P + "pool_generation") == 2  # the GPU tainted in a rewritten pool
    assert value(s, P + "slice_publishes_total", outcome="written") == 2


def test_slice_checks_are_counted_by_outcome(node: DraWorld) -> None:
    scrape = serve_and_wait_published(node)
    assert node.app is not None
    # other wakes (the kubelet's registration) may check the slices too: compare with what was counted
    unchanged = value(scrape(), P + "slice_publishes_total", outcome="unchanged")
    node.app.wake.set()  # a resync, as at a re-registration: the slices are intact
    s = eventually(scrape, lambda s: value(s, P + "slice_publishes_total", outcome="unchanged") > unchanged)
    assert value(s, P + "slice_publishes_total", outcome="unchanged") > unchanged
    node.apiserver.fail_next("list", "resourceslices", 503, message="etcd leader changed")
    node.app.wake.set()
    s = eventually(scrape, lambda s: value(s, P + "slice_publishes_total", outcome="error") == 1)
    assert value(s, P + "slice_publishes_total", outcome="error") == 1
    assert value(s, P + "slice_publishes_total", outcome="written") == 1  # nothing changed: never rewritten
    assert value(s, P + "pool_generation") == 1


def serve_and_wait_published(world: DraWorld) -> Scraper:
    scrape = Scraper(world)
    eventually(scrape, lambda s: value(s, P + "slice_publishes_total", outcome="written") == 1)
    return scrape


def test_registration_state_is_1_when_the_kubelet_accepts_and_0_when_it_refuses(world: DraWorld) -> None:
    world.kubelet.stop()
    old = FakeDraKubelet(world.registry_dir, services=("v0.DRAPlugin",))  # speaks no service the driver serves
    old.start()
    world.kubelet = old
    world.start_driver()
    scrape = Scraper(world)
    assert old.wait_for(lambda: bool(old.refusals))
    assert value(scrape(), P + "registered") == 0

    world.stop_driver()
    old.stop()
    world.kubelet = FakeDraKubelet(world.registry_dir)
    world.kubelet.start()
    world.start_driver()
    scrape = Scraper(world)
    world.kubelet.wait_registered(DRA_DRIVER)
    s = eventually(scrape, lambda s: value(s, P + "registered") == 1)
    assert value(s, P + "registered") == 1

"""Reflector against the fake API server: sync, events, 410 relist, dropped watches, stop()."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from fracgpu.kube import client, objects
from fracgpu.kube.objects import Obj
from fracgpu.kube.reflector import Reflector, WatchEvent
from fracgpu.kube.resources import NODES, PODS
from fracgpu.kube.retry import Backoff
from tests.fakes.apiserver import FakeApiServer
from tests.poll import eventually

WAIT_S = 10.0  # upper bound for a condition to become true; never asserted on


def pod(name: str, namespace: str = "default", node_name: str | None = None, **labels: str) -> Obj:
    spec: Obj = {"containers": [{"name": "c", "image": "busybox"}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                           "labels": dict(labels)}, "spec": spec}


class Recorder:
    """A thread-safe handler that remembers every event."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: WatchEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, count: int) -> list[tuple[str, str]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.events) >= count, WAIT_S), self.summary()
            return self.summary()

    def summary(self) -> list[tuple[str, str]]:
        return [(e.type, objects.name(e.object)) for e in self.events]

    def clear(self) -> None:
        with self._cond:
            self.events.clear()


class GatedSleep:
    """The reflector's sleep: records delays; when closed, holds the reflector until released."""

    def __init__(self, *, open: bool = True) -> None:
        self.delays: list[float] = []
        self._entered = threading.Semaphore(0)
        self._gate = threading.Event()
        if open:
            self._gate.set()

    def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        self._entered.release()
        self._gate.wait(WAIT_S)

    def wait_entered(self) -> None:
        assert self._entered.acquire(timeout=WAIT_S), "the reflector never backed off"

    def release(self) -> None:
        self._gate.set()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_reflector(transport: client.Transport, recorder: Recorder) -> Iterator[Callable[..., Reflector]]:
    started: list[Reflector] = []

    def make(**kwargs: object) -> Reflector:
        kwargs.setdefault("sleep", GatedSleep())
        reflector = Reflector(transport, PODS, recorder, **kwargs)  # type: ignore[arg-type]
        started.append(reflector.start())
        return reflector

    yield make
    for reflector in started:
        reflector.stop()


def test_initial_list_syncs_with_added_events(apiserver: FakeApiServer, recorder: Recorder,
                                             make_reflector: Callable[..., Reflector]) -> None:
    apiserver.seed(pod("a"), pod("b"), pod("c", namespace="other"))

    reflector = make_reflector()

    assert reflector.wait_synced(WAIT_S)
    assert sorted(recorder.wait_for(3)) == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    assert all(e.object["kind"] == "Pod" and e.object["apiVersion"] == "v1" for e in recorder.events)
    assert sorted(objects.key(o) for o in reflector.items()) == [("default", "a"), ("default", "b"), ("other", "c")]
    assert reflector.resource_version == str(apiserver.resource_version)
    assert reflector.lists == 1


def test_watch_delivers_add_modify_delete_in_order(apiserver: FakeApiServer, recorder: Recorder,
                                                   make_reflector: Callable[..., Reflector]) -> None:
    apiserver.seed(pod("a"), pod("b"))
    reflector = make_reflector()
    reflector.wait_synced(WAIT_S)
    recorder.wait_for(2)
    recorder.clear()

    apiserver.seed(pod("c"))
    apiserver.patch_object("pods", "a", {"metadata": {"annotations": {"fracgpu.io/phase": "allocated"}}},
                           "default")
    apiserver.delete_object("pods", "b", "default")

    assert recorder.wait_for(3) == [("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]
    eventually(lambda: reflector.resource_version == str(apiserver.resource_version))
    assert objects.annotations(reflector.get("a", "default") or {}) == {"fracgpu.io/phase": "allocated"}
    assert reflector.get("b", "default") is None
    assert reflector.lists == 1


def test_gone_relists_and_reports_what_vanished(apiserver: FakeApiServer, recorder: Recorder,
                                                make_reflector: Callable[..., Reflector]) -> None:
    apiserver.seed(pod("a"), pod("b"), pod("same"))
    sleep = GatedSleep(open=False)
    reflector = make_reflector(sleep=sleep)
    reflector.wait_synced(WAIT_S)
    recorder.wait_for(3)
    recorder.clear()
    assert apiserver.wait_for_watches(1, WAIT_S)

    apiserver.drop_watches()
    sleep.wait_entered()  # the reflector is backing off: it sees nothing of what follows
    apiserver.patch_object("pods", "a", {"metadata": {"labels": {"v": "2"}}}, "default")
    apiserver.delete_object("pods", "b", "default")
    apiserver.seed(pod("c"))
    apiserver.compact()  # the reflector's resourceVersion is now too old: 410
    sleep.release()

    assert sorted(recorder.wait_for(3)) == [("ADDED", "c"), ("DELETED", "b"), ("MODIFIED", "a")]
    deleted = next(e for e in recorder.events if e.type == "DELETED")
    assert objects.key(deleted.object) == ("default", "b")  # the last known object
    assert sorted(objects.name(o) for o in reflector.items()) == ["a", "c", "same"]
    eventually(lambda: reflector.lists == 2)
    assert len(recorder.events) == 3  # "same" did not change: no event


def test_http_410_on_watch_relists(apiserver: FakeApiServer, recorder: Recorder,
                                   make_reflector: Callable[..., Reflector]) -> None:
    apiserver.seed(pod("a"))
    apiserver.fail_next("watch", "pods", 410)

    reflector = make_reflector()

    eventually(lambda: reflector.lists == 2)
    assert recorder.wait_for(1) == [("ADDED", "a")]  # the relist found nothing new


def test_dropped_watch_resumes_without_losing_events(apiserver: FakeApiServer, recorder: Recorder,
                                                     make_reflector: Callable[..., Reflector]) -> None:
    apiserver.seed(pod("a"), pod("b"))
    sleep = GatedSleep(open=False)
    reflector = make_reflector(sleep=sleep, backoff=Backoff(initial_s=0.25, factor=2.0, cap_s=1.0))
    reflector.wait_synced(WAIT_S)
    recorder.wait_for(2)
    recorder.clear()
    assert apiserver.wait_for_watches(1, WAIT_S)
    last_seen = reflector.resource_version

    apiserver.drop_watches()
    sleep.wait_entered()
    apiserver.patch_object("pods", "a", {"metadata": {"labels": {"v": "2"}}}, "default")
    apiserver.delete_object("pods", "b", "default")
    apiserver.seed(pod("c"))
    sleep.release()

    assert recorder.wait_for(3) == [("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "c")]
    assert reflector.lists == 1  # resumed, not relisted
    watches = [r for r in apiserver.requests if r.verb == "watch"]
    assert f"resourceVersion={last_seen}" in watches[1].query
    assert sleep.delays == [0.25]


def test_failed_lists_back_off_exponentially_with_a_cap(apiserver: FakeApiServer, recorder: Recorder,
                                                        make_reflector: Callable[..., Reflector]) -> None:
    apiserver.seed(pod("a"))
    apiserver.fail_next("list", "pods", 500, times=4)
    sleep = GatedSleep()

    reflector = make_reflector(sleep=sleep, backoff=Backoff(initial_s=1.0, factor=2.0, cap_s=5.0))

    assert reflector.wait_synced(WAIT_S)
    assert sleep.delays == [1.0, 2.0, 4.0, 5.0]
    assert recorder.wait_for(1) == [("ADDED", "a")]


def test_expired_lists_back_off_too(apiserver: FakeApiServer, recorder: Recorder,
                                    make_reflector: Callable[..., Reflector]) -> None:
    apiserver.seed(pod("a"))
    apiserver.fail_next("list", "pods", 410, times=2)
    sleep = GatedSleep()

    reflector = make_reflector(sleep=sleep)

    assert reflector.wait_synced(WAIT_S)
    assert sleep.delays == [0.5, 1.0]


def test_stop_cuts_a_long_watch(apiserver: FakeApiServer, make_reflector: Callable[..., Reflector]) -> None:
    reflector = make_reflector(watch_timeout_s=3600)
    reflector.wait_synced(WAIT_S)
    assert apiserver.wait_for_watches(1, WAIT_S)

    reflector.stop(timeout_s=WAIT_S)

    assert not reflector.alive


def test_stop_wakes_a_backoff_sleep(apiserver: FakeApiServer, transport: client.Transport,
                                    recorder: Recorder) -> None:
    apiserver.fail_next("list", "pods", 500, times=1000)
    reflector = Reflector(transport, PODS, recorder, backoff=Backoff(initial_s=3600.0)).start()
    eventually(lambda: len([r for r in apiserver.requests if r.verb == "list"]) >= 1)

    reflector.stop(timeout_s=WAIT_S)

    assert not reflector.alive
    assert not reflector.synced


def test_field_selector_sees_pods_bound_to_its_node(apiserver: FakeApiServer, recorder: Recorder,
                                                    make_reflector: Callable[..., Reflector]) -> None:
    apiserver.seed(pod("here", node_name="n1"), pod("there", node_name="n2"), pod("pending"))
    reflector = make_reflector(field_selector="spec.nodeName=n1")
    reflector.wait_synced(WAIT_S)
    assert recorder.wait_for(1) == [("ADDED", "here")]

    api = client.Transport(apiserver.api_client())
    api.request("POST", PODS.path("default", "pending", "binding"), body={
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "pending"},
        "target": {"kind": "Node", "name": "n1"}})

    assert recorder.wait_for(2) == [("ADDED", "here"), ("ADDED", "pending")]


def test_label_selector_reports_objects_leaving_it(apiserver: FakeApiServer, recorder: Recorder,
                                                   make_reflector: Callable[..., Reflector]) -> None:
    apiserver.seed(pod("a", app="x"), pod("b", app="y"))
    reflector = make_reflector(label_selector="app=x", namespace="default")
    reflector.wait_synced(WAIT_S)
    assert recorder.wait_for(1) == [("ADDED", "a")]

    apiserver.patch_object("pods", "a", {"metadata": {"labels": {"app": "z"}}}, "default")
    apiserver.patch_object("pods", "b", {"metadata": {"labels": {"app": "x"}}}, "default")

    assert recorder.wait_for(3) == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "b")]
    eventually(lambda: [objects.name(o) for o in reflector.items()] == ["b"])


def test_bookmarks_advance_the_resource_version(apiserver: FakeApiServer,
                                                make_reflector: Callable[..., Reflector]) -> None:
    reflector = make_reflector()
    reflector.wait_synced(WAIT_S)
    assert apiserver.wait_for_watches(1, WAIT_S)
    apiserver.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})  # not a pod

    apiserver.send_bookmarks()

    eventually(lambda: reflector.resource_version == str(apiserver.resource_version))


def test_handler_errors_do_not_stop_the_reflector(apiserver: FakeApiServer, transport: client.Transport,
                                                  recorder: Recorder) -> None:
    def flaky(event: WatchEvent) -> None:
        recorder(event)
        if objects.name(event.object) == "boom":
            raise RuntimeError("handler bug")

    apiserver.seed(pod("boom"))
    reflector = Reflector(transport, PODS, flaky, sleep=GatedSleep()).start()
    try:
        reflector.wait_synced(WAIT_S)
        apiserver.seed(pod("after"))
        assert recorder.wait_for(2) == [("ADDED", "boom"), ("ADDED", "after")]
    finally:
        reflector.stop()


def test_on_synced_runs_after_every_full_list(apiserver: FakeApiServer,
                                              make_reflector: Callable[..., Reflector]) -> None:
    synced: list[int] = []
    apiserver.fail_next("watch", "pods", 410)
    reflector = make_reflector(on_synced=lambda: synced.append(1))
    eventually(lambda: reflector.lists == 2)
    assert synced == [1, 1]  # lists counts a full list once its events and on_synced are done


def test_a_namespace_for_a_cluster_scoped_resource_is_refused(transport: client.Transport) -> None:
    with pytest.raises(ValueError, match="cluster-scoped"):
        Reflector(transport, NODES, Recorder(), namespace="default")

"""Crash points and API-server trouble over the real paths: the extender's HTTP app, its list+watch
cache and its Binding writes against the fake API server.

After each fault the system converges from what the API server holds: no device ID handed out
twice, no GPU past its capacity (checked from the pods' annotations by `audit`, not by the
extender), the quota and the GPU share of a pod that never bound are free again, and bind answers a
reason instead of failing silently.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api.rfc3339 import format_time
from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE, LABEL_TENANT, PHASE_ALLOCATED
from fracgpu.core.records import node_unreadable_reservation, pod_record
from fracgpu.kube.errors import ServerError, Unavailable, error_from_status, outcome_unknown
from tests.extender.builders import GI, bind_args, filter_args, node_obj, pod_obj
from tests.extender.conftest import FakeClock
from tests.extender.probe import room
from tests.fakes.apiserver import ApiError, FakeApiServer
from tests.poll import eventually
from tests.reliability.harness import HttpClient, LiveExtender, audit, heartbeat_off


def free(ext: LiveExtender, node: str = "n1") -> int:
    """The vgpu-core a new pod gets on the one-GPU node, asked through /filter (tests/extender/probe.py)."""
    with HttpClient(ext.url) as http:
        def ask(pod: dict[str, Any], names: list[str]) -> dict[str, Any]:
            status, out = http.post_json("/filter", filter_args(pod, names))
            assert status == 200 and isinstance(out, dict), (status, out)
            return out

        return room(ask, node)


def post_bind(ext: LiveExtender, pod: dict[str, Any], node: str = "n1") -> dict[str, Any]:
    with HttpClient(ext.url) as http:
        status, out = http.post_json("/bind", bind_args(pod, node))
    assert status == 200, (status, out)
    assert isinstance(out, dict)
    return out


def post_filter(ext: LiveExtender, pod: dict[str, Any], nodes: list[str] | None = None) -> dict[str, Any]:
    with HttpClient(ext.url) as http:
        status, out = http.post_json("/filter", filter_args(pod, nodes or ["n1"]))
    assert status == 200 and out["Error"] == "", (status, out)
    assert isinstance(out, dict)
    return out


@dataclass
class HeldBinding:
    """The next Binding request waits in the API server until released; it then lands or fails."""

    apiserver: FakeApiServer
    fail_with: int | None = None

    def __post_init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()

        def hold() -> None:
            self.arrived.set()
            self.release.wait(10)

        self.apiserver.on_next("create", "pods/binding", hold)
        if self.fail_with is not None:
            self.apiserver.fail_next("create", "pods/binding", self.fail_with)


def bind_in_background(ext: LiveExtender, pod: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            with HttpClient(ext.url, timeout_s=10) as http:
                http.post_json("/bind", bind_args(pod, "n1"))
        except OSError:
            pass  # the extender died under it: kube-scheduler sees a failed bind

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


A = pod_obj("a", 60, "8Gi")
B = pod_obj("b", 60, "8Gi")
WHOLE = pod_obj("whole", 100)


@pytest.fixture
def one_gpu(apiserver: FakeApiServer) -> FakeApiServer:
    """A node with ONE GPU, tenant `t` (namespace default) limited to 100 vgpu-core, pods a and b pending."""
    apiserver.seed(
        node_obj("n1", 1),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": {LABEL_TENANT: "t"}}},
        {"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota", "metadata": {"name": "t"},
         "spec": {"namespaceSelector": {"matchLabels": {LABEL_TENANT: "t"}}, "hard": {"fracgpu.io/vgpu-core": "100"}}},
        A, B, WHOLE,
    )
    return apiserver


def restart(apiserver: FakeApiServer, **kw: Any) -> LiveExtender:
    return LiveExtender(apiserver, heartbeat_off(**kw)).start()


# ---- crash points ---------------------------------------------------------------------------------

def test_killed_while_the_binding_is_in_flight_and_it_never_lands(one_gpu: FakeApiServer) -> None:
    held = HeldBinding(one_gpu, fail_with=503)
    ext = restart(one_gpu)
    t = bind_in_background(ext, A)
    assert held.arrived.wait(5)
    assert ext.scheduler.stats().assumed == 1 and free(ext) == 40  # the reservation is taken
    ext.kill()  # ... and the process dies before the Binding returns
    held.release.set()  # the API server then refuses the Binding
    t.join(10)
    assert (one_gpu.get_object("pods", "a", "default") or {})["spec"].get("nodeName") is None
    ext2 = restart(one_gpu)
    try:
        # nothing held: the reservation died with the process, the GPU and the quota are whole
        assert free(ext2) == 100 and ext2.scheduler.stats().reservations == 0
        assert post_filter(ext2, A)["NodeNames"] == ["n1"]
        assert post_bind(ext2, A) == {"Error": ""}
        assert post_bind(ext2, B)["Error"]  # 60 + 60 > 100: refused with a reason
    finally:
        ext2.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/a"}


def test_killed_while_the_binding_is_in_flight_and_it_lands_after_the_crash(one_gpu: FakeApiServer) -> None:
    held = HeldBinding(one_gpu)
    ext = restart(one_gpu)
    t = bind_in_background(ext, A)
    assert held.arrived.wait(5)
    ext.kill()
    held.release.set()  # the Binding lands although its writer is gone
    t.join(10)
    eventually(lambda: (one_gpu.get_object("pods", "a", "default") or {})["spec"].get("nodeName") == "n1")
    ext2 = restart(one_gpu)
    try:
        # the restarted extender charges a from its annotation, once
        assert free(ext2) == 40
        out = post_filter(ext2, B)
        assert out["NodeNames"] == [] and "n1" in out["FailedNodes"] | out["FailedAndUnresolvableNodes"]
        assert post_bind(ext2, B)["Error"]
        assert post_bind(ext2, WHOLE)["Error"]
    finally:
        ext2.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/a"}


def test_killed_after_the_binding_before_the_watch_confirms_it(one_gpu: FakeApiServer) -> None:
    ext = restart(one_gpu)
    ext.cache.reflectors["pods"].stop()  # the watch will never show this extender its own Binding
    assert post_bind(ext, A) == {"Error": ""}
    stats = ext.scheduler.stats()
    assert stats.assumed == 0 and stats.awaiting_watch == 1  # bound by the API server's answer, not yet seen
    ext.kill()
    ext2 = restart(one_gpu)
    try:
        assert free(ext2) == 40 and ext2.scheduler.stats().assumed == 0
        assert post_bind(ext2, A) == {"Error": ""}  # kube-scheduler retrying the same bind: idempotent
        assert free(ext2) == 40
        assert post_bind(ext2, B)["Error"]
    finally:
        ext2.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/a"}


def test_a_stalled_watch_longer_than_the_assume_ttl_does_not_free_a_bound_share(one_gpu: FakeApiServer) -> None:
    """Known gap 1, fixed: a Binding that returned success is confirmed at once; the assume TTL never
    expires it, and a late event showing the pod still pending does not free it either."""
    clock = FakeClock()
    ext = LiveExtender(one_gpu, heartbeat_off(), clock=clock).start()
    try:
        ext.cache.reflectors["pods"].stop()  # the pod watch stalls (API server watch cache lag, outage)
        assert post_bind(ext, A) == {"Error": ""}  # the Binding landed: a is on the GPU
        stats = ext.scheduler.stats()
        assert stats.assumed == 0 and stats.awaiting_watch == 1
        clock.advance(ext.config.assume_ttl_s + 1)
        assert post_bind(ext, B)["Error"]  # 60 + 60 > 100: refused, a keeps its device IDs
        assert free(ext) == 40
        # an event from before the Binding (a pending a) delivered late does not free the share either
        ext.scheduler.apply_pod(pod_record(A))
        clock.advance(ext.config.assume_ttl_s + 1)
        assert post_bind(ext, WHOLE)["Error"] and free(ext) == 40
    finally:
        ext.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/a"}, a.problems


def test_a_binding_that_times_out_but_lands_is_not_double_booked(one_gpu: FakeApiServer) -> None:
    """Known gap 2, fixed: a Binding whose request timed out keeps its reservation until the watch
    shows how it ended; when it lands late, nobody else holds its device IDs."""
    gate = threading.Event()
    one_gpu.on_next("create", "pods/binding", lambda: gate.wait(10))  # held past the writer's timeout
    ext = LiveExtender(one_gpu, heartbeat_off(), bind_timeout_s=0.3).start()
    try:
        out = post_bind(ext, A)
        assert "default/a" in out["Error"] and "outcome unknown" in out["Error"], out
        assert free(ext) == 40 and ext.scheduler.stats().assumed == 1  # the share stays with a
        assert post_bind(ext, B)["Error"]  # ... so b is refused, not given a's device IDs
        gate.set()  # a's Binding lands after all
        eventually(lambda: (one_gpu.get_object("pods", "a", "default") or {})["spec"].get("nodeName") == "n1")
        # the watch shows a bound with its reservation: resolved, charged once
        eventually(lambda: ext.scheduler.stats().assumed == 0 and ext.scheduler.stats().awaiting_watch == 0,
                   what="the watch resolves the unknown outcome")
        assert free(ext) == 40
        assert post_bind(ext, A) == {"Error": ""}  # kube-scheduler's retry: idempotent
    finally:
        gate.set()
        ext.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/a"}, a.problems


def _drop_connection() -> None:
    raise ConnectionResetError("injected: connection dropped before an answer")


def _times_out_then_refused(apiserver: FakeApiServer) -> None:
    def slow_then_refuse() -> None:
        threading.Event().wait(0.6)  # longer than the writer's 0.3 s
        raise ApiError(500, "injected 500 after the client gave up")

    apiserver.on_next("create", "pods/binding", slow_then_refuse)


UNKNOWN_OUTCOMES = {
    "server timeout 504": lambda api: api.fail_next("create", "pods/binding", 504, message="injected 504"),
    "connection dropped": lambda api: api.on_next("create", "pods/binding", _drop_connection),
    "client timeout, never lands": _times_out_then_refused,
}


@pytest.mark.parametrize("fault", sorted(UNKNOWN_OUTCOMES))
def test_an_unknown_outcome_keeps_the_reservation_and_the_retry_resends_it(one_gpu: FakeApiServer, fault: str
                                                                          ) -> None:
    """No definite answer: bind says so, the share stays with the pod, kube-scheduler's retry is
    steered to the same node (filter) and re-sends the very same Binding, which lands once."""
    one_gpu.seed(node_obj("n2", 1))
    wall = FakeClock()  # the assign time written into a reservation
    ext = LiveExtender(one_gpu, heartbeat_off(), bind_timeout_s=0.3, wall=wall).start()
    try:
        UNKNOWN_OUTCOMES[fault](one_gpu)
        first = wall.t
        out = post_bind(ext, A)
        assert "default/a" in out["Error"] and "outcome unknown" in out["Error"], out
        ext.writer.transport.timeout_s = 10.0  # later writes: no client timeout on a busy test machine
        assert ext.scheduler.stats().assumed == 1 and free(ext) == 40
        wall.advance(600)  # a reservation made again now would carry a later assign time
        # kube-scheduler's retry: filter keeps only the reserved node, the other one says why
        out = post_filter(ext, A, ["n1", "n2"])
        assert out["NodeNames"] == ["n1"], out
        assert out["FailedAndUnresolvableNodes"] == {"n2": "pod default/a already holds a reservation on node n1"}
        assert "already reserved on node n1" in post_bind(ext, A, "n2")["Error"]
        assert post_bind(ext, A) == {"Error": ""}  # the same Binding again: it lands (or is known as ours)
        pod = one_gpu.get_object("pods", "a", "default") or {}
        landed = Assignment.from_json(pod["metadata"]["annotations"][ANN_ASSIGNED])
        assert pod["spec"]["nodeName"] == "n1" and landed.assigned_at == format_time(first)  # the first one's
        assert ext.scheduler.stats().assumed == 0 and free(ext) == 40
        assert post_bind(ext, B, "n2")["Error"]  # tenant t: 60 of 100 used, b asks 60
    finally:
        ext.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/a"}, a.problems


def test_a_refused_retry_does_not_free_a_binding_that_may_still_land(one_gpu: FakeApiServer) -> None:
    """The first Binding is stuck in the API server (the extender gave up on it), the retry is refused
    with a 500: the reservation stays, because the first one may still land -- and it does."""
    gate = threading.Event()
    one_gpu.on_next("create", "pods/binding", lambda: gate.wait(10))
    ext = LiveExtender(one_gpu, heartbeat_off(), bind_timeout_s=0.3).start()
    try:
        assert "outcome unknown" in post_bind(ext, A)["Error"]
        ext.writer.transport.timeout_s = 10.0  # the retry gets its answer, however busy the machine
        one_gpu.fail_next("create", "pods/binding", 500, message="injected 500 for the retry")
        out = post_bind(ext, A)
        assert "injected 500 for the retry" in out["Error"] and "may still land" in out["Error"], out
        assert free(ext) == 40 and post_bind(ext, B)["Error"]
        gate.set()  # the first Binding lands after all
        eventually(lambda: ext.scheduler.stats().assumed == 0 and ext.scheduler.stats().awaiting_watch == 0,
                   what="the watch shows the late Binding")
        assert free(ext) == 40
    finally:
        gate.set()
        ext.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/a"}, a.problems


def test_an_unknown_outcome_nothing_resolves_is_dropped_after_the_assume_ttl(one_gpu: FakeApiServer) -> None:
    clock = FakeClock()
    ext = LiveExtender(one_gpu, heartbeat_off(), clock=clock).start()
    try:
        one_gpu.on_next("create", "pods/binding", _drop_connection)
        assert "outcome unknown" in post_bind(ext, A)["Error"]
        clock.advance(ext.config.assume_ttl_s - 1)
        assert post_bind(ext, B)["Error"] and free(ext) == 40  # still a's
        clock.advance(2)  # the TTL counts from the moment the outcome became unknown
        assert post_bind(ext, B) == {"Error": ""}
        assert ext.scheduler.stats().reservations == 1  # b's: a's reservation is gone
    finally:
        ext.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/b"}, a.problems


def test_an_unknown_outcome_ends_when_the_pod_is_gone(one_gpu: FakeApiServer) -> None:
    clock = FakeClock()
    ext = LiveExtender(one_gpu, heartbeat_off(), clock=clock).start()
    try:
        one_gpu.on_next("create", "pods/binding", _drop_connection)
        assert "outcome unknown" in post_bind(ext, A)["Error"]
        one_gpu.delete_object("pods", "a", namespace="default")  # a pending pod goes at once
        eventually(lambda: free(ext) == 100, what="a's share back once a is gone")
        assert post_bind(ext, B) == {"Error": ""}
    finally:
        ext.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/b"}, a.problems


def test_an_unreadable_reservation_on_a_bound_pod_fails_closed(one_gpu: FakeApiServer) -> None:
    """Known gap 3, fixed: a bound pod whose fracgpu.io/assigned cannot be read (corrupt, a newer
    format) makes its node take no new GPU pod, with the same reason naming the pod for every pod
    that asks; the node is usable again once the pod ends."""
    one_gpu.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}},
                 pod_obj("x", 30, namespace="other", node="n1", phase="Running",
                         annotations={ANN_ASSIGNED: '{"version": 99}', ANN_PHASE: PHASE_ALLOCATED}))
    ext = restart(one_gpu)
    try:
        reason = node_unreadable_reservation(["other/x"])
        assert "pod other/x " in reason and ANN_ASSIGNED in reason
        for pod in (WHOLE, A, pod_obj("tiny", 1, "1Gi")):
            out = post_filter(ext, pod)
            assert out["NodeNames"] == [] and out["FailedAndUnresolvableNodes"] == {"n1": reason}, out
        assert reason in post_bind(ext, A)["Error"]
        assert ext.scheduler.stats().unreadable == 1
        one_gpu.patch_object("pods", "x", {"status": {"phase": "Succeeded"}}, namespace="other")
        eventually(lambda: post_filter(ext, A)["NodeNames"] == ["n1"], what="n1 usable once x ended")
        assert post_bind(ext, A) == {"Error": ""}
    finally:
        ext.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/a"}, a.problems


def test_an_unreadable_reservation_charges_the_tenant_the_pods_request(one_gpu: FakeApiServer) -> None:
    """The tenant of a pod with an unreadable reservation is charged the pod's request (fail closed);
    once a readable reservation comes back the pod is charged once, from it."""
    one_gpu.seed(node_obj("n2", 1), pod_obj("x", 60, "8Gi", node="n1", phase="Running",
                                            annotations={ANN_ASSIGNED: "{not json", ANN_PHASE: PHASE_ALLOCATED}))
    ext = restart(one_gpu)
    try:
        out = post_filter(ext, B, ["n1", "n2"])
        quota = "tenant tq/t: vgpu-core 60 of 100 used, pod asks 60"
        assert out["NodeNames"] == [] and set(out["FailedAndUnresolvableNodes"].values()) == {quota}, out
        good = Assignment(node="n1", tenant="tq/t", assigned_at="2026-11-23T00:00:00Z",
                          gpus=(GpuShare("GPU-n1-0", 60, 8 * GI, tuple(f"GPU-n1-0::{k}" for k in range(60))),),
                          containers=(ContainerShare("c0", "app", tuple(f"GPU-n1-0::{k}" for k in range(60))),))
        one_gpu.patch_object("pods", "x", {"metadata": {"annotations": {ANN_ASSIGNED: good.to_json()}}},
                             namespace="default")
        eventually(lambda: ext.scheduler.stats().unreadable == 0, what="the readable reservation seen")
        assert free(ext) == 40  # charged once, from the annotation
        assert set(post_filter(ext, B, ["n1", "n2"])["FailedAndUnresolvableNodes"].values()) == {quota}
    finally:
        ext.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/x"}, a.problems


# ---- API server trouble -----------------------------------------------------------------------------

@pytest.mark.parametrize("code", [403, 404, 409, 422, 429, 500, 503])
def test_a_refused_binding_fails_the_bind_with_a_reason_and_frees_the_share(one_gpu: FakeApiServer,
                                                                           code: int) -> None:
    ext = restart(one_gpu)
    try:
        one_gpu.fail_next("create", "pods/binding", code, message=f"injected {code}")
        out = post_bind(ext, A)
        assert f"injected {code}" in out["Error"] and "default/a" in out["Error"], out
        assert free(ext) == 100 and ext.scheduler.stats().reservations == 0  # reservation and quota released
        assert post_bind(ext, A) == {"Error": ""}  # kube-scheduler's retry succeeds
    finally:
        ext.kill()
    assert not audit(one_gpu).problems


def test_filter_answers_from_the_cache_while_the_api_server_is_down(one_gpu: FakeApiServer) -> None:
    ext = restart(one_gpu)
    try:
        assert post_bind(ext, A) == {"Error": ""}
        eventually(lambda: ext.scheduler.stats().assumed == 0)
        # the API server goes bad: every watch and list fails for a while, open watches are cut
        for verb in ("watch", "list"):
            one_gpu.fail_next(verb, "*", 503, times=20)
        one_gpu.compact()
        one_gpu.drop_watches()
        one_gpu.latency_s = 0.05  # and slow
        before = len(one_gpu.requests)
        for _ in range(5):
            out = post_filter(ext, WHOLE)  # same answer as before the outage, from the cache
            assert out["NodeNames"] == [] and "tenant tq/t" in out["FailedAndUnresolvableNodes"]["n1"], out
        sent = [r for r in one_gpu.requests[before:] if r.verb not in ("watch", "list")]
        assert not sent, sent  # filter never calls the API server
        assert "no single GPU with 60 free vgpu-core" in post_bind(ext, B)["Error"]  # from the cache, with a reason
        # the API server heals: the cache relists and sees what changed meanwhile
        one_gpu.latency_s = 0.0
        one_gpu.patch_object("pods", "a", {"status": {"phase": "Succeeded"}}, namespace="default")
        eventually(lambda: free(ext) == 100, timeout_s=15, what="a's share back after the relist")
        assert post_bind(ext, WHOLE) == {"Error": ""}
    finally:
        ext.kill()
    a = audit(one_gpu)
    assert not a.problems and a.placed == {"default/whole"}


def test_quota_is_not_lost_or_doubled_across_restarts(one_gpu: FakeApiServer) -> None:
    """Tenant t may hold 100 vgpu-core: a (60) bound by one extender, the restarted one refuses b (60)
    on quota although a second GPU appears, and admits b once a ended."""
    ext = restart(one_gpu)
    assert post_bind(ext, A) == {"Error": ""}
    ext.kill()
    one_gpu.seed(node_obj("n2", 1))
    ext2 = restart(one_gpu)
    try:
        out = post_filter(ext2, B, ["n1", "n2"])
        assert out["NodeNames"] == [], out
        assert set(out["FailedAndUnresolvableNodes"].values()) == {"tenant tq/t: vgpu-core 60 of 100 used, pod asks 60"}
        assert "tenant tq/t" in post_bind(ext2, B, "n2")["Error"]
        one_gpu.patch_object("pods", "a", {"status": {"phase": "Succeeded"}}, namespace="default")
        eventually(lambda: post_filter(ext2, B, ["n1", "n2"])["NodeNames"] != [], what="quota back")
    finally:
        ext2.kill()


@pytest.mark.parametrize(("error", "unknown"), [
    (Unavailable(0, "ReadFailed", "read timed out"), True),
    (Unavailable(0, "Unreachable", "connection reset by peer"), True),
    (error_from_status(504, {"reason": "Timeout"}), True),
    (error_from_status(500, {"reason": "ServerTimeout"}), True),
    (ServerError(201, "BadResponse", "answer is not JSON"), True),
    (TimeoutError("raw socket timeout"), True),
    *[(error_from_status(code, None), False) for code in (400, 403, 404, 409, 422, 429, 500, 502, 503)],
    (RuntimeError("a binder that said no"), False),
])
def test_which_binding_errors_leave_the_outcome_unknown(error: BaseException, unknown: bool) -> None:
    """The table bind follows: unknown keeps the reservation assumed, anything else releases it."""
    assert outcome_unknown(error) is unknown

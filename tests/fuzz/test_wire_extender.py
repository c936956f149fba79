"""Hostile bodies for the extender's /filter, /prioritize and /bind over real HTTP.

Whatever the body, the answer is a 400 with a message (malformed input) or a 200 whose body is
well-formed for the verb (reasons for every node, an `Error` for a refused bind) — never a 500,
never an "internal error", and the server keeps answering. After the run the extender's own books
are still consistent (no GPU charged past 100 vgpu-core).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.extender import ExtenderBindingArgs
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_GPU_MODEL, ANN_TOPOLOGY, ANN_ZONE_POLICY, LABEL_GROUP
from fracgpu.extender.app import make_app
from fracgpu.extender.reasons import ReasonKind, reason_kind
from fracgpu.extender.scheduler import BindRefused, SchedulerConfig
from tests.extender.builders import bind_args, filter_args, node_obj, pod_obj
from tests.extender.conftest import World, build_world
from tests.reliability.harness import HttpClient, ServedApp

NODES = ["n0", "n1", "n2", "n3"]
BROKEN = ["bad-json", "bad-type", "no-inv", "not-opted-in"]
EVERY = [*NODES, *BROKEN]
LIMIT = 64 * 1024
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


class Served:
    def __init__(self, world: World, served: ServedApp) -> None:
        self.world = world
        self.served = served
        self.http = HttpClient(served.url)
        self.tried = 0
        self.bound: dict[str, tuple[str, str]] = {}  # pod key -> (node, uid) of the binds that succeeded

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        self.tried += 1
        status, out = self.http.post_json(path, body)
        if path == "/bind" and (status, out) == (200, {"Error": ""}):
            args = ExtenderBindingArgs.from_obj(body)
            self.bound.setdefault(args.pod_key, (args.node, args.pod_uid))
        return status, out


@pytest.fixture(scope="module")
def extender() -> Iterator[Served]:
    """4 good nodes of 2 GPUs, 4 nodes with broken or missing inventories, a few pending pods."""
    objs: list[dict[str, Any]] = [node_obj(n, 2, zone=f"z{i % 2}") for i, n in enumerate(NODES)]
    objs += [node_obj("bad-json", 2, inv="{not json"), node_obj("bad-type", 2, inv='{"gpus": [{"uuid": 7}]}'),
             node_obj("no-inv", 2, inv=""), node_obj("not-opted-in", 2, enabled=False)]
    objs += [pod_obj(f"p{i}", c, m) for i, (c, m) in enumerate([(50, "8Gi"), (100, None), (200, None), (10, "1Gi")])]
    world = build_world(objs, config=SchedulerConfig(k=2, heartbeat_stale_s=0), body_limit=LIMIT)
    with ServedApp(make_app(world.deps)) as served:
        s = Served(world, served)
        yield s
        s.http.close()
        # the extender's books after everything, from the Bindings it wrote: nothing past a GPU's
        # capacity, no device ID twice
        cores: dict[tuple[str, str], int] = {}
        ids: list[tuple[str, str]] = []
        for *_, node, ann in world.binder.bindings:
            a = Assignment.from_json(ann[ANN_ASSIGNED])
            for g in a.gpus:
                cores[(node, g.uuid)] = cores.get((node, g.uuid), 0) + g.cores
                ids += [(node, i) for i in g.device_ids]
        assert all(c <= 100 for c in cores.values()), cores
        assert len(ids) == len(set(ids))


# ---- strategies ---------------------------------------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_any = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=8)

quantity = st.one_of(
    st.sampled_from(["150", "-1", "0", "101", "99", "100", "250", "1e3", "0.5", "50m", "1Ki", "abc", "", " 50",
                     "9" * 40, "1e309", "NaN", "Infinity", "100.0", "200", "+50", "0x10", "50Gi", "1E2", "-0",
                     "5e-1", "1.5", "10Ei", "0.0001Gi", "8Gi", "80Gi", "81Gi", "-8Gi", "1e100Gi"]),
    st.integers(-(2**64), 2**64).map(str),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.none(), st.booleans(), st.lists(st.integers(), max_size=2), st.text(max_size=12),
)

annotation_value = st.one_of(
    st.sampled_from(["A100*", "!T4", "A100*,H100*", "*", "!*", "", ",", "[", "required", "preferred", "none",
                     "same", "spread", "bogus", "A100-SXM4-80GB", "\x00", "🙂" * 10]),
    st.text(max_size=40),
)


@st.composite
def hostile_pod(draw: st.DrawFn) -> dict[str, Any]:
    pod = pod_obj(draw(st.sampled_from(["p0", "p1", "p2", "p3", "ghost"])), 50, "8Gi")
    containers = pod["spec"]["containers"]
    res = containers[0]["resources"]
    for part in ("requests", "limits"):
        if draw(st.booleans()):
            res[part]["fracgpu.io/vgpu-core"] = draw(quantity)
        if draw(st.booleans()):
            res[part]["fracgpu.io/vgpu-memory"] = draw(quantity)
    if draw(st.integers(0, 4)) == 0:
        res["requests"] = draw(json_any)
    if draw(st.integers(0, 4)) == 0:
        containers.append(draw(json_any))
    if draw(st.integers(0, 4)) == 0:
        pod["spec"]["initContainers"] = [copy.deepcopy(containers[0]) | {"name": "i", "restartPolicy":
                                                                        draw(st.sampled_from(["Always", "Never", 3]))}]
    anns = pod["metadata"]["annotations"]
    for key in draw(st.lists(st.sampled_from([ANN_GPU_MODEL, ANN_TOPOLOGY, ANN_ZONE_POLICY]), max_size=3)):
        anns[key] = draw(annotation_value)
    if draw(st.booleans()):
        pod["metadata"]["labels"][LABEL_GROUP] = draw(st.text(max_size=10))
    if draw(st.integers(0, 5)) == 0:
        pod["metadata"]["annotations"] = draw(json_any)
    if draw(st.integers(0, 5)) == 0:
        pod["spec"]["priority"] = draw(json_leaf)
    if draw(st.integers(0, 5)) == 0:
        pod["metadata"]["creationTimestamp"] = draw(json_leaf)
    if draw(st.integers(0, 6)) == 0:
        pod["metadata"]["namespace"] = draw(json_leaf)
    if draw(st.integers(0, 8)) == 0:
        del pod[draw(st.sampled_from(["spec", "metadata"]))]
    return pod


node_names = st.lists(st.one_of(st.sampled_from(EVERY), st.text(min_size=1, max_size=12)), max_size=12)


@st.composite
def filter_body(draw: st.DrawFn) -> Any:
    pod = draw(hostile_pod())
    names = draw(node_names)
    cache_capable = draw(st.booleans())
    body = filter_args(pod, names, cache_capable=cache_capable)
    shape = draw(st.integers(0, 9))
    if shape == 0:
        body["NodeNames"] = draw(json_any)
    elif shape == 1:
        body = {k.lower() if draw(st.booleans()) else k.upper(): v for k, v in body.items()}
    elif shape == 2:
        body.pop(draw(st.sampled_from(sorted(body))))
    elif shape == 3:
        body["Nodes"] = draw(json_any)
        body["NodeNames"] = None
    return body


# ---- invariants ---------------------------------------------------------------------------------

def _check_answer(status: int, body: Any, verb: str) -> None:
    assert status in (200, 400), (status, body)
    if status == 400:
        assert isinstance(body, dict) and isinstance(body.get("Error"), str) and body["Error"], body
        return
    text = json.dumps(body)
    assert "internal error" not in text, body


def _check_filter(sent: Any, status: int, out: Any) -> None:
    _check_answer(status, out, "filter")
    if status != 200:
        return
    assert isinstance(out, dict), out
    if out["Error"]:
        # the one filter Error: the nodes that fit wait for a pod still allocating (retried in seconds)
        assert reason_kind(out["Error"]) == ReasonKind.STILL_ALLOCATING, out
        assert not (out["NodeNames"] or out["FailedNodes"] or out["FailedAndUnresolvableNodes"]), out
        return
    folded = {k.lower(): v for k, v in sent.items()}  # Go's decoder matches keys in any case
    if isinstance(folded.get("nodenames"), list):
        sent_names = list(folded["nodenames"])
        kept_list = list(out["NodeNames"])
    else:
        nodes = {k.lower(): v for k, v in folded["nodes"].items()}
        sent_names = [n["metadata"]["name"] for n in nodes.get("items") or []]
        kept_list = [n["metadata"]["name"] for n in out["Nodes"]["items"]]
    names, kept = set(sent_names), set(kept_list)
    failed, unres = set(out["FailedNodes"]), set(out["FailedAndUnresolvableNodes"])
    # at most one outcome per candidate (a node named twice too), only candidates, at most k kept;
    # every refusal says why. (Nodes that fit but are not among the best k get no entry at all.)
    assert kept | failed | unres <= names, (names, out)
    assert not (kept & failed or kept & unres or failed & unres), out
    assert len(kept) <= 2, out
    assert len(kept_list) == len(kept), out
    assert all(isinstance(r, str) and r for r in [*out["FailedNodes"].values(),
                                                   *out["FailedAndUnresolvableNodes"].values()]), out
    assert not kept & set(BROKEN), out  # a node with a broken inventory is never kept


@SETTINGS
@given(body=st.one_of(st.binary(max_size=200), json_any.map(lambda v: json.dumps(v).encode())),
       path=st.sampled_from(["/filter", "/prioritize", "/bind"]))
def test_garbage_bodies_are_400_or_reasoned(extender: Served, body: bytes, path: str) -> None:
    status, out = extender.post(path, body)
    _check_answer(status, out, path)


@SETTINGS
@given(body=filter_body())
def test_hostile_filter_requests(extender: Served, body: Any) -> None:
    status, out = extender.post("/filter", body)
    _check_filter(body, status, out)


@SETTINGS
@given(body=filter_body())
def test_hostile_prioritize_requests(extender: Served, body: Any) -> None:
    status, out = extender.post("/prioritize", body)
    _check_answer(status, out, "prioritize")
    if status == 200:
        assert isinstance(out, list), out
        for item in out:
            assert isinstance(item["Host"], str) and 0 <= item["Score"] <= 10, out


@SETTINGS
@given(pod=st.sampled_from(["p0", "p1", "p2", "p3", "ghost", ""]), ns=st.sampled_from(["default", "other", ""]),
       uid=st.one_of(st.just("match"), st.text(max_size=8), st.none(), st.integers()),
       node=st.one_of(st.sampled_from(EVERY), st.text(max_size=8), st.none()),
       case=st.sampled_from(["PodName", "podname", "PODNAME"]))
def test_hostile_bind_requests(extender: Served, pod: str, ns: str, uid: Any, node: Any, case: str) -> None:
    body: dict[str, Any] = bind_args(pod_obj(pod or "x", namespace=ns or "default"), "n0")
    body.pop("PodName")
    body[case] = pod
    body["PodNamespace"] = ns
    body["PodUID"] = f"uid-{ns}-{pod}" if uid == "match" else uid
    body["Node"] = node
    held = extender.bound.get(f"{ns}/{pod}")
    repeated = held is not None and held == (node, body["PodUID"])
    status, out = extender.post("/bind", body)
    _check_answer(status, out, "bind")
    if status == 200:
        assert set(out) == {"Error"}, out
        known = pod in ("p0", "p1", "p2", "p3") and ns == "default" and uid == "match" and node in NODES
        if not known and not repeated:
            assert out["Error"], (body, out)  # an unknown pod, uid or node is refused with a reason


def test_a_repeated_bind_with_another_uid_is_refused() -> None:
    """Known gap 4, fixed: a repeated bind is idempotent only for the same pod instance (PodUID)."""
    world = build_world([node_obj("n0", 2), pod_obj("p0", 50, "8Gi")])
    first = bind_args(pod_obj("p0"), "n0")
    assert world.scheduler.reserve(ExtenderBindingArgs.from_obj(first)) is not None
    world.scheduler.confirm("default/p0")
    assert world.scheduler.reserve(ExtenderBindingArgs.from_obj(first)) is None  # same uid: idempotent
    other = dict(first, PodUID="uid-of-a-recreated-p0")
    with pytest.raises(BindRefused, match="for uid uid-default-p0, the bind names uid uid-of-a-recreated-p0"):
        world.scheduler.reserve(ExtenderBindingArgs.from_obj(other))


def test_a_repeated_bind_with_another_uid_is_refused_over_http() -> None:
    world = build_world([node_obj("n0", 2), pod_obj("p0", 50, "8Gi")])
    first = bind_args(pod_obj("p0"), "n0")
    with ServedApp(make_app(world.deps)) as served, HttpClient(served.url) as http:
        assert http.post_json("/bind", first) == (200, {"Error": ""})
        assert http.post_json("/bind", first) == (200, {"Error": ""})  # kube-scheduler's retry
        status, out = http.post_json("/bind", dict(first, PodUID="uid-of-a-recreated-p0"))
    assert status == 200 and "uid-of-a-recreated-p0" in out["Error"] and "default/p0" in out["Error"], out
    assert len(world.binder.bindings) == 1  # one Binding written, for the first uid


@pytest.mark.parametrize("cache_capable", [True, False])
def test_a_node_named_twice_gets_one_outcome(cache_capable: bool) -> None:
    """Known gap 5, fixed: candidates are deduplicated; each node is kept or refused exactly once."""
    world = build_world([node_obj("n0", 2), node_obj("n1", 2), node_obj("full", 1), pod_obj("p0", 50, "8Gi"),
                         pod_obj("hog", 100, None)], config=SchedulerConfig(k=2, heartbeat_stale_s=0))
    assert world.scheduler.reserve(ExtenderBindingArgs.from_obj(bind_args(pod_obj("hog"), "full"))) is not None
    names = ["n0", "n0", "full", "n1", "full", "n0"]
    with ServedApp(make_app(world.deps)) as served, HttpClient(served.url) as http:
        status, out = http.post_json("/filter", filter_args(pod_obj("p0", 50, "8Gi"), names,
                                                            cache_capable=cache_capable))
        _, scores = http.post_json("/prioritize", filter_args(pod_obj("p0", 50, "8Gi"), names, verb="prioritize"))
    assert status == 200 and out["Error"] == "", out
    kept = out["NodeNames"] if cache_capable else [n["metadata"]["name"] for n in out["Nodes"]["items"]]
    assert sorted(kept) == ["n0", "n1"], out
    assert set(out["FailedNodes"]) | set(out["FailedAndUnresolvableNodes"]) == {"full"}, out
    assert sorted(s["Host"] for s in scores) == ["full", "n0", "n1"], scores


def test_oversized_and_unreadable_bodies(extender: Served) -> None:
    big = json.dumps(filter_args(pod_obj("p0"), ["n0"] * (LIMIT // 4))).encode()
    for path in ("/filter", "/prioritize", "/bind"):
        status, out = extender.post(path, big)
        assert status == 413 and "exceeds the limit" in out["Error"], out
        status, out = extender.post(path, b"")
        assert status == 400 and "empty request body" in out["Error"], out
        status, out = extender.post(path, b"[" * (LIMIT - 1))  # deep nesting within the limit
        assert status == 400, out
    # a GET on a verb and an unknown path keep their HTTP status, with a JSON message
    status, _ = extender.http.request("GET", "/filter")
    assert status == 405
    status, _ = extender.http.request("POST", "/nope", b"{}")
    assert status == 404
    status, _ = extender.http.request("GET", "/healthz")
    assert status == 200


def test_still_serving_after_the_storm(extender: Served) -> None:
    status, out = extender.post("/filter", filter_args(pod_obj("p3", 10, "1Gi"), EVERY))
    assert status == 200 and out["Error"] == "" and out["NodeNames"], out
    assert set(out["FailedAndUnresolvableNodes"]) >= set(BROKEN)

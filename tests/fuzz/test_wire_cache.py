"""Random annotations and TenantQuota objects reaching the extender through its cache (list+watch
from the fake API server), then filter over real HTTP.

Whatever the plugin-written `fracgpu.io/gpu-inventory`, the extender-written `fracgpu.io/assigned`
or a TenantQuota holds (the fake API server validates nothing, as a CRD without a schema would):
the watch handler does not fail, filter answers 200 with an outcome and a reason for every node, a
node whose inventory cannot be read is refused with a reason, and once the good values are back
the extender's books are exactly what they were (nothing leaked, nothing charged twice).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_INVENTORY, ANN_PHASE, API_VERSION, LABEL_TENANT
from fracgpu.core.records import NODE_BAD_INVENTORY, NODE_NO_INVENTORY
from fracgpu.extender.app import Deps
from tests.extender.builders import filter_args, inventory, node_obj, pod_obj
from tests.extender.probe import room, whole_gpus
from tests.fakes.apiserver import FakeApiServer
from tests.fuzz.test_wire_extender import json_any, json_leaf, quantity
from tests.poll import eventually
from tests.reliability.harness import HttpClient, LiveExtender, heartbeat_off

SETTINGS = settings(max_examples=60, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FILLER_ASSIGNED = Assignment(
    node="good", tenant="tq/tq", assigned_at="2026-11-22T22:17:15Z",
    gpus=(GpuShare("GPU-good-1", 100, 80 * 1024**3, tuple(f"GPU-good-1::{k}" for k in range(100))),),
    containers=(ContainerShare("c0", "app", tuple(f"GPU-good-1::{k}" for k in range(100))),),
).to_json()
VICTIM_ASSIGNED = Assignment(
    node="good", tenant="tq/tq", assigned_at="2026-11-22T22:17:15Z",
    gpus=(GpuShare("GPU-good-0", 30, 8 * 1024**3, tuple(f"GPU-good-0::{k}" for k in range(30))),),
    containers=(ContainerShare("c0", "app", tuple(f"GPU-good-0::{k}" for k in range(30))),),
).to_json()


def tenant_quota(name: str, spec: Any, generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "TenantQuota",
            "metadata": {"name": name, "generation": generation}, "spec": spec}


GOOD_QUOTA = {"namespaceSelector": {"matchLabels": {LABEL_TENANT: "t"}}, "hard": {"fracgpu.io/vgpu-core": "400"}}


class CacheFuzz:
    def __init__(self, apiserver: FakeApiServer) -> None:
        self.apiserver = apiserver
        self.ext = LiveExtender(apiserver, heartbeat_off(k=2)).start()
        self.http = HttpClient(self.ext.url)
        self.seq = 0
        self.tried = 0

    @property
    def deps(self) -> Deps:
        return self.ext.deps

    def ask(self, pod: dict[str, Any], names: list[str]) -> dict[str, Any]:
        status, out = self.http.post_json("/filter", filter_args(pod, names))
        assert status == 200 and isinstance(out, dict), out
        return out

    def free(self) -> int:
        """GPU-good-0's free vgpu-core (the victim's GPU), asked through /filter: GPU-good-1 is
        the filler's, whole, so the largest share a new pod gets on `good` is GPU-good-0's."""
        return room(self.ask, "good")

    def seen_pods(self, seq: str) -> None:
        """Create a pending sentinel pod after a write and wait until the cache holds it, then
        delete it and wait until it is gone: the pod watch delivers in order, so every earlier pod
        event has been handled."""
        base = self.ext.scheduler.stats().pods
        self.apiserver.seed(pod_obj(f"zz-sentinel-{seq}", 10, "1Gi"))
        eventually(lambda: self.ext.scheduler.stats().pods == base + 1, what="pod events handled")
        self.apiserver.delete_object("pods", f"zz-sentinel-{seq}", namespace="default")
        eventually(lambda: self.ext.scheduler.stats().pods == base, what="the sentinel gone")

    def hard_cores(self, quota: str) -> float | None:
        """The vgpu-core limit /metrics reports for TenantQuota `quota`'s tenant."""
        self.deps.metrics.refresh()
        return self.deps.metrics.registry.get_sample_value(
            "fracgpu_tenant_hard", {"tenant": f"tq/{quota}", "resource": "fracgpu.io/vgpu-core"})

    def inventory_seen(self, text: str) -> bool:
        rec = self.ext.scheduler.cached_node("fz")
        return rec is not None and rec.inventory_text == text

    def filter(self) -> dict[str, Any]:
        self.tried += 1
        status, out = self.http.post_json("/filter", filter_args(pod_obj("pend", 10, "1Gi"), ["good", "fz"]))
        assert status == 200 and isinstance(out, dict) and out["Error"] == "", out
        kept, failed, unres = set(out["NodeNames"]), set(out["FailedNodes"]), set(out["FailedAndUnresolvableNodes"])
        assert kept | failed | unres == {"good", "fz"} and len(kept) + len(failed) + len(unres) == 2, out
        assert all(r for r in [*out["FailedNodes"].values(), *out["FailedAndUnresolvableNodes"].values()]), out
        return out


@pytest.fixture
def fuzz(apiserver: FakeApiServer) -> Iterator[CacheFuzz]:
    apiserver.seed(
        node_obj("good", 2), node_obj("fz", 2),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": {LABEL_TENANT: "t"}}},
        tenant_quota("tq", GOOD_QUOTA),
        pod_obj("victim", 30, "8Gi", node="good", phase="Running",
                annotations={ANN_ASSIGNED: VICTIM_ASSIGNED, ANN_PHASE: "allocated"}),
        pod_obj("filler", 100, None, node="good", phase="Running",
                annotations={ANN_ASSIGNED: FILLER_ASSIGNED, ANN_PHASE: "allocated"}),
        pod_obj("pend", 10, "1Gi"),
    )
    f = CacheFuzz(apiserver)
    try:
        yield f
    finally:
        f.http.close()
        f.ext.kill()


def _no_handler_failures(caplog: pytest.LogCaptureFixture) -> None:
    failed = [r for r in caplog.records if "handler failed" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not failed, [r.getMessage() for r in failed]


# ---- strategies ---------------------------------------------------------------------------------

def _mutate(doc: Any, draw: st.DrawFn) -> Any:
    """Replace one value somewhere in a JSON document by a hostile one."""
    if isinstance(doc, dict) and doc and draw(st.integers(0, 3)):
        k = draw(st.sampled_from(sorted(doc)))
        return {**doc, k: _mutate(doc[k], draw)}
    if isinstance(doc, list) and doc and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], _mutate(doc[i], draw), *doc[i + 1:]]
    return draw(st.one_of(json_leaf, quantity, json_any, st.just(doc).map(lambda d: [d, d])))


@st.composite
def inventory_text(draw: st.DrawFn) -> str:
    base = json.loads(inventory("fz", draw(st.integers(0, 12))).to_json())
    shape = draw(st.integers(0, 5))
    if shape == 0:
        return draw(st.text(max_size=50))
    if shape == 1:
        return json.dumps(draw(json_any))
    if shape == 2 and base["gpus"]:  # duplicate GPUs
        base["gpus"] = base["gpus"] + base["gpus"][:1]
        return json.dumps(base)
    return json.dumps(_mutate(base, draw))


@st.composite
def assigned_text(draw: st.DrawFn) -> str:
    base = json.loads(VICTIM_ASSIGNED)
    shape = draw(st.integers(0, 6))
    if shape == 0:
        return draw(st.text(max_size=50))
    if shape == 1:
        base["gpus"][0]["cores"] = draw(st.sampled_from([150, 100, 0, -30, 10**12]))
    elif shape == 2:
        base["gpus"][0]["uuid"] = draw(st.sampled_from(["GPU-fz-0", "GPU-nope", "", "GPU-good-1"]))
    elif shape == 3:
        base["gpus"] = base["gpus"] * draw(st.integers(2, 4))
    elif shape == 4:
        base["node"] = draw(st.sampled_from(["fz", "", "elsewhere"]))
    else:
        base = _mutate(base, draw)
    return json.dumps(base)


@st.composite
def quota_spec(draw: st.DrawFn) -> Any:
    spec = {"namespaceSelector": {"matchLabels": {LABEL_TENANT: "t"}},
            "hard": {"fracgpu.io/vgpu-core": draw(quantity), "fracgpu.io/vgpu-memory": draw(quantity)},
            "allowedZones": draw(st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=3), json_leaf))}
    return _mutate(spec, draw) if draw(st.booleans()) else spec


# ---- properties ---------------------------------------------------------------------------------

def test_random_inventory_annotations(fuzz: CacheFuzz, caplog: pytest.LogCaptureFixture) -> None:
    before = fuzz.free()

    @SETTINGS
    @given(text=inventory_text())
    def prop(text: str) -> None:
        fuzz.apiserver.patch_object("nodes", "fz", {"metadata": {"annotations": {ANN_INVENTORY: text}}})
        eventually(lambda: fuzz.inventory_seen(text), what="inventory seen")
        out = fuzz.filter()
        try:
            doc = NodeInventoryDoc.from_json(text)
        except InvalidDocument:
            # an empty annotation counts as none yet; anything else unreadable is a bad inventory
            expected = NODE_NO_INVENTORY if text == "" else NODE_BAD_INVENTORY
            assert out["FailedAndUnresolvableNodes"].get("fz") == expected, out
            return
        if not doc.gpus:
            assert "fz" not in out["NodeNames"], out

    prop()
    good = inventory("fz", 2).to_json()
    fuzz.apiserver.patch_object("nodes", "fz", {"metadata": {"annotations": {ANN_INVENTORY: good}}})
    eventually(lambda: fuzz.inventory_seen(good))
    assert "fz" in set(fuzz.filter()["NodeNames"])
    assert fuzz.free() == before
    _no_handler_failures(caplog)


def test_random_assigned_annotations(fuzz: CacheFuzz, caplog: pytest.LogCaptureFixture) -> None:
    before = fuzz.free()
    assert before == 70

    @SETTINGS
    @given(text=assigned_text())
    def prop(text: str) -> None:
        fuzz.seq += 1
        seq = str(fuzz.seq)
        fuzz.apiserver.patch_object("pods", "victim", {"metadata": {"labels": {"seq": seq},
                                                                    "annotations": {ANN_ASSIGNED: text}}},
                                    namespace="default")
        fuzz.seen_pods(seq)
        fuzz.filter()
        # no crash; the exact books are checked once the good reservation is back

    prop()
    fuzz.apiserver.patch_object("pods", "victim", {"metadata": {"labels": {"seq": "end"},
                                                                "annotations": {ANN_ASSIGNED: VICTIM_ASSIGNED}}},
                                namespace="default")
    fuzz.seen_pods("end")
    assert fuzz.free() == before, "a hostile reservation left a charge behind on GPU-good-0"
    # ... nor on GPU-good-1 (a hostile reservation may name it): once the filler ends it is whole
    cached = fuzz.ext.scheduler.stats().pods
    fuzz.apiserver.patch_object("pods", "filler", {"status": {"phase": "Succeeded"}}, namespace="default")
    eventually(lambda: fuzz.ext.scheduler.stats().pods == cached - 1, what="the filler ended")
    assert fuzz.free() == 100 and whole_gpus(fuzz.ask, "good") == 1
    _no_handler_failures(caplog)


def test_random_tenant_quotas(fuzz: CacheFuzz, caplog: pytest.LogCaptureFixture) -> None:
    @SETTINGS
    @given(spec=quota_spec(), top=st.integers(0, 6))
    def prop(spec: Any, top: int) -> None:
        fuzz.seq += 1
        obj = tenant_quota("tq", spec, generation=fuzz.seq)
        if top == 0:
            obj["spec"] = json.loads(json.dumps(_scramble(spec)))
        fuzz.apiserver.seed(obj)
        # a valid sentinel after it on the same watch: once it is seen, the fuzzed one was handled
        mark = 1000 + fuzz.seq
        fuzz.apiserver.seed(tenant_quota("zz-sentinel", {"namespaceSelector": {"matchLabels": {LABEL_TENANT: "nobody"}},
                                                         "hard": {"fracgpu.io/vgpu-core": str(mark)}}))
        eventually(lambda: fuzz.hard_cores("zz-sentinel") == mark, what="quota seen")
        out = fuzz.filter()
        if "good" not in out["NodeNames"]:
            assert "good" in out["FailedAndUnresolvableNodes"] or "good" in out["FailedNodes"], out

    prop()
    fuzz.apiserver.seed(tenant_quota("tq", {**GOOD_QUOTA, "hard": {"fracgpu.io/vgpu-core": "401"}}))
    eventually(lambda: fuzz.hard_cores("tq") == 401)
    assert "good" in fuzz.filter()["NodeNames"]
    _no_handler_failures(caplog)


def _scramble(spec: Any) -> Any:
    return [spec] if not isinstance(spec, list) else {"x": spec}


def test_books_match_after_storms(fuzz: CacheFuzz) -> None:
    """The baseline the properties above return to: GPU 0 of `good` has the victim's 30 vgpu-core,
    GPU 1 the filler's 100."""
    assert fuzz.free() == 70 and whole_gpus(fuzz.ask, "good") == 0

"""Integers and quantities past int64 (2^63, 2^64, 10^30) in what the extender's cache reads over list+watch
from the (fake) API server, then /filter over real HTTP.

They are legal JSON and legal quantities, so nothing upstream stops them. Before the decoders bounded
them, a GPU memory of 2^63 in `fracgpu.io/gpu-inventory` reached the ledger's int64 arrays and raised
OverflowError inside the watch handler (found by tests/fuzz/test_wire_cache.py); now the node is
refused with the usual reason and a pod gets a reasoned failure. Each row checks that no handler
failed, and where the value is put back, that the books are what they were.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_INVENTORY
from fracgpu.core.records import NODE_BAD_INVENTORY, node_unreadable_reservation
from tests.extender.builders import inventory, pod_obj
from tests.fuzz.test_wire_cache import GOOD_QUOTA, VICTIM_ASSIGNED, CacheFuzz, tenant_quota
from tests.poll import eventually

HUGE = [2**63, 2**64, 10**30]
HUGE_TEXTS = [str(2**63), str(2**64), "1e30"]


def no_handler_failed(caplog: pytest.LogCaptureFixture) -> None:
    failed = [r.getMessage() for r in caplog.records if "handler failed" in r.getMessage() or r.levelno >= logging.ERROR]
    assert failed == []
    caplog.clear()


def both_refused(out: dict[str, Any]) -> dict[str, str]:
    reasons = {**out["FailedNodes"], **out["FailedAndUnresolvableNodes"]}
    assert out["NodeNames"] == [] and set(reasons) == {"good", "fz"}, out
    return reasons


# ---- a node's inventory ------------------------------------------------------------------------

def inventory_with(path: tuple[str | int, ...], value: int) -> str:
    doc = json.loads(inventory("fz", 2).to_json())
    doc["gpus"][0]["links"] = [{"peer": "GPU-fz-1", "link": "nvlink", "nvlinks": 12}]
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return json.dumps(doc)


INVENTORY_FIELDS = [("gpus", 1, "memory"), ("gpus", 1, "index"), ("gpus", 1, "numa"),
                    ("gpus", 0, "links", 0, "nvlinks")]


@pytest.mark.parametrize("path", INVENTORY_FIELDS, ids=lambda p: ".".join(map(str, p)))
def test_a_huge_inventory_number_refuses_the_node(fuzz: CacheFuzz, caplog: pytest.LogCaptureFixture,
                                                  path: tuple[str | int, ...]) -> None:
    field = "inventory." + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path).lstrip(".")
    for value in HUGE:
        text = inventory_with(path, value)
        fuzz.apiserver.patch_object("nodes", "fz", {"metadata": {"annotations": {ANN_INVENTORY: text}}})
        eventually(partial(fuzz.inventory_seen, text), what="inventory seen")
        assert fuzz.filter()["FailedAndUnresolvableNodes"].get("fz") == NODE_BAD_INVENTORY
        node = fuzz.ext.scheduler.cached_node("fz")
        assert node is not None and node.inventory_error == f"{field}: must be <= {node_bound(path)}, got {value}"
        no_handler_failed(caplog)
    good = inventory("fz", 2).to_json()
    fuzz.apiserver.patch_object("nodes", "fz", {"metadata": {"annotations": {ANN_INVENTORY: good}}})
    eventually(lambda: fuzz.inventory_seen(good))
    assert "fz" in fuzz.filter()["NodeNames"]
    no_handler_failed(caplog)


def node_bound(path: tuple[str | int, ...]) -> int:
    return 2**50 if path[-1] == "memory" else 2**31 - 1


@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_a_huge_node_allocatable_is_read_as_unreadable(fuzz: CacheFuzz, caplog: pytest.LogCaptureFixture,
                                                       resource: str) -> None:
    for text in HUGE_TEXTS:
        fuzz.apiserver.patch_object("nodes", "fz", {"status": {"allocatable": {resource: text}}})
        eventually(lambda: (n := fuzz.ext.scheduler.cached_node("fz")) is not None and n.memory_bytes == 0
                   and n.cpu_milli == 0, what="allocatable seen")
        fuzz.filter()
        no_handler_failed(caplog)


# ---- a bound pod's reservation and requests ---------------------------------------------------

def huge_reservation(value: int) -> str:
    doc = json.loads(VICTIM_ASSIGNED)
    doc["gpus"][0]["memory"] = value
    return json.dumps(doc)


def test_a_huge_reserved_memory_is_an_unreadable_reservation(fuzz: CacheFuzz,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    before = fuzz.free()
    pods = fuzz.ext.scheduler.stats().pods
    for i, value in enumerate(HUGE):
        # first sight: which GPUs and device IDs the pod holds is unknown, its node takes no new GPU pod
        fuzz.apiserver.seed(pod_obj(f"newcomer-{i}", 30, "8Gi", node="good", phase="Running",
                                    annotations={ANN_ASSIGNED: huge_reservation(value)}))
        eventually(lambda: fuzz.ext.scheduler.stats().pods == pods + 1, what="the newcomer seen")
        out = fuzz.filter()
        assert out["FailedAndUnresolvableNodes"].get("good") == node_unreadable_reservation([f"default/newcomer-{i}"])
        fuzz.apiserver.delete_object("pods", f"newcomer-{i}", namespace="default")
        eventually(lambda: fuzz.ext.scheduler.stats().pods == pods, what="the newcomer gone")
        # a pod whose readable reservation is held already keeps it: nothing freed, nothing charged twice
        fuzz.apiserver.patch_object("pods", "victim", {"metadata": {"labels": {"seq": str(i)},
                                                                    "annotations": {ANN_ASSIGNED: huge_reservation(value)}}},
                                    namespace="default")
        fuzz.seen_pods(str(i))
        assert fuzz.free() == before
        no_handler_failed(caplog)
    fuzz.apiserver.patch_object("pods", "victim", {"metadata": {"labels": {"seq": "back"},
                                                                "annotations": {ANN_ASSIGNED: VICTIM_ASSIGNED}}},
                                namespace="default")
    fuzz.seen_pods("back")
    assert fuzz.free() == before
    no_handler_failed(caplog)


def cpu_pod(name: str, resource: str, text: str) -> dict[str, Any]:
    pod = pod_obj(name, 0, None, node="good", phase="Running")
    pod["spec"]["containers"][0]["resources"] = {"requests": {resource: text}}
    return pod


@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_a_bound_cpu_pod_with_a_huge_request_is_charged_nothing(fuzz: CacheFuzz, caplog: pytest.LogCaptureFixture,
                                                                resource: str) -> None:
    before = fuzz.free()
    pods = fuzz.ext.scheduler.stats().pods
    for i, text in enumerate(HUGE_TEXTS):
        fuzz.apiserver.seed(cpu_pod(f"cpu-{i}", resource, text))
    eventually(lambda: fuzz.ext.scheduler.stats().pods == pods + 3, what="the cpu pods seen")
    assert fuzz.free() == before and "good" in fuzz.filter()["NodeNames"]
    no_handler_failed(caplog)


# ---- a pending pod's request --------------------------------------------------------------------

@dataclass(frozen=True)
class Ask:
    name: str
    edit: Callable[[dict[str, Any]], None]
    says: str


def request(resource: str, text: str) -> Callable[[dict[str, Any]], None]:
    def edit(pod: dict[str, Any]) -> None:
        for where in ("requests", "limits"):
            pod["spec"]["containers"][0]["resources"][where][resource] = text
    return edit


ASKS = [
    *[Ask(f"vgpu-memory {t}", request("fracgpu.io/vgpu-memory", t),
          f"container c0: fracgpu.io/vgpu-memory is too large, got {t!r} (at most 1Pi)")
      for t in [*HUGE_TEXTS, str(2**70)]],
    *[Ask(f"cpu {t}", request("cpu", t), f"container c0: cpu is too large, got {t!r} (at most 4503599627370)")
      for t in HUGE_TEXTS],
    *[Ask(f"memory {t}", request("memory", t), f"container c0: memory is too large, got {t!r} (at most 4Pi)")
      for t in HUGE_TEXTS],
]


def test_a_pending_pod_with_a_huge_request_gets_a_reasoned_failure(fuzz: CacheFuzz,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    for ask in ASKS:
        pod = pod_obj("huge", 10, "1Gi")
        ask.edit(pod)
        out = fuzz.ask(pod, ["good", "fz"])
        assert set(both_refused(out).values()) == {f"invalid GPU request: {ask.says}"}, (ask.name, out)
    no_handler_failed(caplog)


# ---- a TenantQuota -----------------------------------------------------------------------------

def refused_only_for(fuzz: CacheFuzz, why: str) -> bool:
    """Both nodes refuse the tenant's pending pod, for `why` (false while the old quota is in force)."""
    out = fuzz.ask(pod_obj("pend", 10, "1Gi"), ["good", "fz"])
    return out["NodeNames"] == [] and set({**out["FailedNodes"], **out["FailedAndUnresolvableNodes"]}.values()) == {why}


def test_a_huge_tenant_quota_is_unusable_naming_the_field(fuzz: CacheFuzz, caplog: pytest.LogCaptureFixture) -> None:
    rows = [("fracgpu.io/vgpu-memory", t, "4Pi") for t in HUGE_TEXTS]
    rows += [("fracgpu.io/vgpu-core", str(v), str(2**52)) for v in HUGE]  # the CRD allows digits only here
    for i, (resource, text, bound) in enumerate(rows):
        fuzz.apiserver.seed(tenant_quota("tq", {**GOOD_QUOTA, "hard": {resource: text}}, generation=10 + i))
        why = (f"tenant tq/tq: quota unusable, TenantQuota tq spec.hard[{resource}] is too large, got {text!r} "
               f"(at most {bound})")
        eventually(partial(refused_only_for, fuzz, why), what=f"quota {resource}={text} seen")
    fuzz.apiserver.seed(tenant_quota("tq", GOOD_QUOTA, generation=99))
    eventually(lambda: "good" in fuzz.filter()["NodeNames"], what="the good quota back")
    no_handler_failed(caplog)

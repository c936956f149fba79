"""TenantQuota types: strict reading, selector semantics, status serialisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api import rfc3339
from fracgpu.api.v1beta1 import tenantquota as tq
from fracgpu.api.v1beta1.errors import InvalidDocument


def _doc(spec: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "fracgpu.io/v1beta1",
        "kind": "TenantQuota",
        "metadata": {"name": "team-a", "creationTimestamp": "2026-01-01T00:00:10Z", "generation": 3},
        "spec": spec
        or {
            "namespaceSelector": {"matchLabels": {"fracgpu.io/tenant": "team-a"}},
            "hard": {"fracgpu.io/vgpu-memory": "64Gi", "fracgpu.io/vgpu-core": 400},
            "allowedZones": ["zone-a", "zone-b"],
        },
    }
    doc.update(top)
    return doc


def test_reads_a_full_object() -> None:
    q = tq.TenantQuota.from_dict(_doc())
    assert q.name == "team-a"
    assert q.created == 1767225610.0  # 2026-01-01T00:00:00Z is 1767225600
    assert q.generation == 3
    assert q.spec.hard == tq.QuotaAmounts(memory="64Gi", cores="400")  # the integer 400 becomes "400"
    assert q.spec.allowed_zones == ("zone-a", "zone-b")
    assert q.spec.namespace_selector.match_labels == (("fracgpu.io/tenant", "team-a"),)
    assert q.status is None


def test_missing_creation_timestamp_is_the_epoch() -> None:
    doc = _doc()
    del doc["metadata"]["creationTimestamp"]
    assert tq.TenantQuota.from_dict(doc).created == 0.0


@dataclass(frozen=True)
class Bad:
    name: str
    doc: Any
    where: str  # the error names the field


SEL = {"matchLabels": {"a": "b"}}
BAD = [
    Bad("not an object", [], "TenantQuota: expected an object"),
    Bad("wrong kind", _doc(kind="ResourceQuota"), "expected fracgpu.io/v1beta1 TenantQuota"),
    Bad("no name", {"metadata": {}, "spec": {}}, "metadata.name"),
    Bad("bad timestamp", {"metadata": {"name": "x", "creationTimestamp": "yesterday"}}, "creationTimestamp"),
    Bad("naive timestamp", {"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00"}}, "time zone"),
    Bad("no spec", _doc(spec={}) | {"spec": None}, "TenantQuota team-a.spec: expected an object"),
    Bad("no selector", _doc({"hard": {"fracgpu.io/vgpu-core": "1"}}), "spec.namespaceSelector: required"),
    Bad("no hard", _doc({"namespaceSelector": SEL}), "spec.hard: required"),
    Bad("empty hard", _doc({"namespaceSelector": SEL, "hard": {}}), "spec.hard: give"),
    Bad("unknown field", _doc({"namespaceSelector": SEL, "hard": {"fracgpu.io/vgpu-core": 1}, "x": 1}), "'x'"),
    Bad("unknown resource", _doc({"namespaceSelector": SEL, "hard": {"cpu": "1"}}), "unknown field 'cpu'"),
    Bad("negative int", _doc({"namespaceSelector": SEL, "hard": {"fracgpu.io/vgpu-core": -1}}), "negative"),
    Bad("bool", _doc({"namespaceSelector": SEL, "hard": {"fracgpu.io/vgpu-core": True}}), "non-negative quantity"),
    Bad("empty selector", _doc({"namespaceSelector": {}, "hard": {"fracgpu.io/vgpu-core": 1}}), "empty"),
    Bad(
        "In without values",
        _doc({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
              "hard": {"fracgpu.io/vgpu-core": 1}}),
        "matchExpressions[0].values: In needs at least one value",
    ),
    Bad(
        "bad matchLabels key",
        _doc({"namespaceSelector": {"matchLabels": {"bad key": "x"}}, "hard": {"fracgpu.io/vgpu-core": 1}}),
        "not a valid label key",
    ),
    Bad(
        "duplicate zone",
        _doc({"namespaceSelector": SEL, "hard": {"fracgpu.io/vgpu-core": 1}, "allowedZones": ["a", "a"]}),
        "twice",
    ),
    Bad("bad status", _doc(status={"pending": -2}), "status.pending: must be >= 0"),
    Bad("bad condition", _doc(status={"conditions": [{"type": "A", "status": "Yes"}]}), "conditions[0].status"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_refuses_bad_documents_naming_the_field(case: Bad) -> None:
    with pytest.raises(InvalidDocument) as err:
        tq.TenantQuota.from_dict(case.doc)
    assert case.where in str(err.value)


@dataclass(frozen=True)
class Sel:
    name: str
    selector: dict[str, Any]
    labels: dict[str, str]
    matches: bool


SELECTORS = [
    Sel("matchLabels equal", {"matchLabels": {"t": "a"}}, {"t": "a", "x": "y"}, True),
    Sel("matchLabels differ", {"matchLabels": {"t": "a"}}, {"t": "b"}, False),
    Sel("matchLabels absent", {"matchLabels": {"t": "a"}}, {}, False),
    Sel("In", {"matchExpressions": [{"key": "t", "operator": "In", "values": ["a", "b"]}]}, {"t": "b"}, True),
    Sel("In, absent", {"matchExpressions": [{"key": "t", "operator": "In", "values": ["a"]}]}, {}, False),
    Sel("NotIn", {"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["a"]}]}, {"t": "a"}, False),
    # Kubernetes: NotIn also matches objects without the label
    Sel("NotIn, absent", {"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    Sel("Exists", {"matchExpressions": [{"key": "t", "operator": "Exists"}]}, {"t": ""}, True),
    Sel("Exists, absent", {"matchExpressions": [{"key": "t", "operator": "Exists"}]}, {}, False),
    Sel("DoesNotExist", {"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, {}, True),
    Sel("DoesNotExist, present", {"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, {"t": "a"}, False),
    Sel(
        "terms are ANDed",
        {"matchLabels": {"t": "a"}, "matchExpressions": [{"key": "stage", "operator": "NotIn", "values": ["dev"]}]},
        {"t": "a", "stage": "dev"},
        False,
    ),
]


@pytest.mark.parametrize("case", SELECTORS, ids=lambda c: c.name)
def test_selector_semantics_follow_kubernetes(case: Sel) -> None:
    q = tq.TenantQuota.from_dict(_doc({"namespaceSelector": case.selector, "hard": {"fracgpu.io/vgpu-core": 1}}))
    assert q.spec.namespace_selector.matches(case.labels) is case.matches


def test_status_round_trip() -> None:
    status = tq.TenantQuotaStatus(
        used=tq.QuotaAmounts(memory="24Gi", cores="150"),
        pending=3,
        queue=("ns-a/pod-7", "ns-b/pod-2"),
        conditions=(tq.Condition("NamespaceConflict", "True", "NamespaceSelectedTwice", "m", "2026-01-01T00:00:00Z"),),
    )
    wire = status.to_dict()
    assert wire == {
        "used": {"fracgpu.io/vgpu-memory": "24Gi", "fracgpu.io/vgpu-core": "150"},
        "pending": 3,
        "queue": ["ns-a/pod-7", "ns-b/pod-2"],
        "conditions": [
            {
                "type": "NamespaceConflict",
                "status": "True",
                "reason": "NamespaceSelectedTwice",
                "message": "m",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 0,
            }
        ],
    }
    assert tq.TenantQuota.from_dict(_doc(status=wire)).status == status
    assert status.condition("NamespaceConflict") is status.conditions[0]
    assert status.condition("Other") is None


def test_empty_status_reads_as_zero_use() -> None:
    st = tq.TenantQuota.from_dict(_doc(status={})).status
    assert st == tq.TenantQuotaStatus()
    assert st is not None and st.used == tq.QuotaAmounts(memory="0", cores="0")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1970-01-01T00:00:00Z", 0.0),
        ("2026-01-01T00:00:00Z", 1767225600.0),
        ("2026-01-01T01:00:00+01:00", 1767225600.0),
    ],
)
def test_timestamps(text: str, seconds: float) -> None:
    assert tq.parse_timestamp(text, "t") == seconds
    assert rfc3339.format_time(seconds) == text.replace("T01:00:00+01:00", "T00:00:00Z")

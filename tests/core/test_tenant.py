"""A pod's tenant, the deterministic rule for a namespace two TenantQuotas select, and quota sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from fracgpu.api.v1beta1.names import ANN_NS_CORE_QUOTA, ANN_NS_MEMORY_QUOTA, ZONE_NONE
from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core import tenant as t
from fracgpu.core.quantity import QuantityError
from fracgpu.core.zone import check_static, zone_rule

GI = 1024**3


def quota(
    name: str,
    *,
    created: str = "2026-01-01T00:00:00Z",
    labels: dict[str, str] | None = None,
    expressions: list[dict[str, Any]] | None = None,
    memory: str | None = "64Gi",
    cores: str | None = "400",
    zones: list[str] | None = None,
) -> TenantQuota:
    selector: dict[str, Any] = {}
    if labels is not None:
        selector["matchLabels"] = labels
    if expressions is not None:
        selector["matchExpressions"] = expressions
    hard = {k: v for k, v in (("fracgpu.io/vgpu-memory", memory), ("fracgpu.io/vgpu-core", cores)) if v is not None}
    spec: dict[str, Any] = {"namespaceSelector": selector, "hard": hard}
    if zones is not None:
        spec["allowedZones"] = zones
    return TenantQuota.from_dict({"metadata": {"name": name, "creationTimestamp": created}, "spec": spec})


def ns(name: str, labels: dict[str, str] | None = None, **annotations: str) -> t.NamespaceInfo:
    ann = {{"memory": ANN_NS_MEMORY_QUOTA, "cores": ANN_NS_CORE_QUOTA}.get(k, k): v for k, v in annotations.items()}
    return t.NamespaceInfo(name=name, labels=labels or {}, annotations=ann)


@dataclass(frozen=True)
class World:
    name: str
    namespaces: list[t.NamespaceInfo]
    quotas: list[TenantQuota]
    expect: dict[str, str]  # namespace -> tenant
    conflicts: list[t.Conflict] = field(default_factory=list)


WORLDS = [
    World("no quotas: every namespace is its own tenant", [ns("a"), ns("b")], [], {"a": "ns/a", "b": "ns/b"}),
    World(
        "a TenantQuota gathers the namespaces it selects",
        [ns("a1", {"team": "a"}), ns("a2", {"team": "a"}), ns("b", {"team": "b"})],
        [quota("team-a", labels={"team": "a"})],
        {"a1": "tq/team-a", "a2": "tq/team-a", "b": "ns/b"},
    ),
    World(
        "an unknown namespace is its own tenant",
        [],
        [quota("team-a", labels={"team": "a"})],
        {"ghost": "ns/ghost"},
    ),
    World(
        "two TenantQuotas select one namespace: the older wins, both see the conflict",
        [ns("shared", {"team": "a", "gpu": "yes"}), ns("only-b", {"gpu": "yes"})],
        [
            quota("zz-old", created="2026-01-01T00:00:00Z", labels={"team": "a"}),
            quota("aa-new", created="2026-02-01T00:00:00Z", expressions=[{"key": "gpu", "operator": "Exists"}]),
        ],
        {"shared": "tq/zz-old", "only-b": "tq/aa-new"},
        [t.Conflict(namespace="shared", quotas=("zz-old", "aa-new"))],
    ),
    World(
        "same creationTimestamp: the name decides",
        [ns("shared", {"team": "a"})],
        [quota("beta", labels={"team": "a"}), quota("alpha", labels={"team": "a"})],
        {"shared": "tq/alpha"},
        [t.Conflict(namespace="shared", quotas=("alpha", "beta"))],
    ),
]


@pytest.mark.parametrize("world", WORLDS, ids=lambda w: w.name)
def test_tenant_of_namespace(world: World) -> None:
    tenants = t.Tenants(world.namespaces, world.quotas)
    assert {n: tenants.tenant_of(n) for n in world.expect} == world.expect
    assert list(tenants.conflicts) == world.conflicts


@pytest.mark.parametrize("order", [0, 1], ids=["listed oldest first", "listed newest first"])
def test_conflict_rule_does_not_depend_on_watch_order(order: int) -> None:
    quotas = [quota("old", created="2026-01-01T00:00:00Z", labels={"t": "x"}),
              quota("new", created="2026-03-01T00:00:00Z", labels={"t": "x"})]  # fmt: skip
    if order:
        quotas.reverse()
    tenants = t.Tenants([ns("n", {"t": "x"})], quotas)
    assert tenants.tenant_of("n") == "tq/old"
    [conflict] = tenants.conflicts
    assert conflict.winner == "old"
    assert conflict.message == (
        "namespace n is selected by TenantQuotas old, new; old applies (oldest creationTimestamp, then name)"
    )
    assert tenants.conflicts_of("new") == tenants.conflicts_of("old") == (conflict,)
    assert tenants.known_tenants() == ("tq/new", "tq/old")
    assert tenants.quota("old") is not None and tenants.quota("missing") is None


def test_conflict_conditions_on_both_quotas_and_none_elsewhere() -> None:
    tenants = t.Tenants(
        [ns("n", {"fracgpu.io/t": "x"})],
        [quota("old", labels={"fracgpu.io/t": "x"}),
         quota("new", created="2026-03-01T00:00:00Z", labels={"fracgpu.io/t": "x"}),
         quota("alone", labels={"fracgpu.io/t": "y"})],
    )  # fmt: skip
    now = 1767225600.0  # 2026-01-01T00:00:00Z
    for name in ("old", "new"):
        conflict, valid = tenants.conditions(name, now, generation=4)
        assert (conflict.type, conflict.status, conflict.reason) == (
            "NamespaceConflict",
            "True",
            "NamespaceSelectedTwice",
        )
        assert "namespace n is selected by TenantQuotas old, new; old applies" in conflict.message
        assert conflict.last_transition_time == "2026-01-01T00:00:00Z"
        assert conflict.observed_generation == 4
        assert (valid.type, valid.status) == ("QuotaValid", "True")
    conflict, _ = tenants.conditions("alone", now)
    assert (conflict.status, conflict.reason) == ("False", "NoConflict")


@dataclass(frozen=True)
class Src:
    name: str
    namespace: t.NamespaceInfo
    quotas: list[TenantQuota]
    default: t.Limits
    expect: t.Limits | str  # str: a QuotaError message fragment


DEFAULT = t.default_limits("16Gi", "100")
SOURCES = [
    Src("nothing anywhere: unlimited", ns("a"), [], t.UNLIMITED, t.Limits()),
    Src(
        "cluster default",
        ns("a"),
        [],
        DEFAULT,
        t.Limits(16 * GI, 100, t.SOURCE_DEFAULT, t.SOURCE_DEFAULT),
    ),
    Src(
        "namespace annotations beat the default",
        ns("a", memory="32Gi", cores="200"),
        [],
        DEFAULT,
        t.Limits(32 * GI, 200, t.SOURCE_NAMESPACE, t.SOURCE_NAMESPACE),
    ),
    Src(
        "per resource: annotation for memory, default for cores",
        ns("a", memory="32Gi"),
        [],
        DEFAULT,
        t.Limits(32 * GI, 100, t.SOURCE_NAMESPACE, t.SOURCE_DEFAULT),
    ),
    Src(
        "TenantQuota beats the namespace annotations",
        ns("a", {"fracgpu.io/team": "a"}, memory="1Gi", cores="1"),
        [quota("team-a", labels={"fracgpu.io/team": "a"})],
        DEFAULT,
        t.Limits(64 * GI, 400, "TenantQuota team-a", "TenantQuota team-a"),
    ),
    Src(
        "TenantQuota without cores: the default, not the annotation",
        ns("a", {"fracgpu.io/team": "a"}, cores="1"),
        [quota("team-a", labels={"fracgpu.io/team": "a"}, cores=None)],
        DEFAULT,
        t.Limits(64 * GI, 100, "TenantQuota team-a", t.SOURCE_DEFAULT),
    ),
    Src("zero is a real limit", ns("a", memory="0", cores="0"), [], t.UNLIMITED, t.Limits(0, 0, "namespace annotation", "namespace annotation")),
    Src("bad memory annotation", ns("a", memory="lots"), [], t.UNLIMITED,
        "annotation fracgpu.io/vgpu-memory-quota on namespace a: not a quantity: 'lots'"),
    Src("negative annotation", ns("a", memory="-1Gi"), [], t.UNLIMITED, "must not be negative"),
    Src("fractional cores", ns("a", cores="1.5"), [], t.UNLIMITED,
        "annotation fracgpu.io/vgpu-core-quota on namespace a must be a whole number, got '1.5'"),
    Src("fractional bytes in a TenantQuota", ns("a", {"fracgpu.io/team": "a"}),
        [quota("team-a", labels={"fracgpu.io/team": "a"}, memory="0.5")],
        t.UNLIMITED, "TenantQuota team-a spec.hard[fracgpu.io/vgpu-memory] must be a whole number of bytes"),
    Src("a selector on a label tenants may edit", ns("a", {"team": "a"}), [quota("team-a", labels={"team": "a"})],
        t.UNLIMITED, "TenantQuota team-a spec.namespaceSelector selects on team, a label tenants may edit"),
    Src("an expression on one", ns("a", {"fracgpu.io/team": "a", "stage": "prod"}),
        [quota("team-a", labels={"fracgpu.io/team": "a"}, expressions=[{"key": "stage", "operator": "Exists"}])],
        DEFAULT, "selects on stage,"),
    Src("namespaces by name", ns("a", {"kubernetes.io/metadata.name": "a"}),
        [quota("team-a", expressions=[{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a"]}])],
        t.UNLIMITED, t.Limits(64 * GI, 400, "TenantQuota team-a", "TenantQuota team-a")),
]  # fmt: skip


@pytest.mark.parametrize("case", SOURCES, ids=lambda c: c.name)
def test_limits_sources_strongest_first(case: Src) -> None:
    tenants = t.Tenants([case.namespace], case.quotas, case.default)
    tenant = tenants.tenant_of(case.namespace.name)
    got = tenants.limits(tenant)
    if isinstance(case.expect, str):
        assert isinstance(got, t.QuotaError)
        assert got.tenant == tenant
        assert case.expect in got.message
        assert got.reason.startswith(f"tenant {tenant}: quota unusable, ")
    else:
        assert got == case.expect


def test_invalid_quota_condition() -> None:
    tenants = t.Tenants([], [quota("team-a", labels={"fracgpu.io/t": "a"}, memory="0.5")])
    _, valid = tenants.conditions("team-a", 0.0)
    assert (valid.status, valid.reason) == ("False", "InvalidQuantity")
    assert valid.message.endswith("new pods of tq/team-a are refused until it is fixed")


def test_a_deleted_tenantquota_falls_back_to_the_default() -> None:
    # pods charged to tq/gone keep their tenant; with the object gone only the default applies
    assert t.Tenants([], [], DEFAULT).limits("tq/gone") == DEFAULT


def test_default_limits_from_config() -> None:
    assert t.default_limits(None, None) == t.UNLIMITED
    assert t.default_limits(None, 300) == t.Limits(None, 300, t.SOURCE_NONE, t.SOURCE_DEFAULT)
    with pytest.raises(QuantityError, match="default vgpu-memory quota"):
        t.default_limits("-8Gi", None)


@pytest.mark.parametrize(
    ("zones", "zone", "refusal"),
    [
        (None, "zone-c", None),
        (["zone-a", "zone-b"], "zone-a", None),
        (["zone-a", "zone-b"], "zone-c", "tenant tq/team-a may use only zones zone-a, zone-b"),
        (["zone-a", "zone-b"], "", "tenant tq/team-a may use only zones zone-a, zone-b"),  # node without a zone
    ],
)
def test_allowed_zones(zones: list[str] | None, zone: str, refusal: str | None) -> None:
    tenants = t.Tenants([ns("a", {"team": "a"})], [quota("team-a", labels={"team": "a"}, zones=zones)])
    def refused(tenant: str) -> str | None:  # as the extender's filter asks it
        rule = zone_rule("a/p", "", ZONE_NONE, "", [], tenant=tenant, allowed_zones=tenants.allowed_zones(tenant))
        return check_static(rule, zone) or None

    assert refused("tq/team-a") == refusal
    assert refused("ns/b") is None  # namespace tenants have no zone rule


def test_a_selector_on_a_label_tenants_may_edit_fails_closed() -> None:
    """A TenantQuota stored before the CRD's rule: its tenant is refused, the status says why."""
    tenants = t.Tenants([ns("a", {"team": "a"})], [quota("team-a", labels={"team": "a"})], t.UNLIMITED)
    assert tenants.tenant_of("a") == "tq/team-a"  # still its tenant: leaving would be the escape
    limits = tenants.limits("tq/team-a")
    assert isinstance(limits, t.QuotaError)
    assert limits.reason == ("tenant tq/team-a: quota unusable, TenantQuota team-a spec.namespaceSelector selects on "
                             "team, a label tenants may edit on their namespaces; select on fracgpu.io/ labels or "
                             "kubernetes.io/metadata.name")
    _, valid = tenants.conditions("team-a", 0.0)
    assert (valid.status, valid.reason) == ("False", "EditableSelector")


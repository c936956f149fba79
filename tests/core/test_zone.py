"""Zone rules as a table: group same/spread, the oldest pod's policy, a tenant's allowedZones."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fracgpu.core.zone import GroupMember, check_static, spread_zones, zone_rule


def m(key: str, created: str, policy: str, zone: str) -> GroupMember:
    return GroupMember(key, created, policy, zone)


@dataclass(frozen=True)
class Case:
    name: str
    policy: str  # the new pod's own policy
    members: tuple[GroupMember, ...]
    fitting: tuple[str, ...]  # zones that have a fitting node
    allowed: tuple[str, ...]  # zones where a node passes
    allowed_zones: tuple[str, ...] | None = None
    group: str = "g"


T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"
ZONES = ("a", "b", "c")
CASES = [
    Case("first pod of a same group goes anywhere", "same", (), ZONES, ZONES),
    Case("same follows the group's zone", "same", (m("ns/p1", T0, "same", "b"),), ZONES, ("b",)),
    # the group drifted (b, then c); the oldest member anchors it
    Case("same anchors on the oldest member", "same", (m("ns/p2", T1, "same", "c"), m("ns/p1", T0, "same", "b")),
         ZONES, ("b",)),
    # p1 (oldest) says spread; the new pod says same: spread wins. a has 1, b has 0, c has 0
    Case("oldest pod's policy wins a conflict", "same", (m("ns/p1", T0, "spread", "a"),), ZONES, ("b", "c")),
    Case("spread picks the zones with fewest group pods", "spread",
         (m("ns/p1", T0, "spread", "a"), m("ns/p2", T1, "spread", "b")), ZONES, ("c",)),
    # only a and b have fitting nodes: among them the emptier one, though c would be emptier still
    Case("spread counts only zones that fit", "spread",
         (m("ns/p1", T0, "spread", "a"), m("ns/p2", T1, "spread", "a"), m("ns/p3", T2, "spread", "b")),
         ("a", "b"), ("b",)),
    Case("a newer pod saying none does not override the group", "none", (m("ns/p1", T0, "same", "a"),),
         ZONES, ("a",)),
    Case("no group: no zone rule", "same", (), ZONES, ZONES, group=""),
    Case("tenant allowedZones restrict any pod", "none", (), ZONES, ("a", "c"), allowed_zones=("a", "c")),
    Case("allowedZones and same together", "same", (m("ns/p1", T0, "same", "c"),), ZONES, ("c",),
         allowed_zones=("a", "c")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_zone_rules(case: Case) -> None:
    rule = zone_rule("ns/new", "2026-02-01T00:00:00Z", case.policy, case.group, case.members,
                     tenant="tq/t", allowed_zones=case.allowed_zones)
    static_ok = {z for z in ZONES if not check_static(rule, z)}
    fitting = [z for z in case.fitting if z in static_ok]
    spread = spread_zones(rule, fitting)
    passing = {z for z in static_ok if spread is None or z in spread}
    assert passing == set(case.allowed)


def test_reasons_carry_the_pods_facts_only() -> None:
    rule = zone_rule("ns/new", T2, "same", "g", [m("ns/p1", T0, "same", "b")], tenant="tq/t",
                     allowed_zones=("a", "b"))
    assert check_static(rule, "c") == "tenant tq/t may use only zones a, b"
    assert check_static(rule, "a") == "zone policy same: group g is in zone b"
    assert check_static(rule, "b") == ""


def test_the_pod_itself_is_not_its_own_member() -> None:
    rule = zone_rule("ns/p1", T0, "same", "g", [m("ns/p1", T0, "same", "b")])
    assert rule.same_zone is None

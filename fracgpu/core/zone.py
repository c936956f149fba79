"""Zone rules: a pod group kept in one zone or spread over zones, and a tenant's allowed zones.

Pods of one group are those with the same `fracgpu.io/group` label in the same namespace. The
first pod's placement is free; when pods of a group disagree on `fracgpu.io/zone-policy`, the
oldest pod's policy wins (creation time, then namespace/name, so the rule is total). Every refusal
string carries only the pod's facts (group, zone, tenant), so it is identical on every node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fracgpu.api.v1beta1.names import ZONE_NONE, ZONE_SAME, ZONE_SPREAD


@dataclass(frozen=True, slots=True)
class GroupMember:
    """A placed (or being placed) pod of a group: its zone and its own policy."""

    key: str  # namespace/name
    created: str  # RFC 3339 creation timestamp (sorts as text)
    policy: str  # same | spread | none
    zone: str  # zone of its node; "" when its node has no zone label


@dataclass(frozen=True, slots=True)
class ZoneRule:
    """What the zone rules allow for one pod, computed once per request."""

    policy: str = ZONE_NONE
    group: str = ""
    same_zone: str | None = None  # policy same with the group already placed: only this zone
    counts: Mapping[str, int] | None = None  # policy spread: group pods per zone
    allowed_zones: tuple[str, ...] | None = None  # the tenant's allowedZones, None = any
    tenant: str = ""

    @property
    def active(self) -> bool:
        return self.same_zone is not None or self.counts is not None or self.allowed_zones is not None


def effective_policy(pod_key: str, pod_created: str, pod_policy: str, members: Iterable[GroupMember]) -> str:
    """The oldest pod's policy, the pod itself included (ties broken by key)."""
    oldest = (pod_created, pod_key, pod_policy)
    for m in members:
        if (m.created, m.key) < oldest[:2]:
            oldest = (m.created, m.key, m.policy)
    return oldest[2]


def zone_rule(
    pod_key: str,
    pod_created: str,
    pod_policy: str,
    group: str,
    members: Sequence[GroupMember],
    *,
    tenant: str = "",
    allowed_zones: Sequence[str] | None = None,
) -> ZoneRule:
    """The rule for a pod of `group` given the group's other members (the pod itself excluded)."""
    allowed = tuple(allowed_zones) if allowed_zones is not None else None
    others = [m for m in members if m.key != pod_key]
    if not group:
        return ZoneRule(allowed_zones=allowed, tenant=tenant)
    policy = effective_policy(pod_key, pod_created, pod_policy, others)
    if policy == ZONE_SAME and others:
        # the zone of the oldest placed member: the group's anchor, even if later pods strayed
        anchor = min(others, key=lambda m: (m.created, m.key))
        return ZoneRule(policy, group, same_zone=anchor.zone, allowed_zones=allowed, tenant=tenant)
    if policy == ZONE_SPREAD:
        counts: dict[str, int] = {}
        for m in others:
            counts[m.zone] = counts.get(m.zone, 0) + 1
        return ZoneRule(policy, group, counts=counts, allowed_zones=allowed, tenant=tenant)
    return ZoneRule(policy, group, allowed_zones=allowed, tenant=tenant)


def allowed_zones_refusal(tenant: str, zones: Iterable[str]) -> str:
    """The refusal for a node outside a tenant's allowed zones."""
    return f"tenant {tenant} may use only zones {', '.join(zones)}"


def reason_allowed_zones(rule: ZoneRule) -> str:
    return allowed_zones_refusal(rule.tenant, rule.allowed_zones or ())


def reason_same(rule: ZoneRule) -> str:
    return f"zone policy same: group {rule.group} is in zone {rule.same_zone or '(none)'}"


def reason_spread(rule: ZoneRule) -> str:
    return f"zone policy spread: group {rule.group} has fewer pods in another zone that fits"


def check_static(rule: ZoneRule, zone: str) -> str:
    """The refusal for a node in `zone` from the rules that do not depend on other candidates; "" = allowed."""
    if rule.allowed_zones is not None and zone not in rule.allowed_zones:
        return reason_allowed_zones(rule)
    if rule.same_zone is not None and zone != rule.same_zone:
        return reason_same(rule)
    return ""


def spread_zones(rule: ZoneRule, fitting_zones: Iterable[str]) -> frozenset[str] | None:
    """Under policy spread: the zones among those that fit holding the fewest group pods (None = any)."""
    if rule.counts is None:
        return None
    zones = set(fitting_zones)
    if not zones:
        return None
    low = min(rule.counts.get(z, 0) for z in zones)
    return frozenset(z for z in zones if rule.counts.get(z, 0) == low)

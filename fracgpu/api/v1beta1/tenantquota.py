"""The cluster-scoped `TenantQuota` custom resource (fracgpu.io/v1beta1): strict types.

A TenantQuota gathers the namespaces its `spec.namespaceSelector` selects into one tenant
(`tq/<name>`), gives that tenant hard VRAM / vgpu-core budgets and optionally restricts it to some
zones. The extender writes `status` (used, pending, queue, conditions).

Quantities stay in their wire form here (strings checked against the same patterns as the CRD
schema in manifests/crds/tenantquota.yaml); `fracgpu.core.tenant` turns them into integers, because
this leaf package may not import the core. Every malformed field raises InvalidDocument naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fracgpu.api import rfc3339
from fracgpu.api.v1beta1 import _decode as d
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.names import API_VERSION, RESOURCE_CORE, RESOURCE_MEMORY, TENANTQUOTA_KIND

# Kubernetes' quantity grammar without a sign: negative budgets are refused at the API server.
MEMORY_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
# vgpu-core is a whole count of 1 % GPU units.
CORE_PATTERN = r"^[0-9]+$"
# Label keys ([prefix/]name) and values, as Kubernetes validates them.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_KEY_MAX = 317  # 253 (DNS subdomain prefix) + "/" + 63
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
LABEL_VALUE_MAX = 63

OP_IN = "In"
OP_NOT_IN = "NotIn"
OP_EXISTS = "Exists"
OP_DOES_NOT_EXIST = "DoesNotExist"
SELECTOR_OPERATORS = (OP_IN, OP_NOT_IN, OP_EXISTS, OP_DOES_NOT_EXIST)
QUOTA_RESOURCES = (RESOURCE_MEMORY, RESOURCE_CORE)

# status.conditions[].type values written by the extender.
CONDITION_NAMESPACE_CONFLICT = "NamespaceConflict"  # True: a namespace it selects is also selected by another
CONDITION_QUOTA_VALID = "QuotaValid"  # False: spec.hard cannot be used (message says why)
CONDITION_STATUSES = ("True", "False", "Unknown")

_MEMORY = re.compile(MEMORY_PATTERN)
_CORE = re.compile(CORE_PATTERN)
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)


@dataclass(frozen=True, slots=True)
class SelectorRequirement:
    """One matchExpressions item; `values` is empty for Exists / DoesNotExist."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == OP_IN:
            return labels.get(self.key) in self.values
        if self.operator == OP_NOT_IN:
            # Kubernetes: NotIn matches when the label is absent too.
            return labels.get(self.key) not in self.values
        if self.operator == OP_EXISTS:
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True, slots=True)
class NamespaceSelector:
    """A metav1.LabelSelector over Namespace labels: every term must hold (AND)."""

    match_labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    match_expressions: tuple[SelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


@dataclass(frozen=True, slots=True)
class QuotaAmounts:
    """VRAM and vgpu-core amounts in wire form ("64Gi", "400"); None = not given."""

    memory: str | None = None
    cores: str | None = None

    def to_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.memory is not None:
            out[RESOURCE_MEMORY] = self.memory
        if self.cores is not None:
            out[RESOURCE_CORE] = self.cores
        return out


@dataclass(frozen=True, slots=True)
class TenantQuotaSpec:
    namespace_selector: NamespaceSelector
    hard: QuotaAmounts
    allowed_zones: tuple[str, ...] | None = None  # None: any zone


@dataclass(frozen=True, slots=True)
class Condition:
    """A metav1.Condition."""

    type: str
    status: str  # True | False | Unknown
    reason: str  # CamelCase
    message: str
    last_transition_time: str  # RFC 3339
    observed_generation: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
            "observedGeneration": self.observed_generation,
        }


@dataclass(frozen=True, slots=True)
class TenantQuotaStatus:
    used: QuotaAmounts = QuotaAmounts(memory="0", cores="0")
    pending: int = 0  # pods waiting in this tenant's queue
    queue: tuple[str, ...] = ()  # "namespace/name" of the first waiting pods, in admission order
    conditions: tuple[Condition, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The `status` object, ready for a merge patch of the status subresource."""
        return {
            "used": self.used.to_dict(),
            "pending": self.pending,
            "queue": list(self.queue),
            "conditions": [c.to_dict() for c in self.conditions],
        }

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass(frozen=True, slots=True)
class TenantQuota:
    name: str
    created: float  # metadata.creationTimestamp as Unix seconds (0.0 when absent, e.g. a hand-written file)
    generation: int
    spec: TenantQuotaSpec
    status: TenantQuotaStatus | None = None

    @staticmethod
    def from_dict(raw: Any) -> TenantQuota:
        """Strictly read a TenantQuota object (as the API server returns it, or from a snapshot file)."""
        top = d.obj(raw, "TenantQuota")
        api_version = top.get("apiVersion", API_VERSION)
        kind = top.get("kind", TENANTQUOTA_KIND)
        if api_version != API_VERSION or kind != TENANTQUOTA_KIND:
            raise InvalidDocument(f"TenantQuota: expected {API_VERSION} {TENANTQUOTA_KIND}, got {api_version} {kind}")
        meta = d.obj(top.get("metadata"), "TenantQuota.metadata")
        name = d.string(meta, "name", "TenantQuota.metadata")
        if not name:
            raise InvalidDocument("TenantQuota.metadata.name: must not be empty")
        where = f"TenantQuota {name}"
        created_text = meta.get("creationTimestamp")
        created = 0.0 if created_text is None else parse_timestamp(created_text, f"{where}.metadata.creationTimestamp")
        generation = d.integer(meta, "generation", f"{where}.metadata", default=0)
        spec = _spec(top.get("spec"), f"{where}.spec")
        status = None if top.get("status") is None else _status(top.get("status"), f"{where}.status")
        return TenantQuota(name=name, created=created, generation=generation, spec=spec, status=status)


def parse_timestamp(value: Any, where: str) -> float:
    """An RFC 3339 timestamp ("2026-01-02T03:04:05Z") as Unix seconds."""
    if not isinstance(value, str):
        raise InvalidDocument(f"{where}: expected an RFC 3339 timestamp, got {type(value).__name__}")
    try:
        return rfc3339.parse(value)
    except ValueError:
        raise InvalidDocument(f"{where}: {value!r} is not an RFC 3339 timestamp with a time zone") from None


def _only(o: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(o) - set(allowed))
    if unknown:
        raise InvalidDocument(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(allowed)})")


def _label_key(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > LABEL_KEY_MAX or not _LABEL_KEY.match(value):
        raise InvalidDocument(f"{where}: {value!r} is not a valid label key")
    return value


def _label_value(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > LABEL_VALUE_MAX or not _LABEL_VALUE.match(value):
        raise InvalidDocument(f"{where}: {value!r} is not a valid label value")
    return value


def _selector(raw: Any, where: str) -> NamespaceSelector:
    sel = d.obj(raw, where)
    _only(sel, ("matchLabels", "matchExpressions"), where)
    labels = d.obj(sel.get("matchLabels", {}), f"{where}.matchLabels")
    match_labels = tuple(
        sorted(
            (_label_key(k, f"{where}.matchLabels key"), _label_value(v, f"{where}.matchLabels[{k}]"))
            for k, v in labels.items()
        )
    )
    exprs: list[SelectorRequirement] = []
    for i, item in enumerate(d.lst(sel.get("matchExpressions", []), f"{where}.matchExpressions")):
        ew = f"{where}.matchExpressions[{i}]"
        e = d.obj(item, ew)
        _only(e, ("key", "operator", "values"), ew)
        key = _label_key(e.get("key"), f"{ew}.key")
        op = d.choice(e, "operator", ew, SELECTOR_OPERATORS)
        values = tuple(
            _label_value(v, f"{ew}.values[{j}]") for j, v in enumerate(d.lst(e.get("values", []), f"{ew}.values"))
        )
        if op in (OP_IN, OP_NOT_IN) and not values:
            raise InvalidDocument(f"{ew}.values: {op} needs at least one value")
        if op in (OP_EXISTS, OP_DOES_NOT_EXIST) and values:
            raise InvalidDocument(f"{ew}.values: {op} takes no values")
        exprs.append(SelectorRequirement(key=key, operator=op, values=values))
    if not match_labels and not exprs:
        # Kubernetes reads an empty selector as "everything"; for a quota that is almost always a
        # mistake, so it is refused (select all namespaces explicitly with an Exists expression).
        raise InvalidDocument(f"{where}: empty; give matchLabels or matchExpressions")
    return NamespaceSelector(match_labels=match_labels, match_expressions=tuple(exprs))


def _amounts(raw: Any, where: str) -> QuotaAmounts:
    o = d.obj(raw, where)
    _only(o, QUOTA_RESOURCES, where)
    return QuotaAmounts(
        memory=_quantity(o.get(RESOURCE_MEMORY), _MEMORY, f"{where}[{RESOURCE_MEMORY}]"),
        cores=_quantity(o.get(RESOURCE_CORE), _CORE, f"{where}[{RESOURCE_CORE}]"),
    )


def _quantity(value: Any, pattern: re.Pattern[str], where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidDocument(f"{where}: must not be negative, got {value}")
        return str(value)
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidDocument(f"{where}: {value!r} is not a non-negative quantity")
    return value


def _spec(raw: Any, where: str) -> TenantQuotaSpec:
    spec = d.obj(raw, where)
    _only(spec, ("namespaceSelector", "hard", "allowedZones"), where)
    if "namespaceSelector" not in spec:
        raise InvalidDocument(f"{where}.namespaceSelector: required")
    if "hard" not in spec:
        raise InvalidDocument(f"{where}.hard: required")
    hard = _amounts(spec.get("hard"), f"{where}.hard")
    if hard.memory is None and hard.cores is None:
        raise InvalidDocument(f"{where}.hard: give {RESOURCE_MEMORY}, {RESOURCE_CORE} or both")
    zones: tuple[str, ...] | None = None
    if spec.get("allowedZones") is not None:
        items = d.lst(spec.get("allowedZones"), f"{where}.allowedZones")
        zones = tuple(_label_value(z, f"{where}.allowedZones[{i}]") for i, z in enumerate(items))
        if not zones or "" in zones:
            raise InvalidDocument(f"{where}.allowedZones: list zone names, or leave it out for any zone")
        if len(set(zones)) != len(zones):
            raise InvalidDocument(f"{where}.allowedZones: a zone appears twice")
    return TenantQuotaSpec(
        namespace_selector=_selector(spec.get("namespaceSelector"), f"{where}.namespaceSelector"),
        hard=hard,
        allowed_zones=zones,
    )


def _status(raw: Any, where: str) -> TenantQuotaStatus:
    st = d.obj(raw, where)
    _only(st, ("used", "pending", "queue", "conditions"), where)
    queue = d.lst(st.get("queue", []), f"{where}.queue")
    if not all(isinstance(q, str) for q in queue):
        raise InvalidDocument(f"{where}.queue: every item must be a string")
    conditions: list[Condition] = []
    for cw, c in d.objects(st.get("conditions", []), f"{where}.conditions"):
        status = d.choice(c, "status", cw, CONDITION_STATUSES)
        conditions.append(
            Condition(
                type=d.string(c, "type", cw),
                status=status,
                reason=d.string(c, "reason", cw),
                message=d.string(c, "message", cw, default=""),
                last_transition_time=d.string(c, "lastTransitionTime", cw),
                observed_generation=d.integer(c, "observedGeneration", cw, default=0),
            )
        )
    used = _amounts(st.get("used", {}), f"{where}.used")
    return TenantQuotaStatus(
        used=QuotaAmounts(memory=used.memory or "0", cores=used.cores or "0"),
        pending=d.integer(st, "pending", where, default=0),
        queue=tuple(queue),
        conditions=tuple(conditions),
    )

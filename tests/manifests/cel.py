"""A small model of how the API server runs a ValidatingAdmissionPolicy, over cel-python (celpy).

It follows the documented order: the binding's matchResources.namespaceSelector (over the labels of
the request's namespace, or of the Namespace object itself), matchConstraints.resourceRules (group,
version, operation, resource or resource/subresource), then matchConditions, then variables (in order, each seeing the
ones before it), then validations; a validation that is false denies with its messageExpression,
else its message. Only standard CEL is modelled: the policies avoid optional syntax (?.) and
Kubernetes' library extensions, which celpy does not have. What it cannot show: the API server's
type checker and cost limits (docs/admission.md).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

_ENV = celpy.Environment()


@functools.cache
def _program(expression: str) -> Any:
    return _ENV.program(_ENV.compile(expression))


def evaluate(expression: str, activation: Mapping[str, Any]) -> Any:
    """Evaluate one expression; a CEL error is raised (failurePolicy Fail would deny)."""
    result = _program(expression).evaluate(dict(activation))
    if isinstance(result, CELEvalError):
        raise result
    return result


def to_cel(value: Any) -> Any:
    return json_to_cel(value)


@dataclass(frozen=True)
class Request:
    """The attributes of one admission request."""

    username: str
    operation: str
    resource: str  # plural, e.g. "pods"
    obj: Mapping[str, Any] | None
    old: Mapping[str, Any] | None = None
    subresource: str = ""
    group: str = ""
    version: str = "v1"
    groups: tuple[str, ...] = ("system:authenticated",)
    extra: Mapping[str, list[str]] = field(default_factory=dict)
    # labels of the request's namespace; None: only kubernetes.io/metadata.name, as the API server sets it
    namespace_labels: Mapping[str, str] | None = None

    def selector_labels(self) -> Mapping[str, str] | None:
        """The labels a binding's namespaceSelector sees: the Namespace's own for a Namespace, the
        request's namespace's for namespaced objects, None for other cluster-scoped objects."""
        meta = (self.obj or self.old or {}).get("metadata", {})
        if self.resource == "namespaces" and self.group == "":
            return dict(meta.get("labels", {}))
        if "namespace" not in meta:
            return None
        if self.namespace_labels is not None:
            return self.namespace_labels
        return {"kubernetes.io/metadata.name": meta["namespace"]}

    def as_json(self) -> dict[str, Any]:
        meta = (self.obj or self.old or {}).get("metadata", {})
        user: dict[str, Any] = {"username": self.username, "groups": list(self.groups)}
        if self.extra:
            user["extra"] = {k: list(v) for k, v in self.extra.items()}
        req: dict[str, Any] = {
            "uid": "0f4a5b2e-1111-4c1d-9f00-000000000001",
            "resource": {"group": self.group, "version": self.version, "resource": self.resource},
            "operation": self.operation,
            "userInfo": user,
            "name": meta.get("name", ""),
            "dryRun": False,
        }
        if self.subresource:
            req["subResource"] = self.subresource
        if "namespace" in meta:
            req["namespace"] = meta["namespace"]
        return req


@dataclass(frozen=True)
class Outcome:
    matched: bool
    denials: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.denials


def _rule_matches(rule: Mapping[str, Any], r: Request) -> bool:
    def has(values: list[str], value: str) -> bool:
        return "*" in values or value in values

    resource = f"{r.resource}/{r.subresource}" if r.subresource else r.resource
    resources = rule.get("resources", [])
    resource_ok = (resource in resources or "*" in resources
                   or (r.subresource != "" and f"{r.resource}/*" in resources))
    return (has(rule.get("apiGroups", []), r.group) and has(rule.get("apiVersions", []), r.version)
            and has(rule.get("operations", []), r.operation) and resource_ok)


def run_policy(policy: Mapping[str, Any], r: Request) -> Outcome:
    spec = policy["spec"]
    if not any(_rule_matches(rule, r) for rule in spec["matchConstraints"]["resourceRules"]):
        return Outcome(False)
    activation: dict[str, Any] = {
        "object": to_cel(r.obj),
        "oldObject": to_cel(r.old),
        "request": to_cel(r.as_json()),
        "params": to_cel(None),
        "namespaceObject": to_cel(None),
    }
    for condition in spec.get("matchConditions", []):
        if not bool(evaluate(condition["expression"], activation)):
            return Outcome(False)
    variables: dict[Any, Any] = {}
    for var in spec.get("variables", []):
        activation["variables"] = celtypes.MapType(variables)
        variables[celtypes.StringType(var["name"])] = evaluate(var["expression"], activation)
    activation["variables"] = celtypes.MapType(variables)
    denials = []
    for v in spec["validations"]:
        if not bool(evaluate(v["expression"], activation)):
            if "messageExpression" in v:
                denials.append(str(evaluate(v["messageExpression"], activation)))
            else:
                denials.append(str(v.get("message", f"failed expression: {v['expression']}")))
    return Outcome(True, tuple(denials))


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector: every matchLabels pair and every expression holds."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def run_bound(policy: Mapping[str, Any], binding: Mapping[str, Any], r: Request) -> Outcome:
    """The policy as its binding applies it: the binding's namespaceSelector first."""
    selector = binding["spec"].get("matchResources", {}).get("namespaceSelector")
    labels = r.selector_labels()
    if selector is not None and labels is not None and not selector_matches(selector, labels):
        return Outcome(False)
    return run_policy(policy, r)


def match_conditions(conditions: list[Mapping[str, Any]], r: Request) -> bool:
    """A webhook's matchConditions: all must be true for the webhook to be called."""
    activation = {"object": to_cel(r.obj), "oldObject": to_cel(r.old), "request": to_cel(r.as_json())}
    return all(bool(evaluate(c["expression"], activation)) for c in conditions)

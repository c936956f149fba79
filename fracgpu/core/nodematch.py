"""Whether kube-scheduler would let a pod onto a node, as far as the node object tells: unschedulable,
nodeSelector, required node affinity, NoSchedule/NoExecute taints. fracgpu's DRA allocator chooses a node
before the scheduler sees the pod; a node the scheduler would refuse would only have the allocation undone
(its PostFilter deallocates a claim whose node cannot take the pod). CPU, memory, ports and pod affinity
are the scheduler's; a refusal for those undoes the allocation and fracgpu avoids that node for that pod.

The rules and refusal texts follow kube-scheduler's NodeUnschedulable, NodeAffinity and TaintToleration
plugins (component-helpers/scheduling/corev1/nodeaffinity, v1.Toleration.ToleratesTaint). Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

UNSCHEDULABLE = "node(s) were unschedulable"
AFFINITY = "node(s) didn't match Pod's node affinity/selector"


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else ()


def _requirement(req: Mapping[str, Any], value: str | None) -> bool:
    op = req.get("operator")
    values = [str(v) for v in _list(req.get("values"))]
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def _term(term: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> bool:
    exprs, fields = _list(term.get("matchExpressions")), _list(term.get("matchFields"))
    if not exprs and not fields:
        return False  # an empty term matches no node
    for e in exprs:
        if not isinstance(e, Mapping) or not _requirement(e, labels.get(str(e.get("key")))):
            return False
    for f in fields:
        if not isinstance(f, Mapping) or f.get("key") != "metadata.name" or not _requirement(f, name):
            return False
    return True


def tolerates(tolerations: Sequence[Any], taint: Mapping[str, Any]) -> bool:
    for t in tolerations:
        if not isinstance(t, Mapping):
            continue
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        key = t.get("key") or ""
        if t.get("operator") == "Exists":
            if not key or key == taint.get("key"):
                return True
        elif key == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the node checks read of a Node, read once per node change (a pass asks every node)."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, Any], ...]  # the NoSchedule and NoExecute ones
    unschedulable: bool

    @staticmethod
    def of(node: Mapping[str, Any]) -> NodeFacts:
        spec, meta = _map(node.get("spec")), _map(node.get("metadata"))
        taints = tuple(t for t in _list(spec.get("taints"))
                       if isinstance(t, Mapping) and t.get("effect") in ("NoSchedule", "NoExecute"))
        labels = {str(k): str(v) for k, v in _map(meta.get("labels")).items()}
        return NodeFacts(str(meta.get("name") or ""), labels, taints, spec.get("unschedulable") is True)


def node_refusal(pod: Mapping[str, Any], node: Mapping[str, Any]) -> str:
    """Why kube-scheduler would not put the pod on the node ("" = it might): the first refusal in its
    default filter order (NodeUnschedulable, TaintToleration, NodeAffinity), as it reports one per node."""
    return refusal_of(pod)(NodeFacts.of(node))


def refusal_of(pod: Mapping[str, Any]) -> Callable[[NodeFacts], str]:
    """`node_refusal` for one pod, its selector, affinity and tolerations read once."""
    spec = _map(pod.get("spec"))
    tolerations = _list(spec.get("tolerations"))
    selector = {str(k): str(v) for k, v in _map(spec.get("nodeSelector")).items()}
    required = _map(_map(_map(spec.get("affinity")).get("nodeAffinity")).get(
        "requiredDuringSchedulingIgnoredDuringExecution"))
    terms = [t for t in _list(required.get("nodeSelectorTerms")) if isinstance(t, Mapping)]
    unschedulable_ok = tolerates(tolerations, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"})

    def refusal(node: NodeFacts) -> str:
        if node.unschedulable and not unschedulable_ok:
            return UNSCHEDULABLE
        for taint in node.taints:
            if not tolerates(tolerations, taint):
                value = taint.get("value")
                shown = f"{taint.get('key')}: {value}" if value else str(taint.get("key"))
                return f"node(s) had untolerated taint {{{shown}}}"
        if selector and any(node.labels.get(k) != v for k, v in selector.items()):
            return AFFINITY
        if required and not any(_term(t, node.name, node.labels) for t in terms):
            return AFFINITY
        return ""

    return refusal


def nodes_unavailable(reasons: Sequence[str]) -> str:
    """``0/N nodes are available: ...`` with the reasons grouped and counted as kube-scheduler does."""
    counted: dict[str, int] = {}
    for why in reasons:
        counted[why] = counted.get(why, 0) + 1
    grouped = ", ".join(f"{n} {why}" for why, n in sorted(counted.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"0/{len(reasons)} nodes are available: {grouped}"


__all__ = ["AFFINITY", "UNSCHEDULABLE", "NodeFacts", "node_refusal", "nodes_unavailable", "refusal_of", "tolerates"]

"""Whether kube-scheduler would let a pod onto a node (core/nodematch.py), as its NodeUnschedulable,
TaintToleration and NodeAffinity plugins judge it: a table of pod x node."""

from __future__ import annotations

from typing import Any

import pytest

from fracgpu.core.nodematch import AFFINITY, UNSCHEDULABLE, node_refusal, nodes_unavailable


def node(labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None,
         unschedulable: bool = False, name: str = "gpu-1") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable}}


def pod(**spec: Any) -> dict[str, Any]:
    return {"spec": spec}


def required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": op, "values": list(values)}]}


TAINT = {"key": "gpu", "value": "busy", "effect": "NoSchedule"}
CASES = [
    ("a plain pod on a plain node", pod(), node(), ""),
    ("cordoned", pod(), node(unschedulable=True), UNSCHEDULABLE),
    ("cordoned, tolerated", pod(tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]),
     node(unschedulable=True), ""),
    ("NoSchedule taint", pod(), node(taints=[TAINT]), "node(s) had untolerated taint {gpu: busy}"),
    ("PreferNoSchedule is no refusal", pod(), node(taints=[{**TAINT, "effect": "PreferNoSchedule"}]), ""),
    ("tolerated by key and value", pod(tolerations=[{"key": "gpu", "value": "busy"}]), node(taints=[TAINT]), ""),
    ("another value is not tolerated", pod(tolerations=[{"key": "gpu", "value": "idle"}]), node(taints=[TAINT]),
     "node(s) had untolerated taint {gpu: busy}"),
    ("Exists without a key tolerates all", pod(tolerations=[{"operator": "Exists"}]), node(taints=[TAINT]), ""),
    ("a toleration for another effect", pod(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}]),
     node(taints=[TAINT]), "node(s) had untolerated taint {gpu: busy}"),
    ("nodeSelector matches", pod(nodeSelector={"zone": "a"}), node({"zone": "a"}), ""),
    ("nodeSelector does not", pod(nodeSelector={"zone": "a"}), node({"zone": "b"}), AFFINITY),
    ("In", pod(affinity=required(expr("zone", "In", "a", "b"))), node({"zone": "b"}), ""),
    ("NotIn", pod(affinity=required(expr("zone", "NotIn", "a"))), node({"zone": "a"}), AFFINITY),
    ("NotIn on a missing label", pod(affinity=required(expr("zone", "NotIn", "a"))), node(), ""),
    ("Exists", pod(affinity=required(expr("gpu", "Exists"))), node({"gpu": "x"}), ""),
    ("DoesNotExist", pod(affinity=required(expr("gpu", "DoesNotExist"))), node({"gpu": "x"}), AFFINITY),
    ("Gt", pod(affinity=required(expr("gen", "Gt", "8"))), node({"gen": "9"}), ""),
    ("Lt not met", pod(affinity=required(expr("gen", "Lt", "8"))), node({"gen": "9"}), AFFINITY),
    ("Gt on a non-number", pod(affinity=required(expr("gen", "Gt", "8"))), node({"gen": "new"}), AFFINITY),
    ("terms are ORed", pod(affinity=required(expr("zone", "In", "x"), expr("zone", "In", "a"))), node({"zone": "a"}),
     ""),
    ("matchFields by name", pod(affinity=required({"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}]})), node(), ""),
    ("an empty term matches nothing", pod(affinity=required({})), node(), AFFINITY),
    ("the taint is reported before the selector", pod(nodeSelector={"zone": "a"}), node(taints=[TAINT]),
     "node(s) had untolerated taint {gpu: busy}"),
]


@pytest.mark.parametrize(("name", "p", "n", "expected"), CASES, ids=[c[0] for c in CASES])
def test_node_refusal(name: str, p: dict[str, Any], n: dict[str, Any], expected: str) -> None:
    assert node_refusal(p, n) == expected


def test_refusals_are_grouped_and_counted_as_kube_scheduler_prints_them() -> None:
    assert nodes_unavailable([AFFINITY, "x", AFFINITY]) == (
        "0/3 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 1 x")

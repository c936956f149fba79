"""Optional recovery Jobs: a user-supplied Job (e.g. a GPU reset) started for a node broken too long.

Pure: validate the template once at start (``TEMPLATE_CHECKS``), build one Job per node from it, read
Jobs back.

The Job runs on the broken node (``spec.template.spec.nodeName``), tolerates the controller's
taint, gets the node's name in ``FRACGPU_NODE`` in every container, and is labelled
``fracgpu.io/recovery-node`` so that the controller sees it and starts no second one while it runs.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from typing import Any, Final

from fracgpu.api.v1beta1.names import ANN_RECOVERY_NODE, LABEL_RECOVERY_NODE
from fracgpu.kube import objects

ENV_NODE: Final = "FRACGPU_NODE"
_MAX_LABEL: Final = 63


# What a template must be, in the order it is checked; the refusal is "recovery job: <check>".
_NOT_A_JOB: Final = "expected a Job object"
_NOT_KIND_JOB: Final = "expected kind Job (batch/v1), got {kind!r}"
_NO_CONTAINER: Final = "spec.template.spec.containers must list at least one container"
_PINNED: Final = "leave nodeName/nodeSelector/affinity out; the controller pins the node"
TEMPLATE_CHECKS: Final = (_NOT_A_JOB, _NOT_KIND_JOB, _NO_CONTAINER, _PINNED)


class TemplateError(ValueError):
    """The recovery Job template is not usable; the message says what is wrong."""

    def __init__(self, check: str, **values: object) -> None:
        super().__init__("recovery job: " + check.format(**values))


def validate_template(obj: Any) -> dict[str, Any]:
    """A batch/v1 Job with at least one container; returns a private copy."""
    if not isinstance(obj, Mapping):
        raise TemplateError(_NOT_A_JOB)
    if obj.get("kind") != "Job" or str(obj.get("apiVersion", "batch/v1")) != "batch/v1":
        raise TemplateError(_NOT_KIND_JOB, kind=obj.get("kind"))
    pod = ((obj.get("spec") or {}).get("template") or {}).get("spec")
    if not isinstance(pod, Mapping) or not isinstance(pod.get("containers"), list) or not pod["containers"]:
        raise TemplateError(_NO_CONTAINER)
    if pod.get("nodeName") or pod.get("nodeSelector") or pod.get("affinity"):
        raise TemplateError(_PINNED)
    return copy.deepcopy(dict(obj))


def node_label(node: str) -> str:
    """The node as a label value: itself when it fits, else a stable hash (the annotation has the name)."""
    if len(node) <= _MAX_LABEL:
        return node
    return "h-" + hashlib.sha256(node.encode()).hexdigest()[:40]


def build_job(template: Mapping[str, Any], node: str, namespace: str, taint_key: str) -> dict[str, Any]:
    job = copy.deepcopy(dict(template))
    job["apiVersion"], job["kind"] = "batch/v1", "Job"
    meta = job.setdefault("metadata", {})
    meta.pop("name", None)
    meta.pop("resourceVersion", None)
    meta["namespace"] = namespace
    meta["generateName"] = f"fracgpu-recover-{node_label(node)[:40]}-".replace(".", "-")
    meta.setdefault("labels", {})[LABEL_RECOVERY_NODE] = node_label(node)
    meta.setdefault("annotations", {})[ANN_RECOVERY_NODE] = node
    spec = job.setdefault("spec", {})
    tmpl = spec.setdefault("template", {})
    tmpl.setdefault("metadata", {}).setdefault("labels", {})[LABEL_RECOVERY_NODE] = node_label(node)
    pod = tmpl.setdefault("spec", {})
    pod["nodeName"] = node
    pod.setdefault("restartPolicy", "Never")
    pod["tolerations"] = [*pod.get("tolerations", []), {"key": taint_key, "operator": "Exists"}]
    for container in pod.get("containers", []):
        env = [e for e in container.get("env", []) if e.get("name") != ENV_NODE]
        container["env"] = [*env, {"name": ENV_NODE, "value": node}]
    return job


def job_state(obj: Mapping[str, Any]) -> tuple[str, bool] | None:
    """(node, running) for one of our recovery Jobs; None for any other Job."""
    node = objects.annotations(obj).get(ANN_RECOVERY_NODE)
    if not isinstance(node, str) or not node:
        return None
    conditions = (obj.get("status") or {}).get("conditions") or []
    done = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)
    return node, not done

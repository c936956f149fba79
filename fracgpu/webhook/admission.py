"""One AdmissionReview in, one AdmissionReview out: the webhook's decision, without I/O.

The API server sends `admission.k8s.io/v1` AdmissionReview objects (only v1 is declared in the
webhook configuration). For a Pod asking for `fracgpu.io/vgpu-core` the answer is a JSONPatch that
sets `spec.schedulerName: fracgpu-scheduler`; a pod whose GPU request is malformed is refused with
the reason from `fracgpu.core.request`, and so is a pod created with fracgpu.io/assigned or
fracgpu.io/phase (a forged reservation; the admission policy fracgpu-protect-pod-keys refuses it too,
with the same text). Every answer echoes the request's uid.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fracgpu.api.v1beta1 import jsontext
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.names import (
    PROTECTED_POD_ANNOTATIONS,
    RESOURCE_CORE,
    RESOURCE_MEMORY,
    SCHEDULER_NAME,
    protected_pod_keys_refusal,
)
from fracgpu.core.pod import PodObject, decode_pod
from fracgpu.core.request import RequestError, parse_pod_request

ADMISSION_API_VERSION: Final = "admission.k8s.io/v1"
DEFAULT_SCHEDULER: Final = "default-scheduler"

# Outcomes, also the values of the `outcome` label of the webhook's request counter.
OUTCOME_IGNORED: Final = "ignored"  # not a pod, or a pod that asks for no GPU
OUTCOME_PATCHED: Final = "patched"  # schedulerName set to fracgpu-scheduler
OUTCOME_ALLOWED: Final = "allowed"  # a GPU pod that already names fracgpu-scheduler
OUTCOME_REJECTED: Final = "rejected"  # a malformed GPU request, or one that bypasses the scheduler
OUTCOMES: Final = (OUTCOME_IGNORED, OUTCOME_PATCHED, OUTCOME_ALLOWED, OUTCOME_REJECTED)


class BadReview(ValueError):
    """The body is not an admission.k8s.io/v1 AdmissionReview request; the message says why (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Decision:
    uid: str
    outcome: str
    message: str = ""
    patch: tuple[Mapping[str, Any], ...] = ()

    @property
    def allowed(self) -> bool:
        return self.outcome != OUTCOME_REJECTED

    def to_review(self) -> dict[str, Any]:
        """The AdmissionReview the API server expects back."""
        response: dict[str, Any] = {"uid": self.uid, "allowed": self.allowed}
        if self.patch:
            raw = json.dumps(list(self.patch), separators=(",", ":")).encode()
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(raw).decode("ascii")
        if not self.allowed:
            # 422 + Invalid, as the API server itself answers for an invalid object.
            response["status"] = {"code": 422, "reason": "Invalid", "message": self.message}
        return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def decode(body: bytes) -> Mapping[str, Any]:
    """The `request` of an AdmissionReview body; BadReview when it is not one."""
    try:
        doc = jsontext.loads(body, "body")
    except InvalidDocument as e:
        raise BadReview(str(e)) from None
    if not isinstance(doc, Mapping):
        raise BadReview("body is not a JSON object")
    if doc.get("kind") != "AdmissionReview":
        raise BadReview(f"kind is {doc.get('kind')!r}, expected 'AdmissionReview'")
    if doc.get("apiVersion") != ADMISSION_API_VERSION:
        raise BadReview(f"apiVersion is {doc.get('apiVersion')!r}, only {ADMISSION_API_VERSION!r} is served")
    request = doc.get("request")
    if not isinstance(request, Mapping):
        raise BadReview("AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("AdmissionReview request has no uid")
    return request


def _is_pod(request: Mapping[str, Any]) -> bool:
    kind = request.get("kind")
    if not isinstance(kind, Mapping):
        return False
    return kind.get("group", "") == "" and kind.get("kind") == "Pod" and not request.get("subResource")


def _mentions_gpu(pod: PodObject) -> bool:
    """Whether any container names a fracgpu resource, so that a bad one is refused, not ignored."""
    for c in pod.containers:
        if not isinstance(c.resources, Mapping):
            continue
        for part in ("requests", "limits"):
            amounts = c.resources.get(part)
            if isinstance(amounts, Mapping) and (RESOURCE_CORE in amounts or RESOURCE_MEMORY in amounts):
                return True
    return False


def _forges_a_reservation(pod: PodObject) -> bool:
    """Whether a new pod carries a key only fracgpu writes, and only after creation (at bind)."""
    return any(k in pod.annotations for k in PROTECTED_POD_ANNOTATIONS)


def _username(request: Mapping[str, Any]) -> str:
    user = request.get("userInfo")
    name = user.get("username") if isinstance(user, Mapping) else None
    return name if isinstance(name, str) and name else "an unnamed user"


def review(request: Mapping[str, Any]) -> Decision:
    """Decide one admission request (already decoded)."""
    uid = str(request["uid"])
    if not _is_pod(request) or request.get("operation") != "CREATE":
        return Decision(uid, OUTCOME_IGNORED)
    obj = request.get("object")
    if not isinstance(obj, Mapping):
        raise BadReview("AdmissionReview request for a Pod CREATE has no object")
    pod = decode_pod(obj)
    if _forges_a_reservation(pod):
        # Defence in depth beside the admission policy; no fracgpu program creates pods, so nobody is exempt.
        return Decision(uid, OUTCOME_REJECTED, protected_pod_keys_refusal(_username(request)))
    if not _mentions_gpu(pod):
        return Decision(uid, OUTCOME_IGNORED)
    try:
        gpu = parse_pod_request(pod)
    except RequestError as e:
        return Decision(uid, OUTCOME_REJECTED, f"fracgpu: {e}")
    if gpu is None:
        # Every container that names vgpu-core asks for 0: not a share (1-100) nor whole GPUs.
        return Decision(
            uid,
            OUTCOME_REJECTED,
            f"fracgpu: {RESOURCE_CORE} 0 asks for no GPU; ask for 1-100 (a share of one GPU) "
            "or a multiple of 100 (whole GPUs), or remove the resource",
        )
    node_name = pod.node
    if node_name:
        return Decision(
            uid,
            OUTCOME_REJECTED,
            f"fracgpu: a pod asking for {RESOURCE_CORE} cannot set spec.nodeName ({node_name!r}): "
            f"only {SCHEDULER_NAME} may place it, so that its GPU share is reserved",
        )
    scheduler = pod.scheduler_name
    if scheduler == SCHEDULER_NAME:
        return Decision(uid, OUTCOME_ALLOWED)
    if scheduler not in ("", DEFAULT_SCHEDULER):
        return Decision(
            uid,
            OUTCOME_REJECTED,
            f"fracgpu: a pod asking for {RESOURCE_CORE} must be scheduled by {SCHEDULER_NAME}, "
            f"not {scheduler!r}; remove spec.schedulerName",
        )
    patch = ({"op": "add", "path": "/spec/schedulerName", "value": SCHEDULER_NAME},)
    return Decision(uid, OUTCOME_PATCHED, patch=patch)

"""The example files in examples/pods/ are what the docs apply: each validates offline against the
Kubernetes schemas (the TenantQuota against fracgpu's CRD), and fracgpu itself reads them as the docs
say (the request parser, the admission webhook, the tenant index)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from fracgpu.api.v1beta1 import names
from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core.pod import decode_pod
from fracgpu.core.request import parse_pod_request
from fracgpu.core.tenant import Limits, NamespaceInfo, Tenants
from fracgpu.webhook.admission import review
from tests.manifests.test_crd_tenantquota import VALIDATOR
from tests.manifests.test_schemas import VERSIONS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "pods"
DOCS = [ROOT / "docs" / "quickstart.md", ROOT / "docs" / "install.md"]
GI = 2**30


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@dataclass(frozen=True)
class PodExample:
    file: str
    cores: int  # the pod's effective vgpu-core
    gpus: int
    memory: int | None  # VRAM per GPU; None: the GPU's share by cores
    topology: str


PODS = [
    PodExample("fractional.yaml", 50, 1, 20 * GI, names.TOPOLOGY_PREFERRED),
    PodExample("whole-gpu.yaml", 100, 1, None, names.TOPOLOGY_PREFERRED),
    PodExample("multi-gpu-topology.yaml", 200, 2, None, names.TOPOLOGY_REQUIRED),
]


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted([p.file for p in PODS] + ["tenant-quota.yaml"])


@pytest.mark.parametrize("example", PODS, ids=[p.file for p in PODS])
def test_a_pod_example_asks_for_what_its_comment_says(example: PodExample) -> None:
    (pod,) = docs(EXAMPLES / example.file)
    for version in VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    request = parse_pod_request(decode_pod(pod))
    assert request is not None
    assert (request.cores, request.gpu_count, request.memory, request.topology) == (
        example.cores, example.gpus, example.memory, example.topology)
    # the webhook admits it and hands it to fracgpu-scheduler
    decision = review({"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                       "resource": {"group": "", "version": "v1", "resource": "pods"},
                       "operation": "CREATE", "object": pod})
    assert decision.allowed and decision.message == ""
    assert {"op": "add", "path": "/spec/schedulerName", "value": names.SCHEDULER_NAME} in decision.patch


def test_the_tenant_quota_example_selects_its_namespace_with_the_limits_it_says() -> None:
    namespace, quota = docs(EXAMPLES / "tenant-quota.yaml")
    for version in VERSIONS:
        kubernetes_validate.validate(namespace, version, strict=True)
    VALIDATOR.validate(quota)  # the CRD's schema, closed as the API server's strict field validation
    tq = TenantQuota.from_dict(quota)
    tenants = Tenants([NamespaceInfo(namespace["metadata"]["name"], namespace["metadata"]["labels"]),
                       NamespaceInfo("default")], [tq])
    tenant = tenants.tenant_of("team-a")
    assert tenant == f"{names.TENANT_TQ_PREFIX}team-a"
    assert tenants.tenant_of("default") == f"{names.TENANT_NS_PREFIX}default"
    limits = tenants.limits(tenant)
    assert isinstance(limits, Limits)
    assert (limits.memory, limits.cores) == (160 * GI, 400)


def test_the_docs_apply_every_example() -> None:
    text = "\n".join(p.read_text() for p in DOCS)
    applied = set(re.findall(r"kubectl apply (?:-n \S+ )?-f (examples/pods/[\w.-]+\.yaml)", text))
    assert applied == {f"examples/pods/{p.name}" for p in EXAMPLES.glob("*.yaml")}

"""A pod's GPU request: Kubernetes' effective-request rule, validation and user annotations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from fracgpu.core.pod import decode_pod
from fracgpu.core.request import GpuRequest, ModelRule, RequestError, effective, parse_pod_request

GI = 1024**3


def container(name: str, cores: str | None = None, memory: str | None = None, **extra: Any) -> dict[str, Any]:
    req: dict[str, str] = {}
    if cores is not None:
        req["fracgpu.io/vgpu-core"] = cores
    if memory is not None:
        req["fracgpu.io/vgpu-memory"] = memory
    return {"name": name, "resources": {"requests": req, "limits": dict(req)}, **extra}


def pod(*containers: dict[str, Any], init: tuple[dict[str, Any], ...] = (), annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "annotations": annotations or {}, "labels": labels or {}},
        "spec": {"containers": list(containers), "initContainers": list(init)},
    }


@dataclass(frozen=True)
class Case:
    name: str
    pod: dict[str, Any]
    cores: int
    memory: int | None = None
    gpus: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("one container, a share", pod(container("c", "50", "8Gi")), 50, 8 * GI),
    Case("two app containers add up", pod(container("a", "30"), container("b", "20")), 50),
    Case("whole GPUs", pod(container("c", "200")), 200, gpus=2),
    # init 80 runs alone before the apps (20 + 10 = 30): the pod needs max(80, 30) = 80
    Case("an init container larger than the apps", pod(container("a", "20"), container("b", "10"),
                                                       init=(container("i", "80"),)), 80),
    # a sidecar (restartPolicy Always) runs beside the app: 10 + 30 = 40, and beside the later init 50 + 10 = 60
    Case("a sidecar adds to the apps and to later inits",
         pod(container("a", "30"), init=(container("s", "10", restartPolicy="Always"), container("i", "50"))), 60),
    Case("limits only: requests default to limits",
         {"metadata": {}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"fracgpu.io/vgpu-core": "25"}}}]}},
         25),
    Case("memory as plain bytes", pod(container("c", "10", "1073741824")), 10, GI),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_effective_request(case: Case) -> None:
    req = parse_pod_request(decode_pod(case.pod))
    assert req is not None
    assert (req.cores, req.memory, req.gpu_count) == (case.cores, case.memory, case.gpus)


@pytest.mark.parametrize(
    ("name", "the_pod", "message"),
    [
        ("150 is neither share nor whole", pod(container("c", "150")), "neither a share of one GPU"),
        ("negative cores", pod(container("c", "-5")), "must not be negative"),
        ("fractional cores", pod(container("c", "0.5")), "whole number"),
        ("not a number", pod(container("c", "lots")), "not a quantity"),
        ("memory without cores", pod(container("c", None, "8Gi")), "set without fracgpu.io/vgpu-core"),
        ("zero memory", pod(container("c", "10", "0")), "more than 0"),
        ("memory on one GPU container only", pod(container("a", "10", "1Gi"), container("b", "10")), "on every container"),
        ("two shares add to 120", pod(container("a", "60"), container("b", "60")), "neither a share"),
        ("absurd whole-GPU count", pod(container("c", "100000")), "more than 64 GPUs"),
        ("bad model glob", pod(container("c", "10"), annotations={"fracgpu.io/gpu-model": "A100,,"}), "gpu-model"),
        ("bad topology", pod(container("c", "200"), annotations={"fracgpu.io/topology": "nvlink"}), "topology"),
        ("bad zone policy", pod(container("c", "10"), annotations={"fracgpu.io/zone-policy": "near"}), "zone-policy"),
        ("request differs from limit",
         {"spec": {"containers": [{"name": "c", "resources": {"requests": {"fracgpu.io/vgpu-core": "10"},
                                                               "limits": {"fracgpu.io/vgpu-core": "20"}}}]}},
         "differs from its limit"),
        ("spec is not an object", {"spec": []}, "spec and metadata"),
        ("containers not a list", {"spec": {"containers": {}}}, "must be a list"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(name: str, the_pod: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_pod_request(decode_pod(the_pod))


def test_pod_without_vgpu_core_is_not_ours() -> None:
    assert parse_pod_request(decode_pod(pod({"name": "c", "resources": {"requests": {"cpu": "1"}}}))) is None


@pytest.mark.parametrize(
    ("rule", "model", "admits"),
    [("A100*,H100*", "A100-SXM4-80GB", True), ("A100*,H100*", "T4", False), ("!T4", "T4", False),
     ("!T4", "L4", True), ("A100*,!A100-PCIE*", "A100-PCIE-40GB", False)],
)
def test_model_rules(rule: str, model: str, admits: bool) -> None:
    assert ModelRule.parse(rule).admits(model) is admits


def test_default_memory_is_the_core_share_of_the_chosen_gpu() -> None:
    assert GpuRequest(cores=50, memory=None).memory_on(80 * GI) == 40 * GI
    assert GpuRequest(cores=200, memory=None).memory_on(80 * GI) == 80 * GI
    assert GpuRequest(cores=50, memory=8 * GI).memory_on(80 * GI) == 8 * GI


def test_effective_rule_matches_upstream_examples() -> None:
    # upstream's example: init 1, sidecar 2, init 3 (+2 = 5) and apps 4 (+2 = 6): max(5, 6) = 6
    assert effective([("init", 1), ("sidecar", 2), ("init", 3)], [4]) == 6
    assert effective([], [1, 2]) == 3
    assert effective([("init", 9)], [1]) == 9

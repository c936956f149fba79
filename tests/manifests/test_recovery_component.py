"""The optional component manifests/recovery (issue 14, least privilege): the controller may create
Jobs only when recovery Jobs are configured, and only in a namespace of their own at Pod Security
baseline — never in fracgpu-system, which is privileged for the device plugin's host mounts.

The component is rendered as an operator's overlay would use it (`resources: [manifests]`,
`components: [manifests/recovery]`) with `kubectl kustomize`; the controller's own Job code then runs
against the fake API server and every request is checked against the RBAC of each render.
"""

from __future__ import annotations

import functools
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from fracgpu.api.v1beta1 import names
from fracgpu.controller import main as cmain
from fracgpu.controller import recovery
from fracgpu.controller.writer import ControllerWriter
from fracgpu.kube.client import Transport
from fracgpu.kube.reflector import Reflector, WatchEvent
from fracgpu.kube.resources import JOBS
from fracgpu.kube.writer import KubeWriter
from tests.fakes.apiserver import FakeApiServer
from tests.manifests.cel import Request
from tests.manifests.rbac import Access, authorized, granted
from tests.manifests.render import Obj, kubectl_kustomize_with, rendered
from tests.manifests.test_policies import denials_of
from tests.manifests.test_schemas import VERSIONS

CONTROLLER = "fracgpu-controller"
RECOVERY_NS = names.DEFAULT_RECOVERY_NAMESPACE


@functools.cache
def _with_recovery() -> tuple[Obj, ...] | None:
    objs = kubectl_kustomize_with("recovery")
    return None if objs is None else tuple(objs)


def with_recovery() -> list[Obj]:
    objs = _with_recovery()
    if objs is None:
        pytest.skip("kubectl is not installed (components need kustomize)")
    return list(objs)


def find_in(objs: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def added(objs: list[Obj]) -> list[Obj]:
    base = {(o["kind"], o["metadata"]["name"]) for o in rendered()}
    return [o for o in objs if (o["kind"], o["metadata"]["name"]) not in base]


def controller_env(objs: list[Obj]) -> dict[str, str]:
    (c,) = find_in(objs, "Deployment", CONTROLLER)["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def job_template(objs: list[Obj]) -> dict[str, object]:
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("fracgpu-recovery-job")]
    return recovery.validate_template(yaml.safe_load(cm["data"]["job.yaml"]))


@pytest.mark.parametrize("version", VERSIONS)
def test_the_component_s_objects_validate(version: str) -> None:
    new = added(with_recovery())
    assert sorted(o["kind"] for o in new) == ["ConfigMap", "Namespace", "Role", "RoleBinding"]
    for obj in new:
        kubernetes_validate.validate(obj, version, strict=True)
    kubernetes_validate.validate(find_in(with_recovery(), "Deployment", CONTROLLER), version, strict=True)


def test_jobs_run_in_a_baseline_namespace_the_controller_is_pointed_at() -> None:
    objs = with_recovery()
    env = controller_env(objs)
    assert env["FRACGPU_RECOVERY_NAMESPACE"] == RECOVERY_NS != names.DEFAULT_NAMESPACE
    labels = find_in(objs, "Namespace", RECOVERY_NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
    # the controller accepts what the component configures, and reads the mounted template
    (c,) = find_in(objs, "Deployment", CONTROLLER)["spec"]["template"]["spec"]["containers"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "recovery-job")
    assert env["FRACGPU_RECOVERY_JOB"] == f"{mount['mountPath']}/job.yaml"
    assert find_in(rendered(), "Namespace", names.DEFAULT_NAMESPACE)["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"] == "privileged"  # which is why the Jobs go elsewhere


def test_the_example_job_s_pod_passes_the_gpu_access_policy() -> None:
    """The Job the controller builds from the shipped template, pinned to a GPU node: no privilege,
    no host path, no GPU env (fracgpu-recovery is not exempt from fracgpu-gpu-access)."""
    job = recovery.build_job(job_template(with_recovery()), "gpu-1", RECOVERY_NS, names.TAINT_GPU_FAILED)
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": job["spec"]["template"]["spec"],
           "metadata": {"name": "fracgpu-recover-gpu-1-abcde", "namespace": RECOVERY_NS}}
    assert denials_of(Request("system:serviceaccount:kube-system:job-controller", "CREATE", "pods", pod)) == {}
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged")


def test_the_controller_accepts_the_component_s_settings(tmp_path: Path) -> None:
    objs = with_recovery()
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("fracgpu-recovery-job")]
    job = tmp_path / "job.yaml"  # where the pod has the ConfigMap mounted
    job.write_text(cm["data"]["job.yaml"])
    cfg = cmain.parse_options([], controller_env(objs) | {"FRACGPU_RECOVERY_JOB": str(job)}).cfg
    assert cfg.recovery_job is not None and cfg.recovery_namespace == RECOVERY_NS


def test_job_rights_come_only_with_the_component_and_only_in_its_namespace(apiserver: FakeApiServer) -> None:
    """The controller's recovery code on the fake API server: every request allowed with the component,
    refused without it, and never valid in fracgpu-system."""
    objs = with_recovery()
    apiserver.clear_requests()
    writer = KubeWriter(Transport(apiserver.api_client()), component=CONTROLLER)
    reader = Transport(apiserver.api_client())

    def ignore(_: WatchEvent) -> None:
        return None

    jobs = Reflector(reader, JOBS, ignore, namespace=RECOVERY_NS, label_selector=names.LABEL_RECOVERY_NODE)
    jobs.start()
    try:
        assert jobs.wait_synced(10)
    finally:
        jobs.stop()
    body = recovery.build_job(job_template(objs), "gpu-1", RECOVERY_NS, names.TAINT_GPU_FAILED)
    ControllerWriter(writer).create_job(RECOVERY_NS, body)
    accesses = [Access(r.verb, r.group, r.resource, r.subresource, r.namespace, r.name) for r in apiserver.requests]
    assert {(a.verb, a.resource, a.namespace) for a in accesses} >= {
        ("list", "jobs", RECOVERY_NS), ("watch", "jobs", RECOVERY_NS), ("create", "jobs", RECOVERY_NS)}
    assert all(authorized(CONTROLLER, a, objs) for a in accesses)
    assert not any(authorized(CONTROLLER, a) for a in accesses)  # the base grants no Job right at all
    assert not authorized(CONTROLLER, Access("create", "batch", "jobs", namespace=names.DEFAULT_NAMESPACE), objs)
    # every Job rule of the component is one the code uses
    assert {g for g in granted(CONTROLLER, objs) if g[0] == "batch"} == {
        ("batch", "jobs", "list"), ("batch", "jobs", "watch"), ("batch", "jobs", "create")}

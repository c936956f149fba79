"""Optional recovery Jobs: the template, the decision, and the Job on the fake API server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fracgpu.api.v1beta1.names import (
    ANN_RECOVERY_NODE,
    DEFAULT_RECOVERY_NAMESPACE,
    LABEL_RECOVERY_NODE,
    TAINT_GPU_FAILED,
)
from fracgpu.controller import main as cmain
from fracgpu.controller import reconcile as r
from fracgpu.controller import recovery
from fracgpu.controller.reconcile import RoundState, plan
from fracgpu.controller.views import NodeView, World
from fracgpu.startup import ConfigError
from tests.controller.clock import FakeClock
from tests.controller.conftest import CFG, NS, MakeReplica, inventory, with_cfg
from tests.controller.test_reconcile import inv
from tests.controller.test_self_heal import event_reasons, renew, set_inventory
from tests.fakes.apiserver import FakeApiServer, ResourceType

TEMPLATE: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"labels": {"team": "infra"}},
    "spec": {
        "backoffLimit": 0,
        "template": {
            "spec": {
                "containers": [
                    {"name": "reset", "image": "example.com/gpu-reset:1", "env": [{"name": "X", "value": "1"}]}
                ],
                "tolerations": [{"key": "other", "operator": "Exists"}],
            }
        },
    },
}
JOBS = ResourceType("batch", "v1", "jobs", "Job", namespaced=True, status_subresource=True)
RECOVERY_NS = DEFAULT_RECOVERY_NAMESPACE


def test_build_job_pins_the_node_and_tolerates_the_taint() -> None:
    job = recovery.build_job(recovery.validate_template(TEMPLATE), "gpu-node-7", NS, TAINT_GPU_FAILED)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeName"] == "gpu-node-7" and pod["restartPolicy"] == "Never"
    assert pod["tolerations"] == [
        {"key": "other", "operator": "Exists"},
        {"key": TAINT_GPU_FAILED, "operator": "Exists"},
    ]
    assert pod["containers"][0]["env"] == [{"name": "X", "value": "1"}, {"name": "FRACGPU_NODE", "value": "gpu-node-7"}]
    meta = job["metadata"]
    assert meta["namespace"] == NS and meta["generateName"] == "fracgpu-recover-gpu-node-7-"
    assert meta["labels"] == {"team": "infra", LABEL_RECOVERY_NODE: "gpu-node-7"}
    assert recovery.job_state(job) == ("gpu-node-7", True)
    assert TEMPLATE["spec"]["template"]["spec"].get("nodeName") is None  # the template is not touched


def test_long_node_names_are_hashed_in_the_label() -> None:
    node = "a" * 70 + ".example.com"
    job = recovery.build_job(TEMPLATE, node, NS, TAINT_GPU_FAILED)
    assert len(job["metadata"]["labels"][LABEL_RECOVERY_NODE]) <= 63
    assert job["metadata"]["annotations"][ANN_RECOVERY_NODE] == node


@pytest.mark.parametrize(
    ("status", "running"),
    [({}, True), ({"conditions": [{"type": "Complete", "status": "True"}]}, False),
     ({"conditions": [{"type": "Failed", "status": "True"}]}, False)],
)  # fmt: skip
def test_job_state(status: dict[str, Any], running: bool) -> None:
    job = {**recovery.build_job(TEMPLATE, "n1", NS, TAINT_GPU_FAILED), "status": status}
    assert recovery.job_state(job) == ("n1", running)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"kind": "Pod"}, "expected kind Job"),
        ({"kind": "Job", "spec": {"template": {"spec": {"containers": []}}}}, "at least one container"),
        ({"kind": "Job", "spec": {"template": {"spec": {"containers": [{}], "nodeName": "x"}}}}, "pins the node"),
        ([1, 2], "expected a Job object"),
    ],
)
def test_bad_templates(template: Any, message: str) -> None:
    with pytest.raises(recovery.TemplateError, match=message):
        recovery.validate_template(template)


def test_template_file_flag(tmp_path: Path) -> None:
    good = tmp_path / "job.yaml"
    good.write_text("apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers: [{name: r}]\n")
    assert cmain.parse_options(["--recovery-job", str(good)], {}).cfg.recovery_job is not None
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Deployment\n")
    with pytest.raises(ConfigError, match="expected kind Job"):
        cmain.parse_options(["--recovery-job", str(bad)], {})
    with pytest.raises(ConfigError, match="cannot read"):
        cmain.parse_options(["--recovery-job", str(tmp_path / "missing.yaml")], {})


@pytest.mark.parametrize(("argv", "environ"), [
    (["--recovery-namespace", NS], {}),
    ([], {"FRACGPU_RECOVERY_NAMESPACE": NS}),
    (["--namespace", "gpu-ops", "--recovery-namespace", "gpu-ops"], {}),
    (["--recovery-namespace", ""], {}),
])
def test_recovery_jobs_never_run_in_fracgpu_s_privileged_namespace(
    tmp_path: Path, argv: list[str], environ: dict[str, str]
) -> None:
    """fracgpu's namespace is Pod Security privileged: a Job there could start a privileged pod on any node."""
    job = tmp_path / "job.yaml"
    job.write_text("apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers: [{name: r}]\n")
    with pytest.raises(ConfigError, match="cannot hold recovery Jobs; give a namespace of their own"):
        cmain.parse_options(["--recovery-job", str(job), *argv], environ)
    # without a recovery Job the setting is unused, so nothing to refuse
    assert cmain.parse_options(argv, environ).cfg.recovery_job is None
    assert cmain.parse_options(["--recovery-job", str(job)], {}).cfg.recovery_namespace == RECOVERY_NS


# --- the decision ---------------------------------------------------------------------------------

RCFG = replace(CFG, recovery_job=TEMPLATE, recovery_after=100.0, recovery_cooldown=1000.0)


def rounds(times: list[float], jobs: dict[str, bool] | None = None, created: bool = True) -> list[float]:
    """A broken node observed at ``times``; when a recovery Job is asked for (each attempt recorded)."""
    node = NodeView("n1", inv("x", "x"), tainted=True)
    state, asked = RoundState(), []
    for t in times:
        p = plan(World({"n1": node}, (), {"n1": f"beat {t}"}, jobs or {}), state, RCFG, t)
        state = p.state
        for action in p.recoveries:
            asked.append(t)
            state, _ = r.after_recovery(state, action, created, "boom", RCFG, t)
    return asked


def test_recovery_waits_for_the_node_to_stay_broken_then_the_cooldown() -> None:
    assert rounds([0, 50, 99, 100, 101, 500, 1099, 1100, 1200]) == [100, 1100]


def test_no_recovery_while_a_job_runs() -> None:
    assert rounds([0, 100, 5000], jobs={"n1": True}) == []
    assert rounds([0, 100], jobs={"n1": False}) == [100]  # a finished Job does not block


def test_failed_create_retried_after_the_backoff_cap() -> None:
    # eviction_backoff_max (300 s) after a failed create, not the whole cooldown
    assert rounds([0, 100, 399, 400], created=False) == [100, 400]


def test_healthy_node_resets_the_broken_timer() -> None:
    broken, fine = NodeView("n1", inv("x"), tainted=True), NodeView("n1", inv(True), tainted=True)
    state = RoundState()
    for t, node in ((0.0, broken), (90.0, fine), (100.0, broken), (150.0, broken)):
        p = plan(World({"n1": node}, (), {"n1": str(t)}), state, RCFG, t)
        state = p.state
        assert p.recoveries == (), t


def test_no_template_no_recovery() -> None:
    node = NodeView("n1", inv("x"), tainted=True)
    p = plan(World({"n1": node}, (), {"n1": "b"}), RoundState(broken_since={"n1": 0.0}), CFG, 10_000.0)
    assert p.recoveries == ()


# --- on the fake API server -------------------------------------------------------------------


def test_recovery_job_created_once_on_the_broken_node(
    one_node_two_gpus: FakeApiServer, make_replica: MakeReplica, clock: FakeClock
) -> None:
    server = one_node_two_gpus
    server.add_resource(JOBS)
    ctl = make_replica(cfg=with_cfg(recovery_job=TEMPLATE, recovery_after=30.0, recovery_cooldown=600.0))
    set_inventory(server, "n1", inventory("xid 79", "xid 79"))
    for _ in range(5):  # t = 0 .. 40 s
        ctl.round()
        clock.advance(10.0)
        renew(server, "n1", clock)
        renew(server, "n2", clock)
    assert server.list_objects("jobs", NS) == []  # never in fracgpu's (privileged) namespace
    jobs = server.list_objects("jobs", RECOVERY_NS)
    assert len(jobs) == 1
    pod = jobs[0]["spec"]["template"]["spec"]
    assert pod["nodeName"] == "n1"
    assert {"key": TAINT_GPU_FAILED, "operator": "Exists"} in pod["tolerations"]
    assert r.EV_RECOVERY_STARTED in event_reasons(server, "n1")
    assert ctl.metric("fracgpu_controller_recovery_jobs_total", result="created") == 1
    # the Job finishes but the node stays broken: nothing more until the cooldown (600 s)
    server.patch_object("jobs", jobs[0]["metadata"]["name"], {"status": {"conditions": [
        {"type": "Complete", "status": "True"}]}}, RECOVERY_NS)  # fmt: skip
    for _ in range(3):
        clock.advance(100.0)
        renew(server, "n1", clock)
        ctl.round()
    assert len(server.list_objects("jobs", RECOVERY_NS)) == 1
    clock.advance(300.0)
    ctl.round()
    assert len(server.list_objects("jobs", RECOVERY_NS)) == 2

"""`fracgpu inspect` and `fracgpu simulate --snapshot FILE --pending` on a small snapshot file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.inventory import GpuInfo, NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_INVENTORY, ANN_NS_CORE_QUOTA, LABEL_ENABLED
from fracgpu.cli import main as cli_main

GI = 1024**3


def node(name: str, gpus: int, enabled: bool = True) -> dict[str, Any]:
    inv = NodeInventoryDoc(gpus=tuple(GpuInfo(f"{name}-g{i}", i, "T4", 16 * GI, 0) for i in range(gpus))).to_json()
    labels = {LABEL_ENABLED: "true"} if enabled else {}
    return {"kind": "Node", "metadata": {"name": name, "labels": labels, "annotations": {ANN_INVENTORY: inv}},
            "status": {"allocatable": {"cpu": "16", "memory": "64Gi"}}}


def pod(name: str, cores: int, node_name: str = "", assigned: Assignment | None = None) -> dict[str, Any]:
    ann = {ANN_ASSIGNED: assigned.to_json()} if assigned else {}
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"limits": {"fracgpu.io/vgpu-core": str(cores)}}}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "team", "annotations": ann,
                                         "creationTimestamp": f"2026-01-01T00:00:0{len(name)}Z"},
            "spec": spec, "status": {"phase": "Running" if node_name else "Pending"}}


@pytest.fixture
def snapshot_two_nodes(tmp_path: Path) -> Path:
    """a: 2 T4s, GPU 0 has 60 cores of team/run; b: 1 T4 but not opted in. Pending: team/p40 (40 cores)
    and team/big (300 cores = 3 whole GPUs, more than any node has). Namespace team: quota 200 cores."""
    share = GpuShare("a-g0", 60, 16 * GI * 60 // 100, tuple(f"a-g0::{k}" for k in range(60)))
    a = Assignment(node="a", tenant="ns/team", assigned_at="2026-01-01T00:00:00Z", gpus=(share,),
                   containers=(ContainerShare("c", "app", share.device_ids),))
    items = [node("a", 2), node("b", 1, enabled=False),
             {"kind": "Namespace", "metadata": {"name": "team", "annotations": {ANN_NS_CORE_QUOTA: "200"}}},
             pod("run", 60, "a", a), pod("p40", 40), pod("big", 300)]
    path = tmp_path / "snap.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    return path


def test_inspect_table_and_json(snapshot_two_nodes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["inspect", "--snapshot", str(snapshot_two_nodes)]) == 0
    out = capsys.readouterr().out
    assert "  60/100 " in out and "team/run" in out
    assert "b: node is not opted in" in out
    assert cli_main(["inspect", "--snapshot", str(snapshot_two_nodes), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    gpu0 = doc["nodes"][0]["gpus"][0]
    assert (gpu0["cores_allocated"], gpu0["memory_allocated"], gpu0["pods"]) == (60, 16 * GI * 60 // 100, ["team/run"])
    # neither pending pod waits for quota: p40 fits it (and node a), big fits no node (it waits for
    # capacity first, as in the extender, which checks the quota with the VRAM of the node it picks)
    assert doc["tenants"] == [{"tenant": "ns/team", "used": {"vgpu-core": 60, "vgpu-memory": 16 * GI * 60 // 100},
                               "hard": {"vgpu-core": 200, "vgpu-memory": None}, "pending": 0, "queue": []}]


def test_pending_whatif(snapshot_two_nodes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["simulate", "--snapshot", str(snapshot_two_nodes), "--pending", "-o", "json"]) == 0
    result = {r["pod"]: r for r in json.loads(capsys.readouterr().out)["pending"]}
    assert result["team/p40"]["fits"] and result["team/p40"]["node"] == "a"
    assert not result["team/big"]["fits"]
    assert result["team/big"]["reason"] == ("0/2 nodes are available: 1 fewer than 3 whole free GPUs, "
                                            "1 node is not opted in to fracgpu (label fracgpu.io/enabled=true)")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect"], "give --snapshot FILE"),
        (["inspect", "--snapshot", "/no/such.yaml"], "snapshot /no/such.yaml"),
        (["simulate", "--pending"], "--pending needs --snapshot FILE"),
    ],
)
def test_snapshot_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_idle_tenants_with_a_quota_of_their_own_are_listed(snapshot_two_nodes: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load(snapshot_two_nodes.read_text())
    doc["items"] += [
        {"kind": "Namespace", "metadata": {"name": "quiet", "annotations": {"fracgpu.io/vgpu-memory-quota": "8Gi"}}},
        {"kind": "Namespace", "metadata": {"name": "plain"}},  # no quota of its own: not listed while idle
        {"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota", "metadata": {"name": "idle"},
         "spec": {"namespaceSelector": {"matchLabels": {"fracgpu.io/team": "none"}},
                  "hard": {"fracgpu.io/vgpu-core": "300"}}},
    ]
    snapshot_two_nodes.write_text(yaml.safe_dump(doc))
    assert cli_main(["inspect", "--snapshot", str(snapshot_two_nodes), "-o", "json"]) == 0
    tenants = {t["tenant"]: t for t in json.loads(capsys.readouterr().out)["tenants"]}
    assert sorted(tenants) == ["ns/quiet", "ns/team", "tq/idle"]
    assert tenants["tq/idle"]["hard"] == {"vgpu-core": 300, "vgpu-memory": None}
    assert tenants["ns/quiet"]["used"] == {"vgpu-core": 0, "vgpu-memory": 0}
    assert tenants["ns/quiet"]["hard"]["vgpu-memory"] == 8 * GI


def test_pending_whatif_refuses_over_quota_with_the_extenders_text(snapshot_two_nodes: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """With team's quota at 150 cores: run holds 60, p40 takes 40, so p100, which fits GPU 1 of a, is refused."""
    doc = yaml.safe_load(snapshot_two_nodes.read_text())
    (ns,) = [o for o in doc["items"] if o["kind"] == "Namespace"]
    ns["metadata"]["annotations"][ANN_NS_CORE_QUOTA] = "150"
    doc["items"].append(pod("p100", 100))  # created after p40 (creation time by name length), placed after it
    snapshot_two_nodes.write_text(yaml.safe_dump(doc))
    assert cli_main(["simulate", "--snapshot", str(snapshot_two_nodes), "--pending", "-o", "json"]) == 0
    result = {r["pod"]: r for r in json.loads(capsys.readouterr().out)["pending"]}
    assert result["team/p40"]["fits"]
    assert result["team/p100"] == {"pod": "team/p100", "fits": False,
                                   "reason": "tenant ns/team: vgpu-core 100 of 150 used, pod asks 100"}

"""`fracgpu inspect` against a live cluster (the fake API server, through a kubeconfig file)."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.api.v1beta1.inventory import GpuInfo, NodeInventoryDoc
from fracgpu.api.v1beta1.names import (
    ANN_ASSIGNED,
    ANN_INVENTORY,
    ANN_NS_CORE_QUOTA,
    DEFAULT_NAMESPACE,
    LABEL_ENABLED,
    LABEL_TENANT,
    lease_name,
)
from fracgpu.cli import main as cli_main
from fracgpu.inspect import main as inspect
from tests.fakes.apiserver import DEFAULT_RESOURCES, FakeApiServer

GI = 1024**3
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
Obj = dict[str, Any]


# ---- the world ------------------------------------------------------------------------------------
def node(name: str, model: str, gpus: int, memory_gi: int, *, enabled: bool = True) -> Obj:
    inv = NodeInventoryDoc(gpus=tuple(GpuInfo(f"{name}-g{i}", i, model, memory_gi * GI, 0)
                                      for i in range(gpus))).to_json()
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {LABEL_ENABLED: "true"} if enabled else {},
                         "annotations": {ANN_INVENTORY: inv}},
            "status": {"allocatable": {"cpu": "32", "memory": "128Gi"}}}


def cpu_node(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "8", "memory": "32Gi"}}}


def gpu_pod(ns: str, name: str, cores: int, *, on: tuple[str, str] | None = None, memory_gi: int | None = None,
            phase: str | None = None) -> Obj:
    """A pod asking for `cores` vgpu-core (and `memory_gi` VRAM); `on` = (node, gpu uuid) binds it there."""
    limits = {"fracgpu.io/vgpu-core": str(cores)}
    if memory_gi is not None:
        limits["fracgpu.io/vgpu-memory"] = f"{memory_gi}Gi"
    spec: Obj = {"containers": [{"name": "c", "resources": {"limits": limits}}]}
    annotations: dict[str, str] = {}
    if on is not None:
        spec["nodeName"] = on[0]
        ids = tuple(f"{on[1]}::{k}" for k in range(cores))
        share = GpuShare(on[1], cores, (memory_gi or 0) * GI, ids)
        annotations[ANN_ASSIGNED] = Assignment(node=on[0], tenant="", assigned_at="2026-03-01T11:00:00Z",
                                               gpus=(share,), containers=(ContainerShare("c", "app", ids),)).to_json()
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations,
                         "creationTimestamp": "2026-03-01T10:00:00Z"},
            "spec": spec, "status": {"phase": phase or ("Running" if on else "Pending")}}


def lease(node_name: str, renewed: datetime) -> Obj:
    stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(node_name), "namespace": DEFAULT_NAMESPACE},
            "spec": {"holderIdentity": node_name, "leaseDurationSeconds": 40, "renewTime": stamp}}


def world() -> list[Obj]:
    """gpu-a: 2x A100 80Gi, heartbeat 5 s old; GPU 0 holds team-a/train (50 cores, 40Gi) and team-a/infer
    (25, 10Gi), GPU 1 holds solo/job (100, 80Gi); team-a/old finished on GPU 1 (holds nothing).
    gpu-b: 1x T4, heartbeat 120 s old (stale). gpu-c: 1x T4, no heartbeat Lease. cpu-1: no GPUs, not shown,
    nor its pod. Tenants: TenantQuota team-a (400 cores, 64Gi) selects namespace team-a; namespace solo
    has a 100-core annotation quota; namespace free has none. Pending: team-a/waiting (30 cores, 20Gi:
    50 + 20 > 64Gi, it waits for quota), team-a/wide (100 cores, 8Gi: within quota, it waits for a node)
    and free/big (200 cores: no node has two free GPUs; an unlimited tenant never waits for quota)."""
    return [
        node("gpu-a", "A100-SXM4-80GB", 2, 80), node("gpu-b", "T4", 1, 16), node("gpu-c", "T4", 1, 16),
        cpu_node("cpu-1"),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {LABEL_TENANT: "team-a"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "solo", "annotations": {ANN_NS_CORE_QUOTA: "100"}}},
        {"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota", "metadata": {"name": "team-a"},
         "spec": {"namespaceSelector": {"matchLabels": {LABEL_TENANT: "team-a"}},
                  "hard": {"fracgpu.io/vgpu-memory": "64Gi", "fracgpu.io/vgpu-core": "400"}}},
        gpu_pod("team-a", "train", 50, on=("gpu-a", "gpu-a-g0"), memory_gi=40),
        gpu_pod("team-a", "infer", 25, on=("gpu-a", "gpu-a-g0"), memory_gi=10),
        gpu_pod("solo", "job", 100, on=("gpu-a", "gpu-a-g1"), memory_gi=80),
        gpu_pod("team-a", "old", 50, on=("gpu-a", "gpu-a-g1"), memory_gi=40, phase="Succeeded"),
        gpu_pod("team-a", "waiting", 30, memory_gi=20),
        gpu_pod("team-a", "wide", 100, memory_gi=8),
        gpu_pod("free", "big", 200),
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"nodeName": "cpu-1", "containers": [{"name": "c"}]}, "status": {"phase": "Running"}},
        lease("gpu-a", NOW - timedelta(seconds=5)), lease("gpu-b", NOW - timedelta(seconds=120)),
    ]


def gpu(index: int, uuid: str, model: str, cores: int, memory: int, total: int, pods: list[str]) -> Obj:
    return {"index": index, "uuid": uuid, "model": model, "cores_allocated": cores, "cores_total": 100,
            "memory_allocated": memory, "memory_total": total, "pods": pods, "healthy": True, "reason": ""}


EXPECTED_VIEW: Obj = {
    "nodes": [
        {"name": "gpu-a", "usable": True, "reason": "",
         "gpus": [gpu(0, "gpu-a-g0", "A100-SXM4-80GB", 75, 50 * GI, 80 * GI, ["team-a/infer", "team-a/train"]),
                  gpu(1, "gpu-a-g1", "A100-SXM4-80GB", 100, 80 * GI, 80 * GI, ["solo/job"])],
         "heartbeat": {"renewTime": "2026-03-01T11:59:55.000000Z", "age_s": 5.0}},
        {"name": "gpu-b", "usable": False, "reason": "device plugin heartbeat is stale",
         "gpus": [gpu(0, "gpu-b-g0", "T4", 0, 0, 16 * GI, [])],
         "heartbeat": {"renewTime": "2026-03-01T11:58:00.000000Z", "age_s": 120.0}},
        {"name": "gpu-c", "usable": False, "reason": "no device plugin heartbeat seen for this node",
         "gpus": [gpu(0, "gpu-c-g0", "T4", 0, 0, 16 * GI, [])], "heartbeat": None},
    ],
    "tenants": [
        {"tenant": "ns/solo", "used": {"vgpu-core": 100, "vgpu-memory": 80 * GI},
         "hard": {"vgpu-core": 100, "vgpu-memory": None}, "pending": 0, "queue": []},
        {"tenant": "tq/team-a", "used": {"vgpu-core": 75, "vgpu-memory": 50 * GI},
         "hard": {"vgpu-core": 400, "vgpu-memory": 64 * GI}, "pending": 1, "queue": ["team-a/waiting"]},
    ],
    "heartbeat_stale_s": 40.0,
}

EXPECTED_TABLE = """\
NODE                 GPU MODEL                CORES              VRAM HEALTH     PODS
gpu-a                  0 A100-SXM4-80GB     75/100      50Gi/80Gi     ok         team-a/infer, team-a/train
gpu-a                  1 A100-SXM4-80GB    100/100      80Gi/80Gi     ok         solo/job
gpu-b                  0 T4                  0/100         0/16Gi     ok*        -
gpu-c                  0 T4                  0/100         0/16Gi     ok*        -
* gpu-b: device plugin heartbeat is stale
* gpu-c: no device plugin heartbeat seen for this node

TENANT                   USED CORES   HARD  USED VRAM     HARD PENDING QUEUE
ns/solo                         100    100       80Gi        -       0 -
tq/team-a                        75    400       50Gi     64Gi       1 team-a/waiting

NODE                 HEARTBEAT (stale after 40s)
gpu-a                renewed 5s ago
gpu-b                renewed 120s ago (stale)
gpu-c                none
"""


def write_kubeconfig(path: Path, server: str, *, context: str = "fake") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


@pytest.fixture
def cluster_with_tenants(apiserver: FakeApiServer) -> FakeApiServer:
    apiserver.seed(*world())
    return apiserver


def run(argv: list[str], environ: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = inspect.main(argv, environ, clock=NOW.timestamp, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# ---- reading a live cluster -------------------------------------------------------------------------
def test_live_json_has_exact_shares_vram_tenants_and_heartbeats(cluster_with_tenants: FakeApiServer,
                                                                tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", cluster_with_tenants.url)
    code, out, err = run(["--kubeconfig", str(config), "-o", "json"], {"HOME": str(tmp_path)})
    assert (code, err) == (0, "")
    assert json.loads(out) == EXPECTED_VIEW


def test_live_table(cluster_with_tenants: FakeApiServer, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", cluster_with_tenants.url)
    code, out, err = run(["--kubeconfig", str(config)], {"HOME": str(tmp_path)})
    assert (code, err) == (0, "")
    assert out == EXPECTED_TABLE


@pytest.mark.parametrize("where", ["KUBECONFIG", "home", "flag+context"])
def test_kubeconfig_resolution(cluster_with_tenants: FakeApiServer, tmp_path: Path, where: str) -> None:
    """--kubeconfig (with --context), else $KUBECONFIG, else ~/.kube/config, as kubectl resolves it."""
    home = tmp_path / "home"
    argv = ["-o", "json"]
    environ = {"HOME": str(home)}
    if where == "KUBECONFIG":
        environ["KUBECONFIG"] = str(write_kubeconfig(tmp_path / "kc", cluster_with_tenants.url))
    elif where == "home":
        (home / ".kube").mkdir(parents=True)
        write_kubeconfig(home / ".kube" / "config", cluster_with_tenants.url)
    else:
        path = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:1", context="other")
        doc = yaml.safe_load(path.read_text())
        doc["clusters"].append({"name": "live", "cluster": {"server": cluster_with_tenants.url}})
        doc["contexts"].append({"name": "live", "context": {"cluster": "live", "user": "u"}})
        path.write_text(yaml.safe_dump(doc))
        environ["KUBECONFIG"] = str(tmp_path / "absent")  # the flag wins over the environment
        argv += ["--kubeconfig", str(path), "--context", "live"]
    code, out, err = run(argv, environ)
    assert (code, err) == (0, "")
    assert json.loads(out)["tenants"] == EXPECTED_VIEW["tenants"]


def test_reads_only_what_the_view_needs(cluster_with_tenants: FakeApiServer, tmp_path: Path) -> None:
    """Lists (no watch, no write) of nodes, unfinished pods, namespaces, tenantquotas, Leases in fracgpu's namespace."""
    config = write_kubeconfig(tmp_path / "config", cluster_with_tenants.url)
    cluster_with_tenants.clear_requests()
    assert run(["--kubeconfig", str(config)], {"HOME": str(tmp_path)})[0] == 0
    seen = {(r.verb, r.resource, r.namespace) for r in cluster_with_tenants.requests}
    assert seen == {("list", "nodes", ""), ("list", "pods", ""), ("list", "namespaces", ""),
                    ("list", "tenantquotas", ""), ("list", "leases", DEFAULT_NAMESPACE)}
    pods = [r for r in cluster_with_tenants.requests if r.resource == "pods"]
    assert all("status.phase%21%3DSucceeded" in r.query or "status.phase!=Succeeded" in r.query for r in pods)


def test_live_view_is_the_snapshot_view_of_the_same_objects(cluster_with_tenants: FakeApiServer,
                                                            tmp_path: Path) -> None:
    """One view: the live read and `kubectl get ... -o yaml > snap.yaml` of the same cluster agree."""
    config = write_kubeconfig(tmp_path / "config", cluster_with_tenants.url)
    code, live_out, _ = run(["--kubeconfig", str(config), "-o", "json", "--heartbeat-stale", "0"],
                            {"HOME": str(tmp_path)})
    snap = tmp_path / "snap.yaml"
    snap.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": world()}))
    assert code == 0
    file_code, file_out, _ = run(["--snapshot", str(snap), "-o", "json"], {})
    assert file_code == 0
    live, from_file = json.loads(live_out), json.loads(file_out)
    for n in live["nodes"]:
        if n["heartbeat"] is not None:
            n["heartbeat"]["age_s"] = None  # a file has no "now"
    assert live == from_file
    assert from_file["nodes"][1]["usable"]  # a snapshot's heartbeats are shown, not judged


def test_heartbeat_judgement_can_be_turned_off(cluster_with_tenants: FakeApiServer, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", cluster_with_tenants.url)
    code, out, _ = run(["--kubeconfig", str(config), "-o", "json", "--heartbeat-stale", "0"], {"HOME": str(tmp_path)})
    assert code == 0
    view = json.loads(out)
    assert [n["usable"] for n in view["nodes"]] == [True, True, True]
    assert view["heartbeat_stale_s"] is None


def test_without_the_tenantquota_crd_namespace_quotas_still_show(tmp_path: Path) -> None:
    no_crd = tuple(r for r in DEFAULT_RESOURCES if r.plural != "tenantquotas")
    with FakeApiServer(no_crd) as fake:
        fake.seed(*[o for o in world() if o["kind"] != "TenantQuota"])
        config = write_kubeconfig(tmp_path / "config", fake.url)
        code, out, err = run(["--kubeconfig", str(config), "-o", "json"], {"HOME": str(tmp_path)})
    assert (code, err) == (0, "")
    tenants = {t["tenant"]: t for t in json.loads(out)["tenants"]}
    assert tenants["ns/team-a"]["hard"] == {"vgpu-core": None, "vgpu-memory": None}
    assert tenants["ns/solo"]["hard"]["vgpu-core"] == 100


def test_cli_dispatches_to_the_live_path(cluster_with_tenants: FakeApiServer, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_kubeconfig(tmp_path / "config", cluster_with_tenants.url)
    assert cli_main(["inspect", "--kubeconfig", str(config), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["tenants"] == EXPECTED_VIEW["tenants"]


# ---- errors: clear, non-zero, no traceback ------------------------------------------------------------
@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port


def _kubeconfig_case(case: str, tmp_path: Path, port: int) -> tuple[list[str], dict[str, str]]:
    home = {"HOME": str(tmp_path)}
    good = write_kubeconfig(tmp_path / "good", f"http://127.0.0.1:{port}")
    if case == "not-yaml":
        bad = tmp_path / "bad"
        bad.write_text("clusters: [unclosed\n")
        return ["--kubeconfig", str(bad)], home
    if case == "not-a-kubeconfig":
        bad = tmp_path / "bad"
        bad.write_text("- a\n- b\n")
        return ["--kubeconfig", str(bad)], home
    if case == "missing-file":
        return ["--kubeconfig", str(tmp_path / "absent")], home
    if case == "unknown-context":
        return ["--kubeconfig", str(good), "--context", "nope"], home
    if case == "nothing":
        return [], home
    return ["--kubeconfig", str(good)], home  # "unreachable": a port nobody listens on


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("not-yaml", 2, "no usable cluster configuration"),
        ("not-a-kubeconfig", 2, "no usable cluster configuration"),
        ("missing-file", 2, "no usable cluster configuration"),
        ("unknown-context", 2, "nope"),
        ("nothing", 2, "give --snapshot FILE"),
        ("unreachable", 1, "cannot reach the API server http://127.0.0.1:"),
    ],
)
def test_bad_kubeconfig_or_unreachable_server(case: str, code: int, message: str, tmp_path: Path,
                                              closed_port: int) -> None:
    argv, environ = _kubeconfig_case(case, tmp_path, closed_port)
    got, out, err = run(argv, environ)
    assert (got, out) == (code, "")
    assert message in err
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 2


def test_refused_list_is_a_clear_error(cluster_with_tenants: FakeApiServer, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", cluster_with_tenants.url)
    cluster_with_tenants.fail_next("list", "pods", 403, message='pods is forbidden: User "u" cannot list')
    code, out, err = run(["--kubeconfig", str(config)], {"HOME": str(tmp_path)})
    assert (code, out) == (1, "")
    assert "refused a read" in err and "cannot list" in err and "Traceback" not in err


def test_cli_error_has_no_traceback(tmp_path: Path, closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_kubeconfig(tmp_path / "config", f"http://127.0.0.1:{closed_port}")
    assert cli_main(["inspect", "--kubeconfig", str(config)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("fracgpu inspect: cannot reach the API server")
    assert "Traceback" not in captured.err and "Retrying" not in captured.err


def test_a_live_dra_cluster_reads_as_its_snapshot(tmp_path: Path) -> None:
    """DRA nodes and pods (examples/dra/snapshot-claims.yaml: ResourceSlices, claims, templates) served by an API
    server: the live view equals the view of the same file, DRA nodes marked and not judged by a heartbeat
    Lease their driver does not write."""
    from tests.extender.draworld import DRA_RESOURCES

    example = Path(__file__).resolve().parents[2] / "examples" / "dra" / "snapshot-claims.yaml"
    items = yaml.safe_load(example.read_text())["items"]
    with FakeApiServer((*DEFAULT_RESOURCES, *DRA_RESOURCES)) as fake:
        fake.seed(*items)
        config = write_kubeconfig(tmp_path / "config", fake.url)
        code, live_out, err = run(["--kubeconfig", str(config), "-o", "json"], {"HOME": str(tmp_path)})
    assert (code, err) == (0, "")
    file_code, file_out, _ = run(["--snapshot", str(example), "-o", "json"], {})
    assert file_code == 0
    live, from_file = json.loads(live_out), json.loads(file_out)
    assert live["heartbeat_stale_s"] is not None  # a live cluster is judged ...
    assert all(n["source"] == "dra" and n["usable"] for n in live["nodes"])  # ... but DRA nodes need no Lease
    live["heartbeat_stale_s"] = from_file["heartbeat_stale_s"]
    assert live == from_file

"""The kubelet plugin over real unix sockets: registration, prepare/unprepare, CDI specs, checkpoint, restarts.

The kubelet is tests/draplugin/kubelet.py (pluginwatcher + DRA manager, the real protos); claims come from the
fake API server through the official client, shaped as kube-scheduler writes them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest

from fracgpu.api.v1beta1.names import DRA_CDI_KIND, DRA_DRIVER
from fracgpu.api.v1beta1.pluginregistration import api_pb2 as reg_pb2
from fracgpu.api.v1beta1.pluginregistration import api_pb2_grpc as reg_grpc
from fracgpu.core.draprepare import cdi_device_name
from fracgpu.core.shareenv import LimiterConfig
from fracgpu.deviceplugin.ledger import GpuLimit, Grant
from fracgpu.deviceplugin.response import container_response
from tests.draplugin.kubelet import FakeDraKubelet
from tests.draplugin.world import GI, NODE, DraWorld

DRIVER = DRA_DRIVER


def wait_unhealthy(world: DraWorld, index: int) -> None:
    """Until the health loop (its own thread, woken by the backend's event) has marked the GPU."""
    assert world.app is not None
    state = world.app.state
    deadline = time.monotonic() + 5
    while state.gpus()[index].healthy and time.monotonic() < deadline:
        state.wait_change(state.version, 0.1)
    assert not state.gpus()[index].healthy


def cdi_file(world: DraWorld, uid: str) -> Path:
    return Path(world.cdi_dir) / f"fracgpu-claim-{uid}.json"


def cdi_env(world: DraWorld, uid: str) -> dict[str, str]:
    spec = json.loads(cdi_file(world, uid).read_text())
    (device,) = spec["devices"]
    return dict(line.split("=", 1) for line in device["containerEdits"]["env"])


# -- registration ------------------------------------------------------------------------------------------


def test_registration_handshake_gives_the_kubelet_type_name_endpoint_and_services(node: DraWorld) -> None:
    info = node.kubelet.infos[-1]
    assert info.type == "DRAPlugin"
    assert info.name == DRIVER
    assert info.endpoint == os.path.join(node.plugin_dir, "dra.sock")
    assert list(info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    assert os.path.basename(node.kubelet.plugins[DRIVER].socket) == "gpu.fracgpu.io-reg.sock"
    assert node.kubelet.plugins[DRIVER].service == "v1.DRAPlugin"
    assert node.app is not None
    assert node.app.registration.status is not None and node.app.registration.status.registered


def test_sockets_are_for_root_only(node: DraWorld) -> None:
    for path in (os.path.join(node.plugin_dir, "dra.sock"), node.kubelet.plugins[DRIVER].socket):
        assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_kubelet_that_speaks_only_v1beta1_prepares_through_v1beta1(world: DraWorld) -> None:
    world.kubelet.stop()
    old = FakeDraKubelet(world.registry_dir, services=("v1beta1.DRAPlugin",))
    old.start()
    world.kubelet = old
    world.start_driver()
    assert old.wait_registered(DRIVER).service == "v1beta1.DRAPlugin"
    uid = world.claim("c1", [(0, 50, 40)])
    answer = old.prepare(DRIVER, [("default", "c1", uid)])
    assert answer.claims[uid].error == ""
    assert cdi_file(world, uid).exists()


def test_a_kubelet_without_a_common_service_refuses_and_the_driver_hears_why(world: DraWorld) -> None:
    world.kubelet.stop()
    future = FakeDraKubelet(world.registry_dir, services=("v2.DRAPlugin",))
    future.start()
    world.kubelet = future
    app = world.start_driver()
    assert future.wait_for(lambda: bool(future.refusals))
    assert future.wait_for(lambda: app.registration.status is not None)
    assert app.registration.status is not None
    assert not app.registration.status.registered
    assert "none of services supported by the plugin" in app.registration.status.error


def test_a_removed_registration_socket_is_served_again_and_the_kubelet_registers_anew(node: DraWorld) -> None:
    before = node.kubelet.registrations
    os.unlink(node.kubelet.plugins[DRIVER].socket)
    assert node.kubelet.wait_for(lambda: node.kubelet.registrations > before)
    with grpc.insecure_channel(f"unix://{node.kubelet.plugins[DRIVER].socket}") as ch:
        assert reg_grpc.RegistrationStub(ch).GetInfo(reg_pb2.InfoRequest(), timeout=2).name == DRIVER


def test_stop_removes_the_sockets_so_the_kubelet_deregisters(node: DraWorld) -> None:
    node.stop_driver()
    assert node.kubelet.wait_for(lambda: DRIVER not in node.kubelet.plugins)
    assert not os.path.exists(os.path.join(node.plugin_dir, "dra.sock"))


def test_a_second_driver_waits_for_the_lock_and_then_gives_up(node: DraWorld) -> None:
    with pytest.raises(RuntimeError, match="another fracgpu dra-driver holds"):
        node.start_driver()  # lock_timeout 1 s in the world's config


# -- prepare -----------------------------------------------------------------------------------------------


def test_prepare_writes_a_cdi_spec_with_the_device_plugins_env_and_returns_its_id(node: DraWorld) -> None:
    uid = node.claim("train", [(1, 50, 40)])
    answer = node.kubelet.prepare(DRIVER, [("default", "train", uid)])
    entry = answer.claims[uid]
    assert entry.error == ""
    (dev,) = entry.devices
    assert (list(dev.request_names), dev.pool_name, dev.device_name) == (["gpu"], NODE, node.device(1))
    assert list(dev.cdi_device_ids) == [f"{DRA_CDI_KIND}={cdi_device_name(uid, 'gpu')}"]
    spec = json.loads(cdi_file(node, uid).read_text())
    assert spec["cdiVersion"] == "0.3.0"
    assert spec["kind"] == DRA_CDI_KIND
    assert [d["name"] for d in spec["devices"]] == [cdi_device_name(uid, "gpu")]
    gpu = node.backend.inventory()[1]
    allocate = container_response(Grant(pod="default/p", uid="u", container="c", device_ids=(),
                                        limits=(GpuLimit(gpu, 50, 40 * GI),)))
    expected = {k: v for k, v in allocate.envs.items() if k not in ("FRACGPU_POD", "FRACGPU_CONTAINER")}
    assert cdi_env(node, uid) == {**expected, "FRACGPU_CLAIM": "default/train"}
    assert oct(os.stat(cdi_file(node, uid)).st_mode & 0o777) == "0o644"


def test_limiter_mounts_are_the_same_as_allocates(world: DraWorld) -> None:
    from dataclasses import replace

    from fracgpu.draplugin.driver import DriverConfig

    limiter = LimiterConfig(host_dir="/usr/local/vgpu-host", preload_file="/usr/local/vgpu-host/ld.so.preload")
    world.start_driver(driver=replace(DriverConfig(node=NODE), limiter=limiter))
    uid = world.claim("c", [(0, 25, 20)])
    assert world.kubelet.prepare(DRIVER, [("default", "c", uid)]).claims[uid].error == ""
    (device,) = json.loads(cdi_file(world, uid).read_text())["devices"]
    assert device["containerEdits"]["mounts"] == [
        {"hostPath": "/usr/local/vgpu-host", "containerPath": "/usr/local/vgpu", "options": ["ro", "nosuid", "nodev", "bind"]},
        {"hostPath": "/usr/local/vgpu-host/ld.so.preload", "containerPath": "/etc/ld.so.preload",
         "options": ["ro", "nosuid", "nodev", "bind"]}]
    env = cdi_env(world, uid)
    assert (env["CUDA_DEVICE_MEMORY_LIMIT_0"], env["CUDA_DEVICE_SM_LIMIT"]) == ("20480m", "25")


def test_a_whole_gpu_claim_without_consumed_capacity_gets_the_whole_gpu(node: DraWorld) -> None:
    uid = node.claim("whole", [(0, None, None), (1, None, None)])
    entry = node.kubelet.prepare(DRIVER, [("default", "whole", uid)]).claims[uid]
    assert entry.error == ""
    # one CDI device for the request, named on its first device only: naming it twice would inject it twice
    assert [list(d.cdi_device_ids) for d in entry.devices] == [[f"{DRA_CDI_KIND}={cdi_device_name(uid, 'gpu')}"], []]
    env = cdi_env(node, uid)
    inventory = node.backend.inventory()
    assert env["NVIDIA_VISIBLE_DEVICES"] == f"{inventory[0].uuid},{inventory[1].uuid}"
    assert (env["FRACGPU_CORE_PERCENT"], env["FRACGPU_VRAM_LIMIT"]) == ("100", str(80 * GI))


def test_prepare_is_idempotent(node: DraWorld) -> None:
    uid = node.claim("c", [(0, 30, 10)])
    first = node.kubelet.prepare(DRIVER, [("default", "c", uid)])
    second = node.kubelet.prepare(DRIVER, [("default", "c", uid), ("default", "c", uid)])
    assert first == second
    assert node.app is not None and len(node.app.driver.prepared()) == 1


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"allocated": False}, "claim default/c is not allocated"),
    ({"driver": "gpu.nvidia.com"}, "claim default/c has no device of driver gpu.fracgpu.io"),
    ({"pool": "other-node"}, "claim default/c is allocated devices of pool other-node, not of node gpu-node-1"),
], ids=["not-allocated", "other-driver", "other-node"])
def test_a_claim_not_for_this_driver_and_node_fails_alone_in_the_answer(node: DraWorld, kwargs: dict[str, object],
                                                                         reason: str) -> None:
    good = node.claim("ok", [(0, 10, 10)])
    bad = node.claim("c", [(1, 10, 10)], **kwargs)  # type: ignore[arg-type]
    answer = node.kubelet.prepare(DRIVER, [("default", "ok", good), ("default", "c", bad)])
    assert answer.claims[good].error == ""
    assert answer.claims[bad].error == reason
    assert list(answer.claims[bad].devices) == []
    assert not cdi_file(node, bad).exists()


def test_a_claim_the_api_server_does_not_have_or_has_replaced_fails_with_why(node: DraWorld) -> None:
    node.claim("c", [(0, 10, 10)], uid="11111111-1111-1111-1111-111111111111")
    answer = node.kubelet.prepare(DRIVER, [("default", "gone", "22222222-2222-2222-2222-222222222222"),
                                           ("default", "c", "33333333-3333-3333-3333-333333333333")])
    assert answer.claims["22222222-2222-2222-2222-222222222222"].error == "claim default/gone not found"
    assert answer.claims["33333333-3333-3333-3333-333333333333"].error == (
        "claim default/c was replaced: the kubelet asked for uid 33333333-3333-3333-3333-333333333333, the API "
        "server has 11111111-1111-1111-1111-111111111111")


def test_a_gpu_is_never_over_committed_by_claims_prepared_here(node: DraWorld) -> None:
    a = node.claim("a", [(0, 60, 40)])
    b = node.claim("b", [(0, 50, 10)])
    c = node.claim("c", [(0, 40, 50)])
    answer = node.kubelet.prepare(DRIVER, [("default", "a", a), ("default", "b", b), ("default", "c", c)])
    uuid = node.backend.inventory()[0].uuid
    assert answer.claims[a].error == ""
    assert answer.claims[b].error == (f"claim default/b needs 50 cores and 10Gi of GPU {uuid}, which has 40 cores "
                                      "and 40Gi free next to the claims already prepared on this node")
    assert answer.claims[c].error == (f"claim default/c needs 40 cores and 50Gi of GPU {uuid}, which has 40 cores "
                                      "and 40Gi free next to the claims already prepared on this node")


def test_an_unhealthy_gpu_is_not_prepared(node: DraWorld) -> None:
    uuid = node.backend.inventory()[2].uuid
    node.backend.set_unhealthy(uuid, "XID 79")
    assert node.app is not None
    wait_unhealthy(node, 2)
    uid = node.claim("c", [(2, 10, 10)])
    assert node.kubelet.prepare(DRIVER, [("default", "c", uid)]).claims[uid].error == (
        f"claim default/c: GPU {uuid} ({node.device(2)}) is unhealthy: XID 79")


# -- hostile input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("claim", "message"), [
    (("default", "c", ""), "namespace, uid and name are required"),
    (("", "c", "abc"), "namespace, uid and name are required"),
    (("default", "c", "../../etc/passwd"), "not a Kubernetes uid"),
    (("default", "c", "a" * 65), "not a Kubernetes uid"),
    (("Default", "c", "abc"), "is not a namespace and object name"),
    (("default", "c/../x", "abc"), "is not a namespace and object name"),
], ids=["no-uid", "no-namespace", "path-uid", "long-uid", "bad-namespace", "bad-name"])
def test_malformed_requests_are_invalid_argument(node: DraWorld, claim: tuple[str, str, str], message: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        node.kubelet.prepare(DRIVER, [claim])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(e.value.details())
    with pytest.raises(grpc.RpcError) as e:
        node.kubelet.unprepare(DRIVER, [claim])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(Path(node.dir).rglob("passwd")) == []


@pytest.mark.parametrize(("consumed", "reason"), [
    ({"cores": "0", "memory": "1Gi"}, "consumed cores 0 is not a whole number from 1 to 100"),
    ({"cores": "101", "memory": "1Gi"}, "consumed cores 101 is not a whole number from 1 to 100"),
    ({"cores": "1500m", "memory": "1Gi"}, "consumed cores 1500m is not a whole number from 1 to 100"),
    ({"cores": "10", "memory": "81Gi"}, "consumed memory 81Gi is not a whole number of bytes from 1 to the GPU's 80Gi"),
    ({"cores": "10", "memory": "lots"}, "consumed capacity: not a quantity: 'lots'"),
], ids=["zero-cores", "too-many-cores", "fraction", "memory-over", "garbage"])
def test_impossible_consumed_capacity_is_refused(node: DraWorld, consumed: dict[str, str], reason: str) -> None:
    node.apiserver.seed({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                         "metadata": {"name": "c", "namespace": "default", "uid": "44444444-aaaa"},
                         "status": {"allocation": {"devices": {"results": [
                             {"request": "gpu", "driver": DRIVER, "pool": NODE, "device": node.device(0),
                              "consumedCapacity": consumed}]}}}})
    error = node.kubelet.prepare(DRIVER, [("default", "c", "44444444-aaaa")]).claims["44444444-aaaa"].error
    assert error == f"claim default/c: device {node.device(0)}: {reason}"


def test_a_claim_the_api_server_sends_garbage_for_fails_alone(node: DraWorld) -> None:
    node.apiserver.seed({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                         "metadata": {"name": "c", "namespace": "default", "uid": "55555555-aaaa"},
                         "status": {"allocation": {"devices": {"results": "not-a-list"}}}})
    error = node.kubelet.prepare(DRIVER, [("default", "c", "55555555-aaaa")]).claims["55555555-aaaa"].error
    assert error.startswith("claim default/c: ResourceClaim default/c.status.allocation.devices.results: expected a list")


# -- unprepare, restart, checkpoint ------------------------------------------------------------------------


def test_unprepare_removes_the_cdi_spec_and_unknown_claims_are_fine(node: DraWorld) -> None:
    uid = node.claim("c", [(0, 10, 10)])
    node.kubelet.prepare(DRIVER, [("default", "c", uid)])
    answer = node.kubelet.unprepare(DRIVER, [("default", "c", uid), ("default", "never", "66666666-aaaa")])
    assert {k: v.error for k, v in answer.claims.items()} == {uid: "", "66666666-aaaa": ""}
    assert not cdi_file(node, uid).exists()
    assert node.app is not None and node.app.driver.prepared() == {}
    again = node.kubelet.unprepare(DRIVER, [("default", "c", uid)])
    assert again.claims[uid].error == ""


def test_a_restarted_driver_answers_from_its_checkpoint_and_counts_each_share_once(node: DraWorld) -> None:
    a = node.claim("a", [(0, 60, 40)])
    first = node.kubelet.prepare(DRIVER, [("default", "a", a)])
    node.apiserver.delete_object("resourceclaims", "a", "default")  # the answer must come from the checkpoint
    node.restart_driver()
    assert node.kubelet.prepare(DRIVER, [("default", "a", a)]) == first
    b = node.claim("b", [(0, 40, 40)])
    c = node.claim("c", [(0, 1, 1)])
    answer = node.kubelet.prepare(DRIVER, [("default", "b", b), ("default", "c", c)])
    assert answer.claims[b].error == ""  # 60 + 40: fits only if "a" is counted once
    assert "which has 0 cores and 0 free" in answer.claims[c].error


def test_a_cdi_spec_lost_with_a_reboot_is_written_again(node: DraWorld) -> None:
    uid = node.claim("c", [(0, 10, 10)])
    node.kubelet.prepare(DRIVER, [("default", "c", uid)])
    content = cdi_file(node, uid).read_text()
    cdi_file(node, uid).unlink()  # /var/run/cdi is a tmpfs
    node.apiserver.delete_object("resourceclaims", "c", "default")
    assert node.kubelet.prepare(DRIVER, [("default", "c", uid)]).claims[uid].error == ""
    assert cdi_file(node, uid).read_text() == content


def test_a_corrupt_checkpoint_is_moved_aside_and_unprepare_still_cleans_up(world: DraWorld) -> None:
    world.start_driver()
    uid = world.claim("c", [(0, 10, 10)])
    world.kubelet.prepare(DRIVER, [("default", "c", uid)])
    checkpoint = Path(world.plugin_dir) / "checkpoint.json"
    world.stop_driver()
    checkpoint.write_text(checkpoint.read_text().replace('"cores": 10', '"cores": 1'))  # checksum no longer matches
    world.restart_driver()
    assert world.app is not None and world.app.driver.prepared() == {}
    assert [p.name.startswith("checkpoint.json.corrupt-") for p in Path(world.plugin_dir).iterdir()].count(True) == 1
    assert world.kubelet.unprepare(DRIVER, [("default", "c", uid)]).claims[uid].error == ""
    assert not cdi_file(world, uid).exists()


def test_a_failed_checkpoint_write_fails_the_claim_and_leaves_no_spec(node: DraWorld) -> None:
    checkpoint = Path(node.plugin_dir) / "checkpoint.json"
    checkpoint.mkdir()  # rename over a directory fails, as a full or read-only disk would
    uid = node.claim("c", [(0, 10, 10)])
    error = node.kubelet.prepare(DRIVER, [("default", "c", uid)]).claims[uid].error
    assert error.startswith("claim default/c: saving the checkpoint failed:")
    assert not cdi_file(node, uid).exists()
    assert node.app is not None and node.app.driver.prepared() == {}


def test_an_api_server_that_fails_fails_only_the_claims_it_was_asked_for(node: DraWorld) -> None:
    done = node.claim("done", [(0, 10, 10)])
    node.kubelet.prepare(DRIVER, [("default", "done", done)])
    new = node.claim("new", [(1, 10, 10)])
    node.apiserver.fail_next("get", "resourceclaims", 503, message="etcd leader changed")
    answer = node.kubelet.prepare(DRIVER, [("default", "done", done), ("default", "new", new)])
    assert answer.claims[done].error == ""  # prepared before: answered from the checkpoint
    assert answer.claims[new].error.startswith("claim default/new: reading it failed: 503")
    assert node.kubelet.prepare(DRIVER, [("default", "new", new)]).claims[new].error == ""  # the kubelet retries

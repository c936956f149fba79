"""GetPreferredAllocation and Allocate as the kubelet calls them (DESIGN, flow step 5)."""

from __future__ import annotations

import grpc
import pytest

from fracgpu.api.v1beta1.names import ANN_PHASE, PHASE_ALLOCATED
from fracgpu.core.inventory import split_device_id
from fracgpu.deviceplugin.response import LimiterConfig
from tests.deviceplugin.kubelet import Container
from tests.deviceplugin.world import GiB, World, gpu_uuid


def gpus_of(ids: list[str]) -> set[str]:
    return {s[0] for s in map(split_device_id, ids) if s is not None}


def test_a_share_gets_its_reserved_ids_and_limits(node: World) -> None:
    node.add_pod("other", [Container("main", 30)], [1])
    reserved = node.add_pod("p", [Container("main", 50)], [1])
    want = sorted(node.assignment("p").device_ids)
    adm = node.admit("p")
    assert adm.error is None
    assert adm.preferred_calls[0][2] == want  # preferred = the reservation
    assert sorted(adm.devices["main"]) == want  # and the kubelet used it
    env = adm.responses["main"].envs
    assert env["NVIDIA_VISIBLE_DEVICES"] == gpu_uuid(1)
    assert env["FRACGPU_CORE_PERCENT"] == env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    assert env["FRACGPU_VRAM_LIMIT"] == str(40 * GiB)  # default: the core share of 80Gi
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=40960M"
    node.settle()
    assert node.annotations("p")[ANN_PHASE] == PHASE_ALLOCATED
    assert reserved["metadata"]["name"] == "p"


def test_an_explicit_vram_request_is_the_limit(node: World) -> None:
    node.add_pod("p", [Container("main", 10)], [0], memory=8 * GiB)
    adm = node.admit("p")
    assert adm.responses["main"].envs["FRACGPU_VRAM_LIMIT"] == str(8 * GiB)


def test_whole_gpus(node: World) -> None:
    node.add_pod("p", [Container("train", 200)], [2, 3])
    adm = node.admit("p")
    assert adm.error is None
    env = adm.responses["train"].envs
    assert env["NVIDIA_VISIBLE_DEVICES"] == f"{gpu_uuid(2)},{gpu_uuid(3)}"
    assert env["FRACGPU_CORE_PERCENT"] == "100"
    assert env["FRACGPU_VRAM_LIMIT"] == str(80 * GiB)
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=81920M,1=81920M"


def test_the_kubelet_choosing_other_ids_on_the_same_gpu_is_served_and_recorded(node: World) -> None:
    node.add_pod("p", [Container("main", 20)], [0])
    node.add_pod("q", [Container("main", 20)], [0])  # reserved ::20..::39 of GPU 0, not admitted yet
    q_ids = sorted(node.assignment("q").device_ids)

    def take_qs(offer: list[str], must: list[str], size: int, preferred: list[str]) -> list[str]:
        return q_ids  # topology alignment or whatever: the kubelet hands p the ids reserved for q

    adm = node.admit("p", chooser=take_qs)
    assert adm.error is None, adm.error
    node.settle()
    assert node.assignment("p").device_ids == frozenset(q_ids)  # p's reservation follows the kubelet
    q_now = node.assignment("q").device_ids
    assert not q_now & frozenset(q_ids) and len(q_now) == 20  # q got other free ids of the same GPU
    adm_q = node.admit("q")
    assert adm_q.error is None and sorted(adm_q.devices["main"]) == sorted(q_now)


def test_the_kubelet_choosing_another_gpu_with_room_moves_the_reservation(node: World) -> None:
    node.add_pod("p", [Container("main", 50)], [0])

    def gpu3(offer: list[str], must: list[str], size: int, preferred: list[str]) -> list[str]:
        return [i for i in offer if i.startswith(gpu_uuid(3))][:size]

    adm = node.admit("p", chooser=gpu3)
    assert adm.error is None, adm.error
    assert adm.responses["main"].envs["NVIDIA_VISIBLE_DEVICES"] == gpu_uuid(3)
    node.settle()
    a = node.assignment("p")
    assert [g.uuid for g in a.gpus] == [gpu_uuid(3)] and a.gpus[0].memory == 40 * GiB
    assert any(e.reason == "FracgpuReservationMoved" for e in node.cluster.events)
    assert node.metrics.registry.get_sample_value("fracgpu_deviceplugin_reservation_repairs_total",
                                               {"kind": "moved-at-allocate"}) == 1


def test_the_kubelet_choosing_a_gpu_without_room_is_refused_with_an_event(node: World) -> None:
    node.add_pod("big", [Container("main", 30)], [3], memory=70 * GiB)  # reserved, not admitted: 10Gi left
    node.add_pod("p", [Container("main", 50)], [0])

    def gpu3(offer: list[str], must: list[str], size: int, preferred: list[str]) -> list[str]:
        return [i for i in offer if i.startswith(gpu_uuid(3)) and i not in node.assignment("big").device_ids][:size]

    adm = node.admit("p", chooser=gpu3)
    assert adm.error is not None and adm.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unreserved" in (adm.error.details() or "")
    node.settle()
    assert node.annotations("p")[ANN_PHASE].startswith("failed: ")
    assert [e.name for e in node.cluster.events if e.reason == "FracgpuAllocateRefused"] == ["p"]


def test_init_container_and_two_app_containers(node: World) -> None:
    # effective request: max(init 30, 20 + 20) = 40 on GPU 1
    containers = [Container("setup", 30, "init"), Container("a", 20), Container("b", 20)]
    node.add_pod("p", containers, [1])
    reserved = node.assignment("p").device_ids
    adm = node.admit("p")
    assert adm.error is None, adm.error
    assert set(adm.devices["setup"]) | set(adm.devices["a"]) | set(adm.devices["b"]) == reserved
    assert not set(adm.devices["a"]) & set(adm.devices["b"])
    # "a" came wholly from the init pool (no preferred call); "b" asked for its shortfall with must_include
    sizes = [(size, len(must)) for size, must, _ in adm.preferred_calls]
    assert sizes == [(30, 0), (20, 10)]
    assert adm.responses["b"].envs["FRACGPU_CORE_PERCENT"] == "20"
    assert adm.responses["b"].envs["FRACGPU_VRAM_LIMIT"] == str(16 * GiB)  # 20/40 of the pod's 32Gi
    node.settle()
    assert node.annotations("p")[ANN_PHASE] == PHASE_ALLOCATED


def test_a_sidecar_keeps_its_ids(node: World) -> None:
    containers = [Container("proxy", 10, "sidecar"), Container("app", 30)]
    node.add_pod("p", containers, [2])
    adm = node.admit("p")
    assert adm.error is None, adm.error
    assert set(adm.devices["proxy"]) | set(adm.devices["app"]) == node.assignment("p").device_ids
    assert not set(adm.devices["proxy"]) & set(adm.devices["app"])


def test_interchangeable_pods_may_be_admitted_in_either_order(node: World) -> None:
    node.add_pod("first", [Container("main", 25)], [0])
    node.add_pod("second", [Container("main", 25)], [0])
    assert node.admit("second").error is None
    assert node.admit("first").error is None
    node.settle()
    a, b = node.assignment("first").device_ids, node.assignment("second").device_ids
    assert not a & b


def test_a_tenant_over_quota_is_refused(world: World) -> None:
    class Over:
        def check(self, pod: str, assignment: object) -> str | None:
            return "team-a uses 64Gi of 64Gi vgpu-memory"

    world.quota = Over()
    world.start_plugin()
    world.kubelet.wait_connected()
    world.add_pod("p", [Container("main", 10)], [0])
    adm = world.admit("p")
    assert adm.error is not None and "fracgpu: team-a uses 64Gi" in (adm.error.details() or "")


def test_a_configured_limiter_and_cdi_kind_reach_the_container(world: World) -> None:
    """HAMi-core's env and library mount, and one CDI device per GPU, over the real socket."""
    limiter = LimiterConfig(host_dir="/usr/local/vgpu-host", preload_file="/usr/local/vgpu-host/ld.so.preload")
    world.start_plugin(limiter=limiter, cdi_kind="nvidia.com/gpu")
    world.kubelet.wait_connected()
    world.add_pod("p", [Container("train", 200)], [2, 3], memory=20 * GiB)
    adm = world.admit("p")
    assert adm.error is None
    resp = adm.responses["train"]
    assert resp.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == resp.envs["CUDA_DEVICE_MEMORY_LIMIT_1"] == "20480m"
    assert resp.envs["CUDA_DEVICE_SM_LIMIT"] == "100"
    assert [(m.host_path, m.container_path, m.read_only) for m in resp.mounts] == [
        ("/usr/local/vgpu-host", "/usr/local/vgpu", True),
        ("/usr/local/vgpu-host/ld.so.preload", "/etc/ld.so.preload", True),
    ]
    assert [d.name for d in resp.cdi_devices] == [f"nvidia.com/gpu={gpu_uuid(2)}", f"nvidia.com/gpu={gpu_uuid(3)}"]


def test_without_them_no_limiter_env_mounts_or_cdi(node: World) -> None:
    node.add_pod("p", [Container("main", 30)], [0])
    resp = node.admit("p").responses["main"]
    assert not [k for k in resp.envs if k.startswith("CUDA_DEVICE_")]
    assert list(resp.mounts) == [] and list(resp.cdi_devices) == []


def test_a_running_container_allocated_again_gets_the_same_answer(node: World) -> None:
    """A kubelet that lost its device checkpoint allocates a restarting container again: the same devices,
    the same response, the pod stays allocated (issue 13, 9)."""
    node.add_pod("p", [Container("main", 50)], [1])
    first = node.admit("p")
    assert first.error is None
    node.settle()
    node.kubelet.release("default/p")  # the checkpoint is lost: PodResources shows nothing of p
    again = node.admit("p")  # the container restarts
    assert again.error is None, again.error
    assert again.devices == first.devices and again.responses == first.responses
    node.settle()
    assert node.annotations("p")[ANN_PHASE] == PHASE_ALLOCATED
    assert not node.cluster.events


def test_after_a_plugin_restart_too_the_running_container_is_served_from_its_reservation(node: World) -> None:
    """Both lost their records (the plugin restarted, the kubelet lost its checkpoint): the pod is marked
    allocated and holds nothing; its container's Allocate is served, not refused as a contradiction
    ("none of its waiting containers asks for 50 vgpu-core (they ask for 50)")."""
    node.add_pod("p", [Container("main", 50)], [1])
    first = node.admit("p")
    node.settle()
    node.stop_plugin()
    node.kubelet.release("default/p")
    node.start_plugin()
    node.kubelet.wait_connected(registrations=2)
    again = node.admit("p")
    assert again.error is None, again.error
    assert again.devices == first.devices and again.responses == first.responses


def test_running_containers_allocated_again_that_cannot_be_told_apart_are_refused(node: World) -> None:
    p_ids = node.two_running_lookalikes_after_a_lost_checkpoint()
    # the kubelet names no pod: p's IDs may be handed to q's restarting container
    with pytest.raises(grpc.RpcError) as err:
        node.kubelet.allocate_raw(p_ids)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be told which pod it is: default/p, default/q" in (err.value.details() or "")
    node.settle()
    assert node.annotations("p")[ANN_PHASE] == node.annotations("q")[ANN_PHASE] == PHASE_ALLOCATED

"""How Allocate names a container's GPUs to the NVIDIA container runtime, over the plugin's real socket
(issue 14: with accept-nvidia-visible-devices-envvar-when-unprivileged = false the runtime ignores the
env of unprivileged containers, so the GPUs must also come as volume mounts).

The runtime reads a mount as a device when its source is /dev/null and its destination lies under
/var/run/nvidia-container-devices (nvidia-container-toolkit, getDevicesFromMounts): the test checks
exactly those two fields, per GPU of the reservation, in the response the kubelet receives.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fracgpu.api.v1beta1.names import DEVICE_LIST_MOUNT_ROOT
from fracgpu.deviceplugin.main import main
from fracgpu.deviceplugin.response import LimiterConfig
from tests.deviceplugin.kubelet import Container
from tests.deviceplugin.world import GiB, World, gpu_uuid

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpus-8xA100.yaml"


def device_mounts(world: World, name: str) -> list[tuple[str, str, bool]]:
    resp = world.admit(name).responses["train"]
    return [(m.host_path, m.container_path, m.read_only) for m in resp.mounts
            if m.container_path.startswith(DEVICE_LIST_MOUNT_ROOT)]


def test_volume_mounts_name_each_reserved_gpu(world: World) -> None:
    world.start_plugin(device_list=("volume-mounts",))
    world.kubelet.wait_connected()
    world.add_pod("p", [Container("train", 200)], [1, 3], memory=20 * GiB)
    adm = world.admit("p")
    assert adm.error is None
    resp = adm.responses["train"]
    assert [(m.host_path, m.container_path) for m in resp.mounts] == [
        ("/dev/null", f"{DEVICE_LIST_MOUNT_ROOT}/{gpu_uuid(1)}"),
        ("/dev/null", f"{DEVICE_LIST_MOUNT_ROOT}/{gpu_uuid(3)}"),
    ]
    # the env no longer names GPUs: it overrides an image's NVIDIA_VISIBLE_DEVICES=all with a value
    # that is no device, and the limits stay
    assert resp.envs["NVIDIA_VISIBLE_DEVICES"] == DEVICE_LIST_MOUNT_ROOT
    assert resp.envs["FRACGPU_VRAM_LIMIT"] == str(20 * GiB)


def test_both_strategies_work_with_either_runtime_setting(world: World) -> None:
    """envvar,volume-mounts (the manifests' default): a runtime that honours the env and one that
    reads the mounts see the same GPUs; the limiter's mounts come after the device list."""
    world.start_plugin(device_list=("envvar", "volume-mounts"), limiter=LimiterConfig(host_dir="/opt/vgpu"))
    world.kubelet.wait_connected()
    world.add_pod("p", [Container("train", 40)], [2])
    adm = world.admit("p")
    assert adm.error is None
    resp = adm.responses["train"]
    assert resp.envs["NVIDIA_VISIBLE_DEVICES"] == gpu_uuid(2)
    assert [(m.host_path, m.container_path, m.read_only) for m in resp.mounts] == [
        ("/dev/null", f"{DEVICE_LIST_MOUNT_ROOT}/{gpu_uuid(2)}", True),
        ("/opt/vgpu", "/usr/local/vgpu", True),
    ]


def test_envvar_alone_mounts_nothing(node: World) -> None:
    node.add_pod("p", [Container("train", 30)], [0])
    assert device_mounts(node, "p") == []


@pytest.mark.parametrize(("value", "message"), [
    ("volume-mount", "'volume-mount' is not one of envvar, volume-mounts"),
    (",", "give one or more of envvar, volume-mounts"),
])
def test_a_bad_strategy_stops_the_plugin_at_start(value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--backend", "simulated", "--gpus", str(EXAMPLE), "--no-kube", "--device-list-strategy", value]
    assert main(argv, environ={"NODE_NAME": "n"}) == 2
    assert message in capsys.readouterr().err

"""Registration, re-registration, the device list and its health, over real unix-socket gRPC."""

from __future__ import annotations

import os
import stat

from fracgpu.api.v1beta1.names import RESOURCE_CORE
from tests.deviceplugin.world import World, gpu_uuid


def test_registers_with_the_kubelet_and_streams_100_ids_per_gpu(node: World) -> None:
    reg = node.kubelet.registrations[0]
    assert (reg.version, reg.endpoint, reg.resource_name) == ("v1beta1", "fracgpu-vgpu-core.sock", RESOURCE_CORE)
    assert reg.options.get_preferred_allocation_available
    assert node.kubelet.options is not None and node.kubelet.options.get_preferred_allocation_available
    assert not node.kubelet.options.pre_start_required
    devices = node.kubelet.devices
    assert len(devices) == 400
    d = devices[f"{gpu_uuid(3)}::99"]
    assert d.health == "Healthy"
    assert [n.ID for n in d.topology.nodes] == [1]  # GPUs 2 and 3 sit on NUMA node 1
    assert _mode(os.path.join(node.dir, reg.endpoint)) == 0o600


def _mode(path: str) -> int:
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode)


def test_the_socket_is_owner_only_whatever_the_umask(world: World) -> None:
    """0600: only root (the kubelet, and the plugin itself) may connect; never world-writable, even when the
    process runs with a permissive umask, and again after the socket is recreated."""
    old = os.umask(0)
    try:
        world.start_plugin()
        world.kubelet.wait_connected()
        sock = os.path.join(world.dir, "fracgpu-vgpu-core.sock")
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert _mode(sock) == 0o600
        assert _mode(world.lock_file) == 0o600
        world.kubelet.restart()  # the plugin serves a new socket and registers again
        world.kubelet.wait_connected(registrations=2)
        assert _mode(sock) == 0o600
        assert os.umask(0) == 0  # the plugin put the process umask back
    finally:
        os.umask(old)


def test_registers_again_when_the_kubelet_restarts(node: World) -> None:
    node.kubelet.restart()
    node.kubelet.wait_connected(registrations=2)
    assert len(node.kubelet.devices) == 400
    assert node.app is not None and node.app.server.generation == 2  # the old server was stopped


def test_registers_again_when_its_own_socket_is_removed(node: World) -> None:
    os.unlink(os.path.join(node.dir, "fracgpu-vgpu-core.sock"))
    node.kubelet.wait_connected(registrations=2)


def test_survives_the_kubelet_vanishing_mid_stream(node: World) -> None:
    node.kubelet.stop_registration()  # drops the ListAndWatch stream, kubelet.sock stays as a dead file
    assert node.kubelet.stream_ended.wait(5)
    node.kubelet.restart()
    node.kubelet.wait_connected(registrations=2)
    assert len(node.kubelet.healthy()) == 400


def test_a_health_change_reaches_listandwatch_within_a_second(node: World) -> None:
    sick = gpu_uuid(1)
    node.backend.set_unhealthy(sick, "test: ECC storm")
    assert node.kubelet.wait_for(lambda: f"{sick}::0" not in node.kubelet.healthy(), timeout=1.0)
    assert len(node.kubelet.healthy()) == 300
    node.backend.set_healthy(sick)
    assert node.kubelet.wait_for(lambda: len(node.kubelet.healthy()) == 400, timeout=1.0)


def test_a_fatal_xid_makes_the_gpu_unhealthy_an_application_xid_does_not(node: World) -> None:
    node.backend.inject_xid(gpu_uuid(2), 13)  # graphics engine exception: the application's fault
    node.backend.inject_xid(gpu_uuid(0), 79)  # fallen off the bus
    assert node.kubelet.wait_for(lambda: len(node.kubelet.healthy()) == 300, timeout=1.0)
    assert f"{gpu_uuid(0)}::5" not in node.kubelet.healthy()


def test_a_gpu_that_is_gone_leaves_the_list(node: World) -> None:
    node.backend.remove(gpu_uuid(3))
    assert node.kubelet.wait_for(lambda: len(node.kubelet.devices) == 300, timeout=1.0)


def test_a_watch_tick_after_stop_serves_nothing(node: World) -> None:
    """stop() removes the socket; a watch tick racing it must not take that for a removed socket and serve
    again (a server left running outlives the plugin and hangs the process at exit)."""
    assert node.app is not None
    server = node.app.server
    generation = server.generation
    server.stop()
    assert not server.watch_once()
    assert server.generation == generation
    assert not os.path.exists(os.path.join(node.dir, "fracgpu-vgpu-core.sock"))

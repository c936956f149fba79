"""Fixtures: `node` is a running plugin on a 4-GPU node with an in-test kubelet."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fracgpu.api.v1beta1.names import RESOURCE_CORE
from fracgpu.deviceplugin.apiserver import MemoryApiServer
from fracgpu.deviceplugin.backends.simulated import SimulatedBackend
from tests.deviceplugin.kubelet import FakeKubelet
from tests.deviceplugin.world import NODE, World, gpus, lock_path, remove_dirs, short_tmpdir


@pytest.fixture
def world() -> Iterator[World]:
    """A node with 4 simulated A100-80GB GPUs, pods in memory and a running in-test kubelet; no plugin yet."""
    d = short_tmpdir()
    kubelet = FakeKubelet(d, RESOURCE_CORE)
    kubelet.start()
    w = World(dir=d, backend=SimulatedBackend(gpus(4)), cluster=MemoryApiServer(NODE), kubelet=kubelet,
              lock_file=lock_path(d))
    try:
        yield w
    finally:
        w.stop_plugin()
        kubelet.stop()
        remove_dirs(d)


@pytest.fixture
def node(world: World) -> World:
    """`world` with the plugin started, registered, and its devices streamed to the kubelet."""
    world.start_plugin()
    world.kubelet.wait_connected()
    return world

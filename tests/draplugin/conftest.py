"""Fixtures: `world` is a 4-GPU node with the fake API server and an in-test kubelet; `node` adds a running driver."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fracgpu.deviceplugin.backends.simulated import SimulatedBackend
from tests.draplugin.kubelet import FakeDraKubelet
from tests.draplugin.world import DraWorld, api_server, gpus, short_tmpdir


@pytest.fixture
def world() -> Iterator[DraWorld]:
    d = short_tmpdir()
    registry = os.path.join(d, "registry")
    os.makedirs(registry)
    kubelet = FakeDraKubelet(registry)
    kubelet.start()
    w = DraWorld(dir=d, apiserver=api_server(), backend=SimulatedBackend(gpus(4)), kubelet=kubelet)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def node(world: DraWorld) -> DraWorld:
    """`world` with the driver started and registered with the kubelet."""
    world.start_driver()
    world.kubelet.wait_registered("gpu.fracgpu.io")
    return world

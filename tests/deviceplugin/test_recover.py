"""The plugin's start-up reconcile with the kubelet's PodResources: a kubelet that does not answer is one
line; a failure of the reconcile itself is a bug and is logged with its traceback."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fracgpu.deviceplugin.apiserver import MemoryApiServer
from fracgpu.deviceplugin.backends.simulated import SimulatedBackend, parse_gpus
from fracgpu.deviceplugin.health import DeviceState
from fracgpu.deviceplugin.plugin import Plugin, PluginConfig
from fracgpu.deviceplugin.podresources import Holdings, PodResourcesUnavailable


class KubeletDown:
    def holdings(self) -> Holdings:
        raise PodResourcesUnavailable("connection refused")


class Malformed:
    """An answer outside the contract (a container list that is not one): the reconcile trips over it."""

    def holdings(self) -> Holdings:
        bad: Any = {"default/p": None}
        return bad  # type: ignore[no-any-return]


def plugin_with(holdings: KubeletDown | Malformed) -> Plugin:
    backend = SimulatedBackend(parse_gpus({"gpus": [{"uuid": "GPU-a", "memory": "1Gi"}]}))
    return Plugin(PluginConfig(node="n1"), DeviceState(backend), MemoryApiServer("n1"), holdings)


@pytest.mark.parametrize(("holdings", "message", "traceback"), [
    (KubeletDown(), "podresources unavailable at start", False),
    (Malformed(), "reconciling with the kubelet's podresources failed at start", True),
], ids=["kubelet down", "reconcile bug"])
def test_recover_says_which_failed(holdings: KubeletDown | Malformed, message: str, traceback: bool,
                                   caplog: pytest.LogCaptureFixture) -> None:
    plugin = plugin_with(holdings)
    with caplog.at_level(logging.WARNING, logger="fracgpu.deviceplugin.plugin"):
        plugin.recover()
    (record,) = [r for r in caplog.records if r.name == "fracgpu.deviceplugin.plugin"]
    assert message in record.getMessage()
    assert (record.exc_info is not None) is traceback

"""Issue 9: the plugin process killed (SIGKILL) while its asynchronous PodResources cross-check is in progress.

The first plugin is a real `fracgpu device-plugin` process against the fake API server and the in-test
kubelet; the kubelet holds the cross-check's PodResources List open while the process is killed. A
new plugin then starts and must converge: no device ID in two reservations or two holdings, pods
the kubelet holds marked allocated, a pod wrongly marked allocated set back to allocating (and
admitted later), and the repairs counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE, PHASE_ALLOCATED, PHASE_ALLOCATING
from fracgpu.deviceplugin.kubeapiserver import KubeApiServer
from fracgpu.kube import client, writer
from tests.deviceplugin.kubelet import Container
from tests.deviceplugin.world import NODE, World, gpu_uuid, gpus_doc
from tests.fakes.apiserver import FakeApiServer
from tests.poll import wait_until

ROOT = Path(__file__).resolve().parents[2]


def on_gpu0_from(k: int) -> object:
    """A kubelet that hands over GPU 0's IDs from ::k on (outside every reservation: topology alignment)."""
    def choose(offer: list[str], must: list[str], size: int, preferred: list[str]) -> list[str]:
        return [f"{gpu_uuid(0)}::{i}" for i in range(k, k + size)]

    return choose


def reservations(api: FakeApiServer) -> dict[str, Assignment]:
    out = {}
    for p in api.list_objects("pods"):
        text = (p["metadata"].get("annotations") or {}).get(ANN_ASSIGNED)
        if text:
            out[f"{p['metadata']['namespace']}/{p['metadata']['name']}"] = Assignment.from_json(text)
    return out


def phase(api: FakeApiServer, name: str) -> str:
    pod = api.get_object("pods", name, "default")
    assert pod is not None
    return str((pod["metadata"].get("annotations") or {}).get(ANN_PHASE, ""))


def assert_no_id_twice(world: World, api: FakeApiServer) -> None:
    reserved = [i for a in reservations(api).values() for i in a.device_ids]
    assert len(reserved) == len(set(reserved)), "a device ID is reserved by two pods"
    held = [i for ids in world.kubelet.allocated.values() for i in ids]
    assert len(held) == len(set(held)), "a device ID is held by two containers"


@pytest.fixture
def process_plugin(world: World, apiserver: FakeApiServer) -> Iterator[subprocess.Popen[str]]:
    """`fracgpu device-plugin` as a process on `world`'s node, against the fake API server."""
    gpus_file = os.path.join(world.dir, "gpus.yaml")
    with open(gpus_file, "w", encoding="utf-8") as f:
        yaml.safe_dump(gpus_doc(4), f)
    env = dict(os.environ, NODE_NAME=NODE, FRACGPU_DEVICE_PLUGIN_DIR=world.dir, FRACGPU_LOCK_FILE=world.lock_file,
               FRACGPU_METRICS_PORT="0",
               FRACGPU_POD_RESOURCES_SOCKET=world.kubelet.podresources_socket, FRACGPU_KUBE_API=apiserver.url,
               FRACGPU_CROSSCHECK_DELAY="0", PYTHONPATH=str(ROOT))
    with open(os.path.join(world.dir, "plugin.log"), "w", encoding="utf-8") as log:  # a file: a pipe could fill
        proc = subprocess.Popen([sys.executable, "-m", "fracgpu.cli", "device-plugin", "--backend", "simulated",
                                 "--gpus", gpus_file], env=env, stderr=log, text=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def test_killed_during_the_podresources_crosscheck_then_converges(
        world: World, apiserver: FakeApiServer, process_plugin: subprocess.Popen[str]) -> None:
    api, kubelet = apiserver, world.kubelet
    api.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    api.seed(world.add_pod("a", [Container("main", 50)], [1]))
    # interchangeable (same GPU, same VRAM): the plugin may take one's Allocate for the other
    api.seed(world.add_pod("first", [Container("main", 25)], [0], assigned_at="2026-01-01T00:00:00Z"))
    api.seed(world.add_pod("second", [Container("main", 25)], [0], assigned_at="2026-01-01T00:00:01Z"))
    kubelet.wait_connected(timeout=30)
    assert kubelet.admit("default/a", world.pods["default/a"]).error is None
    assert wait_until(lambda: phase(api, "a") == PHASE_ALLOCATED and kubelet.list_calls >= 2)
    # the kubelet admits `second` on IDs outside both reservations; the plugin takes it for `first`
    # (the older one), marks `first` allocated, then cross-checks: its List now hangs, and it is killed
    gate = threading.Event()
    kubelet.list_gate = gate
    try:
        adm = kubelet.admit("default/second", world.pods["default/second"], on_gpu0_from(50))  # type: ignore[arg-type]
        assert adm.error is None, adm.error
        assert wait_until(lambda: kubelet.lists_waiting == 1)  # the cross-check is in progress
        assert phase(api, "first") == PHASE_ALLOCATED and phase(api, "second") == PHASE_ALLOCATING
        process_plugin.send_signal(signal.SIGKILL)
        process_plugin.wait(10)
    finally:
        kubelet.list_gate = None
        gate.set()
    # what the dead process left: `first` marked allocated on the devices `second` holds
    held_by_second = set(kubelet.allocated[("default/second", "main")])
    assert reservations(api)["default/first"].device_ids == held_by_second

    cluster = KubeApiServer(writer.KubeWriter(client.Transport(api.api_client())), NODE)
    cluster.start(timeout_s=5)
    try:
        world.start_plugin(cluster=cluster)  # the restarted plugin (its lock was released by the kill)
        kubelet.wait_connected(registrations=2)
        world.settle()
        r = reservations(api)
        assert r["default/second"].device_ids == held_by_second and phase(api, "second") == PHASE_ALLOCATED
        assert phase(api, "first") == PHASE_ALLOCATING  # re-marked: the kubelet never admitted it
        assert not r["default/first"].device_ids & {i for ids in kubelet.allocated.values() for i in ids}
        assert r["default/a"].device_ids == set(kubelet.allocated[("default/a", "main")])
        assert phase(api, "a") == PHASE_ALLOCATED
        assert_no_id_twice(world, api)
        repairs = {s.labels["kind"]: s.value for m in world.metrics.repairs.collect() for s in m.samples
                   if s.name.endswith("_total")}
        assert repairs == {"swapped": 1, "moved": 2, "phase": 1}, repairs
        # `first` is admitted later, on its own (new) reservation, and nothing is held twice
        adm = kubelet.admit("default/first", world.pods["default/first"])
        assert adm.error is None, adm.error
        world.settle()
        assert phase(api, "first") == PHASE_ALLOCATED
        assert set(adm.devices["main"]) == reservations(api)["default/first"].device_ids
        assert_no_id_twice(world, api)
    finally:
        world.stop_plugin()
        cluster.stop()

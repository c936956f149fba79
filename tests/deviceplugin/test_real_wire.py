"""What the real kubelet and a real fleet do to the plugin, over real unix sockets and real files (issue 13).

Each test drives a behaviour the ideal fakes never produced:
- a simulated fleet loads one gpus file on every node (manifests/simulated);
- a kubelet start empties its device-plugins directory, every file but its checkpoint (upstream
  CleanupPluginDirectory), while a second plugin process starts on the node;
- two reservations of one GPU's VRAM with disjoint device IDs, and a GPU booked to the edge;
- ListAndWatch streams left open (a kubelet that went away, a stuck client) next to the unary calls;
- the kubelet shows an allocation in PodResources only after Allocate has returned.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from fracgpu.api.v1beta1.deviceplugin import api_pb2, api_pb2_grpc
from fracgpu.api.v1beta1.names import ANN_INVENTORY, ANN_PHASE, PHASE_ALLOCATED, RESOURCE_CORE
from fracgpu.core.healthconfig import HealthConfig
from fracgpu.deviceplugin.apiserver import MemoryApiServer
from fracgpu.deviceplugin.app import AppConfig, DevicePluginApp
from fracgpu.deviceplugin.main import build, parser
from fracgpu.deviceplugin.plugin import PluginConfig
from fracgpu.deviceplugin.podresources import NoHoldings
from fracgpu.deviceplugin.server import LockError, ServerConfig
from tests.deviceplugin.kubelet import Container, FakeKubelet
from tests.deviceplugin.world import NODE, GiB, World, gpu_uuid, lock_path, remove_dirs, short_tmpdir

GPU_UUID = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PINNED = "GPU-5a000002-0000-4000-8000-000000000002"


# --- one gpus file on every node ---


def run_node(node: str, gpus_file: Path) -> tuple[set[str], dict[str, str]]:
    """`fracgpu device-plugin` (its flags, its wiring) for `node` against an in-test kubelet: the GPU UUIDs
    the kubelet was sent, and the node annotations it published."""
    d = short_tmpdir()
    kubelet = FakeKubelet(d, RESOURCE_CORE)
    kubelet.start()
    args = parser({}).parse_args(["--backend", "simulated", "--gpus", str(gpus_file), "--node-name", node,
                                  "--no-kube", "--socket-dir", d, "--lock-file", lock_path(d),
                                  "--pod-resources-socket", "none", "--metrics-port", "0"])
    app, cluster = build(args, {})
    try:
        app.start()
        kubelet.wait_connected()
        uuids = {i.rsplit("::", 1)[0] for i in kubelet.devices}
        assert isinstance(cluster, MemoryApiServer)
        return uuids, dict(cluster.node_annotations)
    finally:
        app.stop()
        kubelet.stop()
        remove_dirs(d)


def test_two_nodes_loading_one_gpus_file_get_their_own_uuids_and_a_pinned_one_is_kept(tmp_path: Path) -> None:
    gpus_file = tmp_path / "gpus.yaml"
    gpus_file.write_text(yaml.safe_dump({"gpus": [
        {"model": "NVIDIA A100-SXM4-80GB", "memory": "80Gi", "numa": 0, "nvlink": {1: 12}},
        {"model": "NVIDIA A100-SXM4-80GB", "memory": "80Gi", "numa": 0, "nvlink": {0: 12}},
        {"uuid": PINNED, "model": "NVIDIA A100-SXM4-80GB", "memory": "80Gi", "numa": 1},
    ]}))
    a, a_published = run_node("node-a", gpus_file)
    b, _ = run_node("node-b", gpus_file)
    assert len(a) == len(b) == 3
    assert a & b == {PINNED}  # what the file pins is the file's choice; nothing else is shared
    assert all(GPU_UUID.match(u) for u in a | b)  # NVML's shape: CDI names, env, labels take them as they are
    assert all(u in a_published[ANN_INVENTORY] for u in a)
    again, _ = run_node("node-a", gpus_file)
    assert again == a  # stable across restarts: the node's pods' reservations name them


# --- the kubelet empties its directory while a second plugin starts ---


def test_a_kubelet_restart_empties_the_directory_and_a_second_plugin_waits_for_the_lock(node: World) -> None:
    first = node.app
    assert first is not None
    served = first.server.generation
    second = DevicePluginApp(
        AppConfig(plugin=PluginConfig(node=NODE), watch_interval=0.05, health=HealthConfig(poll_interval=3600.0),
                  server=ServerConfig(socket_dir=node.dir, lock_file=node.lock_file, lock_timeout=0.8)),
        node.backend, node.cluster, NoHoldings())
    outcome: list[BaseException] = []

    def start_second() -> None:
        try:
            second.start()
        except BaseException as e:  # reported to the test thread
            outcome.append(e)

    removed = node.kubelet.restart_emptying_dir()  # our socket and any lock kept there: gone
    assert "fracgpu-vgpu-core.sock" in removed
    t = threading.Thread(target=start_second)
    t.start()
    try:
        node.kubelet.wait_connected(registrations=2)
        # the window of the old loop (two plugins taking the socket from each other every watch tick, 0.05 s
        # here): the second plugin waits for the lock meanwhile, then gives up
        t.join(5)
        time.sleep(0.3)
        assert len(node.kubelet.registrations) == 2  # once at start, once after the restart: no loop
        assert first.server.generation == served + 1 and second.server.generation == 0
        assert len(outcome) == 1 and isinstance(outcome[0], LockError), outcome
        assert "another fracgpu device plugin" in str(outcome[0])
        # the devices keep flowing from the first plugin, on the socket it serves
        assert len(node.kubelet.healthy()) == 400
        node.backend.set_unhealthy(gpu_uuid(2), "test: after the restart")
        assert node.kubelet.wait_for(lambda: len(node.kubelet.healthy()) == 300, timeout=2.0)
        assert os.path.exists(node.lock_file)  # outside the directory the kubelet empties
    finally:
        t.join(10)
        second.stop()


def test_a_lock_file_in_the_kubelets_directory_is_refused(world: World) -> None:
    with pytest.raises(ValueError, match="empties when it starts"):
        world.lock_file = os.path.join(world.dir, "fracgpu.lock")
        world.start_plugin()


# --- Allocate re-checks each GPU's room ---


@dataclass(frozen=True)
class Booking:
    name: str
    admitted: list[int]  # VRAM (bytes) of pods admitted on GPU 0 first, in order
    asks: int  # VRAM of the pod admitted last
    fits: bool


BOOKINGS = [
    Booking("exactly full", [50 * GiB], 30 * GiB, True),
    Booking("one byte over", [50 * GiB], 30 * GiB + 1, False),
    Booking("two 60Gi reservations with disjoint ids", [60 * GiB], 60 * GiB, False),
    Booking("full after three", [40 * GiB, 20 * GiB], 20 * GiB, True),
    Booking("over after three", [40 * GiB, 20 * GiB], 20 * GiB + 1, False),
]


@pytest.mark.parametrize("case", BOOKINGS, ids=[c.name for c in BOOKINGS])
def test_allocate_refuses_a_pod_that_would_overbook_its_gpus_vram(node: World, case: Booking) -> None:
    for i, memory in enumerate(case.admitted):
        node.add_pod(f"a{i}", [Container("main", 10)], [0], memory=memory)
        assert node.admit(f"a{i}").error is None
    node.add_pod("last", [Container("main", 10)], [0], memory=case.asks)
    adm = node.admit("last")
    node.settle()
    if case.fits:
        assert adm.error is None, adm.error
        assert node.annotations("last")[ANN_PHASE] == PHASE_ALLOCATED
        return
    assert adm.error is not None and adm.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    used = sum(case.admitted)
    admitted = ", ".join(f"default/a{i}" for i in range(len(case.admitted)))
    reason = (f"GPU {gpu_uuid(0)} has no room for pod default/last: pods admitted there ({admitted}) book "
              f"vgpu-memory {fmt(used)} of 80Gi, vgpu-core {10 * len(case.admitted)} of 100; the pod asks "
              f"vgpu-memory {fmt(case.asks)}, vgpu-core 10")
    assert adm.error.details() == f"fracgpu: {reason}"
    assert node.annotations("last")[ANN_PHASE] == f"failed: {reason}"
    assert [e.name for e in node.cluster.events if e.reason == "FracgpuAllocateRefused"] == ["last"]
    assert node.metrics.registry.get_sample_value("fracgpu_deviceplugin_allocate_errors_total", {"code": "overbooked"}) == 1


def fmt(n: int) -> str:
    from fracgpu.core.quantity import format_bytes

    return format_bytes(n)


def test_a_reserved_pod_not_admitted_yet_does_not_count(node: World) -> None:
    """Two 60Gi reservations of one GPU: whichever the kubelet admits first keeps it. (Different requests,
    so that the kubelet's calls name the pod: two waiting pods of one request and shape are interchangeable.)"""
    node.add_pod("early", [Container("main", 10)], [0], memory=60 * GiB)
    node.add_pod("late", [Container("main", 20)], [0], memory=60 * GiB)
    assert node.admit("late").error is None
    adm = node.admit("early")
    assert adm.error is not None and "has no room for pod default/early: pods admitted there (default/late)" in (
        adm.error.details() or "")


# --- streams do not starve the unary calls ---


class StreamReader:
    """A client's ListAndWatch stream, read in a thread: the messages, and how it ended."""

    def __init__(self, stub: api_pb2_grpc.DevicePluginStub) -> None:
        self.call = stub.ListAndWatch(api_pb2.Empty())
        self.lists: list[int] = []
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for msg in self.call:
                self.lists.append(len(msg.devices))
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.code, self.details = e.code(), e.details() or ""
        self.ended.set()

    def join(self) -> None:
        self._thread.join(5)


def test_twenty_open_listandwatch_streams_leave_the_unary_calls_answering(node: World) -> None:
    channel = grpc.insecure_channel(f"unix://{os.path.join(node.dir, 'fracgpu-vgpu-core.sock')}")
    stub = api_pb2_grpc.DevicePluginStub(channel)
    streams = [StreamReader(stub) for _ in range(20)]
    try:
        start = time.monotonic()
        assert stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=2.0).get_preferred_allocation_available
        offer = [f"{gpu_uuid(1)}::{k}" for k in range(20)]
        answer = stub.GetPreferredAllocation(api_pb2.PreferredAllocationRequest(container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=offer, allocation_size=10)]), timeout=2.0)
        assert len(answer.container_responses[0].deviceIDs) == 10
        assert time.monotonic() - start < 2.0
        # all but the newest max_streams were ended, and say why; the open ones stream the devices
        cap = ServerConfig(socket_dir=node.dir).max_streams
        deadline = time.monotonic() + 5
        while sum(r.ended.is_set() for r in streams) < len(streams) - cap and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # none more
        ended = [r for r in streams if r.ended.is_set()]
        assert len(ended) == len(streams) - cap
        assert {r.code for r in ended} == {grpc.StatusCode.ABORTED}
        assert all("superseded by a newer ListAndWatch stream" in r.details for r in ended)
        assert all(r.lists == [400] for r in streams if not r.ended.is_set())
        # a kubelet registering again gets a stream of its own that carries changes
        node.kubelet.restart()
        node.kubelet.wait_connected(registrations=2)
        node.backend.set_unhealthy(gpu_uuid(0), "test: after the streams")
        assert node.kubelet.wait_for(lambda: len(node.kubelet.healthy()) == 300, timeout=2.0)
    finally:
        channel.close()  # ends the open streams
        for r in streams:
            r.join()


# --- the cross-check waits until PodResources shows the Allocate ---


def test_a_crosscheck_before_the_kubelet_records_the_allocation_waits_for_it(node: World) -> None:
    """The kubelet hands p the IDs reserved for q; the plugin takes the call for q (the IDs name it), and
    only PodResources tells it that p was admitted. The kubelet records that 0.3 s after Allocate returned."""
    node.add_pod("p", [Container("main", 20)], [0])
    node.add_pod("q", [Container("main", 20)], [0])
    q_ids = sorted(node.assignment("q").device_ids)

    def take_qs(offer: list[str], must: list[str], size: int, preferred: list[str]) -> list[str]:
        return q_ids

    assert node.admit("p", chooser=take_qs, record_after=0.3).error is None
    node.settle()
    assert node.assignment("p").device_ids == frozenset(q_ids)  # p's reservation follows the kubelet
    assert node.annotations("p")[ANN_PHASE] == PHASE_ALLOCATED
    assert node.annotations("q")[ANN_PHASE] == "allocating"  # q was not admitted: it still waits
    assert not node.assignment("q").device_ids & frozenset(q_ids)

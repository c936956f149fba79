"""An in-test kubelet for DRA plugins, over real unix-socket gRPC with the real protos.

It does what the kubelet's pluginwatcher and DRA plugin manager do (pkg/kubelet/pluginmanager,
pkg/kubelet/cm/dra/plugin): it watches the registration directory for sockets (names starting with '.'
ignored), calls Registration.GetInfo on a new one, accepts only type "DRAPlugin" with a name and a
non-empty list of services, picks the FIRST service of the plugin's list that it supports itself
(``services``, most recent first: v1.DRAPlugin, v1beta1.DRAPlugin), connects to the plugin's endpoint as
``unix:<endpoint>``, and answers NotifyRegistrationStatus. It keeps calling GetInfo on registered sockets
and deregisters a plugin whose socket is gone or does not answer. Prepare/unprepare go through the chosen
service's generated stub, so the method path (/k8s.io.kubelet.pkg.apis.dra.<v>.DRAPlugin/...) is the real one.

What it does not do that a kubelet does: CDI injection into containers, its own checkpoint of prepared
claims, the wiping of ResourceSlices (tests do that against the fake API server directly).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc

from fracgpu.api.v1beta1.dra.kubeletv1 import api_pb2 as v1_pb2
from fracgpu.api.v1beta1.dra.kubeletv1 import api_pb2_grpc as v1_grpc
from fracgpu.api.v1beta1.dra.kubeletv1beta1 import api_pb2 as v1beta1_pb2
from fracgpu.api.v1beta1.dra.kubeletv1beta1 import api_pb2_grpc as v1beta1_grpc
from fracgpu.api.v1beta1.pluginregistration import api_pb2 as reg_pb2
from fracgpu.api.v1beta1.pluginregistration import api_pb2_grpc as reg_grpc

SERVICES: dict[str, tuple[ModuleType, Any]] = {
    "v1.DRAPlugin": (v1_pb2, v1_grpc.DRAPluginStub),
    "v1beta1.DRAPlugin": (v1beta1_pb2, v1beta1_grpc.DRAPluginStub),
}


@dataclass
class Registered:
    socket: str
    inode: tuple[int, int]
    name: str
    endpoint: str
    service: str
    channel: grpc.Channel
    stub: Any
    pb2: ModuleType


class FakeDraKubelet:
    def __init__(self, registry_dir: str, services: Sequence[str] = ("v1.DRAPlugin", "v1beta1.DRAPlugin"),
                 interval: float = 0.05, probe_interval: float = 1.0) -> None:
        self.registry_dir = registry_dir
        self.services = tuple(services)
        self.interval = interval
        self.probe_interval = probe_interval
        self._next_probe = 0.0
        self._cond = threading.Condition()
        self.plugins: dict[str, Registered] = {}  # by driver name
        self.infos: list[reg_pb2.PluginInfo] = []
        self.refusals: list[str] = []  # NotifyRegistrationStatus errors sent
        self.registrations = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # socket -> (inode, ctime) seen: a recreated socket is new even where the inode number is reused, as
        # the kubelet's inotify watch sees a delete and a create
        self._known: dict[str, tuple[int, int]] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fake-kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._cond:
            for p in self.plugins.values():
                p.channel.close()
            self.plugins.clear()

    # Waits for the plugin's own threads and gRPC; generous, since they only run out when a test fails
    # or the machine is starved (2 cores shared by the whole suite).
    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_registered(self, driver: str, timeout: float = 20.0) -> Registered:
        assert self.wait_for(lambda: driver in self.plugins, timeout), f"{driver} did not register"
        with self._cond:
            return self.plugins[driver]

    # --- the pluginwatcher loop ---

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # the real watcher logs and goes on
                self.scan()

    def scan(self) -> None:
        try:
            names = sorted(os.listdir(self.registry_dir))
        except FileNotFoundError:
            names = []
        present = {}
        for n in names:
            if n.startswith("."):
                continue
            path = os.path.join(self.registry_dir, n)
            try:
                st = os.stat(path)
                present[path] = (st.st_ino, st.st_ctime_ns)
            except OSError:
                continue
        with self._cond:
            registered = list(self.plugins.items())
        probe = time.monotonic() >= self._next_probe
        if probe:
            self._next_probe = time.monotonic() + self.probe_interval
        for driver, p in registered:
            # a socket gone or replaced (inotify), or one that stopped answering GetInfo (the periodic probe)
            if present.get(p.socket) != p.inode or (probe and not self._alive(p.socket)):
                with self._cond:
                    if self.plugins.get(driver) is p:
                        p.channel.close()
                        del self.plugins[driver]
                        self._known.pop(p.socket, None)
                        self._cond.notify_all()
        for path, inode in present.items():
            if self._known.get(path) != inode:
                self._known[path] = inode
                self._register(path, inode)

    def _alive(self, socket: str) -> bool:
        try:
            with grpc.insecure_channel(f"unix://{socket}") as ch:
                reg_grpc.RegistrationStub(ch).GetInfo(reg_pb2.InfoRequest(), timeout=2)
            return True
        except grpc.RpcError:
            return False

    def _register(self, path: str, inode: tuple[int, int]) -> None:
        with grpc.insecure_channel(f"unix://{path}") as ch:
            reg = reg_grpc.RegistrationStub(ch)
            try:
                info = reg.GetInfo(reg_pb2.InfoRequest(), timeout=2)
            except grpc.RpcError:
                self._known.pop(path, None)  # not ready: try again on the next scan
                return
            with self._cond:
                self.infos.append(info)
            error = ""
            chosen = next((s for s in info.supported_versions if s in self.services), "")
            if info.type != "DRAPlugin":
                error = f"unknown plugin type {info.type!r}"
            elif not info.name:
                error = "empty plugin name"
            elif not info.supported_versions:
                error = "empty list of supported gRPC services (aka supported versions)"
            elif not chosen:
                error = (f"none of services supported by the plugin ({list(info.supported_versions)}) are supported "
                         f"by the kubelet ({list(self.services)})")
            elif not os.path.isabs(info.endpoint):
                error = f"endpoint {info.endpoint!r} is not an absolute path"
            if error:
                if not self._notify(reg, path, reg_pb2.RegistrationStatus(plugin_registered=False, error=error)):
                    return
                with self._cond:
                    self.refusals.append(error)
                    self._cond.notify_all()
                return
            pb2, stub_cls = SERVICES[chosen]
            if not self._notify(reg, path, reg_pb2.RegistrationStatus(plugin_registered=True)):
                return
            channel = grpc.insecure_channel(f"unix:{info.endpoint}")
            plugin = Registered(path, inode, info.name, info.endpoint, chosen, channel, stub_cls(channel), pb2)
            with self._cond:
                old = self.plugins.get(info.name)
                if old is not None:
                    old.channel.close()
                self.plugins[info.name] = plugin
                self.registrations += 1
                self._cond.notify_all()

    def _notify(self, reg: Any, path: str, status: reg_pb2.RegistrationStatus) -> bool:
        """Whether the plugin heard the status. A kubelet whose NotifyRegistrationStatus failed (a deadline
        missed on a busy node) does not count the plugin as registered and tries the socket again later, as
        the pluginmanager's reconciler does; a fake that gave up here would never register it."""
        try:
            reg.NotifyRegistrationStatus(status, timeout=2)
        except grpc.RpcError:
            self._known.pop(path, None)
            return False
        return True

    # --- the DRA manager's calls ---

    def prepare(self, driver: str, claims: Sequence[tuple[str, str, str]], timeout: float = 10.0) -> Any:
        """NodePrepareResources for (namespace, name, uid) triples, through the chosen service."""
        p = self.wait_registered(driver)
        request = p.pb2.NodePrepareResourcesRequest(
            claims=[p.pb2.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claims])
        return p.stub.NodePrepareResources(request, timeout=timeout)

    def unprepare(self, driver: str, claims: Sequence[tuple[str, str, str]], timeout: float = 10.0) -> Any:
        p = self.wait_registered(driver)
        request = p.pb2.NodeUnprepareResourcesRequest(
            claims=[p.pb2.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claims])
        return p.stub.NodeUnprepareResources(request, timeout=timeout)

"""The plugin's socket and its registration with the kubelet.

``PluginServer.start`` takes the directory lock (so that an old plugin process is gone before
this one serves: a plugin that stays connected after a re-registration can still change the
device list), removes a stale socket, serves the DevicePlugin service on its own unix socket
(mode 0600: the kubelet runs as root) and registers with kubelet.sock. ``watch_once`` notices a
recreated kubelet.sock (the kubelet restarted) or a removed own socket and then restarts the gRPC
server and registers again; the old server is stopped first so its ListAndWatch streams end.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from fracgpu.api.v1beta1.deviceplugin import api_pb2, api_pb2_grpc
from fracgpu.api.v1beta1.names import DEVICE_PLUGIN_VERSION, KUBELET_SOCKET, PLUGIN_SOCKET, RESOURCE_CORE
from fracgpu.deviceplugin.servicer import options

log = logging.getLogger(__name__)

LOCK_FILE = ".fracgpu-vgpu-core.lock"
MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL


class RegistrationError(RuntimeError):
    """The kubelet refused or did not answer Register."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    socket_dir: str
    socket_name: str = PLUGIN_SOCKET
    kubelet_socket: str = KUBELET_SOCKET  # name inside socket_dir
    resource: str = RESOURCE_CORE
    register_timeout: float = 5.0
    lock_timeout: float = 30.0  # how long to wait for an old plugin process to let go
    workers: int = 8

    @property
    def socket_path(self) -> str:
        return os.path.join(self.socket_dir, self.socket_name)

    @property
    def kubelet_path(self) -> str:
        return os.path.join(self.socket_dir, self.kubelet_socket)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


class PluginServer:
    def __init__(self, cfg: ServerConfig, add_servicer: Callable[[grpc.Server, threading.Event], None],
                 on_register: Callable[[], None] | None = None, wake: Callable[[], None] | None = None) -> None:
        for path in (cfg.socket_path, cfg.kubelet_path):
            if len(path.encode()) > MAX_UNIX_PATH:
                raise ValueError(f"socket path longer than {MAX_UNIX_PATH} bytes: {path}")
        self.cfg = cfg
        self._add_servicer = add_servicer
        self._on_register = on_register
        self._wake = wake  # wakes ListAndWatch streams so that they see the stop at once
        self._server: grpc.Server | None = None
        self._server_stop: threading.Event | None = None
        self._lock_fd: int | None = None
        self._kubelet_stamp: tuple[int, int] | None = None
        self._own_stamp: tuple[int, int] | None = None
        self.registered = False
        self.generation = 0  # how many times the server was (re)started

    # --- lifecycle ---

    def start(self) -> None:
        self._take_lock()
        self._serve()
        self._register_or_wait()

    def stop(self, grace: float = 1.0) -> None:
        self._stop_server(grace)
        try:
            if _stamp(self.cfg.socket_path) == self._own_stamp:
                os.unlink(self.cfg.socket_path)
        except OSError:
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def watch_once(self) -> bool:
        """Re-serve and re-register when kubelet.sock was recreated or our socket removed; True if it did."""
        kubelet = _stamp(self.cfg.kubelet_path)
        own = _stamp(self.cfg.socket_path)
        if own is not None and own == self._own_stamp and kubelet == self._kubelet_stamp and self.registered:
            return False
        if kubelet is None:
            return False  # the kubelet is down: wait for its socket
        if own is None or own != self._own_stamp:
            log.info("plugin socket removed or replaced; restarting server")
        else:
            log.info("kubelet socket recreated or not registered yet; registering again")
        self._stop_server(grace=0.5)
        self._serve()
        self._register_or_wait()
        return True

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Watch until `stop` is set (the SIGTERM handler sets it)."""
        while not stop.wait(interval):
            try:
                self.watch_once()
            except Exception:
                log.exception("watch failed; retrying")

    # --- parts ---

    def _take_lock(self) -> None:
        path = os.path.join(self.cfg.socket_dir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.cfg.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(f"another fracgpu device plugin holds {path}") from None
                time.sleep(0.1)
        self._lock_fd = fd

    def _serve(self) -> None:
        path = self.cfg.socket_path
        Path(self.cfg.socket_dir).mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of an earlier run (we hold the lock: nobody serves it)
        stop = threading.Event()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.cfg.workers,
                                                        thread_name_prefix="fracgpu-grpc"))
        self._add_servicer(server, stop)
        old_umask = os.umask(0o177)
        try:
            server.add_insecure_port(f"unix://{path}")
            server.start()
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._server, self._server_stop = server, stop
        self._own_stamp = _stamp(path)
        self.generation += 1
        log.info("serving socket=%s generation=%d", path, self.generation)

    def _stop_server(self, grace: float) -> None:
        if self._server_stop is not None:
            self._server_stop.set()
            if self._wake is not None:
                self._wake()
        if self._server is not None:
            self._server.stop(grace).wait()
        self._server = None
        self._server_stop = None
        self.registered = False

    def _register_or_wait(self) -> None:
        self._kubelet_stamp = _stamp(self.cfg.kubelet_path)
        if self._kubelet_stamp is None:
            log.info("kubelet socket not there yet path=%s", self.cfg.kubelet_path)
            return
        try:
            self.register()
        except RegistrationError as e:
            log.warning("registration failed error=%s", e)

    def register(self) -> None:
        request = api_pb2.RegisterRequest(
            version=DEVICE_PLUGIN_VERSION,
            endpoint=self.cfg.socket_name,
            resource_name=self.cfg.resource,
            options=options(),
        )
        try:
            with grpc.insecure_channel(f"unix://{self.cfg.kubelet_path}") as channel:
                api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=self.cfg.register_timeout)
        except grpc.RpcError as e:
            raise RegistrationError(f"{e.code()}: {e.details()}") from None
        self.registered = True
        log.info("registered resource=%s endpoint=%s", self.cfg.resource, self.cfg.socket_name)
        if self._on_register is not None:
            self._on_register()

"""The kubelet plugin's two sockets: DRA service and registration.

``start`` takes the plugin directory's lock (an older instance still shutting down is waited for, two live
instances would answer the kubelet with two checkpoints), serves the DRA services on
``<plugin dir>/dra.sock`` first and then the registration service on
``<registry dir>/<driver>-reg.sock``: the kubelet's pluginwatcher notices the registration socket (inotify),
calls GetInfo and connects to the DRA socket, so that one must already answer. A stale socket of an earlier
run is removed first (nobody serves it: we hold the lock). ``watch_once`` restarts a server whose socket
was removed or replaced; ``stop`` removes our sockets, which the kubelet takes as deregistration.
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

from fracgpu.api.v1beta1.names import DRA_DRIVER, DRA_PLUGINS_DIR, DRA_REGISTRY_DIR, DRA_SOCKET, dra_registration_socket
from fracgpu.deviceplugin.nodeflags import file_stamp

log = logging.getLogger(__name__)

LOCK_FILE = "driver.lock"
MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL


@dataclass(frozen=True, slots=True)
class ServerConfig:
    plugin_dir: str = f"{DRA_PLUGINS_DIR}/{DRA_DRIVER}"  # dra.sock, checkpoint.json, driver.lock
    registry_dir: str = DRA_REGISTRY_DIR  # the kubelet's pluginwatcher directory: <driver>-reg.sock
    driver: str = DRA_DRIVER  # the name registered with the kubelet
    lock_timeout: float = 30.0  # how long to wait for an older instance to let go of the plugin directory
    workers: int = 8  # gRPC worker threads of the DRA socket

    @property
    def dra_socket(self) -> str:
        return os.path.join(self.plugin_dir, DRA_SOCKET)

    @property
    def registration_socket(self) -> str:
        return os.path.join(self.registry_dir, dra_registration_socket(self.driver))



class _Socket:
    """One gRPC server on one unix socket, restartable."""

    def __init__(self, path: str, add: Callable[[grpc.Server], None], workers: int, name: str) -> None:
        self.path = path
        self.add = add
        self.workers = workers
        self.name = name
        self.server: grpc.Server | None = None
        self.stamp: tuple[int, int] | None = None
        self.generation = 0

    def serve(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # stale, from an earlier run
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers,
                                                        thread_name_prefix=f"fracgpu-{self.name}"))
        self.add(server)
        old_umask = os.umask(0o177)
        try:
            server.add_insecure_port(f"unix://{self.path}")
            server.start()
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)  # the kubelet runs as root; nobody else may prepare claims
        self.server, self.stamp = server, file_stamp(self.path)
        self.generation += 1
        log.info("serving socket=%s generation=%d", self.path, self.generation)

    def stop(self, grace: float) -> None:
        if self.server is not None:
            self.server.stop(grace).wait()
            self.server = None
        with contextlib.suppress(OSError):
            if self.stamp is not None and file_stamp(self.path) == self.stamp:
                os.unlink(self.path)
        self.stamp = None

    def intact(self) -> bool:
        return self.server is not None and self.stamp is not None and file_stamp(self.path) == self.stamp


class KubeletPluginServer:
    def __init__(self, cfg: ServerConfig, add_dra: Callable[[grpc.Server], None],
                 add_registration: Callable[[grpc.Server], None],
                 on_registration_served: Callable[[], None] | None = None) -> None:
        for path in (cfg.dra_socket, cfg.registration_socket):
            if len(path.encode()) > MAX_UNIX_PATH:
                raise ValueError(f"socket path longer than {MAX_UNIX_PATH} bytes: {path}")
        self.cfg = cfg
        self.dra = _Socket(cfg.dra_socket, add_dra, cfg.workers, "dra")
        self.registration = _Socket(cfg.registration_socket, add_registration, 2, "reg")
        self.on_registration_served = on_registration_served  # the kubelet will register the plugin anew
        self._lock_fd: int | None = None

    def take_lock(self) -> None:
        Path(self.cfg.plugin_dir).mkdir(parents=True, exist_ok=True)
        path = os.path.join(self.cfg.plugin_dir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.cfg.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(f"another fracgpu dra-driver holds {path}") from None
                time.sleep(0.1)
        self._lock_fd = fd

    def start(self) -> None:
        if self._lock_fd is None:
            self.take_lock()
        self.dra.serve()
        self.registration.serve()

    def watch_once(self) -> bool:
        """Serve again on a socket that was removed or replaced; True if it did."""
        changed = False
        for sock in (self.dra, self.registration):
            if not sock.intact():
                log.info("socket removed or replaced; serving it again socket=%s", sock.path)
                sock.stop(grace=0.5)
                sock.serve()
                changed = True
                if sock is self.registration and self.on_registration_served is not None:
                    self.on_registration_served()
        return changed

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        while not stop.wait(interval):
            try:
                self.watch_once()
            except Exception:
                log.exception("socket watch failed; retrying")

    def stop(self, grace: float = 1.0) -> None:
        # registration first: the kubelet deregisters before the DRA socket goes away
        self.registration.stop(grace)
        self.dra.stop(grace)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

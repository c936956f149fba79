"""The plugin's socket and its registration with the kubelet.

``PluginServer.start`` takes the restart lock (so that an old plugin process is gone before this
one serves: a plugin that stays connected after a re-registration can still change the device
list), removes a stale socket, serves the DevicePlugin service on its own unix socket (mode 0600:
the kubelet runs as root) and registers with kubelet.sock. ``watch_once`` notices a recreated
kubelet.sock (the kubelet restarted) or a removed own socket and then restarts the gRPC server and
registers again, once; the old server is stopped first so its ListAndWatch streams end.

The lock file lives outside the kubelet's directory (``DEVICE_PLUGIN_LOCK``): the kubelet's device
manager deletes every file there except its checkpoint when it starts (CleanupPluginDirectory), so
a lock kept there vanished with each kubelet restart, a second plugin took a fresh one, and the two
took the socket from each other every watch tick. Registration failures are retried with a growing
delay; a socket of another process at our path is taken back only after a growing delay, so a
process that ignores the lock cannot make the two re-register in a loop.
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
from fracgpu.api.v1beta1.names import (
    DEVICE_PLUGIN_LOCK,
    DEVICE_PLUGIN_VERSION,
    KUBELET_SOCKET,
    PLUGIN_SOCKET,
    RESOURCE_CORE,
)
from fracgpu.deviceplugin.nodeflags import file_stamp
from fracgpu.deviceplugin.servicer import options

log = logging.getLogger(__name__)

MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL
MAX_BACKOFF = 30.0  # seconds: the longest wait between two registration attempts


class RegistrationError(RuntimeError):
    """The kubelet refused or did not answer Register."""


class LockError(RuntimeError):
    """The restart lock cannot be taken: another plugin holds it, or its file cannot be made."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    socket_dir: str
    lock_file: str = DEVICE_PLUGIN_LOCK  # never inside socket_dir (the kubelet empties it)
    socket_name: str = PLUGIN_SOCKET
    kubelet_socket: str = KUBELET_SOCKET  # name inside socket_dir
    resource: str = RESOURCE_CORE
    register_timeout: float = 5.0
    lock_timeout: float = 30.0  # how long to wait for an old plugin process to let go
    workers: int = 8  # gRPC threads for the unary calls
    # ListAndWatch streams open at once; each holds a thread, and a new one ends the oldest (the
    # kubelet opens one per registration, so older ones are left over or stuck)
    max_streams: int = 4

    @property
    def socket_path(self) -> str:
        return os.path.join(self.socket_dir, self.socket_name)

    @property
    def kubelet_path(self) -> str:
        return os.path.join(self.socket_dir, self.kubelet_socket)



class PluginServer:
    def __init__(self, cfg: ServerConfig, add_servicer: Callable[[grpc.Server, threading.Event], None],
                 on_register: Callable[[], None] | None = None, wake: Callable[[], None] | None = None) -> None:
        for path in (cfg.socket_path, cfg.kubelet_path):
            if len(path.encode()) > MAX_UNIX_PATH:
                raise ValueError(f"socket path longer than {MAX_UNIX_PATH} bytes: {path}")
        if os.path.realpath(os.path.dirname(os.path.abspath(cfg.lock_file))) == os.path.realpath(cfg.socket_dir):
            raise ValueError(f"lock file {cfg.lock_file} is in the kubelet's device-plugins directory, which the "
                             "kubelet empties when it starts: give another path (--lock-file)")
        if cfg.max_streams < 1 or cfg.workers < 1:
            raise ValueError("the gRPC server needs at least one worker and one stream")
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
        self._register_at = 0.0  # monotonic time of the next registration attempt after a failure
        self._register_backoff = 0.5
        self._retake_at = 0.0  # monotonic time before which a socket of another process is left alone
        self._retake_backoff = 1.0
        # watch_once and stop exclude each other: a watch tick that sees the socket stop() just removed
        # must not serve again after stop() (a server left running would outlive the plugin)
        self._mu = threading.Lock()
        self._closed = False

    # --- lifecycle ---

    def lock(self, cancel: threading.Event | None = None) -> None:
        """Take the restart lock (waits for an old plugin to let go, or until `cancel` is set); raises
        LockError. Idempotent."""
        if self._lock_fd is None:
            self._take_lock(cancel or threading.Event())

    def start(self) -> None:
        self.lock()
        self._serve()
        self._register_or_wait()

    def stop(self, grace: float = 1.0) -> None:
        with self._mu:
            self._closed = True
            self._stop_server(grace)
            try:
                if file_stamp(self.cfg.socket_path) == self._own_stamp:
                    os.unlink(self.cfg.socket_path)
            except OSError:
                pass
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def watch_once(self) -> bool:
        """Re-serve and re-register when kubelet.sock was recreated or our socket removed; True if it did.

        A kubelet start deletes our socket and kubelet.sock and then creates kubelet.sock anew: that is
        one re-serve and one registration (the stamp of the new kubelet.sock is remembered), however the
        deletions and the watch ticks interleave. A failed registration is retried, without re-serving,
        after a delay that doubles up to MAX_BACKOFF.
        """
        with self._mu:
            return False if self._closed else self._watch()

    def _watch(self) -> bool:
        kubelet = file_stamp(self.cfg.kubelet_path)
        own = file_stamp(self.cfg.socket_path)
        if kubelet is None:
            return False  # the kubelet is down or emptying its directory: wait for its new socket
        now = time.monotonic()
        kubelet_new = kubelet != self._kubelet_stamp
        if own is None:
            log.info("plugin socket removed; serving again")
        elif kubelet_new:
            log.info("kubelet socket recreated (the kubelet restarted); serving again")
        elif own != self._own_stamp:
            if now < self._retake_at:
                return False
            log.error("another process serves %s although this plugin holds the lock %s; taking it back, next time "
                      "after %.0f s", self.cfg.socket_path, self.cfg.lock_file, self._retake_backoff)
            self._retake_at = now + self._retake_backoff
            self._retake_backoff = min(MAX_BACKOFF, self._retake_backoff * 2)
        elif not self.registered:
            if now < self._register_at:
                return False
            self._register_or_wait()
            return True
        else:
            return False
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

    def _take_lock(self, cancel: threading.Event) -> None:
        """flock the lock file, waiting up to lock_timeout for another plugin to let go; records our pid in it."""
        path = self.cfg.lock_file
        deadline = time.monotonic() + self.cfg.lock_timeout
        waiting = False
        while True:
            try:
                Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise LockError(f"cannot create the lock file {path}: {e.strerror}; give a writable path with "
                                "--lock-file (outside the kubelet's device-plugins directory)") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if time.monotonic() > deadline:
                    raise LockError(f"another fracgpu device plugin (pid {holder}) holds {path}; waited "
                                    f"{self.cfg.lock_timeout:.0f} s") from None
                if not waiting:
                    log.info("waiting for another device plugin to let go lock=%s holder_pid=%s", path, holder)
                    waiting = True
                if cancel.wait(0.1):
                    raise LockError(f"stopped while waiting for {path} (held by pid {holder})") from None
                continue
            # the file we locked must still be the one at the path (not removed and made anew meanwhile)
            try:
                at_path = os.stat(path)
            except OSError:
                at_path = None
            mine = os.fstat(fd)
            if at_path is None or (at_path.st_dev, at_path.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._lock_fd = fd
            return

    def _serve(self) -> None:
        path = self.cfg.socket_path
        Path(self.cfg.socket_dir).mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of an earlier run (we hold the lock: nobody serves it)
        stop = threading.Event()
        # a thread per open stream (at most max_streams) and `workers` more, so streams never starve unary calls
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.cfg.workers + self.cfg.max_streams,
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
        self._own_stamp = file_stamp(path)
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
        self._kubelet_stamp = file_stamp(self.cfg.kubelet_path)
        if self._kubelet_stamp is None:
            log.info("kubelet socket not there yet path=%s", self.cfg.kubelet_path)
            return
        try:
            self.register()
        except RegistrationError as e:
            log.warning("registration failed retry_in=%.1fs error=%s", self._register_backoff, e)
            self._register_at = time.monotonic() + self._register_backoff
            self._register_backoff = min(MAX_BACKOFF, self._register_backoff * 2)
            return
        self._register_backoff = 0.5

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

"""The reliability harness: real servers in threads, the extender over the fake API server, and an
independent checker that reads the pods' `fracgpu.io/assigned` annotations from the API server.

Used by tests/reliability, tests/fuzz/test_wire_*.py and bench/ (load, soak). Nothing here mocks our
own code: the extender is built exactly as `fracgpu extender` builds it (Scheduler + ClusterCache +
KubeWriter + make_app), only the clock and the backoff are injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_INVENTORY, DEFAULT_NAMESPACE
from fracgpu.extender.app import Deps, make_app
from fracgpu.extender.cache import ClusterCache
from fracgpu.extender.metrics import ExtenderMetrics
from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
from fracgpu.kube.client import Transport
from fracgpu.kube.retry import Backoff
from fracgpu.kube.writer import KubeWriter
from tests.fakes.apiserver import FakeApiServer

Clock = Callable[[], float]


class ServedApp:
    """An aiohttp Application served over real HTTP on 127.0.0.1 from its own thread and event loop,
    so that synchronous code (hypothesis, schemathesis, a benchmark driver) can call it."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="served-app", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServedApp:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._setup(), self.loop).result(10)
        return self

    async def _setup(self) -> None:
        # a short shutdown: stop() is a crash, requests still in flight are cut, not awaited
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def stop(self) -> None:
        """Stop serving at once (a crash of the HTTP side): open requests are cut."""
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
            self._runner = None
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()

    def __enter__(self) -> ServedApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class HttpClient:
    """A keep-alive HTTP/1.1 client, one connection; reconnects after the server closed it."""

    url: str
    timeout_s: float = 10.0
    _conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            host, port = self.url.removeprefix("http://").split(":")
            self._conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout_s)
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def post_json(self, path: str, body: Any) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, data = self.request("POST", path, raw, {"Content-Type": "application/json"})
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data.decode(errors="replace")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class LiveExtender:
    """One extender process' worth of objects over the fake API server: cache, writer, HTTP app.

    `kill()` stops it the hard way (no cleanup beyond closing its sockets); a fresh `LiveExtender`
    over the same API server is a restart (new cache, new in-memory reservations)."""

    apiserver: FakeApiServer
    config: SchedulerConfig
    clock: Clock = time.monotonic  # durations
    wall: Clock = time.time  # timestamps written into objects
    bind_timeout_s: float = 10.0
    scheduler: Scheduler = field(init=False)
    cache: ClusterCache = field(init=False)
    writer: KubeWriter = field(init=False)
    served: ServedApp = field(init=False)
    deps: Deps = field(init=False)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.config, self.clock, wall=self.wall)
        read = Transport(self.apiserver.api_client(), timeout_s=10)
        write = Transport(self.apiserver.api_client(), timeout_s=self.bind_timeout_s)
        self.writer = KubeWriter(write, component="fracgpu-extender")
        self.cache = ClusterCache(read, self.scheduler, namespace=self.config.namespace,
                                  backoff=Backoff(initial_s=0.01, cap_s=0.05), watch_timeout_s=30)
        self.deps = Deps(self.scheduler, self.writer, ExtenderMetrics(self.scheduler), ready=self.cache.synced.is_set)
        self.served = ServedApp(make_app(self.deps))

    def start(self, sync_timeout_s: float = 20.0) -> LiveExtender:
        self.cache.start()
        if not self.cache.synced.wait(sync_timeout_s):
            raise AssertionError("extender cache did not sync")
        self.served.start()
        return self

    @property
    def url(self) -> str:
        return self.served.url

    def kill(self) -> None:
        self.served.stop()
        self.cache.stop()

    def __enter__(self) -> LiveExtender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


# ---- the independent checker ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Booking:
    pod: str
    node: str
    assignment: Assignment


@dataclass
class Audit:
    """What the API server says is placed, judged without the extender's cache."""

    bookings: list[Booking]
    problems: list[str]

    @property
    def placed(self) -> set[str]:
        return {b.pod for b in self.bookings}


def audit(apiserver: FakeApiServer) -> Audit:
    """Every live pod's `fracgpu.io/assigned` against the nodes' inventories: per GPU, cores <= 100,
    VRAM <= the GPU's memory, device IDs disjoint and of that GPU, `cores` IDs per share, and the
    reservation names the node the pod is bound to. A GPU is (node, uuid): two nodes may report one
    uuid (a simulated fleet, a cloned image) and are still two GPUs."""
    gpus: dict[tuple[str, str], int] = {}  # (node, uuid) -> memory
    for n in apiserver.list_objects("nodes"):
        text = ((n.get("metadata") or {}).get("annotations") or {}).get(ANN_INVENTORY)
        if not isinstance(text, str):
            continue
        with contextlib.suppress(InvalidDocument):
            for info in NodeInventoryDoc.from_json(text).gpus:
                gpus[(n["metadata"]["name"], info.uuid)] = info.memory
    problems: list[str] = []
    bookings: list[Booking] = []
    cores: dict[tuple[str, str], int] = {}
    memory: dict[tuple[str, str], int] = {}
    owner: dict[tuple[str, str], str] = {}  # (node, device ID) -> pod
    for p in apiserver.list_objects("pods"):
        meta = p.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        text = (meta.get("annotations") or {}).get(ANN_ASSIGNED)
        node = (p.get("spec") or {}).get("nodeName") or ""
        if text is None:
            continue
        try:
            a = Assignment.from_json(text)
        except InvalidDocument as e:
            problems.append(f"{key}: unreadable reservation: {e}")
            continue
        if a.node != node:
            problems.append(f"{key}: reserved on {a.node} but bound to {node or 'nothing'}")
        bookings.append(Booking(key, node, a))
        for g in a.gpus:
            gpu = (a.node, g.uuid)
            if gpu not in gpus:
                problems.append(f"{key}: GPU {g.uuid} is not on node {a.node}")
                continue
            if len(g.device_ids) != g.cores:
                problems.append(f"{key}: {len(g.device_ids)} device IDs for {g.cores} vgpu-core on {g.uuid}")
            cores[gpu] = cores.get(gpu, 0) + g.cores
            memory[gpu] = memory.get(gpu, 0) + g.memory
            for i in g.device_ids:
                if not i.startswith(g.uuid + "::"):
                    problems.append(f"{key}: device ID {i} is not of GPU {g.uuid}")
                if (a.node, i) in owner:
                    problems.append(f"device ID {i} on {a.node} held by both {owner[(a.node, i)]} and {key}")
                owner[(a.node, i)] = key
    for (node, uuid), c in cores.items():
        if c > 100:
            problems.append(f"GPU {uuid} on {node}: {c} vgpu-core booked (> 100)")
        if memory[(node, uuid)] > gpus[(node, uuid)]:
            problems.append(f"GPU {uuid} on {node}: {memory[(node, uuid)]} bytes booked (> {gpus[(node, uuid)]})")
    return Audit(bookings, problems)


def heartbeat_off(**kw: Any) -> SchedulerConfig:
    """A SchedulerConfig for worlds without plugins (no heartbeat Leases), refreshing every call."""
    kw.setdefault("heartbeat_stale_s", 0)
    kw.setdefault("refresh_s", 0)
    kw.setdefault("namespace", DEFAULT_NAMESPACE)
    return SchedulerConfig(**kw)

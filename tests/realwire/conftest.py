"""Servers on a loopback port, plain or TLS, for clients that write as Go does (gowire.py)."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from fracgpu.extender.app import make_app
from fracgpu.servingtls import make_server_context
from tests.extender.builders import FIXTURES, node_obj
from tests.extender.conftest import World, build_world
from tests.extender.test_tls import Issued, issue, make_ca
from tests.fuzz.test_wire_cache import fuzz  # noqa: F401  (the extender over the fake API server)
from tests.realwire.gowire import Connection

PLAIN, MUTUAL_TLS, TLS = "plain HTTP", "mutual TLS", "TLS"
TRANSPORTS = [PLAIN, MUTUAL_TLS]  # the extender's: kube-scheduler presents its certificate over TLS
SCHEDULER_NAME = "fracgpu-scheduler"  # the CN of kube-scheduler's client certificate in the manifests


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued
    scheduler: Issued


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("realwire-pki")
    ca = make_ca(d, "fracgpu-ca")
    return Pki(ca, issue(d, ca, "fracgpu-extender.fracgpu-system.svc", server=True),
               issue(d, ca, SCHEDULER_NAME, server=False))


@dataclass(frozen=True)
class Listener:
    """A served app: connect to it as a Go client would (TLS: trusting its CA; mutual TLS: with
    kube-scheduler's client certificate)."""

    port: int
    client_tls: ssl.SSLContext | None

    def connect(self, timeout_s: float = 5.0) -> Connection:
        return Connection(self.port, tls=self.client_tls, timeout_s=timeout_s)


Serve = Callable[[web.Application, str], Awaitable[Listener]]


@pytest.fixture
async def serve(pki: Pki) -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, transport: str) -> Listener:
        server_tls = client_tls = None
        if transport in (TLS, MUTUAL_TLS):
            client_ca = str(pki.ca.cert) if transport == MUTUAL_TLS else None
            server_tls = make_server_context(str(pki.server.cert), str(pki.server.key), client_ca)
            client_tls = ssl.create_default_context(cafile=str(pki.ca.cert))
            if transport == MUTUAL_TLS:
                client_tls.load_cert_chain(str(pki.scheduler.cert), str(pki.scheduler.key))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
        runners.append(runner)
        return Listener(int(runner.addresses[0][1]), client_tls)

    yield start
    for r in runners:
        await r.cleanup()


def captured(name: str) -> bytes:
    """A kube-scheduler request body byte for byte as captured (indented, as the README shows)."""
    return (FIXTURES / name).read_bytes()


def lab_world(transport: str = PLAIN, **kw: Any) -> World:
    """The captured cluster: lab-node-1..3 with 8 A100-80GB each, the captured pod pending; over
    mutual TLS only kube-scheduler's certificate may call the verbs, as the manifests configure."""
    pod = dict(json.loads(captured("filter-nodenames.json"))["Pod"], kind="Pod", apiVersion="v1")
    world = build_world([node_obj(f"lab-node-{i}") for i in (1, 2, 3)] + [pod], **kw)
    if transport == MUTUAL_TLS:
        world.deps.client_names = frozenset({SCHEDULER_NAME})
    return world


async def serve_extender(serve: Serve, world: World, transport: str) -> Listener:
    return await serve(make_app(world.deps), transport)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records that carry a traceback or say ERROR: none is allowed for bad input."""
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


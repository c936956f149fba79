"""Worlds for the kube adapter tests: a fake API server with a writer pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from fracgpu.kube import client, writer
from tests.fakes.apiserver import FakeApiServer

FIXED_NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture
def transport(apiserver: FakeApiServer) -> Iterator[client.Transport]:
    t = client.Transport(client.api_client_for_host(apiserver.url), timeout_s=10.0)
    yield t
    t.close()


@pytest.fixture
def kube_writer(transport: client.Transport) -> writer.KubeWriter:
    return writer.KubeWriter(transport, component="fracgpu-test", instance="test-host",
                             clock=lambda: FIXED_NOW)

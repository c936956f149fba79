"""schemathesis against the OpenAPI descriptions in docs/openapi/, with the real apps served over HTTP.

Positive and negative cases for every operation of the extender and the webhook; each answer must
not be a server error, must use a documented status code and content type, and must match the
documented response schema. Skipped where schemathesis is not installed (it is in the `test` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fracgpu.extender.app import make_app as make_extender
from fracgpu.extender.scheduler import SchedulerConfig
from fracgpu.webhook.app import make_app as make_webhook
from tests.extender.builders import node_obj, pod_obj
from tests.extender.conftest import build_world
from tests.reliability.harness import ServedApp

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode  # noqa: E402

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SETTINGS = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def extender_url() -> Iterator[str]:
    world = build_world([node_obj("n0", 2), node_obj("n1", 2), pod_obj("p0", 50, "8Gi")],
                        config=SchedulerConfig(k=2, heartbeat_stale_s=0), body_limit=256 * 1024)
    with ServedApp(make_extender(world.deps)) as served:
        yield served.url


@pytest.fixture(scope="module")
def webhook_url() -> Iterator[str]:
    with ServedApp(make_webhook()) as served:
        yield served.url


def _operations(name: str) -> list[Any]:
    schema = schemathesis.openapi.from_path(OPENAPI / name)
    return [r.ok() for r in schema.get_all_operations()]


def _run(op: Any, url: str, mode: Any) -> None:
    @SETTINGS
    @given(case=op.as_strategy(generation_mode=mode))
    def prop(case: Any) -> None:
        response = case.call(base_url=url, timeout=10)
        case.validate_response(response, checks=CHECKS)

    prop()


EXTENDER_OPS = _operations("extender.yaml")
WEBHOOK_OPS = _operations("webhook.yaml")
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
# (the fixture serving the app, an operation of its description)
SERVED_OPS = [("extender_url", op) for op in EXTENDER_OPS] + [("webhook_url", op) for op in WEBHOOK_OPS]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize(("served", "op"), SERVED_OPS, ids=[f"{s.removesuffix('_url')}-{o.label}" for s, o in SERVED_OPS])
def test_app_conforms(request: pytest.FixtureRequest, served: str, op: Any, mode: Any) -> None:
    if mode is GenerationMode.NEGATIVE and op.method.upper() == "GET":
        pytest.skip("nothing to negate in a GET without parameters")
    _run(op, request.getfixturevalue(served), mode)


def test_every_served_route_is_described() -> None:
    described = {o.label for o in EXTENDER_OPS}
    assert described == {"POST /filter", "POST /prioritize", "POST /bind", "GET /healthz", "GET /readyz",
                         "GET /metrics"}
    assert {o.label for o in WEBHOOK_OPS} == {"POST /mutate", "GET /healthz", "GET /metrics"}
    assert st  # hypothesis strategies stay importable alongside schemathesis

"""The admission webhook over real HTTPS, with AdmissionReviews written as the API server (Go) does."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from fracgpu.webhook.app import WebhookConfig, make_app
from tests.realwire.conftest import TLS, Listener, Serve, tracebacks
from tests.realwire.gowire import GO_CHUNKED, GO_LENGTH, ONE_PIECE, Framing, sparse, wire_bytes
from tests.webhook.reviews import container, pod, review


def large_review(env_vars: int) -> bytes:
    """A Pod CREATE asking for a GPU share whose container carries `env_vars` variables (~50 B each)."""
    c = container(core="50", memory="8Gi")
    c["env"] = [{"name": f"SETTING_{i:05d}", "value": f"value-{i:05d}-" + "x" * 16} for i in range(env_vars)]
    return json.dumps(review(pod(c), uid="u-large")).encode()


async def post(listener: Listener, body: bytes, framing: Framing) -> tuple[int, Any]:
    def run() -> tuple[int, Any]:
        with listener.connect() as conn:
            answer = conn.post("/mutate", body, framing)
            return answer.status, answer.json()

    return await asyncio.to_thread(run)


async def test_a_large_review_in_go_writes_answers_as_in_one_piece(serve: Serve) -> None:
    """A regression guard more than a reproduction: the webhook already read with request.read()."""
    listener = await serve(make_app(WebhookConfig()), TLS)
    body = large_review(20_000)
    assert len(body) > 1024 * 1024
    whole = await post(listener, body, ONE_PIECE)
    assert whole[0] == 200 and whole[1]["response"]["uid"] == "u-large" and whole[1]["response"]["patch"], whole
    for framing in (sparse(GO_LENGTH, 16), sparse(GO_CHUNKED, 16)):
        assert await post(listener, body, framing) == whole, framing


LIMIT = 64 * 1024


@pytest.mark.parametrize("framing", [GO_LENGTH, GO_CHUNKED], ids=str)
async def test_a_review_over_the_limit_is_413_saying_so_in_json(serve: Serve, framing: Framing) -> None:
    listener = await serve(make_app(WebhookConfig(max_body_bytes=LIMIT)), TLS)
    status, out = await post(listener, large_review(2_000), framing)
    assert status == 413, out
    assert f"exceeds the limit of {LIMIT} bytes" in out["error"]
    status, out = await post(listener, large_review(10), framing)
    assert status == 200 and out["response"]["allowed"] is True


async def test_a_stalled_review_is_answered_408_after_the_idle_timeout(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    listener = await serve(make_app(WebhookConfig(body_idle_timeout_s=0.3)), TLS)
    body = large_review(100)
    data = wire_bytes("/mutate", body, GO_LENGTH)

    def stall() -> tuple[int, Any, float]:
        with listener.connect(timeout_s=3.0) as conn:  # before the fix the webhook waited forever
            conn.send(data[: len(data) - len(body) // 2], GO_LENGTH)
            start = time.monotonic()
            answer = conn.read_answer()
            return answer.status, answer.json(), time.monotonic() - start

    status, out, waited = await asyncio.to_thread(stall)
    assert status == 408 and "then nothing for 0.3 s" in out["error"], out
    assert 0.25 < waited < 2.5
    assert tracebacks(caplog) == []


async def test_a_client_that_hangs_up_mid_review_leaves_no_traceback(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    listener = await serve(make_app(WebhookConfig()), TLS)
    body = large_review(100)
    data = wire_bytes("/mutate", body, GO_LENGTH)

    def hang_up_then_retry() -> tuple[int, Any]:
        with listener.connect() as conn:
            conn.send(data[: len(data) - len(body) // 2], GO_LENGTH)
        with listener.connect() as conn:
            answer = conn.post("/mutate", body, GO_LENGTH)
            return answer.status, answer.json()

    status, out = await asyncio.to_thread(hang_up_then_retry)
    assert status == 200 and out["response"]["uid"] == "u-large", out

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "refused status=400" in r.getMessage()]

    deadline = time.monotonic() + 2.0
    while not logged() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert len(logged()) == 1 and "request body could not be read" in logged()[0], logged()
    assert tracebacks(caplog) == []

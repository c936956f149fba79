"""`fracgpu extender` with request bodies that arrive as kube-scheduler sends them: in 4 KiB writes.

Before issue 13 the extender read `content.read(limit + 1)`, which returns what is buffered: the
3-node Nodes capture failed 10-58 % of the time on a real cluster, 200 NodeNames over TLS always.
Every answer here must equal the answer to the same bytes sent in one piece.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from fracgpu.extender.decide import UNKNOWN_NODE
from tests.realwire.conftest import TRANSPORTS, Serve, captured, lab_world, serve_extender, tracebacks
from tests.realwire.gowire import GO_CHUNKED, GO_LENGTH, ONE_PIECE, Framing, sparse, wire_bytes

Request = tuple[str, bytes]
Answered = tuple[int, Any]

CAPTURED: list[Request] = [
    ("/filter", captured("filter-nodes.json")),
    ("/filter", captured("filter-nodenames.json")),
    ("/prioritize", captured("prioritize-nodes.json")),
    ("/prioritize", captured("prioritize-nodenames.json")),
    ("/bind", captured("bind.json")),
]
LAB = ["lab-node-1", "lab-node-2", "lab-node-3"]


async def answers(serve: Serve, transport: str, requests: list[Request], framing: Framing,
                  **world_kw: Any) -> tuple[list[Answered], list[tuple[str, str, str]]]:
    """The answers of a fresh lab extender to `requests`, sent in order on one keep-alive connection
    (as Go's transport reuses it), and the bindings it made."""
    world = lab_world(transport, **world_kw)
    listener = await serve_extender(serve, world, transport)

    def run() -> list[Answered]:
        with listener.connect() as conn:
            return [(a.status, a.json()) for a in (conn.post(path, body, framing) for path, body in requests)]

    got = await asyncio.to_thread(run)
    return got, [b[:3] for b in world.binder.bindings]


async def assert_same_as_one_piece(serve: Serve, transport: str, requests: list[Request],
                                   framings: tuple[Framing, ...]) -> list[Answered]:
    whole, whole_bound = await answers(serve, transport, requests, ONE_PIECE)
    for framing in framings:
        got, bound = await answers(serve, transport, requests, framing)
        for i, (g, w) in enumerate(zip(got, whole, strict=True)):
            assert g == w, f"{framing}: request {i} ({requests[i][0]}) answered {str(g)[:300]}"
        assert bound == whole_bound, framing
    return whole


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_captured_scheduler_requests_answer_as_in_one_piece(serve: Serve, transport: str) -> None:
    whole = await assert_same_as_one_piece(serve, transport, CAPTURED, (GO_LENGTH, GO_CHUNKED))
    assert [status for status, _ in whole] == [200] * len(CAPTURED)
    (_, nodes), (_, names), _, _, (_, bind) = whole
    assert len(names["NodeNames"]) == 1 and set(names["NodeNames"]) <= set(LAB) and names["Error"] == "", names
    assert len(nodes["Nodes"]["items"]) == 1 and nodes["Error"] == "", nodes["Error"]
    assert bind == {"Error": ""}


def nodenames_body(n: int) -> bytes:
    """The captured NodeNames filter with n more names (a cluster of that size; unknown to the cache)."""
    body = json.loads(captured("filter-nodenames.json"))
    body["NodeNames"] += [f"node-{i:05d}" for i in range(n)]
    return json.dumps(body).encode()


def nodes_body(n: int) -> bytes:
    """The captured Nodes filter with n more full Node objects (nodeCacheCapable: false)."""
    body = json.loads(captured("filter-nodes.json"))
    template = json.dumps(body["Nodes"]["items"][0])
    for i in range(n):
        item = json.loads(template)
        item["metadata"]["name"] = f"node-{i:05d}"
        body["Nodes"]["items"].append(item)
    return json.dumps(body).encode()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_50000_node_nodenames_body_answers_as_in_one_piece(serve: Serve, transport: str) -> None:
    body = nodenames_body(50_000)
    assert len(body) > 700_000
    framings = (sparse(GO_LENGTH, 16), sparse(GO_CHUNKED, 16))
    [(status, out)] = await assert_same_as_one_piece(serve, transport, [("/filter", body)], framings)
    assert status == 200 and out["Error"] == "" and set(out["NodeNames"]) <= set(LAB), out["Error"]
    assert len(out["FailedNodes"]) == 50_000 and out["FailedNodes"]["node-49999"] == UNKNOWN_NODE


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_multi_megabyte_nodes_body_answers_as_in_one_piece(serve: Serve, transport: str) -> None:
    body = nodes_body(2_000)
    assert len(body) > 3 * 1024 * 1024
    framings = (sparse(GO_LENGTH, 32), sparse(GO_CHUNKED, 32))
    [(status, out)] = await assert_same_as_one_piece(serve, transport, [("/filter", body)], framings)
    assert status == 200 and out["Error"] == "", out["Error"]
    assert {n["metadata"]["name"] for n in out["Nodes"]["items"]} <= set(LAB)
    assert len(out["FailedNodes"]) == 2_000


LIMIT = 64 * 1024


@pytest.mark.parametrize("framing", [GO_LENGTH, GO_CHUNKED], ids=str)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_body_over_the_limit_is_413_naming_the_limit(serve: Serve, transport: str, framing: Framing) -> None:
    body = nodenames_body(8_000)  # valid JSON, about 100 KiB
    assert len(body) > LIMIT
    [(status, out)] = (await answers(serve, transport, [("/filter", body)], framing, body_limit=LIMIT))[0]
    assert status == 413, out
    assert f"exceeds the limit of {LIMIT} bytes" in out["Error"]
    # under the limit the same extender answers as usual
    small = nodenames_body(100)
    [(status, out)] = (await answers(serve, transport, [("/filter", small)], framing, body_limit=LIMIT))[0]
    assert status == 200 and out["Error"] == ""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_client_that_stalls_mid_body_is_answered_408_after_the_idle_timeout(
        serve: Serve, transport: str, caplog: pytest.LogCaptureFixture) -> None:
    body = captured("filter-nodes.json")
    world = lab_world(transport)
    world.deps.body_idle_timeout_s = 0.3
    listener = await serve_extender(serve, world, transport)
    data = wire_bytes("/filter", body, GO_LENGTH)
    sent = len(data) - len(body) + len(body) // 2

    def stall() -> tuple[int, Any, float]:
        with listener.connect(timeout_s=5.0) as conn:
            conn.send(data[:sent], GO_LENGTH)
            start = time.monotonic()
            answer = conn.read_answer()
            return answer.status, answer.json(), time.monotonic() - start

    status, out, waited = await asyncio.to_thread(stall)
    assert status == 408, out
    assert f"{len(body) // 2} bytes of {len(body)} received, then nothing for 0.3 s" in out["Error"]
    assert 0.25 < waited < 3.0
    assert tracebacks(caplog) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_client_that_hangs_up_mid_body_leaves_no_traceback_and_the_next_is_served(
        serve: Serve, transport: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    body = captured("filter-nodes.json")
    world = lab_world(transport)
    listener = await serve_extender(serve, world, transport)
    data = wire_bytes("/filter", body, GO_LENGTH)

    def hang_up_then_retry() -> tuple[int, Any]:
        with listener.connect() as conn:
            conn.send(data[: len(data) - len(body) // 2], GO_LENGTH)
        with listener.connect() as conn:
            answer = conn.post("/filter", body, GO_LENGTH)
            return answer.status, answer.json()

    status, out = await asyncio.to_thread(hang_up_then_retry)
    assert status == 200 and out["Error"] == "", out

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "bad request" in r.getMessage()]

    deadline = time.monotonic() + 2.0
    while not logged() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    # the operator reads that the client went away, not that kube-scheduler sent something not JSON
    assert len(logged()) == 1 and "request body could not be read" in logged()[0], logged()
    assert tracebacks(caplog) == []

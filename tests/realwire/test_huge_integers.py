"""JSON integers over Python's int-string conversion limit (4,300 digits) wherever fracgpu decodes
JSON that someone else wrote.

`json.loads` raises a plain ValueError for them, which none of the decoders caught: the webhook
answered 500 with a traceback, the extender "internal error" with a traceback, and an annotation
with one made the cache's watch handler fail on every event of that object (issue 13, defect 6).
The Kubernetes client said only "not JSON" for them, and let a RecursionError (deep nesting) out
of its error, list and watch decoding.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_INVENTORY
from fracgpu.core.records import NODE_BAD_INVENTORY
from fracgpu.kube.client import Transport, api_client_for_host
from fracgpu.kube.errors import KubeAPIError, ServerError, Unavailable
from fracgpu.webhook.app import WebhookConfig, make_app
from tests.extender.builders import inventory
from tests.fuzz.test_wire_cache import VICTIM_ASSIGNED, CacheFuzz
from tests.poll import eventually
from tests.realwire.conftest import PLAIN, TLS, Listener, Serve, captured, lab_world, serve_extender, tracebacks
from tests.realwire.gowire import GO_LENGTH
from tests.webhook.reviews import container, pod, review

DIGITS = 5_000
assert DIGITS > sys.get_int_max_str_digits() > 0
HUGE = "9" * DIGITS
TOO_LARGE = f"({DIGITS} digits, at most {sys.get_int_max_str_digits()})"


def with_huge(doc: Any, marker: str = "@HUGE@") -> bytes:
    """`doc` as JSON with the string `marker` replaced by a 5,000-digit integer."""
    return json.dumps(doc).replace(json.dumps(marker), HUGE).encode()


async def post(listener: Listener, path: str, body: bytes) -> tuple[int, Any]:
    def run() -> tuple[int, Any]:
        with listener.connect() as conn:
            answer = conn.post(path, body, GO_LENGTH)
            return answer.status, answer.json()

    return await asyncio.to_thread(run)


async def test_the_extender_answers_400_naming_the_field(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    listener = await serve_extender(serve, lab_world(), PLAIN)
    body = json.loads(captured("filter-nodenames.json"))
    body["Pod"]["spec"]["priority"] = "@HUGE@"
    for path in ("/filter", "/prioritize"):
        status, out = await post(listener, path, with_huge(body))
        assert status == 400, out
        assert out["Error"] == f"bad request: request body: number too large at Pod.spec.priority {TOO_LARGE}"
    bind = json.loads(captured("bind.json"))
    bind["PodUID"] = "@HUGE@"
    status, out = await post(listener, "/bind", with_huge(bind))
    assert (status, out["Error"]) == (400, f"bad request: request body: number too large at PodUID {TOO_LARGE}")
    assert tracebacks(caplog) == []


async def test_the_webhook_answers_400_naming_the_field(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    listener = await serve(make_app(WebhookConfig()), TLS)
    doc = review(pod(container(core="50")), uid="u-huge")
    doc["request"]["object"]["spec"]["containers"][0]["ports"] = [{"containerPort": "@HUGE@"}]
    status, out = await post(listener, "/mutate", with_huge(doc))
    assert status == 400, out
    assert out["error"] == f"body: number too large at request.object.spec.containers[0].ports[0].containerPort {TOO_LARGE}"
    assert tracebacks(caplog) == []


# ---- annotations, decoded where the extender's cache reads them (list+watch over HTTP) -------------

def huge_inventory() -> str:
    doc = json.loads(inventory("fz", 2).to_json())
    doc["gpus"][1]["memory"] = "@HUGE@"
    return with_huge(doc).decode()


def huge_assigned() -> str:
    doc = json.loads(VICTIM_ASSIGNED)
    doc["gpus"][0]["cores"] = "@HUGE@"
    return with_huge(doc).decode()


@pytest.mark.parametrize(("text", "parse", "where"), [
    (huge_inventory(), NodeInventoryDoc.from_json, "inventory: number too large at gpus[1].memory"),
    (huge_assigned(), Assignment.from_json, "assigned: number too large at gpus[0].cores"),
], ids=["inventory", "assigned"])
def test_an_annotation_is_an_invalid_document_naming_the_field(text: str, parse: Any, where: str) -> None:
    with pytest.raises(InvalidDocument) as e:
        parse(text)
    assert str(e.value) == f"{where} {TOO_LARGE}"


def test_a_node_annotation_is_a_reasoned_refusal(fuzz: CacheFuzz, caplog: pytest.LogCaptureFixture) -> None:
    text = huge_inventory()
    fuzz.apiserver.patch_object("nodes", "fz", {"metadata": {"annotations": {ANN_INVENTORY: text}}})
    eventually(lambda: (n := fuzz.ext.scheduler.cached_node("fz")) is not None and n.inventory_text == text, timeout_s=3, what="inventory seen")
    assert fuzz.filter()["FailedAndUnresolvableNodes"]["fz"] == NODE_BAD_INVENTORY
    node = fuzz.ext.scheduler.cached_node("fz")
    assert node is not None and f"number too large at gpus[1].memory {TOO_LARGE}" in node.inventory_error
    assert tracebacks(caplog) == [] and not [r for r in caplog.records if "handler failed" in r.getMessage()]


def test_a_pod_annotation_is_a_reasoned_refusal(fuzz: CacheFuzz, caplog: pytest.LogCaptureFixture) -> None:
    before = fuzz.free()
    text = huge_assigned()
    fuzz.apiserver.patch_object("pods", "victim", {"metadata": {"annotations": {ANN_ASSIGNED: text}}},
                                 namespace="default")
    fuzz.seen_pods("huge")
    # the cache read the event without failing (the decoder's text: test_an_annotation_is_an_invalid_document_naming_the_field)
    # and keeps the reservation it already held for the pod: nothing freed, nothing charged twice
    assert fuzz.free() == before
    fuzz.apiserver.patch_object("pods", "victim", {"metadata": {"annotations": {ANN_ASSIGNED: VICTIM_ASSIGNED}}},
                                 namespace="default")
    fuzz.seen_pods("back")
    assert fuzz.free() == before
    assert tracebacks(caplog) == [] and not [r for r in caplog.records if "handler failed" in r.getMessage()]


# ---- answers the Kubernetes client reads (an API server, or a proxy in front of it) ----------------

class CannedAnswers(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that answers every GET with one status and body."""

    daemon_threads = True

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body
        super().__init__(("127.0.0.1", 0), _Canned)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class _Canned(BaseHTTPRequestHandler):
    server: CannedAnswers

    def do_GET(self) -> None:
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


DEEP = b"[" * 100_000


@dataclass(frozen=True)
class KubeCase:
    name: str
    watch: bool
    status: int
    body: bytes
    error: type[KubeAPIError]
    message: str


KUBE_CASES = [
    KubeCase("list answer with a huge integer", False, 200, with_huge({"items": [{"spec": {"x": "@HUGE@"}}]}),
             ServerError, f"GET /api/v1/nodes: answer: number too large at items[0].spec.x {TOO_LARGE}"),
    KubeCase("list answer nested too deeply", False, 200, DEEP, ServerError,
             "GET /api/v1/nodes: answer: nested too deeply to decode"),
    KubeCase("error answer nested too deeply", False, 500, DEEP, ServerError, "Internal Server Error"),
    KubeCase("watch event with a huge integer", True, 200,
             with_huge({"type": "ADDED", "object": {"spec": {"x": "@HUGE@"}}}) + b"\n", Unavailable,
             f"watch stream broken: watch event: number too large at object.spec.x {TOO_LARGE}"),
    KubeCase("watch event nested too deeply", True, 200, DEEP + b"\n", Unavailable,
             "watch stream broken: watch event: nested too deeply to decode"),
]


@pytest.mark.parametrize("case", KUBE_CASES, ids=lambda c: c.name)
def test_the_kubernetes_client_turns_hostile_answers_into_its_errors(case: KubeCase) -> None:
    server = CannedAnswers(case.status, case.body)
    transport = Transport(api_client_for_host(f"http://127.0.0.1:{server.server_address[1]}"), timeout_s=5)
    try:
        with pytest.raises(case.error) as e:
            if case.watch:
                stream = transport.watch("/api/v1/nodes")
                try:
                    list(stream)
                finally:
                    stream.close()
            else:
                transport.request("GET", "/api/v1/nodes")
        assert case.message in str(e.value)
    finally:
        transport.close()
        server.stop()

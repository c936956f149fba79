"""Hostile AdmissionReview bodies for the webhook's /mutate over real HTTP.

Whatever the body: a 400 with a message when it is not an admission.k8s.io/v1 AdmissionReview
request, otherwise a 200 AdmissionReview response that echoes the uid and either allows the pod
(maybe with the schedulerName patch) or refuses it with a reason — never a 500, and the server
keeps answering.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fracgpu.webhook.app import WebhookConfig, make_app
from tests.fuzz.test_wire_extender import annotation_value, json_any, json_leaf, quantity
from tests.reliability.harness import HttpClient, ServedApp
from tests.webhook.reviews import container, pod, review

LIMIT = 64 * 1024
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.fixture(scope="module")
def webhook() -> Iterator[HttpClient]:
    with ServedApp(make_app(WebhookConfig(max_body_bytes=LIMIT))) as served:
        http = HttpClient(served.url)
        yield http
        http.close()


def _post(http: HttpClient, body: bytes) -> tuple[int, Any]:
    return http.post_json("/mutate", body)


def _check(sent: Any, status: int, out: Any) -> None:
    assert status in (200, 400, 413), (status, out)
    if status != 200:
        assert out, out  # a message, not an empty page
        return
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview", out
    resp = out["response"]
    assert resp["uid"] == sent["request"]["uid"]
    if resp["allowed"]:
        if "patch" in resp:
            patch = json.loads(base64.b64decode(resp["patch"]))
            assert patch == [{"op": "add", "path": "/spec/schedulerName", "value": "fracgpu-scheduler"}], patch
    else:
        assert resp["status"]["code"] == 422 and resp["status"]["message"].startswith("fracgpu: "), resp


@st.composite
def hostile_review(draw: st.DrawFn) -> dict[str, Any]:
    amounts = {}
    if draw(st.booleans()):
        amounts["core"] = draw(quantity)
    if draw(st.booleans()):
        amounts["memory"] = draw(quantity)
    c = container(**{k: v for k, v in amounts.items() if isinstance(v, str)})
    for k, v in amounts.items():  # non-string amounts go in raw
        if not isinstance(v, str):
            name = {"core": "fracgpu.io/vgpu-core", "memory": "fracgpu.io/vgpu-memory"}[k]
            c["resources"]["limits"][name] = v
            c["resources"]["requests"][name] = v
    init: tuple[dict[str, Any], ...] = ()
    if draw(st.integers(0, 3)) == 0:
        init = ({**copy.deepcopy(c), "name": "i", "restartPolicy": draw(st.sampled_from(["Always", "x", None]))},)
    p = pod(c, annotations={"fracgpu.io/gpu-model": draw(annotation_value)} if draw(st.booleans()) else None,
            scheduler=draw(st.sampled_from(["default-scheduler", "fracgpu-scheduler", "other", ""])),
            node_name=draw(st.one_of(st.none(), st.just("node-a"))), init=init)
    r = review(p, uid=draw(st.text(min_size=1, max_size=20)),
               operation=draw(st.sampled_from(["CREATE", "CREATE", "UPDATE", "DELETE", "bogus"])))
    shape = draw(st.integers(0, 12))
    req = r["request"]
    if shape == 0:
        req["object"] = draw(json_any)
    elif shape == 1:
        req["object"]["spec"] = draw(json_any)
    elif shape == 2:
        req["object"]["spec"]["containers"] = draw(json_any)
    elif shape == 3:
        req["object"]["spec"]["containers"][0]["resources"] = draw(json_any)
    elif shape == 4:
        req["kind"] = draw(json_any)
    elif shape == 5:
        req["subResource"] = draw(json_leaf)
    elif shape == 6:
        req["object"]["spec"]["nodeName"] = draw(json_leaf)
    elif shape == 7:
        req["object"]["spec"]["schedulerName"] = draw(json_leaf)
    return r


@SETTINGS
@given(body=st.one_of(st.binary(max_size=200), json_any.map(lambda v: json.dumps(v).encode()),
                      hostile_review().map(lambda r: json.dumps({**r, "apiVersion": "admission.k8s.io/v1beta1"})
                                           .encode())))
def test_garbage_is_a_400_with_a_message(webhook: HttpClient, body: bytes) -> None:
    status, out = _post(webhook, body)
    assert status in (400, 413), (status, out)
    assert out


@SETTINGS
@given(r=hostile_review())
def test_hostile_reviews_are_answered_or_refused_with_a_reason(webhook: HttpClient, r: dict[str, Any]) -> None:
    status, out = _post(webhook, json.dumps(r).encode())
    _check(r, status, out)


def test_oversized_and_deep_bodies(webhook: HttpClient) -> None:
    big = json.dumps(review(pod(container(core="50")), uid="big") | {"pad": "x" * LIMIT}).encode()
    status, out = _post(webhook, big)
    assert status == 413, (status, out)
    status, out = _post(webhook, b"[" * 50_000)  # nesting deeper than Python's JSON recursion limit
    assert status == 400, (status, out)
    status, _ = webhook.request("GET", "/healthz")
    assert status == 200

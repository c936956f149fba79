"""The webhook over real HTTPS, with AdmissionReview bodies shaped as the API server sends them."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fracgpu.api.v1beta1.names import protected_pod_keys_refusal
from fracgpu.webhook.app import WebhookConfig, make_app
from fracgpu.webhook.main import CertificateReloader, main, make_ssl_context
from tests.webhook.reviews import container, pod, review
from tests.webhook.tls import write_self_signed

SCHEDULER_PATCH = [{"op": "add", "path": "/spec/schedulerName", "value": "fracgpu-scheduler"}]
# the replicaset-controller creates the pods of reviews.review(); the admission policy says exactly this
FORGED = protected_pod_keys_refusal("system:serviceaccount:kube-system:replicaset-controller")


@dataclass
class Webhook:
    url: str
    client: aiohttp.ClientSession
    server_ctx: ssl.SSLContext
    cert: Path
    key: Path

    async def post(self, body: bytes | dict[str, Any]) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.client.post(f"{self.url}/mutate", data=data,
                                    headers={"Content-Type": "application/json"}) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except json.JSONDecodeError:
                return r.status, text


@pytest.fixture
async def webhook_over_tls(tmp_path: Path) -> AsyncIterator[Webhook]:
    """The webhook app behind a real TLS listener on 127.0.0.1, and a client that trusts its cert."""
    cert, key = write_self_signed(tmp_path / "tls")
    server_ctx = make_ssl_context(str(cert), str(key))
    runner = web.AppRunner(make_app(WebhookConfig(max_body_bytes=64 * 1024)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as client:
        yield Webhook(f"https://127.0.0.1:{port}", client, server_ctx, cert, key)
    await runner.cleanup()


@dataclass(frozen=True)
class Case:
    name: str
    body: dict[str, Any]
    allowed: bool
    patch: list[dict[str, Any]] | None = None
    message: tuple[str, ...] = ()  # substrings of the refusal
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("share of one GPU is sent to fracgpu-scheduler",
         review(pod(container(core="50", memory="8Gi")), uid="u-share"), True, SCHEDULER_PATCH),
    Case("whole GPUs are sent to fracgpu-scheduler",
         review(pod(container(core="200")), uid="u-whole"), True, SCHEDULER_PATCH),
    Case("a sidecar's share counts too",
         review(pod(container(cpu="1"), init=({**container("proxy", core="10"), "restartPolicy": "Always"},)),
                uid="u-sidecar"), True, SCHEDULER_PATCH),
    Case("already on fracgpu-scheduler: nothing to patch",
         review(pod(container(core="50"), scheduler="fracgpu-scheduler"), uid="u-already"), True),
    Case("a CPU-only pod is left alone",
         review(pod(container(cpu="2")), uid="u-cpu"), True),
    Case("an UPDATE is left alone",
         review(pod(container(core="50")), uid="u-update", operation="UPDATE"), True),
    Case("another kind is left alone",
         review({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}}, uid="u-cm",
                kind={"group": "", "version": "v1", "kind": "ConfigMap"},
                resource={"group": "", "version": "v1", "resource": "configmaps"}), True),
    Case("a subresource is left alone",
         review(pod(container(core="50")), uid="u-sub", sub_resource="ephemeralcontainers"), True),
    Case("150 vgpu-core is neither a share nor whole GPUs",
         review(pod(container(core="150")), uid="u-150"), False,
         message=("fracgpu.io/vgpu-core 150", "multiple of 100")),
    Case("vgpu-memory without vgpu-core",
         review(pod(container(memory="8Gi")), uid="u-memonly"), False,
         message=("fracgpu.io/vgpu-memory is set without fracgpu.io/vgpu-core",)),
    Case("vgpu-core 0 asks for no GPU",
         review(pod(container(core="0")), uid="u-zero"), False, message=("vgpu-core 0",)),
    Case("a bad fracgpu.io/gpu-model annotation",
         review(pod(container(core="50"), annotations={"fracgpu.io/gpu-model": "A100 80GB"}), uid="u-model"),
         False, message=("fracgpu.io/gpu-model", "'A100 80GB'")),
    Case("a bad fracgpu.io/topology annotation",
         review(pod(container(core="200"), annotations={"fracgpu.io/topology": "strict"}), uid="u-topo"),
         False, message=("fracgpu.io/topology", "'strict'")),
    Case("a request different from its limit",
         review(pod({**container(core="50"), "resources": {"requests": {"fracgpu.io/vgpu-core": "50"},
                                                           "limits": {"fracgpu.io/vgpu-core": "60"}}}),
                uid="u-overcommit"), False, message=("differs from its limit",)),
    Case("spec.nodeName at creation bypasses the scheduler",
         review(pod(container(core="50"), node_name="gpu-1"), uid="u-nodename"), False,
         message=("spec.nodeName", "'gpu-1'", "fracgpu-scheduler")),
    Case("a forged reservation",
         review(pod(container(core="50"), annotations={"fracgpu.io/assigned": '{"node": "gpu-1"}'}), uid="u-forged"),
         False, message=(FORGED,)),
    Case("a forged phase on a pod that names fracgpu-scheduler",
         review(pod(container(core="50"), scheduler="fracgpu-scheduler", annotations={"fracgpu.io/phase": "allocated"}),
                uid="u-phase"), False, message=(FORGED,)),
    Case("an empty forged phase is still a forgery",
         review(pod(container(core="100"), annotations={"fracgpu.io/phase": ""}), uid="u-empty"), False,
         message=(FORGED,)),
    Case("user annotations are fine",
         review(pod(container(core="50"), annotations={"fracgpu.io/gpu-model": "A100*", "team": "x"}), uid="u-user"),
         True, SCHEDULER_PATCH),
    Case("another scheduler is refused, not overwritten",
         review(pod(container(core="50"), scheduler="volcano"), uid="u-volcano"), False,
         message=("'volcano'", "fracgpu-scheduler")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_mutate(webhook_over_tls: Webhook, case: Case) -> None:
    status, answer = await webhook_over_tls.post(case.body)
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == case.body["request"]["uid"]
    assert response["allowed"] is case.allowed
    if case.patch is None:
        assert "patch" not in response
    else:
        assert response["patchType"] == "JSONPatch"
        assert json.loads(base64.b64decode(response["patch"])) == case.patch
    if not case.allowed:
        assert response["status"]["code"] == 422
        for text in case.message:
            assert text in response["status"]["message"]
        if FORGED in case.message:
            assert response["status"]["message"] == FORGED  # not a word more than the policy's


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("not JSON", b"{not json", "not JSON"),
        ("not UTF-8", b"\xff\xfe", "not JSON"),
        ("a JSON list", b"[]", "not a JSON object"),
        ("another kind", {"kind": "Pod", "apiVersion": "v1"}, "expected 'AdmissionReview'"),
        ("admission.k8s.io/v1beta1", {**review(pod()), "apiVersion": "admission.k8s.io/v1beta1"},
         "only 'admission.k8s.io/v1'"),
        ("no request", {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}, "no request"),
        ("no uid", {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": ""}},
         "no uid"),
        ("a pod CREATE without object", {**review(pod()), "request": {**review(pod())["request"], "object": None}},
         "no object"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_bad_input_is_400_with_a_message(
    webhook_over_tls: Webhook, name: str, body: bytes | dict[str, Any], message: str
) -> None:
    status, answer = await webhook_over_tls.post(body)
    assert status == 400, name
    assert message in answer["error"]


async def test_a_body_over_the_limit_is_413(webhook_over_tls: Webhook) -> None:
    status, _ = await webhook_over_tls.post(b"x" * (65 * 1024))
    assert status == 413


async def test_healthz_and_metrics(webhook_over_tls: Webhook) -> None:
    await webhook_over_tls.post(review(pod(container(core="50"))))
    await webhook_over_tls.post(review(pod(container(core="150"))))
    await webhook_over_tls.post(b"nope")
    async with webhook_over_tls.client.get(f"{webhook_over_tls.url}/healthz") as r:
        assert r.status == 200
    async with webhook_over_tls.client.get(f"{webhook_over_tls.url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    assert 'fracgpu_webhook_requests_total{outcome="patched"} 1.0' in text
    assert 'fracgpu_webhook_requests_total{outcome="rejected"} 1.0' in text
    assert 'fracgpu_webhook_requests_total{outcome="bad_request"} 1.0' in text
    assert "fracgpu_webhook_request_seconds_count 3.0" in text


async def test_plain_http_is_not_served(webhook_over_tls: Webhook) -> None:
    plain = webhook_over_tls.url.replace("https://", "http://")
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.ClientError):
            async with client.get(f"{plain}/healthz") as r:
                await r.read()


async def test_a_rotated_certificate_is_served_after_reload(webhook_over_tls: Webhook, tmp_path: Path) -> None:
    reloader = CertificateReloader(webhook_over_tls.server_ctx, str(webhook_over_tls.cert),
                                   str(webhook_over_tls.key))
    assert reloader.check() is False  # nothing changed yet
    new_cert, new_key = write_self_signed(tmp_path / "rotated", common_name="rotated.fracgpu-system.svc")
    webhook_over_tls.cert.write_bytes(new_cert.read_bytes())
    webhook_over_tls.key.write_bytes(new_key.read_bytes())
    assert reloader.check() is True
    trusts_new_only = ssl.create_default_context(cafile=str(new_cert))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusts_new_only)) as client,
        client.get(f"{webhook_over_tls.url}/healthz") as r,
    ):
        assert r.status == 200


def test_a_half_written_pair_keeps_the_old_certificate(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    reloader = CertificateReloader(make_ssl_context(str(cert), str(key)), str(cert), str(key))
    cert.write_text("-----BEGIN CERTIFICATE-----\ntruncated")
    assert reloader.check() is False


def test_main_refuses_missing_certificates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--tls-cert", str(tmp_path / "none.crt"), "--tls-key", str(tmp_path / "none.key")], environ={})
    assert rc == 2
    assert "cannot load certificate" in capsys.readouterr().err


def test_main_reads_flags_from_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([], environ={"FRACGPU_WEBHOOK_TLS_CERT": str(tmp_path / "env.crt")})
    assert rc == 2
    assert "env.crt" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "rc"), [(["--help"], 0), (["--port", "0"], 2), (["--max-body-bytes", "-1"], 2)])
def test_main_flags(argv: list[str], rc: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv, environ={}) == rc
    capsys.readouterr()

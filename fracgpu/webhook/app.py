"""The webhook's HTTP surface: `POST /mutate`, `GET /healthz`, `GET /metrics`.

`make_app(config)` builds the aiohttp Application; TLS is the server's business (see `main`).
Bad input is a 400 with a message, never a 500: the API server shows the webhook's answer to
whoever created the pod.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from fracgpu.kube.httpbody import DEFAULT_BODY_IDLE_TIMEOUT_S, BodyError, read_body
from fracgpu.webhook import admission

log = logging.getLogger(__name__)

# The API server's own limit on a request body is 3 MiB; a pod's AdmissionReview is far smaller.
DEFAULT_MAX_BODY_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S  # seconds without a byte mid-body before a 408


@dataclass(slots=True)
class WebhookMetrics:
    registry: CollectorRegistry
    requests: Counter
    seconds: Histogram

    @staticmethod
    def create(registry: CollectorRegistry | None = None) -> WebhookMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        requests = Counter(
            "fracgpu_webhook_requests",
            "Admission requests answered, by outcome (ignored, patched, allowed, rejected, bad_request)",
            ["outcome"],
            registry=reg,
        )
        seconds = Histogram(
            "fracgpu_webhook_request_seconds",
            "Time to answer one admission request",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=reg,
        )
        for outcome in (*admission.OUTCOMES, "bad_request"):
            requests.labels(outcome=outcome)
        return WebhookMetrics(reg, requests, seconds)


@dataclass(frozen=True, slots=True)
class _State:
    config: WebhookConfig
    metrics: WebhookMetrics
    clock: Callable[[], float] = field(default=time.monotonic)


STATE = web.AppKey("fracgpu_webhook_state", _State)


async def mutate(request: web.Request) -> web.Response:
    state = request.app[STATE]
    started = state.clock()
    try:
        body = await read_body(request, state.config.max_body_bytes, state.config.body_idle_timeout_s)
        decision = admission.review(admission.decode(body))
    except (admission.BadReview, BodyError) as e:
        status = e.status if isinstance(e, BodyError) else 400
        state.metrics.requests.labels(outcome="bad_request").inc()
        log.info("admission request refused status=%d reason=%r", status, str(e))
        resp = web.json_response({"error": str(e)}, status=status)
        if isinstance(e, BodyError):
            resp.force_close()  # a body not read to its end: this connection is not reused
        return resp
    finally:
        state.metrics.seconds.observe(max(0.0, state.clock() - started))
    state.metrics.requests.labels(outcome=decision.outcome).inc()
    if decision.outcome == admission.OUTCOME_REJECTED:
        log.info("pod rejected uid=%s reason=%r", decision.uid, decision.message)
    else:
        log.debug("pod admitted uid=%s outcome=%s", decision.uid, decision.outcome)
    return web.json_response(decision.to_review())


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def metrics(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(
    config: WebhookConfig | None = None,
    metrics_: WebhookMetrics | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    cfg = config if config is not None else WebhookConfig()
    # read_body answers 413 over the limit; aiohttp's own limit only guards request.read()/post()
    app = web.Application(client_max_size=cfg.max_body_bytes)
    app[STATE] = _State(cfg, metrics_ if metrics_ is not None else WebhookMetrics.create(), clock)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app

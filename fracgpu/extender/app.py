"""The extender's HTTP surface: `make_app(deps) -> web.Application`.

Handlers only decode -> call the Scheduler -> encode; one middleware maps every error to a
response (bad input -> 400 with a message, a body over --body-limit -> 413; a bug -> a 200 with
`Error` in the body for the verbs, so kube-scheduler reports it instead of retrying a crash; never
a 500 page).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fracgpu.api.v1beta1 import jsontext
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.extender import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    host_priority_list,
)
from fracgpu.extender.leader import Leadership
from fracgpu.extender.metrics import ExtenderMetrics
from fracgpu.extender.reasons import ReasonKind, reason_kind
from fracgpu.extender.scheduler import BindRefused, Scheduler, binding_annotations
from fracgpu.kube.httpbody import DEFAULT_BODY_IDLE_TIMEOUT_S, BodyError, read_body
from fracgpu.servingtls import certificate_names, peer_certificate

log = logging.getLogger(__name__)

DEFAULT_BODY_LIMIT = 16 * 1024 * 1024  # nodeCacheCapable=false with 5,000 full Nodes is ~ 10 MiB


class Binder(Protocol):
    """Creates the pod's Binding with annotations in one API write (fracgpu.kube.KubeWriter.bind_pod)."""

    def bind_pod(
        self, namespace: str, name: str, node: str, *, annotations: Mapping[str, str] | None = None,
        uid: str | None = None,
    ) -> None: ...


@dataclass(slots=True)
class Deps:
    scheduler: Scheduler
    binder: Binder
    metrics: ExtenderMetrics
    body_limit: int = DEFAULT_BODY_LIMIT
    body_idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S
    ready: Callable[[], bool] = field(default=lambda: True)
    # HA: None = this replica binds alone (snapshot mode, --leader-elect=false)
    leadership: Leadership | None = None
    # mutual TLS: when set, the verbs answer only connections whose verified client certificate
    # names one of these (empty set: any certificate the client CA signed)
    client_names: frozenset[str] | None = None


DEPS = web.AppKey("deps", Deps)


class BadRequest(Exception):
    """Malformed input: answered with HTTP 400 and the message."""


async def _json_body(request: web.Request, deps: Deps) -> Any:
    raw = await read_body(request, deps.body_limit, deps.body_idle_timeout_s)
    if not raw:
        raise BadRequest("empty request body")
    return jsontext.loads(raw, "request body")


def _verb(name: str) -> Callable[[Callable[[web.Request, Deps], Awaitable[web.Response]]], Callable[
        [web.Request], Awaitable[web.Response]]]:
    """Times the handler and maps every error to a response: the one error mapper."""

    def wrap(fn: Callable[[web.Request, Deps], Awaitable[web.Response]]) -> Callable[
            [web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            deps = request.app[DEPS]
            start = time.perf_counter()
            refused = _refuse_client(request, deps)
            if refused is not None:
                deps.metrics.refused_clients.labels(name).inc()
                log.warning("verb refused verb=%s remote=%s reason=%s", name, request.remote, refused)
                return web.json_response({"Error": refused}, status=403)
            try:
                return await fn(request, deps)
            except (BadRequest, InvalidDocument) as e:
                deps.metrics.bad_requests.labels(name).inc()
                log.info("bad request verb=%s error=%s", name, e)
                return web.json_response({"Error": f"bad request: {e}"}, status=400)
            except BodyError as e:
                deps.metrics.bad_requests.labels(name).inc()
                log.info("bad request verb=%s status=%d error=%s", name, e.status, e)
                resp = web.json_response({"Error": f"bad request: {e}"}, status=e.status)
                resp.force_close()  # a body not read to its end: this connection is not reused
                return resp
            except Exception as e:  # a bug must not become a 500 or a crash; say it in the body
                log.exception("internal error verb=%s", name)
                return web.json_response({"Error": f"internal error in fracgpu extender: {type(e).__name__}: {e}"})
            finally:
                deps.metrics.latency.labels(name).observe(time.perf_counter() - start)

        return handler

    return wrap


def _refuse_client(request: web.Request, deps: Deps) -> str | None:
    """Why this connection may not call a verb (mutual TLS), or None."""
    if deps.client_names is None:
        return None
    cert = peer_certificate(request.transport)
    if cert is None:
        return "a client certificate signed by the extender's client CA is required"
    if deps.client_names and not (certificate_names(cert) & deps.client_names):
        return f"client certificate names none of {', '.join(sorted(deps.client_names))}"
    return None


@_verb("filter")
async def filter_handler(request: web.Request, deps: Deps) -> web.Response:
    args = ExtenderArgs.from_obj(await _json_body(request, deps))
    result: ExtenderFilterResult = deps.scheduler.filter(args)
    m = deps.metrics.filter_outcomes
    m.labels("kept", "").inc(len(result.node_names))
    if result.error:  # the whole answer: every candidate node has that outcome
        m.labels("error", reason_kind(result.error)).inc(len(set(args.node_names)))
    for outcome, reasons in (("failed", result.failed), ("unresolvable", result.unresolvable)):
        counted: dict[ReasonKind, int] = {}
        for r in reasons.values():
            kind = reason_kind(r)  # a closed set: the text (pod names, numbers) stays in the answer
            counted[kind] = counted.get(kind, 0) + 1
        for kind, n in counted.items():
            m.labels(outcome, kind).inc(n)
    return web.json_response(result.to_obj(args))


@_verb("prioritize")
async def prioritize_handler(request: web.Request, deps: Deps) -> web.Response:
    args = ExtenderArgs.from_obj(await _json_body(request, deps))
    return web.json_response(host_priority_list(deps.scheduler.prioritize(args)))


@_verb("bind")
async def bind_handler(request: web.Request, deps: Deps) -> web.Response:
    args = ExtenderBindingArgs.from_obj(await _json_body(request, deps))
    lead = deps.leadership
    if lead is not None and not lead.can_bind():
        deps.metrics.bind_failures.labels("leader").inc()
        log.info("bind refused pod=%s node=%s reason=not leader", args.pod_key, args.node)
        return web.json_response(ExtenderBindingResult(lead.refusal()).to_obj())
    try:
        assignment = deps.scheduler.reserve(args)
    except BindRefused as e:
        deps.metrics.bind_failures.labels("reserve").inc()
        log.info("bind refused pod=%s node=%s reason=%s", args.pod_key, args.node, e)
        return web.json_response(ExtenderBindingResult(str(e)).to_obj())
    if assignment is None:  # a repeated bind of a pod we already reserved: idempotent
        return web.json_response(ExtenderBindingResult().to_obj())
    if lead is not None and not lead.can_bind():  # lost it in between: the write must not start
        deps.scheduler.release(args.pod_key, assignment)
        deps.metrics.bind_failures.labels("leader").inc()
        return web.json_response(ExtenderBindingResult(lead.refusal()).to_obj())
    try:
        await asyncio.to_thread(
            deps.binder.bind_pod, args.pod_namespace, args.pod_name, args.node,
            annotations=binding_annotations(assignment), uid=args.pod_uid,
        )
    except Exception as e:
        # released at once on a definite refusal, kept while the outcome is unknown (scheduler.py)
        answer = deps.scheduler.binding_failed(args.pod_key, assignment, e)
        deps.metrics.bind_failures.labels("binding").inc()
        log.warning("binding failed pod=%s node=%s error=%s", args.pod_key, args.node, e)
        return web.json_response(ExtenderBindingResult(answer).to_obj())
    deps.scheduler.confirm(args.pod_key, assignment)  # it landed: bound, whatever the watch says yet
    log.debug("bound pod=%s node=%s gpus=%s", args.pod_key, args.node, [g.uuid for g in assignment.gpus])
    return web.json_response(ExtenderBindingResult().to_obj())


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    """200 only on the replica that binds: synced and, with leader election, the fenced leader."""
    deps = request.app[DEPS]
    if not (deps.ready() and deps.scheduler.synced):
        return web.Response(text="cache not synced", status=503)
    why = deps.leadership.not_ready() if deps.leadership is not None else None
    if why is not None:
        return web.Response(text=why, status=503)
    return web.Response(text="ok")


async def metrics_handler(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    deps.metrics.refresh(deps.leadership)
    body = generate_latest(deps.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def _no_500(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    """Errors outside the verbs (routing, methods) keep their HTTP status but get a JSON message."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response({"Error": e.reason}, status=e.status)


def make_app(deps: Deps) -> web.Application:
    # aiohttp's own limit is set above ours, so that ours (read_body) answers with the clear message
    app = web.Application(client_max_size=deps.body_limit + 1024, middlewares=[_no_500])
    app[DEPS] = deps
    app.router.add_post("/filter", filter_handler)
    app.router.add_post("/prioritize", prioritize_handler)
    app.router.add_post("/bind", bind_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app

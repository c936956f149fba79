"""An in-process fake Kubernetes API server that speaks the real REST + watch wire format.

The official ``kubernetes`` client works against it unmodified::

    def test_something(apiserver: FakeApiServer) -> None:
        apiserver.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
        api = kubernetes.client.CoreV1Api(apiserver.api_client())
        ...

It is a real HTTP/1.1 server on 127.0.0.1 (random port, one thread per connection) over a
generic in-memory store keyed by (group, version, resource, namespace, name), with one global,
monotonically increasing resourceVersion and an event log for watches. What it mirrors of the
real server, and where it is simpler, is written down in docs/kube.md.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import dataclasses
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import kubernetes.client
import pytest

Obj = dict[str, Any]

__all__ = [
    "DEFAULT_RESOURCES",
    "ApiError",
    "FakeApiServer",
    "RequestRecord",
    "ResourceType",
    "apiserver",
]


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceType:
    """One served resource: ``group`` is "" for the core group."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    builtin: bool = True  # built-in list items carry no apiVersion/kind, CRD list items do

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


DEFAULT_RESOURCES: Final[tuple[ResourceType, ...]] = (
    ResourceType("", "v1", "nodes", "Node", namespaced=False, status_subresource=True),
    ResourceType("", "v1", "pods", "Pod", namespaced=True, status_subresource=True),
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, status_subresource=True),
    ResourceType("", "v1", "events", "Event", namespaced=True),
    ResourceType("", "v1", "configmaps", "ConfigMap", namespaced=True),
    ResourceType("", "v1", "bindings", "Binding", namespaced=True),  # create-only, binds a pod
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True),
    ResourceType("batch", "v1", "jobs", "Job", namespaced=True, status_subresource=True),
    ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", namespaced=True,
                 status_subresource=True),
    ResourceType("fracgpu.io", "v1beta1", "tenantquotas", "TenantQuota", namespaced=False,
                 status_subresource=True, builtin=False),
)

_REASONS: Final[dict[int, str]] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

_TERMINAL_PHASES: Final = ("Succeeded", "Failed")
_DEFAULT_POD_GRACE_S: Final = 30


class ApiError(Exception):
    """An error answer: becomes a ``Status`` object on the wire."""

    def __init__(self, code: int, message: str, *, reason: str | None = None,
                 details: Obj | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details
        self.retry_after_s = retry_after_s
        if retry_after_s:
            self.details = {**(details or {}), "retryAfterSeconds": retry_after_s}

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as an RBAC rule sees it."""

    method: str
    path: str
    query: str
    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str


@dataclasses.dataclass(slots=True)
class _Failure:
    verb: str
    resource: str
    code: int
    times: int
    message: str | None
    retry_after_s: int | None


@dataclasses.dataclass(slots=True)
class _Action:
    verb: str
    resource: str
    action: Callable[[], object]
    times: int


@dataclasses.dataclass(frozen=True, slots=True)
class _Event:
    rv: int
    rtype: ResourceType
    type: str
    obj: Obj
    old: Obj | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Target:
    rtype: ResourceType
    namespace: str
    name: str
    subresource: str


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------------------
# selectors


_SELECTOR_TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*(.*?)|\s+(in|notin)\s*\((.*)\))?\s*$")


def _split_terms(selector: str) -> list[str]:
    terms: list[str] = []
    depth = 0
    current = ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        terms.append(current)
    return [t for t in terms if t.strip()]


@dataclasses.dataclass(frozen=True, slots=True)
class _Requirement:
    """One term of a label or field selector: op is =, !=, in, notin, exists, !exists."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, value: str | None) -> bool:
        if self.op == "=":
            return value in self.values
        if self.op == "!=":
            return value not in self.values
        if self.op == "in":
            return value is not None and value in self.values
        if self.op == "notin":
            return value is None or value not in self.values
        if self.op == "exists":
            return value is not None
        return value is None


def _label_predicate(selector: str) -> Callable[[Obj], bool]:
    requirements: list[_Requirement] = []
    for term in _split_terms(selector):
        m = _SELECTOR_TERM.match(term)
        if m is None:
            raise ApiError(400, f"unable to parse requirement: {term!r}")
        neg, key, op, value, set_op, set_values = m.groups()
        if neg:
            requirements.append(_Requirement(key, "!exists"))
        elif op is not None:
            requirements.append(_Requirement(key, "!=" if op == "!=" else "=", frozenset([value.strip()])))
        elif set_op is not None:
            values = frozenset(s.strip() for s in set_values.split(",") if s.strip())
            requirements.append(_Requirement(key, set_op, values))
        else:
            requirements.append(_Requirement(key, "exists"))

    def predicate(obj: Obj) -> bool:
        labels = _meta(obj).get("labels") or {}
        return all(r.matches(labels.get(r.key)) for r in requirements)

    return predicate


def _field_value(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def _field_predicate(selector: str) -> Callable[[Obj], bool]:
    requirements: list[_Requirement] = []
    for term in _split_terms(selector):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if m is None:
            raise ApiError(400, f"invalid field selector: {term!r}")
        path, op, value = m.groups()
        requirements.append(_Requirement(path, "!=" if op == "!=" else "=", frozenset([value])))
    return lambda obj: all(r.matches(_field_value(obj, r.key)) for r in requirements)


def _selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions) against labels."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# patches


_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _check_claim_status(name: str, new: Obj, old: Obj) -> None:
    """The rules kube-apiserver applies to a ResourceClaim status update that fracgpu's writes could break
    (pkg/apis/resource/validation: validateResourceClaimStatusUpdate, validateDeviceRequestAllocationResult)."""
    status, old_status = new.get("status") or {}, old.get("status") or {}
    allocation, old_allocation = status.get("allocation"), old_status.get("allocation")
    where = f'ResourceClaim.resource.k8s.io "{name}" is invalid: status'
    if status.get("reservedFor") and allocation is None:
        raise ApiError(422, f"{where}.reservedFor: Forbidden: may not be specified when `allocated` is not set")
    if old_allocation is not None and allocation is not None and allocation != old_allocation:
        raise ApiError(422, f"{where}.allocation: Invalid value: field is immutable")
    if allocation is None or old_allocation is not None:
        return
    requests = {r.get("name") for r in ((new.get("spec") or {}).get("devices") or {}).get("requests") or []}
    for i, r in enumerate((allocation.get("devices") or {}).get("results") or []):
        if str(r.get("request", "")).split("/", 1)[0] not in requests:
            raise ApiError(422, f"{where}.allocation.devices.results[{i}].request: Invalid value: "
                                f"{r.get('request')!r}: must be the name of a request in the claim")
        if "shareID" in r and not _UID.fullmatch(str(r["shareID"])):
            raise ApiError(422, f"{where}.allocation.devices.results[{i}].shareID: Invalid value: "
                                f"{r['shareID']!r}: must be a lowercase UUID")
    selector = allocation.get("nodeSelector")
    if selector is not None and not (selector.get("nodeSelectorTerms") or []):
        raise ApiError(422, f"{where}.allocation.nodeSelector.nodeSelectorTerms: Required value: must have at "
                            "least one node selector term")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patch: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: Obj = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve_parent(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError) as exc:
                raise ApiError(422, f"invalid path element {part!r}") from exc
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise ApiError(422, f"path element {part!r} does not exist")
    return cur


def _json_get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _resolve_parent(doc, parts)
    last = parts[-1]
    try:
        return parent[int(last)] if isinstance(parent, list) else parent[last]
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise ApiError(422, f"path {path!r} does not exist") from exc


def _json_remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent = _resolve_parent(doc, parts)
    last = parts[-1]
    try:
        return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise ApiError(422, f"unable to remove nonexistent key {path!r}") from exc


def _json_add(doc: Any, path: str, value: Any, *, replace: bool) -> Any:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent = _resolve_parent(doc, parts)
    last = parts[-1]
    if isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(copy.deepcopy(value))
            return doc
        try:
            index = int(last)
        except ValueError as exc:
            raise ApiError(422, f"invalid list index {last!r}") from exc
        if replace:
            if not 0 <= index < len(parent):
                raise ApiError(422, f"list index {index} out of range")
            parent[index] = copy.deepcopy(value)
        else:
            if not 0 <= index <= len(parent):
                raise ApiError(422, f"list index {index} out of range")
            parent.insert(index, copy.deepcopy(value))
    elif isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(422, f"unable to replace nonexistent key {path!r}")
        parent[last] = copy.deepcopy(value)
    else:
        raise ApiError(422, f"path {path!r} does not exist")
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise ApiError(400, "json patch must be a list of operations")
    result = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, f"invalid json patch operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            result = _json_add(result, path, op.get("value"), replace=False)
        elif kind == "replace":
            result = _json_add(result, path, op.get("value"), replace=True)
        elif kind == "remove":
            _json_remove(result, path)
        elif kind == "move":
            value = _json_remove(result, op["from"])
            result = _json_add(result, path, value, replace=False)
        elif kind == "copy":
            result = _json_add(result, path, _json_get(result, op["from"]), replace=False)
        elif kind == "test":
            if _json_get(result, path) != op.get("value"):
                raise ApiError(422, f"test operation failed at {path!r}")
        else:
            raise ApiError(400, f"unknown json patch operation {kind!r}")
    return result


# ---------------------------------------------------------------------------------------------
# the server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else every small answer waits on the client's delayed ACK
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def do_GET(self) -> None:
        self.server.fake._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.fake._handle(self, "PUT")

    def do_PATCH(self) -> None:
        self.server.fake._handle(self, "PATCH")

    def do_DELETE(self) -> None:
        self.server.fake._handle(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_json(self, code: int, body: Obj, *, retry_after_s: int | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        if retry_after_s:
            self.send_header("Retry-After", str(retry_after_s))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeApiServer


class _Dropped(Exception):
    """The watch connection must be cut without a proper end of stream."""


class FakeApiServer:
    """A fake kube-apiserver over HTTP; start(), use ``url`` / ``api_client()``, stop()."""

    def __init__(self, resources: Iterable[ResourceType] = DEFAULT_RESOURCES, *,
                 latency_s: float = 0.0, require_namespaces: bool = False) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rtype in resources:
            self.add_resource(rtype)
        self.latency_s = latency_s
        self.require_namespaces = require_namespaces  # create in a missing namespace -> 404, as for real
        self._cond = threading.Condition()
        self._store: dict[tuple[str, str, str, str, str], Obj] = {}
        self._rv = 0
        self._events: list[_Event] = []
        self._compacted_rv = 0
        self._drop_gen = 0
        self._bookmark_gen = 0
        self._open_watches = 0
        self._stopping = False
        self._failures: list[_Failure] = []
        self._actions: list[_Action] = []
        self._droppers: dict[str, Callable[[Obj], None]] = {}
        self._requests: list[RequestRecord] = []
        self._connections: set[socket.socket] = set()
        self._clients: list[kubernetes.client.ApiClient] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeApiServer:
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for client in self._clients:
            client.close()  # type: ignore[no-untyped-call]
        self._clients.clear()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._cond:
            connections = list(self._connections)
        for conn in connections:
            _shutdown(conn)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def api_client(self) -> kubernetes.client.ApiClient:
        """An official-client ApiClient pointed at this server (closed by stop())."""
        configuration = kubernetes.client.Configuration(host=self.url)
        client = kubernetes.client.ApiClient(configuration)
        self._clients.append(client)
        return client

    def add_resource(self, rtype: ResourceType) -> None:
        self._types[(rtype.group, rtype.version, rtype.plural)] = rtype

    # -- test hooks -------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def seed(self, *objects: Obj) -> list[Obj]:
        """Create or replace objects as given (status included), bypassing admission rules."""
        out = []
        with self._cond:
            for raw in objects:
                obj = copy.deepcopy(raw)
                rtype = self._type_for(obj)
                meta = obj.setdefault("metadata", {})
                namespace = meta.get("namespace", "") if rtype.namespaced else ""
                if rtype.namespaced and not namespace:
                    namespace = meta["namespace"] = "default"
                key = self._key(rtype, namespace, meta["name"])
                old = self._store.get(key)
                meta.pop("resourceVersion", None)
                if old is None:
                    self._fill_new(rtype, obj)
                    out.append(self._write(rtype, key, obj, None))
                else:
                    out.append(self._write(rtype, key, self._keep_identity(old, obj), old))
        return [copy.deepcopy(o) for o in out]

    def get_object(self, resource: str, name: str, namespace: str = "") -> Obj | None:
        rtype = self._type_by_plural(resource)
        with self._cond:
            obj = self._store.get(self._key(rtype, namespace if rtype.namespaced else "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, resource: str, namespace: str | None = None) -> list[Obj]:
        rtype = self._type_by_plural(resource)
        with self._cond:
            return [copy.deepcopy(o) for o in self._items(rtype, namespace)]

    def patch_object(self, resource: str, name: str, patch: Obj, namespace: str = "") -> Obj:
        """Merge-patch an object as a test (bypasses status/spec rules and fail_next)."""
        rtype = self._type_by_plural(resource)
        with self._cond:
            key = self._key(rtype, namespace if rtype.namespaced else "", name)
            old = self._store.get(key)
            if old is None:
                raise KeyError(f"{resource} {namespace}/{name} not found")
            new = merge_patch(old, patch)
            return copy.deepcopy(self._write(rtype, key, new, old))

    def delete_object(self, resource: str, name: str, namespace: str = "") -> bool:
        """Remove an object now (no grace, no finalizers); False if it did not exist."""
        rtype = self._type_by_plural(resource)
        with self._cond:
            key = self._key(rtype, namespace if rtype.namespaced else "", name)
            if key not in self._store:
                return False
            self._remove(rtype, key)
            return True

    def finalize_pod(self, namespace: str, name: str) -> bool:
        """The kubelet's last word on a terminating pod: delete it if it has a deletionTimestamp."""
        pods = self._type_by_plural("pods")
        with self._cond:
            key = self._key(pods, namespace, name)
            pod = self._store.get(key)
            if pod is None or not _meta(pod).get("deletionTimestamp"):
                return False
            self._remove(pods, key)
            return True

    def finalize_deletions(self) -> int:
        """Finalize every terminating pod; returns how many went."""
        pods = self._type_by_plural("pods")
        with self._cond:
            keys = [k for k, o in self._store.items()
                    if k[:3] == (pods.group, pods.version, pods.plural) and _meta(o).get("deletionTimestamp")]
            for key in keys:
                self._remove(pods, key)
            return len(keys)

    def compact(self) -> int:
        """Forget the event history: watches from any older resourceVersion now get 410 Expired."""
        with self._cond:
            self._compacted_rv = self._rv
            self._events.clear()
            self._cond.notify_all()
            return self._rv

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (no terminating chunk)."""
        with self._cond:
            self._drop_gen += 1
            self._cond.notify_all()

    def send_bookmarks(self) -> None:
        """Every open watch that asked for bookmarks gets a BOOKMARK at its current position."""
        with self._cond:
            self._bookmark_gen += 1
            self._cond.notify_all()

    @property
    def open_watches(self) -> int:
        with self._cond:
            return self._open_watches

    def wait_for_watches(self, count: int = 1, timeout_s: float = 5.0) -> bool:
        """Block until at least ``count`` watches are open (tests use it before drop_watches)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._open_watches < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def fail_next(self, verb: str, resource: str, code: int, times: int = 1,
                  message: str | None = None, retry_after_s: int | None = None) -> None:
        """The next ``times`` requests for (verb, resource) answer a Status with ``code``.

        ``resource`` is a plural ("nodes"), a "plural/subresource" ("pods/binding",
        "pods/eviction", "tenantquotas/status") or "*". A plain plural matches only requests
        without a subresource. ``retry_after_s`` adds a Retry-After header and
        details.retryAfterSeconds, as API priority and fairness does on its 429s.
        """
        with self._cond:
            self._failures.append(_Failure(verb, resource, code, times, message, retry_after_s))

    def on_next(self, verb: str, resource: str, action: Callable[[], object], times: int = 1) -> None:
        """Run ``action`` just before serving the next ``times`` (verb, resource) requests.

        E.g. a concurrent writer: ``on_next("update", "nodes", lambda: fake.patch_object(...))``
        makes the PUT carry a stale resourceVersion, so the real 409 path runs. ``resource`` as
        in ``fail_next``.
        """
        with self._cond:
            self._actions.append(_Action(verb, resource, action, times))

    def drop_on_write(self, resource: str, drop: Callable[[Obj], None]) -> None:
        """``drop`` removes fields from every ``resource`` object created or updated through the API, before it is
        stored, as kube-apiserver's registry strategies do for fields whose feature gate is off
        (``dropDisabledFields``: e.g. ResourceSlice device taints without DRADeviceTaints)."""
        with self._cond:
            self._droppers[resource] = drop

    @property
    def requests(self) -> list[RequestRecord]:
        with self._cond:
            return list(self._requests)

    def rbac_rules(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """The requests so far as RBAC rules: sorted (apiGroup, resource[/subresource], verbs)."""
        rules: dict[tuple[str, str], set[str]] = {}
        for r in self.requests:
            resource = r.resource + (f"/{r.subresource}" if r.subresource else "")
            rules.setdefault((r.group, resource), set()).add(r.verb)
        return [(group, resource, tuple(sorted(verbs))) for (group, resource), verbs in sorted(rules.items())]

    def clear_requests(self) -> None:
        with self._cond:
            self._requests.clear()

    # -- store internals (call with self._cond held) ----------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _type_for(self, obj: Obj) -> ResourceType:
        for rtype in self._types.values():
            if rtype.api_version == obj.get("apiVersion") and rtype.kind == obj.get("kind"):
                return rtype
        raise KeyError(f"no served resource for {obj.get('apiVersion')}/{obj.get('kind')}")

    def _type_by_plural(self, plural: str) -> ResourceType:
        for rtype in self._types.values():
            if rtype.plural == plural:
                return rtype
        raise KeyError(f"no served resource {plural!r}")

    @staticmethod
    def _key(rtype: ResourceType, namespace: str, name: str) -> tuple[str, str, str, str, str]:
        return (rtype.group, rtype.version, rtype.plural, namespace, name)

    def _items(self, rtype: ResourceType, namespace: str | None) -> list[Obj]:
        prefix = (rtype.group, rtype.version, rtype.plural)
        keys = sorted(k for k in self._store if k[:3] == prefix and (namespace is None or k[3] == namespace))
        return [self._store[k] for k in keys]

    def _fill_new(self, rtype: ResourceType, obj: Obj) -> None:
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.setdefault("generation", 1)
        if rtype.plural == "pods":
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        elif rtype.plural == "namespaces":
            obj.setdefault("status", {}).setdefault("phase", "Active")

    @staticmethod
    def _keep_identity(old: Obj, new: Obj) -> Obj:
        meta, old_meta = new.setdefault("metadata", {}), _meta(old)
        for field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["generation"] = old_meta.get("generation", 1)
        if new.get("spec") != old.get("spec"):
            meta["generation"] += 1
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        return new

    def _write(self, rtype: ResourceType, key: tuple[str, str, str, str, str], obj: Obj,
               old: Obj | None) -> Obj:
        if old is not None:
            candidate = copy.deepcopy(obj)
            _meta(candidate)["resourceVersion"] = _meta(old).get("resourceVersion")
            if candidate == old:  # a no-op write changes nothing, not even the resourceVersion
                return old
        self._rv += 1
        _meta(obj)["resourceVersion"] = str(self._rv)
        self._store[key] = obj
        self._events.append(_Event(self._rv, rtype, "ADDED" if old is None else "MODIFIED",
                                   copy.deepcopy(obj), old))
        self._cond.notify_all()
        return obj

    def _remove(self, rtype: ResourceType, key: tuple[str, str, str, str, str]) -> Obj:
        old = self._store.pop(key)
        self._rv += 1
        gone = copy.deepcopy(old)
        _meta(gone)["resourceVersion"] = str(self._rv)
        self._events.append(_Event(self._rv, rtype, "DELETED", gone, old))
        self._cond.notify_all()
        return gone

    def _finish_if_finalized(self, rtype: ResourceType, key: tuple[str, str, str, str, str]) -> None:
        obj = self._store.get(key)
        if obj is None or rtype.plural == "pods":
            return
        meta = _meta(obj)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(rtype, key)

    # -- HTTP -------------------------------------------------------------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        split = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            if split.path == "/version":
                handler.send_json(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fracgpu-fake"})
                return
            listing = self._discovery(split.path) if method == "GET" else None
            if listing is not None:
                handler.send_json(200, listing)
                return
            target = self._parse_path(split.path)
            verb = self._verb(method, target, query)
            self._record(method, split.path, split.query, verb, target)
            if query.get("dryRun"):
                raise ApiError(400, "dryRun is not supported by the fake API server")
            self._run_actions(verb, target)
            self._maybe_fail(verb, target)
            if verb == "watch":
                self._serve_watch(handler, target, query)
                return
            body: Any = json.loads(raw) if raw else None
            code, answer = self._dispatch(verb, target, query, body, handler.headers.get("Content-Type", ""))
            handler.send_json(code, answer)
        except ApiError as err:
            handler.send_json(err.code, err.status(), retry_after_s=err.retry_after_s)
        except json.JSONDecodeError as exc:
            handler.send_json(400, ApiError(400, f"invalid JSON body: {exc}").status())
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        except Exception as exc:  # a bug in the fake (or a hook): answer it rather than hang the client
            handler.send_json(500, ApiError(500, f"fake apiserver: {type(exc).__name__}: {exc}").status())

    def _discovery(self, path: str) -> Obj | None:
        """GET /api/v1 or /apis/<group>/<version>: the APIResourceList of what this server serves there
        (None: not a discovery path; an unknown group/version is the 404 of _parse_path)."""
        parts = [unquote(p) for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[:1] == ["apis"] and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            return None
        served = [t for (g, v, _), t in sorted(self._types.items()) if (g, v) == (group, version)]
        if not served:
            return None
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
                "resources": [{"name": t.plural, "namespaced": t.namespaced, "kind": t.kind,
                               "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                              for t in served]}

    def _parse_path(self, path: str) -> _Target:
        parts = [unquote(p) for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        if not rest:
            raise ApiError(404, "the server could not find the requested resource")
        if rest[0] == "namespaces" and len(rest) >= 3:
            rtype = self._types.get((group, version, rest[2]))
            if rtype is not None and rtype.namespaced:
                if len(rest) > 5:
                    raise ApiError(404, "the server could not find the requested resource")
                name = rest[3] if len(rest) > 3 else ""
                sub = rest[4] if len(rest) > 4 else ""
                return _Target(rtype, rest[1], name, sub)
        rtype = self._types.get((group, version, rest[0]))
        if rtype is None or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        if rtype.namespaced and len(rest) > 1:
            raise ApiError(404, "the server could not find the requested resource")
        return _Target(rtype, "", rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else "")

    @staticmethod
    def _verb(method: str, target: _Target, query: Mapping[str, str]) -> str:
        watching = query.get("watch") in ("true", "1")
        if method == "GET":
            if watching:
                return "watch"
            return "get" if target.name else "list"
        if not target.name and method != "POST":
            raise ApiError(405, f"{method} is not supported on a collection")
        if method == "POST" and target.name and target.subresource not in ("binding", "eviction"):
            raise ApiError(405, "POST is not supported here")
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]

    def _record(self, method: str, path: str, query: str, verb: str, target: _Target) -> None:
        with self._cond:
            self._requests.append(RequestRecord(
                method=method, path=path, query=query, verb=verb, group=target.rtype.group,
                version=target.rtype.version, resource=target.rtype.plural,
                subresource=target.subresource, namespace=target.namespace, name=target.name))

    def _run_actions(self, verb: str, target: _Target) -> None:
        resource = target.rtype.plural + (f"/{target.subresource}" if target.subresource else "")
        due: list[Callable[[], object]] = []
        with self._cond:
            for action in list(self._actions):
                if action.verb == verb and action.resource in (resource, "*"):
                    action.times -= 1
                    if action.times <= 0:
                        self._actions.remove(action)
                    due.append(action.action)
        for run in due:
            run()

    def _maybe_fail(self, verb: str, target: _Target) -> None:
        resource = target.rtype.plural + (f"/{target.subresource}" if target.subresource else "")
        with self._cond:
            for failure in self._failures:
                if failure.verb == verb and failure.resource in (resource, "*"):
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                    message = failure.message or f"injected failure for {verb} {resource}"
                    raise ApiError(failure.code, message, retry_after_s=failure.retry_after_s)

    def _dispatch(self, verb: str, target: _Target, query: Mapping[str, str], body: Any,
                  content_type: str) -> tuple[int, Obj]:
        rtype = target.rtype
        if target.subresource == "binding" and rtype.plural == "pods":
            return self._bind(target, body)
        if rtype.plural == "bindings":
            if verb != "create" or target.name:
                raise ApiError(405, f"{verb} is not supported on bindings")
            name = _meta(body).get("name", "") if isinstance(body, dict) else ""
            pods = self._type_by_plural("pods")
            return self._bind(_Target(pods, target.namespace, name, "binding"), body)
        if target.subresource == "eviction" and rtype.plural == "pods":
            return self._evict(target, body)
        if target.subresource and not (target.subresource == "status" and rtype.status_subresource):
            raise ApiError(404, f"the server could not find the requested resource ({target.subresource})")
        if verb == "list":
            return 200, self._list(target, query)
        if verb == "get":
            return 200, self._get(target)
        if verb == "create":
            return 201, self._create(target, body)
        if verb == "update":
            return 200, self._update(target, body)
        if verb == "patch":
            return 200, self._patch(target, body, content_type)
        if verb == "delete":
            return self._delete(target, query, body)
        raise ApiError(405, f"verb {verb} not supported")

    def _not_found(self, target: _Target, name: str | None = None) -> ApiError:
        res = target.rtype.plural if not target.rtype.group else f"{target.rtype.plural}.{target.rtype.group}"
        name = name if name is not None else target.name
        return ApiError(404, f'{res} "{name}" not found',
                        details={"name": name, "group": target.rtype.group, "kind": target.rtype.plural})

    def _conflict(self, target: _Target, why: str) -> ApiError:
        res = target.rtype.plural if not target.rtype.group else f"{target.rtype.plural}.{target.rtype.group}"
        return ApiError(409, f'Operation cannot be fulfilled on {res} "{target.name}": {why}',
                        details={"name": target.name, "group": target.rtype.group, "kind": target.rtype.plural})

    def _list(self, target: _Target, query: Mapping[str, str]) -> Obj:
        rtype = target.rtype
        labels = _label_predicate(query["labelSelector"]) if query.get("labelSelector") else None
        fields = _field_predicate(query["fieldSelector"]) if query.get("fieldSelector") else None
        limit = int(query["limit"]) if query.get("limit") else 0
        start_after: tuple[str, str] | None = None
        with self._cond:
            list_rv = self._rv
            if query.get("continue"):
                try:
                    token = json.loads(base64.urlsafe_b64decode(query["continue"]))
                    list_rv, start_after = int(token["rv"]), (token["ns"], token["name"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise ApiError(400, "invalid continue token") from exc
                if list_rv < self._compacted_rv:
                    raise ApiError(410, "The provided continue parameter is too old to display a "
                                   "consistent list result. You can start a new list without the "
                                   "continue parameter.")
            namespace = target.namespace if rtype.namespaced and target.namespace else None
            items = []
            for obj in self._items(rtype, namespace):
                meta = _meta(obj)
                if start_after is not None and (meta.get("namespace", ""), meta["name"]) <= start_after:
                    continue
                if (labels is None or labels(obj)) and (fields is None or fields(obj)):
                    items.append(copy.deepcopy(obj))
        metadata: Obj = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            last = _meta(items[limit - 1])
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"rv": list_rv, "ns": last.get("namespace", ""), "name": last["name"]}).encode()).decode()
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if rtype.builtin:
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
        return {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": metadata,
                "items": items}

    def _get(self, target: _Target) -> Obj:
        with self._cond:
            obj = self._store.get(self._key(target.rtype, target.namespace, target.name))
            if obj is None:
                raise self._not_found(target)
            return copy.deepcopy(obj)

    def _create(self, target: _Target, body: Any) -> Obj:
        rtype = target.rtype
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was in an unknown format")
        if target.subresource:
            raise ApiError(405, "create is not supported on a subresource")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            if meta.get("namespace") and meta["namespace"] != target.namespace:
                raise ApiError(400, "the namespace of the provided object does not match the "
                               "namespace sent on the request")
            meta["namespace"] = target.namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, f"{rtype.kind} is invalid: metadata.name: Required value: name or "
                               "generateName is required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        for field in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
            meta.pop(field, None)
        if rtype.plural == "pods":
            obj["status"] = {"phase": "Pending"}
        elif rtype.status_subresource and not rtype.builtin:
            obj.pop("status", None)
        with self._cond:
            if self.require_namespaces and rtype.namespaced and self._key(
                    self._type_by_plural("namespaces"), "", target.namespace) not in self._store:
                raise ApiError(404, f'namespaces "{target.namespace}" not found',
                               details={"name": target.namespace, "kind": "namespaces"})
            key = self._key(rtype, target.namespace, meta["name"])
            if rtype.plural in self._droppers:
                self._droppers[rtype.plural](obj)
            if key in self._store:
                res = rtype.plural if not rtype.group else f"{rtype.plural}.{rtype.group}"
                raise ApiError(409, f'{res} "{meta["name"]}" already exists', reason="AlreadyExists",
                               details={"name": meta["name"], "group": rtype.group, "kind": rtype.plural})
            self._fill_new(rtype, obj)
            return copy.deepcopy(self._write(rtype, key, obj, None))

    def _apply_update(self, target: _Target, new: Obj, old: Obj) -> Obj:
        """The shared tail of PUT and PATCH: concurrency check, status rules, write."""
        rtype = target.rtype
        meta = new.setdefault("metadata", {})
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != _meta(old).get("resourceVersion"):
            raise self._conflict(target, "the object has been modified; please apply your changes to "
                                 "the latest version and try again")
        if meta.get("name", target.name) != target.name:
            raise ApiError(400, "the name of the object does not match the name on the URL")
        meta["name"] = target.name
        if rtype.namespaced:
            meta["namespace"] = target.namespace
        if target.subresource == "status":
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
            if rtype.plural == "resourceclaims":
                _check_claim_status(target.name, new, old)
        else:
            if rtype.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            if rtype.plural == "pods":
                old_node = (old.get("spec") or {}).get("nodeName")
                if (new.get("spec") or {}).get("nodeName") != old_node:
                    raise ApiError(422, f'Pod "{target.name}" is invalid: spec: Forbidden: pod updates may '
                                   "not change fields other than `spec.containers[*].image`, ... "
                                   "(spec.nodeName is set through pods/binding)")
        if rtype.plural in self._droppers and target.subresource != "status":
            self._droppers[rtype.plural](new)
        key = self._key(rtype, target.namespace, target.name)
        written = self._write(rtype, key, self._keep_identity(old, new), old)
        self._finish_if_finalized(rtype, key)
        return copy.deepcopy(written)

    def _update(self, target: _Target, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was in an unknown format")
        with self._cond:
            old = self._store.get(self._key(target.rtype, target.namespace, target.name))
            if old is None:
                raise self._not_found(target)
            return self._apply_update(target, copy.deepcopy(body), old)

    def _patch(self, target: _Target, body: Any, content_type: str) -> Obj:
        kind = content_type.split(";", maxsplit=1)[0].strip()
        with self._cond:
            old = self._store.get(self._key(target.rtype, target.namespace, target.name))
            if old is None:
                raise self._not_found(target)
            if kind == "application/json-patch+json":
                new = json_patch(old, body)
            elif kind in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                if not isinstance(body, dict):
                    raise ApiError(400, "a merge patch must be a JSON object")
                new = merge_patch(old, body)
            else:
                raise ApiError(415, f"the server does not support patch content type {kind!r}")
            if not isinstance(new, dict):
                raise ApiError(422, "the patched object is not an object")
            if _meta(new).get("resourceVersion") == _meta(old).get("resourceVersion"):
                _meta(new).pop("resourceVersion", None)
            return self._apply_update(target, new, old)

    def _delete(self, target: _Target, query: Mapping[str, str], body: Any) -> tuple[int, Obj]:
        options = body if isinstance(body, dict) else {}
        grace: int | None = options.get("gracePeriodSeconds")
        if query.get("gracePeriodSeconds"):
            grace = int(query["gracePeriodSeconds"])
        rtype = target.rtype
        with self._cond:
            key = self._key(rtype, target.namespace, target.name)
            obj = self._store.get(key)
            if obj is None:
                raise self._not_found(target)
            return self._delete_locked(target, key, obj, grace, options.get("preconditions") or {})

    def _delete_locked(self, target: _Target, key: tuple[str, str, str, str, str], obj: Obj,
                       grace: int | None, preconditions: Mapping[str, Any]) -> tuple[int, Obj]:
        rtype, meta = target.rtype, _meta(obj)
        if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
            raise self._conflict(target, f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                                 f"UID in object meta: {meta.get('uid')}")
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != meta.get(
                "resourceVersion"):
            raise self._conflict(target, "the object has been modified; please apply your changes to the "
                                 "latest version and try again")
        if rtype.plural == "pods":
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            if grace is None:
                grace = spec.get("terminationGracePeriodSeconds", _DEFAULT_POD_GRACE_S)
            if not spec.get("nodeName") or status.get("phase") in _TERMINAL_PHASES:
                grace = 0
            if grace and grace > 0:
                if not meta.get("deletionTimestamp"):
                    new = copy.deepcopy(obj)
                    _meta(new)["deletionTimestamp"] = _now()
                    _meta(new)["deletionGracePeriodSeconds"] = grace
                    obj = self._write(rtype, key, new, obj)
                return 200, copy.deepcopy(obj)
            return 200, self._remove(rtype, key)
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                new = copy.deepcopy(obj)
                _meta(new)["deletionTimestamp"] = _now()
                obj = self._write(rtype, key, new, obj)
            return 200, copy.deepcopy(obj)
        self._remove(rtype, key)
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": target.name, "group": rtype.group, "kind": rtype.plural,
                                 "uid": meta.get("uid")}}

    def _bind(self, target: _Target, body: Any) -> tuple[int, Obj]:
        if not isinstance(body, dict) or not (body.get("target") or {}).get("name"):
            raise ApiError(422, "Binding is invalid: target.name: Required value")
        node = body["target"]["name"]
        bmeta = body.get("metadata") or {}
        with self._cond:
            key = self._key(target.rtype, target.namespace, target.name)
            pod = self._store.get(key)
            if pod is None:
                raise self._not_found(target)
            meta = _meta(pod)
            if bmeta.get("uid") and bmeta["uid"] != meta.get("uid"):
                raise self._conflict(target, f"Precondition failed: UID in precondition: {bmeta['uid']}, "
                                     f"UID in object meta: {meta.get('uid')}")
            if meta.get("deletionTimestamp"):
                raise self._conflict(target, f"pod {target.name} is being deleted, cannot be assigned to a host")
            current = (pod.get("spec") or {}).get("nodeName")
            if current:
                raise self._conflict(target, f'pod {target.name} is already assigned to node "{current}"')
            new = copy.deepcopy(pod)
            new.setdefault("spec", {})["nodeName"] = node
            if bmeta.get("annotations"):
                _meta(new).setdefault("annotations", {}).update(bmeta["annotations"])
            conditions = [c for c in (new.setdefault("status", {}).get("conditions") or [])
                          if c.get("type") != "PodScheduled"]
            conditions.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()})
            new["status"]["conditions"] = conditions
            self._write(target.rtype, key, new, pod)
        return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _evict(self, target: _Target, body: Any) -> tuple[int, Obj]:
        options = (body or {}).get("deleteOptions") or {} if isinstance(body, dict) else {}
        pdbs_type = self._type_by_plural("poddisruptionbudgets")
        with self._cond:
            key = self._key(target.rtype, target.namespace, target.name)
            pod = self._store.get(key)
            if pod is None:
                raise self._not_found(target)
            phase = (pod.get("status") or {}).get("phase")
            ignores_pdb = phase in (*_TERMINAL_PHASES, "Pending") or bool(_meta(pod).get("deletionTimestamp"))
            if not ignores_pdb:
                labels = _meta(pod).get("labels") or {}
                pdbs = [(self._key(pdbs_type, target.namespace, _meta(p)["name"]), p)
                        for p in self._items(pdbs_type, target.namespace)
                        if _selector_matches((p.get("spec") or {}).get("selector"), labels)]
                if len(pdbs) > 1:
                    raise ApiError(500, "This pod has more than one PodDisruptionBudget, which the "
                                   "eviction subresource does not support.")
                if pdbs:
                    pdb_key, pdb = pdbs[0]
                    allowed, needed, healthy = self._disruptions_allowed(pdb, target.namespace)
                    if allowed <= 0:
                        raise ApiError(429, "Cannot evict pod as it would violate the pod's disruption budget.",
                                       details={"causes": [{"reason": "DisruptionBudget", "message": (
                                           f"The disruption budget {_meta(pdb)['name']} needs {needed} healthy "
                                           f"pods and has {healthy} currently")}]})
                    if "disruptionsAllowed" in (pdb.get("status") or {}):
                        new_pdb = copy.deepcopy(pdb)
                        new_pdb["status"]["disruptionsAllowed"] = allowed - 1
                        self._write(pdbs_type, pdb_key, new_pdb, pdb)
            self._delete_locked(target, key, pod, options.get("gracePeriodSeconds"),
                                options.get("preconditions") or {})
        return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _disruptions_allowed(self, pdb: Obj, namespace: str) -> tuple[int, int, int]:
        """(disruptionsAllowed, desiredHealthy, currentHealthy) of a PDB now."""
        spec, status = pdb.get("spec") or {}, pdb.get("status") or {}
        pods = [p for p in self._items(self._type_by_plural("pods"), namespace)
                if _selector_matches(spec.get("selector"), _meta(p).get("labels") or {})]
        healthy = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running"
                      and not _meta(p).get("deletionTimestamp"))
        if "minAvailable" in spec:
            needed = _scaled(spec["minAvailable"], len(pods), round_up=True)
        elif "maxUnavailable" in spec:
            needed = len(pods) - _scaled(spec["maxUnavailable"], len(pods), round_up=True)
        else:
            needed = len(pods)
        if "disruptionsAllowed" in status:
            return (int(status["disruptionsAllowed"]), int(status.get("desiredHealthy", needed)),
                    int(status.get("currentHealthy", healthy)))
        return healthy - needed, needed, healthy

    # -- watch ------------------------------------------------------------------------------

    def _serve_watch(self, handler: _Handler, target: _Target, query: Mapping[str, str]) -> None:
        rtype = target.rtype
        labels = _label_predicate(query["labelSelector"]) if query.get("labelSelector") else None
        fields = _field_predicate(query["fieldSelector"]) if query.get("fieldSelector") else None
        namespace = target.namespace if rtype.namespaced and target.namespace else None
        if target.name:  # a watch on one object is a watch with metadata.name=
            selector = f"metadata.name={target.name}"
            if query.get("fieldSelector"):
                selector += "," + query["fieldSelector"]
            fields = _field_predicate(selector)

        def matches(obj: Obj | None) -> bool:
            if obj is None:
                return False
            if namespace is not None and _meta(obj).get("namespace") != namespace:
                return False
            return (labels is None or labels(obj)) and (fields is None or fields(obj))

        timeout_s = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        rv_param = query.get("resourceVersion", "")
        try:
            start_rv = int(rv_param) if rv_param else 0
        except ValueError as exc:
            raise ApiError(400, f"invalid resourceVersion {rv_param!r}") from exc

        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        initial: list[Obj] = []
        with self._cond:
            self._open_watches += 1
            self._cond.notify_all()
            drop_gen, bookmark_gen = self._drop_gen, self._bookmark_gen
            if start_rv == 0:
                initial = [{"type": "ADDED", "object": copy.deepcopy(o)}
                           for o in self._items(rtype, namespace) if matches(o)]
                cursor = self._rv
            else:
                cursor = start_rv
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        try:
            for event in initial:
                self._send_chunk(handler, event)
            while True:
                out: list[Obj] = []
                with self._cond:
                    while True:
                        if self._drop_gen != drop_gen:
                            raise _Dropped
                        if self._stopping:
                            break
                        if cursor < self._compacted_rv:
                            out.append({"type": "ERROR", "object": ApiError(
                                410, f"too old resource version: {cursor} ({self._compacted_rv})").status()})
                            break
                        pending = self._events_after(cursor)
                        if pending:
                            break
                        if bookmarks and self._bookmark_gen != bookmark_gen:
                            break
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            break
                        self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
                    if not out and not self._stopping:
                        for ev in self._events_after(cursor):
                            if ev.rtype != rtype:
                                continue
                            new_in, old_in = matches(ev.obj), matches(ev.old)
                            if ev.type == "ADDED" and new_in:
                                out.append({"type": "ADDED", "object": copy.deepcopy(ev.obj)})
                            elif ev.type == "MODIFIED" and new_in:
                                out.append({"type": "MODIFIED" if old_in else "ADDED",
                                            "object": copy.deepcopy(ev.obj)})
                            elif (ev.type == "MODIFIED" and old_in) or (ev.type == "DELETED" and new_in):
                                out.append({"type": "DELETED", "object": copy.deepcopy(ev.obj)})
                        if self._events:
                            cursor = max(cursor, self._events[-1].rv)
                        cursor = max(cursor, self._rv)
                        if bookmarks and self._bookmark_gen != bookmark_gen:
                            bookmark_gen = self._bookmark_gen
                            out.append(self._bookmark(rtype, cursor))
                    stopping = self._stopping
                for event in out:
                    self._send_chunk(handler, event)
                if stopping or (out and out[-1]["type"] == "ERROR"):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    if bookmarks:
                        self._send_chunk(handler, self._bookmark(rtype, cursor))
                    break
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except _Dropped:
            handler.close_connection = True
            _shutdown(handler.connection)
        except OSError:
            handler.close_connection = True
        finally:
            with self._cond:
                self._open_watches -= 1
                self._cond.notify_all()

    def _events_after(self, cursor: int) -> list[_Event]:
        index = bisect.bisect_right(self._events, cursor, key=lambda e: e.rv)
        return self._events[index:]

    @staticmethod
    def _bookmark(rtype: ResourceType, rv: int) -> Obj:
        return {"type": "BOOKMARK", "object": {"kind": rtype.kind, "apiVersion": rtype.api_version,
                                               "metadata": {"resourceVersion": str(rv)}}}

    @staticmethod
    def _send_chunk(handler: _Handler, event: Obj) -> None:
        data = json.dumps(event).encode() + b"\n"
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        handler.wfile.flush()


def _scaled(value: Any, total: int, *, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        percent = int(value[:-1])
        scaled = total * percent / 100
        return int(-(-scaled // 1)) if round_up else int(scaled)
    return int(value)


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def iter_watch_events(response: Any) -> Iterator[Obj]:
    """Decode a raw watch response (urllib3) into events; for tests that watch by hand."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    """A started FakeApiServer, stopped after the test: ``.url``, ``.api_client()``, hooks."""
    server = FakeApiServer().start()
    try:
        yield server
    finally:
        server.stop()


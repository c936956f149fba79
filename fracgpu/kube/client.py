"""Build an official-client ``ApiClient`` and send requests through it as plain JSON.

``Transport`` is the one place where fracgpu talks HTTP to the API server: it uses the
official client's configuration, authentication (in-cluster token refresh included), TLS and
connection pool, sends and returns plain JSON dicts, and turns every failure into the
``fracgpu.kube.errors`` family.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import kubernetes.client
import kubernetes.config
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from fracgpu.api.v1beta1 import jsontext
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.kube import errors
from fracgpu.kube.objects import Obj

__all__ = [
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_MERGE_PATCH",
    "Transport",
    "WatchStream",
    "api_client_for_host",
    "api_client_from_kubeconfig",
    "api_client_in_cluster",
    "build_api_client",
]

log = logging.getLogger(__name__)

MERGE_PATCH: Final = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"
JSON_PATCH: Final = "application/json-patch+json"
_JSON: Final = "application/json"

Query = Mapping[str, str | int | bool | None] | Sequence[tuple[str, str | int | bool | None]]


def api_client_for_host(host: str, *, token: str | None = None, verify_ssl: bool = True,
                        ca_cert_path: str | None = None) -> kubernetes.client.ApiClient:
    """An ApiClient for an explicit server URL (tests use the fake server's ``url``)."""
    configuration = kubernetes.client.Configuration(host=host)
    configuration.verify_ssl = verify_ssl
    if ca_cert_path:
        configuration.ssl_ca_cert = ca_cert_path
    if token:
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
    return kubernetes.client.ApiClient(configuration)


def api_client_from_kubeconfig(path: str | None = None, context: str | None = None) -> kubernetes.client.ApiClient:
    """An ApiClient from a kubeconfig file (default: $KUBECONFIG or ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(config_file=path, context=context, client_configuration=configuration,
                                           persist_config=False)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as exc:
        # TypeError/KeyError/YAMLError: a kubeconfig that is not YAML or not shaped like one
        raise errors.KubeConfigError(f"kubeconfig {path or '(default)'} context {context or '(current)'}: "
                                     f"{exc}") from exc
    return kubernetes.client.ApiClient(configuration)


def api_client_in_cluster() -> kubernetes.client.ApiClient:
    """An ApiClient from the pod's service account (token re-read as it rotates)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, ValueError) as exc:
        raise errors.KubeConfigError(f"in-cluster config: {exc}") from exc
    return kubernetes.client.ApiClient(configuration)


def build_api_client(*, host: str | None = None, kubeconfig: str | None = None, context: str | None = None,
                     environ: Mapping[str, str] | None = None) -> kubernetes.client.ApiClient:
    """Explicit host, else an explicit kubeconfig/context, else in-cluster, else the default kubeconfig."""
    env = os.environ if environ is None else environ
    if host:
        return api_client_for_host(host)
    if kubeconfig or context:
        return api_client_from_kubeconfig(kubeconfig, context)
    if env.get("KUBERNETES_SERVICE_HOST"):
        return api_client_in_cluster()
    return api_client_from_kubeconfig(env.get("KUBECONFIG") or None)


class WatchStream:
    """An open watch response: iterate decoded events; ``abort()`` from any thread ends it."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._aborted = False

    def __iter__(self) -> Iterator[Obj]:
        buffer = b""
        try:
            for chunk in self._response.stream(amt=None, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        event = jsontext.loads(line, "watch event")
                        if not isinstance(event, dict):
                            raise errors.Unavailable(0, "BadWatchEvent", f"watch event is not an object: {line!r}")
                        yield event
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if self._aborted:
                return
            raise errors.Unavailable(0, "WatchBroken", f"watch stream broken: {exc}") from exc
        if buffer.strip() and not self._aborted:
            raise errors.Unavailable(0, "WatchBroken", "watch stream ended inside an event")

    def abort(self) -> None:
        """Unblock a reader waiting on the socket (safe to call from another thread, twice)."""
        self._aborted = True
        with contextlib.suppress(ValueError, RuntimeError, OSError, AttributeError):
            self._response.shutdown()

    def close(self) -> None:
        try:
            self._response.release_conn()
        finally:
            self._response.close()


class Transport:
    """Sends requests through an official-client ApiClient; JSON dicts in and out."""

    def __init__(self, api_client: kubernetes.client.ApiClient, *, timeout_s: float = 30.0,
                 connect_timeout_s: float = 10.0) -> None:
        self.api_client = api_client
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def request(self, method: str, path: str, *, query: Query | None = None, body: Any = None,
                content_type: str | None = None, timeout_s: float | None = None) -> Obj:
        """One request; the decoded JSON answer, or a ``KubeAPIError``."""
        response = self._send(method, path, query=query, body=body, content_type=content_type,
                              read_timeout_s=timeout_s or self.timeout_s)
        try:
            data = response.data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.Unavailable(0, "ReadFailed", f"{method} {path}: {exc}") from exc
        finally:
            response.release_conn()
        if not data:
            return {}
        try:
            decoded = jsontext.loads(data, "answer")
        except InvalidDocument as exc:
            raise errors.ServerError(response.status, "BadResponse", f"{method} {path}: {exc}") from exc
        return decoded if isinstance(decoded, dict) else {"items": decoded}

    def watch(self, path: str, *, query: Query | None = None, read_timeout_s: float | None = None) -> WatchStream:
        """Open a watch (``watch=true`` is added); the caller iterates and closes it."""
        params = list(_query_items(query))
        params.append(("watch", "true"))
        response = self._send("GET", path, query=params, body=None, content_type=None,
                              read_timeout_s=read_timeout_s)
        return WatchStream(response)

    def _send(self, method: str, path: str, *, query: Query | None, body: Any, content_type: str | None,
              read_timeout_s: float | None) -> Any:
        headers = {"Accept": _JSON}
        if body is not None:
            headers["Content-Type"] = content_type or _JSON
        params = [(k, v) for k, v in _query_items(query) if v is not None]
        try:
            serialized = self.api_client.param_serialize(
                method=method, resource_path=path, query_params=params or None, header_params=headers,
                body=body, auth_settings=["BearerToken"])
            http_method, url, header_params, body_params, post_params = serialized
            timeout: tuple[float, float | None] = (self.connect_timeout_s, read_timeout_s)
            rest = self.api_client.call_api(http_method, url, header_params=header_params, body=body_params,
                                            post_params=post_params, _request_timeout=timeout)
        except ApiException as exc:
            raise errors.error_from_response(exc.status or 0, exc.body, http_reason=str(exc.reason or "")) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.Unavailable(0, "Unreachable", f"{method} {path}: {exc}") from exc
        response = rest.response
        if not 200 <= response.status <= 299:
            try:
                data = response.data
            except (urllib3.exceptions.HTTPError, OSError):
                data = b""
            finally:
                response.release_conn()
            error = errors.error_from_response(response.status, data, http_reason=str(response.reason or ""),
                                               headers=response.headers)
            log.debug("kube request failed method=%s path=%s status=%s reason=%s", method, path,
                      error.status, error.reason)
            raise error
        return response


def _query_items(query: Query | None) -> Iterator[tuple[str, str | int | bool | None]]:
    if query is None:
        return
    items = query.items() if isinstance(query, Mapping) else query
    yield from items

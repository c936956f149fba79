"""The errors of the Kubernetes adapter: HTTP status -> a small exception hierarchy.

Nothing outside ``fracgpu.kube`` sees the official client's ``ApiException`` or urllib3's
errors; callers catch these instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fracgpu.api.v1beta1 import jsontext
from fracgpu.api.v1beta1.errors import InvalidDocument

__all__ = [
    "AlreadyExists",
    "BadRequest",
    "Conflict",
    "Expired",
    "Forbidden",
    "KubeAPIError",
    "KubeConfigError",
    "NotFound",
    "ServerError",
    "TooManyRequests",
    "Unavailable",
    "error_from_response",
    "error_from_status",
    "outcome_unknown",
]


class KubeConfigError(Exception):
    """No usable client configuration (kubeconfig missing or invalid, not in a cluster)."""


class KubeAPIError(Exception):
    """An API request failed; ``status`` is the HTTP code (0: no answer)."""

    retryable = False

    def __init__(self, status: int, reason: str, message: str, *,
                 details: Mapping[str, Any] | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message
        self.details: Mapping[str, Any] = details or {}
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, reason={self.reason!r}, message={self.message!r})"


class BadRequest(KubeAPIError):
    """400 or 422 (Invalid): the request itself is wrong; retrying will not help."""


class Forbidden(KubeAPIError):
    """401 or 403: RBAC or admission said no."""


class NotFound(KubeAPIError):
    """404: the object (or its namespace) does not exist."""


class Conflict(KubeAPIError):
    """409: stale resourceVersion, already bound, ...; re-read and try again."""


class AlreadyExists(Conflict):
    """409 AlreadyExists on create."""


class Expired(KubeAPIError):
    """410 Gone/Expired: a resourceVersion or continue token is too old; relist."""


class TooManyRequests(KubeAPIError):
    """429: throttled, or an eviction refused by a PodDisruptionBudget (see ``message``)."""

    retryable = True


class ServerError(KubeAPIError):
    """5xx: the server failed; worth retrying with backoff."""

    retryable = True


class Unavailable(KubeAPIError):
    """No HTTP answer at all: connection refused or reset, timeout, broken stream."""

    retryable = True


def error_from_status(code: int, status: Mapping[str, Any] | None, *, http_reason: str = "",
                      retry_after_s: float | None = None) -> KubeAPIError:
    """Map an HTTP code and a decoded ``Status`` object (if any) to an exception."""
    status = status or {}
    reason = str(status.get("reason") or http_reason or "Unknown")
    message = str(status.get("message") or http_reason or f"HTTP {code}")
    details = status.get("details") if isinstance(status.get("details"), Mapping) else None
    if retry_after_s is None and details and details.get("retryAfterSeconds"):
        retry_after_s = float(details["retryAfterSeconds"])
    cls: type[KubeAPIError]
    if code in (400, 422):
        cls = BadRequest
    elif code in (401, 403):
        cls = Forbidden
    elif code == 404:
        cls = NotFound
    elif code == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif code == 410:
        cls = Expired
    elif code == 429:
        cls = TooManyRequests
    elif code >= 500:
        cls = ServerError
    else:
        cls = KubeAPIError
    return cls(code, reason, message, details=details, retry_after_s=retry_after_s)


def error_from_response(code: int, body: bytes | str | None, *, http_reason: str = "",
                        headers: Mapping[str, str] | None = None) -> KubeAPIError:
    """Map an HTTP error answer (raw body, headers) to an exception."""
    status: Mapping[str, Any] | None = None
    if body:
        try:
            decoded = jsontext.loads(body, "error answer")
        except InvalidDocument:  # a proxy's HTML page, or a body no decoder should trust
            decoded = None
        if isinstance(decoded, dict):
            status = decoded
        elif not http_reason:
            http_reason = (body.decode(errors="replace") if isinstance(body, bytes) else body)[:200]
    retry_after_s: float | None = None
    if headers is not None:
        raw = headers.get("Retry-After")
        if raw:
            try:
                retry_after_s = float(raw)
            except ValueError:
                retry_after_s = None
    return error_from_status(code, status, http_reason=http_reason, retry_after_s=retry_after_s)


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a write that raised ``exc`` may still have been applied by the API server.

    True when no complete answer came back (``Unavailable``: timeout, connection refused or reset,
    broken stream; a raw ``OSError``), when a 2xx answer could not be read, and for the server's own
    timeout (504, reason ``Timeout`` or ``ServerTimeout``): the request may go on inside the server.
    Every other answer (4xx, 429, other 5xx) is a definite refusal: nothing was written.
    """
    if isinstance(exc, KubeAPIError):
        return (exc.status == 0 or 200 <= exc.status < 300 or exc.status == 504
                or exc.reason in ("Timeout", "ServerTimeout"))
    return isinstance(exc, OSError)

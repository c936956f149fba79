"""RFC 3339 timestamps as Kubernetes writes and reads them: the one place for the format.

- ``format_time``: metav1.Time, UTC to the whole second (``2026-01-02T03:04:05Z``): creation and Event
  timestamps, taint ``timeAdded``, ``assignedAt``, TenantQuota conditions.
- ``format_micro_time``: metav1.MicroTime, UTC with microseconds (Lease ``renewTime``/``acquireTime``).
- ``parse``: either form (or any offset) to Unix seconds; a timestamp without a zone is not RFC 3339.

Moments in are a ``datetime`` (its own zone) or Unix seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_micro_time", "format_time", "parse", "parse_or_zero", "utc_now"]

_SECONDS = "%Y-%m-%dT%H:%M:%SZ"
_MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime | float) -> datetime:
    if isinstance(moment, datetime):
        return moment.astimezone(UTC)
    return datetime.fromtimestamp(moment, UTC)


def format_time(moment: datetime | float) -> str:
    """metav1.Time: the second the moment falls in (fractions are dropped, as the API server does)."""
    return _utc(moment).strftime(_SECONDS)


def format_micro_time(moment: datetime | float) -> str:
    """metav1.MicroTime."""
    return _utc(moment).strftime(_MICRO)


def parse(text: str) -> float:
    """Unix seconds; ValueError when ``text`` is not an RFC 3339 timestamp with a zone."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.timestamp()


def parse_or_zero(text: str) -> float:
    """``parse``, or 0.0 (the epoch: older than anything) when unreadable."""
    try:
        return parse(text)
    except ValueError:
        return 0.0

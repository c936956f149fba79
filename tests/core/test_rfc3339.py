"""RFC 3339 as the API server writes and reads it (metav1.Time, metav1.MicroTime): one module for every caller."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fracgpu.api import rfc3339

MOMENT = datetime(2026, 11, 22, 22, 17, 15, 123456, tzinfo=UTC)


@pytest.mark.parametrize(("moment", "time", "micro"), [
    (MOMENT, "2026-11-22T22:17:15Z", "2026-11-22T22:17:15.123456Z"),
    (MOMENT.astimezone(timezone(timedelta(hours=2))), "2026-11-22T22:17:15Z", "2026-11-22T22:17:15.123456Z"),
    (MOMENT.timestamp(), "2026-11-22T22:17:15Z", "2026-11-22T22:17:15.123456Z"),
    (0.0, "1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000000Z"),
], ids=["utc datetime", "other zone", "unix seconds", "epoch"])
def test_formats_are_utc_with_z(moment: datetime | float, time: str, micro: str) -> None:
    assert rfc3339.format_time(moment) == time
    assert rfc3339.format_micro_time(moment) == micro


@pytest.mark.parametrize(("text", "seconds"), [
    ("2026-11-22T22:17:15Z", 1795385835.0),
    ("2026-11-22T22:17:15.5Z", 1795385835.5),
    ("2026-11-23T00:17:15+02:00", 1795385835.0),
    ("2026-11-22T22:17:15.123456Z", MOMENT.timestamp()),
])
def test_parse_reads_what_the_api_server_writes(text: str, seconds: float) -> None:
    assert rfc3339.parse(text) == seconds
    assert rfc3339.parse(rfc3339.format_micro_time(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "garbage", "2026-11-22T22:17:15", "2026-11-22"],
                         ids=["empty", "garbage", "no zone", "date only"])
def test_not_a_timestamp(text: str) -> None:
    with pytest.raises(ValueError):
        rfc3339.parse(text)
    assert rfc3339.parse_or_zero(text) == 0.0

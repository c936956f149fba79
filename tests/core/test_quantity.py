"""Kubernetes quantities as exact integers, and every way a quantity can be wrong."""

from __future__ import annotations

import pytest

from fracgpu.core.quantity import QuantityError, format_bytes, parse_bytes, parse_count, parse_milli, parse_quantity

GI = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8Gi", 8 * GI),
        ("1.5Gi", 3 * GI // 2),
        ("512Mi", 512 * 1024**2),
        ("1G", 10**9),
        ("1e3", 1000),
        ("1E3", 1000),  # an exponent, not exa: Kubernetes reads "1E3" as 1000
        ("4P", 4 * 10**15),  # peta
        ("100", 100),
        (" 42 ", 42),
        (7, 7),
        ("+5", 5),
        ("0", 0),
    ],
)
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1Gi", "must not be negative"),
        ("0.5", "whole number of bytes"),
        ("100m", "whole number of bytes"),
        ("8GB", "not a quantity"),
        ("", "not a quantity"),
        ("Gi", "not a quantity"),
        ("1e400", "out of range"),
        ("1E", "too large"),  # exa: more than MAX_QUANTITY (core/test_int64_bounds.py)
        ("nan", "not a quantity"),
        ("1..2", "not a quantity"),
    ],
)
def test_parse_bytes_refuses(text: str, message: str) -> None:
    with pytest.raises(QuantityError, match=message):
        parse_bytes(text)


def test_exa_is_a_suffix_and_an_exponent_is_not() -> None:
    assert parse_quantity("1E") == 10**18
    assert parse_quantity("1E3") == 1000


@pytest.mark.parametrize(("text", "expected"), [("50", 50), ("1e2", 100), ("200", 200)])
def test_parse_count(text: str, expected: int) -> None:
    assert parse_count(text) == expected


@pytest.mark.parametrize("text", ["0.5", "-3", "500m", "abc", "1.5"])
def test_parse_count_refuses(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_count(text)


@pytest.mark.parametrize(("text", "expected"), [("500m", 500), ("2", 2000), ("0.1", 100), ("1u", 1), ("1.0001", 1001)])
def test_parse_milli_rounds_up(text: str, expected: int) -> None:
    assert parse_milli(text) == expected


@pytest.mark.parametrize(("n", "text"), [(0, "0"), (8 * GI, "8Gi"), (1536 * 1024**2, "1536Mi"), (1500, "1500")])
def test_format_bytes_round_trips(n: int, text: str) -> None:
    assert format_bytes(n) == text
    assert parse_bytes(text) == n


def test_bool_is_not_a_quantity() -> None:
    with pytest.raises(QuantityError):
        parse_bytes(True)

"""Kubernetes quantities ("8Gi", "500m", "1e3") as exact integers: bytes and vgpu-core units.

The official client has a parser (kubernetes.utils.parse_quantity) but the core may not import
the client, so this is a small exact re-implementation of the same grammar over Decimal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
# sign, digits with optional fraction, then a binary suffix, a decimal suffix, or an exponent
_QUANTITY = re.compile(r"^([+-]?)(\d+\.?\d*|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
_MAX_EXPONENT = 30  # anything larger is not a real resource amount and would make huge ints
# The largest amount fracgpu reads (4Pi bytes, 2^52 units): more than any real node, pod or quota, and far
# enough below int64 (2^63) that the placement ledger adds up a node's allocatable and 2,000 pods' requests
# without overflowing.
MAX_QUANTITY = 2**52


class QuantityError(ValueError):
    """A quantity string that Kubernetes would refuse, or one fracgpu cannot use."""


def parse_quantity(text: str | int) -> Decimal:
    if isinstance(text, bool):
        raise QuantityError(f"not a quantity: {text!r}")
    if isinstance(text, int):
        return Decimal(text)
    if not isinstance(text, str):
        raise QuantityError(f"not a quantity: {text!r}")
    m = _QUANTITY.match(text.strip())
    if m is None:
        raise QuantityError(f"not a quantity: {text!r}")
    sign, number, suffix = m.group(1), m.group(2), m.group(3) or ""
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise QuantityError(f"not a quantity: {text!r}") from None
    if suffix in _BINARY:
        value *= _BINARY[suffix]
    elif suffix in _DECIMAL:
        value *= _DECIMAL[suffix]
    else:
        exponent = int(suffix[1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(f"quantity out of range: {text!r}")
        value = value.scaleb(exponent)
    return -value if sign == "-" else value


def _whole(text: str | int, what: str, maximum: int, shown: Callable[[int], str], unit: str) -> int:
    value = parse_quantity(text)
    if value < 0:
        raise QuantityError(f"{what} must not be negative, got {text!r}")
    if value > maximum:
        raise QuantityError(f"{what} is too large, got {text!r} (at most {shown(maximum)})")
    if value != value.to_integral_value():
        raise QuantityError(f"{what} must be a whole number{unit}, got {text!r}")
    return int(value)


def parse_bytes(text: str | int, *, what: str = "quantity", maximum: int = MAX_QUANTITY) -> int:
    """A non-negative whole number of bytes ("8Gi" -> 8589934592), at most `maximum`."""
    return _whole(text, what, maximum, format_bytes, " of bytes")


def parse_count(text: str | int, *, what: str = "quantity") -> int:
    """A non-negative whole count ("50" -> 50; "0.5" and "-1" are refused), at most MAX_QUANTITY."""
    return _whole(text, what, MAX_QUANTITY, str, "")


MAX_WHOLE_MILLI = MAX_QUANTITY // 1000  # parse_milli's bound, in whole units (cores)


def parse_milli(text: str | int, *, what: str = "quantity") -> int:
    """CPU-style quantities in thousandths ("500m" -> 500, "2" -> 2000), rounded up as Kubernetes does;
    at most MAX_WHOLE_MILLI whole units."""
    value = parse_quantity(text)
    if value < 0:
        raise QuantityError(f"{what} must not be negative, got {text!r}")
    if value > MAX_WHOLE_MILLI:
        raise QuantityError(f"{what} is too large, got {text!r} (at most {MAX_WHOLE_MILLI})")
    milli = value * 1000
    whole = int(milli)
    return whole if milli == whole else whole + 1


def format_bytes(n: int) -> str:
    """The shortest exact binary form: 8589934592 -> "8Gi", 1500 -> "1500"."""
    if n == 0:
        return "0"
    for suffix, factor in reversed(list(_BINARY.items())):
        if n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


def format_bytes_human(n: int) -> str:
    """A rounded form for reasons and tables: 12.5Gi."""
    for suffix, factor in reversed(list(_BINARY.items())):
        if n >= factor:
            value = n / factor
            return f"{value:.0f}{suffix}" if value == int(value) else f"{value:.1f}{suffix}"
    return str(n)

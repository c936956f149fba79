"""Strict readers for JSON documents: every bad field names itself in the error."""

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from fracgpu.api.v1beta1 import jsontext
from fracgpu.api.v1beta1.errors import InvalidDocument


def obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidDocument(f"{where}: expected an object, got {type(value).__name__}")
    return value


def lst(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidDocument(f"{where}: expected a list, got {type(value).__name__}")
    return value


def objects(value: Any, where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each item of the list `value` as an object, with the place it stands (`where[i]`)."""
    for i, item in enumerate(lst(value, where)):
        yield f"{where}[{i}]", obj(item, f"{where}[{i}]")


def versioned(text: str, what: str, supported: int) -> Mapping[str, Any]:
    """The top object of a JSON document `what` whose format version is the one this build reads."""
    top = obj(jsontext.loads(text, what), what)
    found = integer(top, "version", what, minimum=1)
    if found != supported:
        raise InvalidDocument(f"{what}.version: unsupported {found}, this build reads {supported}")
    return top


def string(d: Mapping[str, Any], key: str, where: str, *, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise InvalidDocument(f"{where}.{key}: expected a string, got {_kind(value)}")
    return value


def choice(d: Mapping[str, Any], key: str, where: str, allowed: Collection[str]) -> str:
    """A string field that must be one of `allowed`."""
    value = string(d, key, where)
    if value not in allowed:
        raise InvalidDocument(f"{where}.{key}: one of {', '.join(allowed)}, got {value!r}")
    return value


# Kubernetes' integers are int64, and so are the placement ledger's arrays.
INT64_MAX = 2**63 - 1


def integer(
    d: Mapping[str, Any], key: str, where: str, *, minimum: int = 0, maximum: int = INT64_MAX,
    default: int | None = None,
) -> int:
    value = d.get(key, default)
    # bool is an int in Python but never a valid count here
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidDocument(f"{where}.{key}: expected an integer, got {_kind(value)}")
    if value < minimum:
        raise InvalidDocument(f"{where}.{key}: must be >= {minimum}, got {_number(value)}")
    if value > maximum:
        raise InvalidDocument(f"{where}.{key}: must be <= {maximum}, got {_number(value)}")
    return value


def boolean(d: Mapping[str, Any], key: str, where: str, *, default: bool | None = None) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise InvalidDocument(f"{where}.{key}: expected true or false, got {_kind(value)}")
    return value


def _number(value: int) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"a {len(text)}-digit number"


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]

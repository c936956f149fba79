"""Decoding JSON that someone else wrote: a request body, an annotation, an API server's answer.

`json.loads` raises more than `JSONDecodeError` on hostile text: `ValueError` for an integer over
Python's int-string conversion limit (4,300 digits by default), `RecursionError` for deep nesting,
`UnicodeDecodeError` for bytes that are not UTF-8. `loads` turns each of these into
`InvalidDocument` with a message that says where, so a caller catches one error and answers 400 or
marks the object invalid, and nothing crashes. (`NaN`/`Infinity` stay accepted, as `json.loads`
does: the field's own check refuses them, while refusing them here would fail a whole list answer
for one object.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from fracgpu.api.v1beta1.errors import InvalidDocument

__all__ = ["loads"]


def loads(raw: str | bytes | bytearray, what: str) -> Any:
    """The decoded document; InvalidDocument naming `what` (and the field, where there is one)."""
    if not isinstance(raw, str | bytes | bytearray):
        raise InvalidDocument(f"{what}: not JSON: expected text, got {type(raw).__name__}")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidDocument(f"{what}: not JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise InvalidDocument(f"{what}: not JSON: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise InvalidDocument(f"{what}: nested too deeply to decode") from None
    except ValueError:
        # the only other ValueError of the decoder: an integer over the int-string limit
        raise InvalidDocument(f"{what}: {_oversized(raw)}") from None


class _Oversized:
    """Stands in for an integer too long to convert, so that a second pass can say where it is."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _oversized(raw: str | bytes | bytearray) -> str:
    """Why the document failed on an integer; the second pass runs only on that failure path."""
    limit = sys.get_int_max_str_digits()

    def parse_int(text: str) -> Any:
        digits = len(text) - text.startswith("-")
        return _Oversized(digits) if limit and digits > limit else int(text)

    try:
        doc = json.loads(raw, parse_int=parse_int)
    except (ValueError, RecursionError) as e:
        return f"not JSON: {e}"
    for path, value in _walk(doc):
        if isinstance(value, _Oversized):
            return f"number too large at {path} ({value.digits} digits, at most {limit})"
    return "not JSON: a number could not be decoded"


def _walk(doc: Any) -> Iterator[tuple[str, Any]]:
    """(path, value) of every value in document order, without recursion (the document may be deep)."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        path, value = stack.pop()
        yield (path or "the top level"), value
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))

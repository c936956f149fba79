"""Reading a whole HTTP request body in the servers fracgpu runs (extender, webhook).

A body arrives in pieces: kube-scheduler's Go client writes it in 4 KiB chunks, TLS splits it into
records, and a large one spans many TCP segments. `StreamReader.read(n)` returns only what is
buffered, so one call may hold a part of the body. `read_body` reads until the end of the body
(Content-Length or chunked), with a limit that is answered 413 and a bound on how long the client
may send nothing, so a client that stops mid-body costs a bounded wait, never a hung handler.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["DEFAULT_BODY_IDLE_TIMEOUT_S", "BodyError", "read_body"]

# Longer than any pause of a live client between two writes; kube-scheduler's whole call to an
# extender is bounded by its httpTimeout, the API server's call to a webhook by timeoutSeconds (10 s).
DEFAULT_BODY_IDLE_TIMEOUT_S = 10.0


class BodyError(Exception):
    """The body could not be read whole: `status` is the HTTP answer (413, 408 or 400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: web.Request, limit: int, idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S) -> bytes:
    """The whole body, at most `limit` bytes; BodyError when it is larger, stalls or is cut."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    try:
        while True:
            async with asyncio.timeout(idle_timeout_s):
                chunk = await request.content.readany()
            if not chunk:  # readany returns b"" only at the end of the body
                break
            body += chunk
            if len(body) > limit:
                raise BodyError(413, f"request body exceeds the limit of {limit} bytes "
                                     f"({len(body)} bytes read so far)")
    except TimeoutError:
        expected = f"of {declared} " if declared is not None else ""
        raise BodyError(408, f"request body stalled: {len(body)} bytes {expected}received, then nothing for "
                             f"{idle_timeout_s:g} s") from None
    except (ConnectionError, HttpProcessingError) as e:
        # the client closed mid-body, or a chunked encoding the parser refused
        raise BodyError(400, f"request body could not be read: {e}") from None
    return bytes(body)

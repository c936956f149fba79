"""An HTTP/1.1 client on a raw socket that puts a request on the wire the way Go's net/http does.

kube-scheduler's extender client and the API server's webhook client are Go programs. Go's transport
writes through a 4 KiB bufio.Writer on a TCP_NODELAY socket: the request line and headers, then the
body, leave in 4 KiB writes, each its own TCP segment (or TLS record), with the scheduler's own work
between them. A body of known length carries Content-Length; one read from a stream goes chunked.
aiohttp's test client hands the server the whole body in one buffer, so it never shows what a server
does with a body that is only partly there. This client does, with bounded pauses between writes.

Blocking on purpose (a plain socket, as the other side of the wire is); call it from a thread when
the server runs on the test's event loop.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

GO_WRITE_SIZE = 4096  # net/http's default Transport.WriteBufferSize


@dataclass(frozen=True)
class Framing:
    """How a request body goes on the wire."""

    name: str
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length
    write_size: int | None = GO_WRITE_SIZE  # bytes per send(); None: the whole request in one send
    pause_s: float = 0.002  # between writes, so that each one reaches the server on its own
    pause_every: int = 1  # pause after every Nth write (keeps a 50,000-node body fast)

    def __str__(self) -> str:
        return self.name


ONE_PIECE = Framing("one piece", write_size=None, pause_s=0.0)
GO_LENGTH = Framing("Content-Length, 4 KiB writes")
GO_CHUNKED = Framing("chunked, 4 KiB writes", chunked=True)


def sparse(framing: Framing, every: int) -> Framing:
    """The same framing, pausing only every `every` writes (for multi-MB bodies)."""
    return Framing(f"{framing.name}, a pause every {every}", framing.chunked, framing.write_size,
                   framing.pause_s, every)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive connection, plain or TLS, that sends requests as Go does."""

    def __init__(self, port: int, *, tls: ssl.SSLContext | None = None, server_hostname: str = "127.0.0.1",
                 timeout_s: float = 5.0, host: str = "127.0.0.1") -> None:
        raw = socket.create_connection((host, port), timeout=timeout_s)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go sets on every TCP connection
        self.sock: socket.socket = tls.wrap_socket(raw, server_hostname=server_hostname) if tls else raw
        self.host = host
        self._buffer = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def post(self, path: str, body: bytes, framing: Framing = GO_LENGTH) -> Answer:
        """Send one POST with `framing` and read its answer."""
        self.send(wire_bytes(path, body, framing, self.host), framing)
        return self.read_answer()

    def send(self, data: bytes, framing: Framing) -> None:
        """Write `data` in `framing`'s pieces. A server may answer and close before the body is all
        written (413): the writes stop and the answer is still read, as Go's transport does."""
        size = framing.write_size or len(data) or 1
        try:
            for n, start in enumerate(range(0, len(data), size), 1):
                self.sock.sendall(data[start:start + size])
                if framing.pause_s and n % framing.pause_every == 0 and start + size < len(data):
                    time.sleep(framing.pause_s)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
            return

    def read_answer(self) -> Answer:
        """The next answer on this connection (Content-Length, chunked, or up to the close)."""
        head = self._read_until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
        if "content-length" in headers:
            body = self._read_exactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                parts.append(self._read_exactly(size))
                self._read_exactly(2)
                if size == 0:
                    break
            body = b"".join(parts)
        else:
            body = self._buffer + self._read_to_close()
            self._buffer = b""
        return Answer(status, headers, body)

    def closed_by_server(self) -> bool:
        """Whether the server has closed this connection (reads EOF within the socket timeout)."""
        try:
            return not self._buffer and self.sock.recv(1) == b""
        except (TimeoutError, ConnectionError):
            return False

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed by the server; {len(self._buffer)} bytes unread")
        self._buffer += chunk

    def _read_until(self, sep: bytes) -> bytes:
        while sep not in self._buffer:
            self._fill()
        out, self._buffer = self._buffer.split(sep, 1)
        return out

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def _read_to_close(self) -> bytes:
        parts = []
        while chunk := self.sock.recv(65536):
            parts.append(chunk)
        return b"".join(parts)


def wire_bytes(path: str, body: bytes, framing: Framing, host: str = "127.0.0.1") -> bytes:
    """The request as Go writes it: request line, headers, then the body (raw or chunk-encoded)."""
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "User-Agent: Go-http-client/1.1"]
    if framing.chunked:
        head.append("Transfer-Encoding: chunked")
        size = framing.write_size or max(1, len(body))
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                           for i in range(0, len(body), size))
        payload = encoded + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    head += ["Content-Type: application/json", "Accept-Encoding: gzip", "", ""]
    return "\r\n".join(head).encode("latin-1") + payload

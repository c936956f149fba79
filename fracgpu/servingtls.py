"""Serving TLS for fracgpu's HTTPS endpoints (webhook, extender): contexts and certificate reload.

Certificates are files, normally a Secret the kubelet mounts (written by cert-manager or by hand);
``CertificateReloader`` loads a rotated pair into the live context, so a renewed certificate is
served without a restart. With a client CA, connections may present a client certificate, which
must then chain to that CA; whether a request *must* have one is the application's decision
(``peer_certificate``), so that kubelet probes, which present none, can still reach /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)


def make_server_context(cert_file: str, key_file: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context with TLS 1.2 or later; OSError/ssl.SSLError when the files are unusable.

    With ``client_ca``, a client certificate is asked for (optional at the TLS level) and, when
    presented, verified against that CA: a certificate from another CA fails the handshake.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def peer_certificate(transport: Any) -> dict[str, Any] | None:
    """The verified client certificate of a connection (``ssl.getpeercert()``), or None."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    cert = ssl_object.getpeercert()
    return cert if isinstance(cert, dict) and cert else None


def certificate_names(cert: dict[str, Any]) -> set[str]:
    """The subject common names and DNS / URI subject alternative names of a peer certificate."""
    names: set[str] = set()
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value))
    for kind, value in cert.get("subjectAltName", ()):
        if kind in ("DNS", "URI"):
            names.add(str(value))
    return names


class CertificateReloader:
    """Loads the certificate and key (and the client CA) into a live context again when a file changes.

    New connections get the new certificate; open ones keep theirs. A half-written pair (the
    kubelet swaps Secret files atomically, but a hand copy may not) keeps the old certificate.
    A changed client CA file is *added* to the trusted CAs (OpenSSL cannot remove one): a CA
    rotation trusts both until the next restart.
    """

    def __init__(self, ctx: ssl.SSLContext, cert_file: str, key_file: str, client_ca: str | None = None) -> None:
        self._ctx = ctx
        self._files = (cert_file, key_file)
        self._ca = client_ca
        self._seen = self._stamp()

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in (*self._files, *((self._ca,) if self._ca else ())):
            try:
                st = os.stat(path)
            except OSError:
                stamps.append((-1, -1))
            else:
                stamps.append((st.st_mtime_ns, st.st_ino))
        return tuple(stamps)

    def check(self) -> bool:
        """Reload when the files changed since the last load; True when a new pair was loaded."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        try:
            self._ctx.load_cert_chain(*self._files)
            if self._ca:
                self._ctx.load_verify_locations(cafile=self._ca)
        except (OSError, ssl.SSLError) as e:
            log.warning("certificate reload failed cert=%s error=%r; serving the previous one", self._files[0], e)
            return False
        self._seen = stamp
        log.info("certificate reloaded cert=%s", self._files[0])
        return True


def reload_task(reloader: CertificateReloader, every_s: float) -> Callable[[Any], AsyncIterator[None]]:
    """An aiohttp cleanup context that runs ``reloader.check()`` every ``every_s`` (0: never)."""

    async def run(_: Any) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every_s)
                reloader.check()

        task = asyncio.create_task(loop()) if every_s > 0 else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return run

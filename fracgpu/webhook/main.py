"""`fracgpu webhook`: the mutating admission webhook over TLS.

Flags fall back to environment variables (FRACGPU_WEBHOOK_*). The certificate and key are files,
normally a Secret mounted by the kubelet (written by cert-manager or by hand, see
docs/admission.md); they are re-read when they change, so a rotated certificate is served
without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from fracgpu.webhook.app import DEFAULT_MAX_BODY_BYTES, WebhookConfig, make_app

log = logging.getLogger(__name__)

DEFAULT_CERT_FILE = "/etc/fracgpu/webhook-tls/tls.crt"
DEFAULT_KEY_FILE = "/etc/fracgpu/webhook-tls/tls.key"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    cert_file: str
    key_file: str
    bind_address: str
    port: int
    max_body_bytes: int
    cert_reload_seconds: float
    log_level: str


def make_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context with TLS 1.2 or later; OSError/ssl.SSLError when the files are unusable."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class CertificateReloader:
    """Loads the certificate and key into a live context again when either file changes.

    New connections get the new certificate; open ones keep theirs. A half-written pair (the
    kubelet swaps Secret files atomically, but a hand copy may not) keeps the old certificate.
    """

    def __init__(self, ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
        self._ctx = ctx
        self._files = (cert_file, key_file)
        self._seen = self._stamp()

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._files:
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
        except (OSError, ssl.SSLError) as e:
            log.warning("certificate reload failed cert=%s error=%r; serving the previous one", self._files[0], e)
            return False
        self._seen = stamp
        log.info("certificate reloaded cert=%s", self._files[0])
        return True


def _env_float(environ: Mapping[str, str], key: str, default: float) -> float:
    raw = environ.get(key)
    return default if raw is None or raw == "" else float(raw)


def parse_args(argv: list[str], environ: Mapping[str, str]) -> ServerConfig:
    e = environ.get
    p = argparse.ArgumentParser(prog="fracgpu webhook", description="Mutating admission webhook for GPU pods.")
    p.add_argument("--cert-file", default=e("FRACGPU_WEBHOOK_CERT_FILE", DEFAULT_CERT_FILE),
                   help="TLS certificate (PEM) [env FRACGPU_WEBHOOK_CERT_FILE]")
    p.add_argument("--key-file", default=e("FRACGPU_WEBHOOK_KEY_FILE", DEFAULT_KEY_FILE),
                   help="TLS private key (PEM) [env FRACGPU_WEBHOOK_KEY_FILE]")
    p.add_argument("--bind-address", default=e("FRACGPU_WEBHOOK_BIND_ADDRESS", "0.0.0.0"),
                   help="address to listen on [env FRACGPU_WEBHOOK_BIND_ADDRESS]")
    p.add_argument("--port", type=int, default=int(e("FRACGPU_WEBHOOK_PORT") or 8443),
                   help="HTTPS port [env FRACGPU_WEBHOOK_PORT] (default 8443)")
    p.add_argument("--max-body-bytes", type=int,
                   default=int(e("FRACGPU_WEBHOOK_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES),
                   help="largest request body accepted [env FRACGPU_WEBHOOK_MAX_BODY_BYTES]")
    p.add_argument("--cert-reload-seconds", type=float,
                   default=_env_float(environ, "FRACGPU_WEBHOOK_CERT_RELOAD_SECONDS", 60.0),
                   help="how often to look for a rotated certificate, 0 = never "
                        "[env FRACGPU_WEBHOOK_CERT_RELOAD_SECONDS]")
    p.add_argument("--log-level", default=e("FRACGPU_LOG_LEVEL", "INFO"),
                   help="DEBUG, INFO, WARNING, ERROR [env FRACGPU_LOG_LEVEL]")
    ns = p.parse_args(argv)
    if not 0 < ns.port < 65536:
        p.error(f"--port {ns.port} is not a TCP port")
    if ns.max_body_bytes <= 0:
        p.error("--max-body-bytes must be positive")
    return ServerConfig(
        cert_file=ns.cert_file,
        key_file=ns.key_file,
        bind_address=ns.bind_address,
        port=ns.port,
        max_body_bytes=ns.max_body_bytes,
        cert_reload_seconds=ns.cert_reload_seconds,
        log_level=ns.log_level.upper(),
    )


def _reload_ctx(
    reloader: CertificateReloader, every: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(_: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                reloader.check()

        task = asyncio.create_task(loop()) if every > 0 else None
        yield
        if task is not None:
            task.cancel()

    return run


def main(argv: list[str], environ: Mapping[str, str] | None = None) -> int:
    try:
        cfg = parse_args(argv, os.environ if environ is None else environ)
    except ValueError as e:
        print(f"fracgpu webhook: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, or a flag argparse refused (it printed why)
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        ctx = make_ssl_context(cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError) as e:
        print(f"fracgpu webhook: cannot load certificate {cfg.cert_file} / key {cfg.key_file}: {e}",
              file=sys.stderr)
        return 2
    app = make_app(WebhookConfig(max_body_bytes=cfg.max_body_bytes))
    app.cleanup_ctx.append(_reload_ctx(CertificateReloader(ctx, cfg.cert_file, cfg.key_file),
                                       cfg.cert_reload_seconds))
    log.info("webhook serving address=%s port=%d", cfg.bind_address, cfg.port)
    web.run_app(app, host=cfg.bind_address, port=cfg.port, ssl_context=ctx, print=None,
                access_log=None)
    return 0

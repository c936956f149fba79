"""`fracgpu webhook`: the mutating admission webhook over TLS.

Flags fall back to environment variables (FRACGPU_WEBHOOK_*). The certificate and key are files,
normally a Secret mounted by the kubelet (written by cert-manager or by hand, see
docs/admission.md); they are re-read when they change, so a rotated certificate is served
without a restart.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from fracgpu.kube.tls import CertificateReloader, make_server_context, reload_task
from fracgpu.webhook.app import DEFAULT_MAX_BODY_BYTES, WebhookConfig, make_app

log = logging.getLogger(__name__)

__all__ = ["CertificateReloader", "ServerConfig", "main", "make_ssl_context", "parse_args"]

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
    return make_server_context(cert_file, key_file)


def _env_float(environ: Mapping[str, str], key: str, default: float) -> float:
    raw = environ.get(key)
    return default if raw is None or raw == "" else float(raw)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command's parser (also read by fracgpu.configref for docs/configuration.md)."""
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
    return p


def parse_args(argv: list[str], environ: Mapping[str, str]) -> ServerConfig:
    p = build_parser(environ)
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
    app.cleanup_ctx.append(reload_task(CertificateReloader(ctx, cfg.cert_file, cfg.key_file),
                                       cfg.cert_reload_seconds))
    log.info("webhook serving address=%s port=%d", cfg.bind_address, cfg.port)
    web.run_app(app, host=cfg.bind_address, port=cfg.port, ssl_context=ctx, print=None,
                access_log=None)
    return 0

"""`fracgpu webhook`: the mutating admission webhook over TLS.

Flags fall back to environment variables (FRACGPU_WEBHOOK_<FLAG>, e.g. FRACGPU_WEBHOOK_TLS_CERT).
The certificate and key are files, normally a Secret mounted by the kubelet (written by
cert-manager or by hand, see docs/admission.md); they are re-read when they change, so a rotated
certificate is served without a restart.
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

from fracgpu.servingtls import CertificateReloader, make_server_context, reload_task
from fracgpu.startup import (
    Flag,
    Parser,
    StartupError,
    add_config_flag,
    add_flags,
    listen,
    log_level,
    port,
    positive_int,
    seconds,
    start_logging,
)
from fracgpu.webhook.app import DEFAULT_MAX_BODY_BYTES, WebhookConfig, make_app

log = logging.getLogger(__name__)

__all__ = ["CertificateReloader", "ServerConfig", "main", "make_ssl_context", "parse_args"]

DEFAULT_CERT_FILE = "/etc/fracgpu/webhook-tls/tls.crt"
DEFAULT_KEY_FILE = "/etc/fracgpu/webhook-tls/tls.key"
ENV_PREFIX = "FRACGPU_WEBHOOK_"


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


FLAGS = (
    Flag("tls-cert", "TLS certificate (PEM), re-read when it changes", DEFAULT_CERT_FILE, metavar="FILE",
         old=("cert-file",)),
    Flag("tls-key", "TLS private key (PEM) of --tls-cert", DEFAULT_KEY_FILE, metavar="FILE", old=("key-file",)),
    Flag("bind-address", "address to listen on (0.0.0.0: every IPv4 address)", "0.0.0.0", metavar="ADDRESS"),
    Flag("port", "HTTPS port", "8443", port),
    Flag("max-body-bytes", "largest request body accepted, in bytes", str(DEFAULT_MAX_BODY_BYTES), positive_int),
    Flag("cert-reload", "seconds between checks for a rotated certificate (0: never)", "60", seconds,
         old=("cert-reload-seconds",)),
    Flag("log-level", "DEBUG, INFO, WARNING or ERROR", "INFO", log_level, env=("FRACGPU_LOG_LEVEL",)),
)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command's parser (also read by scripts/gen_config_reference.py for docs/configuration.md)."""
    p = Parser(prog="fracgpu webhook", description="Mutating admission webhook for GPU pods.")
    add_config_flag(p, environ)
    add_flags(p, FLAGS, environ, env_prefix=ENV_PREFIX)
    return p


def parse_args(argv: list[str], environ: Mapping[str, str]) -> ServerConfig:
    ns = build_parser(environ).parse_args(argv)
    return ServerConfig(
        cert_file=ns.tls_cert,
        key_file=ns.tls_key,
        bind_address=ns.bind_address,
        port=ns.port,
        max_body_bytes=ns.max_body_bytes,
        cert_reload_seconds=ns.cert_reload,
        log_level=ns.log_level,
    )


def main(argv: list[str], environ: Mapping[str, str] | None = None) -> int:
    try:
        cfg = parse_args(argv, os.environ if environ is None else environ)
    except ValueError as e:
        print(f"fracgpu webhook: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, or a flag argparse refused (it printed why)
        return e.code if isinstance(e.code, int) else 2
    start_logging(cfg.log_level)
    try:
        ctx = make_ssl_context(cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError) as e:
        print(f"fracgpu webhook: cannot load certificate {cfg.cert_file} / key {cfg.key_file}: {e}",
              file=sys.stderr)
        return 2
    app = make_app(WebhookConfig(max_body_bytes=cfg.max_body_bytes))
    app.cleanup_ctx.append(reload_task(CertificateReloader(ctx, cfg.cert_file, cfg.key_file),
                                       cfg.cert_reload_seconds))
    try:
        sock = listen(cfg.bind_address, cfg.port)  # before saying "serving": a busy port is one line
    except StartupError as e:
        print(f"fracgpu webhook: {e}", file=sys.stderr)
        return 2
    log.info("webhook serving address=%s port=%d", cfg.bind_address, cfg.port)
    web.run_app(app, sock=sock, ssl_context=ctx, print=None, access_log=None)
    return 0

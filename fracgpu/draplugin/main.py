"""`fracgpu dra-driver`: flags (with environment fallbacks), wiring, signals.

Precedence: command line > environment > default. Health thresholds are the device plugin's
``--health-*`` flags (``FRACGPU_HEALTH_*``; fracgpu.deviceplugin.healthflags), one definition for both.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

from fracgpu import startup
from fracgpu.api.v1beta1.names import (
    CDI_DIR,
    DRA_ALLOCATOR_FRACGPU,
    DRA_ALLOCATORS,
    DRA_CDI_KIND,
    DRA_DRIVER,
    DRA_PLUGINS_DIR,
    DRA_REGISTRY_DIR,
)
from fracgpu.core.draslices import SliceOptions
from fracgpu.core.healthconfig import HealthConfigError
from fracgpu.deviceplugin.backends.base import BackendError
from fracgpu.deviceplugin.backends.simulated import SimulatedConfigError
from fracgpu.deviceplugin.healthflags import HEALTH_FLAGS, health_config
from fracgpu.deviceplugin.nodeflags import GPU_FLAGS, KUBE_FLAGS, LIMITER_FLAGS, backend_from, limiter_from
from fracgpu.draplugin.app import AppConfig, DraDriverApp
from fracgpu.draplugin.driver import DriverConfig, KubeClaims
from fracgpu.draplugin.server import ServerConfig
from fracgpu.kube import client, errors, writer
from fracgpu.startup import ConfigError, Flag, seconds

log = logging.getLogger(__name__)


def positive_seconds(raw: str) -> float:
    value = seconds(raw)
    if value == 0:  # a zero interval would check the slices in a busy loop
        raise argparse.ArgumentTypeError(f"{raw!r} must be a number of seconds above 0")
    return value


_PLUGIN_DIR = f"{DRA_PLUGINS_DIR}/{DRA_DRIVER}"

FLAGS = (
    *GPU_FLAGS,
    Flag("plugin-dir", "directory of the DRA socket (dra.sock), the checkpoint and the lock; the same path on the "
         "host and in the pod", _PLUGIN_DIR, env=("FRACGPU_DRA_PLUGIN_DIR",), metavar="DIR"),
    Flag("registry-dir", "the kubelet's plugin registration directory, where <driver>-reg.sock goes",
         DRA_REGISTRY_DIR, env=("FRACGPU_DRA_REGISTRY_DIR",), metavar="DIR"),
    Flag("cdi-dir", "where the container runtime reads generated CDI specs", CDI_DIR, env=("FRACGPU_CDI_DIR",),
         metavar="DIR"),
    Flag("unhealthy", "a failed GPU is tainted gpu.fracgpu.io/unhealthy:NoSchedule (device taints, on by default "
         "since Kubernetes 1.36; when the API server drops taints the driver falls back to omit) or left out of "
         "the node's pool", "taint", env=("FRACGPU_DRA_UNHEALTHY",), choices=("taint", "omit")),
    Flag("allocator", "who allocates this node's GPUs to ResourceClaims (device attribute allocator): fracgpu = "
         "fracgpu's extender, with its ranking, tenant quotas and queue (fracgpu's DeviceClasses hide such GPUs "
         "from kube-scheduler's allocator); kube-scheduler = kube-scheduler's DRA allocator (first fit, without "
         "fracgpu's ranking and quotas)", DRA_ALLOCATOR_FRACGPU, env=("FRACGPU_DRA_ALLOCATOR",),
         choices=DRA_ALLOCATORS),
    Flag("resync-interval", "seconds between checks that the published ResourceSlices are intact (the kubelet "
         "deletes them when it starts)", "30", positive_seconds, env=("FRACGPU_DRA_RESYNC_INTERVAL",),
         metavar="SECONDS"),
    *KUBE_FLAGS,
    Flag("metrics-port", "port of /metrics (0: off)", "9402", startup.port_or_off, env=("FRACGPU_METRICS_PORT",)),
    *LIMITER_FLAGS,
    Flag("sysfs", "sysfs root, where the GPUs' PCIe roots are read", "/sys", env=("FRACGPU_SYSFS",), metavar="DIR"),
    Flag("log-level", "DEBUG, INFO, WARNING or ERROR", "INFO", startup.log_level, env=("FRACGPU_LOG_LEVEL",)),
)


def parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    p = startup.Parser(prog="fracgpu dra-driver",
                       description="Publish this node's GPUs as DRA ResourceSlices and prepare the claims allocated "
                                   "on them (run as a DaemonSet on nodes of the DRA path). Health thresholds come "
                                   "from FRACGPU_HEALTH_* (docs/health.md).")
    startup.add_config_flag(p, environ)
    startup.add_flags(p, FLAGS, environ)
    startup.add_flags(p, HEALTH_FLAGS, environ)
    return p



def config(args: argparse.Namespace, environ: Mapping[str, str]) -> AppConfig:
    if not args.node_name:
        raise ConfigError("--node-name (or NODE_NAME from the downward API) is required")
    for flag, path in (("--plugin-dir", args.plugin_dir), ("--registry-dir", args.registry_dir),
                       ("--cdi-dir", args.cdi_dir)):
        if not os.path.isabs(path):
            raise ConfigError(f"{flag} must be an absolute path (the kubelet uses it as is), got {path!r}")
    try:
        health = health_config(args)
    except HealthConfigError as e:
        raise ConfigError(f"health settings: {e}") from None
    limiter = limiter_from(args)
    return AppConfig(
        driver=DriverConfig(node=args.node_name, driver=DRA_DRIVER, cdi_kind=DRA_CDI_KIND, limiter=limiter),
        server=ServerConfig(plugin_dir=args.plugin_dir, registry_dir=args.registry_dir),
        cdi_dir=args.cdi_dir,
        slices=SliceOptions(unhealthy=args.unhealthy, allocator=args.allocator),
        health=health,
        resync_interval=args.resync_interval,
        sysfs=args.sysfs,
    )


def build(args: argparse.Namespace, environ: Mapping[str, str]) -> DraDriverApp:
    cfg = config(args, environ)
    backend = backend_from(args)  # ValueError: one line, exit 2
    try:
        api = client.build_api_client(host=args.kube_api or None, kubeconfig=args.kubeconfig or None,
                                      environ=environ)
    except errors.KubeConfigError as e:
        backend.close()
        raise startup.no_cluster(e, "give --kubeconfig FILE (or set KUBECONFIG) or --kube-api URL, or run it in a pod"
                                 ) from None
    kube = writer.KubeWriter(client.Transport(api), component="fracgpu-dra-driver")
    return DraDriverApp(cfg, backend, KubeClaims(kube), kube)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    if isinstance(args := startup.begin(parser(environ), argv), int):
        return args
    try:
        app = build(args, environ)
    except (startup.StartupError, ConfigError, SimulatedConfigError, BackendError, ValueError) as e:
        print(f"fracgpu dra-driver: {e}", file=sys.stderr)
        return 2
    if args.metrics_port:
        try:
            app.serve_metrics(args.metrics_port)
        except OSError as e:
            app.monitor.stop()  # not started: only the backend to close
            print(f"fracgpu dra-driver: {startup.metrics_server_error(e, args.metrics_port)}", file=sys.stderr)
            return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal received signum=%d; shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        app.start()
    except (OSError, RuntimeError) as e:
        print(f"fracgpu dra-driver: {e}", file=sys.stderr)
        app.stop()
        return 1
    log.info("dra driver running node=%s backend=%s", args.node_name, args.backend)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        app.stop()
    log.info("dra driver stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

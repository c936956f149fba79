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

from fracgpu.api.v1beta1.names import CDI_DIR, DRA_CDI_KIND, DRA_DRIVER, DRA_PLUGINS_DIR, DRA_REGISTRY_DIR
from fracgpu.core.draslices import SliceOptions
from fracgpu.core.healthconfig import HealthConfigError
from fracgpu.core.shareenv import LimiterConfig
from fracgpu.deviceplugin.backends import open_backend
from fracgpu.deviceplugin.backends.base import BackendError, GpuBackend
from fracgpu.deviceplugin.backends.simulated import SimulatedConfigError
from fracgpu.deviceplugin.healthflags import HEALTH_FLAGS, health_config
from fracgpu.draplugin.app import AppConfig, DraDriverApp
from fracgpu.draplugin.driver import DriverConfig, KubeClaims
from fracgpu.draplugin.server import ServerConfig
from fracgpu.kube import client, errors, writer
from fracgpu.startup import Flag, Parser, StartupError, add_config_flag, add_flags, log_level, no_cluster, seconds

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A flag or environment value is not valid; the message names it."""


def positive_seconds(raw: str) -> float:
    value = seconds(raw)
    if value == 0:  # a zero interval would check the slices in a busy loop
        raise argparse.ArgumentTypeError(f"{raw!r} must be a number of seconds above 0")
    return value


_PLUGIN_DIR = f"{DRA_PLUGINS_DIR}/{DRA_DRIVER}"

FLAGS = (
    Flag("backend", "where GPUs come from", "nvml", env=("FRACGPU_BACKEND",), choices=("nvml", "simulated")),
    Flag("gpus", "YAML file of simulated GPUs, with --backend simulated", env=("FRACGPU_GPUS_FILE",), metavar="FILE",
         unset="none"),
    Flag("node-name", "this node's name (required; in a DaemonSet from the downward API)", env=("NODE_NAME",),
         metavar="NAME", unset="none"),
    Flag("plugin-dir", "directory of the DRA socket (dra.sock), the checkpoint and the lock; the same path on the "
         "host and in the pod", _PLUGIN_DIR, env=("FRACGPU_DRA_PLUGIN_DIR",), metavar="DIR"),
    Flag("registry-dir", "the kubelet's plugin registration directory, where <driver>-reg.sock goes",
         DRA_REGISTRY_DIR, env=("FRACGPU_DRA_REGISTRY_DIR",), metavar="DIR"),
    Flag("cdi-dir", "where the container runtime reads generated CDI specs", CDI_DIR, env=("FRACGPU_CDI_DIR",),
         metavar="DIR"),
    Flag("unhealthy", "a failed GPU is tainted gpu.fracgpu.io/unhealthy:NoSchedule (device taints, on by default "
         "since Kubernetes 1.36; when the API server drops taints the driver falls back to omit) or left out of "
         "the node's pool", "taint", env=("FRACGPU_DRA_UNHEALTHY",), choices=("taint", "omit")),
    Flag("resync-interval", "seconds between checks that the published ResourceSlices are intact (the kubelet "
         "deletes them when it starts)", "30", positive_seconds, env=("FRACGPU_DRA_RESYNC_INTERVAL",),
         metavar="SECONDS"),
    Flag("kubeconfig", "kubeconfig file", env=("KUBECONFIG",), metavar="FILE", unset="in-cluster config"),
    Flag("kube-api", "API server URL", env=("FRACGPU_KUBE_API", "FRACGPU_KUBE_HOST"), old=("kube-host",),
         metavar="URL", unset="--kubeconfig, else in-cluster config"),
    Flag("limiter-dir", "host directory of an in-container limiter (HAMi-core libvgpu.so) to mount and configure",
         env=("FRACGPU_LIMITER_DIR",), metavar="DIR", unset="no limiter"),
    Flag("limiter-container-dir", "where the limiter directory appears in containers", "/usr/local/vgpu",
         env=("FRACGPU_LIMITER_CONTAINER_DIR",), metavar="DIR"),
    Flag("limiter-preload", "host file mounted as /etc/ld.so.preload", env=("FRACGPU_LIMITER_PRELOAD",),
         metavar="FILE", unset="none"),
    Flag("sysfs", "sysfs root, where the GPUs' PCIe roots are read", "/sys", env=("FRACGPU_SYSFS",), metavar="DIR"),
    Flag("log-level", "DEBUG, INFO, WARNING or ERROR", "INFO", log_level, env=("FRACGPU_LOG_LEVEL",)),
)


def parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    p = Parser(prog="fracgpu dra-driver",
               description="Publish this node's GPUs as DRA ResourceSlices and prepare the claims allocated on them "
                           "(run as a DaemonSet on nodes of the DRA path). Health thresholds come from "
                           "FRACGPU_HEALTH_* (docs/health.md).")
    add_config_flag(p, environ)
    add_flags(p, FLAGS, environ)
    add_flags(p, HEALTH_FLAGS, environ)
    return p


def make_backend(args: argparse.Namespace) -> GpuBackend:
    try:
        return open_backend(args.backend, args.gpus, args.node_name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


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
    limiter = None
    if args.limiter_dir:
        limiter = LimiterConfig(host_dir=args.limiter_dir, container_dir=args.limiter_container_dir,
                                preload_file=args.limiter_preload or "")
    return AppConfig(
        driver=DriverConfig(node=args.node_name, driver=DRA_DRIVER, cdi_kind=DRA_CDI_KIND, limiter=limiter),
        server=ServerConfig(plugin_dir=args.plugin_dir, registry_dir=args.registry_dir),
        cdi_dir=args.cdi_dir,
        slices=SliceOptions(unhealthy=args.unhealthy),
        health=health,
        resync_interval=args.resync_interval,
        sysfs=args.sysfs,
    )


def build(args: argparse.Namespace, environ: Mapping[str, str]) -> DraDriverApp:
    cfg = config(args, environ)
    backend = make_backend(args)
    try:
        api = client.build_api_client(host=args.kube_api or None, kubeconfig=args.kubeconfig or None,
                                      environ=environ)
    except errors.KubeConfigError as e:
        backend.close()
        raise no_cluster(e, "give --kubeconfig FILE (or set KUBECONFIG) or --kube-api URL, or run it in a pod"
                         ) from None
    kube = writer.KubeWriter(client.Transport(api), component="fracgpu-dra-driver")
    return DraDriverApp(cfg, backend, KubeClaims(kube), kube)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        args = parser(environ).parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # --help, or a flag argparse refused (it printed why)
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        app = build(args, environ)
    except (StartupError, ConfigError, SimulatedConfigError, BackendError, ValueError) as e:
        print(f"fracgpu dra-driver: {e}", file=sys.stderr)
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

"""`fracgpu dra-driver`: flags (with environment fallbacks), wiring, signals.

Precedence: command line > environment > default. Health thresholds come from the ``FRACGPU_HEALTH_*``
environment, as for the device plugin (fracgpu.core.health.HealthConfig.from_env).
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
from fracgpu.core.healthconfig import HealthConfig, HealthConfigError
from fracgpu.core.shareenv import LimiterConfig
from fracgpu.deviceplugin.backends.base import BackendError, GpuBackend
from fracgpu.deviceplugin.backends.simulated import SimulatedBackend, SimulatedConfigError
from fracgpu.draplugin.app import AppConfig, DraDriverApp
from fracgpu.draplugin.driver import DriverConfig, KubeClaims
from fracgpu.draplugin.server import ServerConfig
from fracgpu.kube import client, errors, writer

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A flag or environment value is not valid; the message names it."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(key: str, default: str = "") -> str:
        return environ.get(key, default)

    plugin_dir = f"{DRA_PLUGINS_DIR}/{DRA_DRIVER}"
    p = argparse.ArgumentParser(prog="fracgpu dra-driver",
                                description="Publish this node's GPUs as DRA ResourceSlices and prepare the claims "
                                            "allocated on them (run as a DaemonSet on nodes of the DRA path).")
    p.add_argument("--backend", choices=("nvml", "simulated"), default=env("FRACGPU_BACKEND", "nvml"),
                   help="where GPUs come from [FRACGPU_BACKEND, default nvml]")
    p.add_argument("--gpus", default=env("FRACGPU_GPUS_FILE"),
                   help="YAML file of simulated GPUs, with --backend simulated [FRACGPU_GPUS_FILE]")
    p.add_argument("--node-name", default=env("NODE_NAME"), help="this node's name [NODE_NAME, downward API]")
    p.add_argument("--plugin-dir", default=env("FRACGPU_DRA_PLUGIN_DIR", plugin_dir),
                   help="directory of the DRA socket (dra.sock), the checkpoint and the lock; the same path on the "
                        f"host and in the pod [FRACGPU_DRA_PLUGIN_DIR, {plugin_dir}]")
    p.add_argument("--registry-dir", default=env("FRACGPU_DRA_REGISTRY_DIR", DRA_REGISTRY_DIR),
                   help="the kubelet's plugin registration directory, where <driver>-reg.sock goes "
                        f"[FRACGPU_DRA_REGISTRY_DIR, {DRA_REGISTRY_DIR}]")
    p.add_argument("--cdi-dir", default=env("FRACGPU_CDI_DIR", CDI_DIR),
                   help=f"where the container runtime reads generated CDI specs [FRACGPU_CDI_DIR, {CDI_DIR}]")
    p.add_argument("--unhealthy", choices=("taint", "omit"), default=env("FRACGPU_DRA_UNHEALTHY", "taint"),
                   help="a failed GPU is tainted gpu.fracgpu.io/unhealthy:NoSchedule (device taints, on by default "
                        "since Kubernetes 1.36; when the API server drops taints the driver falls back to omit) or "
                        "left out of the node's pool [FRACGPU_DRA_UNHEALTHY, taint]")
    p.add_argument("--resync-interval", type=_positive, default=env("FRACGPU_DRA_RESYNC_INTERVAL", "30"),
                   help="seconds between checks that the published ResourceSlices are intact (the kubelet deletes "
                        "them when it starts) [FRACGPU_DRA_RESYNC_INTERVAL, 30]")
    p.add_argument("--kubeconfig", default=env("KUBECONFIG"),
                   help="kubeconfig file; in-cluster when unset [KUBECONFIG]")
    p.add_argument("--kube-host", default=env("FRACGPU_KUBE_HOST"), help="API server URL [FRACGPU_KUBE_HOST]")
    p.add_argument("--limiter-dir", default=env("FRACGPU_LIMITER_DIR"),
                   help="host directory of an in-container limiter (HAMi-core libvgpu.so) to mount and "
                        "configure; unset: no limiter [FRACGPU_LIMITER_DIR]")
    p.add_argument("--limiter-container-dir", default=env("FRACGPU_LIMITER_CONTAINER_DIR", "/usr/local/vgpu"),
                   help="where the limiter directory appears in containers [FRACGPU_LIMITER_CONTAINER_DIR, "
                        "/usr/local/vgpu]")
    p.add_argument("--limiter-preload", default=env("FRACGPU_LIMITER_PRELOAD"),
                   help="host file mounted as /etc/ld.so.preload [FRACGPU_LIMITER_PRELOAD]")
    p.add_argument("--sysfs", default=env("FRACGPU_SYSFS", "/sys"),
                   help="sysfs root, where the GPUs' PCIe roots are read [FRACGPU_SYSFS, /sys]")
    p.add_argument("--log-level", default=env("FRACGPU_LOG_LEVEL", "INFO"), help="[FRACGPU_LOG_LEVEL, INFO]")
    return p


def make_backend(args: argparse.Namespace) -> GpuBackend:
    if args.backend == "simulated":
        if not args.gpus:
            raise ConfigError("--backend simulated needs --gpus FILE (or FRACGPU_GPUS_FILE)")
        return SimulatedBackend.from_file(args.gpus)
    import pynvml

    from fracgpu.deviceplugin.backends.nvml import NvmlBackend

    return NvmlBackend(pynvml)


def config(args: argparse.Namespace, environ: Mapping[str, str]) -> AppConfig:
    if not args.node_name:
        raise ConfigError("--node-name (or NODE_NAME from the downward API) is required")
    for flag, path in (("--plugin-dir", args.plugin_dir), ("--registry-dir", args.registry_dir),
                       ("--cdi-dir", args.cdi_dir)):
        if not os.path.isabs(path):
            raise ConfigError(f"{flag} must be an absolute path (the kubelet uses it as is), got {path!r}")
    try:
        health = HealthConfig.from_env(environ)
    except HealthConfigError as e:
        raise ConfigError(f"health settings: {e}") from None
    limiter = None
    if args.limiter_dir:
        limiter = LimiterConfig(host_dir=args.limiter_dir, container_dir=args.limiter_container_dir,
                                preload_file=args.limiter_preload)
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
        api = client.build_api_client(host=args.kube_host or None, kubeconfig=args.kubeconfig or None,
                                      environ=environ)
    except errors.KubeConfigError as e:
        backend.close()
        raise ConfigError(f"no API server: {e} (set --kubeconfig or --kube-host, or run in a pod)") from None
    kube = writer.KubeWriter(client.Transport(api), component="fracgpu-dra-driver")
    return DraDriverApp(cfg, backend, KubeClaims(kube), kube)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = parser(environ).parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=str(args.log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        app = build(args, environ)
    except (ConfigError, SimulatedConfigError, BackendError, ValueError) as e:
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

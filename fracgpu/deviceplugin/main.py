"""`fracgpu device-plugin`: flags (with environment fallbacks), wiring, signals.

Precedence: command line > environment > default. Health thresholds come from the
``FRACGPU_HEALTH_*`` environment (see fracgpu.core.health.HealthConfig.from_env).
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
from typing import TYPE_CHECKING

from fracgpu.api.v1beta1.names import (
    DEFAULT_NAMESPACE,
    DEVICE_PLUGIN_DIR,
    DEVICE_PLUGIN_LOCK,
    POD_RESOURCES_SOCKET,
    RESOURCE_CORE,
)
from fracgpu.core.health import HealthConfig, HealthConfigError
from fracgpu.core.quantity import QuantityError
from fracgpu.core.tenant import default_limits
from fracgpu.deviceplugin.app import AppConfig, DevicePluginApp
from fracgpu.deviceplugin.backends.base import BackendError, GpuBackend
from fracgpu.deviceplugin.backends.simulated import SimulatedBackend, SimulatedConfigError
from fracgpu.deviceplugin.cluster import Cluster, MemoryCluster
from fracgpu.deviceplugin.metrics import PluginMetrics
from fracgpu.deviceplugin.plugin import PluginConfig
from fracgpu.deviceplugin.podresources import HoldingsSource, NoHoldings, PodResourcesClient
from fracgpu.deviceplugin.response import LimiterConfig, valid_cdi_kind
from fracgpu.deviceplugin.server import LockError, ServerConfig

if TYPE_CHECKING:
    from fracgpu.deviceplugin.kubequota import KubeTenantQuotas

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A flag or environment value is not valid; the message names it."""


def parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(key: str, default: str = "") -> str:
        return environ.get(key, default)

    p = argparse.ArgumentParser(prog="fracgpu device-plugin",
                                description="Serve fracgpu.io/vgpu-core to the kubelet (run as a DaemonSet).")
    p.add_argument("--backend", choices=("nvml", "simulated"), default=env("FRACGPU_BACKEND", "nvml"),
                   help="where GPUs come from [FRACGPU_BACKEND, default nvml]")
    p.add_argument("--gpus", default=env("FRACGPU_GPUS_FILE"),
                   help="YAML file of simulated GPUs, with --backend simulated [FRACGPU_GPUS_FILE]")
    p.add_argument("--node-name", default=env("NODE_NAME"), help="this node's name [NODE_NAME, downward API]")
    p.add_argument("--socket-dir", default=env("FRACGPU_DEVICE_PLUGIN_DIR", DEVICE_PLUGIN_DIR),
                   help=f"the kubelet's device-plugins directory [FRACGPU_DEVICE_PLUGIN_DIR, {DEVICE_PLUGIN_DIR}]")
    p.add_argument("--lock-file", default=env("FRACGPU_LOCK_FILE", DEVICE_PLUGIN_LOCK),
                   help="restart lock: a second plugin on the node waits for the first to let go; must be outside "
                        "the socket directory, which the kubelet empties when it starts "
                        f"[FRACGPU_LOCK_FILE, {DEVICE_PLUGIN_LOCK}]")
    p.add_argument("--pod-resources-socket", default=env("FRACGPU_POD_RESOURCES_SOCKET", POD_RESOURCES_SOCKET),
                   help="the kubelet's PodResources socket, 'none' to run without "
                        f"[FRACGPU_POD_RESOURCES_SOCKET, {POD_RESOURCES_SOCKET}]")
    p.add_argument("--kubeconfig", default=env("KUBECONFIG"),
                   help="kubeconfig file; in-cluster when unset [KUBECONFIG]")
    p.add_argument("--kube-host", default=env("FRACGPU_KUBE_HOST"), help="API server URL [FRACGPU_KUBE_HOST]")
    p.add_argument("--no-kube", action="store_true", default=env("FRACGPU_NO_KUBE") in ("1", "true"),
                   help="run without an API server (demo: no reservations, every Allocate is refused) "
                        "[FRACGPU_NO_KUBE]")
    p.add_argument("--namespace", default=env("FRACGPU_NAMESPACE", DEFAULT_NAMESPACE),
                   help=f"namespace of the heartbeat Lease [FRACGPU_NAMESPACE, {DEFAULT_NAMESPACE}]")
    p.add_argument("--metrics-port", type=int, default=int(env("FRACGPU_METRICS_PORT", "9402") or 0),
                   help="port of /metrics, 0 to disable [FRACGPU_METRICS_PORT, 9402]")
    p.add_argument("--limiter-dir", default=env("FRACGPU_LIMITER_DIR"),
                   help="host directory of an in-container limiter (HAMi-core libvgpu.so) to mount and "
                        "configure; unset: no limiter [FRACGPU_LIMITER_DIR]")
    p.add_argument("--limiter-container-dir", default=env("FRACGPU_LIMITER_CONTAINER_DIR", "/usr/local/vgpu"),
                   help="where the limiter directory appears in containers [FRACGPU_LIMITER_CONTAINER_DIR]")
    p.add_argument("--limiter-preload", default=env("FRACGPU_LIMITER_PRELOAD"),
                   help="host file mounted as /etc/ld.so.preload [FRACGPU_LIMITER_PRELOAD]")
    p.add_argument("--cdi-kind", default=env("FRACGPU_CDI_KIND", ""),
                   help="also name each GPU as a CDI device <kind>=<uuid> in Allocate (e.g. nvidia.com/gpu, as "
                        "`nvidia-ctk cdi generate` names them); needs a kubelet and runtime with CDI; empty: "
                        "none [FRACGPU_CDI_KIND]")
    p.add_argument("--crosscheck-delay", type=float, default=float(env("FRACGPU_CROSSCHECK_DELAY", "1.0")),
                   help="seconds after an Allocate before checking PodResources [FRACGPU_CROSSCHECK_DELAY, 1]")
    p.add_argument("--quota-check", choices=("auto", "on", "off"), default=env("FRACGPU_QUOTA_CHECK", "auto"),
                   help="re-check the pod's tenant quota at its first Allocate (TenantQuotas, namespace quota "
                        "annotations and every live pod's reservation, watched); auto: on with an API server, "
                        "off with --no-kube [FRACGPU_QUOTA_CHECK, auto]")
    p.add_argument("--quota-sync-timeout", type=float, default=float(env("FRACGPU_QUOTA_SYNC_TIMEOUT", "10")),
                   help="seconds to wait at start for the quota caches before serving; until they sync, pods "
                        "are let through unchecked (counted, logged) [FRACGPU_QUOTA_SYNC_TIMEOUT, 10]")
    p.add_argument("--default-memory-quota", default=env("FRACGPU_DEFAULT_MEMORY_QUOTA") or None,
                   help="VRAM quota of a tenant without one (e.g. 64Gi; default unlimited); set it to the "
                        "extender's --default-memory-quota [FRACGPU_DEFAULT_MEMORY_QUOTA]")
    p.add_argument("--default-core-quota", default=env("FRACGPU_DEFAULT_CORE_QUOTA") or None,
                   help="vgpu-core quota of a tenant without one (default unlimited); set it to the extender's "
                        "--default-core-quota [FRACGPU_DEFAULT_CORE_QUOTA]")
    p.add_argument("--log-level", default=env("FRACGPU_LOG_LEVEL", "INFO"), help="[FRACGPU_LOG_LEVEL, INFO]")
    return p


def make_backend(args: argparse.Namespace) -> GpuBackend:
    if args.backend == "simulated":
        if not args.gpus:
            raise ConfigError("--backend simulated needs --gpus FILE (or FRACGPU_GPUS_FILE)")
        return SimulatedBackend.from_file(args.gpus, node=args.node_name)
    import pynvml

    from fracgpu.deviceplugin.backends.nvml import NvmlBackend

    return NvmlBackend(pynvml)


def make_cluster(args: argparse.Namespace) -> Cluster:
    if args.no_kube:
        return MemoryCluster(args.node_name)
    from fracgpu.deviceplugin.kubecluster import KubeCluster
    from fracgpu.kube import client, writer

    api = client.build_api_client(host=args.kube_host or None, kubeconfig=args.kubeconfig or None)
    cluster = KubeCluster(writer.KubeWriter(client.Transport(api), component="fracgpu-device-plugin"),
                          args.node_name, namespace=args.namespace)
    cluster.start()
    return cluster


def make_quota(args: argparse.Namespace, metrics: PluginMetrics) -> KubeTenantQuotas | None:
    """The quota re-check's caches, started (not waited for); None when the check is off."""
    if args.quota_check == "on" and args.no_kube:
        raise ConfigError("--quota-check on needs an API server (it cannot be used with --no-kube)")
    if args.quota_check == "off" or args.no_kube:
        return None
    if args.quota_sync_timeout < 0:
        raise ConfigError("--quota-sync-timeout must be >= 0")
    try:
        default = default_limits(args.default_memory_quota, args.default_core_quota)
    except QuantityError as e:
        raise ConfigError(f"default quota: {e}") from None
    from fracgpu.deviceplugin.kubequota import KubeTenantQuotas
    from fracgpu.kube import client

    # a connection pool of its own: three long watches must not hold up the plugin's writes
    api = client.build_api_client(host=args.kube_host or None, kubeconfig=args.kubeconfig or None)
    quota = KubeTenantQuotas(client.Transport(api), default=default, metrics=metrics)
    quota.start()
    return quota


def build(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[DevicePluginApp, Cluster]:
    if not args.node_name:
        raise ConfigError("--node-name (or NODE_NAME from the downward API) is required")
    try:
        health = HealthConfig.from_env(environ)
    except HealthConfigError as e:
        raise ConfigError(f"health settings: {e}") from None
    limiter = None
    if args.limiter_dir:
        limiter = LimiterConfig(host_dir=args.limiter_dir, container_dir=args.limiter_container_dir,
                                preload_file=args.limiter_preload)
    if args.cdi_kind and not valid_cdi_kind(args.cdi_kind):
        raise ConfigError(f"--cdi-kind {args.cdi_kind!r} is not a CDI kind vendor/class (e.g. nvidia.com/gpu)")
    if args.crosscheck_delay < 0:
        raise ConfigError("--crosscheck-delay must be >= 0")
    lock_dir = os.path.dirname(os.path.abspath(args.lock_file))
    if os.path.realpath(lock_dir) == os.path.realpath(args.socket_dir):
        raise ConfigError(f"--lock-file {args.lock_file} is in the kubelet's device-plugins directory, which the "
                          "kubelet empties when it starts: give a path outside it (the DaemonSet: /var/lib/fracgpu)")
    try:  # found out now, not after the wait for the cluster
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        os.close(os.open(args.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError as e:
        raise ConfigError(f"--lock-file {args.lock_file}: {e.strerror}; give a path this process may write, "
                          "outside the socket directory") from None
    holdings: HoldingsSource = NoHoldings()
    if args.pod_resources_socket and args.pod_resources_socket != "none":
        holdings = PodResourcesClient(args.pod_resources_socket, RESOURCE_CORE)
    cfg = AppConfig(
        plugin=PluginConfig(node=args.node_name, limiter=limiter, cdi_kind=args.cdi_kind,
                            crosscheck_delay=args.crosscheck_delay),
        server=ServerConfig(socket_dir=args.socket_dir, lock_file=args.lock_file),
        health=health,
    )
    backend = make_backend(args)
    metrics = PluginMetrics()
    quota = make_quota(args, metrics)
    try:
        cluster = make_cluster(args)  # waits for this node's pods; the quota caches list meanwhile
    except BaseException:
        if quota is not None:
            quota.stop()
        raise
    if quota is not None and not quota.wait_synced(args.quota_sync_timeout):
        log.warning("quota caches not synced after %.0f s; Allocate lets pods through unchecked until they are "
                    "(fracgpu_deviceplugin_quota_checks_total{outcome=\"unchecked\"})", args.quota_sync_timeout)
    return DevicePluginApp(cfg, backend, cluster, holdings, quota=quota, metrics=metrics), cluster


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = parser(environ).parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=str(args.log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        app, cluster = build(args, environ)
    except (ConfigError, SimulatedConfigError, BackendError, ValueError) as e:
        print(f"fracgpu device-plugin: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal received signum=%d; shutting down", signum)
        stop.set()
        app.stopping.set()  # also ends a wait for the restart lock

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    metrics_server = None
    if args.metrics_port:
        from prometheus_client import start_http_server

        metrics_server, _ = start_http_server(args.metrics_port, registry=app.metrics.registry)
    try:
        try:
            app.start()
        except LockError as e:
            if stop.is_set():
                return 0  # told to stop while it waited
            print(f"fracgpu device-plugin: {e}", file=sys.stderr)
            return 1
        log.info("device plugin running node=%s backend=%s", args.node_name, args.backend)
        while not stop.wait(1.0):
            pass
    finally:
        app.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        stop_cluster = getattr(cluster, "stop", None)
        if stop_cluster is not None:
            stop_cluster()
        stop_quota = getattr(app.plugin.quota, "stop", None)
        if stop_quota is not None:
            stop_quota()
    log.info("device plugin stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`fracgpu device-plugin`: flags (with environment fallbacks), wiring, signals.

Precedence: command line > environment > default. Health thresholds: the ``--health-*`` flags
(fracgpu.deviceplugin.healthflags).
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
from typing import TYPE_CHECKING, Any

from fracgpu import startup
from fracgpu.api.v1beta1.names import (
    DEFAULT_NAMESPACE,
    DEVICE_PLUGIN_DIR,
    DEVICE_PLUGIN_LOCK,
    POD_RESOURCES_SOCKET,
    RESOURCE_CORE,
)
from fracgpu.core.healthconfig import HealthConfigError
from fracgpu.core.quantity import QuantityError
from fracgpu.core.tenant import default_limits
from fracgpu.deviceplugin.apiserver import ApiServer, MemoryApiServer
from fracgpu.deviceplugin.app import AppConfig, DevicePluginApp
from fracgpu.deviceplugin.backends.base import BackendError
from fracgpu.deviceplugin.backends.simulated import SimulatedConfigError
from fracgpu.deviceplugin.healthflags import HEALTH_FLAGS, health_config
from fracgpu.deviceplugin.metrics import PluginMetrics
from fracgpu.deviceplugin.nodeflags import GPU_FLAGS, KUBE_FLAGS, LIMITER_FLAGS, backend_from, limiter_from
from fracgpu.deviceplugin.plugin import PluginConfig
from fracgpu.deviceplugin.podresources import HoldingsSource, NoHoldings, PodResourcesClient
from fracgpu.deviceplugin.response import parse_device_list, valid_cdi_kind
from fracgpu.deviceplugin.server import LockError, ServerConfig
from fracgpu.kube.errors import KubeConfigError
from fracgpu.startup import ConfigError, Flag, seconds

if TYPE_CHECKING:
    from fracgpu.deviceplugin.quotawatch import KubeTenantQuotas

log = logging.getLogger(__name__)


FLAGS = (
    *GPU_FLAGS,
    Flag("socket-dir", "the kubelet's device-plugins directory (must exist)", DEVICE_PLUGIN_DIR,
         env=("FRACGPU_DEVICE_PLUGIN_DIR",), metavar="DIR"),
    Flag("lock-file", "restart lock: a second plugin on the node waits for the first to let go; must be outside "
         "--socket-dir, which the kubelet empties when it starts", DEVICE_PLUGIN_LOCK, env=("FRACGPU_LOCK_FILE",),
         metavar="FILE"),
    Flag("pod-resources-socket", "the kubelet's PodResources socket, 'none' to run without", POD_RESOURCES_SOCKET,
         env=("FRACGPU_POD_RESOURCES_SOCKET",), metavar="PATH"),
    *KUBE_FLAGS,
    Flag("no-kube", "run without an API server (demo: no reservations, every Allocate is refused)",
         type=startup.boolean, env=("FRACGPU_NO_KUBE",), switch=True),
    Flag("namespace", "namespace of the heartbeat Lease", DEFAULT_NAMESPACE, env=("FRACGPU_NAMESPACE",)),
    Flag("metrics-port", "port of /metrics (0: off)", "9402", startup.port_or_off, env=("FRACGPU_METRICS_PORT",)),
    *LIMITER_FLAGS,
    Flag("cdi-kind", "also name each GPU as a CDI device <kind>=<uuid> in Allocate (e.g. nvidia.com/gpu, as "
         "`nvidia-ctk cdi generate` names them); needs a kubelet and runtime with CDI; empty: none", "",
         env=("FRACGPU_CDI_KIND",), metavar="KIND"),
    Flag("device-list-strategy", "how Allocate names a container's GPUs to the NVIDIA runtime, a comma list of: "
         "envvar (NVIDIA_VISIBLE_DEVICES), volume-mounts (/dev/null at /var/run/nvidia-container-devices/<uuid>; "
         "works with accept-nvidia-visible-devices-envvar-when-unprivileged = false)", "envvar",
         env=("FRACGPU_DEVICE_LIST_STRATEGY",), metavar="LIST"),
    Flag("crosscheck-delay", "seconds after an Allocate before checking PodResources", "1", seconds,
         env=("FRACGPU_CROSSCHECK_DELAY",)),
    Flag("quota-check", "re-check the pod's tenant quota at its first Allocate (TenantQuotas, namespace quota "
         "annotations and every live pod's reservation, watched); auto: on with an API server, off with --no-kube",
         "auto", env=("FRACGPU_QUOTA_CHECK",), choices=("auto", "on", "off")),
    Flag("quota-sync-timeout", "seconds to wait at start for the quota caches before serving; until they sync, "
         "pods are let through unchecked (counted, logged)", "10", seconds, env=("FRACGPU_QUOTA_SYNC_TIMEOUT",)),
    Flag("default-memory-quota", "VRAM quota of a tenant without one (e.g. 64Gi); set it to the extender's "
         "--default-memory-quota", env=("FRACGPU_DEFAULT_MEMORY_QUOTA",), unset="unlimited"),
    Flag("default-core-quota", "vgpu-core quota of a tenant without one; set it to the extender's "
         "--default-core-quota", env=("FRACGPU_DEFAULT_CORE_QUOTA",), unset="unlimited"),
    Flag("log-level", "DEBUG, INFO, WARNING or ERROR", "INFO", startup.log_level, env=("FRACGPU_LOG_LEVEL",)),
)


def parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    p = startup.Parser(prog="fracgpu device-plugin", description="Serve fracgpu.io/vgpu-core to the kubelet (run as a "
                       "DaemonSet). GPU health: the --health-* flags (docs/health.md).")
    startup.add_config_flag(p, environ)
    startup.add_flags(p, FLAGS, environ)
    startup.add_flags(p, HEALTH_FLAGS, environ)
    return p



def make_api_server(args: argparse.Namespace) -> ApiServer:
    if args.no_kube:
        return MemoryApiServer(args.node_name)
    from fracgpu.deviceplugin.kubeapiserver import KubeApiServer
    from fracgpu.kube import client, writer

    api = client.build_api_client(host=args.kube_api or None, kubeconfig=args.kubeconfig or None)
    server = KubeApiServer(writer.KubeWriter(client.Transport(api), component="fracgpu-device-plugin"),
                           args.node_name, namespace=args.namespace)
    server.start()
    return server


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
    from fracgpu.deviceplugin.quotawatch import KubeTenantQuotas
    from fracgpu.kube import client

    # a connection pool of its own: three long watches must not hold up the plugin's writes
    api = client.build_api_client(host=args.kube_api or None, kubeconfig=args.kubeconfig or None)
    quota = KubeTenantQuotas(client.Transport(api), default=default, metrics=metrics)
    quota.start()
    return quota


def build(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[DevicePluginApp, ApiServer]:
    if not args.node_name:
        raise ConfigError("--node-name (or NODE_NAME from the downward API) is required")
    try:
        health = health_config(args)
    except HealthConfigError as e:
        raise ConfigError(f"health settings: {e}") from None
    limiter = limiter_from(args)
    if args.cdi_kind and not valid_cdi_kind(args.cdi_kind):
        raise ConfigError(f"--cdi-kind {args.cdi_kind!r} is not a CDI kind vendor/class (e.g. nvidia.com/gpu)")
    if args.crosscheck_delay < 0:
        raise ConfigError("--crosscheck-delay must be >= 0")
    try:
        device_list = parse_device_list(args.device_list_strategy)
    except ValueError as e:
        raise ConfigError(str(e)) from None
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
        # absolute: gRPC reads "unix://rel/path" as a host name
        holdings = PodResourcesClient(os.path.abspath(args.pod_resources_socket), RESOURCE_CORE)
    cfg = AppConfig(
        plugin=PluginConfig(node=args.node_name, limiter=limiter, cdi_kind=args.cdi_kind,
                            crosscheck_delay=args.crosscheck_delay, device_list=device_list),
        server=ServerConfig(socket_dir=os.path.abspath(args.socket_dir), lock_file=args.lock_file),
        health=health,
    )
    backend = backend_from(args)  # ValueError: one line, exit 2
    metrics = PluginMetrics()
    quota = make_quota(args, metrics)
    try:
        api = make_api_server(args)  # waits for this node's pods; the quota caches list meanwhile
    except BaseException:
        if quota is not None:
            quota.stop()
        raise
    if quota is not None and not quota.wait_synced(args.quota_sync_timeout):
        log.warning("quota caches not synced after %.0f s; Allocate lets pods through unchecked until they are "
                    "(fracgpu_deviceplugin_quota_checks_total{outcome=\"unchecked\"})", args.quota_sync_timeout)
    return DevicePluginApp(cfg, backend, api, holdings, quota=quota, metrics=metrics), api


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    if isinstance(args := startup.begin(parser(environ), argv), int):
        return args
    try:
        app, api = build(args, environ)
    except KubeConfigError as e:
        return _refuse(startup.no_cluster(e, "give --kubeconfig FILE (or set KUBECONFIG) or --kube-api URL, run it in "
                                             "a pod, or run without a cluster with --no-kube"))
    except BackendError as e:
        return _refuse(f"{e}; without a GPU: --backend simulated --gpus FILE" if args.backend == "nvml" else e)
    except (ConfigError, SimulatedConfigError, ValueError) as e:
        return _refuse(e)
    if not os.path.isdir(args.socket_dir):
        _stop(app, api, None, started=False)
        return _refuse(f"--socket-dir {args.socket_dir} is not a directory: give the kubelet's device-plugins "
                       f"directory ({DEVICE_PLUGIN_DIR}), or for a demo create one (mkdir -p {args.socket_dir})")
    metrics_server = None
    if args.metrics_port:
        from prometheus_client import start_http_server

        try:
            metrics_server, _ = start_http_server(args.metrics_port, registry=app.metrics.registry)
        except OSError as e:
            _stop(app, api, None, started=False)
            return _refuse(startup.metrics_server_error(e, args.metrics_port))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal received signum=%d; shutting down", signum)
        stop.set()
        app.stopping.set()  # also ends a wait for the restart lock

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
    except (OSError, RuntimeError) as e:  # a --socket-dir it may not write to (RuntimeError: gRPC's bind)
        return _refuse(f"cannot serve in --socket-dir {args.socket_dir}: {' '.join(str(e).split())}")
    finally:
        _stop(app, api, metrics_server, started=True)
    log.info("device plugin stopped")
    return 0


def _stop(app: DevicePluginApp, api: ApiServer, metrics_server: Any, *, started: bool) -> None:
    if started:
        app.stop()
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    stop_api = getattr(api, "stop", None)
    if stop_api is not None:
        stop_api()
    stop_quota = getattr(app.plugin.quota, "stop", None)
    if stop_quota is not None:
        stop_quota()


def _refuse(error: object) -> int:
    print(f"fracgpu device-plugin: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

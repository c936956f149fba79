"""`fracgpu controller`: flags (with env fallbacks) -> config -> reflectors, elector, loop, /metrics."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from fracgpu.api.v1beta1.names import DEFAULT_NAMESPACE, LABEL_RECOVERY_NODE, SCHEDULER_NAME, TAINT_GPU_FAILED
from fracgpu.controller import recovery
from fracgpu.controller.config import ConfigError, ControllerConfig
from fracgpu.controller.kubeio import JOBS, ControllerWriter, KubeLeaseStore
from fracgpu.controller.loop import ClusterCache, Controller
from fracgpu.controller.metrics import ControllerMetrics
from fracgpu.core.health import HealthConfigError, NodePolicy
from fracgpu.kube import client
from fracgpu.kube.leader import LeaderElector, LeaseTiming, SystemClock
from fracgpu.kube.reflector import Reflector, WatchEvent
from fracgpu.kube.resources import LEASES, NODES, PODS
from fracgpu.kube.writer import KubeWriter

log = logging.getLogger(__name__)

COMPONENT = "fracgpu-controller"


@dataclass(frozen=True, slots=True)
class Options:
    cfg: ControllerConfig
    identity: str
    metrics_port: int = 9402
    kube_api: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    pod_field_selector: str | None = f"spec.schedulerName={SCHEDULER_NAME}"
    sync_timeout: float = 120.0
    log_level: str = "INFO"
    environ: Mapping[str, str] = field(default_factory=dict)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(key: str, default: str | None) -> str | None:
        return environ.get(key, default)

    p = argparse.ArgumentParser(
        prog="fracgpu controller",
        description="GPU health self-heal: evict pods on unhealthy GPUs, taint broken nodes, remove the "
        "taint when they recover. Leader-elected; see docs/health.md.",
    )
    d = ControllerConfig()
    p.add_argument("--namespace", default=env("FRACGPU_NAMESPACE", DEFAULT_NAMESPACE), help="fracgpu's namespace")
    p.add_argument("--taint-key", default=env("FRACGPU_TAINT_KEY", TAINT_GPU_FAILED))
    p.add_argument(
        "--node-policy",
        default=env("FRACGPU_NODE_POLICY", d.node_policy.value),
        help="when a node as a whole is broken: " + " | ".join(m.value for m in NodePolicy),
    )
    p.add_argument("--taint-hold", type=float, default=env("FRACGPU_TAINT_HOLD", str(d.taint_hold)))
    p.add_argument(
        "--max-evictions-per-node",
        type=int,
        default=env("FRACGPU_MAX_EVICTIONS_PER_NODE", str(d.max_evictions_per_node)),
    )
    p.add_argument(
        "--eviction-grace-period",
        type=int,
        default=env("FRACGPU_EVICTION_GRACE_PERIOD", None),
        help="seconds (default: the pod's own terminationGracePeriodSeconds)",
    )
    p.add_argument("--eviction-backoff", type=float, default=d.eviction_backoff)
    p.add_argument("--eviction-backoff-max", type=float, default=d.eviction_backoff_max)
    p.add_argument("--eviction-report-interval", type=float, default=d.eviction_report_interval)
    p.add_argument("--heartbeat-grace", type=float, default=env("FRACGPU_HEARTBEAT_GRACE", str(d.heartbeat_grace)))
    p.add_argument("--resync", type=float, default=d.resync)
    p.add_argument("--leader-lease", default=d.leader_lease)
    p.add_argument("--lease-duration", type=float, default=d.lease_duration)
    p.add_argument("--renew-deadline", type=float, default=d.renew_deadline)
    p.add_argument("--retry-period", type=float, default=d.retry_period)
    p.add_argument("--identity", default=env("POD_NAME", None), help="this replica's name in the leader Lease")
    p.add_argument("--metrics-port", type=int, default=env("FRACGPU_METRICS_PORT", "9402"), help="0 = off")
    p.add_argument("--pod-field-selector", default=f"spec.schedulerName={SCHEDULER_NAME}",
                   help="which pods to watch ('' = all)")  # fmt: skip
    p.add_argument("--recovery-job", default=env("FRACGPU_RECOVERY_JOB", None),
                   help="YAML file with a batch/v1 Job to run on a node broken for --recovery-after seconds")
    p.add_argument("--recovery-namespace", default=env("FRACGPU_RECOVERY_NAMESPACE", d.recovery_namespace),
                   help="namespace of the recovery Jobs: Pod Security baseline or stricter, never fracgpu's own")
    p.add_argument("--recovery-after", type=float, default=d.recovery_after)
    p.add_argument("--recovery-cooldown", type=float, default=d.recovery_cooldown)
    p.add_argument("--kube-api", default=None, help="API server URL (default: kubeconfig or in-cluster)")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--context", default=None)
    p.add_argument("--log-level", default=env("FRACGPU_LOG_LEVEL", "INFO"))
    return p


def parse_options(argv: Sequence[str], environ: Mapping[str, str]) -> Options:
    """Flags > environment > defaults; raises ConfigError with the setting's name."""
    args = build_parser(environ).parse_args(list(argv))
    try:
        policy = NodePolicy(str(args.node_policy).strip().lower())
    except ValueError:
        raise ConfigError(
            f"node policy: one of {' | '.join(m.value for m in NodePolicy)}, got {args.node_policy!r}"
        ) from None
    template = load_recovery_job(args.recovery_job) if args.recovery_job else None
    try:
        cfg = ControllerConfig(
            namespace=args.namespace,
            taint_key=args.taint_key,
            node_policy=policy,
            taint_hold=float(args.taint_hold),
            max_evictions_per_node=int(args.max_evictions_per_node),
            eviction_grace_period=None if args.eviction_grace_period is None else int(args.eviction_grace_period),
            eviction_backoff=args.eviction_backoff,
            eviction_backoff_max=args.eviction_backoff_max,
            eviction_report_interval=args.eviction_report_interval,
            heartbeat_grace=float(args.heartbeat_grace),
            resync=args.resync,
            leader_lease=args.leader_lease,
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=args.retry_period,
            recovery_job=template,
            recovery_after=args.recovery_after,
            recovery_cooldown=args.recovery_cooldown,
            recovery_namespace=args.recovery_namespace,
        )
    except (ValueError, HealthConfigError) as e:
        raise ConfigError(str(e)) from None
    return Options(
        cfg=cfg,
        identity=args.identity or f"{socket.gethostname()}-{os.getpid()}",
        metrics_port=int(args.metrics_port),
        kube_api=args.kube_api,
        kubeconfig=args.kubeconfig,
        context=args.context,
        pod_field_selector=args.pod_field_selector or None,
        environ=environ,
        log_level=str(args.log_level).upper(),
    )


def load_recovery_job(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            obj = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"recovery job: cannot read {path}: {e}") from None
    try:
        return recovery.validate_template(obj)
    except recovery.TemplateError as e:
        raise ConfigError(f"{e} ({path})") from None


def serve(opts: Options, stop: threading.Event) -> int:
    """Run until ``stop`` is set. Returns the exit code."""
    cfg = opts.cfg
    api = client.build_api_client(
        host=opts.kube_api, kubeconfig=opts.kubeconfig, context=opts.context, environ=opts.environ
    )
    transport = client.Transport(api)
    writer = KubeWriter(transport, component=COMPONENT, instance=opts.identity)
    cache = ClusterCache(cfg.taint_key, cfg.namespace)
    metrics = ControllerMetrics()
    clock = SystemClock()
    timing = LeaseTiming(cfg.lease_duration, cfg.renew_deadline, cfg.retry_period)
    elector = LeaderElector(
        KubeLeaseStore(writer, cfg.namespace, cfg.leader_lease), cfg.namespace, cfg.leader_lease, opts.identity,
        timing, clock,
    )  # fmt: skip
    controller = Controller(cfg, cache, ControllerWriter(writer), elector, clock, metrics)

    def feed(kind: str) -> Callable[[WatchEvent], None]:
        handler = {"nodes": cache.node, "pods": cache.pod, "leases": cache.lease, "jobs": cache.job}[kind]
        return lambda event: handler(event.type, event.object)

    reflectors = [
        Reflector(transport, NODES, feed("nodes")),
        Reflector(transport, PODS, feed("pods"), field_selector=opts.pod_field_selector),
        Reflector(transport, LEASES, feed("leases"), namespace=cfg.namespace),
    ]
    if cfg.recovery_job is not None:
        reflectors.append(
            Reflector(transport, JOBS, feed("jobs"), namespace=cfg.recovery_namespace,
                      label_selector=LABEL_RECOVERY_NODE)
        )
    if opts.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(opts.metrics_port, registry=metrics.registry)
    log.info("controller starting identity=%s namespace=%s taint_key=%s policy=%s", opts.identity,
             cfg.namespace, cfg.taint_key, cfg.node_policy.value)  # fmt: skip
    try:
        for r in reflectors:
            r.start()
        deadline = time.monotonic() + opts.sync_timeout
        while not all(r.synced for r in reflectors):
            if stop.wait(0.05):
                return 0
            if time.monotonic() > deadline:
                log.error("caches did not sync timeout_s=%.0f", opts.sync_timeout)
                return 1
        controller.run(stop)
        return 0
    finally:
        for r in reflectors:
            r.stop()
        transport.close()


def main(argv: list[str]) -> int:
    environ = dict(os.environ)
    try:
        opts = parse_options(argv, environ)
    except ConfigError as e:
        print(f"fracgpu controller: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, or a flag argparse could not read (it printed why)
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(
        level=opts.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return serve(opts, stop)

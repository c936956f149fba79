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
from fracgpu.controller.config import ControllerConfig
from fracgpu.controller.loop import ClusterCache, Controller
from fracgpu.controller.metrics import ControllerMetrics
from fracgpu.controller.writer import ControllerWriter, KubeLeaseStore
from fracgpu.core.healthconfig import HealthConfigError, NodePolicy
from fracgpu.kube import client
from fracgpu.kube.dralowering import DRA_MODES, dra_wanted
from fracgpu.kube.errors import KubeAPIError, KubeConfigError
from fracgpu.kube.leader import LeaderElector, LeaseTiming, SystemClock
from fracgpu.kube.reflector import DELETED, Reflector, WatchEvent
from fracgpu.kube.resources import (
    JOBS,
    LEASES,
    NODES,
    PODS,
    RESOURCECLAIMS,
    RESOURCECLAIMTEMPLATES,
    RESOURCESLICES,
)
from fracgpu.kube.writer import KubeWriter
from fracgpu.startup import (
    ConfigError,
    Flag,
    Parser,
    StartupError,
    add_config_flag,
    add_flags,
    log_level,
    metrics_server_error,
    no_cluster,
    non_negative_int,
    port_or_off,
    positive_int,
    seconds,
    start_logging,
)

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
    dra: str = "auto"  # DRA_MODES
    sync_timeout: float = 120.0
    log_level: str = "INFO"
    environ: Mapping[str, str] = field(default_factory=dict)


def _lower(raw: str) -> str:
    return raw.strip().lower()


def _num(value: float) -> str:
    return f"{value:g}"


def flags() -> tuple[Flag, ...]:
    d = ControllerConfig()
    return (
        Flag("namespace", "fracgpu's namespace: the plugins' heartbeat Leases and the leader Lease",
             DEFAULT_NAMESPACE, env=("FRACGPU_NAMESPACE",)),
        Flag("taint-key", "NoSchedule taint put on a node whose GPUs are broken", TAINT_GPU_FAILED,
             env=("FRACGPU_TAINT_KEY",)),
        Flag("node-policy", "when a node as a whole counts as broken and is tainted, beyond NVML or driver failure: "
             "all-gpus (every GPU unhealthy), any-gpu (one is enough), never", d.node_policy.value, _lower,
             env=("FRACGPU_NODE_POLICY",), choices=tuple(m.value for m in NodePolicy)),
        Flag("taint-hold", "seconds a tainted node must stay healthy before the taint goes", _num(d.taint_hold),
             seconds, env=("FRACGPU_TAINT_HOLD",)),
        Flag("max-evictions-per-node", "pods being evicted (terminating) on one node at once",
             str(d.max_evictions_per_node), positive_int, env=("FRACGPU_MAX_EVICTIONS_PER_NODE",)),
        Flag("eviction-grace-period", "seconds an evicted pod gets to stop", None, non_negative_int,
             env=("FRACGPU_EVICTION_GRACE_PERIOD",), unset="the pod's own terminationGracePeriodSeconds"),
        Flag("eviction-backoff", "seconds before the first retry of a refused (429) or failed eviction",
             _num(d.eviction_backoff), seconds),
        Flag("eviction-backoff-max", "retries of an eviction back off, doubling, up to this many seconds",
             _num(d.eviction_backoff_max), seconds),
        Flag("eviction-report-interval", "a blocked eviction is reported (Event) at most once in this many seconds",
             _num(d.eviction_report_interval), seconds),
        Flag("heartbeat-stale", "seconds without a plugin heartbeat Lease renewal (our clock) before a node is stale",
             _num(d.heartbeat_grace), seconds, env=("FRACGPU_HEARTBEAT_STALE", "FRACGPU_HEARTBEAT_GRACE"),
             old=("heartbeat-grace",)),
        Flag("resync", "seconds between reconcile rounds (changes also trigger one)", _num(d.resync), seconds),
        Flag("leader-lease", "name of the leader-election Lease in --namespace", d.leader_lease),
        Flag("lease-duration", "seconds a follower waits on an unrenewed Lease before taking over",
             _num(d.lease_duration), seconds),
        Flag("renew-deadline", "seconds the leader keeps leading without a successful renewal",
             _num(d.renew_deadline), seconds),
        Flag("retry-period", "seconds between two election rounds", _num(d.retry_period), seconds),
        Flag("identity", "this replica's name in the leader Lease", env=("POD_NAME",), unset="hostname-pid"),
        Flag("metrics-port", "port of /metrics (0: off)", "9402", port_or_off, env=("FRACGPU_METRICS_PORT",)),
        Flag("pod-field-selector", "which pods to watch ('': all); with --dra on every pod is watched (claim pods "
             "may use any scheduler)", f"spec.schedulerName={SCHEDULER_NAME}"),
        Flag("dra", "also heal the DRA path (docs/dra.md): evict pods whose claims hold a failed GPU; on, off, or "
             "auto (on when the API server serves resource.k8s.io/v1)", "auto", choices=DRA_MODES),
        Flag("recovery-job", "YAML file with a batch/v1 Job to run on a node broken for --recovery-after seconds",
             env=("FRACGPU_RECOVERY_JOB",), metavar="FILE", unset="no recovery Job"),
        Flag("recovery-namespace", "namespace of the recovery Jobs: Pod Security baseline or stricter, never "
             "fracgpu's own (manifests/recovery)", d.recovery_namespace, env=("FRACGPU_RECOVERY_NAMESPACE",)),
        Flag("recovery-after", "seconds a node must stay broken before its recovery Job starts",
             _num(d.recovery_after), seconds),
        Flag("recovery-cooldown", "at most one recovery Job per node in this many seconds",
             _num(d.recovery_cooldown), seconds),
        Flag("kube-api", "API server URL", env=("FRACGPU_KUBE_API",), metavar="URL",
             unset="--kubeconfig, in-cluster config, then $KUBECONFIG or ~/.kube/config"),
        Flag("kubeconfig", "kubeconfig file", metavar="FILE", unset="in-cluster config, then $KUBECONFIG or "
             "~/.kube/config"),
        Flag("context", "kubeconfig context", unset="the kubeconfig's current context"),
        Flag("log-level", "DEBUG, INFO, WARNING or ERROR", "INFO", log_level, env=("FRACGPU_LOG_LEVEL",)),
    )


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    p = Parser(
        prog="fracgpu controller",
        description="GPU health self-heal: evict pods on unhealthy GPUs, taint broken nodes, remove the "
        "taint when they recover. Leader-elected; see docs/health.md.",
    )
    add_config_flag(p, environ)
    add_flags(p, flags(), environ)
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
            heartbeat_grace=float(args.heartbeat_stale),
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
        dra=str(args.dra),
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


def watches(transport: client.Transport, cache: ClusterCache, cfg: ControllerConfig,
            pod_field_selector: str | None) -> list[Reflector]:
    """The list+watch of every kind the cache holds, feeding it (not started)."""

    def feed(handler: Callable[[str, Mapping[str, Any]], None]) -> Callable[[WatchEvent], None]:
        return lambda event: handler(event.type, event.object)

    dra = cache.dra
    reflectors = [Reflector(transport, NODES, feed(cache.node))]
    if dra is not None:  # before the pods, so the first pod list finds their claims
        reflectors += [
            Reflector(transport, RESOURCESLICES, lambda e: dra.apply_slice(e.object, deleted=e.type == DELETED)),
            Reflector(transport, RESOURCECLAIMTEMPLATES,
                      lambda e: dra.apply_template(e.object, deleted=e.type == DELETED)),
            Reflector(transport, RESOURCECLAIMS, lambda e: dra.apply_claim(e.object, deleted=e.type == DELETED)),
        ]
    reflectors += [
        Reflector(transport, PODS, feed(cache.pod), field_selector=None if dra is not None else pod_field_selector),
        Reflector(transport, LEASES, feed(cache.lease), namespace=cfg.namespace),
    ]
    if cfg.recovery_job is not None:
        reflectors.append(
            Reflector(transport, JOBS, feed(cache.job), namespace=cfg.recovery_namespace,
                      label_selector=LABEL_RECOVERY_NODE)
        )
    return reflectors


def serve(opts: Options, stop: threading.Event) -> int:
    """Run until ``stop`` is set. Returns the exit code."""
    cfg = opts.cfg
    try:
        api = client.build_api_client(
            host=opts.kube_api, kubeconfig=opts.kubeconfig, context=opts.context, environ=opts.environ
        )
    except KubeConfigError as e:
        raise no_cluster(e, "give --kubeconfig FILE (or set KUBECONFIG) or --kube-api URL, or run it in a pod"
                         ) from None
    transport = client.Transport(api)
    writer = KubeWriter(transport, component=COMPONENT, instance=opts.identity)
    metrics = ControllerMetrics()
    if opts.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(opts.metrics_port, registry=metrics.registry)
        except OSError as e:
            transport.close()
            raise metrics_server_error(e, opts.metrics_port) from None
    try:
        dra = dra_wanted(opts.dra, transport, wait_s=opts.sync_timeout, sleep=stop.wait)
    except KubeAPIError as e:
        transport.close()
        if stop.is_set():
            return 0
        log.error("--dra auto: cannot tell whether the API server serves %s: %s (give --dra on or --dra off)",
                  RESOURCECLAIMS.api_version, e)
        return 1
    cache = ClusterCache(cfg.taint_key, cfg.namespace, dra=dra)
    clock = SystemClock()
    timing = LeaseTiming(cfg.lease_duration, cfg.renew_deadline, cfg.retry_period)
    elector = LeaderElector(
        KubeLeaseStore(writer, cfg.namespace, cfg.leader_lease), cfg.namespace, cfg.leader_lease, opts.identity,
        timing, clock,
    )  # fmt: skip
    controller = Controller(cfg, cache, ControllerWriter(writer), elector, clock, metrics)
    reflectors = watches(transport, cache, cfg, opts.pod_field_selector)
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
    start_logging(opts.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        return serve(opts, stop)
    except StartupError as e:
        print(f"fracgpu controller: {e}", file=sys.stderr)
        return 2

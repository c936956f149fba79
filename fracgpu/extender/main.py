"""`fracgpu extender`: serve filter / prioritize / bind to the fracgpu-scheduler.

Every flag has an environment fallback, FRACGPU_EXTENDER_<FLAG> (e.g. FRACGPU_EXTENDER_PORT);
precedence: flag > environment > default. Either a cluster (kubeconfig, in-cluster config) or
`--snapshot FILE` feeds the cache.

With a cluster, replicas elect a leader through the Lease `--leader-lease` in `--namespace`: only
the leader is Ready and binds (docs/extender.md, "High availability"). `--tls-cert/--tls-key`
serve HTTPS; `--client-ca` then requires a client certificate from that CA for filter, prioritize
and bind (probes and /metrics stay open), so only fracgpu-scheduler can bind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import socket
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from fracgpu.api.v1beta1.names import DEFAULT_NAMESPACE, TAINT_GPU_FAILED
from fracgpu.core.quantity import QuantityError
from fracgpu.core.quota import QuotaConfig
from fracgpu.core.registry import DEFAULT_POLICIES, PolicyConfigError
from fracgpu.core.tenant import default_limits
from fracgpu.extender.app import DEFAULT_BODY_LIMIT, Binder, Deps, make_app
from fracgpu.extender.cache import ClusterCache
from fracgpu.extender.leader import DEFAULT_LEASE, CacheFence, LeaderConfig, Leadership, check_timing
from fracgpu.extender.metrics import Metrics
from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
from fracgpu.extender.snapshot import SnapshotBinder, SnapshotError, load_file
from fracgpu.kube.client import Transport, build_api_client
from fracgpu.kube.leader import KubeLeaseStore, LeaderElector, LeaseTiming, SystemClock
from fracgpu.kube.tls import CertificateReloader, make_server_context, reload_task
from fracgpu.kube.writer import KubeWriter

log = logging.getLogger(__name__)
ENV_PREFIX = "FRACGPU_EXTENDER_"


@dataclass(frozen=True, slots=True)
class Flag:
    name: str
    default: str | None
    help: str


FLAGS = (
    Flag("listen", "0.0.0.0", "address to listen on"),
    Flag("port", "8888", "port to listen on"),
    Flag("kubeconfig", None, "kubeconfig file (default: in-cluster, then ~/.kube/config)"),
    Flag("context", None, "kubeconfig context"),
    Flag("snapshot", None, "serve from a `kubectl get -o yaml` List file instead of a cluster"),
    Flag("namespace", DEFAULT_NAMESPACE, "fracgpu's namespace (heartbeat Leases)"),
    Flag("k", "1", "filter keeps the best k nodes of the ranking"),
    Flag("policies", DEFAULT_POLICIES, "weighted ranking policies, e.g. binpack=1,topology=0.5"),
    Flag("heartbeat-stale", "40", "seconds without a heartbeat Lease renewal before a node is stale (0: off)"),
    Flag("stuck-allocating", "300", "seconds after which a pod still 'allocating' stops blocking others"),
    Flag("body-limit", str(DEFAULT_BODY_LIMIT), "largest request body in bytes"),
    Flag("taint-key", TAINT_GPU_FAILED, "NoSchedule taint key of a node whose GPUs are broken"),
    Flag("max-pods-per-gpu", "0", "most pods sharing one GPU (0: no limit)"),
    Flag("default-memory-quota", None, "VRAM quota of a tenant without one (e.g. 64Gi; default unlimited)"),
    Flag("default-core-quota", None, "vgpu-core quota of a tenant without one (default unlimited)"),
    Flag("queue-head-wait", "60", "seconds a queued pod that fits may hold back later pods of its tenant"),
    Flag("status-interval", "10", "least seconds between two status writes of one TenantQuota"),
    Flag("leader-elect", "true", "elect one binding replica through a Lease (true/false)"),
    Flag("leader-lease", DEFAULT_LEASE, "name of the leader-election Lease in --namespace"),
    Flag("identity", None, "this replica's name in the Lease (default: $POD_NAME, else hostname_random)"),
    Flag("lease-duration", "15", "seconds a follower waits on an unrenewed Lease before taking over"),
    Flag("renew-deadline", "10", "seconds the leader keeps leading without a successful renewal"),
    Flag("retry-period", "2", "seconds between two election rounds"),
    Flag("bind-timeout", "5", "seconds a Binding write may take"),
    Flag("bind-margin", "2", "a Binding write starts only with at least this much leadership left"),
    Flag("tls-cert", None, "serve HTTPS with this certificate (PEM; with --tls-key)"),
    Flag("tls-key", None, "private key of --tls-cert (PEM)"),
    Flag("client-ca", None, "require a client certificate from this CA for filter/prioritize/bind"),
    Flag("client-names", "", "comma list: a client certificate must name one (CN or DNS SAN); empty: any"),
    Flag("cert-reload", "60", "seconds between checks for rotated certificate files (0: never)"),
    Flag("log-level", "INFO", "DEBUG, INFO, WARNING"),
)


class ConfigError(Exception):
    """A flag or environment value that cannot be used; the message names it."""


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command's parser (also read by fracgpu.configref for docs/configuration.md)."""
    p = argparse.ArgumentParser(prog="fracgpu extender", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in FLAGS:
        env = ENV_PREFIX + f.name.upper().replace("-", "_")
        p.add_argument(f"--{f.name}", default=environ.get(env, f.default), help=f"{f.help} [env {env}]")
    return p


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    return build_parser(environ).parse_args(list(argv))


def _num(ns: argparse.Namespace, name: str, kind: type[int] | type[float]) -> float:
    raw = getattr(ns, name.replace("-", "_"))
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name}: {raw!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"--{name}: must not be negative, got {raw!r}")
    return value


def build_config(ns: argparse.Namespace) -> SchedulerConfig:
    try:
        limits = default_limits(ns.default_memory_quota, ns.default_core_quota)
    except QuantityError as e:
        raise ConfigError(f"default quota: {e}") from None
    try:
        return SchedulerConfig(
            k=int(_num(ns, "k", int)),
            policies=ns.policies,
            heartbeat_stale_s=0.0 if ns.snapshot else _num(ns, "heartbeat-stale", float),
            stuck_allocating_s=_num(ns, "stuck-allocating", float),
            namespace=ns.namespace,
            taint_key=ns.taint_key,
            max_pods_per_gpu=int(_num(ns, "max-pods-per-gpu", int)),
            quota=QuotaConfig(max_head_wait=_num(ns, "queue-head-wait", float),
                              status_min_interval=_num(ns, "status-interval", float)),
            default_limits=limits,
        )
    except (PolicyConfigError, ValueError) as e:
        raise ConfigError(str(e)) from None


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: str
    key: str
    client_ca: str | None
    client_names: frozenset[str]
    reload_s: float


def build_tls(ns: argparse.Namespace) -> TlsConfig | None:
    if not ns.tls_cert and not ns.tls_key:
        if ns.client_ca:
            raise ConfigError("--client-ca needs --tls-cert and --tls-key")
        return None
    if not (ns.tls_cert and ns.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    names = frozenset(n.strip() for n in str(ns.client_names or "").split(",") if n.strip())
    if names and not ns.client_ca:
        raise ConfigError("--client-names needs --client-ca")
    return TlsConfig(ns.tls_cert, ns.tls_key, ns.client_ca or None, names, _num(ns, "cert-reload", float))


def _bool(ns: argparse.Namespace, name: str) -> bool:
    raw = str(getattr(ns, name.replace("-", "_"))).strip().lower()
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"--{name}: {raw!r} is not true or false")


def build_leader_config(ns: argparse.Namespace, environ: Mapping[str, str]) -> LeaderConfig | None:
    """None with --leader-elect=false; a ConfigError for durations that could let two replicas bind."""
    if not _bool(ns, "leader-elect"):
        return None
    identity = ns.identity or environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    cfg = LeaderConfig(
        namespace=ns.namespace,
        identity=identity,
        lease=ns.leader_lease,
        timing=LeaseTiming(_num(ns, "lease-duration", float), _num(ns, "renew-deadline", float),
                           _num(ns, "retry-period", float)),
        bind_margin_s=_num(ns, "bind-margin", float),
        bind_timeout_s=_num(ns, "bind-timeout", float),
    )
    why = check_timing(cfg)
    if why is not None:
        raise ConfigError(why)
    return cfg


async def _quota_status_loop(scheduler: Scheduler, writer: KubeWriter, interval_s: float) -> None:
    """Write TenantQuota statuses that changed, at most once per interval per object."""
    last: dict[str, float] = {}
    update = writer.update_tenant_quota_status
    while True:
        await asyncio.sleep(max(1.0, interval_s / 2))
        for name, status in scheduler.quota_status_writes(last):
            try:
                await asyncio.to_thread(update, name, status)
                last[name] = scheduler.clock()
            except Exception as e:
                log.warning("tenantquota status write failed name=%s error=%s", name, e)


def new_scheduler(config: SchedulerConfig) -> Scheduler:
    """Durations on the monotonic clock (an NTP step must not mark nodes stale or expire
    reservations); the wall clock only for timestamps API objects carry."""
    return Scheduler(config, time.monotonic, wall=time.time)


def freeze_startup_objects() -> None:
    """Move everything alive after the first sync out of the cyclic GC's way: tens of thousands of
    cache records would otherwise be rescanned by every full collection (a p99 latency spike)."""
    gc.collect()
    gc.freeze()


async def _freeze_after_sync(cache: ClusterCache) -> None:
    await asyncio.to_thread(cache.synced.wait)
    freeze_startup_objects()


def main(argv: list[str]) -> int:
    ns = parse_args(argv, os.environ)
    logging.basicConfig(level=str(ns.log_level).upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = build_config(ns)
        port = int(_num(ns, "port", int))
        body_limit = int(_num(ns, "body-limit", int))
        tls = build_tls(ns)
        leader_cfg = None if ns.snapshot else build_leader_config(ns, os.environ)
    except ConfigError as e:
        print(f"fracgpu extender: {e}", file=sys.stderr)
        return 2
    ssl_ctx: ssl.SSLContext | None = None
    if tls is not None:
        try:
            ssl_ctx = make_server_context(tls.cert, tls.key, tls.client_ca)
        except (OSError, ssl.SSLError) as e:
            print(f"fracgpu extender: cannot load certificate {tls.cert} / key {tls.key} / client CA "
                  f"{tls.client_ca}: {e}", file=sys.stderr)
            return 2
    client_names = tls.client_names if tls is not None and tls.client_ca else None
    scheduler = new_scheduler(config)
    metrics = Metrics(scheduler)
    binder: Binder
    cache: ClusterCache | None = None
    writer: KubeWriter | None = None
    if ns.snapshot:
        try:
            counts = load_file(scheduler, ns.snapshot)
        except SnapshotError as e:
            print(f"fracgpu extender: {e}", file=sys.stderr)
            return 2
        log.info("snapshot loaded file=%s %s", ns.snapshot, " ".join(f"{k}={v}" for k, v in counts.items()))
        freeze_startup_objects()
        binder = SnapshotBinder()
        deps = Deps(scheduler, binder, metrics, body_limit=body_limit, client_names=client_names)
    else:
        api = build_api_client(kubeconfig=ns.kubeconfig, context=ns.context)
        transport = Transport(api)
        writer = KubeWriter(transport, component="fracgpu-extender")
        cache = ClusterCache(transport, scheduler, namespace=config.namespace)
        if leader_cfg is not None:
            # Binding writes time out within the failover's safety margin (leader.check_timing)
            binder = KubeWriter(Transport(api, timeout_s=leader_cfg.bind_timeout_s), component="fracgpu-extender")
            elector = LeaderElector(KubeLeaseStore(writer, leader_cfg.namespace, leader_cfg.lease),
                                    leader_cfg.namespace, leader_cfg.lease, leader_cfg.identity,
                                    leader_cfg.timing, SystemClock())
            leadership = Leadership(cache.synced.is_set, elector, CacheFence(transport, scheduler), leader_cfg)
        else:
            binder = writer
            leadership = None
        deps = Deps(scheduler, binder, metrics, body_limit=body_limit, ready=cache.synced.is_set,
                    leadership=leadership, client_names=client_names)
    app = make_app(deps)
    if ssl_ctx is not None and tls is not None:
        app.cleanup_ctx.append(reload_task(CertificateReloader(ssl_ctx, tls.cert, tls.key, tls.client_ca),
                                           tls.reload_s))

    if cache is not None and writer is not None:
        live_cache, live_writer = cache, writer

        async def background(app: web.Application) -> AsyncIterator[None]:
            live_cache.start()
            tasks = [
                asyncio.create_task(_quota_status_loop(scheduler, live_writer, config.quota.status_min_interval)),
                asyncio.create_task(_freeze_after_sync(live_cache)),
            ]
            if deps.leadership is not None:  # cancelled first at shutdown: it gives the Lease up
                tasks.insert(0, asyncio.create_task(deps.leadership.run()))
            yield
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.to_thread(live_cache.stop)

        app.cleanup_ctx.append(background)
    log.info("extender listening address=%s port=%d tls=%s client_ca=%s k=%d policies=%s leader_lease=%s identity=%s",
             ns.listen, port, tls is not None, tls is not None and tls.client_ca is not None, config.k,
             config.policies, leader_cfg.lease if leader_cfg else "-", leader_cfg.identity if leader_cfg else "-")
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(app, host=ns.listen, port=port, print=None, handle_signals=True, access_log=None,
                    ssl_context=ssl_ctx)
    return 0

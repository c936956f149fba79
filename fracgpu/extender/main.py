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

from fracgpu import startup
from fracgpu.api.v1beta1.names import DEFAULT_NAMESPACE, TAINT_GPU_FAILED
from fracgpu.core.quantity import QuantityError
from fracgpu.core.quota import QuotaConfig
from fracgpu.core.registry import DEFAULT_POLICIES, PolicyConfigError
from fracgpu.core.tenant import default_limits
from fracgpu.extender.app import DEFAULT_BODY_LIMIT, Binder, Deps, make_app
from fracgpu.extender.cache import ClusterCache
from fracgpu.extender.draallocator import Allocator
from fracgpu.extender.dracache import DraView
from fracgpu.extender.leader import DEFAULT_LEASE, CacheFence, LeaderConfig, Leadership, check_timing
from fracgpu.extender.metrics import ExtenderMetrics
from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
from fracgpu.extender.snapshot import SnapshotBinder, SnapshotError, load_file
from fracgpu.kube.client import Transport, build_api_client
from fracgpu.kube.dralowering import DRA_MODES, dra_wanted
from fracgpu.kube.errors import KubeAPIError, KubeConfigError
from fracgpu.kube.leader import KubeLeaseStore, LeaderElector, LeaseTiming, SystemClock
from fracgpu.kube.resources import RESOURCECLAIMS
from fracgpu.kube.writer import KubeWriter
from fracgpu.servingtls import CertificateReloader, make_server_context, reload_task
from fracgpu.startup import ConfigError, Flag, listen, non_negative_int, port, positive_int, seconds

log = logging.getLogger(__name__)
ENV_PREFIX = "FRACGPU_EXTENDER_"


FLAGS = (
    Flag("bind-address", "address to listen on (0.0.0.0: every IPv4 address)", "0.0.0.0", metavar="ADDRESS",
         old=("listen",)),
    Flag("port", "port to listen on", "8888", port),
    Flag("kubeconfig", "kubeconfig file", metavar="FILE",
         unset="in-cluster config, then $KUBECONFIG or ~/.kube/config"),
    Flag("context", "kubeconfig context", unset="the kubeconfig's current context"),
    Flag("snapshot", "serve from a `kubectl get -o yaml` List file instead of a cluster", metavar="FILE",
         unset="a cluster"),
    Flag("namespace", "fracgpu's namespace (heartbeat and leader Leases)", DEFAULT_NAMESPACE),
    Flag("k", "filter keeps the best k nodes of the ranking", "1", positive_int),
    Flag("policies", "weighted ranking policies, e.g. binpack=1,topology=0.5", DEFAULT_POLICIES),
    Flag("heartbeat-stale", "seconds without a heartbeat Lease renewal before a node is stale (0: off)", "40",
         seconds),
    Flag("stuck-allocating", "seconds after which a pod still 'allocating' stops blocking others", "300", seconds),
    Flag("max-body-bytes", "largest request body in bytes", str(DEFAULT_BODY_LIMIT), positive_int,
         old=("body-limit",)),
    Flag("taint-key", "NoSchedule taint key of a node whose GPUs are broken", TAINT_GPU_FAILED),
    Flag("max-pods-per-gpu", "most pods sharing one GPU (0: no limit)", "0", non_negative_int),
    Flag("default-memory-quota", "VRAM quota of a tenant without one, e.g. 64Gi", unset="unlimited"),
    Flag("default-core-quota", "vgpu-core quota of a tenant without one, e.g. 400", unset="unlimited"),
    Flag("queue-head-wait", "seconds a queued pod that fits may hold back later pods of its tenant", "60", seconds),
    Flag("status-interval", "least seconds between two status writes of one TenantQuota", "10", seconds),
    Flag("leader-elect", "elect one binding replica through a Lease (true/false)", "true", startup.boolean),
    Flag("leader-lease", "name of the leader-election Lease in --namespace", DEFAULT_LEASE),
    Flag("identity", "this replica's name in the Lease", unset="$POD_NAME, else hostname_random"),
    Flag("lease-duration", "seconds a follower waits on an unrenewed Lease before taking over", "15", seconds),
    Flag("renew-deadline", "seconds the leader keeps leading without a successful renewal", "10", seconds),
    Flag("retry-period", "seconds between two election rounds", "2", seconds),
    Flag("bind-timeout", "seconds a Binding write may take", "5", seconds),
    Flag("bind-margin", "a Binding write starts only with at least this many seconds of leadership left", "2",
         seconds),
    Flag("tls-cert", "serve HTTPS with this certificate (PEM; with --tls-key)", metavar="FILE", unset="plain HTTP"),
    Flag("tls-key", "private key of --tls-cert (PEM)", metavar="FILE", unset="none"),
    Flag("client-ca", "require a client certificate from this CA for filter/prioritize/bind", metavar="FILE",
         unset="no client certificate needed"),
    Flag("client-names", "comma list: a client certificate must name one (CN or DNS SAN); empty: any", ""),
    Flag("cert-reload", "seconds between checks for rotated certificate files (0: never)", "60", seconds),
    Flag("dra", "allocate the claims of fracgpu's DRA devices (docs/dra.md): on, off, or auto (on when the API "
         "server serves resource.k8s.io/v1)", "auto", choices=DRA_MODES),
    Flag("log-level", "DEBUG, INFO, WARNING or ERROR", "INFO", startup.log_level),
)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command's parser (also read by scripts/gen_config_reference.py for docs/configuration.md)."""
    p = startup.Parser(prog="fracgpu extender", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    startup.add_config_flag(p, environ)
    startup.add_flags(p, FLAGS, environ, env_prefix=ENV_PREFIX)
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
    try:
        ns = parse_args(argv, os.environ)
    except SystemExit as e:  # --help, or a flag argparse refused (it printed why)
        return e.code if isinstance(e.code, int) else 2
    startup.start_logging(ns.log_level)
    try:
        config = build_config(ns)
        port = int(_num(ns, "port", int))
        body_limit = int(ns.max_body_bytes)
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
    try:  # bound before anything is loaded or logged: a busy port is one line, not a traceback after "listening"
        sock = listen(ns.bind_address, port)
    except startup.StartupError as e:
        print(f"fracgpu extender: {e}", file=sys.stderr)
        return 2
    scheduler = new_scheduler(config)
    metrics = ExtenderMetrics(scheduler)
    binder: Binder
    cache: ClusterCache | None = None
    writer: KubeWriter | None = None
    allocator: Allocator | None = None
    if ns.snapshot:
        try:
            counts = load_file(scheduler, ns.snapshot)
        except SnapshotError as e:
            sock.close()
            print(f"fracgpu extender: {e}", file=sys.stderr)
            return 2
        log.info("snapshot loaded file=%s %s", ns.snapshot, " ".join(f"{k}={v}" for k, v in counts.items()))
        freeze_startup_objects()
        binder = SnapshotBinder()
        deps = Deps(scheduler, binder, metrics, body_limit=body_limit, client_names=client_names)
    else:
        try:
            api = build_api_client(kubeconfig=ns.kubeconfig, context=ns.context)
        except KubeConfigError as e:
            sock.close()
            why = startup.no_cluster(e, "give --kubeconfig FILE (or set KUBECONFIG), run it in a pod, "
                                        "or serve from a file with --snapshot FILE")
            print(f"fracgpu extender: {why}", file=sys.stderr)
            return 2
        transport = Transport(api)
        writer = KubeWriter(transport, component="fracgpu-extender")
        try:
            view = DraView(scheduler, time.monotonic) if dra_wanted(ns.dra, transport, wait_s=60.0) else None
        except KubeAPIError as e:
            sock.close()
            print(f"fracgpu extender: --dra auto: cannot tell whether the API server serves "
                  f"{RESOURCECLAIMS.api_version}: {e}; give --dra on or --dra off", file=sys.stderr)
            return 2
        cache = ClusterCache(transport, scheduler, namespace=config.namespace, dra=view)
        claim_writer = writer
        if leader_cfg is not None:
            # Binding writes time out within the failover's safety margin (leader.check_timing)
            claim_writer = KubeWriter(Transport(api, timeout_s=leader_cfg.bind_timeout_s),
                                      component="fracgpu-extender")
            binder = claim_writer
            elector = LeaderElector(KubeLeaseStore(writer, leader_cfg.namespace, leader_cfg.lease),
                                    leader_cfg.namespace, leader_cfg.lease, leader_cfg.identity,
                                    leader_cfg.timing, SystemClock())
            leadership = Leadership(cache.synced.is_set, elector, CacheFence(transport, scheduler, dra=view),
                                    leader_cfg)
        else:
            binder = writer
            leadership = None
        if view is not None:
            allocator = Allocator(scheduler, view, claim_writer, clock=time.monotonic, leadership=leadership,
                                  metrics=metrics)
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
            if allocator is not None:
                allocator.start()
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
            if allocator is not None:
                await asyncio.to_thread(allocator.stop)
            await asyncio.to_thread(live_cache.stop)

        app.cleanup_ctx.append(background)
    log.info("extender listening address=%s port=%d tls=%s client_ca=%s k=%d policies=%s leader_lease=%s identity=%s",
             ns.bind_address, port, tls is not None, tls is not None and tls.client_ca is not None, config.k,
             config.policies, leader_cfg.lease if leader_cfg else "-", leader_cfg.identity if leader_cfg else "-")
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(app, sock=sock, print=None, handle_signals=True, access_log=None, ssl_context=ssl_ctx)
    return 0

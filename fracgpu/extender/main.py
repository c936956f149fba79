"""`fracgpu extender`: serve filter / prioritize / bind to the fracgpu-scheduler.

Every flag has an environment fallback, FRACGPU_EXTENDER_<FLAG> (e.g. FRACGPU_EXTENDER_PORT);
precedence: flag > environment > default. Either a cluster (kubeconfig, in-cluster config) or
`--snapshot FILE` feeds the cache.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from fracgpu.api.v1beta1.names import DEFAULT_NAMESPACE, TAINT_GPU_FAILED
from fracgpu.core.quantity import QuantityError
from fracgpu.core.quota import QuotaConfig
from fracgpu.core.registry import DEFAULT_POLICIES, PolicyConfigError
from fracgpu.core.tenant import default_limits
from fracgpu.extender.app import DEFAULT_BODY_LIMIT, Binder, Deps, Metrics, make_app
from fracgpu.extender.cache import ClusterCache
from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
from fracgpu.extender.snapshot import SnapshotBinder, SnapshotError, load_file
from fracgpu.kube.client import Transport, build_api_client
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
    Flag("log-level", "INFO", "DEBUG, INFO, WARNING"),
)


class ConfigError(Exception):
    """A flag or environment value that cannot be used; the message names it."""


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fracgpu extender", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in FLAGS:
        env = ENV_PREFIX + f.name.upper().replace("-", "_")
        p.add_argument(f"--{f.name}", default=environ.get(env, f.default), help=f"{f.help} [env {env}]")
    return p.parse_args(list(argv))


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
    except ConfigError as e:
        print(f"fracgpu extender: {e}", file=sys.stderr)
        return 2
    scheduler = Scheduler(config, time.time)
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
        deps = Deps(scheduler, binder, metrics, body_limit=body_limit, confirm_binds=True)
    else:
        transport = Transport(build_api_client(kubeconfig=ns.kubeconfig, context=ns.context))
        writer = KubeWriter(transport, component="fracgpu-extender")
        cache = ClusterCache(transport, scheduler, namespace=config.namespace)
        binder = writer
        deps = Deps(scheduler, binder, metrics, body_limit=body_limit, ready=cache.synced.is_set)
    app = make_app(deps)

    if cache is not None and writer is not None:
        live_cache, live_writer = cache, writer

        async def background(app: web.Application) -> AsyncIterator[None]:
            live_cache.start()
            tasks = [
                asyncio.create_task(_quota_status_loop(scheduler, live_writer, config.quota.status_min_interval)),
                asyncio.create_task(_freeze_after_sync(live_cache)),
            ]
            yield
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.to_thread(live_cache.stop)

        app.cleanup_ctx.append(background)
    log.info("extender listening address=%s port=%d k=%d policies=%s", ns.listen, port, config.k, config.policies)
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(app, host=ns.listen, port=port, print=None, handle_signals=True, access_log=None)
    return 0

"""Which extender replica binds: the holder of the Lease `fracgpu-extender`, and only once its cache
holds every reservation that was committed before it took over.

Two replicas run; both keep a warm cache and may answer filter / prioritize from it, but only the
leader is Ready (so the Service sends kube-scheduler to it) and only the leader binds. The order of
a failover, with the shared `fracgpu.kube.leader.LeaderElector` (durations on each replica's own
monotonic clock):

1. a replica takes part in the election only after its cache's first full sync;
2. the old leader starts a Binding write only while it leads for at least `bind_margin_s` more
   seconds without another renewal (`LeaderElector.leading_for`), and a Binding write times out
   after `bind_timeout_s`; so its last write is over (landed or abandoned) before
   `renew_deadline + bind_timeout_s - bind_margin_s` past its last renewal, which must be below
   `lease_duration` — the earliest another replica can take over (`check_timing`);
3. the new leader, after acquiring, lists the bound pods (a consistent read) and waits until its
   cache holds the reservation of every one of them (the *fence*, `CacheFence`): a Binding the old
   leader made just before the hand-over cannot be missed because the watch lags. Only then is it
   Ready and does it bind. The fence runs again after every re-acquisition.

Nothing is lost either: reservations an old leader took but never wrote die with it (the pod is
still pending and kube-scheduler retries it on the new leader), and written ones are pod
annotations that every replica's cache reads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fracgpu.core.records import PodRecord, pod_record
from fracgpu.extender.scheduler import Scheduler
from fracgpu.kube import errors, pager
from fracgpu.kube.client import Transport
from fracgpu.kube.dralowering import allocated_pool, obj_key
from fracgpu.kube.leader import LeaderElector, LeaseTiming
from fracgpu.kube.resources import PODS, RESOURCECLAIMS

log = logging.getLogger(__name__)

DEFAULT_LEASE = "fracgpu-extender"


@dataclass(frozen=True, slots=True)
class LeaderConfig:
    namespace: str
    identity: str
    lease: str = DEFAULT_LEASE
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    bind_margin_s: float = 2.0  # a Binding write starts only with at least this much leadership left
    bind_timeout_s: float = 5.0  # the Binding write's read timeout


def check_timing(cfg: LeaderConfig) -> str | None:
    """Why these durations cannot guarantee that two replicas never write Bindings at once, or None."""
    t = cfg.timing
    if not 0 < t.retry_period < t.renew_deadline < t.lease_duration:
        return (f"leader election needs 0 < retry period ({t.retry_period:g}s) < renew deadline "
                f"({t.renew_deadline:g}s) < lease duration ({t.lease_duration:g}s)")
    if cfg.bind_timeout_s <= 0 or cfg.bind_margin_s < 0:
        return "bind timeout must be positive and bind margin not negative"
    if t.renew_deadline + cfg.bind_timeout_s - cfg.bind_margin_s >= t.lease_duration:
        return (f"a Binding started at the end of a leadership could still land after another replica takes "
                f"over: need renew deadline ({t.renew_deadline:g}s) + bind timeout ({cfg.bind_timeout_s:g}s) "
                f"- bind margin ({cfg.bind_margin_s:g}s) < lease duration ({t.lease_duration:g}s)")
    return None


class ClaimsSeen(Protocol):
    """The DRA side of the cache (kube.dralowering.DraLowering)."""

    def knows_allocation(self, key: str, pool: str) -> bool: ...


class CacheFence:
    """Does the cache hold every reservation the API server has committed? (a consistent list of the
    bound pods, compared with the Scheduler's reservations; with `dra`, also of the claims allocated on
    fracgpu's devices — by the old leader's allocator or kube-scheduler's — compared with the DRA cache's).
    Returns None when it does, else why not."""

    def __init__(self, transport: Transport, scheduler: Scheduler, *, page_size: int = pager.PAGE_SIZE,
                 dra: ClaimsSeen | None = None) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self.page_size = page_size
        self.dra = dra

    def __call__(self) -> str | None:
        missing: list[str] = []
        for page in pager.pages(self.transport, PODS, field_selector="spec.nodeName!=", page_size=self.page_size):
            bound: list[PodRecord] = []
            for item in page.items:
                rec = pod_record(item, keep_pod=False)
                a = rec.assignment
                if rec.finished or a is None or a.node != rec.node:
                    continue  # holds nothing (the cache keeps no reservation for it either)
                bound.append(rec)
            missing += self.scheduler.not_held(bound)
        if missing:
            return f"{len(missing)} bound pod(s) not in the cache yet, e.g. {missing[0]}"
        if self.dra is None:
            return None
        unseen: list[str] = []
        for page in pager.pages(self.transport, RESOURCECLAIMS, page_size=self.page_size):
            for item in page.items:
                pool = allocated_pool(item)
                if pool and not self.dra.knows_allocation(obj_key(item), pool):
                    unseen.append(obj_key(item))
        if unseen:
            return f"{len(unseen)} allocated claim(s) not in the cache yet, e.g. {unseen[0]}"
        return None


class Leadership:
    """The extender's standing: may it bind, and if it is not Ready, why. Thread-safe.

    Without an elector (`--leader-elect=false`, `--snapshot`) the replica leads alone once synced.
    `tick()` does one election round (and the fence after an acquisition); it makes API calls, so
    `run()` calls it in a thread every retry period.
    """

    def __init__(self, synced: Callable[[], bool], elector: LeaderElector | None = None,
                 fence: Callable[[], str | None] | None = None, config: LeaderConfig | None = None) -> None:
        self._synced = synced
        self.elector = elector
        self.fence = fence
        self.config = config
        self._lock = threading.Lock()
        self._leading = False  # as of the last tick
        self._fenced = False  # the fence passed since the last acquisition
        self._waiting = ""  # why the fence has not passed yet
        self.acquisitions = 0

    @property
    def elected(self) -> bool:
        return self.elector is not None

    def tick(self) -> bool:
        """One election round; returns whether this replica may bind now."""
        elector = self.elector
        if elector is None:
            return self.can_bind()
        if not self._synced():
            return False  # an empty cache must not take the Lease from a replica that could bind
        try:
            elector.tick()
        except errors.KubeAPIError as e:  # keep the current standing; it lapses at the renew deadline
            log.warning("extender leader lease failed error=%r", e)
        leading = elector.is_leader()
        with self._lock:
            if leading and not self._leading:
                self.acquisitions += 1
                self._fenced, self._waiting = False, "the cache has not been compared with the API server yet"
                log.info("extender leadership acquired identity=%s lease=%s", elector.identity, elector.name)
            elif not leading and self._leading:
                self._fenced = False
                log.warning("extender leadership lost identity=%s holder=%s", elector.identity, elector.holder)
            self._leading = leading
            fenced = self._fenced
        if leading and not fenced:
            self._run_fence()
        return self.can_bind()

    def _run_fence(self) -> None:
        why: str | None = None
        if self.fence is not None:
            try:
                why = self.fence()
            except errors.KubeAPIError as e:
                why = f"listing the bound pods failed: {e}"
        with self._lock:
            self._fenced, self._waiting = why is None, why or ""
        if why is None:
            log.info("extender cache holds every committed reservation; binding")
        else:
            log.info("extender leader waiting for its cache reason=%r", why)

    def can_bind(self) -> bool:
        if not self._synced():
            return False
        elector = self.elector
        if elector is None:
            return True
        margin = self.config.bind_margin_s if self.config is not None else 0.0
        with self._lock:
            fenced = self._fenced
        return fenced and elector.leading_for() > margin

    def not_ready(self) -> str | None:
        """None when this replica is Ready (synced, leading, fenced), else the reason."""
        if not self._synced():
            return "cache not synced"
        elector = self.elector
        if elector is None:
            return None
        if not elector.is_leader():
            holder = elector.holder if elector.holder and elector.holder != elector.identity else "nobody"
            return (f"not the leader: Lease {elector.namespace}/{elector.name} is held by {holder} "
                    f"(this replica: {elector.identity})")
        with self._lock:
            if not self._fenced:
                return f"leader, waiting for its cache to hold every committed reservation: {self._waiting}"
        return None

    def refusal(self) -> str:
        """The bind error of a replica that may not bind now."""
        why = self.not_ready() or "leadership ends too soon to start a Binding"
        return f"this fracgpu extender replica does not bind: {why}"

    def release(self) -> None:
        if self.elector is None:
            return
        try:
            self.elector.release()
        except errors.KubeAPIError as e:
            log.warning("releasing the extender leader lease failed error=%r", e)
        with self._lock:
            self._leading = self._fenced = False

    async def run(self) -> None:
        """Tick every retry period until cancelled; on cancellation give the Lease up."""
        period = self.config.timing.retry_period if self.config is not None else 2.0
        try:
            while True:
                try:
                    await asyncio.to_thread(self.tick)
                except Exception:  # a bug must not end the election: this replica would hold on to nothing
                    log.exception("extender election round failed")
                await asyncio.sleep(period)
        finally:
            await asyncio.to_thread(self.release)

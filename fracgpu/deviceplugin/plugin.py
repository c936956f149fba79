"""The plugin's working parts around the ledger: pods in, decisions out, writes in the background.

``Plugin`` is what the gRPC servicer calls. It keeps the ledger in step with the API server (a
cheap read of the ApiServer's cache before each decision), answers GetPreferredAllocation and
Allocate under one lock (the kubelet admits one pod at a time anyway), and hands every write to
the API server, every Event and the PodResources cross-check to a single background worker so
that Allocate never waits on the network.

The cross-check judges only a PodResources answer that shows every Allocate served since the last
one: the kubelet records an allocation after Allocate returns, so an answer taken at once may not
show it yet, and judging it would leave a pod taken for another one unrepaired.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from fracgpu.api.v1beta1.deviceplugin import api_pb2
from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.api.v1beta1.names import (
    ANN_ASSIGNED,
    ANN_INVENTORY,
    ANN_PHASE,
    LABEL_GPU_COUNT,
    LABEL_GPU_MODEL,
    PHASE_ALLOCATED,
    PHASE_FAILED_PREFIX,
)
from fracgpu.core.inventory import device_ids
from fracgpu.core.shareenv import DEVICE_LIST_ENVVAR
from fracgpu.deviceplugin.apiserver import ApiServer, PodEvent
from fracgpu.deviceplugin.health import DeviceState
from fracgpu.deviceplugin.ledger import (
    AMBIGUOUS,
    BAD_RESERVATION,
    NO_RESERVATION,
    OVERBOOKED,
    UNCONFIRMED,
    WRONG_SIZE,
    Grant,
    Ledger,
    Refusal,
    Repair,
)
from fracgpu.deviceplugin.metrics import PluginMetrics
from fracgpu.deviceplugin.podresources import Holdings, HoldingsSource, NoHoldings
from fracgpu.deviceplugin.quota import AllowAll, QuotaCheck
from fracgpu.deviceplugin.response import LimiterConfig, container_response
from fracgpu.kube.retry import Backoff

log = logging.getLogger(__name__)

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
EVENT_REFUSED = "FracgpuAllocateRefused"
EVENT_MOVED = "FracgpuReservationMoved"
# a pod bound (or finished) a moment ago may not be in the cache yet: look again before a final refusal
RETRY_AFTER_REFRESH = (NO_RESERVATION, BAD_RESERVATION, WRONG_SIZE, OVERBOOKED)
CROSSCHECK_TRIES = 6  # PodResources answers until it shows the recent Allocates (retry delays double)


class AllocateRefused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


@dataclass(frozen=True, slots=True)
class PluginConfig:
    node: str
    limiter: LimiterConfig | None = None
    cdi_kind: str = ""  # e.g. nvidia.com/gpu: name each GPU as a CDI device too; "" = none
    device_list: tuple[str, ...] = (DEVICE_LIST_ENVVAR,)  # core.shareenv.DEVICE_LIST_STRATEGIES
    crosscheck_delay: float = 1.0  # seconds after an Allocate before asking PodResources
    crosscheck_retry: float = 0.05  # first delay before asking again when it does not show them yet
    write_retries: int = 5
    retry_backoff: float = 0.2
    # the same refusal (pods and reason) is logged, and gets an Event and a phase write, once per this
    # many seconds: a kubelet retrying a container start calls Allocate again and again
    refusal_quiet: float = 300.0


class Plugin:
    def __init__(
        self,
        cfg: PluginConfig,
        state: DeviceState,
        api: ApiServer,
        holdings: HoldingsSource,
        quota: QuotaCheck | None = None,
        metrics: PluginMetrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.api = api
        self.holdings = holdings
        self.quota = quota or AllowAll()
        self.metrics = metrics or PluginMetrics()
        self.ledger = Ledger(cfg.node, state.gpus())
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._crosschecks = not isinstance(holdings, NoHoldings)
        self._unconfirmed: set[tuple[str, ...]] = set()  # IDs served, not seen in PodResources yet
        self._refusals: dict[tuple[tuple[str, ...], str], tuple[float, int]] = {}  # -> (last reported, since)
        self._jobs: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._crosscheck_pending = threading.Event()
        self._gpu_version = state.version
        self._published = ""

    # --- lifecycle ---

    def start(self) -> None:
        """Rebuild the ledger (pods + the kubelet's holdings), then start the background worker."""
        self.recover()
        self._worker = threading.Thread(target=self._work, name="fracgpu-writer", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(timeout=10)
            self._worker = None

    def flush(self) -> None:
        """Wait until every queued write and cross-check is done (tests, shutdown)."""
        self._jobs.join()

    def recover(self) -> None:
        with self._lock:
            self._sync()
            repairs = []
            try:
                holdings = self.holdings.holdings()
            except Exception as e:  # grpc.RpcError, OSError: the kubelet is not answering yet
                log.warning("podresources unavailable at start error=%s", e)
            else:
                try:
                    repairs = self.ledger.reconcile(holdings)
                except Exception:  # a bug: say where, and start from the pods' own record
                    log.exception("reconciling with the kubelet's podresources failed at start")
        self._apply_repairs(repairs)
        self._refresh_metrics()

    # --- device list ---

    def devices(self) -> list[api_pb2.Device]:
        out: list[api_pb2.Device] = []
        for g in self.state.gpus():
            topology = api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=g.numa)]) if g.numa >= 0 else None
            health = HEALTHY if g.healthy else UNHEALTHY
            out.extend(api_pb2.Device(ID=i, health=health, topology=topology) for i in device_ids(g.uuid))
        return out

    # --- kubelet calls ---

    def preferred(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        start = time.perf_counter()
        with self._lock:
            self._sync()
            if not self.ledger.waiting(size):
                self._sync(refresh=True)
            answer = self.ledger.preferred(available, must_include, size)
        self.metrics.preferred_seconds.observe(time.perf_counter() - start)
        return answer

    def allocate(self, ids: list[str]) -> api_pb2.ContainerAllocateResponse:
        start = time.perf_counter()
        try:
            with self._lock:
                self._sync()
                outcome = self.ledger.allocate(ids, admit=self.quota.check)
                if isinstance(outcome, Refusal) and outcome.code in RETRY_AFTER_REFRESH:
                    self._sync(refresh=True)
                    outcome = self.ledger.allocate(ids, admit=self.quota.check)
            if isinstance(outcome, Refusal) and outcome.code == UNCONFIRMED:
                # a running container allocated again: ask the kubelet (outside the lock: a network call)
                kubelet = self._kubelet_holdings()
                with self._lock:
                    self._sync()
                    outcome = self.ledger.allocate(ids, admit=self.quota.check, kubelet=kubelet)
            if isinstance(outcome, Grant) and self._crosschecks:
                with self._lock:
                    self._unconfirmed.add(outcome.device_ids)
            if isinstance(outcome, Refusal):
                self._refused(outcome)
                raise AllocateRefused(outcome)
            response = container_response(outcome, self.cfg.limiter, self.cfg.cdi_kind, self.cfg.device_list)
            self._granted(outcome)
            return response
        finally:
            self.metrics.allocate_seconds.observe(time.perf_counter() - start)

    def _kubelet_holdings(self) -> Holdings | None:
        try:
            return self.holdings.holdings()
        except Exception as e:
            log.warning("podresources list failed error=%s", e)
            return None

    def _sync(self, refresh: bool = False) -> None:
        if refresh:
            try:
                self.api.refresh()
            except Exception as e:
                log.warning("pod refresh failed error=%s", e)
        if self.state.version != self._gpu_version:
            self._gpu_version = self.state.version
            self.ledger.set_gpus(self.state.gpus())
        self.ledger.sync_pods(self.api.node_pods())

    # --- outcomes ---

    def _granted(self, grant: Grant) -> None:
        log.info("allocate pod=%s container=%s devices=%d gpus=%s moved=%d again=%s", grant.pod, grant.container,
                 len(grant.device_ids), ",".join(lim.gpu.uuid for lim in grant.limits), len(grant.moved),
                 str(grant.again).lower())
        for key, a in grant.moved:
            text = a.to_json()
            self.metrics.repairs.labels(kind="moved-at-allocate").inc()
            self._submit(partial(self._write_assigned, key, text))
            ns, name = key.split("/", 1)
            msg = f"the kubelet chose other devices; reservation now on GPU(s) {', '.join(g.uuid for g in a.gpus)}"
            self._submit(partial(self.api.pod_event, PodEvent(ns, name, "", EVENT_MOVED, msg, type="Normal")))
        if grant.pod_done:
            ns, name = grant.pod.split("/", 1)
            self._submit(partial(self._write, ns, name, {ANN_PHASE: PHASE_ALLOCATED}))
        self._schedule_crosscheck()
        self._submit(self._refresh_metrics)

    def _refused(self, refusal: Refusal) -> None:
        self.metrics.allocate_errors.labels(code=refusal.code).inc()
        cause = (refusal.pods, refusal.reason)
        now = self._clock()
        with self._lock:
            last = self._refusals.get(cause)
            if last is not None and now - last[0] < self.cfg.refusal_quiet:
                self._refusals[cause] = (last[0], last[1] + 1)
                log.debug("allocate refused again code=%s pods=%s", refusal.code, ",".join(refusal.pods))
                return
            repeats = last[1] if last is not None else 0
            if len(self._refusals) >= 1024:  # forget causes quiet for a while (pods come and go)
                self._refusals = {k: v for k, v in self._refusals.items() if now - v[0] < self.cfg.refusal_quiet}
            self._refusals[cause] = (now, 0)
        log.warning("allocate refused code=%s pods=%s repeats=%d reason=%s", refusal.code, ",".join(refusal.pods),
                    repeats, refusal.reason)
        for key in refusal.pods:
            ns, name = key.split("/", 1)
            entry = self.ledger.entries.get(key)
            uid = entry.pod.uid if entry is not None else ""
            event = PodEvent(ns, name, uid, EVENT_REFUSED, f"fracgpu device plugin refused Allocate: {refusal.reason}")
            self._submit(partial(self.api.pod_event, event))
        if len(refusal.pods) == 1 and refusal.code != AMBIGUOUS:
            ns, name = refusal.pods[0].split("/", 1)
            phase = (PHASE_FAILED_PREFIX + refusal.reason)[:1024]
            self._submit(partial(self._write, ns, name, {ANN_PHASE: phase}))

    def _apply_repairs(self, repairs: list[Repair]) -> None:
        for r in repairs:
            self.metrics.repairs.labels(kind=r.kind).inc()
            log.warning("reservation repair pod=%s kind=%s detail=%s", r.pod, r.kind, r.detail)
            ns, name = r.pod.split("/", 1)
            if r.assignment is not None:
                self._submit(partial(self._write_assigned, r.pod, r.assignment.to_json()))
            if r.phase:
                self._submit(partial(self._write, ns, name, {ANN_PHASE: r.phase}))

    # --- background work ---

    def _submit(self, job: Callable[[], object]) -> None:
        if self._worker is None:
            job()  # not started (tests of the pieces): do it now
        else:
            self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                job()
            except Exception:
                log.exception("background job failed")
            finally:
                self._jobs.task_done()

    def _write(self, namespace: str, name: str, annotations: dict[str, str | None]) -> bool:
        # a merge patch without resourceVersion never conflicts (no retry_on_conflict): this retries the
        # transport / server errors, after a pause, and gives up on a deleted pod
        backoff = Backoff(self.cfg.retry_backoff)
        for attempt in range(self.cfg.write_retries):
            try:
                self.api.patch_pod_annotations(namespace, name, annotations)
                return True
            except LookupError:
                return False  # the pod is gone: nothing to record
            except Exception as e:
                self.metrics.write_errors.inc()
                log.warning("pod write failed pod=%s/%s attempt=%d error=%s", namespace, name, attempt + 1, e)
                self._sleep(backoff.delay(attempt))
        return False

    def _write_assigned(self, key: str, text: str) -> None:
        ns, name = key.split("/", 1)
        if self._write(ns, name, {ANN_ASSIGNED: text}):
            with self._lock:
                self.ledger.written(key, text)

    def _schedule_crosscheck(self) -> None:
        if not self._crosschecks or self._crosscheck_pending.is_set():
            return
        self._crosscheck_pending.set()

        def job() -> None:
            self._sleep(self.cfg.crosscheck_delay)
            self._crosscheck_pending.clear()
            self.crosscheck()

        self._submit(job)

    def crosscheck(self) -> None:
        """Compare the ledger with the kubelet's PodResources and repair what differs.

        Asks again (up to CROSSCHECK_TRIES times, the delay doubling) while the answer does not show
        every Allocate served since the last cross-check; then judges the last answer anyway (the
        kubelet may have refused the pod after our Allocate and never record it).
        """
        delay = self.cfg.crosscheck_retry
        for attempt in range(CROSSCHECK_TRIES):
            try:
                holdings = self.holdings.holdings()
            except Exception as e:
                log.warning("podresources list failed error=%s", e)
                return
            held = {i for containers in holdings.values() for ids in containers.values() for i in ids}
            with self._lock:
                self._unconfirmed = {ids for ids in self._unconfirmed if not set(ids) <= held}
                if not self._unconfirmed or attempt == CROSSCHECK_TRIES - 1:
                    if self._unconfirmed:
                        log.info("podresources does not show %d recent allocation(s); checking what it shows",
                                 len(self._unconfirmed))
                        self._unconfirmed.clear()
                    self._sync()
                    repairs = self.ledger.reconcile(holdings)
                    break
            self._sleep(delay)
            delay *= 2
        self._apply_repairs(repairs)

    def _refresh_metrics(self) -> None:
        with self._lock:
            usage = self.ledger.allocated()
        self.metrics.gpus.set(self.state.gpus(), usage)

    # --- node reporting ---

    def publish_node(self) -> bool:
        """Write the inventory annotation and labels when they changed; True when written."""
        gpus = self.state.gpus()
        doc = NodeInventoryDoc(gpus=gpus, node_healthy=self.state.node_ok, node_reason=self.state.node_reason)
        text = doc.to_json()
        if text == self._published:
            return False
        models = Tally(g.model for g in gpus)
        labels = {LABEL_GPU_COUNT: str(len(gpus))}
        if models:
            labels[LABEL_GPU_MODEL] = models.most_common(1)[0][0]
        try:
            self.api.publish_node({ANN_INVENTORY: text}, labels)
        except Exception as e:
            self.metrics.write_errors.inc()
            log.warning("node publish failed error=%s", e)
            return False
        self._published = text
        self._refresh_metrics()
        return True


"""NodePrepareResources / NodeUnprepareResources, behind the gRPC layer.

A claim the kubelet asks to prepare is read from the API server (the kubelet passes only namespace, name and
uid, as it does to every DRA driver), planned by ``fracgpu.core.draprepare`` against this node's GPUs and the
claims already prepared here, its CDI spec written, and the checkpoint saved before the answer goes back. A
claim already in the checkpoint is answered from it without the API server (the kubelet repeats calls after
its own restarts), and its CDI spec is rewritten if it is gone (/var/run is a tmpfs: a reboot empties it).
Unpreparing removes the CDI spec and the record; an unknown claim is already unprepared. Calls are
serialised; the API reads happen before taking the lock, as upstream's kubeletplugin helper does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fracgpu.api.v1beta1.dra.checkpoint import Checkpoint, PreparedClaim
from fracgpu.api.v1beta1.dra.resource import ResourceClaim
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import DRA_CDI_KIND, DRA_DRIVER
from fracgpu.core.draprepare import Refusal, cdi_device_ids, cdi_spec, plan_claim
from fracgpu.core.shareenv import LimiterConfig
from fracgpu.draplugin.files import CdiFiles, CheckpointStore
from fracgpu.draplugin.metrics import OUTCOME_ERROR, OUTCOME_OK, OUTCOME_REFUSED
from fracgpu.kube import errors
from fracgpu.kube.resources import RESOURCECLAIMS
from fracgpu.kube.writer import KubeWriter

log = logging.getLogger(__name__)


class ClaimError(Exception):
    """A claim could not be read; the message says which and why."""


class ClaimSource(Protocol):
    def get(self, namespace: str, name: str) -> ResourceClaim: ...


class KubeClaims:
    """Claims from the API server (GET resourceclaims; the RBAC of manifests/dra grants it)."""

    def __init__(self, writer: KubeWriter) -> None:
        self.writer = writer

    def get(self, namespace: str, name: str) -> ResourceClaim:
        try:
            raw = self.writer.get_object(RESOURCECLAIMS, name, namespace)
        except errors.NotFound:
            raise ClaimError(f"claim {namespace}/{name} not found") from None
        except errors.KubeAPIError as e:
            raise ClaimError(f"claim {namespace}/{name}: reading it failed: {e}") from None
        try:
            return ResourceClaim.from_json(raw)
        except InvalidDocument as e:
            raise ClaimError(f"claim {namespace}/{name}: {e}") from None


@dataclass(frozen=True, slots=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PreparedDeviceIds:
    """One entry of the kubelet's answer: a device of the claim and the CDI devices it maps to."""

    request: str
    pool: str
    device: str
    cdi_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PrepareResult:
    devices: tuple[PreparedDeviceIds, ...] = ()
    error: str = ""
    refused: bool = False  # the error is the claim's (does not fit, not ours, replaced), not a failure here

    @property
    def outcome(self) -> str:
        return OUTCOME_OK if not self.error else OUTCOME_REFUSED if self.refused else OUTCOME_ERROR


@dataclass(frozen=True, slots=True)
class DriverConfig:
    node: str  # this node: the pool of its GPUs, and the pool a claim's devices must come from
    driver: str = DRA_DRIVER  # allocation results of other drivers are not ours
    cdi_kind: str = DRA_CDI_KIND  # vendor/class of the CDI devices in the kubelet's answer
    limiter: LimiterConfig | None = None  # an in-container limiter to configure and mount, as for Allocate


class Driver:
    def __init__(self, cfg: DriverConfig, gpus: Callable[[], Sequence[GpuInfo]], claims: ClaimSource,
                 store: CheckpointStore, cdi: CdiFiles, on_change: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.on_change = on_change  # called after the set of prepared claims changed (the metrics' gauges)
        self._gpus = gpus
        self._claims = claims
        self._store = store
        self._cdi = cdi
        self._lock = threading.Lock()
        self._checkpoint = Checkpoint(cfg.node)

    def load(self) -> None:
        with self._lock:
            self._checkpoint = self._store.load()
        log.info("checkpoint loaded prepared_claims=%d", len(self._checkpoint.claims))
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def prepared(self) -> dict[str, PreparedClaim]:
        with self._lock:
            return dict(self._checkpoint.claims)

    def _answer(self, claim: PreparedClaim) -> PrepareResult:
        ids = cdi_device_ids(claim, self.cfg.cdi_kind)
        out, named = [], set()
        for x in claim.devices:
            # one CDI device per request; naming it on every device of the request would inject it twice
            first = x.request not in named
            named.add(x.request)
            out.append(PreparedDeviceIds(x.request, x.pool, x.device, (ids[x.request],) if first else ()))
        return PrepareResult(devices=tuple(out))

    def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        with self._lock:
            known = {uid for uid in self._checkpoint.claims}
        fetched: dict[str, ResourceClaim | PrepareResult] = {}
        for ref in refs:
            if ref.uid in known or ref.uid in fetched:
                continue
            try:
                claim = self._claims.get(ref.namespace, ref.name)
            except ClaimError as e:
                fetched[ref.uid] = PrepareResult(error=str(e))
                continue
            if claim.uid != ref.uid:
                fetched[ref.uid] = PrepareResult(
                    error=f"claim {ref.key} was replaced: the kubelet asked for uid {ref.uid}, the API server has "
                          f"{claim.uid or 'none'}", refused=True)
            else:
                fetched[ref.uid] = claim
        with self._lock:
            results, changed = self._prepare_locked(refs, fetched)
        if changed:
            self._changed()
        return results

    def _prepare_locked(self, refs: Sequence[ClaimRef], fetched: dict[str, ResourceClaim | PrepareResult],
                        ) -> tuple[dict[str, PrepareResult], bool]:
        claims = dict(self._checkpoint.claims)
        results: dict[str, PrepareResult] = {}
        new: list[PreparedClaim] = []
        gpus = self._gpus()
        for ref in refs:
            if ref.uid in results:
                continue
            done = claims.get(ref.uid)
            if done is not None:
                if self._cdi.read(ref.uid) is None:
                    try:
                        self._cdi.write(ref.uid, cdi_spec(done, kind=self.cfg.cdi_kind, limiter=self.cfg.limiter))
                    except OSError as e:
                        results[ref.uid] = PrepareResult(error=f"claim {ref.key}: writing its CDI spec failed: {e}")
                        continue
                    log.info("cdi spec rewritten claim=%s uid=%s", ref.key, ref.uid)
                results[ref.uid] = self._answer(done)
                continue
            got = fetched.get(ref.uid)
            if not isinstance(got, ResourceClaim):
                results[ref.uid] = got or PrepareResult(error=f"claim {ref.key}: not read")
                continue
            try:
                plan = plan_claim(got, node=self.cfg.node, gpus=gpus, prepared=claims, driver=self.cfg.driver)
            except Refusal as e:
                log.info("claim refused claim=%s uid=%s reason=%s", ref.key, ref.uid, e)
                results[ref.uid] = PrepareResult(error=str(e), refused=True)
                continue
            try:
                self._cdi.write(ref.uid, cdi_spec(plan, kind=self.cfg.cdi_kind, limiter=self.cfg.limiter))
            except OSError as e:
                results[ref.uid] = PrepareResult(error=f"claim {ref.key}: writing its CDI spec failed: {e}")
                continue
            claims[ref.uid] = plan
            new.append(plan)
            results[ref.uid] = self._answer(plan)
        if new:
            try:
                self._store.save(Checkpoint(self.cfg.node, claims))
            except OSError as e:
                # not recorded: the answer must not claim success, and the specs must not outlive the failure
                for plan in new:
                    self._cdi.remove(plan.uid)
                    results[plan.uid] = PrepareResult(error=f"claim {plan.key}: saving the checkpoint failed: {e}")
                log.error("checkpoint save failed error=%s", e)
                return results, False
            self._checkpoint = Checkpoint(self.cfg.node, claims)
            for plan in new:
                log.info("claim prepared claim=%s uid=%s devices=%s", plan.key, plan.uid,
                         ",".join(f"{x.device}:{x.cores}c/{x.memory}B" for x in plan.devices))
        return results, bool(new)

    def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, str]:
        """uid -> "" when unprepared (or never prepared here), else the reason it failed."""
        with self._lock:
            results, changed = self._unprepare_locked(refs)
        if changed:
            self._changed()
        return results

    def _unprepare_locked(self, refs: Sequence[ClaimRef]) -> tuple[dict[str, str], bool]:
        claims = dict(self._checkpoint.claims)
        results: dict[str, str] = {}
        dropped = []
        for ref in refs:
            try:
                self._cdi.remove(ref.uid)
            except OSError as e:
                results[ref.uid] = f"claim {ref.key}: removing its CDI spec failed: {e}"
                continue
            results[ref.uid] = ""
            if claims.pop(ref.uid, None) is not None:
                dropped.append(ref)
        if dropped:
            try:
                self._store.save(Checkpoint(self.cfg.node, claims))
            except OSError as e:
                log.error("checkpoint save failed error=%s", e)
                return {uid: (f"saving the checkpoint failed: {e}" if any(r.uid == uid for r in dropped) else err)
                        for uid, err in results.items()}, False
            self._checkpoint = Checkpoint(self.cfg.node, claims)
            for ref in dropped:
                log.info("claim unprepared claim=%s uid=%s", ref.key, ref.uid)
        return results, bool(dropped)

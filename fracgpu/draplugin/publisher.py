"""Keep this node's ResourceSlices equal to its GPUs.

``sync`` lists the driver's slices of this node (field selector ``spec.nodeName`` and ``spec.driver``, as the
kubelet does when it wipes them), and writes what differs: a changed pool gets the next generation on every
slice (consumers use only the highest generation of a pool), an unchanged one is left alone, slices that do
not belong to the current layout are deleted. It is called on every inventory or health change, when the
kubelet (re)registers the plugin, and every resync interval: the kubelet deletes a driver's slices when it
starts and when the driver's plugin stays disconnected, and someone may edit or delete them.

The API server drops fields whose feature gate is off (device taints before 1.36, consumable capacity before
1.36 unless enabled). ``sync`` compares what it wrote with what was stored: dropped taints switch unhealthy
GPUs from tainted to left out of the pool; dropped consumable capacity is logged (GPUs can then be
allocated only whole) and not rewritten forever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from fracgpu.api.v1beta1.dra.resource import Device, OwnerReference, Pool, ResourceSlice, ResourceSliceSpec
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.core.draslicerules import validate_slice
from fracgpu.core.draslices import SliceOptions, build_slices, dropped_fields, same_devices
from fracgpu.kube import errors
from fracgpu.kube.objects import name as object_name
from fracgpu.kube.objects import uid as object_uid
from fracgpu.kube.resources import NODES, RESOURCESLICES
from fracgpu.kube.writer import KubeWriter

log = logging.getLogger(__name__)

Devices = Callable[[SliceOptions], tuple[Device, ...]]


class PublishError(RuntimeError):
    """The slices could not be written; the message says why."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    generation: int
    written: int  # slices created or updated
    deleted: int


class SlicePublisher:
    def __init__(self, writer: KubeWriter, node: str, devices: Devices, opts: SliceOptions | None = None) -> None:
        self.writer = writer
        self.node = node
        self.devices = devices
        self.opts = opts or SliceOptions()
        self.generation = 0
        self.dropped: tuple[str, ...] = ()  # fields the API server dropped from our last write
        self._owner: OwnerReference | None = None
        self._last: tuple[tuple[Device, ...], tuple[Device, ...]] | None = None  # (written, stored)
        self._lock = threading.Lock()

    def _node_owner(self) -> OwnerReference | None:
        """The Node as owner, so that the slices go when the node object goes (as upstream's controller does)."""
        if self._owner is None:
            try:
                node = self.writer.get_object(NODES, self.node)
            except errors.KubeAPIError as e:
                log.debug("node not readable; slices without owner node=%s error=%s", self.node, e)
                return None
            uid = object_uid(node)
            if uid:
                self._owner = OwnerReference("v1", "Node", self.node, uid)
        return self._owner

    def _live(self) -> list[ResourceSlice]:
        try:
            raw = self.writer.list_objects(
                RESOURCESLICES, field_selector=f"spec.nodeName={self.node},spec.driver={self.opts.driver}")
        except errors.NotFound:
            raise PublishError(f"the API server does not serve {RESOURCESLICES.api_version} resourceslices: the DRA "
                               "path needs Kubernetes 1.34+ (1.36+ for shares)") from None
        out = []
        for obj in raw:
            try:
                out.append(ResourceSlice.from_json(obj))
            except InvalidDocument as e:
                # kept as a slice of no pool: it is replaced or deleted below
                out.append(ResourceSlice(name=object_name(obj),
                                         spec=ResourceSliceSpec(self.opts.driver, Pool("", 0), self.node)))
                log.warning("unreadable ResourceSlice of this node will be replaced error=%s", e)
        return out

    def sync(self) -> SyncResult:
        with self._lock:
            return self._sync()

    def _sync(self) -> SyncResult:
        desired = self.devices(self.opts)
        live = self._live()
        ours = [s for s in live if s.spec.pool.name == self.node]
        live_gen = max((s.spec.pool.generation for s in ours), default=0)
        current = [s for s in ours if s.spec.pool.generation == live_gen]
        live_devices = tuple(d for s in current for d in s.spec.devices)
        complete = bool(current) and all(s.spec.pool.resource_slice_count == len(current) for s in current)
        layout = build_slices(self.node, desired, live_gen, opts=self.opts)
        if self._last is not None and same_devices(self._last[0], desired):
            # we wrote this before: compare with what the server kept of it (it drops gated fields)
            unchanged = complete and same_devices(self._last[1], live_devices)
        else:  # a fresh start, or the GPUs changed: slice by slice against what should be
            by_name = {s.name: s for s in current}
            unchanged = complete and len(current) == len(layout) and all(
                s.name in by_name and same_devices(by_name[s.name].spec.devices, s.spec.devices) for s in layout)
        stale = [s for s in live if s.name not in {x.name for x in layout}]
        if unchanged and not stale and len(current) == len(live):
            self.generation = live_gen
            return SyncResult(live_gen, 0, 0)
        generation = max(live_gen, self.generation) + 1
        slices = build_slices(self.node, desired, generation, owner=self._node_owner(), opts=self.opts)
        problems = [f"{s.name}: {p}" for s in slices for p in validate_slice(s)]
        if problems:
            raise PublishError("refusing to publish invalid ResourceSlices: " + "; ".join(problems[:5]))
        by_name = {s.name: s for s in live}
        stored: list[Device] = []
        written = 0
        for s in slices:
            stored.extend(self._write(s, by_name.get(s.name)).spec.devices)
            written += 1
        deleted = 0
        for s in live:
            if s.name not in {x.name for x in slices}:
                try:
                    self.writer.delete_object(RESOURCESLICES, s.name)
                    deleted += 1
                except errors.NotFound:
                    pass
        self.generation = generation
        self._last = (tuple(desired), tuple(stored))
        log.info("resource slices published node=%s generation=%d devices=%d slices=%d deleted=%d", self.node,
                 generation, len(desired), written, deleted)
        self._notice_dropped(desired, stored)
        return SyncResult(generation, written, deleted)

    def _write(self, s: ResourceSlice, old: ResourceSlice | None) -> ResourceSlice:
        try:
            if old is None:
                try:
                    answer = self.writer.create_object(RESOURCESLICES, s.to_json())
                except errors.AlreadyExists:
                    current = ResourceSlice.from_json(self.writer.get_object(RESOURCESLICES, s.name))
                    answer = self.writer.replace_object(
                        RESOURCESLICES, replace(s, resource_version=current.resource_version).to_json())
            else:
                answer = self.writer.replace_object(RESOURCESLICES,
                                                    replace(s, resource_version=old.resource_version).to_json())
            return ResourceSlice.from_json(answer)
        except errors.KubeAPIError as e:
            raise PublishError(f"writing ResourceSlice {s.name} failed: {e}") from None
        except InvalidDocument as e:
            raise PublishError(f"the API server answered ResourceSlice {s.name} with {e}") from None

    def _notice_dropped(self, sent: Sequence[Device], stored: Sequence[Device]) -> None:
        dropped = tuple(dropped_fields(sent, stored))
        if dropped == self.dropped:
            return
        self.dropped = dropped
        if "taints" in dropped and self.opts.unhealthy == "taint":
            log.warning("the API server dropped device taints (feature gate DRADeviceTaints off): unhealthy GPUs now "
                        "leave the pool instead of being tainted")
            self.opts = replace(self.opts, unhealthy="omit")
            self._last = None
            self._sync()
        if "allowMultipleAllocations" in dropped or "requestPolicy" in dropped:
            log.error("the API server dropped consumable capacity (feature gate DRAConsumableCapacity off, beta and on "
                      "by default since Kubernetes 1.36): GPUs can only be allocated whole")


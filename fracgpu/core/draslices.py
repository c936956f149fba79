"""The ResourceSlices that publish one node's GPUs to DRA (driver gpu.fracgpu.io). Pure: inventory in, objects out.

One device per GPU, in a pool named after the node. Each device:

- attributes: ``uuid``, ``model``, ``index``, ``healthy``, ``allocator`` (the driver's domain), ``nvlinkDomain``
  (GPUs joined by NVLink on this node share the value; absent without NVLink), and the standard
  ``resource.kubernetes.io/pciBusID`` / ``pcieRoot`` / ``numaNode`` where known (so claims can align a GPU with a
  NIC or CPUs of another driver through ``matchAttribute``); ``allocator`` says who allocates the device to claims
  (fracgpu or kube-scheduler): fracgpu's DeviceClasses select only kube-scheduler's, so the two never both do;
- capacity ``cores`` (100) and ``memory`` (bytes), ``allowMultipleAllocations: true`` and a request policy that
  mirrors vgpu-core / vgpu-memory: cores in steps of 1 from 1 to 100, default 100; memory any amount from 1 MiB,
  default the whole GPU (the proportional default of vgpu-memory cannot be expressed: docs/dra.md);
- a failed GPU is tainted ``gpu.fracgpu.io/unhealthy:NoSchedule`` (device taints: beta and on by default since
  1.36) or, with ``unhealthy="omit"``, left out of the pool.

``core.draslicerules.validate_slice`` checks the rules of kube-apiserver's ResourceSlice validation these objects
can break, so a bad inventory is refused here with a reason instead of by the API server.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

from fracgpu.api.v1beta1.dra.resource import (
    TAINT_NO_EXECUTE,
    TAINT_NO_SCHEDULE,
    Attribute,
    Capacity,
    CapacityRange,
    Device,
    DeviceTaint,
    OwnerReference,
    Pool,
    RequestPolicy,
    ResourceSlice,
    ResourceSliceSpec,
)
from fracgpu.api.v1beta1.inventory import GpuInfo, GpuLink, LinkClass
from fracgpu.api.v1beta1.names import (
    CORES_PER_GPU,
    DRA_ALLOCATOR_FRACGPU,
    DRA_ALLOCATORS,
    DRA_ATTR_ALLOCATOR,
    DRA_CAPACITY_CORES,
    DRA_CAPACITY_MEMORY,
    DRA_DRIVER,
    DRA_TAINT_UNHEALTHY,
    MAX_GPU_MEMORY,
)
from fracgpu.core.draslicerules import MAX_ATTRIBUTE_VALUE, MAX_DEVICES_ADVANCED, dns_label, quantity_or_none
from fracgpu.core.quantity import format_bytes
from fracgpu.core.shareenv import MIB

STANDARD_PREFIX: Final = "resource.kubernetes.io/"
ATTR_PCI_BUS_ID: Final = STANDARD_PREFIX + "pciBusID"
ATTR_PCIE_ROOT: Final = STANDARD_PREFIX + "pcieRoot"
ATTR_NUMA_NODE: Final = STANDARD_PREFIX + "numaNode"

Unhealthy = Literal["taint", "omit"]

_BDF = re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-9a-f])")


@dataclass(frozen=True, slots=True)
class SliceOptions:
    driver: str = DRA_DRIVER  # ResourceSlice.spec.driver
    unhealthy: Unhealthy = "taint"  # a failed GPU: tainted NoSchedule, or left out of the pool ("omit")
    allocator: str = DRA_ALLOCATOR_FRACGPU  # device attribute `allocator`: who allocates the devices (DRA_ALLOCATORS)
    # 64, not 128, so that a GPU becoming tainted never changes how the pool is cut into slices
    devices_per_slice: int = MAX_DEVICES_ADVANCED


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def device_names(gpus: Iterable[GpuInfo]) -> dict[str, str]:
    """uuid -> device name: the lowercased UUID when that is a DNS label (NVIDIA's are), else a sanitised
    prefix and a hash of the UUID. Stable across restarts and GPU re-enumeration, unlike the index."""
    names: dict[str, str] = {}
    for g in gpus:
        lower = g.uuid.lower()
        if dns_label(lower):
            names[g.uuid] = lower
        else:
            names[g.uuid] = _hashed_name(g.uuid)
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {uuid: (_hashed_name(uuid) if counts[name] > 1 else name) for uuid, name in names.items()}


def _hashed_name(uuid: str) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", uuid.lower()).strip("-")[:50].strip("-") or "gpu"
    return f"{stem}-{_short_hash(uuid)}"


def nvlink_domains(gpus: Sequence[GpuInfo]) -> dict[str, int]:
    """uuid -> NVLink domain: connected components of the NVLink graph, numbered by their lowest GPU index.
    GPUs without an NVLink peer get none (a shared sentinel would make unrelated GPUs "match")."""
    by_uuid = {g.uuid: g for g in gpus}
    peers: dict[str, set[str]] = {g.uuid: set() for g in gpus}
    for g in gpus:
        for lk in g.links:
            if lk.link is LinkClass.NVLINK and lk.peer in by_uuid and lk.peer != g.uuid:
                peers[g.uuid].add(lk.peer)
                peers[lk.peer].add(g.uuid)
    components: list[set[str]] = []
    seen: set[str] = set()
    for g in sorted(gpus, key=lambda x: x.index):
        if g.uuid in seen or not peers[g.uuid]:
            continue
        stack, component = [g.uuid], set()
        while stack:
            u = stack.pop()
            if u in component:
                continue
            component.add(u)
            stack.extend(peers[u] - component)
        seen |= component
        components.append(component)
    return {u: i for i, component in enumerate(components) for u in component}


def normalise_bdf(pci_bus_id: str) -> str:
    """NVML's ``00000000:07:00.0`` (8-digit domain, upper case) as the kernel's ``0000:07:00.0``; "" if not a BDF."""
    bus = pci_bus_id.strip().lower()
    head, _, rest = bus.partition(":")
    if len(head) == 8 and head.startswith("0000"):
        bus = f"{head[4:]}:{rest}"
    return bus if _BDF.fullmatch(bus) else ""


def taint_value(reason: str) -> str:
    """The failure reason as a taint value (a label value: 63 characters of [A-Za-z0-9._-])."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", reason)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def cores_capacity() -> Capacity:
    one = "1"
    whole = str(CORES_PER_GPU)
    return Capacity(whole, RequestPolicy(default=whole, valid_range=CapacityRange(min=one, max=whole, step=one)))


def memory_capacity(memory: int) -> Capacity:
    value = format_bytes(memory)
    return Capacity(value, RequestPolicy(default=value,
                                         valid_range=CapacityRange(min=format_bytes(min(MIB, memory)),
                                                                   max=value)))


def gpu_device(gpu: GpuInfo, name: str, *, nvlink_domain: int | None = None, pcie_root: str = "",
               unhealthy: Unhealthy = "taint", allocator: str = DRA_ALLOCATOR_FRACGPU) -> Device | None:
    """The device of one GPU; None when it is unhealthy and unhealthy GPUs leave the pool."""
    if allocator not in DRA_ALLOCATORS:  # any other value would leave the device to no allocator at all
        raise ValueError(f"allocator {allocator!r}: one of {', '.join(DRA_ALLOCATORS)}")
    if not gpu.healthy and unhealthy == "omit":
        return None
    attributes = {
        "uuid": Attribute.of(gpu.uuid),
        "model": Attribute.of(gpu.model[:MAX_ATTRIBUTE_VALUE]),
        "index": Attribute.of(gpu.index),
        "healthy": Attribute.of(gpu.healthy),
        DRA_ATTR_ALLOCATOR: Attribute.of(allocator),
    }
    if nvlink_domain is not None:
        attributes["nvlinkDomain"] = Attribute.of(nvlink_domain)
    bdf = normalise_bdf(gpu.pci_bus_id)
    if bdf:
        attributes[ATTR_PCI_BUS_ID] = Attribute.of(bdf)
    if pcie_root:
        attributes[ATTR_PCIE_ROOT] = Attribute.of(pcie_root)
    if gpu.numa >= 0:  # -1 (no affinity) is not published: it would match every other NUMA-less device
        attributes[ATTR_NUMA_NODE] = Attribute.of(gpu.numa)
    taints: tuple[DeviceTaint, ...] = ()
    if not gpu.healthy:
        taints = (DeviceTaint(DRA_TAINT_UNHEALTHY, TAINT_NO_SCHEDULE, taint_value(gpu.reason or "unhealthy")),)
    return Device(
        name=name,
        attributes=attributes,
        capacity={DRA_CAPACITY_CORES: cores_capacity(), DRA_CAPACITY_MEMORY: memory_capacity(gpu.memory)},
        allow_multiple_allocations=True,
        taints=taints,
    )


def node_devices(gpus: Sequence[GpuInfo], *, pcie_roots: Mapping[str, str] | None = None,
                 unhealthy: Unhealthy = "taint", allocator: str = DRA_ALLOCATOR_FRACGPU) -> tuple[Device, ...]:
    """The node's devices, in GPU index order."""
    names = device_names(gpus)
    domains = nvlink_domains(gpus)
    roots = pcie_roots or {}
    out = []
    for g in sorted(gpus, key=lambda x: x.index):
        dev = gpu_device(g, names[g.uuid], nvlink_domain=domains.get(g.uuid), pcie_root=roots.get(g.uuid, ""),
                         unhealthy=unhealthy, allocator=allocator)
        if dev is not None:
            out.append(dev)
    return tuple(out)


def slice_names(node: str, count: int, driver: str = DRA_DRIVER) -> list[str]:
    """Deterministic object names (so a restarted driver finds and updates its own slices)."""
    base = f"{node}-{driver}"
    if len(base) > 240:  # leave room for "-<i>"; node names may be 253 characters long
        base = f"{node[:200].rstrip('.-')}-{_short_hash(base)}"
    return [base if count == 1 else f"{base}-{i}" for i in range(count)]


def build_slices(node: str, devices: Sequence[Device], generation: int, *, owner: OwnerReference | None = None,
                 opts: SliceOptions | None = None) -> list[ResourceSlice]:
    """The pool's slices; a pool without devices is still one (empty) slice, so consumers see it is empty."""
    opts = opts or SliceOptions()
    per = max(1, opts.devices_per_slice)
    chunks = [tuple(devices[i:i + per]) for i in range(0, len(devices), per)] or [()]
    names = slice_names(node, len(chunks), opts.driver)
    pool = Pool(name=node, generation=generation, resource_slice_count=len(chunks))
    return [ResourceSlice(name=n, owner=owner,
                          spec=ResourceSliceSpec(driver=opts.driver, pool=pool, node_name=node, devices=chunk))
            for n, chunk in zip(names, chunks, strict=True)]


# -- comparing what is published with what should be ------------------------------------------------------


def _device_key(dev: Device) -> tuple[object, ...]:
    """A device in canonical form: quantities by value ("80Gi" == "85899345920"), taints without the
    timeAdded the API server fills in."""
    capacity = []
    for name, cap in sorted(dev.capacity.items()):
        policy = cap.request_policy
        pkey: tuple[object, ...] | None = None
        if policy is not None:
            rng = policy.valid_range
            q = quantity_or_none
            pkey = (q(policy.default), None if rng is None else (q(rng.min), q(rng.max), q(rng.step)),
                    tuple(q(v) for v in policy.valid_values))
        capacity.append((name, quantity_or_none(cap.value), pkey))
    return (dev.name, tuple(sorted((k, v.kind, v.value) for k, v in dev.attributes.items())), tuple(capacity),
            bool(dev.allow_multiple_allocations), tuple(sorted((t.key, t.value, t.effect) for t in dev.taints)))


def same_devices(a: Sequence[Device], b: Sequence[Device]) -> bool:
    return sorted(map(_device_key, a), key=repr) == sorted(map(_device_key, b), key=repr)


def dropped_fields(sent: Sequence[Device], stored: Sequence[Device]) -> list[str]:
    """Fields the API server dropped from what was written: that happens when their feature gate is off
    (kube-apiserver's dropDisabledFields), e.g. device taints without DRADeviceTaints."""
    stored_by_name = {d.name: d for d in stored}
    dropped: set[str] = set()
    for dev in sent:
        got = stored_by_name.get(dev.name)
        if got is None:
            continue
        if dev.taints and not got.taints:
            dropped.add("taints")
        if dev.allow_multiple_allocations and not got.allow_multiple_allocations:
            dropped.add("allowMultipleAllocations")
        if any(c.request_policy is not None for c in dev.capacity.values()) and not any(
                c.request_policy is not None for c in got.capacity.values()):
            dropped.add("requestPolicy")
    return sorted(dropped)


# -- the reverse: a node's published devices back to its GPU inventory (snapshots: fracgpu simulate, inspect) --


class SliceReadError(ValueError):
    """The devices cannot be read back as fracgpu GPUs; the message names the device and the field."""


def _int_attr(dev: Device, name: str, default: int | None = None) -> int:
    a = dev.attributes.get(name)
    if a is None and default is not None:
        return default
    if a is None or a.kind != "int" or isinstance(a.value, bool) or not isinstance(a.value, int):
        raise SliceReadError(f"device {dev.name}: attribute {name} must be an int")
    return a.value


def _whole_capacity(dev: Device, name: str) -> int:
    cap = dev.capacity.get(name)
    value = quantity_or_none(cap.value) if cap is not None else None
    if value is None or value != value.to_integral_value() or value < 1:
        raise SliceReadError(f"device {dev.name}: capacity {name} must be a whole positive quantity")
    return int(value)


def gpu_from_device(dev: Device) -> GpuInfo:
    """One device of driver gpu.fracgpu.io as the GPU it publishes (``gpu_device`` read backwards): uuid,
    index, model, memory, NUMA node, PCI bus ID and health. A NoSchedule/NoExecute taint makes it unhealthy
    with the taint's value as the reason. NVLink peers come from ``nvlinkDomain`` (``gpus_from_devices``)."""
    uuid_attr = dev.attributes.get("uuid")
    if uuid_attr is None or uuid_attr.kind != "string" or not uuid_attr.value or "::" in str(uuid_attr.value):
        raise SliceReadError(f"device {dev.name}: attribute uuid must be a non-empty string without '::'")
    cores = _whole_capacity(dev, DRA_CAPACITY_CORES)
    if cores != CORES_PER_GPU:
        raise SliceReadError(f"device {dev.name}: capacity {DRA_CAPACITY_CORES} is {cores}, a fracgpu GPU has "
                             f"{CORES_PER_GPU}")
    memory = _whole_capacity(dev, DRA_CAPACITY_MEMORY)
    if memory > MAX_GPU_MEMORY:
        raise SliceReadError(f"device {dev.name}: capacity {DRA_CAPACITY_MEMORY} {memory} is more than a GPU has")
    model = dev.attributes.get("model")
    healthy_attr = dev.attributes.get("healthy")
    healthy = not (healthy_attr is not None and healthy_attr.value is False)
    reason = "" if healthy else "unhealthy"
    for t in dev.taints:
        if t.effect in (TAINT_NO_SCHEDULE, TAINT_NO_EXECUTE):
            healthy, reason = False, t.value or t.key
            break
    bus = dev.attributes.get(ATTR_PCI_BUS_ID)
    return GpuInfo(uuid=str(uuid_attr.value), index=_int_attr(dev, "index"),
                   model=str(model.value) if model is not None and model.kind == "string" else "",
                   memory=memory, numa=_int_attr(dev, ATTR_NUMA_NODE, -1),
                   pci_bus_id=str(bus.value) if bus is not None and bus.kind == "string" else "",
                   healthy=healthy, reason=reason)


def gpus_from_devices(devices: Sequence[Device]) -> tuple[GpuInfo, ...]:
    """A node's devices as its GPU inventory, in index order. GPUs of one ``nvlinkDomain`` are NVLink peers of
    each other (one lane: the lane count and the PCIe link classes are not published)."""
    gpus = [gpu_from_device(dev) for dev in devices]
    for seen, what in (([g.uuid for g in gpus], "uuid"), ([str(g.index) for g in gpus], "index")):
        if len(set(seen)) != len(seen):
            raise SliceReadError(f"two devices publish the same GPU {what}")
    domain = {gpu.uuid: _int_attr(dev, "nvlinkDomain", -1) for gpu, dev in zip(gpus, devices, strict=True)}
    out = []
    for g in gpus:
        peers = tuple(GpuLink(p.uuid, LinkClass.NVLINK, 1) for p in sorted(gpus, key=lambda x: x.index)
                      if p.uuid != g.uuid and domain[g.uuid] >= 0 and domain[p.uuid] == domain[g.uuid])
        out.append(replace(g, links=peers))
    return tuple(sorted(out, key=lambda x: x.index))


def device_allocator(dev: Device) -> str:
    """Who allocates the device to claims (its ``allocator`` attribute, with or without the domain); "" if
    it does not say (a driver older than the attribute)."""
    a = dev.attributes.get(DRA_ATTR_ALLOCATOR) or dev.attributes.get(f"{DRA_DRIVER}/{DRA_ATTR_ALLOCATOR}")
    return str(a.value) if a is not None and a.kind == "string" else ""

"""A pod's DRA claims read as fracgpu's: what they ask (whole GPUs, or one share of cores and memory) and,
once allocated, the shares they hold on their node. What has no vgpu equivalent is not guessed: a ValueError or
``PodDra.problem`` names it. Shared by ``core.dralower`` (simulate, inspect, the extender's DRA cache) and
``core.draallocation``. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fracgpu.api.v1beta1.assignment import GpuShare
from fracgpu.api.v1beta1.dra.resource import AllocatedDevice, ResourceClaim
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.api.v1beta1.names import (
    CORES_PER_GPU,
    DEVICE_ID_SEPARATOR,
    DRA_CAPACITY_CORES,
    DRA_CAPACITY_MEMORY,
    DRA_DEVICE_CLASS,
    DRA_DEVICE_CLASS_SHARED,
    DRA_DRIVER,
    MAX_GPU_MEMORY,
)
from fracgpu.core.quantity import QuantityError, parse_quantity

OUR_CLASSES = (DRA_DEVICE_CLASS, DRA_DEVICE_CLASS_SHARED)
MAX_WHOLE_GPUS = 64  # a claim for more whole GPUs than any node has is not a request to model


@dataclass(frozen=True, slots=True)
class Demand:
    """What a pod's claims ask of fracgpu: whole GPUs, or one share (cores, memory bytes)."""

    whole: int = 0
    shares: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class PodDra:
    """How one pod's claims read: its demand, its reservation on its node, or why it cannot be read."""

    demand: Demand | None = None
    gpus: tuple[GpuShare, ...] = ()
    problem: str = ""  # why the request cannot be read (a pending pod is refused with it)
    held_problem: str = ""  # why a bound pod's reservation cannot be read (its node takes no new GPU pod)
    claims: tuple[str, ...] = ()  # the pod's claims that ask fracgpu and exist (namespace/name), in pod order
    unallocated: tuple[str, ...] = ()  # of those, the ones not allocated yet
    generating: tuple[str, ...] = ()  # templates whose claim is not generated yet
    node: str = ""  # where its claims are allocated, before the pod is bound (fracgpu allocates ahead)

    @property
    def partial(self) -> bool:
        """Some of its claims allocated and some not, the pod not bound: half of an allocation."""
        return bool(self.node and (self.unallocated or self.generating))



def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def _capacity(requests: Mapping[str, Any], name: str) -> Any:
    for k in (name, f"{DRA_DRIVER}/{name}"):
        if k in requests:
            return requests[k]
    return None


def _whole(text: Any, what: str) -> int:
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ValueError(f"{what} is not a quantity")
    try:
        value = parse_quantity(text)
    except QuantityError:
        raise ValueError(f"{what} {text!r} is not a quantity") from None
    # the request policy rounds up to the next step (1)
    return int(value.to_integral_value(rounding="ROUND_CEILING")) if value > 0 else 0


def request_demand(req: Any, where: str) -> Demand:
    """One entry of ``spec.devices.requests`` as fracgpu GPUs; ValueError says what cannot be mapped."""
    if not isinstance(req, Mapping):
        raise ValueError(f"{where} is not an object")
    if req.get("firstAvailable") is not None:
        raise ValueError(f"{where} uses firstAvailable (prioritized alternatives)")
    ex = req.get("exactly")
    if not isinstance(ex, Mapping):
        raise ValueError(f"{where} has no 'exactly'")
    cls = ex.get("deviceClassName")
    if cls not in OUR_CLASSES:
        raise ValueError(f"{where} asks for device class {cls!r}, not {' or '.join(OUR_CLASSES)}")
    for unsupported, why in (("selectors", "CEL selectors"), ("tolerations", "device taint tolerations"),
                             ("adminAccess", "adminAccess")):
        if ex.get(unsupported):
            raise ValueError(f"{where} has {why}, which fracgpu simulate does not evaluate")
    mode = ex.get("allocationMode") or "ExactCount"
    if mode != "ExactCount":
        raise ValueError(f"{where} has allocationMode {mode}")
    count = ex.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WHOLE_GPUS:
        raise ValueError(f"{where}.count must be 1..{MAX_WHOLE_GPUS}")
    cap = ex.get("capacity")
    requests = cap.get("requests") if isinstance(cap, Mapping) else None
    if cap is not None and not isinstance(requests, Mapping):
        raise ValueError(f"{where}.capacity.requests is not a map")
    if not requests:
        return Demand(whole=count)
    unknown = sorted(k for k in requests if k.rpartition("/")[2] not in (DRA_CAPACITY_CORES, DRA_CAPACITY_MEMORY))
    if unknown:
        raise ValueError(f"{where} requests capacity {', '.join(unknown)}")
    raw_cores, raw_memory = _capacity(requests, DRA_CAPACITY_CORES), _capacity(requests, DRA_CAPACITY_MEMORY)
    cores = CORES_PER_GPU if raw_cores is None else _whole(raw_cores, f"{where} cores")
    if raw_memory is None:
        raise ValueError(f"{where} asks for {cores} cores without memory, which takes the GPU's whole memory "
                         "(the request policy's default); state memory")
    memory = _whole(raw_memory, f"{where} memory")
    if not 1 <= cores <= CORES_PER_GPU or not 1 <= memory <= MAX_GPU_MEMORY:
        raise ValueError(f"{where} asks for {cores} cores and {memory} bytes of one GPU")
    if count != 1:
        raise ValueError(f"{where} asks for {count} shares")
    return Demand(shares=((cores, memory),))


def devices_demand(devices: Any, where: str) -> Demand:
    """A claim's ``spec.devices``: the sum of its requests; constraints and config are not modelled."""
    if not isinstance(devices, Mapping):
        raise ValueError(f"{where} has no spec.devices")
    for unsupported in ("constraints", "config"):
        if devices.get(unsupported):
            raise ValueError(f"{where} has {unsupported}, which fracgpu simulate does not evaluate")
    reqs = devices.get("requests")
    if not isinstance(reqs, list) or not reqs:
        raise ValueError(f"{where} has no requests")
    whole, shares = 0, list[tuple[int, int]]()
    for i, r in enumerate(reqs):
        name = r.get("name") if isinstance(r, Mapping) else None
        dm = request_demand(r, f"{where} request {name or i}")
        whole += dm.whole
        shares.extend(dm.shares)
    return Demand(whole, tuple(shares))


def allocated_gpus(claim: ResourceClaim, node: str, gpus: Mapping[str, GpuInfo], where: str) -> list[GpuShare]:
    """The claim's allocation results on ``node``'s pool as shares; ValueError when they cannot be read."""
    out: list[GpuShare] = []
    for r in claim.results:
        if r.admin_access:
            continue  # admin access sees the device without holding any of it
        if r.driver != DRA_DRIVER:
            raise ValueError(f"{where} holds a device of driver {r.driver}")
        if r.pool != node:
            raise ValueError(f"{where} holds device {r.device} of pool {r.pool}, not of the pod's node {node}")
        g = gpus.get(r.device)
        if g is None:
            raise ValueError(f"{where} holds device {r.device}, which node {node}'s ResourceSlices do not publish")
        out.append(GpuShare(g.uuid, *_consumed(r, g, where), device_ids=()))
    return out


def _consumed(r: AllocatedDevice, g: GpuInfo, where: str) -> tuple[int, int]:
    cores_text, memory_text = _capacity(r.consumed_capacity, DRA_CAPACITY_CORES), _capacity(
        r.consumed_capacity, DRA_CAPACITY_MEMORY)
    cores = CORES_PER_GPU if cores_text is None else _whole(cores_text, f"{where} consumed cores")
    memory = g.memory if memory_text is None else _whole(memory_text, f"{where} consumed memory")
    if not 1 <= cores <= CORES_PER_GPU or not 0 <= memory <= g.memory:
        raise ValueError(f"{where} consumes {cores} cores and {memory} bytes of GPU {g.uuid}")
    return cores, memory


def pod_dra(pod: Mapping[str, Any], claims: Mapping[str, Mapping[str, Any]],
            templates: Mapping[str, Mapping[str, Any]], devices: Mapping[str, Mapping[str, GpuInfo]]) -> PodDra | None:
    """The pod's GPU claims read as fracgpu's; None when the pod has no claim of fracgpu's."""
    spec = pod.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    refs = spec.get("resourceClaims")
    if not refs:
        return None
    ns = str(_meta(pod).get("namespace") or "default")
    node = str(spec.get("nodeName") or "")
    status = pod.get("status")
    generated: dict[str, str] = {}
    if isinstance(status, Mapping) and isinstance(status.get("resourceClaimStatuses"), list):
        for st in status["resourceClaimStatuses"]:
            if isinstance(st, Mapping) and isinstance(st.get("name"), str) and isinstance(st.get("resourceClaimName"),
                                                                                            str):
                generated[st["name"]] = st["resourceClaimName"]
    if not isinstance(refs, list):
        return PodDra(problem="spec.resourceClaims is not a list", held_problem="spec.resourceClaims is not a list"
                      if node else "")
    problems: list[str] = []
    held_problems: list[str] = []
    ref_problems: list[str] = []  # claims that cannot be found: a bound pod holds unknown devices
    ours = False
    whole, shares = 0, list[tuple[int, int]]()
    held: dict[str, list[GpuShare]] = {}
    keys: list[str] = []
    unallocated: list[str] = []
    generating: list[str] = []
    allocated: list[tuple[str, ResourceClaim]] = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, Mapping):
            ref_problems.append(f"spec.resourceClaims[{i}] is not an object")
            ours = True  # what it asks for is unknown: reported, not ignored
            continue
        name = str(ref.get("name") or i)
        claim_obj: Mapping[str, Any] | None = None
        body: Any = None
        claim_key = ""
        if isinstance(ref.get("resourceClaimName"), str):
            claim_key = f"{ns}/{ref['resourceClaimName']}"
            what = f"claim {claim_key}"
            claim_obj = claims.get(claim_key)
        elif isinstance(ref.get("resourceClaimTemplateName"), str):
            made = generated.get(name)
            claim_key = f"{ns}/{made}" if made else ""
            claim_obj = claims.get(claim_key) if made else None
            what = f"claim {claim_key}"
            if claim_obj is None:  # not generated yet (a pending pod): the template says what it will ask
                what = f"template {ns}/{ref['resourceClaimTemplateName']}"
                tpl = templates.get(f"{ns}/{ref['resourceClaimTemplateName']}")
                outer = tpl.get("spec") if tpl is not None else None
                body = (outer.get("spec") if isinstance(outer, Mapping) else None) or ({} if tpl else None)
        else:
            ref_problems.append(f"spec.resourceClaims[{name}] names no claim or template")
            ours = True
            continue
        if claim_obj is not None:
            body = claim_obj.get("spec")
        if body is None:
            ref_problems.append(f"{what} is not in the snapshot")
            ours = True
            continue
        devs = body.get("devices") if isinstance(body, Mapping) else None
        reqs = devs.get("requests") if isinstance(devs, Mapping) else None
        this_ours = _maybe_ours(reqs)
        try:
            dm = devices_demand(devs, what)
            whole += dm.whole
            shares.extend(dm.shares)
        except ValueError as e:
            problems.append(str(e))
        if claim_obj is None:
            ours = ours or this_ours
            if this_ours:
                generating.append(what)
            continue
        try:
            claim = ResourceClaim.from_json(claim_obj)
        except InvalidDocument as e:
            ours = ours or this_ours
            (held_problems if node else problems).append(f"{what}: {e}")
            continue
        this_ours = this_ours or any(r.driver == DRA_DRIVER for r in claim.results)
        ours = ours or this_ours
        if this_ours:
            keys.append(claim_key)
        if claim.allocated:
            allocated.append((what, claim))
        elif node:
            held_problems.append(f"{what} is not allocated but its pod is bound to {node}")
        elif this_ours:
            unallocated.append(claim_key)
    # a pod not bound yet holds what its claims were allocated (fracgpu allocates ahead of the
    # scheduler): on the node of their pool
    pools = sorted({r.pool for _, c in allocated for r in c.results if r.driver == DRA_DRIVER and not r.admin_access})
    held_on = node or (pools[0] if len(pools) == 1 else "")
    if not node and len(pools) > 1:
        held_problems.append(f"the pod's claims are allocated on {len(pools)} nodes ({', '.join(pools)})")
    for what, claim in allocated:
        if not held_on:
            continue
        try:
            held[what] = allocated_gpus(claim, held_on, devices.get(held_on, {}), what)
        except ValueError as e:
            held_problems.append(str(e))
    if not ours:
        return None  # claims of other drivers only: not a GPU pod of fracgpu's
    problems[:0] = ref_problems
    if held_on:
        held_problems[:0] = ref_problems
    if shares and (whole or len(shares) > 1):
        problems.append(f"the pod asks for {len(shares)} GPU share(s) and {whole} whole GPU(s); fracgpu places "
                        "one share or whole GPUs per pod")
    gpus = _merge([s for items in held.values() for s in items], held_problems)
    held_problem = "; ".join(held_problems)
    out = PodDra(gpus=gpus, held_problem=held_problem, claims=tuple(keys), unallocated=tuple(unallocated),
                 generating=tuple(generating), node="" if node else held_on)
    if problems:
        return replace(out, problem="; ".join(problems))
    return replace(out, demand=Demand(whole, tuple(shares)))


def _maybe_ours(reqs: Any) -> bool:
    """Whether a claim's requests may be for fracgpu: one names a class of fracgpu's (directly or as an
    alternative), or one is malformed (what it asks for is unknown, so it is reported, not ignored)."""
    if not isinstance(reqs, list) or not reqs:
        return True
    for r in reqs:
        if not isinstance(r, Mapping):
            return True
        alternatives = r.get("firstAvailable")
        options = [r.get("exactly")] if alternatives is None else alternatives
        if not isinstance(options, list) or not all(isinstance(o, Mapping) for o in options):
            return True
        if any(o.get("deviceClassName") in OUR_CLASSES for o in options):
            return True
    return False


def _merge(shares: Sequence[GpuShare], problems: list[str]) -> tuple[GpuShare, ...]:
    """Several claims of one pod on one GPU hold the sum; device IDs are made up (one per core) as the
    reservation format needs them and nothing in a snapshot reads them."""
    by_uuid: dict[str, list[int]] = {}
    for s in shares:
        acc = by_uuid.setdefault(s.uuid, [0, 0])
        acc[0] += s.cores
        acc[1] += s.memory
    out = []
    for uuid, (cores, memory) in by_uuid.items():
        if cores > CORES_PER_GPU:
            problems.append(f"the pod's claims hold {cores} cores of GPU {uuid}")
            continue
        out.append(GpuShare(uuid, cores, memory,
                            tuple(f"{uuid}{DEVICE_ID_SEPARATOR}claim-{i}" for i in range(cores))))
    return tuple(out)


__all__ = ["MAX_WHOLE_GPUS", "OUR_CLASSES", "Demand", "PodDra", "allocated_gpus", "devices_demand", "pod_dra",
           "request_demand"]

"""resource.k8s.io/v1 objects: what the DRA driver writes (ResourceSlice) and reads (ResourceClaim, DeviceClass).

Field names and JSON shapes follow k8s.io/api/resource/v1/types.go; only the fields fracgpu uses are
modelled, and unknown fields of objects read from the API server are ignored (newer servers add fields).
Quantities stay strings, as on the wire; ``fracgpu.core.quantity`` parses them. ``from_json`` is strict
about the fields it reads: a bad one raises ``InvalidDocument`` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from fracgpu.api.v1beta1 import _decode as d
from fracgpu.api.v1beta1.errors import InvalidDocument

GROUP: Final = "resource.k8s.io"
VERSION: Final = "v1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

AttributeKind = Literal["string", "int", "bool", "version"]
_ATTRIBUTE_KINDS: Final[tuple[AttributeKind, ...]] = ("string", "int", "bool", "version")

TAINT_NO_SCHEDULE: Final = "NoSchedule"
TAINT_NO_EXECUTE: Final = "NoExecute"
TAINT_NONE: Final = "None"

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Attribute:
    """A device attribute: exactly one typed value (``{"string": "A100"}``, ``{"int": 0}``, ...)."""

    kind: AttributeKind
    value: str | int | bool

    @staticmethod
    def of(value: str | int | bool) -> Attribute:
        if isinstance(value, bool):
            return Attribute("bool", value)
        if isinstance(value, int):
            return Attribute("int", value)
        return Attribute("string", value)

    def to_json(self) -> Obj:
        return {self.kind: self.value}

    @staticmethod
    def from_json(raw: Any, where: str) -> Attribute:
        o = d.obj(raw, where)
        known = [k for k in _ATTRIBUTE_KINDS if k in o]
        if len(known) != 1:
            raise InvalidDocument(f"{where}: exactly one of string, int, bool, version must be set")
        kind = known[0]
        value = o[kind]
        ok = {"string": isinstance(value, str), "version": isinstance(value, str), "bool": isinstance(value, bool),
              "int": isinstance(value, int) and not isinstance(value, bool)}[kind]
        if not ok:
            raise InvalidDocument(f"{where}.{kind}: wrong type {type(value).__name__}")
        return Attribute(kind, value)


@dataclass(frozen=True, slots=True)
class CapacityRange:
    """requestPolicy.validRange: requests below ``min`` round up to it, off-step ones up to the next step."""

    min: str
    max: str | None = None
    step: str | None = None

    def to_json(self) -> Obj:
        out: Obj = {"min": self.min}
        if self.max is not None:
            out["max"] = self.max
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """DeviceCapacity.requestPolicy (KEP-5075): the amount a request consumes when it names none, and the
    amounts it may name (a range, or up to 10 values; not both)."""

    default: str | None = None
    valid_range: CapacityRange | None = None
    valid_values: tuple[str, ...] = ()

    def to_json(self) -> Obj:
        out: Obj = {}
        if self.default is not None:
            out["default"] = self.default
        if self.valid_range is not None:
            out["validRange"] = self.valid_range.to_json()
        if self.valid_values:
            out["validValues"] = list(self.valid_values)
        return out


@dataclass(frozen=True, slots=True)
class Capacity:
    value: str
    request_policy: RequestPolicy | None = None

    def to_json(self) -> Obj:
        out: Obj = {"value": self.value}
        if self.request_policy is not None:
            out["requestPolicy"] = self.request_policy.to_json()
        return out


@dataclass(frozen=True, slots=True)
class DeviceTaint:
    """A driver-defined device taint (KEP-5055); ``time_added`` is set by the API server."""

    key: str
    effect: str
    value: str = ""
    time_added: str = ""

    def to_json(self) -> Obj:
        out: Obj = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        if self.time_added:
            out["timeAdded"] = self.time_added
        return out


@dataclass(frozen=True, slots=True)
class Device:
    name: str  # a DNS label, unique in the pool
    attributes: Mapping[str, Attribute] = field(default_factory=dict)
    capacity: Mapping[str, Capacity] = field(default_factory=dict)
    allow_multiple_allocations: bool | None = None
    taints: tuple[DeviceTaint, ...] = ()

    def to_json(self) -> Obj:
        out: Obj = {"name": self.name}
        if self.attributes:
            out["attributes"] = {k: v.to_json() for k, v in sorted(self.attributes.items())}
        if self.capacity:
            out["capacity"] = {k: v.to_json() for k, v in sorted(self.capacity.items())}
        if self.allow_multiple_allocations is not None:
            out["allowMultipleAllocations"] = self.allow_multiple_allocations
        if self.taints:
            out["taints"] = [t.to_json() for t in self.taints]
        return out


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    generation: int
    resource_slice_count: int = 1

    def to_json(self) -> Obj:
        return {"name": self.name, "generation": self.generation, "resourceSliceCount": self.resource_slice_count}


@dataclass(frozen=True, slots=True)
class ResourceSliceSpec:
    driver: str
    pool: Pool
    node_name: str
    devices: tuple[Device, ...] = ()

    def to_json(self) -> Obj:
        return {"driver": self.driver, "pool": self.pool.to_json(), "nodeName": self.node_name,
                "devices": [dev.to_json() for dev in self.devices]}


@dataclass(frozen=True, slots=True)
class OwnerReference:
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool = True

    def to_json(self) -> Obj:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": self.controller}


@dataclass(frozen=True, slots=True)
class ResourceSlice:
    name: str
    spec: ResourceSliceSpec
    owner: OwnerReference | None = None
    resource_version: str = ""  # of the stored object, "" for one not written yet

    def to_json(self) -> Obj:
        meta: Obj = {"name": self.name}
        if self.owner is not None:
            meta["ownerReferences"] = [self.owner.to_json()]
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        return {"apiVersion": API_VERSION, "kind": "ResourceSlice", "metadata": meta, "spec": self.spec.to_json()}

    @staticmethod
    def from_json(raw: Any) -> ResourceSlice:
        top = d.obj(raw, "ResourceSlice")
        meta = d.obj(top.get("metadata", {}), "ResourceSlice.metadata")
        name = d.string(meta, "name", "ResourceSlice.metadata")
        where = f"ResourceSlice {name}.spec"
        spec = d.obj(top.get("spec"), where)
        pool = d.obj(spec.get("pool"), f"{where}.pool")
        devices = []
        for i, item in enumerate(d.lst(_get(spec, "devices", []), f"{where}.devices")):
            devices.append(_device_from_json(item, f"{where}.devices[{i}]"))
        owner = None
        for ref in d.lst(_get(meta, "ownerReferences", []), "ResourceSlice.metadata.ownerReferences"):
            w = "ResourceSlice.metadata.ownerReferences[0]"
            o = d.obj(ref, w)
            owner = OwnerReference(d.string(o, "apiVersion", w), d.string(o, "kind", w), d.string(o, "name", w),
                                   d.string(o, "uid", w, default=""), o.get("controller") is True)
            break
        return ResourceSlice(
            name=name,
            spec=ResourceSliceSpec(
                driver=d.string(spec, "driver", where),
                pool=Pool(d.string(pool, "name", f"{where}.pool"), d.integer(pool, "generation", f"{where}.pool"),
                          d.integer(pool, "resourceSliceCount", f"{where}.pool", minimum=1, default=1)),
                node_name=d.string(spec, "nodeName", where, default=""),
                devices=tuple(devices),
            ),
            owner=owner,
            resource_version=d.string(meta, "resourceVersion", "ResourceSlice.metadata", default=""),
        )


def _get(o: Mapping[str, Any], key: str, default: Any) -> Any:
    """``o[key]``, or ``default`` when absent or null (the API server omits empty fields; it never sends
    ``[]`` where an object belongs, so a wrong type is an error, not "empty")."""
    value = o.get(key)
    return default if value is None else value


def _quantity(raw: Any, where: str) -> str:
    # the API server sends quantities as strings; a bare number is accepted as its decimal form
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise InvalidDocument(f"{where}: expected a quantity, got {type(raw).__name__}")
    return str(raw)


def _device_from_json(raw: Any, where: str) -> Device:
    o = d.obj(raw, where)
    attributes = {str(k): Attribute.from_json(v, f"{where}.attributes[{k}]")
                  for k, v in d.obj(_get(o, "attributes", {}), f"{where}.attributes").items()}
    capacity: dict[str, Capacity] = {}
    for k, v in d.obj(_get(o, "capacity", {}), f"{where}.capacity").items():
        cw = f"{where}.capacity[{k}]"
        c = d.obj(v, cw)
        policy = None
        if c.get("requestPolicy") is not None:
            p = d.obj(c["requestPolicy"], f"{cw}.requestPolicy")
            rng = None
            if p.get("validRange") is not None:
                r = d.obj(p["validRange"], f"{cw}.requestPolicy.validRange")
                rng = CapacityRange(
                    _quantity(r.get("min"), f"{cw}.requestPolicy.validRange.min"),
                    _quantity(r["max"], f"{cw}.requestPolicy.validRange.max") if r.get("max") is not None else None,
                    _quantity(r["step"], f"{cw}.requestPolicy.validRange.step") if r.get("step") is not None else None)
            values = tuple(_quantity(x, f"{cw}.requestPolicy.validValues")
                           for x in d.lst(_get(p, "validValues", []), f"{cw}.requestPolicy.validValues"))
            default = _quantity(p["default"], f"{cw}.requestPolicy.default") if p.get("default") is not None else None
            policy = RequestPolicy(default, rng, values)
        capacity[str(k)] = Capacity(_quantity(c.get("value"), f"{cw}.value"), policy)
    taints = []
    for j, t in enumerate(d.lst(_get(o, "taints", []), f"{where}.taints")):
        tw = f"{where}.taints[{j}]"
        to = d.obj(t, tw)
        taints.append(DeviceTaint(d.string(to, "key", tw), d.string(to, "effect", tw),
                                  d.string(to, "value", tw, default=""), d.string(to, "timeAdded", tw, default="")))
    multiple = o.get("allowMultipleAllocations")
    if multiple is not None and not isinstance(multiple, bool):
        raise InvalidDocument(f"{where}.allowMultipleAllocations: expected true or false")
    return Device(d.string(o, "name", where), attributes, capacity, multiple, tuple(taints))


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """A DeviceClass: CEL selectors and, with KEP-5004, the extended resource name it serves."""

    name: str
    selectors: tuple[str, ...] = ()  # CEL expressions
    extended_resource_name: str | None = None

    def to_json(self) -> Obj:
        spec: Obj = {"selectors": [{"cel": {"expression": e}} for e in self.selectors]}
        if self.extended_resource_name is not None:
            spec["extendedResourceName"] = self.extended_resource_name
        return {"apiVersion": API_VERSION, "kind": "DeviceClass", "metadata": {"name": self.name}, "spec": spec}

    @staticmethod
    def from_json(raw: Any) -> DeviceClass:
        top = d.obj(raw, "DeviceClass")
        name = d.string(d.obj(top.get("metadata", {}), "DeviceClass.metadata"), "name", "DeviceClass.metadata")
        where = f"DeviceClass {name}.spec"
        spec = d.obj(_get(top, "spec", {}), where)
        selectors = []
        for i, s in enumerate(d.lst(_get(spec, "selectors", []), f"{where}.selectors")):
            cel = d.obj(d.obj(s, f"{where}.selectors[{i}]").get("cel"), f"{where}.selectors[{i}].cel")
            selectors.append(d.string(cel, "expression", f"{where}.selectors[{i}].cel"))
        ext = spec.get("extendedResourceName")
        if ext is not None and not isinstance(ext, str):
            raise InvalidDocument(f"{where}.extendedResourceName: expected a string")
        return DeviceClass(name, tuple(selectors), ext)


@dataclass(frozen=True, slots=True)
class AllocatedDevice:
    """One entry of status.allocation.devices.results: a device (or a share of one) for one request."""

    request: str  # "<request>" or "<request>/<subrequest>"
    driver: str
    pool: str
    device: str
    admin_access: bool = False
    share_id: str = ""  # set when the device allows multiple allocations
    consumed_capacity: Mapping[str, str] = field(default_factory=dict)  # names with or without the driver domain

    @property
    def base_request(self) -> str:
        """The request without a subrequest (what containers and the kubelet's response refer to)."""
        return self.request.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Consumer:
    """An entry of status.reservedFor (usually a pod)."""

    resource: str
    name: str
    uid: str
    api_group: str = ""


@dataclass(frozen=True, slots=True)
class ResourceClaim:
    """The parts of a ResourceClaim the kubelet plugin reads: identity and ``status.allocation``."""

    namespace: str
    name: str
    uid: str
    allocated: bool
    results: tuple[AllocatedDevice, ...] = ()
    reserved_for: tuple[Consumer, ...] = ()

    @staticmethod
    def from_json(raw: Any) -> ResourceClaim:
        top = d.obj(raw, "ResourceClaim")
        meta = d.obj(top.get("metadata", {}), "ResourceClaim.metadata")
        namespace = d.string(meta, "namespace", "ResourceClaim.metadata", default="")
        name = d.string(meta, "name", "ResourceClaim.metadata")
        where = f"ResourceClaim {namespace}/{name}.status"
        status = d.obj(_get(top, "status", {}), where)
        allocation = status.get("allocation")
        results: list[AllocatedDevice] = []
        if allocation is not None:
            devices = d.obj(_get(d.obj(allocation, f"{where}.allocation"), "devices", {}),
                            f"{where}.allocation.devices")
            for i, item in enumerate(d.lst(_get(devices, "results", []), f"{where}.allocation.devices.results")):
                rw = f"{where}.allocation.devices.results[{i}]"
                r = d.obj(item, rw)
                consumed = {str(k): _quantity(v, f"{rw}.consumedCapacity[{k}]")
                            for k, v in d.obj(_get(r, "consumedCapacity", {}), f"{rw}.consumedCapacity").items()}
                admin = r.get("adminAccess")
                results.append(AllocatedDevice(
                    request=d.string(r, "request", rw), driver=d.string(r, "driver", rw), pool=d.string(r, "pool", rw),
                    device=d.string(r, "device", rw), admin_access=admin is True,
                    share_id=d.string(r, "shareID", rw, default=""), consumed_capacity=consumed))
        consumers = []
        for i, item in enumerate(d.lst(_get(status, "reservedFor", []), f"{where}.reservedFor")):
            cw = f"{where}.reservedFor[{i}]"
            c = d.obj(item, cw)
            consumers.append(Consumer(d.string(c, "resource", cw), d.string(c, "name", cw), d.string(c, "uid", cw),
                                      d.string(c, "apiGroup", cw, default="")))
        return ResourceClaim(namespace, name, d.string(meta, "uid", "ResourceClaim.metadata", default=""),
                             allocation is not None, tuple(results), tuple(consumers))

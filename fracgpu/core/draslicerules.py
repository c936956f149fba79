"""The rules of kube-apiserver's ResourceSlice validation that fracgpu's slices can break
(pkg/apis/resource/validation/validation.go; the limits are k8s.io/api/resource/v1/types.go constants), so that a
bad inventory is refused by the driver with a reason instead of by the API server. Pure.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

from fracgpu.api.v1beta1.dra.resource import (
    TAINT_NO_EXECUTE,
    TAINT_NO_SCHEDULE,
    TAINT_NONE,
    RequestPolicy,
    ResourceSlice,
)
from fracgpu.core.quantity import QuantityError, parse_quantity

# Limits of kube-apiserver's validation (k8s.io/api/resource/v1/types.go constants).
MAX_DEVICES: Final = 128
MAX_DEVICES_ADVANCED: Final = 64  # when any device has taints (or consumes counters)
MAX_ATTRIBUTES_AND_CAPACITIES: Final = 32
MAX_ATTRIBUTE_VALUE: Final = 64
MAX_TAINTS: Final = 16
MAX_VALID_VALUES: Final = 10
MAX_POOL_NAME: Final = 253

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")


def quantity_or_none(text: str | None) -> Decimal | None:
    """A quantity's value; None for none or one that is not a quantity (a rule then reports it)."""
    if text is None:
        return None
    try:
        return parse_quantity(text)
    except QuantityError:
        return None


def dns_subdomain(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in name.split("."))


def dns_label(name: str) -> bool:
    return len(name) <= 63 and _DNS_LABEL.fullmatch(name) is not None



def _qualified_name(name: str) -> str:
    domain, sep, ident = name.rpartition("/")
    if sep and (not domain or not dns_subdomain(domain) or len(domain) > 63):
        return "the domain must be a DNS subdomain of at most 63 characters"
    if not _C_IDENTIFIER.fullmatch(ident) or len(ident) > 32:
        return "must be a C identifier of at most 32 characters, optionally with a domain"
    return ""


def _policy_errors(where: str, value: Decimal, multiple: bool, policy: RequestPolicy) -> list[str]:
    errs: list[str] = []
    if not multiple:
        return [f"{where}.requestPolicy: allowMultipleAllocations must be true"]
    default = quantity_or_none(policy.default)
    if policy.valid_values and policy.valid_range is not None:
        return [f"{where}.requestPolicy: validValues and validRange are exclusive"]
    if policy.valid_values:
        values = [quantity_or_none(v) for v in policy.valid_values]
        if any(v is None for v in values) or default is None:
            return [f"{where}.requestPolicy: validValues and default must be quantities"]
        nums = [v for v in values if v is not None]
        if nums != sorted(nums) or len(set(nums)) != len(nums) or len(nums) > MAX_VALID_VALUES:
            errs.append(f"{where}.requestPolicy.validValues: at most {MAX_VALID_VALUES}, unique, ascending")
        if any(v > value for v in nums):
            errs.append(f"{where}.requestPolicy.validValues: larger than the capacity {value}")
        if default not in nums:
            errs.append(f"{where}.requestPolicy.default: not one of validValues")
    elif policy.valid_range is not None:
        rng = policy.valid_range
        lo, hi, step = quantity_or_none(rng.min), quantity_or_none(rng.max), quantity_or_none(rng.step)
        if lo is None or default is None:
            return [f"{where}.requestPolicy: validRange.min and default are required quantities"]
        if lo < 0 or lo > value:
            errs.append(f"{where}.requestPolicy.validRange.min: must be within 0..{value}")
        if default < lo:
            errs.append(f"{where}.requestPolicy.default: less than min")
        if hi is not None and (hi < lo or hi > value or default > hi):
            errs.append(f"{where}.requestPolicy.validRange.max: must be >= min and default, <= capacity")
        if step is not None:
            if step <= 0 or lo + step > value:
                errs.append(f"{where}.requestPolicy.validRange.step: min + step must be <= capacity")
            else:
                for v, what in ((default, "default"), (hi, "max")):
                    if v is not None and (v - lo) % step != 0:
                        errs.append(f"{where}.requestPolicy.{what}: not min + a multiple of step")
    return errs


def validate_slice(s: ResourceSlice) -> list[str]:
    """What kube-apiserver would refuse in this slice (the subset of its rules fracgpu's slices touch)."""
    errs: list[str] = []
    spec = s.spec
    if not dns_subdomain(s.name):
        errs.append(f"metadata.name {s.name!r}: must be a DNS subdomain")
    if not dns_subdomain(spec.driver) or len(spec.driver) > 63:
        errs.append(f"spec.driver {spec.driver!r}: must be a DNS subdomain of at most 63 characters")
    if (len(spec.pool.name) > MAX_POOL_NAME or not spec.pool.name
            or not all(dns_subdomain(p) for p in spec.pool.name.split("/"))):
        errs.append(f"spec.pool.name {spec.pool.name!r}: DNS subdomains separated by '/', at most 253 characters")
    if spec.pool.generation < 0 or spec.pool.resource_slice_count < 1:
        errs.append("spec.pool: generation must be >= 0 and resourceSliceCount > 0")
    advanced = any(dev.taints for dev in spec.devices)
    limit = MAX_DEVICES_ADVANCED if advanced else MAX_DEVICES
    if len(spec.devices) > limit:
        errs.append(f"spec.devices: at most {limit} devices{' when a device has taints' if advanced else ''}")
    seen: set[str] = set()
    for i, dev in enumerate(spec.devices):
        where = f"spec.devices[{i}]"
        if not dns_label(dev.name):
            errs.append(f"{where}.name {dev.name!r}: must be a DNS label")
        if dev.name in seen:
            errs.append(f"{where}.name {dev.name!r}: duplicate")
        seen.add(dev.name)
        if len(dev.attributes) + len(dev.capacity) > MAX_ATTRIBUTES_AND_CAPACITIES:
            errs.append(f"{where}: at most {MAX_ATTRIBUTES_AND_CAPACITIES} attributes and capacities")
        for name, attr in dev.attributes.items():
            bad = _qualified_name(name)
            if bad:
                errs.append(f"{where}.attributes[{name}]: {bad}")
            if attr.kind in ("string", "version") and len(str(attr.value)) > MAX_ATTRIBUTE_VALUE:
                errs.append(f"{where}.attributes[{name}]: longer than {MAX_ATTRIBUTE_VALUE} characters")
            if attr.kind == "version" and not _SEMVER.fullmatch(str(attr.value)):
                errs.append(f"{where}.attributes[{name}]: not a semantic version")
        for name, cap in dev.capacity.items():
            bad = _qualified_name(name)
            if bad:
                errs.append(f"{where}.capacity[{name}]: {bad}")
            value = quantity_or_none(cap.value)
            if value is None or value < 0:
                errs.append(f"{where}.capacity[{name}].value: not a quantity")
                continue
            if cap.request_policy is not None:
                errs += _policy_errors(f"{where}.capacity[{name}]", value, bool(dev.allow_multiple_allocations),
                                       cap.request_policy)
        if len(dev.taints) > MAX_TAINTS:
            errs.append(f"{where}.taints: at most {MAX_TAINTS}")
        for j, t in enumerate(dev.taints):
            prefix, sep, tname = t.key.rpartition("/")
            if (not _LABEL_NAME.fullmatch(tname) or len(tname) > 63
                    or (sep and not dns_subdomain(prefix))):
                errs.append(f"{where}.taints[{j}].key {t.key!r}: must be a label name")
            if len(t.value) > 63 or not _LABEL_VALUE.fullmatch(t.value):
                errs.append(f"{where}.taints[{j}].value {t.value!r}: must be a label value")
            if t.effect not in (TAINT_NONE, TAINT_NO_SCHEDULE, TAINT_NO_EXECUTE):
                errs.append(f"{where}.taints[{j}].effect {t.effect!r}: None, NoSchedule or NoExecute")
    return errs

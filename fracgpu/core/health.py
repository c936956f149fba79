"""GPU health: pure transitions from samples to a per-GPU verdict, and a node-level verdict.

No I/O and no clock reads here: every function takes ``now`` (seconds, any monotonic origin).

How the device plugin wires it (one ``HealthTracker`` per node, fed by the poll loop)::

    cfg = HealthConfig(...)                        # the plugin's --health-* flags (deviceplugin/healthflags.py)
    tracker = HealthTracker(cfg)
    # every cfg.poll_interval seconds (and at once when an XID event arrives):
    for uuid, sample in backend_samples():         # GpuSample per GPU; xids = XIDs since last sample
        change = tracker.observe(uuid, sample, now=time.monotonic())
        if change is not None:                     # the GPU went unhealthy or recovered
            push ListAndWatch update; write inventory (healthy=change.state.healthy, reason=change.state.reason)
    tracker.forget(uuid)                           # a GPU that left the node
    verdict = node_verdict(nvml_ok, node_reason, tracker.states().values(), cfg.node_policy)
    # -> inventory's nodeHealthy / nodeReason

Or, without the tracker, the pure step: ``state = step(state, sample, cfg, now)``.

Rules (defaults in ``HealthConfig``):

- A fatal XID (``fatal_xids``) or a lost GPU (``GpuSample.lost``) makes the GPU unhealthy at once.
- Application XIDs (``ignored_xids``: the app's fault, not the GPU's) are ignored. An XID in neither
  list counts as one bad check (``unknown_xids="bad-check"``), or is fatal / ignored by configuration.
- A threshold breach (temperature, power over the enforced limit, uncorrectable ECC, retired or
  pending-retirement pages, row remapping pending/failed, memory use, an NVML read error) counts as a
  bad check; ``bad_checks`` bad checks in a row make the GPU unhealthy.
- An unhealthy GPU recovers after ``recovery_checks`` good checks in a row. A GPU that failed more
  than once within ``flap_window`` seconds needs twice as many good checks per repeated failure
  (capped at ``max_recovery_checks``): a flapping GPU stays out instead of flapping.
- The node as a whole is broken when NVML is unreachable / the driver is gone, or by ``node_policy``:
  ``all-gpus`` (every GPU unhealthy, or no GPU at all), ``any-gpu``, ``never``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final, Protocol

from fracgpu.core.healthconfig import XID_DESCRIPTIONS, HealthConfig, NodePolicy, Thresholds

# Reasons: the start of each reason string, so that callers and tests can tell causes apart.
REASON_XID: Final = "xid"
REASON_LOST: Final = "GPU lost"
REASON_NVML: Final = "nvml error"
REASON_TEMPERATURE: Final = "temperature"
REASON_POWER: Final = "power"
REASON_ECC: Final = "uncorrectable ECC errors"
REASON_RETIRED: Final = "retired pages"
REASON_RETIRED_PENDING: Final = "page retirement pending"
REASON_REMAP_PENDING: Final = "row remapping pending"
REASON_REMAP_FAILED: Final = "row remapping failed"
REASON_MEMORY: Final = "memory used"
NODE_REASON_NO_GPUS: Final = "no GPUs visible"
NODE_REASON_ALL: Final = "every GPU unhealthy"
NODE_REASON_ANY: Final = "GPU unhealthy"


def describe_xid(xid: int) -> str:
    text = XID_DESCRIPTIONS.get(xid)
    return f"{REASON_XID} {xid}" + (f" ({text})" if text else "")


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One poll of one GPU. None = not read (not supported by this GPU, or not asked for)."""

    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None  # enforced power limit
    utilization_pct: float | None = None  # for metrics; not a health criterion
    memory_used: int | None = None  # bytes
    memory_total: int | None = None  # bytes
    ecc_uncorrectable: int | None = None  # volatile (since driver load) uncorrectable count
    ecc_correctable: int | None = None  # for metrics; not a health criterion
    retired_pages: int | None = None  # total retired pages, SBE + DBE
    retired_pages_pending: bool = False
    remapped_rows_pending: bool = False
    remapped_rows_failed: bool = False
    xids: tuple[int, ...] = ()  # XIDs seen since the previous sample of this GPU
    lost: bool = False  # NVML says the GPU is lost / off the bus: unhealthy at once
    error: str = ""  # an NVML error while reading this GPU (counts as a bad check)


@dataclass(frozen=True, slots=True)
class GpuHealth:
    """A GPU's health state between samples. Start from ``GpuHealth()`` (healthy)."""

    healthy: bool = True
    reason: str = ""  # why unhealthy (stable while unhealthy); empty when healthy
    bad_streak: int = 0  # bad checks in a row
    good_streak: int = 0  # good checks in a row
    last_problem: str = ""  # the latest bad check's reason, even while still healthy
    changed_at: float | None = None  # `now` of the last healthy <-> unhealthy transition
    failures: tuple[float, ...] = ()  # when it went unhealthy, within the flap window
    required_good: int = 0  # good checks needed to recover from the current failure


@dataclass(frozen=True, slots=True)
class Check:
    """What one sample says on its own, before the streak rules."""

    fatal: str = ""  # a reason that acts at once
    bad: tuple[str, ...] = ()  # threshold breaches

    @property
    def good(self) -> bool:
        return not self.fatal and not self.bad


def check_sample(sample: GpuSample, cfg: HealthConfig) -> Check:
    """Classify one sample against the thresholds and the XID policy (no history)."""
    fatal: list[str] = []
    bad: list[str] = []
    if sample.lost:
        fatal.append(REASON_LOST + (f": {sample.error}" if sample.error else ""))
    elif sample.error and cfg.thresholds.nvml_errors:
        bad.append(f"{REASON_NVML}: {sample.error}")
    for xid in sample.xids:
        kind = cfg.xids.classify(xid)
        if kind == "fatal":
            fatal.append(describe_xid(xid))
        elif kind == "bad-check":
            bad.append(describe_xid(xid))
    bad.extend(_breaches(sample, cfg.thresholds))
    return Check(fatal="; ".join(dict.fromkeys(fatal)), bad=tuple(dict.fromkeys(bad)))


def _breaches(s: GpuSample, t: Thresholds) -> list[str]:
    out: list[str] = []
    if t.max_temperature_c is not None and s.temperature_c is not None and s.temperature_c > t.max_temperature_c:
        out.append(f"{REASON_TEMPERATURE} {s.temperature_c:g}C > {t.max_temperature_c:g}C")
    out.extend(_over_share(s.power_w, s.power_limit_w, t.max_power_ratio,
                           lambda w, limit, r: f"{REASON_POWER} {w:.0f}W > {r:g} x limit {limit:.0f}W"))
    ecc_limit = t.max_ecc_uncorrectable
    if ecc_limit is not None and s.ecc_uncorrectable is not None and s.ecc_uncorrectable > ecc_limit:
        out.append(f"{REASON_ECC} {s.ecc_uncorrectable} > {ecc_limit}")
    if t.max_retired_pages is not None and s.retired_pages is not None and s.retired_pages > t.max_retired_pages:
        out.append(f"{REASON_RETIRED} {s.retired_pages} > {t.max_retired_pages}")
    if t.retired_pages_pending and s.retired_pages_pending:
        out.append(REASON_RETIRED_PENDING)
    if t.remapped_rows_pending and s.remapped_rows_pending:
        out.append(REASON_REMAP_PENDING)
    if t.remapped_rows_failed and s.remapped_rows_failed:
        out.append(REASON_REMAP_FAILED)
    out.extend(_over_share(s.memory_used, s.memory_total, t.max_memory_used_ratio,
                           lambda used, total, r: f"{REASON_MEMORY} {used / total:.0%} > {r:.0%}"))
    return out


def _over_share(used: float | None, total: float | None, ratio: float | None,
                say: Callable[[float, float, float], str]) -> list[str]:
    """say(used, total, ratio) when `used` is over `ratio` of a known, non-zero `total`; a rule off or a value
    not read says nothing."""
    if ratio is not None and used is not None and total and used > total * ratio:
        return [say(used, total, ratio)]
    return []


def required_good_checks(failures: int, cfg: HealthConfig) -> int:
    """Good checks needed to recover after the n-th failure within the flap window (n >= 1)."""
    doublings = max(0, failures - 1)
    if doublings >= 32:
        return cfg.max_recovery_checks
    return min(cfg.recovery_checks << doublings, cfg.max_recovery_checks)


def step(state: GpuHealth, sample: GpuSample, cfg: HealthConfig, now: float) -> GpuHealth:
    """The state after one sample. Compare ``healthy`` of the old and new state to see a transition."""
    return apply_check(state, check_sample(sample, cfg), cfg, now)


def apply_check(state: GpuHealth, check: Check, cfg: HealthConfig, now: float) -> GpuHealth:
    if check.good:
        good = state.good_streak + 1
        if not state.healthy and good >= state.required_good:
            return replace(
                state, healthy=True, reason="", bad_streak=0, good_streak=good, last_problem="",
                changed_at=now, required_good=0,
            )  # fmt: skip
        return replace(state, bad_streak=0, good_streak=good, last_problem="")
    problem = check.fatal or "; ".join(check.bad)
    bad = state.bad_streak + 1
    if not state.healthy:
        # Still unhealthy: the recovery run starts over; the reason stays the one it failed for
        # (a stable reason keeps the inventory annotation from being rewritten every poll).
        return replace(state, bad_streak=bad, good_streak=0, last_problem=problem)
    if check.fatal:
        reason = check.fatal
    elif bad >= cfg.bad_checks:
        reason = f"{problem} ({bad} checks in a row)" if cfg.bad_checks > 1 else problem
    else:
        return replace(state, bad_streak=bad, good_streak=0, last_problem=problem)
    failures = (*(t for t in state.failures if now - t <= cfg.flap_window), now)
    return GpuHealth(
        healthy=False,
        reason=reason,
        bad_streak=bad,
        good_streak=0,
        last_problem=problem,
        changed_at=now,
        failures=failures,
        required_good=required_good_checks(len(failures), cfg),
    )


@dataclass(frozen=True, slots=True)
class HealthChange:
    uuid: str
    state: GpuHealth  # the new state; ``state.healthy`` says which way it went


class HealthTracker:
    """Per-node ledger of GPU health states: a thin mutable shell over ``step`` for the plugin's loop."""

    def __init__(self, cfg: HealthConfig) -> None:
        self.cfg = cfg
        self._states: dict[str, GpuHealth] = {}

    def observe(self, uuid: str, sample: GpuSample, now: float) -> HealthChange | None:
        """Feed one sample; returns the change when the GPU turned unhealthy or healthy, else None."""
        old = self._states.get(uuid, GpuHealth())
        new = step(old, sample, self.cfg, now)
        self._states[uuid] = new
        return HealthChange(uuid, new) if new.healthy != old.healthy else None

    def state(self, uuid: str) -> GpuHealth:
        return self._states.get(uuid, GpuHealth())

    def states(self) -> dict[str, GpuHealth]:
        return dict(self._states)

    def forget(self, uuid: str) -> None:
        self._states.pop(uuid, None)

    def clone(self) -> HealthTracker:
        other = HealthTracker(self.cfg)
        other._states = dict(self._states)
        return other


class HasHealth(Protocol):
    """Anything with a health flag and a reason: GpuHealth, or the inventory's GpuInfo."""

    @property
    def healthy(self) -> bool: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True, slots=True)
class NodeVerdict:
    broken: bool
    reason: str = ""


def node_verdict(node_ok: bool, node_reason: str, gpus: Iterable[HasHealth], policy: NodePolicy) -> NodeVerdict:
    """Is the node as a whole broken? ``node_ok`` False = NVML unreachable / driver gone (always broken)."""
    if not node_ok:
        return NodeVerdict(True, node_reason or "NVML unreachable")
    if policy is NodePolicy.NEVER:
        return NodeVerdict(False)
    items = list(gpus)
    if not items:
        return NodeVerdict(True, NODE_REASON_NO_GPUS)
    sick = [g for g in items if not g.healthy]
    if policy is NodePolicy.ALL_GPUS and len(sick) == len(items):
        return NodeVerdict(True, f"{NODE_REASON_ALL} ({len(items)}): {_first_reason(sick)}")
    if policy is NodePolicy.ANY_GPU and sick:
        return NodeVerdict(True, f"{NODE_REASON_ANY} ({len(sick)}/{len(items)}): {_first_reason(sick)}")
    return NodeVerdict(False)


def _first_reason(sick: list[HasHealth]) -> str:
    return next((g.reason for g in sick if g.reason), "unknown")

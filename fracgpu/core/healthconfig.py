"""The GPU health settings: XID classes, thresholds, streak counts and the node policy.

Validated on construction (``HealthConfigError`` names the setting and the value); the rules they
drive are in ``fracgpu.core.health``, the flags that fill them in ``fracgpu.deviceplugin.healthflags``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class HealthConfigError(ValueError):
    """A health setting is not valid; the message names it and the value."""


class NodePolicy(StrEnum):
    """When the node as a whole is broken (and so tainted), beyond NVML/driver failure."""

    ALL_GPUS = "all-gpus"  # every GPU unhealthy (or none left)
    ANY_GPU = "any-gpu"  # at least one GPU unhealthy
    NEVER = "never"  # GPU state never breaks the node; NVML/driver failure still does


class UnknownXids(StrEnum):
    """What an XID in neither list does."""

    BAD_CHECK = "bad-check"  # counts as a threshold breach for that check
    FATAL = "fatal"  # as NVIDIA's device plugin does: every non-application XID is fatal
    IGNORE = "ignore"


# Fatal by default: the GPU (or its memory, or its links) is broken until reset or replaced.
XID_DESCRIPTIONS: Final[Mapping[int, str]] = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    48: "double-bit ECC error",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping event",
    64: "ECC page retirement or row remapping failure",
    68: "video processor exception",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    109: "context switch timeout",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}
DEFAULT_FATAL_XIDS: Final = frozenset({48, 62, 64, 74, 79, 94, 95, 119, 120, 140})
# Caused by the application, not the GPU: NVIDIA's device plugin skips the same list.
DEFAULT_IGNORED_XIDS: Final = frozenset({13, 31, 43, 45, 68, 109})

def parse_xid_list(spec: str, *, where: str = "xids") -> frozenset[int]:
    """'48, 79,94' -> {48, 79, 94}; '' or 'none' -> {}. Bad items raise HealthConfigError naming them."""
    text = spec.strip().lower()
    if text in ("", "none"):
        return frozenset()
    out: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if not item.isdigit():
            raise HealthConfigError(f"{where}: {item!r} is not an XID number (comma list of integers)")
        out.add(int(item))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class XidPolicy:
    """Which XIDs act, parsed like NVIDIA's ``DP_DISABLE_HEALTHCHECKS``."""

    fatal: frozenset[int] = DEFAULT_FATAL_XIDS
    ignored: frozenset[int] = DEFAULT_IGNORED_XIDS
    unknown: UnknownXids = UnknownXids.BAD_CHECK
    enabled: bool = True  # False: XIDs are ignored altogether

    def classify(self, xid: int) -> str:
        """'fatal' | 'bad-check' | 'ignore' for one XID."""
        if not self.enabled or xid in self.ignored:
            return "ignore"
        if xid in self.fatal:
            return "fatal"
        return self.unknown.value

    @staticmethod
    def parse(disable: str = "", fatal: str | None = None, ignored: str | None = None) -> XidPolicy:
        """Build from NVIDIA-style strings.

        ``disable`` follows ``DP_DISABLE_HEALTHCHECKS``: ``all`` or ``xids`` turns XID checks off; a
        comma list of XIDs adds them to the ignored ones (``"109,45"``); ``""`` changes nothing.
        ``fatal`` / ``ignored`` replace the default lists when given (``""`` or ``"none"`` = empty).
        An XID in both lists is ignored: disabling wins, as in NVIDIA's plugin.
        """
        fatal_set = DEFAULT_FATAL_XIDS if fatal is None else parse_xid_list(fatal, where="fatal xids")
        ignored_set = DEFAULT_IGNORED_XIDS if ignored is None else parse_xid_list(ignored, where="ignored xids")
        text = disable.strip().lower()
        if text in ("all", "xids"):
            return XidPolicy(fatal=fatal_set, ignored=ignored_set, enabled=False)
        extra = parse_xid_list(text, where="disabled health checks")
        return XidPolicy(fatal=fatal_set, ignored=ignored_set | extra)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """A check is bad when any set limit is crossed; None turns that check off."""

    max_temperature_c: float | None = 90.0  # datacenter GPUs throttle (slowdown) around 85-92 C
    max_power_ratio: float | None = 1.10  # power draw / enforced power limit
    max_ecc_uncorrectable: int | None = 0  # volatile uncorrectable (DBE) count: any one is bad
    max_retired_pages: int | None = 60  # total retired pages (SBE + DBE); DCGM's limit is 60
    retired_pages_pending: bool = True  # a page waits for retirement (needs a GPU reset)
    remapped_rows_pending: bool = True  # a row remap waits (needs a GPU reset), A100 and later
    remapped_rows_failed: bool = True  # the GPU ran out of spare rows
    max_memory_used_ratio: float | None = None  # memory used / total; off: a full GPU is not a sick GPU
    nvml_errors: bool = True  # a sample that NVML could not read counts as bad


@dataclass(frozen=True, slots=True)
class HealthConfig:
    thresholds: Thresholds = field(default_factory=Thresholds)
    xids: XidPolicy = field(default_factory=XidPolicy)
    poll_interval: float = 2.0  # seconds between samples (the plugin's loop reads it)
    bad_checks: int = 3  # bad checks in a row before a threshold breach makes the GPU unhealthy
    recovery_checks: int = 30  # good checks in a row before an unhealthy GPU is healthy again (60 s)
    max_recovery_checks: int = 960  # cap of the flap backoff (32 min at 2 s)
    flap_window: float = 3600.0  # failures within this many seconds count as flapping
    node_policy: NodePolicy = NodePolicy.ALL_GPUS

    def __post_init__(self) -> None:
        if self.poll_interval <= 0 or not math.isfinite(self.poll_interval):
            raise HealthConfigError(f"poll interval: must be > 0 seconds, got {self.poll_interval}")
        if self.bad_checks < 1:
            raise HealthConfigError(f"bad checks: must be >= 1, got {self.bad_checks}")
        if self.recovery_checks < 1:
            raise HealthConfigError(f"recovery checks: must be >= 1, got {self.recovery_checks}")
        if self.max_recovery_checks < self.recovery_checks:
            raise HealthConfigError(
                f"max recovery checks: must be >= recovery checks ({self.recovery_checks}), "
                f"got {self.max_recovery_checks}"
            )
        if self.flap_window < 0:
            raise HealthConfigError(f"flap window: must be >= 0 seconds, got {self.flap_window}")

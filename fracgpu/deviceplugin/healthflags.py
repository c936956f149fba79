"""The device plugin's GPU health settings as flags (`--health-*`), each with its `FRACGPU_HEALTH_*`
variable, and NVIDIA's `DP_DISABLE_HEALTHCHECKS` with NVIDIA's meaning; `health_config` turns the parsed
flags into the core's `HealthConfig` (rules and defaults: fracgpu/core/health.py, docs/health.md).

`off` (or `none`) turns a threshold off; an XID list is a comma list, `none` = empty.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from fracgpu.core.healthconfig import (
    HealthConfig,
    HealthConfigError,
    NodePolicy,
    Thresholds,
    UnknownXids,
    XidPolicy,
    parse_xid_list,
)
from fracgpu.startup import Flag, non_negative_int, positive_int, seconds

__all__ = ["HEALTH_FLAGS", "health_config"]

_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")
_OFF = ("off", "none", "")


def _number(raw: str) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a finite number")
    return value


def _or_off(convert: Callable[[str], _T]) -> Callable[[str], _T | None]:
    def limit(raw: str) -> _T | None:
        return None if str(raw).strip().lower() in _OFF else convert(raw)

    limit.__name__ = f"{getattr(convert, '__name__', 'value')} or off"
    return limit


def _one_of(kind: type[_E]) -> Callable[[str], _E]:
    def member(raw: str) -> _E:
        try:
            return kind(str(raw).strip().lower())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{raw!r} is not one of {', '.join(m.value for m in kind)}") from None

    member.__name__ = kind.__name__
    return member


def _xids(raw: str) -> str:
    """A comma list of XIDs (checked here; `XidPolicy.parse` reads it)."""
    try:
        parse_xid_list(str(raw), where="XID list")
    except HealthConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return str(raw)


def _disabled(raw: str) -> str:
    try:
        XidPolicy.parse(str(raw))
    except HealthConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return str(raw)


def _show(value: float | int | None) -> str:
    if value is None:
        return "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flags() -> tuple[Flag, ...]:
    d, t, x = HealthConfig(), Thresholds(), XidPolicy()
    env = "FRACGPU_HEALTH_"
    return (
        Flag("health-poll-interval", "seconds between two health samples of every GPU", _show(d.poll_interval),
             seconds, env=(env + "POLL_INTERVAL",)),
        Flag("health-bad-checks", "bad checks in a row (a threshold breach, an unknown XID) before a GPU is "
             "unhealthy", _show(d.bad_checks), positive_int, env=(env + "BAD_CHECKS",)),
        Flag("health-recovery-checks", "good checks in a row before an unhealthy GPU is healthy again",
             _show(d.recovery_checks), positive_int, env=(env + "RECOVERY_CHECKS",)),
        Flag("health-max-recovery-checks", "cap of the flap backoff: a GPU failing again within "
             "--health-flap-window needs twice as many good checks, up to this many", None, positive_int,
             env=(env + "MAX_RECOVERY_CHECKS",),
             unset=f"{d.max_recovery_checks}, or --health-recovery-checks when that is more"),
        Flag("health-flap-window", "seconds within which a GPU's failures count as flapping",
             _show(d.flap_window), seconds, env=(env + "FLAP_WINDOW",)),
        Flag("health-node-policy", "when the node as a whole is broken, beyond NVML or driver failure: all-gpus "
             "(every GPU unhealthy, or none), any-gpu, never", d.node_policy.value, _one_of(NodePolicy),
             env=(env + "NODE_POLICY",), metavar="POLICY"),
        Flag("health-fatal-xids", "XIDs that make a GPU unhealthy at once (comma list, none: empty)",
             ",".join(str(i) for i in sorted(x.fatal)), _xids, env=(env + "FATAL_XIDS",), metavar="XIDS"),
        Flag("health-ignored-xids", "XIDs caused by applications, not the GPU: ignored (comma list, none: empty)",
             ",".join(str(i) for i in sorted(x.ignored)), _xids, env=(env + "IGNORED_XIDS",), metavar="XIDS"),
        Flag("health-unknown-xids", "what an XID in neither list does: bad-check, fatal (NVIDIA's device plugin) "
             "or ignore", x.unknown.value, _one_of(UnknownXids), env=(env + "UNKNOWN_XIDS",), metavar="ACTION"),
        Flag("disable-healthchecks", "NVIDIA's setting: all or xids turns XID checks off; a comma list of XIDs "
             "ignores those too", "", _disabled, env=("DP_DISABLE_HEALTHCHECKS",), metavar="WHAT"),
        Flag("health-max-temperature", "a check is bad above this many degrees Celsius (off: not checked)",
             _show(t.max_temperature_c), _or_off(_number), env=(env + "MAX_TEMPERATURE",), metavar="C"),
        Flag("health-max-power-ratio", "a check is bad when power draw / enforced power limit is above this "
             "(off: not checked)", _show(t.max_power_ratio), _or_off(_number), env=(env + "MAX_POWER_RATIO",),
             metavar="RATIO"),
        Flag("health-max-ecc-uncorrectable", "a check is bad above this many volatile uncorrectable ECC errors "
             "(off: not checked)", _show(t.max_ecc_uncorrectable), _or_off(non_negative_int),
             env=(env + "MAX_ECC_UNCORRECTABLE",), metavar="N"),
        Flag("health-max-retired-pages", "a check is bad above this many retired memory pages (off: not checked)",
             _show(t.max_retired_pages), _or_off(non_negative_int), env=(env + "MAX_RETIRED_PAGES",), metavar="N"),
        Flag("health-max-memory-used-ratio", "a check is bad when memory used / total is above this (off: a full "
             "GPU is not a sick one)", _show(t.max_memory_used_ratio), _or_off(_number),
             env=(env + "MAX_MEMORY_USED_RATIO",), metavar="RATIO"),
    )


HEALTH_FLAGS = _flags()


def health_config(args: argparse.Namespace) -> HealthConfig:
    """The parsed `--health-*` flags as the core's settings; HealthConfigError when they contradict."""
    recovery: int = args.health_recovery_checks
    cap: int | None = args.health_max_recovery_checks
    xids = XidPolicy.parse(args.disable_healthchecks, fatal=args.health_fatal_xids,
                           ignored=args.health_ignored_xids)
    return HealthConfig(
        thresholds=Thresholds(
            max_temperature_c=args.health_max_temperature,
            max_power_ratio=args.health_max_power_ratio,
            max_ecc_uncorrectable=args.health_max_ecc_uncorrectable,
            max_retired_pages=args.health_max_retired_pages,
            max_memory_used_ratio=args.health_max_memory_used_ratio,
        ),
        xids=XidPolicy(fatal=xids.fatal, ignored=xids.ignored, unknown=args.health_unknown_xids,
                       enabled=xids.enabled),
        poll_interval=args.health_poll_interval,
        bad_checks=args.health_bad_checks,
        recovery_checks=recovery,
        # unset: the default cap, raised to the recovery run when that is longer
        max_recovery_checks=max(HealthConfig().max_recovery_checks, recovery) if cap is None else cap,
        flap_window=args.health_flap_window,
        node_policy=args.health_node_policy,
    )

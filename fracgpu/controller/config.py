"""The controller's settings: one frozen dataclass, validated at construction, built from flags > env."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fracgpu.api.v1beta1.names import DEFAULT_NAMESPACE, DEFAULT_RECOVERY_NAMESPACE, TAINT_GPU_FAILED
from fracgpu.core.healthconfig import NodePolicy
from fracgpu.startup import ConfigError

_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    namespace: str = DEFAULT_NAMESPACE  # where the plugin heartbeat Leases and the leader Lease live
    taint_key: str = TAINT_GPU_FAILED  # effect is always NoSchedule
    node_policy: NodePolicy = NodePolicy.ALL_GPUS  # when a node as a whole is broken (tainted)
    taint_hold: float = 300.0  # seconds a tainted node must stay healthy before the taint goes
    max_evictions_per_node: int = 10  # pods being evicted (terminating) on one node at once
    eviction_grace_period: int | None = None  # seconds; None = the pod's own terminationGracePeriodSeconds
    eviction_backoff: float = 5.0  # first retry after a refused (429) or failed eviction
    eviction_backoff_max: float = 300.0  # retries double up to this
    eviction_report_interval: float = 300.0  # a blocked eviction is reported (Event) at most this often
    heartbeat_grace: float = 40.0  # a plugin Lease not renewed for this long (our clock) is stale
    resync: float = 2.0  # seconds between reconcile rounds (changes also trigger one)
    leader_lease: str = "fracgpu-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    recovery_job: Mapping[str, Any] | None = None  # a validated Job template (recovery.validate_template)
    recovery_after: float = 600.0  # seconds a node must stay broken before its recovery Job starts
    recovery_cooldown: float = 3600.0  # at most one recovery Job per node in this many seconds
    recovery_namespace: str = DEFAULT_RECOVERY_NAMESPACE  # where recovery Jobs run (Pod Security baseline)

    def __post_init__(self) -> None:
        positive = {
            "taint hold": self.taint_hold,
            "eviction backoff": self.eviction_backoff,
            "eviction backoff max": self.eviction_backoff_max,
            "eviction report interval": self.eviction_report_interval,
            "heartbeat grace": self.heartbeat_grace,
            "resync": self.resync,
            "lease duration": self.lease_duration,
            "renew deadline": self.renew_deadline,
            "retry period": self.retry_period,
            "recovery after": self.recovery_after,
            "recovery cooldown": self.recovery_cooldown,
        }
        for name, value in positive.items():
            if not math.isfinite(value) or value < 0 or (value == 0 and name not in ("taint hold", "recovery after")):
                raise ConfigError(f"{name}: must be a positive number of seconds, got {value}")
        if self.max_evictions_per_node < 1:
            raise ConfigError(f"max evictions per node: must be >= 1, got {self.max_evictions_per_node}")
        if self.eviction_grace_period is not None and self.eviction_grace_period < 0:
            raise ConfigError(f"eviction grace period: must be >= 0 seconds, got {self.eviction_grace_period}")
        if self.eviction_backoff_max < self.eviction_backoff:
            raise ConfigError("eviction backoff max: must be >= eviction backoff")
        if self.recovery_job is not None and self.recovery_namespace in ("", self.namespace):
            # fracgpu's namespace is Pod Security "privileged" (the device plugin's host mounts): a
            # controller that could create Jobs there could start a privileged pod on any node.
            raise ConfigError(
                f"recovery namespace: {self.recovery_namespace!r} cannot hold recovery Jobs; give a "
                f"namespace of their own with Pod Security baseline or stricter (e.g. {DEFAULT_RECOVERY_NAMESPACE})"
            )
        if not self.renew_deadline < self.lease_duration:
            raise ConfigError(
                f"renew deadline ({self.renew_deadline}s) must be shorter than lease duration ({self.lease_duration}s)"
            )
        if not self.retry_period < self.renew_deadline:
            raise ConfigError(
                f"retry period ({self.retry_period}s) must be shorter than renew deadline ({self.renew_deadline}s)"
            )
        if not _QUALIFIED_NAME.match(self.taint_key) or len(self.taint_key.rpartition("/")[2]) > 63:
            raise ConfigError(f"taint key: not a valid qualified name (prefix/name), got {self.taint_key!r}")

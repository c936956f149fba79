"""The extender's scheduling settings (flags in extender/main.py fill them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fracgpu.api.v1beta1.names import DEFAULT_NAMESPACE, TAINT_GPU_FAILED
from fracgpu.core import confusable
from fracgpu.core.quota import QuotaConfig
from fracgpu.core.registry import DEFAULT_POLICIES, parse_policies
from fracgpu.core.tenant import UNLIMITED, Limits


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    k: int = 1  # filter keeps the best k nodes
    policies: str = DEFAULT_POLICIES
    heartbeat_stale_s: float = 40.0  # 0 = do not judge heartbeats (snapshot mode)
    stuck_allocating_s: float = confusable.DEFAULT_STUCK_TIMEOUT_S
    # a bind whose outcome is unknown (timeout, dropped connection) and that nothing resolved is
    # dropped after this; keep it longer than the API server's request timeout (60 s by default)
    assume_ttl_s: float = 120.0
    namespace: str = DEFAULT_NAMESPACE
    taint_key: str = TAINT_GPU_FAILED
    max_pods_per_gpu: int = 0
    check_host: bool = False  # kube-scheduler's own filters check CPU/RAM before the extender runs
    refresh_s: float = 1.0  # how often staleness is re-judged at most
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    default_limits: Limits = UNLIMITED  # the cluster-wide default quota of a tenant without one

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.heartbeat_stale_s < 0 or self.stuck_allocating_s <= 0:
            raise ValueError("heartbeat staleness must be >= 0 and the allocating timeout > 0")
        parse_policies(self.policies)  # raises PolicyConfigError with the reason

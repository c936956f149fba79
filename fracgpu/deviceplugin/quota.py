"""The tenant-quota re-check Allocate makes (DESIGN, "Enforcement, three times", step 3).

The extender charges quota at bind; the plugin checks once more, at the pod's first Allocate,
that the tenant's quota object is not exceeded. ``QuotaCheck`` is the seam; ``AllowAll`` is used
when no quota source is configured.
"""

from __future__ import annotations

from typing import Protocol

from fracgpu.api.v1beta1.assignment import Assignment


class QuotaCheck(Protocol):
    def check(self, pod: str, assignment: Assignment) -> str | None:
        """None when the pod's tenant may run it; else the reason, with the tenant's numbers."""
        ...


class AllowAll:
    def check(self, pod: str, assignment: Assignment) -> str | None:
        return None

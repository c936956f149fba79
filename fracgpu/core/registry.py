"""Ranking policies by name, and weighted policy lists from a config string ("fracgpu", "binpack=1,topology=0.5").

One place that maps names to `Policy` objects, so the extender, the simulator and their configs
share the names. A policy module adds itself by adding a factory to `FACTORIES`.

`fracgpu` (the default, docs/architecture.md "Decision fidelity") and `fgd` are fragmentation-aware: each follows
its own rolling `WorkloadHistogram` (core.workload, seeded from the bundled openb prior), which the
caller must feed with the request shapes it places; `workload_histograms()` finds them in a parsed list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from fracgpu.core.policies import live_default
from fracgpu.core.policies.fracgpu import PatternPlanner
from fracgpu.core.policies.paper import FGD
from fracgpu.core.ranking import BestFit, Policy, Spread, TopologyQuality, Weighted
from fracgpu.core.workload import WorkloadHistogram

UNITS_PER_GPU = 100  # the extender's unit: 1 vgpu-core = 1 % of a GPU


def _fracgpu() -> Policy:
    """fracgpu's planner (plan fill patterns, then FGD) over a fresh rolling histogram."""
    return live_default(UNITS_PER_GPU)[0]


def _fgd() -> Policy:
    return FGD(WorkloadHistogram(UNITS_PER_GPU))


FACTORIES: Mapping[str, Callable[[], Policy]] = MappingProxyType(
    {
        "fracgpu": _fracgpu,
        "fgd": _fgd,
        "binpack": BestFit,
        "spread": Spread,
        "topology": TopologyQuality,
    }
)
DEFAULT_POLICIES = "fracgpu"


class PolicyConfigError(ValueError):
    """A policy list that names an unknown policy or has a bad weight."""


def parse_policies(text: str, factories: Mapping[str, Callable[[], Policy]] = FACTORIES) -> tuple[Weighted, ...]:
    """'binpack=1,topology=0.5' -> weighted policies, in the given order (the first with a GPU
    choice decides the GPUs). A name without '=w' has weight 1."""
    out: list[Weighted] = []
    seen: set[str] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, weight_text = item.partition("=")
        name = name.strip()
        if name not in factories:
            raise PolicyConfigError(f"unknown policy {name!r}; known: {', '.join(sorted(factories))}")
        if name in seen:
            raise PolicyConfigError(f"policy {name!r} is listed twice")
        seen.add(name)
        try:
            weight = float(weight_text) if sep else 1.0
        except ValueError:
            raise PolicyConfigError(f"policy {name}: weight {weight_text!r} is not a number") from None
        if not weight > 0 or weight == float("inf"):
            raise PolicyConfigError(f"policy {name}: weight must be a positive number, got {weight_text!r}")
        out.append(Weighted(factories[name](), weight))
    if not out:
        raise PolicyConfigError("the policy list is empty")
    return tuple(out)


def workload_histograms(policies: Iterable[Weighted]) -> tuple[WorkloadHistogram, ...]:
    """The rolling histograms the policies follow (each once), to be fed with every placed shape."""
    out: list[WorkloadHistogram] = []
    for w in policies:
        p = w.policy
        h = p.fgd.histogram if isinstance(p, PatternPlanner) else p.histogram if isinstance(p, FGD) else None
        if h is not None and all(h is not o for o in out):
            out.append(h)
    return tuple(out)

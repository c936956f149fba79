"""Ranking policies by name, and weighted policy lists from a config string ("binpack=1,topology=0.5").

One place that maps names to `Policy` objects, so the extender, the simulator and their configs
share the names. A policy module adds itself by adding a factory to `FACTORIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from fracgpu.core.ranking import BestFit, Policy, Spread, TopologyQuality, Weighted

FACTORIES: Mapping[str, Callable[[], Policy]] = MappingProxyType(
    {
        "binpack": BestFit,
        "spread": Spread,
        "topology": TopologyQuality,
    }
)
DEFAULT_POLICIES = "binpack=1,topology=0.5"


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

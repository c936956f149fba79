"""The rolling workload histogram and the live (histogram-following) default policy."""

from __future__ import annotations

from fracgpu.core.fragmentation import TaskShape
from fracgpu.core.policies import live_default
from fracgpu.core.policies.fracgpu import PatternPlanner
from fracgpu.core.policies.paper import FGD
from fracgpu.core.workload import OPENB_PRIOR, WorkloadHistogram, prior_shapes, shape_of


def test_prior_in_vgpu_core_units() -> None:
    shapes = dict(prior_shapes(100))
    # the most common openb task: 3152m CPU, 810 milli-GPU -> 81 vgpu-core
    assert shapes[TaskShape(3152, 81, 1)] == 1047.0
    assert len(shapes) == len(OPENB_PRIOR)


def test_observations_take_over_from_the_prior() -> None:
    h = WorkloadHistogram(100, half_life=100.0, prior_weight=0.01, rebuild_every=50)
    new = TaskShape(2000, 25, 1)
    assert new not in h.mix().shapes and h.version == 0
    for _ in range(400):
        h.observe(new)
    # 400 fresh observations (half-life 100) outweigh a prior worth 1 % of 8,152 tasks
    assert h.version == 8
    assert h.mix().shapes[0] == new and h.mix().weights[0] > 0.5


def test_shape_of() -> None:
    assert shape_of(1000, 0, 100) == TaskShape(1000, 0, 0)
    assert shape_of(1000, 40, 100) == TaskShape(1000, 40, 1)
    assert shape_of(1000, 300, 100) == TaskShape(1000, 100, 3)


def test_live_default_follows_the_histogram() -> None:
    policy, h = live_default(100)
    assert policy.name == "fracgpu"
    assert isinstance(policy, PatternPlanner)
    fgd = policy.fgd
    assert isinstance(fgd, FGD)
    before = fgd.model
    h.rebuild_every = 1
    h.observe(TaskShape(1000, 30, 1))
    assert fgd.follow() and fgd.model is not before

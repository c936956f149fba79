"""The paper-protocol harness reproduces the authors' published Random and BestFit results.

Our seeds cannot replay Go's math/rand streams (docs/simulate.md), so one seed of ours is a
different draw than the authors' run with that seed. The check: the mean of our runs over two
seeds lies within 0.5 percentage points of the authors' mean over the same seeds and of their
ten-seed mean (seed-to-seed sd: Random 0.33, BestFit 0.14). Runs stop just past 100 % arrived.
"""

from __future__ import annotations

import statistics

import pytest

from fracgpu.core.policies import policy_list
from fracgpu.sim.published import published
from fracgpu.sim.replay import paper_sequence, run_paper
from fracgpu.sim.trace import load_nodes, load_tasks, resolve

SEEDS = (42, 44)


@pytest.mark.parametrize("policy", ["random", "best-fit"])
def test_published_means_reproduced_within_half_a_point(policy: str) -> None:
    nodes = load_nodes(resolve("gpu_node", "node"))
    tasks = load_tasks(resolve("default", "pod"))
    ours = []
    for seed in SEEDS:
        r = run_paper(nodes, tasks, policy, seed, policy_list, trace="default", upto=100.6)
        u = r.unallocated(100)
        assert u is not None
        ours.append(u)
    pub = published("default", policy)
    assert pub is not None
    same_seeds = statistics.fmean(pub.per_seed[s] for s in SEEDS)
    assert abs(statistics.fmean(ours) - same_seeds) < 0.5
    assert abs(statistics.fmean(ours) - pub.mean) < 0.5


def test_cluster_is_the_papers() -> None:
    nodes = load_nodes(resolve("gpu_node", "node"))
    assert (len(nodes), sum(n.gpus for n in nodes)) == (1213, 6212)


def test_inflation_reaches_but_does_not_pass_the_target() -> None:
    tasks = load_tasks(resolve("default", "pod"))
    capacity = 6212 * 1000
    seq = paper_sequence(tasks, 42, 1.3, capacity)
    total = sum(t.gpu_request for t in seq)
    biggest = max(t.gpu_request for t in tasks)
    assert 1.3 * capacity - biggest < total <= 1.3 * capacity
    assert seq[: len(tasks)] != sorted(tasks, key=lambda t: t.name)  # shuffled
    assert sorted(seq[: len(tasks)], key=lambda t: t.name) == sorted(tasks, key=lambda t: t.name)


def test_thinning_when_the_trace_is_above_the_target() -> None:
    tasks = load_tasks(resolve("multigpu50", "pod"))
    seq = paper_sequence(tasks, 42, 1.3, 6212 * 1000)
    assert len(seq) < len(tasks)
    assert sum(t.gpu_request for t in seq) <= 1.3 * 6212 * 1000

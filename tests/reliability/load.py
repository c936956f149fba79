"""A burst of pending share pods through the extender with kube-scheduler's call pattern.

kube-scheduler schedules one pod at a time (filter, then — with one node left — no prioritize) and
binds asynchronously, several binds in flight while the next pods are filtered. A failed bind sends
the pod back to the queue; a pod no node fits waits until the cluster changed (here: until a round
in which some other pod was placed). A filter `Error` (the nodes that fit wait for a pod whose
allocation the extender has not seen yet) fails the scheduling cycle: the pod goes to the backoff
queue and is filtered again after a short wait. Used by tests/reliability/test_load.py (small) and
bench/bench_load.py, bench/soak.py (full size).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from fracgpu.api.v1beta1.names import SCHEDULER_NAME
from fracgpu.extender.reasons import ReasonKind, reason_kind
from tests.reliability.harness import Audit

GI = 1024**3
GPU_MEMORY = 80 * GI
GPUS_PER_NODE = 8
# kube-scheduler's pod backoff is 1 s doubling to 10 s; scaled down, the same shape. The cap on
# retries only bounds a run whose extender never sees the allocation (then it is an error).
BACKOFF_S = 0.01
BACKOFF_CAP_S = 0.2
MAX_FILTER_RETRIES = 50
# (vgpu-core, vgpu-memory or None for the default share) and their weights: mostly shares, some whole GPUs
MIX: tuple[tuple[tuple[int, str | None], int], ...] = (
    ((10, "4Gi"), 3), ((20, None), 3), ((25, "10Gi"), 2), ((30, None), 2), ((50, "40Gi"), 2),
    ((50, None), 2), ((70, "16Gi"), 1), ((100, None), 1), ((200, None), 1),
)


def node_names(n: int) -> list[str]:
    return [f"node-{i:04d}" for i in range(n)]


def share_pods(n: int, seed: int, namespace: str = "load", prefix: str = "p") -> list[dict[str, Any]]:
    """`n` pending pods drawn from MIX, deterministic for a seed."""
    rng = random.Random(seed)
    choices = [m for m, _ in MIX]
    weights = [w for _, w in MIX]
    pods = []
    for i in range(n):
        cores, mem = rng.choices(choices, weights)[0]
        r: dict[str, str] = {"fracgpu.io/vgpu-core": str(cores), "cpu": "100m", "memory": "64Mi"}
        if mem is not None:
            r["fracgpu.io/vgpu-memory"] = mem
        pods.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{prefix}-{i:05d}", "namespace": namespace, "uid": f"uid-{prefix}-{i:05d}",
                         "creationTimestamp": "2026-11-23T00:00:00Z"},
            "spec": {"schedulerName": SCHEDULER_NAME,
                     "containers": [{"name": "main", "image": "x", "resources": {"requests": r, "limits": dict(r)}}]},
            "status": {"phase": "Pending"},
        })
    return pods


def demand(pod: dict[str, Any]) -> tuple[int, int | None]:
    r = pod["spec"]["containers"][0]["resources"]["requests"]
    mem = r.get("fracgpu.io/vgpu-memory")
    return int(r["fracgpu.io/vgpu-core"]), (int(mem.removesuffix("Gi")) * GI if mem else None)


@dataclass
class LoadReport:
    pods: int
    nodes: int
    placed: int = 0
    unplaced: list[str] = field(default_factory=list)
    filters: int = 0
    binds: int = 0
    bind_refusals: int = 0  # re-checked at bind and refused (raced with an in-flight bind): requeued
    filter_retries: int = 0  # filter Error "still allocating" (the watch had not shown the allocation): backed off
    rounds: int = 0
    wall_s: float = 0.0
    filter_ms: list[float] = field(default_factory=list)
    bind_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # non-200 answers or Error bodies that are not refusals
    reasons: Counter[str] = field(default_factory=Counter)  # why the pods left pending were refused, last time

    @staticmethod
    def pct(xs: list[float], q: float) -> float:
        if not xs:
            return 0.0
        s = sorted(xs)
        return s[min(len(s) - 1, int(q * len(s)))]

    def summary(self) -> dict[str, Any]:
        return {
            "pods": self.pods, "nodes": self.nodes, "placed": self.placed, "unplaced": len(self.unplaced),
            "filters": self.filters, "binds": self.binds, "bind_refusals_requeued": self.bind_refusals,
            "filter_retries": self.filter_retries,
            "rounds": self.rounds, "wall_s": round(self.wall_s, 3),
            "pods_per_s": round(self.placed / self.wall_s, 1) if self.wall_s else 0.0,
            "filter_ms_p50": round(self.pct(self.filter_ms, 0.5), 2),
            "filter_ms_p99": round(self.pct(self.filter_ms, 0.99), 2),
            "bind_ms_p50": round(self.pct(self.bind_ms, 0.5), 2),
            "bind_ms_p99": round(self.pct(self.bind_ms, 0.99), 2),
            "errors": len(self.errors),
            "unplaced_reasons": dict(self.reasons),
        }


async def burst(url: str, pods: list[dict[str, Any]], nodes: list[str], *, binds_in_flight: int = 8,
                max_rounds: int = 20, on_bound: Callable[[dict[str, Any], str], None] | None = None) -> LoadReport:
    """Schedule `pods` over `nodes` through /filter and /bind as kube-scheduler would.

    `on_bound(pod, node)` plays the node's side after a successful bind (the plugin marking the pod
    `allocated` once the kubelet admitted it); without it, pods stay `allocating` and the extender
    keeps confusable pods off their nodes, as it must."""
    last_reason: dict[str, str] = {}
    report = LoadReport(len(pods), len(nodes))
    started = time.perf_counter()
    queue: deque[dict[str, Any]] = deque(pods)
    unschedulable: list[dict[str, Any]] = []
    inflight: set[asyncio.Task[None]] = set()
    backing_off: set[asyncio.Task[None]] = set()
    retries: Counter[str] = Counter()
    progress = 0

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=binds_in_flight + 2)) as http:

        async def post(verb: str, body: dict[str, Any], took_ms: list[float]) -> tuple[int, Any]:
            """One extender call; its latency goes to `took_ms`."""
            t0 = time.perf_counter()
            async with http.post(f"{url}/{verb}", json=body) as r:
                out = await r.json()
                status = r.status
            took_ms.append((time.perf_counter() - t0) * 1000)
            return status, out

        async def bind(pod: dict[str, Any], node: str) -> None:
            nonlocal progress
            meta = pod["metadata"]
            body = {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}
            status, out = await post("bind", body, report.bind_ms)
            report.binds += 1
            if status != 200:
                report.errors.append(f"bind {meta['name']}: HTTP {status} {out}")
            elif out["Error"]:
                report.bind_refusals += 1
                queue.append(pod)  # kube-scheduler: back to the queue
            else:
                report.placed += 1
                progress += 1
                if on_bound is not None:
                    on_bound(pod, node)

        async def back_off(pod: dict[str, Any], tries: int) -> None:
            await asyncio.sleep(min(BACKOFF_CAP_S, BACKOFF_S * 2 ** (tries - 1)))
            queue.append(pod)

        while True:
            report.rounds += 1
            progress = 0
            while queue or inflight or backing_off:
                if not queue:
                    done, _ = await asyncio.wait(inflight | backing_off, return_when=asyncio.FIRST_COMPLETED)
                    inflight -= done
                    backing_off -= done
                    continue
                pod = queue.popleft()
                body = {"Pod": pod, "NodeNames": nodes, "Nodes": None}
                status, out = await post("filter", body, report.filter_ms)
                report.filters += 1
                name = pod["metadata"]["name"]
                if (status == 200 and isinstance(out.get("Error"), str)
                        and reason_kind(out["Error"]) == ReasonKind.STILL_ALLOCATING
                        and retries[name] < MAX_FILTER_RETRIES):
                    retries[name] += 1
                    report.filter_retries += 1
                    backing_off.add(asyncio.create_task(back_off(pod, retries[name])))
                    continue
                if status != 200 or out.get("Error"):
                    report.errors.append(f"filter {pod['metadata']['name']}: HTTP {status} {out}")
                    continue
                kept = out["NodeNames"] or []
                if not kept:
                    unschedulable.append(pod)
                    why = {**out["FailedNodes"], **out["FailedAndUnresolvableNodes"]}
                    last_reason[pod["metadata"]["name"]] = Counter(why.values()).most_common(1)[0][0] if why else ""
                    continue
                while len(inflight) >= binds_in_flight:
                    _, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                inflight.add(asyncio.create_task(bind(pod, kept[0])))
            if not unschedulable or not progress or report.rounds >= max_rounds:
                break
            queue.extend(unschedulable)  # the cluster changed: retry the pods that did not fit
            unschedulable = []
    report.unplaced = sorted(p["metadata"]["name"] for p in unschedulable)
    report.reasons = Counter(last_reason[n] for n in report.unplaced)
    report.wall_s = time.perf_counter() - started
    return report


def room_for(audit: Audit, gpus: dict[str, tuple[str, int]], pod: dict[str, Any]) -> str:
    """Independent of the extender: a GPU (or enough whole GPUs on one node) that the API server's
    reservations leave free for `pod`; "" when there is none. `gpus`: uuid -> (node, memory)."""
    used_c: dict[str, int] = {}
    used_m: dict[str, int] = {}
    for b in audit.bookings:
        for g in b.assignment.gpus:
            used_c[g.uuid] = used_c.get(g.uuid, 0) + g.cores
            used_m[g.uuid] = used_m.get(g.uuid, 0) + g.memory
    cores, mem = demand(pod)
    if cores > 100:
        free_whole: dict[str, int] = {}
        for u, (node, _) in gpus.items():
            if used_c.get(u, 0) == 0:
                free_whole[node] = free_whole.get(node, 0) + 1
        return next((n for n, k in free_whole.items() if k >= cores // 100), "")
    for u, (_, memory) in gpus.items():
        need = mem if mem is not None else memory * cores // 100
        if 100 - used_c.get(u, 0) >= cores and memory - used_m.get(u, 0) >= need:
            return u
    return ""

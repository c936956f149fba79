"""Soak: waves of share pods through the extender over the fake API server for a long time, and the
process' memory (RSS) over time. The extender's memory must stay flat: pods that ended are forgotten.

    python bench/soak.py                   # 30 minutes, waves of 400 pods over 40 nodes
    python bench/soak.py --minutes 3       # a short run

Each wave: create the pods, schedule them (filter + bind, binds in flight), mark them allocated as
the plugin would, end them (Succeeded) and delete them; then the extender must have forgotten them.
Between waves the fake API server forgets its event history and request log (compact, clear), so
that what grows is ours. Prints one JSON object: waves, pods, RSS first/last/max, and the slope of
RSS over the run after a warm-up (least squares, KiB per minute), plus the extender's cache sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fracgpu.api.v1beta1.names import ANN_PHASE, PHASE_ALLOCATED
from tests.extender.builders import node_obj
from tests.fakes.apiserver import FakeApiServer
from tests.poll import eventually
from tests.reliability.harness import LiveExtender, audit, heartbeat_off
from tests.reliability.load import GPUS_PER_NODE, burst, node_names, share_pods


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def slope_kib_per_min(samples: list[tuple[float, int]]) -> float:
    n = len(samples)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in samples) / n
    my = sum(r for _, r in samples) / n
    var = sum((t - mx) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return sum((t - mx) * (r - my) for t, r in samples) / var * 60.0


def wave(apiserver: FakeApiServer, ext: LiveExtender, names: list[str], n: int, seed: int) -> dict[str, Any]:
    pods = share_pods(n, seed, prefix=f"w{seed}")
    apiserver.seed(*pods)
    eventually(lambda: ext.scheduler.stats().pods == n, timeout_s=60)  # the last wave's pods are gone

    def allocated(pod: dict[str, Any], node: str) -> None:
        apiserver.patch_object("pods", pod["metadata"]["name"],
                               {"metadata": {"annotations": {ANN_PHASE: PHASE_ALLOCATED}}}, namespace="load")

    report = asyncio.run(burst(ext.url, pods, names, binds_in_flight=8, on_bound=allocated))
    problems = audit(apiserver).problems
    for p in pods:  # the pods end, then their objects go
        name = p["metadata"]["name"]
        apiserver.patch_object("pods", name, {"status": {"phase": "Succeeded"}}, namespace="load")
        apiserver.delete_object("pods", name, namespace="load")
    eventually(lambda: ext.scheduler.stats().pods == 0, timeout_s=60)
    return {"placed": report.placed, "problems": len(problems), "errors": len(report.errors),
            "filter_p99": report.pct(report.filter_ms, 0.99), "bind_p99": report.pct(report.bind_ms, 0.99)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--pods", type=int, default=400, help="pods per wave")
    p.add_argument("--nodes", type=int, default=40)
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the run left out of the slope")
    p.add_argument("--tracemalloc", action="store_true",
                   help="also report the 10 allocation sites that grew most after the warm-up (slower)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    samples: list[tuple[float, int]] = []
    totals = {"waves": 0, "pods": 0, "problems": 0, "errors": 0}
    worst_p99 = {"filter_ms": 0.0, "bind_ms": 0.0}
    if args.tracemalloc:
        tracemalloc.start(8)
    baseline: tracemalloc.Snapshot | None = None
    with FakeApiServer() as apiserver:
        names = node_names(args.nodes)
        apiserver.seed(*(node_obj(n, GPUS_PER_NODE) for n in names))
        with LiveExtender(apiserver, heartbeat_off()) as ext:
            start = time.monotonic()
            end = start + args.minutes * 60
            while time.monotonic() < end:
                w = wave(apiserver, ext, names, args.pods, totals["waves"])
                totals["waves"] += 1
                totals["pods"] += w["placed"]
                totals["problems"] += w["problems"]
                totals["errors"] += w["errors"]
                worst_p99["filter_ms"] = max(worst_p99["filter_ms"], w["filter_p99"])
                worst_p99["bind_ms"] = max(worst_p99["bind_ms"], w["bind_p99"])
                apiserver.compact()
                apiserver.clear_requests()
                gc.collect()
                samples.append((time.monotonic() - start, rss_kib()))
                if args.tracemalloc and baseline is None and time.monotonic() - start > args.warmup * args.minutes * 60:
                    baseline = tracemalloc.take_snapshot()
            stats = ext.scheduler.stats()
    cut = samples[int(len(samples) * args.warmup):]
    out = {
        **totals, "minutes": args.minutes, "pods_per_wave": args.pods, "nodes": args.nodes,
        "rss_kib_first": samples[0][1] if samples else 0, "rss_kib_after_warmup": cut[0][1] if cut else 0,
        "rss_kib_last": samples[-1][1] if samples else 0, "rss_kib_max": max((r for _, r in samples), default=0),
        "rss_slope_kib_per_min_after_warmup": round(slope_kib_per_min(cut), 1),
        "worst_wave_p99_ms": {k: round(v, 2) for k, v in worst_p99.items()},
        "cache_at_end": {"nodes": stats.nodes, "pods": stats.pods, "reservations": stats.reservations,
                         "assumed": stats.assumed},
    }
    if baseline is not None:
        diff = tracemalloc.take_snapshot().compare_to(baseline, "traceback")
        out["traced_python_kib_growth_after_warmup"] = round(sum(d.size_diff for d in diff) / 1024, 1)
        out["tracemalloc_growth_after_warmup"] = [
            {"kib": round(d.size_diff / 1024, 1), "count": d.count_diff,
             "where": [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in d.traceback][-4:]}
            for d in diff[:5]]
    print(json.dumps(out, indent=2))
    return 0 if totals["problems"] == 0 and totals["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

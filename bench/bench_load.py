"""Load benchmark: a burst of pending share pods through the extender over the in-process fake API
server, real HTTP, kube-scheduler's call pattern (filter, then bind with several binds in flight).

    python bench/bench_load.py                       # 2,000 pods over 200 nodes of 8 GPUs
    python bench/bench_load.py --pods 4000 --nodes 200 --in-flight 16

Prints one JSON object: placed, throughput, filter/bind latency p50/p99, and the independent audit
of the API server's `fracgpu.io/assigned` annotations (oversubscription problems: must be 0).
Figures go to docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fracgpu.api.v1beta1.names import ANN_PHASE, PHASE_ALLOCATED
from tests.fakes.apiserver import FakeApiServer
from tests.poll import eventually
from tests.reliability.harness import LiveExtender, audit, heartbeat_off
from tests.reliability.load import burst, room_for
from tests.reliability.test_load import inventory_of, seed_cluster


def mark_allocated(apiserver: FakeApiServer, pod: dict[str, Any]) -> None:
    meta = pod["metadata"]
    apiserver.patch_object("pods", meta["name"], {"metadata": {"annotations": {ANN_PHASE: PHASE_ALLOCATED}}},
                           namespace=meta["namespace"])


def run(pods: int, nodes: int, in_flight: int, seed: int) -> dict[str, Any]:
    with FakeApiServer() as apiserver:
        names, burst_pods = seed_cluster(apiserver, nodes, pods, seed)
        with LiveExtender(apiserver, heartbeat_off()) as ext:
            eventually(lambda: ext.scheduler.stats().pods == pods, timeout_s=120)
            report = asyncio.run(burst(ext.url, burst_pods, names, binds_in_flight=in_flight,
                                       on_bound=lambda pod, node: mark_allocated(apiserver, pod)))
            eventually(lambda: ext.scheduler.stats().assumed == 0, timeout_s=60)
        a = audit(apiserver)
        gpus = inventory_of(apiserver)
        left = [p for p in burst_pods if f"load/{p['metadata']['name']}" not in a.placed]
        wrongly_left = [p["metadata"]["name"] for p in left if room_for(a, gpus, p)]
        return {**report.summary(), "in_flight": in_flight, "audit_problems": len(a.problems),
                "audit_examples": a.problems[:5], "left_pending_with_room": len(wrongly_left),
                "gpus": len(gpus), "vgpu_core_booked": sum(g.cores for b in a.bookings for g in b.assignment.gpus)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=2000)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--in-flight", type=int, default=8, help="binds in flight (kube-scheduler binds asynchronously)")
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = run(args.pods, args.nodes, args.in_flight, args.seed)
    print(json.dumps(out, indent=2))
    return 0 if out["audit_problems"] == 0 and out["left_pending_with_room"] == 0 and out["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

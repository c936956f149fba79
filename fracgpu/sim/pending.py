"""`fracgpu simulate --snapshot FILE [--pending]`: the snapshot's picture, or where its pending pods would fit.

The snapshot is read into the same view `fracgpu inspect` shows (`fracgpu.inspect.view`); pending pods are
ranked by the same `ranking.rank` the extender uses, with the extender's tie-break (crc32 of the node name),
so the what-if answer is the extender's answer for the same cache.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from fracgpu.core.cluster import GpuUse, PodUse
from fracgpu.core.fit import FitOptions
from fracgpu.core.nodematch import nodes_unavailable
from fracgpu.core.policies import POLICIES, live_default, make_policy
from fracgpu.core.quota import PodKey
from fracgpu.core.ranking import Weighted, rank
from fracgpu.core.workload import WorkloadHistogram, shape_of
from fracgpu.inspect.view import World, build_world, charged_ledger, inspect_doc, render_inspect
from fracgpu.kube.snapshot import SnapshotError, read_snapshot


def pending_whatif(world: World, policy: str) -> list[dict[str, Any]]:
    """Place the pending GPU pods one by one (priority, then age), each seeing the ones before it.

    A pod that fits a node but not its tenant's quota is refused with the extender's quota text
    (`QuotaLedger.fits`). The extender's queue order within a tenant (--queue-head-wait) is not
    modelled: every pod is tried in turn."""
    ledger = charged_ledger(world)
    if policy == "fracgpu":
        live, histogram = live_default(world.state.units_per_gpu)
    else:
        histogram = WorkloadHistogram(world.state.units_per_gpu)
        live = make_policy(policy, histogram)
    out: list[dict[str, Any]] = []
    for rec in world.pending:
        if rec.request is None:
            out.append({"pod": rec.key, "fits": False, "reason": rec.request_error})
            continue
        req = rec.request
        histogram.observe(shape_of(req.cpu_milli, req.cores, world.state.units_per_gpu))
        r = rank(world.state, req, [Weighted(live)], opts=FitOptions())
        if not r.ranked:
            text = nodes_unavailable([*r.failed.values(), *r.unresolvable.values()])
            out.append({"pod": rec.key, "fits": False, "reason": text})
            continue
        top = r.ranked[0]
        uses = tuple(GpuUse(world.state.gpu_uuid(top.row, s), req.cores_per_gpu,
                            req.memory_on(int(world.state.total_memory[top.row, s]))) for s in top.gpus)
        tenant = world.tenants.tenant_of(rec.namespace)
        quota = ledger.try_reserve(PodKey(rec.namespace, rec.name), tenant, req.cores, sum(u.memory for u in uses))
        if not quota.ok:
            out.append({"pod": rec.key, "fits": False, "reason": quota.reason})
            continue
        world.state.add_pod(rec.key, PodUse(top.node, uses, req.cpu_milli, req.memory_bytes))
        spec = world.state.specs[top.row]
        assert spec is not None
        out.append({"pod": rec.key, "fits": True, "node": top.node, "gpus": [u.uuid for u in uses],
                    "gpu_indices": [spec.gpus[s].index for s in top.gpus], "cores": req.cores, "tenant": tenant})
    return out


def main_snapshot(path: str | None, pending: bool, policy: str, output: str, out: TextIO, err: TextIO) -> int:
    if not path:
        err.write("fracgpu simulate: --pending needs --snapshot FILE\n")
        return 2
    if policy not in POLICIES or policy == "random":
        err.write(f"fracgpu simulate: --snapshot takes one policy of {', '.join(POLICIES)} (not random)\n")
        return 2
    try:
        world = build_world(read_snapshot(path))
    except SnapshotError as e:
        err.write(f"fracgpu simulate: {e}\n")
        return 2
    if not pending:
        doc = inspect_doc(world)
        out.write(json.dumps(doc, indent=1) + "\n" if output == "json" else render_inspect(doc))
        return 0
    result = pending_whatif(world, policy)
    if output == "json":
        out.write(json.dumps({"policy": policy, "pending": result}, indent=1) + "\n")
        return 0
    if not result:
        out.write("no pending GPU pods in the snapshot\n")
    for r in result:
        if r["fits"]:
            which = ", ".join(str(i) for i in r["gpu_indices"])
            out.write(f"{r['pod']}: fits on {r['node']}, GPU{'s' if len(r['gpus']) > 1 else ''} {which}\n")
        else:
            out.write(f"{r['pod']}: does not fit: {r['reason']}\n")
    return 0

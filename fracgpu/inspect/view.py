"""A cluster read from a snapshot (a file, or a live cluster listed once): what `fracgpu inspect` shows, and
what `fracgpu simulate --snapshot FILE [--pending]` starts from (`fracgpu.sim.pending`).

The snapshot is a `kubectl get -o yaml` style List of Nodes (with fracgpu's inventory annotation),
Pods, Namespaces and TenantQuotas; objects are parsed by the core (`fracgpu.core.records`, the same
functions the extender uses), placed into a ClusterState, and pending pods are ranked by the same
`ranking.rank` the extender uses. The tie-break priority is the extender's rule (crc32 of the node
name), so the what-if answer is the extender's answer for the same cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.tenantquota import TenantQuota
from fracgpu.core.cluster import ClusterState, GpuUse, NodeSpec, PodUse
from fracgpu.core.fit import FitOptions
from fracgpu.core.quantity import format_bytes_human
from fracgpu.core.quota import PendingPod, PodKey, QuotaLedger, Usage, charge_of, queue_time
from fracgpu.core.ranking import rank
from fracgpu.core.records import (
    NODE_NO_INVENTORY,
    NodeRecord,
    PodRecord,
    SnapshotDoc,
    namespace_record,
    node_priority,
    node_record,
    pod_record,
)
from fracgpu.core.registry import DEFAULT_POLICIES, parse_policies
from fracgpu.core.tenant import SOURCE_NAMESPACE, SOURCE_TENANTQUOTA, Limits, NamespaceInfo, QuotaError, Tenants


@dataclass(slots=True)
class World:
    state: ClusterState
    nodes: dict[str, NodeRecord]
    pods: list[PodRecord]
    tenants: Tenants
    pending: list[PodRecord] = field(default_factory=list)
    dra_nodes: frozenset[str] = frozenset()  # GPU inventory read from ResourceSlices (docs/dra.md)


def build_world(doc: SnapshotDoc) -> World:
    state = ClusterState()
    nodes: dict[str, NodeRecord] = {}
    for obj in doc.nodes:
        nrec = node_record(obj)
        nodes[nrec.name] = nrec
        inventory = nrec.inventory.gpus if nrec.inventory is not None else ()
        unusable = nrec.unusable()
        if nrec.name in doc.dra_node_problems and unusable in ("", NODE_NO_INVENTORY):
            unusable = doc.dra_node_problems[nrec.name]
        state.upsert_node(NodeSpec(name=nrec.name, gpus=inventory, cpu_milli=nrec.cpu_milli,
                                   memory_bytes=nrec.memory_bytes, zone=nrec.zone, labels=nrec.labels,
                                   unusable=unusable, priority=node_priority(nrec.name)))
    infos = [NamespaceInfo(n.name, n.labels, n.annotations) for n in map(namespace_record, doc.namespaces)]
    quotas = []
    for q in doc.tenant_quotas:
        try:
            quotas.append(TenantQuota.from_dict(q))
        except InvalidDocument:
            continue  # a broken TenantQuota selects nothing here; the extender reports it in its status
    world = World(state, nodes, [], Tenants(infos, quotas), dra_nodes=doc.dra_nodes)
    for obj in doc.pods:
        rec = pod_record(obj)
        if rec.key in doc.dra_pod_problems:  # claims that have no vgpu-core equivalent: refused with the reason
            rec = replace(rec, request=None, request_error=doc.dra_pod_problems[rec.key])
        world.pods.append(rec)
        if rec.finished:
            continue
        if not rec.node:
            if rec.wants_gpu:
                world.pending.append(rec)
            continue
        gpus: tuple[GpuUse, ...] = ()
        if rec.assignment is not None and rec.assignment.node == rec.node:
            gpus = tuple(GpuUse(g.uuid, g.cores, g.memory) for g in rec.assignment.gpus)
        state.add_pod(rec.key, PodUse(rec.node, gpus, rec.cpu_milli, rec.memory_bytes))
    world.pending.sort(key=lambda p: (-p.priority, p.created, p.key))
    return world


# ---- inspect ------------------------------------------------------------------------------------
def inspect_doc(world: World) -> dict[str, Any]:
    s = world.state
    nodes = []
    for name in sorted(world.nodes):
        row = s.index[name]
        spec = s.specs[row]
        assert spec is not None
        pods_on = s.pods_on(name)
        gpus = []
        for i, g in enumerate(spec.gpus):
            holders = [k for k in pods_on if any(u.uuid == g.uuid for u in s.pods[k].gpus)]
            gpus.append({
                "index": g.index, "uuid": g.uuid, "model": g.model,
                "cores_allocated": int(100 - s.free_cores[row, i]), "cores_total": 100,
                "memory_allocated": int(s.total_memory[row, i] - s.free_memory[row, i]),
                "memory_total": int(s.total_memory[row, i]),
                "pods": holders, "healthy": g.healthy, "reason": g.reason,
            })
        nodes.append({"name": name, "usable": not spec.unusable, "reason": spec.unusable, "gpus": gpus})
        if name in world.dra_nodes:  # GPUs read from ResourceSlices; device-plugin nodes carry no source
            nodes[-1]["source"] = "dra"
    used: dict[str, list[int]] = {}
    for rec in world.pods:
        if rec.assignment is not None and rec.node and not rec.finished:
            tenant = rec.assignment.tenant or world.tenants.tenant_of(rec.namespace)  # charged as at bind
            cores, memory = charge_of(rec.assignment)
            acc = used.setdefault(tenant, [0, 0])
            acc[0] += cores
            acc[1] += memory
    pending = quota_queues(world)
    # Tenants with a quota of their own are listed even when idle: their hard limits are news too.
    configured = {t for t in world.tenants.known_tenants() if _has_own_quota(world.tenants.limits(t))}
    tenants = []
    for t in sorted(set(used) | set(pending) | configured):
        limits = world.tenants.limits(t)
        hard: dict[str, Any] = {"error": limits.message} if isinstance(limits, QuotaError) else {
            "vgpu-core": limits.cores, "vgpu-memory": limits.memory}
        u = used.get(t, [0, 0])
        tenants.append({"tenant": t, "used": {"vgpu-core": u[0], "vgpu-memory": u[1]}, "hard": hard,
                        "pending": len(pending.get(t, [])), "queue": pending.get(t, [])[:5]})
    return {"nodes": nodes, "tenants": tenants}


def charged_ledger(world: World) -> QuotaLedger:
    """What each tenant holds now: the bound pods' reservations, charged to the tenant recorded at bind."""
    ledger = QuotaLedger(world.tenants.limits)
    for rec in world.pods:
        if rec.assignment is not None and rec.node and not rec.finished:
            tenant = rec.assignment.tenant or world.tenants.tenant_of(rec.namespace)
            ledger.charge(PodKey(rec.namespace, rec.name), tenant, *charge_of(rec.assignment))
    return ledger


def quota_queues(world: World) -> dict[str, list[str]]:
    """Per tenant, the pending pods that wait for quota, in admission order: what the extender's quota
    ledger queues (its TenantQuota `status.queue`). A pod that waits for a node, not for quota, is not
    in it. As in the extender's filter, a pod is checked against its tenant's quota (and queue order)
    with the VRAM it would get on the node the ranking picks, so a pod that names no vgpu-memory and
    fits no node waits for capacity first."""
    ledger = charged_ledger(world)
    policies = parse_policies(DEFAULT_POLICIES)
    opts = FitOptions(check_host=False)  # the extender's: kube-scheduler checked CPU/RAM before
    fits: dict[PodKey, bool] = {}
    for rec in world.pending:  # priority, then age: the ledger's admission order
        req = rec.request
        if req is None:
            continue
        key = PodKey(rec.namespace, rec.name)
        ranked = rank(world.state, req, policies, opts=opts, limit=1).ranked
        fits[key] = bool(ranked)
        memory = req.memory
        if memory is None and ranked:
            memory = req.memory_on(int(world.state.total_memory[ranked[0].row, ranked[0].gpus[0]]))
        if memory is None:
            continue
        ask = PendingPod(key, world.tenants.tenant_of(rec.namespace), Usage.for_pod(req.cores, memory),
                         rec.priority, queue_time(rec.created))
        ledger.admit(ask, 0.0, lambda k: fits.get(k, False))
    return {t: [str(p.key) for p in ledger.queue(t)] for t in ledger.tenants() if ledger.queue(t)}


def _has_own_quota(limits: Limits | QuotaError) -> bool:
    """A TenantQuota or namespace annotations set it (or tried to), not just the cluster default."""
    own = (SOURCE_TENANTQUOTA, SOURCE_NAMESPACE)
    return isinstance(limits, QuotaError) or limits.memory_source.startswith(own) or limits.cores_source.startswith(own)


def _mem(x: int | None) -> str:
    return "-" if x is None else format_bytes_human(x)


def render_inspect(doc: Mapping[str, Any]) -> str:
    lines = [f"{'NODE':<20} {'GPU':>3} {'MODEL':<16} {'CORES':>9} {'VRAM':>17} {'HEALTH':<10} PODS"]
    for n in doc["nodes"]:
        shown = n["name"] + (" (dra)" if n.get("source") == "dra" else "")
        if not n["gpus"]:
            why = n["reason"] or "no GPUs"
            lines.append(f"{shown:<20} {'-':>3} {'-':<16} {'-':>9} {'-':>17} {'-':<10} ({why})")
        for g in n["gpus"]:
            health = "ok" if g["healthy"] else "unhealthy"
            if not n["usable"]:
                health += "*"
            lines.append(f"{shown:<20} {g['index']:>3} {g['model']:<16} "
                         f"{g['cores_allocated']:>4}/{g['cores_total']:<4} "
                         f"{_mem(g['memory_allocated']):>8}/{_mem(g['memory_total']):<8} {health:<10} "
                         f"{', '.join(g['pods']) or '-'}")
    unusable = [n for n in doc["nodes"] if not n["usable"]]
    for n in unusable:
        lines.append(f"* {n['name']}: {n['reason']}")
    lines += ["", f"{'TENANT':<24} {'USED CORES':>10} {'HARD':>6} {'USED VRAM':>10} {'HARD':>8} {'PENDING':>7} QUEUE"]
    for t in doc["tenants"]:
        hard = t["hard"]
        hc = "err" if "error" in hard else ("-" if hard["vgpu-core"] is None else str(hard["vgpu-core"]))
        hm = "err" if "error" in hard else _mem(hard["vgpu-memory"])
        lines.append(f"{t['tenant']:<24} {t['used']['vgpu-core']:>10} {hc:>6} {_mem(t['used']['vgpu-memory']):>10} "
                     f"{hm:>8} {t['pending']:>7} {', '.join(t['queue']) or '-'}")
    return "\n".join(lines) + "\n"

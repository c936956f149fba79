"""The decision for one pod over candidate nodes, in named steps (kube-scheduler's framework runs
small plugins in a fixed order the same way):

1. request      read the pod's GPU request (`read_request`): invalid, none, or what it asks;
2. held         a pod whose Binding's outcome is unknown may go only to the node it holds;
3. zone         the group's same / spread rule and the tenant's allowed zones, per node;
4. rank         the policies rank the nodes where the pod fits (core.ranking);
5. spread       policy spread keeps the fitting zones with the fewest group pods;
6. confusable   a node where a confusable pod is still allocating waits (core.confusable);
7. quota        (filter only) the tenant's quota and its queue: a lower-ranked pod does not
                overtake a waiting one that fits.

Lock held by the caller (the Scheduler); reads the store, changes only the quota queue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.core import confusable, zone
from fracgpu.core.fit import FitOptions
from fracgpu.core.nodematch import nodes_unavailable
from fracgpu.core.pod import PodObject
from fracgpu.core.quota import PendingPod, PodKey, Usage, queue_time
from fracgpu.core.ranking import Ranked, Ranking, rank
from fracgpu.core.registry import parse_policies, workload_histograms
from fracgpu.core.request import GpuRequest, RequestError, parse_pod_request
from fracgpu.core.workload import shape_of
from fracgpu.extender.config import SchedulerConfig
from fracgpu.extender.store import Store

UNKNOWN_NODE = "node is not in the fracgpu extender's cache yet"
NOT_READY = "the fracgpu extender's cache is not synced yet"
NO_GPU_REQUEST = "the pod asks for no fracgpu.io/vgpu-core"
RETRY_ALLOCATING = "waiting for a pod still allocating"


def reason_already_reserved(key: str, node: str) -> str:
    return f"pod {key} already holds a reservation on node {node}"


def reason_retry_allocating(failed: Mapping[str, str], unresolvable: Mapping[str, str]) -> str:
    """The filter's Error when the only nodes that fit wait for a confusable pod to be allocated:
    every node's reason, grouped as kube-scheduler groups failed nodes, so the event reads the same."""
    return f"{RETRY_ALLOCATING}: {nodes_unavailable([*failed.values(), *unresolvable.values()])}"


def _empty() -> Ranking:
    return Ranking([], {}, {}, [])


@dataclass(slots=True)
class Decision:
    """What the steps found for one pod: the ranking with every refusal filled in, the nodes kept,
    and a pod-level error ("" when the request is valid)."""

    ranking: Ranking
    kept: list[Ranked]
    error: str = ""
    req: GpuRequest | None = None
    # nodes where the pod fits but that were refused only because a confusable pod is still allocating
    waiting: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Ask:
    """The pod as the steps after `request` see it."""

    pod: PodObject
    req: GpuRequest

    @property
    def namespace(self) -> str:
        return self.pod.namespace or "default"

    @property
    def name(self) -> str:
        return self.pod.name

    @property
    def uid(self) -> str:
        return self.pod.uid

    @property
    def created(self) -> str:
        return self.pod.created

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def read_request(pod: PodObject) -> Ask | Decision:
    """Step 1: the pod's request, or the Decision that ends here (invalid, or no GPU asked)."""
    try:
        req = parse_pod_request(pod)
    except RequestError as e:
        return Decision(_empty(), [], f"invalid GPU request: {e}")
    if req is None:
        return Decision(_empty(), [], NO_GPU_REQUEST)
    return Ask(pod, req)


class Workload:
    """The configured policies and the rolling workload histograms the fragmentation-aware ones
    follow: fed with every reservation that enters the cache (our binds, and bound pods seen by
    list/watch), once."""

    def __init__(self, policies: str) -> None:
        self.policies = parse_policies(policies)
        self.histograms = workload_histograms(self.policies)
        self.observed = 0

    def observe(self, cpu_milli: int, a: Assignment, units_per_gpu: int) -> None:
        if not self.histograms:
            return
        shape = shape_of(cpu_milli, sum(g.cores for g in a.gpus), units_per_gpu)
        for h in self.histograms:
            h.observe(shape)
        self.observed += 1


class Decider:
    def __init__(self, config: SchedulerConfig, store: Store, workload: Workload) -> None:
        self.config = config
        self.store = store
        self.workload = workload
        self.opts = FitOptions(check_host=config.check_host, max_pods_per_gpu=config.max_pods_per_gpu)
        self._fits_cache: dict[str, tuple[int, bool]] = {}

    def decide(self, ask: Ask, names: Sequence[str], want: int, now: float, *, admit: bool = False) -> Decision:
        """Rank `names` for the pod and keep the best `want` that pass the zone and confusable rules;
        with `admit`, the tenant's quota and queue order too (a refused pod joins its tenant's queue)."""
        held = self.step_held(ask, names)
        if held is not None:
            return held
        tenant = self.store.book.tenants().tenant_of(ask.namespace)
        rule = self.zone_rule(ask, tenant)
        candidates, zone_refused = self.step_zone(rule, names)
        ranking = self.step_rank(ask.req, candidates, rule, want)
        ranking.unresolvable.update(zone_refused)
        ranked = self.step_spread(rule, ranking)
        kept, waiting = self.step_confusable(ask, ranking, ranked, want, now)
        if admit:
            refused = self.step_quota(ask, tenant, kept, now)
            if refused:
                return Decision(Ranking([], {}, {n: refused for n in names}, []), [])
        return Decision(ranking, kept, req=ask.req, waiting=waiting)

    def step_held(self, ask: Ask, names: Sequence[str]) -> Decision | None:
        """Step 2: the pod holds a reservation whose Binding's outcome is unknown (kube-scheduler
        retries after our Error): only that node, where the bind re-sends the very same Binding."""
        hold = self.store.holds.get(ask.key)
        if hold is None or hold.assumed_at is None or (hold.uid and ask.uid and ask.uid != hold.uid):
            return None
        row = self.store.state.index.get(hold.node)
        reason = reason_already_reserved(ask.key, hold.node)
        refused = {n: reason for n in names if n != hold.node}
        kept = [Ranked(hold.node, row, 0.0, ())] if row is not None and hold.node in names else []
        return Decision(Ranking([], {}, refused, []), kept)

    def zone_rule(self, ask: Ask, tenant: str) -> zone.ZoneRule:
        store, req = self.store, ask.req
        members: list[zone.GroupMember] = []
        if req.group:
            for other in store.groups.members(ask.namespace, req.group):
                rec = store.pods.get(other)
                if rec is None or not rec.node or other == ask.key or rec.request is None:
                    continue
                members.append(zone.GroupMember(other, rec.created, rec.request.zone_policy, store.zone_of(rec.node)))
        return zone.zone_rule(ask.key, ask.created, req.zone_policy, req.group, members, tenant=tenant,
                              allowed_zones=store.book.tenants().allowed_zones(tenant))

    def step_zone(self, rule: zone.ZoneRule, names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Step 3: the candidates the static zone rules allow, and why the others are refused."""
        if not rule.active:
            return list(names), {}
        candidates: list[str] = []
        refused: dict[str, str] = {}
        for n in names:
            rec = self.store.nodes.get(n)
            reason = zone.check_static(rule, rec.zone) if rec is not None else ""
            if reason:
                refused[n] = reason
            else:
                candidates.append(n)
        return candidates, refused

    def step_rank(self, req: GpuRequest, candidates: Sequence[str], rule: zone.ZoneRule, want: int) -> Ranking:
        """Step 4: the policies' ranking of the candidates where the pod fits (unknown names apart).
        Policy spread needs every fitting node; else the best `want` and one more per node with a
        pod allocating (the confusable step may refuse those)."""
        limit = None if rule.counts is not None else want + len(self.store.allocating)
        rows, unknown = self.store.rows_of(candidates)
        ranking = rank(self.store.state, req, self.workload.policies, opts=self.opts, limit=limit, rows=rows)
        ranking.unknown = unknown
        return ranking

    def step_spread(self, rule: zone.ZoneRule, ranking: Ranking) -> list[Ranked]:
        """Step 5: under policy spread, only the fitting zones holding the fewest group pods."""
        ranked = ranking.ranked
        zone_of = self.store.zone_of
        zones_ok = zone.spread_zones(rule, (zone_of(r.node) for r in ranked))
        if zones_ok is None:
            return ranked
        keep: list[Ranked] = []
        for r in ranked:
            if zone_of(r.node) in zones_ok:
                keep.append(r)
            else:
                ranking.unresolvable[r.node] = zone.reason_spread(rule)
        return keep

    def step_confusable(self, ask: Ask, ranking: Ranking, ranked: list[Ranked], want: int, now: float
                   ) -> tuple[list[Ranked], list[str]]:
        """Step 6: the best `want` nodes where no confusable pod is still allocating, and the nodes
        that would fit but wait for one."""
        kept: list[Ranked] = []
        waiting: list[str] = []
        counts = frozenset(c.cores for c in ask.req.containers if c.cores > 0)
        for r in ranked:
            if len(kept) >= want:
                break
            if self.store.allocating.on(r.node) and self._confused(ask, r, counts, now):
                ranking.unresolvable[r.node] = confusable.reason_confusable(counts)
                waiting.append(r.node)
                continue
            kept.append(r)
        return kept, waiting

    def _confused(self, ask: Ask, r: Ranked, counts: frozenset[int], now: float) -> bool:
        spec = self.store.state.specs[r.row]
        assert spec is not None
        gpus = tuple(sorted((spec.gpus[s].uuid, ask.req.memory_on(spec.gpus[s].memory)) for s in r.gpus))
        mine = confusable.AllocatingPod(ask.key, gpus, counts, now)
        others = self.store.allocating.on(r.node).values()
        return confusable.blocker(mine, others, now, self.config.stuck_allocating_s) is not None

    def step_quota(self, ask: Ask, tenant: str, kept: list[Ranked], now: float) -> str:
        """Step 7: why the tenant's quota or queue holds the pod back ("" = admitted). The VRAM it
        asks is that of the best node kept when the pod leaves vgpu-memory unset."""
        req = ask.req
        mem = req.memory
        if mem is None and kept:
            spec = self.store.state.specs[kept[0].row]
            assert spec is not None
            mem = req.memory_on(spec.gpus[kept[0].gpus[0]].memory)
        if mem is None:
            return ""
        pending = PendingPod(
            PodKey(ask.namespace, ask.name), tenant, Usage.for_pod(req.cores, mem), ask.pod.priority,
            queue_time(ask.created),
        )
        out = self.store.book.ledger.admit(pending, now, self.fits_somewhere)
        return "" if out.ok else out.reason

    def fits_somewhere(self, pk: PodKey) -> bool:
        """Does a queued pod fit some node now? Cached per cluster-state version."""
        key = str(pk)
        state = self.store.state
        hit = self._fits_cache.get(key)
        if hit is not None and hit[0] == state.version:
            return hit[1]
        rec = self.store.pods.get(key)
        ok = False
        if rec is not None and rec.request is not None and not rec.node:
            ok = bool(rank(state, rec.request, self.workload.policies, opts=self.opts, limit=1).ranked)
        if len(self._fits_cache) > 10_000:
            self._fits_cache.clear()
        self._fits_cache[key] = (state.version, ok)
        return ok

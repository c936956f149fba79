"""The quota ledger: charges, what-if fits, reservations, tenant queues, status helpers.

Worlds are small: a tenant's limits, the pods already charged, the queue; arithmetic in comments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fracgpu.api.v1beta1.assignment import Assignment, GpuShare
from fracgpu.api.v1beta1.tenantquota import Condition, QuotaAmounts, TenantQuotaStatus
from fracgpu.core import quota as q
from fracgpu.core import quotastatus as qs
from fracgpu.core.tenant import Limits, QuotaError

GI = 1024**3
A = "tq/team-a"
B = "ns/other"


def key(name: str, namespace: str = "ns-a") -> q.PodKey:
    return q.PodKey(namespace, name)


def lookup(limits: Mapping[str, Limits | QuotaError]) -> q.LimitsLookup:
    return lambda tenant: limits.get(tenant, Limits())


def ledger_with(
    limits: Mapping[str, Limits | QuotaError],
    charges: Iterable[tuple[str, str, int, int]] = (),
    config: q.QuotaConfig | None = None,
) -> q.QuotaLedger:
    """A ledger over `limits` with (pod, tenant, cores, memory) charged."""
    ledger = q.QuotaLedger(lookup(limits), config)
    for pod, tenant, cores, memory in charges:
        ledger.charge(key(pod), tenant, cores, memory)
    return ledger


TEAM_A = {A: Limits(memory=64 * GI, cores=400)}


# -- charges -----------------------------------------------------------------------------------


def test_usage_for_pod_charges_vram_per_gpu_used() -> None:
    assert q.Usage.for_pod(50, 8 * GI) == q.Usage(memory=8 * GI, cores=50)  # a share: one GPU
    assert q.Usage.for_pod(100, 80 * GI) == q.Usage(memory=80 * GI, cores=100)
    assert q.Usage.for_pod(300, 80 * GI) == q.Usage(memory=240 * GI, cores=300)  # 3 GPUs x 80Gi


def test_charge_of_assignment_sums_its_gpus() -> None:
    a = Assignment(
        node="n1",
        tenant=A,
        assigned_at="2026-01-01T00:00:00Z",
        gpus=(GpuShare("g0", 100, 80 * GI, ()), GpuShare("g1", 100, 80 * GI, ())),
        containers=(),
    )
    assert q.charge_of(a) == (200, 160 * GI)


def test_charge_and_release_are_idempotent() -> None:
    ledger = ledger_with(TEAM_A)
    assert ledger.charge(key("p1"), A, 50, 8 * GI) is True
    assert ledger.charge(key("p1"), A, 50, 8 * GI) is False  # same charge again: nothing changes
    assert ledger.used(A) == q.Usage(8 * GI, 50)
    assert ledger.charge(key("p1"), A, 100, 16 * GI) is True  # a changed charge replaces the old one
    assert ledger.used(A) == q.Usage(16 * GI, 100)
    assert ledger.charge(key("p1"), B, 100, 16 * GI) is True  # moved to another tenant
    assert (ledger.used(A), ledger.used(B)) == (q.Usage(), q.Usage(16 * GI, 100))
    assert ledger.charged(key("p1")) == (B, q.Usage(16 * GI, 100))
    assert ledger.release(key("p1")) is True
    assert ledger.release(key("p1")) is False  # twice: a no-op
    assert ledger.release(key("never")) is False
    assert ledger.used(B) == q.Usage()
    assert ledger.tenants() == ()


def test_negative_charge_is_a_bug() -> None:
    with pytest.raises(ValueError, match="negative"):
        ledger_with(TEAM_A).charge(key("p"), A, -1, 0)


# -- fits --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitCase:
    name: str
    limits: Limits | QuotaError
    charges: list[tuple[str, int, int]]  # (pod, cores, memory) of tenant A
    ask: tuple[int, int]  # (cores, memory)
    reason: str  # "" = fits
    pod: str | None = None


FITS = [
    FitCase("unlimited", Limits(), [("p1", 400, 640 * GI)], (100, 80 * GI), ""),
    # 56Gi + 8Gi = 64Gi <= 64Gi
    FitCase("exactly at the limit", Limits(64 * GI, 400), [("p1", 350, 56 * GI)], (50, 8 * GI), ""),
    # 60Gi + 8Gi = 68Gi > 64Gi
    FitCase(
        "memory over",
        Limits(64 * GI, 400),
        [("p1", 100, 60 * GI)],
        (50, 8 * GI),
        "tenant tq/team-a: vgpu-memory 60Gi of 64Gi used, pod asks 8Gi",
    ),
    # 350 + 100 = 450 > 400
    FitCase(
        "cores over",
        Limits(64 * GI, 400),
        [("p1", 350, 8 * GI)],
        (100, 8 * GI),
        "tenant tq/team-a: vgpu-core 350 of 400 used, pod asks 100",
    ),
    FitCase(
        "both over: memory first",
        Limits(64 * GI, 400),
        [("p1", 400, 64 * GI)],
        (1, 512 * 1024**2),
        "tenant tq/team-a: vgpu-memory 64Gi of 64Gi used, pod asks 512Mi; vgpu-core 400 of 400 used, pod asks 1",
    ),
    FitCase(
        "fractional amounts are rounded for people",
        Limits(memory=10 * GI),
        [("p1", 50, 9 * GI + GI // 2)],
        (50, GI),
        "tenant tq/team-a: vgpu-memory 9.5Gi of 10Gi used, pod asks 1Gi",
    ),
    FitCase(
        "a pod bigger than the whole quota",
        Limits(memory=64 * GI),
        [],
        (200, 160 * GI),
        "tenant tq/team-a: vgpu-memory 0 of 64Gi used, pod asks 160Gi",
    ),
    FitCase("zero quota refuses any VRAM", Limits(memory=0), [], (1, 1), "tenant tq/team-a: vgpu-memory 0 of 0 used, pod asks 1"),
    # repeated bind: p1's own 8Gi is not counted twice (56 - 8 + 8 = 56 <= 64)
    FitCase("own charge not counted twice", Limits(64 * GI), [("p0", 100, 48 * GI), ("p1", 50, 8 * GI)], (50, 8 * GI), "", "p1"),
    FitCase(
        "invalid quota refuses (fail closed)",
        QuotaError(A, "annotation fracgpu.io/vgpu-memory-quota on namespace x: not a quantity: 'lots'"),
        [],
        (1, 1),
        "tenant tq/team-a: quota unusable, annotation fracgpu.io/vgpu-memory-quota on namespace x: not a quantity: 'lots'",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", FITS, ids=lambda c: c.name)
def test_fits(case: FitCase) -> None:
    ledger = ledger_with({A: case.limits}, [(p, A, c, m) for p, c, m in case.charges])
    before = ledger.used(A)
    out = ledger.fits(A, *case.ask, pod=None if case.pod is None else key(case.pod))
    assert out == (q.Outcome(ok=False, reason=case.reason) if case.reason else q.OK)
    assert ledger.used(A) == before  # what-if changes nothing


def test_identical_causes_give_identical_strings() -> None:
    # fits takes no node: the reason cannot vary by node, and two pods with the same ask read the same
    ledger = ledger_with(TEAM_A, [("p1", A, 100, 60 * GI)])
    reasons = {ledger.fits(A, 50, 8 * GI, pod=key(f"new-{i}")).reason for i in range(3)}
    assert reasons == {"tenant tq/team-a: vgpu-memory 60Gi of 64Gi used, pod asks 8Gi"}


def test_other_tenants_are_unaffected() -> None:
    ledger = ledger_with({A: Limits(memory=8 * GI), B: Limits(memory=8 * GI)}, [("p1", A, 50, 8 * GI)])
    assert not ledger.fits(A, 10, GI).ok
    assert ledger.fits(B, 10, 8 * GI).ok


# -- try_reserve -------------------------------------------------------------------------------


def test_try_reserve_charges_and_dequeues() -> None:
    ledger = ledger_with(TEAM_A, [("p0", A, 100, 48 * GI)])
    ledger.enqueue(q.PendingPod(key("p1"), A, q.Usage(8 * GI, 50)))
    r = ledger.try_reserve(key("p1"), A, 50, 8 * GI)
    assert (r.ok, r.reason) == (True, "")
    assert ledger.used(A) == q.Usage(56 * GI, 150)  # 48 + 8, 100 + 50
    assert ledger.queue(A) == ()  # reserved pods leave the queue


def test_repeated_reserve_is_idempotent() -> None:
    ledger = ledger_with(TEAM_A)
    first = ledger.try_reserve(key("p1"), A, 50, 60 * GI)
    again = ledger.try_reserve(key("p1"), A, 50, 60 * GI)  # 60 - 60 + 60 = 60 <= 64: fits
    assert first.ok and again.ok
    assert ledger.used(A) == q.Usage(60 * GI, 50)


def test_refused_reserve_changes_nothing() -> None:
    ledger = ledger_with(TEAM_A, [("p0", A, 100, 60 * GI)])
    r = ledger.try_reserve(key("p1"), A, 50, 8 * GI)
    assert (r.ok, r.reason) == (False, "tenant tq/team-a: vgpu-memory 60Gi of 64Gi used, pod asks 8Gi")
    assert ledger.used(A) == q.Usage(60 * GI, 100)


def test_64_reserves_in_a_row_for_the_last_8gi_admit_one() -> None:
    # the extender serialises binds under its lock, so the ledger sees them one after the other; the
    # race itself is run over HTTP: tests/extender/test_quota.py::test_concurrent_binds_of_one_tenant_never_exceed_it
    ledger = ledger_with(TEAM_A, [("p0", A, 100, 56 * GI)])  # 64 - 56 = 8Gi left
    results = [ledger.try_reserve(key(f"racer-{i}"), A, 10, 8 * GI) for i in range(64)]
    assert sum(r.ok for r in results) == 1
    assert ledger.used(A) == q.Usage(64 * GI, 110)
    assert {r.reason for r in results if not r.ok} == {"tenant tq/team-a: vgpu-memory 64Gi of 64Gi used, pod asks 8Gi"}


# -- the tenant queue --------------------------------------------------------------------------


def pending(
    name: str, prio: int = 0, created: float = 0.0, gi: int = 8, tenant: str = A, ns: str = "ns-a"
) -> q.PendingPod:
    """A waiting pod asking 10 vgpu-core and `gi` GiB of VRAM."""
    return q.PendingPod(key(name, ns), tenant, q.Usage(gi * GI, 10), prio, created)


def test_queue_order_priority_then_creation_then_name() -> None:
    ledger = ledger_with(TEAM_A)
    for p in [
        pending("late", 0, created=30),
        pending("urgent", 10, created=50),
        pending("b", 0, created=20, ns="ns-b"),
        pending("a", 0, created=20, ns="ns-b"),
        pending("z", 0, created=20, ns="ns-a"),
    ]:
        ledger.enqueue(p)
    assert [str(p.key) for p in ledger.queue(A)] == ["ns-a/urgent", "ns-a/z", "ns-b/a", "ns-b/b", "ns-a/late"]


def test_enqueue_is_idempotent_and_replaces_a_changed_entry() -> None:
    ledger = ledger_with(TEAM_A)
    ledger.enqueue(pending("p1", 0))
    ledger.enqueue(pending("p1", 0))
    ledger.enqueue(pending("p2", 5))
    ledger.enqueue(pending("p1", 9))  # priority changed: re-ranked
    assert [p.key.name for p in ledger.queue(A)] == ["p1", "p2"]
    assert ledger.dequeue(key("p1")) is True
    assert ledger.dequeue(key("p1")) is False
    assert [p.key.name for p in ledger.queue(A)] == ["p2"]


def fits_only(*names: str) -> Callable[[q.PodKey], bool]:
    """fits_somewhere for a cluster where only these pods would find a node now."""
    return lambda k: k.name in names


@dataclass(frozen=True)
class QueueCase:
    name: str
    used_gi: int  # tenant A already holds this much of its 64Gi
    queue: list[q.PendingPod]
    pod: q.PendingPod
    placeable: tuple[str, ...]  # queued pods that fit some node now
    reason: str  # "" = admissible
    config: q.QuotaConfig = field(default_factory=q.QuotaConfig)


QUEUE = [
    QueueCase("empty queue", 56, [], pending("p", gi=8), (), ""),
    # head asks 8Gi, 56 + 8 = 64 fits and it has a node: p (8Gi) would take its quota
    QueueCase(
        "a higher pod that fits quota and a node holds p back",
        56,
        [pending("head", prio=10, gi=8)],
        pending("p", gi=8),
        ("head",),
        "waiting behind ns-a/head (priority 10) in tenant tq/team-a's queue",
    ),
    QueueCase("the head has no node: p goes", 56, [pending("head", prio=10)], pending("p"), (), ""),
    # head asks 16Gi: 56 + 16 = 72 > 64, it does not fit quota, so it holds nobody back
    QueueCase("the head does not fit quota: p goes", 56, [pending("head", prio=10, gi=16)], pending("p", gi=8), ("head",), ""),
    # 40 + 8 (head) + 8 (p) = 56 <= 64: room for both, no overtaking
    QueueCase("room for both", 40, [pending("head", prio=10)], pending("p"), ("head",), ""),
    # 40 + 8 + 8 = 56 held for two higher pods; p asks 16: 72 > 64
    QueueCase(
        "two higher pods: the first one is named",
        40,
        [pending("h1", prio=10), pending("h2", prio=5)],
        pending("p", gi=16),
        ("h1", "h2"),
        "waiting behind ns-a/h1 (priority 10) in tenant tq/team-a's queue",
    ),
    QueueCase("same priority, older goes first", 56, [pending("old", created=1)], pending("p", created=2), ("old",),
              "waiting behind ns-a/old (priority 0) in tenant tq/team-a's queue"),
    QueueCase("a lower-ranked queued pod never holds p back", 56, [pending("low", prio=-5)], pending("p"), ("low",), ""),
    QueueCase("p itself in the queue is not its own blocker", 56, [pending("p")], pending("p"), ("p",), ""),
    QueueCase("another tenant's queue never holds p back", 56, [pending("b-head", prio=100, tenant=B)], pending("p"),
              ("b-head",), ""),
    QueueCase("max_head_wait 0 turns the rule off", 56, [pending("head", prio=10)], pending("p"), ("head",), "",
              q.QuotaConfig(max_head_wait=0)),
]  # fmt: skip


@pytest.mark.parametrize("case", QUEUE, ids=lambda c: c.name)
def test_admissible(case: QueueCase) -> None:
    ledger = ledger_with(TEAM_A, [("running", A, 100, case.used_gi * GI)], case.config)
    for p in case.queue:
        ledger.enqueue(p)
    out = ledger.admissible(case.pod, now=100.0, fits_somewhere=fits_only(*case.placeable))
    assert out.reason == case.reason
    assert out.ok is (case.reason == "")


def test_an_unplaceable_head_blocks_at_most_max_head_wait() -> None:
    ledger = ledger_with(TEAM_A, [("running", A, 100, 56 * GI)], q.QuotaConfig(max_head_wait=60))
    ledger.enqueue(pending("head", prio=10))
    p = pending("p")
    fits = fits_only("head")  # the extender thinks head fits a node, but its binds keep failing
    assert not ledger.admissible(p, now=1000.0, fits_somewhere=fits).ok  # window opens at 1000
    assert not ledger.admissible(p, now=1059.0, fits_somewhere=fits).ok  # 59 s < 60 s
    assert ledger.admissible(p, now=1060.0, fits_somewhere=fits).ok  # 60 s: head no longer blocks


def test_the_window_restarts_after_the_head_stopped_fitting() -> None:
    ledger = ledger_with(TEAM_A, [("running", A, 100, 56 * GI)], q.QuotaConfig(max_head_wait=60))
    ledger.enqueue(pending("head", prio=10))
    p = pending("p")
    assert not ledger.admissible(p, now=0.0, fits_somewhere=fits_only("head")).ok  # window from 0
    assert ledger.admissible(p, now=30.0, fits_somewhere=fits_only()).ok  # head lost its node: closed
    assert not ledger.admissible(p, now=500.0, fits_somewhere=fits_only("head")).ok  # new window from 500
    assert ledger.admissible(p, now=560.0, fits_somewhere=fits_only("head")).ok


def test_returned_quota_admits_the_right_next_pod() -> None:
    # 64Gi, full: running 56Gi + r2 8Gi. Three pods wait: hi (prio 5), old, young (prio 0).
    ledger = ledger_with(TEAM_A, [("r1", A, 100, 56 * GI), ("r2", A, 10, 8 * GI)])
    everyone = fits_only("hi", "old", "young")
    waiting = [pending("young", created=20), pending("hi", prio=5, created=30), pending("old", created=10)]
    for p in waiting:
        assert not ledger.admit(p, now=0.0, fits_somewhere=everyone).ok  # 64 + 8 > 64: all queued
    assert [p.key.name for p in ledger.queue(A)] == ["hi", "old", "young"]
    ledger.release(key("r2"))  # 8Gi come back
    assert ledger.admit(waiting[0], now=1.0, fits_somewhere=everyone).reason == (
        "waiting behind ns-a/hi (priority 5) in tenant tq/team-a's queue"
    )
    assert ledger.admit(waiting[2], now=1.0, fits_somewhere=everyone).reason.startswith("waiting behind ns-a/hi")
    assert ledger.admit(waiting[1], now=1.0, fits_somewhere=everyone).ok
    assert ledger.try_reserve(key("hi"), A, 10, 8 * GI).ok  # bind: hi leaves the queue
    assert [p.key.name for p in ledger.queue(A)] == ["old", "young"]


def test_admit_checks_quota_first() -> None:
    ledger = ledger_with(TEAM_A, [("r1", A, 100, 60 * GI)])
    out = ledger.admit(pending("p"), now=0.0, fits_somewhere=fits_only())
    assert out.reason == "tenant tq/team-a: vgpu-memory 60Gi of 64Gi used, pod asks 8Gi"
    assert [p.key.name for p in ledger.queue(A)] == ["p"]


def test_invalid_quota_refuses_in_admissible_too() -> None:
    ledger = ledger_with({A: QuotaError(A, "bad")})
    assert ledger.admissible(pending("p"), 0.0, fits_only()).reason == "tenant tq/team-a: quota unusable, bad"


# -- status ------------------------------------------------------------------------------------


def test_status_snapshot() -> None:
    ledger = ledger_with(TEAM_A, [("r1", A, 150, 24 * GI)], q.QuotaConfig(status_queue_length=2))
    for p in [pending("w3", created=3), pending("w1", created=1), pending("w2", created=2)]:
        ledger.enqueue(p)
    snap = ledger.summary(A)
    assert (snap.used, snap.pending, snap.queue) == (q.Usage(24 * GI, 150), 3, (key("w1"), key("w2")))
    assert snap.limits == TEAM_A[A]
    status = ledger.status(A)
    assert status == TenantQuotaStatus(
        used=QuotaAmounts(memory="24Gi", cores="150"), pending=3, queue=("ns-a/w1", "ns-a/w2")
    )
    assert ledger.status("ns/idle") == TenantQuotaStatus()  # nothing used, nobody waiting
    assert ledger.tenants() == (A,)


def test_status_uses_exact_quantities() -> None:
    ledger = ledger_with(TEAM_A, [("r1", A, 1, 1536 * 1024**2)])  # 1.5Gi is 1536Mi exactly
    assert ledger.status(A).used == QuotaAmounts(memory="1536Mi", cores="1")


def cond(status: str, at: str, message: str = "m") -> Condition:
    return Condition("NamespaceConflict", status, "R", message, at)


def test_merge_conditions_keeps_transition_time_while_status_holds() -> None:
    old = (cond("True", "2026-01-01T00:00:00Z"),)
    same = qs.merge_conditions(old, (cond("True", "2026-05-05T00:00:00Z", "new text"),))
    assert same == (cond("True", "2026-01-01T00:00:00Z", "new text"),)
    flipped = qs.merge_conditions(old, (cond("False", "2026-05-05T00:00:00Z"),))
    assert flipped == (cond("False", "2026-05-05T00:00:00Z"),)


def test_status_changed_skips_no_op_writes() -> None:
    ledger = ledger_with(TEAM_A, [("r1", A, 150, 24 * GI)])
    conditions = (cond("False", "2026-01-01T00:00:00Z"),)
    written = ledger.status(A, conditions)
    assert qs.status_changed(None, written)
    # same numbers and, after merging, the same conditions: no write
    again = ledger.status(A, qs.merge_conditions(written.conditions, (cond("False", "2026-02-02T00:00:00Z"),)))
    assert not qs.status_changed(written, again)
    ledger.charge(key("r2"), A, 10, GI)
    assert qs.status_changed(written, ledger.status(A, conditions))


@pytest.mark.parametrize(
    ("last", "now", "delay"),
    [
        (None, 5.0, 0.0),  # never written
        (100.0, 100.0, 10.0),  # just written: wait the whole interval
        (100.0, 104.0, 6.0),
        (100.0, 110.0, 0.0),
        (100.0, 250.0, 0.0),
        (100.0, 90.0, 0.0),  # clock went back: due
    ],
)
def test_status_write_delay(last: float | None, now: float, delay: float) -> None:
    assert qs.status_write_delay(last, now, 10.0) == delay


def test_should_write_status() -> None:
    a, b = TenantQuotaStatus(pending=1), TenantQuotaStatus(pending=2)
    assert qs.should_write_status(a, b, last_write=0.0, now=10.0, min_interval=10.0)
    assert not qs.should_write_status(a, b, last_write=5.0, now=10.0, min_interval=10.0)  # too soon
    assert not qs.should_write_status(a, a, last_write=None, now=10.0, min_interval=10.0)  # nothing changed


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="max_head_wait"):
        q.QuotaConfig(max_head_wait=-1)


def test_clone_is_independent() -> None:
    ledger = ledger_with(TEAM_A, [("r1", A, 10, GI)])
    ledger.enqueue(pending("w"))
    copy = ledger.clone()
    copy.charge(key("r2"), A, 10, GI)
    copy.dequeue(key("w"))
    assert ledger.used(A) == q.Usage(GI, 10)
    assert len(ledger.queue(A)) == 1


# -- a property: used is always the sum of the live charges -----------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["charge", "release", "reserve"]),
        st.integers(0, 5),  # pod
        st.sampled_from([A, B]),
        st.integers(0, 300),  # cores
        st.integers(0, 80),  # Gi
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_used_is_the_sum_of_charges(ops: list[tuple[str, int, str, int, int]]) -> None:
    ledger = ledger_with({A: Limits(memory=100 * GI, cores=500), B: Limits()})
    for op, pod, tenant, cores, gi in ops:
        k = key(f"p{pod}")
        if op == "charge":
            ledger.charge(k, tenant, cores, gi * GI)
        elif op == "release":
            ledger.release(k)
        else:
            ledger.try_reserve(k, tenant, cores, gi * GI)
        for t in (A, B):
            charges = [ledger.charged(key(f"p{i}")) for i in range(6)]
            expected = sum((u for c in charges if c is not None and c[0] == t for u in [c[1]]), q.Usage())
            assert ledger.used(t) == expected

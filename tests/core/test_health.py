"""core.health: samples -> checks -> per-GPU state machine -> node verdict. Table-driven, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core import health as h
from fracgpu.core.health import GpuHealth, GpuSample, HealthTracker
from fracgpu.core.healthconfig import HealthConfig, HealthConfigError, NodePolicy, Thresholds, UnknownXids, XidPolicy

OK = GpuSample(temperature_c=60, power_w=300, power_limit_w=400, ecc_uncorrectable=0, retired_pages=0)
HOT = GpuSample(temperature_c=95, power_w=300, power_limit_w=400)


# --- one sample on its own -------------------------------------------------------------------


@dataclass(frozen=True)
class CheckCase:
    name: str
    sample: GpuSample
    fatal: str = ""  # expected start of the fatal reason, "" = none
    bad: tuple[str, ...] = ()  # expected starts of the bad reasons, in order
    cfg: HealthConfig = field(default_factory=HealthConfig)


CHECK_CASES = [
    CheckCase("all within limits", OK),
    CheckCase("nothing read is not a problem", GpuSample()),
    CheckCase("temperature over 90C", HOT, bad=("temperature 95C > 90C",)),
    CheckCase("temperature at the limit is fine", GpuSample(temperature_c=90)),
    # 450 W > 1.10 x 400 W = 440 W
    CheckCase("power over 110% of the limit", GpuSample(power_w=450, power_limit_w=400), bad=("power 450W",)),
    CheckCase("power with unknown limit is not judged", GpuSample(power_w=900)),
    CheckCase("one uncorrectable ECC error", GpuSample(ecc_uncorrectable=1), bad=("uncorrectable ECC errors 1 > 0",)),
    CheckCase("correctable ECC errors are not judged", GpuSample(ecc_correctable=10_000)),
    CheckCase("61 retired pages", GpuSample(retired_pages=61), bad=("retired pages 61 > 60",)),
    CheckCase("retirement pending", GpuSample(retired_pages_pending=True), bad=(h.REASON_RETIRED_PENDING,)),
    CheckCase("row remap pending", GpuSample(remapped_rows_pending=True), bad=(h.REASON_REMAP_PENDING,)),
    CheckCase("row remap failed", GpuSample(remapped_rows_failed=True), bad=(h.REASON_REMAP_FAILED,)),
    CheckCase("memory full is not judged by default", GpuSample(memory_used=80, memory_total=80)),
    CheckCase(
        "memory over a set ratio",
        GpuSample(memory_used=79, memory_total=80),  # 98.75 % > 95 %
        bad=("memory used 99% > 95%",),
        cfg=HealthConfig(thresholds=Thresholds(max_memory_used_ratio=0.95)),
    ),
    CheckCase("temperature check off", HOT, cfg=HealthConfig(thresholds=Thresholds(max_temperature_c=None))),
    CheckCase("nvml read error", GpuSample(error="Unknown Error"), bad=("nvml error: Unknown Error",)),
    CheckCase("lost GPU is fatal", GpuSample(lost=True, error="GPU is lost"), fatal="GPU lost: GPU is lost"),
    CheckCase("fatal xid 79", GpuSample(xids=(79,)), fatal="xid 79 (GPU has fallen off the bus)"),
    CheckCase("fatal xids deduplicated", GpuSample(xids=(48, 48)), fatal="xid 48 (double-bit ECC error)"),
    CheckCase("application xids ignored", GpuSample(xids=(13, 31, 43, 45, 68, 109))),
    CheckCase("unknown xid is a bad check", GpuSample(xids=(999,)), bad=("xid 999",)),
    CheckCase(
        "unknown xid fatal by config",
        GpuSample(xids=(999,)),
        fatal="xid 999",
        cfg=HealthConfig(xids=XidPolicy(unknown=UnknownXids.FATAL)),
    ),
    CheckCase("xid checks disabled", GpuSample(xids=(79,)), cfg=HealthConfig(xids=XidPolicy(enabled=False))),
    CheckCase(
        "several breaches at once",
        GpuSample(temperature_c=99, remapped_rows_pending=True),
        bad=("temperature 99C", h.REASON_REMAP_PENDING),
    ),
]


@pytest.mark.parametrize("case", CHECK_CASES, ids=[c.name for c in CHECK_CASES])
def test_check_sample(case: CheckCase) -> None:
    check = h.check_sample(case.sample, case.cfg)
    assert check.fatal.startswith(case.fatal) and bool(check.fatal) == bool(case.fatal)
    assert len(check.bad) == len(case.bad)
    for got, want in zip(check.bad, case.bad, strict=True):
        assert got.startswith(want), (got, want)


# --- the state machine over a run of samples ------------------------------------------------


@dataclass(frozen=True)
class RunCase:
    name: str
    samples: str  # one letter per poll: g good, h hot (bad check), x fatal xid, l lost
    healthy: str  # expected health after each poll: + healthy, - unhealthy
    cfg: HealthConfig = field(default_factory=lambda: HealthConfig(recovery_checks=3, max_recovery_checks=100))


SAMPLES = {"g": OK, "h": HOT, "x": GpuSample(xids=(79,)), "l": GpuSample(lost=True), "a": GpuSample(xids=(13,))}

RUN_CASES = [
    RunCase("good stays healthy", "gggg", "++++"),
    RunCase("fatal xid acts at once", "gx", "+-"),
    RunCase("lost acts at once", "l", "-"),
    RunCase("application xid never acts", "aaaa", "++++"),
    RunCase("two bad checks are not enough", "hhg", "+++"),
    RunCase("three bad checks in a row", "hhh", "++-"),
    RunCase("a good check resets the bad run", "hhghhgh", "+++++++"),
    RunCase("bad checks configurable", "h", "-", HealthConfig(bad_checks=1, recovery_checks=3)),
    # recovery_checks=3: three good checks in a row bring it back
    RunCase("recovers after three good checks", "xggg", "---+"),
    RunCase("a bad check restarts the recovery run", "xgghggg", "------+"),
    # second failure within the flap window needs 2 x 3 = 6 good checks
    RunCase("second failure doubles the run", "xggg" + "xgggggg", "---+" + "------+"),
    # third failure: 4 x 3 = 12 good checks
    RunCase(
        "third failure doubles again",
        "xggg" + "xgggggg" + "x" + "g" * 12,
        "---+" + "------+" + "-" + "-" * 11 + "+",
    ),
]


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.name for c in RUN_CASES])
def test_state_machine(case: RunCase) -> None:
    assert len(case.samples) == len(case.healthy), "bad table row"
    state = GpuHealth()
    got = ""
    for t, letter in enumerate(case.samples):
        state = h.step(state, SAMPLES[letter], case.cfg, now=float(t))
        got += "+" if state.healthy else "-"
    assert got == case.healthy


def test_flap_window_forgets_old_failures() -> None:
    cfg = HealthConfig(recovery_checks=3, flap_window=100.0)
    state = GpuHealth()
    state = h.step(state, SAMPLES["x"], cfg, now=0.0)
    for t in (1.0, 2.0, 3.0):
        state = h.step(state, OK, cfg, now=t)
    assert state.healthy
    # the next failure is 1000 s later: outside the window, so the run is 3 again, not 6
    state = h.step(state, SAMPLES["x"], cfg, now=1000.0)
    assert state.required_good == 3 and state.failures == (1000.0,)


def test_reason_is_stable_while_unhealthy() -> None:
    cfg = HealthConfig()
    state = h.step(GpuHealth(), SAMPLES["x"], cfg, now=0.0)
    reason = state.reason
    state = h.step(state, HOT, cfg, now=2.0)
    state = h.step(state, GpuSample(xids=(48,)), cfg, now=4.0)
    assert state.reason == reason == "xid 79 (GPU has fallen off the bus)"
    assert state.last_problem.startswith("xid 48")


def test_threshold_reason_says_how_many_checks() -> None:
    state = GpuHealth()
    for t in range(3):
        state = h.step(state, HOT, HealthConfig(), now=float(t))
    assert state.reason == "temperature 95C > 90C (3 checks in a row)"
    assert state.changed_at == 2.0


def test_recovery_cap() -> None:
    cfg = HealthConfig(recovery_checks=10, max_recovery_checks=25)
    assert [h.required_good_checks(n, cfg) for n in (1, 2, 3, 4, 100)] == [10, 20, 25, 25, 25]


def test_tracker_reports_transitions_only() -> None:
    tracker = HealthTracker(HealthConfig(recovery_checks=2))
    assert tracker.observe("GPU-a", OK, now=0.0) is None
    change = tracker.observe("GPU-a", SAMPLES["x"], now=1.0)
    assert change is not None and change.uuid == "GPU-a" and not change.state.healthy
    assert tracker.observe("GPU-a", OK, now=2.0) is None
    change = tracker.observe("GPU-a", OK, now=3.0)
    assert change is not None and change.state.healthy
    snapshot = tracker.clone()
    tracker.forget("GPU-a")
    assert tracker.states() == {} and snapshot.state("GPU-a").healthy


# --- node verdict ---------------------------------------------------------------------------


def gpu(healthy: bool, reason: str = "") -> GpuInfo:
    return GpuInfo(
        uuid=f"GPU-{reason or 'ok'}", index=0, model="A100", memory=1, numa=0, healthy=healthy, reason=reason
    )


@dataclass(frozen=True)
class NodeCase:
    name: str
    node_ok: bool
    gpus: tuple[GpuInfo, ...]
    policy: NodePolicy
    broken: bool
    reason: str = ""


BAD1, BAD2, GOOD = gpu(False, "xid 79"), gpu(False, "xid 48"), gpu(True)
NODE_CASES = [
    NodeCase("all healthy", True, (GOOD, GOOD), NodePolicy.ALL_GPUS, False),
    NodeCase("one of two unhealthy: still serving", True, (BAD1, GOOD), NodePolicy.ALL_GPUS, False),
    NodeCase("every GPU unhealthy", True, (BAD1, BAD2), NodePolicy.ALL_GPUS, True, "every GPU unhealthy (2): xid 79"),
    NodeCase("any-gpu: one is enough", True, (GOOD, BAD2), NodePolicy.ANY_GPU, True, "GPU unhealthy (1/2): xid 48"),
    NodeCase("never: GPUs never break the node", True, (BAD1, BAD2), NodePolicy.NEVER, False),
    NodeCase("nvml unreachable", False, (GOOD,), NodePolicy.ALL_GPUS, True, "NVML unreachable"),
    NodeCase("nvml unreachable even with never", False, (), NodePolicy.NEVER, True, "NVML unreachable"),
    NodeCase("no GPUs visible", True, (), NodePolicy.ALL_GPUS, True, h.NODE_REASON_NO_GPUS),
]


@pytest.mark.parametrize("case", NODE_CASES, ids=[c.name for c in NODE_CASES])
def test_node_verdict(case: NodeCase) -> None:
    verdict = h.node_verdict(case.node_ok, "", case.gpus, case.policy)
    assert verdict == h.NodeVerdict(case.broken, case.reason)


def test_node_verdict_keeps_plugin_reason() -> None:
    assert h.node_verdict(False, "driver not loaded", (), NodePolicy.ALL_GPUS).reason == "driver not loaded"


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class XidCase:
    name: str
    disable: str
    fatal: str | None
    ignored: str | None
    expect: dict[int, str]  # xid -> classification


XID_CASES = [
    XidCase("defaults", "", None, None, {48: "fatal", 79: "fatal", 13: "ignore", 109: "ignore", 999: "bad-check"}),
    XidCase("DP_DISABLE_HEALTHCHECKS=all", "all", None, None, {79: "ignore", 999: "ignore"}),
    XidCase("DP_DISABLE_HEALTHCHECKS=xids", "xids", None, None, {48: "ignore"}),
    XidCase("extra ignored xids", "79, 94", None, None, {79: "ignore", 94: "ignore", 48: "fatal"}),
    XidCase("fatal list replaced", "", "1,2", None, {1: "fatal", 48: "bad-check"}),
    XidCase("ignored list emptied", "", None, "none", {13: "bad-check"}),
    XidCase("ignoring wins over fatal", "", "13", None, {13: "ignore"}),
]


@pytest.mark.parametrize("case", XID_CASES, ids=[c.name for c in XID_CASES])
def test_xid_policy_parse(case: XidCase) -> None:
    policy = XidPolicy.parse(case.disable, fatal=case.fatal, ignored=case.ignored)
    assert {x: policy.classify(x) for x in case.expect} == case.expect


@pytest.mark.parametrize("spec", ["48,abc", "-1", "4 8"])
def test_xid_list_rejects_garbage(spec: str) -> None:
    with pytest.raises(HealthConfigError, match="not an XID number"):
        XidPolicy.parse(fatal=spec)


"""`fracgpu extender --snapshot FILE`: the cache from a YAML List; binds update the snapshot in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fracgpu.extender.app import Deps, make_app
from fracgpu.extender.main import build_config, main, parse_args
from fracgpu.extender.metrics import ExtenderMetrics
from fracgpu.extender.scheduler import Scheduler, SchedulerConfig
from fracgpu.extender.snapshot import SnapshotBinder, SnapshotError, load_file
from fracgpu.startup import ConfigError
from tests.extender.builders import bind_args, filter_args, node_obj, pod_obj
from tests.extender.conftest import FakeClock


def write_snapshot(path: Path) -> Path:
    running = pod_obj("old", 100, None, node="n1", phase="Running")
    doc = {"apiVersion": "v1", "kind": "List",
           "items": [node_obj("n1", 1), node_obj("n2", 1), pod_obj("new", 60, None), running,
                     {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}]}
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_snapshot_serves_and_binds_in_memory(tmp_path: Path, aiohttp_client: object) -> None:
    scheduler = Scheduler(SchedulerConfig(heartbeat_stale_s=0), FakeClock(), wall=FakeClock())
    counts = load_file(scheduler, write_snapshot(tmp_path / "snap.yaml"))
    assert counts == {"nodes": 2, "pods": 2, "namespaces": 1, "tenantquotas": 0}
    binder = SnapshotBinder()
    client = await aiohttp_client(make_app(Deps(scheduler, binder, ExtenderMetrics(scheduler))))  # type: ignore[operator]
    pod = pod_obj("new", 60, None)
    out = await (await client.post("/filter", json=filter_args(pod, ["n1", "n2"]))).json()
    # "old" has no reservation annotation, so n1's GPU looks free: both fit; binpack ties -> fixed priority
    assert len(out["NodeNames"]) == 1
    node = out["NodeNames"][0]
    assert (await (await client.post("/bind", json=bind_args(pod, node))).json()) == {"Error": ""}
    assert binder.bindings[0][:3] == ("default", "new", node)
    stats = scheduler.stats()
    assert (stats.reservations, stats.assumed, stats.awaiting_watch) == (1, 0, 1)  # confirmed: no watch will come
    elsewhere = "n2" if node == "n1" else "n1"
    out = await (await client.post("/bind", json=bind_args(pod, elsewhere))).json()
    assert out == {"Error": f"pod default/new is already reserved on node {node}"}
    other = pod_obj("new", 60, None)
    out = await (await client.post("/filter", json=filter_args(other, [node]))).json()
    assert out["NodeNames"] == []


def test_bad_snapshot_file_is_a_clear_error(tmp_path: Path) -> None:
    scheduler = Scheduler(SchedulerConfig(heartbeat_stale_s=0), FakeClock(), wall=FakeClock())
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: List\nitems:\n- kind: Service\n  metadata: {name: s}\n")
    with pytest.raises(SnapshotError, match="kind"):
        load_file(scheduler, bad)
    with pytest.raises(SnapshotError, match="No such file"):
        load_file(scheduler, tmp_path / "missing.yaml")


def test_flags_env_fallback_and_validation() -> None:
    ns = parse_args(["--k", "3"], {"FRACGPU_EXTENDER_POLICIES": "spread", "FRACGPU_EXTENDER_K": "2"})
    cfg = build_config(ns)
    assert (cfg.k, cfg.policies) == (3, "spread")
    for argv, env in ((["--policies", "magic"], {}), ([], {"FRACGPU_EXTENDER_DEFAULT_MEMORY_QUOTA": "lots"})):
        with pytest.raises(ConfigError):
            build_config(parse_args(argv, env))
    for argv, env in ((["--k", "zero"], {}), (["--k", "0"], {}), ([], {"FRACGPU_EXTENDER_K": "0"})):
        with pytest.raises(SystemExit):  # argparse's own one-line error, from the flag's type
            parse_args(argv, env)


def test_main_refuses_bad_config_and_missing_snapshot(tmp_path: Path) -> None:
    assert main(["--policies", "magic"]) == 2
    assert main(["--snapshot", str(tmp_path / "missing.yaml")]) == 2

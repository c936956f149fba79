"""`fracgpu controller` as a process would run it: flags, reflectors over real watches, the real clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from fracgpu.controller import main as cmain
from fracgpu.core.healthconfig import NodePolicy
from fracgpu.startup import ConfigError
from tests.controller.conftest import NS, inventory
from tests.controller.test_self_heal import set_inventory, taints, terminating
from tests.fakes.apiserver import FakeApiServer
from tests.poll import wait_until as eventually


def test_flags_and_env() -> None:
    opts = cmain.parse_options(
        ["--taint-hold", "30", "--node-policy", "any-gpu", "--identity", "me", "--eviction-grace-period", "5"],
        {"FRACGPU_TAINT_KEY": "example.com/gpu-broken", "FRACGPU_MAX_EVICTIONS_PER_NODE": "3"},
    )
    cfg = opts.cfg
    assert (cfg.taint_hold, cfg.node_policy, cfg.taint_key) == (30.0, NodePolicy.ANY_GPU, "example.com/gpu-broken")
    assert (cfg.max_evictions_per_node, cfg.eviction_grace_period, opts.identity) == (3, 5, "me")
    # a flag beats the environment
    assert cmain.parse_options(["--taint-key", "a/b"], {"FRACGPU_TAINT_KEY": "c/d"}).cfg.taint_key == "a/b"


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--node-policy", "sometimes"], "--node-policy: invalid choice: 'sometimes' (choose from 'all-gpus', 'any-gpu'"),
     (["--renew-deadline", "20"], "renew deadline")],
)
def test_bad_flags_are_named(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises((ConfigError, SystemExit)) as refused:  # SystemExit: argparse refused it and said why
        cmain.parse_options(argv, {})
    assert message in str(refused.value) + capsys.readouterr().err


def test_main_reports_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cmain.main(["--renew-deadline", "20"]) == 2
    assert "renew deadline (20.0s) must be shorter than lease duration" in capsys.readouterr().err


def test_main_help() -> None:
    assert cmain.main(["--help"]) == 0


@pytest.fixture
def running_controller(one_node_two_gpus: FakeApiServer) -> Iterator[FakeApiServer]:
    """`serve()` in a thread against the server (watches, real clock), stopped and joined after the test."""
    opts = cmain.parse_options(["--identity", "ctl-1", "--metrics-port", "0", "--kube-api", one_node_two_gpus.url], {})
    opts = replace(opts, cfg=replace(opts.cfg, resync=0.2, retry_period=0.5, taint_hold=0.0), sync_timeout=10.0)
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(cmain.serve(opts, stop)), daemon=True)
    thread.start()
    try:
        yield one_node_two_gpus
    finally:
        stop.set()
        thread.join(10.0)
    assert result == [0]
    lease = one_node_two_gpus.get_object("leases", "fracgpu-controller", NS)
    assert lease is not None and not lease["spec"].get("holderIdentity")  # released on the way out


def test_serve_evicts_taints_and_releases_its_lease(running_controller: FakeApiServer) -> None:
    server = running_controller

    def holder() -> str | None:
        lease = server.get_object("leases", "fracgpu-controller", NS)
        return None if lease is None else lease["spec"].get("holderIdentity")

    assert eventually(lambda: holder() == "ctl-1")
    set_inventory(server, "n1", inventory(True, "xid 79"))
    assert eventually(lambda: terminating(server) == {"b", "c", "d"})
    set_inventory(server, "n1", inventory("xid 79", "xid 79"))
    assert eventually(lambda: len(taints(server, "n1")) == 1)
    assert eventually(lambda: terminating(server) == {"a", "b", "c", "d"})
    set_inventory(server, "n1", inventory(True, True))
    assert eventually(lambda: taints(server, "n1") == [])  # hold 0 s in this test

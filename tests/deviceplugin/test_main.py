"""`fracgpu device-plugin` as a process: flags, a clear error for bad config, clean SIGTERM shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fracgpu.api.v1beta1.names import RESOURCE_CORE
from fracgpu.deviceplugin.main import build, main, parser
from fracgpu.deviceplugin.quota import AllowAll
from fracgpu.deviceplugin.quotawatch import KubeTenantQuotas
from tests.deviceplugin.kubelet import FakeKubelet
from tests.deviceplugin.world import World, lock_path, remove_dirs, short_tmpdir
from tests.fakes.apiserver import FakeApiServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gpus-8xA100.yaml"


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--backend", "simulated", "--gpus", str(EXAMPLE)], {}, "--node-name (or NODE_NAME"),
    (["--backend", "simulated"], {"NODE_NAME": "n"}, "needs --gpus FILE"),
    (["--backend", "simulated", "--gpus", "/nonexistent.yaml"], {"NODE_NAME": "n"}, "/nonexistent.yaml"),
    (["--backend", "simulated", "--gpus", str(EXAMPLE), "--no-kube"],
     {"NODE_NAME": "n", "FRACGPU_HEALTH_BAD_CHECKS": "many"}, "FRACGPU_HEALTH_BAD_CHECKS='many' (environment)"),
    (["--backend", "simulated", "--gpus", str(EXAMPLE), "--no-kube", "--quota-check", "on"], {"NODE_NAME": "n"},
     "--quota-check on needs an API server"),
    (["--backend", "simulated", "--gpus", str(EXAMPLE), "--kube-api", "http://127.0.0.1:1"],
     {"NODE_NAME": "n", "FRACGPU_DEFAULT_MEMORY_QUOTA": "lots"}, "default quota: "),
    (["--backend", "simulated", "--gpus", str(EXAMPLE), "--quota-check", "maybe"], {"NODE_NAME": "n"},
     "invalid choice: 'maybe'"),
    (["--backend", "simulated", "--gpus", str(EXAMPLE), "--no-kube", "--cdi-kind", "nvidia.com"], {"NODE_NAME": "n"},
     "--cdi-kind 'nvidia.com' is not a CDI kind vendor/class"),
    (["--backend", "simulated", "--gpus", str(EXAMPLE), "--no-kube", "--socket-dir", "/tmp/fgdp-x",
      "--lock-file", "/tmp/fgdp-x/fracgpu.lock"], {"NODE_NAME": "n"},
     "--lock-file /tmp/fgdp-x/fracgpu.lock is in the kubelet's device-plugins directory, which the kubelet empties"),
    (["--backend", "simulated", "--gpus", str(EXAMPLE), "--no-kube", "--lock-file", "/proc/fracgpu/x.lock"],
     {"NODE_NAME": "n"}, "--lock-file /proc/fracgpu/x.lock: "),
], ids=["no node", "no gpus file", "missing gpus file", "bad health env", "quota check without a cluster",
        "bad default quota", "bad quota-check value", "bad cdi kind", "lock in the kubelet's directory",
        "lock not writable"])
def test_bad_configuration_is_a_clear_error(argv: list[str], env: dict[str, str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv, environ=env)
    except SystemExit as e:  # argparse refuses a bad choice itself
        code = int(e.code or 0)
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "env", "on"), [
    ([], {}, True),  # a cluster is configured: on by default
    (["--quota-check", "off"], {}, False),
    ([], {"FRACGPU_QUOTA_CHECK": "off"}, False),
    (["--quota-check", "on"], {"FRACGPU_QUOTA_CHECK": "off"}, True),  # the flag wins over the environment
], ids=["default", "flag off", "env off", "flag over env"])
def test_the_quota_check_is_on_with_a_cluster(argv: list[str], env: dict[str, str], on: bool,
                                              apiserver: FakeApiServer) -> None:
    d = short_tmpdir()
    environ = {"NODE_NAME": "node-a", "FRACGPU_DEFAULT_MEMORY_QUOTA": "64Gi", **env}
    args = parser(environ).parse_args(["--backend", "simulated", "--gpus", str(EXAMPLE), "--socket-dir", d,
                                       "--lock-file", lock_path(d),
                                       "--kube-api", apiserver.url, "--pod-resources-socket", "none", *argv])
    app, cluster = build(args, environ)
    quota = app.plugin.quota
    try:
        assert isinstance(quota, KubeTenantQuotas) == on
        if isinstance(quota, KubeTenantQuotas):
            assert quota.synced  # build waited for the first lists
            assert quota.default.memory == 64 * 1024**3
        else:
            assert isinstance(quota, AllowAll)
    finally:
        if isinstance(quota, KubeTenantQuotas):
            quota.stop()
        stop = getattr(cluster, "stop", None)
        if stop is not None:
            stop()
        remove_dirs(d)


def test_runs_registers_and_stops_cleanly_on_sigterm() -> None:
    d = short_tmpdir()
    kubelet = FakeKubelet(d, RESOURCE_CORE)
    kubelet.start()
    env = dict(os.environ, NODE_NAME="node-a", FRACGPU_DEVICE_PLUGIN_DIR=d, FRACGPU_LOCK_FILE=lock_path(d),
               FRACGPU_METRICS_PORT="0",
               FRACGPU_POD_RESOURCES_SOCKET=kubelet.podresources_socket, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "fracgpu.cli", "device-plugin", "--backend", "simulated",
                             "--gpus", str(EXAMPLE), "--no-kube"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        kubelet.wait_connected(timeout=30)
        assert len(kubelet.devices) == 800
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "device plugin stopped" in err
        assert kubelet.stream_ended.wait(5)
        assert not os.path.exists(os.path.join(d, "fracgpu-vgpu-core.sock"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        kubelet.stop()
        remove_dirs(d)


def test_a_second_plugin_process_waits_for_the_lock_and_stops_on_sigterm(node: World) -> None:
    """A second `fracgpu device-plugin` on the node (a replacement pod started early) serves nothing while the
    first holds the lock, and a SIGTERM ends its wait at once."""
    env = dict(os.environ, NODE_NAME="node-a", FRACGPU_DEVICE_PLUGIN_DIR=node.dir, FRACGPU_LOCK_FILE=node.lock_file,
               FRACGPU_METRICS_PORT="0", FRACGPU_POD_RESOURCES_SOCKET="none", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "fracgpu.cli", "device-plugin", "--backend", "simulated",
                             "--gpus", str(EXAMPLE), "--no-kube"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 20
        while "waiting for another device plugin" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert f"holder_pid={os.getpid()}" in line  # the first plugin (this process) wrote its pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert len(node.kubelet.registrations) == 1 and node.app is not None and node.app.server.generation == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

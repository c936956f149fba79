"""`fracgpu device-plugin` as a process: flags, a clear error for bad config, clean SIGTERM shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fracgpu.api.v1beta1.names import RESOURCE_CORE
from fracgpu.deviceplugin.main import main
from tests.deviceplugin.kubelet import FakeKubelet
from tests.deviceplugin.world import short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gpus-8xA100.yaml"


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--backend", "simulated", "--gpus", str(EXAMPLE)], {}, "--node-name (or NODE_NAME"),
    (["--backend", "simulated"], {"NODE_NAME": "n"}, "needs --gpus FILE"),
    (["--backend", "simulated", "--gpus", "/nonexistent.yaml"], {"NODE_NAME": "n"}, "/nonexistent.yaml"),
    (["--backend", "simulated", "--gpus", str(EXAMPLE), "--no-kube"],
     {"NODE_NAME": "n", "FRACGPU_HEALTH_BAD_CHECKS": "many"}, "health settings: BAD_CHECKS"),
], ids=["no node", "no gpus file", "missing gpus file", "bad health env"])
def test_bad_configuration_is_a_clear_error(argv: list[str], env: dict[str, str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv, environ=env) == 2
    assert message in capsys.readouterr().err


def test_runs_registers_and_stops_cleanly_on_sigterm() -> None:
    d = short_tmpdir()
    kubelet = FakeKubelet(d, RESOURCE_CORE)
    kubelet.start()
    env = dict(os.environ, NODE_NAME="node-a", FRACGPU_DEVICE_PLUGIN_DIR=d, FRACGPU_METRICS_PORT="0",
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

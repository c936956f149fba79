"""`fracgpu dra-driver` as a command: flags, one clear line for bad configuration, a real process end to end."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fracgpu.api.v1beta1.dra.resource import ResourceSlice
from fracgpu.api.v1beta1.names import DRA_ALLOCATOR_FRACGPU, DRA_ALLOCATOR_SCHEDULER, DRA_ATTR_ALLOCATOR, DRA_DRIVER
from fracgpu.core.draslices import gpus_from_devices
from fracgpu.draplugin.main import config, main, parser
from fracgpu.startup import is_deprecated
from tests.draplugin.kubelet import FakeDraKubelet
from tests.draplugin.world import NODE, DraWorld, api_server, short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gpus-8xA100.yaml"
SIM = ["--backend", "simulated", "--gpus", str(EXAMPLE)]


@pytest.mark.parametrize(("argv", "env", "message"), [
    (SIM, {}, "--node-name (or NODE_NAME"),
    (["--backend", "simulated"], {"NODE_NAME": "n"}, "needs --gpus FILE"),
    ([*SIM, "--kube-api", "http://127.0.0.1:1", "--gpus", "/nonexistent.yaml"], {"NODE_NAME": "n"},
     "/nonexistent.yaml"),
    ([*SIM, "--plugin-dir", "relative/dir"], {"NODE_NAME": "n"}, "--plugin-dir must be an absolute path"),
    ([*SIM, "--kube-api", "http://127.0.0.1:1"], {"NODE_NAME": "n", "FRACGPU_HEALTH_BAD_CHECKS": "many"},
     "FRACGPU_HEALTH_BAD_CHECKS='many' (environment)"),
    (SIM, {"NODE_NAME": "n", "KUBECONFIG": "/nonexistent/kubeconfig"}, "no usable cluster configuration (kubeconfig"),
    ([*SIM, "--unhealthy", "hide"], {"NODE_NAME": "n"}, "invalid choice: 'hide'"),
    (SIM, {"NODE_NAME": "n", "FRACGPU_DRA_RESYNC_INTERVAL": "soon"}, "FRACGPU_DRA_RESYNC_INTERVAL='soon' (environment)"),
    ([*SIM, "--resync-interval", "0"], {"NODE_NAME": "n"}, "must be a number of seconds above 0"),
    ([*SIM, "--allocator", "scheduler"], {"NODE_NAME": "n"}, "invalid choice: 'scheduler'"),
    (SIM, {"NODE_NAME": "n", "FRACGPU_DRA_ALLOCATOR": "both"},
     "FRACGPU_DRA_ALLOCATOR='both' (environment): one of fracgpu, kube-scheduler"),
    ([*SIM, "--metrics-port", "65536"], {"NODE_NAME": "n"}, "argument --metrics-port: '65536' is not a TCP port"),
    (SIM, {"NODE_NAME": "n", "FRACGPU_METRICS_PORT": "http"}, "FRACGPU_METRICS_PORT='http' (environment)"),
], ids=["no node", "no gpus file", "missing gpus file", "relative dir", "bad health env", "no kubeconfig",
        "bad unhealthy", "bad resync env", "zero resync", "bad allocator", "bad allocator env", "bad metrics port",
        "bad metrics port env"])
def test_bad_configuration_is_one_clear_line(argv: list[str], env: dict[str, str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv, environ=env)
    except SystemExit as e:  # argparse refuses a bad value itself, exit 2
        code = int(e.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_every_flag_has_help_and_an_environment_variable() -> None:
    p = parser({})
    for action in p._actions:
        if action.option_strings and action.dest != "help" and not is_deprecated(action):
            assert action.help and "[env " in action.help, action.option_strings


@pytest.mark.parametrize(("argv", "env", "allocator"), [
    ([], {}, DRA_ALLOCATOR_FRACGPU),
    (["--allocator", "kube-scheduler"], {}, DRA_ALLOCATOR_SCHEDULER),
    ([], {"FRACGPU_DRA_ALLOCATOR": "kube-scheduler"}, DRA_ALLOCATOR_SCHEDULER),
    (["--allocator", "fracgpu"], {"FRACGPU_DRA_ALLOCATOR": "kube-scheduler"}, DRA_ALLOCATOR_FRACGPU),
], ids=["default", "flag", "env", "flag over env"])
def test_the_allocator_flag_is_on_every_published_device(world: DraWorld, argv: list[str], env: dict[str, str],
                                                         allocator: str) -> None:
    environ = {"NODE_NAME": NODE, **env}
    cfg = config(parser(environ).parse_args([*SIM, *argv]), environ)
    world.start_driver(slices=cfg.slices)
    deadline = time.monotonic() + 5
    while not world.apiserver.list_objects("resourceslices") and time.monotonic() < deadline:
        time.sleep(0.02)
    (s,) = [ResourceSlice.from_json(o) for o in world.apiserver.list_objects("resourceslices")]
    assert [d.attributes[DRA_ATTR_ALLOCATOR].value for d in s.spec.devices] == [allocator] * 4
    assert len(gpus_from_devices(s.spec.devices)) == 4


def test_a_real_process_registers_publishes_and_stops_on_sigterm() -> None:
    d = short_tmpdir()
    registry = os.path.join(d, "registry")
    os.makedirs(registry)
    kubelet = FakeDraKubelet(registry)
    kubelet.start()
    apiserver = api_server()
    with socket.socket() as probe:  # a free port for /metrics (the default 9402 may be taken on this machine)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, NODE_NAME=NODE, PYTHONPATH=str(ROOT), FRACGPU_DRA_PLUGIN_DIR=os.path.join(d, "p"),
               FRACGPU_DRA_REGISTRY_DIR=registry, FRACGPU_CDI_DIR=os.path.join(d, "cdi"),
               FRACGPU_KUBE_API=apiserver.url, FRACGPU_SYSFS=os.path.join(d, "sys"), FRACGPU_METRICS_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "fracgpu.cli", "dra-driver", *SIM], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        kubelet.wait_registered(DRA_DRIVER, timeout=30)
        deadline = time.monotonic() + 10
        while not apiserver.list_objects("resourceslices") and time.monotonic() < deadline:
            time.sleep(0.05)
        (s,) = apiserver.list_objects("resourceslices")
        assert len(s["spec"]["devices"]) == 8
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            samples = {x.name: x.value for f in text_string_to_metric_families(r.read().decode()) for x in f.samples}
        assert samples["fracgpu_dra_driver_registered"] == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "dra driver stopped" in err
        assert kubelet.wait_for(lambda: DRA_DRIVER not in kubelet.plugins)
        assert apiserver.list_objects("resourceslices")  # kept: a restarted driver takes them over
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        kubelet.stop()
        apiserver.stop()


def test_both_node_programs_derive_a_nodes_simulated_uuids_alike() -> None:
    """One gpus file on every node (manifests/simulated): the DRA driver names a node's GPUs as the
    device plugin does (from the node name), so the two paths and the extender agree on (node, uuid)."""
    from fracgpu.deviceplugin.main import parser as plugin_parser
    from fracgpu.deviceplugin.nodeflags import backend_from

    unpinned = ["--backend", "simulated", "--gpus", str(ROOT / "manifests" / "simulated" / "gpus.yaml")]

    def uuids(build: Callable[[Mapping[str, str]], argparse.ArgumentParser], node: str) -> list[str]:
        backend = backend_from(build({}).parse_args([*unpinned, "--node-name", node]))
        try:
            return [g.uuid for g in backend.inventory()]
        finally:
            backend.close()

    a = uuids(parser, "node-a")
    assert a == uuids(plugin_parser, "node-a")
    assert not set(a) & set(uuids(parser, "node-b"))

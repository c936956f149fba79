"""Bad input and a bad environment, through `python3 -m fracgpu.cli` as a user runs it: exit 2, one line
on stderr that names the problem and the fix, never a traceback, never "listening" before the port is bound.

Each row is a real process: a real kubeconfig search (no $KUBECONFIG, an empty $HOME, not in a pod),
real sockets held busy by the test, real directories that are not there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.webhook.tls import write_self_signed

ROOT = Path(__file__).resolve().parents[1]
GPUS = str(ROOT / "examples" / "gpus-8xA100.yaml")
SIMULATED = ["--backend", "simulated", "--gpus", GPUS, "--node-name", "n1"]
TIMEOUT_S = 30.0  # a bound, not an expectation: each row exits in about a second


@dataclass(frozen=True, slots=True)
class World:
    """What a row may refer to: a scratch directory, a port something else holds, a TLS pair, a snapshot."""

    tmp: Path
    busy_port: int
    cert: Path
    key: Path
    snapshot: Path


@dataclass(frozen=True, slots=True)
class Case:
    command: str
    argv: Callable[[World], list[str]]
    says: Callable[[World], tuple[str, ...]]  # every one of these is in the line
    env: dict[str, str] = field(default_factory=dict)


NO_CLUSTER = ("no usable cluster configuration", "--kubeconfig FILE")


def busy(w: World) -> tuple[str, ...]:
    return (f"cannot listen on 127.0.0.1:{w.busy_port}: Address already in use",
            "another program listens there: stop it or choose another --port")


CASES: dict[str, Case] = {
    # no cluster configuration at all
    "extender without a kubeconfig": Case("extender", lambda w: [], lambda w: (*NO_CLUSTER, "--snapshot FILE")),
    "controller without a kubeconfig": Case("controller", lambda w: ["--metrics-port", "0"],
                                            lambda w: (*NO_CLUSTER, "--kube-api URL")),
    "device-plugin without a kubeconfig": Case("device-plugin", lambda w: [*SIMULATED, "--socket-dir", str(w.tmp)],
                                               lambda w: (*NO_CLUSTER, "--no-kube")),
    "dra-driver without a kubeconfig": Case("dra-driver", lambda w: SIMULATED, lambda w: (*NO_CLUSTER, "--kube-api URL")),
    "inspect without a kubeconfig": Case("inspect", lambda w: [], lambda w: (*NO_CLUSTER, "--snapshot FILE")),
    # ports
    "extender on port 99999": Case("extender", lambda w: ["--snapshot", str(w.snapshot), "--port", "99999"],
                                   lambda w: ("argument --port: '99999' is not a TCP port (1-65535)",)),
    "extender on a busy port": Case("extender", lambda w: ["--snapshot", str(w.snapshot), "--bind-address",
                                                           "127.0.0.1", "--port", str(w.busy_port)], busy),
    "webhook on a busy port": Case("webhook", lambda w: ["--tls-cert", str(w.cert), "--tls-key", str(w.key),
                                                         "--bind-address", "127.0.0.1", "--port", str(w.busy_port)],
                                   busy),
    "controller with a busy metrics port": Case(
        "controller", lambda w: ["--kube-api", "http://127.0.0.1:1", "--metrics-port", str(w.busy_port)],
        lambda w: (f"cannot serve /metrics on port {w.busy_port}: Address already in use",
                   "choose another --metrics-port")),
    "device-plugin with a busy metrics port": Case(
        "device-plugin", lambda w: [*SIMULATED, "--no-kube", "--socket-dir", str(w.tmp), "--pod-resources-socket",
                                    "none", "--metrics-port", str(w.busy_port)],
        lambda w: (f"cannot serve /metrics on port {w.busy_port}: Address already in use",)),
    "dra-driver with a busy metrics port": Case(
        "dra-driver", lambda w: [*SIMULATED, "--kube-api", "http://127.0.0.1:1", "--plugin-dir", str(w.tmp / "dra"),
                                 "--metrics-port", str(w.busy_port)],
        lambda w: (f"cannot serve /metrics on port {w.busy_port}: Address already in use",
                   "choose another --metrics-port")),
    # a directory that is not there
    "device-plugin with a missing socket dir": Case(
        "device-plugin", lambda w: [*SIMULATED, "--no-kube", "--socket-dir", str(w.tmp / "dp")],
        lambda w: (f"--socket-dir {w.tmp / 'dp'} is not a directory", f"mkdir -p {w.tmp / 'dp'}")),
    # a bad environment: values read while the parser is built
    "extender with a bad port in the environment": Case(
        "extender", lambda w: [], lambda w: ("FRACGPU_EXTENDER_PORT='http' (environment)", "not a whole number"),
        {"FRACGPU_EXTENDER_PORT": "http"}),
    "controller with a bad metrics port in the environment": Case(
        "controller", lambda w: [], lambda w: ("FRACGPU_METRICS_PORT='x' (environment)",),
        {"FRACGPU_METRICS_PORT": "x"}),
    "device-plugin with a bad metrics port in the environment": Case(
        "device-plugin", lambda w: [], lambda w: ("FRACGPU_METRICS_PORT='x' (environment)",),
        {"FRACGPU_METRICS_PORT": "x"}),
    "dra-driver with a bad metrics port in the environment": Case(
        "dra-driver", lambda w: [], lambda w: ("FRACGPU_METRICS_PORT='x' (environment)",),
        {"FRACGPU_METRICS_PORT": "x"}),
    "dra-driver with a bad resync interval in the environment": Case(
        "dra-driver", lambda w: [], lambda w: ("FRACGPU_DRA_RESYNC_INTERVAL='soon' (environment)",),
        {"FRACGPU_DRA_RESYNC_INTERVAL": "soon"}),
    "webhook with a bad port in the environment": Case(
        "webhook", lambda w: [], lambda w: ("FRACGPU_WEBHOOK_PORT='8443x' (environment)",),
        {"FRACGPU_WEBHOOK_PORT": "8443x"}),
    "simulate with a missing config file in the environment": Case(
        "simulate", lambda w: [], lambda w: (f"config {w.tmp / 'none.yaml'}: cannot read it",),
        {"FRACGPU_CONFIG": "{tmp}/none.yaml"}),
    # a log level logging does not know (it used to raise inside logging.basicConfig)
    "device-plugin with a bad log level": Case("device-plugin", lambda w: ["--log-level", "loud"],
                                               lambda w: ("'loud' is not a log level (DEBUG, INFO, WARNING, ERROR)",)),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A scratch directory, a TLS pair, an empty snapshot, and a loopback port held by this process."""
    tmp = tmp_path_factory.mktemp("cli")
    cert, key = write_self_signed(tmp)
    snapshot = tmp / "empty.yaml"
    snapshot.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield World(tmp, holder.getsockname()[1], cert, key, snapshot)


def clean_environ(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without anything that points at a cluster or configures fracgpu."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("FRACGPU_", "KUBERNETES_")) and k not in ("KUBECONFIG", "NODE_NAME", "POD_NAME")}
    return {**keep, "HOME": str(home), **extra}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_bad_start_is_one_line_and_exit_2(case: Case, world: World) -> None:
    env = clean_environ(world.tmp, {k: v.replace("{tmp}", str(world.tmp)) for k, v in case.env.items()})
    proc = subprocess.run([sys.executable, "-m", "fracgpu.cli", case.command, *case.argv(world)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"fracgpu {case.command}: "), lines[0]
    for words in case.says(world):
        assert words in lines[0]
    assert "listening" not in proc.stderr and proc.stdout == ""

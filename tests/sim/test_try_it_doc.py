"""docs/try-it.md as written: every marked command runs and prints what the page shows.

A command is the ```sh block after a `<!-- try-it -->` comment; the fenced block after it is its
output. `<!-- try-it: server -->` marks the extender's start command: it is started for real (the
installed command line, on a free port) from the example snapshot, and the page's curl requests go
to it over HTTP in the page's order (the bind changes what later requests see). `fracgpu` runs this
checkout's code (`python -m fracgpu.cli`), and `localhost:8888` becomes the free port.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "try-it.md"
SNAPSHOT = ROOT / "examples" / "try-it" / "snapshot.yaml"
WORKLOAD = ROOT / "examples" / "try-it" / "workload.yaml"
MARK = re.compile(r"<!-- try-it(: server)? -->\n```sh\n(.*?)\n```\n(?:\n```\w*\n(.*?)\n```)?", re.S)
DOC_PORT = "localhost:8888"


@dataclass(frozen=True, slots=True)
class Step:
    command: str
    expected: str | None  # None: the server's start command
    line: int

    @property
    def server(self) -> bool:
        return self.expected is None


def steps() -> list[Step]:
    text = DOC.read_text(encoding="utf-8")
    found = [Step(m.group(2), None if m.group(1) else (m.group(3) or ""), text.count("\n", 0, m.start()) + 1)
             for m in MARK.finditer(text)]
    assert len(found) == text.count("<!-- try-it"), "a try-it mark without a ```sh block (and its output) after it"
    return found


def run_shell(command: str, port: int) -> str:
    """The command as a reader would type it, in bash from the repository root."""
    prelude = f'fracgpu() {{ "{sys.executable}" -m fracgpu.cli "$@"; }}\n'
    proc = subprocess.run(["bash", "-c", prelude + command.replace(DOC_PORT, f"127.0.0.1:{port}")], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"{command}\nexit {proc.returncode}\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    return proc.stdout.rstrip("\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def extender_from_the_doc() -> Iterator[int]:
    """The page's `fracgpu extender --snapshot ...`, serving on a free loopback port until ready."""
    (start,) = [s for s in steps() if s.server]
    assert start.command.startswith("fracgpu extender ")
    port = free_port()
    argv = [sys.executable, "-m", "fracgpu.cli", *start.command.split()[1:], "--port", str(port),
            "--listen", "127.0.0.1"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    try:
        while True:
            assert proc.poll() is None, f"the extender exited: {proc.stderr.read() if proc.stderr else ''}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "the extender did not become ready in 20 s"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def without_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as it was applied: without what the API server, the scheduler and fracgpu added."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out["metadata"]
    for key in ("uid", "creationTimestamp"):
        meta.pop(key, None)
    meta.get("labels", {}).pop("kubernetes.io/metadata.name", None)
    for key in (ANN_ASSIGNED, ANN_PHASE):
        meta.get("annotations", {}).pop(key, None)
    for key in ("labels", "annotations"):
        if meta.get(key) == {}:
            del meta[key]
    out.get("spec", {}).pop("nodeName", None)
    if out.get("spec") == {}:
        del out["spec"]
    return out


def test_the_offline_commands_print_what_the_page_shows() -> None:
    for step in [s for s in steps() if not s.server and "localhost:" not in s.command]:
        assert run_shell(step.command, 0) == step.expected, f"docs/try-it.md:{step.line}: {step.command}"


@pytest.mark.skipif(shutil.which("curl") is None, reason="the page's requests are curl commands")
def test_the_extender_answers_what_the_page_shows(extender_from_the_doc: int) -> None:
    http = [s for s in steps() if not s.server and "localhost:" in s.command]
    assert [re.search(r"localhost:8888/(\w+)", s.command).group(1) for s in http] == [  # type: ignore[union-attr]
        "filter", "prioritize", "bind", "metrics", "filter", "filter"]
    for step in http:
        assert run_shell(step.command, extender_from_the_doc) == step.expected, \
            f"docs/try-it.md:{step.line}: {step.command}"


def test_the_snapshot_is_the_workload_as_the_api_server_returns_it() -> None:
    """The objects you would apply (workload.yaml) are in the snapshot unchanged, apart from what the
    API server and fracgpu add (uid, creationTimestamp, status, nodeName, fracgpu's annotations); and
    the snapshot is what scripts/make_try_it_snapshot.py makes of it."""
    snapshot = yaml.safe_load(SNAPSHOT.read_text(encoding="utf-8"))["items"]
    by_key = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in snapshot}
    for obj in yaml.safe_load(WORKLOAD.read_text(encoding="utf-8"))["items"]:
        meta = obj["metadata"]
        assert without_server_fields(by_key[(obj["kind"], meta.get("namespace", ""), meta["name"])]) == obj
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_try_it_snapshot.py"), "--check"],
                           capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert check.returncode == 0, check.stderr


def test_the_workload_validates_against_the_kubernetes_schemas() -> None:
    """workload.yaml is meant for `kubectl apply -f`: the built-in kinds against the Kubernetes
    OpenAPI schemas (strict), the TenantQuota against its CRD."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    from fracgpu.api.v1beta1.tenantquota import TenantQuota
    from tests.manifests.test_crd_tenantquota import VALIDATOR

    items = yaml.safe_load(WORKLOAD.read_text(encoding="utf-8"))["items"]
    assert {o["kind"] for o in items} == {"TenantQuota", "Namespace", "Pod"}
    for obj in items:
        if obj["kind"] == "TenantQuota":
            VALIDATOR.validate(obj)
            TenantQuota.from_dict(obj)
        else:
            kubernetes_validate.validate(obj, "1.30", strict=True)

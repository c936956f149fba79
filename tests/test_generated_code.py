"""All committed generated gRPC code matches its .proto files: scripts/gen_proto.sh regenerates every
package into a temp dir and each file must be byte-identical (one run for the device-plugin, PodResources,
plugin-registration and DRA protos)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fracgpu/api/v1beta1/deviceplugin", "fracgpu/api/v1beta1/podresources",
            "fracgpu/api/v1beta1/pluginregistration", "fracgpu/api/v1beta1/dra/kubeletv1",
            "fracgpu/api/v1beta1/dra/kubeletv1beta1")
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py", "api_pb2_grpc.pyi")


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run([str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True, capture_output=True)
    stale = [f"{pkg}/{name}" for pkg in PACKAGES for name in GENERATED
             if (tmp_path / pkg / name).read_text() != (ROOT / pkg / name).read_text()]
    assert not stale, f"regenerate with scripts/gen_proto.sh: {stale}"

#!/usr/bin/env bash
# Regenerate the committed gRPC modules from the .proto files.
#   scripts/gen_proto.sh            # into the source tree
#   scripts/gen_proto.sh OUTDIR     # into OUTDIR (used by the staleness test)
# Needs grpcio-tools and mypy-protobuf (the `test` extra).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
cd "$root"
for pkg in fracgpu/api/v1beta1/deviceplugin fracgpu/api/v1beta1/podresources fracgpu/api/v1beta1/pluginregistration \
           fracgpu/api/v1beta1/dra/kubeletv1 fracgpu/api/v1beta1/dra/kubeletv1beta1; do
    mkdir -p "$out/$pkg"
    python3 -m grpc_tools.protoc -I . \
        --python_out="$out" --grpc_python_out="$out" \
        --mypy_out="$out" --mypy_grpc_out="$out" \
        "$pkg/api.proto"
done

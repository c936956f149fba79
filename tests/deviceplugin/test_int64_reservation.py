"""A reservation whose VRAM is past int64 (2^63, 2^64, 10^30) is refused at Allocate, naming the field.

It is legal JSON; before the decoder bounded it, the plugin admitted the pod and set that many bytes
as its VRAM limit (FRACGPU_VRAM_LIMIT, the MPS and limiter variables): no limit at all.
"""

from __future__ import annotations

import json

import grpc
import pytest

from fracgpu.api.v1beta1.names import ANN_ASSIGNED, MAX_GPU_MEMORY
from tests.deviceplugin.kubelet import Container
from tests.deviceplugin.world import World, gpu_uuid


@pytest.mark.parametrize("value", [2**63, 2**64, 10**30], ids=["2^63", "2^64", "10^30"])
def test_a_huge_reserved_memory_is_refused_naming_the_field(node: World, value: int) -> None:
    obj = node.add_pod("p", [Container("main", 10)], [0])
    doc = json.loads(obj["metadata"]["annotations"][ANN_ASSIGNED])
    doc["gpus"][0]["memory"] = value
    obj["metadata"]["annotations"][ANN_ASSIGNED] = json.dumps(doc)
    node.cluster.put_pod(obj)
    with pytest.raises(grpc.RpcError) as err:
        node.kubelet.allocate_raw([f"{gpu_uuid(0)}::{k}" for k in range(10)])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (f"annotation fracgpu.io/assigned is not valid: assigned.gpus[0].memory: must be <= {MAX_GPU_MEMORY}, "
            f"got {value}") in (err.value.details() or ""), err.value.details()

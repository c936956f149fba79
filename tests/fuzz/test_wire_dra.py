"""Hostile input for the DRA driver's readers: a ResourceClaim or ResourceSlice the API server (or anyone who can
write them) sends, and a checkpoint on disk. Anything goes in; a value, InvalidDocument or a Refusal comes out."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fracgpu.api.v1beta1.dra.checkpoint import Checkpoint
from fracgpu.api.v1beta1.dra.resource import ResourceClaim, ResourceSlice
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core.draprepare import Refusal, plan_claim
from tests.fuzz.test_core_parsers import json_values, quantity_like

EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GPUS = (GpuInfo("GPU-0", 0, "A100", 80 * 1024**3, 0), GpuInfo("GPU-1", 1, "A100", 80 * 1024**3, 0))

result = st.fixed_dictionaries({}, optional={
    "request": st.one_of(st.sampled_from(["gpu", "a/b"]), json_values),
    "driver": st.one_of(st.just("gpu.fracgpu.io"), json_values),
    "pool": st.one_of(st.just("n1"), json_values),
    "device": st.one_of(st.sampled_from(["gpu-0", "gpu-1", "gpu-9"]), json_values),
    "adminAccess": st.one_of(st.booleans(), json_values),
    "shareID": json_values,
    "consumedCapacity": st.one_of(
        st.dictionaries(st.sampled_from(["cores", "memory", "gpu.fracgpu.io/cores", "x"]),
                        st.one_of(quantity_like, json_values), max_size=3), json_values),
})
claim = st.fixed_dictionaries({"metadata": st.fixed_dictionaries(
    {"name": st.one_of(st.just("c"), json_values)}, optional={"namespace": json_values, "uid": json_values})},
    optional={"status": st.one_of(json_values, st.fixed_dictionaries({"allocation": st.one_of(
        json_values, st.fixed_dictionaries({"devices": st.fixed_dictionaries({"results": st.one_of(
            json_values, st.lists(result, max_size=4))})}))}))})


@EXAMPLES
@given(claim)
def test_claims_parse_and_plan_or_refuse(raw: dict[str, Any]) -> None:
    try:
        c = ResourceClaim.from_json(raw)
    except InvalidDocument:
        return
    try:
        prepared = plan_claim(c, node="n1", gpus=GPUS, prepared={})
    except Refusal as e:
        assert str(e).startswith("claim ")
        return
    for x in prepared.devices:
        assert 1 <= x.cores <= 100 and 0 < x.memory <= 80 * 1024**3
    assert sum(x.cores for x in prepared.devices if x.uuid == "GPU-0" and not x.admin) <= 100


@EXAMPLES
@given(st.one_of(json_values, st.fixed_dictionaries({"metadata": st.just({"name": "s"}), "spec": json_values})))
def test_slices_parse_or_refuse(raw: Any) -> None:
    try:
        parsed = ResourceSlice.from_json(raw)
    except InvalidDocument:
        return
    assert ResourceSlice.from_json(parsed.to_json()) == parsed  # what was read is what would be written


@EXAMPLES
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps)))
def test_checkpoints_load_or_refuse(text: str) -> None:
    try:
        loaded = Checkpoint.from_json(text)
    except InvalidDocument as e:
        assert str(e).startswith("checkpoint")
        return
    assert Checkpoint.from_json(loaded.to_json()) == loaded

"""Hostile input for every parser in the core: anything goes in, a value or our own error comes out.

Each property runs a bounded number of examples (see settings) so the suite stays fast; the
counts are reported in docs/reliability.md.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.errors import InvalidDocument
from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.core.pod import decode_pod
from fracgpu.core.quantity import QuantityError, parse_bytes, parse_count, parse_milli, parse_quantity
from fracgpu.core.request import RequestError, parse_pod_request

EXAMPLES = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
quantity_like = st.from_regex(r"\A[+-]?[0-9.]{0,8}([eE][+-]?[0-9]{1,4}|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?\Z")


@EXAMPLES
@given(st.one_of(quantity_like, st.text(max_size=30), st.integers(-(2**64), 2**64)))
def test_quantities_parse_or_refuse(text: str | int) -> None:
    for parse in (parse_bytes, parse_count, parse_milli):
        try:
            value = parse(text)
        except QuantityError:
            continue
        assert isinstance(value, int) and value >= 0


@EXAMPLES
@given(quantity_like)
def test_parsed_bytes_agree_with_the_decimal_value(text: str) -> None:
    try:
        exact = parse_quantity(text)
        n = parse_bytes(text)
    except QuantityError:
        return
    assert n == exact


def _pod_with(resources: Any, annotations: Any = None) -> dict[str, Any]:
    return {"metadata": {"annotations": annotations or {}}, "spec": {"containers": [{"name": "c", "resources": resources}]}}


@EXAMPLES
@given(
    st.dictionaries(
        st.sampled_from(["fracgpu.io/vgpu-core", "fracgpu.io/vgpu-memory", "cpu", "memory"]),
        st.one_of(quantity_like, json_values),
        max_size=4,
    ),
    st.dictionaries(st.sampled_from(["fracgpu.io/gpu-model", "fracgpu.io/topology", "fracgpu.io/zone-policy"]),
                    st.text(max_size=15), max_size=3),
)
def test_pod_requests_parse_or_refuse(requests: dict[str, Any], annotations: dict[str, str]) -> None:
    try:
        req = parse_pod_request(decode_pod(_pod_with({"requests": requests}, annotations)))
    except RequestError as e:
        assert str(e)
        return
    if req is not None:
        assert 1 <= req.cores <= 6400
        assert req.cores <= 100 or req.cores % 100 == 0


@EXAMPLES
@given(json_values)
def test_arbitrary_pod_json_never_crashes(value: Any) -> None:
    for doc in (value, {"spec": value}, {"spec": {"containers": value}}, {"spec": {"containers": [value]}},
                _pod_with(value)):
        try:
            parse_pod_request(decode_pod(doc))
        except RequestError:
            pass
        except Exception as e:
            raise AssertionError(f"crash on {doc!r}") from e


@EXAMPLES
@given(json_values)
def test_annotation_documents_parse_or_refuse(value: Any) -> None:
    for text in (json.dumps(value), json.dumps({"version": 1, "gpus": value}),
                 json.dumps({"version": 1, "node": "n", "tenant": "t", "assignedAt": "x", "gpus": value})):
        for parse in (NodeInventoryDoc.from_json, Assignment.from_json):
            try:
                parse(text)
            except InvalidDocument as e:
                assert str(e)

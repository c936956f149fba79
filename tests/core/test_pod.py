"""A pod decoded once (core.pod): malformed objects never raise there, and the request parser
reports the first problem in spec order, exactly as it did when it read the raw object."""

from __future__ import annotations

from typing import Any

import pytest

from fracgpu.core.pod import decode_pod
from fracgpu.core.request import RequestError, parse_pod_request

GPU = {"requests": {"fracgpu.io/vgpu-core": "10"}}
BAD = {"requests": {"fracgpu.io/vgpu-core": "lots"}}


@pytest.mark.parametrize(
    ("name", "obj", "outcome"),
    [
        ("not an object", ["x"], "pod: expected a JSON object"),
        ("metadata not an object", {"metadata": ["x"], "spec": {"containers": [{"name": "a", "resources": GPU}]}},
         "pod: spec and metadata must be objects"),
        ("no spec", {"metadata": {"name": "p"}}, "pod: spec and metadata must be objects"),
        ("bad quantity before a non-object", {"spec": {"containers": [{"name": "a", "resources": BAD}, "x"]}},
         "not a quantity: 'lots'"),
        ("non-object after a good one", {"spec": {"containers": [{"name": "a", "resources": GPU}, "x"]}},
         "pod: spec.containers[1] must be an object"),
        ("initContainers not a list, then a bad app container",
         {"spec": {"initContainers": {}, "containers": [{"name": "a", "resources": BAD}]}},
         "pod: spec.initContainers must be a list"),
        ("a bad init container, then containers not a list",
         {"spec": {"initContainers": [{"resources": BAD}], "containers": "x"}}, "not a quantity: 'lots'"),
        ("annotations not a map, GPU pod",
         {"metadata": {"annotations": ["x"]}, "spec": {"containers": [{"name": "a", "resources": GPU}]}},
         "pod: metadata.annotations and metadata.labels must be maps"),
        ("labels not a map, no GPU asked", {"metadata": {"labels": "x"}, "spec": {"containers": [{"name": "a"}]}},
         None),
        ("resources not a map", {"spec": {"containers": [{"name": "a", "resources": ["x"]}]}},
         "container a: resources must be a map"),
        ("unnamed container named by its index", {"spec": {"containers": [{"resources": ["x"]}]}},
         "container #0: resources must be a map"),
    ],
)
def test_malformed_pods_decode_and_fail_in_spec_order(name: str, obj: Any, outcome: str | None) -> None:
    pod = decode_pod(obj)  # never raises
    if outcome is None:
        assert parse_pod_request(pod) is None
        return
    with pytest.raises(RequestError) as err:
        parse_pod_request(pod)
    assert str(err.value) == outcome


def test_the_fields_every_program_reads() -> None:
    pod = decode_pod({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z",
                     "deletionTimestamp": "2026-01-01T00:05:00Z", "labels": {"a": "b"}, "annotations": {"k": "v"}},
        "spec": {"nodeName": "n1", "priority": 7, "schedulerName": "s",
                 "initContainers": [{"name": "side", "restartPolicy": "Always"}, {"name": "init"}],
                 "containers": [{"name": "app"}]},
        "status": {"phase": "Running"},
    })
    assert (pod.namespace, pod.name, pod.uid, pod.node, pod.phase, pod.created, pod.deleting, pod.priority, pod.scheduler_name) == (
        "ns", "p", "u", "n1", "Running", "2026-01-01T00:00:00Z", True, 7, "s")
    assert (dict(pod.labels), dict(pod.annotations)) == ({"a": "b"}, {"k": "v"})
    assert [(c.name, c.kind) for c in pod.containers] == [("side", "sidecar"), ("init", "init"), ("app", "app")]
    assert not pod.finished


@pytest.mark.parametrize("priority", [True, "7", 7.0, None])
def test_a_priority_that_is_not_an_integer_counts_as_zero(priority: Any) -> None:
    assert decode_pod({"spec": {"priority": priority}}).priority == 0

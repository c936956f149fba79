"""Closed quotas by default (issue 14): the extender and the device plugin as the manifests configure
them give a tenant without a quota of its own no GPU, and say so with the tenant's numbers.

The configuration is read from the rendered manifests (the env of the extender Deployment and of the
device-plugin DaemonSet) through each program's own flag parser, so the test is about what
`kubectl apply -k manifests/` runs; filter is called over real HTTP.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fracgpu.api.v1beta1.names import ANN_NS_CORE_QUOTA, ANN_NS_MEMORY_QUOTA, LABEL_TENANT
from fracgpu.core.tenant import SOURCE_DEFAULT, Limits, Tenants, default_limits
from fracgpu.deviceplugin.main import parser as plugin_parser
from fracgpu.extender.main import build_config, parse_args
from fracgpu.extender.scheduler import SchedulerConfig
from tests.extender.builders import bind_args, filter_args, node_obj, pod_obj
from tests.extender.conftest import ClientFactory, build_world
from tests.manifests.render import find


def container_env(kind: str, name: str) -> dict[str, str]:
    spec = find(kind, name)["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def namespace(name: str, annotations: dict[str, str] | None = None,
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}}}


def extender_config_of_the_manifests() -> SchedulerConfig:
    """As the Deployment runs it, less the heartbeat check (these worlds have no plugin Leases)."""
    cfg = build_config(parse_args([], container_env("Deployment", "fracgpu-extender")))
    return dataclasses.replace(cfg, heartbeat_stale_s=0.0)


def test_the_manifests_close_quotas_in_both_programs() -> None:
    extender = extender_config_of_the_manifests().default_limits
    args = plugin_parser(container_env("DaemonSet", "fracgpu-device-plugin")).parse_args([])
    plugin = default_limits(args.default_memory_quota, args.default_core_quota)
    assert extender == plugin == Limits(0, 0, SOURCE_DEFAULT, SOURCE_DEFAULT)
    # the plugin re-checks at Allocate with the same numbers: a tenant with nothing is over quota
    # as soon as its pod is charged
    assert Tenants([], [], plugin).limits("ns/new-team") == extender


async def test_a_namespace_without_a_quota_gets_no_gpu(serve: ClientFactory) -> None:
    pod = pod_obj("train", 50, "8Gi", namespace="new-team")
    world = build_world([namespace("new-team"), node_obj("n1"), node_obj("n2"), pod], extender_config_of_the_manifests())
    client = await serve(world)
    out = await (await client.post("/filter", json=filter_args(pod, ["n1", "n2"]))).json()
    assert out["NodeNames"] == [] and out["FailedNodes"] == {}
    # unresolvable (preemption cannot help), one text on every node, with the tenant's and the pod's numbers
    assert set(out["FailedAndUnresolvableNodes"].values()) == {
        "tenant ns/new-team: vgpu-memory 0 of 0 used, pod asks 8Gi; vgpu-core 0 of 0 used, pod asks 50"}
    assert "ns/new-team" in (await (await client.post("/bind", json=bind_args(pod, "n1"))).json())["Error"]


async def test_a_quota_admin_s_grant_opens_it(serve: ClientFactory) -> None:
    granted = namespace("team-a", {ANN_NS_MEMORY_QUOTA: "16Gi", ANN_NS_CORE_QUOTA: "100"})
    quota = {"apiVersion": "fracgpu.io/v1beta1", "kind": "TenantQuota", "metadata": {"name": "team-b"},
             "spec": {"namespaceSelector": {"matchLabels": {LABEL_TENANT: "team-b"}},
                      "hard": {"fracgpu.io/vgpu-memory": "64Gi"}}}
    a, b = pod_obj("a", 50, "8Gi", namespace="team-a"), pod_obj("b", 50, "8Gi", namespace="team-b-1")
    world = build_world([granted, namespace("team-b-1", labels={LABEL_TENANT: "team-b"}), quota, node_obj("n1"), a, b],
                        extender_config_of_the_manifests())
    client = await serve(world)
    out = await (await client.post("/filter", json=filter_args(a, ["n1"]))).json()
    assert out["NodeNames"] == ["n1"]
    # a TenantQuota that sets only VRAM leaves cores at the closed default
    out = await (await client.post("/filter", json=filter_args(b, ["n1"]))).json()
    assert set(out["FailedAndUnresolvableNodes"].values()) == {
        "tenant tq/team-b: vgpu-core 0 of 0 used, pod asks 50"}

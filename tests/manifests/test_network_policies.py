"""The NetworkPolicies over the rendered manifests (issue 14, least privilege): who may reach each fracgpu
pod on which port, and what the webhook may reach.

`allowed` follows the networking.k8s.io/v1 rules: a pod selected by no policy of a direction is open in
that direction; a selected pod admits a connection when some rule of some selecting policy matches
the peer (podSelector in the policy's namespace, namespaceSelector, both) and the port (by number or
by the container port's name); `ingress: [{ports: [...]}]` without `from` admits every peer. What it
cannot show: how a CNI treats host-network peers (the API server, kubelet probes); ipBlock is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from fracgpu.api.v1beta1 import names
from tests.manifests.cel import selector_matches
from tests.manifests.render import Obj, find, of_kind

NS = names.DEFAULT_NAMESPACE
SCRAPER_NS = {"kubernetes.io/metadata.name": "monitoring", "fracgpu.io/metrics-scraper": "true"}
TENANT_NS = {"kubernetes.io/metadata.name": "team-a"}
FRACGPU_NS = {"kubernetes.io/metadata.name": NS}


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod's labels and its namespace's labels (both empty: not a pod)."""

    namespace: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)


TENANT = Peer(TENANT_NS, {"app": "train"})
API_SERVER = Peer({})  # host network: no pod, no namespace labels
SCRAPER = Peer(SCRAPER_NS, {"app.kubernetes.io/name": "prometheus"})


def workload(kind: str, name: str) -> tuple[Peer, dict[str, int]]:
    """A fracgpu pod as a peer, and its container ports by name."""
    template = find(kind, name)["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    return Peer(FRACGPU_NS, template["metadata"]["labels"]), ports


def _port_matches(rule: dict[str, Any], port: int, named: dict[str, int]) -> bool:
    if "ports" not in rule:
        return True
    return any(p.get("protocol", "TCP") == "TCP" and named.get(str(p["port"]), p["port"]) == port
               for p in rule["ports"])


def _peer_matches(rule: dict[str, Any], key: str, peer: Peer, policy_ns: str) -> bool:
    if key not in rule:
        return True
    for source in rule[key]:
        ns_ok = (selector_matches(source["namespaceSelector"], peer.namespace) if "namespaceSelector" in source
                 else peer.namespace.get("kubernetes.io/metadata.name") == policy_ns)
        pod_ok = selector_matches(source.get("podSelector", {}), peer.labels)
        if ns_ok and pod_ok:
            return True
    return False


def allowed(src: Peer, dst: Peer, port: int, dst_ports: dict[str, int] | None = None,
            policies: list[Obj] | None = None) -> bool:
    """May `src` open a TCP connection to `dst` on `port`? Both directions must admit it. `policies`: the
    cluster's NetworkPolicies (default: those of the rendered base install)."""
    policies = of_kind("NetworkPolicy") if policies is None else policies

    def direction(kind: str, pod: Peer, other: Peer, key: str, ports: dict[str, int]) -> bool:
        selecting = [p for p in policies
                     if p["metadata"]["namespace"] == pod.namespace.get("kubernetes.io/metadata.name")
                     and selector_matches(p["spec"]["podSelector"], pod.labels)
                     and kind in p["spec"].get("policyTypes", ["Ingress"])]
        if not selecting:
            return True
        return any(_peer_matches(rule, key, other, p["metadata"]["namespace"]) and _port_matches(rule, port, ports)
                   for p in selecting for rule in p["spec"].get(kind.lower(), []))

    return (direction("Egress", src, dst, "to", {}) and
            direction("Ingress", dst, src, "from", dst_ports or {}))


WEBHOOK, WEBHOOK_PORTS = workload("Deployment", "fracgpu-webhook")
CONTROLLER, CONTROLLER_PORTS = workload("Deployment", "fracgpu-controller")
PLUGIN, PLUGIN_PORTS = workload("DaemonSet", "fracgpu-device-plugin")
EXTENDER, EXTENDER_PORTS = workload("Deployment", "fracgpu-extender")
SCHEDULER, SCHEDULER_PORTS = workload("Deployment", names.SCHEDULER_NAME)


@pytest.mark.parametrize(("name", "src", "dst", "port", "ports", "ok"), [
    ("a tenant pod scrapes the device plugin's GPU and tenant metrics", TENANT, PLUGIN, 9402, PLUGIN_PORTS, False),
    ("a scraper scrapes the device plugin", SCRAPER, PLUGIN, 9402, PLUGIN_PORTS, True),
    ("a tenant pod reaches the controller", TENANT, CONTROLLER, 9402, CONTROLLER_PORTS, False),
    ("a scraper scrapes the controller", SCRAPER, CONTROLLER, 9402, CONTROLLER_PORTS, True),
    ("another fracgpu pod reaches the controller", EXTENDER, CONTROLLER, 9402, CONTROLLER_PORTS, False),
    ("the API server's call reaches the webhook", API_SERVER, WEBHOOK, 8443, WEBHOOK_PORTS, True),
    ("another port of the webhook", API_SERVER, WEBHOOK, 9402, WEBHOOK_PORTS, False),
    ("the API server reaches the device plugin's metrics", API_SERVER, PLUGIN, 9402, PLUGIN_PORTS, False),
    ("the webhook calls out (it never needs to)", WEBHOOK, TENANT, 443, {}, False),
    ("the webhook reaches the extender", WEBHOOK, EXTENDER, 8888, EXTENDER_PORTS, False),
    ("a tenant pod calls the extender's bind", TENANT, EXTENDER, 8888, EXTENDER_PORTS, False),
    ("fracgpu-scheduler calls the extender", SCHEDULER, EXTENDER, 8888, EXTENDER_PORTS, True),
    ("a tenant pod reaches fracgpu-scheduler", TENANT, SCHEDULER, 10259, SCHEDULER_PORTS, False),
    ("a scraper scrapes fracgpu-scheduler", SCRAPER, SCHEDULER, 10259, SCHEDULER_PORTS, True),
])
def test_who_reaches_what(name: str, src: Peer, dst: Peer, port: int, ports: dict[str, int], ok: bool) -> None:
    assert allowed(src, dst, port, ports) is ok, name


def test_every_fracgpu_pod_has_its_ingress_narrowed() -> None:
    pods: list[Obj] = of_kind("Deployment") + of_kind("DaemonSet")
    for w in pods:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert any(selector_matches(p["spec"]["podSelector"], labels) and "Ingress" in p["spec"]["policyTypes"]
                   for p in of_kind("NetworkPolicy")), w["metadata"]["name"]


def test_every_named_port_exists_on_the_pods_it_selects() -> None:
    for p in of_kind("NetworkPolicy"):
        selected = [w for w in of_kind("Deployment") + of_kind("DaemonSet")
                    if selector_matches(p["spec"]["podSelector"], w["spec"]["template"]["metadata"]["labels"])]
        assert selected, p["metadata"]["name"]
        for rule in p["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                for w in selected:
                    names_ = {q["name"] for c in w["spec"]["template"]["spec"]["containers"] for q in c.get("ports", [])}
                    assert port["port"] in names_, (p["metadata"]["name"], port)

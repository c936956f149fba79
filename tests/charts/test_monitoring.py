"""Metrics collection: the optional Prometheus Operator objects (manifests/monitoring/, the chart's
metrics.serviceMonitor.enabled) and the plain scrape config (dashboards/prometheus-scrape.yaml) reach
every fracgpu component on the port and with the scheme it serves /metrics on, and nothing else.

Neither a Prometheus nor its operator runs here: Debian's promtool is built without Kubernetes service
discovery and no PyPI package ships the ServiceMonitor CRD, so the scrape config's relabelling is run
by a small model of Prometheus's (below, after its documentation) on the pods the manifests create,
and the ServiceMonitor is checked against a hand-written, closed schema of its CRD's fields.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from fracgpu.api.v1beta1 import names
from tests.manifests.render import MANIFESTS, ROOT, Obj, by_file, kubectl_kustomize, of_kind
from tests.manifests.test_schemas import SCHEMAS, VERSIONS

MONITORING = MANIFESTS / "monitoring"
SCRAPE = ROOT / "dashboards" / "prometheus-scrape.yaml"
SERVICE_MONITOR_SCHEMA = json.loads((SCHEMAS / "monitoring.coreos.com-v1-servicemonitor.json").read_text())
# (component, container port name): where each component serves /metrics (the webhook and the
# extender on their HTTPS port, fracgpu/{webhook,extender}/app.py; the others on --metrics-port).
# fracgpu-scheduler's https port is kube-scheduler's, whose /metrics wants a token: not scraped.
SCRAPED = {("device-plugin", "metrics"), ("controller", "metrics"), ("extender", "https"), ("webhook", "https")}


def monitoring() -> list[Obj]:
    return [o for _, objs in by_file(MONITORING) for o in objs]


def workloads() -> list[Obj]:
    return of_kind("Deployment") + of_kind("DaemonSet")


def component(o: Obj) -> str:
    return str(o["metadata"]["labels"]["app.kubernetes.io/component"])


def serves_tls(workload: Obj, port_name: str) -> bool:
    """A port is TLS when the kubelet probes it over HTTPS (every fracgpu port is probed)."""
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    probes = [p["httpGet"] for p in (c.get("livenessProbe"), c.get("readinessProbe")) if p and "httpGet" in p]
    schemes = {p.get("scheme", "HTTP") for p in probes if p["port"] == port_name}
    assert len(schemes) == 1, (workload["metadata"]["name"], port_name, schemes)
    return schemes == {"HTTPS"}


# -- manifests/monitoring/ ------------------------------------------------------------------------


def test_the_monitoring_kustomization_renders_its_files() -> None:
    by_kubectl = kubectl_kustomize(MONITORING)
    if by_kubectl is None:
        pytest.skip("kubectl is not installed")
    key = lambda o: json.dumps(o, sort_keys=True)  # noqa: E731
    assert sorted(map(key, by_kubectl)) == sorted(map(key, monitoring()))


@pytest.mark.parametrize("version", VERSIONS)
def test_the_monitoring_objects_validate(version: str) -> None:
    for o in monitoring():
        if o["kind"] == "ServiceMonitor":
            jsonschema.validate(o, SERVICE_MONITOR_SCHEMA)
        else:
            kubernetes_validate.validate(o, version, strict=True)


def test_the_service_monitor_schema_is_strict() -> None:
    (sm,) = [o for o in monitoring() if o["kind"] == "ServiceMonitor"]
    jsonschema.Draft7Validator.check_schema(SERVICE_MONITOR_SCHEMA)
    for path, value in ((["endpoints", 0, "intervall"], "30s"), (["endpoints", 1, "tlsConfig", "serverNmae"], "x"),
                        (["endpoints", 0, "interval"], "30 s"), (["endpoints", 0, "scheme"], "grpc")):
        bad = copy.deepcopy(sm)
        node = bad["spec"]
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SERVICE_MONITOR_SCHEMA)


def test_each_metrics_service_lists_the_pods_of_one_component_on_their_metrics_port() -> None:
    services = [o for o in monitoring() if o["kind"] == "Service"]
    seen = set()
    for svc in services:
        assert svc["metadata"]["namespace"] == names.DEFAULT_NAMESPACE and svc["spec"]["clusterIP"] == "None"
        (w,) = [w for w in workloads()
                if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert component(svc) == component(w)
        (c,) = w["spec"]["template"]["spec"]["containers"]
        (port,) = svc["spec"]["ports"]
        (declared,) = [p for p in c["ports"] if p["name"] == port["targetPort"]]
        assert port["port"] == declared["containerPort"]
        seen.add((component(w), port["targetPort"]))
    assert seen == SCRAPED
    # the extender's followers are not Ready (only the leader is) but have metrics too
    extender = next(s for s in services if component(s) == "extender")
    assert extender["spec"]["publishNotReadyAddresses"] is True


def test_the_service_monitor_scrapes_every_metrics_service_with_its_scheme_and_ca() -> None:
    objs = monitoring()
    (sm,) = [o for o in objs if o["kind"] == "ServiceMonitor"]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [names.DEFAULT_NAMESPACE]}
    selected = [o for o in objs if o["kind"] == "Service"
                and sm["spec"]["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()]
    assert len(selected) == len(SCRAPED)
    endpoints = {e["port"]: e for e in sm["spec"]["endpoints"]}
    certificates = {c["spec"]["secretName"]: c for c in of_kind("Certificate")}
    for svc in selected:
        (port,) = svc["spec"]["ports"]
        e = endpoints[port["name"]]  # every Service's port has an endpoint
        (w,) = [w for w in workloads() if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert e["path"] == "/metrics"
        assert e["scheme"] == ("https" if serves_tls(w, port["targetPort"]) else "http"), svc["metadata"]["name"]
        if e["scheme"] == "https":
            # the CA of the Secret the pods serve, and a name their certificate has
            ca = e["tlsConfig"]["ca"]["secret"]
            assert ca["key"] == "ca.crt"
            mounted = {v["secret"]["secretName"] for v in w["spec"]["template"]["spec"]["volumes"] if "secret" in v}
            assert ca["name"] in mounted
            assert e["tlsConfig"]["serverName"] in certificates[ca["name"]]["spec"]["dnsNames"]
    # no endpoint without a Service port to go with it
    assert set(endpoints) == {p["name"] for s in selected for p in s["spec"]["ports"]}


# -- dashboards/prometheus-scrape.yaml, through a model of Prometheus's relabelling ----------------


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(pod: Obj, ip: str) -> list[dict[str, str]]:
    """What Prometheus's Kubernetes service discovery (role: pod) makes of a pod: one target per
    declared container port, with the __meta_kubernetes_* labels it documents."""
    meta, spec = pod["metadata"], pod["spec"]
    common = {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_pod_name": meta["name"],
              "__meta_kubernetes_pod_ip": ip, "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
              "__meta_kubernetes_pod_ready": "true", "__meta_kubernetes_pod_phase": "Running"}
    for k, v in meta.get("labels", {}).items():
        common[f"__meta_kubernetes_pod_label_{_sanitize(k)}"] = v
        common[f"__meta_kubernetes_pod_labelpresent_{_sanitize(k)}"] = "true"
    targets = []
    for c in spec["containers"]:
        for p in c.get("ports", []):
            targets.append({**common, "__address__": f"{ip}:{p['containerPort']}",
                            "__meta_kubernetes_pod_container_name": c["name"],
                            "__meta_kubernetes_pod_container_port_name": p.get("name", ""),
                            "__meta_kubernetes_pod_container_port_number": str(p["containerPort"]),
                            "__meta_kubernetes_pod_container_port_protocol": p.get("protocol", "TCP")})
    return targets


def relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus's relabel_config for the actions the config uses: the source labels joined by the
    separator (";"), matched by the fully anchored regex (default "(.*)"); keep/drop; replace writes
    the expanded replacement (default "$1") to target_label, and an empty result deletes it."""
    labels = dict(labels)
    for c in configs:
        action = c.get("action", "replace")
        value = c.get("separator", ";").join(labels.get(s, "") for s in c.get("source_labels", []))
        m = re.fullmatch(c.get("regex", "(.*)"), value)
        if (action == "keep" and m is None) or (action == "drop" and m is not None):
            return None
        if action == "replace" and m is not None:
            out = m.expand(re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", c.get("replacement", "$1")))
            if out:
                labels[c["target_label"]] = out
            else:
                labels.pop(c["target_label"], None)
        elif action not in ("keep", "drop", "replace"):
            raise NotImplementedError(action)
    return labels


def scrape(jobs: list[dict[str, Any]], pods: list[tuple[Obj, str]]) -> list[dict[str, str]]:
    """The targets each job scrapes: discovery, relabelling, then Prometheus's own labels."""
    out = []
    for job in jobs:
        (sd,) = job["kubernetes_sd_configs"]
        assert sd["role"] == "pod"
        for pod, ip in pods:
            if "namespaces" in sd and pod["metadata"]["namespace"] not in sd["namespaces"]["names"]:
                continue
            for t in pod_targets(pod, ip):
                start = {**t, "job": job["job_name"], "__scheme__": job.get("scheme", "http"),
                         "__metrics_path__": job.get("metrics_path", "/metrics")}
                kept = relabel(start, job.get("relabel_configs", []))
                if kept is not None:
                    out.append(kept)
    return out


def cluster_pods() -> list[tuple[Obj, str]]:
    """One pod per fracgpu workload as the manifests make it, and pods of others beside them."""
    pods = []
    for i, w in enumerate(workloads()):
        t = w["spec"]["template"]
        pods.append(({"metadata": {**t["metadata"], "name": f"{w['metadata']['name']}-0",
                                   "namespace": w["metadata"]["namespace"]},
                      "spec": {**t["spec"], "nodeName": "gpu-1"}}, f"10.0.0.{i + 1}"))
    stranger = {"metadata": {"name": "web", "namespace": "default", "labels": {"app.kubernetes.io/part-of": "fracgpu",
                                                                              "app.kubernetes.io/component": "extender"}},
                "spec": {"containers": [{"name": "web", "ports": [{"name": "https", "containerPort": 443},
                                                                  {"name": "metrics", "containerPort": 9402}]}]}}
    neighbour = {"metadata": {"name": "sidecar", "namespace": names.DEFAULT_NAMESPACE, "labels": {"app": "other"}},
                 "spec": {"containers": [{"name": "x", "ports": [{"name": "metrics", "containerPort": 9100}]}]}}
    return [*pods, (stranger, "10.0.1.1"), (neighbour, "10.0.1.2")]


def scrape_jobs() -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = yaml.safe_load(SCRAPE.read_text())["scrape_configs"]
    return jobs


_RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "source_labels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "separator": {"type": "string"}, "regex": {"type": "string"}, "target_label": {"type": "string"},
    "replacement": {"type": "string"}, "action": {"enum": ["replace", "keep", "drop"]}}}
# the fields of Prometheus's scrape_config that the file uses (docs: configuration/configuration.md), closed
_SCRAPE_CONFIG = {"type": "object", "required": ["scrape_configs"], "additionalProperties": False, "properties": {
    "scrape_configs": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["job_name", "kubernetes_sd_configs"],
        "properties": {
            "job_name": {"type": "string"}, "scheme": {"enum": ["http", "https"]}, "metrics_path": {"type": "string"},
            "tls_config": {"type": "object", "additionalProperties": False, "properties": {
                "insecure_skip_verify": {"type": "boolean"}, "ca_file": {"type": "string"},
                "server_name": {"type": "string"}}},
            "kubernetes_sd_configs": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["role"], "properties": {
                    "role": {"enum": ["node", "service", "pod", "endpoints", "endpointslice", "ingress"]},
                    "namespaces": {"type": "object", "additionalProperties": False,
                                   "properties": {"names": {"type": "array", "items": {"type": "string"}}}}}}},
            "relabel_configs": {"type": "array", "items": _RELABEL}}}}}}  # fmt: skip


def test_the_scrape_config_has_only_fields_prometheus_knows() -> None:
    jsonschema.validate(yaml.safe_load(SCRAPE.read_text()), _SCRAPE_CONFIG)
    for job in scrape_jobs():
        for c in job["relabel_configs"]:
            re.compile(c.get("regex", "(.*)"))  # Prometheus's RE2 syntax is a subset of this


def test_the_relabel_model_anchors_and_joins_as_prometheus_does() -> None:
    keep = [{"source_labels": ["a", "b"], "regex": "x;y", "action": "keep"}]
    assert relabel({"a": "x", "b": "y"}, keep) is not None
    assert relabel({"a": "xx", "b": "y"}, keep) is None  # anchored at both ends
    assert relabel({"a": "x"}, keep) is None  # a missing label is ""
    assert relabel({"a": "v1"}, [{"source_labels": ["a"], "regex": "v(.*)", "target_label": "t"}])["t"] == "1"  # type: ignore[index]
    assert relabel({"a": "v"}, [{"source_labels": ["a"], "regex": "v(.*)", "target_label": "t"}]) == {"a": "v"}


def test_the_scrape_config_scrapes_each_component_on_its_metrics_port_with_its_scheme() -> None:
    targets = scrape(scrape_jobs(), cluster_pods())
    by_component = {w["metadata"]["labels"]["app.kubernetes.io/component"]: w for w in workloads()}
    got = set()
    for t in targets:
        w = by_component[t["component"]]
        (c,) = w["spec"]["template"]["spec"]["containers"]
        (port,) = [p for p in c["ports"] if t["__address__"].endswith(f":{p['containerPort']}")]
        assert t["__scheme__"] == ("https" if serves_tls(w, port["name"]) else "http"), t
        assert t["__metrics_path__"] == "/metrics" and t["pod"].startswith(w["metadata"]["name"])
        assert t["node"] == "gpu-1"
        got.add((t["component"], port["name"]))
    assert len(targets) == len(got) == len(SCRAPED)  # one target each, none twice
    assert got == SCRAPED


def test_installed_elsewhere_only_the_namespace_changes_in_the_scrape_config() -> None:
    """The jobs name fracgpu-system once each; the relabelling depends on labels and port names only."""
    text = SCRAPE.read_text()
    moved = yaml.safe_load(text.replace(f"names: [{names.DEFAULT_NAMESPACE}]", "names: [gpu-ops]"))["scrape_configs"]
    pods = [({**p, "metadata": {**p["metadata"], "namespace": "gpu-ops"}}, ip) for p, ip in cluster_pods()
            if p["metadata"]["namespace"] == names.DEFAULT_NAMESPACE]
    assert {(t["component"], t["job"]) for t in scrape(moved, pods)} == {
        (t["component"], t["job"]) for t in scrape(scrape_jobs(), cluster_pods())}
    assert len(scrape(scrape_jobs(), pods)) == 0


def test_every_fracgpu_pod_is_covered() -> None:
    """A new component with a metrics port must be added to the jobs (and to SCRAPED)."""
    ports = {(component(w), p["name"]) for w in workloads() for c in w["spec"]["template"]["spec"]["containers"]
             for p in c["ports"]}
    assert {p for p in ports if p[1] == "metrics"} <= SCRAPED
    assert ports >= SCRAPED

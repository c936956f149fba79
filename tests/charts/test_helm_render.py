"""charts/fracgpu rendered by the real helm (v3.8.1, tests/charts/conftest.py): lint, the default render
is the kustomize base, and every main value combination renders objects that validate offline against
the Kubernetes schemas and do what the values say."""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import celpy
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp import web
from cryptography import x509

from fracgpu.api.v1beta1 import names
from fracgpu.core.tenant import Limits, default_limits
from fracgpu.extender.app import make_app
from fracgpu.extender.main import build_tls, parse_args
from fracgpu.servingtls import make_server_context
from scripts.gen_chart import CHART
from tests.charts.render import HelmFailed, Obj, container, env, find, helm_run, template
from tests.extender.builders import bind_args, node_obj, pod_obj
from tests.extender.conftest import build_world
from tests.manifests.cel import Request, run_policy
from tests.manifests.render import rendered
from tests.manifests.test_schemas import _CERT_MANAGER, SCHEMAS

SERVICE_MONITOR = json.loads((SCHEMAS / "monitoring.coreos.com-v1-servicemonitor.json").read_text())
SCHEDULER_CONFIG = json.loads((SCHEMAS / "kubescheduler.config.k8s.io-v1.json").read_text())
FRACGPU = ("fracgpu-controller", "fracgpu-extender", "fracgpu-webhook")  # Deployments of the fracgpu image
POD = pod_obj("p1", 50)
TLS_SECRETS = {"fracgpu-extender-tls", "fracgpu-scheduler-client-tls", "fracgpu-webhook-tls"}


def _key(o: Obj) -> str:
    return json.dumps(o, sort_keys=True)


@pytest.mark.parametrize("args", [(), ("--set", "tls.mode=self-signed", "--set", "metrics.serviceMonitor.enabled=true")],
                         ids=["defaults", "self-signed-with-service-monitor"])
def test_helm_lint_passes_strict(helm: Path, args: tuple[str, ...]) -> None:
    out = helm_run(helm, "lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in out, out


def test_the_default_render_is_the_kustomize_base(helm: Path) -> None:
    """With default values the chart renders exactly the objects of `kubectl apply -k manifests/`, less
    the Namespace (Helm installs into its release namespace, created by --create-namespace)."""
    chart = template(helm)
    base = [o for o in rendered() if not (o["kind"] == "Namespace" and o["metadata"]["name"] == names.DEFAULT_NAMESPACE)]
    assert sorted(map(_key, chart)) == sorted(map(_key, base))


# -- value combinations --------------------------------------------------------------------------


def _quota_env(objs: list[Obj]) -> tuple[dict[str, str | None], dict[str, str | None]]:
    extender = env(container(objs, "Deployment", "fracgpu-extender"))
    plugin = env(container(objs, "DaemonSet", "fracgpu-device-plugin"))
    return ({k: v for k, v in extender.items() if "DEFAULT_" in k}, {k: v for k, v in plugin.items() if "DEFAULT_" in k})


def _limits(objs: list[Obj]) -> tuple[Limits, Limits]:
    """What the extender and the plugin make of their environment (the programs' own parser)."""
    extender, plugin = _quota_env(objs)
    return (default_limits(extender.get("FRACGPU_EXTENDER_DEFAULT_MEMORY_QUOTA"), extender.get("FRACGPU_EXTENDER_DEFAULT_CORE_QUOTA")),
            default_limits(plugin.get("FRACGPU_DEFAULT_MEMORY_QUOTA"), plugin.get("FRACGPU_DEFAULT_CORE_QUOTA")))


def check_defaults(objs: list[Obj]) -> None:
    assert {o["kind"] for o in objs} >= {"Certificate", "Issuer"}
    assert not [o for o in objs if o["kind"] in ("Secret", "ServiceMonitor")]
    check_quotas_closed(objs)  # closed by default, as the base (docs/security.md)


def check_quotas_open(objs: list[Obj]) -> None:
    assert _quota_env(objs) == ({}, {})
    (lim, plugin) = _limits(objs)
    assert (lim.memory, lim.cores) == (plugin.memory, plugin.cores) == (None, None)


def check_self_signed(objs: list[Obj]) -> None:
    assert not [o for o in objs if o["apiVersion"].startswith("cert-manager.io/")]
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    assert set(secrets) == TLS_SECRETS
    for s in secrets.values():
        assert s["type"] == "kubernetes.io/tls" and set(s["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    hook = find(objs, "MutatingWebhookConfiguration", "fracgpu-webhook")
    assert "annotations" not in hook["metadata"]  # no cert-manager injector to wait for
    (w,) = hook["webhooks"]
    assert w["clientConfig"]["caBundle"] == secrets["fracgpu-webhook-tls"]["data"]["ca.crt"]
    # the pods that mount them restart when Helm issues new ones
    sums = {find(objs, "Deployment", n)["spec"]["template"]["metadata"]["annotations"]["checksum/tls"]
            for n in ("fracgpu-extender", "fracgpu-webhook", names.SCHEDULER_NAME)}
    assert len(sums) == 1


def check_quotas_closed(objs: list[Obj]) -> None:
    assert _quota_env(objs) == (
        {"FRACGPU_EXTENDER_DEFAULT_MEMORY_QUOTA": "0", "FRACGPU_EXTENDER_DEFAULT_CORE_QUOTA": "0"},
        {"FRACGPU_DEFAULT_MEMORY_QUOTA": "0", "FRACGPU_DEFAULT_CORE_QUOTA": "0"})
    for lim in _limits(objs):
        assert (lim.memory, lim.cores) == (0, 0)


def check_quotas_amounts(objs: list[Obj]) -> None:
    for lim in _limits(objs):
        assert (lim.memory, lim.cores) == (64 * 2**30, 400)


def check_quota_in_bytes(objs: list[Obj]) -> None:
    # a YAML number reaches Helm as a float: printed as is it would be 6.8719476736e+10
    extender, plugin = _quota_env(objs)
    assert extender == {"FRACGPU_EXTENDER_DEFAULT_MEMORY_QUOTA": "68719476736", "FRACGPU_EXTENDER_DEFAULT_CORE_QUOTA": "0"}
    assert plugin == {"FRACGPU_DEFAULT_MEMORY_QUOTA": "68719476736", "FRACGPU_DEFAULT_CORE_QUOTA": "0"}
    for lim in _limits(objs):
        assert (lim.memory, lim.cores) == (64 * 2**30, 0)


def check_custom_images(objs: list[Obj]) -> None:
    for name in FRACGPU:
        c = container(objs, "Deployment", name)
        assert (c["image"], c["imagePullPolicy"]) == ("registry.example.com/fracgpu:v0.2.0", "Always")
    c = container(objs, "DaemonSet", "fracgpu-device-plugin")
    assert c["image"] == "registry.example.com/fracgpu:v0.2.0"
    assert container(objs, "Deployment", names.SCHEDULER_NAME)["image"] == "registry.k8s.io/kube-scheduler:v1.31.4"
    for o in objs:
        if o["kind"] in ("Deployment", "DaemonSet"):
            assert o["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}], o["metadata"]["name"]


def check_node_opt_in(objs: list[Obj]) -> None:
    spec = find(objs, "DaemonSet", "fracgpu-device-plugin")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {names.LABEL_ENABLED: "true", "nvidia.com/gpu.present": "true"}
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]


def check_service_monitor(objs: list[Obj]) -> None:
    sm = find(objs, "ServiceMonitor", "fracgpu")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert {e["interval"] for e in sm["spec"]["endpoints"]} == {"15s"}
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"} == {
        "fracgpu-extender-metrics", "fracgpu-webhook-metrics", "fracgpu-device-plugin-metrics",
        "fracgpu-controller-metrics"}


def check_sizes(objs: list[Obj]) -> None:
    d = find(objs, "Deployment", "fracgpu-extender")
    assert d["spec"]["replicas"] == 3
    assert container(objs, "Deployment", "fracgpu-extender")["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    assert find(objs, "Deployment", "fracgpu-webhook")["spec"]["replicas"] == 2  # the others keep theirs


def _strings(o: Any) -> list[str]:
    if isinstance(o, dict):
        return [s for k, v in o.items() for s in (k, *_strings(v))]
    if isinstance(o, list):
        return [s for v in o for s in _strings(v)]
    return [o] if isinstance(o, str) else []


def check_other_namespace(objs: list[Obj]) -> None:
    """Installed in gpu-ops, nothing points at fracgpu-system, and the policies know the new accounts."""
    for o in objs:
        assert not [s for s in _strings(o) if names.DEFAULT_NAMESPACE in s], f"{o['kind']}/{o['metadata']['name']}"
        if "namespace" in o["metadata"] and o["metadata"]["name"] != "fracgpu-scheduler-extension-apiserver-authentication-reader":
            assert o["metadata"]["namespace"] == "gpu-ops"
    own_node = find(objs, "ValidatingAdmissionPolicy", "fracgpu-plugin-own-node")
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-2"}}
    plugin = Request("system:serviceaccount:gpu-ops:fracgpu-device-plugin", "UPDATE", "nodes", node, node,
                     extra={"authentication.kubernetes.io/node-name": ["gpu-1"]})
    outcome = run_policy(own_node, plugin)
    assert outcome.matched and outcome.denials == ("the fracgpu device plugin of node gpu-1 may write only its own Node",)
    stale = Request("system:serviceaccount:fracgpu-system:fracgpu-device-plugin", "UPDATE", "nodes", node, node)
    assert not run_policy(own_node, stale).matched
    config = yaml.safe_load(find(objs, "ConfigMap", "fracgpu-scheduler-config")["data"]["config.yaml"])
    assert config["extenders"][0]["urlPrefix"] == "https://fracgpu-extender.gpu-ops.svc:8888"
    assert config["leaderElection"]["resourceNamespace"] == "gpu-ops"


@dataclass(frozen=True)
class Install:
    name: str
    values: Obj
    check: Callable[[list[Obj]], None]
    namespace: str = names.DEFAULT_NAMESPACE
    args: tuple[str, ...] = field(default=())


INSTALLS = [
    Install("defaults", {}, check_defaults),
    Install("tls-self-signed", {"tls": {"mode": "self-signed"}}, check_self_signed, namespace="gpu-ops"),
    Install("quotas-open", {"quotas": {"defaultMemory": "", "defaultCores": ""}}, check_quotas_open),
    Install("quotas-amounts", {"quotas": {"defaultMemory": "64Gi", "defaultCores": 400}}, check_quotas_amounts),
    Install("quota-in-bytes", {"quotas": {"defaultMemory": 68719476736}}, check_quota_in_bytes),
    Install("quotas-open-by-set", {}, check_quotas_open,
            args=("--set", "quotas.defaultMemory=", "--set", "quotas.defaultCores=")),
    Install("custom-images", {"image": {"repository": "registry.example.com/fracgpu", "tag": "v0.2.0", "pullPolicy": "Always"},
                              "scheduler": {"image": {"tag": "v1.31.4"}}, "imagePullSecrets": [{"name": "regcred"}]},
            check_custom_images),
    Install("node-opt-in", {"devicePlugin": {"nodeSelector": {"nvidia.com/gpu.present": "true"}, "runtimeClassName": "nvidia",
                                             "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
            check_node_opt_in),
    Install("service-monitor", {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"},
                                                               "interval": "15s"}}}, check_service_monitor),
    Install("sizes", {"extender": {"replicas": 3, "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": None}}},
            check_sizes),
    Install("other-namespace", {"metrics": {"serviceMonitor": {"enabled": True}}}, check_other_namespace, namespace="gpu-ops"),
]  # fmt: skip
SELF_SIGNED = INSTALLS[1]


@pytest.fixture(scope="module")
def render(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[Install], list[Obj]]:
    """Each install rendered once per module (self-signed renders make RSA keys: a second each)."""
    cache: dict[str, list[Obj]] = {}

    def get(install: Install) -> list[Obj]:
        if install.name not in cache:
            cache[install.name] = template(helm, *install.args, namespace=install.namespace,
                                           values=install.values or None, tmp=tmp_path_factory.mktemp(install.name))
        return copy.deepcopy(cache[install.name])

    return get


def _validate(o: Obj, version: str) -> None:
    where = f"{o['kind']}/{o['metadata']['name']}"
    try:
        kubernetes_validate.validate(o, version, strict=True)
        return
    except kubernetes_validate.SchemaNotFoundError:
        pass
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{where} on Kubernetes {version}: {e.message} at {list(e.path)}")
    if o["kind"] in _CERT_MANAGER:
        jsonschema.validate(o, _CERT_MANAGER[o["kind"]])
    elif o["kind"] == "ServiceMonitor":
        jsonschema.validate(o, SERVICE_MONITOR)
    else:
        pytest.fail(f"{where}: no schema for {o['apiVersion']}")


_CEL = celpy.Environment()


def _cel_expressions(o: Obj) -> list[str]:
    if o["kind"] == "ValidatingAdmissionPolicy":
        spec = o["spec"]
        return ([c["expression"] for c in spec.get("matchConditions", [])]
                + [v["expression"] for v in spec.get("variables", [])]
                + [e for v in spec["validations"] for e in (v["expression"], v.get("messageExpression")) if e])
    if o["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        return [c["expression"] for w in o["webhooks"] for c in w.get("matchConditions", [])]
    return []


@functools.cache
def _base_keys() -> frozenset[str]:
    return frozenset(map(_key, rendered()))


@pytest.mark.parametrize("install", INSTALLS, ids=[i.name for i in INSTALLS])
def test_every_install_validates_and_does_what_its_values_say(render: Callable[[Install], list[Obj]],
                                                             install: Install) -> None:
    """Objects the values changed validate against the Kubernetes 1.30 schemas (the others are the base's,
    validated on 1.30-1.33 by tests/manifests) and their CEL still parses; then the install's own check."""
    objs = render(install)
    changed = [o for o in objs if _key(o) not in _base_keys()]
    assert bool(changed) == bool(install.values or install.args or install.namespace != names.DEFAULT_NAMESPACE)
    for o in changed:
        _validate(o, "1.30")
        for expression in _cel_expressions(o):
            _CEL.compile(expression)  # a CEL syntax error raises
    if install.namespace != names.DEFAULT_NAMESPACE:
        assert sum(len(_cel_expressions(o)) for o in changed) >= 20  # every policy was templated and parsed
    config = yaml.safe_load(find(objs, "ConfigMap", "fracgpu-scheduler-config")["data"]["config.yaml"])
    jsonschema.validate(config, SCHEDULER_CONFIG)
    install.check(objs)


# -- self-signed certificates over real TLS -------------------------------------------------------


def _secret_files(objs: list[Obj], name: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in find(objs, "Secret", name)["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def test_self_signed_certificates_are_fresh_at_every_render_and_chain_as_the_components_expect(
        helm: Path, render: Callable[[Install], list[Obj]]) -> None:
    first = render(SELF_SIGNED)
    second = template(helm, "--set", "tls.mode=self-signed", namespace="gpu-ops")
    pem = {n: find(first, "Secret", n)["data"]["tls.crt"] for n in TLS_SECRETS}
    assert all(find(second, "Secret", n)["data"]["tls.crt"] != pem[n] for n in TLS_SECRETS)
    annotation = find(first, "Deployment", names.SCHEDULER_NAME)["spec"]["template"]["metadata"]["annotations"]
    assert annotation != find(second, "Deployment", names.SCHEDULER_NAME)["spec"]["template"]["metadata"]["annotations"]

    def cert(name: str, key: str = "tls.crt") -> x509.Certificate:
        return x509.load_pem_x509_certificate(base64.b64decode(find(first, "Secret", name)["data"][key]))

    # one CA for both ends of scheduler <-> extender, the webhook's own CA in its caBundle
    assert cert("fracgpu-extender-tls", "ca.crt") == cert("fracgpu-scheduler-client-tls", "ca.crt")
    extender, client, webhook = cert("fracgpu-extender-tls"), cert("fracgpu-scheduler-client-tls"), cert("fracgpu-webhook-tls")
    ca = cert("fracgpu-extender-tls", "ca.crt")
    for leaf in (extender, client):
        leaf.verify_directly_issued_by(ca)
    webhook.verify_directly_issued_by(cert("fracgpu-webhook-tls", "ca.crt"))
    san = extender.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "fracgpu-extender.gpu-ops.svc" in san
    assert client.subject.rfc4514_string() == "CN=fracgpu-scheduler"
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usages


async def test_self_signed_certificates_serve_the_schedulers_calls_and_the_api_servers(
        render: Callable[[Install], list[Obj]], tmp_path: Path) -> None:
    """Real TLS with what the chart renders: the extender configured by its Deployment's environment
    and Secret answers kube-scheduler configured by its KubeSchedulerConfiguration and Secret (mutual
    TLS, the urlPrefix's host name verified); the API server's caBundle verifies the webhook."""
    objs = render(SELF_SIGNED)
    c = container(objs, "Deployment", "fracgpu-extender")
    mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "tls")
    files = _secret_files(objs, "fracgpu-extender-tls", tmp_path / "extender")
    tls = build_tls(parse_args([], {k: v.replace(mount, str(files)) for k, v in env(c).items() if v is not None}))
    assert tls is not None and tls.client_names == {"fracgpu-scheduler"}
    world = build_world([node_obj("n1"), POD])
    world.deps.client_names = tls.client_names
    runner = web.AppRunner(make_app(world.deps), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=make_server_context(tls.cert, tls.key, tls.client_ca)).start()
        (ext,) = yaml.safe_load(find(objs, "ConfigMap", "fracgpu-scheduler-config")["data"]["config.yaml"])["extenders"]
        spec = find(objs, "Deployment", names.SCHEDULER_NAME)["spec"]["template"]["spec"]
        volume = next(v["name"] for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "fracgpu-scheduler-client-tls")
        where = next(m["mountPath"] for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume)
        files = _secret_files(objs, "fracgpu-scheduler-client-tls", tmp_path / "scheduler")
        local = {k: v.replace(where, str(files)) for k, v in ext["tlsConfig"].items()}
        client = ssl.create_default_context(cafile=local["caFile"])
        client.load_cert_chain(local["certFile"], local["keyFile"])
        url = urlparse(ext["urlPrefix"])
        assert url.hostname == "fracgpu-extender.gpu-ops.svc"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client)) as s, \
                s.post(f"https://127.0.0.1:{runner.addresses[0][1]}/bind", json=bind_args(POD, "n1"),
                       server_hostname=url.hostname) as r:
            assert (r.status, (await r.json())["Error"]) == (200, "")
        assert [b[:3] for b in world.binder.bindings] == [("default", "p1", "n1")]
    finally:
        await runner.cleanup()

    # the webhook's serving certificate, verified with the caBundle the API server is given
    files = _secret_files(objs, "fracgpu-webhook-tls", tmp_path / "webhook")
    server = make_server_context(str(files / "tls.crt"), str(files / "tls.key"))
    served = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server)
    (w,) = find(objs, "MutatingWebhookConfiguration", "fracgpu-webhook")["webhooks"]
    api_server = ssl.create_default_context(cadata=base64.b64decode(w["clientConfig"]["caBundle"]).decode())
    svc = w["clientConfig"]["service"]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", served.sockets[0].getsockname()[1], ssl=api_server,
                                                  server_hostname=f"{svc['name']}.{svc['namespace']}.svc")
        writer.close()
    finally:
        served.close()
        await served.wait_closed()


def test_bad_values_are_refused_before_anything_renders(helm: Path, tmp_path: Path) -> None:
    cases: list[tuple[Obj, str]] = [
        ({"tls": {"mode": "selfsigned"}}, "tls.mode"),
        ({"quotas": {"defaultMemory": "lots"}}, "quotas.defaultMemory"),
        ({"devicePlugin": {"nodeSelector": {names.LABEL_ENABLED: None}}}, names.LABEL_ENABLED),
        ({"extender": {"replica": 3}}, "replica"),
    ]
    for values, said in cases:
        with pytest.raises(HelmFailed) as e:
            template(helm, values=values, tmp=tmp_path)
        assert "values don't meet the specifications of the schema" in str(e.value) and said in str(e.value)


def test_a_kubernetes_older_than_1_30_is_refused(helm: Path) -> None:
    with pytest.raises(HelmFailed, match=r"kubeVersion: >=1.30.0-0 which is incompatible with Kubernetes v1.29"):
        helm_run(helm, "template", "fracgpu", str(CHART), "--kube-version", "1.29.4")

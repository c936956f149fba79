"""Every rendered object validates offline against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail) of every supported minor version; kinds it has no schema for (cert-manager's,
kube-scheduler's component config) against hand-written ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from fracgpu.api.v1beta1 import names
from tests.manifests.render import Obj, find, rendered

# DESIGN: Kubernetes 1.30+ (ValidatingAdmissionPolicy v1, node-name claims in tokens).
VERSIONS = ["1.30", "1.31", "1.32", "1.33"]
SCHEMAS = Path(__file__).parent / "schemas"

# cert-manager's KeyUsage values (cert-manager.io/v1)
_KEY_USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
    "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
    "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
]

_CERT_MANAGER: dict[str, Any] = {
    "Issuer": {
        "type": "object", "required": ["spec"],
        "properties": {"spec": {
            "type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
            "properties": {k: {"type": "object"} for k in ("selfSigned", "ca", "acme", "vault", "venafi")},
        }},
    },
    "Certificate": {
        "type": "object", "required": ["spec"],
        "properties": {"spec": {
            "type": "object", "additionalProperties": False, "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": {"type": "string"},
                "dnsNames": {"type": "array", "items": {"type": "string"}},
                "commonName": {"type": "string"},
                "isCA": {"type": "boolean"},
                "usages": {"type": "array", "items": {"enum": _KEY_USAGES}},
                "duration": {"type": "string", "pattern": "^([0-9]+(ns|us|ms|s|m|h))+$"},
                "renewBefore": {"type": "string", "pattern": "^([0-9]+(ns|us|ms|s|m|h))+$"},
                "issuerRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"name": {"type": "string"}, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                                   "group": {"type": "string"}},
                },
                "privateKey": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                                   "rotationPolicy": {"enum": ["Never", "Always"]},
                                   "encoding": {"enum": ["PKCS1", "PKCS8"]}},
                },
            },
        }},
    },
}  # fmt: skip


def _name(o: Obj) -> str:
    return f"{o['kind']}/{o['metadata']['name']}"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(version: str) -> None:
    unknown = []
    for obj in rendered():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append(obj["kind"])
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{_name(obj)} on Kubernetes {version}: {e.message} at {list(e.path)}")
    assert sorted(set(unknown)) == sorted(_CERT_MANAGER)


def test_the_validator_is_strict() -> None:
    """Guards the test above: a misspelt field must fail."""
    deployment = copy.deepcopy(find("Deployment", "fracgpu-extender"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30", strict=True)


@pytest.mark.parametrize("kind", sorted(_CERT_MANAGER))
def test_cert_manager_objects(kind: str) -> None:
    objs = [o for o in rendered() if o["kind"] == kind]
    assert objs
    for o in objs:
        assert o["apiVersion"] == "cert-manager.io/v1"
        jsonschema.validate(o, _CERT_MANAGER[kind])


def test_the_certificate_covers_the_webhook_service_and_feeds_its_secret() -> None:
    cert = find("Certificate", "fracgpu-webhook")
    svc = find("Service", "fracgpu-webhook")
    assert f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc" in cert["spec"]["dnsNames"]
    volumes = find("Deployment", "fracgpu-webhook")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": cert["spec"]["secretName"]}} in volumes
    hook = find("MutatingWebhookConfiguration", "fracgpu-webhook")
    assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "fracgpu-system/fracgpu-webhook"


def test_the_extender_and_the_scheduler_speak_mutual_tls_with_certificates_that_exist() -> None:
    issuers = {o["metadata"]["name"]: o for o in rendered() if o["kind"] == "Issuer"}
    certs = {o["metadata"]["name"]: o for o in rendered() if o["kind"] == "Certificate"}
    ca, server, client = certs["fracgpu-extender-ca"], certs["fracgpu-extender"], certs["fracgpu-scheduler-client"]
    assert ca["spec"]["isCA"] is True and ca["spec"]["issuerRef"]["name"] in issuers
    ca_issuer = issuers[server["spec"]["issuerRef"]["name"]]
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert client["spec"]["issuerRef"] == server["spec"]["issuerRef"]  # one CA for both ends
    assert "server auth" in server["spec"]["usages"] and "client auth" in client["spec"]["usages"]
    # the serving certificate covers the Service the scheduler calls
    (ext,) = scheduler_config()["extenders"]
    url = urlparse(ext["urlPrefix"])
    assert url.scheme == "https" and ext["enableHTTPS"] is True
    assert url.hostname in server["spec"]["dnsNames"]
    # the extender serves its Secret and requires the scheduler's certificate
    spec = find("Deployment", "fracgpu-extender")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
    assert {"name": "tls", "secret": {"secretName": server["spec"]["secretName"]}} in spec["volumes"]
    assert env["FRACGPU_EXTENDER_TLS_CERT"] == f"{mount['mountPath']}/tls.crt"
    assert env["FRACGPU_EXTENDER_TLS_KEY"] == f"{mount['mountPath']}/tls.key"
    assert env["FRACGPU_EXTENDER_CLIENT_CA"] == f"{mount['mountPath']}/ca.crt"  # the CA of both ends
    assert env["FRACGPU_EXTENDER_CLIENT_NAMES"] == client["spec"]["commonName"]
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"]["scheme"] == "HTTPS"
    # the scheduler mounts its client Secret where tlsConfig points
    sched = find("Deployment", names.SCHEDULER_NAME)["spec"]["template"]["spec"]
    (k,) = sched["containers"]
    vol = next(v for v in sched["volumes"] if v.get("secret", {}).get("secretName") == client["spec"]["secretName"])
    where = next(m["mountPath"] for m in k["volumeMounts"] if m["name"] == vol["name"])
    tls = ext["tlsConfig"]
    assert (tls["certFile"], tls["keyFile"], tls["caFile"]) == (f"{where}/tls.crt", f"{where}/tls.key", f"{where}/ca.crt")
    assert not tls.get("insecure")


def scheduler_config() -> dict[str, Any]:
    cm = find("ConfigMap", "fracgpu-scheduler-config")
    config: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return config


def test_the_scheduler_configuration_validates() -> None:
    schema = json.loads((SCHEMAS / "kubescheduler.config.k8s.io-v1.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(scheduler_config(), schema)


def test_the_scheduler_schema_refuses_a_misspelt_field() -> None:
    schema = json.loads((SCHEMAS / "kubescheduler.config.k8s.io-v1.json").read_text())
    config = scheduler_config()
    config["extenders"][0]["nodeCacheCapabel"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def test_the_scheduler_configuration_says_what_design_asks() -> None:
    config = scheduler_config()
    election = config["leaderElection"]
    assert election["leaderElect"] is True
    # its own Lease, not kube-scheduler's: sharing one would make the two schedulers take turns
    assert election["resourceName"] == names.SCHEDULER_NAME
    assert election["resourceNamespace"] == names.DEFAULT_NAMESPACE
    assert config["percentageOfNodesToScore"] == 100
    assert [p["schedulerName"] for p in config["profiles"]] == [names.SCHEDULER_NAME]
    (ext,) = config["extenders"]
    assert (ext["filterVerb"], ext["prioritizeVerb"], ext["bindVerb"]) == ("filter", "prioritize", "bind")
    assert ext["nodeCacheCapable"] is True
    assert ext["ignorable"] is False
    assert ext["weight"] >= 1
    assert ext["httpTimeout"]
    assert ext["managedResources"] == [
        {"name": names.RESOURCE_CORE, "ignoredByScheduler": False},
        {"name": names.RESOURCE_MEMORY, "ignoredByScheduler": True},
    ]
    # the urlPrefix reaches the extender's Service
    url = urlparse(ext["urlPrefix"])
    svc = find("Service", "fracgpu-extender")
    assert url.hostname == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    assert url.port in {p["port"] for p in svc["spec"]["ports"]}
    # the Deployment mounts this ConfigMap where --config points
    deployment = find("Deployment", names.SCHEDULER_NAME)
    spec = deployment["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert "--config=/etc/fracgpu-scheduler/config.yaml" in c["command"]
    assert {"name": "config", "configMap": {"name": "fracgpu-scheduler-config"}} in spec["volumes"]
    assert {"name": "config", "mountPath": "/etc/fracgpu-scheduler", "readOnly": True} in c["volumeMounts"]
    # its lease is the one its Role may update
    role = find("Role", "fracgpu-scheduler")
    assert any(election["resourceName"] in r.get("resourceNames", []) and "update" in r["verbs"]
               for r in role["rules"])

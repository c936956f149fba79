#!/usr/bin/env python3
"""Build the Helm chart charts/fracgpu from the kustomize base, manifests/ (the one source of truth).

    python3 scripts/gen_chart.py          # regenerate charts/fracgpu after changing manifests/
    python3 scripts/gen_chart.py --check  # exit 1 when the committed chart is stale

Every object of `kubectl kustomize manifests/` (and of manifests/monitoring/, behind a value)
becomes a template with only the values-driven fields replaced: the namespace (everywhere, also
inside the admission policies' CEL and the scheduler's configuration), images, replicas,
resources, the device plugin's node selection, the default quota, the TLS mode and the
ServiceMonitor. The defaults in values.yaml are read from the base, so `helm template` with them
renders the base's objects (tests/charts/ checks that, and validates every value combination
against the Kubernetes schemas). The chart leaves out the Namespace object (Helm installs into
its release namespace) and installs the CRDs from crds/ (copied verbatim).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from fracgpu.api.v1beta1 import names  # noqa: E402
from scripts import gen_config_reference as configref  # noqa: E402
from tests.manifests.render import MANIFESTS, by_file, kubectl_kustomize, kustomization  # noqa: E402

Obj = dict[str, Any]
CHART = ROOT / "charts" / "fracgpu"
MONITORING = MANIFESTS / "monitoring"
REGENERATE = "python3 scripts/gen_chart.py"
NS = names.DEFAULT_NAMESPACE
HELPERS = "_helpers.tpl"
TLS_MEMO = "_fracgpuTLS"  # where the self-signed material is kept for the render (all templates share .Values)
CERT_MANAGER = 'eq .Values.tls.mode "cert-manager"'
SELF_SIGNED = 'eq .Values.tls.mode "self-signed"'
SERVICE_MONITOR = ".Values.metrics.serviceMonitor.enabled"
INJECT_CA = "cert-manager.io/inject-ca-from"
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")
WEBHOOK_CONFIGS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
# the commands that take the default quota, and the flags that set it
QUOTA_COMMANDS = ("extender", "device-plugin")
QUOTA_FLAGS = {"defaultMemory": "--default-memory-quota", "defaultCores": "--default-core-quota"}


class GenerationError(RuntimeError):
    """The base has something the generator does not know how to template; the message says what."""


# -- markers: placeholders in the object that become template text after yaml.dump ---------------

_TOKEN = re.compile(r"FRACGPU([TVKL])(\d{4})X")
Block = Callable[[int], list[str]]  # column -> lines (without the column's indentation)


@dataclass
class Markers:
    """T: a scalar replaced by template text; V: a value replaced by `toYaml` of a value;
    K: a mapping key replaced by lines; L: a list item replaced by lines."""

    scalars: dict[str, str] = field(default_factory=dict)
    blocks: dict[str, tuple[str, str | Block]] = field(default_factory=dict)

    def _token(self, kind: str) -> str:
        return f"FRACGPU{kind}{len(self.scalars) + len(self.blocks):04d}X"

    def scalar(self, template: str) -> str:
        token = self._token("T")
        self.scalars[token] = template
        return token

    def value(self, expression: str) -> str:
        token = self._token("V")
        self.blocks[token] = ("V", expression)
        return token

    def key(self, block: Block) -> str:
        token = self._token("K")
        self.blocks[token] = ("K", block)
        return token

    def item(self, block: Block) -> str:
        token = self._token("L")
        self.blocks[token] = ("L", block)
        return token

    def expand(self, text: str) -> str:
        out: list[str] = []
        for line in text.split("\n"):
            m = _TOKEN.search(line)
            if m is None or m.group(1) == "T":
                out.append(_TOKEN.sub(lambda t: self.scalars[t.group(0)], line))
                continue
            kind, body = self.blocks[m.group(0)]
            indent = len(line) - len(line.lstrip(" "))
            if kind == "V":
                assert isinstance(body, str)
                column = indent + (2 if line.lstrip().startswith("- ") else 0)
                out.append(line[: m.start()].rstrip())
                out.append(f"{' ' * (column + 2)}{{{{- toYaml {body} | nindent {column + 2} }}}}")
                continue
            expected = f"{m.group(0)}: null" if kind == "K" else f"- {m.group(0)}"
            if line.strip() != expected:
                raise GenerationError(f"marker {m.group(0)} landed on {line!r}")
            assert callable(body)
            out += [f"{' ' * indent}{b}" for b in body(indent)]
        return "\n".join(out)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def dump(obj: Obj) -> str:
    text: str = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=10**6, allow_unicode=True)
    return text


def render(obj: Obj, mk: Markers) -> str:
    """An object as template text: Helm's delimiters escaped, the namespace templated, markers expanded."""
    text = dump(obj).rstrip("\n")
    text = text.replace("{{", '{{ "{{" }}').replace(NS, "{{ .Release.Namespace }}")
    return mk.expand(text)


def go_string(s: str) -> str:
    """A Go template string expression for `s`, with the release namespace where the base has NS."""
    if NS in s:
        return f"(printf {json.dumps(s.replace('%', '%%').replace(NS, '%s'))} $.Release.Namespace)"
    return json.dumps(s)


# -- reading the base --------------------------------------------------------------------------


def _key(o: Obj) -> str:
    return json.dumps(o, sort_keys=True)


def read(directory: Path) -> list[tuple[Path, list[Obj]]]:
    """The objects of each file, in kustomization order; where kubectl is installed, checked against
    `kubectl kustomize` (a transformer the file reading does not model would make them differ)."""
    files = by_file(directory)
    by_kubectl = kubectl_kustomize(directory)
    if by_kubectl is not None:
        mine = sorted(_key(o) for _, objs in files for o in objs)
        if mine != sorted(map(_key, by_kubectl)):
            raise GenerationError(f"`kubectl kustomize {directory.relative_to(ROOT)}` renders objects that differ from "
                                  "its files: teach tests/manifests/render.py the kustomization's new transformer")
    return files


def name_of(o: Obj) -> str:
    return f"{o['kind']}/{o['metadata']['name']}"


def component_of(o: Obj) -> str:
    component = o["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    if not component:
        raise GenerationError(f"{name_of(o)} has no label app.kubernetes.io/component (it names its values)")
    return str(component)


def values_key(component: str) -> str:
    head, *rest = component.split("-")
    return head + "".join(p.capitalize() for p in rest)


def split_image(image: str) -> tuple[str, str]:
    repository, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        raise GenerationError(f"image {image!r} has no tag")
    return repository, tag


def pod_spec(o: Obj) -> Obj | None:
    if o["kind"] not in WORKLOADS:
        return None
    spec: Obj = o["spec"]["template"]["spec"]
    return spec


def containers(spec: Obj) -> list[Obj]:
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def duration_days(text: str | None, default_hours: int = 2160) -> int:
    """A cert-manager duration ("8760h", "720h30m") in whole days, rounded up (cert-manager's default: 90 days)."""
    if text is None:
        return default_hours // 24
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or parts is None:
        raise GenerationError(f"duration {text!r}: only h, m and s are understood")
    seconds = int(parts[1] or 0) * 3600 + int(parts[2] or 0) * 60 + int(parts[3] or 0)
    return max(1, -(-seconds // 86400))


# -- the plan: what the base says, read once -----------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """A leaf Certificate of the base, as Helm issues it in self-signed mode."""

    certificate: str
    secret: str
    common_name: str
    dns_names: tuple[str, ...]
    days: int
    ca: str  # the CA Certificate that signs it, or "" when cert-manager self-signs it
    labels: dict[str, str]


@dataclass
class Plan:
    image_repository: str
    image_tag: str
    pull_policy: str
    other_images: dict[str, str]  # repository -> values key of its component (the scheduler's)
    components: dict[str, Obj]  # values key -> default values, in base order
    cas: dict[str, tuple[str, int]]  # CA Certificate name -> (common name, days)
    leaves: list[Leaf]
    secrets: dict[str, str]  # Secret name -> Certificate name, for every leaf
    quota_env: dict[str, dict[str, str]]  # command -> quotas value name -> environment variable
    quotas: dict[str, str]  # quotas value name -> the base's default (the same on every command)
    interval: str


def _certificates(objs: list[Obj]) -> tuple[dict[str, tuple[str, int]], list[Leaf]]:
    issuers = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Issuer"}
    certs = [o for o in objs if o["kind"] == "Certificate"]
    by_secret = {c["spec"]["secretName"]: c["metadata"]["name"] for c in certs}
    cas: dict[str, tuple[str, int]] = {}
    leaves: list[Leaf] = []
    for c in certs:
        spec, cname = c["spec"], c["metadata"]["name"]
        ref = spec["issuerRef"]
        if ref.get("kind", "Issuer") != "Issuer" or ref["name"] not in issuers:
            raise GenerationError(f"Certificate/{cname}: issuer {ref} is not an Issuer of the base")
        issuer = issuers[ref["name"]]
        days = duration_days(spec.get("duration"))
        if "selfSigned" in issuer and spec.get("isCA"):
            cas[cname] = (spec.get("commonName", cname), days)
            continue
        if "selfSigned" in issuer:
            ca = ""
        elif "ca" in issuer and issuer["ca"]["secretName"] in by_secret:
            ca = by_secret[issuer["ca"]["secretName"]]
        else:
            raise GenerationError(f"Certificate/{cname}: only selfSigned and ca Issuers of the base are understood")
        dns = tuple(spec.get("dnsNames", ()))
        leaves.append(Leaf(cname, spec["secretName"], spec.get("commonName") or (dns[0] if dns else cname), dns,
                           days, ca, dict(c["metadata"].get("labels", {}))))
    for leaf in leaves:
        if leaf.ca and leaf.ca not in cas:
            raise GenerationError(f"Certificate/{leaf.certificate}: its CA {leaf.ca} is not a self-signed CA")
    return cas, leaves


def _quota_env() -> dict[str, dict[str, str]]:
    """The environment variables of --default-*-quota, from the flag tables (scripts/gen_config_reference.py)."""
    docs = {d.name: d for d in configref.commands()}
    out: dict[str, dict[str, str]] = {}
    for command in QUOTA_COMMANDS:
        flags = {f: d for d in docs[command].flags for f in d.flags}
        out[command] = {}
        for value, flag in QUOTA_FLAGS.items():
            if flag not in flags or not flags[flag].env:
                raise GenerationError(f"`fracgpu {command}` has no {flag} with an environment variable")
            out[command][value] = flags[flag].env[0]
    return out


def plan(base: list[Obj], monitoring: list[Obj]) -> Plan:
    (image,) = [i for i in kustomization().get("images", [])]
    repository = image.get("newName", image["name"])
    policies: set[str] = set()
    others: dict[str, str] = {}
    components: dict[str, Obj] = {}
    for o in base:
        spec = pod_spec(o)
        if spec is None:
            continue
        key = values_key(component_of(o))
        if key in components:
            raise GenerationError(f"{name_of(o)}: a second workload of component {key}")
        values: Obj = {}
        if o["kind"] == "DaemonSet":
            values["nodeSelector"] = spec.get("nodeSelector", {})
            values["tolerations"] = spec.get("tolerations", [])
            values["runtimeClassName"] = spec.get("runtimeClassName", "")
        else:
            values["replicas"] = o["spec"].get("replicas", 1)
        cs = containers(spec)
        if len(cs) != 1:
            raise GenerationError(f"{name_of(o)}: {len(cs)} containers; resources are templated per component")
        (c,) = cs
        repo, tag = split_image(c["image"])
        if repo == repository:
            policies.add(c.get("imagePullPolicy", "IfNotPresent"))
        else:
            others[repo] = key
            values = {"image": {"repository": repo, "tag": tag, "pullPolicy": c.get("imagePullPolicy", "IfNotPresent")},
                      **values}
        values["resources"] = c["resources"]
        components[key] = values
    if len(policies) != 1:
        raise GenerationError(f"fracgpu's containers have {len(policies)} pull policies; the chart has one")
    cas, leaves = _certificates(base)
    quota_env = _quota_env()
    quotas = _base_quotas(base, quota_env)
    intervals = {e.get("interval", "") for o in monitoring if o["kind"] == "ServiceMonitor"
                 for e in o["spec"]["endpoints"]}
    if len(intervals) != 1:
        raise GenerationError(f"the ServiceMonitor's endpoints have {len(intervals)} intervals; the chart has one")
    return Plan(repository, image["newTag"], policies.pop(), others, components, cas, leaves,
                {leaf.secret: leaf.certificate for leaf in leaves}, quota_env, quotas, intervals.pop())


def _base_quotas(base: list[Obj], quota_env: dict[str, dict[str, str]]) -> dict[str, str]:
    """The default quota the base sets (unset = "" = unlimited); every command that takes it must agree."""
    seen: dict[str, set[str]] = {value: set() for value in QUOTA_FLAGS}
    for o in base:
        spec = pod_spec(o)
        if spec is None:
            continue
        for c in containers(spec):
            command = (c.get("args") or [""])[0]
            if command not in quota_env:
                continue
            env = {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}
            for value, variable in quota_env[command].items():
                seen[value].add(env.get(variable, ""))
    for value, found in seen.items():
        if len(found) > 1:
            raise GenerationError(f"the base's components set different default quotas for {value}: {sorted(found)}")
    return {value: (found.pop() if found else "") for value, found in seen.items()}


# -- templating one object ----------------------------------------------------------------------


def _if(condition: str, lines: list[str]) -> list[str]:
    return [f"{{{{- if {condition} }}}}", *lines, "{{- end }}"]


def _quota_block(env: dict[str, str]) -> Block:
    def block(column: int) -> list[str]:
        lines: list[str] = []
        for value, variable in env.items():
            lines += [f'{{{{- with include "fracgpu.quota" .Values.quotas.{value} }}}}',
                      f"- name: {variable}", "  value: {{ . | quote }}", "{{- end }}"]
        return lines
    return block


def _with_block(key: str, expression: str) -> Block:
    """`key: <value>` only when the value is set."""
    def block(column: int) -> list[str]:
        return [f"{{{{- with {expression} }}}}", f"{key}:", f"  {{{{- toYaml . | nindent {column + 2} }}}}",
                "{{- end }}"]
    return block


def _scalar_with_block(key: str, expression: str) -> Block:
    def block(column: int) -> list[str]:
        return [f"{{{{- with {expression} }}}}", f"{key}: {{{{ . | quote }}}}", "{{- end }}"]
    return block


_CHECKSUM = f"checksum/tls: {{{{ .Values.{TLS_MEMO} | toJson | sha256sum | trunc 16 | quote }}}}"


def _checksum_block(column: int) -> list[str]:
    return _if(SELF_SIGNED, ['{{- include "fracgpu.selfSigned" . }}', "annotations:", f"  {_CHECKSUM}"])


def _checksum_key(column: int) -> list[str]:
    return _if(SELF_SIGNED, ['{{- include "fracgpu.selfSigned" . }}', _CHECKSUM])


def _workload(o: Obj, mk: Markers, p: Plan) -> None:
    spec = pod_spec(o)
    assert spec is not None
    key = values_key(component_of(o))
    if o["kind"] != "DaemonSet":
        o["spec"]["replicas"] = mk.scalar(f"{{{{ .Values.{key}.replicas }}}}")
    (c,) = containers(spec)
    repo, _ = split_image(c["image"])
    if repo == p.image_repository:
        c["image"] = mk.scalar('{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}')
        c["imagePullPolicy"] = mk.scalar("{{ .Values.image.pullPolicy }}")
    else:
        where = f".Values.{p.other_images[repo]}.image"
        c["image"] = mk.scalar(f'{{{{ printf "%s:%s" {where}.repository {where}.tag | quote }}}}')
        c["imagePullPolicy"] = mk.scalar(f"{{{{ {where}.pullPolicy }}}}")
    c["resources"] = mk.value(f".Values.{key}.resources")
    command = (c.get("args") or [""])[0]
    if command in p.quota_env:
        # the base's own default-quota variables become the chart's quotas.* (defaults read from them)
        # (in the place of the first of them, so the default render keeps the base's order)
        variables = set(p.quota_env[command].values())
        env = c.get("env", [])
        at = next((i for i, e in enumerate(env) if e["name"] in variables), len(env))
        kept = [e for e in env if e["name"] not in variables]
        c["env"] = [*kept[:at], mk.item(_quota_block(p.quota_env[command])), *kept[at:]]
    if o["kind"] == "DaemonSet":
        spec["nodeSelector"] = mk.value(f".Values.{key}.nodeSelector")
        spec["tolerations"] = mk.value(f".Values.{key}.tolerations")
        spec.pop("runtimeClassName", None)
        spec[mk.key(_scalar_with_block("runtimeClassName", f".Values.{key}.runtimeClassName"))] = None
    spec[mk.key(_with_block("imagePullSecrets", ".Values.imagePullSecrets"))] = None
    mounted = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    if mounted & set(p.secrets):
        # Helm issues new certificates at every upgrade in self-signed mode: restart the pods
        # that mount them (kube-scheduler reads its client certificate only at start)
        meta = o["spec"]["template"]["metadata"]
        if meta.get("annotations"):
            meta["annotations"][mk.key(_checksum_key)] = None
        else:
            meta.pop("annotations", None)
            meta[mk.key(_checksum_block)] = None


def _webhook_config(o: Obj, mk: Markers, p: Plan) -> None:
    annotations = o["metadata"].get("annotations", {})
    source = annotations.pop(INJECT_CA)
    ns, _, certificate = source.partition("/")
    secret = next((leaf.secret for leaf in p.leaves if leaf.certificate == certificate), None)
    if ns != NS or secret is None:
        raise GenerationError(f"{name_of(o)}: {INJECT_CA} {source} names no Certificate of the base")

    def annotation(column: int) -> list[str]:
        inject = f"{INJECT_CA}: {{{{ .Release.Namespace }}}}/{certificate}"
        return _if(CERT_MANAGER, [inject] if annotations else ["annotations:", f"  {inject}"])

    if annotations:
        annotations[mk.key(annotation)] = None
    else:
        del o["metadata"]["annotations"]
        o["metadata"][mk.key(annotation)] = None

    def ca_bundle(column: int) -> list[str]:
        return _if(SELF_SIGNED, ['{{- include "fracgpu.selfSigned" $ }}',
                                 f'caBundle: {{{{ (get $.Values.{TLS_MEMO} "{secret}").ca.Cert | b64enc }}}}'])

    for hook in o["webhooks"]:
        if "service" in hook["clientConfig"]:
            hook["clientConfig"][mk.key(ca_bundle)] = None


def _service_monitor(o: Obj, mk: Markers) -> None:
    labels = o["metadata"].setdefault("labels", {})
    labels[mk.key(lambda column: ["{{- with .Values.metrics.serviceMonitor.labels }}",
                                  f"{{{{- toYaml . | nindent {column} }}}}", "{{- end }}"])] = None
    for e in o["spec"]["endpoints"]:
        e["interval"] = mk.scalar("{{ .Values.metrics.serviceMonitor.interval | quote }}")


@dataclass(frozen=True)
class Doc:
    text: str  # template text of one YAML document
    condition: str | None = None
    preamble: tuple[str, ...] = ()

    def render(self) -> str:
        if self.condition is None:
            return "\n".join([*self.preamble, self.text])
        return "\n".join([f"{{{{- if {self.condition} }}}}", *self.preamble, self.text, "{{- end }}"])


def template_object(o: Obj, p: Plan, condition: str | None = None) -> Doc | None:
    o = copy.deepcopy(o)
    if o["kind"] == "Namespace" and o["metadata"]["name"] == NS:
        return None  # the release namespace is Helm's (helm install -n ... --create-namespace)
    mk = Markers()
    if o["apiVersion"].startswith("cert-manager.io/"):
        condition = CERT_MANAGER
    elif o["kind"] in WORKLOADS:
        _workload(o, mk, p)
    elif o["kind"] in WEBHOOK_CONFIGS and INJECT_CA in o["metadata"].get("annotations", {}):
        _webhook_config(o, mk, p)
    elif o["kind"] == "ServiceMonitor":
        _service_monitor(o, mk)
    return Doc(render(o, mk), condition)


# -- self-signed TLS ---------------------------------------------------------------------------


def helpers(p: Plan) -> str:
    lines = [
        f"{{{{/* Generated by `{REGENERATE}` from manifests/; do not edit by hand. */}}}}",
        "",
        "{{/* A default quota as the programs read it: \"\" when unset (unlimited), numbers as whole numbers. */}}",
        '{{- define "fracgpu.quota" -}}',
        '{{- if kindIs "string" . -}}{{ . }}{{- else if not (kindIs "invalid" .) -}}{{ int64 . }}{{- end -}}',
        "{{- end -}}",
        "",
        "{{/*",
        "Self-signed mode: the base's cert-manager Certificates, issued by Helm instead (RSA 2048), once per",
        f"render and kept in .Values.{TLS_MEMO} so that every template sees the same CA. A Certificate",
        "cert-manager would self-sign gets a CA of its own, whose certificate is the Secret's ca.crt (and",
        "the webhook's caBundle); the CA keys stay out of the cluster.",
        "*/}}",
        '{{- define "fracgpu.selfSigned" -}}',
        f'{{{{- if not (hasKey $.Values "{TLS_MEMO}") -}}}}',
        "{{- $cas := dict -}}",
        "{{- $out := dict -}}",
    ]
    for name, (cn, days) in p.cas.items():
        lines.append(f'{{{{- $_ := set $cas "{name}" (genCA {go_string(cn)} {days}) -}}}}')
    for i, leaf in enumerate(p.leaves):
        dns = " ".join(go_string(d) for d in leaf.dns_names)
        ca = f'(get $cas "{leaf.ca}")' if leaf.ca else f"(genCA {go_string(leaf.certificate + '-ca')} {leaf.days})"
        lines += [
            f"{{{{- $ca{i} := {ca} -}}}}",
            f'{{{{- $_ := set $out "{leaf.secret}" (dict "ca" $ca{i} "cert" (genSignedCert '
            f"{go_string(leaf.common_name)} nil (list {dns}) {leaf.days} $ca{i})) -}}}}",
        ]
    lines += [f'{{{{- $_ := set $.Values "{TLS_MEMO}" $out -}}}}', "{{- end -}}", "{{- end -}}", ""]
    return "\n".join(lines)


def self_signed_secrets(p: Plan) -> list[Doc]:
    docs = []
    for leaf in p.leaves:
        mk = Markers()
        secret = {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": leaf.secret, "namespace": NS, "labels": leaf.labels},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": mk.scalar("{{ $s.cert.Cert | b64enc }}"),
                     "tls.key": mk.scalar("{{ $s.cert.Key | b64enc }}"),
                     "ca.crt": mk.scalar("{{ $s.ca.Cert | b64enc }}")},
        }  # fmt: skip
        preamble = ('{{- include "fracgpu.selfSigned" . }}', f'{{{{- $s := get .Values.{TLS_MEMO} "{leaf.secret}" }}}}')
        docs.append(Doc(render(secret, mk), SELF_SIGNED, preamble))
    return docs


# -- values, schema, Chart.yaml ------------------------------------------------------------------


def _yaml_block(doc: Obj) -> list[str]:
    return dump(doc).rstrip("\n").split("\n")


def values_yaml(p: Plan) -> str:
    out = [
        f"# Generated by `{REGENERATE}` from manifests/ (the kustomize base); do not edit by hand.",
        "# The defaults are the base's: `helm template` with them renders the objects of",
        "# `kubectl kustomize manifests/` (less the Namespace). Every value: docs/install.md, \"Install with Helm\".",
        "",
        "# The one fracgpu image (Containerfile) that every component but the scheduler runs.",
        *_yaml_block({"image": {"repository": p.image_repository, "tag": p.image_tag, "pullPolicy": p.pull_policy}}),
        "# Secrets for pulling the images, e.g. [{name: regcred}].",
        *_yaml_block({"imagePullSecrets": []}),
        "",
        "# The quota of a tenant that has no TenantQuota and no namespace quota annotation (docs/quotas.md),",
        "# set alike on the extender and on the device plugin's Allocate check:",
        '#   ""      unlimited (open)',
        "#   0       nothing: only tenants with a quota of their own get GPUs (closed)",
        "#   amount  defaultMemory e.g. 64Gi (VRAM), defaultCores e.g. 400 (vgpu-core, 100 = one GPU)",
        *_yaml_block({"quotas": dict(p.quotas)}),
        "",
        "# Certificates of the admission webhook and of the scheduler <-> extender mutual TLS:",
        "#   cert-manager  Issuers and Certificates; cert-manager must be installed, it renews them",
        "#   self-signed   issued by Helm at every install and upgrade (no cert-manager); the pods that",
        "#                 mount them restart on upgrade. Renewal is `helm upgrade` (certificates last a year)",
        *_yaml_block({"tls": {"mode": "cert-manager"}}),
        "",
        "# A Prometheus Operator ServiceMonitor and headless metrics Services (manifests/monitoring/); needs",
        "# the monitoring.coreos.com CRDs. labels: for your Prometheus's serviceMonitorSelector.",
        *_yaml_block({"metrics": {"serviceMonitor": {"enabled": False, "labels": {}, "interval": p.interval}}}),
    ]
    for key, values in p.components.items():
        out += ["", *(f"# {line}" for line in COMPONENT_NOTES.get(key, [f"{key}: as manifests/base/ has it"])),
                *_yaml_block({key: values})]
    return "\n".join(out) + "\n"


COMPONENT_NOTES = {
    "devicePlugin": [
        "The device plugin, one pod per opted-in node. nodeSelector: more labels narrow it further, but",
        f"{names.LABEL_ENABLED}: \"true\" stays (the extender places GPU pods only on nodes with it).",
        "runtimeClassName: nvidia where the NVIDIA container runtime is not the nodes' default.",
    ],
    "extender": ["The scheduler extender: one leader binds, the other replicas take over (docs/extender.md)."],
    "controller": ["The health controller: one leader acts."],
    "scheduler": ["fracgpu-scheduler, the stock kube-scheduler: use the image of your control plane's minor version."],
    "webhook": ["The admission webhook (failurePolicy Fail for GPU pods: keep two replicas)."],
}
_QUANTITY = r"\+?(\d+\.?\d*|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[kMGTPE])?"


def values_schema(p: Plan) -> Obj:
    def closed(properties: Obj, **extra: Any) -> Obj:
        return {"type": "object", "additionalProperties": False, "properties": properties, **extra}

    string = {"type": "string", "minLength": 1}
    resources = closed({k: {"type": "object", "additionalProperties": {"type": ["string", "number"]}}
                        for k in ("requests", "limits")})
    image = closed({"repository": string, "tag": string,
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}, required=["repository", "tag"])
    components: Obj = {}
    for key, values in p.components.items():
        props: Obj = {"resources": resources}
        if "image" in values:
            props["image"] = image
        if "replicas" in values:
            props["replicas"] = {"type": "integer", "minimum": 1}
        if "nodeSelector" in values:
            props["nodeSelector"] = {
                "type": "object", "additionalProperties": {"type": "string"},
                "properties": {names.LABEL_ENABLED: {"const": "true"}}, "required": [names.LABEL_ENABLED],
                "description": f"more labels may be added; {names.LABEL_ENABLED}=true stays: the extender "
                               "places GPU pods only on nodes with it",
            }
            props["tolerations"] = {"type": "array", "items": {"type": "object"}}
            props["runtimeClassName"] = {"type": "string"}
        components[key] = closed(props)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"Generated by `{REGENERATE}`; do not edit by hand.",
        **closed({
            "image": image,
            "imagePullSecrets": {"type": "array", "items": closed({"name": string}, required=["name"])},
            "quotas": closed({
                "defaultMemory": {"anyOf": [{"type": "string", "pattern": f"^({_QUANTITY})?$"},
                                            {"type": "integer", "minimum": 0}],
                                  "description": 'VRAM, e.g. 64Gi; "" = unlimited, 0 = none'},
                "defaultCores": {"anyOf": [{"type": "string", "pattern": r"^(\+?\d+)?$"},
                                           {"type": "integer", "minimum": 0}],
                                 "description": 'vgpu-core units (100 = one GPU); "" = unlimited, 0 = none'},
            }),
            "tls": closed({"mode": {"enum": ["cert-manager", "self-signed"]}}, required=["mode"]),
            "metrics": closed({"serviceMonitor": closed({
                "enabled": {"type": "boolean"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
            })}),
            **components,
        }),
    }


def chart_yaml(version: str, app_version: str) -> str:
    return "\n".join([
        f"# Generated by `{REGENERATE}` from manifests/; do not edit by hand.",
        *_yaml_block({
            "apiVersion": "v2", "name": "fracgpu", "type": "application",
            "description": "Fractional GPU sharing for Kubernetes: device plugin, scheduler extender, controller, "
                           "admission webhook and a kube-scheduler profile",
            "version": version, "appVersion": app_version,
            # ValidatingAdmissionPolicy v1 and the node-name claim in service-account tokens (docs/install.md)
            "kubeVersion": ">=1.30.0-0",
        }),
    ]) + "\n"  # fmt: skip


def project_version() -> str:
    m = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    if m is None:
        raise GenerationError("pyproject.toml has no version")
    return m.group(1)


NOTES = """fracgpu {{ .Chart.AppVersion }} is installed in namespace {{ .Release.Namespace }}.
TLS: {{ .Values.tls.mode }}.

Opt GPU nodes in (they must not also run NVIDIA's device plugin, docs/install.md):
  kubectl label node NODE fracgpu.io/enabled=true
Then check:
  kubectl -n {{ .Release.Namespace }} get pods
  kubectl get node NODE -o jsonpath='{.status.allocatable.fracgpu\\.io/vgpu-core}'
A first pod: kubectl apply -f examples/pods/fractional.yaml (docs/quickstart.md).
"""


# -- the chart -----------------------------------------------------------------------------------


def _header(source: Path) -> str:
    return (f"# Generated by `{REGENERATE}` from {source.relative_to(ROOT).as_posix()}; do not edit by hand:\n"
            "# change the manifest and regenerate.")


def _file(source: Path, docs: list[Doc]) -> str:
    return _header(source) + "\n" + "\n---\n".join(d.render() for d in docs) + "\n"


def chart_files() -> dict[str, str]:
    """Every file of charts/fracgpu, path (relative to the chart) -> text."""
    base_files = read(MANIFESTS)
    monitoring_files = read(MONITORING)
    base = [o for _, objs in base_files for o in objs]
    p = plan(base, [o for _, objs in monitoring_files for o in objs])
    files: dict[str, str] = {
        "Chart.yaml": chart_yaml(project_version(), p.image_tag),
        "values.yaml": values_yaml(p),
        "values.schema.json": json.dumps(values_schema(p), indent=2) + "\n",
        f"templates/{HELPERS}": helpers(p),
        "templates/NOTES.txt": NOTES,
    }
    crds = MANIFESTS / "crds"
    for path, objs in base_files:
        if crds in path.parents:
            if any(o["kind"] != "CustomResourceDefinition" for o in objs):
                raise GenerationError(f"{path}: only CRDs belong in manifests/crds/")
            files[f"crds/{path.name}"] = path.read_text()  # Helm installs crds/ as they are, untemplated
            continue
        docs = [d for d in (template_object(o, p) for o in objs) if d is not None]
        if docs:
            files[f"templates/{path.relative_to(MANIFESTS / 'base').as_posix()}"] = _file(path, docs)
    files["templates/tls/self-signed.yaml"] = (
        f"# Generated by `{REGENERATE}` from the Certificates of manifests/base/ (tls.mode=self-signed).\n"
        + "\n---\n".join(d.render() for d in self_signed_secrets(p)) + "\n")
    for path, objs in monitoring_files:
        docs = [d for d in (template_object(o, p, SERVICE_MONITOR) for o in objs) if d is not None]
        files[f"templates/monitoring/{path.name}"] = _file(path, docs)
    return files


def on_disk(chart: Path = CHART) -> dict[str, str]:
    return {p.relative_to(chart).as_posix(): p.read_text() for p in sorted(chart.rglob("*")) if p.is_file()}


def stale(files: dict[str, str], chart: Path = CHART) -> Iterator[str]:
    """What differs between the generated files and the chart on disk (nothing: up to date)."""
    have = on_disk(chart) if chart.is_dir() else {}
    for path in sorted(files.keys() | have.keys()):
        if path not in have:
            yield f"missing {path}"
        elif path not in files:
            yield f"not generated {path}"
        elif have[path] != files[path]:
            yield f"differs {path}"


def main(argv: list[str]) -> int:
    try:
        files = chart_files()
    except GenerationError as e:
        print(f"gen_chart: {e}", file=sys.stderr)
        return 2
    if "--check" in argv:
        problems = list(stale(files))
        for problem in problems:
            print(problem)
        print(f"charts/fracgpu is stale: run {REGENERATE}" if problems else "charts/fracgpu is up to date")
        return 1 if problems else 0
    if CHART.is_dir():
        for path in on_disk().keys() - files.keys():
            (CHART / path).unlink()
    for path, text in files.items():
        target = CHART / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    print(f"wrote {len(files)} files in {CHART.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

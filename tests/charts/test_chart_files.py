"""charts/fracgpu is generated from manifests/ and committed: it must not go stale, and its files must
hold together. Nothing here needs helm (test_helm_render.py renders the chart)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from fracgpu.api.v1beta1 import names
from scripts import gen_chart
from scripts.gen_chart import CHART, REGENERATE, GenerationError
from tests.manifests.render import MANIFESTS, kustomization, resource_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return gen_chart.chart_files()


def test_the_chart_is_what_the_generator_makes_of_manifests(generated: dict[str, str]) -> None:
    problems = list(gen_chart.stale(generated))
    assert problems == [], f"charts/fracgpu is stale ({'; '.join(problems)}): run `{REGENERATE}` and commit the result"


def test_staleness_is_seen_file_by_file(generated: dict[str, str], tmp_path: Path) -> None:
    chart = tmp_path / "fracgpu"
    shutil.copytree(CHART, chart)
    assert list(gen_chart.stale(generated, chart)) == []
    (chart / "templates" / "extender" / "deployment.yaml").write_text("# edited by hand\n")
    (chart / "templates" / "stray.yaml").write_text("kind: ConfigMap\n")
    (chart / "values.yaml").unlink()
    assert list(gen_chart.stale(generated, chart)) == [
        "differs templates/extender/deployment.yaml", "not generated templates/stray.yaml", "missing values.yaml"]


def test_check_mode_says_the_command_to_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert gen_chart.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert REGENERATE == "python3 scripts/gen_chart.py"


def test_every_file_says_it_is_generated(generated: dict[str, str]) -> None:
    for path, text in generated.items():
        if path.startswith("crds/") or path == "templates/NOTES.txt":
            continue
        assert REGENERATE in "".join(text.split("\n")[:3]), path


def test_every_manifest_is_a_template_or_a_crd(generated: dict[str, str]) -> None:
    base = MANIFESTS / "base"
    for path in resource_files(MANIFESTS):
        if base in path.parents:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
            namespace_only = [d["kind"] for d in docs] == ["Namespace"]
            assert namespace_only or f"templates/{path.relative_to(base).as_posix()}" in generated, path
        else:
            assert generated[f"crds/{path.name}"] == path.read_text()
    for path in resource_files(MANIFESTS / "monitoring"):
        assert f"templates/monitoring/{path.name}" in generated


def test_chart_yaml_names_the_project_and_image_versions() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "fracgpu"
    assert chart["version"] == gen_chart.project_version()
    (image,) = kustomization()["images"]
    assert chart["appVersion"] == image["newTag"]
    assert chart["kubeVersion"] == ">=1.30.0-0"


def values() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return doc


def schema() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return doc


def test_the_default_values_are_the_bases() -> None:
    v = values()
    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.validate(v, schema())
    (image,) = kustomization()["images"]
    assert (v["image"]["repository"], v["image"]["tag"]) == (image["name"], image["newTag"])
    assert v["tls"] == {"mode": "cert-manager"}
    assert v["quotas"] == {"defaultMemory": "0", "defaultCores": "0"}  # closed, as the base (docs/security.md)
    assert v["devicePlugin"]["nodeSelector"] == {names.LABEL_ENABLED: "true"}
    assert v["scheduler"]["image"]["repository"] == "registry.k8s.io/kube-scheduler"
    assert set(v) >= {"extender", "controller", "webhook", "scheduler", "devicePlugin"}


# (values patch, what is wrong) -> the schema refuses, as `helm install` would before rendering
REFUSED = [
    ({"tls": {"mode": "selfsigned"}}, "mode"),
    ({"quotas": {"defaultMemory": "lots"}}, "defaultMemory"),
    ({"quotas": {"defaultMemory": "-1Gi"}}, "defaultMemory"),
    ({"quotas": {"defaultCores": "1.5"}}, "defaultCores"),
    ({"quotas": {"defaultCores": -1}}, "defaultCores"),
    ({"quota": {"defaultMemory": "1Gi"}}, "quota"),
    ({"extender": {"replicas": 0}}, "replicas"),
    ({"devicePlugin": {"nodeSelector": {"gpu": "yes"}}}, names.LABEL_ENABLED),
    ({"devicePlugin": {"nodeSelector": {names.LABEL_ENABLED: "false"}}}, names.LABEL_ENABLED),
    ({"image": {"tag": ""}}, "tag"),
    ({"metrics": {"serviceMonitor": {"interval": "30"}}}, "interval"),
]  # fmt: skip


def merged(patch: dict[str, Any]) -> dict[str, Any]:
    out = values()
    for key, value in patch.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and key in out else value
    return out


@pytest.mark.parametrize(("patch", "field"), REFUSED, ids=[json.dumps(p) for p, _ in REFUSED])
def test_the_values_schema_refuses_mistakes(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(jsonschema.ValidationError) as e:
        jsonschema.validate(merged(patch), schema())
    assert field in "/".join(map(str, e.value.absolute_path)) + " " + e.value.message


def test_generation_refuses_what_it_cannot_template() -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "x", "labels": {"app.kubernetes.io/component": "x"}},
                  "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:1", "resources": {}},
                                                                {"name": "b", "image": "b:1", "resources": {}}]}}}}
    with pytest.raises(GenerationError, match="2 containers"):
        gen_chart.plan([deployment], [])
    with pytest.raises(GenerationError, match="has no tag"):
        gen_chart.split_image("registry:5000/fracgpu")
    with pytest.raises(GenerationError, match="only h, m and s"):
        gen_chart.duration_days("1d")


@pytest.mark.parametrize(("text", "days"), [(None, 90), ("8760h", 365), ("87600h", 3650), ("1h", 1), ("24h1s", 2)])
def test_certificate_durations_in_days(text: str | None, days: int) -> None:
    assert gen_chart.duration_days(text) == days


WHOLE = {"resources", "nodeSelector", "labels", "tolerations"}  # values set as a whole, documented as one


def value_paths(doc: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in doc.items():
        path = f"{prefix}{key}"
        out |= value_paths(value, f"{path}.") if isinstance(value, dict) and key not in WHOLE else {path}
    return out


def test_install_md_documents_every_value() -> None:
    text = (ROOT / "docs" / "install.md").read_text()
    section = text[text.index("## Install with Helm"):]
    section = section[: section.index("\n## ", 1)]
    documented = {name for line in section.splitlines() if line.startswith("| `")
                  for name in re.findall(r"`([\w.]+)`", line.split("|")[1])}
    assert documented == value_paths(values())

"""The kustomize base rendered as a list of objects: by `kubectl kustomize` where kubectl is
installed, else by reading the kustomizations' resources in order (manifests/, crds/ and base/ use
no generators, patches or name transformers, only `images:`, so the two agree; test_render checks
that where both can run). The simulated overlay needs kubectl (it has a generator and a patch)."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"

Obj = dict[str, Any]


def kustomization(directory: Path = MANIFESTS) -> Obj:
    doc: Obj = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return doc


def resource_files(directory: Path = MANIFESTS) -> list[Path]:
    """The files a kustomization lists, in order, following directories into their kustomizations."""
    files: list[Path] = []
    for entry in kustomization(directory)["resources"]:
        path = (directory / entry).resolve()
        files += resource_files(path) if path.is_dir() else [path]
    return files


def _apply_images(objs: list[Obj]) -> list[Obj]:
    """kustomize's `images:` transformer, the one transformer the base uses."""
    images = {i["name"]: i for i in kustomization().get("images", [])}

    def fix(container: Obj) -> None:
        name, _, _ = container["image"].partition(":")
        if name in images:
            container["image"] = f"{images[name].get('newName', name)}:{images[name]['newTag']}"

    for obj in objs:
        pod_spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
            fix(c)
    return objs


def concatenated() -> list[Obj]:
    return [o for _, objs in by_file() for o in objs]


def by_file(directory: Path = MANIFESTS) -> list[tuple[Path, list[Obj]]]:
    """The objects of each file the kustomization at `directory` lists, in order, with the images
    of manifests/kustomization.yaml set (what scripts/gen_chart.py builds the Helm chart from)."""
    return [(path, _apply_images([d for d in yaml.safe_load_all(path.read_text()) if d is not None]))
            for path in resource_files(directory)]


def kubectl_kustomize(directory: Path = MANIFESTS) -> list[Obj] | None:
    """`kubectl kustomize DIRECTORY`, or None where kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d is not None]


def kubectl_kustomize_with(*components: str) -> list[Obj] | None:
    """`kubectl kustomize` of an overlay of manifests/ that adds the named components (e.g. "recovery"),
    as an operator's overlay would; None where kubectl is not installed."""
    if shutil.which("kubectl") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        rel = os.path.relpath(MANIFESTS, tmp)  # kustomize refuses absolute paths
        overlay = {"resources": [rel], "components": [f"{rel}/{c}" for c in components]}
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
        return kubectl_kustomize(Path(tmp))


@functools.cache
def _rendered() -> tuple[Obj, ...]:
    objs = kubectl_kustomize()
    return tuple(objs if objs is not None else concatenated())


def rendered() -> list[Obj]:
    """The objects `kubectl apply -k manifests/` would send (fresh copies each call)."""
    return copy.deepcopy(list(_rendered()))


def find(kind: str, name: str) -> Obj:
    matches = [o for o in rendered() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def of_kind(kind: str) -> list[Obj]:
    return [o for o in rendered() if o["kind"] == kind]

"""charts/fracgpu rendered by the real helm (`helm template`), as a list of objects."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from scripts.gen_chart import CHART

Obj = dict[str, Any]
KUBE_VERSION = "1.30.0"  # the chart's kubeVersion floor; `helm template` would otherwise assume 1.23


class HelmFailed(AssertionError):
    pass


def helm_run(helm: Path, *args: str) -> str:
    done = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise HelmFailed(done.stderr.strip() or done.stdout.strip())
    return done.stdout


def template(helm: Path, *args: str, namespace: str = "fracgpu-system", values: Obj | None = None,
             tmp: Path | None = None) -> list[Obj]:
    """`helm template fracgpu charts/fracgpu -n NAMESPACE --include-crds ARGS` (VALUES as a -f file)."""
    extra = list(args)
    if values is not None:
        assert tmp is not None, "a values file needs a directory"
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        extra += ["-f", str(path)]
    out = helm_run(helm, "template", "fracgpu", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION,
                   "--include-crds", *extra)
    return [d for d in yaml.safe_load_all(out) if d is not None]


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def container(objs: list[Obj], kind: str, name: str) -> Obj:
    (c,) = find(objs, kind, name)["spec"]["template"]["spec"]["containers"]
    out: Obj = c
    return out


def env(c: Obj) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}

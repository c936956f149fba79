"""One cluster and workload written twice (examples/dra/): device-plugin objects, and ResourceSlices with
ResourceClaims. `fracgpu inspect` and `fracgpu simulate` must see the same cluster and place the same way."""

from __future__ import annotations

import copy
import io
import json
import random
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from fracgpu.api.v1beta1.dra.resource import ResourceSlice
from fracgpu.api.v1beta1.inventory import NodeInventoryDoc
from fracgpu.api.v1beta1.names import ANN_INVENTORY
from fracgpu.cli import main as cli_main
from fracgpu.core.draslices import node_devices, same_devices
from fracgpu.core.records import parse_list
from fracgpu.inspect import main as inspect
from fracgpu.inspect.view import build_world
from fracgpu.sim.pending import pending_whatif

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "dra"
PODS, CLAIMS = EXAMPLES / "snapshot-pods.yaml", EXAMPLES / "snapshot-claims.yaml"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli_main(argv) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return out.out


def items(path: Path) -> list[dict[str, Any]]:
    return [i for d in yaml.safe_load_all(path.read_text()) for i in d["items"]]


@pytest.mark.parametrize("command", [["inspect"], ["simulate"]])
def test_inspect_tables_are_the_same_but_for_the_source_marker(command: list[str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    plugin = run([*command, "--snapshot", str(PODS)], capsys)
    dra = run([*command, "--snapshot", str(CLAIMS)], capsys)
    assert dra.count(" (dra)") == 4 and " (dra)" not in plugin
    assert dra.replace(" (dra)", "      ") == plugin
    assert "team-a/serve-a" in plugin and "50/100" in plugin and "40Gi/80Gi" in plugin


def test_inspect_json_is_the_same_but_for_the_source() -> None:
    def view(path: Path) -> Any:
        out, err = io.StringIO(), io.StringIO()
        assert inspect.main(["--snapshot", str(path), "-o", "json"], {}, out=out, err=err) == 0
        return json.loads(out.getvalue())

    plugin, dra = view(PODS), view(CLAIMS)
    assert all("source" not in n for n in plugin["nodes"]) and [n.pop("source") for n in dra["nodes"]] == ["dra"] * 2
    assert dra == plugin


@pytest.mark.parametrize("output", ["table", "json"])
def test_pending_placements_are_the_same(output: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--pending", "-o", output, "--snapshot"]
    plugin, dra = run([*argv, str(PODS)], capsys), run([*argv, str(CLAIMS)], capsys)
    assert dra == plugin
    if output == "table":
        assert plugin == ("team-a/notebook: fits on gpu-a, GPU 0\n"
                          "team-a/serve-b: fits on gpu-b, GPU 1\n"
                          "team-a/train-c: does not fit: tenant ns/team-a: vgpu-core 230 of 300 used, pod asks 100\n"
                          "team-a/train-d: does not fit: 0/2 nodes are available: 2 fewer than 2 whole free GPUs\n")


def test_the_examples_slices_publish_the_other_examples_inventory() -> None:
    inventories = {i["metadata"]["name"]: NodeInventoryDoc.from_json(i["metadata"]["annotations"][ANN_INVENTORY])
                   for i in items(PODS) if i["kind"] == "Node"}
    slices = [ResourceSlice.from_json(i) for i in items(CLAIMS) if i["kind"] == "ResourceSlice"]
    assert sorted(s.spec.pool.name for s in slices) == sorted(inventories)
    for s in slices:
        assert same_devices(s.spec.devices, node_devices(inventories[s.spec.pool.name].gpus))


@pytest.mark.parametrize("version", ["1.34", "1.35", "1.36", "1.37"])
def test_the_example_dra_objects_validate_against_the_resource_v1_schema(version: str) -> None:
    dra = [i for i in items(CLAIMS) if i["apiVersion"] == "resource.k8s.io/v1"]
    assert {i["kind"] for i in dra} == {"ResourceSlice", "ResourceClaim", "ResourceClaimTemplate"}
    for obj in items(CLAIMS):
        kubernetes_validate.validate(obj, version, strict=True)


def _leaves(o: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(o, dict):
        return [p for k, v in o.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(o, list):
        return [p for i, v in enumerate(o) for p in _leaves(v, (*path, i))] or [path]
    return [path]


def test_hostile_values_anywhere_in_the_dra_objects_never_crash_the_reading() -> None:
    """Every value of the example's slices, claims, templates and claim pods, replaced in turn (seeded sample)
    by a hostile one: the snapshot reads, the world builds, pending pods are placed or refused."""
    base = items(CLAIMS)
    rng = random.Random(17)
    hostile: list[Any] = [None, "", "x", -1, 10**30, True, [], {}, "1e400", "99999999999999999999Gi"]
    targets = [(i, p) for i, obj in enumerate(base) if obj["kind"] != "Node" and obj["kind"] != "Namespace"
               for p in _leaves(obj) if p and p[:2] != ("metadata", "name") and p[0] not in ("kind", "apiVersion")]
    for i, path in rng.sample(targets, 100):
        snapshot = copy.deepcopy(base)
        parent = snapshot[i]
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = rng.choice(hostile)
        world = build_world(parse_list(snapshot))
        for r in pending_whatif(world, "fracgpu"):
            assert r["fits"] or r["reason"]

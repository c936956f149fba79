"""The kustomize base renders, covers every manifest file, and its objects refer to each other correctly."""

from __future__ import annotations

from collections import Counter

import pytest

from fracgpu.api.v1beta1 import names
from tests.manifests.render import MANIFESTS, concatenated, find, kubectl_kustomize, of_kind, rendered, resource_files

SIMULATED = MANIFESTS / "simulated"
MONITORING = MANIFESTS / "monitoring"  # optional, applied on its own (tests/charts/test_monitoring.py)
RECOVERY = MANIFESTS / "recovery"  # an optional component (tests/manifests/test_recovery_component.py)
DRA = MANIFESTS / "dra"  # a kustomization of its own, tests/manifests/test_dra.py

NAMESPACED = {
    "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Deployment", "DaemonSet",
    "PodDisruptionBudget", "NetworkPolicy", "Issuer", "Certificate",
}  # fmt: skip


def test_the_kustomizations_list_every_manifest_file_once() -> None:
    listed = [p.relative_to(MANIFESTS).as_posix() for p in resource_files()]
    on_disk = sorted(p.relative_to(MANIFESTS).as_posix() for p in MANIFESTS.rglob("*.yaml")
                     if p.name != "kustomization.yaml"
                     and not {SIMULATED, MONITORING, RECOVERY, DRA} & set(p.parents))
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)


def test_kubectl_kustomize_renders_what_the_files_say() -> None:
    by_kubectl = kubectl_kustomize()
    if by_kubectl is None:
        pytest.skip("kubectl is not installed; the other tests read the files in kustomization order")

    def key(o: dict[str, object]) -> str:
        import json

        return json.dumps(o, sort_keys=True)

    assert sorted(map(key, by_kubectl)) == sorted(map(key, concatenated()))


def test_every_object_is_named_once_and_namespaced_ones_live_in_fracgpu_system() -> None:
    objs = rendered()
    keys = Counter((o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs)
    assert [k for k, n in keys.items() if n > 1] == []
    for o in objs:
        ns = o["metadata"].get("namespace")
        if o["kind"] in NAMESPACED:
            expected = "kube-system" if o["metadata"]["name"].endswith("extension-apiserver-authentication-reader") \
                else names.DEFAULT_NAMESPACE
            assert ns == expected, f"{o['kind']}/{o['metadata']['name']}"
        else:
            assert ns is None, f"{o['kind']}/{o['metadata']['name']} is cluster-scoped"


def test_every_workload_runs_as_its_own_service_account_with_bindings_that_exist() -> None:
    accounts = {o["metadata"]["name"] for o in of_kind("ServiceAccount")}
    workloads = of_kind("Deployment") + of_kind("DaemonSet")
    used = [w["spec"]["template"]["spec"]["serviceAccountName"] for w in workloads]
    assert sorted(used) == sorted(accounts), "one service account per component, each used"
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in of_kind("Role") + of_kind("ClusterRole")}
    builtin = {("Role", "kube-system", "extension-apiserver-authentication-reader")}
    for b in of_kind("RoleBinding") + of_kind("ClusterRoleBinding"):
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], ns, ref["name"]) in roles | builtin, b["metadata"]["name"]
        for s in b["subjects"]:
            assert s["kind"] == "ServiceAccount" and s["name"] in accounts and s["namespace"] == names.DEFAULT_NAMESPACE


def test_workload_selectors_match_their_pods_and_services_find_them() -> None:
    for w in of_kind("Deployment") + of_kind("DaemonSet"):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for svc in of_kind("Service"):
        pods = [w for w in of_kind("Deployment")
                if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in pods[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    for pdb in of_kind("PodDisruptionBudget"):
        assert any(pdb["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
                   for w in of_kind("Deployment"))


def test_every_container_is_locked_down() -> None:
    for w in of_kind("Deployment") + of_kind("DaemonSet"):
        spec = w["spec"]["template"]["spec"]
        for c in spec["containers"]:
            where = f"{w['metadata']['name']}/{c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc.get("privileged", False) is False, where
            assert {"requests", "limits"} <= c["resources"].keys(), where
            assert "livenessProbe" in c and "readinessProbe" in c, where
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            if w["kind"] == "Deployment":
                # only the device plugin needs root (the kubelet's directories)
                assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert not any("hostPath" in v for v in spec.get("volumes", [])) or w["kind"] == "DaemonSet", where


def test_the_device_plugin_daemonset() -> None:
    ds = find("DaemonSet", "fracgpu-device-plugin")
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {names.LABEL_ENABLED: "true"}
    assert {"key": names.TAINT_GPU_FAILED, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    (c,) = spec["containers"]
    assert c["args"] == ["device-plugin"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert names.DEVICE_PLUGIN_DIR.rstrip("/") in mounts
    assert names.POD_RESOURCES_SOCKET.rsplit("/", 1)[0] in mounts
    host = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    lock_dir = names.DEVICE_PLUGIN_LOCK.rsplit("/", 1)[0]
    assert host == {names.DEVICE_PLUGIN_DIR.rstrip("/"), names.POD_RESOURCES_SOCKET.rsplit("/", 1)[0], "/dev/null",
                    lock_dir}
    # /dev/null is the runtime's volume-mount device list: every GPU for NVML, with the env ignored
    (dev_null,) = [v for v in spec["volumes"] if v.get("hostPath", {}).get("path") == "/dev/null"]
    assert dev_null["hostPath"]["type"] == "CharDevice"
    assert mounts[f"{names.DEVICE_LIST_MOUNT_ROOT}/all"] == {"name": dev_null["name"], "readOnly": True,
                                                            "mountPath": f"{names.DEVICE_LIST_MOUNT_ROOT}/all"}
    assert env["FRACGPU_DEVICE_LIST_STRATEGY"]["value"] == "envvar,volume-mounts"
    # the restart lock is on its own hostPath, not in the directory the kubelet empties when it starts
    assert env["FRACGPU_LOCK_FILE"]["value"] == names.DEVICE_PLUGIN_LOCK and lock_dir in mounts
    assert not names.DEVICE_PLUGIN_LOCK.startswith(names.DEVICE_PLUGIN_DIR)


def test_every_fracgpu_image_is_the_one_image_and_commands_exist() -> None:
    from fracgpu.cli import COMMANDS

    images = set()
    for w in of_kind("Deployment") + of_kind("DaemonSet"):
        for c in w["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("registry.k8s.io/kube-scheduler:"):
                continue
            images.add(c["image"])
            assert c["args"][0] in COMMANDS, c["args"]
    assert images == {"ghcr.io/fracgpu/fracgpu:v0.1.0"}


def test_the_extender_is_highly_available_and_only_the_leader_is_ready() -> None:
    d = find("Deployment", "fracgpu-extender")
    assert d["spec"]["replicas"] == 2
    (c,) = d["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "POD_NAME" in {e["name"] for e in c["env"]}  # leader-election identity
    # No PodDisruptionBudget for the extender: only the leader is Ready, so any budget would
    # forbid evicting the leader for ever and hang every drain of its node (docs/install.md).
    assert not [p for p in of_kind("PodDisruptionBudget") if p["metadata"]["name"] == "fracgpu-extender"]


def test_the_extenders_rollout_does_not_wait_for_a_follower_to_turn_ready() -> None:
    """Only the leader is ever Ready: a rollout that keeps an old replica until a new one is Ready
    would wait for ever (the Deployment controller's rolling update, maxUnavailable < replicas)."""
    d = find("Deployment", "fracgpu-extender")
    replicas = d["spec"]["replicas"]
    rolling = d["spec"]["strategy"]["rollingUpdate"]

    def resolve(v: int | str) -> int:
        return replicas * int(v[:-1]) // 100 if isinstance(v, str) else v

    assert resolve(rolling["maxUnavailable"]) >= replicas
    assert resolve(rolling["maxSurge"]) >= 1  # the new replicas start (and sync) before the old go


def test_the_simulated_overlay_serves_the_gpus_of_its_file() -> None:
    objs = kubectl_kustomize(SIMULATED)
    if objs is None:
        pytest.skip("kubectl is not installed")
    import kubernetes_validate  # type: ignore[import-untyped]
    import yaml

    from fracgpu.deviceplugin.backends.simulated import parse_gpus

    base = {(o["kind"], o["metadata"]["name"]) for o in rendered()}
    extra = [o for o in objs if (o["kind"], o["metadata"]["name"]) not in base]
    (cm,) = extra  # only the ConfigMap of GPUs is new; its name has kustomize's hash suffix
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["namespace"] == names.DEFAULT_NAMESPACE
    doc = yaml.safe_load(cm["data"]["gpus.yaml"])
    gpus = parse_gpus(doc, node="node-a")
    assert len(gpus) == 2 and gpus[0].links[0].peer == gpus[1].uuid
    # one file on every node, and still no UUID on two nodes
    assert not {g.uuid for g in gpus} & {g.uuid for g in parse_gpus(doc, node="node-b")}
    (ds,) = [o for o in objs if o["kind"] == "DaemonSet"]
    kubernetes_validate.validate(ds, "1.30", strict=True)
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FRACGPU_BACKEND"] == "simulated"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "simulated-gpus")
    assert env["FRACGPU_GPUS_FILE"] == f"{mount['mountPath']}/gpus.yaml"
    assert {"name": "simulated-gpus", "configMap": {"name": cm["metadata"]["name"]}} in spec["volumes"]
    assert "NODE_NAME" in env  # the base's env is kept, not replaced

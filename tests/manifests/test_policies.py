"""The ValidatingAdmissionPolicies' CEL on allowed and forbidden requests (issue 5: forgery).

Each case is one admission request as the API server would evaluate it; every policy runs on every
case, so a case also proves that the policies it is not about leave it alone.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api.v1beta1 import names
from tests.manifests.cel import Outcome, Request, match_conditions, run_bound, run_policy
from tests.manifests.render import Obj, find, of_kind

NS = names.DEFAULT_NAMESPACE
EXTENDER = f"system:serviceaccount:{NS}:fracgpu-extender"
PLUGIN = f"system:serviceaccount:{NS}:fracgpu-device-plugin"
CONTROLLER = f"system:serviceaccount:{NS}:fracgpu-controller"
SCHEDULER = f"system:serviceaccount:{NS}:fracgpu-scheduler"
ALICE = "alice@example.com"  # a tenant with edit rights in her namespace
NODE_NAME_CLAIM = "authentication.kubernetes.io/node-name"
ASSIGNED = json.dumps({"node": "gpu-1", "tenant": "ns/team-a", "gpus": [{"uuid": "GPU-1", "cores": 50}]})


def pod(*, annotations: dict[str, str] | None = None, node: str | None = None, scheduler: str = "fracgpu-scheduler",
        core: str | None = "50", where: str = "limits", init: bool = False) -> Obj:
    resources = {where: {names.RESOURCE_CORE: core}} if core is not None else {"limits": {"cpu": "1"}}
    c = {"name": "main", "image": "train:1", "resources": resources}
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "train:1"}] if init else [c],
                            "schedulerName": scheduler}
    if init:
        spec["initContainers"] = [c]
    if node is not None:
        spec["nodeName"] = node
    meta: dict[str, Any] = {"name": "train-1", "namespace": "team-a"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def binding(annotations: dict[str, str] | None) -> Obj:
    meta: dict[str, Any] = {"name": "train-1", "namespace": "team-a"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Binding", "metadata": meta,
            "target": {"apiVersion": "v1", "kind": "Node", "name": "gpu-1"}}


def node(name: str = "gpu-1", annotations: dict[str, str] | None = None,
         labels: dict[str, str] | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name}
    if annotations is not None:
        meta["annotations"] = annotations
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta}


def namespace(annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> Obj:
    meta: dict[str, Any] = {"name": "team-a"}
    if annotations is not None:
        meta["annotations"] = annotations
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def lease(name: str) -> Obj:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": NS},
            "spec": {"holderIdentity": "x"}}


def plugin_on(node_name: str | None) -> dict[str, Any]:
    """The device plugin's identity; its token's node-name claim names `node_name` (None: no claim)."""
    extra = {NODE_NAME_CLAIM: [node_name]} if node_name is not None else {}
    return {"username": PLUGIN, "groups": ("system:serviceaccounts", f"system:serviceaccounts:{NS}",
                                           "system:authenticated"), "extra": extra}


def with_(obj: Obj, **annotations: str) -> Obj:
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("annotations", {}).update(annotations)
    return out


def with_labels(obj: Obj, **labels: str) -> Obj:
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("labels", {}).update(labels)
    return out


def with_image(obj: Obj, image: str) -> Obj:
    out = copy.deepcopy(obj)
    out["spec"]["containers"][0]["image"] = image
    return out


PHASE = names.ANN_PHASE
INV = names.ANN_INVENTORY
BOUND = pod(annotations={names.ANN_ASSIGNED: ASSIGNED, PHASE: "allocating"}, node="gpu-1")


@dataclass(frozen=True)
class Case:
    name: str
    request: Request
    denied_by: str | None = None  # the policy that must deny, None: every policy allows
    message: str = ""


CASES = [
    # --- pods: fracgpu.io/assigned and fracgpu.io/phase -------------------------------------------
    Case("a user creates a plain GPU pod", Request(ALICE, "CREATE", "pods", pod())),
    Case("a user creates a pod with a forged reservation",
         Request(ALICE, "CREATE", "pods", pod(annotations={names.ANN_ASSIGNED: ASSIGNED})),
         "fracgpu-protect-pod-keys", f"{ALICE} tried to"),
    Case("a user creates a pod that claims to be allocated",
         Request(ALICE, "CREATE", "pods", pod(annotations={PHASE: "allocated"})), "fracgpu-protect-pod-keys"),
    Case("a user flips the phase of a bound pod",
         Request(ALICE, "UPDATE", "pods", with_(BOUND, **{PHASE: "allocated"}), BOUND), "fracgpu-protect-pod-keys"),
    Case("a user removes the reservation of a bound pod",
         Request(ALICE, "UPDATE", "pods", pod(annotations={PHASE: "allocating"}, node="gpu-1"), BOUND),
         "fracgpu-protect-pod-keys"),
    Case("a user edits another annotation of a bound pod",
         Request(ALICE, "UPDATE", "pods", with_(BOUND, team="vision"), BOUND)),
    Case("a user writes the user annotation fracgpu.io/gpu-model",
         Request(ALICE, "CREATE", "pods", pod(annotations={names.ANN_GPU_MODEL: "A100*"}))),
    Case("the extender binds with the reservation",
         Request(EXTENDER, "CREATE", "pods", binding({names.ANN_ASSIGNED: ASSIGNED, PHASE: "allocating"}),
                 subresource="binding")),
    Case("another scheduler binds with a forged reservation",
         Request("system:kube-scheduler", "CREATE", "pods", binding({names.ANN_ASSIGNED: ASSIGNED}),
                 subresource="binding"), "fracgpu-protect-pod-keys"),
    Case("kube-scheduler binds a pod without annotations",
         Request("system:kube-scheduler", "CREATE", "pods", binding(None), subresource="binding")),
    Case("a node writes the phase through pods/status",
         Request("system:node:gpu-1", "UPDATE", "pods", with_(BOUND, **{PHASE: "allocated"}), BOUND,
                 subresource="status", groups=("system:nodes",)), "fracgpu-protect-pod-keys"),
    Case("a node updates the status of a bound pod, annotations untouched",
         Request("system:node:gpu-1", "UPDATE", "pods", BOUND, BOUND, subresource="status", groups=("system:nodes",))),
    Case("the controller may not write a reservation",
         Request(CONTROLLER, "UPDATE", "pods", with_(BOUND, **{names.ANN_ASSIGNED: "{}"}), BOUND),
         "fracgpu-protect-pod-keys"),
    Case("the extender releases a stuck reservation",
         Request(EXTENDER, "UPDATE", "pods", with_(BOUND, **{PHASE: "failed: allocation timed out"}), BOUND)),
    # --- the device plugin: its own node only ------------------------------------------------------
    Case("the plugin marks a pod on its node allocated",
         Request(**plugin_on("gpu-1"), operation="UPDATE", resource="pods",
                 obj=with_(BOUND, **{PHASE: "allocated"}), old=BOUND)),
    Case("the plugin marks a pod on another node",
         Request(**plugin_on("gpu-2"), operation="UPDATE", resource="pods",
                 obj=with_(BOUND, **{PHASE: "allocated"}), old=BOUND),
         "fracgpu-plugin-own-node", "only pods bound to that node"),
    Case("the plugin relabels a pod on its node",
         Request(**plugin_on("gpu-1"), operation="UPDATE", resource="pods",
                 obj=with_labels(BOUND, app="db"), old=BOUND),
         "fracgpu-plugin-own-node", "may change only the annotations fracgpu.io/assigned and fracgpu.io/phase"),
    Case("the plugin writes another annotation of a pod on its node",
         Request(**plugin_on("gpu-1"), operation="UPDATE", resource="pods", obj=with_(BOUND, team="x"), old=BOUND),
         "fracgpu-plugin-own-node", "may change only the annotations"),
    Case("the plugin changes the image of a pod on its node",
         Request(**plugin_on("gpu-1"), operation="UPDATE", resource="pods", obj=with_image(BOUND, "evil:1"),
                 old=BOUND), "fracgpu-plugin-own-node", "may change only the annotations"),
    Case("the plugin moves a reservation on its node",
         Request(**plugin_on("gpu-1"), operation="UPDATE", resource="pods",
                 obj=with_(BOUND, **{names.ANN_ASSIGNED: ASSIGNED.replace("GPU-1", "GPU-2")}), old=BOUND)),
    Case("the plugin writes an unbound pod",
         Request(**plugin_on("gpu-1"), operation="UPDATE", resource="pods",
                 obj=pod(annotations={PHASE: "allocated"}), old=pod()), "fracgpu-plugin-own-node"),
    Case("the plugin writes its node's inventory",
         Request(**plugin_on("gpu-1"), operation="UPDATE", resource="nodes",
                 obj=node(annotations={INV: "[]"}), old=node())),
    Case("the plugin writes another node's inventory",
         Request(**plugin_on("gpu-2"), operation="UPDATE", resource="nodes",
                 obj=node(annotations={INV: "[]"}), old=node()),
         "fracgpu-plugin-own-node", "may write only its own Node"),
    Case("the plugin labels another node through nodes/status",
         Request(**plugin_on("gpu-2"), operation="UPDATE", resource="nodes", subresource="status",
                 obj=node(labels={names.LABEL_GPU_COUNT: "8"}), old=node()), "fracgpu-plugin-own-node"),
    Case("a plugin token without the node-name claim",
         Request(**plugin_on(None), operation="UPDATE", resource="nodes",
                 obj=node(annotations={INV: "[]"}), old=node()),
         "fracgpu-plugin-own-node", "no node-name claim"),
    Case("the plugin renews its own Lease",
         Request(**plugin_on("gpu-1"), operation="UPDATE", resource="leases", group="coordination.k8s.io",
                 obj=lease(names.lease_name("gpu-1")), old=lease(names.lease_name("gpu-1")))),
    Case("the plugin creates its own Lease",
         Request(**plugin_on("gpu-1"), operation="CREATE", resource="leases", group="coordination.k8s.io",
                 obj=lease(names.lease_name("gpu-1")))),
    Case("the plugin renews another node's Lease",
         Request(**plugin_on("gpu-1"), operation="UPDATE", resource="leases", group="coordination.k8s.io",
                 obj=lease(names.lease_name("gpu-2")), old=lease(names.lease_name("gpu-2"))),
         "fracgpu-plugin-own-node", "its own Lease fracgpu-node-gpu-1"),
    Case("the plugin takes the extender's leader Lease",
         Request(**plugin_on("gpu-1"), operation="UPDATE", resource="leases", group="coordination.k8s.io",
                 obj=lease("fracgpu-extender"), old=lease("fracgpu-extender")), "fracgpu-plugin-own-node"),
    Case("the extender renews its leader Lease",
         Request(EXTENDER, "UPDATE", "leases", lease("fracgpu-extender"), lease("fracgpu-extender"),
                 group="coordination.k8s.io")),
    # --- nodes: fracgpu.io/gpu-inventory ---------------------------------------------------------------
    Case("an admin forges a node's inventory",
         Request("admin", "UPDATE", "nodes", node(annotations={INV: "[]"}), node(), groups=("system:masters",)),
         "fracgpu-protect-node-keys", "admin tried to"),
    Case("an admin removes a node's inventory",
         Request("admin", "UPDATE", "nodes", node(annotations={}), node(annotations={INV: "[]"})),
         "fracgpu-protect-node-keys"),
    Case("an admin opts a node in",
         Request("admin", "UPDATE", "nodes", node(labels={names.LABEL_ENABLED: "true"}, annotations={INV: "[]"}),
                 node(annotations={INV: "[]"}))),
    Case("the kubelet updates its node status, inventory untouched",
         Request("system:node:gpu-1", "UPDATE", "nodes", node(annotations={INV: "[]"}), node(annotations={INV: "[]"}),
                 subresource="status", groups=("system:nodes",))),
    Case("the kubelet registers a node that carries an inventory",
         Request("system:node:gpu-1", "CREATE", "nodes", node(annotations={INV: "[]"}), groups=("system:nodes",)),
         "fracgpu-protect-node-keys"),
    Case("the controller taints a node",
         Request(CONTROLLER, "UPDATE", "nodes", node(annotations={INV: "[]"}), node(annotations={INV: "[]"}))),
    # --- namespaces: quota annotations and tenant label -----------------------------------------------
    Case("a tenant raises her namespace's VRAM quota",
         Request(ALICE, "UPDATE", "namespaces", namespace(annotations={names.ANN_NS_MEMORY_QUOTA: "1Ti"}),
                 namespace(annotations={names.ANN_NS_MEMORY_QUOTA: "32Gi"})),
         "fracgpu-protect-namespace-keys", "fracgpu.io/vgpu-memory-quota"),
    Case("a tenant removes her namespace's core quota",
         Request(ALICE, "UPDATE", "namespaces", namespace(annotations={}),
                 namespace(annotations={names.ANN_NS_CORE_QUOTA: "200"})), "fracgpu-protect-namespace-keys"),
    Case("a tenant moves her namespace to another TenantQuota",
         Request(ALICE, "UPDATE", "namespaces", namespace(labels={names.LABEL_TENANT: "team-rich"}),
                 namespace(labels={names.LABEL_TENANT: "team-a"})),
         "fracgpu-protect-namespace-keys", "fracgpu.io/tenant"),
    Case("a tenant creates a namespace in another tenant",
         Request(ALICE, "CREATE", "namespaces", namespace(labels={names.LABEL_TENANT: "team-b"})),
         "fracgpu-protect-namespace-keys"),
    Case("a tenant labels her namespace otherwise",
         Request(ALICE, "UPDATE", "namespaces",
                 namespace(labels={names.LABEL_TENANT: "team-a", "env": "dev"},
                           annotations={names.ANN_NS_MEMORY_QUOTA: "32Gi"}),
                 namespace(labels={names.LABEL_TENANT: "team-a"}, annotations={names.ANN_NS_MEMORY_QUOTA: "32Gi"}))),
    Case("a quota admin sets a quota",
         Request("bob", "UPDATE", "namespaces", namespace(annotations={names.ANN_NS_MEMORY_QUOTA: "64Gi"}),
                 namespace(), groups=("fracgpu:quota-admins", "system:authenticated"))),
    Case("system:masters set a tenant",
         Request("root", "CREATE", "namespaces", namespace(labels={names.LABEL_TENANT: "team-a"}),
                 groups=("system:masters",))),
    Case("a tenant exempts her namespace from the GPU admission rules",
         Request(ALICE, "UPDATE", "namespaces", namespace(labels={names.LABEL_EXEMPT: "true"}), namespace()),
         "fracgpu-protect-namespace-keys", f"{ALICE} tried to write {names.LABEL_EXEMPT}"),
    Case("a tenant sets a fracgpu.io/ label a TenantQuota could select on",
         Request(ALICE, "UPDATE", "namespaces", namespace(labels={"fracgpu.io/team": "rich"}), namespace()),
         "fracgpu-protect-namespace-keys", "fracgpu.io/team"),
    Case("a tenant creates a namespace in another TenantQuota's fracgpu.io/ selection",
         Request(ALICE, "CREATE", "namespaces", namespace(labels={"fracgpu.io/team": "rich"})),
         "fracgpu-protect-namespace-keys", "fracgpu.io/team"),
    Case("a tenant removes the metrics-scraper label",
         Request(ALICE, "UPDATE", "namespaces", namespace(), namespace(labels={"fracgpu.io/metrics-scraper": "true"})),
         "fracgpu-protect-namespace-keys", "fracgpu.io/metrics-scraper"),
    Case("a quota admin exempts the GPU operator's namespace",
         Request("bob", "UPDATE", "namespaces", namespace(labels={names.LABEL_EXEMPT: "true"}), namespace(),
                 groups=("fracgpu:quota-admins", "system:authenticated"))),
    Case("fracgpu's own accounts do not write quotas",
         Request(EXTENDER, "UPDATE", "namespaces", namespace(annotations={names.ANN_NS_CORE_QUOTA: "900"}),
                 namespace()), "fracgpu-protect-namespace-keys"),
    # --- pods that bypass fracgpu-scheduler ---------------------------------------------------------
    Case("a GPU pod with spec.nodeName at creation",
         Request(ALICE, "CREATE", "pods", pod(node="gpu-1")), "fracgpu-require-scheduler", "spec.nodeName"),
    Case("a GPU pod for another scheduler",
         Request(ALICE, "CREATE", "pods", pod(scheduler="default-scheduler")),
         "fracgpu-require-scheduler", "not default-scheduler"),
    Case("a GPU request in requests only, for another scheduler",
         Request(ALICE, "CREATE", "pods", pod(scheduler="volcano", where="requests")), "fracgpu-require-scheduler"),
    Case("a GPU init container with spec.nodeName",
         Request(ALICE, "CREATE", "pods", pod(node="gpu-1", init=True)), "fracgpu-require-scheduler"),
    Case("a CPU pod with spec.nodeName", Request(ALICE, "CREATE", "pods", pod(core=None, node="cpu-1",
                                                                            scheduler="default-scheduler"))),
    Case("a GPU pod without schedulerName at all",
         Request(ALICE, "CREATE", "pods", {**pod(), "spec": {"containers": pod()["spec"]["containers"]}}),
         "fracgpu-require-scheduler", "not default-scheduler"),
]


def policies() -> dict[str, Obj]:
    return {p["metadata"]["name"]: p for p in of_kind("ValidatingAdmissionPolicy")}


def bindings() -> dict[str, Obj]:
    return {b["spec"]["policyName"]: b for b in of_kind("ValidatingAdmissionPolicyBinding")}


def admit(r: Request) -> dict[str, Outcome]:
    """Every policy of the manifests on one request, each as its binding applies it."""
    bound = bindings()
    return {name: run_bound(p, bound[name], r) for name, p in policies().items()}


def denials_of(r: Request) -> dict[str, tuple[str, ...]]:
    return {name: o.denials for name, o in admit(r).items() if o.denials}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_policies(case: Case) -> None:
    denials = {name: o.denials for name, o in admit(case.request).items()}
    denied = {name: d for name, d in denials.items() if d}
    if case.denied_by is None:
        assert denied == {}
    else:
        assert list(denied) == [case.denied_by]
        assert any(case.message in m for m in denied[case.denied_by]), denied


@pytest.mark.parametrize("key", names.PROTECTED_POD_ANNOTATIONS)
@pytest.mark.parametrize("op", ["set", "change", "remove"])
def test_every_protected_pod_annotation(key: str, op: str) -> None:
    before = pod(annotations={key: "x"} if op != "set" else {})
    after = pod(annotations={} if op == "remove" else {key: "y"})
    outcome = run_policy(policies()["fracgpu-protect-pod-keys"], Request(ALICE, "UPDATE", "pods", after, before))
    assert not outcome.allowed


@pytest.mark.parametrize("key", names.PROTECTED_NAMESPACE_KEYS)
def test_every_protected_namespace_key(key: str) -> None:
    after = namespace(labels={key: "x"}) if key == names.LABEL_TENANT else namespace(annotations={key: "x"})
    outcome = run_policy(policies()["fracgpu-protect-namespace-keys"], Request(ALICE, "UPDATE", "namespaces",
                                                                                after, namespace()))
    assert not outcome.allowed


def test_every_policy_is_bound_to_deny_and_fails_closed() -> None:
    bindings = {b["spec"]["policyName"]: b for b in of_kind("ValidatingAdmissionPolicyBinding")}
    assert set(bindings) == set(policies())
    for name, p in policies().items():
        assert p["spec"]["failurePolicy"] == "Fail", name
        assert bindings[name]["spec"]["validationActions"] == ["Deny"], name


def test_the_policies_name_service_accounts_that_exist() -> None:
    accounts = {f"system:serviceaccount:{o['metadata']['namespace']}:{o['metadata']['name']}"
                for o in of_kind("ServiceAccount")}
    text = json.dumps(list(policies().values()))
    mentioned = set(re.findall(r"system:serviceaccount:[a-z0-9-]+:[a-z0-9-]+", text))
    assert mentioned and mentioned <= accounts


@pytest.mark.parametrize(
    ("name", "obj", "called"),
    [
        ("a share", pod(scheduler="default-scheduler"), True),
        ("vgpu-core in requests", pod(scheduler="default-scheduler", where="requests"), True),
        ("an init container's share", pod(init=True), True),
        ("vgpu-memory only", {**pod(), "spec": {"containers": [{"name": "m", "image": "i", "resources": {
            "limits": {names.RESOURCE_MEMORY: "8Gi"}}}]}}, True),
        ("a CPU pod", pod(core=None), False),
        ("a pod without resources", {**pod(), "spec": {"containers": [{"name": "m", "image": "i"}]}}, False),
    ],
)
def test_the_webhook_is_called_only_for_pods_that_name_a_fracgpu_resource(name: str, obj: Obj, called: bool) -> None:
    (hook,) = find("MutatingWebhookConfiguration", "fracgpu-webhook")["webhooks"]
    assert match_conditions(hook["matchConditions"], Request(ALICE, "CREATE", "pods", obj)) is called, name


@pytest.mark.parametrize(
    "request_",
    [Request(ALICE, "CREATE", "pods", pod(annotations={names.ANN_ASSIGNED: ASSIGNED})),
     Request("system:serviceaccount:team-a:deployer", "UPDATE", "pods", with_(BOUND, **{PHASE: "allocated"}), BOUND)],
    ids=["create", "update"],
)
def test_the_forged_key_refusal_is_the_shared_text(request_: Request) -> None:
    """The webhook refuses forged keys with names.protected_pod_keys_refusal; the policy says the same."""
    (message,) = denials_of(request_)["fracgpu-protect-pod-keys"]
    assert message == names.protected_pod_keys_refusal(request_.username)


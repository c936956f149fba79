"""The admission policy fracgpu-gpu-access over the rendered manifests (issue 14: GPU without a booking).

Every route to a GPU that the NVIDIA container runtime offers a pod spec — env, envFrom, the
volume-mount device list, CDI annotations, privilege, capabilities, host paths, host namespaces — is
refused in a tenant's namespace for a pod that may run on an opted-in node, and allowed where the
namespace is exempt or the pod's node affinity keeps it off those nodes. Every policy runs on every
case (tests.manifests.test_policies.denials_of), so a case also shows the others leave it alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from fracgpu.api.v1beta1 import names
from tests.manifests.cel import Request, evaluate
from tests.manifests.render import Obj
from tests.manifests.test_policies import ALICE, denials_of, policies

POLICY = "fracgpu-gpu-access"
DEPLOYER = "system:serviceaccount:kube-system:replicaset-controller"  # who creates a Deployment's pods


def container(name: str = "main", **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "train:1", **extra}


def pod(*containers: dict[str, Any], init: tuple[dict[str, Any], ...] = (), namespace: str = "team-a",
        **spec: Any) -> Obj:
    """A pod as a ReplicaSet creates it; `spec` adds pod-level fields (volumes, hostPID, affinity...)."""
    body: dict[str, Any] = {"containers": list(containers) or [container()], **spec}
    if init:
        body["initContainers"] = list(init)
    annotations = body.pop("annotations", None)
    meta: dict[str, Any] = {"name": "train-1", "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def env(*names_: str) -> dict[str, Any]:
    return {"env": [{"name": n, "value": "all"} for n in names_]}


def off_gpu_nodes(*expressions: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """A required node affinity with one term per argument (an expression, or a list of them ANDed)."""
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": e if isinstance(e, list) else [e]} for e in expressions]}}}


NOT_ENABLED = {"key": names.LABEL_ENABLED, "operator": "DoesNotExist"}
NOT_DRA = {"key": names.LABEL_DRA, "operator": "DoesNotExist"}
OFF_BOTH = [NOT_ENABLED, NOT_DRA]  # one term: off the device plugin's nodes and off the DRA nodes
HOST_DEV = {"name": "dev", "hostPath": {"path": "/dev/nvidia0", "type": "CharDevice"}}


def create(obj: Obj, *, user: str = DEPLOYER, labels: dict[str, str] | None = None) -> Request:
    return Request(user, "CREATE", "pods", obj, namespace_labels=labels)


def with_ephemeral(obj: Obj, debug: dict[str, Any]) -> Request:
    """`kubectl debug`: an UPDATE of pods/ephemeralcontainers whose object is the whole pod."""
    new = copy.deepcopy(obj)
    new["spec"]["nodeName"] = "gpu-1"
    old = copy.deepcopy(new)
    new["spec"]["ephemeralContainers"] = [debug]
    return Request(ALICE, "UPDATE", "pods", new, old, subresource="ephemeralcontainers")


@dataclass(frozen=True)
class Case:
    name: str
    request: Request
    message: str | None = None  # a substring of the refusal; None: allowed


CASES = [
    # --- env: the runtime's device list and the limits Allocate sets ----------------------------------
    Case("env NVIDIA_VISIBLE_DEVICES=all",
         create(pod(container(**env("NVIDIA_VISIBLE_DEVICES")))), "container main sets NVIDIA_VISIBLE_DEVICES"),
    Case("a GPU pod overrides the limit Allocate set",
         create(pod(container(resources={"limits": {names.RESOURCE_CORE: "10"}}, **env("FRACGPU_VRAM_LIMIT")),
                    schedulerName=names.SCHEDULER_NAME)), "sets FRACGPU_VRAM_LIMIT"),
    Case("an init container sets the MPS thread share",
         create(pod(init=(container("setup", **env("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")),))),
         "container setup sets CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
    Case("a sidecar lifts HAMi-core's memory limit",
         create(pod(container(), container("side", **env("PATH", "CUDA_DEVICE_MEMORY_LIMIT_0")))),
         "container side sets CUDA_DEVICE_MEMORY_LIMIT_0"),
    Case("env from a ConfigMap key under a GPU name",
         create(pod(container(env=[{"name": "NVIDIA_VISIBLE_DEVICES",
                                    "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]))),
         "sets NVIDIA_VISIBLE_DEVICES"),
    Case("a legacy CUDA_VERSION (the runtime then gives every GPU)",
         create(pod(container(**env("CUDA_VERSION")))), "sets CUDA_VERSION"),
    Case("an ephemeral debug container sets NVIDIA_VISIBLE_DEVICES",
         with_ephemeral(pod(), {"name": "debug", "image": "busybox", **env("NVIDIA_VISIBLE_DEVICES")}),
         "container debug sets NVIDIA_VISIBLE_DEVICES"),
    Case("CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER and NVIDIA_TF32_OVERRIDE are the program's business",
         create(pod(container(**env("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_TF32_OVERRIDE",
                                    "NVIDIA_DISABLE_REQUIRE", "NCCL_DEBUG"))))),
    # --- envFrom: a ConfigMap or Secret admission cannot read --------------------------------------
    Case("envFrom a ConfigMap without a prefix",
         create(pod(container(envFrom=[{"configMapRef": {"name": "settings"}}]))),
         "container main imports env with envFrom without a safe prefix"),
    Case("envFrom a Secret with a prefix that spells NVIDIA_",
         create(pod(container(envFrom=[{"prefix": "NV", "secretRef": {"name": "s"}}]))), "envFrom"),
    Case("envFrom with a prefix inside a GPU prefix",
         create(pod(container(envFrom=[{"prefix": "NVIDIA_X_", "configMapRef": {"name": "c"}}]))), "envFrom"),
    Case("envFrom with an empty prefix",
         create(pod(container(envFrom=[{"prefix": "", "configMapRef": {"name": "c"}}]))), "envFrom"),
    Case("envFrom with the prefix APP_",
         create(pod(container(envFrom=[{"prefix": "APP_", "configMapRef": {"name": "settings"}}])))),
    # --- the runtime's other device lists ----------------------------------------------------------
    Case("a /dev/null mount under /var/run/nvidia-container-devices",
         create(pod(container(volumeMounts=[{"name": "v", "mountPath": f"{names.DEVICE_LIST_MOUNT_ROOT}/all"}]),
                    volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "devnull"}}])),
         f"container main mounts {names.DEVICE_LIST_MOUNT_ROOT}/all"),
    Case("the same mount written with a doubled slash",
         create(pod(container(volumeMounts=[{"name": "v", "mountPath": "/var//run/nvidia-container-devices/all"}]),
                    volumes=[{"name": "v", "emptyDir": {}}])), "where the NVIDIA runtime reads"),
    Case("a CDI device annotation",
         create(pod(annotations={f"{names.CDI_ANNOTATION_PREFIX}gpu": "nvidia.com/gpu=all"})),
         "annotation cdi.k8s.io/gpu requests CDI devices"),
    # --- privilege, capabilities, host paths, host namespaces -------------------------------------
    Case("a privileged container",
         create(pod(container(securityContext={"privileged": True}))), "container main is privileged"),
    Case("a privileged ephemeral container (kubectl debug --profile=sysadmin)",
         with_ephemeral(pod(), {"name": "debug", "image": "busybox", "securityContext": {"privileged": True}}),
         "container debug is privileged"),
    Case("SYS_ADMIN (the runtime counts it as privileged)",
         create(pod(container(securityContext={"capabilities": {"add": ["NET_RAW", "SYS_ADMIN"]}}))),
         "container main adds SYS_ADMIN"),
    Case("cap_sys_admin in another spelling",
         create(pod(container(securityContext={"capabilities": {"add": ["cap_sys_admin"]}}))), "adds cap_sys_admin"),
    Case("ALL capabilities", create(pod(container(securityContext={"capabilities": {"add": ["ALL"]}}))), "adds ALL"),
    Case("IPC_LOCK and SYS_PTRACE (RDMA, cuda-gdb) stay allowed",
         create(pod(container(securityContext={"capabilities": {"add": ["IPC_LOCK", "SYS_PTRACE"]}})))),
    Case("a hostPath of a GPU device node",
         create(pod(container(volumeMounts=[{"name": "dev", "mountPath": "/dev/nvidia0"}]), volumes=[HOST_DEV])),
         "volume dev is hostPath /dev/nvidia0"),
    Case("a hostPath of the container runtime's socket",
         create(pod(volumes=[{"name": "rt", "hostPath": {"path": "/run/containerd/containerd.sock"}}])),
         "volume rt is hostPath /run/containerd/containerd.sock"),
    Case("hostPID", create(pod(hostPID=True)), "shares the PID namespace"),
    Case("hostIPC (MPS)", create(pod(hostIPC=True)), "shares the IPC namespace"),
    Case("hostNetwork is left to Pod Security (NCCL uses it)", create(pod(hostNetwork=True))),
    # --- who is checked --------------------------------------------------------------------------
    Case("a plain pod", create(pod())),
    Case("a namespace a quota admin exempted",
         create(pod(container(securityContext={"privileged": True}), namespace="gpu-operator"),
                labels={"kubernetes.io/metadata.name": "gpu-operator", names.LABEL_EXEMPT: "true"})),
    Case("exempt=false is not exempt",
         create(pod(container(securityContext={"privileged": True}), namespace="ops"),
                labels={"kubernetes.io/metadata.name": "ops", names.LABEL_EXEMPT: "false"}), "is privileged"),
    Case("fracgpu's own namespace (the device plugin mounts the kubelet's directories)",
         create(pod(volumes=[HOST_DEV], namespace=names.DEFAULT_NAMESPACE))),
    Case("kube-system (kube-proxy, CNI and CSI agents)",
         create(pod(container(securityContext={"privileged": True}), namespace="kube-system"))),
    Case("node affinity keeps the pod off opted-in nodes",
         create(pod(container(securityContext={"privileged": True}), affinity=off_gpu_nodes(OFF_BOTH)))),
    Case("NotIn [true] keeps it off too",
         create(pod(volumes=[HOST_DEV], affinity=off_gpu_nodes(
             [{"key": names.LABEL_ENABLED, "operator": "NotIn", "values": ["true"]},
              {"key": names.LABEL_DRA, "operator": "NotIn", "values": ["true"]}])))),
    Case("a nodeSelector on another value of both opt-in labels",
         create(pod(hostPID=True, nodeSelector={names.LABEL_ENABLED: "false", names.LABEL_DRA: "false"}))),
    Case("one affinity term of two still reaches GPU nodes",
         create(pod(hostPID=True, affinity=off_gpu_nodes(OFF_BOTH, {"key": "zone", "operator": "Exists"}))),
         "shares the PID namespace"),
    # --- the DRA path: nodes labelled fracgpu.io/dra=true, where the driver's CDI spec sets the GPU env --
    Case("off the device plugin's nodes only: it may still land on a DRA node",
         create(pod(container(**env("NVIDIA_VISIBLE_DEVICES")), affinity=off_gpu_nodes(NOT_ENABLED))),
         "container main sets NVIDIA_VISIBLE_DEVICES"),
    Case("off the DRA nodes only: it may still land on a device plugin node",
         create(pod(hostPID=True, affinity=off_gpu_nodes(NOT_DRA))), "shares the PID namespace"),
    Case("nodeSelector fracgpu.io/dra=true is a GPU pod",
         create(pod(container(securityContext={"privileged": True}), nodeSelector={names.LABEL_DRA: "true"})),
         "container main is privileged"),
    Case("a nodeSelector off the device plugin's nodes and an affinity off the DRA nodes",
         create(pod(hostIPC=True, nodeSelector={names.LABEL_ENABLED: "false"}, affinity=off_gpu_nodes(NOT_DRA)))),
    Case("a nodeSelector on another value of the device plugin label only",
         create(pod(hostPID=True, nodeSelector={names.LABEL_ENABLED: "false"})), "shares the PID namespace"),
    Case("In without true for the DRA label, in every term",
         create(pod(volumes=[HOST_DEV], affinity=off_gpu_nodes(
             [NOT_ENABLED, {"key": names.LABEL_DRA, "operator": "In", "values": ["false"]}])))),
    Case("a preferred affinity proves nothing",
         create(pod(hostPID=True, affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
             {"weight": 1, "preference": {"matchExpressions": [NOT_ENABLED]}}]}})), "shares the PID namespace"),
    Case("nodeSelector fracgpu.io/enabled=true is a GPU pod",
         create(pod(hostIPC=True, nodeSelector={names.LABEL_ENABLED: "true"})), "shares the IPC namespace"),
    Case("an update of a pod is not a creation",
         Request(ALICE, "UPDATE", "pods", pod(container(**env("NVIDIA_VISIBLE_DEVICES"))),
                 pod(container(**env("NVIDIA_VISIBLE_DEVICES"))))),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gpu_access(case: Case) -> None:
    denials = denials_of(case.request)
    if case.message is None:
        assert denials == {}
        return
    assert list(denials) == [POLICY], denials
    assert any(case.message in m for m in denials[POLICY]), denials
    # every refusal names the route and says where to read on
    assert all("docs/security.md" in m for m in denials[POLICY])


def _variable(name: str) -> list[str]:
    (var,) = [v for v in policies()[POLICY]["spec"]["variables"] if v["name"] == name]
    return [str(x) for x in evaluate(var["expression"], {})]


def test_the_policy_lists_the_gpu_env_names_of_the_contract() -> None:
    assert tuple(_variable("envPrefixes")) == names.GPU_ENV_PREFIXES
    assert tuple(_variable("envNames")) == names.GPU_ENV_NAMES
    assert tuple(_variable("envAllowed")) == names.GPU_ENV_ALLOWED


# Every name the NVIDIA container toolkit, libnvidia-container, CUDA MPS, HAMi-core and fracgpu's
# Allocate read to pick GPUs or set limits (docs/security.md), and some they do not.
GPU_ENV = ["NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "NVIDIA_REQUIRE_CUDA", "NVIDIA_REQUIRE_ARCH",
           "NVIDIA_MIG_CONFIG_DEVICES", "NVIDIA_MIG_MONITOR_DEVICES", "NVIDIA_GDS", "NVIDIA_MOFED", "NVIDIA_NVSWITCH",
           "NVIDIA_GDRCOPY", "NVIDIA_IMEX_CHANNELS", "CUDA_VERSION", "CUDA_MPS_PIPE_DIRECTORY",
           "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "FRACGPU_CORE_PERCENT",
           "FRACGPU_VRAM_LIMIT", "CUDA_DEVICE_MEMORY_LIMIT", "CUDA_DEVICE_MEMORY_LIMIT_3",
           "CUDA_DEVICE_MEMORY_SHARED_CACHE", "CUDA_DEVICE_SM_LIMIT", "GPU_CORE_UTILIZATION_POLICY",
           "CUDA_DISABLE_CONTROL", "CUDA_OVERSUBSCRIBE", "CUDA_TASK_PRIORITY"]
NOT_GPU_ENV = ["CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_LAUNCH_BLOCKING", "NVIDIA_TF32_OVERRIDE",
               "NVIDIA_DISABLE_REQUIRE", "FRACGPU_NODE", "NCCL_DEBUG", "LD_LIBRARY_PATH", "nvidia_visible_devices",
               "MY_NVIDIA_"]


@pytest.mark.parametrize("name", GPU_ENV + NOT_GPU_ENV)
def test_every_gpu_env_name_is_refused_and_no_other(name: str) -> None:
    refused = POLICY in denials_of(create(pod(container(**env(name)))))
    assert refused is (name in GPU_ENV)
    assert names.gpu_env(name) is refused  # the contract's predicate agrees with the CEL


def test_the_message_names_the_first_offender_of_several() -> None:
    request = create(pod(container("a", **env("HOME")), container("b", **env("NVIDIA_VISIBLE_DEVICES")),
                         init=(container("i", securityContext={"privileged": True}),)))
    messages = denials_of(request)[POLICY]
    assert any(m.startswith("container b sets NVIDIA_VISIBLE_DEVICES") for m in messages)
    assert any(m.startswith("container i is privileged") for m in messages)


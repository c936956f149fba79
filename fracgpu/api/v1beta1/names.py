"""Every name fracgpu shares with the cluster and its users. Nothing else defines a name."""

from typing import Final

GROUP: Final = "fracgpu.io"
VERSION: Final = "v1beta1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

# Extended resources a pod asks for.
RESOURCE_CORE: Final = "fracgpu.io/vgpu-core"
RESOURCE_MEMORY: Final = "fracgpu.io/vgpu-memory"
CORES_PER_GPU: Final = 100
# The most VRAM one GPU may report or one pod may hold on it: 1 PiB, over 5,000 times today's largest GPU.
# A larger value is corrupt; it would overflow the placement ledger's int64 sums.
MAX_GPU_MEMORY: Final = 2**50
DEVICE_ID_SEPARATOR: Final = "::"

# Pod annotations a user may write (validated).
ANN_GPU_MODEL: Final = "fracgpu.io/gpu-model"
ANN_TOPOLOGY: Final = "fracgpu.io/topology"
ANN_ZONE_POLICY: Final = "fracgpu.io/zone-policy"
LABEL_GROUP: Final = "fracgpu.io/group"

# Protected keys: only fracgpu's service accounts may write them.
ANN_INVENTORY: Final = "fracgpu.io/gpu-inventory"  # Node
ANN_ASSIGNED: Final = "fracgpu.io/assigned"  # Pod
ANN_PHASE: Final = "fracgpu.io/phase"  # Pod
ANN_NS_MEMORY_QUOTA: Final = "fracgpu.io/vgpu-memory-quota"  # Namespace
ANN_NS_CORE_QUOTA: Final = "fracgpu.io/vgpu-core-quota"  # Namespace
LABEL_TENANT: Final = "fracgpu.io/tenant"  # Namespace
LABEL_EXEMPT: Final = "fracgpu.io/exempt"  # Namespace: "true" lifts the GPU-access admission rules
PROTECTED_POD_ANNOTATIONS: Final = (ANN_ASSIGNED, ANN_PHASE)
PROTECTED_NAMESPACE_KEYS: Final = (ANN_NS_MEMORY_QUOTA, ANN_NS_CORE_QUOTA, LABEL_TENANT)
# Every namespace label under this prefix is protected like LABEL_TENANT (quota admins only), so a
# TenantQuota may select namespaces on such labels and on LABEL_NAMESPACE_NAME (set by the API
# server, immutable) and on nothing else: a label a tenant may edit would let her leave her quota.
LABEL_PREFIX: Final = "fracgpu.io/"
LABEL_NAMESPACE_NAME: Final = "kubernetes.io/metadata.name"

# Container env that selects GPUs or sets their limits, read by the NVIDIA container toolkit, CUDA/MPS
# or an in-container limiter (docs/security.md says why each is in or out). Outside exempt
# namespaces, a pod that may run on an opted-in node may not set them: only Allocate does.
GPU_ENV_PREFIXES: Final = ("NVIDIA_", "CUDA_MPS_", "CUDA_DEVICE_MEMORY_", "FRACGPU_")
GPU_ENV_NAMES: Final = ("CUDA_VERSION", "CUDA_DEVICE_SM_LIMIT", "GPU_CORE_UTILIZATION_POLICY",
                        "CUDA_DISABLE_CONTROL", "CUDA_OVERSUBSCRIBE", "CUDA_TASK_PRIORITY")
# Under those prefixes but harmless: a requirement switch, a cuBLAS/cuDNN numerics switch, and the node
# name fracgpu's controller puts in its recovery Jobs.
GPU_ENV_ALLOWED: Final = ("NVIDIA_DISABLE_REQUIRE", "NVIDIA_TF32_OVERRIDE", "FRACGPU_NODE")

# The NVIDIA container toolkit's "volume-mounts" device list: a bind mount of /dev/null at
# <root>/<device> selects <device> (accept-nvidia-visible-devices-as-volume-mounts = true).
DEVICE_LIST_MOUNT_ROOT: Final = "/var/run/nvidia-container-devices"
# CDI device requests in annotations (the runtime's modes.cdi.annotation-prefixes default).
CDI_ANNOTATION_PREFIX: Final = "cdi.k8s.io/"

# Values of ANN_PHASE.
PHASE_ALLOCATING: Final = "allocating"
PHASE_ALLOCATED: Final = "allocated"
PHASE_FAILED_PREFIX: Final = "failed: "

# Node labels.
LABEL_ENABLED: Final = "fracgpu.io/enabled"  # set by the operator: the node opts in
LABEL_GPU_MODEL: Final = "fracgpu.io/gpu-model"  # set by the plugin
LABEL_GPU_COUNT: Final = "fracgpu.io/gpu-count"  # set by the plugin
LABEL_ZONE: Final = "topology.kubernetes.io/zone"

# Heartbeat Lease of a node's plugin, in fracgpu's namespace.
LEASE_PREFIX: Final = "fracgpu-node-"
DEFAULT_NAMESPACE: Final = "fracgpu-system"

# Taint of a node whose GPUs are broken as a whole (key configurable).
TAINT_GPU_FAILED: Final = "fracgpu.io/gpu-failed"

# Recovery Jobs the controller starts for a broken node (optional, user-supplied template), in a
# namespace of their own at Pod Security "baseline": never fracgpu's, which is "privileged".
DEFAULT_RECOVERY_NAMESPACE: Final = "fracgpu-recovery"
LABEL_RECOVERY_NODE: Final = "fracgpu.io/recovery-node"  # Job label: the node (hashed if > 63 chars)
ANN_RECOVERY_NODE: Final = "fracgpu.io/recovery-node"  # Job annotation: the node's full name

SCHEDULER_NAME: Final = "fracgpu-scheduler"

# TenantQuota CRD.
TENANTQUOTA_KIND: Final = "TenantQuota"
TENANTQUOTA_PLURAL: Final = "tenantquotas"
TENANT_NS_PREFIX: Final = "ns/"
TENANT_TQ_PREFIX: Final = "tq/"

# Topology and zone policy values.
TOPOLOGY_REQUIRED: Final = "required"
TOPOLOGY_PREFERRED: Final = "preferred"
TOPOLOGY_NONE: Final = "none"
ZONE_SAME: Final = "same"
ZONE_SPREAD: Final = "spread"
ZONE_NONE: Final = "none"

# kubelet device-plugin API.
DEVICE_PLUGIN_VERSION: Final = "v1beta1"
DEVICE_PLUGIN_DIR: Final = "/var/lib/kubelet/device-plugins/"
KUBELET_SOCKET: Final = "kubelet.sock"
PLUGIN_SOCKET: Final = "fracgpu-vgpu-core.sock"
# the device plugin's restart lock: outside DEVICE_PLUGIN_DIR, which the kubelet empties when it starts
DEVICE_PLUGIN_LOCK: Final = "/var/lib/fracgpu/device-plugin.lock"
POD_RESOURCES_SOCKET: Final = "/var/lib/kubelet/pod-resources/kubelet.sock"


def lease_name(node: str) -> str:
    return f"{LEASE_PREFIX}{node}"


def device_id(gpu_uuid: str, k: int) -> str:
    return f"{gpu_uuid}{DEVICE_ID_SEPARATOR}{k}"


def protected_namespace_label(key: str) -> bool:
    """Whether a tenant cannot write this namespace label (so a TenantQuota may select on it)."""
    return key.startswith(LABEL_PREFIX) or key == LABEL_NAMESPACE_NAME


def protected_pod_keys_refusal(username: str) -> str:
    """The refusal of a pod write that sets, changes or removes fracgpu.io/assigned or fracgpu.io/phase:
    one text for the admission policy fracgpu-protect-pod-keys and the webhook (tests/manifests checks
    that the policy's messageExpression gives exactly this)."""
    return (f"only fracgpu may write the pod annotations {ANN_ASSIGNED} and {ANN_PHASE} "
            f"(they grant GPU shares); {username} tried to")


def gpu_env(name: str) -> bool:
    """Whether a container env name selects GPUs or sets their limits (see GPU_ENV_PREFIXES)."""
    if name in GPU_ENV_ALLOWED:
        return False
    return name in GPU_ENV_NAMES or name.startswith(GPU_ENV_PREFIXES)


# DRA (resource.k8s.io/v1) driver: docs/dra.md.
LABEL_DRA: Final = "fracgpu.io/dra"  # set by the operator: the node opts into the DRA path (not with LABEL_ENABLED)
DRA_DRIVER: Final = "gpu.fracgpu.io"  # ResourceSlice.spec.driver, allocation results, CEL device.driver
DRA_CAPACITY_CORES: Final = "cores"  # per device: 100 = the whole GPU's compute, like vgpu-core
DRA_CAPACITY_MEMORY: Final = "memory"  # per device: VRAM bytes, like vgpu-memory
DRA_TAINT_UNHEALTHY: Final = "gpu.fracgpu.io/unhealthy"  # device taint of a failed GPU (NoSchedule)
DRA_DEVICE_CLASS: Final = "gpu.fracgpu.io"  # whole GPUs (claims without capacity requests)
DRA_DEVICE_CLASS_SHARED: Final = "vgpu.fracgpu.io"  # shares of a GPU (claims with capacity requests)
# Who allocates a device to claims (device attribute `allocator` in the driver's domain): fracgpu's
# allocator in the extender (the default: fracgpu's ranking, quotas and queue), or kube-scheduler's DRA
# allocator (first fit). The DeviceClasses select only devices whose allocator is kube-scheduler, so the
# scheduler never allocates a device fracgpu allocates: one allocator per device, no race between them.
DRA_ATTR_ALLOCATOR: Final = "allocator"
DRA_ALLOCATOR_FRACGPU: Final = "fracgpu"
DRA_ALLOCATOR_SCHEDULER: Final = "kube-scheduler"
DRA_ALLOCATORS: Final = (DRA_ALLOCATOR_FRACGPU, DRA_ALLOCATOR_SCHEDULER)
# Set on a claim before fracgpu writes its allocation, as kube-scheduler does: the resourceclaim controller
# clears the allocation when the last consumer is gone and then removes it (resourceapi.Finalizer).
DRA_CLAIM_FINALIZER: Final = "resource.kubernetes.io/delete-protection"
DRA_CDI_KIND: Final = "k8s.gpu.fracgpu.io/claim"  # CDI vendor/class of the per-claim spec files
DRA_PLUGINS_DIR: Final = "/var/lib/kubelet/plugins"  # <dir>/<driver>/dra.sock, same path in the pod
DRA_REGISTRY_DIR: Final = "/var/lib/kubelet/plugins_registry"  # <dir>/<driver>-reg.sock
DRA_SOCKET: Final = "dra.sock"
CDI_DIR: Final = "/var/run/cdi"  # the runtimes' directory for generated CDI specs
# kubelet DRA gRPC services the plugin serves, most preferred first ("<proto package tail>.<service>").
DRA_SERVICES: Final = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
PLUGIN_TYPE_DRA: Final = "DRAPlugin"


def dra_registration_socket(driver: str = DRA_DRIVER) -> str:
    return f"{driver}-reg.sock"

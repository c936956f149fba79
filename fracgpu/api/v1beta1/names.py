"""Every name fracgpu shares with the cluster and its users. Nothing else defines a name."""

from typing import Final

GROUP: Final = "fracgpu.io"
VERSION: Final = "v1beta1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

# Extended resources a pod asks for.
RESOURCE_CORE: Final = "fracgpu.io/vgpu-core"
RESOURCE_MEMORY: Final = "fracgpu.io/vgpu-memory"
CORES_PER_GPU: Final = 100
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
PROTECTED_POD_ANNOTATIONS: Final = (ANN_ASSIGNED, ANN_PHASE)
PROTECTED_NAMESPACE_KEYS: Final = (ANN_NS_MEMORY_QUOTA, ANN_NS_CORE_QUOTA, LABEL_TENANT)

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

# Recovery Jobs the controller starts for a broken node (optional, user-supplied template).
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
